//! Time-triggered definitions (`trigger.cron`: a cron expression, an interval or both) as
//! Temporal Schedules: one schedule per such definition, id
//! `activity-schedule-<definition id>`, kept in step by [`reconcile`]. Reconciling is
//! idempotent and safe to run from several processes at once: creates that race end in
//! AlreadyExists (then the update path runs), updates carry Temporal's conflict token.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use temporalio_client::schedules::{
    CreateScheduleOptions, DeleteScheduleOptions, ListSchedulesOptions, ScheduleAction, ScheduleDescriptionAction, ScheduleError,
    ScheduleIntervalSpec, ScheduleOverlapPolicy, ScheduleSpec,
};
use temporalio_client::{Client, RpcOptions};
use tf_definitions::{Definition, Overlap, Trigger};

use crate::{RunActivity, RunInput, RunSource};

pub const SCHEDULE_PREFIX: &str = "activity-schedule-";
/// The note of a schedule the reconciler paused because its definition is disabled; a schedule
/// paused by an operator (any other note) is never resumed by the reconciler.
pub const DISABLED_NOTE: &str = "paused by the task factory: definition disabled";

pub fn schedule_id(definition_id: &str) -> String {
    format!("{SCHEDULE_PREFIX}{definition_id}")
}

/// What a cron definition's schedule should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSchedule {
    pub definition_id: String,
    pub version: i32,
    pub enabled: bool,
    /// Temporal's `cron_strings` (none for an interval-only trigger).
    pub cron_strings: Vec<String>,
    /// `(every, offset)` of the interval, if any.
    pub intervals: Vec<(Duration, Duration)>,
    pub timezone: String,
    pub jitter: Duration,
    pub catchup_window: Option<Duration>,
    pub overlap: ScheduleOverlapPolicy,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    pub dedupe_window_secs: u64,
}

impl DesiredSchedule {
    /// `None` for event definitions.
    pub fn from_definition(d: &Definition, version: i32, enabled: bool) -> Option<Self> {
        let Trigger::Cron(c) = &d.trigger else { return None };
        Some(DesiredSchedule {
            definition_id: d.id.clone(),
            version,
            enabled,
            cron_strings: c.spec.cron_strings(),
            intervals: c.spec.interval.iter().map(|i| (i.every, i.offset)).collect(),
            timezone: c.spec.timezone().to_string(),
            jitter: c.jitter,
            catchup_window: c.catchup_window,
            overlap: match c.overlap {
                Overlap::Skip => ScheduleOverlapPolicy::Skip,
                Overlap::BufferOne => ScheduleOverlapPolicy::BufferOne,
                Overlap::BufferAll => ScheduleOverlapPolicy::BufferAll,
                Overlap::CancelOther => ScheduleOverlapPolicy::CancelOther,
                Overlap::TerminateOther => ScheduleOverlapPolicy::TerminateOther,
                Overlap::AllowAll => ScheduleOverlapPolicy::AllowAll,
            },
            start: c.start.map(SystemTime::from),
            end: c.end.map(SystemTime::from),
            dedupe_window_secs: d.dedupe.window.as_secs(),
        })
    }

    /// The input every scheduled RunActivity gets; the workflow adds the scheduled time.
    fn input(&self) -> RunInput {
        RunInput {
            definition_id: self.definition_id.clone(),
            definition_version: self.version,
            dedupe_key: String::new(),
            dedupe_window_secs: self.dedupe_window_secs,
            generation: 0,
            event_time_ms: None,
            trigger: RunSource::cron(schedule_id(&self.definition_id)),
            event: None,
            traceparent: None,
            operator_retry: false,
        }
    }

    fn spec(&self) -> ScheduleSpec {
        let intervals = self
            .intervals
            .iter()
            .map(|(every, offset)| ScheduleIntervalSpec::new(*every, (!offset.is_zero()).then_some(*offset)))
            .collect();
        ScheduleSpec::builder()
            .cron_strings(self.cron_strings.clone())
            .intervals(intervals)
            .timezone_name(self.timezone.clone())
            .maybe_jitter((!self.jitter.is_zero()).then_some(self.jitter))
            .maybe_start_time(self.start)
            .maybe_end_time(self.end)
            .build()
    }

    fn action(&self, task_queue: &str) -> ScheduleAction {
        // Temporal appends the nominal time to this prefix: run/<definition>-<time>.
        ScheduleAction::start_workflow(RunActivity, self.input(), task_queue, format!("run/{}", self.definition_id))
    }
}

/// What reconciling did to one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Paused,
    Resumed,
    Deleted,
    Unchanged,
}

fn is_code(e: &ScheduleError, code: temporalio_client::tonic::Code) -> bool {
    matches!(e, ScheduleError::Rpc(s) if s.code() == code)
}

fn not_found(e: &ScheduleError) -> bool {
    is_code(e, temporalio_client::tonic::Code::NotFound)
}

/// Brings one schedule in line with `want`.
pub async fn reconcile_one(client: &Client, task_queue: &str, want: &DesiredSchedule) -> Result<Vec<Change>, ScheduleError> {
    let id = schedule_id(&want.definition_id);
    let handle = client.get_schedule_handle(id.clone());
    let described = match handle.describe(RpcOptions::default()).await {
        Ok(d) => Some(d),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let Some(described) = described else {
        let opts = CreateScheduleOptions::builder()
            .action(want.action(task_queue))
            .spec(want.spec())
            .overlap_policy(want.overlap)
            .paused(!want.enabled)
            .note(if want.enabled { String::new() } else { DISABLED_NOTE.to_string() })
            .build();
        match client.create_schedule(id.clone(), opts).await {
            Ok(_) => {}
            // Another reconciler created it first: compare it like any existing schedule.
            Err(e) if is_code(&e, temporalio_client::tonic::Code::AlreadyExists) => {
                return Box::pin(reconcile_one(client, task_queue, want)).await;
            }
            Err(e) => return Err(e),
        }
        // Create has no catch-up window option; set it right after.
        if let Some(window) = want.catchup_window {
            handle
                .update(
                    move |u| {
                        u.set_catchup_window(window);
                    },
                    RpcOptions::default(),
                )
                .await?;
        }
        return Ok(vec![Change::Created]);
    };

    let mut changes = Vec::new();
    let current: Option<(RunInput, String)> = match described.action() {
        ScheduleDescriptionAction::StartWorkflow(a) => {
            let queue = a.task_queue().to_string();
            a.args::<RunInput>().await.ok().flatten().map(|i| (i, queue))
        }
        #[allow(unreachable_patterns)]
        _ => None,
    };
    let stale = current.as_ref().is_none_or(|(input, queue)| *input != want.input() || queue != task_queue);
    if stale {
        let (spec, action, overlap, catchup) = (want.spec(), want.action(task_queue), want.overlap, want.catchup_window);
        handle
            .update(
                move |u| {
                    u.set_spec(spec).set_action(action).set_overlap_policy(overlap);
                    if let Some(w) = catchup {
                        u.set_catchup_window(w);
                    }
                },
                RpcOptions::default(),
            )
            .await?;
        changes.push(Change::Updated);
    }
    let paused = described.paused();
    let note = described.note().unwrap_or_default().to_string();
    if !want.enabled && !paused {
        handle.pause(Some(DISABLED_NOTE), Default::default()).await?;
        changes.push(Change::Paused);
    } else if want.enabled && paused && note == DISABLED_NOTE {
        handle.unpause(Some("resumed by the task factory: definition enabled"), Default::default()).await?;
        changes.push(Change::Resumed);
    }
    if changes.is_empty() {
        changes.push(Change::Unchanged);
    }
    Ok(changes)
}

/// Reconciles every cron definition's schedule and deletes the task factory's schedules whose
/// definition is gone (or no longer cron). Only schedules whose action targets `task_queue`
/// count as this deployment's: several deployments (or test runs) can share a namespace.
/// Definitions that did not parse (`unreadable`) keep their schedules: a definition written by a
/// newer version is not a deleted one.
pub async fn reconcile(
    client: &Client,
    task_queue: &str,
    desired: &[DesiredSchedule],
    unreadable: &[Unreadable],
) -> Result<Vec<(String, Vec<Change>)>, ScheduleError> {
    let mut out = Vec::new();
    for want in desired {
        out.push((schedule_id(&want.definition_id), reconcile_one(client, task_queue, want).await?));
    }
    let wanted: std::collections::HashSet<String> = desired.iter().map(|d| schedule_id(&d.definition_id)).collect();
    let mut listed = client.list_schedules(ListSchedulesOptions::default());
    let mut orphans = Vec::new();
    while let Some(summary) = listed.next().await {
        let summary = summary?;
        let id = summary.schedule_id().to_string();
        if id.starts_with(SCHEDULE_PREFIX) && !wanted.contains(&id) {
            orphans.push(id);
        }
    }
    // A spec without a readable id could be any schedule's: delete nothing this round.
    if unreadable.iter().any(|u| u.definition_id.is_none()) {
        return Ok(out);
    }
    let keep: std::collections::HashSet<String> = unreadable.iter().filter_map(|u| u.definition_id.as_deref()).map(schedule_id).collect();
    for id in orphans.into_iter().filter(|id| !keep.contains(id)) {
        let handle = client.get_schedule_handle(id.clone());
        let ours = match handle.describe(RpcOptions::default()).await {
            Ok(d) => matches!(d.action(), ScheduleDescriptionAction::StartWorkflow(a) if a.task_queue() == task_queue),
            Err(e) if not_found(&e) => false,
            Err(e) => return Err(e),
        };
        if !ours {
            continue;
        }
        match handle.delete(DeleteScheduleOptions::default()).await {
            Ok(()) => out.push((id, vec![Change::Deleted])),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A stored definition that does not parse (say, written by a newer version).
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub definition_id: Option<String>,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.definition_id.as_deref().unwrap_or("(no id)"), self.error)
    }
}

/// The schedules wanted for stored definitions, given as (spec, version, enabled) of each
/// definition's newest, non-retired version. Specs that no longer parse are skipped and named.
pub fn desired_from_specs(rows: impl IntoIterator<Item = (serde_json::Value, i32, bool)>) -> (Vec<DesiredSchedule>, Vec<Unreadable>) {
    let mut wanted = Vec::new();
    let mut broken = Vec::new();
    for (spec, version, enabled) in rows {
        let definition_id = spec["id"].as_str().map(String::from);
        match Definition::from_spec_json(spec) {
            Ok(d) => wanted.extend(DesiredSchedule::from_definition(&d, version, enabled)),
            Err(e) => broken.push(Unreadable { definition_id, error: e.to_string() }),
        }
    }
    (wanted, broken)
}
