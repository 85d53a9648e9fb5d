//! SQL built from the catalog with sea-query: table and column names quoted as identifiers,
//! placeholders written for the store's dialect, every value bound. The catalog's names are also
//! validated (letters, digits, `_`), so a name can never be SQL.
use sea_query::{
    Alias, ColumnRef, DeleteStatement, Expr, InsertStatement, IntoIden, PostgresQueryBuilder,
    SelectStatement, SimpleExpr, SqliteQueryBuilder, TableRef, UpdateStatement, Value, Values, WithQuery,
};
use sqlx::{any::AnyArguments, query::Query, Any};

use crate::db::Backend;

/// A table name as the catalog gives it: `name` or `schema.name`.
pub fn table(name: &str) -> TableRef {
    match name.split_once('.') {
        Some((schema, t)) => TableRef::SchemaTable(Alias::new(schema).into_iden(), Alias::new(t).into_iden()),
        None => TableRef::Table(Alias::new(name).into_iden()),
    }
}

/// A column of the statement's table.
pub fn col(name: &str) -> Expr {
    Expr::col(Alias::new(name))
}

/// A column qualified by its table (for correlated subqueries).
pub fn qualified(table_name: &str, column: &str) -> ColumnRef {
    let c = Alias::new(column).into_iden();
    match table_name.split_once('.') {
        Some((schema, t)) => {
            ColumnRef::SchemaTableColumn(Alias::new(schema).into_iden(), Alias::new(t).into_iden(), c)
        }
        None => ColumnRef::TableColumn(Alias::new(table_name).into_iden(), c),
    }
}

/// `value` cast to a column's type (`uuid`, `int8`, `timestamptz`), or as it is.
pub fn typed(value: impl Into<Value>, ty: Option<&str>) -> SimpleExpr {
    let v = Expr::val(value);
    match ty {
        Some(ty) => v.cast_as(Alias::new(ty)),
        None => v.into(),
    }
}

/// A statement sea-query can write for either dialect.
pub trait Statement {
    fn build_for(&self, backend: Backend) -> (String, Values);
}

macro_rules! statement {
    ($($t:ty),*) => {$(
        impl Statement for $t {
            fn build_for(&self, backend: Backend) -> (String, Values) {
                match backend {
                    Backend::Postgres => self.build(PostgresQueryBuilder),
                    Backend::Sqlite => self.build(SqliteQueryBuilder),
                }
            }
        }
    )*};
}
statement!(SelectStatement, UpdateStatement, DeleteStatement, InsertStatement, WithQuery);

/// A sqlx query of the built SQL with its values bound, in order.
pub fn bind<'q>(sql: &'q str, values: &'q Values) -> Query<'q, Any, AnyArguments<'q>> {
    values.iter().fold(sqlx::query(sql), |q, v| match v {
        Value::Bool(b) => q.bind(*b),
        Value::TinyInt(i) => q.bind(i.map(i64::from)),
        Value::SmallInt(i) => q.bind(i.map(i64::from)),
        Value::Int(i) => q.bind(i.map(i64::from)),
        Value::BigInt(i) => q.bind(*i),
        Value::TinyUnsigned(i) => q.bind(i.map(i64::from)),
        Value::SmallUnsigned(i) => q.bind(i.map(i64::from)),
        Value::Unsigned(i) => q.bind(i.map(i64::from)),
        Value::BigUnsigned(i) => q.bind(i.map(|i| i as i64)),
        Value::Float(f) => q.bind(f.map(f64::from)),
        Value::Double(f) => q.bind(*f),
        Value::String(s) => q.bind(s.as_ref().map(|s| s.to_string())),
        Value::Char(c) => q.bind(c.map(|c| c.to_string())),
        Value::Bytes(b) => q.bind(b.as_deref().cloned()),
    })
}

#[cfg(test)]
mod tests {
    use sea_query::Query;

    use super::*;

    #[test]
    fn names_are_quoted_and_values_bound_in_both_dialects() {
        let mut q = Query::select();
        q.expr(col("id"))
            .from(table("crm.people"))
            .and_where(col("org_id").eq("acme"))
            .and_where(col("person_uuid").is_in([typed("x", Some("uuid"))]));
        let (pg, values) = q.build_for(Backend::Postgres);
        assert_eq!(
            pg,
            r#"SELECT "id" FROM "crm"."people" WHERE "org_id" = $1 AND "person_uuid" IN (CAST($2 AS uuid))"#
        );
        assert_eq!(values.0.len(), 2);
        let (lite, _) = q.build_for(Backend::Sqlite);
        assert!(lite.contains(r#""org_id" = ?"#), "{lite}");
    }
}
