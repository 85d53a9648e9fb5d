//! What a recipient is told: at submit, one outbox row per recipient that hears of the request's
//! kind, holding only the identifiers and record keys its catalog entry allows (`plan`); at
//! delivery, that data wrapped as a CloudEvents 1.0 JSON event whose `id` is the row's, so it is
//! the same on every retry (`cloud_event`).
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::config::{Identifier, RecipientEntry, RecipientsConfig};
use crate::{domain::RequestKind, ledger::SubjectRecord};

/// The CloudEvents `source` of every event dsr sends.
pub const EVENT_SOURCE: &str = "/dsr";

/// One outbox row, as written with its request.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The CloudEvents id: a UUIDv7, stable across retries.
    pub id: String,
    pub recipient: String,
    /// Sent only if some store restricted instead of erasing (a recipient that hears of
    /// restrictions and not of erasures).
    pub restriction_only: bool,
    /// What the recipient may see (`SubjectData`), as JSON. Personal data: dropped once delivered.
    pub data_json: String,
    pub give_up_secs: u64,
}

/// The personal part of an event: only what the recipient's entry names.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SubjectData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<String>,
    /// Keys of the person's own records, per store the entry names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records: BTreeMap<String, Vec<String>>,
    /// A rectification's new values, for the identifiers the recipient receives.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub corrected: BTreeMap<String, String>,
}

/// The outbox rows of a new request: one per recipient that hears of its kind.
pub fn plan(cfg: &RecipientsConfig, kind: RequestKind, record: &SubjectRecord) -> Vec<NewDelivery> {
    cfg.entries
        .iter()
        .filter_map(|e| {
            let restriction_only = e.hears_of(kind)?;
            Some(NewDelivery {
                id: uuid::Uuid::now_v7().to_string(),
                recipient: e.name.clone(),
                restriction_only,
                data_json: serde_json::to_string(&subject_data(e, record)).expect("plain data serialises"),
                give_up_secs: cfg.give_up_secs,
            })
        })
        .collect()
}

/// What of the resolved person `entry` may receive.
pub fn subject_data(entry: &RecipientEntry, record: &SubjectRecord) -> SubjectData {
    let mut data = SubjectData::default();
    let person = record.resolution.as_ref().map(|r| &r.person);
    for ident in &entry.identifiers {
        match ident {
            Identifier::AccountId => {
                data.account_id = person
                    .and_then(|p| p.account_id.clone())
                    .or_else(|| record.subject.account_id.as_ref().map(|a| a.as_str().to_owned()));
            }
            Identifier::Email => {
                data.emails = match person {
                    Some(p) => p.emails.iter().cloned().collect(),
                    None => record.subject.email.iter().map(|e| e.as_str().to_owned()).collect(),
                }
            }
            Identifier::Phone => {
                data.phones = match person {
                    Some(p) => p.phones.iter().cloned().collect(),
                    None => record.subject.phone.iter().map(|p| p.as_str().to_owned()).collect(),
                }
            }
        }
    }
    if let Some(resolution) = &record.resolution {
        for store in &entry.records {
            let keys = resolution.store(store).map(|s| s.mine.iter().cloned().collect()).unwrap_or_default();
            data.records.insert(store.clone(), keys);
        }
    }
    if let Some(c) = &record.corrections {
        if entry.identifiers.contains(&Identifier::Email) {
            if let Some(e) = &c.email {
                data.corrected.insert("email".into(), e.as_str().to_owned());
            }
        }
        if entry.identifiers.contains(&Identifier::Phone) {
            if let Some(p) = &c.phone {
                data.corrected.insert("phone".into(), p.as_str().to_owned());
            }
        }
    }
    data
}

/// What the dispatcher knows of a delivery when it sends it.
#[derive(Debug, Clone)]
pub struct EventContext<'a> {
    pub id: &'a str,
    pub request_id: &'a str,
    pub tenant_id: &'a str,
    pub kind: RequestKind,
    pub recipient: &'a str,
    /// When the request's work ended (the outbox row was armed).
    pub time: DateTime<Utc>,
    /// Stores that kept records restricted instead of erasing them.
    pub restricted: &'a [String],
    pub restriction_only: bool,
    pub data_json: &'a str,
}

/// The CloudEvents type of an event.
pub fn event_type(ctx: &EventContext<'_>) -> &'static str {
    match ctx.kind {
        RequestKind::Rectification => "dev.dsr.subject.rectified.v1",
        RequestKind::Deletion if ctx.restriction_only => "dev.dsr.subject.restricted.v1",
        _ => "dev.dsr.subject.erased.v1",
    }
}

/// The event as CloudEvents 1.0 structured-mode JSON (`application/cloudevents+json`).
pub fn cloud_event(ctx: &EventContext<'_>) -> anyhow::Result<Vec<u8>> {
    let subject: serde_json::Value = serde_json::from_str(ctx.data_json)?;
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": ctx.id,
        "source": EVENT_SOURCE,
        "type": event_type(ctx),
        "subject": ctx.request_id,
        "time": ctx.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        "datacontenttype": "application/json",
        "data": {
            "request_id": ctx.request_id,
            "tenant_id": ctx.tenant_id,
            "kind": ctx.kind.as_str(),
            "recipient": ctx.recipient,
            "restricted_stores": ctx.restricted,
            "subject": subject,
        },
    });
    Ok(serde_json::to_vec(&event)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{Corrections, Subject},
        resolve::{Person, Resolution, StoreScan},
    };

    fn entry(toml: &str) -> RecipientEntry {
        toml::from_str(toml).unwrap()
    }

    fn record() -> SubjectRecord {
        let mut person = Person::new("acme", "US");
        person.account_id = Some("acct-7".into());
        person.emails.insert("a@example.com".into());
        person.phones.insert("+14155550100".into());
        let mut stores = BTreeMap::new();
        let scan = |keys: &[&str]| StoreScan {
            mine: keys.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        };
        stores.insert("billing".to_owned(), scan(&["b-1", "b-2"]));
        stores.insert("call_logs".to_owned(), scan(&["c-9"]));
        SubjectRecord {
            subject: Subject::parse("acme", "", "", "+14155550100").unwrap(),
            corrections: Some(
                Corrections::parse(None, Some("new@example.com"), Some("+14155550199")).unwrap(),
            ),
            resolution: Some(Resolution { person, stores }),
            person: None,
        }
    }

    #[test]
    fn a_recipient_receives_only_what_its_entry_names() {
        let payments = entry("name = \"payments\"\nhears = [\"deletion\"]\nidentifiers = [\"account_id\"]\nrecords = [\"billing\"]\ntransport = \"webhook\"\nurl = \"https://x\"\nsecret_env = \"S\"\n");
        let data = subject_data(&payments, &record());
        assert_eq!(data.account_id.as_deref(), Some("acct-7"));
        assert!(data.emails.is_empty() && data.phones.is_empty() && data.corrected.is_empty());
        assert_eq!(data.records.keys().collect::<Vec<_>>(), ["billing"]);
        let json = serde_json::to_string(&data).unwrap();
        assert!(!json.contains("example.com") && !json.contains("+1415") && !json.contains("c-9"), "{json}");

        let stt = entry("name = \"stt\"\nhears = [\"deletion\", \"rectification\"]\nidentifiers = [\"phone\"]\nrecords = [\"call_logs\"]\ntransport = \"nats\"\nurl = \"nats://x\"\nsubject = \"s\"\n");
        let data = subject_data(&stt, &record());
        assert_eq!(data.phones, ["+14155550100"]);
        assert_eq!(data.corrected.get("phone").map(String::as_str), Some("+14155550199"));
        assert!(!data.corrected.contains_key("email"));
        assert_eq!(data.records["call_logs"], ["c-9"]);
    }

    #[test]
    fn the_event_is_cloudevents_json_with_the_rows_id() {
        let ctx = EventContext {
            id: "0192-id",
            request_id: "req-1",
            tenant_id: "acme",
            kind: RequestKind::Deletion,
            recipient: "payments",
            time: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            restricted: &["billing".to_owned()],
            restriction_only: false,
            data_json: "{\"account_id\":\"acct-7\"}",
        };
        let v: serde_json::Value = serde_json::from_slice(&cloud_event(&ctx).unwrap()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "0192-id");
        assert_eq!(v["type"], "dev.dsr.subject.erased.v1");
        assert_eq!(v["source"], EVENT_SOURCE);
        assert_eq!(v["data"]["subject"]["account_id"], "acct-7");
        assert_eq!(v["data"]["restricted_stores"][0], "billing");
    }
}
