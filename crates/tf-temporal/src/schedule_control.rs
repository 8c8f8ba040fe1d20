//! What operators do to a time trigger's Temporal Schedule, for the CLI (`tf schedules`), the
//! HTTP API (`/definitions/{id}/schedule`) and the console alike: read its state, pause it with
//! a note, resume, trigger one run now, backfill a time range.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use temporalio_client::schedules::{ScheduleBackfill, ScheduleDescription, ScheduleError, ScheduleOverlapPolicy};
use temporalio_client::{Client, RpcOptions};

use crate::schedules::schedule_id;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleControlError {
    /// The definition has no schedule (an event definition, or not reconciled yet).
    #[error("definition {0} has no schedule (only time-triggered definitions have one; the worker creates it)")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("Temporal: {0}")]
    Temporal(ScheduleError),
}

impl From<ScheduleError> for ScheduleControlError {
    fn from(e: ScheduleError) -> Self {
        ScheduleControlError::Temporal(e)
    }
}

fn not_found(definition_id: &str, e: ScheduleError) -> ScheduleControlError {
    match &e {
        ScheduleError::Rpc(s) if s.code() == temporalio_client::tonic::Code::NotFound => {
            ScheduleControlError::NotFound(definition_id.to_string())
        }
        _ => ScheduleControlError::Temporal(e),
    }
}

fn fmt(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A schedule as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub schedule_id: String,
    pub paused: bool,
    /// The pause's note (the reconciler's for a disabled definition, else an operator's).
    pub note: Option<String>,
    /// Runs the schedule started so far.
    pub actions: i64,
    pub missed_catchup_window: i64,
    pub overlap_skipped: i64,
    /// The most recent fires: nominal time, when the run started, its workflow id.
    pub recent: Vec<RecentFire>,
    /// Runs of the schedule still running.
    pub running: Vec<String>,
    /// The next fire times Temporal computed (with jitter), RFC 3339.
    pub next: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentFire {
    pub nominal: String,
    pub started: String,
    pub workflow_id: String,
}

pub async fn view(client: &Client, definition_id: &str) -> Result<ScheduleView, ScheduleControlError> {
    let id = schedule_id(definition_id);
    let d = client.get_schedule_handle(id.clone()).describe(RpcOptions::default()).await.map_err(|e| not_found(definition_id, e))?;
    Ok(ScheduleView::of(id, &d))
}

impl ScheduleView {
    /// The view of a schedule Temporal described (`tf schedules describe` adds its calendar).
    pub fn of(schedule_id: String, d: &ScheduleDescription) -> ScheduleView {
        ScheduleView {
            schedule_id,
            paused: d.paused(),
            note: d.note().filter(|n| !n.is_empty()).map(String::from),
            actions: d.action_count(),
            missed_catchup_window: d.missed_catchup_window(),
            overlap_skipped: d.overlap_skipped(),
            recent: d
                .recent_actions()
                .into_iter()
                .map(|a| RecentFire {
                    nominal: a.schedule_time.map(fmt).unwrap_or_default(),
                    started: a.actual_time.map(fmt).unwrap_or_default(),
                    workflow_id: a.workflow_id,
                })
                .collect(),
            running: d.running_actions().iter().map(|a| a.workflow_id.clone()).collect(),
            next: d.future_action_times().into_iter().take(5).map(fmt).collect(),
        }
    }
}

pub async fn pause(client: &Client, definition_id: &str, note: &str) -> Result<(), ScheduleControlError> {
    let handle = client.get_schedule_handle(schedule_id(definition_id));
    handle.pause(Some(note), Default::default()).await.map_err(|e| not_found(definition_id, e))
}

pub async fn resume(client: &Client, definition_id: &str, note: &str) -> Result<(), ScheduleControlError> {
    let handle = client.get_schedule_handle(schedule_id(definition_id));
    handle.unpause(Some(note), Default::default()).await.map_err(|e| not_found(definition_id, e))
}

/// Starts one run now (its scheduled time is now; overlap allowed, as an operator asked).
pub async fn trigger(client: &Client, definition_id: &str) -> Result<(), ScheduleControlError> {
    let handle = client.get_schedule_handle(schedule_id(definition_id));
    handle.trigger(ScheduleOverlapPolicy::AllowAll, Default::default()).await.map_err(|e| not_found(definition_id, e))
}

/// The overlap policies a backfill takes, as definitions spell them.
pub const OVERLAP_POLICIES: [&str; 6] = ["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"];

/// One of [`OVERLAP_POLICIES`] as Temporal's policy.
pub fn overlap_policy(name: &str) -> Result<ScheduleOverlapPolicy, String> {
    Ok(match name {
        "skip" => ScheduleOverlapPolicy::Skip,
        "buffer_one" => ScheduleOverlapPolicy::BufferOne,
        "buffer_all" => ScheduleOverlapPolicy::BufferAll,
        "cancel_other" => ScheduleOverlapPolicy::CancelOther,
        "terminate_other" => ScheduleOverlapPolicy::TerminateOther,
        "allow_all" => ScheduleOverlapPolicy::AllowAll,
        other => return Err(format!("{other:?} is not one of {}", OVERLAP_POLICIES.join(", "))),
    })
}

/// The longest range one backfill may cover: each day is one batch, in one request.
pub const MAX_BACKFILL_DAYS: i64 = 366;

/// Asks Temporal to run every fire from `from` to `to`, both included (Temporal's backfill
/// range is), in one-day batches that do not share an instant, in one request (separate
/// back-to-back requests were seen to drop a batch on Temporal 1.32). Returns the batches and
/// the schedule's action count before, from which progress is followed ([`view`]'s `actions`).
pub async fn backfill(
    client: &Client,
    definition_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    overlap: ScheduleOverlapPolicy,
) -> Result<(Vec<(DateTime<Utc>, DateTime<Utc>)>, i64), ScheduleControlError> {
    if to <= from {
        return Err(ScheduleControlError::Refused("`to` must be after `from`".into()));
    }
    if to - from > chrono::Duration::days(MAX_BACKFILL_DAYS) {
        return Err(ScheduleControlError::Refused(format!("a backfill covers at most {MAX_BACKFILL_DAYS} days; split it")));
    }
    let handle = client.get_schedule_handle(schedule_id(definition_id));
    let before = handle.describe(RpcOptions::default()).await.map_err(|e| not_found(definition_id, e))?.action_count();
    let mut batches = Vec::new();
    let mut start = from;
    while start < to {
        let next = start + chrono::Duration::days(1);
        // A fire at a batch boundary belongs to the next batch only; the last ends at `to`.
        let end = if next >= to { to } else { next - chrono::Duration::milliseconds(1) };
        batches.push((start, end));
        start = next;
    }
    let requests = batches.iter().map(|(s, e)| ScheduleBackfill::new((*s).into(), (*e).into()).overlap_policy(overlap).build());
    handle.backfill(requests, Default::default()).await.map_err(|e| not_found(definition_id, e))?;
    Ok((batches, before))
}
