//! Rows for several tables written together (a request, its tasks, its recipients and its
//! `submitted` event). On Postgres they go as **one statement**: every table's `INSERT` but the
//! last is a data-modifying `WITH` of the last, so the rows travel in one round trip and the
//! statement is atomic by itself (no `BEGIN`/`COMMIT` around it). On SQLite, in-process, where
//! a statement costs no round trip, each table's rows are one `INSERT` in the caller's
//! transaction.
use sqlx::{any::AnyArguments, query::Query, Any};

use super::Tx;

/// A value bound to one column of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(Some(v.clone()))
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Value::Text(v.map(str::to_owned))
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        Value::Text(v.clone())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}

/// Rows of one table.
#[derive(Debug, Clone)]
struct Insert {
    table: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Vec<Value>>,
}

impl Insert {
    /// `INSERT INTO table (columns) VALUES (…), (…)` with parameters from `$first` on.
    fn sql(&self, first: usize) -> String {
        let width = self.columns.len();
        let rows: Vec<String> = (0..self.rows.len())
            .map(|r| {
                let params: Vec<String> = (0..width).map(|c| format!("${}", first + r * width + c)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        format!("INSERT INTO {} ({}) VALUES {}", self.table, self.columns.join(", "), rows.join(", "))
    }

    fn params(&self) -> usize {
        self.columns.len() * self.rows.len()
    }
}

/// Rows for several tables, in the order they are added (a row's parent first).
#[derive(Debug, Clone, Default)]
pub struct Rows {
    inserts: Vec<Insert>,
}

impl Rows {
    /// Adds `rows` of `table` (nothing when there are none). Every row has one value per column.
    pub fn add(&mut self, table: &'static str, columns: &'static [&'static str], rows: Vec<Vec<Value>>) {
        debug_assert!(rows.iter().all(|r| r.len() == columns.len()), "a row of {table} has the wrong width");
        if !rows.is_empty() {
            self.inserts.push(Insert { table, columns, rows });
        }
    }

    /// The whole write as one Postgres statement (`WITH` the earlier tables), and its values in
    /// parameter order.
    pub fn one_statement(&self) -> (String, Vec<&Value>) {
        let mut first = 1;
        let mut parts = Vec::with_capacity(self.inserts.len());
        for insert in &self.inserts {
            parts.push(insert.sql(first));
            first += insert.params();
        }
        let last = parts.pop().unwrap_or_default();
        let sql = if parts.is_empty() {
            last
        } else {
            let with: Vec<String> = parts.iter().enumerate().map(|(i, p)| format!("w{i} AS ({p})")).collect();
            format!("WITH {} {last}", with.join(", "))
        };
        (sql, self.values().collect())
    }

    /// The rows as the `WITH` clause (`WITH w0 AS (INSERT …), … `) of a Postgres statement of
    /// the caller's, which binds its own parameters first: the rows' are numbered from `first`.
    /// Empty when there are no rows.
    pub fn with_clause(&self, first: usize) -> (String, Vec<&Value>) {
        if self.inserts.is_empty() {
            return (String::new(), Vec::new());
        }
        let mut next = first;
        let mut parts = Vec::with_capacity(self.inserts.len());
        for (i, insert) in self.inserts.iter().enumerate() {
            parts.push(format!("w{i} AS ({})", insert.sql(next)));
            next += insert.params();
        }
        (format!("WITH {} ", parts.join(", ")), self.values().collect())
    }

    /// Binds `values` (from `with_clause`) after the caller's own parameters.
    pub fn bind_values<'q>(
        q: Query<'q, Any, AnyArguments<'q>>,
        values: Vec<&'q Value>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        bind_all(q, values)
    }

    fn values(&self) -> impl Iterator<Item = &Value> {
        self.inserts.iter().flat_map(|i| i.rows.iter().flatten())
    }

    /// Postgres: the rows in one statement, on `executor` (a pool: its own transaction).
    pub async fn insert_at_once<'e, E>(&self, executor: E) -> sqlx::Result<()>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        if self.inserts.is_empty() {
            return Ok(());
        }
        let (sql, values) = self.one_statement();
        bind_all(sqlx::query(&sql), values).execute(executor).await.map(|_| ())
    }

    /// The rows one `INSERT` per table, in `tx`.
    pub async fn insert_each(&self, tx: &mut Tx) -> sqlx::Result<()> {
        for insert in &self.inserts {
            let sql = insert.sql(1);
            bind_all(sqlx::query(&sql), insert.rows.iter().flatten()).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    values: impl IntoIterator<Item = &'q Value>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for v in values {
        q = match v {
            Value::Text(t) => q.bind(t.as_deref()),
            Value::Int(i) => q.bind(*i),
        };
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_tables_become_with_clauses_of_the_last_and_parameters_run_on() {
        let mut rows = Rows::default();
        rows.add("parent", &["id", "n"], vec![vec!["p".into(), 1.into()]]);
        rows.add("empty", &["id"], vec![]);
        rows.add(
            "child",
            &["id", "parent"],
            vec![vec!["c1".into(), "p".into()], vec!["c2".into(), "p".into()]],
        );
        let (sql, values) = rows.one_statement();
        assert_eq!(
            sql,
            "WITH w0 AS (INSERT INTO parent (id, n) VALUES ($1, $2)) \
             INSERT INTO child (id, parent) VALUES ($3, $4), ($5, $6)"
        );
        assert_eq!(values.len(), 6);
        assert_eq!(values[4], &Value::from("c2"));
    }

    #[test]
    fn a_with_clause_numbers_its_parameters_after_the_callers() {
        let mut rows = Rows::default();
        rows.add("journal", &["a", "b"], vec![vec!["x".into(), 1.into()], vec!["y".into(), 2.into()]]);
        let (with, values) = rows.with_clause(3);
        assert_eq!(with, "WITH w0 AS (INSERT INTO journal (a, b) VALUES ($3, $4), ($5, $6)) ");
        assert_eq!(values.len(), 4);
        assert!(Rows::default().with_clause(1).0.is_empty());
    }
}
