//! A SQL table of subject records, described by its columns: what each identifier column holds,
//! which column links to another store's key, what a record weighs. Every subject-facing query
//! of the SQL adapters is built here from that description:
//!
//! - `candidates`: one index lookup per part of a `Probe` (account ids, emails by their compared
//!   form, phones by their digits, links, keys), each scoped to the tenant, sent together as one
//!   `UNION ALL` statement (in chunks of bound values); `candidates_into` streams them;
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
use sea_query::{Alias, Asterisk, Expr, ExprTrait, Func, Order, Query, SelectStatement, SimpleExpr};
use sqlx::{any::AnyRow, Row};

use super::{
    export::row_json,
    query::{self, Statement},
    CandidateSink, ExportSink, Probe, StoreResult,
};
use crate::{
    db::{Backend, Db},
    domain::Corrections,
    resolve::{names_person, normalize, CandidateRow, IdentKind, Person},
};

/// Values bound per statement: well under SQLite's 32766 and Postgres' 65535 parameters.
pub const CHUNK: usize = 500;

/// One chunk of one lookup of a probe: the expression compared, the condition that finds its
/// rows (`<expr> IN (…)`), the tenant condition that goes with it, and the values it binds.
struct LookupChunk {
    expr: SimpleExpr,
    found_by: SimpleExpr,
    tenant: SimpleExpr,
    values: usize,
}

/// One part of a probe: the expression compared (an identifier column, or the compared form of
/// an email or phone column), the column whose type its values take (`None`: text), and the
/// values (those that cannot be of that type left out). `part` tells the parts apart in a shape.
struct Lookup {
    part: u16,
    expr: SimpleExpr,
    typed_as: Option<String>,
    values: Vec<String>,
}

/// What one exported row becomes.
pub enum Exported {
    Record(super::Record),
    File(super::ExportFile),
}

#[derive(Debug, Clone)]
pub struct SubjectTable {
    pub db: Db,
    pub table: String,
    /// The primary key: text, uuid or an integer.
    pub key: String,
    /// The tenant column: every statement is scoped by it.
    pub tenant: String,
    /// Identifier columns and what each holds.
    pub identifiers: Vec<(String, IdentKind)>,
    /// The column holding another store's key (`call_id`).
    pub link: Option<String>,
    /// What a record weighs (`LENGTH(text)`, `bytes`).
    pub bytes: Option<SimpleExpr>,
    /// The column holding an object key, for object-backed stores.
    pub object: Option<String>,
    /// True once the erasure has been applied to a row that stays (personal columns blanked;
    /// restricted).
    pub cleared: Option<SimpleExpr>,
    /// The live table's columns and their types (Postgres type names), in table order, once
    /// `check` has read them.
    pub columns: Arc<OnceLock<Vec<(String, String)>>>,
    /// `candidates`' statements, written once per probe shape (`written`).
    pub written: Arc<super::written::Written>,
}

impl SubjectTable {
    pub fn backend(&self) -> Backend {
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

    /// `value` as a value of `column`: cast from its bound text where the column is not text, so
    /// the comparison uses the column's own index.
    pub fn value(&self, column: &str, value: &str) -> SimpleExpr {
        query::typed(value, self.non_text_type(column))
    }

    /// `column` as text, for reading (a uuid or bigint key reads as the text it prints).
    pub fn text(&self, column: &str) -> SimpleExpr {
        self.text_of(query::col(column).into(), column)
    }

    /// `expr` (of `column`'s type) as text.
    pub fn text_of(&self, expr: SimpleExpr, column: &str) -> SimpleExpr {
        match self.non_text_type(column) {
            Some(_) => expr.cast_as(Alias::new("TEXT")),
            None => expr,
        }
    }

    /// The tenant's rows.
    pub fn in_tenant(&self, tenant: &str) -> SimpleExpr {
        query::col(&self.tenant).eq(self.value(&self.tenant, tenant))
    }

    /// The tenant's rows with these keys.
    pub fn by_keys(&self, tenant: &str, keys: &[String]) -> SimpleExpr {
        self.in_tenant_by_key(tenant)
            .and(query::col(&self.key).is_in(keys.iter().map(|k| self.value(&self.key, k))))
    }

    /// The tenant condition of a look-up by key. On SQLite it is written `likely(tenant = ?)`,
    /// which tells the planner the condition holds for most rows: without statistics SQLite
    /// otherwise reckons any `(tenant, …)` index narrower than a few lookups in the key's unique
    /// index, and ranges over every row of the tenant for each erase or check of several keys
    /// (38 ms against 0.1 ms for five keys in a tenant of 100,000 rows). `likely` changes nothing
    /// else; a unary `+` would also drop the column's affinity (`+org_id = '42'` never matches an
    /// integer column). The key always has a unique index (`check` requires one).
    fn in_tenant_by_key(&self, tenant: &str) -> SimpleExpr {
        match self.backend() {
            Backend::Sqlite => Expr::cust_with_expr("likely(?)", self.in_tenant(tenant)),
            Backend::Postgres => self.in_tenant(tenant),
        }
    }

    /// `SELECT … FROM <table>`, to be completed.
    pub fn select(&self) -> SelectStatement {
        let mut q = Query::select();
        q.from(query::table(&self.table));
        q
    }

    /// Runs a statement; returns the rows it changed.
    pub async fn execute(&self, stmt: &impl Statement) -> sqlx::Result<u64> {
        let (sql, values) = stmt.build_for(self.backend());
        let mut conn = self.db.conn().await?;
        let done = query::bind(&sql, &values).execute(&mut *conn).await;
        Ok(conn.settle(done)?.rows_affected())
    }

    /// Runs a statement in a transaction; returns the rows it changed.
    pub async fn execute_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        stmt: &impl Statement,
    ) -> sqlx::Result<u64> {
        let (sql, values) = stmt.build_for(self.backend());
        Ok(query::bind(&sql, &values).execute(&mut **tx).await?.rows_affected())
    }

    pub async fn fetch_all(&self, stmt: &impl Statement) -> sqlx::Result<Vec<AnyRow>> {
        let (sql, values) = stmt.build_for(self.backend());
        self.fetch_sql(&sql, &values).await
    }

    async fn fetch_sql(&self, sql: &str, values: &sea_query::Values) -> sqlx::Result<Vec<AnyRow>> {
        let mut conn = self.db.conn().await?;
        let rows = query::bind(sql, values).fetch_all(&mut *conn).await;
        conn.settle(rows)
    }

    /// Runs a statement whose one row's column `n` is a count; returns it.
    pub async fn fetch_count(&self, stmt: &impl Statement) -> sqlx::Result<u64> {
        let n: i64 = self.fetch_one(stmt).await?.try_get("n")?;
        Ok(n as u64)
    }

    pub async fn fetch_one(&self, stmt: &impl Statement) -> sqlx::Result<AnyRow> {
        let (sql, values) = stmt.build_for(self.backend());
        let mut conn = self.db.conn().await?;
        let row = query::bind(&sql, &values).fetch_one(&mut *conn).await;
        conn.settle(row)
    }

    /// Every column of the table for an export, those of types the driver does not read as text
    /// cast to text (all of them, `*`, until `check` has read the columns).
    fn export_columns(&self, q: &mut SelectStatement) {
        let Some(cols) = self.columns.get().filter(|c| !c.is_empty()) else {
            q.column(Asterisk);
            return;
        };
        for (c, ty) in cols {
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
                q.column(Alias::new(c));
            } else {
                q.expr_as(query::col(c).cast_as(Alias::new("TEXT")), Alias::new(c));
            }
        }
    }

    /// `SELECT <key> AS k, <identifiers> AS i0…, <link> AS l, <bytes> AS b, <object> AS o,
    /// <cleared> AS c`: what a candidate row is read from.
    fn candidate_columns(&self, q: &mut SelectStatement) {
        q.expr_as(self.text(&self.key), Alias::new("k"));
        for (i, (col, _)) in self.identifiers.iter().enumerate() {
            q.expr_as(self.text(col), Alias::new(format!("i{i}")));
        }
        let null = || Expr::cust("NULL");
        q.expr_as(self.link.as_deref().map_or_else(null, |l| self.text(l)), Alias::new("l"));
        let bytes = self.bytes.clone().unwrap_or_else(|| Expr::val(0i64).into());
        q.expr_as(
            SimpleExpr::from(Func::coalesce([bytes, Expr::val(0i64).into()])).cast_as(Alias::new("BIGINT")),
            Alias::new("b"),
        );
        q.expr_as(self.object.as_deref().map_or_else(null, |o| query::col(o).into()), Alias::new("o"));
        let cleared = match &self.cleared {
            Some(c) => {
                SimpleExpr::Case(Box::new(Expr::case(c.clone(), Expr::val(1i64)).finally(Expr::val(0i64))))
            }
            None => Expr::val(0i64).into(),
        };
        q.expr_as(cleared, Alias::new("c"));
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

    /// Each part a probe asks for, in a fixed order: identifier columns in catalog order, then
    /// the link, then keys.
    fn lookups(&self, probe: &Probe<'_>) -> Vec<Lookup> {
        let mut out = Vec::new();
        for (i, (col, kind)) in self.identifiers.iter().enumerate() {
            let (expr, typed_as, values) = match kind {
                IdentKind::AccountId if !probe.account_ids.is_empty() => {
                    (query::col(col).into(), Some(col.clone()), probe.account_ids.clone())
                }
                // The same expression as the store's expression index (`reference`).
                IdentKind::Email if !probe.emails.is_empty() => {
                    (Expr::cust(normalize::email_key(self.backend(), col)), None, probe.emails.clone())
                }
                IdentKind::Phone if !probe.phones.is_empty() => {
                    let forms = probe.phones.iter().flat_map(|p| normalize::phone_digit_forms(p)).collect();
                    (Expr::cust(normalize::phone_digits(col)), None, forms)
                }
                _ => continue,
            };
            out.push(self.lookup(i as u16, expr, typed_as, values));
        }
        if let (Some(link), false) = (&self.link, probe.links.is_empty()) {
            out.push(self.lookup(
                u16::MAX - 1,
                query::col(link).into(),
                Some(link.clone()),
                probe.links.clone(),
            ));
        }
        if !probe.keys.is_empty() {
            out.push(self.lookup(
                u16::MAX,
                query::col(&self.key).into(),
                Some(self.key.clone()),
                probe.keys.clone(),
            ));
        }
        out
    }

    fn lookup(&self, part: u16, expr: SimpleExpr, typed_as: Option<String>, values: Vec<String>) -> Lookup {
        // A value that cannot be of the column's type (text for a uuid key) names no row.
        let values = match typed_as.as_deref().and_then(|c| self.non_text_type(c)) {
            Some(ty) => values.into_iter().filter(|v| fits(ty, v)).collect(),
            None => values,
        };
        Lookup { part, expr, typed_as, values }
    }

    /// Rows of the tenant found by any part of the probe, once each, in key order. Each part is
    /// its own `SELECT` (an index lookup on `(tenant_id, <expression>)`: SQLite does not use an
    /// index for `tenant AND (a OR b)`), and the parts go to the database together, joined by
    /// `UNION ALL`: one round trip for a whole probe, unless its values exceed `CHUNK`. The
    /// statements are written once per shape of probe (`written`).
    pub async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        let mut found: BTreeMap<String, CandidateRow> = BTreeMap::new();
        for (sql, values) in &self.candidate_statements(probe) {
            for row in &self.fetch_sql(sql, values).await? {
                let r = self.row(row)?;
                found.entry(r.key.clone()).or_insert(r);
            }
        }
        Ok(found.into_values().collect())
    }

    /// `candidates`' statements for this probe: those written for its shape before, filled with
    /// its values, or (the first time) written now.
    fn candidate_statements(&self, probe: &Probe<'_>) -> Vec<(String, sea_query::Values)> {
        let lookups = self.lookups(probe);
        // Written SQL depends on the column types `check` reads (casts): kept only once known.
        if self.backend() == Backend::Postgres && self.columns.get().is_none() {
            return self.union_statements(probe.tenant, &lookups);
        }
        let shape = lookups.iter().map(|l| (l.part, l.values.len())).collect();
        let written = self.written.get_or_write(shape, || {
            // The same parts, with stand-ins for the tenant and every value, numbered in order.
            let mut stand_in = (0..).map(super::written::value_stand_in);
            let stand_ins: Vec<Lookup> = lookups
                .iter()
                .map(|l| Lookup {
                    part: l.part,
                    expr: l.expr.clone(),
                    typed_as: l.typed_as.clone(),
                    values: stand_in.by_ref().take(l.values.len()).collect(),
                })
                .collect();
            self.union_statements(&super::written::tenant_stand_in(), &stand_ins)
        });
        let values: Vec<&str> = lookups.iter().flat_map(|l| l.values.iter().map(String::as_str)).collect();
        written
            .and_then(|templates| {
                templates
                    .iter()
                    .map(|t| Some((t.sql().to_owned(), t.values(probe.tenant, &values)?)))
                    .collect::<Option<Vec<_>>>()
            })
            .unwrap_or_else(|| self.union_statements(probe.tenant, &lookups))
    }

    /// `candidates`' statements, written: one `SELECT` per chunk of each part, joined by
    /// `UNION ALL` up to `CHUNK` bound values a statement.
    fn union_statements(&self, tenant: &str, lookups: &[Lookup]) -> Vec<(String, sea_query::Values)> {
        let mut out = Vec::new();
        let mut arms = self.chunks(tenant, lookups).into_iter().map(|c| (self.arm(&c), c.values)).peekable();
        while let Some((mut q, mut bound)) = arms.next() {
            while let Some((next, n)) = arms.next_if(|(_, n)| bound + n <= CHUNK) {
                q.union(sea_query::UnionType::All, next);
                bound += n;
            }
            out.push(q.build_for(self.backend()));
        }
        out
    }

    /// The rows `candidates` finds, handed to `sink` as they are read. A probe whose values fit
    /// one statement (a person's identifiers; a batch of links) is one `UNION ALL` read row by
    /// row, so a person's 100,000 calls are never held together — not even by the database: each
    /// part leaves out the rows an earlier part finds, where `UNION` would sort them all to drop
    /// the doubles. A larger probe is answered by `candidates`.
    pub async fn candidates_into(&self, probe: &Probe<'_>, sink: &mut dyn CandidateSink) -> StoreResult<()> {
        let chunks = self.chunks(probe.tenant, &self.lookups(probe));
        if chunks.iter().map(|c| c.values).sum::<usize>() > CHUNK {
            for row in self.candidates(probe).await? {
                sink.row(row).await?;
            }
            return Ok(());
        }
        let mut union: Option<SelectStatement> = None;
        for (i, c) in chunks.iter().enumerate() {
            let mut q = self.arm(c);
            for earlier in &chunks[..i] {
                // `IS NOT NULL` first: `NOT (NULL IN …)` is NULL, which would leave the row out.
                q.and_where(earlier.expr.clone().is_not_null().and(earlier.found_by.clone()).not());
            }
            match &mut union {
                None => union = Some(q),
                Some(u) => {
                    u.union(sea_query::UnionType::All, q);
                }
            }
        }
        let Some(q) = union else { return Ok(()) };
        let (sql, values) = q.build_for(self.backend());
        let mut rows = query::bind(&sql, &values).fetch(self.db.pool());
        while let Some(row) = rows.try_next().await? {
            sink.row(self.row(&row)?).await?;
        }
        Ok(())
    }

    /// The candidate columns of the tenant's rows one chunk of a lookup finds.
    fn arm(&self, c: &LookupChunk) -> SelectStatement {
        let mut q = self.select();
        self.candidate_columns(&mut q);
        q.and_where(c.tenant.clone()).and_where(c.found_by.clone());
        q
    }

    /// Each chunk of each part of a probe of `tenant`.
    fn chunks(&self, tenant: &str, lookups: &[Lookup]) -> Vec<LookupChunk> {
        let mut chunks = Vec::new();
        for l in lookups {
            for chunk in l.values.chunks(CHUNK) {
                let list = chunk.iter().map(|v| match &l.typed_as {
                    Some(col) => self.value(col, v),
                    None => Expr::val(v.as_str()).into(),
                });
                let tenant = match l.typed_as.as_deref() == Some(self.key.as_str()) {
                    true => self.in_tenant_by_key(tenant),
                    false => self.in_tenant(tenant),
                };
                chunks.push(LookupChunk {
                    expr: l.expr.clone(),
                    found_by: l.expr.clone().is_in(list),
                    tenant,
                    values: chunk.len(),
                });
            }
        }
        chunks
    }

    /// Deletes the tenant's rows with these keys; returns how many there were.
    pub async fn delete(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        let mut n = 0;
        for chunk in keys.chunks(CHUNK) {
            let mut q = Query::delete();
            q.from_table(query::table(&self.table)).and_where(self.by_keys(tenant, chunk));
            n += self.execute(&q).await?;
        }
        Ok(n)
    }

    /// Streams the rows with these keys (`extra`: a further condition) into `sink` as JSON
    /// objects, in key order; returns how many.
    pub async fn export(
        &self,
        tenant: &str,
        keys: &[String],
        extra: Option<SimpleExpr>,
        sink: &mut dyn ExportSink,
    ) -> StoreResult<u64> {
        let order = [self.key.clone()];
        self.export_with(tenant, keys, extra, &order, sink, &|row| Ok(Exported::Record(row_json(row)?))).await
    }

    /// The rows with these keys (`extra`: a further condition), ordered by the `order` columns,
    /// each made a record or a file by `item`, into `sink`; returns how many.
    pub async fn export_with(
        &self,
        tenant: &str,
        keys: &[String],
        extra: Option<SimpleExpr>,
        order: &[String],
        sink: &mut dyn ExportSink,
        item: &(dyn Fn(&AnyRow) -> StoreResult<Exported> + Sync),
    ) -> StoreResult<u64> {
        let mut n = 0;
        let mut keys = keys.to_vec();
        keys.sort();
        for chunk in keys.chunks(CHUNK) {
            let mut q = self.select();
            self.export_columns(&mut q);
            q.and_where(self.by_keys(tenant, chunk));
            if let Some(extra) = &extra {
                q.and_where(extra.clone());
            }
            for o in order {
                q.order_by(Alias::new(o), Order::Asc);
            }
            let (sql, values) = q.build_for(self.backend());
            let mut rows = query::bind(&sql, &values).fetch(self.db.pool());
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
            let mut q = Query::update();
            q.table(query::table(&self.table))
                .value(Alias::new(column), value)
                .and_where(self.by_keys(tenant, chunk))
                .and_where(query::col(column).is_null().or(query::col(column).ne(value)));
            n += self.execute(&q).await?;
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
        // `SELECT 1 FROM <table> WHERE 1 = 0`: reads nothing, fails when the table is missing.
        let mut q = self.select();
        q.expr(Expr::val(1i64)).and_where(Expr::cust("1 = 0"));
        if let Err(e) = self.fetch_all(&q).await {
            return vec![format!("table {} cannot be read: {}", self.table, schema_error(&e))];
        }
        // Columns are looked up in the live table's own list, never probed by a query: SQLite
        // reads a double-quoted name that is no column as a string literal, and would pass.
        let live = match self.read_columns().await {
            Ok(cols) => cols,
            Err(e) => {
                return vec![format!(
                    "table {}: could not read its columns ({})",
                    self.table,
                    schema_error(&e)
                )]
            }
        };
        let mut columns: Vec<&str> = vec![&self.key, &self.tenant];
        columns.extend(self.identifiers.iter().map(|(c, _)| c.as_str()));
        columns.extend(self.link.as_deref());
        columns.extend(self.object.as_deref());
        columns.extend(extra.iter().copied());
        let mut seen = BTreeSet::new();
        columns.retain(|c| seen.insert(*c));
        let sqlite = self.backend() == Backend::Sqlite;
        let mut problems = Vec::new();
        for col in columns {
            let found = live.iter().any(|(c, _)| c == col || (sqlite && c.eq_ignore_ascii_case(col)));
            if !found {
                problems.push(format!(
                    "table {}: column {col:?} is missing (the table has no such column)",
                    self.table
                ));
            }
        }
        if problems.is_empty() {
            let _ = self.columns.set(live);
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
        columns_of(&self.db, &self.table).await
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
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pragma_index_list($1) l \
                     WHERE l.\"unique\" = 1 AND (SELECT COUNT(*) FROM pragma_index_info(l.name)) = 1 \
                     AND (SELECT name FROM pragma_index_info(l.name)) = $2",
                )
                .bind(&self.table)
                .bind(&self.key)
                .fetch_one(self.db.pool())
                .await?;
                Ok(n > 0)
            }
        }
    }
}

/// A table's columns and their types, in table order (Postgres type names; SQLite's declared
/// types, lower case). Empty for a table that does not exist.
pub async fn columns_of(db: &Db, table: &str) -> sqlx::Result<Vec<(String, String)>> {
    match db.backend() {
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(a.attname AS TEXT), CAST(t.typname AS TEXT) FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            )
            .bind(table)
            .fetch_all(db.pool())
            .await
        }
        Backend::Sqlite => {
            sqlx::query_as("SELECT name, lower(type) FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(db.pool())
                .await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A look-up or erase of several keys uses the key's unique index on SQLite. Without
    /// statistics SQLite would rather range over a `(tenant, …)` index, reading every row of the
    /// tenant for each statement. The tenant still compares with the column's affinity.
    #[tokio::test]
    async fn statements_by_key_use_the_keys_unique_index_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::connect(&url, 1).await.unwrap();
        for sql in [
            "CREATE TABLE calls (id TEXT PRIMARY KEY, org_id INTEGER NOT NULL, phone TEXT)",
            "CREATE INDEX calls_org_phone ON calls (org_id, phone)",
            "INSERT INTO calls VALUES ('call-1', 42, '+15550001111'), ('call-2', 43, '+15550001111')",
        ] {
            sqlx::query(sql).execute(db.pool()).await.unwrap();
        }
        let t = SubjectTable {
            db: db.clone(),
            table: "calls".into(),
            key: "id".into(),
            tenant: "org_id".into(),
            identifiers: vec![("phone".into(), IdentKind::Phone)],
            link: None,
            bytes: None,
            object: None,
            cleared: None,
            columns: Default::default(),
            written: Default::default(),
        };
        let keys: Vec<String> = (0..5).map(|i| format!("call-{i}")).collect();
        let mut select = t.select();
        select.expr(t.text("id")).and_where(t.by_keys("42", &keys));
        let mut delete = Query::delete();
        delete.from_table(query::table("calls")).and_where(t.by_keys("42", &keys));
        for (sql, values) in [select.build_for(Backend::Sqlite), delete.build_for(Backend::Sqlite)] {
            let plan: Vec<String> = query::bind(&format!("EXPLAIN QUERY PLAN {sql}"), &values)
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>(3).unwrap())
                .collect();
            assert!(plan.iter().any(|p| p.contains("sqlite_autoindex_calls_1")), "{sql}: {plan:?}");
        }
        // The tenant compares as the column does: an integer column matches the tenant's text.
        let found = t.fetch_all(&select).await.unwrap();
        assert_eq!(found.iter().map(|r| r.try_get::<String, _>(0).unwrap()).collect::<Vec<_>>(), ["call-1"]);
        db.close().await;
    }

    /// A look-up written once for its shape, then filled with another call's values, is the
    /// statement that call would have written itself — also when its values span statements.
    #[tokio::test]
    async fn a_look_up_filled_in_is_the_one_the_call_would_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()), 1)
            .await
            .unwrap();
        let t = SubjectTable {
            db,
            table: "calls".into(),
            key: "id".into(),
            tenant: "org_id".into(),
            identifiers: vec![("phone".into(), IdentKind::Phone), ("email".into(), IdentKind::Email)],
            link: Some("account_id".into()),
            bytes: None,
            object: None,
            cleared: None,
            columns: Default::default(),
            written: Default::default(),
        };
        let many: Vec<String> = (0..CHUNK + 3).map(|i| format!("call-{i}")).collect();
        let probes = |n: usize| {
            vec![
                Probe { tenant: "42", phones: vec![format!("+1555000{n:04}")], ..Default::default() },
                Probe {
                    tenant: "43",
                    emails: vec![format!("a{n}@example.com"), format!("b{n}@example.com")],
                    links: vec![format!("acct-{n}")],
                    keys: vec![format!("call-{n}")],
                    ..Default::default()
                },
                Probe {
                    tenant: "44",
                    keys: many.iter().map(|k| format!("{k}-{n}")).collect(),
                    ..Default::default()
                },
            ]
        };
        for (first, second) in probes(1).iter().zip(&probes(2)) {
            let written = t.candidate_statements(first);
            let filled = t.candidate_statements(second);
            let own = t.union_statements(second.tenant, &t.lookups(second));
            assert_eq!(filled.len(), own.len());
            for ((sql, values), (own_sql, own_values)) in filled.iter().zip(&own) {
                assert_eq!(sql, own_sql);
                assert_eq!(values.0, own_values.0);
            }
            assert_ne!(
                written.iter().map(|(_, v)| v.0.clone()).collect::<Vec<_>>(),
                filled.iter().map(|(_, v)| v.0.clone()).collect::<Vec<_>>()
            );
        }
        assert_eq!(t.written.len(), 3, "one shape each");
    }
}
