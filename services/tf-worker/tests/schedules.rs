//! Cron definitions through Temporal Schedules, on the real Temporal server: the worker's
//! scheduler creates, updates, pauses and deletes schedules; trigger and backfill start the
//! expected runs; a repeated backfill spawns no second set of tasks.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::{Duration, SystemTime};

use temporalio_client::RpcOptions;
use temporalio_client::schedules::{ScheduleDescriptionAction, ScheduleError};
use tf_temporal::RunInput;
use tf_temporal::schedules::{DISABLED_NOTE, schedule_id};
use tf_testkit::{FreshDatabase, Service, apply_definition, create_topic, eventually, settings, unique, workspace_binary};

struct Env {
    db: FreshDatabase,
    pool: tf_store::PgPool,
    queue: String,
    client: temporalio_client::Client,
    _worker: Service,
}

async fn env() -> Env {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-queue");
    let worker = Service::spawn(
        env!("CARGO_BIN_EXE_tf-worker"),
        &unique("tf-worker"),
        &[("TF_DATABASE_URL", &db.url), ("TF_TASK_QUEUE", &queue), ("TF_NO_RELAY", "true"), ("TF_SCHEDULER_REFRESH_MS", "300")],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    Env { db, pool, queue, client, _worker: worker }
}

impl Env {
    fn tf(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new(workspace_binary("tf"))
            .args(args)
            .env("TF_DATABASE_URL", &self.db.url)
            .env("TF_TASK_QUEUE", &self.queue)
            .output()
            .unwrap();
        assert!(out.status.success(), "tf {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// The schedule's pinned definition version and whether it is paused (with its note).
    async fn schedule(&self, definition: &str) -> Option<(i32, bool, String)> {
        match self.client.get_schedule_handle(schedule_id(definition)).describe(RpcOptions::default()).await {
            Ok(d) => {
                let version = match d.action() {
                    ScheduleDescriptionAction::StartWorkflow(a) => a.args::<RunInput>().await.unwrap().unwrap().definition_version,
                    #[allow(unreachable_patterns)]
                    _ => panic!("unexpected action"),
                };
                Some((version, d.paused(), d.note().unwrap_or_default().to_string()))
            }
            Err(ScheduleError::Rpc(s)) if s.code() == temporalio_client::tonic::Code::NotFound => None,
            Err(e) => panic!("{e}"),
        }
    }

    async fn cron_runs(&self) -> Vec<(String, i64, String)> {
        sqlx::query_as(
            "SELECT run_id, (extract(epoch from scheduled_for) * 1000)::bigint, dedupe_key FROM activity_runs
             WHERE trigger_kind = 'cron' AND status <> 'deduplicated' ORDER BY scheduled_for",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_cron_definition_is_scheduled_updated_paused_and_removed() {
    let e = env().await;
    let id = unique("it-cron").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: Every 10 s\ntrigger: {{cron: {{expression: '*/10 * * * * *'}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n"
    );
    apply_definition(&e.pool, &yaml).await;
    eventually("the schedule", Duration::from_secs(30), || async { e.schedule(&id).await.filter(|s| s.0 == 1) }).await;

    // Runs arrive on the spec: scheduled_for is a multiple of 10 s and is the dedupe key.
    let runs = eventually("a scheduled run", Duration::from_secs(40), || async {
        let r = e.cron_runs().await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let (run_id, scheduled_ms, key) = &runs[0];
    assert_eq!(scheduled_ms % 10_000, 0, "scheduled_for {scheduled_ms} is on the */10 s spec");
    assert_eq!(key, &tf_envelope::Timestamp(*scheduled_ms).to_string());
    assert!(run_id.starts_with(&format!("run/{id}-")), "{run_id}");

    // A new version updates the schedule's action.
    apply_definition(&e.pool, &yaml.replace("*/10 * * * * *", "*/15 * * * * *")).await;
    eventually("the schedule at v2", Duration::from_secs(30), || async { e.schedule(&id).await.filter(|s| s.0 == 2) }).await;

    // Disabling pauses it, with the reconciler's note; enabling resumes it.
    apply_definition(&e.pool, &format!("{}enabled: false\n", yaml.replace("*/10 * * * * *", "*/15 * * * * *"))).await;
    let paused = eventually("the schedule paused", Duration::from_secs(30), || async { e.schedule(&id).await.filter(|s| s.1) }).await;
    assert_eq!(paused.2, DISABLED_NOTE);
    apply_definition(&e.pool, &yaml.replace("*/10 * * * * *", "*/15 * * * * *")).await;
    eventually("the schedule resumed", Duration::from_secs(30), || async { e.schedule(&id).await.filter(|s| !s.1) }).await;

    // An operator's pause is left alone by the reconciler.
    e.tf(&["schedules", "pause", &id, "--note", "maintenance window"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = e.schedule(&id).await.unwrap();
    assert!(s.1 && s.2 == "maintenance window", "{s:?}");

    // Deleting the definition removes the schedule.
    e.tf(&["definitions", "delete", &id]);
    eventually("the schedule deleted", Duration::from_secs(30), || async { e.schedule(&id).await.is_none().then_some(()) }).await;
}

#[tokio::test]
async fn trigger_starts_one_run_and_a_repeated_backfill_spawns_no_second_set_of_tasks() {
    let e = env().await;
    let sink = unique("it-cron-sink");
    create_topic(&settings(), &sink, 1).await;
    let id = unique("it-daily").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: Daily\ntrigger: {{cron: {{expression: '0 3 * * *', timezone: UTC}}}}\ntasks:\n  - {{name: report, type: kafka, params: {{topic: \"'{sink}'\", value: \"{{'for': run.trigger.scheduled_for_ms}}\"}}}}\n"
    );
    apply_definition(&e.pool, &yaml).await;
    eventually("the schedule", Duration::from_secs(30), || async { e.schedule(&id).await }).await;

    e.tf(&["schedules", "trigger", &id]);
    eventually("the triggered run", Duration::from_secs(40), || async { (e.cron_runs().await.len() == 1).then_some(()) }).await;
    // Scheduled runs carry the same search attributes as event runs.
    let query = format!("ActivityId = '{id}' AND TriggerKind = 'cron'");
    let found = eventually("the run in a visibility query by ActivityId", Duration::from_secs(30), || async {
        let n = e.client.count_workflows(query.clone(), Default::default()).await.unwrap().count();
        (n >= 1).then_some(n)
    })
    .await;
    assert_eq!(found, 1);

    let backfill = ["schedules", "backfill", id.as_str(), "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-04T00:00:00Z"];
    let out = e.tf(&backfill);
    // Progress goes to stderr, the answer to stdout.
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch 3/3"), "a progress line per batch");
    assert!(String::from_utf8_lossy(&out.stdout).contains("run(s) started"), "the answer");
    let runs = eventually("3 backfilled runs", Duration::from_secs(60), || async {
        let r = e.cron_runs().await;
        (r.len() == 4).then_some(r)
    })
    .await;
    let nominal: Vec<String> = runs.iter().take(3).map(|r| r.2.clone()).collect();
    assert_eq!(nominal, ["2026-01-01T03:00:00.000Z", "2026-01-02T03:00:00.000Z", "2026-01-03T03:00:00.000Z"]);

    // The same backfill again. Temporal 1.32 refuses the repeated workflow ids itself (the runs
    // are retained); where it does start another execution for a slot (after retention, or
    // other id policies), the run finds its claim taken — exercised explicitly below.
    e.tf(&backfill);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let schedule = schedule_id(&id);
    let executions = e.client.count_workflows(format!("TemporalScheduledById = '{schedule}'"), Default::default()).await.unwrap().count();
    println!("executions started by {schedule} after the repeated backfill: {executions}");
    assert!(executions >= 4);
    assert_eq!(e.cron_runs().await.len(), 4, "no run beyond the first of each scheduled time");

    // A second execution for an already-run slot (another workflow id, same scheduled time).
    let slot_ms = tf_definitions::cron::parse_time("2026-01-01T03:00:00Z").unwrap().timestamp_millis();
    let version: i32 = sqlx::query_scalar("SELECT max(version) FROM activity_definitions").fetch_one(&e.pool).await.unwrap();
    let again = RunInput {
        definition_id: id.clone(),
        definition_version: version,
        dedupe_key: tf_envelope::Timestamp(slot_ms).to_string(),
        dedupe_window_secs: 86_400,
        generation: 0,
        event_time_ms: None,
        trigger: tf_temporal::RunSource { scheduled_for_ms: Some(slot_ms), ..tf_temporal::RunSource::cron(schedule.clone()) },
        event: None,
        traceparent: None,
        operator_retry: false,
    };
    let extra_id = format!("{}-{}", tf_temporal::DedupeKey::parse("again").unwrap().run_id(&id, 1), unique("x"));
    let handle = e
        .client
        .start_workflow(tf_temporal::RunActivity, again, temporalio_client::WorkflowStartOptions::new(e.queue.as_str(), extra_id).build())
        .await
        .unwrap();
    let summary = handle.get_result(Default::default()).await.unwrap();
    assert_eq!(summary.status, tf_definitions::RunStatus::Deduplicated);
    assert_eq!(summary.tasks_spawned, 0);

    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&e.pool).await.unwrap();
    assert_eq!(tasks, 4, "one task per scheduled time, none twice");
    tf_testkit::delete_topics(&settings(), &[&sink]).await;
    e.tf(&["definitions", "delete", &id]);
}

#[tokio::test]
async fn a_daily_0230_schedule_across_the_dst_changes_in_new_york() {
    let e = env().await;
    let id = unique("it-dst").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: DST\ntrigger: {{cron: {{expression: '30 2 * * *', timezone: America/New_York}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n"
    );
    apply_definition(&e.pool, &yaml).await;
    eventually("the schedule", Duration::from_secs(30), || async { e.schedule(&id).await }).await;
    let matching = |from: &str, to: &str| {
        let (client, id) = (e.client.clone(), schedule_id(&id));
        let (from, to) = (tf_definitions::cron::parse_time(from).unwrap(), tf_definitions::cron::parse_time(to).unwrap());
        async move {
            use temporalio_client::grpc::WorkflowService;
            use temporalio_client::tonic::IntoRequest;
            use temporalio_common::protos::temporal::api::workflowservice::v1::ListScheduleMatchingTimesRequest;
            let req = ListScheduleMatchingTimesRequest {
                namespace: settings().temporal_namespace,
                schedule_id: id,
                start_time: Some(SystemTime::from(from).into()),
                end_time: Some(SystemTime::from(to).into()),
            };
            let resp = WorkflowService::list_schedule_matching_times(&mut client.clone(), req.into_request()).await.unwrap().into_inner();
            resp.start_time
                .iter()
                .map(|t| {
                    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
                        .unwrap()
                        .with_timezone(&chrono_tz::America::New_York)
                        .to_rfc3339()
                })
                .collect::<Vec<_>>()
        }
    };
    let spring = matching("2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z").await;
    let fall = matching("2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z").await;
    println!("DST spring: {spring:?}\nDST fall: {fall:?}");
    // Spring forward (2026-03-08, 02:00 -> 03:00): 02:30 does not exist that day and Temporal
    // skips the day (no run at 03:30 instead), as croner's preview does.
    assert_eq!(spring, ["2026-03-07T02:30:00-05:00", "2026-03-09T02:30:00-04:00"]);
    // Fall back (2026-11-01, 02:00 -> 01:00): 02:30 happens once.
    assert_eq!(fall, ["2026-10-31T02:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]);
    e.tf(&["definitions", "delete", &id]);
}

#[tokio::test]
async fn a_definition_the_scheduler_cannot_read_keeps_its_schedule() {
    let e = env().await;
    let id = unique("it-future").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: Future\ntrigger: {{cron: {{expression: '0 3 * * *'}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n"
    );
    apply_definition(&e.pool, &yaml).await;
    eventually("the schedule", Duration::from_secs(30), || async { e.schedule(&id).await }).await;
    // Version 2 as a newer release might write it: a field this version does not know.
    let spec = serde_json::json!({"id": id, "name": "Future", "trigger": {"cron": {"expression": "0 3 * * *"}}, "from_the_future": true, "tasks": []});
    sqlx::query("INSERT INTO activity_definitions (id, version, name, enabled, trigger_kind, spec, spec_sha256) VALUES ($1, 2, 'Future', true, 'cron', $2, 'future')")
        .bind(&id)
        .bind(&spec)
        .execute(&e.pool)
        .await
        .unwrap();
    // Several reconcile rounds (every 300 ms here) later, the schedule is still there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(e.schedule(&id).await.map(|s| s.0), Some(1), "the schedule of an unreadable definition is left alone");
    assert!(e._worker.log().contains("does not parse; its schedule is left alone"), "{}", e._worker.log());
    // A readable version 3 takes over again; then remove it.
    apply_definition(&e.pool, &yaml.replace("0 3 * * *", "0 4 * * *")).await;
    eventually("the schedule at v3", Duration::from_secs(30), || async { e.schedule(&id).await.filter(|s| s.0 == 3) }).await;
    e.tf(&["definitions", "delete", &id]);
}
