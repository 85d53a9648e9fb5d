//! `dsr.v1.DataSubjectRights`: submit, read, list, watch, cancel, retry and preview requests.
use std::{pin::Pin, sync::Arc};

use futures::{future::try_join_all, Stream};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{convert, error::ApiError, pb, watch};
use crate::{
    clock::SharedClock,
    config::FileConfig,
    domain::{due_at, parse_text, FieldError, IdempotencyKey, Regime, RequestId, RequestKind, Subject},
    engine::Signals,
    ledger::{Ledger, ListFilter, NewDsrRequest, Page, Submitted},
    privacy::KeyedHasher,
    stores::StoreRegistry,
};

type ApiResult<T> = Result<Response<T>, Status>;

/// What every RPC handler shares.
pub struct ServiceContext {
    pub ledger: Ledger,
    pub stores: StoreRegistry,
    pub clock: SharedClock,
    pub hasher: KeyedHasher,
    pub signals: Signals,
    pub config: FileConfig,
    pub watchers: Arc<Semaphore>,
}

/// The caller, as authentication established it (development mode: `anonymous`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
}

fn caller_name<T>(req: &Request<T>) -> String {
    req.extensions().get::<Caller>().map_or_else(|| "anonymous".to_owned(), |c| c.name.clone())
}

#[derive(Clone)]
pub struct RightsService {
    ctx: Arc<ServiceContext>,
}

/// The parsed, common part of every submit.
struct Submission {
    kind: RequestKind,
    subject: Subject,
    regime: Regime,
    idempotency_key: Option<IdempotencyKey>,
    requested_by: String,
}

impl RightsService {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }

    /// Validates nothing (that happened in the caller's `parse`); resolves the subject's other
    /// identifiers, then commits the request and its tasks before answering.
    async fn submit(&self, s: Submission, actor: String) -> Result<pb::DsrRequest, ApiError> {
        let ctx = &self.ctx;
        let now = ctx.clock.now();
        // The payload hash covers what the caller sent (not what resolution added), so a retry
        // of the same call always matches.
        let payload =
            format!("{}|{}|{}|{}", s.kind, s.regime, s.subject.canonical_identifiers(), s.requested_by);
        let subject_tag = ctx.hasher.tag(&s.subject.canonical_identifiers());
        let resolved = ctx.stores.resolve(s.subject.clone()).await.map_err(|e| {
            ApiError::Unavailable(format!("could not look the subject up in the accounts store: {e}"))
        })?;
        let id = RequestId::new().to_string();
        let new = NewDsrRequest {
            id: id.clone(),
            tenant_id: s.subject.tenant.to_string(),
            kind: s.kind,
            regime: s.regime,
            requested_by: s.requested_by,
            actor,
            idempotency_hash: s
                .idempotency_key
                .map(|k| ctx.hasher.tag(&format!("idem|{}|{}", s.subject.tenant, k.expose()))),
            payload_hash: ctx.hasher.tag(&payload),
            subject_tag,
            subject_tags: ctx.hasher.subject_tags(&resolved),
            subject_json: serde_json::to_string(&resolved).map_err(anyhow::Error::from)?,
            created_at: now,
            due_at: due_at(s.regime, now),
            trace_context: None,
            stores: ctx.stores.all().iter().map(|a| (a.name().to_owned(), a.stage())).collect(),
            attempt_limit: ctx.config.engine.max_attempts,
            detail: None,
        };
        let submitted = ctx.ledger.submit(&new).await?;
        match &submitted {
            Submitted::Created(_) => {
                info!(request_id = %id, tenant = %new.tenant_id, kind = %new.kind, subject = %&new.subject_tag[..16], "request submitted");
                ctx.signals.work_available();
            }
            Submitted::Existing(existing) => {
                info!(request_id = %existing, "idempotent resubmission")
            }
        }
        Ok((&ctx.ledger.get(submitted.id()).await?).into())
    }

    async fn get(&self, id: &str) -> Result<pb::DsrRequest, ApiError> {
        Ok((&self.ctx.ledger.get(id).await?).into())
    }
}

fn parse_submission(
    kind: RequestKind,
    subject: Option<pb::Subject>,
    regime: i32,
    idempotency_key: &str,
    requested_by: &str,
) -> Result<Submission, FieldError> {
    Ok(Submission {
        kind,
        subject: convert::subject("subject", subject)?,
        regime: convert::regime(regime)?,
        idempotency_key: IdempotencyKey::parse("idempotency_key", idempotency_key)?,
        requested_by: parse_text("requested_by", requested_by)?,
    })
}

fn request_id(id: &str) -> Result<String, ApiError> {
    Ok(RequestId::parse("id", id)?.to_string())
}

#[tonic::async_trait]
impl pb::data_subject_rights_server::DataSubjectRights for RightsService {
    async fn submit_export(&self, _req: Request<pb::SubmitExportRequest>) -> ApiResult<pb::DsrRequest> {
        Err(ApiError::Unimplemented("SubmitExport").into())
    }

    async fn submit_deletion(&self, req: Request<pb::SubmitDeletionRequest>) -> ApiResult<pb::DsrRequest> {
        let actor = caller_name(&req);
        let pb::SubmitDeletionRequest { subject, regime, idempotency_key, requested_by } = req.into_inner();
        let s = parse_submission(RequestKind::Deletion, subject, regime, &idempotency_key, &requested_by)
            .map_err(ApiError::from)?;
        Ok(Response::new(self.submit(s, actor).await?))
    }

    async fn submit_rectification(
        &self,
        _req: Request<pb::SubmitRectificationRequest>,
    ) -> ApiResult<pb::DsrRequest> {
        Err(ApiError::Unimplemented("SubmitRectification").into())
    }

    async fn get_request(&self, req: Request<pb::GetRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let pb::GetRequestRequest { id } = req.into_inner();
        Ok(Response::new(self.get(&request_id(&id)?).await?))
    }

    async fn list_requests(
        &self,
        req: Request<pb::ListRequestsRequest>,
    ) -> ApiResult<pb::ListRequestsResponse> {
        let pb::ListRequestsRequest {
            tenant_id,
            status,
            kind,
            page_size,
            page_token,
            overdue,
            due_within_days,
        } = req.into_inner();
        let now = self.ctx.clock.now();
        let filter = ListFilter {
            tenant_id: (!tenant_id.is_empty())
                .then(|| crate::domain::TenantId::parse("tenant_id", &tenant_id).map(|t| t.to_string()))
                .transpose()
                .map_err(ApiError::from)?,
            status: convert::status_filter(status).map_err(ApiError::from)?,
            kind: convert::kind_filter(kind).map_err(ApiError::from)?,
            overdue_at: overdue.then_some(now),
            due_before: match due_within_days {
                0 => None,
                d if d <= 3650 => Some(now + chrono::Duration::days(d.into())),
                _ => return Err(ApiError::from(FieldError::new("due_within_days", "at most 3650")).into()),
            },
        };
        let page = Page {
            after: convert::parse_page_token(&page_token).map_err(ApiError::from)?,
            size: match page_size {
                0 => 50,
                n => n.min(500) as usize,
            },
        };
        let (records, next) = self.ctx.ledger.list(&filter, &page).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: records.iter().map(Into::into).collect(),
            next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
        }))
    }

    type WatchRequestStream = Pin<Box<dyn Stream<Item = Result<pb::DsrRequest, Status>> + Send + 'static>>;

    async fn watch_request(
        &self,
        req: Request<pb::WatchRequestRequest>,
    ) -> ApiResult<Self::WatchRequestStream> {
        let pb::WatchRequestRequest { id } = req.into_inner();
        let id = request_id(&id)?;
        let permit = self.ctx.watchers.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(
                "too many WatchRequest streams open; retry later or poll GetRequest".into(),
            )
        })?;
        let changes = self.ctx.signals.subscribe();
        let first = self.ctx.ledger.get(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(Box::pin(watch::stream(self.ctx.clone(), changes, first, permit))))
    }

    async fn cancel_request(&self, req: Request<pb::CancelRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let actor = caller_name(&req);
        let id = request_id(&req.into_inner().id)?;
        self.ctx.ledger.cancel(&id, &actor, self.ctx.clock.now()).await.map_err(ApiError::from)?;
        info!(request_id = %id, "request cancelled");
        self.ctx.signals.request_changed(&id);
        Ok(Response::new(self.get(&id).await?))
    }

    async fn retry_request(&self, req: Request<pb::RetryRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let actor = caller_name(&req);
        let id = request_id(&req.into_inner().id)?;
        let budget = self.ctx.config.engine.max_attempts;
        self.ctx.ledger.retry(&id, &actor, budget, self.ctx.clock.now()).await.map_err(ApiError::from)?;
        info!(request_id = %id, "failed stores queued again");
        self.ctx.signals.request_changed(&id);
        self.ctx.signals.work_available();
        Ok(Response::new(self.get(&id).await?))
    }

    async fn preview_subject(
        &self,
        req: Request<pb::PreviewSubjectRequest>,
    ) -> ApiResult<pb::PreviewSubjectResponse> {
        let pb::PreviewSubjectRequest { subject } = req.into_inner();
        let subject = convert::subject("subject", subject).map_err(ApiError::from)?;
        let subject = self
            .ctx
            .stores
            .resolve(subject)
            .await
            .map_err(|e| ApiError::Unavailable(format!("accounts: {e}")))?;
        let stores = try_join_all(self.ctx.stores.all().iter().map(|a| {
            let subject = &subject;
            async move {
                a.preview(subject)
                    .await
                    .map(|h| convert::holdings(a.name(), h))
                    .map_err(|e| ApiError::Unavailable(format!("{}: {e}", a.name())))
            }
        }))
        .await?;
        Ok(Response::new(pb::PreviewSubjectResponse { stores }))
    }

    type DownloadExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send + 'static>>;

    async fn download_export(
        &self,
        _req: Request<pb::DownloadExportRequest>,
    ) -> ApiResult<Self::DownloadExportStream> {
        Err(ApiError::Unimplemented("DownloadExport").into())
    }

    async fn extend_deadline(&self, _req: Request<pb::ExtendDeadlineRequest>) -> ApiResult<pb::DsrRequest> {
        Err(ApiError::Unimplemented("ExtendDeadline").into())
    }
}
