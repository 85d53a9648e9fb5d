//! Identifiers of the service's own things: request ids, idempotency keys, store names, and the
//! field error every parser returns.
use std::fmt;

use uuid::Uuid;

/// A caller's input that failed to parse: which field, and why. Never holds the value itself,
/// because the value may be personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// A request's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Uuid);

impl RequestId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &'static str, s: &str) -> Result<Self, FieldError> {
        if s.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        Uuid::try_parse(s).map(Self).map_err(|_| FieldError::new(field, "is not a request id (a UUID)"))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The caller's opaque idempotency key. It may contain anything, including personal data, so it
/// is only ever stored and compared as a keyed hash, and its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 256;

    /// `None` when the caller sent no key.
    pub fn parse(field: &'static str, s: &str) -> Result<Option<Self>, FieldError> {
        if s.is_empty() {
            return Ok(None);
        }
        if s.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, format!("longer than {} bytes", Self::MAX_LEN)));
        }
        Ok(Some(Self(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdempotencyKey(<redacted>)")
    }
}

/// The name of a store adapter (`accounts`, `call_logs`, …), as it appears in outcomes.
pub type StoreName = &'static str;
