//! Tenant-scoped subject predicates for the SQL adapters. `$1` is always the tenant, so no
//! query can reach another tenant's rows; identifiers are bound, never spliced into SQL.
use sqlx::{
    any::AnyArguments,
    query::{Query, QueryAs},
    Any,
};

use crate::{
    db::Db,
    domain::{Corrections, Subject},
};

/// Which identifier of the subject a column holds.
#[derive(Debug, Clone, Copy)]
pub enum Ident {
    AccountId,
    Email,
    Phone,
}

/// How a store finds a subject's rows.
#[derive(Debug, Clone)]
pub enum Key {
    /// `column = <identifier>`.
    Column(&'static str, Ident),
    /// `column IN (SELECT id FROM <call_logs> WHERE tenant_id = $1 AND account_id = <account id>)`:
    /// rows about a call the subject's account made.
    ViaCallLogs { column: &'static str, call_logs_table: String },
}

impl Key {
    fn ident(&self) -> Ident {
        match self {
            Key::Column(_, i) => *i,
            Key::ViaCallLogs { .. } => Ident::AccountId,
        }
    }
}

fn value(subject: &Subject, ident: Ident) -> Option<&str> {
    match ident {
        Ident::AccountId => subject.account_id.as_ref().map(|a| a.as_str()),
        Ident::Email => subject.email.as_ref().map(|e| e.as_str()),
        Ident::Phone => subject.phone.as_ref().map(|p| p.as_str()),
    }
}

/// `((tenant_id = $1 AND key1 = $2) OR …)` with its bind values.
#[derive(Debug, Clone)]
pub struct Predicate {
    pub sql: String,
    binds: Vec<String>,
}

impl Predicate {
    /// `None` when the subject has none of the identifiers the keys use.
    pub fn for_subject(subject: &Subject, keys: &[Key]) -> Option<Self> {
        let mut binds = vec![subject.tenant.as_str().to_owned()];
        let mut alternatives = Vec::new();
        for key in keys {
            let Some(v) = value(subject, key.ident()) else {
                continue;
            };
            binds.push(v.to_owned());
            let n = binds.len();
            // Each branch repeats the tenant so that every branch is one index lookup on
            // (tenant_id, column): SQLite will not use an index for `tenant AND (a OR b)`.
            alternatives.push(match key {
                Key::Column(col, _) => format!("(tenant_id = $1 AND {col} = ${n})"),
                Key::ViaCallLogs { column, call_logs_table } => format!(
                    "(tenant_id = $1 AND {column} IN (SELECT id FROM {call_logs_table} WHERE tenant_id = $1 AND account_id = ${n}))"
                ),
            });
        }
        if alternatives.is_empty() {
            return None;
        }
        Some(Self { sql: format!("({})", alternatives.join(" OR ")), binds })
    }

    pub fn applies(subject: &Subject, keys: &[Key]) -> bool {
        keys.iter().any(|k| value(subject, k.ident()).is_some())
    }

    /// Number of the next free parameter.
    pub fn next_param(&self) -> usize {
        self.binds.len() + 1
    }

    /// A query over `sql` (which embeds this predicate) with the predicate's values bound.
    pub fn query<'q>(&'q self, sql: &'q str) -> Query<'q, Any, AnyArguments<'q>> {
        self.binds.iter().fold(sqlx::query(sql), |q, b| q.bind(b.as_str()))
    }

    /// Like `query`, decoding rows as `O`.
    pub fn query_as<'q, O>(&'q self, sql: &'q str) -> QueryAs<'q, Any, O, AnyArguments<'q>>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        self.binds.iter().fold(sqlx::query_as(sql), |q, b| q.bind(b.as_str()))
    }

    /// `SELECT COUNT(*)` (and optionally a byte sum) of `table` rows matching, plus `extra`.
    pub async fn count(
        &self,
        db: &Db,
        table: &str,
        bytes_expr: Option<&str>,
        extra: &str,
    ) -> sqlx::Result<(u64, u64)> {
        let bytes = bytes_expr.map_or("0".to_owned(), |e| format!("CAST(COALESCE(SUM({e}), 0) AS BIGINT)"));
        let sql = format!("SELECT COUNT(*), {bytes} FROM {table} WHERE {}{extra}", self.sql);
        let (n, b): (i64, i64) = self.query_as(&sql).fetch_one(db.pool()).await?;
        Ok((n as u64, b as u64))
    }
}

/// A phone correction as the phone-keyed stores see it: `(old, new)`, or `None` when there is
/// nothing to move (no phone corrected, or the subject has no known phone to move rows from).
pub fn phone_move<'a>(subject: &'a Subject, corrections: &'a Corrections) -> Option<(&'a str, &'a str)> {
    Some((subject.phone.as_ref()?.as_str(), corrections.phone.as_ref()?.as_str()))
}

/// Moves the tenant's rows from the old phone to the new one in `table.caller_phone`; returns
/// the rows moved. Only rows under the old phone move: a call of the subject's account made
/// from another number keeps that number (it is not the identifier being corrected).
pub async fn move_phone<'c, E>(
    executor: E,
    table: &str,
    tenant: &str,
    old: &str,
    new: &str,
) -> sqlx::Result<u64>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let sql = format!("UPDATE {table} SET caller_phone = $3 WHERE tenant_id = $1 AND caller_phone = $2");
    Ok(sqlx::query(&sql).bind(tenant).bind(old).bind(new).execute(executor).await?.rows_affected())
}

/// The read-back of a phone move: nothing of the tenant is left under the old phone. (The move
/// is one UPDATE that only rewrites `caller_phone`, so no row left the old phone any other way
/// than to the new one.) Correcting a phone to itself leaves everything where it was.
pub async fn phone_moved(
    db: &Db,
    table: &str,
    subject: &Subject,
    corrections: &Corrections,
) -> sqlx::Result<bool> {
    let Some((old, new)) = phone_move(subject, corrections) else {
        return Ok(true);
    };
    if old == new {
        return Ok(true);
    }
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = $1 AND caller_phone = $2");
    let left: i64 =
        sqlx::query_scalar(&sql).bind(subject.tenant.as_str()).bind(old).fetch_one(db.pool()).await?;
    Ok(left == 0)
}

/// The tenant's records past retention, as a SQL condition: `tenant_id = $1` and the store's
/// expiry condition over times bound from `$2` on. Used unqualified on the store's table.
#[derive(Debug, Clone)]
pub struct Expired {
    pub sql: String,
    tenant: String,
    times: Vec<i64>,
}

impl Expired {
    /// `tenant_id = $1 AND {condition}`, where `condition` uses `$2…` for `times` in order.
    pub fn new(tenant: &str, condition: &str, times: Vec<i64>) -> Self {
        Self { sql: format!("tenant_id = $1 AND {condition}"), tenant: tenant.to_owned(), times }
    }

    /// Number of the next free parameter.
    pub fn next_param(&self) -> usize {
        self.times.len() + 2
    }

    pub fn query<'q>(&'q self, sql: &'q str) -> Query<'q, Any, AnyArguments<'q>> {
        self.times.iter().fold(sqlx::query(sql).bind(self.tenant.as_str()), |q, t| q.bind(*t))
    }

    pub fn query_as<'q, O>(&'q self, sql: &'q str) -> QueryAs<'q, Any, O, AnyArguments<'q>>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        self.times.iter().fold(sqlx::query_as(sql).bind(self.tenant.as_str()), |q, t| q.bind(*t))
    }

    pub async fn count(&self, db: &Db, table: &str) -> sqlx::Result<u64> {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {}", self.sql);
        Ok(self.query_as::<(i64,)>(&sql).fetch_one(db.pool()).await?.0 as u64)
    }

    /// Deletes up to `limit` expired rows in one statement (one short transaction).
    pub async fn delete_batch(&self, db: &Db, table: &str, limit: usize) -> sqlx::Result<u64> {
        let sql = format!(
            "DELETE FROM {table} WHERE tenant_id = $1 AND id IN (SELECT id FROM {table} WHERE {} LIMIT {limit})",
            self.sql
        );
        Ok(self.query(&sql).execute(db.pool()).await?.rows_affected())
    }

    /// Up to `limit` expired rows with `id > after`, in id order, with the identifiers each
    /// carries: `idents` gives the SQL expression (over the row; qualify columns with the table
    /// name) of the account id, email and phone, or `NULL`.
    pub async fn list(
        &self,
        db: &Db,
        table: &str,
        idents: [&str; 3],
        after: Option<&str>,
        limit: usize,
    ) -> sqlx::Result<Vec<super::ExpiredRecord>> {
        let [account, email, phone] = idents;
        let sql = format!(
            "SELECT id, {account}, {email}, {phone} FROM {table} WHERE {} AND id > ${} ORDER BY id LIMIT {limit}",
            self.sql,
            self.next_param()
        );
        let rows: Vec<ExpiredRow> =
            self.query_as(&sql).bind(after.unwrap_or("")).fetch_all(db.pool()).await?;
        Ok(rows
            .into_iter()
            .map(|(key, account_id, email, phone)| super::ExpiredRecord { key, account_id, email, phone })
            .collect())
    }
}

/// (key, account id, email, phone) of an expired row.
type ExpiredRow = (String, Option<String>, Option<String>, Option<String>);

/// `$first, $first+1, …` for `n` values.
pub fn params(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Deletes the tenant's rows with these ids; returns how many there were.
pub async fn delete_keys<'c, E>(executor: E, table: &str, tenant: &str, keys: &[String]) -> sqlx::Result<u64>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    if keys.is_empty() {
        return Ok(0);
    }
    let sql = format!("DELETE FROM {table} WHERE tenant_id = $1 AND id IN ({})", params(2, keys.len()));
    let q = keys.iter().fold(sqlx::query(&sql).bind(tenant), |q, k| q.bind(k.as_str()));
    Ok(q.execute(executor).await?.rows_affected())
}

/// Up to `limit` tenants of `table` after `after`, in order. One index probe per tenant
/// (`MIN(tenant_id) WHERE tenant_id > $1` on an index that starts with `tenant_id`), so a table
/// with millions of rows and few tenants costs a few lookups, not a scan.
pub async fn tenants(db: &Db, table: &str, after: Option<&str>, limit: usize) -> sqlx::Result<Vec<String>> {
    let sql = format!("SELECT MIN(tenant_id) FROM {table} WHERE tenant_id > $1");
    let mut out = Vec::new();
    let mut last = after.unwrap_or("").to_owned();
    while out.len() < limit {
        let next: Option<String> = sqlx::query_scalar(&sql).bind(&last).fetch_one(db.pool()).await?;
        let Some(next) = next else { break };
        last = next.clone();
        out.push(next);
    }
    Ok(out)
}

/// The SQL expressions of the account id, email and phone a row of `table` carries, from the
/// store's subject keys (`NULL` for those it does not hold). A row linked to an account through
/// its call carries that call's account id.
pub fn identifier_columns(table: &str, keys: &[Key]) -> [String; 3] {
    let mut out = ["NULL".to_owned(), "NULL".to_owned(), "NULL".to_owned()];
    for key in keys {
        match key {
            Key::Column(col, ident) => {
                let i = match ident {
                    Ident::AccountId => 0,
                    Ident::Email => 1,
                    Ident::Phone => 2,
                };
                out[i] = format!("{table}.{col}");
            }
            Key::ViaCallLogs { column, call_logs_table } => {
                out[0] = format!(
                    "(SELECT c.account_id FROM {call_logs_table} c WHERE c.tenant_id = {table}.tenant_id AND c.id = {table}.{column})"
                );
            }
        }
    }
    out
}
