//! A remote store: a catalog entry of kind `grpc` (`catalog::remote`), reached over gRPC through
//! the `dsr.adapter.v1.StoreAdapter` contract. The adapter finds candidates (`Preview`), and dsr's
//! resolution decides whose each is, exactly as for a SQL table; erasure, export and correction
//! go to the adapter with the keys of the person's records, every call carrying the request id,
//! task id and attempt (`stores::call`), the tenant and the resolution, and the trace to continue.
//!
//! Outcomes look like a local store's. A failure the adapter calls transient, a timeout, or an
//! adapter that is down is transient (the engine retries with backoff); a stale attempt it
//! refuses is transient too (the engine's own fencing drops a stale worker's result, and a fresh
//! attempt is not stale). An answer for another tenant, or one that breaks the contract, is
//! fatal. No adapter text reaches an outcome or a log unless it is tidy (`adapter::tidy`).
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Status,
};

use super::{
    ByteStream, CallContext, CandidateRow, Erase, Erasure, ExpiredRecord, Expiry, Export, ExportFile,
    ExportSink, Probe, Rectification, Rectify, Retention, StoreAdapter, StoreError, StoreResult,
};
use crate::{
    adapter::{pb, tidy},
    catalog::remote::RemoteEntry,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

type Client = pb::store_adapter_client::StoreAdapterClient<Channel>;

/// Separates the tenant from the adapter's file key in the keys dsr's archive keeps.
const FILE_KEY_SEPARATOR: char = '\u{1f}';

pub struct RemoteStore {
    entry: RemoteEntry,
    name: &'static str,
    links_to: Option<&'static str>,
    client: Client,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl RemoteStore {
    /// The store of `entry`, connecting lazily: an adapter that is down at start fails its calls
    /// (transiently) rather than dsr's start.
    pub fn new(entry: RemoteEntry) -> anyhow::Result<Self> {
        let at = |what: &str| format!("catalog.{}.{what}", entry.name);
        let timeout = Duration::from_millis(entry.timeout_ms);
        let mut endpoint = Endpoint::from_shared(entry.url.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", at("url")))?
            .connect_timeout(Duration::from_millis(entry.connect_timeout_ms))
            .timeout(timeout)
            .concurrency_limit(entry.concurrency);
        if entry.url.starts_with("https") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(t) = &entry.tls {
                let read = |p: &std::path::PathBuf, what: &str| {
                    std::fs::read(p)
                        .map_err(|e| anyhow::anyhow!("{}: cannot read {}: {e}", at(what), p.display()))
                };
                if let Some(ca) = &t.ca_file {
                    tls = tls.ca_certificate(Certificate::from_pem(read(ca, "tls.ca_file")?));
                }
                if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
                    tls = tls.identity(Identity::from_pem(
                        read(cert, "tls.cert_file")?,
                        read(key, "tls.key_file")?,
                    ));
                }
                if let Some(d) = &t.domain {
                    tls = tls.domain_name(d.clone());
                }
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("{}: {e}", at("tls")))?;
        }
        let token = entry
            .token()?
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| anyhow::anyhow!("{}: the token is not valid header text", at("token_env")))
            })
            .transpose()?;
        let name: &'static str = Box::leak(entry.name.clone().into_boxed_str());
        let links_to: Option<&'static str> =
            entry.link_store.as_ref().map(|l| &*Box::leak(l.clone().into_boxed_str()));
        Ok(Self { client: Client::new(endpoint.connect_lazy()), entry, name, links_to, token, timeout })
    }

    /// A call's message with its metadata: the deadline, the token, the trace to continue.
    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.set_timeout(self.timeout);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(tp) = CallContext::current().and_then(|c| c.traceparent) {
            if let Ok(v) = MetadataValue::try_from(tp.as_str()) {
                r.metadata_mut().insert("traceparent", v);
            }
        }
        r
    }

    /// Which task the call is for (empty ids and attempt 0 outside a task: a preview, the
    /// resolution at submit).
    fn context(&self, tenant: &str) -> pb::CallContext {
        let c = CallContext::current();
        pb::CallContext {
            request_id: c.as_ref().map(|c| c.request_id.clone()).unwrap_or_default(),
            task_id: c.as_ref().map(|c| c.task_id.clone()).unwrap_or_default(),
            attempt: c.as_ref().map_or(0, |c| c.attempt),
            tenant_id: tenant.to_owned(),
        }
    }

    /// The request's resolution as the task knows it, for this store.
    fn resolution(&self) -> Option<pb::Resolution> {
        let res = CallContext::current()?.resolution?;
        let own = res.store(self.name).map(|s| s.mine.iter().cloned().collect()).unwrap_or_default();
        let linked = self
            .links_to
            .and_then(|l| res.store(l))
            .map(|s| s.mine.iter().cloned().collect())
            .unwrap_or_default();
        let p = &res.person;
        Some(pb::Resolution {
            account_ids: p.account_id.iter().cloned().collect(),
            emails: p.emails.iter().cloned().collect(),
            phones: p.phones.iter().cloned().collect(),
            linked_keys: linked,
            keys: own,
        })
    }

    fn person_resolution(&self, person: &Person, keys: &[String]) -> pb::Resolution {
        self.resolution().unwrap_or_else(|| pb::Resolution {
            account_ids: person.account_id.iter().cloned().collect(),
            emails: person.emails.iter().cloned().collect(),
            phones: person.phones.iter().cloned().collect(),
            linked_keys: Vec::new(),
            keys: keys.to_vec(),
        })
    }

    /// Whether the task this call is for is of a kind the store takes part in.
    fn takes_part(&self) -> bool {
        CallContext::current().is_none_or(|c| self.entry.takes_part_in(c.kind))
    }

    /// A failed call, as a store failure that says which store, what, and nothing personal.
    fn failed(&self, rpc: &str, status: Status) -> StoreError {
        status_error(self.name, rpc, &status)
    }

    /// The answer's tenant must be the call's, and its typed error is the call's failure.
    fn answer(
        &self,
        rpc: &str,
        tenant: &str,
        answered: &str,
        error: Option<pb::AdapterError>,
    ) -> StoreResult<()> {
        if let Some(e) = error {
            return Err(typed_error(self.name, rpc, &e));
        }
        if answered != tenant {
            return Err(StoreError::Fatal(format!(
                "the {} adapter answered {rpc} for another tenant: refused",
                self.name
            )));
        }
        Ok(())
    }
}

/// A gRPC status as a store failure.
pub fn status_error(store: &str, rpc: &str, status: &Status) -> StoreError {
    let said = tidy(status.message()).map(|m| format!(": {m}")).unwrap_or_default();
    let what = format!("the {store} adapter's {rpc} failed ({:?}){said}", status.code());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled => StoreError::Transient(what),
        // A connection that broke mid-call (the adapter died) surfaces as Unknown, or as
        // Internal naming the transport.
        Code::Unknown => StoreError::Transient(what),
        Code::Internal if broken_connection(status.message()) => StoreError::Transient(what),
        Code::FailedPrecondition => StoreError::Transient(format!("{what}: treated as a stale attempt")),
        Code::Internal if status.message().contains("decode") => StoreError::Fatal(format!(
            "the {store} adapter's {rpc} answer is not a dsr.adapter.v1 message (garbage on the wire)"
        )),
        _ => StoreError::Fatal(what),
    }
}

/// An `AdapterError` as a store failure.
pub fn typed_error(store: &str, rpc: &str, e: &pb::AdapterError) -> StoreError {
    let said = tidy(&e.message).map(|m| format!(": {m}")).unwrap_or_default();
    match pb::ErrorKind::try_from(e.kind) {
        Ok(pb::ErrorKind::Transient) => {
            StoreError::Transient(format!("the {store} adapter's {rpc} failed{said}"))
        }
        Ok(pb::ErrorKind::StaleAttempt) => {
            StoreError::Transient(format!("the {store} adapter refused {rpc} as a stale attempt{said}"))
        }
        Ok(pb::ErrorKind::Fatal) => StoreError::Fatal(format!("the {store} adapter's {rpc} failed{said}")),
        _ => StoreError::Fatal(format!(
            "the {store} adapter's {rpc} answer has an unknown error kind {}",
            e.kind
        )),
    }
}

fn broken_connection(message: &str) -> bool {
    ["h2 protocol error", "transport error", "connection", "broken pipe", "stream no longer needed"]
        .iter()
        .any(|m| message.contains(m))
}

fn malformed(store: &str, rpc: &str, what: &str) -> StoreError {
    StoreError::Fatal(format!("the {store} adapter's {rpc} answer breaks the contract: {what}"))
}

fn ident_kind(k: i32) -> Option<IdentKind> {
    match pb::IdentifierKind::try_from(k).ok()? {
        pb::IdentifierKind::AccountId => Some(IdentKind::AccountId),
        pb::IdentifierKind::Email => Some(IdentKind::Email),
        pb::IdentifierKind::Phone => Some(IdentKind::Phone),
        pb::IdentifierKind::Unspecified => None,
    }
}

fn record_of(store: &str, json: &str) -> StoreResult<super::Record> {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(malformed(store, "Export", "a record is not a JSON object")),
    }
}

fn retained(store: &str, rpc: &str, r: pb::Retention) -> StoreResult<(String, DateTime<Utc>)> {
    let until = r
        .until
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .ok_or_else(|| malformed(store, rpc, "retained without an until"))?;
    let basis =
        tidy(&r.basis).ok_or_else(|| malformed(store, rpc, "a retention basis that is empty or not tidy"))?;
    Ok((basis.to_owned(), until))
}

#[async_trait]
impl StoreAdapter for RemoteStore {
    fn takes_part_in(&self, kind: crate::domain::RequestKind) -> bool {
        self.entry.takes_part_in(kind)
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn stage(&self) -> u8 {
        self.entry.stage
    }

    fn links_to(&self) -> Option<&'static str> {
        self.links_to
    }

    /// The adapter answers Describe; one that is down is no schema problem (its tasks retry).
    async fn check_schema(&self) -> Vec<String> {
        match self.client.clone().describe(self.call(pb::DescribeRequest {})).await {
            Ok(_) => Vec::new(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => {
                tracing::warn!(store = self.name, code = ?s.code(), "remote adapter not reachable; its tasks will retry");
                Vec::new()
            }
            Err(s) => vec![format!("{}: {}", self.entry.url, self.failed("Describe", s))],
        }
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        if !self.takes_part() {
            return Ok(Vec::new());
        }
        let resolution = pb::Resolution {
            account_ids: probe.account_ids.clone(),
            emails: probe.emails.clone(),
            phones: probe.phones.clone(),
            linked_keys: probe.links.clone(),
            keys: probe.keys.clone(),
        };
        let req =
            pb::PreviewRequest { context: Some(self.context(probe.tenant)), resolution: Some(resolution) };
        let r = self.client.clone().preview(self.call(req)).await.map_err(|s| self.failed("Preview", s))?;
        let r = r.into_inner();
        self.answer("Preview", probe.tenant, &r.tenant_id, r.error)?;
        r.candidates
            .into_iter()
            .map(|c| {
                if c.key.is_empty() {
                    return Err(malformed(self.name, "Preview", "a candidate without a key"));
                }
                let identifiers = c
                    .identifiers
                    .into_iter()
                    .map(|i| {
                        ident_kind(i.kind)
                            .map(|k| (k, i.value))
                            .ok_or_else(|| malformed(self.name, "Preview", "an identifier of no known kind"))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(CandidateRow {
                    key: c.key,
                    identifiers,
                    link: c.link,
                    bytes: c.bytes,
                    object: None,
                    cleared: c.cleared,
                })
            })
            .collect()
    }

    fn as_erase(&self) -> Option<&dyn Erase> {
        Some(self)
    }

    fn as_export(&self) -> Option<&dyn Export> {
        Some(self)
    }

    fn as_rectify(&self) -> Option<&dyn Rectify> {
        Some(self)
    }

    /// A remote store cannot list its tenants (`Retention::lists_tenants` keeps its default):
    /// the sweep visits it in every tenant the others hold.
    fn as_retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }
}

#[async_trait]
impl Erase for RemoteStore {
    /// Erase, then Verify: the adapter's own check, by identifiers and keys, after its erase (dsr
    /// checks again with Preview, `resolve::leftovers`).
    async fn erase(&self, tenant: &str, keys: &[String], _now: DateTime<Utc>) -> StoreResult<Erasure> {
        if !self.takes_part() {
            return Ok(Erasure::Erased { affected: 0 });
        }
        let resolution = self.resolution();
        let req = pb::EraseRequest {
            context: Some(self.context(tenant)),
            resolution: resolution.clone(),
            keys: keys.to_vec(),
        };
        let r = self
            .client
            .clone()
            .erase(self.call(req))
            .await
            .map_err(|s| self.failed("Erase", s))?
            .into_inner();
        self.answer("Erase", tenant, &r.tenant_id, r.error)?;
        let erasure = match r.retained {
            Some(ret) => {
                let (basis, until) = retained(self.name, "Erase", ret)?;
                Erasure::Retained { affected: r.affected, basis, until }
            }
            None => Erasure::Erased { affected: r.affected },
        };
        let req = pb::VerifyRequest { context: Some(self.context(tenant)), resolution, keys: keys.to_vec() };
        let v = self
            .client
            .clone()
            .verify(self.call(req))
            .await
            .map_err(|s| self.failed("Verify", s))?
            .into_inner();
        self.answer("Verify", tenant, &v.tenant_id, v.error)?;
        if v.remaining > 0 {
            return Err(StoreError::Transient(format!(
                "the {} adapter's Verify reports {} record(s) of the subject left after the erase",
                self.name, v.remaining
            )));
        }
        Ok(erasure)
    }
}

#[async_trait]
impl Rectify for RemoteStore {
    fn holds_any_of(&self, c: &Corrections) -> bool {
        let holds = |k| self.entry.holds.contains(&k);
        self.entry.takes_part_in(crate::domain::RequestKind::Rectification)
            && ((c.email.is_some() && holds(IdentKind::Email))
                || (c.phone.is_some() && holds(IdentKind::Phone)))
    }

    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let keys: Vec<String> = mine.iter().map(|r| r.key.clone()).collect();
        let r = self.rectify_call(person, &keys, corrections).await?;
        let hold = r.retained.map(|ret| retained(self.name, "Rectify", ret)).transpose()?;
        Ok(Rectification {
            found: r.found,
            affected: r.affected,
            hold: hold.map(|(basis, until)| super::LegalHold { basis, until }),
        })
    }

    /// Rectify again: a repeat changes nothing and reads back.
    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        Ok(self.rectify_call(person, keys, c).await?.verified)
    }
}

#[async_trait]
impl Export for RemoteStore {
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        if !self.takes_part() {
            return Ok(0);
        }
        let req = pb::ExportRequest {
            context: Some(self.context(tenant)),
            resolution: self.resolution(),
            keys: keys.to_vec(),
            file_key: None,
        };
        let mut stream = self
            .client
            .clone()
            .export(self.call(req))
            .await
            .map_err(|s| self.failed("Export", s))?
            .into_inner();
        let mut n = 0u64;
        while let Some(item) = stream.message().await.map_err(|s| self.failed("Export", s))? {
            if let Some(pb::export_item::Item::Error(e)) = &item.item {
                return Err(typed_error(self.name, "Export", e));
            }
            self.answer("Export", tenant, &item.tenant_id, None)?;
            match item.item {
                Some(pb::export_item::Item::RecordJson(json)) => {
                    sink.record(record_of(self.name, &json)?).await?;
                }
                Some(pb::export_item::Item::File(f)) => {
                    if f.key.is_empty() {
                        return Err(malformed(self.name, "Export", "a file without a key"));
                    }
                    let record = if f.record_json.is_empty() {
                        Default::default()
                    } else {
                        record_of(self.name, &f.record_json)?
                    };
                    sink.file(ExportFile {
                        name: f.name,
                        key: format!("{tenant}{FILE_KEY_SEPARATOR}{}", f.key),
                        bytes: f.bytes,
                        record,
                    })
                    .await?;
                }
                Some(pb::export_item::Item::Chunk(_)) | None => {
                    return Err(malformed(
                        self.name,
                        "Export",
                        "file bytes without file_key, or an empty item",
                    ))
                }
                Some(pb::export_item::Item::Error(_)) => unreachable!("handled above"),
            }
            n += 1;
        }
        Ok(n)
    }

    async fn read_file(&self, key: &str) -> StoreResult<ByteStream> {
        let (tenant, file) = key
            .split_once(FILE_KEY_SEPARATOR)
            .ok_or_else(|| StoreError::Fatal(format!("the {} store did not list this file", self.name)))?;
        let req = pb::ExportRequest {
            context: Some(self.context(tenant)),
            resolution: self.resolution(),
            keys: Vec::new(),
            file_key: Some(file.to_owned()),
        };
        let stream = self
            .client
            .clone()
            .export(self.call(req))
            .await
            .map_err(|s| self.failed("Export", s))?
            .into_inner();
        let store: Arc<str> = self.name.into();
        let tenant: Arc<str> = tenant.into();
        Ok(stream
            .map(move |item| match item {
                Err(s) => Err(status_error(&store, "Export", &s)),
                Ok(pb::ExportItem { item: Some(pb::export_item::Item::Error(e)), .. }) => {
                    Err(typed_error(&store, "Export", &e))
                }
                Ok(i) if *i.tenant_id != *tenant => Err(StoreError::Fatal(format!(
                    "the {store} adapter answered Export for another tenant: refused"
                ))),
                Ok(pb::ExportItem { item: Some(pb::export_item::Item::Chunk(b)), .. }) => Ok::<Bytes, _>(b),
                Ok(_) => {
                    Err(malformed(&store, "Export", "a file_key answer with something other than bytes"))
                }
            })
            .boxed())
    }
}

#[async_trait]
impl Retention for RemoteStore {
    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        let req = pb::ListExpiredRequest {
            context: Some(self.context(expiry.tenant)),
            cutoff: Some(prost_types::Timestamp { seconds: expiry.cutoff.timestamp(), nanos: 0 }),
            after: after.map(str::to_owned),
            limit: limit.min(u32::MAX as usize) as u32,
        };
        let r = match self.client.clone().list_expired(self.call(req)).await {
            Err(s) if s.code() == Code::Unimplemented => return Ok(Vec::new()),
            r => r.map_err(|s| self.failed("ListExpired", s))?.into_inner(),
        };
        self.answer("ListExpired", expiry.tenant, &r.tenant_id, r.error)?;
        Ok(r.records
            .into_iter()
            .map(|e| ExpiredRecord { key: e.key, account_id: e.account_id, email: e.email, phone: e.phone })
            .collect())
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        let req = pb::EraseKeysRequest { context: Some(self.context(tenant)), keys: keys.to_vec() };
        let r = self
            .client
            .clone()
            .erase_keys(self.call(req))
            .await
            .map_err(|s| self.failed("EraseKeys", s))?
            .into_inner();
        self.answer("EraseKeys", tenant, &r.tenant_id, r.error)?;
        Ok(r.affected)
    }
}

impl RemoteStore {
    async fn rectify_call(
        &self,
        person: &Person,
        keys: &[String],
        c: &Corrections,
    ) -> StoreResult<pb::RectifyResponse> {
        let req = pb::RectifyRequest {
            context: Some(self.context(&person.tenant)),
            resolution: Some(self.person_resolution(person, keys)),
            keys: keys.to_vec(),
            corrections: Some(pb::Corrections {
                name: c.name.as_ref().map(|n| n.as_str().to_owned()),
                email: c.email.as_ref().map(|e| e.as_str().to_owned()),
                phone: c.phone.as_ref().map(|p| p.as_str().to_owned()),
            }),
        };
        let r = self
            .client
            .clone()
            .rectify(self.call(req))
            .await
            .map_err(|s| self.failed("Rectify", s))?
            .into_inner();
        self.answer("Rectify", &person.tenant, &r.tenant_id, r.error.clone())?;
        Ok(r)
    }
}
