//! The invariants checked after every run, reading the ledger and the platform's tables
//! directly (never through the service): nothing acknowledged lost, every request ended, one
//! outcome per (request, store), no stale attempt writing after a newer one, the audit chain
//! verifies, nothing of an erased subject left, control subjects untouched, no identifier logged.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use sqlx::PgPool;

use super::workload::{Acked, Seeded};

/// One broken invariant: which, and a description with ids and counts only.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// The people a run must leave alone: their rows, digested, and their recording objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSnapshot {
    tables: BTreeMap<&'static str, (i64, String)>,
    objects: BTreeMap<String, Option<u64>>,
}

/// Who is a control: every subject of the bystander tenant (the same phones and emails as
/// the erased ones) and the control subjects of the erased ones' tenant.
pub struct Controls<'a> {
    pub bystander_tenant: &'a str,
    pub tenant: &'a str,
    pub subjects: &'a [Seeded],
}

impl Controls<'_> {
    fn arrays(&self) -> (Vec<String>, Vec<String>) {
        (
            self.subjects.iter().map(|s| s.account_id.clone()).collect(),
            self.subjects.iter().map(|s| s.phone.clone()).collect(),
        )
    }

    /// Row count and digest of every control row, per table; the size of each control recording.
    pub async fn snapshot(
        &self,
        platform: &PgPool,
        recordings_dir: &Path,
    ) -> anyhow::Result<ControlSnapshot> {
        let (accounts, phones) = self.arrays();
        let mut tables = BTreeMap::new();
        for (table, mine) in [
            ("accounts", "id = ANY($3) OR phone = ANY($4)"),
            ("call_logs", "account_id = ANY($3) OR caller_phone = ANY($4)"),
            ("transcripts", "caller_phone = ANY($4)"),
            ("recordings", "caller_phone = ANY($4)"),
            ("billing_records", "account_id = ANY($3) OR caller_phone = ANY($4)"),
        ] {
            let sql = format!(
                "SELECT COUNT(*), COALESCE(md5(string_agg(t::text, '|' ORDER BY t.id)), '') FROM {table} t \
                 WHERE t.tenant_id = $1 OR (t.tenant_id = $2 AND ({mine}))"
            );
            let row: (i64, String) = sqlx::query_as(&sql)
                .bind(self.bystander_tenant)
                .bind(self.tenant)
                .bind(&accounts)
                .bind(&phones)
                .fetch_one(platform)
                .await?;
            tables.insert(table, row);
        }
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT object_key FROM recordings WHERE tenant_id = $1 OR (tenant_id = $2 AND caller_phone = ANY($3))",
        )
        .bind(self.bystander_tenant)
        .bind(self.tenant)
        .bind(&phones)
        .fetch_all(platform)
        .await?;
        let objects = keys
            .into_iter()
            .map(|k| {
                let size = std::fs::metadata(recordings_dir.join(&k)).ok().map(|m| m.len());
                (k, size)
            })
            .collect();
        Ok(ControlSnapshot { tables, objects })
    }
}

/// The keys of the records of the subjects to erase, taken before the run, by account id:
/// afterwards their rows are looked up by these too, not only by identifier.
#[derive(Debug, Clone, Default)]
pub struct ErasedKeys {
    call_ids: HashMap<String, Vec<String>>,
    object_keys: HashMap<String, Vec<String>>,
}

impl ErasedKeys {
    pub async fn take(platform: &PgPool, tenant: &str, subjects: &[Seeded]) -> anyhow::Result<Self> {
        let by_phone: HashMap<&str, &str> =
            subjects.iter().map(|s| (s.phone.as_str(), s.account_id.as_str())).collect();
        let owner = |account: Option<&str>, phone: Option<&str>| -> Option<String> {
            account
                .filter(|a| subjects.iter().any(|s| s.account_id == *a))
                .or_else(|| phone.and_then(|p| by_phone.get(p).copied()))
                .map(str::to_owned)
        };
        let mut keys = Self::default();
        let calls: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT id, account_id, caller_phone FROM call_logs WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_all(platform)
                .await?;
        let mut call_owner = HashMap::new();
        for (id, account, phone) in calls {
            if let Some(who) = owner(account.as_deref(), phone.as_deref()) {
                call_owner.insert(id.clone(), who.clone());
                keys.call_ids.entry(who).or_default().push(id);
            }
        }
        let objects: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT object_key, call_id, caller_phone FROM recordings WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_all(platform)
                .await?;
        for (key, call, phone) in objects {
            let who = call_owner.get(&call).cloned().or_else(|| owner(None, phone.as_deref()));
            if let Some(who) = who {
                keys.object_keys.entry(who).or_default().push(key);
            }
        }
        Ok(keys)
    }

    fn of(map: &HashMap<String, Vec<String>>, acked: &[Acked]) -> Vec<String> {
        acked.iter().flat_map(|a| map.get(&a.subject.account_id).cloned().unwrap_or_default()).collect()
    }
}

/// Everything one run is judged on.
pub struct Evidence<'a> {
    pub acked: &'a [Acked],
    pub tenant: &'a str,
    pub erased_keys: &'a ErasedKeys,
    pub controls_before: &'a ControlSnapshot,
    pub controls_after: &'a ControlSnapshot,
    pub audit_verified: Result<(), String>,
    pub recordings_dir: &'a Path,
    pub logs: &'a [std::path::PathBuf],
}

/// Request outcomes by final status, for the report.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub requests: i64,
    pub completed: i64,
    pub failed: i64,
    pub tasks: i64,
    pub taken_over: i64,
}

pub async fn tally(pool: &PgPool) -> anyhow::Result<Tally> {
    let (requests, completed, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'failed') \
         FROM dsr.dsr_requests",
    )
    .fetch_one(pool)
    .await?;
    let (tasks, taken_over): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(*) FILTER (WHERE attempt > 1) FROM dsr.dsr_tasks")
            .fetch_one(pool)
            .await?;
    Ok(Tally { requests, completed, failed, tasks, taken_over })
}

/// Every invariant; an empty list is a clean run. Reads `dsr_events`, so call it only after
/// every server of the run has stopped and the audit log was verified.
pub async fn check(pool: &PgPool, e: &Evidence<'_>) -> anyhow::Result<Vec<Violation>> {
    let mut v = Vec::new();
    let mut add = |invariant: &'static str, detail: String| v.push(Violation { invariant, detail });

    // No acknowledged request lost.
    let acked_ids: Vec<String> = e.acked.iter().map(|a| a.id.clone()).collect();
    let found: Vec<String> = sqlx::query_scalar("SELECT id FROM dsr.dsr_requests WHERE id = ANY($1)")
        .bind(&acked_ids)
        .fetch_all(pool)
        .await?;
    let found: std::collections::HashSet<_> = found.into_iter().collect();
    for id in acked_ids.iter().filter(|id| !found.contains(*id)) {
        add("acknowledged request lost", id.clone());
    }

    // Every request terminal.
    let open: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM dsr.dsr_requests WHERE status NOT IN ('completed', 'failed', 'cancelled') ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    for (id, status) in open {
        add("request not terminal", format!("{id} is {status}"));
    }

    // Each (request, store) outcome recorded once, with the attempt that ended the task.
    let outcomes: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT t.request_id, t.store, COUNT(e.seq), COALESCE(SUM(CASE WHEN e.attempt = t.attempt THEN 0 ELSE 1 END), 0)::bigint \
         FROM dsr.dsr_tasks t LEFT JOIN dsr.dsr_events e \
           ON e.request_id = t.request_id AND e.store = t.store AND e.action = 'outcome' \
         GROUP BY t.request_id, t.store, t.state \
         HAVING t.state NOT IN ('pending', 'running') AND (COUNT(e.seq) <> 1 OR COALESCE(SUM(CASE WHEN e.attempt = t.attempt THEN 0 ELSE 1 END), 0) <> 0) \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    for (request, store, n, other_attempt) in outcomes {
        match n {
            1 => add("outcome from another attempt than the task's last", format!("{request}/{store}")),
            _ => add(
                "outcome not recorded exactly once",
                format!("{request}/{store}: {n} outcomes ({other_attempt} of another attempt)"),
            ),
        }
    }

    // No effect written by an older attempt after a newer one.
    let stale: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
        "SELECT request_id, store, seq, attempt, action FROM (SELECT request_id, store, seq, attempt, action, \
           MAX(attempt) OVER (PARTITION BY request_id, store ORDER BY seq \
             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newest_before \
           FROM dsr.dsr_events WHERE attempt IS NOT NULL AND store IS NOT NULL) e \
         WHERE attempt < newest_before ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    for (request, store, seq, attempt, action) in stale {
        add(
            "older attempt wrote after a newer one",
            format!("{request}/{store}: event {seq} ({action}) of attempt {attempt}"),
        );
    }

    if let Err(why) = &e.audit_verified {
        add("audit chain does not verify", why.clone());
    }

    for (what, n) in erased_left(pool, e).await? {
        add("erased subject's data left", format!("{n} in {what}"));
    }

    for (table, before) in &e.controls_before.tables {
        let after = e.controls_after.tables.get(table);
        if after != Some(before) {
            let n = after.map(|a| a.0).unwrap_or(-1);
            add(
                "control subjects changed",
                format!("{table}: {} rows before, {n} after, or their content", before.0),
            );
        }
    }
    let objects_changed = e
        .controls_before
        .objects
        .iter()
        .filter(|(k, size)| e.controls_after.objects.get(*k) != Some(size))
        .count();
    if objects_changed > 0 {
        add("control subjects changed", format!("{objects_changed} recording objects"));
    }

    let logged = identifiers_logged(e);
    if logged > 0 {
        add("identifier in a server log", format!("{logged} erased subjects' identifiers"));
    }
    Ok(v)
}

/// What is left of the acknowledged subjects, per table (and recording objects), read directly.
async fn erased_left(pool: &PgPool, e: &Evidence<'_>) -> anyhow::Result<Vec<(&'static str, i64)>> {
    let accounts: Vec<String> = e.acked.iter().map(|a| a.subject.account_id.clone()).collect();
    let phones: Vec<String> = e.acked.iter().map(|a| a.subject.phone.clone()).collect();
    let emails: Vec<String> = e.acked.iter().map(|a| a.subject.email.to_lowercase()).collect();
    let calls = &ErasedKeys::of(&e.erased_keys.call_ids, e.acked);
    let mut left = Vec::new();
    for (table, sql) in [
        (
            "accounts",
            "SELECT COUNT(*) FROM accounts WHERE tenant_id = $1 AND (lower(trim(email)) = ANY($4) OR phone = ANY($3) \
             OR (id = ANY($2) AND (email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL)))",
        ),
        (
            "call_logs",
            "SELECT COUNT(*) FROM call_logs WHERE tenant_id = $1 AND (account_id = ANY($2) OR caller_phone = ANY($3) OR id = ANY($5))",
        ),
        ("transcripts", "SELECT COUNT(*) FROM transcripts WHERE tenant_id = $1 AND (caller_phone = ANY($3) OR call_id = ANY($5))"),
        ("recordings", "SELECT COUNT(*) FROM recordings WHERE tenant_id = $1 AND (caller_phone = ANY($3) OR call_id = ANY($5))"),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(e.tenant)
            .bind(&accounts)
            .bind(&phones)
            .bind(&emails)
            .bind(calls)
            .fetch_one(pool)
            .await?;
        if n > 0 {
            left.push((table, n));
        }
    }
    let objects = ErasedKeys::of(&e.erased_keys.object_keys, e.acked)
        .iter()
        .filter(|k| e.recordings_dir.join(k).exists())
        .count() as i64;
    if objects > 0 {
        left.push(("recording objects", objects));
    }
    Ok(left)
}

/// How many erased subjects have a phone or email in some server log: every word of the logs
/// (split where an identifier cannot continue) looked up once, so the scan is linear.
fn identifiers_logged(e: &Evidence<'_>) -> usize {
    let mut words = std::collections::HashSet::new();
    for text in e.logs.iter().filter_map(|p| std::fs::read_to_string(p).ok()) {
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+@._-".contains(c))) {
            if w.len() >= 8 && !words.contains(w) {
                words.insert(w.trim_matches('.').to_owned());
            }
        }
    }
    e.acked.iter().filter(|a| words.contains(&a.subject.phone) || words.contains(&a.subject.email)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identifier_inside_a_log_line_is_found_and_a_longer_number_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve-1.log");
        std::fs::write(&log, "{\"msg\":\"x\",\"phone\":\"+15550000001\"} +155500000023 a@b.c\n").unwrap();
        let subject = |phone: &str, email: &str| Acked {
            id: "r".into(),
            subject: Seeded {
                tenant_id: "t".into(),
                account_id: "a".into(),
                email: email.into(),
                phone: phone.into(),
            },
        };
        let acked = [subject("+15550000001", "x@example.com"), subject("+15550000002", "y@example.com")];
        let snapshot = ControlSnapshot { tables: BTreeMap::new(), objects: BTreeMap::new() };
        let e = Evidence {
            acked: &acked,
            tenant: "t",
            erased_keys: &ErasedKeys::default(),
            controls_before: &snapshot,
            controls_after: &snapshot,
            audit_verified: Ok(()),
            recordings_dir: dir.path(),
            logs: &[log],
        };
        assert_eq!(identifiers_logged(&e), 1);
    }
}
