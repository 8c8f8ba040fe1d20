//! The rolling upgrade, proven on the real stack: runs start on build N (one of them a human task
//! left waiting), build N+1 (`tf-worker-drill`: the same worker plus one workflow change behind a
//! patch) joins with the patch dormant, the fleet is mixed while more runs come and go, build N
//! leaves, the patch is activated, the waiting task is decided, and every run ends as it should
//! with one result per task. The steps are those of docs/upgrades.md.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use serde_json::{Value as Json, json};
use tf_testkit::{
    FreshDatabase, Service, apply_definition, create_topic, eventually, results_for, run_ended, settings, unique, workspace_binary,
};

const DRILL_PATCH: &str = "upgrade-drill";

/// How many timers a run's history holds: build N's RunActivity starts none, the drill's patched
/// branch one (before the run resolves its context).
async fn timers(client: &temporalio_client::Client, run_id: &str) -> usize {
    let history = client.get_workflow_handle::<tf_temporal::RunActivity>(run_id).fetch_history(Default::default()).to_json().await.unwrap();
    let history: Json = serde_json::from_slice(&history).unwrap();
    history["events"].as_array().unwrap().iter().filter(|e| e.pointer("/attributes/TimerStartedEventAttributes").is_some()).count()
}

#[tokio::test]
async fn a_rolling_upgrade_with_a_workflow_change_finishes_every_run_including_a_waiting_human_task() {
    let drill = workspace_binary("tf-worker-drill");
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("up-queue");
    let sink = unique("up-sink");
    create_topic(&s, &sink, 1).await;
    let relay = unique("up-relay");
    let yaml = format!(
        r#"
id: {}
name: Upgrade drill
trigger: {{event: {{topics: [events.demo]}}}}
dedupe: {{key: event.data.order_id}}
tasks:
  - {{name: ship, type: kafka, params: {{topic: "'{sink}'", value: "{{'order': event.data.order_id}}"}}}}
  - {{name: review, type: human, when: event.data.review, params: {{title: "'Review ' + event.data.order_id"}}}}
"#,
        unique("up-def").to_lowercase()
    );
    let def = apply_definition(&pool, &yaml).await;
    let env = |dormant: &'static str| {
        vec![
            ("TF_DATABASE_URL", db.url.clone()),
            ("TF_TASK_QUEUE", queue.clone()),
            ("TF_RELAY_TRANSACTIONAL_ID", relay.clone()),
            ("TF_NO_SCHEDULER", "true".into()),
            ("TF_SHUTDOWN_TIMEOUT", "20".into()),
            ("TF_WORKER_DORMANT_PATCHES", dormant.into()),
        ]
    };
    let spawn = |binary: &str, name: &str, dormant: &'static str| {
        let vars = env(dormant);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Service::spawn(binary, &unique(name), &vars)
    };
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    let start = |key: String, review: bool| {
        let client = client.clone();
        let queue = queue.clone();
        let def = def.clone();
        async move {
            let event = json!({"id": format!("e-{key}"), "type": "order.created", "data": {"order_id": key, "review": review}});
            tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def.0, def.1, &key, event)).await.unwrap();
            tf_temporal::DedupeKey::parse(&key).unwrap().run_id(&def.0, 1).to_string()
        }
    };

    // Build N: a run that waits for a person, and one that finishes.
    let mut old = spawn(env!("CARGO_BIN_EXE_tf-worker"), "tf-worker-n", "");
    let waiting = start("waits".into(), true).await;
    let review = format!("{waiting}/review/0");
    eventually(&format!("the review to await a person; log:\n{}", old.log()), Duration::from_secs(60), || async {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1").bind(&review).fetch_optional(&pool).await.unwrap();
        (s.as_deref() == Some("awaiting_human")).then_some(())
    })
    .await;
    let before = start("before".into(), false).await;
    assert_eq!(run_ended(&pool, &before, &old.log()).await, "completed");

    // Build N+1 joins with its patch dormant: a mixed fleet, both polling the queue.
    let mut next = spawn(&drill, "tf-worker-n1-dormant", DRILL_PATCH);
    let mut mixed = Vec::new();
    for i in 0..6 {
        mixed.push(start(format!("mixed-{i}"), false).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for run in &mixed {
        assert_eq!(run_ended(&pool, run, &format!("{}\n{}", old.log(), next.log())).await, "completed");
        assert_eq!(timers(&client, run).await, 0, "{run}: a dormant patch takes the old branch on either build");
    }

    // Build N leaves (SIGTERM, as a rollout does); N+1 restarts with the patch active.
    assert!(old.terminate(), "build N stops cleanly; log:\n{}", old.log());
    assert!(next.terminate(), "log:\n{}", next.log());
    let active = spawn(&drill, "tf-worker-n1", "");

    // The run that waited across the upgrade is decided now: build N+1 replays what build N
    // recorded (the patch point is behind it, so the old branch, as recorded) and finishes it.
    client
        .get_workflow_handle::<tf_temporal::RunTask>(review.as_str())
        .execute_update(
            tf_temporal::DecideTask,
            tf_temporal::HumanDecision::Complete { output: json!({"approved": true}), by: "upgrade-test".into() },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(run_ended(&pool, &waiting, &active.log()).await, "completed", "the run that waited across the upgrade");
    assert_eq!(timers(&client, &waiting).await, 0, "a run that passed the patch point on build N keeps the old branch");
    let after = start("after".into(), false).await;
    assert_eq!(run_ended(&pool, &after, &active.log()).await, "completed");
    assert_eq!(timers(&client, &after).await, 1, "a run started after the activation takes the new branch");

    // One result per task, none lost or doubled by the change of hands.
    let all: Vec<(String, usize)> =
        [(waiting.clone(), 2), (before, 1), (after, 1)].into_iter().chain(mixed.into_iter().map(|r| (r, 1))).collect();
    for (run, tasks) in &all {
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM tasks WHERE run_id = $1").bind(run).fetch_all(&pool).await.unwrap();
        assert_eq!(statuses.len(), *tasks, "{run}: {statuses:?}");
        assert!(statuses.iter().all(|s| s == "succeeded"), "{run}: {statuses:?}");
        let results = eventually(&format!("{run}'s results"), Duration::from_secs(60), || async {
            let r = results_for(run).await;
            (r.len() >= *tasks).then_some(r)
        })
        .await;
        assert_eq!(results.len(), *tasks, "{run}: {results:#?}");
    }
    tf_testkit::delete_topics(&s, &[&sink]).await;
}
