//! The router end to end on the real stack: tf-router and tf-worker binaries, Kafka, the
//! registry, Temporal and PostgreSQL. Each test uses its own topic, group, task queue and
//! database so tests do not see each other.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use tf_testkit::{Service, apply_definition, create_topic, eventually, settings, unique, workspace_binary};

mod common;

use common::{committed, setup};

const ORDERS: &str = r#"
id: DEF_ID
name: Orders
trigger:
  event:
    topics: [TOPIC]
    type: com.example.order.*
    filter: event.data.amount >= 100
dedupe: {key: event.data.order_id}
tasks:
  - {name: noop, type: human, when: "false"}
"#;

#[tokio::test]
async fn bad_records_go_to_the_dlq_and_good_ones_behind_them_are_routed() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let router = t.router(&group, &[("TF_ROUTER_MAX_EVENT_BYTES", "2000")]);

    t.send(0, "a", &t.envelope("e1", json!({"order_id": "o-1", "amount": 150})).await).await;
    t.send(0, "b", &t.envelope("e2", json!({"order_id": "o-small", "amount": 5})).await).await; // filtered out
    t.send(0, "c", b"{\"plain\": \"json, not Avro\"}").await; // not wire format
    t.send(0, "d", &tf_envelope::wire::frame(999_999_999, b"\x02")).await; // unknown schema id
    t.send(0, "e", &t.envelope("e5", json!({"amount": 500})).await).await; // dedupe key fails
    t.send(0, "f", &t.envelope("e6", json!({"order_id": "o-big", "amount": 100, "pad": "x".repeat(3000)})).await).await; // oversize
    t.send(0, "g", &t.envelope("e7", json!({"order_id": "o-2", "amount": 100})).await).await;
    t.send(0, "h", &t.envelope("e8", json!({"order_id": "o-1", "amount": 150})).await).await; // duplicate key
    // An "envelope" from a producer with a wrong schema: no `source`.
    let broken_schema = r#"{"type":"record","name":"Envelope","namespace":"io.taskfactory","fields":[
        {"name":"id","type":"string"},{"name":"type","type":"string"},
        {"name":"time","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"data","type":"string"}]}"#;
    let broken = apache_avro::types::Value::Record(vec![
        ("id".into(), apache_avro::types::Value::String("e9".into())),
        ("type".into(), apache_avro::types::Value::String("com.example.order.created".into())),
        ("time".into(), apache_avro::types::Value::TimestampMillis(0)),
        ("data".into(), apache_avro::types::Value::String("{}".into())),
    ]);
    let bytes = t.codec.encode(&format!("{}-broken-value", t.topic), broken_schema, broken).await.unwrap();
    t.send(0, "i", &bytes).await;

    eventually("9 records committed", Duration::from_secs(90), || async { (committed(&group, &t.topic, 1) == 9).then_some(()) }).await;
    // Offsets move once Temporal acknowledged the start; the run row follows when the worker
    // picks the workflow up.
    let keys: Vec<String> = eventually("two runs", Duration::from_secs(30), || async {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT dedupe_key FROM activity_runs ORDER BY dedupe_key").fetch_all(&t.pool).await.unwrap();
        (keys.len() >= 2).then_some(keys)
    })
    .await;
    let rows: Vec<(String, String, i32, String)> =
        sqlx::query_as("SELECT run_id, dedupe_key, generation, status FROM activity_runs").fetch_all(&t.pool).await.unwrap();
    assert_eq!(keys, ["o-1", "o-2"], "runs: {rows:?}\nrouter log:\n{}", router.log());
    let (topic, offset): (String, i64) =
        sqlx::query_as("SELECT source_topic, source_offset FROM activity_runs WHERE dedupe_key = 'o-2'").fetch_one(&t.pool).await.unwrap();
    assert_eq!((topic.as_str(), offset), (t.topic.as_str(), 6), "the run is traceable to its event");

    let s = settings();
    let c: BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", unique("it-dlq-reader")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&t.dlq, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut dead = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.len() < 5 && Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(200)) else { continue };
        let m = m.unwrap();
        let h: HashMap<String, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect();
        assert_eq!(h["__connect.errors.topic"], t.topic);
        dead.insert(String::from_utf8_lossy(m.key().unwrap()).into_owned(), (h, m.payload().unwrap().to_vec()));
    }
    assert_eq!(dead.len(), 5, "DLQ keys: {:?}", dead.keys().collect::<Vec<_>>());
    assert_eq!(dead["i"].0["__connect.errors.exception.class.name"], "InvalidEnvelope");
    assert!(dead["i"].0["__connect.errors.exception.message"].ends_with("envelope field `source` is missing"));
    assert_eq!(dead["c"].0["__connect.errors.stage"], "decode");
    assert_eq!(dead["c"].0["__connect.errors.exception.class.name"], "NotWireFormat");
    assert_eq!(dead["c"].1, b"{\"plain\": \"json, not Avro\"}", "original bytes kept");
    assert_eq!(dead["d"].0["__connect.errors.exception.class.name"], "UnknownSchemaId");
    assert_eq!(dead["d"].0["__connect.errors.offset"], "3");
    assert_eq!(dead["e"].0["__connect.errors.stage"], "dedupe-key");
    assert!(dead["e"].0["__connect.errors.exception.message"].contains("(dedupe-key): dedupe.key: `event.data.order_id` failed"));
    assert_eq!(dead["f"].0["__connect.errors.stage"], "size");
    assert!(!router.log().contains('\u{1b}'), "a log file has no colour escapes");
}

#[tokio::test]
async fn a_thousand_events_with_300_duplicates_give_700_runs_through_a_crash_and_a_replay() {
    let t = setup(3, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let mut router = t.router(&group, &[]);

    // Keys 0..700 once each, then 300 repeats of keys 0..300, spread over 3 partitions.
    let keys: Vec<usize> = (0..700).chain(0..300).collect();
    let mut payloads = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        payloads.push((i, t.envelope(&format!("e{i}"), json!({"order_id": format!("o-{k}"), "amount": 100 + k})).await));
    }
    let started = Instant::now();
    let mut killed = false;
    for (i, payload) in &payloads {
        t.send((*i % 3) as i32, &format!("k{i}"), payload).await;
        if !killed && *i == 500 {
            // Crash mid-stream, as a power cut would, and come back.
            eventually("some runs before the crash", Duration::from_secs(60), || async { (t.runs().await > 50).then_some(()) }).await;
            router.kill();
            router = t.router(&group, &[]);
            killed = true;
        }
    }
    let runs = eventually("700 runs", Duration::from_secs(240), || async {
        let n = t.runs().await;
        (n >= 700 && committed(&group, &t.topic, 3) == 1000).then_some(n)
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(runs, 700, "router log:\n{}", router.log());
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT dedupe_key) FROM activity_runs").fetch_one(&t.pool).await.unwrap();
    assert_eq!(distinct, 700);
    println!(
        "ROUTER FIGURES: 1000 events, 700 runs in {:.1} s incl. a SIGKILL+restart: {:.0} events/s routed, {:.0} starts/s",
        elapsed.as_secs_f64(),
        1000.0 / elapsed.as_secs_f64(),
        700.0 / elapsed.as_secs_f64()
    );

    // Replay: a second group re-consumes the whole range; no second run for any key, and no
    // Temporal start either: every key's claim is held, so the fast path answers.
    let replay_group = unique("it-replay");
    let metrics = tf_testkit::free_local_addr();
    let _replay = t.router(&replay_group, &[("TF_ROUTER_METRICS_ADDR", &metrics)]);
    let replay_started = Instant::now();
    eventually("the replay to consume everything", Duration::from_secs(240), || async {
        (committed(&replay_group, &t.topic, 3) == 1000).then_some(())
    })
    .await;
    println!("ROUTER FIGURES: replay of 1000 events in {:.1} s", replay_started.elapsed().as_secs_f64());
    assert_eq!(t.runs().await, 700, "replay started no new run");
    assert_eq!(tf_testkit::scrape_metric(&metrics, r#"tf_router_runs_deduplicated_total{by="claim"}"#), Some(1000.0));
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_router_runs_started_total"), Some(0.0));
}

#[tokio::test]
async fn a_new_definition_version_applies_without_restart_and_old_runs_keep_theirs() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let _router = t.router(&group, &[("TF_ROUTER_REFRESH_MS", "200")]);

    t.send(0, "a", &t.envelope("e1", json!({"order_id": "o-1", "amount": 50})).await).await; // under v1's filter
    t.send(0, "b", &t.envelope("e2", json!({"order_id": "o-2", "amount": 150})).await).await;
    eventually("v1 run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;

    // v2 lowers the filter threshold; the running router picks it up.
    let def_id: String = sqlx::query_scalar("SELECT id FROM activity_definitions").fetch_one(&t.pool).await.unwrap();
    let v2_yaml = ORDERS.replace("TOPIC", &t.topic).replace("DEF_ID", &def_id).replace(">= 100", ">= 10");
    assert_eq!(apply_definition(&t.pool, &v2_yaml).await.1, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;

    t.send(0, "c", &t.envelope("e3", json!({"order_id": "o-3", "amount": 50})).await).await;
    eventually("v2 run", Duration::from_secs(60), || async { (t.runs().await == 2).then_some(()) }).await;
    let versions: Vec<(String, i32)> =
        sqlx::query_as("SELECT dedupe_key, definition_version FROM activity_runs ORDER BY dedupe_key").fetch_all(&t.pool).await.unwrap();
    assert_eq!(versions, [("o-2".to_string(), 1), ("o-3".to_string(), 2)]);
}

#[tokio::test]
async fn an_event_becomes_one_run_its_tasks_and_one_result_each() {
    let sink = unique("it-sink");
    create_topic(&settings(), &sink, 1).await;
    let definition = format!(
        r#"
id: DEF_ID
name: Pipeline
trigger: {{event: {{topics: [TOPIC], type: com.example.order.*}}}}
dedupe: {{key: event.data.order_id}}
context:
  site: {{static: {{name: eu-1}}}}
tasks:
  - name: notify
    type: kafka
    for_each: event.data.items
    params:
      topic: "'{sink}'"
      value: "{{'order': event.data.order_id, 'item': item, 'site': context.site.name}}"
"#
    );
    let t = setup(1, &definition).await;
    let relay_id = unique("it-relay");
    let _worker = Service::spawn(
        &workspace_binary("tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &t.db.url), ("TF_TASK_QUEUE", &t.queue), ("TF_RELAY_TRANSACTIONAL_ID", &relay_id)],
    );
    let _router = t.router(&unique("it-group"), &[]);

    let payload = t.envelope("e-pipe", json!({"order_id": "o-77", "items": ["x", "y"]})).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    t.producer
        .send(
            FutureRecord::to(&t.topic).key("o-77").payload(&payload).headers(
                rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header { key: "traceparent", value: Some(traceparent) }),
            ),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let (run_id, status, tp): (String, String, Option<String>) = eventually("the run to complete", Duration::from_secs(60), || async {
        let row: Option<(String, String, Option<String>)> =
            sqlx::query_as("SELECT run_id, status, traceparent FROM activity_runs").fetch_optional(&t.pool).await.unwrap();
        row.filter(|r| r.1 != "running")
    })
    .await;
    assert_eq!(status, "completed");
    assert_eq!(tp.as_deref(), Some(traceparent), "the Kafka header's trace context reached the run");
    let results = eventually("2 results", Duration::from_secs(60), || async {
        let r = tf_testkit::results_for(&run_id).await;
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "SUCCEEDED" && r["trigger"]["topic"] == t.topic.as_str() && r["trigger"]["event_id"] == "e-pipe")
    );
    let outputs: Vec<serde_json::Value> = results.iter().map(|r| serde_json::from_str(r["output"].as_str().unwrap()).unwrap()).collect();
    assert!(outputs.iter().all(|o| o["topic"] == sink.as_str()), "{outputs:?}");
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
}

#[tokio::test]
async fn an_unavailable_registry_pauses_the_record_instead_of_dead_lettering_it() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let metrics_addr = tf_testkit::free_local_addr();
    let mut router =
        t.router(&group, &[("TF_SCHEMA_REGISTRY_URL", "http://127.0.0.1:9/apis/ccompat/v7"), ("TF_ROUTER_METRICS_ADDR", &metrics_addr)]);
    t.send(0, "a", &t.envelope("e1", json!({"order_id": "o-1", "amount": 150})).await).await;

    let metric = |name: &str| tf_testkit::scrape_metric(&metrics_addr, name);
    eventually("the router to retry the registry", Duration::from_secs(30), || async {
        metric("tf_router_dependency_retries_total").filter(|n| *n >= 2.0)
    })
    .await;
    assert_eq!(metric("tf_router_dead_letters_total{stage=\"decode\"}"), Some(0.0));
    assert_eq!(committed(&group, &t.topic, 1), 0, "nothing is committed while the record waits");
    assert_eq!(t.runs().await, 0);

    // The registry is back (here: the router restarts pointing at it); the record is routed.
    router.kill();
    let _router = t.router(&group, &[]);
    eventually("the paused record's run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
    eventually("its offset committed", Duration::from_secs(30), || async { (committed(&group, &t.topic, 1) == 1).then_some(()) }).await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_records_and_commits() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let mut router = t.router(&group, &[]);
    for i in 0..20 {
        t.send(0, &format!("k{i}"), &t.envelope(&format!("e{i}"), json!({"order_id": format!("o-{i}"), "amount": 100})).await).await;
    }
    eventually("some runs", Duration::from_secs(60), || async { (t.runs().await >= 5).then_some(()) }).await;
    assert!(router.terminate(), "graceful exit, log:\n{}", router.log());
    assert!(router.log().contains("router stopped"));
    // Whatever was committed at exit was routed: restarting resumes there and ends at 20 runs.
    let at_exit = committed(&group, &t.topic, 1);
    assert!(at_exit > 0);
    let _router = t.router(&group, &[]);
    eventually("20 runs", Duration::from_secs(60), || async { (t.runs().await == 20).then_some(()) }).await;
}

#[tokio::test]
async fn lag_and_a_reset_to_earliest_replay_without_second_runs() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let tf = |args: &[&str]| {
        let out = std::process::Command::new(workspace_binary("tf")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut router = t.router(&group, &[]);
    for i in 0..5 {
        t.send(0, &format!("k{i}"), &t.envelope(&format!("e{i}"), json!({"order_id": format!("o-{i}"), "amount": 100})).await).await;
    }
    eventually("5 runs, 5 committed", Duration::from_secs(60), || async {
        (t.runs().await == 5 && committed(&group, &t.topic, 1) == 5).then_some(())
    })
    .await;
    let (ok, out, _) = tf(&["consumer", "lag", "--group", &group, "--topics", &t.topic]);
    assert!(ok && out.contains(&format!("group {group}: total lag 0")), "{out}");

    // Refused while the router is a member of the group.
    let (ok, _, err) = tf(&["consumer", "reset-offsets", "--group", &group, "--topics", &t.topic, "--to-earliest", "--execute"]);
    assert!(!ok && err.contains("active member(s)"), "{err}");

    assert!(router.terminate());
    for i in 5..7 {
        t.send(0, &format!("k{i}"), &t.envelope(&format!("e{i}"), json!({"order_id": format!("o-{i}"), "amount": 100})).await).await;
    }
    let (_, out, _) = tf(&["consumer", "lag", "--group", &group, "--topics", &t.topic]);
    assert!(out.contains("total lag 2"), "{out}");

    // A dry run changes nothing.
    let (ok, out, _) = tf(&["consumer", "reset-offsets", "--group", &group, "--topics", &t.topic, "--to-earliest"]);
    assert!(ok && out.contains("dry run"), "{out}");
    assert_eq!(committed(&group, &t.topic, 1), 5);
    // Executed, the router replays the whole partition; the old keys start nothing new.
    let (ok, out, err) = tf(&["consumer", "reset-offsets", "--group", &group, "--topics", &t.topic, "--to-earliest", "--execute"]);
    assert!(ok, "{out}{err}");
    assert_eq!(committed(&group, &t.topic, 1), 0);
    let _router = t.router(&group, &[]);
    eventually("7 runs, 7 committed", Duration::from_secs(60), || async {
        (t.runs().await == 7 && committed(&group, &t.topic, 1) == 7).then_some(())
    })
    .await;
}
