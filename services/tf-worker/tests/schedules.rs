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

/// Temporal's own answer to "when does this schedule fire between `from` and `to`", in New
/// York time when `tz` says so (RFC 3339).
async fn matching_in(client: &temporalio_client::Client, schedule: String, from: &str, to: &str, tz: chrono_tz::Tz) -> Vec<String> {
    use temporalio_client::grpc::WorkflowService;
    use temporalio_client::tonic::IntoRequest;
    use temporalio_common::protos::temporal::api::workflowservice::v1::ListScheduleMatchingTimesRequest;
    let (from, to) = (tf_definitions::cron::parse_time(from).unwrap(), tf_definitions::cron::parse_time(to).unwrap());
    let req = ListScheduleMatchingTimesRequest {
        namespace: settings().temporal_namespace,
        schedule_id: schedule,
        start_time: Some(SystemTime::from(from).into()),
        end_time: Some(SystemTime::from(to).into()),
    };
    let resp = WorkflowService::list_schedule_matching_times(&mut client.clone(), req.into_request()).await.unwrap().into_inner();
    resp.start_time
        .iter()
        .map(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap().with_timezone(&tz).to_rfc3339())
        .collect()
}

async fn matching_times(client: &temporalio_client::Client, schedule: String, from: &str, to: &str) -> Vec<String> {
    matching_in(client, schedule, from, to, chrono_tz::America::New_York).await
}

/// The definition's own preview (what `tf definitions validate`, the API and the console show)
/// from `from` until `to`, in `tz`.
fn preview(yaml: &str, from: &str, to: &str, tz: chrono_tz::Tz) -> Vec<String> {
    let d = tf_definitions::Definition::from_yaml("test", yaml).unwrap().remove(0);
    let tf_definitions::Trigger::Cron(c) = &d.trigger else { panic!("a time trigger") };
    let (from, to) = (tf_definitions::cron::parse_time(from).unwrap(), tf_definitions::cron::parse_time(to).unwrap());
    c.spec
        .next_fire_times(from - chrono::Duration::milliseconds(1), 1000)
        .into_iter()
        .filter(|t| t.with_timezone(&chrono::Utc) < to)
        .map(|t| t.with_timezone(&tz).to_rfc3339())
        .collect()
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
    let matching = |from: &'static str, to: &'static str| matching_times(&e.client, schedule_id(&id), from, to);
    let spring = matching("2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z").await;
    let fall = matching("2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z").await;
    println!("DST spring: {spring:?}\nDST fall: {fall:?}");
    // Spring forward (2026-03-08, 02:00 -> 03:00): 02:30 does not exist that day and Temporal
    // skips the day (no run at 03:30 instead), as croner's preview does.
    assert_eq!(spring, ["2026-03-07T02:30:00-05:00", "2026-03-09T02:30:00-04:00"]);
    // Fall back (2026-11-01, 02:00 -> 01:00): 02:30 happens once.
    assert_eq!(fall, ["2026-10-31T02:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]);
    // The definition's own preview says the same.
    let ny = chrono_tz::America::New_York;
    assert_eq!(preview(&yaml, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z", ny), spring);
    assert_eq!(preview(&yaml, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z", ny), fall);

    // 01:30 on the fall-back day happens twice (EDT, then EST an hour later).
    let early = unique("it-dst-early").to_lowercase();
    let early_yaml = yaml.replace(&id, &early).replace("30 2 * * *", "30 1 * * *");
    apply_definition(&e.pool, &early_yaml).await;
    eventually("the 01:30 schedule", Duration::from_secs(30), || async { e.schedule(&early).await }).await;
    let repeated = matching_times(&e.client, schedule_id(&early), "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z").await;
    let previewed = preview(&early_yaml, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z", ny);
    println!("DST fall 01:30: Temporal {repeated:?}, preview {previewed:?}");
    assert_eq!(repeated, ["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00", "2026-11-02T01:30:00-05:00"]);
    assert_eq!(previewed, repeated, "the preview shows what Temporal will do");
    e.tf(&["definitions", "delete", &early]);
    e.tf(&["definitions", "delete", &id]);
}

/// Every field of a time trigger, read back from the schedule Temporal holds: the cron string
/// and the interval (and the fire times they give, against the definition's preview), time
/// zone, jitter, start and end, the overlap policy and catch-up window `misfire` chose, the
/// action (workflow type, task queue, pinned version) and the state. Then resume is tested,
/// and two reconcilers race on the same definitions: one schedule, no error, no flapping.
#[tokio::test]
async fn a_schedule_in_temporal_holds_every_field_of_its_definition() {
    use temporalio_common::protos::temporal::api::enums::v1::ScheduleOverlapPolicy;
    let e = env().await;
    let id = unique("it-fields").to_lowercase();
    let yaml = format!(
        "id: {id}\nname: Fields\ntrigger: {{cron: {{expression: '0 9 * * 1-5', every: 6h, offset: 30m, timezone: Europe/Berlin, jitter: 20s, misfire: all, start: '2026-01-01T00:00:00Z', end: '2030-01-01T00:00:00Z'}}}}\ntasks: [{{name: t, type: human, when: 'false'}}]\n"
    );
    apply_definition(&e.pool, &yaml).await;
    eventually("the schedule", Duration::from_secs(30), || async { e.schedule(&id).await }).await;
    let d = e.client.get_schedule_handle(schedule_id(&id)).describe(RpcOptions::default()).await.unwrap();
    let schedule = d.raw().schedule.as_ref().unwrap();
    let spec = schedule.spec.as_ref().unwrap();
    assert_eq!(spec.timezone_name, "Europe/Berlin");
    assert_eq!(spec.jitter.as_ref().map(|j| j.seconds), Some(20));
    assert_eq!(spec.start_time.as_ref().map(|t| t.seconds), Some(1_767_225_600));
    assert_eq!(spec.end_time.as_ref().map(|t| t.seconds), Some(1_893_456_000));
    let interval: Vec<(i64, i64)> =
        spec.interval.iter().map(|i| (i.interval.as_ref().unwrap().seconds, i.phase.as_ref().map_or(0, |p| p.seconds))).collect();
    assert_eq!(interval, [(21_600, 1_800)]);
    // Temporal keeps the cron string as it was given, or as the calendar it parsed it into.
    assert!(spec.cron_string == ["0 9 * * 1-5"] || !spec.structured_calendar.is_empty(), "{spec:?}");
    let policies = schedule.policies.as_ref().unwrap();
    assert_eq!(policies.overlap_policy, ScheduleOverlapPolicy::BufferAll as i32, "misfire: all buffers every missed fire");
    assert_eq!(policies.catchup_window.as_ref().map(|w| w.seconds), Some(365 * 86_400), "misfire: all catches up a year");
    let state = schedule.state.as_ref().unwrap();
    assert!(!state.paused && state.notes.is_empty(), "{state:?}");
    match d.action() {
        ScheduleDescriptionAction::StartWorkflow(a) => {
            assert_eq!((a.workflow_type(), a.task_queue()), (tf_temporal::RUN_ACTIVITY, e.queue.as_str()));
            assert_eq!(a.args::<RunInput>().await.unwrap().unwrap().definition_version, 1);
        }
        #[allow(unreachable_patterns)]
        _ => panic!("unexpected action"),
    }
    // The fire times Temporal computes are the preview's, cron and interval merged.
    let berlin = chrono_tz::Europe::Berlin;
    let (from, to) = ("2026-12-14T00:00:00Z", "2026-12-16T00:00:00Z");
    // Temporal's matching times carry the jitter (up to 20 s after each nominal time).
    let temporal = matching_in(&e.client, schedule_id(&id), from, to, berlin).await;
    let nominal = preview(&yaml, from, to, berlin);
    assert_eq!(temporal.len(), 10, "8 from every 6h at 00:30, 06:30, ... (UTC), 2 from 09:00 Mon-Fri: {temporal:?}");
    assert_eq!(nominal.len(), temporal.len(), "{nominal:?}");
    for (t, n) in temporal.iter().zip(&nominal) {
        let late = chrono::DateTime::parse_from_rfc3339(t).unwrap() - chrono::DateTime::parse_from_rfc3339(n).unwrap();
        assert!((0..=20_000).contains(&late.num_milliseconds()), "{t} is {late} after its nominal {n}");
    }

    // misfire: skip keeps Temporal's smallest catch-up window and the overlap as written.
    apply_definition(&e.pool, &yaml.replace("misfire: all", "misfire: skip, overlap: allow_all")).await;
    let policies = eventually("the schedule at v2", Duration::from_secs(30), || async {
        let d = e.client.get_schedule_handle(schedule_id(&id)).describe(RpcOptions::default()).await.unwrap();
        let s = d.raw().schedule.clone().unwrap();
        (s.policies.as_ref().unwrap().overlap_policy == ScheduleOverlapPolicy::AllowAll as i32).then(|| s.policies.unwrap())
    })
    .await;
    assert_eq!(policies.catchup_window.map(|w| w.seconds), Some(10));

    // An operator's pause, then `tf schedules resume`.
    e.tf(&["schedules", "pause", &id, "--note", "night freeze"]);
    eventually("paused", Duration::from_secs(10), || async { e.schedule(&id).await.filter(|s| s.1 && s.2 == "night freeze") }).await;
    e.tf(&["schedules", "resume", &id]);
    eventually("resumed", Duration::from_secs(10), || async { e.schedule(&id).await.filter(|s| !s.1) }).await;

    // Two reconcilers at once, three rounds, on the same definitions as the worker's: one
    // schedule, no error, and after the first round nothing changes (no flapping).
    let rows = tf_store::definitions::latest(&e.pool).await.unwrap();
    let (wanted, broken) =
        tf_temporal::schedules::desired_from_specs(rows.into_iter().filter(|r| !r.retired).map(|r| (r.spec, r.version, r.enabled)));
    assert!(broken.is_empty());
    for round in 0..3 {
        let (a, b) = tokio::join!(
            tf_temporal::schedules::reconcile(&e.client, &e.queue, &wanted, &[]),
            tf_temporal::schedules::reconcile(&e.client, &e.queue, &wanted, &[])
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        for (schedule, changes) in a.iter().chain(&b) {
            assert_eq!(changes, &[tf_temporal::schedules::Change::Unchanged], "round {round}: {schedule} changed: {changes:?}");
        }
    }
    let mut listed = e.client.list_schedules(Default::default());
    let mut ours = 0;
    while let Some(s) = futures::StreamExt::next(&mut listed).await {
        ours += usize::from(s.unwrap().schedule_id() == schedule_id(&id));
    }
    assert!(ours <= 1, "one schedule for the definition (listing may lag): {ours}");
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
