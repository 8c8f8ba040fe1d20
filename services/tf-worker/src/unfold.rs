//! The RunActivity path of a run that unfolds (docs/steps.md): each template is planned when
//! every template it runs after has ended, with their outcomes as `tasks.<name>`; sleeps are
//! timers and event waits are timers raced with a delivery signal, all in the run's history.
//! Runs of definitions without steps never come here, so their histories are as before.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use serde_json::{Value as Json, json};
use temporalio_sdk::{CancellableFuture, ChildWorkflowOptions, WorkflowContext, WorkflowTermination};
use tf_definitions::steps::{StepView, tasks_binding};
use tf_definitions::{Definition, Execution, RunId, TaskStatus, TaskType};
use tf_store::waits::{NewWait, WaitKind};
use tf_temporal::TaskInput;

use crate::activities::{BeginWaitInput, EndWaitInput, MarkWaitingInput, PlanStepInput, PlanTasksInput, RunActivities};
use crate::workflows::{
    Outcome, RunActivityWorkflow, RunTaskWorkflow, cancelled_because, cause, closing_opts, local_opts, millis, record_outcome,
    run_task_inline, stop_or_fail,
};

/// A template being planned or executed.
type Running<'a> = Pin<Box<dyn Future<Output = Result<TemplateEnd, WorkflowTermination>> + 'a>>;

/// One template's end: its view for the templates after it, and its counts for the run.
struct TemplateEnd {
    name: String,
    view: StepView,
    spawned: u32,
    failed: u32,
}

/// Runs the templates as their `after` allows, side by side where it does. Returns how many
/// tasks were spawned and how many did not succeed (a skipped task counts as neither).
pub(crate) async fn run_steps(
    ctx: &WorkflowContext<RunActivityWorkflow>,
    run_id: &RunId,
    definition: &Definition,
    plan: PlanTasksInput,
) -> Result<(u32, u32), WorkflowTermination> {
    let mut views: BTreeMap<String, StepView> = BTreeMap::new();
    let mut started: BTreeSet<&str> = BTreeSet::new();
    // Polled by hand with the workflow's own waker: a FuturesUnordered wakes its futures through
    // wakers of its own, which the SDK refuses as nondeterministic.
    let mut running: Vec<Running<'_>> = Vec::new();
    let (mut spawned, mut failed) = (0u32, 0u32);
    loop {
        // Definition order among the templates that became due together: the same on replay.
        for t in &definition.tasks {
            if started.contains(t.name.as_str()) || !t.after.iter().all(|d| views.contains_key(d)) {
                continue;
            }
            started.insert(&t.name);
            let ancestors = ancestors(definition, &t.name);
            let seen: BTreeMap<String, StepView> =
                views.iter().filter(|(k, _)| ancestors.contains(k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
            let blocked = t.after.iter().find(|d| views.get(*d).is_some_and(StepView::blocks));
            let skipped_because = match blocked {
                Some(d) if !t.always => Some(format!("skipped: {d} {}", views[d].status)),
                _ if ctx.cancellation_token().is_cancelled() => Some(cancelled_because(ctx.cancellation_token().reason())),
                _ => None,
            };
            let step = PlanStepInput {
                plan: plan.clone(),
                template: t.name.clone(),
                tasks: tasks_binding(&seen),
                planned: spawned as usize,
                now_ms: millis(ctx.workflow_time()),
                skipped_because,
            };
            running.push(Box::pin(run_template(ctx.clone(), run_id.clone(), step, t.for_each.is_some())));
        }
        if running.is_empty() {
            break;
        }
        let ended = std::future::poll_fn(|cx| {
            let mut ended = Vec::new();
            let mut i = 0;
            while i < running.len() {
                match running[i].as_mut().poll(cx) {
                    Poll::Ready(end) => {
                        drop(running.remove(i));
                        ended.push(end);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if ended.is_empty() { Poll::Pending } else { Poll::Ready(ended) }
        })
        .await;
        for end in ended {
            let end = end?;
            spawned += end.spawned;
            failed += end.failed;
            views.insert(end.name, end.view);
        }
    }
    Ok((spawned, failed))
}

/// Every template `name` runs after, directly or not.
fn ancestors<'a>(definition: &'a Definition, name: &str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        if let Some(t) = definition.tasks.iter().find(|t| t.name == n) {
            for d in &t.after {
                if seen.insert(d.as_str()) {
                    todo.push(d.clone());
                }
            }
        }
    }
    seen
}

async fn run_template(
    ctx: WorkflowContext<RunActivityWorkflow>,
    run_id: RunId,
    step: PlanStepInput,
    for_each: bool,
) -> Result<TemplateEnd, WorkflowTermination> {
    let name = step.template.clone();
    let skipped = step.skipped_because.is_some();
    let planned = match ctx.execute_local_activity(RunActivities::plan_step, step, local_opts()).await {
        Ok(p) => p,
        Err(e) => return Err(stop_or_fail(&ctx, &run_id, format!("planning {name}: {}", cause(&e))).await),
    };
    if skipped {
        return Ok(TemplateEnd { name, view: StepView::skipped(), spawned: 0, failed: 0 });
    }
    let mut ended: Vec<(u32, bool, Json)> = planned.done.iter().map(|(i, o)| (*i, true, o.clone())).collect();
    let spawned = planned.tasks.len() as u32;
    let mut children = Vec::new();
    let mut inline = Vec::new();
    for t in &planned.tasks {
        if t.execution == Execution::Child {
            let child =
                ctx.start_child_workflow(RunTaskWorkflow::run, t.clone(), ChildWorkflowOptions::workflow_id(t.task_id.to_string())).await?;
            children.push((t.index, child));
        } else {
            inline.push(run_inline(ctx.clone(), t.clone()));
        }
    }
    for (task, outcome) in planned.tasks.iter().filter(|t| t.execution != Execution::Child).zip(futures::future::join_all(inline).await) {
        let (status, output) = outcome?;
        ended.push((task.index, status == TaskStatus::Succeeded, output.unwrap_or(Json::Null)));
    }
    for (index, child) in children {
        match child.result().await {
            Ok(c) => ended.push((index, c.status == TaskStatus::Succeeded, c.output.unwrap_or(Json::Null))),
            Err(_) => ended.push((index, false, Json::Null)),
        }
    }
    let failed = ended.iter().filter(|e| !e.1).count() as u32;
    Ok(TemplateEnd { name, view: StepView::of(for_each, &ended), spawned, failed })
}

/// A task the run executes itself: a sleep, a wait, or an `http`/`kafka` activity.
async fn run_inline(ctx: WorkflowContext<RunActivityWorkflow>, task: TaskInput) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
    match task.task_type {
        TaskType::Sleep => sleep(&ctx, &task).await,
        TaskType::WaitForEvent => wait_for_event(&ctx, &task).await,
        _ => run_task_inline(ctx, task).await,
    }
}

async fn sleep(ctx: &WorkflowContext<RunActivityWorkflow>, task: &TaskInput) -> Result<(TaskStatus, Option<Json>), WorkflowTermination> {
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
async fn wait_for_event(
    ctx: &WorkflowContext<RunActivityWorkflow>,
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
        let mut delivered = std::pin::pin!(ctx.wait_condition(move |s| s.deliveries.contains_key(&id)));
        let fired = temporalio_sdk::workflows::select! {
            _ = delivered.as_mut() => false,
            _ = timer.as_mut() => true,
        };
        if !fired {
            timer.cancel();
        }
        ctx.state(|s| s.deliveries.contains_key(&wait_id))
    };
    // The event is taken from the store (the signal only names the wait, so a large event never
    // rides on it); a timeout still takes an event that claimed the wait first.
    let delivery = if told || !ctx.cancellation_token().is_cancelled() {
        let end = EndWaitInput { wait_id, timed_out: !told };
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
