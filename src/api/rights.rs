//! `dsr.v1.DataSubjectRights`: submit, read, list, watch, cancel, retry and preview requests.
use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use super::{
    auth::{Caller, Scope},
    convert, download,
    error::ApiError,
    pb,
    slots::StreamSlots,
    watch,
};
use crate::{
    clock::SharedClock,
    config::FileConfig,
    domain::{
        due_at, parse_requested_by, Corrections, FieldError, IdempotencyKey, Regime, RequestId, RequestKind,
        Subject,
    },
    engine::Signals,
    export::ExportStorage,
    ledger::{
        Ledger, ListFilter, NewDsrRequest, Page, RequestRecord, SubjectRecord, Submitted, ARCHIVE_TASK,
    },
    metrics::Metrics,
    privacy::KeyedHasher,
    resolve,
    stores::{Holdings, StoreRegistry},
    telemetry::{grpc::record_request, propagation::current_traceparent},
};

type ApiResult<T> = Result<Response<T>, Status>;

/// What every RPC handler shares.
pub struct ServiceContext {
    pub ledger: Ledger,
    pub stores: StoreRegistry,
    pub exports: Arc<ExportStorage>,
    pub clock: SharedClock,
    pub hasher: KeyedHasher,
    pub signals: Signals,
    pub config: FileConfig,
    /// Open WatchRequest streams, per caller and in all.
    pub watchers: Arc<StreamSlots>,
    /// Open DownloadExport streams, per caller and in all.
    pub downloads: Arc<StreamSlots>,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone)]
pub struct RightsService {
    ctx: Arc<ServiceContext>,
}

/// The parsed, common part of every submit.
pub(super) struct Submission {
    kind: RequestKind,
    subject: Subject,
    regime: Regime,
    idempotency_key: Option<IdempotencyKey>,
    requested_by: String,
    /// A rectification's corrections; `None` for the other kinds.
    corrections: Option<Corrections>,
}

impl RightsService {
    pub fn new(ctx: Arc<ServiceContext>) -> Self {
        Self { ctx }
    }

    /// Validates nothing (that happened in the caller's `parse`); resolves the subject to one
    /// person (refusing ambiguity), checks a rectification's corrections against the tenant's
    /// other accounts, then commits the request, its resolution and its tasks before answering.
    async fn submit(&self, s: Submission, actor: String) -> Result<pb::DsrRequest, ApiError> {
        let ctx = &self.ctx;
        let now = ctx.clock.now();
        // The payload hash covers what the caller sent (not what resolution added), so a retry
        // of the same call always matches. Corrections are appended only when present, so the
        // hashes of other kinds stay what they were.
        let mut payload =
            format!("{}|{}|{}|{}", s.kind, s.regime, s.subject.canonical_identifiers(), s.requested_by);
        if let Some(c) = &s.corrections {
            payload.push_str(&format!("|c:{}", c.canonical()));
        }
        let payload_hash = ctx.hasher.tag(&payload);
        let idempotency_hash =
            s.idempotency_key.map(|k| ctx.hasher.tag(&format!("idem|{}|{}", s.subject.tenant, k.expose())));
        // A resubmission returns the original request before any other check: once a
        // rectification has run, its subject is no longer found under the old identifiers and
        // the new values are "taken" (by the subject itself).
        if let Some(key) = &idempotency_hash {
            if let Some(existing) = ctx.ledger.find_idempotent(key, &payload_hash).await? {
                record_request(&existing, s.subject.tenant.as_str());
                info!(request_id = %existing, "idempotent resubmission");
                return Ok((&ctx.ledger.get(&existing).await?).into());
            }
        }
        let subject_tag = ctx.hasher.tag(&s.subject.canonical_identifiers());
        // One resolution, before any store acts: the one person, or a refusal that writes nothing.
        let region = ctx.config.subjects.region_for(s.subject.tenant.as_str());
        // An export records the person only: its stores find their records as they write their
        // parts, a batch at a time (`resolve::walk`).
        // The look-ups share one connection per store database (`db::held`): no other
        // connection is taken meanwhile, and the ledger is written after.
        let resolution = crate::db::held::holding(async {
            let resolution = match s.kind {
                RequestKind::Export => resolve::Resolution {
                    person: resolve::resolve_person(&ctx.stores, &s.subject, region).await?,
                    stores: Default::default(),
                },
                _ => resolve::resolve(&ctx.stores, &s.subject, region).await?,
            };
            if let (Some(c), Some(identity)) = (&s.corrections, ctx.stores.identity()) {
                let taken = resolve::taken(identity.as_ref(), &resolution.person, c).await.map_err(|e| {
                    ApiError::Unavailable(format!(
                        "could not check the corrections against the accounts store: {e}"
                    ))
                })?;
                if let Some(field) = taken {
                    return Err(ApiError::AlreadyExists(format!(
                        "{field}: another subject of this tenant already has this value; nothing was changed"
                    )));
                }
            }
            Ok::<_, ApiError>(resolution)
        })
        .await?;
        let detail = s.corrections.as_ref().map(|c| format!("fields={}", c.field_names().join(",")));
        let subject_tags = ctx.hasher.person_tags(&resolution.person);
        let record = SubjectRecord {
            subject: s.subject.clone(),
            corrections: s.corrections,
            person: (s.kind == RequestKind::Export).then(|| resolution.person.clone()),
            resolution: (s.kind != RequestKind::Export).then_some(resolution),
        };
        let id = RequestId::new().to_string();
        // The recipients' outbox rows, with only what each may see of the resolved person.
        let deliveries = crate::recipients::plan(&ctx.config.recipients, s.kind, &record);
        let new = NewDsrRequest {
            id: id.clone(),
            tenant_id: s.subject.tenant.to_string(),
            kind: s.kind,
            regime: s.regime,
            requested_by: s.requested_by,
            actor,
            idempotency_hash,
            payload_hash,
            subject_tag,
            subject_tags,
            subject_json: serde_json::to_string(&record).map_err(anyhow::Error::from)?,
            created_at: now,
            due_at: due_at(s.regime, now),
            // This call's server span: every store task's span is its child, in the caller's
            // trace when the call carried a `traceparent`.
            trace_context: current_traceparent(),
            stores: match s.kind {
                // Every store writes its part at once; the archive follows them all.
                RequestKind::Export => ctx
                    .stores
                    .all()
                    .iter()
                    .map(|a| (a.name().to_owned(), 0))
                    .chain([(ARCHIVE_TASK.to_owned(), 1)])
                    .collect(),
                _ => ctx.stores.all().iter().map(|a| (a.name().to_owned(), a.stage())).collect(),
            },
            attempt_limit: ctx.config.engine.max_attempts,
            detail,
            deliveries,
        };
        let submitted = ctx.ledger.submit(&new).await?;
        record_request(submitted.id(), &new.tenant_id);
        match &submitted {
            Submitted::Created(_) => {
                ctx.metrics.request_submitted(new.kind);
                info!(request_id = %id, tenant = %new.tenant_id, kind = %new.kind, subject = %&new.subject_tag[..16], "request submitted");
                ctx.signals.work_available();
            }
            Submitted::Existing(existing) => {
                info!(request_id = %existing, "idempotent resubmission")
            }
        }
        Ok(match submitted {
            // What was just committed, as GetRequest would read it (not read back).
            Submitted::Created(_) => (&new.as_created()).into(),
            Submitted::Existing(id) => (&ctx.ledger.get(&id).await?).into(),
        })
    }

    async fn get(&self, id: &str) -> Result<pb::DsrRequest, ApiError> {
        Ok((&self.ctx.ledger.get(id).await?).into())
    }

    /// `authorize_id` for a read, with the read itself: the request is read whole first (one
    /// connection, where authorising first took a look-up of its own), then the caller is
    /// checked — the same answers in the same order (NOT_FOUND, then the scope, then the
    /// tenant), and nothing of the request leaves before both checks pass.
    async fn read_authorized(&self, caller: &Caller, id: &str) -> Result<RequestRecord, ApiError> {
        let id = request_id(id)?;
        let rec = self.ctx.ledger.get(&id).await?;
        caller.require(Scope::Read)?;
        caller.require_tenant(&rec.tenant_id)?;
        record_request(&id, &rec.tenant_id);
        Ok(rec)
    }

    /// Parses a request id and checks the caller may touch that request: `scope` (or, with
    /// `None`, the scope that acts on the request's kind) and its tenant.
    async fn authorize_id(
        &self,
        caller: &Caller,
        id: &str,
        scope: Option<Scope>,
    ) -> Result<String, ApiError> {
        let id = request_id(id)?;
        let (tenant, kind) = self.ctx.ledger.tenant_and_kind_of(&id).await?;
        caller.require(scope.unwrap_or_else(|| Scope::for_kind(kind)))?;
        caller.require_tenant(&tenant)?;
        record_request(&id, &tenant);
        Ok(id)
    }
}

pub(super) fn parse_submission(
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
        requested_by: parse_requested_by("requested_by", requested_by)?,
        corrections: None,
    })
}

/// A request id as the RPCs take it.
pub(super) fn parse_id(id: &str) -> Result<(), FieldError> {
    RequestId::parse("id", id).map(drop)
}

fn request_id(id: &str) -> Result<String, ApiError> {
    Ok(RequestId::parse("id", id)?.to_string())
}

#[tonic::async_trait]
impl pb::data_subject_rights_server::DataSubjectRights for RightsService {
    async fn submit_export(&self, req: Request<pb::SubmitExportRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Export)?;
        let pb::SubmitExportRequest { subject, regime, idempotency_key, requested_by } = req.into_inner();
        let s = parse_submission(RequestKind::Export, subject, regime, &idempotency_key, &requested_by)
            .map_err(ApiError::from)?;
        caller.require_tenant(s.subject.tenant.as_str())?;
        Ok(Response::new(self.submit(s, caller.name).await?))
    }

    async fn submit_deletion(&self, req: Request<pb::SubmitDeletionRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Delete)?;
        let pb::SubmitDeletionRequest { subject, regime, idempotency_key, requested_by } = req.into_inner();
        let s = parse_submission(RequestKind::Deletion, subject, regime, &idempotency_key, &requested_by)
            .map_err(ApiError::from)?;
        caller.require_tenant(s.subject.tenant.as_str())?;
        Ok(Response::new(self.submit(s, caller.name).await?))
    }

    async fn submit_rectification(
        &self,
        req: Request<pb::SubmitRectificationRequest>,
    ) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Rectify)?;
        let pb::SubmitRectificationRequest { subject, regime, idempotency_key, requested_by, corrections } =
            req.into_inner();
        let mut s =
            parse_submission(RequestKind::Rectification, subject, regime, &idempotency_key, &requested_by)
                .map_err(ApiError::from)?;
        s.corrections = Some(convert::corrections(corrections).map_err(ApiError::from)?);
        caller.require_tenant(s.subject.tenant.as_str())?;
        Ok(Response::new(self.submit(s, caller.name).await?))
    }

    async fn get_request(&self, req: Request<pb::GetRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        let pb::GetRequestRequest { id } = req.into_inner();
        Ok(Response::new((&self.read_authorized(&caller, &id).await?).into()))
    }

    async fn list_requests(
        &self,
        req: Request<pb::ListRequestsRequest>,
    ) -> ApiResult<pb::ListRequestsResponse> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Read)?;
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
        let tenant_id = (!tenant_id.is_empty())
            .then(|| crate::domain::TenantId::parse("tenant_id", &tenant_id).map(|t| t.to_string()))
            .transpose()
            .map_err(ApiError::from)?;
        // A tenant-bound caller lists its own tenant, whether it names it or not.
        let tenant_id = match (tenant_id, caller.tenant()) {
            (Some(t), _) => {
                caller.require_tenant(&t)?;
                Some(t)
            }
            (None, own) => own.map(str::to_owned),
        };
        let filter = ListFilter {
            tenant_id,
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
        let caller = Caller::of(&req)?;
        let pb::WatchRequestRequest { id } = req.into_inner();
        // Subscribed before the first read, so no change after it is missed (`watch::stream`).
        let changes = self.ctx.signals.subscribe();
        let first = self.read_authorized(&caller, &id).await?;
        let permit = self
            .ctx
            .watchers
            .acquire(&caller.name)
            .map_err(|e| ApiError::ResourceExhausted(format!("{e}, or poll GetRequest")))?;
        Ok(Response::new(Box::pin(watch::stream(self.ctx.clone(), changes, first, permit))))
    }

    async fn cancel_request(&self, req: Request<pb::CancelRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        let id = self.authorize_id(&caller, &req.into_inner().id, None).await?;
        let status =
            self.ctx.ledger.cancel(&id, &caller.name, self.ctx.clock.now()).await.map_err(ApiError::from)?;
        info!(request_id = %id, "request cancelled");
        self.ctx.signals.request_changed(&id);
        let record = self.ctx.ledger.get(&id).await.map_err(ApiError::from)?;
        // Ended by the cancel itself unless a store was still running (its worker ends the
        // request, and counts it, when it finishes).
        if status.is_terminal() {
            self.ctx.metrics.request_ended(record.kind, status);
            crate::export::request_ended(&self.ctx.exports, record.kind, &id, status).await;
        }
        Ok(Response::new((&record).into()))
    }

    async fn retry_request(&self, req: Request<pb::RetryRequestRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        let id = self.authorize_id(&caller, &req.into_inner().id, None).await?;
        let budget = self.ctx.config.engine.max_attempts;
        self.ctx
            .ledger
            .retry(&id, &caller.name, budget, self.ctx.clock.now())
            .await
            .map_err(ApiError::from)?;
        info!(request_id = %id, "failed stores queued again");
        self.ctx.signals.request_changed(&id);
        self.ctx.signals.work_available();
        Ok(Response::new(self.get(&id).await?))
    }

    async fn preview_subject(
        &self,
        req: Request<pb::PreviewSubjectRequest>,
    ) -> ApiResult<pb::PreviewSubjectResponse> {
        let caller = Caller::of(&req)?;
        caller.require(Scope::Read)?;
        let pb::PreviewSubjectRequest { subject } = req.into_inner();
        let subject = convert::subject("subject", subject).map_err(ApiError::from)?;
        caller.require_tenant(subject.tenant.as_str())?;
        let region = self.ctx.config.subjects.region_for(subject.tenant.as_str());
        let resolution =
            resolve::resolve(&self.ctx.stores, &subject, region).await.map_err(ApiError::from)?;
        let stores = self
            .ctx
            .stores
            .all()
            .iter()
            .map(|a| {
                let scan = resolution.store(a.name()).cloned().unwrap_or_default();
                let records = scan.held(a.keeps_under_legal_obligation());
                convert::holdings(
                    a.name(),
                    Holdings {
                        records,
                        bytes: scan.bytes,
                        under_legal_hold: a.keeps_under_legal_obligation() && records > 0,
                        unattributed: scan.unattributed.len() as u64,
                    },
                )
            })
            .collect();
        Ok(Response::new(pb::PreviewSubjectResponse { stores }))
    }

    type DownloadExportStream = download::ChunkStream;

    async fn download_export(
        &self,
        req: Request<pb::DownloadExportRequest>,
    ) -> ApiResult<Self::DownloadExportStream> {
        let caller = Caller::of(&req)?;
        let pb::DownloadExportRequest { id, offset } = req.into_inner();
        // The archive is the subject's data itself: only callers who may export may fetch it.
        let id = self.authorize_id(&caller, &id, Some(Scope::Export)).await?;
        let slot = self
            .ctx
            .downloads
            .acquire(&caller.name)
            .map_err(|e| ApiError::ResourceExhausted(e.to_string()))?;
        let request = self.ctx.ledger.get(&id).await.map_err(ApiError::from)?;
        let stream = download::open(&self.ctx, &request, offset, caller.name, slot).await?;
        Ok(Response::new(stream))
    }

    async fn extend_deadline(&self, req: Request<pb::ExtendDeadlineRequest>) -> ApiResult<pb::DsrRequest> {
        let caller = Caller::of(&req)?;
        let pb::ExtendDeadlineRequest { id, reason } = req.into_inner();
        let id = self.authorize_id(&caller, &id, None).await?;
        // The law asks for the reasons to be given to the subject: required, kept with the
        // request, never logged.
        let reason = super::holds::parse_reason("reason", &reason).map_err(ApiError::from)?;
        self.ctx
            .ledger
            .extend_deadline(&id, &caller.name, &reason, self.ctx.clock.now())
            .await
            .map_err(ApiError::from)?;
        info!(request_id = %id, "deadline extended");
        self.ctx.signals.request_changed(&id);
        Ok(Response::new(self.get(&id).await?))
    }
}
