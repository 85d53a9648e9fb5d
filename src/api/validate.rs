//! Decoding and validation of every request message, outside any handler: what the fuzz
//! harness drives with arbitrary bytes. Each function runs the same parsing the handler runs,
//! so a panic or a missed limit here is one in the server.
use prost::Message;

use super::{convert, holds, pb, rights};
use crate::domain::{FieldError, RequestKind};

/// Every RPC that takes a request message.
pub const METHODS: &[&str] = &[
    "SubmitExport",
    "SubmitDeletion",
    "SubmitRectification",
    "GetRequest",
    "ListRequests",
    "WatchRequest",
    "CancelRequest",
    "RetryRequest",
    "PreviewSubject",
    "DownloadExport",
    "ExtendDeadline",
    "ListAuditEvents",
    "PlaceHold",
    "ReleaseHold",
    "ListHolds",
];

/// What became of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a valid protobuf message for the RPC (the server answers INVALID_ARGUMENT).
    Undecodable,
    /// Decoded, then refused; the error names a field.
    Invalid(&'static str),
    Valid,
}

/// Decodes `bytes` as `method`'s request message and validates it.
pub fn decode_and_validate(method: &str, bytes: &[u8]) -> Verdict {
    macro_rules! decode {
        ($t:ty) => {
            match <$t>::decode(bytes) {
                Ok(m) => m,
                Err(_) => return Verdict::Undecodable,
            }
        };
    }
    let result: Result<(), FieldError> = match method {
        "SubmitExport" => {
            let m = decode!(pb::SubmitExportRequest);
            rights::parse_submission(
                RequestKind::Export,
                m.subject,
                m.regime,
                &m.idempotency_key,
                &m.requested_by,
            )
            .map(drop)
        }
        "SubmitDeletion" => {
            let m = decode!(pb::SubmitDeletionRequest);
            rights::parse_submission(
                RequestKind::Deletion,
                m.subject,
                m.regime,
                &m.idempotency_key,
                &m.requested_by,
            )
            .map(drop)
        }
        "SubmitRectification" => {
            let m = decode!(pb::SubmitRectificationRequest);
            rights::parse_submission(
                RequestKind::Rectification,
                m.subject,
                m.regime,
                &m.idempotency_key,
                &m.requested_by,
            )
            .and_then(|_| convert::corrections(m.corrections).map(drop))
        }
        "GetRequest" => rights::parse_id(&decode!(pb::GetRequestRequest).id),
        "WatchRequest" => rights::parse_id(&decode!(pb::WatchRequestRequest).id),
        "CancelRequest" => rights::parse_id(&decode!(pb::CancelRequestRequest).id),
        "RetryRequest" => rights::parse_id(&decode!(pb::RetryRequestRequest).id),
        "DownloadExport" => rights::parse_id(&decode!(pb::DownloadExportRequest).id),
        "ExtendDeadline" => {
            let m = decode!(pb::ExtendDeadlineRequest);
            rights::parse_id(&m.id).and_then(|_| holds::parse_reason("reason", &m.reason).map(drop))
        }
        "ListRequests" => {
            let m = decode!(pb::ListRequestsRequest);
            (|| {
                if !m.tenant_id.is_empty() {
                    crate::domain::TenantId::parse("tenant_id", &m.tenant_id)?;
                }
                convert::status_filter(m.status)?;
                convert::kind_filter(m.kind)?;
                convert::parse_page_token(&m.page_token)?;
                Ok(())
            })()
        }
        "PreviewSubject" => convert::subject("subject", decode!(pb::PreviewSubjectRequest).subject).map(drop),
        "ListAuditEvents" => {
            let m = decode!(pb::ListAuditEventsRequest);
            convert::parse_page_token(&m.page_token).map(drop)
        }
        "PlaceHold" => {
            let m = decode!(pb::PlaceHoldRequest);
            convert::subject("subject", m.subject)
                .and_then(|_| holds::parse_reason("reason", &m.reason))
                .map(drop)
        }
        "ReleaseHold" => {
            let m = decode!(pb::ReleaseHoldRequest);
            holds::parse_hold_id("id", &m.id).and_then(|_| holds::parse_reason("reason", &m.reason)).map(drop)
        }
        "ListHolds" => {
            let m = decode!(pb::ListHoldsRequest);
            (|| {
                if !m.tenant_id.is_empty() {
                    crate::domain::TenantId::parse("tenant_id", &m.tenant_id)?;
                }
                holds::parse_page_token(&m.page_token)?;
                Ok(())
            })()
        }
        other => panic!("unknown method {other}"),
    };
    match result {
        Ok(()) => Verdict::Valid,
        Err(e) => Verdict::Invalid(e.field),
    }
}
