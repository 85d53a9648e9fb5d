//! Catalog entries of kind `grpc`: a store that is another team's service implementing
//! `dsr.adapter.v1.StoreAdapter` (`crate::adapter`), reached over gRPC by `stores::remote`.
//!
//! ```toml
//! [[catalog]]
//! kind = "grpc"
//! name = "voicemail"
//! url = "https://voicemail.internal:50070"
//! token_env = "VOICEMAIL_ADAPTER_TOKEN"   # or token_file = "/run/secrets/voicemail-token"
//! tls = { ca_file = "ca.pem", cert_file = "dsr.pem", key_file = "dsr.key" }   # mTLS, optional
//! timeout_ms = 10000                      # per call
//! connect_timeout_ms = 2000
//! concurrency = 4                         # tasks (and calls) at once
//! requests = ["deletion", "export", "rectification"]
//! holds = ["phone", "email"]              # what a rectification may concern
//! stage = 0
//! link_store = "call_logs"                # optional: its records link to call ids
//! ```
use std::path::PathBuf;

use serde::Deserialize;

use crate::{domain::RequestKind, resolve::IdentKind};

/// One remote store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteEntry {
    /// Always `grpc`: the tag that made this a remote entry.
    pub kind: String,
    pub name: String,
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// An environment variable holding the bearer token (a Kubernetes Secret): a token is never
    /// written in the configuration itself.
    pub token_env: Option<String>,
    /// A file holding the bearer token (a mounted Secret).
    pub token_file: Option<PathBuf>,
    pub tls: Option<RemoteTls>,
    /// The longest one call may take; past it the call is a transient failure (retried).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Calls in flight at once (and the store's tasks at once, unless `[stores.<name>]` says).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Which request kinds it takes part in (default: all three); in others it is SKIPPED.
    #[serde(default = "all_requests")]
    pub requests: Vec<RequestKindName>,
    /// Which identifiers its records hold: a rectification of none of them skips the store.
    #[serde(default = "all_kinds")]
    pub holds: Vec<IdentKind>,
    #[serde(default)]
    pub stage: u8,
    /// The store whose keys its records link to (their `link`), if any.
    pub link_store: Option<String>,
    /// The export manifest's words on how long the store keeps data.
    pub retention_notice: Option<String>,
    /// Records older than this are erased by the retention sweep, through `ListExpired` and
    /// `EraseKeys`, in every tenant the other stores hold.
    pub retention_days: Option<u32>,
}

/// Client certificate (mTLS) and the CA that signed the adapter's certificate.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the adapter's certificate carries, when not the URL's host.
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestKindName {
    Deletion,
    Export,
    Rectification,
}

impl RequestKindName {
    pub fn matches(self, kind: RequestKind) -> bool {
        matches!(
            (self, kind),
            (Self::Deletion, RequestKind::Deletion)
                | (Self::Export, RequestKind::Export)
                | (Self::Rectification, RequestKind::Rectification)
        )
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_concurrency() -> usize {
    4
}
fn all_requests() -> Vec<RequestKindName> {
    vec![RequestKindName::Deletion, RequestKindName::Export, RequestKindName::Rectification]
}
fn all_kinds() -> Vec<IdentKind> {
    vec![IdentKind::AccountId, IdentKind::Email, IdentKind::Phone]
}

impl RemoteEntry {
    /// Checks the entry on its own and against the stores before it (`known`: their names).
    pub fn validate(&self, known: &[&str]) -> anyhow::Result<()> {
        let at = |what: &str| format!("catalog.{}.{what}", self.name);
        anyhow::ensure!(self.kind == "grpc", "{}: {:?} is not a kind (sql or grpc)", at("kind"), self.kind);
        anyhow::ensure!(
            super::is_identifier(&self.name) && self.name.chars().all(|c| !c.is_ascii_uppercase()),
            "catalog: store name {:?} must be lower case letters, digits and _",
            self.name
        );
        anyhow::ensure!(
            !known.contains(&self.name.as_str()),
            "catalog.{}: a store of that name exists already",
            self.name
        );
        let url = url::Url::parse(&self.url)
            .map_err(|e| anyhow::anyhow!("{}: {:?} is not a URL: {e}", at("url"), self.url))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https") && url.host().is_some(),
            "{}: must be http://host:port or https://host:port",
            at("url")
        );
        anyhow::ensure!(
            !(self.token_env.is_some() && self.token_file.is_some()),
            "catalog.{}: token_env or token_file, not both",
            self.name
        );
        if let Some(t) = &self.tls {
            anyhow::ensure!(url.scheme() == "https", "{}: tls needs an https:// URL", at("tls"));
            anyhow::ensure!(
                t.cert_file.is_some() == t.key_file.is_some(),
                "{}: cert_file and key_file go together",
                at("tls")
            );
        }
        anyhow::ensure!(self.timeout_ms >= 1, "{}: at least 1", at("timeout_ms"));
        anyhow::ensure!(self.connect_timeout_ms >= 1, "{}: at least 1", at("connect_timeout_ms"));
        anyhow::ensure!(self.concurrency >= 1, "{}: at least 1", at("concurrency"));
        anyhow::ensure!(!self.requests.is_empty(), "{}: name at least one request kind", at("requests"));
        if let Some(l) = &self.link_store {
            anyhow::ensure!(
                known.contains(&l.as_str()),
                "{}: no store {l:?} before this one (known: {})",
                at("link_store"),
                known.join(", ")
            );
        }
        Ok(())
    }

    /// The bearer token, when the entry names one: from the environment variable or the file.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.token_env {
            let t = std::env::var(var).map_err(|_| {
                anyhow::anyhow!("catalog.{}.token_env: the environment variable {var} is not set", self.name)
            })?;
            return Ok(Some(t.trim().to_owned()));
        }
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("catalog.{}.token_file: cannot read {}: {e}", self.name, path.display())
            })?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(None)
    }

    /// Whether it takes part in requests of this kind.
    pub fn takes_part_in(&self, kind: RequestKind) -> bool {
        self.requests.iter().any(|r| r.matches(kind))
    }
}

/// Splits the `[[catalog]]` array of a parsed configuration: entries with `kind = "grpc"` are
/// taken out (and returned, parsed), the others stay for the SQL catalog (a `kind = "sql"` tag
/// is removed so the SQL entry's unknown-field check still holds).
pub fn take_remote_entries(doc: &mut toml::Table) -> anyhow::Result<Vec<RemoteEntry>> {
    let Some(toml::Value::Array(entries)) = doc.get_mut("catalog") else { return Ok(Vec::new()) };
    let mut remote = Vec::new();
    let mut sql = Vec::new();
    for (i, mut e) in std::mem::take(entries).into_iter().enumerate() {
        let kind = e.get("kind").map(|k| k.as_str().map(str::to_owned));
        match kind {
            None => sql.push(e),
            Some(Some(k)) if k == "sql" => {
                if let Some(t) = e.as_table_mut() {
                    t.remove("kind");
                }
                sql.push(e)
            }
            Some(Some(k)) if k == "grpc" => {
                let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_owned();
                let entry: RemoteEntry =
                    e.try_into().map_err(|err| anyhow::anyhow!("catalog.{name} (kind = \"grpc\"): {err}"))?;
                remote.push(entry);
            }
            Some(k) => anyhow::bail!(
                "catalog[{i}].kind: {:?} is not a kind of store (sql or grpc)",
                k.unwrap_or_default()
            ),
        }
    }
    *entries = sql;
    Ok(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<RemoteEntry>> {
        let mut doc: toml::Table = toml::from_str(text)?;
        let v = take_remote_entries(&mut doc)?;
        for e in &v {
            e.validate(&["accounts", "call_logs"])?;
        }
        Ok(v)
    }

    #[test]
    fn a_grpc_entry_reads_with_its_defaults() {
        let v = parse("[[catalog]]\nkind = \"grpc\"\nname = \"voicemail\"\nurl = \"http://127.0.0.1:9\"\n")
            .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].timeout_ms, v[0].concurrency, v[0].stage), (10_000, 4, 0));
        assert!(v[0].takes_part_in(RequestKind::Export));
    }

    #[test]
    fn sql_and_grpc_entries_share_the_catalog_and_a_remote_store_gets_its_limits() {
        let cfg = crate::config::FileConfig::from_toml(
            "[[catalog]]\nname = \"notes\"\ntable = \"notes\"\nidentifiers = [{ column = \"p\", holds = \"phone\" }]\n\n\
             [[catalog]]\nkind = \"sql\"\nname = \"memos\"\ntable = \"memos\"\nlink = { column = \"c\", store = \"call_logs\" }\n\n\
             [[catalog]]\nkind = \"grpc\"\nname = \"voicemail\"\nurl = \"http://127.0.0.1:9\"\ntimeout_ms = 2500\nconcurrency = 3\n",
        )
        .unwrap();
        let names: Vec<&str> = cfg.catalog.iter().map(|e| e.name.as_str()).collect();
        assert!(names.ends_with(&["notes", "memos"]), "{names:?}");
        assert_eq!(cfg.remote.len(), 1);
        assert!(cfg.store_names().contains(&"voicemail"));
        let limits = cfg.store("voicemail");
        assert_eq!((limits.concurrency, limits.timeout_secs), (3, 6));
        let err =
            format!("{:#}", crate::config::FileConfig::from_toml("[engine]\nworkrs = 2\n").unwrap_err());
        assert!(err.contains("workrs") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let bad = [
            ("kind = \"grpc\"\nname = \"v\"\nurl = \"nope\"\n", "catalog.v.url"),
            ("kind = \"grpc\"\nname = \"v\"\nurl = \"http://h:1\"\ntoken = \"secret\"\n", "unknown field `token`"),
            ("kind = \"grpc\"\nname = \"v\"\nurl = \"http://h:1\"\ntoken_env = \"A\"\ntoken_file = \"b\"\n", "not both"),
            ("kind = \"grpc\"\nname = \"v\"\nurl = \"http://h:1\"\ntimeout_ms = 0\n", "catalog.v.timeout_ms"),
            ("kind = \"grpc\"\nname = \"v\"\nurl = \"http://h:1\"\nrequests = [\"erase\"]\n", "unknown variant"),
            ("kind = \"ftp\"\nname = \"v\"\n", "catalog[0].kind"),
            ("kind = \"grpc\"\nname = \"accounts\"\nurl = \"http://h:1\"\n", "exists already"),
        ];
        for (entry, want) in bad {
            let err = format!("{:#}", parse(&format!("[[catalog]]\n{entry}")).unwrap_err());
            assert!(err.contains(want), "{entry}: {err}");
        }
    }
}
