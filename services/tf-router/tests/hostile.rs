//! Records from a hostile producer on the real stack: each ends in the DLQ with the stage that
//! refused it, a good record behind them on the same partition is routed, the partition's
//! committed offset passes them all, and the router's memory stays bounded.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tf_testkit::{eventually, unique};

mod common;

use common::{committed, setup};

const ANY: &str = r#"
id: DEF_ID
name: Anything
trigger: {event: {topics: [TOPIC], type: "*"}}
dedupe: {key: event.id}
tasks:
  - {name: noop, type: human, when: "false"}
"#;

const TEXT_SCHEMA: &str = r#"{"type": "record", "name": "Text", "namespace": "io.test", "fields": [{"name": "s", "type": "string"}]}"#;

const BULK_SCHEMA: &str = r#"{"type": "record", "name": "Bulk", "namespace": "io.test",
    "fields": [{"name": "items", "type": {"type": "array", "items": "null"}}]}"#;

#[tokio::test]
async fn hostile_records_are_dead_lettered_and_the_partition_moves_past_them() {
    let t = setup(1, ANY).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let router = t.router(&group, &[]);

    // 1. A count prefix claiming half a billion items, with a real schema id.
    let subject = format!("{}-bulk-value", t.topic);
    let small = t.codec.encode(&subject, BULK_SCHEMA, Value::Record(vec![("items".into(), Value::Array(vec![]))])).await.unwrap();
    let schema_id = u32::from_be_bytes(small[1..5].try_into().unwrap());
    let mut body = tf_testkit::avro_long(500_000_000);
    body.push(0);
    let count_prefix = tf_envelope::wire::frame(schema_id, &body);
    t.send(0, "count-prefix", &count_prefix).await;
    // 2. A dedupe key PostgreSQL cannot store (NUL) and one with a line break.
    t.send(0, "nul-key", &t.envelope("bad\u{0}id", json!({})).await).await;
    t.send(0, "newline-key", &t.envelope("bad\nid", json!({})).await).await;
    // 3. A record Temporal refuses for good: 500 kB of control characters, each escaped to six
    //    bytes of JSON, make about 3 MB of workflow input, over the server's 2 MB payload limit.
    let text = t
        .codec
        .encode(&format!("{}-text-value", t.topic), TEXT_SCHEMA, Value::Record(vec![("s".into(), Value::String("\u{1}".repeat(500_000)))]))
        .await
        .unwrap();
    t.send(0, "over-payload-limit", &text).await;
    // 3b. Zero-width items past the decoding bound: 40 blocks of 10^6 nulls in 126 bytes.
    let mut body: Vec<u8> = (0..40).flat_map(|_| tf_testkit::avro_long(1_000_000)).collect();
    body.push(0);
    t.send(0, "zero-width", &tf_envelope::wire::frame(schema_id, &body)).await;
    // 3c. A bad record carrying the router's own header names, forged: the producer's
    //     `__connect.errors.topic` must not reach the dead letter (it chose where a redrive wrote).
    let forged = FutureRecord::to(&t.topic).partition(0).key("forged").payload(&b"not avro"[..]).headers(
        OwnedHeaders::new()
            .insert(Header { key: "__connect.errors.topic", value: Some("taskfactory.results") })
            .insert(Header { key: "__taskfactory.errors.truncated", value: Some("no") })
            .insert(Header { key: "x-kept", value: Some("yes") }),
    );
    t.producer.send(forged, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    // 3d. An event dated 40 days ago: past the replay horizon, its window may be gone.
    let old = t.envelope_at("old-1", json!({}), tf_envelope::Timestamp::now().0 - 40 * 24 * 3600 * 1000).await;
    t.send(0, "beyond-horizon", &old).await;
    // 4. An event time the claim store cannot hold.
    let mut far = tf_envelope::Event::new("far-future", "/test", "com.example.x", json!({})).unwrap();
    far.time = tf_envelope::Timestamp(i64::MAX / 2);
    t.send(0, "event-time", &t.codec.encode_event(&format!("{}-value", t.topic), &far).await.unwrap()).await;
    // 5. A good record behind them all.
    t.send(0, "good", &t.envelope("good-1", json!({"fine": true})).await).await;

    eventually("9 records committed", Duration::from_secs(120), || async { (committed(&group, &t.topic, 1) == 9).then_some(()) }).await;
    let keys: Vec<String> = eventually("the good record's run", Duration::from_secs(60), || async {
        let keys: Vec<String> = sqlx::query_scalar("SELECT dedupe_key FROM activity_runs").fetch_all(&t.pool).await.unwrap();
        (!keys.is_empty()).then_some(keys)
    })
    .await;
    assert_eq!(keys, ["good-1"], "router log:\n{}", router.log());

    let dead = t.dead_letters(8);
    let stage = |k: &str| {
        dead.get(k).map(|d| d.0["__connect.errors.stage"].clone()).unwrap_or_else(|| panic!("{k} not in the DLQ: {:?}", dead.keys()))
    };
    let reason = |k: &str| dead[k].0["__connect.errors.exception.message"].clone();
    assert_eq!(stage("count-prefix"), "decode");
    assert_eq!(stage("nul-key"), "dedupe-key");
    assert!(reason("nul-key").contains("control character U+0000"), "{}", reason("nul-key"));
    assert_eq!(stage("newline-key"), "dedupe-key");
    assert_eq!(stage("over-payload-limit"), "start");
    assert!(reason("over-payload-limit").contains("Temporal refused the start"), "{}", reason("over-payload-limit"));
    assert_eq!(stage("event-time"), "event-time");
    assert_eq!(stage("zero-width"), "decode");
    assert_eq!(dead["zero-width"].0["__connect.errors.exception.class.name"], "DecodeLimitExceeded");
    assert_eq!(stage("forged"), "decode");
    assert_eq!(dead["forged"].0["__connect.errors.topic"], t.topic, "the router's source topic, not the producer's");
    assert!(!dead["forged"].0.contains_key("__taskfactory.errors.truncated"), "a producer's reserved header is dropped");
    assert_eq!(dead["forged"].0["x-kept"], "yes", "the producer's own headers are kept");
    assert_eq!(stage("beyond-horizon"), "event-time");
    assert_eq!(dead["beyond-horizon"].0["__connect.errors.exception.class.name"], "BeyondReplayHorizon");
    assert_eq!(dead["count-prefix"].1, count_prefix, "original bytes kept");

    // Memory stayed bounded (the count prefix alone would have asked for tens of GB).
    let hwm_kb = tf_testkit::peak_rss_bytes(router.pid()) / 1024;
    println!("HOSTILE FIGURES: router peak RSS {} MiB", hwm_kb / 1024);
    assert!(hwm_kb < 256 * 1024, "router peak RSS {hwm_kb} kB");
    // It ran under the test's address-space cap, so a bomb would have failed here, not the machine.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", router.pid())).unwrap();
    let cap = limits.lines().find(|l| l.starts_with("Max address space")).unwrap().split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(cap, tf_testkit::MEMORY_CAP_BYTES.to_string(), "{limits}");
}

#[tokio::test]
async fn a_dead_letter_too_large_for_the_dlq_is_sent_truncated_and_the_partition_moves_on() {
    let t = setup(1, ANY).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let _router = t.router(&group, &[("TF_ROUTER_MAX_EVENT_BYTES", "2000"), ("TF_DLQ_MAX_MESSAGE_BYTES", "40000")]);
    let big = vec![b'x'; 60_000];
    t.send(0, "big", &big).await;
    t.send(0, "good", &t.envelope("good-1", json!({})).await).await;
    eventually("2 records committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 2).then_some(()) }).await;
    let dead = t.dead_letters(1);
    let (headers, value) = &dead["big"];
    assert_eq!(headers["__connect.errors.stage"], "size");
    assert_eq!(value.len(), 16 * 1024, "the head of the value is kept");
    assert_eq!(headers["__taskfactory.errors.truncated"], "value truncated to 16384 of 60000 bytes");
    eventually("the good record's run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
}

#[tokio::test]
async fn a_registry_url_that_is_no_api_root_pauses_routing_without_dead_letters_and_sigterm_keeps_its_deadline() {
    let t = setup(1, ANY).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let metrics = tf_testkit::free_local_addr();
    let base = tf_testkit::settings().schema_registry_url;
    let wrong = format!("{}/wrong", base.split("/apis/").next().unwrap());
    let mut router =
        t.router(&group, &[("TF_SCHEMA_REGISTRY_URL", &wrong), ("TF_ROUTER_METRICS_ADDR", &metrics), ("TF_SHUTDOWN_TIMEOUT", "2")]);
    t.send(0, "a", &t.envelope("e1", json!({})).await).await;
    let metric = |name: &str| tf_testkit::scrape_metric(&metrics, name);
    eventually("the router to be ready", Duration::from_secs(30), || async {
        (tf_testkit::http_status(&metrics, "/readyz") == Some(200)).then_some(())
    })
    .await;
    assert_eq!(tf_testkit::http_status(&metrics, "/healthz"), Some(200));
    eventually("the router to retry the registry", Duration::from_secs(30), || async {
        metric("tf_router_dependency_retries_total").filter(|n| *n >= 2.0)
    })
    .await;
    assert_eq!(metric("tf_router_dead_letters_total{stage=\"decode\"}"), Some(0.0), "a misconfiguration is not bad input");
    assert_eq!(metric("tf_router_paused_misconfigured"), Some(1.0), "the paused record counts as misconfigured");
    assert_eq!(committed(&group, &t.topic, 1), 0);
    assert!(router.log().contains("check TF_SCHEMA_REGISTRY_URL"), "{}", router.log());

    // The record is stuck; SIGTERM drains for the configured 2 s, then exits non-zero naming it.
    let stopped = std::time::Instant::now();
    assert!(!router.terminate(), "a stuck record makes the exit non-zero");
    assert!(stopped.elapsed() < Duration::from_secs(15), "stopped in {:?}", stopped.elapsed());
    assert!(router.log().contains(&format!("{}[0] from offset 0 (1 record(s))", t.topic)), "{}", router.log());

    // Fixed setting: the record is routed.
    let _router = t.router(&group, &[]);
    eventually("the paused record's run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
    eventually("its offset committed", Duration::from_secs(30), || async { (committed(&group, &t.topic, 1) == 1).then_some(()) }).await;
}

#[tokio::test]
async fn a_temporal_namespace_that_does_not_exist_pauses_routing_without_dead_letters_until_fixed() {
    let t = setup(1, ANY).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let metrics = tf_testkit::free_local_addr();
    let mut router = t.router(&group, &[("TF_TEMPORAL_NAMESPACE", "no-such-namespace"), ("TF_ROUTER_METRICS_ADDR", &metrics)]);
    t.send(0, "a", &t.envelope("e1", json!({})).await).await;
    let metric = |name: &str| tf_testkit::scrape_metric(&metrics, name);
    eventually("the router to retry the start", Duration::from_secs(60), || async {
        metric("tf_router_dependency_retries_total").filter(|n| *n >= 3.0)
    })
    .await;
    assert_eq!(metric("tf_router_dead_letters_total{stage=\"start\"}"), Some(0.0), "a misconfiguration is not bad input");
    assert_eq!(metric("tf_router_paused_misconfigured"), Some(1.0), "the paused record counts as misconfigured");
    assert_eq!(committed(&group, &t.topic, 1), 0);
    assert!(router.log().contains("check TF_TEMPORAL_URL, TF_TEMPORAL_NAMESPACE"), "{}", router.log());
    router.terminate();

    // Fixed setting: the record is routed, once.
    let _router = t.router(&group, &[]);
    eventually("the paused record's run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
    eventually("its offset committed", Duration::from_secs(30), || async { (committed(&group, &t.topic, 1) == 1).then_some(()) }).await;
}

#[tokio::test]
async fn with_the_topic_subject_policy_a_record_of_another_subject_is_dead_lettered_unread() {
    let t = setup(1, ANY).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let _router = t.router(&group, &[("TF_ROUTER_SUBJECT_POLICY", "topic")]);
    // A schema registered for some other subject, used on this topic.
    let foreign = t
        .codec
        .encode(&format!("{}-foreign-value", t.topic), BULK_SCHEMA, Value::Record(vec![("items".into(), Value::Array(vec![]))]))
        .await
        .unwrap();
    t.send(0, "foreign", &foreign).await;
    t.send(0, "good", &t.envelope("good-1", json!({})).await).await;
    eventually("2 records committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 2).then_some(()) }).await;
    let dead = t.dead_letters(1);
    let headers = &dead["foreign"].0;
    assert_eq!(headers["__connect.errors.stage"], "decode");
    assert_eq!(headers["__connect.errors.exception.class.name"], "WrongSubject");
    assert!(headers["__connect.errors.exception.message"].contains(&format!("not registered under subject {}-value", t.topic)));
    eventually("the good record's run", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
}

/// A definitions table that cannot be read (locked by a migration, a slow database) holds up
/// the definitions refresh, not routing: records keep flowing on the loaded set.
#[tokio::test]
async fn a_stuck_definitions_refresh_does_not_stall_routing() {
    let t = setup(1, ANY).await;
    let group = unique("it-group");
    let router = t.router(&group, &[("TF_ROUTER_REFRESH_MS", "200")]);
    t.send(0, "first", &t.envelope("first-1", json!({})).await).await;
    eventually("the first record committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 1) == 1).then_some(()) })
        .await;
    // Hold a lock that blocks every read of the definitions table.
    let mut lock = t.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE activity_definitions IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // a refresh is now waiting on the lock
    t.send(0, "second", &t.envelope("second-1", json!({})).await).await;
    eventually(
        &format!("the second record committed while the table is locked; log:\n{}", router.log()),
        Duration::from_secs(30),
        || async { (committed(&group, &t.topic, 1) == 2).then_some(()) },
    )
    .await;
    lock.rollback().await.unwrap();
}

/// Many records at the decode limit at once: each holds up to 100,000 values, and 64 in flight
/// would multiply that (347 MiB measured before the value budget); the router keeps under
/// 256 MiB because records reserve their values from one budget (TF_ROUTER_MAX_VALUES_IN_FLIGHT).
#[tokio::test]
async fn records_at_the_decode_limit_in_flight_together_stay_within_the_memory_bound() {
    let t = setup(1, ANY).await;
    let group = unique("it-group");
    let router = t.router(&group, &[]);
    let schema = r#"{"type": "record", "name": "Big", "namespace": "io.test", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}]}"#;
    let small =
        t.codec.encode(&format!("{}-big-value", t.topic), schema, Value::Record(vec![("xs".into(), Value::Array(vec![]))])).await.unwrap();
    let schema_id = u32::from_be_bytes(small[1..5].try_into().unwrap());
    // 99,990 longs of value 1, a byte each: just under the limit with the record and array.
    let n = 99_990;
    let body = [tf_testkit::avro_long(n as i64), vec![2u8; n], vec![0]].concat();
    let record = tf_envelope::wire::frame(schema_id, &body);
    let count = 200;
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("big-{i}");
            t.producer.send_result(FutureRecord::to(&t.topic).partition(0).key(&key).payload(&record)).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for s in sends {
        s.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    eventually(&format!("{count} records committed; log:\n{}", router.log()), Duration::from_secs(240), || async {
        (committed(&group, &t.topic, 1) == count).then_some(())
    })
    .await;
    let peak = tf_testkit::peak_rss_bytes(router.pid());
    println!("HOSTILE FIGURES: router peak RSS {} MiB after {count} records of {n} values", peak >> 20);
    assert!(peak < 256 << 20, "router peak RSS {peak} bytes");
}
