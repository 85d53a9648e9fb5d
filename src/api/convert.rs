//! Wire ↔ domain. Messages are destructured exhaustively, so a field added to the proto is a
//! compile error here until someone decides what it means.
use chrono::{DateTime, Utc};

use super::pb;
use crate::{
    domain::{Corrections, FieldError, OutcomeState, Regime, RequestKind, RequestStatus, Subject},
    ledger::{RequestRecord, TaskRecord},
    stores::Holdings,
};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn subject(field: &'static str, s: Option<pb::Subject>) -> Result<Subject, FieldError> {
    let pb::Subject { tenant_id, account_id, email, phone } =
        s.ok_or_else(|| FieldError::new(field, "is required"))?;
    Subject::parse(&tenant_id, &account_id, &email, &phone)
}

/// A rectification's corrections: the message and at least one field are required.
pub fn corrections(c: Option<pb::Corrections>) -> Result<Corrections, FieldError> {
    let pb::Corrections { name, email, phone } =
        c.ok_or_else(|| FieldError::new("corrections", "is required: at least one of name, email, phone"))?;
    Corrections::parse(name.as_deref(), email.as_deref(), phone.as_deref())
}

pub fn regime(value: i32) -> Result<Regime, FieldError> {
    match pb::Regime::try_from(value) {
        Ok(pb::Regime::Unspecified) => Ok(Regime::Unspecified),
        Ok(pb::Regime::Gdpr) => Ok(Regime::Gdpr),
        Ok(pb::Regime::Ccpa) => Ok(Regime::Ccpa),
        Err(_) => Err(FieldError::new("regime", format!("unknown value {value}"))),
    }
}

pub fn status_filter(value: i32) -> Result<Option<RequestStatus>, FieldError> {
    Ok(
        match pb::RequestStatus::try_from(value)
            .map_err(|_| FieldError::new("status", format!("unknown value {value}")))?
        {
            pb::RequestStatus::Unspecified => None,
            pb::RequestStatus::Pending => Some(RequestStatus::Pending),
            pb::RequestStatus::InProgress => Some(RequestStatus::InProgress),
            pb::RequestStatus::Completed => Some(RequestStatus::Completed),
            pb::RequestStatus::Failed => Some(RequestStatus::Failed),
            pb::RequestStatus::Cancelled => Some(RequestStatus::Cancelled),
        },
    )
}

pub fn kind_filter(value: i32) -> Result<Option<RequestKind>, FieldError> {
    Ok(
        match pb::RequestKind::try_from(value)
            .map_err(|_| FieldError::new("kind", format!("unknown value {value}")))?
        {
            pb::RequestKind::Unspecified => None,
            pb::RequestKind::Export => Some(RequestKind::Export),
            pb::RequestKind::Deletion => Some(RequestKind::Deletion),
            pb::RequestKind::Rectification => Some(RequestKind::Rectification),
        },
    )
}

fn kind(k: RequestKind) -> pb::RequestKind {
    match k {
        RequestKind::Export => pb::RequestKind::Export,
        RequestKind::Deletion => pb::RequestKind::Deletion,
        RequestKind::Rectification => pb::RequestKind::Rectification,
    }
}

fn status(s: RequestStatus) -> pb::RequestStatus {
    match s {
        RequestStatus::Pending => pb::RequestStatus::Pending,
        RequestStatus::InProgress => pb::RequestStatus::InProgress,
        RequestStatus::Completed => pb::RequestStatus::Completed,
        RequestStatus::Failed => pb::RequestStatus::Failed,
        RequestStatus::Cancelled => pb::RequestStatus::Cancelled,
    }
}

fn regime_out(r: Regime) -> pb::Regime {
    match r {
        Regime::Unspecified => pb::Regime::Unspecified,
        Regime::Gdpr => pb::Regime::Gdpr,
        Regime::Ccpa => pb::Regime::Ccpa,
    }
}

fn outcome_state(s: OutcomeState) -> pb::OutcomeState {
    match s {
        OutcomeState::Pending => pb::OutcomeState::Pending,
        OutcomeState::Running => pb::OutcomeState::Running,
        OutcomeState::Done => pb::OutcomeState::Done,
        OutcomeState::Retained => pb::OutcomeState::Retained,
        OutcomeState::Failed => pb::OutcomeState::Failed,
        OutcomeState::Skipped => pb::OutcomeState::Skipped,
        OutcomeState::Cancelled => pb::OutcomeState::Cancelled,
    }
}

impl From<&TaskRecord> for pb::StoreOutcome {
    fn from(t: &TaskRecord) -> Self {
        Self {
            store: t.store.clone(),
            state: outcome_state(t.state) as i32,
            records_found: t.records_found,
            records_affected: t.records_affected,
            records_unattributed: t.records_unattributed,
            retention_basis: t.retention_basis.clone().unwrap_or_default(),
            retained_until: t.retained_until.map(timestamp),
            attempts: t.attempts,
            last_error: t.last_error.clone().unwrap_or_default(),
            verified: t.verified,
            started_at: t.started_at.map(timestamp),
            finished_at: t.finished_at.map(timestamp),
        }
    }
}

impl From<&RequestRecord> for pb::DsrRequest {
    fn from(r: &RequestRecord) -> Self {
        Self {
            id: r.id.clone(),
            tenant_id: r.tenant_id.clone(),
            kind: kind(r.kind) as i32,
            status: status(r.status) as i32,
            regime: regime_out(r.regime) as i32,
            requested_by: r.requested_by.clone(),
            created_at: Some(timestamp(r.created_at)),
            due_at: Some(timestamp(r.due_at)),
            completed_at: r.completed_at.map(timestamp),
            outcomes: r.outcomes.iter().map(Into::into).collect(),
            export: r.export.as_ref().map(|x| pb::ExportInfo {
                format: x.format.clone(),
                size_bytes: x.size_bytes,
                sha256: x.sha256.clone(),
                expires_at: Some(timestamp(x.expires_at)),
            }),
            deadline_extended: r.deadline_extended,
            recipients: r
                .recipients
                .iter()
                .map(|d| pb::RecipientOutcome {
                    recipient: d.recipient.clone(),
                    state: outcome_state(d.state) as i32,
                    event_id: d.event_id.clone(),
                    attempts: d.attempts,
                    last_error: d.last_error.clone().unwrap_or_default(),
                    next_attempt_at: d.next_attempt_at.map(timestamp),
                    finished_at: d.finished_at.map(timestamp),
                })
                .collect(),
        }
    }
}

pub fn holdings(store: &str, h: Holdings) -> pb::StoreHoldings {
    pb::StoreHoldings {
        store: store.to_owned(),
        records: h.records,
        bytes: h.bytes,
        under_legal_hold: h.under_legal_hold,
        records_unattributed: h.unattributed,
    }
}

/// Page tokens are opaque to callers: hex of `created_ms.id`.
pub fn page_token(pos: &(i64, String)) -> String {
    hex::encode(format!("{}.{}", pos.0, pos.1))
}

pub fn parse_page_token(token: &str) -> Result<Option<(i64, String)>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let (ms, id) = text.split_once('.').ok_or_else(bad)?;
    Ok(Some((ms.parse().map_err(|_| bad())?, id.to_owned())))
}

/// Audit page tokens, in the same style: hex of `seq.<last seq of the page>`.
pub fn seq_token(seq: i64) -> String {
    hex::encode(format!("seq.{seq}"))
}

pub fn parse_seq_token(token: &str) -> Result<Option<i64>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let seq = text.strip_prefix("seq.").ok_or_else(bad)?;
    Ok(Some(seq.parse().map_err(|_| bad())?))
}
