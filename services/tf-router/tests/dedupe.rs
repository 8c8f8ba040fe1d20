//! Dedupe windows on the real stack (docs/design.md, "Dedupe and exactly-once"): one run per key
//! per window (generation), a new run after it, replays that start nothing, windows that end
//! while their run waits, and failed runs that a later event of their window runs again.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use serde_json::json;
use tf_testkit::{create_topic, eventually, settings, unique};

mod common;

use common::{committed, setup};

fn now_ms() -> i64 {
    tf_envelope::Timestamp::now().0
}

#[tokio::test]
async fn window_2s_gives_one_run_per_window_a_new_run_after_it_and_a_replay_starts_nothing() {
    let sink = unique("it-sink");
    create_topic(&settings(), &sink, 1).await;
    let definition = format!(
        r#"
id: DEF_ID
name: Windowed
trigger: {{event: {{topics: [TOPIC], type: com.example.order.*}}}}
dedupe: {{key: event.data.order_id, window: 2s}}
tasks:
  - name: notify
    type: kafka
    params: {{topic: "'{sink}'", value: "{{'order': event.data.order_id, 'event': event.id}}"}}
"#
    );
    let t = setup(1, &definition).await;
    let _worker = t.worker_with_relay();
    let group = unique("it-group");
    let mut router = t.router(&group, &[]);

    let t0 = now_ms();
    t.send(0, "a", &t.envelope_at("e1", json!({"order_id": "K"}), t0).await).await;
    t.send(0, "b", &t.envelope_at("e2", json!({"order_id": "K"}), t0 + 1_000).await).await; // same window
    t.send(0, "c", &t.envelope_at("e3", json!({"order_id": "K"}), t0 + 3_000).await).await; // next window
    eventually("3 records committed", Duration::from_secs(90), || async { (committed(&group, &t.topic, 1) == 3).then_some(()) }).await;
    let rows = eventually("two completed runs", Duration::from_secs(90), || async {
        let rows = t.run_rows().await;
        (rows.len() == 2 && rows.iter().all(|r| r.2 == "completed")).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        [("K".to_string(), 1, "completed".to_string(), 1), ("K".to_string(), 2, "completed".to_string(), 1)],
        "router log:\n{}",
        router.log()
    );
    let runs: Vec<(String, String)> =
        sqlx::query_as("SELECT run_id, event_id FROM activity_runs ORDER BY generation").fetch_all(&t.pool).await.unwrap();
    assert!(runs[0].0.ends_with("/K/1") && runs[1].0.ends_with("/K/2"), "workflow ids carry the generation: {runs:?}");
    let mut events: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
    events.sort();
    // e1 and e2 share a window; whichever was resolved first started its run.
    assert!(events == ["e1", "e3"] || events == ["e2", "e3"], "{events:?}");
    // Each run has its own task and its own result on taskfactory.results.
    for (run_id, event_id) in &runs {
        let results = eventually("the run's result", Duration::from_secs(60), || async {
            let r = tf_testkit::results_for(run_id).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(results.len(), 1, "{run_id}: {results:?}");
        assert_eq!(results[0]["trigger"]["event_id"], event_id.as_str());
    }
    let (ok, listed, _) = t.tf(&["runs", "list"]);
    assert!(ok && listed.contains(&runs[0].0) && listed.contains(&runs[1].0), "{listed}");

    // Both windows have long expired in wall-clock time; a replay from the earliest offset maps
    // every event to its old generation and starts nothing.
    tokio::time::sleep(Duration::from_millis((t0 + 5_000 - now_ms()).max(0) as u64)).await;
    assert!(router.terminate());
    let (ok, out, err) = t.tf(&["consumer", "reset-offsets", "--group", &group, "--topics", &t.topic, "--to-earliest", "--execute"]);
    assert!(ok, "{out}{err}");
    let metrics = tf_testkit::free_local_addr();
    router = t.router(&group, &[("TF_ROUTER_METRICS_ADDR", &metrics)]);
    eventually("the replay to commit", Duration::from_secs(60), || async {
        (tf_testkit::scrape_metric(&metrics, "tf_router_records_total") == Some(3.0) && committed(&group, &t.topic, 1) == 3).then_some(())
    })
    .await;
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_router_runs_started_total"), Some(0.0), "no start at all");
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_router_generations_opened_total"), Some(0.0));
    assert_eq!(tf_testkit::scrape_metric(&metrics, r#"tf_router_runs_deduplicated_total{by="claim"}"#), Some(3.0));
    assert_eq!(t.run_rows().await.len(), 2, "no new run");
    drop(router);
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
}

#[tokio::test]
async fn a_window_that_ends_while_its_run_waits_on_a_human_lets_the_next_event_start_a_second_run() {
    let definition = r#"
id: DEF_ID
name: Reviewed
trigger: {event: {topics: [TOPIC], type: com.example.order.*}}
dedupe: {key: event.data.order_id, window: 2s}
tasks:
  - {name: review, type: human, params: {order: event.data.order_id}}
"#;
    let t = setup(1, definition).await;
    let _worker = t.worker();
    let _router = t.router(&unique("it-group"), &[]);
    let t0 = now_ms();
    t.send(0, "a", &t.envelope_at("e1", json!({"order_id": "H"}), t0).await).await;
    eventually("run 1 awaiting its human", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'awaiting_human'").fetch_one(&t.pool).await.unwrap();
        (n == 1).then_some(())
    })
    .await;
    t.send(0, "b", &t.envelope_at("e2", json!({"order_id": "H"}), t0 + 5_000).await).await;
    let rows = eventually("run 2 beside run 1", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'awaiting_human'").fetch_one(&t.pool).await.unwrap();
        let rows = t.run_rows().await;
        (n == 2).then_some(rows)
    })
    .await;
    assert_eq!(rows, [("H".to_string(), 1, "running".to_string(), 1), ("H".to_string(), 2, "running".to_string(), 1)]);
}

#[tokio::test]
async fn a_failed_run_is_run_again_by_the_next_event_of_its_window_or_tf_runs_retry_and_a_completed_one_is_not() {
    // The context query fails until the table exists: the runs fail, their generations stay
    // open for a retry.
    let table = unique("it_stock").replace('-', "_");
    let definition = format!(
        r#"
id: DEF_ID
name: Flaky context
trigger: {{event: {{topics: [TOPIC], type: com.example.order.*}}}}
dedupe: {{key: event.data.order_id, window: 1h}}
context:
  stock: {{sql: {{datasource: own, query: "SELECT count(*) AS n FROM {table}"}}}}
tasks:
  - {{name: noop, type: human, when: "false"}}
"#
    );
    let t = setup(1, &definition).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let router = t.router(&group, &[]);
    let t0 = now_ms();
    t.send(0, "a", &t.envelope_at("e1", json!({"order_id": "F"}), t0).await).await;
    t.send(0, "b", &t.envelope_at("e2", json!({"order_id": "G"}), t0).await).await;
    let failed = |k: &str| (k.to_string(), 1, "failed".to_string(), 1);
    eventually("both runs to fail", Duration::from_secs(60), || async { (t.run_rows().await == [failed("F"), failed("G")]).then_some(()) })
        .await;

    sqlx::query(&format!("CREATE TABLE {table} (sku text)")).execute(&t.pool).await.unwrap();
    // F: a new event of the same window runs it again.
    t.send(0, "c", &t.envelope_at("e3", json!({"order_id": "F"}), t0 + 10_000).await).await;
    // G: an operator retries it.
    let g_run: String = sqlx::query_scalar("SELECT run_id FROM activity_runs WHERE dedupe_key = 'G'").fetch_one(&t.pool).await.unwrap();
    let (ok, out, err) = t.tf(&["runs", "retry", &g_run]);
    assert!(ok, "{out}{err}");
    let done = |k: &str| (k.to_string(), 1, "completed".to_string(), 2);
    eventually("attempt 2 of both to complete", Duration::from_secs(60), || async {
        (t.run_rows().await == [done("F"), done("G")]).then_some(())
    })
    .await;
    let context: serde_json::Value =
        sqlx::query_scalar("SELECT context FROM activity_runs WHERE dedupe_key = 'F'").fetch_one(&t.pool).await.unwrap();
    assert_eq!(context, json!({"stock": [{"n": 0}]}));

    // Completed: a further event of the window starts nothing, and retry is refused.
    t.send(0, "d", &t.envelope_at("e4", json!({"order_id": "F"}), t0 + 20_000).await).await;
    eventually("4 records committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 4).then_some(()) }).await;
    let (ok, _, err) = t.tf(&["runs", "retry", &g_run]);
    assert!(!ok && err.contains("is completed; only failed or cancelled runs are retried"), "{err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.run_rows().await, [done("F"), done("G")], "router log:\n{}", router.log());
}

#[tokio::test]
async fn repeats_before_the_run_begins_cost_no_temporal_start_until_the_remembered_start_expires() {
    let definition = r#"
id: DEF_ID
name: Burst
trigger: {event: {topics: [TOPIC], type: com.example.order.*}}
dedupe: {key: event.data.order_id, window: 1h}
tasks:
  - {name: noop, type: human, when: "false"}
"#;
    let t = setup(1, definition).await;
    // No worker yet: the run waits on its task queue and has not begun, as when the worker
    // trails a burst. The claim knows of no run; only the router's memory of the start does.
    let group = unique("it-group");
    let metrics = tf_testkit::free_local_addr();
    let router = t.router(&group, &[("TF_ROUTER_METRICS_ADDR", &metrics), ("TF_ROUTER_RECENT_START_TTL", "4")]);
    let metric = |name: &str| tf_testkit::scrape_metric(&metrics, name);
    let t0 = now_ms();
    t.send(0, "a", &t.envelope_at("e1", json!({"order_id": "R"}), t0).await).await;
    eventually("e1 committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 1).then_some(()) }).await;
    let acknowledged = std::time::Instant::now();
    t.send(0, "b", &t.envelope_at("e2", json!({"order_id": "R"}), t0 + 1_000).await).await;
    t.send(0, "c", &t.envelope_at("e3", json!({"order_id": "R"}), t0 + 2_000).await).await;
    eventually("e2, e3 committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 3).then_some(()) }).await;
    assert!(
        acknowledged.elapsed() < Duration::from_secs(4),
        "the repeats must arrive within the 4 s memory for this test to mean anything"
    );
    assert_eq!(metric("tf_router_runs_started_total"), Some(1.0));
    assert_eq!(metric(r#"tf_router_runs_deduplicated_total{by="recent_start"}"#), Some(2.0), "router log:\n{}", router.log());
    assert_eq!(metric(r#"tf_router_runs_deduplicated_total{by="temporal"}"#), Some(0.0), "no Temporal round trip for the repeats");
    assert_eq!(metric(r#"tf_router_runs_deduplicated_total{by="claim"}"#), Some(0.0), "the run has not begun");
    assert_eq!(metric("tf_router_recent_starts"), Some(1.0));
    assert_eq!(t.run_rows().await, [], "no run has begun");

    // Past the memory's 4 s a repeat asks Temporal again, which refuses it: the run exists.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(acknowledged.elapsed()) + Duration::from_millis(500)).await;
    t.send(0, "d", &t.envelope_at("e4", json!({"order_id": "R"}), t0 + 3_000).await).await;
    eventually("e4 committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 4).then_some(()) }).await;
    assert_eq!(metric(r#"tf_router_runs_deduplicated_total{by="temporal"}"#), Some(1.0), "router log:\n{}", router.log());
    assert_eq!(metric("tf_router_runs_started_total"), Some(1.0));

    // The worker begins the one run; from then on the claim answers.
    let _worker = t.worker();
    eventually("the run to complete", Duration::from_secs(60), || async {
        (t.run_rows().await == [("R".to_string(), 1, "completed".to_string(), 1)]).then_some(())
    })
    .await;
    t.send(0, "e", &t.envelope_at("e5", json!({"order_id": "R"}), t0 + 4_000).await).await;
    eventually("e5 committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 5).then_some(()) }).await;
    assert_eq!(metric(r#"tf_router_runs_deduplicated_total{by="claim"}"#), Some(1.0));
    assert_eq!(metric("tf_router_runs_started_total"), Some(1.0), "one run for the five events");
    let event: String = sqlx::query_scalar("SELECT event_id FROM activity_runs").fetch_one(&t.pool).await.unwrap();
    assert_eq!(event, "e1");
}
