//! Keyed hashes of personal identifiers: the only form in which an identifier may appear in a
//! log line, a span, an event or the ledger's correlation columns.
use std::{fs, io::Write, path::Path};

use anyhow::Context;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::domain::{AccountId, Email, Phone, Subject, TenantId};

/// The kinds of identifier a subject tag can be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind {
    Account,
    Email,
    Phone,
}

impl IdentifierKind {
    fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Account => "account",
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
        }
    }
}

/// HMAC-SHA256 under the server's secret key. Without the key a tag cannot be reversed by
/// hashing every phone number in a country, which a plain SHA-256 could.
#[derive(Clone)]
pub struct KeyedHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedHasher(<key redacted>)")
    }
}

impl KeyedHasher {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    /// Full tag: lowercase hex of HMAC-SHA256(key, value).
    pub fn tag(&self, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A short tag for log lines: 16 hex characters are plenty to correlate, useless to reverse.
    pub fn short_tag(&self, value: &str) -> String {
        self.tag(value)[..16].to_owned()
    }

    /// The audit log's tag of one identifier of a person in one tenant (issue 7):
    /// `HMAC-SHA256(key, "subject|<tenant>|<kind>:<value>")`, kind `account`, `email` or
    /// `phone`, the value normalised as the domain parses it (email trimmed and lower-cased, phone
    /// E.164 as given, account id as given). The tenant is part of it: the same phone in another
    /// tenant is another person.
    pub fn identifier_tag(&self, tenant: &TenantId, kind: IdentifierKind, value: &str) -> String {
        self.tag(&format!("subject|{tenant}|{}:{value}", kind.as_str()))
    }

    /// One identifier tag per identifier the subject has, sorted.
    pub fn subject_tags(&self, s: &Subject) -> Vec<String> {
        let mut tags = Vec::new();
        if let Some(a) = &s.account_id {
            tags.push(self.identifier_tag(&s.tenant, IdentifierKind::Account, a.as_str()));
        }
        if let Some(e) = &s.email {
            tags.push(self.identifier_tag(&s.tenant, IdentifierKind::Email, e.as_str()));
        }
        if let Some(p) = &s.phone {
            tags.push(self.identifier_tag(&s.tenant, IdentifierKind::Phone, p.as_str()));
        }
        tags.sort_unstable();
        tags
    }

    /// One identifier tag per identifier a resolved person has (normalised), sorted: what holds
    /// and the audit log are matched on once a subject is resolved.
    pub fn person_tags(&self, p: &crate::resolve::Person) -> Vec<String> {
        let tenant = TenantId::parse("tenant", &p.tenant).ok();
        let Some(tenant) = tenant else { return Vec::new() };
        let mut tags: Vec<String> = p
            .account_id
            .iter()
            .map(|a| self.identifier_tag(&tenant, IdentifierKind::Account, a))
            .chain(p.emails.iter().map(|e| self.identifier_tag(&tenant, IdentifierKind::Email, e)))
            .chain(p.phones.iter().map(|ph| self.identifier_tag(&tenant, IdentifierKind::Phone, ph)))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// The tags one identifier of unknown kind may have: as a phone if it parses as E.164, as an
    /// email if it parses as one, and always as an account id (account ids are free-form, so
    /// `+14155550100` could be one). Empty when it is none of them.
    pub fn lookup_tags(&self, tenant: &TenantId, identifier: &str) -> Vec<String> {
        let mut tags = Vec::new();
        if let Ok(p) = Phone::parse("subject", identifier) {
            tags.push(self.identifier_tag(tenant, IdentifierKind::Phone, p.as_str()));
        }
        if let Ok(e) = Email::parse("subject", identifier) {
            tags.push(self.identifier_tag(tenant, IdentifierKind::Email, e.as_str()));
        }
        if let Ok(a) = AccountId::parse("subject", identifier) {
            tags.push(self.identifier_tag(tenant, IdentifierKind::Account, a.as_str()));
        }
        tags
    }

    /// The key for a service on these settings. A ledger on Postgres is shared by replicas: each
    /// would generate a key of its own, and holds, idempotency keys, superseded exports and audit
    /// lookups would stop matching across them (a held subject's data could be erased). So
    /// there a configured key is required; only a SQLite ledger (one process) may generate one.
    pub fn for_settings(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        let configured = settings.file.privacy.hmac_key.as_deref().filter(|k| !k.is_empty());
        anyhow::ensure!(
            configured.is_some() || !settings.database_url.starts_with("postgres"),
            "a Postgres ledger needs a configured audit key: set DSR_AUDIT_KEY (or [privacy] hmac_key), the same \
             secret on every replica. Without it each replica would make its own, and holds, idempotency keys and \
             audit lookups would stop matching across replicas"
        );
        Self::load_or_create(configured, &settings.data_dir)
    }

    /// Loads the key: the configured one if any, else `<data_dir>/hmac.key`, generated once with
    /// owner-only permissions.
    pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(k) = configured.filter(|k| !k.is_empty()) {
            anyhow::ensure!(k.len() >= 16, "the HMAC key must be at least 16 characters");
            return Ok(Self::new(k.as_bytes()));
        }
        let path = data_dir.join("hmac.key");
        if let Ok(existing) = fs::read_to_string(&path) {
            let key = hex::decode(existing.trim()).context("hmac.key is not hex")?;
            return Ok(Self::new(key));
        }
        fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(&path) {
            Ok(mut f) => {
                f.write_all(hex::encode(key).as_bytes())?;
                f.sync_all()?;
                Ok(Self::new(key.to_vec()))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(None, data_dir),
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_keyed_and_stable() {
        let a = KeyedHasher::new(b"0123456789abcdef".to_vec());
        let b = KeyedHasher::new(b"fedcba9876543210".to_vec());
        assert_eq!(a.tag("+14155550100"), a.tag("+14155550100"));
        assert_ne!(a.tag("+14155550100"), b.tag("+14155550100"));
        assert_eq!(a.short_tag("x").len(), 16);
    }

    #[test]
    fn one_identifier_finds_the_tag_a_whole_subject_was_given() {
        let h = KeyedHasher::new(b"0123456789abcdef".to_vec());
        let s = Subject::parse("acme", "acct-1", " Ann@Example.com", "+14155550100").unwrap();
        let tags = h.subject_tags(&s);
        let acme = TenantId::parse("t", "acme").unwrap();
        for one in ["ann@example.com", "ANN@example.com ", "+14155550100", "acct-1"] {
            assert!(h.lookup_tags(&acme, one).iter().any(|t| tags.contains(t)), "{one}");
        }
        let globex = TenantId::parse("t", "globex").unwrap();
        assert!(!h.lookup_tags(&globex, "+14155550100").iter().any(|t| tags.contains(t)));
        assert!(!h.lookup_tags(&acme, "+14155550199").iter().any(|t| tags.contains(t)));
    }

    #[test]
    fn the_generated_key_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = KeyedHasher::load_or_create(None, dir.path()).unwrap();
        let b = KeyedHasher::load_or_create(None, dir.path()).unwrap();
        assert_eq!(a.tag("x"), b.tag("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("hmac.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
