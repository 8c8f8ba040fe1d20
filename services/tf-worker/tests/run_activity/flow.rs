//! Flow control (docs/flow-control.md) on the real stack: limits observed where the calls land
//! (a stub that counts requests in flight), with two workers and one of them SIGKILLed.

use std::collections::HashMap;

use tf_testkit::http_stub::HoldingStub;

use super::*;

fn run_at(def_id: &str, version: i32, key: &str, data: Json, event_time_ms: Option<i64>) -> RunInput {
    RunInput { event_time_ms, ..tf_testkit::run_input(def_id, version, key, json!({"id": format!("e-{key}"), "type": "t", "data": data})) }
}

/// Applies a definition on `events.demo` with `flow` as its flow_control block (empty for none)
/// and one task, named `call`, of the fields `task` (`type: http, params: {...}`).
async fn with_task(pool: &sqlx::PgPool, prefix: &str, flow: &str, task: &str) -> (String, i32) {
    let def_id = unique(prefix).to_lowercase();
    let flow = if flow.is_empty() { String::new() } else { format!("flow_control: {flow}\n") };
    let yaml =
        format!("id: {def_id}\nname: {prefix}\ntrigger: {{event: {{topics: [events.demo]}}}}\n{flow}tasks:\n  - {{name: call, {task}}}\n");
    apply_definition(pool, &yaml).await
}

/// ... whose task is an http call to `url` (CEL), `more` being more fields of it.
async fn calling(pool: &sqlx::PgPool, prefix: &str, flow: &str, url: &str, more: &str) -> (String, i32) {
    with_task(pool, prefix, flow, &format!("type: http, {more}params: {{url: \"{url}\"}}")).await
}

/// ... whose task produces `value` (CEL) to `topic`.
async fn producing(pool: &sqlx::PgPool, prefix: &str, flow: &str, topic: &str, value: &str) -> (String, i32) {
    with_task(pool, prefix, flow, &format!("type: kafka, params: {{topic: \"'{topic}'\", value: \"{value}\"}}")).await
}

async fn count_by_status(pool: &sqlx::PgPool, def_id: &str) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM activity_runs WHERE definition_id = $1 GROUP BY status")
        .bind(def_id)
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter().collect()
}

async fn all_done(pool: &sqlx::PgPool, def_id: &str, n: i64, workers: &str) {
    eventually(&format!("{n} runs of {def_id} to end; workers:\n{workers}"), Duration::from_secs(240 + n as u64), || async {
        let by = count_by_status(pool, def_id).await;
        (by.iter().filter(|(s, _)| !matches!(s.as_str(), "running" | "waiting")).map(|(_, n)| n).sum::<i64>() == n).then_some(())
    })
    .await;
}

/// 30 runs of one hot key (`TF_FLOW_TEST_HOT_RUNS` for more) and 3 each of 10 other keys,
/// concurrency 2 per key, two workers, one SIGKILLed after a third of the runs completed: no key
/// ever has more than 2 calls in flight, the hot key uses both, every run completes, and the
/// other keys finish without queueing behind the hot one.
#[tokio::test]
async fn concurrency_per_key_holds_across_two_workers_and_a_sigkill() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = HoldingStub::start(Duration::from_millis(300)).await;
    let queue = unique("it-queue");
    let url = format!("'{}/g/' + event.data.customer", stub.base);
    let (def_id, version) = calling(&pool, "it-flow-conc", "{concurrency: {limit: 2, key: event.data.customer}}", &url, "").await;
    let env = [("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")];
    let mut doomed = worker(&db.url, &queue, &env);
    let survivor = worker(&db.url, &queue, &env);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let hot: usize = std::env::var("TF_FLOW_TEST_HOT_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(30);
    let mut runs = Vec::new();
    for i in 0..hot {
        runs.push(("hot".to_string(), format!("hot-{i}")));
    }
    for k in 0..10 {
        for i in 0..3 {
            runs.push((format!("cold{k}"), format!("cold{k}-{i}")));
        }
    }
    for (customer, key) in &runs {
        tf_temporal::start_run(&client, &queue, run_at(&def_id, version, key, json!({"customer": customer}), None)).await.unwrap();
    }
    let started = std::time::Instant::now();
    let third = runs.len() as i64 / 3;
    eventually("a third of the runs to complete before the SIGKILL", Duration::from_secs(1200), || async {
        (count_by_status(&pool, &def_id).await.get("completed").copied().unwrap_or(0) >= third).then_some(())
    })
    .await;
    doomed.kill();
    all_done(&pool, &def_id, runs.len() as i64, &survivor.log()).await;
    println!("flow: {} runs ({hot} of the hot key) in {:.1} s", runs.len(), started.elapsed().as_secs_f64());

    let by = count_by_status(&pool, &def_id).await;
    assert_eq!(by.get("completed"), Some(&(runs.len() as i64)), "{by:?}; survivor:\n{}", survivor.log());
    assert_eq!(stub.peak("hot"), 2, "the hot key ran exactly 2 at once");
    for k in 0..10 {
        assert!(stub.peak(&format!("cold{k}")) <= 2, "cold{k} peaked at {}", stub.peak(&format!("cold{k}")));
    }
    // Fairness across keys: waiting is per key, so the cold keys' last run did not wait for the
    // hot key's backlog (a single queue would have put it behind all 30).
    let order: Vec<String> =
        sqlx::query_scalar("SELECT dedupe_key FROM activity_runs WHERE definition_id = $1 ORDER BY finished_at, run_id")
            .bind(&def_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let last_cold = order.iter().rposition(|k| k.starts_with("cold")).unwrap();
    let hot_before = order[..last_cold].iter().filter(|k| k.starts_with("hot")).count();
    println!("flow: hot runs finished before the last cold run: {hot_before} of {hot}; peak in flight: hot {}", stub.peak("hot"));
    assert!(hot_before < hot * 2 / 3, "cold keys waited behind the hot key: {hot_before} hot runs finished first");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM flow_slots").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "every slot was released when its run ended");
}

/// A waiting run is `waiting` with its reason, can be cancelled without its turn, and a slot
/// freed by a cancelled holder wakes the next run at once.
#[tokio::test]
async fn a_waiting_run_says_why_and_cancelling_runs_moves_the_queue_on() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = tf_testkit::http_stub::HttpStub::start().await;
    let queue = unique("it-queue");
    let url = format!("'{}/' + event.data.path", stub.base);
    let flow = "{concurrency: {limit: 1}, priority: event.data.priority}";
    let (def_id, version) = calling(&pool, "it-flow-wait", flow, &url, "").await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let status = |run_id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>("SELECT status, status_reason FROM activity_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    tf_temporal::start_run(&client, &queue, run_at(&def_id, version, "holder", json!({"path": "hang/1", "priority": 0}), None))
        .await
        .unwrap();
    eventually("the holder to call out", Duration::from_secs(60), || async { (!stub.requests().is_empty()).then_some(()) }).await;
    for (key, priority) in [("low", 0), ("cancelled", 0), ("high", 5)] {
        let data = json!({"path": format!("ok/{key}"), "priority": priority});
        tf_temporal::start_run(&client, &queue, run_at(&def_id, version, key, data, None)).await.unwrap();
    }
    let (st, reason) =
        eventually("the last run to wait", Duration::from_secs(60), || async { status(run("high")).await.filter(|(s, _)| s == "waiting") })
            .await;
    assert_eq!(st, "waiting");
    assert_eq!(reason.as_deref(), Some("concurrency 1/1, 0 ahead"), "priority 5 goes before the two waiting with 0");
    let low = status(run("low")).await.unwrap();
    assert_eq!(low.0, "waiting");
    assert!(low.1.as_deref().unwrap_or_default().starts_with("concurrency 1/1, "), "{low:?}");

    tf_temporal::run_control::cancel_run(&client, &run("cancelled"), tf_definitions::RunStatus::Waiting, "not needed").await.unwrap();
    eventually("the waiting run to be cancelled", Duration::from_secs(60), || async {
        status(run("cancelled")).await.filter(|(s, _)| s == "cancelled")
    })
    .await;
    tf_temporal::run_control::cancel_run(&client, &run("holder"), tf_definitions::RunStatus::Running, "free the slot").await.unwrap();
    for key in ["high", "low"] {
        eventually(&format!("{key} to complete; worker:\n{}", w.log()), Duration::from_secs(60), || async {
            status(run(key)).await.filter(|(s, _)| s == "completed")
        })
        .await;
    }
    let calls: Vec<String> = stub.requests().into_iter().filter(|r| r.contains("/ok/")).collect();
    assert_eq!(calls.len(), 2, "the cancelled run never called: {calls:?}");
    assert!(calls[0].contains("/ok/high") && calls[1].contains("/ok/low"), "higher priority first: {calls:?}");
    assert_eq!(status(run("holder")).await.unwrap().0, "cancelled");
}

/// rate_limit 5 per minute of event time: 12 events in one minute start 5 runs and record 7
/// skipped with the reason; 3 events of the next minute all run; asking again (a redelivery)
/// gets the same answer.
#[tokio::test]
async fn a_rate_limit_admits_n_per_event_time_window_and_records_the_rest_as_skipped() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let topic = unique("it-rl");
    create_topic(&s, &topic, 1).await;
    let flow = "{rate_limit: {limit: 5, period: 1m, key: event.data.customer}}";
    let (def_id, version) = producing(&pool, "it-flow-rate", flow, &topic, "{'n': event.data.n}").await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    // An old window on purpose: periods are event time, whatever the clock says now.
    let minute = 1_700_000_040_000_i64;
    for n in 0..12 {
        let input = run_at(&def_id, version, &format!("a-{n}"), json!({"customer": "c", "n": n}), Some(minute + n * 1000));
        tf_temporal::start_run(&client, &queue, input).await.unwrap();
    }
    for n in 0..3 {
        let input = run_at(&def_id, version, &format!("b-{n}"), json!({"customer": "c", "n": n}), Some(minute + 60_000 + n));
        tf_temporal::start_run(&client, &queue, input).await.unwrap();
    }
    all_done(&pool, &def_id, 15, &w.log()).await;
    let by = count_by_status(&pool, &def_id).await;
    assert_eq!((by.get("completed"), by.get("skipped")), (Some(&8), Some(&7)), "{by:?}");
    let reasons: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT status_reason FROM activity_runs WHERE definition_id = $1 AND status = 'skipped'")
            .bind(&def_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(reasons, [Some("rate_limited 5/1m key c".to_string())]);
    let first_window: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM activity_runs WHERE definition_id = $1 AND status = 'completed' AND dedupe_key LIKE 'a-%'",
    )
    .bind(&def_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(first_window, 5);
    // A skipped run's decision stands: deciding again for each run gives the recorded answer.
    let admission = tf_definitions::flow::Admission {
        rate_limit: Some(tf_definitions::flow::RateLimitAt { key: "c".into(), limit: 5, period_ms: 60_000, window_start_ms: minute }),
        concurrency: None,
        throttle: None,
        priority: 0,
        singleton: None,
        debounce: None,
        batch: None,
    };
    let ids: Vec<(String, String)> =
        sqlx::query_as("SELECT run_id, status FROM activity_runs WHERE definition_id = $1 AND dedupe_key LIKE 'a-%'")
            .bind(&def_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    for (run_id, status) in ids {
        let verdict =
            tf_store::flow::admit(&pool, &tf_definitions::RunId::from_workflow_id(run_id.clone()), &def_id, &admission, &Json::Null)
                .await
                .unwrap()
                .verdict;
        assert_eq!(matches!(verdict, tf_store::flow::Verdict::Skip { .. }), status == "skipped", "{run_id} {status} {verdict:?}");
    }
}

/// throttle 10 per second, no burst, over 40 runs started at once: none dropped, and no run
/// executes before its turn: the k-th admission comes at least (k-1) x 100 ms after the first.
/// Arrivals at the called system are printed, not asserted: a worker that is behind (40 runs
/// begun at once) calls out late, and late calls can bunch (docs/flow-control.md).
#[tokio::test]
async fn a_throttle_spaces_starts_and_drops_none() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = HoldingStub::start(Duration::from_millis(1)).await;
    let queue = unique("it-queue");
    let url = format!("'{}/g/all'", stub.base);
    let (def_id, version) = calling(&pool, "it-flow-throttle", "{throttle: {limit: 10, period: 1s}}", &url, "").await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    for n in 0..40 {
        tf_temporal::start_run(&client, &queue, run_at(&def_id, version, &format!("t-{n}"), json!({}), None)).await.unwrap();
    }
    all_done(&pool, &def_id, 40, &w.log()).await;
    assert_eq!(count_by_status(&pool, &def_id).await.get("completed"), Some(&40));
    let admitted: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM admitted_at)::float8 * 1000 FROM activity_runs WHERE definition_id = $1 ORDER BY admitted_at",
    )
    .bind(&def_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(admitted.len(), 40);
    for (k, at) in admitted.iter().enumerate() {
        // The k-th run is admitted at or after its scheduled start, k x 100 ms after the first
        // run's; the first run's own admission comes a little after its start (two statements,
        // 7 ms once under CI's load), so one interval of slack: a throttle that let runs through
        // early would admit all 40 within the first second.
        assert!(at - admitted[0] >= k as f64 * 100.0 - 100.0, "admission {k} came {:.0} ms after the first", at - admitted[0]);
    }
    let arrivals = stub.arrivals("all");
    assert_eq!(arrivals.len(), 40, "none dropped, none called twice");
    let busiest = (0..arrivals.len())
        .map(|i| arrivals[i..].iter().take_while(|t| t.duration_since(arrivals[i]) < Duration::from_secs(1)).count())
        .max()
        .unwrap();
    let span = (admitted[39] - admitted[0]) / 1000.0;
    println!("throttle: 40 admissions over {span:.2} s ({:.2}/s); busiest second of calls at the stub: {busiest}", 39.0 / span);
}

/// A shared budget of 3 used by the http tasks of two definitions, on two workers: never more
/// than 3 calls in flight at the called system, and all of them made. A template naming a
/// budget no worker declares fails its task with the reason.
#[tokio::test]
async fn a_shared_budget_caps_calls_across_definitions_and_workers() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = HoldingStub::start(Duration::from_millis(200)).await;
    let queue = unique("it-queue");
    let mut defs = Vec::new();
    let url = format!("'{}/g/crm'", stub.base);
    for (name, budget) in [("a", "crm-api"), ("b", "crm-api"), ("c", "nobody-declared")] {
        let task = format!("budget: {budget}, for_each: '[1, 2]', ");
        defs.push(calling(&pool, &format!("it-flow-budget-{name}"), "", &url, &task).await);
    }
    let env = [("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1"), ("TF_BUDGETS", "crm-api=3, other=1")];
    let w1 = worker(&db.url, &queue, &env);
    let w2 = worker(&db.url, &queue, &env);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    for n in 0..10 {
        for (def_id, version) in &defs[..2] {
            tf_temporal::start_run(&client, &queue, run_at(def_id, *version, &format!("k-{n}"), json!({}), None)).await.unwrap();
        }
    }
    let (bad_id, bad_version) = &defs[2];
    tf_temporal::start_run(&client, &queue, run_at(bad_id, *bad_version, "k", json!({}), None)).await.unwrap();
    for (def_id, _) in &defs[..2] {
        all_done(&pool, def_id, 10, &format!("{}\n{}", w1.log(), w2.log())).await;
        assert_eq!(count_by_status(&pool, def_id).await.get("completed"), Some(&10));
    }
    assert_eq!(stub.arrivals("crm").len(), 40, "every task called once");
    assert_eq!(stub.peak("crm"), 3, "the two definitions together held at most 3 calls in flight, and used all 3");
    all_done(&pool, bad_id, 1, &w1.log()).await;
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM tasks t JOIN activity_runs r USING (run_id) WHERE r.definition_id = $1 LIMIT 1")
            .bind(bad_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let error = error.unwrap_or_default();
    assert!(error.contains("budget \"nobody-declared\" is not configured on this worker (TF_BUDGETS declares: crm-api, other)"), "{error}");
}

/// singleton: with `mode: skip` a second run of an active key is skipped (another key runs);
/// with `mode: cancel` it cancels the active run, which ends `cancelled`, and executes after it.
#[tokio::test]
async fn a_singleton_skips_or_replaces_the_active_run_of_its_key() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = tf_testkit::http_stub::HttpStub::start().await;
    let queue = unique("it-queue");
    let mut defs = Vec::new();
    let url = format!("'{}/' + event.data.path", stub.base);
    for mode in ["skip", "cancel"] {
        let flow = format!("{{singleton: {{mode: {mode}, key: event.data.customer}}}}");
        defs.push(calling(&pool, &format!("it-flow-single-{mode}"), &flow, &url, "").await);
    }
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let row = |run_id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>("SELECT status, status_reason FROM activity_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    let called = |path: &'static str| {
        let stub = &stub;
        async move { stub.requests().iter().any(|r| r.contains(path)).then_some(()) }
    };
    for (def_id, version) in &defs {
        let run = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(def_id, 1).to_string();
        let start = |key: &'static str, customer: &'static str, path: String| {
            let input = run_at(def_id, *version, key, json!({"customer": customer, "path": path}), None);
            let (client, queue) = (client.clone(), queue.clone());
            async move { tf_temporal::start_run(&client, &queue, input).await.unwrap() }
        };
        let mode = if def_id.contains("-skip") { "skip" } else { "cancel" };
        start("first", "c", format!("hang/{mode}")).await;
        eventually("the first run to call out", Duration::from_secs(60), || {
            called(if mode == "skip" { "/hang/skip" } else { "/hang/cancel" })
        })
        .await;
        start("second", "c", format!("ok/{mode}/second")).await;
        start("other", "d", format!("ok/{mode}/other")).await;
        let other = eventually("the other key's run to complete", Duration::from_secs(60), || async {
            row(run("other")).await.filter(|(s, _)| s == "completed")
        })
        .await;
        assert_eq!(other.1, None);
        if mode == "skip" {
            let (st, reason) = eventually("the second run to be skipped", Duration::from_secs(60), || async {
                row(run("second")).await.filter(|(s, _)| s != "running" && s != "waiting")
            })
            .await;
            assert_eq!(st, "skipped", "worker:\n{}", w.log());
            assert_eq!(reason.unwrap(), format!("singleton: {} is active key c", run("first")));
            assert_eq!(row(run("first")).await.unwrap().0, "running", "the active run goes on");
            tf_temporal::run_control::cancel_run(&client, &run("first"), tf_definitions::RunStatus::Running, "end of test").await.unwrap();
        } else {
            let (st, _) = eventually("the second run to complete", Duration::from_secs(60), || async {
                row(run("second")).await.filter(|(s, _)| s != "running" && s != "waiting")
            })
            .await;
            assert_eq!(st, "completed", "worker:\n{}", w.log());
            assert_eq!(row(run("first")).await.unwrap().0, "cancelled", "the new run replaced the active one");
            let error: Option<String> =
                sqlx::query_scalar("SELECT error FROM tasks WHERE run_id = $1").bind(run("first")).fetch_one(&pool).await.unwrap();
            assert!(error.unwrap_or_default().contains(&format!("replaced by {} (singleton)", run("second"))));
        }
    }
    assert!(!stub.requests().iter().any(|r| r.contains("/ok/skip/second")), "the skipped run called nothing");
}

/// debounce: 50 events of one key within a second start one run, with the last event, once 2 s
/// passed without another; the other 49 end skipped with the reason. With `max_wait`, a burst
/// that never pauses (an event every 300 ms for 4 s, period 1 s) still runs before it ends.
#[tokio::test]
async fn a_debounce_runs_a_burst_once_with_its_last_event_and_max_wait_bounds_an_endless_one() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = tf_testkit::http_stub::HttpStub::start().await;
    let queue = unique("it-queue");
    let url = format!("'{}/n/' + string(event.data.n)", stub.base);
    let quiet = calling(&pool, "it-flow-debounce", "{debounce: {period: 2s, key: event.data.customer}}", &url, "").await;
    let endless = calling(&pool, "it-flow-debounce-max", "{debounce: {period: 1s, max_wait: 2s}}", &url, "").await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    // Event times one apart; the runs begin in whatever order the worker takes them.
    for n in 0..50 {
        let input = run_at(&quiet.0, quiet.1, &format!("d-{n}"), json!({"customer": "c", "n": n}), Some(1_700_000_000_000 + n));
        tf_temporal::start_run(&client, &queue, input).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    all_done(&pool, &quiet.0, 50, &w.log()).await;
    let by = count_by_status(&pool, &quiet.0).await;
    assert_eq!((by.get("completed"), by.get("skipped")), (Some(&1), Some(&49)), "{by:?}");
    let ran: String = sqlx::query_scalar("SELECT dedupe_key FROM activity_runs WHERE definition_id = $1 AND status = 'completed'")
        .bind(&quiet.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ran, "d-49", "the burst ran with its last event");
    assert_eq!(stub.requests().iter().filter(|r| r.contains("/n/")).count(), 1);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT status_reason FROM activity_runs WHERE definition_id = $1 AND status = 'skipped'")
            .bind(&quiet.0)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(reasons.iter().all(|r| r.starts_with("debounced: ") && r.ends_with(" is newer key c")), "{reasons:?}");

    for n in 0..14 {
        let input = run_at(&endless.0, endless.1, &format!("e-{n}"), json!({"n": n}), None);
        tf_temporal::start_run(&client, &queue, input).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all_done(&pool, &endless.0, 14, &w.log()).await;
    let by = count_by_status(&pool, &endless.0).await;
    let completed = by.get("completed").copied().unwrap_or(0);
    println!("debounce: an endless burst of 14 events over ~4.2 s (period 1 s, max_wait 2 s) ran {completed} time(s)");
    assert!(completed >= 2, "max_wait let the never-pausing burst run before it ended: {by:?}");
    assert_eq!(completed + by.get("skipped").copied().unwrap_or(0), 14, "{by:?}");
}

/// batch of 20 or 10 s: 50 events of one key become 3 runs whose tasks see 20, 20 and 10
/// events (the last batch closed by its wait), each event in exactly one batch; the other 47
/// runs end skipped with `batched into <run>`.
#[tokio::test]
async fn a_batch_gathers_the_events_of_a_key_into_runs_of_the_expected_sizes() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let topic = unique("it-batch");
    create_topic(&s, &topic, 1).await;
    let flow = "{batch: {max_size: 20, max_wait: 10s, key: event.data.customer}}";
    let value = "{'size': size(events), 'ns': events.map(e, e.data.n)}";
    let (def_id, version) = producing(&pool, "it-flow-batch", flow, &topic, value).await;
    let w = worker(&db.url, &queue, &[("TF_NO_RELAY", "true")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    for n in 0..50 {
        let input = run_at(&def_id, version, &format!("b-{n}"), json!({"customer": "c", "n": n}), None);
        tf_temporal::start_run(&client, &queue, input).await.unwrap();
    }
    all_done(&pool, &def_id, 50, &w.log()).await;
    let by = count_by_status(&pool, &def_id).await;
    assert_eq!((by.get("completed"), by.get("skipped")), (Some(&3), Some(&47)), "{by:?}; worker:\n{}", w.log());
    let values: Vec<Json> =
        sqlx::query_scalar("SELECT t.params->'value' FROM tasks t JOIN activity_runs r USING (run_id) WHERE r.definition_id = $1")
            .bind(&def_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut sizes: Vec<i64> = values.iter().map(|v| v["size"].as_i64().unwrap()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [10, 20, 20], "{values:?}");
    let mut ns: Vec<i64> = values.iter().flat_map(|v| v["ns"].as_array().unwrap().iter().map(|n| n.as_i64().unwrap())).collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..50).collect::<Vec<i64>>(), "every event in exactly one batch");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT status_reason FROM activity_runs WHERE definition_id = $1 AND status = 'skipped'")
            .bind(&def_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(reasons.iter().all(|r| r.starts_with(&format!("batched into run/{def_id}/")) && r.ends_with(" key c")), "{reasons:?}");
    tf_testkit::delete_topics(&s, &[&topic]).await;
}
