//! The retention schedule (issue 9): how long each store keeps a record, per tenant where the
//! tenant has its own period, and the legal floor no period may go under. Pure: no I/O.
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, Utc};

use super::RETENTION_MONTHS_BILLING;

/// A retention period. Billing runs in months so that "7 years" is 7 calendar years, exactly as
/// the deletion's hold (`retained_until`) states it; the other periods are days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Days(u32),
    Months(u32),
}

impl Period {
    /// The moment `self` before `t`: a record dated before it is past its retention.
    pub fn before(self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Period::Days(d) => t - Duration::days(d.into()),
            Period::Months(m) => t.checked_sub_months(Months::new(m)).unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// The moment `self` after `t`: when a record dated `t` may go.
    pub fn after(self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Period::Days(d) => t + Duration::days(d.into()),
            Period::Months(m) => t.checked_add_months(Months::new(m)).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The longest this period can be, in days (for comparing with a maximum in days).
    pub fn max_days(self) -> u64 {
        match self {
            Period::Days(d) => d.into(),
            // A calendar year is at most 366 days, but 7 years hold at most 2 leap days: count a
            // year as 365 days and add the leap days the span can hold.
            Period::Months(m) => u64::from(m) * 365 / 12 + u64::from(m).div_ceil(48),
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Days(1) => f.write_str("1 day"),
            Period::Days(d) => write!(f, "{d} days"),
            Period::Months(m) if m % 12 == 0 => write!(f, "{} years", m / 12),
            Period::Months(m) => write!(f, "{m} months"),
        }
    }
}

/// The legal floor of each store's retention, if any: billing records are kept 7 years (tax and
/// accounting law), so no tenant may configure less.
pub fn legal_minimum(store: &str) -> Option<Period> {
    (store == "billing").then_some(Period::Months(RETENTION_MONTHS_BILLING))
}

/// The platform's published schedule (docs/api.md): recordings and transcripts 90 days from the
/// call, call metadata 1 year, billing 7 years, accounts 30 days after termination.
pub fn platform_period(store: &str) -> Option<Period> {
    match store {
        "recordings" | "transcripts" => Some(Period::Days(90)),
        "call_logs" => Some(Period::Days(365)),
        "billing" => Some(Period::Months(RETENTION_MONTHS_BILLING)),
        "accounts" => Some(Period::Days(30)),
        _ => None,
    }
}

/// Each store's period, and the tenants that have their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSchedule {
    defaults: BTreeMap<String, Period>,
    tenants: BTreeMap<String, BTreeMap<String, Period>>,
}

impl Default for RetentionSchedule {
    fn default() -> Self {
        let defaults = ["accounts", "call_logs", "transcripts", "recordings", "billing"]
            .into_iter()
            .filter_map(|s| platform_period(s).map(|p| (s.to_owned(), p)))
            .collect();
        Self { defaults, tenants: BTreeMap::new() }
    }
}

impl RetentionSchedule {
    /// Sets the period of a store for every tenant without its own.
    pub fn with_default(mut self, store: &str, period: Period) -> Self {
        self.defaults.insert(store.to_owned(), period);
        self
    }

    /// Sets one tenant's period of one store.
    pub fn with_tenant(mut self, tenant: &str, store: &str, period: Period) -> Self {
        self.tenants.entry(tenant.to_owned()).or_default().insert(store.to_owned(), period);
        self
    }

    /// The period of `store` for `tenant`; `None` when the store has no retention.
    pub fn period(&self, tenant: &str, store: &str) -> Option<Period> {
        self.tenants.get(tenant).and_then(|t| t.get(store)).or_else(|| self.defaults.get(store)).copied()
    }

    /// Records of `store` in `tenant` dated before this are past retention at `now`.
    pub fn cutoff(&self, tenant: &str, store: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.period(tenant, store).map(|p| p.before(now))
    }

    /// The schedule as a table: per store, the default period and each tenant's own.
    pub fn render(&self) -> String {
        let mut out = format!("{:<14} {:<12} PERIOD\n", "STORE", "TENANTS");
        for (store, p) in &self.defaults {
            let others = if self.tenants.values().any(|t| t.contains_key(store)) { "others" } else { "all" };
            out.push_str(&format!("{store:<14} {others:<12} {p}\n"));
            for (tenant, own) in &self.tenants {
                if let Some(p) = own.get(store) {
                    out.push_str(&format!("{store:<14} {tenant:<12} {p}  (tenant's own)\n"));
                }
            }
        }
        out
    }

    /// Whether `tenant` has a period of its own for `store`.
    pub fn overridden(&self, tenant: &str, store: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| t.contains_key(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_schedule_renders_each_tenants_own_period_beside_the_default() {
        let s = RetentionSchedule::default().with_tenant("acme", "recordings", Period::Days(30));
        let text = s.render();
        assert!(text.contains("recordings     others       90 days"), "{text}");
        assert!(text.contains("recordings     acme         30 days  (tenant's own)"), "{text}");
        assert!(text.contains("billing        all          7 years"), "{text}");
    }

    #[test]
    fn the_platform_schedule_and_tenant_periods() {
        let s = RetentionSchedule::default().with_tenant("acme", "recordings", Period::Days(30));
        let now = t("2026-11-28T12:00:00Z");
        assert_eq!(s.cutoff("acme", "recordings", now), Some(t("2026-10-29T12:00:00Z")));
        assert_eq!(s.cutoff("globex", "recordings", now), Some(t("2026-08-30T12:00:00Z")));
        assert_eq!(s.cutoff("acme", "call_logs", now), Some(t("2025-11-28T12:00:00Z")));
        assert_eq!(s.cutoff("acme", "billing", now), Some(t("2019-11-28T12:00:00Z")));
        assert_eq!(s.period("acme", "exports"), None);
        assert!(s.overridden("acme", "recordings") && !s.overridden("acme", "billing"));
    }

    #[test]
    fn seven_years_are_calendar_years_and_fit_their_day_bound() {
        let p = Period::Months(84);
        assert_eq!(p.to_string(), "7 years");
        let start = t("2024-02-29T00:00:00Z");
        assert_eq!(p.after(start), t("2031-02-28T00:00:00Z"));
        for y in 2020..2030 {
            let from = t(&format!("{y}-01-01T00:00:00Z"));
            assert!((p.after(from) - from).num_days() as u64 <= p.max_days(), "{y}");
        }
        assert_eq!(Period::Days(90).to_string(), "90 days");
    }
}
