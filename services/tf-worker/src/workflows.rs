//! The workflows. Deterministic by construction: ids come from the run's workflow id, times
//! from workflow time, and every side effect (SQL, HTTP, Kafka) is an activity.
//!
//! RunActivity and RunTask share this file because they share the task path (`task_path.rs`):
//! an `execution: activity` task runs inside the run with the same `execute_task` and
//! `record_outcome` as a RunTask child. The order of a run that unfolds is `unfold.rs`'s.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value as Json, json};
use temporalio_common::data_converters::RawValue;
use temporalio_common::error::ApplicationFailure;
use temporalio_common::protos::temporal::api::common::v1::Payload;
use temporalio_common::search_attributes::{SearchAttributeKey, Timestamp as SaTimestamp};
use temporalio_common::{RetryPolicy, UntypedWorkflow};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, ChildWorkflowOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult, WorkflowTermination,
};
use tf_definitions::steps::StepView;
use tf_definitions::task_params::WorkflowParams;
use tf_definitions::{Definition, Execution, RunId, RunStatus, TaskStatus, TaskType, TriggerKind};
use tf_store::flow::Verdict;
use tf_temporal::{
    COMPLETE_TASK_SIGNAL, DECIDE_TASK_UPDATE, DELIVER_EVENT_SIGNAL, FLOW_WAKE_SIGNAL, RUN_ACTIVITY, RUN_TASK, RunInput, RunSummary,
    TaskConclusion, TaskInput,
};

use crate::activities::{
    AdmitRunInput, BeginRunInput, FinishRunInput, MarkTaskInput, PlanStepInput, PlanTasksInput, ResolveContextInput, RunActivities,
};
use crate::task_path::{
    self, LOOK_AGAIN, Outcome, Told, Wakes, cancelled_because, cause, closing_opts, execute_task, local_opts, millis, record_outcome,
    sleep_until_woken,
};
use crate::unfold;

/// Set by Temporal Schedules on every workflow they start: the action's nominal time.
const SCHEDULED_START_TIME: SearchAttributeKey<SaTimestamp> = SearchAttributeKey::datetime("TemporalScheduledStartTime");

/// How often resolving a context that reaches the user's systems is tried before the run fails
/// (a slow or broken source must fail the run, which a retry or the next event can run again,
/// not hold it forever).
pub const CONTEXT_ATTEMPTS: u32 = 5;

/// Context sources that call out (`sql`, `http`): regular activities with bounded retries,
/// about 15 s of backoff in all unless a server asks for longer with `Retry-After`.
fn context_opts() -> ActivityOptions {
    let retries = RetryPolicy::builder()
        .initial_interval(Duration::from_secs(1))
        .backoff_coefficient(2.0)
        .maximum_interval(Duration::from_secs(30))
        .maximum_attempts(CONTEXT_ATTEMPTS)
        .build();
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(60)).retry_policy(retries).build()
}

#[workflow]
#[derive(Default)]
pub struct RunActivityWorkflow {
    /// Flow-control wake-ups received (a slot this run or one of its tasks waits for freed).
    wakes: u32,
    /// Waits the run was told an event was delivered to (`deliver-event`), by wait id.
    pub(crate) deliveries: std::collections::BTreeMap<String, Json>,
}

#[workflow_methods]
impl RunActivityWorkflow {
    #[run(name = RUN_ACTIVITY)]
    pub async fn run(ctx: &mut WorkflowContext<Self>, mut input: RunInput) -> WorkflowResult<RunSummary> {
        let run_id = RunId::from_workflow_id(ctx.workflow_id());
        if input.trigger.kind == TriggerKind::Cron && input.dedupe_key.is_empty() {
            scheduled_identity(ctx, &mut input);
        }
        let begin = ctx
            .execute_local_activity(
                RunActivities::begin_run,
                BeginRunInput {
                    run_id: run_id.clone(),
                    execution_id: ctx.info().run_id().to_string(),
                    fired_at_ms: millis(ctx.workflow_time()),
                    input: input.clone(),
                },
                local_opts(),
            )
            .await?;
        if begin.stays_cancelled {
            return Err(WorkflowTermination::cancelled());
        }
        let Some(spec) = begin.spec else {
            return Ok(RunSummary { status: RunStatus::Deduplicated, tasks_spawned: 0, tasks_failed: 0 });
        };
        // The drill's change sits before the first wait of a run, where an unguarded change would
        // break every run in flight.
        #[cfg(feature = "upgrade-drill")]
        if ctx.patched(crate::patches::UPGRADE_DRILL) {
            ctx.timer(Duration::from_millis(1)).await;
        }
        if let Some(why) = begin.flow_error {
            return Err(fail(ctx, &run_id, why).await);
        }
        if let (Some(admission), Some(verdict)) = (begin.admission, begin.verdict) {
            let admit =
                AdmitRunInput { run_id: run_id.clone(), definition_id: input.definition_id.clone(), admission, waiting_since_ms: 0 };
            if let Some(skipped) = wait_for_admission(ctx, admit, verdict).await? {
                return Ok(skipped);
            }
        }
        let definition = match Definition::from_spec_json(spec.clone()) {
            Ok(d) => d,
            Err(e) => return Err(fail(ctx, &run_id, e.to_string()).await),
        };
        let run = json!({
            "id": run_id,
            "definition_id": input.definition_id,
            "definition_version": input.definition_version,
            "dedupe_key": input.dedupe_key,
            "generation": begin.generation,
            "attempt": begin.attempt,
            "trigger": input.trigger,
        });
        let event = input.event.as_deref().cloned().unwrap_or(Json::Null);
        let resolve = ResolveContextInput {
            run_id: run_id.clone(),
            spec: spec.clone(),
            event: event.clone(),
            run: run.clone(),
            traceparent: input.traceparent.clone(),
        };
        // Sources that call out may be slow: those run as a regular activity. The choice depends
        // only on the pinned definition, so replays make it the same way.
        let calls_out = definition.context.iter().any(|(_, s)| s.calls_out());
        let context = if calls_out {
            ctx.execute_activity(RunActivities::resolve_context, resolve, context_opts()).await
        } else {
            ctx.execute_local_activity(RunActivities::resolve_context, resolve, local_opts()).await
        };
        let context = match context {
            Ok(c) => c,
            Err(e) => return Err(stop_or_fail(ctx, &run_id, format!("resolving the context: {}", cause(&e))).await),
        };
        let plan = PlanTasksInput {
            run_id: run_id.clone(),
            attempt: begin.attempt,
            spec,
            event,
            context: context.values,
            context_sources: context.sources,
            run,
            input: input.clone(),
            skip: begin.succeeded.clone(),
        };
        let (spawned, failed) = if definition.unfolds() {
            let start = |step, for_each| run_template(ctx.clone(), run_id.clone(), step, for_each);
            unfold::run_steps(ctx, &definition, plan, start).await?
        } else {
            let tasks = match ctx.execute_local_activity(RunActivities::plan_tasks, plan, local_opts()).await {
                Ok(t) => t,
                Err(e) => return Err(stop_or_fail(ctx, &run_id, format!("planning the tasks: {}", cause(&e))).await),
            };
            (tasks.len() as u32, run_tasks(ctx, &run_id, &tasks).await?)
        };
        if let Some(stopped) = stop_if_cancelled(ctx, &run_id).await {
            return Err(stopped);
        }
        if failed > 0 {
            // The execution fails too, so Temporal's reuse policy (AllowDuplicateFailedOnly) lets a
            // redelivered event or `tf runs retry` run the generation again.
            return Err(fail(ctx, &run_id, format!("{failed} of {spawned} task(s) failed")).await);
        }
        ctx.execute_local_activity(RunActivities::finish_run, finish(&run_id, RunStatus::Completed), local_opts()).await?;
        Ok(RunSummary { status: RunStatus::Completed, tasks_spawned: spawned, tasks_failed: 0 })
    }

    #[signal(name = FLOW_WAKE_SIGNAL)]
    pub fn wake(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _nothing: ()) {
        self.wakes = self.wakes.wrapping_add(1);
    }

    /// A router delivered an event to a wait step (the event itself is in PostgreSQL).
    #[signal(name = DELIVER_EVENT_SIGNAL)]
    pub fn deliver(&mut self, _ctx: &mut SyncWorkflowContext<Self>, delivery: Json) {
        if let Some(wait_id) = delivery.get("wait_id").and_then(Json::as_str) {
            self.deliveries.entry(wait_id.to_string()).or_insert(delivery);
        }
    }
}

impl Wakes for RunActivityWorkflow {
    fn wakes(&self) -> u32 {
        self.wakes
    }
}

impl Told for RunActivityWorkflow {
    fn told(&self, wait_id: &str) -> bool {
        self.deliveries.contains_key(wait_id)
    }
}

impl Wakes for RunTaskWorkflow {
    fn wakes(&self) -> u32 {
        self.wakes
    }
}

/// Holds the run until its limits admit it (docs/flow-control.md). Returns the run's summary
/// when a rate limit skipped it, `None` once it may execute. A waiting run costs no polling:
/// it sleeps until a releaser wakes it, or a throttled start's time comes.
async fn wait_for_admission(
    ctx: &WorkflowContext<RunActivityWorkflow>,
    mut admit: AdmitRunInput,
    mut verdict: Verdict,
) -> Result<Option<RunSummary>, WorkflowTermination> {
    admit.waiting_since_ms = millis(ctx.workflow_time());
    loop {
        match verdict {
            Verdict::Go => return Ok(None),
            Verdict::Skip { .. } => return Ok(Some(RunSummary { status: RunStatus::Skipped, tasks_spawned: 0, tasks_failed: 0 })),
            Verdict::Wait { retry_in_ms, .. } => {
                sleep_until_woken(ctx, retry_in_ms.map_or(LOOK_AGAIN, Duration::from_millis)).await;
                if let Some(stopped) = stop_if_cancelled(ctx, &admit.run_id).await {
                    return Err(stopped);
                }
                verdict = ctx.execute_local_activity(RunActivities::admit_run, admit.clone(), local_opts()).await?;
            }
        }
    }
}

/// A scheduled run is deduplicated by its nominal time, which the schedule records on the
/// workflow (not the wall clock, and not when a backfill happens to run). A Schedule's action
/// cannot carry our search attributes; they are set here, so scheduled runs are found by
/// `ActivityId = '<definition>'` like event runs.
fn scheduled_identity(ctx: &WorkflowContext<RunActivityWorkflow>, input: &mut RunInput) {
    let scheduled_ms = ctx
        .search_attributes()
        .get(&SCHEDULED_START_TIME)
        .map(|t| t.seconds() * 1000 + i64::from(t.nanos()) / 1_000_000)
        .unwrap_or_else(|| millis(ctx.workflow_time()));
    input.trigger.scheduled_for_ms = Some(scheduled_ms);
    input.dedupe_key = tf_envelope::Timestamp(scheduled_ms).to_string();
    ctx.upsert_search_attributes([
        tf_temporal::ACTIVITY_ID.value_set(input.definition_id.clone()),
        tf_temporal::DEDUPE_KEY.value_set(input.dedupe_key.clone()),
        tf_temporal::TRIGGER_KIND.value_set(input.trigger.kind.as_str().to_string()),
    ]);
}

fn finish(run_id: &RunId, status: RunStatus) -> FinishRunInput {
    FinishRunInput { run_id: run_id.clone(), status }
}

/// A cancel request (`POST /runs/{id}/cancel`, the Temporal UI) cancels whatever the run is
/// waiting for, children included. Once it did, the run is recorded `cancelled` (detached from
/// the cancellation, which would cancel the recording too) and the execution ends cancelled.
async fn stop_if_cancelled(ctx: &WorkflowContext<RunActivityWorkflow>, run_id: &RunId) -> Option<WorkflowTermination> {
    if !ctx.cancellation_token().is_cancelled() {
        return None;
    }
    Some(match ctx.execute_local_activity(RunActivities::finish_run, finish(run_id, RunStatus::Cancelled), closing_opts()).await {
        Ok(_) => WorkflowTermination::cancelled(),
        Err(e) => e.into(),
    })
}

/// Records the run failed and ends the execution failed, for good (no Temporal retry: a
/// redelivered event or `tf runs retry` runs the generation again).
async fn fail(ctx: &WorkflowContext<RunActivityWorkflow>, run_id: &RunId, why: String) -> WorkflowTermination {
    match ctx.execute_local_activity(RunActivities::finish_run, finish(run_id, RunStatus::Failed), local_opts()).await {
        Ok(_) => ApplicationFailure::non_retryable(why).into(),
        Err(e) => e.into(),
    }
}

/// A step that failed because of a cancel request ends the run cancelled; any other failure
/// fails it.
pub(crate) async fn stop_or_fail(ctx: &WorkflowContext<RunActivityWorkflow>, run_id: &RunId, why: String) -> WorkflowTermination {
    match stop_if_cancelled(ctx, run_id).await {
        Some(stopped) => stopped,
        None => fail(ctx, run_id, why).await,
    }
}

/// Runs the planned tasks: `execution: child` ones as RunTask children (started first, in plan
/// order), the rest here, side by side, each as RunTask would run it. Returns how many did not
/// succeed.
async fn run_tasks(ctx: &WorkflowContext<RunActivityWorkflow>, run_id: &RunId, tasks: &[TaskInput]) -> Result<u32, WorkflowTermination> {
    Ok(run_planned(ctx, run_id, tasks).await?.iter().filter(|(_, succeeded, _)| !succeeded).count() as u32)
}

/// Runs planned tasks, children first (started in plan order; a cancel request stops starting
/// more), then those the run executes itself, side by side. Returns `(index, succeeded,
/// output)` of each: the run's own tasks in plan order, then the children.
async fn run_planned(
    ctx: &WorkflowContext<RunActivityWorkflow>,
    run_id: &RunId,
    tasks: &[TaskInput],
) -> Result<Vec<(u32, bool, Json)>, WorkflowTermination> {
    let (inline, child_tasks): (Vec<&TaskInput>, Vec<&TaskInput>) = tasks.iter().partition(|t| t.execution == Execution::Activity);
    let mut children = Vec::with_capacity(child_tasks.len());
    for t in child_tasks {
        if let Some(stopped) = stop_if_cancelled(ctx, run_id).await {
            return Err(stopped);
        }
        // Cancelling the run cancels each child and waits until it recorded its cancellation
        // (the default WaitCancellationCompleted), so the run closes after its tasks.
        let child =
            ctx.start_child_workflow(RunTaskWorkflow::run, t.clone(), ChildWorkflowOptions::workflow_id(t.task_id.to_string())).await?;
        children.push((t.index, child));
    }
    let mut ended = Vec::with_capacity(tasks.len());
    let outcomes = task_path::join_in_order(inline.iter().map(|t| run_inline(ctx.clone(), (*t).clone())).collect()).await;
    for (task, outcome) in inline.iter().zip(outcomes) {
        let (status, output) = outcome?;
        ended.push((task.index, status == TaskStatus::Succeeded, output.unwrap_or(Json::Null)));
    }
    for (index, child) in children {
        match child.result().await {
            Ok(c) => ended.push((index, c.status == TaskStatus::Succeeded, c.output.unwrap_or(Json::Null))),
            Err(_) => ended.push((index, false, Json::Null)),
        }
    }
    Ok(ended)
}

/// An `execution: activity` task, run inside its run as RunTask would run it, minus the child
/// workflow: the activity with its retries, then its result.
pub(crate) async fn run_task_inline(
    ctx: WorkflowContext<RunActivityWorkflow>,
    task: TaskInput,
) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    let started_at_ms = millis(ctx.workflow_time());
    let outcome = execute_task(&ctx, &task, task.run_id.as_str()).await;
    record_outcome(&ctx, &task, started_at_ms, outcome).await
}

/// Plans one template of a run that unfolds (or records it skipped) and runs its tasks: children
/// first, in plan order, then those the run executes itself, side by side.
async fn run_template(
    ctx: WorkflowContext<RunActivityWorkflow>,
    run_id: RunId,
    step: PlanStepInput,
    for_each: bool,
) -> Result<unfold::TemplateEnd, WorkflowTermination> {
    let name = step.template.clone();
    let skipped = step.skipped_because.is_some();
    let planned = match ctx.execute_local_activity(RunActivities::plan_step, step, local_opts()).await {
        Ok(p) => p,
        Err(e) => return Err(stop_or_fail(&ctx, &run_id, format!("planning {name}: {}", cause(&e))).await),
    };
    if skipped {
        return Ok(unfold::TemplateEnd { name, view: StepView::skipped(), spawned: 0, failed: 0 });
    }
    let mut ended: Vec<(u32, bool, Json)> = planned.done.iter().map(|(i, o)| (*i, true, o.clone())).collect();
    let spawned = planned.tasks.len() as u32;
    ended.extend(run_planned(&ctx, &run_id, &planned.tasks).await?);
    let failed = ended.iter().filter(|e| !e.1).count() as u32;
    Ok(unfold::TemplateEnd { name, view: StepView::of(for_each, &ended), spawned, failed })
}

/// A task the run executes itself: a sleep, a wait, or an `http`/`kafka` activity.
async fn run_inline(ctx: WorkflowContext<RunActivityWorkflow>, task: TaskInput) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    match task.task_type {
        TaskType::Sleep => task_path::sleep(&ctx, &task).await,
        TaskType::WaitForEvent => task_path::wait_for_event(&ctx, &task).await,
        _ => run_task_inline(ctx, task).await,
    }
}

/// A `workflow` task: a child workflow of a type and task queue named by the task's params, so
/// users plug in workers written in any language. Input and output travel as JSON payloads
/// (`json/plain`, every SDK's default converter).
async fn run_foreign_workflow(ctx: &mut WorkflowContext<RunTaskWorkflow>, task: &TaskInput) -> Result<Json, String> {
    let WorkflowParams { workflow_type, task_queue, input } = WorkflowParams::parse(&task.params).map_err(|e| e.to_string())?;
    let input = Payload {
        metadata: HashMap::from([("encoding".to_string(), b"json/plain".to_vec())]),
        data: serde_json::to_vec(&input).map_err(|e| e.to_string())?,
        ..Default::default()
    };
    let opts = ChildWorkflowOptions::builder()
        .workflow_id(format!("{}/workflow", task.task_id))
        .task_queue(task_queue.clone())
        .execution_timeout(Duration::from_millis(task.timeout_ms))
        .build();
    let started = ctx
        .start_child_workflow(UntypedWorkflow::new(&workflow_type), RawValue::new(vec![input]), opts)
        .await
        .map_err(|e| format!("starting {workflow_type} on {task_queue}: {e}"))?;
    let out = started.result().await.map_err(|e| format!("{workflow_type} on {task_queue}: {e}"))?;
    Ok(out.payloads.first().map_or(Json::Null, |p| serde_json::from_slice(&p.data).unwrap_or(Json::Null)))
}

#[workflow]
#[derive(Default)]
pub struct RunTaskWorkflow {
    completion: Option<Json>,
    decision: Option<tf_temporal::HumanDecision>,
    awaiting_human: bool,
    /// Decided without a decision: timed out or cancelled.
    closed: bool,
    /// Flow-control wake-ups received (the task waits for its budget).
    wakes: u32,
}

#[workflow_methods]
impl RunTaskWorkflow {
    #[run(name = RUN_TASK)]
    pub async fn run(ctx: &mut WorkflowContext<Self>, task: TaskInput) -> WorkflowResult<TaskConclusion> {
        let started_at_ms = millis(ctx.workflow_time());
        let outcome = if task.task_type == TaskType::Human {
            ctx.execute_local_activity(
                RunActivities::mark_task,
                MarkTaskInput { task_id: task.task_id.clone(), status: TaskStatus::AwaitingHuman },
                local_opts(),
            )
            .await?;
            ctx.state_mut(|s| s.awaiting_human = true);
            // The wait ends on a decision, the timeout or a cancel request (which also ends the
            // timer, so cancellation is checked before the timeout).
            match task.human_timeout_ms {
                None => {
                    let _ = ctx.wait_condition(|s| s.completion.is_some() || s.decision.is_some()).await;
                }
                Some(ms) => temporalio_sdk::workflows::select! {
                    _ = ctx.wait_condition(|s| s.completion.is_some() || s.decision.is_some()) => {}
                    _ = ctx.timer(Duration::from_millis(ms)) => {}
                },
            }
            let decided = ctx.state(|s| s.completion.is_some() || s.decision.is_some());
            if !decided {
                // From here on the validator refuses decisions: the timeout or the cancel decided.
                ctx.state_mut(|s| s.closed = true);
            }
            match ctx.state(|s| (s.decision.clone(), s.completion.clone())) {
                _ if !decided && ctx.cancellation_token().is_cancelled() => {
                    Outcome::ended(TaskStatus::Cancelled, cancelled_because(ctx.cancellation_token().reason()), 1)
                }
                _ if !decided && task.complete_on_timeout => Outcome::succeeded(task.timeout_output.clone().unwrap_or(Json::Null), 1),
                _ if !decided => {
                    let waited = Duration::from_millis(task.human_timeout_ms.unwrap_or_default());
                    Outcome::ended(TaskStatus::Failed, format!("nobody decided within {} s (on_timeout: fail)", waited.as_secs()), 1)
                }
                (Some(tf_temporal::HumanDecision::Complete { output, .. }), _) | (None, Some(output)) => Outcome::succeeded(output, 1),
                (Some(tf_temporal::HumanDecision::Reject { reason, by }), _) => {
                    Outcome::ended(TaskStatus::Failed, format!("rejected by {by}: {reason}"), 1)
                }
                (None, None) => unreachable!("the wait ends on a decision or a completion"),
            }
        } else if task.task_type == TaskType::Workflow {
            match run_foreign_workflow(ctx, &task).await {
                Ok(output) => Outcome::succeeded(output, 1),
                Err(error) => Outcome::ended(TaskStatus::Failed, error, 1),
            }
        } else {
            execute_task(ctx, &task, task.task_id.as_str()).await
        };
        let attempts = outcome.attempts;
        let (status, output) = record_outcome(ctx, &task, started_at_ms, outcome).await?;
        if ctx.cancellation_token().is_cancelled() && status == TaskStatus::Cancelled {
            return Err(WorkflowTermination::cancelled());
        }
        Ok(TaskConclusion { status, attempts, output })
    }

    #[signal(name = COMPLETE_TASK_SIGNAL)]
    pub fn complete(&mut self, _ctx: &mut SyncWorkflowContext<Self>, output: Json) {
        if self.completion.is_none() && self.decision.is_none() {
            self.completion = Some(output);
        }
    }

    #[signal(name = FLOW_WAKE_SIGNAL)]
    pub fn wake(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _nothing: ()) {
        self.wakes = self.wakes.wrapping_add(1);
    }

    #[update_validator(decide)]
    fn validate_decide(
        &self,
        _ctx: &WorkflowContextView,
        _decision: &tf_temporal::HumanDecision,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.completion.is_some() || self.decision.is_some() || self.closed {
            return Err(tf_temporal::ALREADY_DECIDED.into());
        }
        if !self.awaiting_human {
            return Err(tf_temporal::NOT_AWAITING.into());
        }
        Ok(())
    }

    #[update(name = DECIDE_TASK_UPDATE)]
    pub fn decide(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: tf_temporal::HumanDecision) -> String {
        self.decision = Some(decision);
        "accepted".into()
    }
}
