//! What a request is (kind, regime), how its state moves (outcome and request states), and when
//! it is due.
use chrono::{DateTime, Duration, Months, Utc};

/// Billing records are kept 7 years (tax and accounting law).
pub const RETENTION_MONTHS_BILLING: u32 = 7 * 12;

macro_rules! db_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the ledger.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            pub fn from_db(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

db_enum!(
    /// What the subject asked for.
    RequestKind { Export = "export", Deletion = "deletion", Rectification = "rectification" }
);
db_enum!(
    /// The law the request is made under; it sets the deadline.
    Regime { Unspecified = "unspecified", Gdpr = "gdpr", Ccpa = "ccpa" }
);
db_enum!(
    /// A request's status, derived from its stores' outcomes.
    RequestStatus {
        Pending = "pending",
        InProgress = "in_progress",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
);
db_enum!(
    /// One store's outcome for one request.
    OutcomeState {
        Pending = "pending",
        Running = "running",
        Done = "done",
        Retained = "retained",
        Failed = "failed",
        Skipped = "skipped",
        Cancelled = "cancelled",
    }
);

impl OutcomeState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, OutcomeState::Pending | OutcomeState::Running)
    }
}

impl RequestStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, RequestStatus::Completed | RequestStatus::Failed | RequestStatus::Cancelled)
    }
}

/// A request's status from its outcomes: in progress while any store works or waits (pending if
/// none has started); then FAILED if any store failed, CANCELLED if any was cancelled, else
/// COMPLETED (every store DONE, RETAINED or SKIPPED).
pub fn derive_status(outcomes: impl IntoIterator<Item = (OutcomeState, u32)>) -> RequestStatus {
    let (mut open, mut started, mut failed, mut cancelled) = (false, false, false, false);
    for (state, attempts) in outcomes {
        open |= !state.is_terminal();
        started |= attempts > 0 || state.is_terminal();
        failed |= state == OutcomeState::Failed;
        cancelled |= state == OutcomeState::Cancelled;
    }
    match () {
        _ if open && started => RequestStatus::InProgress,
        _ if open => RequestStatus::Pending,
        _ if failed => RequestStatus::Failed,
        _ if cancelled => RequestStatus::Cancelled,
        _ => RequestStatus::Completed,
    }
}

/// A request's status when some of its stores are kept by a litigation hold: a deletion whose
/// every store has answered but one or more only because a hold forbids the erasure is not done
/// (the person's data is all there, and is erased when the hold is released), so it stays
/// IN_PROGRESS with those stores RETAINED (basis `litigation_hold`). A failure or cancellation
/// elsewhere still ends it as before.
pub fn derive_status_under_holds(
    outcomes: impl IntoIterator<Item = (OutcomeState, u32)>,
    litigation_held: bool,
) -> RequestStatus {
    match derive_status(outcomes) {
        RequestStatus::Completed if litigation_held => RequestStatus::InProgress,
        status => status,
    }
}

/// When a request is due. Deletions (and anything under GDPR or no named regime) follow the
/// platform's own 30-day promise, which is inside GDPR's one month; CCPA allows 45 days.
pub fn due_at(regime: Regime, created: DateTime<Utc>) -> DateTime<Utc> {
    match regime {
        Regime::Ccpa => created + Duration::days(45),
        Regime::Gdpr | Regime::Unspecified => created + Duration::days(30),
    }
}

/// The once-only extension the law allows: GDPR Art. 12(3) two further months, CCPA 45 days.
pub fn extended_due_at(regime: Regime, due: DateTime<Utc>) -> DateTime<Utc> {
    match regime {
        Regime::Ccpa => due + Duration::days(45),
        Regime::Gdpr | Regime::Unspecified => due.checked_add_months(Months::new(2)).unwrap_or(due),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutcomeState::*;

    #[test]
    fn status_follows_the_outcomes() {
        assert_eq!(derive_status([(Pending, 0), (Pending, 0)]), RequestStatus::Pending);
        assert_eq!(derive_status([(Done, 1), (Pending, 0)]), RequestStatus::InProgress);
        assert_eq!(derive_status([(Pending, 2)]), RequestStatus::InProgress);
        assert_eq!(derive_status([(Done, 1), (Retained, 1), (Skipped, 0)]), RequestStatus::Completed);
        assert_eq!(derive_status([(Done, 1), (Failed, 5)]), RequestStatus::Failed);
        assert_eq!(derive_status([(Cancelled, 0), (Done, 1)]), RequestStatus::Cancelled);
        assert_eq!(derive_status([(Failed, 3), (Running, 1)]), RequestStatus::InProgress);
    }

    #[test]
    fn a_request_kept_by_a_litigation_hold_is_in_progress_not_completed() {
        let answered = [(Done, 1), (Retained, 1), (Retained, 1)];
        assert_eq!(derive_status_under_holds(answered, true), RequestStatus::InProgress);
        assert_eq!(derive_status_under_holds(answered, false), RequestStatus::Completed);
        assert_eq!(derive_status_under_holds([(Retained, 1), (Failed, 3)], true), RequestStatus::Failed);
        assert_eq!(derive_status_under_holds([(Retained, 1), (Pending, 0)], true), RequestStatus::InProgress);
    }

    #[test]
    fn deadlines_follow_the_regime() {
        let t = DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(due_at(Regime::Gdpr, t) - t, Duration::days(30));
        assert_eq!(due_at(Regime::Unspecified, t) - t, Duration::days(30));
        assert_eq!(due_at(Regime::Ccpa, t) - t, Duration::days(45));
        assert_eq!(extended_due_at(Regime::Ccpa, t) - t, Duration::days(45));
        assert_eq!(extended_due_at(Regime::Gdpr, t).to_rfc3339(), "2026-03-31T00:00:00+00:00");
    }
}
