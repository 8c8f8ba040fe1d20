//! Cancelling a run with work in flight, and a run terminated in Temporal: both end recorded,
//! and both can be retried.

use super::*;

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
    let worker = worker(&db.url, &queue, &[("TF_RELAY_TRANSACTIONAL_ID", &unique("it-relay")), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1")]);
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
    let results = tf_testkit::published_results("the cancelled task's result", run_id.as_str(), Duration::from_secs(60)).await;
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
    let worker =
        worker(&db.url, &queue, &[("TF_NO_RELAY", "true"), ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1"), ("TF_RUN_RECONCILE_SECS", "1")]);
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
