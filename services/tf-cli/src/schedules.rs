//! `tf schedules list|describe|pause|resume|trigger|backfill|reconcile`: the Temporal Schedules of cron
//! definitions, addressed by schedule id or definition id.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use temporalio_client::RpcOptions;
use temporalio_client::schedules::{ListSchedulesOptions, ScheduleBackfill, ScheduleOverlapPolicy};
use tf_config::Settings;
use tf_temporal::schedules::{SCHEDULE_PREFIX, schedule_id};

/// Accepts a schedule id or the id of its definition.
fn id_of(arg: &str) -> String {
    if arg.starts_with(SCHEDULE_PREFIX) { arg.to_string() } else { schedule_id(arg) }
}

fn fmt(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The overlap policies `--overlap` takes, as definitions spell them.
pub const OVERLAP_POLICIES: [&str; 6] = ["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"];

/// `--overlap`: one of [`OVERLAP_POLICIES`], listed in `--help`.
pub fn overlap_parser() -> impl clap::builder::TypedValueParser<Value = ScheduleOverlapPolicy> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(OVERLAP_POLICIES).try_map(|s| parse_overlap(&s))
}

pub fn parse_overlap(s: &str) -> Result<ScheduleOverlapPolicy, String> {
    Ok(match s {
        "skip" => ScheduleOverlapPolicy::Skip,
        "buffer_one" => ScheduleOverlapPolicy::BufferOne,
        "buffer_all" => ScheduleOverlapPolicy::BufferAll,
        "cancel_other" => ScheduleOverlapPolicy::CancelOther,
        "terminate_other" => ScheduleOverlapPolicy::TerminateOther,
        "allow_all" => ScheduleOverlapPolicy::AllowAll,
        other => return Err(format!("{other:?} is not one of skip, buffer_one, buffer_all, cancel_other, terminate_other, allow_all")),
    })
}

async fn client(settings: &Settings) -> anyhow::Result<temporalio_client::Client> {
    Ok(tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?)
}

pub async fn list(settings: &Settings, format: crate::Format) -> anyhow::Result<ExitCode> {
    let client = client(settings).await?;
    let mut stream = client.list_schedules(ListSchedulesOptions::default());
    let mut n = 0;
    let mut rows = Vec::new();
    while let Some(s) = stream.next().await {
        let s = s?;
        if !s.schedule_id().starts_with(SCHEDULE_PREFIX) {
            continue;
        }
        n += 1;
        let next: Vec<String> = s.future_action_times().into_iter().take(3).map(fmt).collect();
        if format == crate::Format::Json {
            rows.push(serde_json::json!({"schedule_id": s.schedule_id(), "paused": s.paused(), "note": s.note(), "next": next}));
            continue;
        }
        let state = if s.paused() { format!("PAUSED ({})", s.note().unwrap_or("")) } else { "active".into() };
        println!("{}  {state}  next: {}", s.schedule_id(), next.join(", "));
    }
    if format == crate::Format::Json {
        crate::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if n == 0 {
        println!("(no schedules; cron definitions get one from the worker's scheduler, or `tf schedules reconcile`)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(settings: &Settings, id: &str) -> anyhow::Result<ExitCode> {
    let id = id_of(id);
    let client = client(settings).await?;
    let d = client.get_schedule_handle(id.clone()).describe(RpcOptions::default()).await.with_context(|| format!("describing {id}"))?;
    println!("schedule      {id}");
    let spec = d.raw().schedule.as_ref().and_then(|s| s.spec.as_ref());
    if let Some(spec) = spec {
        println!("time zone     {}", if spec.timezone_name.is_empty() { "UTC" } else { &spec.timezone_name });
        for c in &spec.structured_calendar {
            let r = |v: &Vec<temporalio_common::protos::temporal::api::schedule::v1::Range>| {
                v.iter()
                    .map(|r| if r.end > r.start { format!("{}-{}/{}", r.start, r.end, r.step.max(1)) } else { r.start.to_string() })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!(
                "calendar      second {} minute {} hour {} day-of-month {} month {} day-of-week {}",
                r(&c.second),
                r(&c.minute),
                r(&c.hour),
                r(&c.day_of_month),
                r(&c.month),
                r(&c.day_of_week)
            );
        }
    }
    println!("state         {}", if d.paused() { format!("PAUSED: {}", d.note().unwrap_or("")) } else { "active".to_string() });
    println!(
        "actions       {} taken, {} missed the catch-up window, {} skipped by overlap",
        d.action_count(),
        d.missed_catchup_window(),
        d.overlap_skipped()
    );
    for a in d.recent_actions() {
        println!(
            "  ran         nominal {}  started {}  {}",
            a.schedule_time.map(fmt).unwrap_or_default(),
            a.actual_time.map(fmt).unwrap_or_default(),
            a.workflow_id
        );
    }
    for a in d.running_actions() {
        println!("  running     {}", a.workflow_id);
    }
    let next: Vec<String> = d.future_action_times().into_iter().take(5).map(fmt).collect();
    println!("next          {}", next.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(settings: &Settings, id: &str, note: &str) -> anyhow::Result<ExitCode> {
    let id = id_of(id);
    client(settings).await?.get_schedule_handle(id.clone()).pause(Some(note), Default::default()).await?;
    println!("paused {id}: {note}");
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(settings: &Settings, id: &str) -> anyhow::Result<ExitCode> {
    let id = id_of(id);
    client(settings).await?.get_schedule_handle(id.clone()).unpause(Some("resumed with tf schedules resume"), Default::default()).await?;
    println!("resumed {id}");
    Ok(ExitCode::SUCCESS)
}

pub async fn trigger(settings: &Settings, id: &str) -> anyhow::Result<ExitCode> {
    let id = id_of(id);
    client(settings).await?.get_schedule_handle(id.clone()).trigger(ScheduleOverlapPolicy::AllowAll, Default::default()).await?;
    println!("triggered {id}: one run starts now");
    Ok(ExitCode::SUCCESS)
}

/// Backfills `[from, to)` in one-day batches. They go in one request: separate back-to-back
/// backfill requests were seen to drop a batch on Temporal 1.32. Then it follows the schedule
/// until its action count stops growing, so the operator sees the runs start.
pub async fn backfill(settings: &Settings, id: &str, from: &str, to: &str, overlap: ScheduleOverlapPolicy) -> anyhow::Result<ExitCode> {
    let id = id_of(id);
    let parse = |t: &str| tf_definitions::cron::parse_time(t).map_err(anyhow::Error::msg);
    let (from, to) = (parse(from)?, parse(to)?);
    anyhow::ensure!(to > from, "--to must be after --from");
    let handle = client(settings).await?.get_schedule_handle(id.clone());
    let mut batches = Vec::new();
    let mut start = from;
    while start < to {
        let end = (start + chrono::Duration::days(1)).min(to);
        batches.push((start, end));
        start = end;
    }
    let before = handle.describe(RpcOptions::default()).await.with_context(|| format!("describing {id}"))?.action_count();
    let requests = batches.iter().map(|(s, e)| ScheduleBackfill::new((*s).into(), (*e).into()).overlap_policy(overlap).build());
    handle.backfill(requests, Default::default()).await.with_context(|| format!("backfilling {id}"))?;
    for (i, (s, e)) in batches.iter().enumerate() {
        println!("backfill {id}: batch {}/{} {} .. {} requested", i + 1, batches.len(), s.to_rfc3339(), e.to_rfc3339());
    }
    let (mut last, mut stable) = (before, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while stable < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = handle.describe(RpcOptions::default()).await?.action_count();
        if now != last {
            println!("  {} run(s) started so far", now - before);
            (last, stable) = (now, 0);
        } else {
            stable += 1;
        }
    }
    println!("done: {} run(s) started; a run whose scheduled time already ran ends as deduplicated", last - before);
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let client = client(settings).await?;
    let rows = tf_store::definitions::latest(&pool).await?;
    let (wanted, broken) =
        tf_temporal::schedules::desired_from_specs(rows.into_iter().filter(|r| !r.retired).map(|r| (r.spec, r.version, r.enabled)));
    for b in &broken {
        eprintln!("skipped (its schedule is left alone): {b}");
    }
    for (id, changes) in tf_temporal::schedules::reconcile(&client, &settings.task_queue, &wanted, &broken).await? {
        println!("  {id}: {changes:?}");
    }
    Ok(ExitCode::SUCCESS)
}
