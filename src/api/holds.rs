//! `dsr.v1.Holds` (issue 9): place, release and list legal holds, behind `dsr.admin`. A
//! subject arrives with its identifiers, is resolved through the account row and is stored only
//! as keyed hashes; reasons are stored with the hold and never logged.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::info;

use super::{
    auth::{Caller, Scope},
    convert,
    error::ApiError,
    pb,
    rights::ServiceContext,
};
use crate::{
    domain::{parse_text, FieldError, RequestId, TenantId},
    ledger::{HoldKind, HoldRecord, LedgerError, NewLitigationHold},
};

#[derive(Clone)]
pub struct HoldsService {
    ctx: Arc<ServiceContext>,
}

impl HoldsService {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }
}

/// A required free-text reason.
pub(super) fn parse_reason(field: &'static str, value: &str) -> Result<String, FieldError> {
    let text = parse_text(field, value)?;
    if text.trim().is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Ok(text)
}

/// A hold id: a litigation hold's UUID, or a legal obligation's `<request id>:<store>`.
pub(super) fn parse_hold_id(field: &'static str, value: &str) -> Result<String, FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    let (request, store) = value.split_once(':').unwrap_or((value, ""));
    let store_ok = store.len() <= 32 && store.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    if RequestId::parse(field, request).is_err() || !store_ok {
        return Err(FieldError::new(field, "is not a hold id"));
    }
    Ok(value.to_owned())
}

/// Hold page tokens: hex of `hold.<last id of the page>`.
fn hold_page_token(id: &str) -> String {
    hex::encode(format!("hold.{id}"))
}

pub(super) fn parse_page_token(token: &str) -> Result<Option<String>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let text = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(Some(text.strip_prefix("hold.").ok_or_else(bad)?.to_owned()))
}

fn hold_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::NotFound => ApiError::NotFound("no hold with that id".into()),
        other => other.into(),
    }
}

impl From<&HoldRecord> for pb::Hold {
    fn from(h: &HoldRecord) -> Self {
        Self {
            id: h.id.clone(),
            tenant_id: h.tenant_id.clone(),
            kind: match h.kind {
                HoldKind::Litigation => pb::HoldKind::Litigation,
                HoldKind::LegalObligation => pb::HoldKind::LegalObligation,
            } as i32,
            basis: h.basis.clone(),
            reason: h.reason.clone().unwrap_or_default(),
            request_id: h.request_id.clone().unwrap_or_default(),
            store: h.store.clone().unwrap_or_default(),
            records: h.records,
            placed_by: h.placed_by.clone(),
            placed_at: Some(convert::timestamp(h.placed_at)),
            until: h.until.map(convert::timestamp),
            active: h.is_active(),
            ended_at: h.ended_at.map(convert::timestamp),
            ended_by: h.ended_by.clone().unwrap_or_default(),
            release_reason: match h.kind {
                HoldKind::Litigation => h.end_reason.clone().unwrap_or_default(),
                HoldKind::LegalObligation => String::new(),
            },
        }
    }
}

#[tonic::async_trait]
impl pb::holds_server::Holds for HoldsService {
    async fn place_hold(&self, req: Request<pb::PlaceHoldRequest>) -> Result<Response<pb::Hold>, Status> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Admin)?;
        let pb::PlaceHoldRequest { subject, reason } = req.into_inner();
        let subject = convert::subject("subject", subject).map_err(ApiError::from)?;
        let reason = parse_reason("reason", &reason).map_err(ApiError::from)?;
        caller.require_tenant(subject.tenant.as_str())?;
        let ctx = &self.ctx;
        // The person's account adds the identifiers it holds: a deletion naming the person by any
        // one of them is held. A subject that names several people is refused, as a submit is.
        let region = ctx.config.subjects.region_for(subject.tenant.as_str());
        let resolution =
            crate::resolve::resolve(&ctx.stores, &subject, region).await.map_err(ApiError::from)?;
        let new = NewLitigationHold {
            id: RequestId::new().to_string(),
            tenant_id: subject.tenant.to_string(),
            reason,
            subject_tags: ctx.hasher.person_tags(&resolution.person),
            placed_by: caller.name.clone(),
        };
        let hold = ctx.ledger.place_hold(&new, ctx.clock.now()).await.map_err(hold_error)?;
        let subject_tag = ctx.hasher.tag(&subject.canonical_identifiers());
        info!(hold_id = %hold.id, tenant = %hold.tenant_id, subject = %&subject_tag[..16], identifiers = new.subject_tags.len(), "litigation hold placed");
        Ok(Response::new((&hold).into()))
    }

    async fn release_hold(&self, req: Request<pb::ReleaseHoldRequest>) -> Result<Response<pb::Hold>, Status> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Admin)?;
        let pb::ReleaseHoldRequest { id, reason } = req.into_inner();
        let id = parse_hold_id("id", &id).map_err(ApiError::from)?;
        let reason = parse_reason("reason", &reason).map_err(ApiError::from)?;
        let ctx = &self.ctx;
        let existing = ctx.ledger.hold(&id).await.map_err(hold_error)?;
        caller.require_tenant(&existing.tenant_id)?;
        let released = ctx
            .ledger
            .release_hold(&id, &caller.name, &reason, ctx.config.engine.max_attempts, ctx.clock.now())
            .await
            .map_err(hold_error)?;
        info!(hold_id = %id, tenant = %released.hold.tenant_id, requests = released.requests.len(), "litigation hold released");
        for r in &released.requests {
            ctx.signals.request_changed(r);
        }
        ctx.signals.work_available();
        Ok(Response::new((&released.hold).into()))
    }

    async fn list_holds(
        &self,
        req: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Admin)?;
        let pb::ListHoldsRequest { tenant_id, active_only, page_size, page_token } = req.into_inner();
        let tenant = (!tenant_id.is_empty())
            .then(|| TenantId::parse("tenant_id", &tenant_id).map(|t| t.to_string()))
            .transpose()
            .map_err(ApiError::from)?;
        // A tenant-bound admin sees its own tenant's holds only.
        let tenant = match (tenant, caller.tenant()) {
            (Some(t), _) => {
                caller.require_tenant(&t)?;
                Some(t)
            }
            (None, own) => own.map(str::to_owned),
        };
        let after = parse_page_token(&page_token).map_err(ApiError::from)?;
        let size = match page_size {
            0 => 50,
            n => n.min(500) as usize,
        };
        let (holds, next) = self
            .ctx
            .ledger
            .list_holds(tenant.as_deref(), active_only, after.as_deref(), size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: holds.iter().map(Into::into).collect(),
            next_page_token: next.as_deref().map(hold_page_token).unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_ids_are_a_uuid_or_a_request_and_store() {
        let id = RequestId::new().to_string();
        assert!(parse_hold_id("id", &id).is_ok());
        assert!(parse_hold_id("id", &format!("{id}:billing")).is_ok());
        for bad in ["", "x", "nope:billing", &format!("{id}:Bill ing"), &format!("{id}:{}", "a".repeat(40))] {
            assert_eq!(parse_hold_id("id", bad).unwrap_err().field, "id", "{bad}");
        }
        assert_eq!(parse_page_token(&hold_page_token(&id)).unwrap(), Some(id));
        assert!(parse_page_token("zz").is_err());
        assert_eq!(parse_reason("reason", "  ").unwrap_err().field, "reason");
    }
}
