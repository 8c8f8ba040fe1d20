//! How one task executes and is recorded, in whichever workflow runs it: a RunTask child, or
//! the run itself for `execution: activity` tasks, sleeps and waits for events. Also the
//! options and helpers every workflow step shares. Deterministic: times are workflow time and
//! every side effect is an activity.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use serde_json::{Value as Json, json};
use temporalio_common::RetryPolicy;
use temporalio_common::protos::temporal::api::failure::v1::Failure;
use temporalio_sdk::{
    ActivityOptions, CancellableFuture, LocalActivityOptions, WorkflowCancellationToken, WorkflowContext, WorkflowTermination,
};
use tf_definitions::TaskStatus;
use tf_store::flow::Verdict;
use tf_store::waits::{NewWait, WaitKind};
use tf_temporal::TaskInput;

use crate::activities::{BeginWaitInput, EndWaitInput, MarkWaitingInput, RecordResultInput, RunActivities, TakeBudgetInput};

/// Awaits every future, polled in order with the workflow's own waker, and returns their
/// outputs in order. `futures::future::join_all` polls more than 30 futures through a
/// `FuturesOrdered`, whose wakers the SDK refuses as nondeterministic (TMPRL1100): a run with
/// 31 inline tasks never got past its first workflow task.
pub(crate) async fn join_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future is ready")).collect()
}

/// A workflow that can be told an event was delivered to one of its waits (`deliver-event`).
pub(crate) trait Told {
    fn told(&self, wait_id: &str) -> bool;
}

pub(crate) fn millis(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64)
}

/// The innermost message of a failure chain: what the activity said, not "Activity task
/// failed".
pub(crate) fn root_cause(failure: Option<&Failure>) -> Option<String> {
    let mut f = failure?;
    while let Some(cause) = f.cause.as_deref() {
        f = cause;
    }
    Some(f.message.clone())
}

pub(crate) fn patient_retries() -> RetryPolicy {
    RetryPolicy::builder().initial_interval(Duration::from_millis(200)).maximum_interval(Duration::from_secs(10)).build()
}

/// Bookkeeping that touches only PostgreSQL runs as local activities: no task-queue round trip
/// per step, which is most of a run's cost on a small Temporal.
pub(crate) fn local_opts() -> LocalActivityOptions {
    LocalActivityOptions::builder().start_to_close_timeout(Duration::from_secs(30)).retry_policy(patient_retries()).build()
}

/// For the bookkeeping that must still happen once the run or task is cancelled (recording
/// that it was): detached from the workflow's cancellation, which would cancel it at once.
pub(crate) fn closing_opts() -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(patient_retries())
        .cancellation_token(WorkflowCancellationToken::new())
        .build()
}

/// Why the workflow was cancelled, for the task's error and the run's record.
pub(crate) fn cancelled_because(reason: Option<String>) -> String {
    match reason.filter(|r| !r.is_empty()) {
        Some(r) => format!("cancelled: {r}"),
        None => "cancelled".into(),
    }
}

/// How long a flow-control waiter sleeps before it looks again without being woken: the net
/// under a lost wake-up (a releaser that died between freeing a slot and signalling).
pub(crate) const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// A workflow that can wait for a flow-control wake-up.
pub(crate) trait Wakes {
    fn wakes(&self) -> u32;
}

/// Sleeps until woken, `after` passes or the workflow is cancelled. A timer that did not fire is
/// cancelled (one history event), or it would fire later into a run that is executing by then
/// and cost a workflow task.
pub(crate) async fn sleep_until_woken<W: Wakes>(ctx: &WorkflowContext<W>, after: Duration) {
    let seen = ctx.state(Wakes::wakes);
    let mut timer = std::pin::pin!(ctx.timer(after));
    let mut woken = std::pin::pin!(ctx.wait_condition(move |s| s.wakes() != seen));
    let fired = temporalio_sdk::workflows::select! {
        _ = woken.as_mut() => false,
        _ = timer.as_mut() => true,
    };
    if !fired {
        timer.cancel();
    }
}

/// Holds a task until its shared budget has a slot for it. `wake` is the workflow that waits
/// (the run, or the task's own workflow). An error is the task's failure (an undeclared budget).
pub(crate) async fn take_budget<W: Wakes>(ctx: &WorkflowContext<W>, task: &TaskInput, budget: &str, wake: &str) -> Result<(), String> {
    let mut take = TakeBudgetInput {
        task_id: task.task_id.clone(),
        run_id: task.run_id.clone(),
        budget: budget.to_string(),
        wake: wake.to_string(),
        waiting_since_ms: None,
    };
    loop {
        match ctx.execute_local_activity(RunActivities::take_budget, take.clone(), local_opts()).await {
            Ok(Verdict::Go) => return Ok(()),
            Ok(_) => {
                take.waiting_since_ms.get_or_insert(millis(ctx.workflow_time()));
                sleep_until_woken(ctx, LOOK_AGAIN).await;
                if ctx.cancellation_token().is_cancelled() {
                    return Err(cancelled_because(ctx.cancellation_token().reason()));
                }
            }
            Err(e) => return Err(format!("budget {budget}: {}", cause(&e))),
        }
    }
}

/// What a failed step says: the innermost cause, not "Activity task failed".
pub(crate) fn cause(e: &temporalio_sdk::ActivityExecutionError) -> String {
    root_cause(e.failure()).unwrap_or_else(|| e.to_string())
}

/// How a task ended, before it is recorded.
pub(crate) struct Outcome {
    pub(crate) status: TaskStatus,
    pub(crate) output: Option<Json>,
    pub(crate) error: Option<String>,
    pub(crate) attempts: u32,
}

impl Outcome {
    pub(crate) fn succeeded(output: Json, attempts: u32) -> Outcome {
        Outcome { status: TaskStatus::Succeeded, output: Some(output), error: None, attempts }
    }

    pub(crate) fn ended(status: TaskStatus, error: String, attempts: u32) -> Outcome {
        Outcome { status, output: None, error: Some(error), attempts }
    }
}

/// Does an `http` or `kafka` task with its template's retries, holding its shared budget (if
/// any) from before the first attempt until its outcome is recorded. `wake` is the workflow
/// executing it.
pub(crate) async fn execute_task<W: Wakes>(ctx: &WorkflowContext<W>, task: &TaskInput, wake: &str) -> Outcome {
    if let Some(budget) = &task.budget
        && let Err(why) = take_budget(ctx, task, budget, wake).await
    {
        let status = if ctx.cancellation_token().is_cancelled() { TaskStatus::Cancelled } else { TaskStatus::Failed };
        return Outcome::ended(status, why, 0);
    }
    let opts = ActivityOptions::with_start_to_close_timeout(Duration::from_millis(task.timeout_ms))
        .heartbeat_timeout(crate::activities::HEARTBEAT_EVERY * 5)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(task.initial_interval_ms))
                .maximum_interval(Duration::from_millis(task.max_interval_ms))
                .backoff_coefficient(task.backoff)
                .maximum_attempts(task.max_attempts)
                .build(),
        )
        .build();
    match ctx.execute_activity(RunActivities::execute_task, task.clone(), opts).await {
        Ok(done) => Outcome::succeeded(done.output, done.attempt),
        Err(e) => Outcome::ended(TaskStatus::Failed, root_cause(e.failure()).unwrap_or_else(|| e.to_string()), task.max_attempts),
    }
}

/// Records a task's outcome (its row and exactly one result); whatever failed because of a
/// cancel request counts as cancelled. Returns the status recorded and the output.
pub(crate) async fn record_outcome<W>(
    ctx: &WorkflowContext<W>,
    task: &TaskInput,
    started_at_ms: i64,
    Outcome { status, output, error, attempts }: Outcome,
) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    let cancelled = ctx.cancellation_token().is_cancelled() && status != TaskStatus::Succeeded;
    let (status, error) =
        if cancelled { (TaskStatus::Cancelled, Some(cancelled_because(ctx.cancellation_token().reason()))) } else { (status, error) };
    let finished_at_ms = millis(ctx.workflow_time());
    ctx.execute_local_activity(
        RunActivities::record_result,
        RecordResultInput { task: task.clone(), status, output: output.clone(), error, attempts, started_at_ms, finished_at_ms },
        closing_opts(),
    )
    .await?;
    Ok((status, output))
}

/// A `sleep` step: a timer to the instant its plan fixed.
pub(crate) async fn sleep<W>(ctx: &WorkflowContext<W>, task: &TaskInput) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    let started_at_ms = millis(ctx.workflow_time());
    let until_ms = task.params["until_ms"].as_i64().unwrap_or(started_at_ms);
    let mark = MarkWaitingInput { task_id: task.task_id.clone(), waiting_for: "sleep".into(), until_ms: Some(until_ms) };
    ctx.execute_local_activity(RunActivities::mark_waiting, mark, local_opts()).await?;
    if until_ms > started_at_ms {
        // A cancel request ends the timer too.
        ctx.timer(Duration::from_millis((until_ms - started_at_ms) as u64)).await;
    }
    let outcome = if ctx.cancellation_token().is_cancelled() {
        Outcome::ended(TaskStatus::Cancelled, cancelled_because(ctx.cancellation_token().reason()), 1)
    } else {
        Outcome::succeeded(json!({"slept_until_ms": until_ms}), 1)
    };
    record_outcome(ctx, task, started_at_ms, outcome).await
}

/// Waits for the event the step's params describe (planned: type, topics, the run's key, the
/// incoming expression) until its timeout. The store decides which event counts (the first
/// whose record timestamp is at or after the wait's start); the signal only carries it here.
pub(crate) async fn wait_for_event<W: Told>(
    ctx: &WorkflowContext<W>,
    task: &TaskInput,
) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    let since_ms = millis(ctx.workflow_time());
    let timeout = Duration::from_millis(task.human_timeout_ms.unwrap_or_default());
    let p = &task.params;
    let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    let incoming = text("incoming");
    let wait = NewWait {
        wait_id: task.task_id.to_string(),
        kind: WaitKind::Step,
        run_id: task.run_id.clone(),
        event_type: text("type"),
        topics: p["topics"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(String::from)).collect()).unwrap_or_default(),
        matcher: tf_definitions::steps::matcher_of(&incoming),
        incoming,
        match_key: text("key"),
        since_ms,
        until_ms: Some(since_ms + timeout.as_millis() as i64),
    };
    let wait_id = wait.wait_id.clone();
    let event_type = wait.event_type.clone();
    let found =
        ctx.execute_local_activity(RunActivities::begin_wait, BeginWaitInput { task_id: task.task_id.clone(), wait }, local_opts()).await?;
    let told = found.is_some() || {
        let id = wait_id.clone();
        let mut timer = std::pin::pin!(ctx.timer(timeout));
        let mut delivered = std::pin::pin!(ctx.wait_condition(move |s| s.told(&id)));
        let fired = temporalio_sdk::workflows::select! {
            _ = delivered.as_mut() => false,
            _ = timer.as_mut() => true,
        };
        if !fired {
            timer.cancel();
        }
        ctx.state(|s| s.told(&wait_id))
    };
    // The event is taken from the store (the signal only names the wait, so a large event never
    // rides on it); a timeout still takes an event that claimed the wait first.
    let delivery = if told || !ctx.cancellation_token().is_cancelled() {
        let end = EndWaitInput { wait_id, timed_out: !told, definition_id: task.definition_id.clone(), since_ms };
        ctx.execute_local_activity(RunActivities::end_wait, end, closing_opts()).await?
    } else {
        None
    };
    let outcome = match delivery {
        Some(d) => Outcome::succeeded(d.event, 1),
        None if ctx.cancellation_token().is_cancelled() => {
            Outcome::ended(TaskStatus::Cancelled, cancelled_because(ctx.cancellation_token().reason()), 1)
        }
        None if task.complete_on_timeout => Outcome::succeeded(task.timeout_output.clone().unwrap_or(Json::Null), 1),
        None => Outcome::ended(
            TaskStatus::Failed,
            format!("no {event_type} event matched within {} (on_timeout: fail)", tf_definitions::duration::format(timeout)),
            1,
        ),
    };
    record_outcome(ctx, task, since_ms, outcome).await
}
