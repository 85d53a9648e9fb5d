//! `dsr.v1.Audit`: listing and verifying the audit trail. Arrives with the audit issue; until
//! then both RPCs answer UNIMPLEMENTED.
use tonic::{Request, Response, Status};

use super::{
    auth::{Caller, Scope},
    error::ApiError,
    pb,
};

#[derive(Debug, Clone, Default)]
pub struct AuditService;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Caller::of(&req)?.require(Scope::Admin)?;
        Err(ApiError::Unimplemented("ListAuditEvents").into())
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        Caller::of(&req)?.require(Scope::Admin)?;
        Err(ApiError::Unimplemented("VerifyAuditLog").into())
    }
}
