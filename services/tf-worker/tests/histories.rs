//! Safe upgrades: every workflow shape the product produces, recorded from real runs as
//! Temporal history (`tests/histories/*.json`), is replayed against the workflow code of this
//! build. A change to `workflows.rs` that would make a run in flight non-deterministic after an
//! upgrade fails here; the rule it enforces is in docs/architecture.md ("Workflow versioning").
//!
//! Replaying needs no services (the history carries every activity result). Recording does:
//! `scripts/record-histories` runs the ignored `record_the_history_corpus` against the stack.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value as Json, json};
use temporalio_client::{WorkflowExecutionInfo, WorkflowHistory};
use temporalio_sdk::workflow_replayer::{WorkflowReplayFailure, WorkflowReplayer, WorkflowReplayerOptions};
use tf_testkit::http_stub::HttpStub;
use tf_testkit::{FreshDatabase, Service, apply_definition, create_topic, eventually, settings, unique, workspace_binary};
use tf_worker::workflows::{RunActivityWorkflow, RunTaskWorkflow};

/// The recorded shapes: file stem and what the history shows. The replay test fails when one
/// is missing, so a shape leaves the corpus only on purpose (see "retiring a patch").
const SHAPES: &[(&str, &str)] = &[
    ("event-run", "event run: static and sql context (a regular activity), kafka and http tasks inline, a child task"),
    ("child-task", "RunTask child of event-run: a kafka task"),
    ("foreign-workflow-task", "run with a `workflow` task: a child workflow of the user's type on the user's queue"),
    ("human-completed", "RunTask: a human task decided `complete` by the decide update"),
    ("human-completed-by-signal", "RunTask: a human task completed by the older `complete` signal"),
    ("human-rejected", "RunTask: a human task rejected by the decide update"),
    ("human-rejected-run", "RunActivity whose human child was rejected: the run fails"),
    ("human-timed-out", "RunTask: a human task whose timer fired (on_timeout: fail)"),
    ("human-timed-out-completed", "RunTask: a human task whose timer fired (on_timeout: complete)"),
    ("task-failed", "run whose inline http task failed its only attempt: the run fails"),
    ("operator-retry", "the same run retried by an operator: attempt 2, the task succeeds"),
    ("plan-failed", "run whose task params fail to evaluate: planning fails, the run fails"),
    ("cancelled", "run cancelled while its http task was in flight"),
    ("child-cancelled", "run cancelled while its child task was in flight, with the child's history"),
    ("child-cancelled-task", "RunTask child of child-cancelled: cancelled in flight"),
    ("stays-cancelled", "the cancelled generation started again by a later event: it stays cancelled"),
    ("deduplicated", "a second execution for a claimed key: deduplicated, nothing spawned"),
    ("cron-run", "a run started by a Temporal Schedule: search attributes upserted, one kafka task"),
    ("flow-waited", "flow control: a run that waited for a concurrency slot, woken by the releaser's signal, then executed"),
    ("flow-skipped", "flow control: a run a rate limit skipped at its start: nothing spawned"),
    ("flow-budget-waited", "flow control: an inline http task that waited for its shared budget, woken, then called"),
    ("flow-debounced", "flow control: a run that waited on its own timer (a debounce's quiet period), then executed"),
    (
        "steps-chain",
        "a run that unfolds: an http task, a sleep after it, a kafka task after the sleep reading the first's output, a human child after it",
    ),
    ("steps-skipped", "a run that unfolds whose first task failed: its dependents skipped, an `always` one ran"),
    ("steps-waited", "a wait_for_event step that received its event by the deliver-event signal, then a task after it"),
    ("steps-wait-timed-out", "a wait_for_event step whose timer fired first: its timeout output, then a task after it"),
    ("steps-cancelled-waiting", "a run cancelled (as cancel_on does) while its wait_for_event step waited"),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/histories")
}

fn replayer() -> WorkflowReplayer {
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<RunActivityWorkflow>()
        .unwrap()
        .register_workflow::<RunTaskWorkflow>()
        .unwrap()
        .build();
    WorkflowReplayer::new(options).unwrap()
}

fn load(shape: &str) -> Vec<u8> {
    let path = corpus_dir().join(format!("{shape}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; record the corpus with scripts/record-histories", path.display()))
}

/// Replays histories and returns each one's failure, in order.
async fn replay(histories: Vec<(String, Vec<u8>)>) -> Vec<(String, Option<WorkflowReplayFailure>)> {
    let names: Vec<String> = histories.iter().map(|(n, _)| n.clone()).collect();
    let parsed = histories.into_iter().map(|(n, bytes)| WorkflowHistory::from_json(&bytes).unwrap_or_else(|e| panic!("{n}: {e}")));
    let results = replayer().replay_workflows(parsed).await.unwrap();
    assert_eq!(results.len(), names.len());
    names.into_iter().zip(results.into_iter().map(|r| r.replay_failure)).collect()
}

#[tokio::test]
async fn every_recorded_history_replays_against_this_build() {
    let on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(str::to_string))
        .collect();
    for (shape, _) in SHAPES {
        assert!(on_disk.iter().any(|n| n == shape), "the corpus has no {shape}.json");
    }
    // Every file replays, also those of shapes no longer listed (older recordings are exactly
    // what runs of older builds look like).
    let histories = on_disk.iter().map(|n| (n.clone(), std::fs::read(corpus_dir().join(format!("{n}.json"))).unwrap())).collect();
    let failures: Vec<String> = replay(histories).await.into_iter().filter_map(|(n, f)| f.map(|f| format!("{n}: {f}"))).collect();
    assert!(failures.is_empty(), "histories this build cannot replay (a run in flight would get stuck):\n{}", failures.join("\n"));
}

/// The replay is not vacuous: a history that disagrees with the code, as one recorded by a
/// build whose workflow scheduled something else would, is reported as non-deterministic.
#[tokio::test]
async fn a_history_the_code_disagrees_with_fails_replay() {
    let mut history: Json = serde_json::from_slice(&load("event-run")).unwrap();
    let mut renamed = 0;
    for event in history["events"].as_array_mut().unwrap() {
        let name = event.pointer_mut("/attributes/ActivityTaskScheduledEventAttributes/activity_type/name");
        if let Some(name) = name.filter(|n| *n == "ResolveContext") {
            *name = json!("ResolveContextV2");
            renamed += 1;
        }
    }
    assert!(renamed > 0, "event-run schedules a regular activity (its sql context)");
    let outcome = replay(vec![("event-run, renamed activity".into(), serde_json::to_vec(&history).unwrap())]).await;
    match &outcome[0].1 {
        Some(WorkflowReplayFailure::Nondeterminism { message }) => assert!(message.contains("ResolveContext"), "{message}"),
        other => panic!("expected a non-determinism failure, got {other:?}"),
    }
}

// ----- recording -----

struct Recorder {
    client: temporalio_client::Client,
    pool: sqlx::PgPool,
    db: FreshDatabase,
    queue: String,
    namespace: String,
    worker: Service,
    written: Vec<String>,
}

impl Recorder {
    async fn run_status(&self, run_id: &str) -> String {
        tf_testkit::run_ended(&self.pool, run_id, &self.worker.log()).await
    }

    async fn task_status(&self, task_id: &str, want: &str) {
        eventually(&format!("task {task_id} {want}; worker log:\n{}", self.worker.log()), Duration::from_secs(60), || async {
            let s: Option<String> =
                sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(task_id).fetch_optional(&self.pool).await.unwrap();
            (s.as_deref() == Some(want)).then_some(())
        })
        .await;
    }

    /// Waits until the execution (the latest of `workflow_id`, or `run_id`) closed, then writes
    /// its history as `shape.json`.
    async fn save(&mut self, shape: &str, workflow_id: &str, run_id: Option<&str>) {
        assert!(SHAPES.iter().any(|(s, _)| *s == shape), "{shape} is not in SHAPES");
        let handle = WorkflowExecutionInfo::builder()
            .namespace(self.namespace.clone())
            .workflow_id(workflow_id)
            .maybe_run_id(run_id.map(str::to_string))
            .build()
            .bind_untyped(self.client.clone());
        eventually(&format!("{workflow_id} to close"), Duration::from_secs(90), || async {
            let d = handle.describe(Default::default()).await.unwrap();
            (d.status() != temporalio_client::WorkflowExecutionStatus::Running).then_some(())
        })
        .await;
        let json = handle.fetch_history(Default::default()).to_json().await.unwrap();
        let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<Json>(&json).unwrap()).unwrap();
        std::fs::write(corpus_dir().join(format!("{shape}.json")), pretty).unwrap();
        println!("recorded {shape} ({workflow_id})");
        self.written.push(shape.to_string());
    }

    /// Temporal's run id of the latest execution of `workflow_id`.
    async fn latest_execution(&self, workflow_id: &str) -> String {
        let handle = self.client.get_workflow_handle::<tf_temporal::RunActivity>(workflow_id);
        handle.describe(Default::default()).await.unwrap().run_id().to_string()
    }

    async fn start(&self, def: &(String, i32), key: &str, data: Json) -> String {
        let event = json!({"id": format!("e-{key}"), "type": "order.created", "data": data});
        tf_temporal::start_run(&self.client, &self.queue, tf_testkit::run_input(&def.0, def.1, key, event)).await.unwrap();
        tf_temporal::DedupeKey::parse(key).unwrap().run_id(&def.0, 1).to_string()
    }

    async fn decide(&self, task_id: &str, decision: tf_temporal::HumanDecision) {
        self.task_status(task_id, "awaiting_human").await;
        self.client
            .get_workflow_handle::<tf_temporal::RunTask>(task_id)
            .execute_update(tf_temporal::DecideTask, decision, Default::default())
            .await
            .unwrap();
    }
}

/// Stands for a user's own workflow on its own task queue (not part of the corpus: only the
/// run that starts it is).
#[temporalio_macros::workflow]
#[derive(Default)]
pub struct CorpusEcho;

#[temporalio_macros::workflow_methods]
impl CorpusEcho {
    #[run(name = "CorpusEcho")]
    pub async fn run(_ctx: &mut temporalio_sdk::WorkflowContext<Self>, input: Json) -> temporalio_sdk::WorkflowResult<Json> {
        Ok(json!({"echo": input}))
    }
}

/// Records every shape in SHAPES from real runs on the stack. Run by `scripts/record-histories`
/// when a shape is added (never to "fix" a failing replay: a history that no longer replays is
/// a run in flight that the change would break).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records the corpus; run by scripts/record-histories"]
async fn record_the_history_corpus() {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let stub = HttpStub::start().await;
    let base = &stub.base;
    let queue = unique("corpus-queue");
    let user_queue = unique("corpus-user-queue");
    let sink = unique("corpus-sink");
    create_topic(&s, &sink, 1).await;
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[
            ("TF_DATABASE_URL", &db.url),
            ("TF_TASK_QUEUE", &queue),
            ("TF_RELAY_TRANSACTIONAL_ID", &unique("corpus-relay")),
            ("TF_HTTP_ALLOWED_HOSTS", "127.0.0.1"),
            ("TF_DATASOURCE__OWN__URL", &db.url),
            ("TF_SCHEDULER_REFRESH_MS", "300"),
            ("TF_BUDGETS", "corpus=1"),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "corpus").await.unwrap();
    std::fs::create_dir_all(corpus_dir()).unwrap();
    let mut r = Recorder {
        client: client.clone(),
        pool: pool.clone(),
        db,
        queue,
        namespace: s.temporal_namespace.clone(),
        worker,
        written: vec![],
    };

    // Workflow ids are kept by Temporal for the namespace's retention: each recording uses its own.
    let tag = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 0x10_0000);
    let tasks = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-tasks-{tag}
name: Corpus tasks
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
context:
  warehouse: {{static: {{dock: 7}}}}
  tier: {{sql: {{datasource: own, query: "SELECT upper($1) AS name", params: [event.data.customer]}}}}
tasks:
  - {{name: ship, type: kafka, for_each: event.data.items, params: {{topic: "'{sink}'", key: event.data.order_id, value: "{{'sku': item, 'dock': context.warehouse.dock}}"}}}}
  - {{name: notify, type: http, params: {{url: "'{base}/notify/' + event.data.order_id", body: "{{'tier': context.tier[0].name}}"}}}}
  - {{name: note, type: kafka, execution: child, params: {{topic: "'{sink}'", value: "'child'"}}}}
"#
        ),
    )
    .await;
    let human = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-human-{tag}
name: Corpus human
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: review, type: human, when: "event.data.kind == 'decide'", params: {{title: "'Review ' + event.data.order_id"}}}}
  - {{name: expire, type: human, when: "event.data.kind == 'expire'", timeout: 1s, params: {{title: "'Expires'"}}}}
  - {{name: auto, type: human, when: "event.data.kind == 'auto'", timeout: 1s, on_timeout: complete, timeout_output: "{{'approved': true, 'by': 'timeout'}}", params: {{title: "'Auto'"}}}}
"#
        ),
    )
    .await;
    let calls = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-calls-{tag}
name: Corpus calls
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: call, type: http, retry: {{max_attempts: 1}}, params: {{url: "'{base}/' + event.data.path + '/' + event.data.order_id"}}}}
  - {{name: slow, type: kafka, execution: child, when: "event.data.child", params: {{topic: "'{sink}'", value: "event.data.missing.field"}}}}
"#
        ),
    )
    .await;
    let hang_child = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-hang-child-{tag}
name: Corpus hang child
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: wait, type: http, execution: child, params: {{url: "'{base}/hang/' + event.data.order_id"}}}}
"#
        ),
    )
    .await;
    let delegate = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-delegate-{tag}
name: Corpus delegate
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: delegate, type: workflow, params: {{workflow_type: "'CorpusEcho'", task_queue: "'{user_queue}'", input: "{{'order': event.data.order_id}}"}}}}
"#
        ),
    )
    .await;

    // event-run, child-task
    let run = r.start(&tasks, "o-1", json!({"order_id": "o-1", "customer": "acme", "items": ["a", "b"]})).await;
    assert_eq!(r.run_status(&run).await, "completed");
    r.save("event-run", &run, None).await;
    r.save("child-task", &format!("{run}/note/0"), None).await;

    // deduplicated: another execution for the claimed key, as a redelivery after the window's
    // workflow id was reused would start.
    let again = tf_testkit::run_input(&tasks.0, tasks.1, "o-1", json!({"id": "e-o-1b", "data": {"order_id": "o-1"}}));
    let extra = format!("{run}-again");
    let handle = client
        .start_workflow(
            tf_temporal::RunActivity,
            again,
            temporalio_client::WorkflowStartOptions::new(r.queue.as_str(), extra.clone()).build(),
        )
        .await
        .unwrap();
    assert_eq!(handle.get_result(Default::default()).await.unwrap().status, tf_definitions::RunStatus::Deduplicated);
    r.save("deduplicated", &extra, None).await;

    // Human tasks: decided by update (complete, reject), by the older signal, and by the timer.
    let run = r.start(&human, "h-complete", json!({"order_id": "h-complete", "kind": "decide"})).await;
    let by = "corpus".to_string();
    r.decide(&format!("{run}/review/0"), tf_temporal::HumanDecision::Complete { output: json!({"approved": true}), by: by.clone() }).await;
    assert_eq!(r.run_status(&run).await, "completed");
    r.save("human-completed", &format!("{run}/review/0"), None).await;

    let run = r.start(&human, "h-reject", json!({"order_id": "h-reject", "kind": "decide"})).await;
    r.decide(&format!("{run}/review/0"), tf_temporal::HumanDecision::Reject { reason: "not today".into(), by }).await;
    assert_eq!(r.run_status(&run).await, "failed");
    r.save("human-rejected", &format!("{run}/review/0"), None).await;
    r.save("human-rejected-run", &run, None).await;

    let run = r.start(&human, "h-signal", json!({"order_id": "h-signal", "kind": "decide"})).await;
    let task = format!("{run}/review/0");
    r.task_status(&task, "awaiting_human").await;
    client
        .get_workflow_handle::<tf_temporal::RunTask>(task.as_str())
        .signal(tf_temporal::CompleteTask, json!({"ok": 1}), Default::default())
        .await
        .unwrap();
    assert_eq!(r.run_status(&run).await, "completed");
    r.save("human-completed-by-signal", &task, None).await;

    let run = r.start(&human, "h-expire", json!({"order_id": "h-expire", "kind": "expire"})).await;
    assert_eq!(r.run_status(&run).await, "failed");
    r.save("human-timed-out", &format!("{run}/expire/0"), None).await;
    let run = r.start(&human, "h-auto", json!({"order_id": "h-auto", "kind": "auto"})).await;
    assert_eq!(r.run_status(&run).await, "completed");
    r.save("human-timed-out-completed", &format!("{run}/auto/0"), None).await;

    // A failing task, then the operator's retry (attempt 2) that succeeds.
    let run = r.start(&calls, "f-1", json!({"order_id": "f-1", "path": "fail-once", "child": false})).await;
    assert_eq!(r.run_status(&run).await, "failed");
    let first = r.latest_execution(&run).await;
    r.save("task-failed", &run, Some(&first)).await;
    let recorded: Json = sqlx::query_scalar("SELECT input FROM activity_runs WHERE run_id = $1").bind(&run).fetch_one(&pool).await.unwrap();
    let retried =
        tf_temporal::run_control::retry_run(&client, &r.queue, &run, tf_definitions::RunStatus::Failed, Some(recorded)).await.unwrap();
    assert_eq!(retried, tf_temporal::run_control::RetryOutcome::Started);
    eventually("attempt 2 to complete", Duration::from_secs(90), || async {
        let row: (String, i32) =
            sqlx::query_as("SELECT status, attempt FROM activity_runs WHERE run_id = $1").bind(&run).fetch_one(&pool).await.unwrap();
        (row == ("completed".to_string(), 2)).then_some(())
    })
    .await;
    r.save("operator-retry", &run, None).await;

    // Planning fails: a header reads a field the event does not have.
    let run = r.start(&calls, "p-1", json!({"order_id": "p-1", "path": "ok", "child": true})).await;
    assert_eq!(r.run_status(&run).await, "failed");
    r.save("plan-failed", &run, None).await;

    // Cancelled while an inline task is in flight; started again, it stays cancelled.
    let run = r.start(&calls, "c-1", json!({"order_id": "c-1", "path": "hang", "child": false})).await;
    eventually("the call to be in flight", Duration::from_secs(60), || async {
        stub.requests().iter().any(|l| l.contains("/hang/c-1")).then_some(())
    })
    .await;
    tf_temporal::run_control::cancel_run(&client, &run, tf_definitions::RunStatus::Running, "corpus").await.unwrap();
    assert_eq!(r.run_status(&run).await, "cancelled");
    let first = r.latest_execution(&run).await;
    r.save("cancelled", &run, Some(&first)).await;
    r.start(&calls, "c-1", json!({"order_id": "c-1", "path": "hang", "child": false})).await;
    eventually("a second execution", Duration::from_secs(60), || async { (r.latest_execution(&run).await != first).then_some(()) }).await;
    r.save("stays-cancelled", &run, None).await;

    // Cancelled while a child task is in flight.
    let run = r.start(&hang_child, "k-1", json!({"order_id": "k-1"})).await;
    eventually("the child's call to be in flight", Duration::from_secs(60), || async {
        stub.requests().iter().any(|l| l.contains("/hang/k-1")).then_some(())
    })
    .await;
    tf_temporal::run_control::cancel_run(&client, &run, tf_definitions::RunStatus::Running, "corpus").await.unwrap();
    assert_eq!(r.run_status(&run).await, "cancelled");
    r.save("child-cancelled", &run, None).await;
    r.save("child-cancelled-task", &format!("{run}/wait/0"), None).await;

    // A `workflow` task: the user's worker runs in this process for the duration.
    let runtime = temporalio_sdk::Runtime::from_current_tokio(temporalio_sdk::runtime::RuntimeOptions::default()).unwrap();
    let options = temporalio_sdk::WorkerOptions::new(user_queue.as_str()).register_workflow::<CorpusEcho>().unwrap().build();
    let mut user_worker = temporalio_sdk::Worker::new(&runtime, client.clone(), options).unwrap();
    let stop = user_worker.shutdown_handle();
    let delegated = async {
        let run = r.start(&delegate, "w-1", json!({"order_id": "w-1"})).await;
        let status = r.run_status(&run).await;
        stop();
        (run, status)
    };
    let (ran, (run, status)) = tokio::join!(user_worker.run(), delegated);
    ran.unwrap();
    assert_eq!(status, "completed");
    r.save("foreign-workflow-task", &run, None).await;

    // A scheduled run: the worker's scheduler creates the schedule, `tf schedules trigger` fires it.
    let cron_id = &format!("corpus-cron-{tag}");
    apply_definition(
        &pool,
        &format!(
            "id: {cron_id}\nname: Corpus cron\ntrigger: {{cron: {{expression: '0 3 * * *', timezone: UTC}}}}\ntasks:\n  - {{name: report, type: kafka, params: {{topic: \"'{sink}'\", value: \"{{'for': run.trigger.scheduled_for_ms}}\"}}}}\n"
        ),
    )
    .await;
    eventually("the schedule", Duration::from_secs(30), || async {
        let tf = std::process::Command::new(workspace_binary("tf"))
            .args(["schedules", "trigger", cron_id])
            .env("TF_DATABASE_URL", &r.db.url)
            .env("TF_TASK_QUEUE", &r.queue)
            .output()
            .unwrap();
        tf.status.success().then_some(())
    })
    .await;
    let run: String = eventually("the scheduled run to end", Duration::from_secs(60), || async {
        let row: Option<(String, String)> = sqlx::query_as("SELECT run_id, status FROM activity_runs WHERE definition_id = $1")
            .bind(cron_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        row.filter(|(_, s)| s != "running").map(|(id, _)| id)
    })
    .await;
    r.save("cron-run", &run, None).await;
    // The schedule outlives the test otherwise.
    let _ = client.get_schedule_handle(tf_temporal::schedules::schedule_id(cron_id)).delete(Default::default()).await;

    // Flow control: a run that waits for the key's one slot, and one a rate limit skips, then a
    // task that waits for a shared budget of one. The holder's call is held, so the other waits.
    let held = tf_testkit::http_stub::HoldingStub::start(Duration::from_millis(1500)).await;
    let flow = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-flow-{tag}
name: Corpus flow
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
flow_control:
  concurrency: {{limit: 1, key: event.data.customer}}
  rate_limit: {{limit: 2, period: 30d, key: event.data.customer}}
tasks:
  - {{name: call, type: http, params: {{url: "'{hold}/g/' + event.data.order_id"}}}}
"#,
            hold = held.base
        ),
    )
    .await;
    let holder = r.start(&flow, "q-1", json!({"order_id": "q-1", "customer": "flow"})).await;
    eventually("the holder's call", Duration::from_secs(60), || async { (held.peak("q-1") > 0).then_some(()) }).await;
    let waiter = r.start(&flow, "q-2", json!({"order_id": "q-2", "customer": "flow"})).await;
    let skipped = r.start(&flow, "q-3", json!({"order_id": "q-3", "customer": "flow"})).await;
    assert_eq!(r.run_status(&holder).await, "completed");
    assert_eq!(r.run_status(&waiter).await, "completed");
    assert_eq!(r.run_status(&skipped).await, "skipped");
    r.save("flow-waited", &waiter, None).await;
    r.save("flow-skipped", &skipped, None).await;
    let budget = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-budget-{tag}
name: Corpus budget
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: call, type: http, budget: corpus, params: {{url: "'{hold}/g/' + event.data.order_id"}}}}
"#,
            hold = held.base
        ),
    )
    .await;
    let first = r.start(&budget, "b-1", json!({"order_id": "b-1"})).await;
    eventually("the first budgeted call", Duration::from_secs(60), || async { (held.peak("b-1") > 0).then_some(()) }).await;
    let second = r.start(&budget, "b-2", json!({"order_id": "b-2"})).await;
    assert_eq!(r.run_status(&first).await, "completed");
    assert_eq!(r.run_status(&second).await, "completed");
    r.save("flow-budget-waited", &second, None).await;
    let quiet = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-debounce-{tag}
name: Corpus debounce
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
flow_control: {{debounce: {{period: 500ms}}}}
tasks:
  - {{name: note, type: kafka, params: {{topic: "'{sink}'", value: "'debounced'"}}}}
"#
        ),
    )
    .await;
    let run = r.start(&quiet, "d-1", json!({"order_id": "d-1"})).await;
    assert_eq!(r.run_status(&run).await, "completed");
    r.save("flow-debounced", &run, None).await;

    // Runs that unfold (docs/steps.md). The router's part of a delivery (claim, then signal) is
    // done here as the router does it: the worker's history is what the corpus keeps.
    let steps = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-steps-{tag}
name: Corpus steps
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: one, type: http, retry: {{max_attempts: 1}}, params: {{url: "'{base}/' + event.data.path"}}}}
  - {{name: nap, type: sleep, after: [one], params: {{for: "'300ms'"}}}}
  - {{name: two, type: kafka, after: [nap], params: {{topic: "'{sink}'", value: "{{'one': tasks.one.output.status}}"}}}}
  - {{name: review, type: human, after: [two], params: {{title: "'Review'"}}}}
  - {{name: always, type: kafka, after: [one], always: true, params: {{topic: "'{sink}'", value: "tasks.one.status"}}}}
"#
        ),
    )
    .await;
    let chain = r.start(&steps, "s-1", json!({"order_id": "s-1", "path": "ok"})).await;
    r.decide(&format!("{chain}/review/0"), tf_temporal::HumanDecision::Complete { output: json!({"ok": true}), by: "corpus".into() }).await;
    assert_eq!(r.run_status(&chain).await, "completed");
    r.save("steps-chain", &chain, None).await;
    let skipped = r.start(&steps, "s-2", json!({"order_id": "s-2", "path": "fail-once/x"})).await;
    assert_eq!(r.run_status(&skipped).await, "failed");
    r.save("steps-skipped", &skipped, None).await;
    let waits = apply_definition(
        &pool,
        &format!(
            r#"
id: corpus-waits-{tag}
name: Corpus waits
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - name: pay
    type: wait_for_event
    event: {{type: paid, match: {{incoming: event.data.order_id, run: event.data.order_id}}}}
    timeout: "{{timeout}}"
  - {{name: settle, type: kafka, after: [pay], params: {{topic: "'{sink}'", value: "{{'paid': tasks.pay.output != null}}"}}}}
"#
        )
        .replace("{timeout}", "3s"),
    )
    .await;
    let waited = r.start(&waits, "w-1", json!({"order_id": "w-1"})).await;
    r.task_status(&format!("{waited}/pay/0"), "waiting").await;
    let event = json!({"id": "p-1", "type": "paid", "data": {"order_id": "w-1"}});
    let source = tf_store::waits::Source { topic: "events.demo".into(), partition: 0, offset: 1 };
    let incoming = tf_store::waits::IncomingEvent { event_type: "paid", event: &event, source: &source, record_ms: i64::MAX / 2 };
    let matcher = tf_definitions::steps::matcher_of("event.data.order_id");
    let told = tf_store::waits::deliver(&pool, &incoming, &[(matcher, "w-1".into())]).await.unwrap();
    assert_eq!(told.len(), 1);
    assert!(tf_temporal::deliver_event(&client, &waited, json!({"wait_id": told[0].wait_id})).await.unwrap());
    assert_eq!(r.run_status(&waited).await, "completed");
    r.save("steps-waited", &waited, None).await;
    let timed_out = r.start(&waits, "w-2", json!({"order_id": "w-2"})).await;
    assert_eq!(r.run_status(&timed_out).await, "completed");
    r.save("steps-wait-timed-out", &timed_out, None).await;
    let cancelled = r.start(&waits, "w-3", json!({"order_id": "w-3"})).await;
    r.task_status(&format!("{cancelled}/pay/0"), "waiting").await;
    tf_temporal::run_control::cancel_run(&client, &cancelled, tf_definitions::RunStatus::Running, "cancel_on: corpus").await.unwrap();
    assert_eq!(r.run_status(&cancelled).await, "cancelled");
    r.save("steps-cancelled-waiting", &cancelled, None).await;

    let missing: Vec<&str> = SHAPES.iter().map(|(s, _)| *s).filter(|s| !r.written.iter().any(|w| w == s)).collect();
    assert!(missing.is_empty(), "shapes not recorded: {missing:?}");
    tf_testkit::delete_topics(&s, &[&sink]).await;
}
