//! Resolution: a request's subject, resolved once within its tenant — before any store acts —
//! into the one person it names: their account (if any), every identifier the platform holds for
//! them (normalised), and the keys of their records in every store. Ambiguity is refused
//! (`Refusal`), never guessed at.
//!
//! | module      | owns                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | `normalize` | identifiers as people write them: emails, phones, and their SQL forms |
//! | `attribute` | whose a record is: the person's, someone else's, or nobody's in particular |
//! | `resolver`  | the lookups: identity, then every store's records, links followed     |
//! | `walk`      | one store's records of the person, a batch at a time (exports)        |
//!
//! The resolution is personal data. It is kept with the request while the request is open and
//! dropped with the subject's identifiers when it ends.

pub mod attribute;
pub mod normalize;
mod resolver;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use attribute::{attribute, names_person, Attribution, CandidateRow, IdentKind};
pub use normalize::Region;
pub use resolver::{leftovers, resolve, resolve_person, scan, scan_stores, taken, Refusal, ResolveError};

/// The one person a request is about, within one tenant. Identifiers are normalised (emails
/// lower case and trimmed, phones E.164). `Debug` shows the tenant only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub tenant: String,
    /// The region national phone formats are read in (`US`).
    pub region: String,
    /// Their account, as stored (or as given, when no account holds it any more).
    pub account_id: Option<String>,
    pub emails: BTreeSet<String>,
    pub phones: BTreeSet<String>,
    /// Emails and phones of theirs that another account of the tenant also holds: a record
    /// known only by one of these is nobody's in particular.
    #[serde(default)]
    pub shared_emails: BTreeSet<String>,
    #[serde(default)]
    pub shared_phones: BTreeSet<String>,
}

impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl Person {
    pub fn new(tenant: &str, region: &str) -> Self {
        Self { tenant: tenant.to_owned(), region: region.to_owned(), ..Default::default() }
    }

    pub fn region(&self) -> Region {
        Region::parse(&self.region).unwrap_or_default()
    }

    /// The identifiers one at a time, as separate look-ups (the verification asks each alone).
    pub fn identifiers(&self) -> Vec<(IdentKind, String)> {
        let mut v: Vec<(IdentKind, String)> =
            self.account_id.iter().map(|a| (IdentKind::AccountId, a.clone())).collect();
        v.extend(self.emails.iter().map(|e| (IdentKind::Email, e.clone())));
        v.extend(self.phones.iter().map(|p| (IdentKind::Phone, p.clone())));
        v
    }
}

/// What one store holds of the person, as resolved: the keys of their records, of the records
/// that name them but are not theirs alone, and of records that matched an identifier but are
/// somebody else's (kept so a record linked to one of those follows it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreScan {
    pub mine: BTreeSet<String>,
    #[serde(default)]
    pub unattributed: BTreeSet<String>,
    #[serde(default)]
    pub foreign: BTreeSet<String>,
    /// What the person's records weigh (bytes), for a preview.
    #[serde(default)]
    pub bytes: u64,
    /// For an object-backed store: the exact object keys of the person's records.
    #[serde(default)]
    pub objects: BTreeSet<String>,
    /// How many of the person's records the erasure has already been applied to (an account
    /// blanked and kept for billing; a billing row restricted).
    #[serde(default)]
    pub cleared: u64,
}

impl StoreScan {
    /// The person's records the store still holds: all of them where a legal obligation keeps
    /// them (restricted rows are held, and reported), otherwise those not erased yet.
    pub fn held(&self, kept_under_legal_obligation: bool) -> u64 {
        let all = self.mine.len() as u64;
        if kept_under_legal_obligation {
            all
        } else {
            all - self.cleared.min(all)
        }
    }

    pub fn attribution_of(&self, key: &str) -> Option<Attribution> {
        if self.mine.contains(key) {
            Some(Attribution::Mine)
        } else if self.unattributed.contains(key) {
            Some(Attribution::Unattributed)
        } else if self.foreign.contains(key) {
            Some(Attribution::Foreign)
        } else {
            None
        }
    }

    fn add(&mut self, row: &CandidateRow, a: Attribution) {
        match a {
            Attribution::Mine => {
                if self.mine.insert(row.key.clone()) {
                    self.bytes += row.bytes;
                    self.cleared += u64::from(row.cleared);
                }
                self.objects.extend(row.object.clone());
            }
            Attribution::Unattributed => {
                self.unattributed.insert(row.key.clone());
            }
            Attribution::Foreign => {
                self.foreign.insert(row.key.clone());
            }
        }
    }
}

/// A subject resolved: the person, and per store (by name) what it holds of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub person: Person,
    pub stores: BTreeMap<String, StoreScan>,
}

impl Resolution {
    pub fn store(&self, name: &str) -> Option<&StoreScan> {
        self.stores.get(name)
    }
}
