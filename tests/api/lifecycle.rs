//! Cancel, list and paging.
use dsr::{
    api::pb::{self, OutcomeState, RequestKind, RequestStatus},
    startup::Overrides,
};
use tonic::Code;

use crate::{both, helpers::*};

/// The seeded platform's stores.
const STORES: [&str; 5] = ["accounts", "call_logs", "transcripts", "recordings", "billing"];

/// A claim's queues: every store, up to `limit` tasks each.
fn every_queue(limit: usize) -> Vec<(&'static str, usize)> {
    STORES.iter().map(|s| (*s, limit)).collect()
}

async fn a_request_cancelled_before_work_starts_is_cancelled_and_erases_nothing(backend: Backend) {
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 3).await;
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let mut c = app.client.clone();
    let cancelled =
        c.cancel_request(pb::CancelRequestRequest { id: r.id.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.status, RequestStatus::Cancelled as i32);
    assert!(cancelled.outcomes.iter().all(|o| o.state == OutcomeState::Cancelled as i32 && o.attempts == 0));
    let held = app.preview(by_phone("acme", &s[0].phone)).await;
    for store in ["accounts", "call_logs", "transcripts", "recordings", "billing"] {
        assert_eq!(holdings(&held, store).records, s[0].counts[store], "{store}");
    }
    let err = c.cancel_request(pb::CancelRequestRequest { id: r.id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let (settings, dir) = app.shutdown().await;

    // A live engine on the same database finds nothing to do.
    let second = spawn_on(settings, dir, Overrides::default()).await;
    assert_eq!(second.get(&r.id).await.status, RequestStatus::Cancelled as i32);
    let held = second.preview(by_phone("acme", &s[0].phone)).await;
    assert_eq!(holdings(&held, "call_logs").records, 3);
    second.shutdown().await;
}
both!(a_request_cancelled_before_work_starts_is_cancelled_and_erases_nothing);

async fn requests_are_listed_newest_first_in_pages_with_filters(backend: Backend) {
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        ids.push(app.delete(by_phone(tenant, &format!("+1415555010{i}"))).await.id);
    }
    let mut c = app.client.clone();
    c.cancel_request(pb::CancelRequestRequest { id: ids[0].clone() }).await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_requests(pb::ListRequestsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.requests.len() <= 2);
        seen.extend(page.requests.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let acme = c
        .list_requests(pb::ListRequestsRequest { tenant_id: "acme".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.requests.len(), 3);
    assert!(acme.requests.iter().all(|r| r.tenant_id == "acme"));
    let cancelled = c
        .list_requests(pb::ListRequestsRequest {
            status: RequestStatus::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.requests.iter().map(|r| &r.id).collect::<Vec<_>>(), vec![&ids[0]]);
    let exports = c
        .list_requests(pb::ListRequestsRequest { kind: RequestKind::Export as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(exports.requests.is_empty());
    let due_soon = c
        .list_requests(pb::ListRequestsRequest { due_within_days: 31, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(due_soon.requests.len(), 4, "open requests due within 31 days");
    let overdue = c
        .list_requests(pb::ListRequestsRequest { overdue: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(overdue.requests.is_empty());
    app.shutdown().await;
}
both!(requests_are_listed_newest_first_in_pages_with_filters);

/// An acknowledged request survives a power loss on SQLite: every commit of the ledger is synced
/// (`synchronous=FULL`) unless `[database] sqlite_synchronous = "normal"` trades that for speed.
#[tokio::test]
async fn the_sqlite_ledger_syncs_every_commit_unless_told_otherwise() {
    let app = spawn_app(Backend::Sqlite).await;
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(app.db.pool()).await.unwrap();
    assert_eq!(level, 2, "FULL");
    app.shutdown().await;
    let config = format!("[database]\nsqlite_synchronous = \"normal\"\n{TEST_CONFIG}");
    let app = spawn_app_with(Backend::Sqlite, &config, Default::default()).await;
    let level: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(app.db.pool()).await.unwrap();
    assert_eq!(level, 1, "NORMAL");
    app.shutdown().await;
}

/// Tasks of one request that end at the same time are ended together (`engine::Finisher`): each
/// still fenced on its own attempt, every outcome recorded once, and the request's end reported
/// by exactly one of them (metrics and export clean-up count on it).
async fn tasks_of_one_request_ending_at_once_report_its_end_once(backend: Backend) {
    use dsr::{
        clock::{Clock, SystemClock},
        engine::{Ended, Finisher},
        ledger::{Fenced, Ledger},
    };
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 2, 1).await;
    let ledger = Ledger::new(app.db.clone());
    let finisher = Finisher::new(ledger.clone(), std::sync::Arc::new(SystemClock));
    let stores = ["accounts", "call_logs", "transcripts", "recordings", "billing"];
    let queues: Vec<(&str, usize)> = stores.iter().map(|s| (*s, 10)).collect();
    let done = done_with_one_record();
    for (i, subject) in s.iter().enumerate() {
        let r = app.delete(by_phone("acme", &subject.phone)).await;
        // Every store due at once (call_logs normally waits for the others), so the request's
        // last tasks end together.
        sqlx::query("UPDATE dsr_tasks SET stage = 0, next_run_at = 0 WHERE request_id = $1")
            .bind(&r.id)
            .execute(app.db.pool())
            .await
            .unwrap();
        let lease = std::time::Duration::from_secs(30);
        let tasks = ledger.claim_due(&queues, 10, "test-worker", lease, SystemClock.now()).await.unwrap();
        assert_eq!(tasks.len(), 5);
        // The second time, one task has a newer attempt elsewhere: its end is not recorded,
        // and the request is not over.
        let stale = (i == 1).then(|| tasks[2].task_id.clone());
        if let Some(id) = &stale {
            sqlx::query("UPDATE dsr_tasks SET attempt = attempt + 1 WHERE id = $1")
                .bind(id)
                .execute(app.db.pool())
                .await
                .unwrap();
        }
        let ends = futures::future::join_all(tasks.iter().map(|t| finisher.finish(t, &done))).await;
        let mut reported_end = 0;
        for (task, end) in tasks.iter().zip(&ends) {
            let end = end.as_ref().unwrap();
            if Some(&task.task_id) == stale.as_ref() {
                assert_eq!(end.fenced, Fenced::Stale, "{}", task.store);
                continue;
            }
            let Ended { fenced: Fenced::Applied(status), reports_status, .. } = end else {
                panic!("{} not recorded: {end:?}", task.store)
            };
            if status.is_terminal() && *reports_status {
                reported_end += 1;
            }
        }
        let got = app.get(&r.id).await;
        let recorded = got.outcomes.iter().filter(|o| o.state == OutcomeState::Done as i32).count();
        if stale.is_some() {
            assert_eq!(got.status, RequestStatus::InProgress as i32, "{got:#?}");
            assert_eq!((recorded, reported_end), (4, 0));
        } else {
            assert_eq!(got.status, RequestStatus::Completed as i32, "{got:#?}");
            assert_eq!((recorded, reported_end), (5, 1));
        }
        // Sealed into the chain (`dsr_events`) or not yet (`dsr_event_journal`).
        let events: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM dsr_events WHERE request_id = $1 AND action = 'outcome') \
             + (SELECT COUNT(*) FROM dsr_event_journal WHERE request_id = $1 AND action = 'outcome')",
        )
        .bind(&r.id)
        .fetch_one(app.db.pool())
        .await
        .unwrap();
        assert_eq!(events as usize, recorded, "one outcome event per recorded end");
    }
    app.shutdown().await;
}
both!(tasks_of_one_request_ending_at_once_report_its_end_once);

/// A task's end says whether it made tasks due now, so that the engine claims again only then
/// (a task's end alone frees room, and matters only to a claim that was short of it): of a
/// deletion's first stage only the end that finishes the stage (call logs are due after it), and
/// not the call logs' own, which completes the request.
async fn only_the_end_that_finishes_a_stage_makes_tasks_due(backend: Backend) {
    use dsr::{
        clock::{Clock, SystemClock},
        engine::Finisher,
        ledger::Ledger,
    };
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 1).await;
    let ledger = Ledger::new(app.db.clone());
    let finisher = Finisher::new(ledger.clone(), std::sync::Arc::new(SystemClock));
    let stores = ["accounts", "call_logs", "transcripts", "recordings", "billing"];
    let queues: Vec<(&str, usize)> = stores.iter().map(|s| (*s, 10)).collect();
    let done = done_with_one_record();
    let r = app.delete(by_phone("acme", &s[0].phone)).await;
    let lease = std::time::Duration::from_secs(30);
    let first = ledger.claim_due(&queues, 10, "test-worker", lease, SystemClock.now()).await.unwrap();
    assert_eq!(first.len(), 4, "call logs wait for the first stage");
    let mut made_due = Vec::new();
    for task in &first {
        made_due.push(finisher.finish(task, &done).await.unwrap().made_due);
    }
    assert_eq!(made_due, [false, false, false, true]);
    let last = ledger.claim_due(&queues, 10, "test-worker", lease, SystemClock.now()).await.unwrap();
    assert_eq!(last.iter().map(|t| t.store.as_str()).collect::<Vec<_>>(), ["call_logs"]);
    let end = finisher.finish(&last[0], &done).await.unwrap();
    assert!(!end.made_due, "the request is complete: {end:?}");
    assert_eq!(app.get(&r.id).await.status, RequestStatus::Completed as i32);
    app.shutdown().await;
}
both!(only_the_end_that_finishes_a_stage_makes_tasks_due);

/// A store's result as the finisher tests hand it over: DONE, one record found and erased.
fn done_with_one_record() -> dsr::ledger::TaskResult {
    dsr::ledger::TaskResult {
        state: dsr::domain::OutcomeState::Done,
        found: 1,
        affected: 1,
        retention_basis: None,
        retained_until: None,
        verified: true,
        unattributed: 0,
        detail: None,
        export: None,
        hold: None,
        late_hold_tags: None,
    }
}

/// A litigation hold placed while a store erased is asked about as the store's end is recorded
/// (`TaskResult::late_hold_tags`): the outcome's retention basis names the hold and its event
/// says the hold came too late; a person no hold covers is recorded as erased plainly. Both ways
/// a task's end is written: alone (on Postgres, the question inside the ending statement) and
/// with a task that records a legal obligation (each end a statement of its own).
async fn a_hold_placed_before_the_end_is_recorded_is_reported_on_the_outcome(backend: Backend) {
    use dsr::{
        clock::{Clock, SystemClock},
        ledger::{Ledger, NewLegalHold, TaskHold, LATE_HOLD_DETAIL},
    };
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 2, 1).await;
    let ledger = Ledger::new(app.db.clone());
    let queues = every_queue(10);
    let lease = std::time::Duration::from_secs(30);
    let held = app.delete(by_phone("acme", &s[0].phone)).await;
    let free = app.delete(by_phone("acme", &s[1].phone)).await;
    let hold = crate::retention::holds(&app)
        .await
        .place_hold(pb::PlaceHoldRequest {
            subject: Some(by_phone("acme", &s[0].phone)),
            reason: "litigation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tags: Vec<String> = sqlx::query_scalar("SELECT tag FROM dsr_hold_subjects WHERE hold_id = $1")
        .bind(&hold.id)
        .fetch_all(app.db.pool())
        .await
        .unwrap();
    assert!(!tags.is_empty());
    let tasks = ledger.claim_due(&queues, 20, "test-worker", lease, SystemClock.now()).await.unwrap();
    let task = |request: &str, store: &str| {
        tasks.iter().find(|t| t.request_id == request && t.store == store).cloned().expect("claimed")
    };
    let erased = dsr::ledger::TaskResult {
        found: 2,
        affected: 2,
        late_hold_tags: Some(tags.clone()),
        ..done_with_one_record()
    };
    let obligation = dsr::ledger::TaskResult {
        state: dsr::domain::OutcomeState::Retained,
        retention_basis: Some("legal_obligation: kept".into()),
        retained_until: Some(SystemClock.now() + chrono::Duration::days(1)),
        hold: Some(TaskHold::LegalObligation(NewLegalHold {
            basis: "legal_obligation: kept".into(),
            until: SystemClock.now() + chrono::Duration::days(1),
            records: vec!["b-1".into()],
            subject_tags: tags.clone(),
        })),
        ..done_with_one_record()
    };
    let now = SystemClock.now();
    // Alone.
    ledger.finish_all(&[(&task(&held.id, "transcripts"), &erased)], now).await.unwrap();
    // Beside a legal obligation.
    let (recordings, billing) = (task(&held.id, "recordings"), task(&held.id, "billing"));
    ledger.finish_all(&[(&recordings, &erased), (&billing, &obligation)], now).await.unwrap();
    // No hold covers the other person.
    let other =
        dsr::ledger::TaskResult { late_hold_tags: Some(vec!["not-a-held-tag".into()]), ..erased.clone() };
    ledger.finish_all(&[(&task(&free.id, "transcripts"), &other)], now).await.unwrap();

    let got = app.get(&held.id).await;
    for store in ["transcripts", "recordings"] {
        let o = outcome(&got, store);
        assert_eq!((o.state, o.records_found), (OutcomeState::Done as i32, 2), "{o:?}");
        assert_eq!(
            o.retention_basis,
            format!(
                "litigation_hold: hold {} was placed while this store erased; the 2 record(s) it held were already erased",
                hold.id
            ),
            "{store}"
        );
    }
    assert!(outcome(&got, "billing").retention_basis.starts_with("legal_obligation"));
    let got_free = app.get(&free.id).await;
    let o = outcome(&got_free, "transcripts");
    assert_eq!((o.state, o.retention_basis.as_str()), (OutcomeState::Done as i32, ""), "{o:?}");
    app.seal_journal().await;
    let details = |id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT COALESCE(detail, '') FROM dsr_events WHERE request_id = $1 AND action = 'outcome' \
                 AND store IN ('transcripts', 'recordings') ORDER BY store",
            )
            .bind(id)
            .fetch_all(db.pool())
            .await
            .unwrap()
        }
    };
    assert_eq!(details(held.id.clone()).await, [LATE_HOLD_DETAIL, LATE_HOLD_DETAIL]);
    assert_eq!(details(free.id.clone()).await, ["done"]);
    app.shutdown().await;
}
both!(a_hold_placed_before_the_end_is_recorded_is_reported_on_the_outcome);

/// Tasks whose worker died (lease expired) are claimed by `claim_due` only: the engine's claims
/// in between (`claim_pending`) look at pending tasks alone, half the scans.
async fn only_claim_due_takes_back_tasks_whose_lease_expired(backend: Backend) {
    use dsr::{
        clock::{Clock, SystemClock},
        ledger::Ledger,
    };
    let overrides = Overrides { paused_engine: true, ..Default::default() };
    let app = spawn_app_with(backend, TEST_CONFIG, overrides).await;
    let s = app.seed("acme", 1, 1).await;
    let ledger = Ledger::new(app.db.clone());
    let queues = every_queue(10);
    app.delete(by_phone("acme", &s[0].phone)).await;
    let short = std::time::Duration::from_millis(1);
    let first = ledger.claim_pending(&queues, 10, "dead-worker", short, SystemClock.now()).await.unwrap();
    assert_eq!(first.len(), 4, "the first stage, pending");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let lease = std::time::Duration::from_secs(30);
    let pending = ledger.claim_pending(&queues, 10, "worker", lease, SystemClock.now()).await.unwrap();
    assert!(pending.is_empty(), "nothing pending: {pending:?}");
    let expired = ledger.claim_due(&queues, 10, "worker", lease, SystemClock.now()).await.unwrap();
    assert_eq!(expired.len(), 4);
    assert!(expired.iter().all(|t| t.attempt == 2), "{expired:?}");
    app.shutdown().await;
}
both!(only_claim_due_takes_back_tasks_whose_lease_expired);

/// A ledger's tasks are almost all finished. The look-up of running tasks whose lease expired
/// on their last attempt (`fail_exhausted`, the engine's every second) reads the running tasks
/// only: SQLite's planner, whose statistics give every (store, state) the table's average, read
/// the whole table (133 ms with a million finished tasks) until `dsr_tasks_leased`.
async fn the_look_up_of_expired_leases_reads_running_tasks_only(backend: Backend) {
    use dsr::ledger::Ledger;
    use sqlx::Row;
    let bare = BareLedger::new(backend).await;
    let db = &bare.db;
    let run = |sql: &'static str| bare.exec(sql);
    // 4,000 finished deletions (20,000 tasks), then one task whose lease expired on its last
    // attempt and one still leased.
    run("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 4001) \
         INSERT INTO dsr_requests (id, tenant_id, kind, status, regime, requested_by, actor, payload_hash, subject_tag, created_at, due_at) \
         SELECT 'r' || CAST(g AS TEXT), 'acme', 'deletion', 'completed', 'gdpr', 'support', 'test', 'p', 't', 0, 0 FROM s")
    .await;
    run("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 4000), \
         stores(store) AS (SELECT 'accounts' UNION ALL SELECT 'call_logs' UNION ALL SELECT 'transcripts' \
           UNION ALL SELECT 'recordings' UNION ALL SELECT 'billing') \
         INSERT INTO dsr_tasks (id, request_id, store, position, stage, state, attempt, attempt_limit, next_run_at) \
         SELECT 'r' || CAST(g AS TEXT) || store, 'r' || CAST(g AS TEXT), store, 0, 0, 'succeeded', 1, 5, 0 FROM s, stores")
    .await;
    run("INSERT INTO dsr_tasks (id, request_id, store, position, stage, state, attempt, attempt_limit, next_run_at, lease_owner, lease_until) \
         VALUES ('dead', 'r4001', 'accounts', 0, 0, 'running', 5, 5, 0, 'w', 100), \
                ('alive', 'r4001', 'billing', 0, 0, 'running', 5, 5, 0, 'w', 100000)")
    .await;
    run("ANALYZE").await;

    let question = Ledger::exhausted_tasks_question(5);
    let stores = STORES;
    let mut q = sqlx::query(&question).bind(1000_i64);
    for s in stores {
        q = q.bind(s);
    }
    let found: Vec<String> =
        q.fetch_all(db.pool()).await.unwrap().iter().map(|r| r.get::<String, _>(0)).collect();
    assert_eq!(found, ["dead"]);

    // The plan, with the values written in (EXPLAIN takes no parameters on Postgres).
    let literal = stores.iter().enumerate().fold(question.replace("$1", "1000"), |sql, (i, s)| {
        sql.replace(&format!("${}", i + 2), &format!("'{s}'"))
    });
    let text = bare.plan(&literal).await.join("\n");
    match backend {
        Backend::Postgres => assert!(!text.contains("Seq Scan"), "{text}"),
        Backend::Sqlite => {
            assert!(text.contains("dsr_tasks_leased") && !text.contains("SCAN t"), "{text}")
        }
    }
    db.close().await;
}
both!(the_look_up_of_expired_leases_reads_running_tasks_only);

/// A page of ListRequests by status, by kind, or of open requests due (overdue, due within)
/// reads an index in the page's order, not every request newest first: on a ledger of 20,000
/// completed deletions, the three failed ones, the one export and the two open ones are
/// listed newest first, and the plans name the listing indexes.
async fn a_filtered_page_of_requests_reads_its_index_not_the_whole_ledger(backend: Backend) {
    use chrono::{Duration, TimeZone, Utc};
    use dsr::{
        domain::{RequestKind, RequestStatus},
        ledger::{ListFilter, Page},
    };
    let bare = BareLedger::new(backend).await;
    let (db, ledger) = (&bare.db, &bare.ledger);
    let run = |sql: &'static str| bare.exec(sql);
    // Created at g seconds; due 30 days later.
    run("WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 20000) \
         INSERT INTO dsr_requests (id, tenant_id, kind, status, regime, requested_by, actor, payload_hash, subject_tag, created_at, due_at, completed_at) \
         SELECT 'r' || CAST(100000 + g AS TEXT), 'acme', 'deletion', 'completed', 'gdpr', 'support', 'test', 'p', 't', g * 1000, g * 1000 + 2592000000, g * 1000 + 60000 FROM s")
    .await;
    run("UPDATE dsr_requests SET status = 'failed' WHERE id IN ('r100010', 'r105000', 'r119990')").await;
    run("UPDATE dsr_requests SET kind = 'export' WHERE id = 'r110000'").await;
    run("UPDATE dsr_requests SET status = 'in_progress', completed_at = NULL WHERE id IN ('r100020', 'r115000')").await;
    run("ANALYZE").await;

    let page = Page { after: None, size: 50 };
    let ids = |filter: ListFilter| {
        let (ledger, page) = (&ledger, &page);
        async move {
            let plan = ledger.explain_list(&filter, page).await.unwrap();
            let (rows, _) = ledger.list(&filter, page).await.unwrap();
            (plan, rows.into_iter().map(|r| r.id).collect::<Vec<_>>())
        }
    };
    let later = Utc.timestamp_millis_opt(20_000_000).unwrap() + Duration::days(31);
    let cases = [
        (
            ListFilter { status: Some(RequestStatus::Failed), ..Default::default() },
            vec!["r119990", "r105000", "r100010"],
            "dsr_requests_status_created",
        ),
        (
            ListFilter { kind: Some(RequestKind::Export), ..Default::default() },
            vec!["r110000"],
            "dsr_requests_kind_created",
        ),
        (
            ListFilter { overdue_at: Some(later), ..Default::default() },
            vec!["r115000", "r100020"],
            "dsr_requests_open_",
        ),
        (
            ListFilter { due_before: Some(later), ..Default::default() },
            vec!["r115000", "r100020"],
            "dsr_requests_open_",
        ),
    ];
    // Open and due: the open requests in page order, or those due by (status, due_at) then
    // sorted; either reads the open requests only.
    for (filter, want, index) in cases {
        let what = format!("{filter:?}");
        let (plan, got) = ids(filter).await;
        assert_eq!(got, want, "{what}");
        assert!(plan.contains(index), "{what} reads {index}…: {plan}");
    }
    db.close().await;
}
both!(a_filtered_page_of_requests_reads_its_index_not_the_whole_ledger);
