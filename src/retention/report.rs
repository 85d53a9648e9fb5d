//! What one sweep found and did, per store and tenant: counts and cutoffs, never an identifier.
use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::domain::Period;

/// One store in one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepUnit {
    pub store: String,
    pub tenant: String,
    /// Records dated before this were past the tenant's period.
    pub cutoff: DateTime<Utc>,
    pub period: Period,
    /// Records found past retention (a dry run: all there are; otherwise those handled, which
    /// after an error is fewer).
    pub expired: u64,
    pub erased: u64,
    /// Expired, but kept: a litigation hold covers them.
    pub held: u64,
    /// What failed; what is left stays expired for the next sweep.
    pub error: Option<String>,
}

impl SweepUnit {
    pub fn new(store: &str, tenant: &str, cutoff: DateTime<Utc>, period: Period) -> Self {
        Self {
            store: store.to_owned(),
            tenant: tenant.to_owned(),
            cutoff,
            period,
            expired: 0,
            erased: 0,
            held: 0,
            error: None,
        }
    }

    /// The detail of its `retention_swept` event.
    pub fn detail(&self) -> String {
        let mut d = format!(
            "cutoff {} (kept {}); {} kept under litigation hold",
            self.cutoff.to_rfc3339(),
            self.period,
            self.held
        );
        if let Some(e) = &self.error {
            let _ = write!(d, "; interrupted: {e}");
        }
        d
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Every (store, tenant) looked at, in sweep order.
    pub units: Vec<SweepUnit>,
    /// Legal obligations ended (dry run: that would end), and records their ending erased.
    pub holds_ended: u64,
    pub legal_erased: u64,
    /// Legal obligations past their date that wait on a litigation hold of their subject.
    pub holds_waiting: u64,
    /// Statements that erased (batches).
    pub batches: u64,
    /// Failures outside one store and tenant (the ledger, a hold).
    pub errors: Vec<String>,
    /// Why the sweep stopped early, if it did.
    pub interrupted: Option<String>,
}

impl SweepReport {
    pub fn new(started_at: DateTime<Utc>, dry_run: bool) -> Self {
        Self {
            dry_run,
            started_at,
            finished_at: started_at,
            units: Vec::new(),
            holds_ended: 0,
            legal_erased: 0,
            holds_waiting: 0,
            batches: 0,
            errors: Vec::new(),
            interrupted: None,
        }
    }

    pub fn expired(&self) -> u64 {
        self.units.iter().map(|u| u.expired).sum()
    }

    pub fn erased(&self) -> u64 {
        self.units.iter().map(|u| u.erased).sum::<u64>() + self.legal_erased
    }

    pub fn held(&self) -> u64 {
        self.units.iter().map(|u| u.held).sum()
    }

    /// The unit of a store in a tenant.
    pub fn unit(&self, store: &str, tenant: &str) -> Option<&SweepUnit> {
        self.units.iter().find(|u| u.store == store && u.tenant == tenant)
    }

    /// Whether anything failed or the sweep stopped early.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.interrupted.is_none() && self.units.iter().all(|u| u.error.is_none())
    }

    /// A table for people (`dsr sweep`): one line per store and tenant with expired records.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "retention sweep at {}{}",
            self.started_at.format("%Y-%m-%d %H:%M:%SZ"),
            if self.dry_run { " (dry run: nothing changed)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<21} {:>10} {:>10} {:>8}  NOTE",
            "STORE",
            "TENANT",
            "CUTOFF",
            "EXPIRED",
            if self.dry_run { "TO ERASE" } else { "ERASED" },
            "HELD"
        );
        let mut shown = 0;
        for u in self.units.iter().filter(|u| u.expired > 0 || u.error.is_some()) {
            shown += 1;
            let erased = if self.dry_run { u.expired - u.held } else { u.erased };
            let _ = writeln!(
                out,
                "{:<12} {:<24} {:<21} {:>10} {:>10} {:>8}  {}",
                u.store,
                u.tenant,
                u.cutoff.format("%Y-%m-%d %H:%M:%SZ"),
                u.expired,
                erased,
                u.held,
                u.error
                    .as_deref()
                    .map(|e| format!("failed: {e}"))
                    .unwrap_or_else(|| format!("kept {}", u.period)),
            );
        }
        if shown == 0 {
            let _ = writeln!(out, "(nothing is past its retention)");
        }
        let verb = if self.dry_run { "would end" } else { "ended" };
        let _ = writeln!(
            out,
            "legal holds: {} {verb}{}, {} waiting on a litigation hold",
            self.holds_ended,
            if self.dry_run { String::new() } else { format!(" ({} records erased)", self.legal_erased) },
            self.holds_waiting
        );
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        if let Some(i) = &self.interrupted {
            let _ = writeln!(out, "interrupted: {i}");
        }
        out
    }
}
