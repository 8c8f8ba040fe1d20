//! Runs that wait for another event (docs/steps.md), end to end: the router delivers an event to
//! the `wait_for_event` step of the run it matches, once, and only if it came after the wait
//! began; `cancel_on` cancels a waiting run; a replay of the topic tells nobody anything again;
//! a router killed while delivering leaves nothing undelivered and nothing delivered twice.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::{Value as Json, json};
use tf_envelope::Event;
use tf_testkit::{create_topic, eventually, settings, unique};

mod common;

use common::{Setup, committed, setup};

const WAITS: &str = r#"
id: DEF_ID
name: Orders waiting for their payment
trigger: {event: {topics: [TOPIC], type: com.example.order.created}}
dedupe: {key: event.data.order_id}
cancel_on:
  - {type: com.example.order.cancelled, match: {incoming: event.data.order_id, run: event.data.order_id}}
tasks:
  - name: pay
    type: wait_for_event
    event: {type: com.example.payment.received, topics: [TOPIC], match: {incoming: event.data.order_id, run: event.data.order_id}}
    timeout: TIMEOUT
  - name: settle
    type: kafka
    after: [pay]
    params:
      topic: "'SINK'"
      value: "{'order': event.data.order_id, 'paid': tasks.pay.output != null, 'amount': tasks.pay.output == null ? 0 : tasks.pay.output.data.amount}"
"#;

async fn waiting_setup(timeout: &str) -> (Setup, String) {
    let sink = unique("it-settled");
    create_topic(&settings(), &sink, 1).await;
    (setup(1, &WAITS.replace("SINK", &sink).replace("TIMEOUT", timeout)).await, sink)
}

/// Sends an event of `kind` (`order.created`, `payment.received`, `order.cancelled`); returns
/// its offset.
async fn send(t: &Setup, id: &str, kind: &str, data: Json) -> i64 {
    let e = Event::new(id, "/test", format!("com.example.{kind}"), data).unwrap();
    let payload = t.codec.encode_event(&format!("{}-value", t.topic), &e).await.unwrap();
    let delivery = t
        .producer
        .send(FutureRecord::to(&t.topic).partition(0).key(id).payload(&payload), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    delivery.offset
}

/// The `pay` task's status of each run, by order id.
async fn pay_status(t: &Setup) -> HashMap<String, String> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT r.dedupe_key, t.status FROM tasks t JOIN activity_runs r USING (run_id) WHERE t.template = 'pay'")
            .fetch_all(&t.pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn run_status(t: &Setup) -> HashMap<String, String> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT dedupe_key, status FROM activity_runs WHERE status <> 'deduplicated'").fetch_all(&t.pool).await.unwrap();
    rows.into_iter().collect()
}

async fn all_waiting(t: &Setup, n: usize, log: &str) {
    eventually(&format!("{n} pay steps waiting; router/worker:\n{log}"), Duration::from_secs(120), || async {
        let s = pay_status(t).await;
        (s.len() == n && s.values().all(|v| v == "waiting")).then_some(())
    })
    .await;
}

async fn all_ended(t: &Setup, n: usize) -> HashMap<String, String> {
    eventually(&format!("{n} runs to end"), Duration::from_secs(120), || async {
        let s = run_status(t).await;
        (s.len() == n && s.values().all(|v| v != "running" && v != "waiting")).then_some(s)
    })
    .await
}

/// A wait's `(status, event id, source offset)`, by `(order id, kind)`.
type Waits = HashMap<(String, String), (String, Option<String>, Option<i64>)>;

async fn waits(t: &Setup) -> Waits {
    type Row = (String, String, String, Option<String>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.dedupe_key, w.kind, w.status, w.event_id, w.source_offset FROM event_waits w JOIN activity_runs r USING (run_id)",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    rows.into_iter().map(|(k, kind, s, e, o)| ((k, kind), (s, e, o))).collect()
}

/// The output of each run's `pay` task, by order id.
async fn pay_outputs(t: &Setup) -> HashMap<String, Json> {
    let rows: Vec<(String, Option<Json>)> =
        sqlx::query_as("SELECT r.dedupe_key, t.output FROM tasks t JOIN activity_runs r USING (run_id) WHERE t.template = 'pay'")
            .fetch_all(&t.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(k, o)| (k, o.unwrap_or(Json::Null))).collect()
}

async fn results(t: &Setup) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM task_results").fetch_one(&t.pool).await.unwrap()
}

#[tokio::test]
async fn a_wait_takes_the_first_matching_event_after_it_began_and_a_replay_tells_nobody_again() {
    let (t, sink) = waiting_setup("12s").await;
    let worker = t.worker();
    let group = unique("it-group");
    let mut router = t.router(&group, &[("TF_LOG", "info")]);

    // A payment before its order: before the wait began, so it does not count.
    send(&t, "p-early", "payment.received", json!({"order_id": "o-early", "amount": 1})).await;
    for o in ["o-early", "o-paid", "o-timeout", "o-cancel"] {
        send(&t, &format!("e-{o}"), "order.created", json!({"order_id": o})).await;
    }
    all_waiting(&t, 4, &format!("{}\n{}", router.log(), worker.log())).await;
    // The same payment twice (a producer's retry), then a second one: the first counts.
    let first = send(&t, "p-1", "payment.received", json!({"order_id": "o-paid", "amount": 10})).await;
    send(&t, "p-1", "payment.received", json!({"order_id": "o-paid", "amount": 10})).await;
    send(&t, "p-2", "payment.received", json!({"order_id": "o-paid", "amount": 99})).await;
    let cancel = send(&t, "c-1", "order.cancelled", json!({"order_id": "o-cancel"})).await;
    let ended = all_ended(&t, 4).await;
    let expected: HashMap<String, String> =
        [("o-early", "completed"), ("o-paid", "completed"), ("o-timeout", "completed"), ("o-cancel", "cancelled")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(ended, expected, "router:\n{}\nworker:\n{}", router.log(), worker.log());

    let outputs = pay_outputs(&t).await;
    assert_eq!(outputs["o-paid"]["id"], "p-1");
    assert_eq!(outputs["o-paid"]["data"]["amount"], 10);
    assert_eq!(outputs["o-early"], Json::Null, "the early payment did not count: timed out");
    assert_eq!(outputs["o-timeout"], Json::Null);
    let w = waits(&t).await;
    assert_eq!(w[&("o-paid".into(), "step".into())], ("received".into(), Some("p-1".into()), Some(first)));
    assert_eq!(w[&("o-early".into(), "step".into())].0, "timed_out");
    assert_eq!(w[&("o-cancel".into(), "cancel".into())], ("closed".into(), Some("c-1".into()), Some(cancel)));
    let cancelled: (String, Option<String>) = sqlx::query_as(
        "SELECT t.status, t.error FROM tasks t JOIN activity_runs r USING (run_id) WHERE r.dedupe_key = 'o-cancel' AND t.template = 'pay'",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(cancelled.0, "cancelled");
    assert!(cancelled.1.as_deref().unwrap_or("").contains("cancel_on: com.example.order.cancelled event c-1"), "{cancelled:?}");
    let settled: Vec<Json> = tf_testkit::read_json_values(&sink, 3).await;
    for (order, paid, amount) in [("o-paid", true, 10), ("o-early", false, 0), ("o-timeout", false, 0)] {
        assert!(settled.contains(&json!({"order": order, "paid": paid, "amount": amount})), "{order}: {settled:?}");
    }
    assert_eq!(settled.len(), 3, "o-cancel never settled: {settled:?}");

    // Replaying the whole topic (a new group reads it from the start) starts no run, delivers
    // nothing, cancels nothing: the runs' waits are closed.
    let before = (run_status(&t).await, waits(&t).await, results(&t).await);
    assert!(router.terminate());
    let replay = unique("it-replay");
    let replayer = t.router(&replay, &[("TF_LOG", "info")]);
    eventually("the replay to reach the end", Duration::from_secs(60), || async { (committed(&replay, &t.topic, 1) == 9).then_some(()) })
        .await;
    assert_eq!((run_status(&t).await, waits(&t).await, results(&t).await), before);
    assert!(
        !replayer.log().contains("delivered to a waiting run") && !replayer.log().contains("cancelled by an event"),
        "{}",
        replayer.log()
    );
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
}

#[tokio::test]
async fn a_router_killed_while_delivering_delivers_every_event_once() {
    let (t, sink) = waiting_setup("10m").await;
    let worker = t.worker();
    let group = unique("it-group");
    let mut router = t.router(&group, &[]);
    let n = 20;
    for i in 0..n {
        send(&t, &format!("e-{i}"), "order.created", json!({"order_id": format!("o-{i}")})).await;
    }
    all_waiting(&t, n, &worker.log()).await;
    for i in 0..n - 1 {
        send(&t, &format!("p-{i}"), "payment.received", json!({"order_id": format!("o-{i}"), "amount": i})).await;
    }
    eventually("a few deliveries", Duration::from_secs(60), || async {
        let w = waits(&t).await;
        (w.values().filter(|v| v.1.is_some()).count() >= 3).then_some(())
    })
    .await;
    router.kill();
    // The exact moment between claim and signal, for the last order: the wait is claimed for
    // the payment as a router would before dying, and the run was never told.
    let last = n - 1;
    let data = json!({"order_id": format!("o-{last}"), "amount": last});
    let offset = send(&t, &format!("p-{last}"), "payment.received", data.clone()).await;
    let event = json!({"id": format!("p-{last}"), "type": "com.example.payment.received", "data": data});
    let source = tf_store::waits::Source { topic: t.topic.clone(), partition: 0, offset };
    let incoming = tf_store::waits::IncomingEvent {
        event_type: "com.example.payment.received",
        event: &event,
        source: &source,
        record_ms: i64::MAX / 2,
    };
    let matcher = tf_definitions::steps::matcher_of("event.data.order_id");
    let claimed = tf_store::waits::deliver(&t.pool, &incoming, &[(matcher, format!("o-{last}"))]).await.unwrap();
    assert_eq!(claimed.len(), 1, "the last wait was claimed without its run being told");

    let again = t.router(&group, &[]);
    let ended = all_ended(&t, n).await;
    assert!(ended.values().all(|s| s == "completed"), "{ended:?}\nrouter:\n{}\nworker:\n{}", again.log(), worker.log());
    let outputs = pay_outputs(&t).await;
    for i in 0..n {
        assert_eq!(outputs[&format!("o-{i}")]["id"], format!("p-{i}"), "o-{i} got its own payment");
    }
    let w = waits(&t).await;
    assert!(w.values().all(|v| v.0 == "received" || v.0 == "closed"), "{w:?}");
    assert_eq!(results(&t).await, 2 * n as i64, "one result per task, none twice");
    let settled = tf_testkit::read_json_values(&sink, n).await;
    assert_eq!(settled.len(), n, "{settled:?}");
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
}

#[tokio::test]
async fn an_event_the_wait_store_cannot_hold_is_dead_lettered_and_the_partition_goes_on() {
    let (t, sink) = waiting_setup("10m").await;
    let _worker = t.worker();
    let _router = t.router(&unique("it-group"), &[]);
    send(&t, "p-nul", "payment.received", json!({"order_id": "o-1", "note": "a\u{0}b"})).await;
    send(&t, "e-after", "order.created", json!({"order_id": "o-after"})).await;
    all_waiting(&t, 1, "").await;
    let dead = t.dead_letters(1);
    let (headers, _) = &dead["p-nul"];
    assert_eq!(headers["__connect.errors.stage"], "deliver", "{headers:?}");
    assert_eq!(headers["__connect.errors.exception.class.name"], "UndeliverableEvent", "{headers:?}");
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
}
