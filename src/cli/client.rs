//! The client commands: a gRPC client for people, with readable output.
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Status,
};

use crate::api::pb::{self, audit_client::AuditClient, data_subject_rights_client::DataSubjectRightsClient};

#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The dsr server: `https://host:port`, `http://host:port`, or `host:port` (plain HTTP/2,
    /// or TLS when any TLS option below is given).
    #[arg(long, env = "DSR_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Bearer token (sent as `authorization: Bearer …`).
    #[arg(long, env = "DSR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (default: the system's roots).
    #[arg(long, env = "DSR_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM file of this client's certificate, for servers that verify clients (mTLS); needs --key.
    #[arg(long, env = "DSR_CLIENT_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of --cert.
    #[arg(long, env = "DSR_CLIENT_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host in --server (e.g.
    /// reaching a server by IP address or through a tunnel).
    #[arg(long, env = "DSR_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl Connection {
    /// Any TLS option given: a server named without a scheme is reached over TLS.
    fn wants_tls(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.tls_server_name.is_some()
    }

    /// The server's URL: `host:port` alone means `http://` (or `https://` with TLS options).
    pub(super) fn url(&self) -> String {
        let s = self.server.trim();
        if s.contains("://") {
            s.to_owned()
        } else if self.wants_tls() {
            format!("https://{s}")
        } else {
            format!("http://{s}")
        }
    }
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

/// The largest HTTP/2 frame the client accepts: a whole `ExportChunk` fits one frame, where
/// HTTP/2's default 16 KiB cut each into five.
pub const DOWNLOAD_FRAME: u32 = 256 * 1024;

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

pub(super) async fn channel(conn: &Connection) -> anyhow::Result<(Channel, Auth)> {
    crate::startup::install_crypto_provider();
    let url = conn.url();
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("--server {url:?} is not a URL ({e}); e.g. https://dsr.example:443"))?
        // Export downloads: HTTP/2's default 64 KiB window would cap a stream at one window per
        // round trip.
        .initial_stream_window_size(DOWNLOAD_WINDOW)
        .initial_connection_window_size(DOWNLOAD_WINDOW)
        .max_frame_size(DOWNLOAD_FRAME);
    if url.starts_with("https://") {
        endpoint = endpoint.tls_config(tls_config(conn)?).context("--server: configuring TLS")?;
    } else if conn.wants_tls() {
        anyhow::bail!("--server {url:?} is plain http://, but TLS options were given: use https://");
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the dsr server at {url}: {}", causes(&e)))?;
    let auth = match &conn.token {
        Some(t) => {
            Some(format!("Bearer {t}").parse().context("--token has characters not allowed in a header")?)
        }
        None => None,
    };
    Ok((channel, Auth(auth)))
}

/// An error's causes in one line, each said once: the transport's own Display is terse
/// ("transport error") and its sources often repeat each other.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut said: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if text != "transport error" && !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
        next = err.source();
    }
    said.join(": ")
}

/// TLS to the server: its CA (else the system's roots), and this client's certificate for mTLS.
fn tls_config(conn: &Connection) -> anyhow::Result<ClientTlsConfig> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &conn.ca_cert {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&conn.cert, &conn.key) {
        tls = tls.identity(Identity::from_pem(read("--cert", cert)?, read("--key", key)?));
    }
    if let Some(name) = &conn.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
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
    match e.code() {
        Code::Unauthenticated => anyhow::anyhow!(
            "Unauthenticated: {}\n  pass a bearer token with --token or the DSR_TOKEN environment variable \
             (or a client certificate with --cert and --key)",
            e.message()
        ),
        Code::PermissionDenied => anyhow::anyhow!(
            "PermissionDenied: {}\n  the token (or certificate) lacks the scope or tenant this needs",
            e.message()
        ),
        code => anyhow::anyhow!("{code:?}: {}", e.message()),
    }
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

/// Which requests `dsr list` shows.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    /// export, deletion or rectification.
    #[arg(long)]
    pub kind: Option<String>,
    /// pending, in_progress, completed, failed or cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only requests past their due date that have not ended.
    #[arg(long)]
    pub overdue: bool,
    /// Only requests that have not ended and are due within this many days.
    #[arg(long, value_name = "DAYS")]
    pub due_within: Option<u32>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Paging of the list commands: one page of --limit, from --page-token; --all follows every page.
#[derive(Debug, Clone, clap::Args)]
pub struct PageArgs {
    /// Entries per page (the server allows at most 500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue from the token a previous page printed.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow every page to the end.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
}

impl PageArgs {
    /// Prints where the next page starts, unless every page was asked for.
    pub(super) fn footer(&self, next: &str) {
        if !next.is_empty() {
            println!("(more: --page-token {next}, or --all)");
        }
    }
}

pub(super) fn kind_arg(s: &str) -> anyhow::Result<i32> {
    let name = format!("REQUEST_KIND_{}", s.trim().to_ascii_uppercase());
    pb::RequestKind::from_str_name(&name)
        .filter(|k| *k != pb::RequestKind::Unspecified)
        .map(|k| k as i32)
        .ok_or_else(|| anyhow::anyhow!("--kind: unknown kind {s:?} (export, deletion or rectification)"))
}

pub(super) fn status_arg(s: &str) -> anyhow::Result<i32> {
    let name = format!("REQUEST_STATUS_{}", s.trim().to_ascii_uppercase().replace('-', "_"));
    pb::RequestStatus::from_str_name(&name)
        .filter(|k| *k != pb::RequestStatus::Unspecified)
        .map(|k| k as i32)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--status: unknown status {s:?} (pending, in_progress, completed, failed or cancelled)"
            )
        })
}

pub async fn list(conn: &Connection, args: &ListArgs) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let mut req = pb::ListRequestsRequest {
        tenant_id: args.tenant.clone().unwrap_or_default(),
        kind: args.kind.as_deref().map(kind_arg).transpose()?.unwrap_or_default(),
        status: args.status.as_deref().map(status_arg).transpose()?.unwrap_or_default(),
        overdue: args.overdue,
        due_within_days: args.due_within.unwrap_or(0),
        page_size: args.page.limit,
        page_token: args.page.page_token.clone(),
    };
    println!("{:<36}  {:<14} {:<12} {:<12} DUE", "ID", "KIND", "STATUS", "TENANT");
    loop {
        let r = client.list_requests(req.clone()).await.map_err(status_error)?.into_inner();
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
        if args.page.all && !r.next_page_token.is_empty() {
            req.page_token = r.next_page_token;
            continue;
        }
        args.page.footer(&r.next_page_token);
        return Ok(());
    }
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
    page: &PageArgs,
) -> anyhow::Result<()> {
    let mut client = connect_audit(conn).await?;
    let mut req = pb::ListAuditEventsRequest {
        tenant_id: tenant.unwrap_or_default(),
        request_id: request.unwrap_or_default(),
        subject: subject.unwrap_or_default(),
        page_size: page.limit,
        page_token: page.page_token.clone(),
    };
    println!(
        "{:>8}  {:<20}  {:<36}  {:<12} {:<12} {:<16} {:>6} {:>8}  HASH",
        "SEQ", "AT", "REQUEST", "TENANT", "STORE", "ACTION", "FOUND", "AFFECTED"
    );
    loop {
        let r = client.list_audit_events(req.clone()).await.map_err(status_error)?.into_inner();
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
        if page.all && !r.next_page_token.is_empty() {
            req.page_token = r.next_page_token;
            continue;
        }
        page.footer(&r.next_page_token);
        return Ok(());
    }
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

pub(super) fn time(t: Option<&prost_types::Timestamp>) -> String {
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
    if !r.recipients.is_empty() {
        out.push_str(&format!(
            "  {:<12} {:<10} {:>8}  {:<36} NOTE\n",
            "RECIPIENT", "STATE", "ATTEMPTS", "EVENT"
        ));
        for d in &r.recipients {
            let note = match (&d.last_error, d.next_attempt_at.as_ref()) {
                (e, Some(next)) if !e.is_empty() => format!("next attempt {}: {e}", time(Some(next))),
                (e, _) => e.clone(),
            };
            out.push_str(&format!(
                "  {:<12} {:<10} {:>8}  {:<36} {}\n",
                d.recipient,
                outcome_name(d.state),
                d.attempts,
                d.event_id,
                note
            ));
        }
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

/// A time as RFC 3339 in UTC (`2026-11-30T23:35:35Z`), for machines.
pub(super) fn rfc3339(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// The request as JSON with the proto's field and enum names (`REQUEST_STATUS_COMPLETED`) and
/// RFC 3339 times, as the proto3 JSON mapping writes them; unset times are null.
pub fn as_json(r: &pb::DsrRequest) -> serde_json::Value {
    let name = |n: Option<&'static str>| n.unwrap_or("UNKNOWN");
    serde_json::json!({
        "id": r.id,
        "tenant_id": r.tenant_id,
        "kind": name(pb::RequestKind::try_from(r.kind).ok().map(|k| k.as_str_name())),
        "status": name(pb::RequestStatus::try_from(r.status).ok().map(|k| k.as_str_name())),
        "regime": name(pb::Regime::try_from(r.regime).ok().map(|k| k.as_str_name())),
        "requested_by": r.requested_by,
        "created_at": rfc3339(r.created_at.as_ref()),
        "due_at": rfc3339(r.due_at.as_ref()),
        "completed_at": rfc3339(r.completed_at.as_ref()),
        "deadline_extended": r.deadline_extended,
        "outcomes": r.outcomes.iter().map(|o| serde_json::json!({
            "store": o.store,
            "state": name(pb::OutcomeState::try_from(o.state).ok().map(|k| k.as_str_name())),
            "records_found": o.records_found,
            "records_affected": o.records_affected,
            "records_unattributed": o.records_unattributed,
            "attempts": o.attempts,
            "verified": o.verified,
            "retention_basis": o.retention_basis,
            "retained_until": rfc3339(o.retained_until.as_ref()),
            "last_error": o.last_error,
            "started_at": rfc3339(o.started_at.as_ref()),
            "finished_at": rfc3339(o.finished_at.as_ref()),
        })).collect::<Vec<_>>(),
        "recipients": r.recipients.iter().map(|d| serde_json::json!({
            "recipient": d.recipient,
            "state": name(pb::OutcomeState::try_from(d.state).ok().map(|k| k.as_str_name())),
            "event_id": d.event_id,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "next_attempt_at": rfc3339(d.next_attempt_at.as_ref()),
            "finished_at": rfc3339(d.finished_at.as_ref()),
        })).collect::<Vec<_>>(),
        "export": r.export.as_ref().map(|x| serde_json::json!({
            "format": x.format,
            "size_bytes": x.size_bytes,
            "sha256": x.sha256,
            "expires_at": rfc3339(x.expires_at.as_ref()),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(server: &str, tls: bool) -> Connection {
        Connection {
            server: server.into(),
            token: None,
            ca_cert: tls.then(|| "ca.pem".into()),
            cert: None,
            key: None,
            tls_server_name: None,
        }
    }

    #[test]
    fn a_server_without_a_scheme_is_plain_http_unless_tls_is_asked_for() {
        assert_eq!(conn("127.0.0.1:50051", false).url(), "http://127.0.0.1:50051");
        assert_eq!(conn("dsr.example:443", true).url(), "https://dsr.example:443");
        assert_eq!(conn("https://dsr.example", false).url(), "https://dsr.example");
        assert_eq!(conn(" http://h:1 ", true).url(), "http://h:1");
    }

    #[test]
    fn json_times_are_rfc3339_and_enums_are_the_protos_names() {
        let at = prost_types::Timestamp { seconds: 1_796_081_735, nanos: 0 };
        let r = pb::DsrRequest {
            id: "x".into(),
            kind: pb::RequestKind::Deletion as i32,
            status: pb::RequestStatus::Completed as i32,
            created_at: Some(at),
            outcomes: vec![pb::StoreOutcome {
                state: pb::OutcomeState::Retained as i32,
                retained_until: Some(at),
                ..Default::default()
            }],
            ..Default::default()
        };
        let j = as_json(&r);
        assert_eq!(j["created_at"], "2026-11-30T23:35:35Z");
        assert_eq!(j["completed_at"], serde_json::Value::Null);
        assert_eq!(j["kind"], "REQUEST_KIND_DELETION");
        assert_eq!(j["status"], "REQUEST_STATUS_COMPLETED");
        assert_eq!(j["regime"], "REGIME_UNSPECIFIED");
        assert_eq!(j["outcomes"][0]["state"], "OUTCOME_STATE_RETAINED");
        assert_eq!(j["outcomes"][0]["retained_until"], "2026-11-30T23:35:35Z");
        assert!(chrono::DateTime::parse_from_rfc3339(j["created_at"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn filters_read_lowercase_names() {
        assert_eq!(kind_arg("deletion").unwrap(), pb::RequestKind::Deletion as i32);
        assert_eq!(status_arg("in_progress").unwrap(), pb::RequestStatus::InProgress as i32);
        assert_eq!(status_arg("IN-PROGRESS").unwrap(), pb::RequestStatus::InProgress as i32);
        assert!(status_arg("unspecified").is_err());
        assert!(kind_arg("erase").unwrap_err().to_string().contains("--kind"));
    }
}
