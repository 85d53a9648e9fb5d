//! The store catalog: stores described in the configuration file, not coded. An entry names a
//! SQL table, its key and tenant columns, which columns hold which identifiers, the column that
//! links it to another store's key, what erasure does, and how its records age. One generic
//! adapter (`stores::catalog::CatalogStore`) runs every entry: deletion, export, rectification,
//! preview, retention and the start-time schema check.
//!
//! ```toml
//! [[catalog]]
//! name = "agent_notes"                  # the store's name in outcomes
//! table = "agent_notes"                 # may be schema-qualified: crm.agent_notes
//! key = "id"                            # default "id"
//! tenant = "tenant_id"                  # default "tenant_id"
//! database_url_env = "NOTES_DATABASE_URL"   # or database_url_file; default: the service's database
//! identifiers = [{ column = "caller_phone", holds = "phone" }]
//! link = { column = "call_id", store = "call_logs" }
//! erasure = "delete"                    # or "blank" with blank = ["note", …]
//! time_column = "created_at"
//! time_format = "epoch_ms"              # epoch_ms | epoch_s | iso8601
//! retention_days = 90
//! ```
pub mod remote;

use std::path::PathBuf;

use serde::Deserialize;

use crate::resolve::IdentKind;

/// One store of the catalog.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    pub table: String,
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// An environment variable holding the store's database URL (a Kubernetes Secret), never
    /// the URL itself in a ConfigMap.
    pub database_url_env: Option<String>,
    /// A file holding the store's database URL (a mounted Secret).
    pub database_url_file: Option<PathBuf>,
    #[serde(default)]
    pub identifiers: Vec<IdentifierColumn>,
    pub link: Option<Link>,
    #[serde(default)]
    pub erasure: ErasureMode,
    /// The columns a `blank` erasure sets to NULL.
    #[serde(default)]
    pub blank: Vec<String>,
    /// What a record weighs in a preview, as a column (bytes).
    pub bytes_column: Option<String>,
    pub time_column: Option<String>,
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Records older than this are erased by the retention sweep (needs `time_column`).
    pub retention_days: Option<u32>,
    /// Stores of a later stage run once every earlier one has succeeded.
    #[serde(default)]
    pub stage: u8,
    /// Whether an export includes the store's records (default: yes).
    #[serde(default = "yes")]
    pub export: bool,
    /// The export manifest's words on how long the store keeps data (Art. 15(1)(d)).
    pub retention_notice: Option<String>,
}

fn default_key() -> String {
    "id".into()
}
fn default_tenant() -> String {
    "tenant_id".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentifierColumn {
    pub column: String,
    pub holds: IdentKind,
}

/// `column` holds keys of `store`'s records.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub column: String,
    pub store: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErasureMode {
    /// The rows are deleted.
    #[default]
    Delete,
    /// The `blank` columns (and every identifier column) are set to NULL; the rows stay.
    Blank,
}

/// How a time column is stored.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    #[default]
    EpochMs,
    EpochS,
    /// ISO 8601 text in UTC (`2026-11-30T12:00:00Z`), which sorts as time does.
    Iso8601,
}

/// A plain SQL identifier: letters, digits and `_`, not starting with a digit.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl CatalogEntry {
    /// Checks the entry on its own and against the stores before it (`known`: their names).
    pub fn validate(&self, known: &[&str]) -> anyhow::Result<()> {
        let at = |what: &str| format!("catalog.{}.{what}", self.name);
        anyhow::ensure!(
            is_identifier(&self.name) && self.name.chars().all(|c| !c.is_ascii_uppercase()),
            "catalog: store name {:?} must be lower case letters, digits and _",
            self.name
        );
        anyhow::ensure!(
            !known.contains(&self.name.as_str()),
            "catalog.{}: a store of that name exists already",
            self.name
        );
        anyhow::ensure!(
            !self.table.is_empty()
                && self.table.split('.').all(is_identifier)
                && self.table.split('.').count() <= 2,
            "{}: {:?} is not a table name (name or schema.name)",
            at("table"),
            self.table
        );
        for (what, col) in [("key", &self.key), ("tenant", &self.tenant)] {
            anyhow::ensure!(is_identifier(col), "{}: {col:?} is not a column name", at(what));
        }
        for c in &self.identifiers {
            anyhow::ensure!(
                is_identifier(&c.column),
                "{}: {:?} is not a column name",
                at("identifiers"),
                c.column
            );
        }
        if let Some(l) = &self.link {
            anyhow::ensure!(
                is_identifier(&l.column),
                "{}: {:?} is not a column name",
                at("link.column"),
                l.column
            );
            anyhow::ensure!(
                known.contains(&l.store.as_str()),
                "{}: no store {:?} before this one (known: {})",
                at("link.store"),
                l.store,
                known.join(", ")
            );
        }
        anyhow::ensure!(
            !self.identifiers.is_empty() || self.link.is_some(),
            "catalog.{}: needs identifiers or a link, or no record could be found for a person",
            self.name
        );
        for c in self.blank.iter().chain(&self.bytes_column).chain(&self.time_column) {
            anyhow::ensure!(is_identifier(c), "catalog.{}: {c:?} is not a column name", self.name);
        }
        if self.erasure == ErasureMode::Blank {
            anyhow::ensure!(
                !self.blank.is_empty(),
                "{}: erasure = \"blank\" needs the columns to blank",
                at("blank")
            );
        }
        if self.retention_days.is_some() {
            anyhow::ensure!(
                self.time_column.is_some(),
                "{}: retention_days needs time_column",
                at("time_column")
            );
            anyhow::ensure!(self.retention_days != Some(0), "{}: at least 1", at("retention_days"));
        }
        anyhow::ensure!(
            !(self.database_url_env.is_some() && self.database_url_file.is_some()),
            "catalog.{}: database_url_env or database_url_file, not both",
            self.name
        );
        Ok(())
    }

    /// The store's database URL, when it is not the service's own: from the environment
    /// variable or the file the entry names.
    pub fn database_url(&self) -> anyhow::Result<Option<String>> {
        if let Some(var) = &self.database_url_env {
            let url = std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "catalog.{}.database_url_env: the environment variable {var} is not set",
                    self.name
                )
            })?;
            return Ok(Some(url));
        }
        if let Some(path) = &self.database_url_file {
            let url = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "catalog.{}.database_url_file: cannot read {}: {e}",
                    self.name,
                    path.display()
                )
            })?;
            return Ok(Some(url.trim().to_owned()));
        }
        Ok(None)
    }

    /// Whether the entry holds an identifier of this kind.
    pub fn holds(&self, kind: IdentKind) -> bool {
        self.identifiers.iter().any(|c| c.holds == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml: &str) -> anyhow::Result<CatalogEntry> {
        let e: CatalogEntry = toml::from_str(toml)?;
        e.validate(&["accounts", "call_logs"])?;
        Ok(e)
    }

    #[test]
    fn an_entry_reads_with_its_defaults() {
        let e = entry(
            "name = \"agent_notes\"\ntable = \"crm.agent_notes\"\nidentifiers = [{ column = \"caller_phone\", holds = \"phone\" }]\nlink = { column = \"call_id\", store = \"call_logs\" }\n",
        )
        .unwrap();
        assert_eq!(
            (e.key.as_str(), e.tenant.as_str(), e.erasure, e.export),
            ("id", "tenant_id", ErasureMode::Delete, true)
        );
        assert!(e.holds(IdentKind::Phone) && !e.holds(IdentKind::Email));
    }

    #[test]
    fn mistakes_are_named() {
        let bad = [
            ("name = \"Bad Name\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\n", "store name"),
            ("name = \"n\"\ntable = \"t; drop\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\n", "catalog.n.table"),
            ("name = \"n\"\ntable = \"t\"\n", "needs identifiers or a link"),
            ("name = \"n\"\ntable = \"t\"\nlink = { column = \"c\", store = \"nowhere\" }\n", "catalog.n.link.store"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nerasure = \"blank\"\n", "catalog.n.blank"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nretention_days = 9\n", "catalog.n.time_column"),
            ("name = \"accounts\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\n", "exists already"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"fax\" }]\n", "unknown variant"),
        ];
        for (toml, want) in bad {
            let err = format!("{:#}", entry(toml).unwrap_err());
            assert!(err.contains(want), "{toml}: {err}");
        }
    }
}
