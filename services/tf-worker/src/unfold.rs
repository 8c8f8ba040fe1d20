//! The order of a run that unfolds (docs/steps.md): each template starts when every template it
//! runs after has ended, side by side where `after` allows, with their outcomes as
//! `tasks.<name>`. What starting a template does (planning it, running its tasks) is the
//! workflow's; this is only the graph. Runs of definitions without steps never come here, so
//! their histories are as before.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use temporalio_sdk::{WorkflowContext, WorkflowTermination};
use tf_definitions::Definition;
use tf_definitions::steps::{StepView, tasks_binding};

use crate::activities::{PlanStepInput, PlanTasksInput};
use crate::task_path::{cancelled_because, millis};

/// A template being planned or executed.
type Running<'a> = Pin<Box<dyn Future<Output = Result<TemplateEnd, WorkflowTermination>> + 'a>>;

/// One template's end: its view for the templates after it, and its counts for the run.
pub(crate) struct TemplateEnd {
    pub(crate) name: String,
    pub(crate) view: StepView,
    pub(crate) spawned: u32,
    pub(crate) failed: u32,
}

/// Starts the templates as their `after` allows, side by side where it does; `start` plans
/// one (or records it skipped, as its input says) and runs its tasks. Returns how many tasks
/// were spawned and how many did not succeed (a skipped task counts as neither).
pub(crate) async fn run_steps<'a, W, F, Fut>(
    ctx: &WorkflowContext<W>,
    definition: &'a Definition,
    plan: PlanTasksInput,
    start: F,
) -> Result<(u32, u32), WorkflowTermination>
where
    F: Fn(PlanStepInput, bool) -> Fut,
    Fut: Future<Output = Result<TemplateEnd, WorkflowTermination>> + 'a,
{
    let mut views: BTreeMap<String, StepView> = BTreeMap::new();
    let mut started: BTreeSet<&'a str> = BTreeSet::new();
    // Polled by hand with the workflow's own waker: a FuturesUnordered wakes its futures through
    // wakers of its own, which the SDK refuses as nondeterministic.
    let mut running: Vec<Running<'a>> = Vec::new();
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
                stores_context: started.len() == 1,
            };
            running.push(Box::pin(start(step, t.for_each.is_some())));
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
