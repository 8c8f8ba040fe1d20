//! `tf schedules list|describe|pause|resume|trigger|backfill|reconcile`: the Temporal Schedules of cron
//! definitions, addressed by schedule id or definition id.

use std::time::SystemTime;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::json;
use temporalio_client::RpcOptions;
use temporalio_client::schedules::{ListSchedulesOptions, ScheduleOverlapPolicy};
use tf_config::Settings;
use tf_temporal::schedule_control;
use tf_temporal::schedules::{SCHEDULE_PREFIX, schedule_id};

use crate::output::{Answer, say, table};

/// Accepts a schedule id or the id of its definition.
fn id_of(arg: &str) -> String {
    if arg.starts_with(SCHEDULE_PREFIX) { arg.to_string() } else { schedule_id(arg) }
}

fn fmt(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `--overlap`: one of the policies a backfill takes, listed in `--help`.
pub fn overlap_parser() -> impl clap::builder::TypedValueParser<Value = ScheduleOverlapPolicy> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(schedule_control::OVERLAP_POLICIES).try_map(|s| schedule_control::overlap_policy(&s))
}

async fn client(settings: &Settings) -> anyhow::Result<temporalio_client::Client> {
    Ok(tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?)
}

pub async fn list(settings: &Settings) -> anyhow::Result<Answer> {
    let client = client(settings).await?;
    let mut stream = client.list_schedules(ListSchedulesOptions::default());
    let (mut rows, mut cells) = (Vec::new(), Vec::new());
    while let Some(s) = stream.next().await {
        let s = s?;
        if !s.schedule_id().starts_with(SCHEDULE_PREFIX) {
            continue;
        }
        let next: Vec<String> = s.future_action_times().into_iter().take(3).map(fmt).collect();
        let state = if s.paused() { format!("PAUSED ({})", s.note().unwrap_or("")) } else { "active".into() };
        cells.push(vec![s.schedule_id().to_string(), state, next.join(", ")]);
        rows.push(json!({"schedule_id": s.schedule_id(), "paused": s.paused(), "note": s.note(), "next": next}));
    }
    let text = table(
        &["SCHEDULE", "STATE", "NEXT"],
        &cells,
        "(no schedules; cron definitions get one from the worker's scheduler, or `tf schedules reconcile`)",
    );
    Ok(Answer::new(rows)?.text(text))
}

pub async fn describe(settings: &Settings, id: &str) -> anyhow::Result<Answer> {
    let id = id_of(id);
    let client = client(settings).await?;
    let d = client.get_schedule_handle(id.clone()).describe(RpcOptions::default()).await.with_context(|| format!("describing {id}"))?;
    let mut text = String::new();
    say!(text, "schedule      {id}");
    let spec = d.raw().schedule.as_ref().and_then(|s| s.spec.as_ref());
    let timezone = spec.map(|s| if s.timezone_name.is_empty() { "UTC".to_string() } else { s.timezone_name.clone() });
    let mut calendars = Vec::new();
    if let Some(spec) = spec {
        say!(text, "time zone     {}", timezone.as_deref().unwrap_or("UTC"));
        for c in &spec.structured_calendar {
            let r = |v: &Vec<temporalio_common::protos::temporal::api::schedule::v1::Range>| {
                v.iter()
                    .map(|r| if r.end > r.start { format!("{}-{}/{}", r.start, r.end, r.step.max(1)) } else { r.start.to_string() })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let calendar = json!({"second": r(&c.second), "minute": r(&c.minute), "hour": r(&c.hour),
                                  "day_of_month": r(&c.day_of_month), "month": r(&c.month), "day_of_week": r(&c.day_of_week)});
            say!(
                text,
                "calendar      second {} minute {} hour {} day-of-month {} month {} day-of-week {}",
                r(&c.second),
                r(&c.minute),
                r(&c.hour),
                r(&c.day_of_month),
                r(&c.month),
                r(&c.day_of_week)
            );
            calendars.push(calendar);
        }
    }
    let v = schedule_control::ScheduleView::of(id.clone(), &d);
    say!(text, "state         {}", if v.paused { format!("PAUSED: {}", v.note.as_deref().unwrap_or("")) } else { "active".to_string() });
    say!(
        text,
        "actions       {} taken, {} missed the catch-up window, {} skipped by overlap",
        v.actions,
        v.missed_catchup_window,
        v.overlap_skipped
    );
    for a in &v.recent {
        say!(text, "  ran         nominal {}  started {}  {}", a.nominal, a.started, a.workflow_id);
    }
    for w in &v.running {
        say!(text, "  running     {w}");
    }
    say!(text, "next          {}", v.next.join(", "));
    let answer = json!({
        "schedule_id": id, "time_zone": timezone, "calendars": calendars, "paused": v.paused, "note": d.note(),
        "actions": v.actions, "missed_catchup_window": v.missed_catchup_window, "overlap_skipped": v.overlap_skipped,
        "recent": v.recent, "running": v.running, "next": v.next,
    });
    Ok(Answer::new(answer)?.text(text))
}

/// The definition id of a schedule id or definition id.
fn definition_of(arg: &str) -> &str {
    arg.strip_prefix(SCHEDULE_PREFIX).unwrap_or(arg)
}

pub async fn pause(settings: &Settings, id: &str, note: &str) -> anyhow::Result<Answer> {
    schedule_control::pause(&client(settings).await?, definition_of(id), note).await?;
    let id = id_of(id);
    Ok(Answer::new(json!({"schedule_id": id, "paused": true, "note": note}))?.text(format!("paused {id}: {note}\n")))
}

pub async fn resume(settings: &Settings, id: &str) -> anyhow::Result<Answer> {
    schedule_control::resume(&client(settings).await?, definition_of(id), "resumed with tf schedules resume").await?;
    let id = id_of(id);
    Ok(Answer::new(json!({"schedule_id": id, "paused": false}))?.text(format!("resumed {id}\n")))
}

pub async fn trigger(settings: &Settings, id: &str) -> anyhow::Result<Answer> {
    schedule_control::trigger(&client(settings).await?, definition_of(id)).await?;
    let id = id_of(id);
    Ok(Answer::new(json!({"schedule_id": id, "triggered": true}))?.text(format!("triggered {id}: one run starts now\n")))
}

/// Backfills `[from, to)` (tf_temporal::schedule_control::backfill), then follows the schedule
/// until its action count stops growing, showing progress on stderr, so the operator sees the
/// runs start.
pub async fn backfill(settings: &Settings, id: &str, from: &str, to: &str, overlap: ScheduleOverlapPolicy) -> anyhow::Result<Answer> {
    let parse = |t: &str| tf_definitions::cron::parse_time(t).map_err(anyhow::Error::msg);
    let (from, to) = (parse(from)?, parse(to)?);
    let client = client(settings).await?;
    let definition = definition_of(id).to_string();
    let (batches, before) = schedule_control::backfill(&client, &definition, from, to, overlap).await?;
    let id = id_of(id);
    for (i, (s, e)) in batches.iter().enumerate() {
        eprintln!("backfill {id}: batch {}/{} {} .. {} requested", i + 1, batches.len(), s.to_rfc3339(), e.to_rfc3339());
    }
    let (mut last, mut stable) = (before, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while stable < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = schedule_control::view(&client, &definition).await?.actions;
        if now != last {
            eprintln!("  {} run(s) started so far", now - before);
            (last, stable) = (now, 0);
        } else {
            stable += 1;
        }
    }
    let started = last - before;
    let batches: Vec<serde_json::Value> = batches.iter().map(|(s, e)| json!({"from": s.to_rfc3339(), "to": e.to_rfc3339()})).collect();
    Ok(Answer::new(json!({"schedule_id": id, "batches": batches, "runs_started": started}))?
        .text(format!("done: {started} run(s) started; a run whose scheduled time already ran ends as deduplicated\n")))
}

pub async fn reconcile(settings: &Settings) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let client = client(settings).await?;
    let rows = tf_store::definitions::latest(&pool).await?;
    let (wanted, broken) =
        tf_temporal::schedules::desired_from_specs(rows.into_iter().filter(|r| !r.retired).map(|r| (r.spec, r.version, r.enabled)));
    for b in &broken {
        eprintln!("skipped (its schedule is left alone): {b}");
    }
    let mut text = String::new();
    let mut changed = Vec::new();
    for (id, changes) in tf_temporal::schedules::reconcile(&client, &settings.task_queue, &wanted, &broken).await? {
        say!(text, "  {id}: {changes:?}");
        changed.push(json!({"schedule_id": id, "changes": format!("{changes:?}")}));
    }
    let broken: Vec<String> = broken.iter().map(ToString::to_string).collect();
    Ok(Answer::new(json!({"schedules": changed, "skipped": broken}))?.text(text))
}
