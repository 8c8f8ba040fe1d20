//! The event path over the broker's SASL_SSL listener (SCRAM-SHA-512 user, self-signed CA made
//! by `scripts/stack`): the router consumes and dead-letters, the worker's kafka task produces
//! and its relay publishes the result in a transaction, all configured only through
//! `TF_KAFKA__*` variables, the password a `${secret:...}` reference. The listener is the
//! only address the clients are given, so nothing can fall back to plaintext.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use serde_json::json;
use tf_testkit::{Service, create_topic, eventually, settings, unique, workspace_binary};

mod common;

const SHIP: &str = r#"
id: DEF_ID
name: Secured
trigger: {event: {topics: [TOPIC]}}
dedupe: {key: event.data.order_id}
tasks:
  - {name: ship, type: kafka, params: {topic: "'SINK'", value: 'event.data'}}
"#;

fn secured(password: &str) -> Vec<(&'static str, String)> {
    let port = std::env::var("TF_KAFKA_SASL_SSL_PORT").unwrap_or_else(|_| "19094".into());
    let ca = std::env::var("TF_KAFKA_CA").unwrap_or_else(|_| tf_testkit::repo_root().join(".stack/kafka/tls/ca.crt").display().to_string());
    vec![
        ("TF_KAFKA_BROKERS", format!("127.0.0.1:{port}")),
        ("TF_KAFKA__SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("TF_KAFKA__SASL_MECHANISMS", "SCRAM-SHA-512".into()),
        ("TF_KAFKA__SASL_USERNAME", "taskfactory".into()),
        ("TF_KAFKA__SASL_PASSWORD", password.into()),
        ("TF_KAFKA__SSL_CA_LOCATION", ca),
    ]
}

#[tokio::test]
async fn the_event_path_runs_over_sasl_ssl_with_a_scram_user() {
    let s = settings();
    let sink = unique("it-sasl-sink");
    create_topic(&s, &sink, 1).await;
    let t = common::setup(1, &SHIP.replace("SINK", &sink)).await;
    let env = secured("${secret:kafka_password}");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let group = unique("it-group");
    let metrics = tf_testkit::free_local_addr();
    let mut router_env = env.clone();
    router_env.push(("TF_ROUTER_METRICS_ADDR", metrics.as_str()));
    let router = t.router(&group, &router_env);
    let relay = unique("it-relay");
    let mut worker_env =
        vec![("TF_DATABASE_URL", t.db.url.as_str()), ("TF_TASK_QUEUE", t.queue.as_str()), ("TF_RELAY_TRANSACTIONAL_ID", relay.as_str())];
    worker_env.extend(env.iter().copied());
    let worker = Service::spawn(&workspace_binary("tf-worker"), &unique("tf-worker"), &worker_env);

    // One good event and one without a dedupe key (a dead letter), produced in plaintext.
    t.send(0, "a", &t.envelope("e-1", json!({"order_id": "s-1"})).await).await;
    t.send(0, "b", &t.envelope("e-2", json!({"sku": "no order id"})).await).await;
    eventually(
        &format!("the result published over SASL_SSL; router log:\n{}\nworker log:\n{}", router.log(), worker.log()),
        Duration::from_secs(90),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE published_partition IS NOT NULL")
                .fetch_one(&t.pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    let dead = t.dead_letters(1);
    assert_eq!(dead.len(), 1, "the keyless event was dead-lettered over SASL_SSL");
    assert_eq!(dead["b"].0["__connect.errors.stage"], "dedupe-key");
    let run_id: String = sqlx::query_scalar("SELECT run_id FROM activity_runs").fetch_one(&t.pool).await.unwrap();
    let results = tf_testkit::results_for(&run_id).await; // read_committed, over plaintext
    assert_eq!((results.len(), results[0]["status"].as_str()), (1, Some("SUCCEEDED")), "{results:?}");
    assert!(
        !router.log().contains("plaintext") && !worker.log().to_lowercase().contains("authentication"),
        "router:\n{}\nworker:\n{}",
        router.log(),
        worker.log()
    );

    // The router's own lag gauge and event-age histogram (librdkafka statistics every 5 s).
    let lag = format!("tf_router_consumer_lag{{topic=\"{}\",partition=\"0\"}}", t.topic);
    eventually("the router's lag gauge to report the partition caught up", Duration::from_secs(30), || async {
        (tf_testkit::scrape_metric(&metrics, &lag) == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_router_event_age_seconds_count"), Some(2.0), "two records routed");

    // A wrong password is named, not retried in silence; a bad property stops a service at once.
    let wrong = secured("not-the-password");
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = t.router(&unique("it-group"), &wrong);
    eventually("the refused router to say why", Duration::from_secs(60), || async {
        refused.log().contains("Kafka refused this router's credentials: check TF_KAFKA__SASL_MECHANISMS").then_some(())
    })
    .await;
    let mut bad = t.router(&unique("it-group"), &[("TF_KAFKA__BOOTSTRAP_SERVERS", "elsewhere:9092")]);
    eventually("a bad property to stop the router", Duration::from_secs(30), || async {
        bad.log().contains("TF_KAFKA__BOOTSTRAP_SERVERS: bootstrap.servers comes from TF_KAFKA_BROKERS").then_some(())
    })
    .await;
    bad.kill();
}
