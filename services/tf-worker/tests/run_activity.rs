//! RunActivity end to end on the real stack: the tf-worker binary, Temporal, PostgreSQL,
//! Kafka and the registry. Runs are started the way the router starts them.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use tf_temporal::{RunInput, StartOutcome};
use tf_testkit::{FreshDatabase, Service, apply_definition, create_topic, eventually, results_for, settings, unique, workspace_binary};

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
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &relay_id),
            ("TF_LOG", "info"),
            ("TF_DATASOURCE__OWN__URL", &db.url),
        ],
    );

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
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")), ("TF_LOG", "info")],
    );
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

/// A server that accepts connections and never answers, keeping a task in flight: its base URL
/// and how many connections it accepted.
async fn hanging_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (base, accepted)
}

/// Starts the run of `key` (an order event) and waits until its task is in flight at the hanging
/// server; returns the run's id.
async fn start_in_flight(
    client: &temporalio_client::Client,
    queue: &str,
    (def_id, version): (&str, i32),
    key: &str,
    accepted: &std::sync::atomic::AtomicUsize,
    worker: &Service,
) -> tf_definitions::RunId {
    let event = json!({"id": "e1", "type": "order.created", "data": {"order_id": key}});
    tf_temporal::start_run(client, queue, input(def_id, version, key, event)).await.unwrap();
    eventually(&format!("the task's request to arrive; worker log:\n{}", worker.log()), Duration::from_secs(60), || async {
        (accepted.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    tf_temporal::DedupeKey::parse(key).unwrap().run_id(def_id, 1)
}

/// An operator's retry of the cancelled run `run_id`, as `runs retry` does it (with its recorded
/// input), waiting until its task calls the hanging server a second time.
async fn retry_cancelled(
    client: &temporalio_client::Client,
    queue: &str,
    pool: &sqlx::PgPool,
    run_id: &str,
    accepted: &std::sync::atomic::AtomicUsize,
) {
    let recorded: Json =
        sqlx::query_scalar("SELECT input FROM activity_runs WHERE run_id = $1").bind(run_id).fetch_one(pool).await.unwrap();
    let outcome =
        tf_temporal::run_control::retry_run(client, queue, run_id, tf_definitions::RunStatus::Cancelled, Some(recorded)).await.unwrap();
    assert_eq!(outcome, tf_temporal::run_control::RetryOutcome::Started);
    eventually("the retried task's request", Duration::from_secs(60), || async {
        (accepted.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    })
    .await;
}

/// Cancelling a run reaches an activity task in flight as it reaches a child: the task records
/// `cancelled` and publishes one CANCELLED result, and the run ends cancelled.
#[tokio::test]
async fn cancelling_a_run_cancels_its_activity_task_in_flight() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, accepted) = hanging_server().await;
    let queue = unique("it-queue");
    let def_id = unique("it-cancel").to_lowercase();
    let yaml = format!(
        "id: {def_id}\nname: Cancel\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: hang, type: http, params: {{url: \"'{base}/hang'\"}}}}\n"
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")),
            ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_id = start_in_flight(&client, &queue, (&def_id, version), "c-1", &accepted, &worker).await;
    tf_temporal::run_control::cancel_run(&client, run_id.as_str(), tf_definitions::RunStatus::Running, "test").await.unwrap();
    let status = eventually(&format!("the run to end; worker log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM activity_runs WHERE run_id = $1")
            .bind(run_id.as_str())
            .fetch_optional(&pool)
            .await
            .unwrap();
        status.filter(|s| s != "running")
    })
    .await;
    assert_eq!(status, "cancelled", "worker log:\n{}", worker.log());
    let task: (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM tasks WHERE run_id = $1").bind(run_id.as_str()).fetch_one(&pool).await.unwrap();
    assert_eq!(task.0, "cancelled", "{task:?}");
    let results = eventually("the cancelled task's result", Duration::from_secs(60), || async {
        let r = results_for(run_id.as_str()).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!((results.len(), results[0]["status"].as_str()), (1, Some("CANCELLED")), "{results:#?}");

    // The same generation started again, as a later event of its window would: Temporal admits
    // the execution (a cancelled workflow may be reused), the worker deduplicates it. What an
    // operator cancelled stays cancelled; the task is not called again.
    let event = json!({"id": "e2", "type": "order.created", "data": {"order_id": "c-1"}});
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "c-1", event.clone())).await.unwrap();
    let handle = client.get_workflow_handle::<tf_temporal::RunActivity>(run_id.as_str().to_string());
    // Ends either way (deduplicated: completed); the wait is only for it to end.
    let _ = tokio::time::timeout(Duration::from_secs(60), handle.get_result(Default::default())).await.expect("the execution to end");
    let row: (String, i32) =
        sqlx::query_as("SELECT status, attempt FROM activity_runs WHERE run_id = $1").bind(run_id.as_str()).fetch_one(&pool).await.unwrap();
    assert_eq!(row, ("cancelled".to_string(), 1), "worker log:\n{}", worker.log());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "the cancelled task was not called again");

    // An operator's retry does resume it, as attempt 2.
    retry_cancelled(&client, &queue, &pool, run_id.as_str(), &accepted).await;
    let attempt: i32 =
        sqlx::query_scalar("SELECT attempt FROM activity_runs WHERE run_id = $1").bind(run_id.as_str()).fetch_one(&pool).await.unwrap();
    assert_eq!(attempt, 2);
    tf_temporal::run_control::cancel_run(&client, run_id.as_str(), tf_definitions::RunStatus::Running, "test done").await.unwrap();
}

/// A run whose workflow an operator terminated in Temporal (UI or CLI) is settled by the
/// worker's reconciler as cancelled, so it no longer holds its window as `running` and an
/// operator's retry resumes it.
#[tokio::test]
async fn a_run_terminated_in_temporal_is_settled_and_can_be_retried() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, accepted) = hanging_server().await;
    let queue = unique("it-queue");
    let yaml = format!(
        "id: {}\nname: Terminate\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: hang, type: http, params: {{url: \"'{base}/hang'\"}}}}\n",
        unique("it-terminate").to_lowercase()
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_NO_RELAY", "true"),
            ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1"),
            ("TF_RUN_RECONCILE_SECS", "1"),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_id = start_in_flight(&client, &queue, (&def_id, version), "t-1", &accepted, &worker).await;
    client
        .get_workflow_handle::<tf_temporal::RunActivity>(run_id.as_str().to_string())
        .terminate(temporalio_client::WorkflowTerminateOptions::builder().reason("operator in the Temporal UI").build())
        .await
        .unwrap();
    let status = eventually(&format!("the run to be settled; worker log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM activity_runs WHERE run_id = $1").bind(run_id.as_str()).fetch_one(&pool).await.unwrap();
        (status != "running").then_some(status)
    })
    .await;
    assert_eq!(status, "cancelled", "an operator's termination is a cancellation");
    retry_cancelled(&client, &queue, &pool, run_id.as_str(), &accepted).await;
    tf_temporal::run_control::cancel_run(&client, run_id.as_str(), tf_definitions::RunStatus::Running, "test done").await.unwrap();
}

#[tokio::test]
async fn recording_a_result_twice_queues_it_once() {
    let s = settings();
    let (_db, pool) = FreshDatabase::migrated(&s).await;
    let (def_id, version) =
        apply_definition(&pool, "id: once\nname: Once\ntrigger: {event: {topics: [t]}}\ntasks: [{name: t, type: human}]\n").await;
    let source = tf_store::runs::RunSource::of(tf_store::runs::TriggerKind::Manual);
    let (run_id, task_id) = (tf_definitions::RunId::from_workflow_id("r1"), tf_definitions::RunId::from_workflow_id("r1").task("t", 0));
    let begin = tf_store::runs::BeginRun {
        run_id: &run_id,
        execution_id: "x1",
        definition_id: &def_id,
        definition_version: version,
        dedupe_key: "k",
        generation: None,
        event_time_ms: 1_000,
        dedupe_window: Duration::from_secs(60),
        fired_at_ms: 0,
        traceparent: None,
        source: &source,
        input: None,
        operator_retry: false,
    };
    let claimed = tf_store::runs::Claim::Claimed { generation: 1, attempt: 1, succeeded: vec![] };
    assert_eq!(tf_store::runs::begin_run(&pool, &begin).await.unwrap(), claimed);
    assert_eq!(tf_store::runs::begin_run(&pool, &begin).await.unwrap(), claimed, "a retried activity keeps its claim");
    let other = tf_store::runs::BeginRun { execution_id: "x2", ..begin };
    assert!(matches!(tf_store::runs::begin_run(&pool, &other).await.unwrap(), tf_store::runs::Claim::HeldBy { .. }));
    let params = json!({});
    tf_store::tasks::record_tasks(
        &pool,
        &run_id,
        &[tf_store::tasks::NewTask {
            task_id: &task_id,
            run_attempt: 1,
            template: "t",
            index: 0,
            task_type: tf_definitions::TaskType::Human,
            params: &params,
        }],
    )
    .await
    .unwrap();
    let record = json!({"any": "record"});
    let outcome = tf_store::outbox::FinishedTask {
        task_id: &task_id,
        run_id: &run_id,
        status: tf_definitions::TaskStatus::Succeeded,
        output: None,
        error: None,
        attempts: 1,
        record: &record,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    };
    // The first attempt recorded the result, then died before reporting success; Temporal
    // runs the activity again.
    assert!(tf_store::outbox::record_result(&pool, &outcome).await.unwrap());
    assert!(!tf_store::outbox::record_result(&pool, &outcome).await.unwrap());
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results").fetch_one(&pool).await.unwrap();
    assert_eq!(queued, 1);
}

/// A tiny HTTP server on loopback: answers every request with JSON describing it, and keeps
/// what it received for the test to check.
async fn echo_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut n = 0;
                // Read headers and, when announced, the body.
                loop {
                    let Ok(k) = stream.read(&mut buf[n..]).await else { return };
                    if k == 0 {
                        break;
                    }
                    n += k;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let first = request.lines().next().unwrap_or("").to_string();
                let body_in = request.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
                log.lock().unwrap().push(request.clone());
                let body = serde_json::json!({"request": first, "received": serde_json::from_str::<serde_json::Value>(&body_in).unwrap_or(serde_json::Value::Null), "tier": "gold"}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

#[tokio::test]
async fn http_context_and_http_tasks_call_out_with_json() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, seen) = echo_server().await;
    let queue = unique("it-queue");
    let def_id = unique("it-http").to_lowercase();
    let yaml = format!(
        r#"
id: {def_id}
name: HTTP
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
context:
  customer:
    http:
      url: "'{base}/customers/' + event.data.customer"
tasks:
  - name: notify
    type: http
    params:
      url: "'{base}/notify'"
      body: "{{'order': event.data.order_id, 'tier': context.customer.tier}}"
"#
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    // The echo server is on loopback, which only an explicit allow-list reaches.
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let event = json!({"id": "e1", "type": "order.created", "data": {"order_id": "h-1", "customer": "c-42"}});
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "h-1", event)).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("h-1").unwrap().run_id(&def_id, 1).to_string();
    let (status, output): (String, Option<Json>) = eventually("the http task to finish", Duration::from_secs(60), || async {
        let row: Option<(String, Option<Json>)> =
            sqlx::query_as("SELECT status, output FROM tasks WHERE run_id = $1").bind(&run_id).fetch_optional(&pool).await.unwrap();
        row.filter(|r| r.0 != "pending" && r.0 != "running")
    })
    .await;
    assert_eq!(status, "succeeded", "worker log:\n{}", worker.log());
    let output = output.unwrap();
    assert_eq!(output["status"], 200);
    assert_eq!(output["body"]["request"], "POST /notify HTTP/1.1");
    assert_eq!(output["body"]["received"], json!({"order": "h-1", "tier": "gold"}), "the body used the http context's answer");
    let requests = seen.lock().unwrap().clone();
    assert!(requests.iter().any(|r| r.starts_with("GET /customers/c-42 ")), "{requests:?}");
    assert!(requests.iter().any(|r| r.to_ascii_lowercase().contains(&format!("x-taskfactory-task-id: {run_id}/notify/0"))));
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
    let _worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true")],
    );
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
async fn the_results_relay_fails_over_to_another_worker() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-failover").await;
    let relay_id = unique("it-relay");
    let metrics = [tf_testkit::free_local_addr(), tf_testkit::free_local_addr()];
    let mut workers = [0, 1].map(|i| {
        let envs = [
            ("TF_DATABASE_URL", db.url.as_str()),
            ("TF_TASK_QUEUE", queue.as_str()),
            ("TF_RELAY_TRANSACTIONAL_ID", relay_id.as_str()),
            ("TF_WORKER_METRICS_ADDR", metrics[i].as_str()),
        ];
        Service::spawn(env!("CARGO_BIN_EXE_tf-worker"), &unique("tf-worker"), &envs)
    });
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();

    let published = |key: &'static str| {
        let (pool, run_id) = (pool.clone(), tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                .bind(&run_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    };
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "f-1", json!({"data": {"order_id": "f-1"}}))).await.unwrap();
    eventually("the first result published", Duration::from_secs(60), || published("f-1")).await;

    let leader = workers.iter().position(|w| w.log().contains("this worker runs the results relay")).expect("one worker leads the relay");
    assert!(!workers[1 - leader].log().contains("this worker runs the results relay"), "exactly one relay");
    let gauge = |i: usize| tf_testkit::scrape_metric(&metrics[i], "tf_worker_relay_leader");
    assert_eq!((gauge(leader), gauge(1 - leader)), (Some(1.0), Some(0.0)));
    assert_eq!(tf_testkit::scrape_metric(&metrics[leader], "tf_worker_results_published_total"), Some(1.0));
    workers[leader].kill();

    tf_temporal::start_run(&client, &queue, input(&def_id, version, "f-2", json!({"data": {"order_id": "f-2"}}))).await.unwrap();
    eventually("the second result published by the other worker", Duration::from_secs(90), || published("f-2")).await;
    assert!(workers[1 - leader].log().contains("this worker runs the results relay"));
    assert_eq!(gauge(1 - leader), Some(1.0));
    for key in ["f-1", "f-2"] {
        let results = eventually("the result on the topic", Duration::from_secs(30), || async {
            let r = results_for(&tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string()).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(results.len(), 1, "exactly one result for {key}");
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// A sink topic and a definition of one `kafka` task writing each order event to it, the shape
/// the relay tests publish results of: (sink, definition id, version).
async fn kafka_task_definition(pool: &sqlx::PgPool, prefix: &str) -> (String, String, i32) {
    let sink = unique(&format!("{prefix}-sink"));
    create_topic(&settings(), &sink, 1).await;
    let yaml = format!(
        "id: {}\nname: Relayed\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.order_id}}\ntasks:\n  - {{name: t, type: kafka, params: {{topic: \"'{sink}'\", value: 'event.data'}}}}\n",
        unique(prefix).to_lowercase()
    );
    let (def_id, version) = apply_definition(pool, &yaml).await;
    (sink, def_id, version)
}

/// A relay that finds no marker of its own (TF_RELAY_TRANSACTIONAL_ID changed, or the marker
/// topic lost its records) resumes after what the outbox records as published: it does not
/// publish the whole outbox again.
#[tokio::test]
async fn a_relay_without_a_marker_does_not_publish_the_outbox_again() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-nomarker").await;
    let worker = |relay_id: String| {
        let envs = [("TF_DATABASE_URL", db.url.clone()), ("TF_TASK_QUEUE", queue.clone()), ("TF_RELAY_TRANSACTIONAL_ID", relay_id)];
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Service::spawn(env!("CARGO_BIN_EXE_tf-worker"), &unique("tf-worker"), &envs)
    };
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let published = |key: &'static str| {
        let (pool, run_id) = (pool.clone(), run(key));
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                .bind(&run_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    };
    let mut first = worker(unique("it-relay"));
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "m-1", json!({"data": {"order_id": "m-1"}}))).await.unwrap();
    eventually("the first result published", Duration::from_secs(60), || published("m-1")).await;
    first.terminate();
    // A new transactional id: its marker does not exist.
    let second = worker(unique("it-relay"));
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "m-2", json!({"data": {"order_id": "m-2"}}))).await.unwrap();
    eventually(&format!("the second result published; log:\n{}", second.log()), Duration::from_secs(60), || published("m-2")).await;
    for key in ["m-1", "m-2"] {
        let results = eventually("the result on the topic", Duration::from_secs(30), || async {
            let r = results_for(&run(key)).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        // Read again after the second's result is there, so a republished first would be seen.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(results_for(&run(key)).await.len(), 1, "exactly one result for {key}: {results:?}");
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// The schema registry refusing the result schema (409 from a subject's compatibility rule)
/// says nothing about any one result: the relay pauses and says so, quarantines nothing, and
/// publishes once the registry takes the schema again.
#[tokio::test]
async fn a_registry_refusing_the_result_schema_pauses_the_relay_and_quarantines_nothing() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-refused").await;
    let registry = reqwest::Url::parse(&s.schema_registry_url).unwrap();
    let upstream = format!("{}:{}", registry.host_str().unwrap(), registry.port_or_known_default().unwrap());
    let proxy = tf_testkit::fault_proxy::start(
        &upstream,
        "POST /apis/ccompat/v7/subjects/taskfactory.results-value/versions",
        409,
        r#"{"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}"#,
    )
    .await;
    let proxied = format!("{}{}", proxy.base, registry.path());
    let relay_id = unique("it-relay");
    let metrics = tf_testkit::free_local_addr();
    let mut worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &relay_id),
            ("TF_SCHEMA_REGISTRY_URL", &proxied),
            ("TF_WORKER_METRICS_ADDR", &metrics),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "r-1", json!({"data": {"order_id": "r-1"}}))).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("r-1").unwrap().run_id(&def_id, 1).to_string();
    eventually(&format!("the relay to pause on the refusal; log:\n{}", worker.log()), Duration::from_secs(60), || async {
        (tf_testkit::scrape_metric(&metrics, "tf_worker_relay_blocked") == Some(1.0)).then_some(())
    })
    .await;
    assert!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let row: (bool, bool) =
        sqlx::query_as("SELECT published_at IS NOT NULL, quarantined_at IS NOT NULL FROM task_results WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row, (false, false), "neither published nor quarantined while the registry refuses");
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total"), Some(0.0));
    worker.terminate();

    // The registry takes the schema again (here: the worker reaches it directly).
    let _worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_RELAY_TRANSACTIONAL_ID", &relay_id)],
    );
    let results = eventually("the result published", Duration::from_secs(60), || async {
        let r = results_for(&run_id).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(results.len(), 1, "{results:?}");
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

/// A relay that takes over while another relay's transaction is open on the shared marker
/// topic (a relay killed mid-batch leaves one open until transaction.timeout.ms) must wait for
/// it, not resume from the last marker before it: that marker is stale when the old leader
/// committed more after the open transaction began, and every result since would be published
/// twice (seen once in CI's chaos run).
#[tokio::test]
async fn a_relay_taking_over_behind_another_relays_open_transaction_publishes_nothing_twice() {
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let (sink, def_id, version) = kafka_task_definition(&pool, "it-zombie").await;
    let relay_id = unique("it-relay");
    let spawn_worker = || {
        let envs =
            [("TF_DATABASE_URL", db.url.as_str()), ("TF_TASK_QUEUE", queue.as_str()), ("TF_RELAY_TRANSACTIONAL_ID", relay_id.as_str())];
        Service::spawn(env!("CARGO_BIN_EXE_tf-worker"), &unique("tf-worker"), &envs)
    };
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let run_id = |key: &str| tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def_id, 1).to_string();
    let run = |key: &'static str| {
        let (client, queue, pool, run_id) = (client.clone(), queue.clone(), pool.clone(), run_id(key));
        let input = input(&def_id, version, key, json!({"data": {"order_id": key}}));
        async move {
            tf_temporal::start_run(&client, &queue, input).await.unwrap();
            eventually(&format!("{key}'s result published"), Duration::from_secs(120), || async {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE run_id = $1 AND published_at IS NOT NULL")
                    .bind(&run_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                (n == 1).then_some(())
            })
            .await;
        }
    };

    let mut first = spawn_worker();
    run("z-1").await;
    // Another deployment's relay opens a transaction on the marker topic and stays in it.
    let zombie: FutureProducer = tf_kafka::client_config(&s.kafka_brokers)
        .set("transactional.id", unique("it-zombie-relay"))
        .set("transaction.timeout.ms", "30000")
        .create()
        .unwrap();
    let z = zombie.clone();
    tokio::task::spawn_blocking(move || z.init_transactions(Duration::from_secs(30))).await.unwrap().unwrap();
    zombie.begin_transaction().unwrap();
    zombie.send(FutureRecord::to("taskfactory.results-relay").key("it-zombie").payload("{}"), Duration::from_secs(10)).await.unwrap();
    // The first relay commits z-2 behind it, then dies; the second takes over.
    run("z-2").await;
    first.kill();
    // As if the first relay died between its Kafka commit and recording it: z-2 is on the
    // topic but the database does not know. The next relay must mark it, not republish it.
    sqlx::query("UPDATE task_results SET published_at = NULL, published_partition = NULL, published_offset = NULL WHERE run_id = $1")
        .bind(run_id("z-2"))
        .execute(&pool)
        .await
        .unwrap();
    let second = spawn_worker();
    eventually("the second worker to lead the relay", Duration::from_secs(60), || async {
        second.log().contains("this worker runs the results relay").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!second.log().contains("results relay started"), "the relay must not start behind an open transaction:\n{}", second.log());
    let z = zombie.clone();
    tokio::task::spawn_blocking(move || z.abort_transaction(Duration::from_secs(30))).await.unwrap().unwrap();
    run("z-3").await;
    let unmarked: i64 = sqlx::query_scalar("SELECT count(*) FROM task_results WHERE published_at IS NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(unmarked, 0, "z-2, committed by the first relay, is marked published by the second");
    assert!(second.log().contains("results committed by an earlier relay marked as published"), "{}", second.log());
    for key in ["z-1", "z-2", "z-3"] {
        let results = eventually("the result on the topic", Duration::from_secs(30), || async {
            let r = results_for(&run_id(key)).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(results.len(), 1, "exactly one result for {key}; second worker's log:\n{}", second.log());
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}

#[tokio::test]
async fn sigterm_stops_the_worker_cleanly() {
    let s = settings();
    let (db, _pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let addr = tf_testkit::free_local_addr();
    let mut worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true"), ("TF_WORKER_METRICS_ADDR", &addr)],
    );
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
async fn an_oversize_result_is_published_truncated_and_an_unpublishable_one_is_quarantined() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let id = unique("it-big").to_lowercase();
    let (def_id, version) = apply_definition(
        &pool,
        &format!("id: {id}\nname: Big\ntrigger: {{event: {{topics: [t]}}}}\ntasks: [{{name: review, type: human}}]\n"),
    )
    .await;
    let relay_id = unique("it-relay");
    let metrics = tf_testkit::free_local_addr();
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &relay_id),
            ("TF_RESULT_MAX_BYTES", "20000"),
            ("TF_WORKER_METRICS_ADDR", &metrics),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "big-1", json!({"id": "e"}))).await.unwrap();
    let run_id = tf_temporal::DedupeKey::parse("big-1").unwrap().run_id(&def_id, 1).to_string();
    let review = format!("{run_id}/review/0");
    eventually(&format!("the review to await a human; log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let st: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(&review).fetch_optional(&pool).await.unwrap();
        (st.as_deref() == Some("awaiting_human")).then_some(())
    })
    .await;
    // A row whose stored record is not a result at all: it must not hold up the others.
    sqlx::query("INSERT INTO tasks (task_id, run_id, template, item_index, task_type, params) VALUES ($1, $2, 'bogus', 0, 'human', '{}')")
        .bind(format!("{run_id}/bogus/0"))
        .bind(&run_id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO task_results (task_id, run_id, record) VALUES ($1, $2, '{\"not\": \"a result\"}')")
        .bind(format!("{run_id}/bogus/0"))
        .bind(&run_id)
        .execute(&pool)
        .await
        .unwrap();
    let big = json!({"blob": "y".repeat(50_000)}).to_string();
    let done = std::process::Command::new(workspace_binary("tf"))
        .args(["tasks", "complete", &review, "--result", &big])
        .env("TF_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let results = eventually("the review's result", Duration::from_secs(60), || async {
        let r = results_for(&run_id).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["task_id"], review.as_str());
    assert_eq!(results[0]["truncated"], true);
    let note: Json = serde_json::from_str(results[0]["output"].as_str().unwrap()).unwrap();
    assert_eq!(note["task_id"], review.as_str());
    assert!(note["original_bytes"].as_u64().unwrap() > 50_000, "{note}");
    let stored: Json = sqlx::query_scalar("SELECT output FROM tasks WHERE task_id = $1").bind(&review).fetch_one(&pool).await.unwrap();
    assert_eq!(stored["blob"].as_str().unwrap().len(), 50_000, "the full output stays in the tasks table");
    let reason: Option<String> = sqlx::query_scalar("SELECT quarantine_reason FROM task_results WHERE task_id = $1")
        .bind(format!("{run_id}/bogus/0"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reason.is_some_and(|r| r.contains("missing field")), "the bogus row is quarantined with its reason");
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total"), Some(1.0));
    assert_eq!(tf_testkit::scrape_metric(&metrics, "tf_worker_results_truncated_total"), Some(1.0));

    // Operators see what was set aside, and queue it again once its cause is fixed; the relay,
    // whose marker moved past it, reads it next (this row is still not a result, so it is
    // quarantined again: the second count shows the relay took it up).
    let tf = |args: &[&str]| {
        let out = std::process::Command::new(workspace_binary("tf")).args(args).env("TF_DATABASE_URL", &db.url).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, listed) = tf(&["results", "quarantined", "-o", "json"]);
    assert!(ok, "{listed}");
    let listed: Json = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["task_id"], format!("{run_id}/bogus/0"), "{listed}");
    assert!(listed[0]["reason"].as_str().unwrap().contains("missing field"), "{listed}");
    let (ok, out) = tf(&["results", "requeue", &format!("{run_id}/bogus/0")]);
    assert!(ok && out.contains("queued again"), "{out}");
    eventually("the relay to take the re-queued result up", Duration::from_secs(60), || async {
        (tf_testkit::scrape_metric(&metrics, "tf_worker_results_quarantined_total") == Some(2.0)).then_some(())
    })
    .await;
    let (ok, out) = tf(&["results", "requeue", "no/such/task"]);
    assert!(!ok && out.contains("not quarantined"), "{out}");
}

#[tokio::test]
async fn an_http_task_may_not_reach_internal_addresses_unless_allowed_and_errors_hide_tokens() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let (base, seen) = echo_server().await;
    let queue = unique("it-queue");
    let def_id = unique("it-ssrf").to_lowercase();
    let yaml = format!(
        "id: {def_id}\nname: SSRF\ntrigger: {{event: {{topics: [events.demo]}}}}\ntasks:\n  - {{name: call, type: http, retry: {{max_attempts: 1}}, params: {{url: \"'{base}/admin?token=s3cret'\"}}}}\n"
    );
    let (def_id, version) = apply_definition(&pool, &yaml).await;
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true")],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, input(&def_id, version, "s-1", json!({"id": "e"}))).await.unwrap();
    let error: String = eventually("the task to fail", Duration::from_secs(60), || async {
        let row: Option<(String, Option<String>)> = sqlx::query_as("SELECT status, error FROM tasks").fetch_optional(&pool).await.unwrap();
        row.filter(|r| r.0 == "failed").map(|r| r.1.unwrap_or_default())
    })
    .await;
    assert!(error.contains("internal address 127.0.0.1") && error.contains("TF_HTTP_ALLOWED_HOSTS"), "{error}\n{}", worker.log());
    assert!(!error.contains("s3cret"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "no request reached the server");
    // The run records its end right after the task's result: wait for it, do not race it.
    eventually("the run to end as failed", Duration::from_secs(30), || async {
        let status: String = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_one(&pool).await.unwrap();
        (status == "failed").then_some(())
    })
    .await;
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
    let spawn = || {
        Service::spawn(
            env!("CARGO_BIN_EXE_tf-worker"),
            &unique("tf-worker"),
            &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true"), ("TF_WORKER_METRICS_ADDR", "")],
        )
    };
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
