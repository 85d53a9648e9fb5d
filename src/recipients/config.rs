//! Recipients as catalog entries (`[[catalog]] kind = "recipient"`) and the dispatcher's
//! settings (`[recipients]`), read from the config file and checked at start.
//!
//! ```toml
//! [[catalog]]
//! kind = "recipient"
//! name = "payments"                          # the recipient's name in outcomes and metrics
//! description = "Payment processor"          # the export manifest's words (Art. 15(1)(c))
//! hears = ["deletion", "rectification", "restriction"]
//! identifiers = ["account_id"]               # of the resolved person: account_id, email, phone
//! records = ["billing"]                      # keys of the person's records in these stores
//! transport = "webhook"                      # or "nats"
//! url = "https://payments.example/dsr"       # webhook: https URL; nats: nats://host:port
//! secret_env = "PAYMENTS_WEBHOOK_SECRET"     # or secret_file; "whsec_<base64>" (webhook only)
//! subject = "dsr.events.payments"            # nats only: the JetStream subject
//! ```
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::domain::RequestKind;

/// What a recipient hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hears {
    /// Erasures (deletion requests).
    Deletion,
    /// Corrections (rectification requests).
    Rectification,
    /// Processing restricted instead of erased (a deletion whose store kept records under a
    /// legal obligation).
    Restriction,
}

/// An identifier of the resolved person a recipient may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifier {
    AccountId,
    Email,
    Phone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    Webhook,
    Nats,
}

/// One recipient of the catalog.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientEntry {
    pub name: String,
    /// Who the recipient is and why it holds data, for the export manifest.
    #[serde(default)]
    pub description: String,
    pub hears: Vec<Hears>,
    #[serde(default)]
    pub identifiers: Vec<Identifier>,
    /// Stores whose record keys (of the person's own records) the recipient receives.
    #[serde(default)]
    pub records: Vec<String>,
    pub transport: TransportKind,
    pub url: String,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub subject: Option<String>,
}

/// The URL may carry credentials: `Debug` shows the name and transport only.
impl std::fmt::Debug for RecipientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientEntry")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl RecipientEntry {
    /// Whether a request of `kind` reaches this recipient, and if only when a store restricted
    /// instead of erasing (`Some(true)`).
    pub fn hears_of(&self, kind: RequestKind) -> Option<bool> {
        match kind {
            RequestKind::Export => None,
            RequestKind::Rectification => self.hears.contains(&Hears::Rectification).then_some(false),
            RequestKind::Deletion if self.hears.contains(&Hears::Deletion) => Some(false),
            RequestKind::Deletion if self.hears.contains(&Hears::Restriction) => Some(true),
            RequestKind::Deletion => None,
        }
    }

    /// The webhook secret (`whsec_…`), from the environment variable or file the entry names.
    /// Read when used, so a rotated Secret is picked up without a restart.
    pub fn secret(&self) -> anyhow::Result<String> {
        let at = format!("catalog.{}", self.name);
        let raw = if let Some(var) = &self.secret_env {
            std::env::var(var)
                .map_err(|_| anyhow::anyhow!("{at}.secret_env: the environment variable {var} is not set"))?
        } else if let Some(path) = &self.secret_file {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{at}.secret_file: cannot read {}: {e}", path.display()))?
        } else {
            anyhow::bail!("{at}: a webhook needs secret_env or secret_file")
        };
        Ok(raw.trim().to_owned())
    }

    /// Checks the entry; `stores`: every store's name, `known`: the names taken before it.
    pub fn validate(&self, stores: &[&str], known: &[&str]) -> anyhow::Result<()> {
        let at = |what: &str| format!("catalog.{}.{what}", self.name);
        anyhow::ensure!(
            crate::catalog::is_identifier(&self.name) && !self.name.chars().any(|c| c.is_ascii_uppercase()),
            "catalog: recipient name {:?} must be lower case letters, digits and _",
            self.name
        );
        anyhow::ensure!(
            !known.contains(&self.name.as_str()),
            "catalog.{}: a store or recipient of that name exists already",
            self.name
        );
        anyhow::ensure!(
            !self.hears.is_empty(),
            "{}: name at least one of deletion, rectification, restriction",
            at("hears")
        );
        for store in &self.records {
            anyhow::ensure!(
                stores.contains(&store.as_str()),
                "{}: unknown store {store:?} (known: {})",
                at("records"),
                stores.join(", ")
            );
        }
        let url = url::Url::parse(&self.url).map_err(|e| anyhow::anyhow!("{}: not a URL: {e}", at("url")))?;
        match self.transport {
            TransportKind::Webhook => {
                anyhow::ensure!(
                    matches!(url.scheme(), "https" | "http"),
                    "{}: a webhook needs an https:// (or http://) URL",
                    at("url")
                );
                anyhow::ensure!(
                    self.secret_env.is_some() != self.secret_file.is_some(),
                    "{}: a webhook needs exactly one of secret_env and secret_file",
                    at("secret_env")
                );
                anyhow::ensure!(
                    self.subject.is_none(),
                    "{}: only a nats recipient has a subject",
                    at("subject")
                );
            }
            TransportKind::Nats => {
                anyhow::ensure!(
                    url.scheme() == "nats" || url.scheme() == "tls",
                    "{}: a nats:// URL",
                    at("url")
                );
                anyhow::ensure!(
                    self.subject.as_deref().is_some_and(|s| !s.is_empty() && !s.contains([' ', '*', '>'])),
                    "{}: a nats recipient needs a subject to publish on (no wildcards)",
                    at("subject")
                );
            }
        }
        Ok(())
    }
}

/// `[recipients]`: how the dispatcher delivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecipientsConfig {
    /// How often the dispatcher looks for due deliveries (it is also woken when work arrives).
    pub poll_interval_ms: u64,
    /// A delivery's lease: longer than `timeout_secs`, so a live dispatcher never loses it
    /// mid-send; a dead one's deliveries are resent once it expires.
    pub lease_secs: u64,
    /// Deliveries claimed at once by one process.
    pub batch: usize,
    /// Longest one send may take.
    pub timeout_secs: u64,
    /// Retry delays: exponential from base to max, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// After this long without an acknowledgement the delivery ends FAILED (and so does its
    /// request): a day by default, retried all the while.
    pub give_up_secs: u64,
    /// A recipient that refuses an event (a 4xx other than 408/429) this many times in a row has
    /// refused it for good: FAILED before the give-up.
    pub permanent_failures: u32,
    /// The recipients, from `[[catalog]] kind = "recipient"`.
    #[serde(skip)]
    pub entries: Vec<RecipientEntry>,
}

impl Default for RecipientsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            lease_secs: 60,
            batch: 32,
            timeout_secs: 15,
            backoff_base_ms: 5_000,
            backoff_max_ms: 3_600_000,
            give_up_secs: 86_400,
            permanent_failures: 5,
            entries: Vec::new(),
        }
    }
}

impl RecipientsConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    pub fn validate(&self, stores: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(self.poll_interval_ms >= 1, "recipients.poll_interval_ms must be at least 1");
        anyhow::ensure!(self.batch >= 1, "recipients.batch must be at least 1");
        anyhow::ensure!(self.timeout_secs >= 1, "recipients.timeout_secs must be at least 1");
        anyhow::ensure!(
            self.lease_secs > self.timeout_secs,
            "recipients.lease_secs must exceed recipients.timeout_secs (a send must end within its lease)"
        );
        anyhow::ensure!(
            self.backoff_base_ms <= self.backoff_max_ms,
            "recipients.backoff_base_ms must not exceed backoff_max_ms"
        );
        anyhow::ensure!(self.give_up_secs >= 1, "recipients.give_up_secs must be at least 1");
        anyhow::ensure!(self.permanent_failures >= 1, "recipients.permanent_failures must be at least 1");
        let mut known: Vec<&str> = stores.to_vec();
        for e in &self.entries {
            e.validate(stores, &known)?;
            known.push(&e.name);
        }
        Ok(())
    }
}

/// Takes the recipients out of the `[[catalog]]` array of a config file (the store entries stay),
/// so each kind is read by its own strict type.
pub fn split_catalog(table: &mut toml::Table) -> anyhow::Result<Vec<RecipientEntry>> {
    let Some(toml::Value::Array(entries)) = table.get_mut("catalog") else {
        return Ok(Vec::new());
    };
    let mut recipients = Vec::new();
    let mut stores = Vec::new();
    for entry in std::mem::take(entries) {
        match entry.as_table().and_then(|t| t.get("kind")).and_then(|k| k.as_str()) {
            Some("recipient") => {
                let mut t = entry.as_table().cloned().unwrap_or_default();
                t.remove("kind");
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_owned();
                let e: RecipientEntry = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("catalog.{name} (recipient): {e}"))?;
                recipients.push(e);
            }
            _ => stores.push(entry),
        }
    }
    *entries = stores;
    Ok(recipients)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(toml: &str) -> anyhow::Result<Vec<RecipientEntry>> {
        let mut table: toml::Table = toml.parse()?;
        let r = split_catalog(&mut table)?;
        let cfg = RecipientsConfig { entries: r.clone(), ..Default::default() };
        cfg.validate(&["accounts", "billing", "call_logs"])?;
        Ok(r)
    }

    #[test]
    fn a_recipient_reads_from_the_catalog_and_stores_stay() {
        let text = "[[catalog]]\nname = \"notes\"\ntable = \"t\"\n\n[[catalog]]\nkind = \"recipient\"\nname = \"payments\"\nhears = [\"deletion\", \"restriction\"]\nidentifiers = [\"account_id\"]\nrecords = [\"billing\"]\ntransport = \"webhook\"\nurl = \"https://pay.example/hook\"\nsecret_env = \"X\"\n";
        let mut table: toml::Table = text.parse().unwrap();
        let r = split_catalog(&mut table).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(table["catalog"].as_array().unwrap().len(), 1, "the store entry stays");
        assert_eq!(r[0].hears_of(RequestKind::Deletion), Some(false));
        assert_eq!(r[0].hears_of(RequestKind::Rectification), None);
        assert_eq!(r[0].hears_of(RequestKind::Export), None);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "[[catalog]]\nkind = \"recipient\"\nname = \"r\"\nhears = [\"deletion\"]\n";
        let bad = [
            ("transport = \"webhook\"\nurl = \"https://x\"\n", "exactly one of secret_env"),
            ("transport = \"webhook\"\nurl = \"nats://x\"\nsecret_env = \"S\"\n", "https://"),
            ("transport = \"nats\"\nurl = \"nats://x:4222\"\n", "needs a subject"),
            (
                "transport = \"nats\"\nurl = \"nats://x:4222\"\nsubject = \"a\"\nrecords = [\"nowhere\"]\n",
                "unknown store",
            ),
            ("transport = \"smtp\"\nurl = \"x\"\n", "unknown variant"),
            ("transport = \"nats\"\nurl = \"nats://x\"\nsubject = \"a\"\ncolour = 1\n", "unknown field"),
        ];
        for (rest, want) in bad {
            let err = format!("{:#}", read(&format!("{base}{rest}")).unwrap_err());
            assert!(err.contains(want), "{rest}: {err}");
        }
        let dup = format!("{base}transport = \"nats\"\nurl = \"nats://x\"\nsubject = \"a\"\n{base}transport = \"nats\"\nurl = \"nats://x\"\nsubject = \"a\"\n");
        assert!(format!("{:#}", read(&dup).unwrap_err()).contains("exists already"));
    }
}
