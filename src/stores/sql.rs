//! Tenant-scoped SQL shared by the adapters: the retention sweep's expiry conditions, deletes
//! by key, tenant listing. `$1` is always the tenant, so no query can reach another tenant's
//! rows; values are bound, never spliced into SQL.
use sqlx::{
    any::AnyArguments,
    query::{Query, QueryAs},
    Any,
};

use crate::db::Db;

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
