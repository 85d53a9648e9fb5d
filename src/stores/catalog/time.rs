//! A catalog store's time column as it is stored: epoch milliseconds or seconds, ISO 8601 text,
//! or a native timestamp. Bounds are bound as values in the column's own form (a native
//! timestamp gets its text cast on Postgres), and times read back become UTC.
use chrono::{DateTime, SecondsFormat, Utc};

use crate::{catalog::TimeFormat, clock::from_millis, db::Backend};

/// A time as the store's column holds it.
#[derive(Debug, Clone)]
pub enum TimeValue {
    Int(i64),
    Text(String),
}

impl TimeValue {
    pub fn of(format: TimeFormat, at: DateTime<Utc>) -> Self {
        match format {
            TimeFormat::EpochMs => TimeValue::Int(at.timestamp_millis()),
            TimeFormat::EpochS => TimeValue::Int(at.timestamp()),
            // Milliseconds, so a native column compares to the millisecond; ISO text sorts as
            // time does only with one format, so whole seconds as the platform writes them.
            TimeFormat::Timestamp => TimeValue::Text(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            TimeFormat::Iso8601 => TimeValue::Text(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        }
    }

    pub fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self {
            TimeValue::Int(i) => q.bind(*i),
            TimeValue::Text(s) => q.bind(s.as_str()),
        }
    }
}

/// Parameter `$n` as a value of the column: a native timestamp on Postgres gets a cast from its
/// text.
pub fn param(format: TimeFormat, backend: Backend, n: usize) -> String {
    match (format, backend) {
        (TimeFormat::Timestamp, Backend::Postgres) => format!("CAST(${n} AS TIMESTAMPTZ)"),
        _ => format!("${n}"),
    }
}

/// `MAX(column)` as something `read` turns back into a time: epoch milliseconds for a native
/// Postgres timestamp, the column's own form otherwise.
pub fn newest(format: TimeFormat, backend: Backend, column: &str) -> String {
    match (format, backend) {
        (TimeFormat::Timestamp, Backend::Postgres) => {
            format!("CAST(EXTRACT(EPOCH FROM MAX({column})) * 1000 AS BIGINT)")
        }
        (TimeFormat::EpochMs | TimeFormat::EpochS, _) => format!("CAST(MAX({column}) AS BIGINT)"),
        _ => format!("CAST(MAX({column}) AS TEXT)"),
    }
}

/// The time `newest` read, as UTC (`None` for no rows, or text that is no time).
pub fn read(
    format: TimeFormat,
    backend: Backend,
    row: &sqlx::any::AnyRow,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    use sqlx::Row;
    Ok(match (format, backend) {
        (TimeFormat::Timestamp, Backend::Postgres) | (TimeFormat::EpochMs, _) => {
            row.try_get::<Option<i64>, _>(0)?.map(from_millis)
        }
        (TimeFormat::EpochS, _) => {
            row.try_get::<Option<i64>, _>(0)?.map(|s| from_millis(s.saturating_mul(1000)))
        }
        _ => row.try_get::<Option<String>, _>(0)?.and_then(|t| parse_text(&t)),
    })
}

/// ISO 8601 / RFC 3339 text, or SQLite's `YYYY-MM-DD HH:MM:SS[.fff]` (taken as UTC).
fn parse_text(t: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(t.trim()) {
        return Some(d.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_times_read_back_in_every_common_form() {
        let want = "2026-11-30T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for t in [
            "2026-11-30T12:00:00Z",
            "2026-11-30T13:00:00+01:00",
            "2026-11-30 12:00:00",
            "2026-11-30T12:00:00.000",
        ] {
            assert_eq!(parse_text(t), Some(want), "{t}");
        }
        assert_eq!(parse_text("yesterday"), None);
    }
}
