//! A data subject: one person inside one tenant, known by account id, email and/or phone.
//! Identifier types redact themselves in `Debug` so they cannot slip into a log by accident.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::FieldError;

macro_rules! redacted_debug {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "(<redacted>)"))
            }
        }
    };
}

/// A tenant (workspace) id: 1–64 characters of `[A-Za-z0-9._-]`. Not personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        if s.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, format!("longer than {} characters", Self::MAX_LEN)));
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(FieldError::new(field, "may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A platform account id: 1–128 printable characters, no whitespace.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);
redacted_debug!(AccountId);

impl AccountId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        if s.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, format!("longer than {} characters", Self::MAX_LEN)));
        }
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(field, "must be non-empty with no whitespace"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, normalised to lower case (addresses are matched case-insensitively).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);
redacted_debug!(Email);

impl Email {
    /// RFC 5321's limit on a forward path.
    pub const MAX_LEN: usize = 254;

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, format!("longer than {} characters", Self::MAX_LEN)));
        }
        let bad = || FieldError::new(field, "is not an email address (local@domain.tld)");
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let ok_chars = |p: &str| !p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@');
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        if local.is_empty() || local.len() > 64 || !ok_chars(local) || !domain_ok {
            return Err(bad());
        }
        Ok(Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164, as libphonenumber reads it: international (`+` and the country
/// code), kept in its E.164 form (`+1 555-000-0003` becomes `+15550000003`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phone(String);
redacted_debug!(Phone);

impl Phone {
    /// Longest input read (E.164 has at most 15 digits; separators may double that).
    pub const MAX_LEN: usize = 40;

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        let bad =
            || FieldError::new(field, "is not an E.164 phone number (+, the country code and the number)");
        let s = s.trim();
        if s.len() > Self::MAX_LEN || !s.starts_with('+') {
            return Err(bad());
        }
        // International input only: the region given to the library is never used for it.
        let e164 = crate::resolve::normalize::phone(s, Default::default()).ok_or_else(bad)?;
        Ok(Self(e164))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's name, as a correction: 1–200 characters, no control characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);
redacted_debug!(Name);

impl Name {
    pub const MAX_LEN: usize = 200;

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(FieldError::new(field, format!("longer than {} characters", Self::MAX_LEN)));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(FieldError::new(field, "contains control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One person inside one tenant: the tenant and at least one identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub tenant: TenantId,
    pub account_id: Option<AccountId>,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
}

impl Subject {
    /// Parses the wire fields; `prefix` names the message field (`subject`) in errors.
    pub fn parse(tenant: &str, account_id: &str, email: &str, phone: &str) -> Result<Self, FieldError> {
        let tenant = TenantId::parse("subject.tenant_id", tenant)?;
        let opt = |s: &str| (!s.is_empty()).then_some(());
        let account_id =
            opt(account_id).map(|_| AccountId::parse("subject.account_id", account_id)).transpose()?;
        let email = opt(email).map(|_| Email::parse("subject.email", email)).transpose()?;
        let phone = opt(phone).map(|_| Phone::parse("subject.phone", phone)).transpose()?;
        if account_id.is_none() && email.is_none() && phone.is_none() {
            return Err(FieldError::new(
                "subject",
                "needs at least one identifier: account_id, email or phone",
            ));
        }
        Ok(Self { tenant, account_id, email, phone })
    }

    /// Fills identifiers this subject lacks from another view of the same person (the account
    /// row): a caller may name a person by email alone, yet their calls are keyed by phone.
    pub fn enriched_with(
        mut self,
        account_id: Option<AccountId>,
        email: Option<Email>,
        phone: Option<Phone>,
    ) -> Self {
        self.account_id = self.account_id.or(account_id);
        self.email = self.email.or(email);
        self.phone = self.phone.or(phone);
        self
    }

    /// The identifiers in a fixed order, for hashing into a correlation tag.
    pub fn canonical_identifiers(&self) -> String {
        format!(
            "{}|a:{}|e:{}|p:{}",
            self.tenant,
            self.account_id.as_ref().map_or("", |a| a.as_str()),
            self.email.as_ref().map_or("", |e| e.as_str()),
            self.phone.as_ref().map_or("", |p| p.as_str()),
        )
    }
}

/// What a rectification changes. At least one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Corrections {
    pub name: Option<Name>,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
}

impl Corrections {
    pub fn parse(name: Option<&str>, email: Option<&str>, phone: Option<&str>) -> Result<Self, FieldError> {
        let c = Self {
            name: name.map(|v| Name::parse("corrections.name", v)).transpose()?,
            email: email.map(|v| Email::parse("corrections.email", v)).transpose()?,
            phone: phone.map(|v| Phone::parse("corrections.phone", v)).transpose()?,
        };
        if c.name.is_none() && c.email.is_none() && c.phone.is_none() {
            return Err(FieldError::new("corrections", "needs at least one of name, email, phone"));
        }
        Ok(c)
    }

    /// The subject as it is known once the corrections are applied: the same account, the new
    /// email and phone where they were corrected (the name is not an identifier).
    pub fn apply_to(&self, subject: &Subject) -> Subject {
        Subject {
            tenant: subject.tenant.clone(),
            account_id: subject.account_id.clone(),
            email: self.email.clone().or_else(|| subject.email.clone()),
            phone: self.phone.clone().or_else(|| subject.phone.clone()),
        }
    }

    /// The values in a fixed order, for the idempotency payload hash (never logged).
    pub fn canonical(&self) -> String {
        format!(
            "n:{}|e:{}|p:{}",
            self.name.as_ref().map_or("", |n| n.as_str()),
            self.email.as_ref().map_or("", |e| e.as_str()),
            self.phone.as_ref().map_or("", |p| p.as_str()),
        )
    }

    /// Names of the corrected fields (never their values), for events.
    pub fn field_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.name.is_some() {
            v.push("name");
        }
        if self.email.is_some() {
            v.push("email");
        }
        if self.phone.is_some() {
            v.push("phone");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_must_be_e164() {
        assert!(Phone::parse("p", "+14155550100").is_ok());
        assert_eq!(Phone::parse("p", "+1 (415) 555-0100").unwrap().as_str(), "+14155550100");
        for bad in [
            "14155550100",
            "+0123456789",
            "+1 415",
            "+123",
            "+1234567890123456",
            "",
            "+",
            "+1 415 555 0100 000 000 000",
        ] {
            assert!(Phone::parse("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse("e", " Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["ann", "@x.com", "ann@", "ann@localhost", "a b@x.com", "ann@x..com", "a@b@c.com"] {
            assert!(Email::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_subject_needs_a_tenant_and_an_identifier() {
        assert_eq!(Subject::parse("", "", "", "+14155550100").unwrap_err().field, "subject.tenant_id");
        assert_eq!(Subject::parse("acme", "", "", "").unwrap_err().field, "subject");
        assert_eq!(Subject::parse("acme", "", "x", "").unwrap_err().field, "subject.email");
        assert!(Subject::parse("acme", "acct-1", "", "").is_ok());
    }

    #[test]
    fn identifiers_do_not_show_in_debug() {
        let s = Subject::parse("acme", "acct-1", "ann@example.com", "+14155550100").unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("ann@") && !dbg.contains("4155550100") && !dbg.contains("acct-1"), "{dbg}");
    }
}
