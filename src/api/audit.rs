//! `dsr.v1.Audit`: listing and verifying the audit trail (issue 7). Identifiers arrive only as a
//! `subject` filter and are hashed at once; nothing here echoes one back.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::{Caller, Scope},
    convert,
    error::ApiError,
    pb,
    rights::ServiceContext,
};
use crate::{
    domain::{FieldError, RequestId, TenantId},
    ledger::{AuditFilter, EventRecord},
};

#[derive(Clone)]
pub struct AuditService {
    ctx: Arc<ServiceContext>,
}

impl AuditService {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }
}

impl From<&EventRecord> for pb::AuditEvent {
    fn from(e: &EventRecord) -> Self {
        Self {
            seq: e.seq as u64,
            at: Some(convert::timestamp(e.at)),
            request_id: e.request_id.clone().unwrap_or_default(),
            tenant_id: e.tenant_id.clone().unwrap_or_default(),
            store: e.store.clone().unwrap_or_default(),
            action: e.action.clone(),
            records_found: e.records_found.unwrap_or(0).max(0) as u64,
            records_affected: e.records_affected.unwrap_or(0).max(0) as u64,
            actor: e.actor.clone().unwrap_or_default(),
            subject_tag: e.subject_tag.clone().unwrap_or_default(),
            detail: e.detail.clone().unwrap_or_default(),
            prev_hash: e.prev_hash.clone().unwrap_or_default(),
            hash: e.hash.clone().unwrap_or_default(),
            subject_tags: e.subject_tags.clone(),
            attempt: e.attempt.unwrap_or(0).max(0) as u32,
        }
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Admin)?;
        let pb::ListAuditEventsRequest { tenant_id, request_id, page_size, page_token, subject } =
            req.into_inner();
        let tenant = (!tenant_id.is_empty())
            .then(|| TenantId::parse("tenant_id", &tenant_id))
            .transpose()
            .map_err(ApiError::from)?;
        // A tenant-bound admin sees its own tenant's events only.
        let tenant = match (tenant, caller.tenant()) {
            (Some(t), _) => {
                caller.require_tenant(t.as_str())?;
                Some(t)
            }
            (None, Some(own)) => Some(TenantId::parse("tenant_id", own).map_err(ApiError::from)?),
            (None, None) => None,
        };
        let request_id = (!request_id.is_empty())
            .then(|| RequestId::parse("request_id", &request_id).map(|r| r.to_string()))
            .transpose()
            .map_err(ApiError::from)?;
        let subject_tags = match (subject.is_empty(), &tenant) {
            (true, _) => Vec::new(),
            (false, None) => {
                return Err(ApiError::from(FieldError::new(
                    "tenant_id",
                    "is required with subject (the same identifier in another tenant is another person)",
                ))
                .into())
            }
            (false, Some(t)) => {
                let tags = self.ctx.hasher.lookup_tags(t, &subject);
                if tags.is_empty() {
                    return Err(ApiError::from(FieldError::new(
                        "subject",
                        "is not an E.164 phone number, an email address or an account id",
                    ))
                    .into());
                }
                tags
            }
        };
        let filter = AuditFilter { tenant_id: tenant.map(|t| t.to_string()), request_id, subject_tags };
        let after = convert::parse_seq_token(&page_token).map_err(ApiError::from)?;
        let size = match page_size {
            0 => 50,
            n => n.min(500) as usize,
        };
        let (events, next) =
            self.ctx.ledger.list_audit_events(&filter, after, size).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(Into::into).collect(),
            next_page_token: next.map(convert::seq_token).unwrap_or_default(),
        }))
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        Caller::of(&req)?.require(Scope::Admin)?;
        let pb::VerifyAuditLogRequest {} = req.into_inner();
        let v = self.ctx.ledger.verify_audit_chain().await.map_err(ApiError::from)?;
        match &v.reason {
            Some(reason) => {
                tracing::warn!(first_bad_event = v.first_bad_event, events_checked = v.events_checked, %reason, "audit chain broken")
            }
            None => tracing::info!(events_checked = v.events_checked, "audit chain verified"),
        }
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: v.ok,
            events_checked: v.events_checked,
            first_bad_event: v.first_bad_event,
            reason: v.reason.unwrap_or_default(),
        }))
    }
}
