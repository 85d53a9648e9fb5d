//! The client commands: a gRPC client for people, with readable output.
use anyhow::Context;
use chrono::{DateTime, Utc};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel, Request, Status,
};

use crate::api::pb::{self, audit_client::AuditClient, data_subject_rights_client::DataSubjectRightsClient};

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The dsr server.
    #[arg(long, env = "DSR_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Bearer token (sent as `authorization: Bearer …`).
    #[arg(long, env = "DSR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SubjectArgs {
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub account_id: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// E.164, e.g. +14155550100.
    #[arg(long)]
    pub phone: Option<String>,
}

/// The new values of a rectification; at least one is required (the server says which field is
/// wrong).
#[derive(Debug, Clone, clap::Args)]
pub struct CorrectionArgs {
    /// The corrected name.
    #[arg(long)]
    pub set_name: Option<String>,
    /// The corrected email address.
    #[arg(long)]
    pub set_email: Option<String>,
    /// The corrected phone, E.164.
    #[arg(long)]
    pub set_phone: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// gdpr, ccpa or unspecified (deadline 30 days; CCPA 45).
    #[arg(long, default_value = "unspecified")]
    pub regime: String,
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
    #[arg(long, default_value = "dsr-cli")]
    pub requested_by: String,
    /// Follow the request until it ends.
    #[arg(long)]
    pub watch: bool,
}

/// HTTP/2 flow-control window of the client's connections.
pub const DOWNLOAD_WINDOW: u32 = 8 * 1024 * 1024;

pub(super) type Client = DataSubjectRightsClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(super) async fn connect(conn: &Connection) -> anyhow::Result<Client> {
    let (channel, auth) = channel(conn).await?;
    Ok(DataSubjectRightsClient::with_interceptor(channel, auth))
}

async fn connect_audit(conn: &Connection) -> anyhow::Result<AuditClient<InterceptedService<Channel, Auth>>> {
    let (channel, auth) = channel(conn).await?;
    Ok(AuditClient::with_interceptor(channel, auth))
}

async fn channel(conn: &Connection) -> anyhow::Result<(Channel, Auth)> {
    crate::startup::install_crypto_provider();
    let channel = Channel::from_shared(conn.server.clone())
        .context("--server is not a URL")?
        // Export downloads: HTTP/2's default 64 KiB window would cap a stream at one window per
        // round trip.
        .initial_stream_window_size(DOWNLOAD_WINDOW)
        .initial_connection_window_size(DOWNLOAD_WINDOW)
        .connect()
        .await
        .with_context(|| format!("cannot reach the dsr server at {}", conn.server))?;
    let auth = match &conn.token {
        Some(t) => {
            Some(format!("Bearer {t}").parse().context("--token has characters not allowed in a header")?)
        }
        None => None,
    };
    Ok((channel, Auth(auth)))
}

pub(super) fn subject(s: &SubjectArgs) -> pb::Subject {
    pb::Subject {
        tenant_id: s.tenant.clone(),
        account_id: s.account_id.clone().unwrap_or_default(),
        email: s.email.clone().unwrap_or_default(),
        phone: s.phone.clone().unwrap_or_default(),
    }
}

pub(super) fn regime(s: &str) -> anyhow::Result<i32> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "gdpr" => pb::Regime::Gdpr,
        "ccpa" => pb::Regime::Ccpa,
        "unspecified" | "" => pb::Regime::Unspecified,
        other => anyhow::bail!("--regime: unknown regime {other:?} (gdpr, ccpa or unspecified)"),
    } as i32)
}

pub(super) fn status_error(e: Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

pub async fn delete(conn: &Connection, s: &SubjectArgs, submit: &SubmitArgs) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let req = pb::SubmitDeletionRequest {
        subject: Some(subject(s)),
        regime: regime(&submit.regime)?,
        idempotency_key: submit.idempotency_key.clone(),
        requested_by: submit.requested_by.clone(),
    };
    let r = client.submit_deletion(req).await.map_err(status_error)?.into_inner();
    print!("{}", render(&r));
    if submit.watch {
        follow(&mut client, &r.id).await?;
    }
    Ok(())
}

pub async fn rectify(
    conn: &Connection,
    s: &SubjectArgs,
    c: &CorrectionArgs,
    submit: &SubmitArgs,
) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let corrections = (c.set_name.is_some() || c.set_email.is_some() || c.set_phone.is_some()).then(|| {
        pb::Corrections { name: c.set_name.clone(), email: c.set_email.clone(), phone: c.set_phone.clone() }
    });
    let req = pb::SubmitRectificationRequest {
        subject: Some(subject(s)),
        regime: regime(&submit.regime)?,
        idempotency_key: submit.idempotency_key.clone(),
        requested_by: submit.requested_by.clone(),
        corrections,
    };
    let r = client.submit_rectification(req).await.map_err(status_error)?.into_inner();
    print!("{}", render(&r));
    if submit.watch {
        follow(&mut client, &r.id).await?;
    }
    Ok(())
}

pub async fn status(conn: &Connection, id: &str, json: bool) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .get_request(pb::GetRequestRequest { id: id.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&as_json(&r))?);
    } else {
        print!("{}", render(&r));
    }
    Ok(())
}

pub async fn watch(conn: &Connection, id: &str) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    follow(&mut client, id).await
}

pub(super) async fn follow(client: &mut Client, id: &str) -> anyhow::Result<()> {
    let mut stream = client
        .watch_request(pb::WatchRequestRequest { id: id.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = None;
    while let Some(r) = stream.message().await.map_err(status_error)? {
        let ended = r.outcomes.iter().filter(|o| is_terminal_outcome(o.state)).count();
        println!(
            "{}  {}  {}/{} stores finished",
            Utc::now().format("%H:%M:%S"),
            status_name(r.status),
            ended,
            r.outcomes.len()
        );
        last = Some(r);
    }
    if let Some(r) = last {
        print!("{}", render(&r));
        if r.status == pb::RequestStatus::Failed as i32 {
            anyhow::bail!("the request FAILED; see last_error per store, then `dsr retry {}`", r.id);
        }
    }
    Ok(())
}

pub async fn preview(conn: &Connection, s: &SubjectArgs) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .preview_subject(pb::PreviewSubjectRequest { subject: Some(subject(s)) })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{:<12} {:>8} {:>12} {:>13}  LEGAL HOLD", "STORE", "RECORDS", "BYTES", "UNATTRIBUTED");
    for h in r.stores {
        println!(
            "{:<12} {:>8} {:>12} {:>13}  {}",
            h.store,
            h.records,
            h.bytes,
            h.records_unattributed,
            if h.under_legal_hold { "yes" } else { "" }
        );
    }
    Ok(())
}

pub async fn list(
    conn: &Connection,
    tenant: Option<String>,
    overdue: bool,
    limit: u32,
) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .list_requests(pb::ListRequestsRequest {
            tenant_id: tenant.unwrap_or_default(),
            page_size: limit,
            overdue,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{:<36}  {:<14} {:<12} {:<12} DUE", "ID", "KIND", "STATUS", "TENANT");
    for q in r.requests {
        println!(
            "{:<36}  {:<14} {:<12} {:<12} {}",
            q.id,
            kind_name(q.kind),
            status_name(q.status),
            q.tenant_id,
            time(q.due_at.as_ref())
        );
    }
    Ok(())
}

pub async fn cancel(conn: &Connection, id: &str) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .cancel_request(pb::CancelRequestRequest { id: id.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", render(&r));
    Ok(())
}

pub async fn retry(conn: &Connection, id: &str) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .retry_request(pb::RetryRequestRequest { id: id.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", render(&r));
    Ok(())
}

pub async fn audit_verify(conn: &Connection) -> anyhow::Result<()> {
    let mut client = connect_audit(conn).await?;
    let v = client.verify_audit_log(pb::VerifyAuditLogRequest {}).await.map_err(status_error)?.into_inner();
    if v.ok {
        println!("audit chain OK: {} events checked", v.events_checked);
        Ok(())
    } else {
        println!(
            "audit chain BROKEN at event {} ({} events checked): {}",
            v.first_bad_event, v.events_checked, v.reason
        );
        anyhow::bail!("the audit chain is broken at event {}", v.first_bad_event)
    }
}

pub async fn audit_list(
    conn: &Connection,
    tenant: Option<String>,
    request: Option<String>,
    subject: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    let mut client = connect_audit(conn).await?;
    let r = client
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: tenant.unwrap_or_default(),
            request_id: request.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            page_size: limit,
            page_token: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{:>8}  {:<20}  {:<36}  {:<12} {:<12} {:<16} {:>6} {:>8}  HASH",
        "SEQ", "AT", "REQUEST", "TENANT", "STORE", "ACTION", "FOUND", "AFFECTED"
    );
    for e in &r.events {
        println!(
            "{:>8}  {:<20}  {:<36}  {:<12} {:<12} {:<16} {:>6} {:>8}  {}",
            e.seq,
            time(e.at.as_ref()),
            e.request_id,
            e.tenant_id,
            e.store,
            e.action,
            e.records_found,
            e.records_affected,
            &e.hash[..e.hash.len().min(16)]
        );
    }
    if !r.next_page_token.is_empty() {
        println!("(more: raise --limit)");
    }
    Ok(())
}

fn is_terminal_outcome(state: i32) -> bool {
    !matches!(pb::OutcomeState::try_from(state), Ok(pb::OutcomeState::Pending | pb::OutcomeState::Running))
}

fn status_name(s: i32) -> &'static str {
    pb::RequestStatus::try_from(s).map_or("?", |s| s.as_str_name().trim_start_matches("REQUEST_STATUS_"))
}

fn kind_name(k: i32) -> &'static str {
    pb::RequestKind::try_from(k).map_or("?", |k| k.as_str_name().trim_start_matches("REQUEST_KIND_"))
}

fn outcome_name(s: i32) -> &'static str {
    pb::OutcomeState::try_from(s).map_or("?", |s| s.as_str_name().trim_start_matches("OUTCOME_STATE_"))
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos as u32))
        .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

/// A request as a few lines of text and a table of outcomes.
pub fn render(r: &pb::DsrRequest) -> String {
    let mut out = format!(
        "request {}  {}  {}\n  tenant {}  created {}  due {}  completed {}\n",
        r.id,
        kind_name(r.kind),
        status_name(r.status),
        r.tenant_id,
        time(r.created_at.as_ref()),
        time(r.due_at.as_ref()),
        time(r.completed_at.as_ref()),
    );
    out.push_str(&format!(
        "  {:<12} {:<10} {:>6} {:>9} {:>13} {:>8}  {:<8} NOTE\n",
        "STORE", "STATE", "FOUND", "AFFECTED", "UNATTRIBUTED", "ATTEMPTS", "VERIFIED"
    ));
    for o in &r.outcomes {
        let note = if !o.retention_basis.is_empty() {
            format!("retained until {}: {}", time(o.retained_until.as_ref()), o.retention_basis)
        } else {
            o.last_error.clone()
        };
        out.push_str(&format!(
            "  {:<12} {:<10} {:>6} {:>9} {:>13} {:>8}  {:<8} {}\n",
            o.store,
            outcome_name(o.state),
            o.records_found,
            o.records_affected,
            o.records_unattributed,
            o.attempts,
            if o.verified { "yes" } else { "no" },
            note
        ));
    }
    if let Some(x) = &r.export {
        out.push_str(&format!(
            "  archive {}  {} bytes  sha256 {}  expires {}\n",
            x.format,
            x.size_bytes,
            x.sha256,
            time(x.expires_at.as_ref())
        ));
    }
    out
}

fn as_json(r: &pb::DsrRequest) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "tenant_id": r.tenant_id,
        "kind": kind_name(r.kind),
        "status": status_name(r.status),
        "created_at": time(r.created_at.as_ref()),
        "due_at": time(r.due_at.as_ref()),
        "completed_at": r.completed_at.as_ref().map(|t| time(Some(t))),
        "outcomes": r.outcomes.iter().map(|o| serde_json::json!({
            "store": o.store,
            "state": outcome_name(o.state),
            "records_found": o.records_found,
            "records_affected": o.records_affected,
            "records_unattributed": o.records_unattributed,
            "attempts": o.attempts,
            "verified": o.verified,
            "retention_basis": o.retention_basis,
            "retained_until": o.retained_until.as_ref().map(|t| time(Some(t))),
            "last_error": o.last_error,
        })).collect::<Vec<_>>(),
        "export": r.export.as_ref().map(|x| serde_json::json!({
            "format": x.format,
            "size_bytes": x.size_bytes,
            "sha256": x.sha256,
            "expires_at": time(x.expires_at.as_ref()),
        })),
    })
}
