//! Whose record is this? The rules that decide, for one record a store found, whether it belongs
//! to the person a request resolved to, to somebody else, or to nobody in particular. Pure.
//!
//! - A record linked to another store's record (a transcript to its call) follows that record.
//! - A record with an account id belongs to that account's holder and nobody else.
//! - Otherwise its emails and phones decide: the person's, and held by no other account of the
//!   tenant, makes it theirs; one the person shares with another account (a family line, a
//!   duplicate email), or identifiers of two people at once, leave it unattributed — it is
//!   never erased on one person's behalf.
use serde::{Deserialize, Serialize};

use super::{normalize, Person};

/// Which kind of identifier a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentKind {
    AccountId,
    Email,
    Phone,
}

/// Whose a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The person's: a request about them acts on it.
    Mine,
    /// Somebody else's.
    Foreign,
    /// It names the person, but not only them: nobody's request erases it.
    Unattributed,
}

/// A record as a store found it: its key, the identifiers it holds (as stored), the key of the
/// record it links to, and what it weighs. `Debug` shows the key only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CandidateRow {
    pub key: String,
    pub identifiers: Vec<(IdentKind, Option<String>)>,
    pub link: Option<String>,
    pub bytes: u64,
    /// For an object-backed store: the object's key, exactly as stored.
    pub object: Option<String>,
    /// The erasure has already been applied to it (personal columns blanked, or restricted
    /// under a legal obligation): nothing of the person is left to erase here.
    pub cleared: bool,
}

impl std::fmt::Debug for CandidateRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandidateRow").field("key", &self.key).finish_non_exhaustive()
    }
}

/// Decides whose `row` is. `linked` is the attribution of the record it links to, when the
/// resolution knows that record.
pub fn attribute(person: &Person, row: &CandidateRow, linked: Option<Attribution>) -> Attribution {
    if let Some(a) = linked {
        return a;
    }
    let region = person.region();
    let (mut mine, mut shared, mut other) = (false, false, false);
    for (kind, value) in &row.identifiers {
        let Some(value) = value.as_deref().filter(|v| !v.trim().is_empty()) else { continue };
        match kind {
            IdentKind::AccountId => {
                return match &person.account_id {
                    Some(a) if a == value.trim() => Attribution::Mine,
                    _ => Attribution::Foreign,
                }
            }
            IdentKind::Email => match normalize::email(value) {
                Some(e) if person.emails.contains(&e) => {
                    if person.shared_emails.contains(&e) {
                        shared = true
                    } else {
                        mine = true
                    }
                }
                _ => other = true,
            },
            IdentKind::Phone => match normalize::phone(value, region) {
                Some(p) if person.phones.contains(&p) => {
                    if person.shared_phones.contains(&p) {
                        shared = true
                    } else {
                        mine = true
                    }
                }
                _ => other = true,
            },
        }
    }
    match (mine, shared, other) {
        (true, false, false) => Attribution::Mine,
        (false, false, _) => Attribution::Foreign,
        _ => Attribution::Unattributed,
    }
}

/// Whether a stored identifier means one of the person's: the confirmation of an index lookup
/// (which may find a few rows that only look alike once separators are stripped).
pub fn names_person(person: &Person, kind: IdentKind, value: &str) -> bool {
    match kind {
        IdentKind::AccountId => person.account_id.as_deref() == Some(value.trim()),
        IdentKind::Email => normalize::email(value).is_some_and(|e| person.emails.contains(&e)),
        IdentKind::Phone => {
            normalize::phone(value, person.region()).is_some_and(|p| person.phones.contains(&p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentKind::*;

    fn person() -> Person {
        let mut p = Person::new("acme", "US");
        p.account_id = Some("acct-a".into());
        p.emails.insert("ann@example.com".into());
        p.phones.insert("+15550000003".into());
        p.phones.insert("+15550000009".into());
        p.shared_phones.insert("+15550000009".into());
        p
    }

    fn row(ids: &[(IdentKind, Option<&str>)], link: Option<&str>) -> CandidateRow {
        CandidateRow {
            key: "k".into(),
            identifiers: ids.iter().map(|(k, v)| (*k, v.map(str::to_owned))).collect(),
            link: link.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn an_account_id_decides_alone() {
        let p = person();
        assert_eq!(
            attribute(&p, &row(&[(AccountId, Some("acct-a")), (Phone, Some("+15550000777"))], None), None),
            Attribution::Mine
        );
        assert_eq!(
            attribute(&p, &row(&[(AccountId, Some("acct-b")), (Phone, Some("(555) 000-0003"))], None), None),
            Attribution::Foreign
        );
    }

    #[test]
    fn identifiers_as_people_write_them_are_the_persons() {
        let p = person();
        assert_eq!(
            attribute(&p, &row(&[(AccountId, None), (Phone, Some("(555) 000-0003"))], None), None),
            Attribution::Mine
        );
        assert_eq!(
            attribute(&p, &row(&[(Email, Some(" Ann@Example.COM\n"))], None), None),
            Attribution::Mine
        );
        assert_eq!(attribute(&p, &row(&[(Phone, Some("+15550000004"))], None), None), Attribution::Foreign);
        assert_eq!(attribute(&p, &row(&[(Phone, None)], None), None), Attribution::Foreign);
    }

    #[test]
    fn a_shared_line_or_two_peoples_identifiers_leave_a_record_unattributed() {
        let p = person();
        assert_eq!(
            attribute(&p, &row(&[(Phone, Some("15550000009"))], None), None),
            Attribution::Unattributed
        );
        assert_eq!(
            attribute(
                &p,
                &row(&[(Email, Some("ann@example.com")), (Phone, Some("+15550000004"))], None),
                None
            ),
            Attribution::Unattributed
        );
    }

    #[test]
    fn a_linked_record_follows_the_record_it_links_to() {
        let p = person();
        let r = row(&[(Phone, Some("+15550000003"))], Some("call-1"));
        assert_eq!(attribute(&p, &r, Some(Attribution::Foreign)), Attribution::Foreign);
        assert_eq!(attribute(&p, &r, Some(Attribution::Unattributed)), Attribution::Unattributed);
        assert_eq!(attribute(&p, &r, None), Attribution::Mine, "an orphan falls back to its own columns");
    }
}
