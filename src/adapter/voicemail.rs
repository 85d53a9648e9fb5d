//! The example remote adapter: a voicemail service with its own SQLite database, implementing
//! `dsr.adapter.v1.StoreAdapter` (the `dsr-voicemail-adapter` binary serves it). Written as an
//! adapter author would: it keeps a fence per task id (a lower attempt than one already seen is
//! refused as stale), its erase and rectify are idempotent, it scopes every query to the call's
//! tenant and says which tenant it answered for, its errors carry fixed texts, and it logs (and
//! returns) the trace id of the `traceparent` each call carried.
//!
//! A voicemail holds the caller's phone (E.164) and email (lower case), a name, the transcript and
//! the audio (exported as a file), and the call it was left on (`call_id`, a key of dsr's
//! `call_logs`).
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use chrono::Utc;
use futures::Stream;
use sqlx::Row;
use tonic::{Request, Response, Status};

use super::{pb, trace_id_of};
use crate::db::Db;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS voicemails (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, call_id TEXT, \
     caller_phone TEXT, caller_email TEXT, caller_name TEXT, transcript TEXT, audio_hex TEXT, \
     received_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS voicemails_phone ON voicemails (tenant_id, caller_phone)",
    "CREATE INDEX IF NOT EXISTS voicemails_email ON voicemails (tenant_id, caller_email)",
    "CREATE TABLE IF NOT EXISTS fences (task_id TEXT PRIMARY KEY, attempt BIGINT NOT NULL)",
];

/// The fixture `dsr adapter check` looks for by default (`--demo-data`).
pub const CHECK_TENANT: &str = "dsr-check";
pub const CHECK_PHONE: &str = "+15550009999";
pub const CHECK_EMAIL: &str = "check@example.com";
pub const CHECK_NEW_PHONE: &str = "+15550009998";

/// One call the adapter answered: what a test (or an operator reading the log) sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCall {
    pub rpc: &'static str,
    pub task_id: String,
    pub attempt: u32,
    pub trace_id: Option<String>,
}

/// A voicemail to store (`VoicemailAdapter::insert`).
#[derive(Debug, Clone, Default)]
pub struct Voicemail {
    pub id: String,
    pub tenant_id: String,
    pub call_id: Option<String>,
    pub caller_phone: Option<String>,
    pub caller_email: Option<String>,
    pub caller_name: Option<String>,
    pub transcript: String,
    pub audio: Vec<u8>,
    pub received_at_ms: i64,
}

#[derive(Clone)]
pub struct VoicemailAdapter {
    db: Db,
    seen: Arc<Mutex<Vec<SeenCall>>>,
}

type Resolved = Result<Response<pb::PreviewResponse>, Status>;

fn params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn store_error(e: sqlx::Error) -> Status {
    // The driver's text may quote values: a fixed text only.
    tracing::warn!(error = %e, "voicemail database error");
    Status::unavailable("voicemail database unavailable")
}

impl VoicemailAdapter {
    /// Opens (and creates) the adapter's database: `sqlite://path` (or any URL `Db` takes).
    pub async fn open(database_url: &str) -> anyhow::Result<Self> {
        let db = Db::connect(database_url, 4).await?;
        for sql in SCHEMA {
            sqlx::query(sql).execute(db.pool()).await?;
        }
        Ok(Self { db, seen: Arc::default() })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every call answered so far, oldest first.
    pub fn seen(&self) -> Vec<SeenCall> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub async fn insert(&self, v: &Voicemail) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO voicemails (id, tenant_id, call_id, caller_phone, caller_email, caller_name, transcript, \
             audio_hex, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&v.id)
        .bind(&v.tenant_id)
        .bind(&v.call_id)
        .bind(&v.caller_phone)
        .bind(&v.caller_email)
        .bind(&v.caller_name)
        .bind(&v.transcript)
        .bind(hex::encode(&v.audio))
        .bind(v.received_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The fixture `dsr adapter check` expects by default: two voicemails of the check subject,
    /// and one of another tenant's caller with the same phone (which must never be touched).
    pub async fn insert_check_fixture(&self) -> anyhow::Result<()> {
        let now = Utc::now().timestamp_millis();
        for (id, tenant) in [
            ("check-vm-1", CHECK_TENANT),
            ("check-vm-2", CHECK_TENANT),
            ("check-vm-other", "dsr-check-other"),
        ] {
            self.insert(&Voicemail {
                id: id.into(),
                tenant_id: tenant.into(),
                call_id: Some(format!("{id}-call")),
                caller_phone: Some(CHECK_PHONE.into()),
                caller_email: Some(CHECK_EMAIL.into()),
                caller_name: Some("Check Caller".into()),
                transcript: "Please call me back about my order.".into(),
                audio: b"RIFF....WAVEfmt voicemail audio".repeat(8),
                received_at_ms: now,
            })
            .await?;
        }
        Ok(())
    }

    /// Records the call, and checks what every call must carry. Returns the call's context and
    /// the trace id it carried.
    fn begin<T>(
        &self,
        rpc: &'static str,
        req: &Request<T>,
        context: Option<&pb::CallContext>,
        mutates: bool,
    ) -> Result<(pb::CallContext, String), Status> {
        let trace_id = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .map(str::to_owned);
        let c = context.cloned().ok_or_else(|| Status::invalid_argument("context is required"))?;
        if c.tenant_id.is_empty() {
            return Err(Status::invalid_argument("context.tenant_id is required"));
        }
        if mutates && (c.task_id.is_empty() || c.attempt == 0) {
            return Err(Status::invalid_argument("context.task_id and context.attempt are required"));
        }
        tracing::info!(rpc, request_id = %c.request_id, task_id = %c.task_id, attempt = c.attempt, trace_id = trace_id.as_deref().unwrap_or(""), "voicemail adapter call");
        self.seen.lock().expect("seen lock").push(SeenCall {
            rpc,
            task_id: c.task_id.clone(),
            attempt: c.attempt,
            trace_id: trace_id.clone(),
        });
        Ok((c, trace_id.unwrap_or_default()))
    }

    /// The fence: an attempt lower than one seen for the task is stale; otherwise the task's
    /// attempt becomes this one.
    async fn fence(&self, c: &pb::CallContext) -> Result<Option<pb::AdapterError>, Status> {
        let seen: Option<i64> = sqlx::query_scalar("SELECT attempt FROM fences WHERE task_id = $1")
            .bind(&c.task_id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(store_error)?;
        if seen.is_some_and(|s| s > i64::from(c.attempt)) {
            return Ok(Some(pb::AdapterError {
                kind: pb::ErrorKind::StaleAttempt as i32,
                message: "a later attempt of this task has been seen".into(),
            }));
        }
        let sql = if seen.is_some() {
            "UPDATE fences SET attempt = $2 WHERE task_id = $1"
        } else {
            "INSERT INTO fences (task_id, attempt) VALUES ($1, $2)"
        };
        sqlx::query(sql)
            .bind(&c.task_id)
            .bind(i64::from(c.attempt))
            .execute(self.db.pool())
            .await
            .map_err(store_error)?;
        Ok(None)
    }

    /// The tenant's voicemails with any of these keys, phones, emails or call ids.
    async fn find(
        &self,
        tenant: &str,
        r: &pb::Resolution,
        keys: &[String],
    ) -> Result<Vec<sqlx::any::AnyRow>, Status> {
        let mut conds = Vec::new();
        let mut binds: Vec<String> = vec![tenant.to_owned()];
        let all_keys: Vec<String> = keys.iter().chain(&r.keys).cloned().collect();
        for (column, values) in [
            ("id", all_keys),
            ("caller_phone", r.phones.clone()),
            ("caller_email", r.emails.iter().map(|e| e.trim().to_lowercase()).collect()),
            ("call_id", r.linked_keys.clone()),
        ] {
            if values.is_empty() {
                continue;
            }
            conds.push(format!("{column} IN ({})", params(binds.len() + 1, values.len())));
            binds.extend(values);
        }
        if conds.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, call_id, caller_phone, caller_email, caller_name, transcript, audio_hex, received_at \
             FROM voicemails WHERE tenant_id = $1 AND ({}) ORDER BY id",
            conds.join(" OR ")
        );
        let q = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(b.as_str()));
        q.fetch_all(self.db.pool()).await.map_err(store_error)
    }

    async fn with_keys(&self, tenant: &str, keys: &[String]) -> Result<Vec<sqlx::any::AnyRow>, Status> {
        self.find(tenant, &pb::Resolution::default(), keys).await
    }

    async fn delete(&self, tenant: &str, keys: &[String]) -> Result<u64, Status> {
        if keys.is_empty() {
            return Ok(0);
        }
        let sql =
            format!("DELETE FROM voicemails WHERE tenant_id = $1 AND id IN ({})", params(2, keys.len()));
        let q = keys.iter().fold(sqlx::query(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
        Ok(q.execute(self.db.pool()).await.map_err(store_error)?.rows_affected())
    }
}

fn text(row: &sqlx::any::AnyRow, col: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(col).ok().flatten()
}

fn record_json(row: &sqlx::any::AnyRow) -> String {
    serde_json::json!({
        "id": text(row, "id"),
        "call_id": text(row, "call_id"),
        "caller_phone": text(row, "caller_phone"),
        "caller_email": text(row, "caller_email"),
        "caller_name": text(row, "caller_name"),
        "transcript": text(row, "transcript"),
        "received_at": row.try_get::<i64, _>("received_at").ok(),
    })
    .to_string()
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportItem, Status>> + Send>>;

#[tonic::async_trait]
impl pb::store_adapter_server::StoreAdapter for VoicemailAdapter {
    async fn describe(
        &self,
        _req: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        use pb::Capability::*;
        Ok(Response::new(pb::DescribeResponse {
            name: "voicemail".into(),
            capabilities: [Erase, Export, Rectify, Retention].into_iter().map(|c| c as i32).collect(),
            record_kinds: vec!["voicemail".into()],
            holds: [pb::IdentifierKind::Phone, pb::IdentifierKind::Email]
                .into_iter()
                .map(|k| k as i32)
                .collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn preview(&self, req: Request<pb::PreviewRequest>) -> Resolved {
        let (c, trace_id) = self.begin("Preview", &req, req.get_ref().context.as_ref(), false)?;
        let r = req.into_inner().resolution.unwrap_or_default();
        let rows = self.find(&c.tenant_id, &r, &[]).await?;
        let candidates = rows
            .iter()
            .map(|row| {
                let ident = |kind: pb::IdentifierKind, col: &str| pb::Identifier {
                    kind: kind as i32,
                    value: text(row, col),
                };
                pb::Candidate {
                    key: text(row, "id").unwrap_or_default(),
                    identifiers: vec![
                        ident(pb::IdentifierKind::Phone, "caller_phone"),
                        ident(pb::IdentifierKind::Email, "caller_email"),
                    ],
                    link: text(row, "call_id"),
                    bytes: text(row, "audio_hex").map_or(0, |a| a.len() as u64 / 2),
                    cleared: false,
                }
            })
            .collect();
        Ok(Response::new(pb::PreviewResponse { tenant_id: c.tenant_id, candidates, error: None, trace_id }))
    }

    async fn erase(&self, req: Request<pb::EraseRequest>) -> Result<Response<pb::EraseResponse>, Status> {
        let (c, trace_id) = self.begin("Erase", &req, req.get_ref().context.as_ref(), true)?;
        let mut out = pb::EraseResponse { tenant_id: c.tenant_id.clone(), trace_id, ..Default::default() };
        if let Some(e) = self.fence(&c).await? {
            out.error = Some(e);
            return Ok(Response::new(out));
        }
        out.affected = self.delete(&c.tenant_id, &req.get_ref().keys).await?;
        Ok(Response::new(out))
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let (c, _) = self.begin("Verify", &req, req.get_ref().context.as_ref(), false)?;
        let keys: Vec<String> = req
            .get_ref()
            .keys
            .iter()
            .chain(req.get_ref().resolution.iter().flat_map(|r| r.keys.iter()))
            .cloned()
            .collect();
        // By key, on its own: which records dsr named as the person's are still here (whose a
        // record found by identifier is, is dsr's decision; it checks again with Preview).
        let remaining = self.with_keys(&c.tenant_id, &keys).await?.len() as u64;
        Ok(Response::new(pb::VerifyResponse { tenant_id: c.tenant_id, remaining, error: None }))
    }

    type ExportStream = ExportStream;

    async fn export(&self, req: Request<pb::ExportRequest>) -> Result<Response<ExportStream>, Status> {
        let (c, _) = self.begin("Export", &req, req.get_ref().context.as_ref(), false)?;
        let req = req.into_inner();
        let tenant = c.tenant_id.clone();
        let item = move |item| Ok(pb::ExportItem { tenant_id: tenant.clone(), item: Some(item) });
        let mut items = Vec::new();
        if let Some(file) = req.file_key {
            let rows = self.with_keys(&c.tenant_id, &[file]).await?;
            let row = rows.first().ok_or_else(|| Status::not_found("no such file"))?;
            let audio = hex::decode(text(row, "audio_hex").unwrap_or_default())
                .map_err(|_| Status::internal("stored audio is damaged"))?;
            for chunk in audio.chunks(16 * 1024) {
                items.push(item(pb::export_item::Item::Chunk(bytes::Bytes::copy_from_slice(chunk))));
            }
        } else {
            for row in self.with_keys(&c.tenant_id, &req.keys).await? {
                items.push(item(pb::export_item::Item::RecordJson(record_json(&row))));
                let audio = text(&row, "audio_hex").unwrap_or_default();
                if !audio.is_empty() {
                    let id = text(&row, "id").unwrap_or_default();
                    items.push(item(pb::export_item::Item::File(pb::FileHeader {
                        name: format!("{id}.wav"),
                        key: id.clone(),
                        bytes: audio.len() as u64 / 2,
                        record_json: serde_json::json!({ "id": id, "call_id": text(&row, "call_id") })
                            .to_string(),
                    })));
                }
            }
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn rectify(
        &self,
        req: Request<pb::RectifyRequest>,
    ) -> Result<Response<pb::RectifyResponse>, Status> {
        let (c, _) = self.begin("Rectify", &req, req.get_ref().context.as_ref(), true)?;
        let mut out = pb::RectifyResponse { tenant_id: c.tenant_id.clone(), ..Default::default() };
        if let Some(e) = self.fence(&c).await? {
            out.error = Some(e);
            return Ok(Response::new(out));
        }
        let req = req.into_inner();
        let r = req.resolution.unwrap_or_default();
        let fix = req.corrections.unwrap_or_default();
        let new_email = fix.email.as_ref().map(|e| e.trim().to_lowercase());
        let old_email = |e: &Option<String>| {
            e.as_ref().is_some_and(|e| r.emails.contains(e) && Some(e) != new_email.as_ref())
        };
        let old_phone = |p: &Option<String>| {
            p.as_ref().is_some_and(|p| r.phones.contains(p) && Some(p) != fix.phone.as_ref())
        };
        let rows = self.with_keys(&c.tenant_id, &req.keys).await?;
        for row in &rows {
            let id = text(row, "id").unwrap_or_default();
            let (phone, email, name) =
                (text(row, "caller_phone"), text(row, "caller_email"), text(row, "caller_name"));
            let fix_phone = fix.phone.is_some() && old_phone(&phone);
            let fix_email = new_email.is_some() && old_email(&email);
            let fix_name = fix.name.is_some() && name != fix.name;
            if !(fix_phone || fix_email || fix_name) {
                continue;
            }
            out.found += 1;
            sqlx::query("UPDATE voicemails SET caller_phone = $3, caller_email = $4, caller_name = $5 WHERE tenant_id = $1 AND id = $2")
                .bind(&c.tenant_id)
                .bind(&id)
                .bind(if fix_phone { fix.phone.clone() } else { phone })
                .bind(if fix_email { new_email.clone() } else { email })
                .bind(if fix_name { fix.name.clone() } else { name })
                .execute(self.db.pool())
                .await
                .map_err(store_error)?;
            out.affected += 1;
        }
        // Read back.
        let after = self.with_keys(&c.tenant_id, &req.keys).await?;
        out.verified = after.iter().all(|row| {
            let phone_left = fix.phone.is_some() && old_phone(&text(row, "caller_phone"));
            let email_left = new_email.is_some() && old_email(&text(row, "caller_email"));
            !phone_left && !email_left
        });
        Ok(Response::new(out))
    }

    async fn list_expired(
        &self,
        req: Request<pb::ListExpiredRequest>,
    ) -> Result<Response<pb::ListExpiredResponse>, Status> {
        let (c, _) = self.begin("ListExpired", &req, req.get_ref().context.as_ref(), false)?;
        let req = req.into_inner();
        let cutoff = req.cutoff.map_or(0, |t| t.seconds * 1000);
        let limit = i64::from(req.limit.clamp(1, 10_000));
        let rows = sqlx::query(
            "SELECT id, caller_phone, caller_email FROM voicemails WHERE tenant_id = $1 AND received_at < $2 \
             AND id > $3 ORDER BY id LIMIT $4",
        )
        .bind(&c.tenant_id)
        .bind(cutoff)
        .bind(req.after.unwrap_or_default())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        let records = rows
            .iter()
            .map(|row| pb::ExpiredRecord {
                key: text(row, "id").unwrap_or_default(),
                account_id: None,
                email: text(row, "caller_email"),
                phone: text(row, "caller_phone"),
            })
            .collect();
        Ok(Response::new(pb::ListExpiredResponse { tenant_id: c.tenant_id, records, error: None }))
    }

    async fn erase_keys(
        &self,
        req: Request<pb::EraseKeysRequest>,
    ) -> Result<Response<pb::EraseKeysResponse>, Status> {
        let (c, _) = self.begin("EraseKeys", &req, req.get_ref().context.as_ref(), false)?;
        let affected = self.delete(&c.tenant_id, &req.get_ref().keys).await?;
        Ok(Response::new(pb::EraseKeysResponse { tenant_id: c.tenant_id, affected, error: None }))
    }
}

/// Serves `service` on `listener` until `shutdown`, requiring `authorization: Bearer <token>`
/// when a token is given.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    service: S,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: pb::store_adapter_server::StoreAdapter,
{
    let expected = token.map(|t| format!("Bearer {t}"));
    let auth = move |req: Request<()>| -> Result<Request<()>, Status> {
        if let Some(want) = &expected {
            let got = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            let same: bool = subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes()).into();
            if !same {
                return Err(Status::unauthenticated("missing or bad bearer token"));
            }
        }
        Ok(req)
    };
    tonic::transport::Server::builder()
        .add_service(pb::store_adapter_server::StoreAdapterServer::with_interceptor(service, auth))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
