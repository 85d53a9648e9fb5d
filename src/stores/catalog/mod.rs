//! The generic adapter of a catalog entry (`crate::catalog`): every store, the reference ones
//! included, is a SQL table described in the catalog (optionally indexing objects in an object
//! store), and takes part in deletion, export, rectification, preview, retention and the
//! start-time schema check with no code of its own.
//!
//! | module   | owns                                                                  |
//! |----------|-----------------------------------------------------------------------|
//! | `erase`  | what erasure does: delete (objects first), blank, or retain restricted |
//! | `expiry` | the retention sweep's queries                                         |
//! | `restriction` | restrictions kept in dsr's ledger, for tables without a column for them |
//! | `time`   | time columns as stored: epoch ms/s, ISO text, native timestamps        |
mod erase;
mod expiry;
mod restriction;
pub mod time;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Months, Utc};
use object_store::ObjectStore;
use sea_query::{Alias, Expr, Func, SimpleExpr};
use sqlx::Row;

use super::{
    objects, query,
    table::{Exported, SubjectTable, CHUNK},
    ByteStream, CandidateRow, CandidateSink, Erase, Erasure, ExpiredRecord, Expiry, Export, ExportFile,
    ExportSink, LegalHold, Probe, Rectification, Rectify, Retention, StoreAdapter, StoreError, StoreResult,
};
use crate::{
    catalog::{CatalogEntry, ErasureMode},
    db::Db,
    domain::Corrections,
    resolve::{IdentKind, Person},
};

/// What a catalog store needs of the others, resolved by the registry.
#[derive(Clone, Default)]
pub struct Wiring {
    /// The object store of an object-backed entry.
    pub objects: Option<Arc<dyn ObjectStore>>,
    /// `kept_while_referenced_by`: the referencing store's table and tenant column (same
    /// database).
    pub referenced_in: Option<(String, String)>,
    /// The linked store's table, key, tenant and account-id column, when it is in the same
    /// database: the retention sweep names the account of an expired linked record by it.
    pub link_account: Option<LinkAccount>,
    /// dsr's own database: restrictions of a table without a restriction column live there.
    pub ledger: Option<Db>,
}

#[derive(Clone, Debug)]
pub struct LinkAccount {
    pub table: String,
    pub key: String,
    pub tenant: String,
    pub account_column: String,
}

pub struct CatalogStore {
    entry: CatalogEntry,
    /// The entry's name, and the store it links to, for the life of the process: the adapter
    /// interface names stores with `&'static str`, and a catalog is read once at start.
    name: &'static str,
    links_to: Option<&'static str>,
    rows: SubjectTable,
    wiring: Wiring,
    /// The columns a blank erasure sets to NULL: every identifier column but the key, the name
    /// column, and `blank`.
    blanked: Vec<String>,
}

impl CatalogStore {
    pub fn new(entry: CatalogEntry, db: Db, wiring: Wiring) -> Self {
        let mut identifiers: Vec<(String, IdentKind)> =
            entry.identifiers.iter().map(|c| (c.column.clone(), c.holds)).collect();
        // The identity store's key is the account id, listed or not.
        if entry.identity && !identifiers.iter().any(|(c, _)| c == &entry.key) {
            identifiers.insert(0, (entry.key.clone(), IdentKind::AccountId));
        }
        let mut blanked: Vec<String> = Vec::new();
        for c in identifiers
            .iter()
            .map(|(c, _)| c)
            .filter(|c| **c != entry.key)
            .chain(&entry.name_column)
            .chain(&entry.blank)
        {
            if !blanked.contains(c) {
                blanked.push(c.clone());
            }
        }
        // A row the erasure has been applied to and that stays: blanked, or restricted.
        let cleared: Option<SimpleExpr> = match entry.erasure {
            ErasureMode::Delete => None,
            ErasureMode::Blank => Some(all(blanked.iter().map(|c| query::col(c).is_null()))),
            ErasureMode::Retain => entry
                .retain
                .as_ref()
                .and_then(|r| r.restriction_column.as_ref())
                .map(|c| query::col(c).is_not_null()),
        };
        let bytes: Option<SimpleExpr> = match (&entry.bytes_column, &entry.size_of) {
            (Some(b), _) => Some(query::col(b).into()),
            (None, Some(t)) => Some(Func::cust(Alias::new("LENGTH")).arg(query::col(t)).into()),
            (None, None) => None,
        };
        let rows = SubjectTable {
            db,
            table: entry.table.clone(),
            key: entry.key.clone(),
            tenant: entry.tenant.clone(),
            identifiers,
            link: entry.link.as_ref().map(|l| l.column.clone()),
            bytes,
            object: entry.objects.as_ref().map(|o| o.column.clone()),
            cleared,
            columns: Default::default(),
            written: Default::default(),
        };
        let name: &'static str = Box::leak(entry.name.clone().into_boxed_str());
        let links_to: Option<&'static str> =
            entry.link.as_ref().map(|l| &*Box::leak(l.store.clone().into_boxed_str()));
        Self { entry, name, links_to, rows, wiring, blanked }
    }

    /// The objects of an object-backed store.
    fn objects(&self) -> StoreResult<&dyn ObjectStore> {
        self.wiring
            .objects
            .as_deref()
            .ok_or_else(|| StoreError::Fatal(format!("the {} store has no object store", self.name)))
    }

    /// Rows the erasure has not been applied to, when rows are ever kept erased.
    fn not_cleared(&self) -> Option<SimpleExpr> {
        self.rows.cleared.clone().map(SimpleExpr::not)
    }

    /// The newest time of these rows: a legal obligation runs from it.
    async fn newest(&self, tenant: &str, keys: &[String]) -> StoreResult<Option<DateTime<Utc>>> {
        let Some(col) = &self.entry.time_column else { return Ok(None) };
        let backend = self.rows.backend();
        let mut newest = None;
        for chunk in keys.chunks(CHUNK) {
            let mut q = self.rows.select();
            q.expr(time::newest(self.entry.time_format, backend, col))
                .and_where(self.rows.by_keys(tenant, chunk));
            let row = self.rows.fetch_one(&q).await?;
            newest = newest.max(time::read(self.entry.time_format, backend, &row)?);
        }
        Ok(newest)
    }

    /// How long a legal obligation keeps these rows: `retain.years` from the newest.
    async fn hold(&self, tenant: &str, keys: &[String], suffix: &str) -> StoreResult<Option<LegalHold>> {
        let Some(retain) = &self.entry.retain else { return Ok(None) };
        Ok(self.newest(tenant, keys).await?.map(|newest| LegalHold {
            basis: format!("{}; {suffix}", retain.basis),
            until: newest
                .checked_add_months(Months::new(retain.years * 12))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }))
    }

    /// The first column holding this kind of identifier, qualified by the table, as text (or
    /// NULL).
    fn first_column(&self, kind: IdentKind) -> SimpleExpr {
        match self.rows.identifiers.iter().find(|(_, k)| *k == kind) {
            Some((c, _)) => self.rows.text_of(Expr::col(query::qualified(&self.entry.table, c)).into(), c),
            None => Expr::cust("NULL"),
        }
    }
}

/// Every condition at once (`1 = 1` for none).
fn all(conditions: impl IntoIterator<Item = SimpleExpr>) -> SimpleExpr {
    conditions.into_iter().reduce(SimpleExpr::and).unwrap_or_else(|| Expr::cust("1 = 1"))
}

#[async_trait]
impl StoreAdapter for CatalogStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn stage(&self) -> u8 {
        self.entry.stage
    }

    fn is_identity(&self) -> bool {
        self.entry.identity
    }

    fn links_to(&self) -> Option<&'static str> {
        self.links_to
    }

    fn keeps_under_legal_obligation(&self) -> bool {
        self.entry.erasure == ErasureMode::Retain
    }

    async fn check_schema(&self) -> Vec<String> {
        let e = &self.entry;
        let extra: Vec<&str> = e
            .blank
            .iter()
            .chain(&e.bytes_column)
            .chain(&e.size_of)
            .chain(&e.time_column)
            .chain(&e.name_column)
            .chain(&e.erased_at_column)
            .chain(e.retain.as_ref().and_then(|r| r.restriction_column.as_ref()))
            .map(String::as_str)
            .collect();
        let mut problems = self.rows.check(&extra).await;
        if problems.is_empty() {
            problems.extend(self.check_time_types());
        }
        if let (Some(r), Some((table, _))) = (&e.kept_while_referenced_by, &self.wiring.referenced_in) {
            let sqlite = self.rows.backend() == crate::db::Backend::Sqlite;
            match super::table::columns_of(&self.rows.db, table).await {
                Ok(cols) if cols.iter().any(|(c, _)| c == &r.column || (sqlite && c.eq_ignore_ascii_case(&r.column))) => {}
                Ok(_) => problems.push(format!(
                    "kept_while_referenced_by: table {table}: column {:?} is missing (the table has no such column)",
                    r.column
                )),
                Err(err) => problems.push(format!("kept_while_referenced_by: table {table}: cannot be read ({err})")),
            }
        }
        problems
    }

    async fn candidates(&self, probe: &Probe<'_>) -> StoreResult<Vec<CandidateRow>> {
        let mut rows = self.rows.candidates(probe).await?;
        if self.restricts_in_ledger() {
            self.mark_restricted(probe.tenant, &mut rows).await?;
        }
        Ok(rows)
    }

    fn streams_candidates(&self) -> bool {
        true
    }

    /// Streamed from the table; a restriction kept in the ledger is not looked up (`cleared`
    /// stays as the table says).
    async fn candidates_into(&self, probe: &Probe<'_>, sink: &mut dyn CandidateSink) -> StoreResult<()> {
        self.rows.candidates_into(probe, sink).await
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

    fn as_retention(&self) -> Option<&dyn Retention> {
        Some(self)
    }
}

#[async_trait]
impl Erase for CatalogStore {
    async fn erase(&self, tenant: &str, keys: &[String], now: DateTime<Utc>) -> StoreResult<Erasure> {
        match self.entry.erasure {
            ErasureMode::Delete => Ok(Erasure::Erased { affected: self.delete(tenant, keys).await? }),
            ErasureMode::Blank => {
                Ok(Erasure::Erased { affected: self.blank(tenant, keys, Some(now)).await? })
            }
            ErasureMode::Retain => self.restrict(tenant, keys, now).await,
        }
    }

    async fn objects_present(&self, keys: &[String]) -> StoreResult<u64> {
        if self.wiring.objects.is_none() || keys.is_empty() {
            return Ok(0);
        }
        objects::count_present(self.objects()?, keys).await
    }
}

#[async_trait]
impl Rectify for CatalogStore {
    fn holds_any_of(&self, c: &Corrections) -> bool {
        (c.email.is_some() && self.entry.holds(IdentKind::Email))
            || (c.phone.is_some() && self.entry.holds(IdentKind::Phone))
            || (c.name.is_some() && self.entry.name_column.is_some())
    }

    /// Every identifier column of a corrected kind that names the person gets the new value, and
    /// the name column the new name. Rows already erased (blanked) are left alone; rows kept
    /// under a legal obligation are corrected in place: it forbids erasure, not accuracy.
    async fn rectify(
        &self,
        person: &Person,
        mine: &[CandidateRow],
        corrections: &Corrections,
        _now: DateTime<Utc>,
    ) -> StoreResult<Rectification> {
        let live: Vec<CandidateRow> = match self.entry.erasure {
            ErasureMode::Blank => mine.iter().filter(|r| !r.cleared).cloned().collect(),
            _ => mine.to_vec(),
        };
        if live.is_empty() {
            return Ok(Rectification { found: 0, affected: 0, hold: None });
        }
        // Emails and phones identify an account holder: a correction to a value another account
        // of the tenant has gained since the submit is refused here too.
        if self.entry.identity {
            if let Some(field) = crate::resolve::taken(self, person, corrections).await? {
                return Err(StoreError::Fatal(format!(
                    "{field}: another account of the tenant has had this value since the request was submitted"
                )));
            }
        }
        let (mut found, mut affected) = self.rows.rectify(person, &live, corrections).await?;
        let keys: Vec<String> = live.iter().map(|r| r.key.clone()).collect();
        if let (Some(col), Some(name)) = (&self.entry.name_column, &corrections.name) {
            let n = self.rows.set_column(&person.tenant, &keys, col, name.as_str()).await?;
            found = found.max(keys.len() as u64);
            affected = affected.max(n);
        }
        let hold = self.hold(&person.tenant, &keys, "corrected in place, they stay under the hold").await?;
        Ok(Rectification { found, affected, hold })
    }

    async fn verify_rectified(&self, person: &Person, keys: &[String], c: &Corrections) -> StoreResult<bool> {
        if !self.rows.rectified(person, keys, c).await? {
            return Ok(false);
        }
        let (Some(col), Some(name)) = (&self.entry.name_column, &c.name) else { return Ok(true) };
        if keys.is_empty() {
            return Ok(true);
        }
        let mut wrong = 0;
        for chunk in keys.chunks(CHUNK) {
            let mut q = self.rows.select();
            q.expr(Func::count(Expr::cust("*")))
                .and_where(self.rows.by_keys(&person.tenant, chunk))
                .and_where(query::col(col).is_null().or(query::col(col).ne(name.as_str())));
            if let Some(live) = self.not_cleared() {
                q.and_where(live);
            }
            wrong += self.rows.fetch_one(&q).await?.try_get::<i64, _>(0)?;
        }
        Ok(wrong == 0)
    }
}

#[async_trait]
impl Export for CatalogStore {
    /// The records, as JSON objects; an object-backed store's rows as files (the object, with its
    /// row as the file's record, minus where it lives). A row the erasure blanked holds nothing
    /// of the person and is left out; restricted rows are exported: a legal obligation limits
    /// their use, not the subject's access.
    async fn export(&self, tenant: &str, keys: &[String], sink: &mut dyn ExportSink) -> StoreResult<u64> {
        if !self.entry.export {
            return Ok(0);
        }
        let extra = if self.entry.erasure == ErasureMode::Blank { self.not_cleared() } else { None };
        let Some(o) = &self.entry.objects else {
            return self.rows.export(tenant, keys, extra, sink).await;
        };
        let column = o.column.clone();
        let link = self.entry.link.as_ref().map(|l| l.column.clone());
        let key = self.entry.key.clone();
        let bytes = self.entry.bytes_column.clone();
        let order: Vec<String> = link.iter().chain([&key]).cloned().collect();
        let item = move |row: &sqlx::any::AnyRow| -> StoreResult<Exported> {
            let mut record = super::row_json(row)?;
            let object = match record.remove(&column) {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(StoreError::Fatal("an exported row has no object key".into())),
            };
            let named_by = link.as_ref().unwrap_or(&key);
            let stem = match record.get(named_by) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "file".to_owned(),
            };
            let size = bytes.as_ref().and_then(|b| record.get(b)).and_then(|v| v.as_u64()).unwrap_or(0);
            Ok(Exported::File(ExportFile {
                name: format!("{stem}.{}", objects::extension(&object)),
                bytes: size,
                key: object,
                record,
            }))
        };
        self.rows.export_with(tenant, keys, extra, &order, sink, &item).await
    }

    async fn read_file(&self, key: &str) -> StoreResult<ByteStream> {
        objects::read(self.objects()?, key).await
    }
}

#[async_trait]
impl Retention for CatalogStore {
    fn lists_tenants(&self) -> bool {
        true
    }

    async fn tenants(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        self.tenants_after(after, limit).await
    }

    async fn count_expired(&self, expiry: &Expiry<'_>) -> StoreResult<u64> {
        self.count_expired_rows(expiry).await
    }

    async fn list_expired(
        &self,
        expiry: &Expiry<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredRecord>> {
        self.list_expired_rows(expiry, after, limit).await
    }

    async fn erase_records(&self, tenant: &str, keys: &[String]) -> StoreResult<u64> {
        match self.entry.erasure {
            // As a deletion erases, but without marking the time: the sweep erases by age.
            ErasureMode::Blank => self.blank(tenant, keys, None).await,
            // Past retention, what was kept goes, and its restriction with it.
            ErasureMode::Retain if self.restricts_in_ledger() => {
                let n = self.delete(tenant, keys).await?;
                self.forget_restrictions(tenant, keys).await?;
                Ok(n)
            }
            ErasureMode::Delete | ErasureMode::Retain => self.delete(tenant, keys).await,
        }
    }

    async fn erase_expired(&self, expiry: &Expiry<'_>, limit: usize) -> StoreResult<u64> {
        self.erase_expired_rows(expiry, limit).await
    }
}
