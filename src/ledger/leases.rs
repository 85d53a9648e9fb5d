//! Leases on jobs that one replica at a time may run (the retention sweep), in a table, so they
//! work the same on SQLite and Postgres: claimed with one `UPDATE … WHERE lease_until < now`
//! (only one claimer's update matches), renewed while the job runs, given back when it ends. A
//! holder that dies simply stops renewing: the lease expires and another replica claims it.
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Ledger, Result};
use crate::clock::{from_millis, to_millis};

/// The lease of the retention sweep.
pub const SWEEP_LEASE: &str = "retention_sweep";

/// What a claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseClaim {
    Claimed,
    /// Another owner holds it until then.
    Busy {
        until: DateTime<Utc>,
    },
    /// Free, but the scheduled job is not due until then.
    NotDue {
        next: DateTime<Utc>,
    },
}

impl Ledger {
    /// Claims the lease `name` for `owner` until `now + lease`: when nobody holds it (or its
    /// holder let it expire), and — with `due_only` — when the job is due.
    pub async fn claim_lease(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
        due_only: bool,
    ) -> Result<LeaseClaim> {
        let due = if due_only { " AND next_due_at <= $3" } else { "" };
        let n = sqlx::query(&format!(
            "UPDATE dsr_leases SET owner = $1, lease_until = $2 \
             WHERE name = $4 AND (lease_until < $3 OR owner = $1){due}"
        ))
        .bind(owner)
        .bind(to_millis(now) + lease.as_millis() as i64)
        .bind(to_millis(now))
        .bind(name)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(LeaseClaim::Claimed);
        }
        let row = sqlx::query("SELECT lease_until, next_due_at FROM dsr_leases WHERE name = $1")
            .bind(name)
            .fetch_one(self.db.pool())
            .await?;
        let (until, next): (i64, i64) = (row.try_get("lease_until")?, row.try_get("next_due_at")?);
        Ok(if until >= to_millis(now) {
            LeaseClaim::Busy { until: from_millis(until) }
        } else {
            LeaseClaim::NotDue { next: from_millis(next) }
        })
    }

    /// Extends our lease; `false` when it is no longer ours (it expired and was claimed).
    pub async fn renew_named_lease(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let n = sqlx::query("UPDATE dsr_leases SET lease_until = $1 WHERE name = $2 AND owner = $3")
            .bind(to_millis(now) + lease.as_millis() as i64)
            .bind(name)
            .bind(owner)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Gives our lease back, and sets when the job is due next.
    pub async fn release_named_lease(
        &self,
        name: &str,
        owner: &str,
        next_due: Option<DateTime<Utc>>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE dsr_leases SET owner = NULL, lease_until = 0, next_due_at = COALESCE($1, next_due_at) \
             WHERE name = $2 AND owner = $3",
        )
        .bind(next_due.map(to_millis))
        .bind(name)
        .bind(owner)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}
