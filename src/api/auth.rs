//! Who is calling, and what they may do: bearer tokens (kept only as SHA-256 hashes, compared in
//! constant time) and mTLS client certificates mapped to named identities, each with scopes and
//! optionally one tenant; plus the per-caller rate limit. Health and reflection are not behind
//! this (Kubernetes probes carry no token).
use std::{collections::BTreeSet, fmt, num::NonZeroU32, sync::Arc};

use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{metadata::MetadataValue, Request, Status};
use tracing::warn;

use super::error::ApiError;
use crate::{
    config::{AuthConfig, ServerConfig},
    telemetry::grpc::RpcMethod,
};

/// What a credential allows (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Scope {
    #[serde(rename = "dsr.export")]
    Export,
    #[serde(rename = "dsr.delete")]
    Delete,
    #[serde(rename = "dsr.rectify")]
    Rectify,
    #[serde(rename = "dsr.read")]
    Read,
    #[serde(rename = "dsr.admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Export, Scope::Delete, Scope::Rectify, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Export => "dsr.export",
            Scope::Delete => "dsr.delete",
            Scope::Rectify => "dsr.rectify",
            Scope::Read => "dsr.read",
            Scope::Admin => "dsr.admin",
        }
    }

    /// The scope that acts on requests of a kind (submit, cancel, retry, extend).
    pub fn for_kind(kind: crate::domain::RequestKind) -> Self {
        match kind {
            crate::domain::RequestKind::Export => Scope::Export,
            crate::domain::RequestKind::Deletion => Scope::Delete,
            crate::domain::RequestKind::Rectification => Scope::Rectify,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller, put in the request's extensions by [`AuthInterceptor`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    scopes: BTreeSet<Scope>,
    tenant: Option<String>,
    /// The RPC being called, for the warning a denial logs.
    rpc: &'static str,
}

impl Caller {
    /// Development mode: no credentials configured, loopback only, everything allowed.
    pub fn anonymous() -> Self {
        Self { name: "anonymous".into(), scopes: Scope::ALL.into_iter().collect(), tenant: None, rpc: "" }
    }

    pub fn of<T>(req: &Request<T>) -> Result<Caller, ApiError> {
        req.extensions().get::<Caller>().cloned().ok_or(ApiError::Unauthenticated("no credentials".into()))
    }

    /// A denial is logged at WARN (caller, RPC, code, what was missing), so that a probe shows
    /// up in the log and not only in a counter.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            warn!(caller = %self.name, rpc = self.rpc, code = "PERMISSION_DENIED", missing_scope = %scope, "call denied: the caller lacks the scope");
            Err(ApiError::PermissionDenied(format!("{:?} lacks the scope {scope}", self.name)))
        }
    }

    /// A tenant-bound caller may only touch its own tenant. A denial is logged at WARN with the
    /// caller's own tenant (configuration), not the one it asked for (the caller's input).
    pub fn require_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match &self.tenant {
            Some(own) if own != tenant => {
                warn!(caller = %self.name, caller_tenant = %own, rpc = self.rpc, code = "PERMISSION_DENIED", "call denied: cross-tenant access");
                Err(ApiError::PermissionDenied(format!("{:?} is bound to another tenant", self.name)))
            }
            _ => Ok(()),
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

struct TokenIdentity {
    sha256: [u8; 32],
    caller: Caller,
}

struct CertIdentity {
    subject_cn: String,
    caller: Caller,
}

/// The configured identities and the rate limiter.
pub struct Authenticator {
    tokens: Vec<TokenIdentity>,
    certificates: Vec<CertIdentity>,
    limiter: Option<(DefaultKeyedRateLimiter<String>, u32)>,
}

impl Authenticator {
    pub fn new(auth: &AuthConfig, server: &ServerConfig) -> anyhow::Result<Self> {
        let tokens = auth
            .tokens
            .iter()
            .map(|t| {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(&t.token_sha256, &mut sha256)
                    .map_err(|_| anyhow::anyhow!("auth.tokens {:?}: token_sha256 is not hex", t.name))?;
                let caller = Caller {
                    name: t.name.clone(),
                    scopes: t.scopes.iter().copied().collect(),
                    tenant: t.tenant.clone(),
                    rpc: "",
                };
                Ok(TokenIdentity { sha256, caller })
            })
            .collect::<anyhow::Result<_>>()?;
        let certificates = auth
            .certificates
            .iter()
            .map(|c| CertIdentity {
                subject_cn: c.subject_cn.clone(),
                caller: Caller {
                    name: c.name.clone(),
                    scopes: c.scopes.iter().copied().collect(),
                    tenant: c.tenant.clone(),
                    rpc: "",
                },
            })
            .collect();
        let limiter = NonZeroU32::new(server.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(server.rate_limit_burst).unwrap_or(rate);
            (RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)), rate.get())
        });
        Ok(Self { tokens, certificates, limiter })
    }

    /// No credentials configured: development mode.
    pub fn is_dev_mode(&self) -> bool {
        self.tokens.is_empty() && self.certificates.is_empty()
    }

    pub fn describe(&self) -> String {
        if self.is_dev_mode() {
            "development mode: no credentials configured, loopback only".into()
        } else {
            format!(
                "{} bearer token(s), {} client-certificate identit(ies)",
                self.tokens.len(),
                self.certificates.len()
            )
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if self.is_dev_mode() {
            return Ok(Caller::anonymous());
        }
        if let Some(header) = req.metadata().get("authorization") {
            let token = header
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer <token>`")
                })?;
            return self.token_caller(token).ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        if let Some(certs) = req.peer_certs() {
            let cn = certs.first().and_then(|c| subject_cn(c.as_ref()));
            let found = cn.as_deref().and_then(|cn| self.certificates.iter().find(|c| c.subject_cn == cn));
            return found.map(|c| c.caller.clone()).ok_or_else(|| {
                Status::unauthenticated("the client certificate maps to no configured identity")
            });
        }
        Err(Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` or a client certificate",
        ))
    }

    /// Hashes the presented token and compares it with every configured hash in constant time
    /// (no early exit), so timing tells nothing about which token, or how much of one, matched.
    fn token_caller(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.sha256.ct_eq(&presented)) {
                found = Some(&t.caller);
            }
        }
        found.cloned()
    }

    fn check_rate(&self, caller: &Caller) -> Result<(), Status> {
        let Some((limiter, rate)) = &self.limiter else { return Ok(()) };
        limiter.check_key(&caller.name).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let ms = wait.as_millis().max(1);
            let mut status = Status::resource_exhausted(format!(
                "rate limit of {rate} requests/s for this caller exceeded; retry in {ms} ms"
            ));
            if let Ok(v) = MetadataValue::try_from(ms.to_string()) {
                status.metadata_mut().insert("retry-after-ms", v);
            }
            status
        })
    }
}

/// The common name of a DER certificate's subject.
fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// Authenticates every call to the services it wraps and applies the rate limit.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<Authenticator>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let rpc = req.extensions().get::<RpcMethod>().map_or("_OTHER", |m| m.0);
        let mut caller = self.0.authenticate(&req).inspect_err(|status| {
            // The status message says which kind of credential failed; never the credential.
            warn!(
                rpc,
                code = "UNAUTHENTICATED",
                reason = status.message(),
                "call refused: authentication failed"
            );
        })?;
        caller.rpc = rpc;
        self.0.check_rate(&caller)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn authenticator(rate: u32) -> Authenticator {
        let auth = AuthConfig {
            tokens: vec![TokenConfig {
                name: "support".into(),
                token_sha256: hex::encode(Sha256::digest(b"s3cret")),
                scopes: vec![Scope::Read],
                tenant: Some("acme".into()),
            }],
            certificates: vec![],
        };
        let server = ServerConfig { rate_limit_per_second: rate, rate_limit_burst: 2, ..Default::default() };
        Authenticator::new(&auth, &server).unwrap()
    }

    fn with_header(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("authorization", v.parse().unwrap());
        r
    }

    #[test]
    fn a_known_token_becomes_its_caller() {
        let a = authenticator(0);
        let c = a.authenticate(&with_header("Bearer s3cret")).unwrap();
        assert_eq!(c.name, "support");
        assert!(c.require(Scope::Read).is_ok());
        assert!(c.require(Scope::Delete).is_err());
        assert!(c.require_tenant("acme").is_ok());
        assert!(c.require_tenant("globex").is_err());
    }

    #[test]
    fn unknown_missing_and_malformed_credentials_are_unauthenticated() {
        let a = authenticator(0);
        for r in [
            with_header("Bearer nope"),
            with_header("Basic s3cret"),
            with_header("Bearer "),
            Request::new(()),
        ] {
            let err = a.authenticate(&r).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(!err.message().contains("s3cret"));
        }
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_answers_with_a_retry_hint() {
        let a = authenticator(1);
        let c = a.authenticate(&with_header("Bearer s3cret")).unwrap();
        assert!(a.check_rate(&c).is_ok() && a.check_rate(&c).is_ok());
        let err = a.check_rate(&c).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.metadata().get("retry-after-ms").is_some());
    }
}
