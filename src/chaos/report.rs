//! The campaign's figures: counts, measured times and every violation, as a table and as JSON.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub seed: u64,
    pub faults: Vec<String>,
    pub kill_rounds: usize,
    /// SIGKILLs of a working server (storm rounds and the killed replica).
    pub kills: usize,
    pub sigterms: usize,
    pub pauses: usize,
    pub pg_restarts: usize,
    pub store_outages: usize,
    /// Tasks the paused replica held when stopped, and how many another replica finished.
    pub paused_tasks_held: usize,
    pub paused_tasks_taken_over: usize,
    /// Deletions submitted, acknowledged, and given up on (never acknowledged).
    pub submitted: usize,
    pub acknowledged: usize,
    pub unacknowledged: usize,
    /// From the ledger after the run.
    pub requests: i64,
    pub completed: i64,
    pub failed: i64,
    pub tasks: i64,
    pub tasks_taken_over: i64,
    /// Measured times, seconds, by what was measured.
    pub timings: BTreeMap<String, Vec<f64>>,
    pub violations: Vec<(String, String)>,
    pub seconds: f64,
}

impl Figures {
    pub fn time(&mut self, what: &str, d: Duration) {
        self.timings.entry(what.to_owned()).or_default().push(d.as_secs_f64());
    }

    pub fn violation(&mut self, invariant: &str, detail: String) {
        self.violations.push((invariant.to_owned(), detail));
    }

    /// The report as people read it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<52} {v}\n"));
        row("seed", self.seed.to_string());
        row("faults", self.faults.join(","));
        row("kill -9 rounds (storm)", self.kill_rounds.to_string());
        row("SIGKILLs", self.kills.to_string());
        row("SIGTERMs", self.sigterms.to_string());
        row("SIGSTOP pauses", self.pauses.to_string());
        row("Postgres restarts", self.pg_restarts.to_string());
        row("store outages", self.store_outages.to_string());
        row(
            "tasks held by the paused replica / taken over",
            format!("{} / {}", self.paused_tasks_held, self.paused_tasks_taken_over),
        );
        row("deletions submitted / acknowledged", format!("{} / {}", self.submitted, self.acknowledged));
        row("never acknowledged (given up)", self.unacknowledged.to_string());
        row(
            "requests in the ledger / completed / failed",
            format!("{} / {} / {}", self.requests, self.completed, self.failed),
        );
        row("store tasks / taken over (attempt > 1)", format!("{} / {}", self.tasks, self.tasks_taken_over));
        for (what, xs) in &self.timings {
            row(&format!("{what} (s)"), summary(xs));
        }
        row("wall time (s)", format!("{:.1}", self.seconds));
        row("violations", self.violations.len().to_string());
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, _) in &self.violations {
            *by_kind.entry(k).or_default() += 1;
        }
        for (k, n) in by_kind {
            row(&format!("  {k}"), n.to_string());
        }
        for (k, d) in self.violations.iter().take(50) {
            out.push_str(&format!("  violation: {k}: {d}\n"));
        }
        out
    }
}

/// `n=…, min … / median … / max …`, or the value itself when there is one.
fn summary(xs: &[f64]) -> String {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => "-".into(),
        1 => format!("{:.2}", s[0]),
        n => format!("n={n}, min {:.2} / median {:.2} / max {:.2}", s[0], s[n / 2], s[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_summarised_by_min_median_and_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), "n=3, min 1.00 / median 2.00 / max 3.00");
        assert_eq!(summary(&[0.5]), "0.50");
        assert_eq!(summary(&[]), "-");
    }
}
