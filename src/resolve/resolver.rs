//! The look-ups behind a resolution: who the identifiers name (the identity store, where an
//! account's key is its id), then what every store holds of that person, links followed; and the
//! independent check after an erase.
use std::collections::BTreeSet;

use super::{
    attribute, names_person, Attribution, CandidateRow, IdentKind, Person, Region, Resolution, StoreScan,
};
use crate::{
    domain::Subject,
    stores::{Probe, StoreAdapter, StoreError, StoreRegistry, StoreResult},
};

/// Why a subject cannot be resolved to exactly one person: the field and the reason, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{}: {}", .0.field, .0.reason)]
    Refused(Refusal),
    #[error("{0}: {1}")]
    Store(String, StoreError),
}

fn refuse(field: &'static str, reason: impl Into<String>) -> ResolveError {
    ResolveError::Refused(Refusal { field, reason: reason.into() })
}

fn store_err(adapter: &dyn StoreAdapter) -> impl FnOnce(StoreError) -> ResolveError + '_ {
    move |e| ResolveError::Store(adapter.name().to_owned(), e)
}

/// Resolves `subject` within its tenant (`region` reads national phone formats): refuses
/// identifiers that name different people or one identifier that names several accounts, then
/// records what every store holds of the one person left.
pub async fn resolve(
    stores: &StoreRegistry,
    subject: &Subject,
    region: Region,
) -> Result<Resolution, ResolveError> {
    let (person, identity_rows) = person_and_accounts(stores, subject, region).await?;
    scan_stores_knowing(stores, person, Some(identity_rows)).await
}

/// The first half of `resolve`: the one person `subject` names (or the refusal), without
/// looking at any store but the identity store.
pub async fn resolve_person(
    stores: &StoreRegistry,
    subject: &Subject,
    region: Region,
) -> Result<Person, ResolveError> {
    Ok(person_and_accounts(stores, subject, region).await?.0)
}

/// `resolve_person`, and the identity store's rows it read: those found by every identifier of
/// the person (the given ones, then the account's others) — exactly what the scan of the
/// identity store would find again (the account's key is among them: the account row itself).
async fn person_and_accounts(
    stores: &StoreRegistry,
    subject: &Subject,
    region: Region,
) -> Result<(Person, Vec<CandidateRow>), ResolveError> {
    let tenant = subject.tenant.as_str();
    let mut person = Person::new(tenant, &region.code());
    let given: Vec<(&'static str, IdentKind, String)> = [
        subject
            .account_id
            .as_ref()
            .map(|a| ("subject.account_id", IdentKind::AccountId, a.as_str().to_owned())),
        subject.email.as_ref().map(|e| ("subject.email", IdentKind::Email, e.as_str().to_owned())),
        subject.phone.as_ref().map(|p| ("subject.phone", IdentKind::Phone, p.as_str().to_owned())),
    ]
    .into_iter()
    .flatten()
    .collect();

    let mut account: Option<CandidateRow> = None;
    // The identity store's rows found by any identifier asked so far: one look-up for all the
    // given identifiers (the store sends each as its own lookup in one statement), then each
    // identifier's holders told apart here, exactly as a look-up of it alone would find them.
    let mut identity_rows: Vec<CandidateRow> = Vec::new();
    let given_idents: Vec<(IdentKind, String)> = given.iter().map(|(_, k, v)| (*k, v.clone())).collect();
    if let Some(identity) = stores.identity() {
        identity_rows = accounts_by(identity.as_ref(), tenant, &given_idents)
            .await
            .map_err(store_err(identity.as_ref()))?;
        let mut named: Vec<(&'static str, Vec<CandidateRow>)> = Vec::new();
        for (field, kind, value) in &given {
            let accounts = named_by(&identity_rows, &person, *kind, value);
            if accounts.len() > 1 {
                let what = match kind {
                    IdentKind::Email => "a duplicate email",
                    IdentKind::Phone => "a shared phone",
                    IdentKind::AccountId => "a duplicate id",
                };
                return Err(refuse(
                    field,
                    format!(
                        "matches {} accounts of the tenant ({what}); name the person by account_id. Nothing was written",
                        accounts.len()
                    ),
                ));
            }
            named.push((field, accounts));
        }
        let ids: BTreeSet<&str> = named.iter().flat_map(|(_, a)| a.iter().map(|r| r.key.as_str())).collect();
        // An identifier that names no account beside one that names an account names another
        // person (an anonymous caller is a subject of their own), or an outdated one: either
        // way, not one person for certain.
        let unmatched = named.iter().any(|(_, a)| a.is_empty());
        if ids.len() > 1 || (unmatched && !ids.is_empty()) {
            let fields: Vec<&str> = named.iter().map(|(f, _)| *f).collect();
            return Err(refuse(
                "subject",
                format!(
                    "the identifiers name different people ({} do not belong to one account); submit one request per person. Nothing was written",
                    fields.join(", ")
                ),
            ));
        }
        account = named.into_iter().flat_map(|(_, a)| a).next();
    }

    // The person: their account's identifiers as stored, and what the caller gave.
    if let Some(row) = &account {
        person.account_id = Some(row.key.clone());
        for (kind, value) in &row.identifiers {
            let Some(value) = value.as_deref() else { continue };
            match kind {
                IdentKind::Email => person.emails.extend(super::normalize::email(value)),
                IdentKind::Phone => person.phones.extend(super::normalize::phone(value, region)),
                IdentKind::AccountId => {}
            }
        }
    }
    for (_, kind, value) in &given {
        match kind {
            IdentKind::AccountId => {
                person.account_id.get_or_insert_with(|| value.clone());
            }
            IdentKind::Email => {
                person.emails.insert(value.clone());
            }
            IdentKind::Phone => {
                person.phones.insert(value.clone());
            }
        }
    }

    // Which of their identifiers another account also holds: those not asked above in one
    // more look-up, then each judged alone. The account's id goes in the same look-up (when
    // not given), so the rows read here are all the identity store's scan would find
    // (`scan_stores_knowing`); a row found by it alone holds none of the emails or phones
    // judged below.
    if let Some(identity) = stores.identity() {
        let more: Vec<(IdentKind, String)> = person
            .identifiers()
            .into_iter()
            .filter(|(k, v)| !given_idents.iter().any(|(gk, gv)| gk == k && gv == v))
            .collect();
        if !more.is_empty() {
            let rows =
                accounts_by(identity.as_ref(), tenant, &more).await.map_err(store_err(identity.as_ref()))?;
            identity_rows.extend(rows);
        }
        for (kind, value) in person.identifiers() {
            if kind == IdentKind::AccountId {
                continue;
            }
            let holders = named_by(&identity_rows, &person, kind, &value);
            if holders.iter().any(|r| Some(&r.key) != person.account_id.as_ref()) {
                match kind {
                    IdentKind::Email => person.shared_emails.insert(value),
                    _ => person.shared_phones.insert(value),
                };
            }
        }
    }

    Ok((person, identity_rows))
}

/// The second half of `resolve`: what every store holds of `person`.
pub async fn scan_stores(stores: &StoreRegistry, person: Person) -> Result<Resolution, ResolveError> {
    scan_stores_knowing(stores, person, None).await
}

/// `scan_stores`, given the identity store's rows `resolve_person` already read for this person
/// (`identity_rows`): that store is not asked again. Its scan probe is the person's identifiers
/// (account id, emails, phones) and nothing else — it links to no store, and nothing is
/// recorded of it yet — which is what those rows were found by.
async fn scan_stores_knowing(
    stores: &StoreRegistry,
    person: Person,
    identity_rows: Option<Vec<CandidateRow>>,
) -> Result<Resolution, ResolveError> {
    // Once each, in key order, as `candidates` answers (the two look-ups may share rows).
    let identity_rows = identity_rows.map(|rows| {
        let mut by_key = std::collections::BTreeMap::new();
        for r in rows {
            by_key.entry(r.key.clone()).or_insert(r);
        }
        by_key.into_values().collect::<Vec<_>>()
    });
    let known =
        stores.identity().filter(|i| i.links_to().is_none()).map(|i| i.name().to_owned()).zip(identity_rows);
    let tenant = person.tenant.clone();
    let tenant = tenant.as_str();
    // Every store, link targets first; a linked record whose target the identifiers did not
    // find is looked up by key in the target store, so it follows its owner. Stores at the same
    // depth of links are asked at once (their look-ups are independent); what they found is
    // then attributed one store at a time.
    let mut resolution = Resolution { person, stores: Default::default() };
    let ordered = stores.in_link_order();
    let mut depth: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for a in &ordered {
        let d = a.links_to().and_then(|t| depth.get(t)).map_or(0, |d| d + 1);
        depth.insert(a.name(), d);
    }
    let deepest = depth.values().copied().max().unwrap_or(0);
    for level in 0..=deepest {
        let at_level: Vec<&std::sync::Arc<dyn StoreAdapter>> =
            ordered.iter().copied().filter(|a| depth[a.name()] == level).collect();
        let found = futures::future::join_all(at_level.iter().map(|a| {
            let resolution = &resolution;
            let known = known.as_ref().filter(|(name, _)| name == a.name()).map(|(_, rows)| rows.clone());
            async move {
                match known {
                    Some(rows) => Ok(rows),
                    None => candidates(a.as_ref(), resolution, &[]).await.map_err(store_err(a.as_ref())),
                }
            }
        }))
        .await;
        for (adapter, rows) in at_level.into_iter().zip(found) {
            let rows = rows?;
            if let Some(target) = adapter.links_to().and_then(|t| stores.get(t)) {
                let known = resolution.stores.get(target.name()).cloned().unwrap_or_default();
                let unknown: BTreeSet<String> = rows
                    .iter()
                    .filter_map(|r| r.link.clone())
                    .filter(|l| known.attribution_of(l).is_none())
                    .collect();
                if !unknown.is_empty() {
                    let probe = Probe { tenant, keys: unknown.into_iter().collect(), ..Default::default() };
                    let targets = target.candidates(&probe).await.map_err(store_err(target.as_ref()))?;
                    let scan = resolution.stores.entry(target.name().to_owned()).or_default();
                    for t in &targets {
                        scan.add(t, attribute(&resolution.person, t, None));
                    }
                }
            }
            let scan = classify(adapter.as_ref(), &resolution, &rows);
            resolution.stores.insert(adapter.name().to_owned(), scan);
        }
    }
    Ok(resolution)
}

/// The live accounts (rows of the identity store) whose `kind` column means `value`.
async fn accounts_named(
    identity: &dyn StoreAdapter,
    person: &Person,
    kind: IdentKind,
    value: &str,
) -> StoreResult<Vec<CandidateRow>> {
    let rows = accounts_by(identity, &person.tenant, &[(kind, value.to_owned())]).await?;
    Ok(named_by(&rows, person, kind, value))
}

/// The rows of the identity store found by any of these identifiers, in one probe: a
/// superset of each identifier's holders, which `named_by` tells apart.
async fn accounts_by(
    identity: &dyn StoreAdapter,
    tenant: &str,
    identifiers: &[(IdentKind, String)],
) -> StoreResult<Vec<CandidateRow>> {
    if identifiers.is_empty() {
        return Ok(Vec::new());
    }
    let mut probe = Probe { tenant, ..Default::default() };
    for (kind, value) in identifiers {
        match kind {
            IdentKind::AccountId => probe.account_ids.push(value.clone()),
            IdentKind::Email => probe.emails.push(value.clone()),
            IdentKind::Phone => probe.phones.push(value.clone()),
        }
    }
    identity.candidates(&probe).await
}

/// Of `rows`, those whose `kind` column means `value` (read in the person's region).
fn named_by(rows: &[CandidateRow], person: &Person, kind: IdentKind, value: &str) -> Vec<CandidateRow> {
    let mut alone = Person::new(&person.tenant, &person.region);
    match kind {
        IdentKind::AccountId => alone.account_id = Some(value.to_owned()),
        IdentKind::Email => {
            alone.emails.insert(value.to_owned());
        }
        IdentKind::Phone => {
            alone.phones.insert(value.to_owned());
        }
    }
    let mut seen = BTreeSet::new();
    rows.iter()
        .filter(|r| {
            r.identifiers
                .iter()
                .any(|(k, v)| *k == kind && v.as_deref().is_some_and(|v| names_person(&alone, kind, v)))
        })
        .filter(|r| seen.insert(r.key.clone()))
        .cloned()
        .collect()
}

/// Every row of the store that may be the person's: by each identifier, by link to their
/// records in the store it links to, by the keys the resolution recorded, and by `also`.
async fn candidates(
    adapter: &dyn StoreAdapter,
    res: &Resolution,
    also: &[String],
) -> StoreResult<Vec<CandidateRow>> {
    let p = &res.person;
    let mut keys: Vec<String> =
        res.store(adapter.name()).map(|s| s.mine.iter().cloned().collect()).unwrap_or_default();
    keys.extend(also.iter().cloned());
    let probe = Probe {
        tenant: &p.tenant,
        account_ids: p.account_id.iter().cloned().collect(),
        emails: p.emails.iter().cloned().collect(),
        phones: p.phones.iter().cloned().collect(),
        links: adapter
            .links_to()
            .and_then(|t| res.store(t))
            .map(|s| s.mine.iter().cloned().collect())
            .unwrap_or_default(),
        keys,
    };
    adapter.candidates(&probe).await
}

fn classify(adapter: &dyn StoreAdapter, res: &Resolution, rows: &[CandidateRow]) -> StoreScan {
    let link_scan = adapter.links_to().and_then(|t| res.store(t));
    let mut scan = StoreScan::default();
    for row in rows {
        let linked = row.link.as_deref().and_then(|l| link_scan.and_then(|s| s.attribution_of(l)));
        scan.add(row, attribute(&res.person, row, linked));
    }
    scan
}

/// What the store holds of the person now, by the resolution: the rows an erase acts on.
pub async fn scan(adapter: &dyn StoreAdapter, res: &Resolution) -> StoreResult<StoreScan> {
    let rows = candidates(adapter, res, &[]).await?;
    Ok(classify(adapter, res, &rows))
}

/// The check after an erase, by other queries than the erase's own (which acts on keys):
/// the keys the resolution and the erase named, each identifier of the person alone, the rows
/// linked to their records, and the exact object keys. Returns how many of the person's
/// records still hold their data.
pub async fn leftovers(adapter: &dyn StoreAdapter, res: &Resolution, erased: &StoreScan) -> StoreResult<u64> {
    let p = &res.person;
    let recorded = res.store(adapter.name()).cloned().unwrap_or_default();
    let link_scan = adapter.links_to().and_then(|t| res.store(t));
    // One probe: the keys, every identifier, the links. The store sends its parts as separate
    // lookups in one statement (`SubjectTable::candidates`), so each identifier is still asked
    // alone; a row found counts by how it is judged here, not by which part found it.
    let keys: BTreeSet<String> = recorded.mine.union(&erased.mine).cloned().collect();
    let mut probe = Probe { tenant: &p.tenant, keys: keys.iter().cloned().collect(), ..Default::default() };
    for (kind, v) in p.identifiers() {
        match kind {
            IdentKind::AccountId => probe.account_ids.push(v),
            IdentKind::Email => probe.emails.push(v),
            IdentKind::Phone => probe.phones.push(v),
        }
    }
    if let Some(s) = link_scan {
        probe.links = s.mine.iter().cloned().collect();
    }
    let mut left: BTreeSet<String> = BTreeSet::new();
    for row in adapter.candidates(&probe).await? {
        if row.cleared {
            continue;
        }
        // A recorded key still there is left whoever it looks like now; any other row is
        // left if it is the person's.
        let linked = row.link.as_deref().and_then(|l| link_scan.and_then(|s| s.attribution_of(l)));
        if keys.contains(&row.key) || attribute(p, &row, linked) == Attribution::Mine {
            left.insert(row.key);
        }
    }
    let objects: Vec<String> = recorded.objects.union(&erased.objects).cloned().collect();
    let objects_left = match adapter.as_erase() {
        Some(eraser) => eraser.objects_present(&objects).await?,
        None => 0,
    };
    Ok(left.len() as u64 + objects_left)
}

/// The first corrected identifier (`corrections.email`, `corrections.phone`) that a live account
/// other than the person's own already holds: emails and phones identify one account holder.
pub async fn taken(
    identity: &dyn StoreAdapter,
    person: &Person,
    corrections: &crate::domain::Corrections,
) -> StoreResult<Option<&'static str>> {
    for (field, kind, value) in [
        ("corrections.email", IdentKind::Email, corrections.email.as_ref().map(|e| e.as_str())),
        ("corrections.phone", IdentKind::Phone, corrections.phone.as_ref().map(|p| p.as_str())),
    ] {
        let Some(value) = value else { continue };
        let holders = accounts_named(identity, person, kind, value).await?;
        if holders.iter().any(|r| !r.cleared && Some(&r.key) != person.account_id.as_ref()) {
            return Ok(Some(field));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::{
        clock::{Clock, SystemClock},
        config::{Locations, Settings},
        db::Db,
        domain::{RequestKind, TenantId},
        seed::{seed, seed_messy, SeedSpec},
        stores::{open_object_store, reference},
    };

    /// A store that counts the look-ups asked of it, and answers as the store it wraps.
    struct Counted {
        inner: Arc<dyn StoreAdapter>,
        asked: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    }

    #[async_trait::async_trait]
    impl StoreAdapter for Counted {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn stage(&self) -> u8 {
            self.inner.stage()
        }
        fn is_identity(&self) -> bool {
            self.inner.is_identity()
        }
        fn links_to(&self) -> Option<&'static str> {
            self.inner.links_to()
        }
        fn takes_part_in(&self, kind: RequestKind) -> bool {
            self.inner.takes_part_in(kind)
        }
        async fn check_schema(&self) -> Vec<String> {
            self.inner.check_schema().await
        }
        async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
            *self.asked.lock().unwrap().entry(self.name()).or_default() += 1;
            self.inner.candidates(probe).await
        }
    }

    /// The identity store's rows read to find the person stand for its scan: the resolution is
    /// the one the two halves give apart, and each store is asked once (the identity store
    /// twice: the given identifiers, then the account's others with its id).
    #[tokio::test]
    async fn a_resolution_reads_the_identity_store_for_the_person_and_its_scan_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Locations {
            data_dir: dir.path().to_owned(),
            database_url: None,
            recordings_url: None,
            config_file: None,
            exports_url: None,
        };
        let settings = Settings::load(&loc).unwrap();
        let db = Db::connect(&settings.database_url, 2).await.unwrap();
        let tables = reference::Tables::default();
        reference::ensure_schema(&db, &tables).await.unwrap();
        let objects = open_object_store(&settings.recordings_url).unwrap();
        let spec = SeedSpec {
            tenant: TenantId::parse("tenant", "acme").unwrap(),
            subjects: 3,
            calls: 2,
            recording_bytes: 8,
            first: 0,
        };
        let mut people = Vec::new();
        seed(&db, &tables, objects.clone(), &spec, SystemClock.now(), |s| people.push(s)).await.unwrap();
        let messy = seed_messy(&db, &tables, objects, "messy", SystemClock.now()).await.unwrap();
        let stores = StoreRegistry::from_settings(&settings, &db).await.unwrap();
        let asked = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = StoreRegistry::from_settings(&settings, &db)
            .await
            .unwrap()
            .map(|inner| Arc::new(Counted { inner, asked: asked.clone() }) as Arc<dyn StoreAdapter>);
        let identity = stores.identity().unwrap().name();
        let region = Region::default();
        for p in &people {
            // By phone, by email, by both: the account's other identifiers are looked up after.
            for (email, phone) in
                [("", p.phone.as_str()), (p.email.as_str(), ""), (p.email.as_str(), p.phone.as_str())]
            {
                let subject = Subject::parse(&p.tenant_id, "", email, phone).unwrap();
                asked.lock().unwrap().clear();
                let at_once = resolve(&counted, &subject, region).await.unwrap();
                let apart = scan_stores(&stores, resolve_person(&stores, &subject, region).await.unwrap())
                    .await
                    .unwrap();
                assert_eq!(at_once, apart);
                assert_eq!(at_once.store(identity).unwrap().mine.len(), 1);
                let asked = asked.lock().unwrap().clone();
                for store in stores.all() {
                    let want = if store.name() == identity { 2 } else { 1 };
                    assert_eq!(asked.get(store.name()), Some(&want), "{}: {asked:?}", store.name());
                }
            }
        }
        // The messy data (mixed-case and padded emails, local phone formats, shared lines,
        // calls before signup, duplicate emails): every way of naming each person resolves to
        // the same (or is refused the same) both ways; the identity store is asked at most twice
        // (once when the person's identifiers were all given), every other store once.
        let mut subjects = Vec::new();
        for p in &messy.people {
            let given = [p.account_id.as_deref(), p.email.as_deref(), p.phone.as_deref()];
            for mask in 1..8u8 {
                let pick = |i: usize| if mask & (1 << i) != 0 { given[i].unwrap_or("") } else { "" };
                if (0..3).any(|i| !pick(i).is_empty()) {
                    subjects.push((format!("{} ({mask:03b})", p.label), pick(0), pick(1), pick(2)));
                }
            }
        }
        // And two people named at once (one's email, the next one's phone): a refusal, mostly.
        for (a, b) in messy.people.iter().zip(messy.people.iter().skip(1)) {
            if let (Some(email), Some(phone)) = (a.email.as_deref(), b.phone.as_deref()) {
                subjects.push((format!("{} + {}", a.label, b.label), "", email, phone));
            }
        }
        let (mut resolved, mut refused) = (0, 0);
        for (label, account_id, email, phone) in subjects {
            let subject = Subject::parse(&messy.tenant_id, account_id, email, phone).unwrap();
            asked.lock().unwrap().clear();
            let at_once = resolve(&counted, &subject, region).await;
            let apart = match resolve_person(&stores, &subject, region).await {
                Ok(person) => scan_stores(&stores, person).await,
                Err(e) => Err(e),
            };
            match (at_once, apart) {
                (Ok(a), Ok(b)) => {
                    resolved += 1;
                    assert_eq!(a, b, "{label}");
                    let asked = asked.lock().unwrap().clone();
                    for store in stores.all() {
                        let n = asked.get(store.name()).copied().unwrap_or(0);
                        let most = if store.name() == identity { 2 } else { 1 };
                        assert!((1..=most).contains(&n), "{label} {}: {asked:?}", store.name());
                    }
                }
                (Err(a), Err(b)) => {
                    refused += 1;
                    assert_eq!(a.to_string(), b.to_string(), "{label}");
                }
                (a, b) => panic!("{label}: resolved {} against {}", a.is_ok(), b.is_ok()),
            }
        }
        // Both kinds of answer were compared.
        assert!(resolved > 10 && refused > 0, "{resolved} resolved, {refused} refused");
        db.close().await;
    }
}
