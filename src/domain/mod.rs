//! The domain: who a subject is, what a request is and how its state moves. Pure: no I/O.
//!
//! Values here are parsed, not validated: once a `Phone` exists it is E.164, once a `Subject`
//! exists it names a tenant and at least one identifier.

mod ids;
mod request;
mod requester;
mod retention;
mod subject;

pub use ids::{FieldError, IdempotencyKey, RequestId, StoreName};
pub use request::{
    derive_status, derive_status_under_holds, due_at, extended_due_at, OutcomeState, Regime, RequestKind,
    RequestStatus, RETENTION_MONTHS_BILLING,
};
pub use requester::parse_requested_by;
pub use retention::{legal_minimum, platform_period, Period, RetentionSchedule};
pub use subject::{AccountId, Corrections, Email, Name, Phone, Subject, TenantId};

/// Longest free-text field we accept (requested_by, reasons). Larger means a caller bug.
pub const MAX_TEXT_LEN: usize = 512;

/// Checks a free-text field: length and no control characters.
pub fn parse_text(field: &'static str, value: &str) -> Result<String, FieldError> {
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(FieldError::new(field, format!("longer than {MAX_TEXT_LEN} characters")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(value.to_owned())
}
