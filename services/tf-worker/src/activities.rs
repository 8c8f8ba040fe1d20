//! The activities: every side effect of a run. Each one is idempotent, because Temporal runs an
//! activity again after a timeout or a worker crash.
//!
//! One file on purpose: it is the complete list of what a run does to the world, read as one
//! when reviewing idempotency. The calls themselves live elsewhere (`sources`, `http`, the store).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sqlx::PgPool;
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tf_definitions::flow::Admission;
use tf_definitions::task_params::{HttpParams, KafkaParams};
use tf_definitions::{Bindings, Definition, TaskType};
use tf_definitions::{RunId, RunStatus, TaskId, TaskStatus};
use tf_envelope::TaskResult;
use tf_store::flow::{self, Verdict};
use tf_store::outbox::{self, FinishedTask};
use tf_store::runs::{self, BeginRun, Claim};
use tf_store::tasks::{self, NewTask};
use tf_store::waits;
use tf_temporal::{RunInput, TaskInput};
use tracing::Instrument;

use crate::http::Body;
use crate::sources::{HttpCall, SourceError, Sources, header_text};

/// The activities' shared clients; one instance per worker.
pub struct RunActivities {
    pub pool: PgPool,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub producer: FutureProducer,
    /// The user's systems: datasources, secrets, outbound HTTP.
    pub sources: Sources,
    /// Wakes flow-control waiters when a slot frees.
    pub temporal: temporalio_client::Client,
    /// The shared budgets (`TF_BUDGETS`): name to how many tasks may hold it at once.
    pub budgets: Arc<std::collections::BTreeMap<String, u32>>,
}

fn waited_seconds(since_ms: i64) -> f64 {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    (now_ms - since_ms).max(0) as f64 / 1000.0
}

/// How often a running task heartbeats; its heartbeat timeout is a few times this.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

fn permanent(msg: impl Into<String>) -> ActivityError {
    ActivityError::application(ApplicationFailure::non_retryable(msg.into()))
}

fn transient(e: impl std::fmt::Display) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(e.to_string()))
}

/// A failed call to the user's systems: retried (after the server's `Retry-After` when it gave
/// one) unless retrying cannot help.
fn source_failure(e: SourceError) -> ActivityError {
    if !e.transient {
        return permanent(e.message);
    }
    ActivityError::application(ApplicationFailure::builder(e.message).maybe_next_retry_delay(e.retry_after).build())
}

/// Bookkeeping errors: retried when PostgreSQL is unavailable, final when it refuses the
/// statement (a value it cannot store), so a run is never retried forever for bad data.
fn store_failure(e: tf_store::StoreError) -> ActivityError {
    if e.is_transient() { transient(e) } else { permanent(e.to_string()) }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginRunInput {
    pub run_id: RunId,
    pub execution_id: String,
    pub fired_at_ms: i64,
    pub input: RunInput,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BeginRunOutput {
    /// The definition at the pinned version when this run owns its generation; `None` when the
    /// run is a duplicate and must spawn nothing.
    pub spec: Option<Json>,
    #[serde(default)]
    pub generation: u32,
    /// 1, or more when a failed run is retried.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// `(template, index)` of tasks that succeeded in earlier attempts.
    #[serde(default)]
    pub succeeded: Vec<(String, u32)>,
    /// The run was cancelled by an operator and this execution is no retry of theirs: it ends
    /// cancelled too, so Temporal still admits the operator's retry later (a completed
    /// execution would block the run id).
    #[serde(default)]
    pub stays_cancelled: bool,
    /// Flow control (docs/flow-control.md): the run's limits with their keys evaluated, and
    /// what they decided when the run began. `None` for definitions without a flow_control
    /// block, which is every run recorded before it existed.
    #[serde(default)]
    pub admission: Option<Admission>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// A key or priority that could not be evaluated for this run: the run fails with it.
    #[serde(default)]
    pub flow_error: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveContextInput {
    pub run_id: RunId,
    pub spec: Json,
    pub event: Json,
    pub run: Json,
    /// The run's trace (the router's start span), so the context lookup joins it.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// The context and how each source was obtained (cache hits, time taken).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResolvedContext {
    pub values: Json,
    #[serde(default)]
    pub sources: Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanTasksInput {
    pub run_id: RunId,
    pub attempt: u32,
    pub spec: Json,
    pub event: Json,
    pub context: Json,
    /// Stored beside the context snapshot.
    #[serde(default)]
    pub context_sources: Json,
    pub run: Json,
    pub input: RunInput,
    /// `(template, index)` not to run again.
    pub skip: Vec<(String, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskExecution {
    pub output: Json,
    pub attempt: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkTaskInput {
    pub task_id: TaskId,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordResultInput {
    pub task: TaskInput,
    /// Final.
    pub status: TaskStatus,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub attempts: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitRunInput {
    pub run_id: RunId,
    pub definition_id: String,
    pub admission: Admission,
    /// When the run began waiting (workflow time), for the wait-time histogram.
    pub waiting_since_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TakeBudgetInput {
    pub task_id: TaskId,
    pub run_id: RunId,
    pub budget: String,
    /// The workflow that waits: the run for a task it executes itself, else the task's own.
    pub wake: String,
    /// When the task began waiting (workflow time); `None` on its first look.
    #[serde(default)]
    pub waiting_since_ms: Option<i64>,
}

/// One template of a run that unfolds (docs/steps.md), planned when what it runs after ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanStepInput {
    pub plan: PlanTasksInput,
    pub template: String,
    /// `tasks.<name>` of the templates it runs after.
    pub tasks: Json,
    /// Tasks the run planned before this template (the run's bound counts them all).
    pub planned: usize,
    /// Workflow time: what a `sleep ... for` counts from.
    pub now_ms: i64,
    /// Why the template is skipped (a template it runs after failed); it is recorded, not planned.
    #[serde(default)]
    pub skipped_because: Option<String>,
    /// The run's first template stores the context snapshot (the others see it in `plan`).
    #[serde(default)]
    pub stores_context: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlannedStep {
    pub tasks: Vec<TaskInput>,
    /// `(index, output)` of the template's tasks that succeeded in an earlier attempt of a
    /// retried run: not run again, but their outputs count.
    #[serde(default)]
    pub done: Vec<(u32, Json)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkWaitingInput {
    pub task_id: TaskId,
    pub waiting_for: String,
    pub until_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginWaitInput {
    pub task_id: TaskId,
    pub wait: waits::NewWait,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndWaitInput {
    pub wait_id: String,
    /// The step's timer fired (else the run took a delivery).
    pub timed_out: bool,
    /// For the metrics: the run's definition and when the wait began (workflow time).
    #[serde(default)]
    pub definition_id: String,
    #[serde(default)]
    pub since_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishRunInput {
    pub run_id: RunId,
    pub status: RunStatus,
}

#[activities]
impl RunActivities {
    /// Claims (definition, dedupe key) for this execution, records the run, and loads the
    /// definition at the version pinned by the router.
    #[activity(name = "BeginRun")]
    pub async fn begin_run(self: Arc<Self>, _ctx: ActivityContext, b: BeginRunInput) -> Result<BeginRunOutput, ActivityError> {
        let span = activity_span("BeginRun", &b.run_id, b.input.traceparent.as_deref());
        async move { self.begin(&b).await }.instrument(span).await
    }

    /// Resolves the definition's context sources in name order (later sources see earlier
    /// ones). It touches only the user's systems, so its retries are bounded separately from
    /// the bookkeeping's; the snapshot is stored by PlanTasks.
    #[activity(name = "ResolveContext")]
    pub async fn resolve_context(self: Arc<Self>, _ctx: ActivityContext, r: ResolveContextInput) -> Result<ResolvedContext, ActivityError> {
        let span = activity_span("ResolveContext", &r.run_id, r.traceparent.as_deref());
        async move {
            let definition = Definition::from_spec_json(r.spec).map_err(|e| permanent(e.to_string()))?;
            let resolved = self.sources.resolve(&definition, &r.event, &r.run).await.map_err(source_failure)?;
            Ok(ResolvedContext { values: resolved.values, sources: resolved.sources })
        }
        .instrument(span)
        .await
    }

    /// Evaluates the task templates and records the tasks. Planning runs here, not in workflow
    /// code, so its result is in the history: a replay on another worker never re-evaluates CEL
    /// (whose map comprehensions iterate in hash order).
    #[activity(name = "PlanTasks")]
    pub async fn plan_tasks(self: Arc<Self>, _ctx: ActivityContext, p: PlanTasksInput) -> Result<Vec<TaskInput>, ActivityError> {
        let span = activity_span("PlanTasks", &p.run_id, p.input.traceparent.as_deref());
        async move { self.plan(p).await }.instrument(span).await
    }

    /// Does the work of an `http` or `kafka` task. Its output becomes the result's output.
    #[activity(name = "ExecuteTask")]
    pub async fn execute_task(self: Arc<Self>, ctx: ActivityContext, t: TaskInput) -> Result<TaskExecution, ActivityError> {
        let attempt = ctx.info().attempt;
        let span = tracing::info_span!(
            "task",
            otel.name = format!("task {}", t.template),
            task_id = %t.task_id,
            task_type = %t.task_type,
            attempt,
            trace_id = trace_id(t.traceparent.as_deref())
        );
        tf_telemetry::trace::continue_trace(&span, t.traceparent.as_deref());
        // Heartbeats let Temporal notice a dead worker within the heartbeat timeout and run the
        // attempt elsewhere, instead of waiting for the task's whole timeout.
        let work = self.perform(&t).instrument(span);
        tokio::pin!(work);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        let output = loop {
            tokio::select! {
                out = &mut work => break out?,
                _ = beat.tick() => {
                    let _ = ctx.record_heartbeat(attempt).await;
                }
            }
        };
        Ok(TaskExecution { output, attempt })
    }

    #[activity(name = "MarkTask")]
    pub async fn mark_task(self: Arc<Self>, _ctx: ActivityContext, m: MarkTaskInput) -> Result<(), ActivityError> {
        tasks::set_task_status(&self.pool, &m.task_id, m.status).await.map_err(store_failure)
    }

    /// Finishes the task and queues exactly one result record in the outbox.
    #[activity(name = "RecordResult")]
    pub async fn record_result(self: Arc<Self>, _ctx: ActivityContext, r: RecordResultInput) -> Result<bool, ActivityError> {
        let span = activity_span("RecordResult", &r.task.run_id, r.task.traceparent.as_deref());
        async move { self.record(&r).await }.instrument(span).await
    }

    #[activity(name = "FinishRun")]
    pub async fn finish_run(self: Arc<Self>, _ctx: ActivityContext, f: FinishRunInput) -> Result<(), ActivityError> {
        let finished = runs::finish_run(&self.pool, &f.run_id, f.status).await.map_err(store_failure)?;
        if let Some((definition_id, seconds)) = finished.ended {
            self.metrics.run_finished(&definition_id, seconds);
        }
        tf_temporal::wake(&self.temporal, &finished.released.wake).await;
        Ok(())
    }

    /// Plans one template of a run that unfolds, or records it skipped.
    #[activity(name = "PlanStep")]
    pub async fn plan_step(self: Arc<Self>, _ctx: ActivityContext, p: PlanStepInput) -> Result<PlannedStep, ActivityError> {
        let span = activity_span("PlanStep", &p.plan.run_id, p.plan.input.traceparent.as_deref());
        async move { self.plan_one(p).await }.instrument(span).await
    }

    /// A sleep began: its task shows what it waits for until when.
    #[activity(name = "MarkWaiting")]
    pub async fn mark_waiting(self: Arc<Self>, _ctx: ActivityContext, m: MarkWaitingInput) -> Result<(), ActivityError> {
        tasks::set_waiting(&self.pool, &m.task_id, &m.waiting_for, m.until_ms).await.map_err(store_failure)
    }

    /// Records a wait for an event and looks back for one a router handled while it was being
    /// recorded; returns that delivery when there was one.
    #[activity(name = "BeginWait")]
    pub async fn begin_wait(self: Arc<Self>, _ctx: ActivityContext, b: BeginWaitInput) -> Result<Option<waits::Delivery>, ActivityError> {
        let w = &b.wait;
        let waiting_for = format!("{} key {}", w.event_type, w.match_key);
        tasks::set_waiting(&self.pool, &b.task_id, &waiting_for, w.until_ms).await.map_err(store_failure)?;
        self.open_wait(w).await
    }

    /// Ends a wait and returns the event it holds: the one it was told of, or, when its timeout
    /// came, one that claimed it first (it came in time); `None` when it timed out.
    #[activity(name = "EndWait")]
    pub async fn end_wait(self: Arc<Self>, _ctx: ActivityContext, e: EndWaitInput) -> Result<Option<waits::Delivery>, ActivityError> {
        let taken = if e.timed_out { waits::time_out(&self.pool, &e.wait_id).await } else { waits::take(&self.pool, &e.wait_id).await }
            .map_err(store_failure)?;
        let outcome = if taken.is_some() { "received" } else { "timed_out" };
        self.metrics.event_wait_ended(&e.definition_id, outcome, if e.since_ms > 0 { waited_seconds(e.since_ms) } else { 0.0 });
        Ok(taken)
    }

    /// Looks again whether a waiting run may execute (it was woken, or its timer fired).
    #[activity(name = "AdmitRun")]
    pub async fn admit_run(self: Arc<Self>, _ctx: ActivityContext, a: AdmitRunInput) -> Result<Verdict, ActivityError> {
        let verdict = self.admit(&a.run_id, &a.definition_id, &a.admission, &Json::Null).await?;
        if verdict == Verdict::Go {
            self.metrics.flow_waited(("definition", &a.definition_id), waited_seconds(a.waiting_since_ms));
        }
        Ok(verdict)
    }

    /// Takes a slot of the task template's shared budget, or queues for one.
    #[activity(name = "TakeBudget")]
    pub async fn take_budget(self: Arc<Self>, _ctx: ActivityContext, b: TakeBudgetInput) -> Result<Verdict, ActivityError> {
        let Some(&capacity) = self.budgets.get(&b.budget) else {
            let known = self.budgets.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(permanent(format!(
                "budget {:?} is not configured on this worker (TF_BUDGETS declares: {})",
                b.budget,
                if known.is_empty() { "none" } else { &known }
            )));
        };
        let verdict =
            flow::take_budget(&self.pool, &b.budget, capacity, b.task_id.as_str(), &b.run_id, &b.wake).await.map_err(store_failure)?;
        self.metrics.budget_verdict(&b.budget, &verdict);
        if let (Verdict::Go, Some(since)) = (&verdict, b.waiting_since_ms) {
            self.metrics.flow_waited(("budget", &b.budget), waited_seconds(since));
        }
        Ok(verdict)
    }
}

impl RunActivities {
    /// Asks the store whether the run may execute, wakes the batch owner its event filled, and
    /// cancels what a singleton replaces (their releases then wake this run). `event` is the
    /// run's event, which a batch gathers (null on a second look: it was taken on the first).
    async fn admit(&self, run_id: &RunId, definition_id: &str, admission: &Admission, event: &Json) -> Result<Verdict, ActivityError> {
        let admitted = flow::admit(&self.pool, run_id, definition_id, admission, event).await.map_err(store_failure)?;
        tf_temporal::wake(&self.temporal, &admitted.wake).await;
        for older in &admitted.cancel {
            let reason = format!("replaced by {run_id} (singleton)");
            if let Err(e) = tf_temporal::run_control::cancel_run(&self.temporal, older, RunStatus::Running, &reason).await {
                tracing::info!(run = %run_id, older = %older, error = %e, "cancelling a run the singleton replaces failed; the next look tries again");
            }
        }
        self.metrics.flow_verdict(definition_id, &admitted.verdict);
        Ok(admitted.verdict)
    }

    async fn record(&self, r: &RecordResultInput) -> Result<bool, ActivityError> {
        let t = &r.task;
        let record = TaskResult {
            task_id: t.task_id.clone(),
            run_id: t.run_id.clone(),
            definition_id: t.definition_id.clone(),
            definition_version: t.definition_version,
            template: t.template.clone(),
            task_type: t.task_type,
            status: r.status,
            output: r.output.as_ref().map(std::string::ToString::to_string),
            error: r.error.clone(),
            attempts: r.attempts as i32,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            trigger: t.trigger.clone(),
            truncated: false,
        };
        let record = serde_json::to_value(&record).map_err(permanent_display)?;
        let queued = outbox::record_result(
            &self.pool,
            &FinishedTask {
                task_id: &t.task_id,
                run_id: &t.run_id,
                status: r.status,
                output: r.output.as_ref(),
                error: r.error.as_deref(),
                attempts: r.attempts as i32,
                record: &record,
                // The result record continues the trace: its consumers can join it.
                traceparent: tf_telemetry::trace::traceparent(&tracing::Span::current(), t.traceparent.as_deref()).as_deref(),
            },
        )
        .await
        .map_err(store_failure)?;
        if queued {
            self.metrics.task_finished(&t.definition_id, (r.finished_at_ms - r.started_at_ms).max(0) as f64 / 1000.0);
        }
        if t.budget.is_some() {
            let released = flow::release_task(&self.pool, t.task_id.as_str()).await.map_err(store_failure)?;
            tf_temporal::wake(&self.temporal, &released.wake).await;
        }
        Ok(queued)
    }

    async fn begin(&self, b: &BeginRunInput) -> Result<BeginRunOutput, ActivityError> {
        let i = &b.input;
        let stored = tf_store::definitions::get(&self.pool, &i.definition_id, Some(i.definition_version))
            .await
            .map_err(store_failure)?
            .ok_or_else(|| permanent(format!("definition {} v{} does not exist", i.definition_id, i.definition_version)))?;
        let event_time_ms = i.event_time_ms.or(i.trigger.scheduled_for_ms).unwrap_or(b.fired_at_ms);
        let input_json = serde_json::to_value(i).ok();
        let claim = runs::begin_run(
            &self.pool,
            &BeginRun {
                run_id: &b.run_id,
                execution_id: &b.execution_id,
                definition_id: &i.definition_id,
                definition_version: i.definition_version,
                dedupe_key: &i.dedupe_key,
                generation: (i.generation > 0).then_some(i.generation),
                event_time_ms,
                dedupe_window: Duration::from_secs(i.dedupe_window_secs.max(1)),
                fired_at_ms: b.fired_at_ms,
                traceparent: i.traceparent.as_deref(),
                source: &i.trigger,
                input: input_json.as_ref(),
                operator_retry: i.operator_retry,
            },
        )
        .await
        .map_err(store_failure)?;
        Ok(match claim {
            Claim::Claimed { generation, attempt, succeeded } => {
                if attempt > 1 {
                    tracing::info!(run = %b.run_id, attempt, skipped = succeeded.len(), "failed run retried");
                }
                let mut out = BeginRunOutput { spec: None, generation, attempt, succeeded, stays_cancelled: false, ..Default::default() };
                if stored.spec.get("flow_control").is_some() {
                    let definition = Definition::from_spec_json(stored.spec.clone()).map_err(|e| permanent(e.to_string()))?;
                    let bindings = Bindings { event: i.event.as_deref().cloned().unwrap_or(Json::Null), ..Default::default() };
                    match definition.flow_control.admission(&bindings, event_time_ms) {
                        Ok(admission) => {
                            let verdict = self.admit(&b.run_id, &i.definition_id, &admission, &bindings.event).await?;
                            out.admission = Some(admission);
                            out.verdict = Some(verdict);
                        }
                        Err(e) => out.flow_error = Some(e.to_string()),
                    }
                }
                if stored.spec.get("cancel_on").is_some() {
                    self.register_cancel_on(b, &stored.spec).await?;
                }
                out.spec = Some(stored.spec);
                out
            }
            Claim::HeldBy { run_id } => {
                tracing::info!(run = %b.run_id, held_by = %run_id, "generation already has a run: deduplicated");
                BeginRunOutput {
                    spec: None,
                    generation: 0,
                    attempt: 1,
                    succeeded: Vec::new(),
                    stays_cancelled: false,
                    ..Default::default()
                }
            }
            Claim::StaysCancelled => {
                tracing::info!(run = %b.run_id, "run was cancelled by an operator; only an operator's retry resumes it");
                BeginRunOutput { spec: None, generation: 0, attempt: 1, succeeded: Vec::new(), stays_cancelled: true, ..Default::default() }
            }
        })
    }

    async fn plan(&self, p: PlanTasksInput) -> Result<Vec<TaskInput>, ActivityError> {
        let definition = Definition::from_spec_json(p.spec.clone()).map_err(|e| permanent(e.to_string()))?;
        let sources = (!p.context_sources.is_null()).then_some(&p.context_sources);
        runs::set_context(&self.pool, &p.run_id, &p.context, sources).await.map_err(store_failure)?;
        let bindings = self.bindings(&definition, &p, Json::Null).await?;
        let planned =
            definition.plan_tasks(&task_prefix(&p), &bindings).map_err(|e| permanent(self.sources.secrets().redact(&e.to_string())))?;
        let tasks: Vec<TaskInput> = planned.into_iter().filter(|t| !ran_before(&p, t)).map(|t| task_input(&p, t)).collect();
        self.record_planned(&p, &tasks).await?;
        Ok(tasks)
    }

    /// What a run's templates see; a batched run's tasks see its batch's events, read here so
    /// the plan (and with it what the tasks saw) is in the run's history.
    async fn bindings(&self, definition: &Definition, p: &PlanTasksInput, tasks: Json) -> Result<Bindings, ActivityError> {
        let events = if definition.flow_control.batch.is_some() {
            flow::batch_events(&self.pool, &p.run_id).await.map_err(store_failure)?.unwrap_or(Json::Null)
        } else {
            Json::Null
        };
        Ok(Bindings { event: p.event.clone(), context: p.context.clone(), run: p.run.clone(), events, tasks, ..Bindings::default() })
    }

    async fn record_planned(&self, p: &PlanTasksInput, tasks: &[TaskInput]) -> Result<(), ActivityError> {
        let rows: Vec<NewTask<'_>> = tasks
            .iter()
            .map(|t| NewTask {
                task_id: &t.task_id,
                run_attempt: p.attempt as i32,
                template: &t.template,
                index: t.index as i32,
                task_type: t.task_type,
                params: &t.params,
            })
            .collect();
        tasks::record_tasks(&self.pool, &p.run_id, &rows).await.map_err(store_failure)
    }

    async fn plan_one(&self, s: PlanStepInput) -> Result<PlannedStep, ActivityError> {
        let p = &s.plan;
        let definition = Definition::from_spec_json(p.spec.clone()).map_err(|e| permanent(e.to_string()))?;
        let Some(template) = definition.tasks.iter().find(|t| t.name == s.template) else {
            return Err(permanent(format!("the definition has no task template {:?}", s.template)));
        };
        let prefix = task_prefix(p);
        if let Some(why) = &s.skipped_because {
            let task_id = prefix.task(&template.name, 0);
            let row = NewTask {
                task_id: &task_id,
                run_attempt: p.attempt as i32,
                template: &template.name,
                index: 0,
                task_type: template.task_type,
                params: &Json::Null,
            };
            tasks::record_skipped(&self.pool, &p.run_id, &row, why).await.map_err(store_failure)?;
            return Ok(PlannedStep::default());
        }
        if s.stores_context {
            let sources = (!p.context_sources.is_null()).then_some(&p.context_sources);
            runs::set_context(&self.pool, &p.run_id, &p.context, sources).await.map_err(store_failure)?;
        }
        let bindings = self.bindings(&definition, p, s.tasks.clone()).await?;
        let planned = definition
            .plan_template(&s.template, &prefix, &bindings, s.planned, s.now_ms)
            .map_err(|e| permanent(self.sources.secrets().redact(&e.to_string())))?;
        let done_indexes: Vec<u32> = planned.iter().filter(|t| ran_before(p, t)).map(|t| t.index).collect();
        let tasks: Vec<TaskInput> = planned.into_iter().filter(|t| !ran_before(p, t)).map(|t| task_input(p, t)).collect();
        self.record_planned(p, &tasks).await?;
        let done = if done_indexes.is_empty() {
            Vec::new()
        } else {
            tasks::succeeded_outputs(&self.pool, &p.run_id, &s.template)
                .await
                .map_err(store_failure)?
                .into_iter()
                .filter(|(i, _)| done_indexes.contains(i))
                .collect()
        };
        Ok(PlannedStep { tasks, done })
    }

    /// Records the run's `cancel_on` entries as waits the router delivers to by cancelling the
    /// run. An entry whose key this event cannot give is left out, with a warning: nothing could
    /// match it.
    async fn register_cancel_on(&self, b: &BeginRunInput, spec: &Json) -> Result<(), ActivityError> {
        let definition = Definition::from_spec_json(spec.clone()).map_err(|e| permanent(e.to_string()))?;
        let i = &b.input;
        let bindings = Bindings {
            event: i.event.as_deref().cloned().unwrap_or(Json::Null),
            run: json!({"id": b.run_id, "definition_id": i.definition_id, "definition_version": i.definition_version,
                        "dedupe_key": i.dedupe_key, "trigger": i.trigger}),
            ..Default::default()
        };
        for (n, m) in definition.cancel_on.iter().enumerate() {
            let match_key = match m.run_key(&bindings) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(run = %b.run_id, error = %e, "cancel_on[{n}] has no key for this run; no event can cancel it that way");
                    continue;
                }
            };
            let wait = waits::NewWait {
                wait_id: format!("{}/cancel_on/{n}", b.run_id),
                kind: waits::WaitKind::Cancel,
                run_id: b.run_id.clone(),
                event_type: m.event_type.clone(),
                topics: m.topics.clone(),
                incoming: m.incoming.source().to_string(),
                matcher: m.matcher(),
                match_key,
                since_ms: b.fired_at_ms,
                until_ms: None,
            };
            if let Some(d) = self.open_wait(&wait).await? {
                let reason = waits::cancel_reason(&d.event, &d.source);
                if let Err(e) = tf_temporal::run_control::cancel_run(&self.temporal, b.run_id.as_str(), RunStatus::Running, &reason).await {
                    return Err(transient(e));
                }
            }
        }
        Ok(())
    }

    /// Records a wait and delivers to it an event that a router remembered while it began.
    async fn open_wait(&self, w: &waits::NewWait) -> Result<Option<waits::Delivery>, ActivityError> {
        waits::begin(&self.pool, w).await.map_err(store_failure)?;
        let incoming = tf_definitions::Expr::compile("match.incoming", &w.incoming).map_err(|e| permanent(e.message))?;
        for (event, source) in waits::recent_events(&self.pool, w).await.map_err(store_failure)? {
            let key = tf_definitions::steps::incoming_key(&incoming, &tf_definitions::Scope::for_event(&event));
            if key.as_deref() == Some(w.match_key.as_str()) {
                waits::claim(&self.pool, &w.wait_id, &event, &source).await.map_err(store_failure)?;
                break;
            }
        }
        waits::delivery(&self.pool, &w.wait_id).await.map_err(store_failure)
    }

    async fn perform(&self, t: &TaskInput) -> Result<Json, ActivityError> {
        // What the task hands on is its own span, so the receiving system continues the trace.
        let traceparent = tf_telemetry::trace::traceparent(&tracing::Span::current(), t.traceparent.as_deref());
        let output = match t.task_type {
            TaskType::Kafka => {
                let p = KafkaParams::parse(&t.params).map_err(permanent_display)?;
                let value = serde_json::to_vec(&p.value).map_err(permanent_display)?;
                let mut headers = OwnedHeaders::new().insert(Header { key: "taskfactory.task_id", value: Some(t.task_id.as_str()) });
                if let Some(tp) = &traceparent {
                    headers = headers.insert(Header { key: "traceparent", value: Some(tp) });
                }
                let mut record = FutureRecord::to(&p.topic).payload(&value).headers(headers);
                let key = p.key_text();
                if let Some(k) = &key {
                    record = record.key(k);
                }
                let delivery = self
                    .producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| transient(format!("producing to {}: {e}", p.topic)))?;
                json!({"topic": p.topic, "partition": delivery.partition, "offset": delivery.offset})
            }
            TaskType::Http => {
                let p = HttpParams::parse(&t.params).map_err(permanent_display)?;
                let mut headers = vec![("x-taskfactory-task-id".to_string(), t.task_id.to_string())];
                if let Some(tp) = &traceparent {
                    headers.push(("traceparent".into(), tp.clone()));
                }
                headers.extend(p.headers.iter().flatten().map(|(k, v)| (k.clone(), header_text(v.clone()))));
                let body = match (&p.body, &p.text) {
                    (Some(body), _) => Some(Body::Json(body.clone())),
                    (None, Some(text)) => Some(Body::Text(text.clone())),
                    (None, None) => None,
                };
                let expect = p.expect.clone().unwrap_or_default();
                let call = HttpCall {
                    what: "http task",
                    datasource: p.datasource.as_deref(),
                    method: p.method(),
                    url: &p.url,
                    headers,
                    body,
                    // The request gets the task's own timeout, less a moment to report back.
                    timeout: Some(Duration::from_millis(t.timeout_ms.saturating_sub(500).max(100))),
                    expect: &expect,
                };
                let answer = self.sources.call(call).await.map_err(source_failure)?;
                json!({"status": answer.status, "body": answer.body})
            }
            other @ (TaskType::Human | TaskType::Workflow | TaskType::Sleep | TaskType::WaitForEvent) => {
                return Err(permanent(format!("task type {other} is not executed by ExecuteTask")));
            }
        };
        Ok(output)
    }
}

/// The span of one activity attempt, a child of the run's trace.
fn activity_span(name: &'static str, run_id: &RunId, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("activity", otel.name = name, run_id = %run_id, trace_id = trace_id(traceparent));
    tf_telemetry::trace::continue_trace(&span, traceparent);
    span
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), for log spans.
fn trace_id(traceparent: Option<&str>) -> &str {
    traceparent.and_then(|tp| tp.split('-').nth(1)).unwrap_or("")
}

fn permanent_display(e: impl std::fmt::Display) -> ActivityError {
    permanent(e.to_string())
}

/// Whether the task succeeded in an earlier attempt of a retried run (it is not run again).
fn ran_before(p: &PlanTasksInput, t: &tf_definitions::PlannedTask) -> bool {
    p.skip.iter().any(|(template, index)| *template == t.template && *index == t.index)
}

/// A retried run's tasks get their own ids, so each attempt has its own results.
fn task_prefix(p: &PlanTasksInput) -> RunId {
    if p.attempt > 1 { RunId::from_workflow_id(format!("{}/attempt-{}", p.run_id, p.attempt)) } else { p.run_id.clone() }
}

fn task_input(p: &PlanTasksInput, t: tf_definitions::PlannedTask) -> TaskInput {
    let i = &p.input;
    TaskInput {
        task_id: t.task_id,
        run_id: p.run_id.clone(),
        definition_id: i.definition_id.clone(),
        definition_version: i.definition_version,
        template: t.template,
        index: t.index,
        task_type: t.task_type,
        params: t.params,
        max_attempts: t.retry.max_attempts,
        initial_interval_ms: t.retry.initial_interval.as_millis() as u64,
        max_interval_ms: t.retry.max_interval.as_millis() as u64,
        backoff: t.retry.backoff,
        timeout_ms: t.timeout.as_millis() as u64,
        trigger: i.trigger.clone(),
        traceparent: i.traceparent.clone(),
        human_timeout_ms: t.human_timeout.map(|d| d.as_millis() as u64),
        complete_on_timeout: t.on_timeout == tf_definitions::OnTimeout::Complete,
        timeout_output: t.timeout_output,
        execution: t.execution,
        budget: t.budget,
    }
}
