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

/// The default catalog shipped with dsr: the reference schema's stores (`config/catalog.toml`).
const DEFAULT_CATALOG: &str = include_str!("../../config/catalog.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    catalog: Vec<CatalogEntry>,
}

/// The default catalog's entries, in store order (parsed once).
pub fn default_entries() -> &'static [CatalogEntry] {
    static ENTRIES: std::sync::OnceLock<Vec<CatalogEntry>> = std::sync::OnceLock::new();
    ENTRIES.get_or_init(|| {
        toml::from_str::<CatalogFile>(DEFAULT_CATALOG)
            .expect("config/catalog.toml is a valid catalog")
            .catalog
    })
}

/// Whether `name` is a store of the default catalog.
pub fn is_default(name: &str) -> bool {
    default_entries().iter().any(|d| d.name == name)
}

/// The catalog a service runs: the default entries (each replaced by the file's entry of the same
/// name, with `table` renamed where `[stores.<name>] table` says so), unless `keep_defaults` is
/// off; then the file's other entries, in their order.
pub fn effective(
    file: &[CatalogEntry],
    keep_defaults: bool,
    renamed: impl Fn(&str) -> Option<String>,
) -> Vec<CatalogEntry> {
    let mut out = Vec::new();
    for d in default_entries() {
        let mut d = d.clone();
        if let Some(own) = file.iter().find(|e| e.name == d.name) {
            out.push(own.clone());
        } else if keep_defaults {
            if let Some(t) = renamed(&d.name) {
                d.table = t;
            }
            out.push(d);
        }
    }
    out.extend(file.iter().filter(|e| !is_default(&e.name)).cloned());
    out
}

/// One store of the catalog.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    /// `sql` (a table, optionally indexing objects in an object store: `objects`). Remote
    /// services are a kind of their own.
    #[serde(default)]
    pub kind: StoreKind,
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
    /// The platform's accounts: the key is the account id, and the rows say who holds an email
    /// or a phone. At most one store is the identity store.
    #[serde(default)]
    pub identity: bool,
    #[serde(default)]
    pub identifiers: Vec<IdentifierColumn>,
    /// The person's name (corrected by a rectification of the name; blanked on erasure).
    pub name_column: Option<String>,
    pub link: Option<Link>,
    #[serde(default)]
    pub erasure: ErasureMode,
    /// The columns a `blank` erasure sets to NULL (besides every identifier column but the key).
    #[serde(default)]
    pub blank: Vec<String>,
    /// `blank`: a time column set when a row is blanked (kept when already set), in
    /// `time_format` (accounts: `terminated_at`).
    pub erased_at_column: Option<String>,
    /// `blank`: a row is only blanked, and kept, while a record of this store references its
    /// key; otherwise it is deleted. The store must be in the same database.
    pub kept_while_referenced_by: Option<Reference>,
    /// `retain`: the legal obligation the rows are kept under.
    pub retain: Option<Retain>,
    /// Rows that index objects in an object store (recordings).
    pub objects: Option<Objects>,
    /// What a record weighs in a preview, as a column (bytes).
    pub bytes_column: Option<String>,
    /// What a record weighs in a preview, as the length of a text column.
    pub size_of: Option<String>,
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

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Sql,
}

/// `column` of `store` holds this store's keys.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub store: String,
    pub column: String,
}

/// Rows kept under a legal obligation for `years` from their `time_column`, restricted from
/// any other use meanwhile.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retain {
    /// Stated on every outcome that keeps data (`legal_obligation: …`).
    pub basis: String,
    pub years: u32,
    /// A time column set when a row is restricted (kept when already set). Without one, dsr
    /// keeps the restriction in its own ledger.
    pub restriction_column: Option<String>,
}

/// Where the objects a store's rows index live.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Objects {
    /// The column holding each row's object key, exactly as the object store names it.
    pub column: String,
    /// An environment variable holding the object store URL (default: `[recordings] url`).
    pub url_env: Option<String>,
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
    /// The `blank` columns (and every identifier column but the key) are set to NULL; the
    /// rows stay.
    Blank,
    /// The rows stay under a legal obligation (`retain`), restricted.
    Retain,
}

/// How a time column is stored.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    #[default]
    EpochMs,
    EpochS,
    /// A native timestamp column (`timestamptz`, `timestamp`; text on SQLite).
    Timestamp,
    /// ISO 8601 text in UTC (`2026-11-30T12:00:00Z`), which sorts as time does.
    Iso8601,
}

impl TimeFormat {
    /// Its name in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeFormat::EpochMs => "epoch_ms",
            TimeFormat::EpochS => "epoch_s",
            TimeFormat::Timestamp => "timestamp",
            TimeFormat::Iso8601 => "iso8601",
        }
    }
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
        let columns = self
            .blank
            .iter()
            .chain(&self.bytes_column)
            .chain(&self.size_of)
            .chain(&self.time_column)
            .chain(&self.name_column)
            .chain(&self.erased_at_column)
            .chain(self.kept_while_referenced_by.as_ref().map(|r| &r.column))
            .chain(self.retain.as_ref().and_then(|r| r.restriction_column.as_ref()))
            .chain(self.objects.as_ref().map(|o| &o.column));
        for c in columns {
            anyhow::ensure!(is_identifier(c), "catalog.{}: {c:?} is not a column name", self.name);
        }
        anyhow::ensure!(
            !(self.bytes_column.is_some() && self.size_of.is_some()),
            "catalog.{}: bytes_column or size_of, not both",
            self.name
        );
        let blanks_something = !self.blank.is_empty()
            || self.name_column.is_some()
            || self.identifiers.iter().any(|c| c.column != self.key);
        match self.erasure {
            ErasureMode::Blank => anyhow::ensure!(
                blanks_something,
                "{}: erasure = \"blank\" needs the columns to blank",
                at("blank")
            ),
            ErasureMode::Retain => {
                anyhow::ensure!(
                    self.retain.is_some(),
                    "{}: erasure = \"retain\" needs retain = {{ basis, years }}",
                    at("retain")
                );
                anyhow::ensure!(
                    self.time_column.is_some(),
                    "{}: erasure = \"retain\" keeps rows for years from their time_column",
                    at("time_column")
                );
            }
            ErasureMode::Delete => {}
        }
        if let Some(r) = &self.retain {
            anyhow::ensure!(
                self.erasure == ErasureMode::Retain,
                "{}: only with erasure = \"retain\"",
                at("retain")
            );
            anyhow::ensure!(r.years >= 1, "{}: at least 1", at("retain.years"));
            anyhow::ensure!(
                // A year has 365 days and, every fourth, one more.
                self.retention_days
                    .is_none_or(|d| u64::from(d) >= u64::from(r.years) * 365 + u64::from(r.years).div_ceil(4)),
                "{}: shorter than the legal obligation (retain.years = {})",
                at("retention_days"),
                r.years
            );
            anyhow::ensure!(
                r.basis.starts_with("legal_obligation") && r.basis.len() <= 500,
                "{}: must start with \"legal_obligation\" (at most 500 characters)",
                at("retain.basis")
            );
        }
        for (what, set) in [
            ("erased_at_column", self.erased_at_column.is_some()),
            ("kept_while_referenced_by", self.kept_while_referenced_by.is_some()),
        ] {
            anyhow::ensure!(
                !set || self.erasure == ErasureMode::Blank,
                "{}: only with erasure = \"blank\"",
                at(what)
            );
        }
        if self.identity {
            anyhow::ensure!(
                self.link.is_none() && self.objects.is_none(),
                "catalog.{}: the identity store (accounts) has no link and no objects",
                self.name
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

    /// Checks what may name any store of the catalog (`all`: every store's name).
    pub fn validate_references(&self, all: &[&str]) -> anyhow::Result<()> {
        if let Some(r) = &self.kept_while_referenced_by {
            anyhow::ensure!(
                all.contains(&r.store.as_str()) && r.store != self.name,
                "catalog.{}.kept_while_referenced_by.store: no other store {:?} (known: {})",
                self.name,
                r.store,
                all.join(", ")
            );
        }
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
    fn the_default_catalog_describes_the_reference_stores() {
        let all = default_entries();
        let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["accounts", "call_logs", "transcripts", "recordings", "billing"]);
        let mut known: Vec<&str> = Vec::new();
        for e in all {
            e.validate(&known).unwrap();
            known.push(&e.name);
        }
        for e in all {
            e.validate_references(&known).unwrap();
        }
        // A file entry of a default store's name replaces it; others follow the defaults.
        let own = entry("name = \"agent_notes\"\ntable = \"notes\"\nlink = { column = \"call_id\", store = \"call_logs\" }\n").unwrap();
        let mut accounts = all[0].clone();
        accounts.table = "crm.people".into();
        let merged = effective(&[own.clone(), accounts.clone()], true, |_| None);
        assert_eq!(merged.len(), 6);
        assert_eq!(merged[0], accounts);
        assert_eq!(merged[5], own);
        let only = effective(std::slice::from_ref(&own), false, |_| None);
        assert_eq!(only, vec![own]);
        let renamed = effective(&[], true, |n| (n == "billing").then(|| "ledger.bills".to_owned()));
        assert_eq!(renamed[4].table, "ledger.bills");
    }

    #[test]
    fn mistakes_are_named() {
        let bad = [
            ("name = \"Bad Name\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\n", "store name"),
            ("name = \"n\"\ntable = \"t; drop\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\n", "catalog.n.table"),
            ("name = \"n\"\ntable = \"t\"\n", "needs identifiers or a link"),
            ("name = \"n\"\ntable = \"t\"\nlink = { column = \"c\", store = \"nowhere\" }\n", "catalog.n.link.store"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"id\", holds = \"account_id\" }]\nerasure = \"blank\"\n", "catalog.n.blank"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nerasure = \"retain\"\n", "catalog.n.retain"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nerasure = \"retain\"\ntime_column = \"t\"\nretention_days = 365\nretain = { basis = \"legal_obligation: tax\", years = 7 }\n", "catalog.n.retention_days"),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nkept_while_referenced_by = { store = \"call_logs\", column = \"x\" }\n", "only with erasure = \"blank\""),
            ("name = \"n\"\ntable = \"t\"\nidentifiers = [{ column = \"c\", holds = \"phone\" }]\nerasure = \"retain\"\ntime_column = \"t\"\nretain = { basis = \"because\", years = 7 }\n", "catalog.n.retain.basis"),
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
