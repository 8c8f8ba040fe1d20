//! One trace per event, exported over OTLP: the producer's `traceparent` header is the parent
//! of the router's `decode` and `route` spans; the run's activities and its task are children of
//! the router's `start` span; the task's Kafka record and the result record on
//! `taskfactory.results` carry the trace on. The receiver is an OTLP/HTTP JSON endpoint in this
//! test; Kafka, the registry, Temporal and PostgreSQL are the stack's. The worker's `/metrics`
//! then shows the run's duration and the Temporal SDK's figures for the same run.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use tf_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use tf_testkit::{Service, create_topic, eventually, settings, unique, workspace_binary};

mod common;

const SHIP: &str = r#"
id: DEF_ID
name: Traced
trigger: {event: {topics: [TOPIC]}}
dedupe: {key: event.data.order_id}
tasks:
  - {name: ship, type: kafka, params: {topic: "'SINK'", value: 'event.data'}}
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_producer_through_router_worker_and_task_to_the_result() {
    let s = settings();
    let otlp = OtlpReceiver::start().await;
    let sink = unique("it-trace-sink");
    create_topic(&s, &sink, 1).await;
    let t = common::setup(1, &SHIP.replace("SINK", &sink)).await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export within a fraction of a second, not the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let router = t.router(&unique("it-group"), &otel);
    let relay = unique("it-relay");
    let mut worker_env =
        vec![("TF_DATABASE_URL", t.db.url.as_str()), ("TF_TASK_QUEUE", t.queue.as_str()), ("TF_RELAY_TRANSACTIONAL_ID", relay.as_str())];
    worker_env.extend(otel);
    let worker_metrics = tf_testkit::free_local_addr();
    worker_env.push(("TF_WORKER_METRICS_ADDR", worker_metrics.as_str()));
    let worker = Service::spawn(&workspace_binary("tf-worker"), &unique("tf-worker"), &worker_env);

    let producer_tp = format!("00-{TRACE}-{PRODUCER_SPAN}-01");
    let payload = t.envelope("e-1", json!({"order_id": "t-1"})).await;
    let record = FutureRecord::to(&t.topic)
        .key("t-1")
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(&producer_tp) }));
    t.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();

    let run_id: String = eventually(
        &format!("the run's result to be published; router log:\n{}\nworker log:\n{}", router.log(), worker.log()),
        Duration::from_secs(90),
        || async {
            sqlx::query_scalar("SELECT run_id FROM task_results WHERE published_partition IS NOT NULL")
                .fetch_optional(&t.pool)
                .await
                .unwrap()
        },
    )
    .await;
    let wanted = ["decode", "route", "match", "start", "BeginRun", "PlanTasks", "task ship", "RecordResult"];
    let spans: HashMap<String, ReceivedSpan> = eventually(
        &format!("every span of the trace at the receiver; requests to {:?}", otlp.paths()),
        Duration::from_secs(30),
        || async {
            let by_name: HashMap<String, ReceivedSpan> =
                otlp.spans().into_iter().filter(|s| s.trace_id == TRACE).map(|s| (s.name.clone(), s)).collect();
            wanted.iter().all(|n| by_name.contains_key(*n)).then_some(by_name)
        },
    )
    .await;
    assert!(otlp.paths().iter().all(|p| p == "/v1/traces"), "{:?}", otlp.paths());

    let span = |name: &str| &spans[name];
    // The router continues the producer's span, and nests its own steps.
    for name in ["decode", "route"] {
        assert_eq!((span(name).service.as_str(), span(name).parent_span_id.as_str()), ("tf-router", PRODUCER_SPAN), "{name}");
    }
    assert_eq!(span("match").parent_span_id, span("route").span_id);
    assert_eq!(span("start").parent_span_id, span("route").span_id);
    // The worker's activities and the task are children of the router's start span, carried
    // through Temporal in the run's input.
    for name in ["BeginRun", "PlanTasks", "task ship", "RecordResult"] {
        assert_eq!(
            (span(name).service.as_str(), span(name).parent_span_id.as_str()),
            ("tf-worker", span("start").span_id.as_str()),
            "{name}"
        );
    }
    assert_eq!(span("BeginRun").attributes["run_id"], json!(run_id));
    assert_eq!(span("task ship").attributes["task_type"], json!("kafka"));

    // The task's own record and the result record hand the trace on.
    let results = tf_testkit::result_records(&run_id).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].0["traceparent"], format!("00-{TRACE}-{}-01", span("RecordResult").span_id));
    let sunk = first_record_headers(&sink);
    assert_eq!(sunk["traceparent"], format!("00-{TRACE}-{}-01", span("task ship").span_id));

    // The same run in the worker's metrics: its duration, and the Temporal SDK's own figures (the
    // kafka task is an activity of the run, so its workflow type is RunActivity).
    let definition: String = sqlx::query_scalar("SELECT definition_id FROM activity_runs").fetch_one(&t.pool).await.unwrap();
    let run_count = format!("tf_worker_run_duration_seconds_count{{definition=\"{definition}\"}}");
    eventually("the run's duration in the worker's metrics", Duration::from_secs(30), || async {
        (tf_testkit::scrape_metric(&worker_metrics, &run_count) == Some(1.0)).then_some(())
    })
    .await;
    let sdk = format!(
        "temporal_activity_execution_latency_seconds_count{{activity_type=\"ExecuteTask\",namespace=\"{}\",service_name=\"temporal-core-sdk\",task_queue=\"{}\",workflow_type=\"RunActivity\"}}",
        s.temporal_namespace, t.queue
    );
    assert_eq!(tf_testkit::scrape_metric(&worker_metrics, &sdk), Some(1.0), "{sdk}");
}

/// The headers of the first record on `topic`.
fn first_record_headers(topic: &str) -> HashMap<String, String> {
    let c: BaseConsumer = tf_kafka::client_config(&settings().kafka_brokers)
        .set("group.id", unique("it-sink"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            return tf_testkit::headers(&m.unwrap());
        }
    }
    panic!("no record on {topic}");
}
