//! One conformance suite for every store adapter, run against SQLite and Postgres and against
//! a local directory and a real S3 API for the recordings, on the clean seed and on messy data
//! (`dsr seed --messy`). Each person is resolved, erased store by store as the engine does, and
//! checked by the service's own check (`resolve::leftovers`) — and then judged by reading the
//! tables and objects directly: exactly the person's records are gone, nobody else's, and
//! erasing twice is harmless. A rectify round corrects a phone stored in national formats, and
//! the retention methods (issue 9) list, count and erase what is past its period.

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
};

use chrono::Utc;
use dsr::{
    db::{Backend as DbBackend, Db},
    domain::{Corrections, Subject},
    resolve::{self, normalize, Region, Resolution},
    seed::{recording_key, seed_messy, MessyFixture, SeedSpec, SeededSubject},
    startup::open_ledger,
    stores::{object_path, open_object_store, reference::Tables, Erasure, Expiry, Probe, StoreRegistry},
};
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use support::Backend;

const STORES: [&str; 5] = ["accounts", "call_logs", "transcripts", "recordings", "billing"];

struct Fixture {
    stores: StoreRegistry,
    objects: Arc<dyn ObjectStore>,
    db: Db,
    acme: Vec<SeededSubject>,
    messy: MessyFixture,
    /// The recordings directory, when they are local files (read directly, by raw name).
    recordings_dir: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

async fn fixture(backend: Backend, s3: bool, messy: bool) -> Fixture {
    fixture_with(backend, s3, messy, "", &[]).await
}

/// A fixture whose platform database also has the tables `setup` creates, with `toml` (a
/// catalog) as the service's configuration.
async fn fixture_with(backend: Backend, s3: bool, messy: bool, toml: &str, setup: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_platform_database(backend, dir.path()).await;
    let platform = Db::connect(&url, 2).await.unwrap();
    for sql in setup {
        sqlx::query(sql).execute(platform.pool()).await.unwrap();
    }
    platform.close().await;
    let recordings = if s3 { Some(support::fresh_s3_bucket().await) } else { None };
    let settings = support::settings(dir.path(), url, recordings, toml);
    let ledger = open_ledger(&settings).await.unwrap();
    let stores = StoreRegistry::from_settings(&settings, ledger.db()).await.unwrap();
    let objects = open_object_store(&settings.recordings_url).unwrap();
    let mut acme = Vec::new();
    for (tenant, out) in [("acme", Some(&mut acme)), ("globex", None)] {
        let spec = SeedSpec {
            tenant: dsr::domain::TenantId::parse("t", tenant).unwrap(),
            subjects: 3,
            calls: 12,
            recording_bytes: 300,
            first: 0,
        };
        let mut seen = Vec::new();
        dsr::seed::seed(ledger.db(), &Tables::default(), objects.clone(), &spec, Utc::now(), |s| {
            seen.push(s)
        })
        .await
        .unwrap();
        if let Some(out) = out {
            *out = seen;
        }
    }
    let mut fixture_messy = None;
    if messy {
        for tenant in ["globex", "acme"] {
            fixture_messy = Some(
                seed_messy(ledger.db(), &Tables::default(), objects.clone(), tenant, Utc::now())
                    .await
                    .unwrap(),
            );
        }
    }
    let recordings_dir = (!s3).then(|| dir.path().join("recordings"));
    Fixture {
        stores,
        objects,
        db: ledger.db().clone(),
        acme,
        messy: fixture_messy.unwrap_or_else(|| MessyFixture {
            tenant_id: "acme".into(),
            people: vec![],
            unattributed: Default::default(),
            unattributed_objects: Default::default(),
        }),
        recordings_dir,
        _dir: dir,
    }
}

fn subject(tenant: &str, account_id: Option<&str>, email: Option<&str>, phone: Option<&str>) -> Subject {
    Subject::parse(tenant, account_id.unwrap_or(""), email.unwrap_or(""), phone.unwrap_or("")).unwrap()
}

async fn resolution(f: &Fixture, s: &Subject) -> Resolution {
    resolve::resolve(&f.stores, s, Region::default()).await.unwrap()
}

/// Erases the resolved person store by store in stage order, as the engine does, twice, with
/// the service's check after each; returns per store (found, unattributed, retained).
async fn erase_everywhere(f: &Fixture, res: &Resolution) -> BTreeMap<String, (u64, u64, bool)> {
    let mut stores = f.stores.all().to_vec();
    stores.sort_by_key(|s| s.stage());
    let mut out = BTreeMap::new();
    for store in stores {
        let name = store.name();
        let eraser = store.as_erase().unwrap_or_else(|| panic!("{name}: every catalog store erases"));
        let scan = resolve::scan(store.as_ref(), res).await.unwrap();
        let keys: Vec<String> = scan.mine.iter().cloned().collect();
        let first = eraser.erase(&res.person.tenant, &keys, Utc::now()).await.unwrap();
        assert_eq!(resolve::leftovers(store.as_ref(), res, &scan).await.unwrap(), 0, "{name}: checked empty");
        let second = eraser.erase(&res.person.tenant, &keys, Utc::now()).await.unwrap();
        assert_eq!(resolve::leftovers(store.as_ref(), res, &scan).await.unwrap(), 0, "{name}: twice");
        match (&first, &second) {
            (Erasure::Erased { affected }, Erasure::Erased { affected: again }) => {
                assert_eq!(*affected, keys.len() as u64, "{name}: first erase");
                assert_eq!(*again, 0, "{name}: erasing twice is harmless");
            }
            (Erasure::Retained { basis, .. }, Erasure::Retained { affected, .. }) => {
                assert!(basis.starts_with("legal_obligation"), "{basis}");
                assert_eq!(*affected, keys.len() as u64, "{name}: restricting again keeps the first time");
            }
            (Erasure::Erased { affected: 0 }, _) if keys.is_empty() => {}
            other => panic!("{name}: {other:?}"),
        }
        out.insert(
            name.to_owned(),
            (keys.len() as u64, scan.unattributed.len() as u64, matches!(first, Erasure::Retained { .. })),
        );
    }
    out
}

use support::live_keys;

/// Whether an object is there, by its exact stored key: on disk by its raw file name, on S3 by
/// a HEAD of the raw key.
async fn object_present(f: &Fixture, key: &str) -> bool {
    match &f.recordings_dir {
        Some(dir) => dir.join(key.trim_start_matches('/')).exists(),
        None => match f.objects.head(&object_path(key).unwrap()).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("{e}"),
        },
    }
}

async fn the_conformance_suite(backend: Backend, s3: bool) {
    let f = fixture(backend, s3, false).await;
    let target = &f.acme[1];
    let before = live_keys(&f.db, "acme").await;
    let globex_before = live_keys(&f.db, "globex").await;
    let res = resolution(&f, &subject("acme", None, None, Some(&target.phone))).await;
    assert_eq!(res.person.account_id.as_deref(), Some(target.account_id.as_str()), "the account resolves");
    for store in STORES {
        assert_eq!(res.store(store).unwrap().mine.len() as u64, target.counts[store], "{store}: resolved");
    }
    let erased = erase_everywhere(&f, &res).await;
    for store in STORES {
        assert_eq!(erased[store].0, target.counts[store], "{store}: found");
        assert_eq!(erased[store].1, 0, "{store}: nothing unattributed on the clean seed");
    }
    // Read directly: exactly the target's records left each store; the neighbours and the same
    // phone in another tenant are untouched.
    let after = live_keys(&f.db, "acme").await;
    for store in STORES {
        let gone: BTreeSet<&String> = before[store].difference(&after[store]).collect();
        assert_eq!(gone.len() as u64, target.counts[store], "{store}: {gone:?}");
        assert!(gone.iter().all(|k| k.contains("000001")), "{store}: only the target's: {gone:?}");
        assert!(after[store].is_subset(&before[store]));
    }
    assert_eq!(live_keys(&f.db, "globex").await, globex_before);
    for j in 0..12 {
        let mine = recording_key("acme", &format!("acme-call-000001-{j:04}"));
        assert!(!object_present(&f, &mine).await, "{mine}");
        for other in ["acme-call-000000", "acme-call-000002", "globex-call-000001"] {
            let tenant = other.split('-').next().unwrap();
            let key = recording_key(tenant, &format!("{other}-{j:04}"));
            assert!(object_present(&f, &key).await, "{key}");
        }
    }
    // The billed account keeps its row, without personal data.
    let (email, phone, name): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT email, phone, name FROM accounts WHERE id = $1")
            .bind(&target.account_id)
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!((email, phone, name), (None, None, None));
}

/// Every messy person, named as a caller would name them, erased one after another: after each,
/// the tables hold exactly what they held minus that person's records (by the seed's ground
/// truth, read directly), their objects are gone by their exact keys, everyone else's are there.
async fn messy_people_are_erased_exactly(backend: Backend, s3: bool) {
    let f = fixture(backend, s3, true).await;
    let m = &f.messy;
    let globex_before = live_keys(&f.db, "globex").await;
    // (person, how a caller names them, unattributed per store)
    let shared = BTreeMap::from([("call_logs", 2), ("transcripts", 2), ("recordings", 2), ("billing", 1)]);
    let none = BTreeMap::new();
    let cases: Vec<(&str, Subject, &BTreeMap<&str, u64>)> = vec![
        ("mixed_case", subject("acme", None, Some("mixed.case@example.com"), None), &none),
        ("padded", subject("acme", None, Some("padded@example.com"), None), &none),
        ("family_a", subject("acme", Some("acme-m-fam-a"), None, None), &shared),
        ("dup_a", subject("acme", Some("acme-m-dup-a"), None, None), &none),
        ("terminated", subject("acme", None, Some("term@example.com"), None), &none),
        ("before_signup", subject("acme", None, Some("signup@example.com"), None), &none),
        ("anonymous", subject("acme", None, None, Some("+15550001008")), &none),
        ("account_only", subject("acme", None, Some("acct.only@example.com"), None), &none),
    ];
    let mut expected = live_keys(&f.db, "acme").await;
    let mut gone_objects: BTreeSet<String> = BTreeSet::new();
    for (label, s, unattributed) in cases {
        let person = m.person(label);
        let res = resolution(&f, &s).await;
        let erased = erase_everywhere(&f, &res).await;
        for store in STORES {
            let theirs = person.records.get(store).cloned().unwrap_or_default();
            assert_eq!(erased[store].0, theirs.len() as u64, "{label} {store}: found");
            assert_eq!(
                erased[store].1,
                unattributed.get(store).copied().unwrap_or(0),
                "{label} {store}: unattributed"
            );
            let left = expected.get_mut(store).unwrap();
            for k in &theirs {
                left.remove(k);
            }
        }
        let now = live_keys(&f.db, "acme").await;
        assert_eq!(now, expected, "{label}: exactly their records are gone, nobody else's");
        gone_objects.extend(person.objects.iter().cloned());
        for p in &m.people {
            for key in &p.objects {
                assert_eq!(
                    object_present(&f, key).await,
                    !gone_objects.contains(key),
                    "{label}: object {key}"
                );
            }
        }
        for key in &m.unattributed_objects {
            assert!(object_present(&f, key).await, "{label}: shared-line object {key}");
        }
    }
    // The family's other member, the duplicate's twin and the shared line are all still there.
    for (store, keys) in &m.person("family_b").records {
        assert!(keys.is_subset(&expected[store]), "family_b {store}");
    }
    for (store, keys) in &m.unattributed {
        assert!(keys.is_subset(&expected[store]), "shared line {store}");
    }
    assert_eq!(
        live_keys(&f.db, "globex").await,
        globex_before,
        "the same data in another tenant is untouched"
    );
}

/// The conformance suite for a store of the catalog: `agent_notes`, described in configuration
/// only (linked by call id, phones in national formats, blanked rather than deleted). Each
/// messy person's notes are blanked — read directly: exactly theirs, nobody else's — and
/// erasing twice is harmless.
async fn a_catalog_store_passes_the_conformance_suite(backend: Backend) {
    let toml = "[[catalog]]\nname = \"agent_notes\"\ntable = \"agent_notes\"\n\
                identifiers = [{ column = \"caller_phone\", holds = \"phone\" }]\n\
                link = { column = \"call_id\", store = \"call_logs\" }\nerasure = \"blank\"\nblank = [\"note\"]\n";
    let table = "CREATE TABLE agent_notes (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, call_id TEXT, caller_phone TEXT, note TEXT)";
    let f = fixture_with(backend, false, true, toml, &[table]).await;
    let calls: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, tenant_id, caller_phone FROM call_logs")
            .fetch_all(f.db.pool())
            .await
            .unwrap();
    for (call, tenant, phone) in &calls {
        sqlx::query("INSERT INTO agent_notes VALUES ($1, $2, $3, $4, 'a note')")
            .bind(format!("{call}-n"))
            .bind(tenant)
            .bind(call)
            .bind(phone)
            .execute(f.db.pool())
            .await
            .unwrap();
    }
    let notes = |db: Db| async move {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM agent_notes WHERE tenant_id = 'acme' AND (note IS NOT NULL OR caller_phone IS NOT NULL)",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        rows.into_iter().map(|r| r.0).collect::<BTreeSet<String>>()
    };
    assert!(f.stores.check().await.is_empty(), "the catalog entry fits its table");
    let mut expected = notes(f.db.clone()).await;
    for (label, s, unattributed) in [
        ("mixed_case", subject("acme", None, Some("mixed.case@example.com"), None), 0),
        ("family_a", subject("acme", Some("acme-m-fam-a"), None, None), 2),
        ("anonymous", subject("acme", None, None, Some("+15550001008")), 0),
    ] {
        let res = resolution(&f, &s).await;
        let theirs: BTreeSet<String> =
            f.messy.person(label).records["call_logs"].iter().map(|c| format!("{c}-n")).collect();
        let notes_store = f.stores.get("agent_notes").unwrap();
        let scan = resolve::scan(notes_store.as_ref(), &res).await.unwrap();
        assert_eq!(scan.mine, theirs, "{label}: resolved");
        assert_eq!(scan.unattributed.len(), unattributed, "{label}: unattributed");
        let erased = erase_everywhere(&f, &res).await;
        assert_eq!(erased["agent_notes"].0, theirs.len() as u64, "{label}");
        expected = expected.difference(&theirs).cloned().collect();
        assert_eq!(notes(f.db.clone()).await, expected, "{label}: exactly their notes are blanked");
    }
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM agent_notes").fetch_one(f.db.pool()).await.unwrap();
    assert_eq!(rows as usize, calls.len(), "blanked, not deleted");
}

/// Identifiers that name more than one person are refused, and resolve nothing.
async fn ambiguous_subjects_are_refused(backend: Backend) {
    let f = fixture(backend, false, true).await;
    for (s, field) in [
        (subject("acme", None, None, Some("+15550001003")), "subject.phone"),
        (subject("acme", None, Some("dup@example.com"), None), "subject.email"),
        (subject("acme", None, Some("mixed.case@example.com"), Some("+15550001002")), "subject"),
        (subject("acme", Some("acme-m-padded"), None, Some("+15550001008")), "subject"),
        (subject("acme", Some("acme-m-padded"), Some("fam.a@example.com"), None), "subject"),
    ] {
        match resolve::resolve(&f.stores, &s, Region::default()).await {
            Err(resolve::ResolveError::Refused(r)) => assert_eq!(r.field, field, "{}", r.reason),
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
    }
    // The same person named by everything they hold resolves.
    let ok = subject("acme", Some("acme-m-mixed"), Some("MIXED.case@example.com"), Some("+15550001001"));
    assert_eq!(resolution(&f, &ok).await.person.account_id.as_deref(), Some("acme-m-mixed"));
}

async fn an_account_no_billing_references_is_deleted_outright(backend: Backend) {
    let f = fixture(backend, false, false).await;
    let target = &f.acme[2];
    sqlx::query("DELETE FROM billing_records WHERE account_id = $1")
        .bind(&target.account_id)
        .execute(f.db.pool())
        .await
        .unwrap();
    let accounts = f.stores.get("accounts").unwrap();
    let erased = accounts
        .as_erase()
        .unwrap()
        .erase("acme", std::slice::from_ref(&target.account_id), Utc::now())
        .await
        .unwrap();
    assert_eq!(erased, Erasure::Erased { affected: 1 });
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE id = $1")
        .bind(&target.account_id)
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

/// A phone correction of a person whose calls hold their phone in three national formats: every
/// one of their rows holds the new phone, read directly; the shared line and the neighbours
/// keep theirs; rectifying twice is harmless.
async fn a_rectification_rewrites_every_format_of_the_old_phone(backend: Backend) {
    let f = fixture(backend, false, true).await;
    let res = resolution(&f, &subject("acme", None, Some("mixed.case@example.com"), None)).await;
    let c =
        Corrections::parse(Some("New Name"), Some("new.mixed@example.org"), Some("+15559990001")).unwrap();
    assert_eq!(resolve::taken(f.stores.identity().unwrap().as_ref(), &res.person, &c).await.unwrap(), None);
    for store in f.stores.all() {
        let name = store.name();
        let rectifier = store.as_rectify().unwrap_or_else(|| panic!("{name}: every catalog store corrects"));
        if !rectifier.holds_any_of(&c) {
            continue;
        }
        let scan = resolve::scan(store.as_ref(), &res).await.unwrap();
        let keys: Vec<String> = scan.mine.iter().cloned().collect();
        let mine = store
            .candidates(&Probe { tenant: "acme", keys: keys.clone(), ..Default::default() })
            .await
            .unwrap();
        let first = rectifier.rectify(&res.person, &mine, &c, Utc::now()).await.unwrap();
        assert!(rectifier.verify_rectified(&res.person, &keys, &c).await.unwrap(), "{name}: read back");
        let mine = store
            .candidates(&Probe { tenant: "acme", keys: keys.clone(), ..Default::default() })
            .await
            .unwrap();
        let second = rectifier.rectify(&res.person, &mine, &c, Utc::now()).await.unwrap();
        assert_eq!(second.affected, 0, "{name}: twice is harmless");
        assert!(first.affected >= 1, "{name}: {first:?}");
        assert_eq!(first.hold.is_some(), name == "billing", "{name}");
    }
    let person = f.messy.person("mixed_case");
    for (table, store) in
        [("call_logs", "call_logs"), ("transcripts", "transcripts"), ("recordings", "recordings")]
    {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as(&format!("SELECT id, caller_phone FROM {table} WHERE tenant_id = 'acme'"))
                .fetch_all(f.db.pool())
                .await
                .unwrap();
        for (id, phone) in rows {
            let theirs = person.records[store].contains(&id);
            assert_eq!(phone.as_deref() == Some("+15559990001"), theirs, "{table} {id}: {phone:?}");
        }
    }
    let (email, phone, name): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT email, phone, name FROM accounts WHERE id = 'acme-m-mixed'")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(
        (email.as_deref(), phone.as_deref(), name.as_deref()),
        (Some("new.mixed@example.org"), Some("+15559990001"), Some("New Name"))
    );
    // A correction to a value another account holds, however it is written there, is taken.
    let taken = Corrections::parse(None, Some("PADDED@example.com"), None).unwrap();
    assert_eq!(
        resolve::taken(f.stores.identity().unwrap().as_ref(), &res.person, &taken).await.unwrap(),
        Some("corrections.email")
    );
}

/// The identifier lookups are index scans on both backends, with enough rows that a planner
/// would rather scan otherwise.
async fn identifier_lookups_are_index_scans(backend: Backend) {
    let f = fixture(backend, false, false).await;
    let db = &f.db;
    let rows = 20_000;
    let fill = match db.backend() {
        DbBackend::Postgres => format!(
            "INSERT INTO accounts (id, tenant_id, email, phone, name, created_at) \
             SELECT 'bulk-' || g, 'bulk', 'Bulk' || g || '@Example.com', '(555) 1' || lpad(g::text, 6, '0'), 'n', 0 \
             FROM generate_series(1, {rows}) g"
        ),
        DbBackend::Sqlite => format!(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows}) \
             INSERT INTO accounts (id, tenant_id, email, phone, name, created_at) \
             SELECT 'bulk-' || n, 'bulk', 'Bulk' || n || '@Example.com', '(555) 1' || substr('000000' || n, -6), 'n', 0 FROM g"
        ),
    };
    sqlx::query(&fill).execute(db.pool()).await.unwrap();
    sqlx::query("ANALYZE").execute(db.pool()).await.unwrap();
    let explain = match db.backend() {
        DbBackend::Postgres => "EXPLAIN",
        DbBackend::Sqlite => "EXPLAIN QUERY PLAN",
    };
    for (what, expr, value) in [
        ("email", normalize::email_key(db.backend(), "email"), "bulk77@example.com".to_owned()),
        ("phone", normalize::phone_digits("phone"), "5551000077".to_owned()),
    ] {
        let sql = format!("{explain} SELECT id FROM accounts WHERE tenant_id = $1 AND {expr} IN ($2)");
        let plan: Vec<String> = match db.backend() {
            DbBackend::Postgres => sqlx::query_as::<_, (String,)>(&sql)
                .bind("bulk")
                .bind(&value)
                .fetch_all(db.pool())
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.0)
                .collect(),
            DbBackend::Sqlite => sqlx::query_as::<_, (i64, i64, i64, String)>(&sql)
                .bind("bulk")
                .bind(&value)
                .fetch_all(db.pool())
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.3)
                .collect(),
        };
        let plan = plan.join("\n");
        println!("{what} lookup plan ({:?}):\n{plan}", db.backend());
        let index = format!("accounts_tenant_{}", if what == "email" { "email_key" } else { "phone_digits" });
        assert!(plan.contains(&index), "{what}: not an index scan on {index}:\n{plan}");
        let found: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM accounts WHERE tenant_id = $1 AND {expr} IN ($2)"
        ))
        .bind("bulk")
        .bind(&value)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(found, 1, "{what}");
    }
}

async fn every_adapter_lists_counts_and_erases_what_is_past_retention(backend: Backend, s3: bool) {
    let f = fixture(backend, s3, false).await;
    let now = Utc::now();
    // Accounts age from termination: acme's were terminated 40 days ago.
    sqlx::query("UPDATE accounts SET terminated_at = $1 WHERE tenant_id = 'acme'")
        .bind(dsr::clock::to_millis(now - chrono::Duration::days(40)))
        .execute(f.db.pool())
        .await
        .unwrap();
    // Everything seeded is older than a cutoff of tomorrow; nothing is older than ten years ago.
    let all = Expiry { tenant: "acme", now, cutoff: now + chrono::Duration::days(1) };
    let none = Expiry { tenant: "acme", now, cutoff: now - chrono::Duration::days(3650) };
    // In the sweep's order: call logs last, since they link transcripts and recordings to the
    // account.
    let mut stores = f.stores.all().to_vec();
    stores.sort_by_key(|s| s.stage());
    for store in stores {
        let name = store.name();
        let retention =
            store.as_retention().unwrap_or_else(|| panic!("{name}: every catalog store has retention"));
        assert!(retention.lists_tenants(), "{name}: a catalog store lists its tenants");
        let total: u64 = f.acme.iter().map(|s| s.counts[name]).sum();
        assert_eq!(retention.tenants(None, 10).await.unwrap(), ["acme", "globex"], "{name}");
        assert_eq!(retention.tenants(Some("acme"), 10).await.unwrap(), ["globex"], "{name}");
        assert_eq!(retention.tenants(None, 1).await.unwrap(), ["acme"], "{name}");
        assert_eq!(retention.count_expired(&all).await.unwrap(), total, "{name}: count");
        assert_eq!(retention.count_expired(&none).await.unwrap(), 0, "{name}: nothing that old");
        let globex = Expiry { tenant: "globex", ..all };
        let globex_before = retention.count_expired(&globex).await.unwrap();

        // Listed in key order, page after page, each record with the identifiers it carries.
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = retention.list_expired(&all, after.as_deref(), 5).await.unwrap();
            assert!(page.len() <= 5);
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            listed.extend(page);
        }
        assert_eq!(listed.len() as u64, total, "{name}: listed");
        assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "{name}: key order");
        let mine: Vec<_> =
            listed.iter().filter(|r| r.phone.as_deref() == Some(f.acme[1].phone.as_str())).collect();
        assert_eq!(
            mine.len() as u64,
            f.acme[1].counts[name],
            "{name}: the subject's records carry its phone"
        );
        for r in &mine {
            assert_eq!(r.account_id.as_deref(), Some(f.acme[1].account_id.as_str()), "{name}: {r:?}");
            if name == "accounts" {
                assert_eq!(r.email.as_deref(), Some(f.acme[1].email.as_str()));
            }
        }
        assert!(!format!("{:?}", mine[0]).contains(&f.acme[1].phone), "Debug shows no identifier");

        // By key: once, then harmlessly again; another tenant's name reaches nothing.
        let keys: Vec<String> = listed.iter().take(3).map(|r| r.key.clone()).collect();
        assert_eq!(retention.erase_records("globex", &keys).await.unwrap(), 0, "{name}: tenant-scoped");
        assert_eq!(retention.erase_records("acme", &keys).await.unwrap(), 3, "{name}: by key");
        assert_eq!(retention.erase_records("acme", &keys).await.unwrap(), 0, "{name}: twice is harmless");
        assert_eq!(retention.count_expired(&all).await.unwrap(), total - 3, "{name}");

        // In bounded batches until nothing is left.
        let mut batches = Vec::new();
        loop {
            let n = retention.erase_expired(&all, 4).await.unwrap();
            batches.push(n);
            if n < 4 {
                break;
            }
        }
        assert!(batches.iter().all(|n| *n <= 4), "{name}: {batches:?}");
        assert_eq!(batches.iter().sum::<u64>(), total - 3, "{name}: {batches:?}");
        assert_eq!(retention.count_expired(&all).await.unwrap(), 0, "{name}: nothing expired is left");
        assert_eq!(
            retention.count_expired(&globex).await.unwrap(),
            globex_before,
            "{name}: globex untouched"
        );
    }
    // The accounts were billed: erased to bare rows, kept for their billing records (gone now,
    // so a later sweep deletes them).
    let bare: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM accounts WHERE tenant_id = 'acme' AND email IS NULL AND phone IS NULL AND name IS NULL",
    )
    .fetch_one(f.db.pool())
    .await
    .unwrap();
    assert_eq!(bare, 3);
    let accounts = f.stores.get("accounts").unwrap().as_retention().unwrap();
    assert_eq!(accounts.count_expired(&all).await.unwrap(), 3, "no billing left: the bare rows expire");
    assert_eq!(accounts.erase_expired(&all, 10).await.unwrap(), 3);
    // Every expired recording's audio is gone; globex's is all there.
    for i in 0..3 {
        for j in 0..12 {
            let mine = Path::from(recording_key("acme", &format!("acme-call-{i:06}-{j:04}")));
            assert!(
                matches!(f.objects.head(&mine).await, Err(object_store::Error::NotFound { .. })),
                "{mine}"
            );
            let theirs = Path::from(recording_key("globex", &format!("globex-call-{i:06}-{j:04}")));
            f.objects.head(&theirs).await.unwrap();
        }
    }
}

mod every_adapter_passes_the_retention_suite {
    use super::*;
    #[tokio::test]
    async fn on_sqlite_and_local_files() {
        every_adapter_lists_counts_and_erases_what_is_past_retention(Backend::Sqlite, false).await
    }
    #[tokio::test]
    async fn on_postgres_and_local_files() {
        every_adapter_lists_counts_and_erases_what_is_past_retention(Backend::Postgres, false).await
    }
    #[tokio::test]
    async fn on_sqlite_and_s3() {
        every_adapter_lists_counts_and_erases_what_is_past_retention(Backend::Sqlite, true).await
    }
    #[tokio::test]
    async fn on_postgres_and_s3() {
        every_adapter_lists_counts_and_erases_what_is_past_retention(Backend::Postgres, true).await
    }
}

macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    };
}

mod every_adapter_passes_the_conformance_suite {
    use super::*;
    #[tokio::test]
    async fn on_sqlite_and_local_files() {
        the_conformance_suite(Backend::Sqlite, false).await
    }
    #[tokio::test]
    async fn on_postgres_and_local_files() {
        the_conformance_suite(Backend::Postgres, false).await
    }
    #[tokio::test]
    async fn on_sqlite_and_s3() {
        the_conformance_suite(Backend::Sqlite, true).await
    }
    #[tokio::test]
    async fn on_postgres_and_s3() {
        the_conformance_suite(Backend::Postgres, true).await
    }
}

mod messy_people_are_erased_exactly_on_every_backend {
    use super::*;
    #[tokio::test]
    async fn on_sqlite_and_local_files() {
        messy_people_are_erased_exactly(Backend::Sqlite, false).await
    }
    #[tokio::test]
    async fn on_postgres_and_local_files() {
        messy_people_are_erased_exactly(Backend::Postgres, false).await
    }
    #[tokio::test]
    async fn on_sqlite_and_s3() {
        messy_people_are_erased_exactly(Backend::Sqlite, true).await
    }
    #[tokio::test]
    async fn on_postgres_and_s3() {
        messy_people_are_erased_exactly(Backend::Postgres, true).await
    }
}

on_every_backend!(an_account_no_billing_references_is_deleted_outright);
on_every_backend!(ambiguous_subjects_are_refused);
on_every_backend!(a_catalog_store_passes_the_conformance_suite);
on_every_backend!(a_rectification_rewrites_every_format_of_the_old_phone);
on_every_backend!(identifier_lookups_are_index_scans);
