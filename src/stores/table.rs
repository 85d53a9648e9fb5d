//! A SQL table of subject records, described by its columns: what each identifier column holds,
//! which column links to another store's key, what a record weighs. Every subject-facing query
//! of the SQL adapters is built here from that description:
//!
//! - `candidates`: one index lookup per part of a `Probe` (account ids, emails by their compared
//!   form, phones by their digits, links, keys), each scoped to the tenant, in chunks;
//! - `delete`, `export`, `set_column`: by key, after the resolution has decided whose a row is.
//!
//! Identifiers are bound, never spliced into SQL; table and column names come from a validated
//! catalog. Columns are taken as they are: on Postgres a key, tenant or identifier column of
//! another type than text (uuid, bigint) is compared with its bound text cast to that type, and
//! read back as text; an export reads such columns (timestamps, json, …) as text. The types are
//! read from the live schema by `check`, which every start runs.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, OnceLock},
};

use futures::TryStreamExt;
use sqlx::{any::AnyRow, Row};

use super::{export::row_json, ExportSink, Probe, StoreResult};
use crate::{
    db::{Backend, Db},
    domain::Corrections,
    resolve::{names_person, normalize, CandidateRow, IdentKind, Person},
};

/// Values bound per statement: well under SQLite's 32766 and Postgres' 65535 parameters.
const CHUNK: usize = 500;

/// What one exported row becomes.
pub enum Exported {
    Record(super::Record),
    File(super::ExportFile),
}

#[derive(Debug, Clone)]
pub struct SubjectTable {
    pub db: Db,
    pub table: String,
    /// The primary key (TEXT).
    pub key: String,
    /// The tenant column: every statement is scoped by it.
    pub tenant: String,
    /// Identifier columns and what each holds.
    pub identifiers: Vec<(String, IdentKind)>,
    /// The column holding another store's key (`call_id`).
    pub link: Option<String>,
    /// What a record weighs, as a SQL expression (`LENGTH(text)`, `bytes`).
    pub bytes: Option<String>,
    /// The column holding an object key, for object-backed stores.
    pub object: Option<String>,
    /// A SQL condition that is true once the erasure has been applied to a row that stays
    /// (personal columns blanked; restricted).
    pub cleared: Option<String>,
    /// The live table's columns and their types (Postgres `udt_name`), in table order, once
    /// `check` has read them.
    pub columns: Arc<OnceLock<Vec<(String, String)>>>,
}

impl SubjectTable {
    fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The type of a column that is not text, on Postgres (`uuid`, `int8`, …).
    fn non_text_type(&self, column: &str) -> Option<&str> {
        if self.backend() != Backend::Postgres {
            return None;
        }
        let (_, ty) = self.columns.get()?.iter().find(|(c, _)| c == column)?;
        (!matches!(ty.as_str(), "text" | "varchar" | "bpchar" | "name" | "citext")).then_some(ty.as_str())
    }

    /// Parameter `$n` as a value of `column`: cast from its bound text where the column is not
    /// text, so the comparison uses the column's own index.
    pub fn param(&self, column: &str, n: usize) -> String {
        match self.non_text_type(column) {
            Some(ty) => format!("CAST(${n} AS {ty})"),
            None => format!("${n}"),
        }
    }

    /// `$first, …` for `n` values of `column`.
    pub fn params(&self, column: &str, first: usize, n: usize) -> String {
        (first..first + n).map(|i| self.param(column, i)).collect::<Vec<_>>().join(", ")
    }

    /// `column` as text, for reading (a uuid or bigint key is compared as the text it prints).
    pub fn text(&self, column: &str) -> String {
        match self.non_text_type(column) {
            Some(_) => format!("CAST({column} AS TEXT)"),
            None => column.to_owned(),
        }
    }

    /// `<tenant> = $1 AND <key> IN ($first, …)`: the tenant's rows with `n` keys.
    pub fn by_keys(&self, first: usize, n: usize) -> String {
        format!(
            "{} = {} AND {} IN ({})",
            self.tenant,
            self.param(&self.tenant, 1),
            self.key,
            self.params(&self.key, first, n)
        )
    }

    /// `<tenant> = $1`.
    pub fn in_tenant(&self) -> String {
        format!("{} = {}", self.tenant, self.param(&self.tenant, 1))
    }

    /// Every column of the table for an export, those of types the driver does not read as text
    /// (`*` until `check` has read the columns).
    fn export_list(&self) -> String {
        let Some(cols) = self.columns.get().filter(|c| !c.is_empty()) else { return "*".to_owned() };
        cols.iter()
            .map(|(c, ty)| {
                let q = format!("\"{}\"", c.replace('"', "\"\""));
                let plain = self.backend() == Backend::Sqlite
                    || matches!(
                        ty.as_str(),
                        "text"
                            | "varchar"
                            | "bpchar"
                            | "name"
                            | "bool"
                            | "int2"
                            | "int4"
                            | "int8"
                            | "float4"
                            | "float8"
                            | "bytea"
                    );
                if plain {
                    q
                } else {
                    format!("CAST({q} AS TEXT) AS {q}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn select_list(&self) -> String {
        let mut cols = vec![format!("{} AS k", self.text(&self.key))];
        for (i, (col, _)) in self.identifiers.iter().enumerate() {
            cols.push(format!("{} AS i{i}", self.text(col)));
        }
        cols.push(self.link.as_deref().map_or_else(|| "NULL".to_owned(), |l| self.text(l)) + " AS l");
        cols.push(format!("CAST(COALESCE({}, 0) AS BIGINT) AS b", self.bytes.as_deref().unwrap_or("0")));
        cols.push(self.object.clone().unwrap_or_else(|| "NULL".to_owned()) + " AS o");
        cols.push(format!("CASE WHEN {} THEN 1 ELSE 0 END AS c", self.cleared.as_deref().unwrap_or("1 = 0")));
        cols.join(", ")
    }

    fn row(&self, row: &AnyRow) -> sqlx::Result<CandidateRow> {
        let mut identifiers = Vec::with_capacity(self.identifiers.len());
        for (i, (_, kind)) in self.identifiers.iter().enumerate() {
            identifiers.push((*kind, row.try_get::<Option<String>, _>(format!("i{i}").as_str())?));
        }
        Ok(CandidateRow {
            key: row.try_get("k")?,
            identifiers,
            link: row.try_get("l")?,
            bytes: row.try_get::<i64, _>("b")?.max(0) as u64,
            object: row.try_get("o")?,
            cleared: row.try_get::<i64, _>("c")? != 0,
        })
    }

    /// The conditions (one SQL expression over the row, and its values) a probe asks for.
    /// Each lookup: the SQL expression compared, the column whose type its values take
    /// (`None`: text), and the values.
    fn lookups(&self, probe: &Probe<'_>) -> Vec<(String, Option<String>, Vec<String>)> {
        let mut out = Vec::new();
        for (col, kind) in &self.identifiers {
            match kind {
                IdentKind::AccountId if !probe.account_ids.is_empty() => {
                    out.push((col.to_string(), Some(col.clone()), probe.account_ids.clone()))
                }
                IdentKind::Email if !probe.emails.is_empty() => {
                    out.push((normalize::email_key(self.backend(), col), None, probe.emails.clone()))
                }
                IdentKind::Phone if !probe.phones.is_empty() => {
                    let forms = probe.phones.iter().flat_map(|p| normalize::phone_digit_forms(p)).collect();
                    out.push((normalize::phone_digits(col), None, forms))
                }
                _ => {}
            }
        }
        if let (Some(link), false) = (&self.link, probe.links.is_empty()) {
            out.push((link.clone(), Some(link.clone()), probe.links.clone()));
        }
        if !probe.keys.is_empty() {
            out.push((self.key.clone(), Some(self.key.clone()), probe.keys.clone()));
        }
        out
    }

    /// Rows of the tenant found by any part of the probe, once each, in key order. Each part is
    /// its own statement (an index lookup on `(tenant_id, <expression>)`): SQLite does not use
    /// an index for `tenant AND (a OR b)`.
    pub async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        let mut found: BTreeMap<String, CandidateRow> = BTreeMap::new();
        let select = self.select_list();
        for (expr, typed_as, values) in self.lookups(probe) {
            // A value that cannot be of the column's type (text for a uuid key) names no row.
            let values: Vec<String> = match typed_as.as_deref().and_then(|c| self.non_text_type(c)) {
                Some(ty) => values.into_iter().filter(|v| fits(ty, v)).collect(),
                None => values,
            };
            for chunk in values.chunks(CHUNK) {
                let list = match &typed_as {
                    Some(col) => self.params(col, 2, chunk.len()),
                    None => super::sql::params(2, chunk.len()),
                };
                let sql = format!(
                    "SELECT {select} FROM {} WHERE {} AND {expr} IN ({list})",
                    self.table,
                    self.in_tenant()
                );
                let q = chunk.iter().fold(sqlx::query(&sql).bind(probe.tenant), |q, v| q.bind(v.as_str()));
                let rows = q.fetch_all(self.db.pool()).await?;
                for row in &rows {
                    let r = self.row(row)?;
                    found.entry(r.key.clone()).or_insert(r);
                }
            }
        }
        Ok(found.into_values().collect())
    }

    /// Deletes the tenant's rows with these keys; returns how many there were.
    pub async fn delete(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in keys.chunks(CHUNK) {
            let sql = format!("DELETE FROM {} WHERE {}", self.table, self.by_keys(2, chunk.len()));
            let q = chunk.iter().fold(sqlx::query(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
            n += q.execute(self.db.pool()).await?.rows_affected();
        }
        Ok(n)
    }

    /// Streams the rows with these keys (`extra`: a further condition) into `sink` as JSON
    /// objects, in key order; returns how many.
    pub async fn export(
        &self,
        tenant: &str,
        keys: &[String],
        extra: &str,
        sink: &mut dyn ExportSink,
    ) -> StoreResult<u64> {
        let order = self.key.clone();
        self.export_with(tenant, keys, extra, &order, sink, &|row| Ok(Exported::Record(row_json(row)?))).await
    }

    /// The rows with these keys (`extra`: a further condition), in `order`, each made a record or
    /// a file by `item`, into `sink`; returns how many.
    pub async fn export_with(
        &self,
        tenant: &str,
        keys: &[String],
        extra: &str,
        order: &str,
        sink: &mut dyn ExportSink,
        item: &(dyn Fn(&AnyRow) -> StoreResult<Exported> + Sync),
    ) -> StoreResult<u64> {
        let mut n = 0;
        let mut keys = keys.to_vec();
        keys.sort();
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {}{extra} ORDER BY {order}",
                self.export_list(),
                self.table,
                self.by_keys(2, chunk.len()),
            );
            let q = chunk.iter().fold(sqlx::query(&sql).bind(tenant), |q, v| q.bind(v.as_str()));
            let mut rows = q.fetch(self.db.pool());
            while let Some(row) = rows.try_next().await? {
                match item(&row)? {
                    Exported::Record(r) => sink.record(r).await?,
                    Exported::File(f) => sink.file(f).await?,
                }
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sets `column` to `value` on the tenant's rows with these keys that do not hold it yet;
    /// returns how many changed (a second call changes none).
    pub async fn set_column(
        &self,
        tenant: &str,
        keys: &[String],
        column: &str,
        value: &str,
    ) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in keys.chunks(CHUNK) {
            let sql = format!(
                "UPDATE {} SET {column} = $2 WHERE {} AND ({column} IS NULL OR {column} <> $2)",
                self.table,
                self.by_keys(3, chunk.len()),
            );
            let q = chunk.iter().fold(sqlx::query(&sql).bind(tenant).bind(value), |q, v| q.bind(v.as_str()));
            n += q.execute(self.db.pool()).await?.rows_affected();
        }
        Ok(n)
    }
}

impl SubjectTable {
    /// The corrected identifier columns of the person's rows: every email or phone column of a
    /// corrected kind whose value names the person gets the new value. Returns (rows that held
    /// an old value, rows rewritten).
    pub async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
    ) -> StoreResult<(u64, u64)> {
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        let mut affected = 0;
        for (i, (col, kind)) in self.identifiers.iter().enumerate() {
            let Some(new) = corrected(corrections, *kind) else { continue };
            let keys: Vec<String> = mine
                .iter()
                .filter(|r| holds_old_value(person, r, i, *kind, new))
                .map(|r| r.key.clone())
                .collect();
            touched.extend(mine.iter().filter(|r| keys.contains(&r.key)).map(|r| r.key.as_str()));
            affected += self.set_column(&person.tenant, &keys, col, new).await?;
        }
        Ok((touched.len() as u64, affected))
    }

    /// `true` when none of these rows still holds an old value of a corrected identifier.
    pub async fn rectified(
        &self,
        person: &Person,
        keys: &[String],
        corrections: &Corrections,
    ) -> StoreResult<bool> {
        let rows = self
            .candidates(&Probe { tenant: &person.tenant, keys: keys.to_vec(), ..Default::default() })
            .await?;
        Ok(!rows.iter().any(|r| {
            self.identifiers.iter().enumerate().any(|(i, (_, kind))| {
                corrected(corrections, *kind).is_some_and(|new| holds_old_value(person, r, i, *kind, new))
            })
        }))
    }
}

/// Whether `value` can be a value of a Postgres column of type `ty` (a name that is no uuid
/// cannot be a uuid key: comparing it would fail the whole statement).
fn fits(ty: &str, value: &str) -> bool {
    match ty {
        "uuid" => uuid::Uuid::parse_str(value).is_ok(),
        "int2" => value.parse::<i16>().is_ok(),
        "int4" => value.parse::<i32>().is_ok(),
        "int8" => value.parse::<i64>().is_ok(),
        _ => true,
    }
}

/// The new value of a corrected identifier kind.
fn corrected(c: &Corrections, kind: IdentKind) -> Option<&str> {
    match kind {
        IdentKind::Email => c.email.as_ref().map(|e| e.as_str()),
        IdentKind::Phone => c.phone.as_ref().map(|p| p.as_str()),
        IdentKind::AccountId => None,
    }
}

/// Whether identifier `i` of the row names the person by a value other than `new`.
fn holds_old_value(person: &Person, row: &CandidateRow, i: usize, kind: IdentKind, new: &str) -> bool {
    let Some((_, Some(value))) = row.identifiers.get(i) else { return false };
    if !names_person(person, kind, value) {
        return false;
    }
    let now = match kind {
        IdentKind::Email => normalize::email(value),
        IdentKind::Phone => normalize::phone(value, person.region()),
        IdentKind::AccountId => None,
    };
    now.as_deref() != Some(new) || value != new
}

impl SubjectTable {
    /// What is wrong with the live table, against what the adapter uses: the table itself, each
    /// column (`extra`: columns beyond the key, identifiers, link, object), and a unique index
    /// on the key. Empty when it fits.
    pub async fn check(&self, extra: &[&str]) -> Vec<String> {
        let probe =
            |sql: String| async move { sqlx::query(&sql).fetch_optional(self.db.pool()).await.map(drop) };
        if let Err(e) = probe(format!("SELECT 1 FROM {} WHERE 1 = 0", self.table)).await {
            return vec![format!("table {} cannot be read: {}", self.table, schema_error(&e))];
        }
        let mut columns: Vec<&str> = vec![&self.key, &self.tenant];
        columns.extend(self.identifiers.iter().map(|(c, _)| c.as_str()));
        columns.extend(self.link.as_deref());
        columns.extend(self.object.as_deref());
        columns.extend(extra.iter().copied());
        let mut seen = BTreeSet::new();
        columns.retain(|c| seen.insert(*c));
        let mut problems = Vec::new();
        for col in columns {
            if let Err(e) = probe(format!("SELECT {col} FROM {} WHERE 1 = 0", self.table)).await {
                problems.push(format!(
                    "table {}: column {col:?} is missing ({})",
                    self.table,
                    schema_error(&e)
                ));
            }
        }
        if problems.is_empty() {
            match self.read_columns().await {
                Ok(cols) => {
                    let _ = self.columns.set(cols);
                }
                Err(e) => problems.push(format!(
                    "table {}: could not read its column types ({})",
                    self.table,
                    schema_error(&e)
                )),
            }
            for col in [&self.key, &self.tenant].into_iter().chain(self.link.as_ref()) {
                if let Some(ty) = self.non_text_type(col) {
                    if !matches!(ty, "uuid" | "int2" | "int4" | "int8") {
                        problems.push(format!(
                            "table {}: column {col:?} is of type {ty}; keys, tenants and links may be text, uuid or integers",
                            self.table
                        ));
                    }
                }
            }
            for (col, kind) in &self.identifiers {
                if *kind != IdentKind::AccountId && self.non_text_type(col).is_some() {
                    problems.push(format!(
                        "table {}: column {col:?} holds {kind:?} values but is not text",
                        self.table
                    ));
                }
            }
            match self.key_is_unique().await {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "table {}: the key column {:?} has no unique index or primary key; a record could not be named by its key",
                    self.table, self.key
                )),
                Err(e) => problems.push(format!("table {}: could not read its indexes ({})", self.table, schema_error(&e))),
            }
        }
        problems
    }

    /// The table's columns and their types, in table order (Postgres type names; SQLite's
    /// declared types, lower case).
    async fn read_columns(&self) -> sqlx::Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = match self.backend() {
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT CAST(a.attname AS TEXT), CAST(t.typname AS TEXT) FROM pg_attribute a \
                     JOIN pg_type t ON t.oid = a.atttypid \
                     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                )
                .bind(&self.table)
                .fetch_all(self.db.pool())
                .await?
            }
            Backend::Sqlite => {
                let sql = format!("SELECT name, lower(type) FROM pragma_table_info('{}') ORDER BY cid", self.table);
                sqlx::query_as(&sql).fetch_all(self.db.pool()).await?
            }
        };
        Ok(rows)
    }

    /// A column's type as `check` read it (Postgres type names, SQLite declared types).
    pub fn column_type(&self, column: &str) -> Option<&str> {
        self.columns.get()?.iter().find(|(c, _)| c == column).map(|(_, t)| t.as_str())
    }

    /// Whether a primary key or unique index covers exactly the key column.
    async fn key_is_unique(&self) -> sqlx::Result<bool> {
        match self.backend() {
            Backend::Postgres => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                     WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1 AND a.attname = $2",
                )
                .bind(&self.table)
                .bind(&self.key)
                .fetch_one(self.db.pool())
                .await?;
                Ok(n > 0)
            }
            Backend::Sqlite => {
                let sql = format!(
                    "SELECT COUNT(*) FROM pragma_index_list('{t}') l \
                     WHERE l.\"unique\" = 1 AND (SELECT COUNT(*) FROM pragma_index_info(l.name)) = 1 \
                     AND (SELECT name FROM pragma_index_info(l.name)) = $1",
                    t = self.table
                );
                let n: i64 = sqlx::query_scalar(&sql).bind(&self.key).fetch_one(self.db.pool()).await?;
                Ok(n > 0)
            }
        }
    }
}

/// A database's own words for a schema problem (table and column names, never values).
fn schema_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}
