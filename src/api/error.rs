//! The one place where failures become gRPC status codes. Callers' mistakes say what to fix and
//! name the field; unexpected failures are logged whole and reach the caller as a bare INTERNAL.
use tonic::Status;
use tracing::error;

use crate::{domain::FieldError, ledger::LedgerError};

#[derive(thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0} is not implemented by this version of dsr")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unexpected(e) => write!(f, "{e:?}"),
            other => write!(f, "{other}"),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::NotFound => ApiError::NotFound("no request with that id".into()),
            LedgerError::IdempotencyConflict => ApiError::AlreadyExists(
                "idempotency_key: already used for a different request (kind, subject, regime, requested_by or corrections differ)".into(),
            ),
            LedgerError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            LedgerError::Db(e) if database_unavailable(&e) => {
                tracing::warn!(error = %e, "the ledger database is unavailable");
                ApiError::Unavailable("the ledger database is unavailable; retrying is safe".into())
            }
            LedgerError::Db(e) => ApiError::Unexpected(anyhow::Error::new(e).context("ledger")),
        }
    }
}

/// Whether a database error means "not reachable now" rather than "this went wrong": the
/// connection failed or was cut, the pool gave up waiting, the server is shutting down or
/// refusing connections, or SQLite is busy. A client may retry these; UNAVAILABLE says so.
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    // A lost connection (`db::liveness`: I/O, TLS, protocol, Postgres classes 08 and 57P), or:
    crate::db::liveness::is_connection_failure(e)
        || match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // Postgres: 53300 (too many connections), 55000 when a database stops accepting
            // connections. SQLite: 5 and 6 (busy, locked).
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| matches!(code.as_ref(), "53300" | "55000" | "5" | "6"))
            }
            _ => false,
        }
}

/// A subject that does not resolve to exactly one person is the caller's to fix (name the
/// person by account id, one request per person); a store that cannot be read is worth a retry.
impl From<crate::resolve::ResolveError> for ApiError {
    fn from(e: crate::resolve::ResolveError) -> Self {
        match e {
            crate::resolve::ResolveError::Refused(r) => {
                ApiError::FailedPrecondition(format!("{}: {}", r.field, r.reason))
            }
            crate::resolve::ResolveError::Store(store, e) => {
                ApiError::Unavailable(format!("could not resolve the subject in the {store} store: {e}"))
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(f) => Status::invalid_argument(f.to_string()),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            e @ ApiError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            ApiError::Unexpected(e) => {
                error!(error = ?e, "unexpected failure");
                Status::internal("internal error; the server log has the details")
            }
        }
    }
}
