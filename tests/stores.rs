//! One conformance suite for every store adapter, run against SQLite and Postgres and against
//! a local directory and a real S3 API for the recordings: erasing twice is harmless, a preview
//! after an erase is zero, another tenant with the same phone and the neighbours are untouched,
//! retained data reports its basis and date. And a rectify round: correcting twice is harmless,
//! the read-back verifies, the subject is found under the new values only, and another tenant
//! with the same phone and the neighbours are untouched. And the retention methods (issue 9):
//! tenants are listed, expired records counted and listed in key order with their identifiers,
//! erased by key (twice is harmless, another tenant's keys do nothing) and in bounded batches.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use chrono::{Months, Utc};
use dsr::{
    domain::{Corrections, Subject},
    seed::{recording_key, SeedSpec, SeededSubject},
    startup::open_ledger,
    stores::{open_object_store, reference::Tables, CorrectionConflict, Erasure, Expiry, StoreRegistry},
};
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use support::Backend;

struct Fixture {
    stores: StoreRegistry,
    objects: Arc<dyn ObjectStore>,
    db: dsr::db::Db,
    acme: Vec<SeededSubject>,
    _dir: tempfile::TempDir,
}

async fn fixture(backend: Backend, s3: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = support::fresh_database(backend, dir.path()).await;
    let recordings = if s3 { Some(support::fresh_s3_bucket().await) } else { None };
    let settings = support::settings(dir.path(), url, recordings, "");
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
    Fixture { stores, objects, db: ledger.db().clone(), acme, _dir: dir }
}

fn subject(tenant: &str, s: &SeededSubject) -> Subject {
    Subject::parse(tenant, "", "", &s.phone).unwrap()
}

async fn the_conformance_suite(backend: Backend, s3: bool) {
    let f = fixture(backend, s3).await;
    let target = &f.acme[1];
    let me = f.stores.resolve(subject("acme", target)).await.unwrap();
    assert!(me.account_id.is_some() && me.email.is_some(), "the account row resolves the subject");
    let same_phone_elsewhere = f.stores.resolve(subject("globex", target)).await.unwrap();
    let neighbour = f.stores.resolve(subject("acme", &f.acme[0])).await.unwrap();

    for store in f.stores.all() {
        let name = store.name();
        let expected = target.counts[name];
        let before = store.preview(&me).await.unwrap();
        assert_eq!(before.records, expected, "{name}: preview before");

        let first = store.erase(&me, Utc::now()).await.unwrap();
        assert!(store.verify_erased(&me).await.unwrap(), "{name}: verified after erase");
        let second = store.erase(&me, Utc::now()).await.unwrap();
        assert!(store.verify_erased(&me).await.unwrap(), "{name}: verified after a second erase");
        let after = store.preview(&me).await.unwrap();

        match (name, first, second) {
            (
                "billing",
                Erasure::Retained { found, basis, until, .. },
                Erasure::Retained { found: again, .. },
            ) => {
                assert_eq!(found, expected, "billing: found");
                assert_eq!(again, expected, "billing: the hold is reported again, nothing erased");
                assert!(basis.starts_with("legal_obligation"), "{basis}");
                let newest = Utc::now() - chrono::Duration::days(1);
                let delta = (until - (newest + Months::new(84))).num_seconds().abs();
                assert!(delta < 120, "billing: retained until the newest record + 7 years ({until})");
                assert_eq!(after.records, expected, "billing: rows kept");
                assert!(after.under_legal_hold);
            }
            (_, Erasure::Erased { found, affected }, Erasure::Erased { found: again, .. }) => {
                assert_eq!((found, affected), (expected, expected), "{name}: first erase");
                assert_eq!(again, 0, "{name}: erasing twice is harmless");
                assert_eq!(after.records, 0, "{name}: preview after erase");
            }
            (_, first, second) => panic!("{name}: unexpected {first:?} then {second:?}"),
        }
        for (who, other) in
            [("same phone in another tenant", &same_phone_elsewhere), ("neighbour", &neighbour)]
        {
            assert_eq!(store.preview(other).await.unwrap().records, expected, "{name}: {who} untouched");
        }
    }

    // Recordings: the subject's objects are gone, the others' are there.
    for j in 0..12 {
        let mine = Path::from(recording_key("acme", &format!("acme-call-000001-{j:04}")));
        assert!(matches!(f.objects.head(&mine).await, Err(object_store::Error::NotFound { .. })), "{mine}");
        for other in ["acme-call-000000", "acme-call-000002"] {
            let key = Path::from(recording_key("acme", &format!("{other}-{j:04}")));
            f.objects.head(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let theirs = Path::from(recording_key("globex", &format!("globex-call-000001-{j:04}")));
        f.objects.head(&theirs).await.unwrap();
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

async fn an_account_no_billing_references_is_deleted_outright(backend: Backend) {
    let f = fixture(backend, false).await;
    let target = &f.acme[2];
    sqlx::query("DELETE FROM billing_records WHERE account_id = $1")
        .bind(&target.account_id)
        .execute(f.db.pool())
        .await
        .unwrap();
    let me = f.stores.resolve(subject("acme", target)).await.unwrap();
    let accounts = f.stores.get("accounts").unwrap();
    assert_eq!(accounts.erase(&me, Utc::now()).await.unwrap(), Erasure::Erased { found: 1, affected: 1 });
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE id = $1")
        .bind(&target.account_id)
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

async fn a_subject_known_by_email_alone_is_resolved_through_the_account(backend: Backend) {
    let f = fixture(backend, false).await;
    let target = &f.acme[0];
    let by_email = Subject::parse("acme", "", &target.email, "").unwrap();
    let calls = f.stores.get("call_logs").unwrap();
    assert!(!calls.applies_to(&by_email), "call logs are not keyed by email");
    let resolved = f.stores.resolve(by_email).await.unwrap();
    assert_eq!(resolved.phone.as_ref().map(|p| p.as_str()), Some(target.phone.as_str()));
    assert_eq!(calls.preview(&resolved).await.unwrap().records, 12);
    // In another tenant the same email resolves to that tenant's account only.
    let elsewhere = f.stores.resolve(Subject::parse("globex", "", &target.email, "").unwrap()).await.unwrap();
    assert_eq!(elsewhere.account_id.as_ref().unwrap().as_str(), "globex-acct-000000");
}

/// Transcripts and recordings of an account's calls are found through the call logs even when
/// they carry another phone number.
async fn rows_linked_by_call_id_are_found_through_the_call_logs(backend: Backend) {
    let f = fixture(backend, false).await;
    let target = &f.acme[1];
    sqlx::query(
        "UPDATE transcripts SET caller_phone = '+19998887777' WHERE call_id = 'acme-call-000001-0000'",
    )
    .execute(f.db.pool())
    .await
    .unwrap();
    let by_account = Subject::parse("acme", &target.account_id, "", "").unwrap();
    let transcripts = f.stores.get("transcripts").unwrap();
    assert_eq!(transcripts.preview(&by_account).await.unwrap().records, 12);
    let by_phone_only = Subject::parse("acme", "", "", &target.phone).unwrap();
    assert_eq!(transcripts.preview(&by_phone_only).await.unwrap().records, 11);
}

async fn every_adapter_rectifies_twice_harmlessly_and_reads_the_new_values_back(backend: Backend) {
    let f = fixture(backend, false).await;
    let target = &f.acme[1];
    let me = f.stores.resolve(subject("acme", target)).await.unwrap();
    let same_phone_elsewhere = f.stores.resolve(subject("globex", target)).await.unwrap();
    let neighbour = f.stores.resolve(subject("acme", &f.acme[0])).await.unwrap();
    let c = Corrections::parse(Some("New Name"), Some("new1@example.org"), Some("+15559990001")).unwrap();
    let corrected = c.apply_to(&me);
    let old_phone_only = subject("acme", target);
    assert_eq!(f.stores.correction_conflict(&me, &c).await.unwrap(), None);

    for store in f.stores.all() {
        let name = store.name();
        let expected = target.counts[name];
        assert!(store.holds_any_of(&c), "{name}");
        let first = store.rectify(&me, &c, Utc::now()).await.unwrap();
        assert_eq!((first.found, first.affected), (expected, expected), "{name}: first rectify");
        assert!(store.verify_rectified(&me, &c).await.unwrap(), "{name}: verified");
        let second = store.rectify(&me, &c, Utc::now()).await.unwrap();
        assert!(store.verify_rectified(&me, &c).await.unwrap(), "{name}: verified after a second rectify");
        // The account is still found by its id and rewritten with the same values; the
        // phone-keyed stores find nothing left under the old phone.
        let again = if name == "accounts" { 1 } else { 0 };
        assert_eq!(second.affected, again, "{name}: rectifying twice is harmless");
        match name {
            "billing" => {
                let hold = first.hold.expect("billing stays under the hold");
                assert!(hold.basis.starts_with("legal_obligation"), "{}", hold.basis);
                assert!(hold.until > Utc::now() + Months::new(83), "{}", hold.until);
                assert_eq!(second.hold, Some(hold), "a retry still reports the hold");
            }
            _ => assert_eq!(first.hold, None, "{name}"),
        }
        assert_eq!(
            store.preview(&corrected).await.unwrap().records,
            expected,
            "{name}: under the new values"
        );
        assert_eq!(store.preview(&old_phone_only).await.unwrap().records, 0, "{name}: under the old phone");
        for (who, other) in
            [("same phone in another tenant", &same_phone_elsewhere), ("neighbour", &neighbour)]
        {
            assert_eq!(store.preview(other).await.unwrap().records, expected, "{name}: {who} untouched");
        }
    }
    let (email, phone, name): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT email, phone, name FROM accounts WHERE id = $1")
            .bind(&target.account_id)
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(
        (email.as_deref(), phone.as_deref(), name.as_deref()),
        (Some("new1@example.org"), Some("+15559990001"), Some("New Name"))
    );
    // Recording objects are keyed by call id: all still there.
    for j in 0..12 {
        let key = Path::from(recording_key("acme", &format!("acme-call-000001-{j:04}")));
        f.objects.head(&key).await.unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    // A name is held by the account only.
    let name_only = Corrections::parse(Some("Another Name"), None, None).unwrap();
    for store in f.stores.all() {
        assert_eq!(store.holds_any_of(&name_only), store.name() == "accounts", "{}", store.name());
    }
}

async fn correction_conflicts_are_found_before_anything_is_written(backend: Backend) {
    let f = fixture(backend, false).await;
    let [zero, one, two] = [&f.acme[0], &f.acme[1], &f.acme[2]];
    let me = f.stores.resolve(subject("acme", one)).await.unwrap();
    let taken = |email: Option<&str>, phone: Option<&str>| Corrections::parse(None, email, phone).unwrap();
    let conflict = |c| {
        let (stores, me) = (&f.stores, &me);
        async move { stores.correction_conflict(me, &c).await.unwrap() }
    };
    assert_eq!(
        conflict(taken(Some(&zero.email), None)).await,
        Some(CorrectionConflict::Taken("corrections.email"))
    );
    assert_eq!(
        conflict(taken(None, Some(&zero.phone))).await,
        Some(CorrectionConflict::Taken("corrections.phone"))
    );
    // The subject's own values, and values only another tenant has, are no conflict.
    assert_eq!(conflict(taken(Some(&one.email), Some(&one.phone))).await, None);
    assert_eq!(conflict(taken(None, Some("+15550009999"))).await, None);
    // An account with a NULL column is still seen (the predicate is NULL there, not false).
    sqlx::query("UPDATE accounts SET phone = NULL WHERE id = $1")
        .bind(&zero.account_id)
        .execute(f.db.pool())
        .await
        .unwrap();
    assert_eq!(
        conflict(taken(Some(&zero.email), None)).await,
        Some(CorrectionConflict::Taken("corrections.email"))
    );
    // Two accounts under one phone: correcting "them" would merge two people.
    sqlx::query("UPDATE accounts SET phone = $1 WHERE id = $2")
        .bind(&one.phone)
        .bind(&two.account_id)
        .execute(f.db.pool())
        .await
        .unwrap();
    let shared = Subject::parse("acme", "", "", &one.phone).unwrap();
    let shared = f.stores.resolve(shared).await.unwrap();
    let c = taken(Some("fresh@example.com"), None);
    assert_eq!(f.stores.correction_conflict(&shared, &c).await.unwrap(), Some(CorrectionConflict::Ambiguous));
    // And the adapter refuses on its own, should a request get past the submit check.
    let accounts = f.stores.get("accounts").unwrap();
    let refused = accounts.rectify(&shared, &c, Utc::now()).await.unwrap_err();
    assert!(refused.to_string().starts_with("subject:"), "{refused}");
    let unchanged: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE email = 'fresh@example.com'")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(unchanged, 0);
}

async fn every_adapter_lists_counts_and_erases_what_is_past_retention(backend: Backend, s3: bool) {
    let f = fixture(backend, s3).await;
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
    let target = subject("acme", &f.acme[1]);
    let me = f.stores.resolve(target).await.unwrap();
    // In the sweep's order: call logs last, since they link transcripts and recordings to the
    // account.
    let mut stores = f.stores.all().to_vec();
    stores.sort_by_key(|s| s.stage());
    for store in stores {
        let name = store.name();
        let total: u64 = f.acme.iter().map(|s| s.counts[name]).sum();
        assert_eq!(store.tenants(None, 10).await.unwrap(), ["acme", "globex"], "{name}");
        assert_eq!(store.tenants(Some("acme"), 10).await.unwrap(), ["globex"], "{name}");
        assert_eq!(store.tenants(None, 1).await.unwrap(), ["acme"], "{name}");
        assert_eq!(store.count_expired(&all).await.unwrap(), total, "{name}: count");
        assert_eq!(store.count_expired(&none).await.unwrap(), 0, "{name}: nothing that old");
        let globex = Expiry { tenant: "globex", ..all };
        let globex_before = store.count_expired(&globex).await.unwrap();

        // Listed in key order, page after page, each record with the identifiers it carries.
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_expired(&all, after.as_deref(), 5).await.unwrap();
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

        // Billing reports the records an erase kept, so a hold can erase them later.
        let kept = store.retained_records(&me).await.unwrap();
        if name == "billing" {
            store.erase(&me, now).await.unwrap();
            let kept = store.retained_records(&me).await.unwrap();
            assert_eq!(kept.len() as u64, f.acme[1].counts["billing"], "billing: restricted rows");
        } else {
            assert!(kept.is_empty(), "{name}");
        }

        // By key: once, then harmlessly again; another tenant's name reaches nothing.
        let keys: Vec<String> = listed.iter().take(3).map(|r| r.key.clone()).collect();
        assert_eq!(store.erase_records("globex", &keys).await.unwrap(), 0, "{name}: tenant-scoped");
        assert_eq!(store.erase_records("acme", &keys).await.unwrap(), 3, "{name}: by key");
        assert_eq!(store.erase_records("acme", &keys).await.unwrap(), 0, "{name}: twice is harmless");
        assert_eq!(store.count_expired(&all).await.unwrap(), total - 3, "{name}");

        // In bounded batches until nothing is left.
        let mut batches = Vec::new();
        loop {
            let n = store.erase_expired(&all, 4).await.unwrap();
            batches.push(n);
            if n < 4 {
                break;
            }
        }
        assert!(batches.iter().all(|n| *n <= 4), "{name}: {batches:?}");
        assert_eq!(batches.iter().sum::<u64>(), total - 3, "{name}: {batches:?}");
        assert_eq!(store.count_expired(&all).await.unwrap(), 0, "{name}: nothing expired is left");
        assert_eq!(store.count_expired(&globex).await.unwrap(), globex_before, "{name}: globex untouched");
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
    let accounts = f.stores.get("accounts").unwrap();
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

on_every_backend!(an_account_no_billing_references_is_deleted_outright);
on_every_backend!(a_subject_known_by_email_alone_is_resolved_through_the_account);
on_every_backend!(rows_linked_by_call_id_are_found_through_the_call_logs);
on_every_backend!(every_adapter_rectifies_twice_harmlessly_and_reads_the_new_values_back);
on_every_backend!(correction_conflicts_are_found_before_anything_is_written);
