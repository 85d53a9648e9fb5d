//! The conformance suite of `dsr.adapter.v1.StoreAdapter`: what `dsr adapter check URL` runs
//! against any running adapter, so a team proves its service in its own CI before dsr calls it.
//!
//! The suite needs a subject the adapter holds (by default the fixture the example adapter writes
//! with `--demo-data`: tenant `dsr-check`, phone `+15550009999`); it previews, exports, rectifies
//! and erases that subject's records, so run it against a test instance. Each rule passes or fails
//! on its own; a rule whose step before it failed fails as "not reached".
use std::time::{Duration, Instant};

use tonic::{metadata::MetadataValue, transport::Channel, Code, Status};

use super::{pb, voicemail};

type Client = pb::store_adapter_client::StoreAdapterClient<Channel>;

/// What to check, and against which subject.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub url: String,
    pub token: Option<String>,
    pub tenant: String,
    pub phone: String,
    pub email: Option<String>,
    /// The phone a rectification moves the subject to.
    pub new_phone: String,
    /// The longest any call may take.
    pub timeout: Duration,
}

impl CheckOptions {
    /// The example adapter's fixture (`dsr-voicemail-adapter --demo-data`).
    pub fn for_fixture(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            token: None,
            tenant: voicemail::CHECK_TENANT.into(),
            phone: voicemail::CHECK_PHONE.into(),
            email: Some(voicemail::CHECK_EMAIL.into()),
            new_phone: voicemail::CHECK_NEW_PHONE.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    pub rule: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The rules, in the order they run.
pub const RULES: &[&str] = &[
    "describe",
    "authentication",
    "tenant scoping",
    "preview finds the subject",
    "export streams",
    "rectify reads back",
    "preview -> erase -> verify",
    "erase twice is harmless",
    "older attempt rejected or ignored",
    "error mapping",
    "retention",
    "trace context",
    "timeouts",
];

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// Identifiers no adapter holds: its error messages must not echo them.
const CANARY_PHONE: &str = "+15550107777";
const CANARY_EMAIL: &str = "canary.7777@example.invalid";

struct Suite {
    client: Client,
    o: CheckOptions,
    task: String,
    slowest: Duration,
    results: Vec<RuleResult>,
    /// The subject's record keys, once Preview found them.
    keys: Vec<String>,
    describe: Option<pb::DescribeResponse>,
}

type Step = Result<String, String>;

impl Suite {
    fn call<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.set_timeout(self.o.timeout);
        if let Some(t) = &self.o.token {
            if let Ok(v) = MetadataValue::try_from(format!("Bearer {t}")) {
                r.metadata_mut().insert("authorization", v);
            }
        }
        r.metadata_mut().insert("traceparent", MetadataValue::from_static(TRACEPARENT));
        r
    }

    fn ctx(&self, attempt: u32) -> pb::CallContext {
        pb::CallContext {
            request_id: "dsr-adapter-check".into(),
            task_id: self.task.clone(),
            attempt,
            tenant_id: self.o.tenant.clone(),
        }
    }

    fn resolution(&self, phones: &[&str]) -> pb::Resolution {
        pb::Resolution {
            account_ids: Vec::new(),
            emails: self.o.email.iter().cloned().collect(),
            phones: phones.iter().map(|p| (*p).to_owned()).collect(),
            linked_keys: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// Runs `f`, measuring it against the per-call timeout.
    async fn timed<T>(
        &mut self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, String> {
        let start = Instant::now();
        let r = f.await;
        self.slowest = self.slowest.max(start.elapsed());
        r.map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    fn record(&mut self, rule: &'static str, step: Step) {
        let (passed, detail) = match step {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.results.push(RuleResult { rule, passed, detail });
    }

    fn passed(&self, rule: &str) -> bool {
        self.results.iter().any(|r| r.rule == rule && r.passed)
    }

    async fn preview(&mut self, tenant: &str, r: pb::Resolution) -> Result<pb::PreviewResponse, String> {
        let req = pb::PreviewRequest {
            context: Some(pb::CallContext { tenant_id: tenant.into(), ..self.ctx(0) }),
            resolution: Some(r),
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        let resp = self.timed(async move { c.preview(call).await }).await?.into_inner();
        if let Some(e) = resp.error {
            return Err(format!("Preview answered with an error: {}", e.message));
        }
        if resp.tenant_id != tenant {
            return Err(format!("Preview answered for tenant {:?}, asked for {tenant:?}", resp.tenant_id));
        }
        Ok(resp)
    }

    async fn erase(&mut self, attempt: u32) -> Result<pb::EraseResponse, String> {
        let req = pb::EraseRequest {
            context: Some(self.ctx(attempt)),
            resolution: Some(self.resolution(&[&self.o.phone, &self.o.new_phone])),
            keys: self.keys.clone(),
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        self.timed(async move { c.erase(call).await }).await.map(|r| r.into_inner())
    }

    async fn describe(&mut self) -> Step {
        let call = self.call(pb::DescribeRequest {});
        let mut c = self.client.clone();
        let d = self.timed(async move { c.describe(call).await }).await?.into_inner();
        if d.name.trim().is_empty() {
            return Err("Describe has no name".into());
        }
        if !d.capabilities.contains(&(pb::Capability::Erase as i32)) {
            return Err("Describe does not declare CAPABILITY_ERASE".into());
        }
        let detail = format!("{} {} ({} capabilities)", d.name, d.version, d.capabilities.len());
        self.describe = Some(d);
        Ok(detail)
    }

    async fn authentication(&mut self) -> Step {
        if self.o.token.is_none() {
            return Ok("no token given: not checked".into());
        }
        let mut r = tonic::Request::new(pb::DescribeRequest {});
        r.set_timeout(self.o.timeout);
        let mut c = self.client.clone();
        match self.timed(async move { c.describe(r).await.map_err(|s| s.code()).map_err(|code| Status::new(code, "")) }).await {
            Ok(_) => Err("a call without the token was answered".into()),
            Err(e) if e.starts_with("Unauthenticated") => Ok("a call without the token is UNAUTHENTICATED".into()),
            Err(e) => Err(format!("a call without the token failed with {e}, not UNAUTHENTICATED")),
        }
    }

    async fn tenant_scoping(&mut self) -> Step {
        let other = format!("{}-nobody", self.o.tenant);
        let r = self.preview(&other, self.resolution(&[&self.o.phone])).await?;
        if !r.candidates.is_empty() {
            return Err(format!(
                "Preview in tenant {other:?} returned {} record(s) of another tenant",
                r.candidates.len()
            ));
        }
        Ok("answers name the tenant asked; another tenant sees nothing".into())
    }

    async fn preview_finds(&mut self) -> Step {
        let r = self.preview(&self.o.tenant.clone(), self.resolution(&[&self.o.phone])).await?;
        if r.candidates.is_empty() {
            return Err("Preview by the subject's phone found nothing (is the fixture loaded?)".into());
        }
        if r.candidates.iter().any(|c| c.key.is_empty()) {
            return Err("a candidate has no key".into());
        }
        if !r.candidates.iter().all(|c| c.identifiers.iter().any(|i| i.kind != 0)) {
            return Err("a candidate holds no typed identifier".into());
        }
        self.keys = r.candidates.iter().map(|c| c.key.clone()).collect();
        Ok(format!("{} record(s)", self.keys.len()))
    }

    async fn export(&mut self) -> Step {
        let req = pb::ExportRequest {
            context: Some(self.ctx(1)),
            resolution: Some(self.resolution(&[&self.o.phone])),
            keys: self.keys.clone(),
            file_key: None,
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        let mut stream = self.timed(async move { c.export(call).await }).await?.into_inner();
        let (mut records, mut files) = (0, Vec::new());
        while let Some(item) =
            stream.message().await.map_err(|s| format!("the stream broke: {:?}", s.code()))?
        {
            if item.tenant_id != self.o.tenant {
                return Err("an item names another tenant".into());
            }
            match item.item {
                Some(pb::export_item::Item::RecordJson(j)) => {
                    if !serde_json::from_str::<serde_json::Value>(&j).is_ok_and(|v| v.is_object()) {
                        return Err("a record is not a JSON object".into());
                    }
                    records += 1;
                }
                Some(pb::export_item::Item::File(f)) => files.push(f),
                Some(pb::export_item::Item::Error(e)) => return Err(format!("an error item: {}", e.message)),
                _ => return Err("file bytes or an empty item without file_key".into()),
            }
        }
        if records == 0 {
            return Err("no records streamed for the subject's keys".into());
        }
        if let Some(f) = files.first() {
            let req = pb::ExportRequest {
                context: Some(self.ctx(1)),
                resolution: None,
                keys: Vec::new(),
                file_key: Some(f.key.clone()),
            };
            let call = self.call(req);
            let mut c = self.client.clone();
            let mut s = self.timed(async move { c.export(call).await }).await?.into_inner();
            let mut n = 0u64;
            while let Some(item) =
                s.message().await.map_err(|s| format!("the file stream broke: {:?}", s.code()))?
            {
                match item.item {
                    Some(pb::export_item::Item::Chunk(b)) => n += b.len() as u64,
                    _ => return Err("a file_key stream sent something other than bytes".into()),
                }
            }
            if n != f.bytes {
                return Err(format!("file {:?} streamed {n} bytes, its header says {}", f.name, f.bytes));
            }
        }
        Ok(format!("{records} record(s), {} file(s)", files.len()))
    }

    async fn rectify(&mut self) -> Step {
        let req = |s: &Self| pb::RectifyRequest {
            context: Some(s.ctx(1)),
            resolution: Some(s.resolution(&[&s.o.phone])),
            keys: s.keys.clone(),
            corrections: Some(pb::Corrections {
                name: None,
                email: None,
                phone: Some(s.o.new_phone.clone()),
            }),
        };
        let call = self.call(req(self));
        let mut c = self.client.clone();
        let r = self.timed(async move { c.rectify(call).await }).await?.into_inner();
        if let Some(e) = r.error {
            return Err(format!("Rectify answered with an error: {}", e.message));
        }
        if !r.verified || r.affected == 0 {
            return Err(format!("Rectify: affected {}, verified {}", r.affected, r.verified));
        }
        let now = self
            .preview(
                &self.o.tenant.clone(),
                pb::Resolution { phones: vec![self.o.new_phone.clone()], ..Default::default() },
            )
            .await?;
        if !self.keys.iter().all(|k| now.candidates.iter().any(|c| &c.key == k)) {
            return Err("after Rectify, Preview by the new phone does not find every record".into());
        }
        let old = self
            .preview(
                &self.o.tenant.clone(),
                pb::Resolution { phones: vec![self.o.phone.clone()], ..Default::default() },
            )
            .await?;
        if old.candidates.iter().any(|c| self.keys.contains(&c.key)) {
            return Err("after Rectify, Preview by the old phone still finds the records".into());
        }
        let call = self.call(req(self));
        let mut c = self.client.clone();
        let again = self.timed(async move { c.rectify(call).await }).await?.into_inner();
        if again.error.is_some() || again.affected != 0 || !again.verified {
            return Err("a repeated Rectify was not a verified no-op".into());
        }
        Ok(format!("{} record(s) corrected and read back; a repeat changes nothing", r.affected))
    }

    async fn erase_verify(&mut self) -> Step {
        let r = self.erase(2).await?;
        if let Some(e) = r.error {
            return Err(format!("Erase answered with an error: {}", e.message));
        }
        if r.tenant_id != self.o.tenant {
            return Err("Erase answered for another tenant".into());
        }
        if r.affected == 0 && r.retained.is_none() {
            return Err("Erase affected nothing".into());
        }
        let req = pb::VerifyRequest {
            context: Some(self.ctx(2)),
            resolution: Some(self.resolution(&[&self.o.phone, &self.o.new_phone])),
            keys: self.keys.clone(),
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        let v = self.timed(async move { c.verify(call).await }).await?.into_inner();
        if v.remaining != 0 && r.retained.is_none() {
            return Err(format!("Verify reports {} record(s) left after Erase", v.remaining));
        }
        let p = self
            .preview(
                &self.o.tenant.clone(),
                pb::Resolution {
                    keys: self.keys.clone(),
                    ..self.resolution(&[&self.o.phone, &self.o.new_phone])
                },
            )
            .await?;
        let left = p.candidates.iter().filter(|c| !c.cleared && self.keys.contains(&c.key)).count();
        if left > 0 && r.retained.is_none() {
            return Err(format!("Preview still finds {left} erased record(s)"));
        }
        Ok(format!("erased {}, verify 0 left, preview 0", r.affected))
    }

    async fn erase_twice(&mut self) -> Step {
        let r = self.erase(2).await?;
        match r.error {
            Some(e) => Err(format!("a repeated Erase failed: {}", e.message)),
            None if r.affected > 0 => Err(format!("a repeated Erase affected {} record(s)", r.affected)),
            None => Ok("the repeat affected nothing".into()),
        }
    }

    async fn stale_attempt(&mut self) -> Step {
        // Attempt 3 first, then attempt 1 of the same task.
        let newer = self.erase(3).await?;
        if newer.error.is_some() {
            return Err("attempt 3 was refused".into());
        }
        match self.erase(1).await {
            Ok(r) => match r.error {
                Some(e) if e.kind == pb::ErrorKind::StaleAttempt as i32 => {
                    Ok("rejected (ERROR_KIND_STALE_ATTEMPT)".into())
                }
                Some(e) => Err(format!("rejected with the wrong error kind {}", e.kind)),
                None if r.affected == 0 => Ok("ignored (changed nothing)".into()),
                None => Err(format!("attempt 1 after attempt 3 changed {} record(s)", r.affected)),
            },
            Err(e) if e.starts_with("FailedPrecondition") || e.starts_with("Aborted") => {
                Ok(format!("rejected ({e})"))
            }
            Err(e) => Err(format!("failed with {e}, neither a stale rejection nor ignored")),
        }
    }

    async fn error_mapping(&mut self) -> Step {
        // No tenant: INVALID_ARGUMENT, and the message does not echo the identifiers.
        let req = pb::PreviewRequest {
            context: Some(pb::CallContext { tenant_id: String::new(), ..self.ctx(0) }),
            resolution: Some(pb::Resolution {
                phones: vec![CANARY_PHONE.into()],
                emails: vec![CANARY_EMAIL.into()],
                ..Default::default()
            }),
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        let start = Instant::now();
        let r = c.preview(call).await;
        self.slowest = self.slowest.max(start.elapsed());
        match r {
            Ok(resp)
                if resp.get_ref().error.as_ref().is_some_and(|e| e.kind == pb::ErrorKind::Fatal as i32) =>
            {
                let e = resp.into_inner().error.unwrap_or_default();
                if e.message.contains(CANARY_PHONE) || e.message.contains(CANARY_EMAIL) {
                    return Err("the error message echoes an identifier".into());
                }
            }
            Ok(_) => return Err("a Preview without a tenant was answered".into()),
            Err(s) if s.code() == Code::InvalidArgument => {
                if s.message().contains(CANARY_PHONE)
                    || s.message().contains("7777")
                    || s.message().contains(CANARY_EMAIL)
                {
                    return Err("the INVALID_ARGUMENT message echoes an identifier".into());
                }
            }
            Err(s) => {
                return Err(format!(
                    "a Preview without a tenant failed with {:?}, not INVALID_ARGUMENT",
                    s.code()
                ))
            }
        }
        // A change without a task id cannot be fenced: refused.
        let req = pb::EraseRequest {
            context: Some(pb::CallContext { task_id: String::new(), attempt: 0, ..self.ctx(0) }),
            resolution: None,
            keys: vec!["no-such-key".into()],
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        match self.timed(async move { c.erase(call).await }).await {
            Err(e) if e.starts_with("InvalidArgument") => {
                Ok("no tenant, no task id: INVALID_ARGUMENT without identifiers".into())
            }
            Ok(r) if r.get_ref().error.as_ref().is_some_and(|e| e.kind == pb::ErrorKind::Fatal as i32) => {
                Ok("no tenant: INVALID_ARGUMENT; no task id: a fatal typed error".into())
            }
            Ok(_) => Err("an Erase without a task id was accepted (it cannot be fenced)".into()),
            Err(e) => Err(format!("an Erase without a task id failed with {e}, not INVALID_ARGUMENT")),
        }
    }

    async fn retention(&mut self) -> Step {
        let Some(d) = &self.describe else { return Err("not reached: describe failed".into()) };
        if !d.capabilities.contains(&(pb::Capability::Retention as i32)) {
            return Ok("not declared: not checked".into());
        }
        let req = pb::ListExpiredRequest {
            context: Some(self.ctx(1)),
            cutoff: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            after: None,
            limit: 10,
        };
        let call = self.call(req);
        let mut c = self.client.clone();
        let r = self.timed(async move { c.list_expired(call).await }).await?.into_inner();
        if r.tenant_id != self.o.tenant || r.error.is_some() {
            return Err("ListExpired answered for another tenant, or with an error".into());
        }
        if !r.records.is_empty() {
            return Err("ListExpired before 1970 listed records".into());
        }
        let req =
            pb::EraseKeysRequest { context: Some(self.ctx(1)), keys: vec!["dsr-check-no-such-key".into()] };
        let call = self.call(req);
        let mut c = self.client.clone();
        let r = self.timed(async move { c.erase_keys(call).await }).await?.into_inner();
        if r.tenant_id != self.o.tenant || r.error.is_some() || r.affected != 0 {
            return Err("EraseKeys of a missing key did not answer 0 for the tenant".into());
        }
        Ok("ListExpired and EraseKeys answer".into())
    }

    async fn trace_context(&mut self) -> Step {
        let r = self.preview(&self.o.tenant.clone(), self.resolution(&[&self.o.phone])).await?;
        match r.trace_id.as_str() {
            "" => Ok("traceparent sent; the adapter does not echo a trace id (optional)".into()),
            TRACE_ID => Ok(format!("the adapter saw trace {TRACE_ID}")),
            other => Err(format!("the adapter reports trace {other:?}, not the one sent")),
        }
    }

    async fn timeouts(&mut self) -> Step {
        // A call with a deadline far too short ends promptly as a deadline, and the adapter still
        // answers afterwards.
        let mut r = tonic::Request::new(pb::DescribeRequest {});
        r.set_timeout(Duration::from_micros(1));
        if let Some(t) = &self.o.token {
            if let Ok(v) = MetadataValue::try_from(format!("Bearer {t}")) {
                r.metadata_mut().insert("authorization", v);
            }
        }
        let mut c = self.client.clone();
        let start = Instant::now();
        let _ = tokio::time::timeout(self.o.timeout, c.describe(r))
            .await
            .map_err(|_| "a call with a 1 µs deadline did not end within the timeout".to_owned())?;
        let ended = start.elapsed();
        let call = self.call(pb::DescribeRequest {});
        let mut c = self.client.clone();
        self.timed(async move { c.describe(call).await }).await?;
        if self.slowest > self.o.timeout {
            return Err(format!("the slowest call took {:?}, over {:?}", self.slowest, self.o.timeout));
        }
        Ok(format!(
            "slowest call {} ms (limit {} ms); a 1 µs deadline ended in {} ms",
            self.slowest.as_millis(),
            self.o.timeout.as_millis(),
            ended.as_millis()
        ))
    }
}

/// Runs the suite; one result per rule of `RULES`, in order.
pub async fn run(o: CheckOptions) -> Vec<RuleResult> {
    let task = format!("dsr-check-{}", uuid::Uuid::new_v4().simple());
    let channel = match tonic::transport::Endpoint::from_shared(o.url.clone()) {
        Ok(e) => e.connect_timeout(o.timeout).connect_lazy(),
        Err(e) => {
            return RULES
                .iter()
                .map(|r| RuleResult { rule: r, passed: false, detail: format!("bad URL: {e}") })
                .collect()
        }
    };
    let mut s = Suite {
        client: Client::new(channel),
        o,
        task,
        slowest: Duration::ZERO,
        results: Vec::new(),
        keys: Vec::new(),
        describe: None,
    };
    let step = s.describe().await;
    s.record("describe", step);
    let step = s.authentication().await;
    s.record("authentication", step);
    let step = s.tenant_scoping().await;
    s.record("tenant scoping", step);
    let step = s.preview_finds().await;
    s.record("preview finds the subject", step);
    let found = s.passed("preview finds the subject");
    let needs = |ok: bool, what: &str| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("not reached: {what} failed"))
        }
    };
    let step = match needs(found, "preview") {
        Ok(()) => s.export().await,
        Err(e) => Err(e),
    };
    s.record("export streams", step);
    let step = match needs(found, "preview") {
        Ok(()) => s.rectify().await,
        Err(e) => Err(e),
    };
    s.record("rectify reads back", step);
    let step = match needs(found, "preview") {
        Ok(()) => s.erase_verify().await,
        Err(e) => Err(e),
    };
    s.record("preview -> erase -> verify", step);
    let step = match needs(found, "preview") {
        Ok(()) => s.erase_twice().await,
        Err(e) => Err(e),
    };
    s.record("erase twice is harmless", step);
    let step = match needs(found, "preview") {
        Ok(()) => s.stale_attempt().await,
        Err(e) => Err(e),
    };
    s.record("older attempt rejected or ignored", step);
    let step = s.error_mapping().await;
    s.record("error mapping", step);
    let step = s.retention().await;
    s.record("retention", step);
    let step = s.trace_context().await;
    s.record("trace context", step);
    let step = s.timeouts().await;
    s.record("timeouts", step);
    s.results
}

/// The results as a table: rule, PASS/FAIL, detail.
pub fn table(results: &[RuleResult]) -> String {
    let width = results.iter().map(|r| r.rule.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<6}  {}\n", "rule", "result", "detail");
    for r in results {
        let mark = if r.passed { "PASS" } else { "FAIL" };
        out.push_str(&format!("{:<width$}  {:<6}  {}\n", r.rule, mark, r.detail));
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push_str(&format!("{} rule(s), {} failed\n", results.len(), failed));
    out
}
