//! `dsr seed --messy`: data shaped like a real platform's, not like the clean seed — mixed-case
//! and padded emails, phones in national formats, calls linked only by account id, a family
//! sharing one line, two accounts with one email, a terminated account, anonymous calls from
//! before a signup, an anonymous caller, and recording keys with spaces, `%`, `#`, `?`, `+`,
//! non-ASCII and a leading `/`.
//!
//! With the data comes its ground truth (`MessyPerson::records`): which records are whose, as
//! the seed wrote them, so tests judge an erasure by reading the stores directly, never through
//! the service's own queries.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chrono::{DateTime, Duration, Utc};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::recording_bytes;
use crate::{clock::to_millis, db::Db, stores::reference::Tables};

/// One person of the messy data, with what a caller would name them by (normalised, as a
/// request carries it) and every record that is theirs, per store.
#[derive(Debug, Clone, Serialize)]
pub struct MessyPerson {
    pub label: &'static str,
    pub tenant_id: String,
    pub account_id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// store → keys of this person's records.
    pub records: BTreeMap<&'static str, BTreeSet<String>>,
    /// Exact keys of this person's recording objects.
    pub objects: BTreeSet<String>,
}

/// The messy data of one tenant: its people, and the records nobody's deletion may erase
/// because they name a shared line.
#[derive(Debug, Clone, Serialize)]
pub struct MessyFixture {
    pub tenant_id: String,
    pub people: Vec<MessyPerson>,
    pub unattributed: BTreeMap<&'static str, BTreeSet<String>>,
    pub unattributed_objects: BTreeSet<String>,
}

impl MessyFixture {
    pub fn person(&self, label: &str) -> &MessyPerson {
        self.people.iter().find(|p| p.label == label).unwrap_or_else(|| panic!("no messy person {label}"))
    }

    /// Every key of a store the seed wrote.
    pub fn all_keys(&self, store: &str) -> BTreeSet<String> {
        let mut all: BTreeSet<String> =
            self.people.iter().flat_map(|p| p.records.get(store).into_iter().flatten().cloned()).collect();
        all.extend(self.unattributed.get(store).into_iter().flatten().cloned());
        all
    }
}

struct Account {
    id: &'static str,
    email: Option<&'static str>,
    phone: Option<&'static str>,
    terminated: bool,
}

struct Call {
    /// Suffix of the call id.
    id: &'static str,
    account: Option<&'static str>,
    phone: Option<&'static str>,
    /// Recording object key (after `<tenant>/`, or a leading `/` then the tenant).
    object: &'static str,
    hours_ago: i64,
}

struct Person {
    label: &'static str,
    account: Option<Account>,
    /// What a caller names them by: (email, phone), normalised.
    named_by: (Option<&'static str>, Option<&'static str>),
    calls: Vec<Call>,
    /// Billing records: (account, phone as stored).
    billing: Vec<(Option<&'static str>, Option<&'static str>)>,
}

fn people() -> Vec<Person> {
    vec![
        Person {
            label: "mixed_case",
            account: Some(Account {
                id: "m-mixed",
                email: Some("Mixed.Case@Example.COM"),
                phone: Some("+15550001001"),
                terminated: false,
            }),
            named_by: (Some("mixed.case@example.com"), Some("+15550001001")),
            calls: vec![
                Call {
                    id: "mixed-1",
                    account: None,
                    phone: Some("(555) 000-1001"),
                    object: "calls/o'brien #1 100%.wav",
                    hours_ago: 5,
                },
                Call {
                    id: "mixed-2",
                    account: Some("m-mixed"),
                    phone: Some("+1 555-000-1001"),
                    object: "é/appel ?+.wav",
                    hours_ago: 4,
                },
                Call {
                    id: "mixed-3",
                    account: None,
                    phone: Some("15550001001"),
                    object: "/leading slash.wav",
                    hours_ago: 3,
                },
            ],
            billing: vec![(Some("m-mixed"), Some("(555) 000-1001"))],
        },
        Person {
            label: "padded",
            account: Some(Account {
                id: "m-padded",
                email: Some(" padded@example.com \n"),
                phone: Some("+15550001002"),
                terminated: false,
            }),
            named_by: (Some("padded@example.com"), Some("+15550001002")),
            calls: vec![
                Call {
                    id: "padded-1",
                    account: Some("m-padded"),
                    phone: Some("555.000.1002"),
                    object: "a b/c&d=e.wav",
                    hours_ago: 6,
                },
                Call {
                    id: "padded-2",
                    account: Some("m-padded"),
                    phone: Some("555.000.1002"),
                    object: "padded/plain.wav",
                    hours_ago: 7,
                },
            ],
            billing: vec![(Some("m-padded"), None)],
        },
        Person {
            label: "family_a",
            account: Some(Account {
                id: "m-fam-a",
                email: Some("fam.a@example.com"),
                phone: Some("+15550001003"),
                terminated: false,
            }),
            named_by: (Some("fam.a@example.com"), None),
            calls: vec![
                Call {
                    id: "fam-a-1",
                    account: Some("m-fam-a"),
                    phone: Some("(555) 000-1003"),
                    object: "fam/a 1.wav",
                    hours_ago: 8,
                },
                Call {
                    id: "fam-a-2",
                    account: Some("m-fam-a"),
                    phone: Some("(555) 000-1003"),
                    object: "fam/a 2.wav",
                    hours_ago: 9,
                },
            ],
            billing: vec![(Some("m-fam-a"), Some("5550001003"))],
        },
        Person {
            label: "family_b",
            account: Some(Account {
                id: "m-fam-b",
                email: Some("fam.b@example.com"),
                phone: Some("5550001003"),
                terminated: false,
            }),
            named_by: (Some("fam.b@example.com"), None),
            calls: vec![Call {
                id: "fam-b-1",
                account: Some("m-fam-b"),
                phone: Some("+15550001003"),
                object: "fam/b 1.wav",
                hours_ago: 10,
            }],
            billing: vec![(Some("m-fam-b"), Some("+15550001003"))],
        },
        Person {
            label: "dup_a",
            account: Some(Account {
                id: "m-dup-a",
                email: Some("dup@example.com"),
                phone: Some("+15550001004"),
                terminated: false,
            }),
            named_by: (None, Some("+15550001004")),
            calls: vec![Call {
                id: "dup-a-1",
                account: Some("m-dup-a"),
                phone: Some("+15550001004"),
                object: "dup/a.wav",
                hours_ago: 11,
            }],
            billing: vec![(Some("m-dup-a"), Some("+15550001004"))],
        },
        Person {
            label: "dup_b",
            account: Some(Account {
                id: "m-dup-b",
                email: Some(" Dup@Example.COM"),
                phone: Some("+15550001005"),
                terminated: false,
            }),
            named_by: (None, Some("+15550001005")),
            calls: vec![Call {
                id: "dup-b-1",
                account: Some("m-dup-b"),
                phone: Some("+15550001005"),
                object: "dup/b.wav",
                hours_ago: 12,
            }],
            billing: vec![(Some("m-dup-b"), Some("+15550001005"))],
        },
        Person {
            label: "terminated",
            account: Some(Account {
                id: "m-term",
                email: Some("term@example.com"),
                phone: Some("1-555-000-1006"),
                terminated: true,
            }),
            named_by: (Some("term@example.com"), Some("+15550001006")),
            calls: vec![Call {
                id: "term-1",
                account: Some("m-term"),
                phone: Some("1-555-000-1006"),
                object: "term/1.wav",
                hours_ago: 13,
            }],
            billing: vec![],
        },
        Person {
            label: "before_signup",
            account: Some(Account {
                id: "m-signup",
                email: Some("signup@example.com"),
                phone: Some("+15550001007"),
                terminated: false,
            }),
            named_by: (Some("signup@example.com"), Some("+15550001007")),
            calls: vec![
                Call {
                    id: "signup-0",
                    account: None,
                    phone: Some("(555) 000-1007"),
                    object: "signup/before 0.wav",
                    hours_ago: 900,
                },
                Call {
                    id: "signup-1",
                    account: None,
                    phone: Some("555 000 1007"),
                    object: "signup/before 1.wav",
                    hours_ago: 800,
                },
                Call {
                    id: "signup-2",
                    account: Some("m-signup"),
                    phone: Some("+15550001007"),
                    object: "signup/after.wav",
                    hours_ago: 14,
                },
            ],
            billing: vec![(Some("m-signup"), None)],
        },
        Person {
            label: "anonymous",
            account: None,
            named_by: (None, Some("+15550001008")),
            calls: vec![
                Call {
                    id: "anon-1",
                    account: None,
                    phone: Some("555-000-1008"),
                    object: "anon/1.wav",
                    hours_ago: 15,
                },
                Call {
                    id: "anon-2",
                    account: None,
                    phone: Some("+1 555 000 1008"),
                    object: "anon/2.wav",
                    hours_ago: 16,
                },
            ],
            billing: vec![(None, Some("(555) 000-1008"))],
        },
        Person {
            label: "account_only",
            account: Some(Account {
                id: "m-acctonly",
                email: Some("acct.only@example.com"),
                phone: Some("+15550001009"),
                terminated: false,
            }),
            named_by: (Some("acct.only@example.com"), Some("+15550001009")),
            calls: vec![
                Call {
                    id: "acctonly-1",
                    account: Some("m-acctonly"),
                    phone: None,
                    object: "acctonly/1.wav",
                    hours_ago: 17,
                },
                Call {
                    id: "acctonly-2",
                    account: Some("m-acctonly"),
                    phone: Some("+15559990000"),
                    object: "acctonly/2.wav",
                    hours_ago: 18,
                },
            ],
            billing: vec![(Some("m-acctonly"), None)],
        },
    ]
}

/// Calls from the family's shared line that no account claims: nobody's alone.
fn shared_line_calls() -> Vec<Call> {
    vec![
        Call {
            id: "shared-1",
            account: None,
            phone: Some("(555) 000-1003"),
            object: "fam/shared 1.wav",
            hours_ago: 19,
        },
        Call {
            id: "shared-2",
            account: None,
            phone: Some("555-000-1003"),
            object: "fam/shared 2.wav",
            hours_ago: 20,
        },
    ]
}

fn object_key(tenant: &str, object: &str) -> String {
    match object.strip_prefix('/') {
        Some(rest) => format!("/{tenant}/{rest}"),
        None => format!("{tenant}/{object}"),
    }
}

/// Writes the messy data of `tenant` (ids prefixed with the tenant, so tenants never share a
/// key) and returns its ground truth. Seeding twice changes nothing.
pub async fn seed_messy(
    db: &Db,
    t: &Tables,
    objects: Arc<dyn ObjectStore>,
    tenant: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<MessyFixture> {
    let mut fixture = MessyFixture {
        tenant_id: tenant.to_owned(),
        people: Vec::new(),
        unattributed: BTreeMap::new(),
        unattributed_objects: BTreeSet::new(),
    };
    let id = |s: &str| format!("{tenant}-{s}");
    let mut tx = db.begin_write().await?;
    let mut billing_n = 0;
    for p in people() {
        let mut records: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        let mut person_objects = BTreeSet::new();
        if let Some(a) = &p.account {
            sqlx::query(&format!(
                "INSERT INTO {} (id, tenant_id, email, phone, name, created_at, terminated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                t.accounts
            ))
            .bind(id(a.id))
            .bind(tenant)
            .bind(a.email)
            .bind(a.phone)
            .bind(format!("Person {}", p.label))
            .bind(to_millis(now - Duration::days(100)))
            .bind(a.terminated.then(|| to_millis(now - Duration::days(10))))
            .execute(&mut *tx)
            .await?;
            records.entry("accounts").or_default().insert(id(a.id));
        }
        for c in &p.calls {
            let (key, keys) = write_call(&mut tx, t, objects.as_ref(), tenant, c, now).await?;
            person_objects.insert(key);
            for (store, k) in keys {
                records.entry(store).or_default().insert(k);
            }
        }
        for (account, phone) in &p.billing {
            billing_n += 1;
            let bill = id(&format!("bill-{billing_n:03}"));
            insert_bill(&mut tx, t, tenant, &bill, account.map(id), *phone, now).await?;
            records.entry("billing").or_default().insert(bill);
        }
        fixture.people.push(MessyPerson {
            label: p.label,
            tenant_id: tenant.to_owned(),
            account_id: p.account.as_ref().map(|a| id(a.id)),
            email: p.named_by.0.map(str::to_owned),
            phone: p.named_by.1.map(str::to_owned),
            records,
            objects: person_objects,
        });
    }
    for c in shared_line_calls() {
        let (key, keys) = write_call(&mut tx, t, objects.as_ref(), tenant, &c, now).await?;
        fixture.unattributed_objects.insert(key);
        for (store, k) in keys {
            fixture.unattributed.entry(store).or_default().insert(k);
        }
    }
    let bill = id("bill-shared");
    insert_bill(&mut tx, t, tenant, &bill, None, Some("(555) 000-1003"), now).await?;
    fixture.unattributed.entry("billing").or_default().insert(bill);
    tx.commit().await?;
    Ok(fixture)
}

async fn insert_bill(
    tx: &mut crate::db::Tx,
    t: &Tables,
    tenant: &str,
    id: &str,
    account: Option<String>,
    phone: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {} (id, tenant_id, account_id, caller_phone, amount_cents, currency, created_at, restricted_at) \
         VALUES ($1, $2, $3, $4, 1999, 'USD', $5, NULL) ON CONFLICT DO NOTHING",
        t.billing
    ))
    .bind(id)
    .bind(tenant)
    .bind(account)
    .bind(phone)
    .bind(to_millis(now - Duration::days(2)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One call with its transcript and recording (object first: an index row never points at a
/// missing object). Returns the object key and (store, key) of each row.
async fn write_call(
    tx: &mut crate::db::Tx,
    t: &Tables,
    objects: &dyn ObjectStore,
    tenant: &str,
    c: &Call,
    now: DateTime<Utc>,
) -> anyhow::Result<(String, Vec<(&'static str, String)>)> {
    let id = |s: &str| format!("{tenant}-{s}");
    let call_id = id(c.id);
    let at = to_millis(now - Duration::hours(c.hours_ago));
    let key = object_key(tenant, c.object);
    let path = crate::stores::object_path(&key)?;
    objects.put(&path, PutPayload::from(recording_bytes(&call_id, 300))).await?;
    sqlx::query(&format!(
        "INSERT INTO {} (id, tenant_id, account_id, caller_phone, agent_id, started_at, duration_s, outcome) \
         VALUES ($1, $2, $3, $4, 'agent-0', $5, 60, 'completed') ON CONFLICT DO NOTHING",
        t.call_logs
    ))
    .bind(&call_id)
    .bind(tenant)
    .bind(c.account.map(id))
    .bind(c.phone)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {} (id, call_id, tenant_id, caller_phone, text, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT DO NOTHING",
        t.transcripts
    ))
    .bind(format!("{call_id}-t"))
    .bind(&call_id)
    .bind(tenant)
    .bind(c.phone)
    .bind(format!("Agent: Hello. Caller: it's about call {}.", c.id))
    .bind(at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {} (id, call_id, tenant_id, caller_phone, object_key, bytes, created_at) \
         VALUES ($1, $2, $3, $4, $5, 300, $6) ON CONFLICT DO NOTHING",
        t.recordings
    ))
    .bind(format!("{call_id}-r"))
    .bind(&call_id)
    .bind(tenant)
    .bind(c.phone)
    .bind(&key)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok((
        key,
        vec![
            ("call_logs", call_id.clone()),
            ("transcripts", format!("{call_id}-t")),
            ("recordings", format!("{call_id}-r")),
        ],
    ))
}
