//! RunActivity end to end on the real stack: the tf-worker binary, Temporal, PostgreSQL,
//! Kafka and the registry. Runs are started the way the router starts them. One test binary,
//! a file per concern: runs and their tasks here; cancelling and terminating runs
//! (`cancel.rs`); flow control (`flow.rs`); outbound HTTP (`http.rs`); the results relay (`relay.rs`); runs that unfold
//! (`steps.rs`).

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use tf_temporal::{RunInput, StartOutcome};
use tf_testkit::{
    FreshDatabase, Service, apply_definition, create_topic, eventually, results_for, settings, unique, worker, workspace_binary,
};

mod cancel;
mod flow;
mod http;
mod relay;
mod steps;

/// An event run's input, with a trace context the tasks must pass on.
fn input(definition_id: &str, version: i32, key: &str, event: Json) -> RunInput {
    RunInput {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..tf_testkit::run_input(definition_id, version, key, event)
    }
}

#[tokio::test]
async fn a_run_spawns_its_tasks_and_publishes_one_result_each() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let shipments = unique("it-shipments");
    create_topic(&s, &shipments, 1).await;
    let def_id = unique("it-orders").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: Orders
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
context:
  warehouse: {{static: {{dock: 7}}}}
  tier:
    sql:
      datasource: own
      query: "SELECT upper($1) AS name"
      params: [event.data.customer]
tasks:
  - name: ship
    type: kafka
    for_each: event.data.items
    params:
      topic: "'{shipments}'"
      key: event.data.order_id
      value: "{{'sku': item, 'dock': context.warehouse.dock, 'customer': context.tier[0].name}}"
  - name: review
    type: human
    when: event.data.gold
    params: {{title: "'Review ' + event.data.order_id"}}
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let relay_id = unique("it-relay");
    let worker =
        worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &relay_id), ("TF_LOG", "info"), ("TF_DATASOURCE__OWN__URL", &db.url)]);

    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let event = json!({"id": "e1", "type": "order.created", "data": {"order_id": "o-1", "customer": "acme", "items": ["a", "b", "c"], "gold": true}});
    let first = tf_temporal::start_run(&client, &queue, input(&def_id, version, "o-1", event.clone())).await.unwrap();
    assert!(matches!(first, StartOutcome::Started { .. }), "{first:?}");
    let again = tf_temporal::start_run(&client, &queue, input(&def_id, version, "o-1", event.clone())).await.unwrap();
    assert!(matches!(again, StartOutcome::Duplicate { .. }), "a second start for the key is refused: {again:?}");

    let run_id = tf_temporal::DedupeKey::parse("o-1").unwrap().run_id(&def_id, 1).to_string();
    // The human task waits for its completion signal; complete it as `tf tasks complete` does.
    let review_id = format!("{run_id}/review/0");
    eventually(&format!("the review task to await a human; worker log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(&review_id).fetch_optional(&pool).await.unwrap();
        (status.as_deref() == Some("awaiting_human")).then_some(())
    })
    .await;
    let completed = std::process::Command::new(workspace_binary("tf"))
        .args(["tasks", "complete", &review_id, "--result", r#"{"approved": true, "by": "alice"}"#])
        .env("TF_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(completed.status.success(), "{}", String::from_utf8_lossy(&completed.stderr));
    let again = std::process::Command::new(workspace_binary("tf"))
        .args(["tasks", "complete", &format!("{run_id}/ship/0"), "--result", "{}"])
        .env("TF_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is a kafka task; only human tasks are completed by hand"));

    let (status, spawned, context): (String, i32, Json) = eventually("the run to complete", Duration::from_secs(60), || async {
        let row: Option<(String, i32, Option<Json>)> =
            sqlx::query_as("SELECT status, tasks_spawned, context FROM activity_runs WHERE run_id = $1")
                .bind(&run_id)
                .fetch_optional(&pool)
                .await
                .unwrap();
        row.filter(|r| r.0 != "running").map(|(s, n, c)| (s, n, c.unwrap_or_default()))
    })
    .await;
    assert_eq!((status.as_str(), spawned), ("completed", 4), "worker log:\n{}", worker.log());
    let query = format!("ActivityId = '{def_id}' AND TriggerKind = 'event' AND DedupeKey = 'o-1'");
    let by_attributes = client.count_workflows(query, Default::default()).await.unwrap().count();
    assert_eq!(by_attributes, 1, "the run is found by its search attributes");
    assert_eq!(context, json!({"tier": [{"name": "ACME"}], "warehouse": {"dock": 7}}));

    let tasks: Vec<(String, String, Json)> = sqlx::query_as("SELECT task_id, status, params FROM tasks WHERE run_id = $1 ORDER BY task_id")
        .bind(&run_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    let ids: Vec<String> = tasks.iter().map(|t| t.0.clone()).collect();
    assert_eq!(ids, [review_id.clone(), format!("{run_id}/ship/0"), format!("{run_id}/ship/1"), format!("{run_id}/ship/2")]);
    assert!(tasks.iter().all(|t| t.1 == "succeeded"), "{tasks:?}");
    assert_eq!(tasks[2].2["value"], json!({"sku": "b", "dock": 7, "customer": "ACME"}));

    // The results reached the results topic, once each, inside committed transactions.
    let results = eventually("4 results on taskfactory.results", Duration::from_secs(60), || async {
        let r = results_for(&run_id).await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    assert_eq!(results.len(), 4, "{results:#?}");
    let mut task_ids: Vec<String> = results.iter().map(|r| r["task_id"].as_str().unwrap().to_string()).collect();
    task_ids.sort();
    assert_eq!(task_ids, ids);
    let review = results.iter().find(|r| r["template"] == "review").unwrap();
    assert_eq!(review["output"], json!({"approved": true, "by": "alice"}).to_string());
    assert!(results.iter().all(|r| r["status"] == "SUCCEEDED" && r["trigger"]["kind"] == "EVENT" && r["definition_version"] == version));

    // The kafka tasks really published to their topic.
    let consumer: BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", unique("it-ship")).create().unwrap();
    let (_, high) = consumer.fetch_watermarks(&shipments, 0, Duration::from_secs(10)).unwrap();
    assert_eq!(high, 3);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&shipments, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let shipped = loop {
        if let Some(m) = consumer.poll(Duration::from_secs(5)) {
            break m.unwrap().detach();
        }
    };
    let header = |k: &str| {
        use rdkafka::message::Headers;
        shipped.headers().and_then(|h| h.iter().find(|h| h.key == k).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()))
    };
    assert_eq!(
        header("traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "the trace continues into the task's record"
    );
    assert!(header("taskfactory.task_id").unwrap().starts_with(&format!("{run_id}/ship/")));

    let third = tf_temporal::start_run(&client, &queue, input(&def_id, version, "o-1", event)).await.unwrap();
    assert!(matches!(third, StartOutcome::Duplicate { .. }));
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_results WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(unpublished, 0);
}

/// `execution: activity` (the default for kafka and http) runs a task inside its run: the same
/// task row and one result, but no child workflow in Temporal; a failing one fails the run
/// like a failing child does. `execution: child` still makes a RunTask child.
#[tokio::test]
async fn tasks_with_execution_activity_run_inside_the_run_with_the_same_rows_and_results() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let shipments = unique("it-shipments");
    create_topic(&s, &shipments, 1).await;
    let def_id = unique("it-inline").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: Inline
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - name: ship
    type: kafka
    for_each: event.data.items
    params: {{topic: "'{shipments}'", value: "{{'sku': item}}"}}
  - name: note
    type: kafka
    execution: child
    params: {{topic: "'{shipments}'", value: "'child'"}}
  - name: broken
    type: kafka
    execution: activity
    when: event.data.fail
    retry: {{max_attempts: 2, initial_interval: 100ms}}
    params: {{topic: "''", value: "'never'"}}
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let worker = worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")), ("TF_LOG", "info")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_status = |run_id: String| {
        let pool = pool.clone();
        async move {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM activity_runs WHERE run_id = $1").bind(&run_id).fetch_optional(&pool).await.unwrap();
            status.filter(|s| s != "running")
        }
    };

    let good = json!({"id": "e1", "type": "order.created", "data": {"order_id": "in-1", "items": ["a", "b", "c"], "fail": false}});
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "in-1", good)).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("in-1").unwrap().run_id(&def_id, 1).to_string();
    let status =
        eventually(&format!("the run to end; worker log:\n{}", worker.log()), Duration::from_secs(60), || run_status(run_id.clone())).await;
    assert_eq!(status, "completed", "worker log:\n{}", worker.log());
    let tasks: Vec<(String, String)> = sqlx::query_as("SELECT task_id, status FROM tasks WHERE run_id = $1 ORDER BY task_id")
        .bind(&run_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t.0.as_str()).collect();
    let expected: Vec<String> = ["note/0", "ship/0", "ship/1", "ship/2"].iter().map(|t| format!("{run_id}/{t}")).collect();
    assert_eq!(ids, expected);
    assert!(tasks.iter().all(|t| t.1 == "succeeded"), "{tasks:?}");
    let results = eventually("4 results on taskfactory.results", Duration::from_secs(60), || async {
        let r = results_for(&run_id).await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    assert_eq!(results.len(), 4, "one result per task, whatever runs it: {results:#?}");
    assert!(results.iter().all(|r| r["status"] == "SUCCEEDED"), "{results:#?}");
    let shipped = results.iter().find(|r| r["task_id"] == format!("{run_id}/ship/1").as_str()).unwrap();
    assert_eq!(shipped["task_type"], "kafka");
    // The child task has a workflow of its own; the activity tasks have none.
    let workflows = |id: String| {
        let client = client.clone();
        async move { client.count_workflows(format!("WorkflowId = '{id}'"), Default::default()).await.unwrap().count() }
    };
    eventually("the child task's workflow to be visible", Duration::from_secs(30), || async {
        (workflows(format!("{run_id}/note/0")).await == 1).then_some(())
    })
    .await;
    for i in 0..3 {
        assert_eq!(workflows(format!("{run_id}/ship/{i}")).await, 0, "ship/{i} ran inside the run");
    }

    // An activity task that fails for good fails its run, with its result published as FAILED.
    let bad = json!({"id": "e2", "type": "order.created", "data": {"order_id": "in-2", "items": ["a"], "fail": true}});
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "in-2", bad)).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("in-2").unwrap().run_id(&def_id, 1).to_string();
    let status = eventually("the failing run to end", Duration::from_secs(60), || run_status(run_id.clone())).await;
    assert_eq!(status, "failed", "worker log:\n{}", worker.log());
    let results = eventually("3 results of the failing run", Duration::from_secs(60), || async {
        let r = results_for(&run_id).await;
        (r.len() >= 3).then_some(r)
    })
    .await;
    let broken = results.iter().find(|r| r["template"] == "broken").expect("the broken task's result");
    assert_eq!((broken["status"].as_str(), broken["attempts"].as_i64()), (Some("FAILED"), Some(2)), "{broken}");
}

/// Stands for a user's own workflow, written with any Temporal SDK, on its own task queue.
#[temporalio_macros::workflow]
#[derive(Default)]
pub struct ItEcho;

#[temporalio_macros::workflow_methods]
impl ItEcho {
    #[run(name = "ItEcho")]
    pub async fn run(_ctx: &mut temporalio_sdk::WorkflowContext<Self>, input: Json) -> temporalio_sdk::WorkflowResult<Json> {
        Ok(json!({"echo": input}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_task_runs_a_named_workflow_on_its_own_task_queue() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let user_queue = unique("it-user-queue");
    let def_id = unique("it-wf").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: Delegate
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - name: delegate
    type: workflow
    params:
      workflow_type: "'ItEcho'"
      task_queue: "'{user_queue}'"
      input: "{{'order': event.data.order_id}}"
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let _worker = worker(&db.url, &queue, &[("TF_NO_RELAY", "true")]);
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();

    // The user's worker, in this process.
    let runtime = temporalio_sdk::Runtime::from_current_tokio(temporalio_sdk::runtime::RuntimeOptions::default()).unwrap();
    let options = temporalio_sdk::WorkerOptions::new(user_queue.as_str()).register_workflow::<ItEcho>().unwrap().build();
    let mut user_worker = temporalio_sdk::Worker::new(&runtime, client.clone(), options).unwrap();
    let stop = user_worker.shutdown_handle();

    let scenario = async {
        let event = json!({"id": "e1", "type": "order.created", "data": {"order_id": "w-1"}});
        tf_temporal::start_run(&client, &queue, input(&def_id, version, "w-1", event)).await.unwrap();
        let run_id = tf_temporal::DedupeKey::parse("w-1").unwrap().run_id(&def_id, 1).to_string();
        let row = eventually("the workflow task to finish", Duration::from_secs(60), || async {
            let row: Option<(String, Option<Json>)> =
                sqlx::query_as("SELECT status, output FROM tasks WHERE run_id = $1").bind(&run_id).fetch_optional(&pool).await.unwrap();
            row.filter(|r| r.0 == "succeeded" || r.0 == "failed")
        })
        .await;
        stop();
        row
    };
    let (ran, (status, output)) = tokio::join!(user_worker.run(), scenario);
    ran.unwrap();
    assert_eq!(status, "succeeded");
    assert_eq!(output, Some(json!({"echo": {"order": "w-1"}})));
}

#[tokio::test]
async fn sigterm_stops_the_worker_cleanly() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let addr = tf_testkit::free_local_addr();
    let mut worker = worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_WORKER_METRICS_ADDR", &addr)]);
    eventually("the worker to run", Duration::from_secs(60), || async { worker.log().contains("worker running").then_some(()) }).await;
    assert_eq!(tf_testkit::http_status(&addr, "/healthz"), Some(200));
    assert_eq!(tf_testkit::http_status(&addr, "/readyz"), Some(200), "connected and polling");
    assert_eq!(tf_testkit::http_status(&addr, "/nope"), Some(404));
    let started = std::time::Instant::now();
    assert!(worker.terminate(), "exit status 0 on SIGTERM; log:\n{}", worker.log());
    assert!(worker.log().contains("worker stopped"), "{}", worker.log());
    println!("WORKER FIGURES: stopped {:.1} s after SIGTERM", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_fan_out_over_a_map_survives_a_worker_crash_with_the_same_tasks_in_key_order() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let id = unique("it-map").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: Map\ntrigger: {{event: {{topics: [t]}}}}\ntasks:\n  - {{name: per, type: human, for_each: event.data.regions, params: {{region: item.key, n: item.value}}}}\n"
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let spawn = || worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_WORKER_METRICS_ADDR", "")]);
    let mut worker = spawn();
    let regions: serde_json::Map<String, Json> = (0..40).rev().map(|i| (format!("r{i:02}"), json!(i))).collect();
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "m-1", json!({"data": {"regions": regions}}))).await.unwrap();
    // Crash while the children are being started, then come back.
    eventually("the fan-out to begin", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await.unwrap();
        (n > 0).then_some(())
    })
    .await;
    worker.kill();
    let _worker = spawn();
    let tasks: Vec<(String, Json)> = eventually("40 tasks awaiting their human", Duration::from_secs(90), || async {
        let rows: Vec<(String, Json)> =
            sqlx::query_as("SELECT task_id, params FROM tasks WHERE status = 'awaiting_human' ORDER BY item_index")
                .fetch_all(&pool)
                .await
                .unwrap();
        (rows.len() == 40).then_some(rows)
    })
    .await;
    let run_id = tf_temporal::DedupeKey::parse("m-1").unwrap().run_id(&def_id, 1).to_string();
    for (i, (task_id, params)) in tasks.iter().enumerate() {
        assert_eq!(task_id, &format!("{run_id}/per/{i}"));
        assert_eq!(params, &json!({"region": format!("r{i:02}"), "n": i}), "task {i} is the {i}-th key");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await.unwrap();
    assert_eq!(total, 40, "no task twice after the crash");
}
