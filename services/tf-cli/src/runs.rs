//! `tf runs list|show|retry|cancel` and `tf tasks list|claim|complete|reject`: runs and tasks
//! from the bookkeeping tables, and the Temporal calls that retry, cancel or decide them. The
//! answers are the API's objects ([`RunView`], [`RunLineage`], [`TaskSummary`]), so `-o json`
//! prints the same in both modes.

use anyhow::Context;
use serde_json::{Value as Json, json};
use tf_config::Settings;
use tf_definitions::{TaskStatus, TaskType};
use tf_store::runs::{RunFilter, RunLineage, RunView};
use tf_store::tasks::{ClaimOutcome, TaskFilter, TaskSummary};
use tf_temporal::run_control::RetryOutcome;

use crate::output::{Answer, say, table};

/// `tf runs list`'s filters.
pub struct RunsQuery {
    pub limit: i64,
    pub definition: Option<String>,
    pub status: Option<String>,
    pub key: Option<String>,
}

pub async fn list(settings: &Settings, q: &RunsQuery) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let filter = RunFilter {
        definition: q.definition.clone(),
        status: q.status.as_deref().map(str::parse).transpose()?,
        dedupe_key: q.key.clone(),
        ..RunFilter::default()
    };
    let (mut runs, _) = tf_store::runs::list_runs(&pool, &filter, None, q.limit).await?;
    for r in &mut runs {
        r.temporal_ui = Some(settings.temporal_ui_link(&r.run_id));
    }
    listed(&runs)
}

/// Runs as a table (both modes).
pub fn listed(runs: &[RunView]) -> anyhow::Result<Answer> {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.fired_at.clone(),
                r.run_id.clone(),
                format!("v{}", r.definition_version),
                format!("{}{}", r.generation, if r.attempt > 1 { format!(" (attempt {})", r.attempt) } else { String::new() }),
                r.source_label(),
                match &r.status_reason {
                    Some(why) => format!("{} ({why})", r.status),
                    None => r.status.to_string(),
                },
                format!("{}/{}", r.tasks_done, r.tasks_spawned),
                r.results_published.to_string(),
            ]
        })
        .collect();
    let text = table(&["FIRED", "RUN", "VERSION", "GENERATION", "SOURCE", "STATUS", "TASKS", "RESULTS"], &rows, "(no runs yet)");
    Ok(Answer::new(runs)?.text(text))
}

pub async fn limits(settings: &Settings) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    limits_listed(tf_store::flow::limits(&pool).await?)
}

pub fn limits_listed(page: tf_store::flow::Limits) -> anyhow::Result<Answer> {
    let rows: Vec<Vec<String>> = page
        .limits
        .iter()
        .map(|l| {
            vec![
                l.limit.clone(),
                if l.key.is_empty() { "-".into() } else { l.key.clone() },
                format!("{}/{}", l.held, l.capacity),
                l.waiting.to_string(),
                l.next.first().cloned().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let text = table(&["LIMIT", "KEY", "HELD", "WAITING", "NEXT"], &rows, "(nothing waits for a limit)");
    Ok(Answer::new(&page)?.text(text))
}

pub async fn show(settings: &Settings, run_id: &str) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let mut run =
        tf_store::runs::lineage(&pool, run_id, tf_kafka::topics::RESULTS_TOPIC).await?.with_context(|| format!("no run {run_id}"))?;
    run.temporal_ui = Some(settings.temporal_ui_link(run_id));
    shown(&run)
}

/// One run's lineage (both modes), from its source to its results.
pub fn shown(r: &RunLineage) -> anyhow::Result<Answer> {
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<i64>| v.map_or("-".to_string(), |n| n.to_string());
    let mut text = String::new();
    say!(text, "run         {}", r.run_id);
    match &r.status_reason {
        Some(why) => say!(text, "status      {} ({why})", r.status),
        None => say!(text, "status      {}", r.status),
    }
    if let Some(at) = &r.admitted_at {
        say!(text, "admitted    {at} (flow control let it execute)");
    }
    say!(text, "definition  {} v{}", r.definition.id, r.definition.version);
    say!(text, "dedupe      key {} · generation {} · attempt {}", r.dedupe_key, r.generation, r.attempt);
    match (&r.source.topic, &r.source.schedule_id) {
        (Some(topic), _) => say!(
            text,
            "source      {topic}[{}]@{} event {}",
            num(r.source.partition.map(i64::from)),
            num(r.source.offset),
            or(&r.source.event_id)
        ),
        (None, Some(s)) => say!(text, "source      schedule {s} slot {}", or(&r.source.scheduled_for)),
        (None, None) => say!(text, "source      {}", r.source.kind),
    }
    say!(text, "fired       {}  finished {}", r.fired_at, or(&r.finished_at));
    say!(text, "temporal    {}", or(&r.temporal_ui));
    let tasks: Vec<Vec<String>> = r
        .tasks
        .iter()
        .map(|t| vec![t.task_id.clone(), t.task_type.to_string(), t.status.to_string(), t.attempts.to_string(), or(&t.error)])
        .collect();
    if !r.steps.is_empty() {
        let steps: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|n| {
                let after = if n.after.is_empty() { "-".to_string() } else { n.after.join(",") + if n.always { " (always)" } else { "" } };
                let waiting = r
                    .tasks
                    .iter()
                    .find(|t| t.template == n.template && t.status == tf_definitions::TaskStatus::Waiting)
                    .and_then(|t| t.waiting_for.as_ref().map(|w| format!("{w} until {}", or(&t.waiting_until))))
                    .unwrap_or_default();
                vec![n.template.clone(), n.task_type.clone(), after, n.state.clone(), waiting]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(&["STEP", "TYPE", "AFTER", "STATE", "WAITING FOR"], &steps, "(no steps)"));
    }
    text.push('\n');
    text.push_str(&table(&["TASK", "TYPE", "STATUS", "ATTEMPTS", "ERROR"], &tasks, "(no tasks)"));
    let waits: Vec<Vec<String>> = r
        .waits
        .iter()
        .map(|w| {
            let from = match (&w.source_topic, w.source_partition, w.source_offset) {
                (Some(t), Some(p), Some(o)) => format!("{t}[{p}]@{o}"),
                _ => "-".into(),
            };
            vec![w.wait_id.clone(), format!("{} key {}", w.event_type, w.match_key), w.status.clone(), or(&w.event_id), from]
        })
        .collect();
    if !waits.is_empty() {
        text.push('\n');
        text.push_str(&table(&["WAIT", "FOR", "STATUS", "EVENT", "FROM"], &waits, "(no waits)"));
    }
    let results: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|x| {
            let at = match (x.partition, x.offset) {
                (Some(p), Some(o)) => format!("{}[{p}]@{o}", x.topic),
                _ if x.quarantined => format!("quarantined: {}", or(&x.quarantine_reason)),
                _ if x.published_at.is_some() => "published (offset not recorded)".into(),
                _ => "not published yet".into(),
            };
            vec![x.task_id.clone(), x.status.clone(), at]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(&["RESULT OF", "STATUS", "WHERE"], &results, "(no results)"));
    Ok(Answer::new(r)?.text(text))
}

/// `tf runs retry`: starts a failed run again with the input it first had; the worker takes the
/// run over as its next attempt.
pub async fn retry(settings: &Settings, run_id: &str) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let (status, input) = tf_store::runs::run_input(&pool, run_id).await?.with_context(|| format!("no run {run_id}"))?;
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    match tf_temporal::run_control::retry_run(&client, &settings.task_queue, run_id, status, input).await? {
        RetryOutcome::Started => Ok(Answer::new(json!({"run_id": run_id, "action": "retry", "outcome": "retry started"}))?
            .text(format!("retrying {run_id}: a new execution started; `tf runs list` shows its attempt\n"))),
        RetryOutcome::StillOpen => {
            anyhow::bail!("{run_id} has an open execution in Temporal (it may be finishing its failure); try again in a moment")
        }
    }
}

/// `tf runs cancel`: asks Temporal to cancel a running run; its tasks end `cancelled`.
pub async fn cancel(settings: &Settings, run_id: &str, reason: &str) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let (status, _) = tf_store::runs::run_input(&pool, run_id).await?.with_context(|| format!("no run {run_id}"))?;
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    tf_temporal::run_control::cancel_run(&client, run_id, status, reason).await?;
    Ok(Answer::new(json!({"run_id": run_id, "action": "cancel", "outcome": "cancel requested"}))?.text(format!(
        "cancel requested for {run_id}; its tasks and the run are recorded as cancelled once the workflow has stopped them\n"
    )))
}

/// Tasks of every type in `status` (the API's inbox lists human tasks only).
pub async fn list_tasks(settings: &Settings, status: &str, limit: i64) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let filter = TaskFilter { status: status.parse()?, task_type: None, definition: None };
    let (tasks, _) = tf_store::tasks::list_tasks(&pool, &filter, None, limit).await?;
    tasks_listed(&tasks, status)
}

/// Tasks as a table (both modes).
pub fn tasks_listed(tasks: &[TaskSummary], status: &str) -> anyhow::Result<Answer> {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.created_at.clone(),
                t.task_id.clone(),
                t.task_type.to_string(),
                t.status.to_string(),
                t.claimed_by.clone().unwrap_or_default(),
                t.params.to_string(),
            ]
        })
        .collect();
    let text = table(&["CREATED", "TASK", "TYPE", "STATUS", "CLAIMED BY", "PARAMS"], &rows, &format!("(no {status} tasks)"));
    Ok(Answer::new(tasks)?.text(text))
}

/// A human task waiting for a person, or why it is not.
async fn awaiting(pool: &tf_store::PgPool, task_id: &str, what: &str) -> anyhow::Result<()> {
    let task = tf_store::tasks::task(pool, task_id).await?.with_context(|| format!("no task {task_id}"))?;
    anyhow::ensure!(task.task_type == TaskType::Human, "task {task_id} is a {} task; only human tasks are {what} by hand", task.task_type);
    anyhow::ensure!(task.status == TaskStatus::AwaitingHuman, "task {task_id} is {}, not awaiting_human", task.status);
    Ok(())
}

pub async fn claim(settings: &Settings, task_id: &str, by: &str) -> anyhow::Result<Answer> {
    let pool = tf_store::connect(&settings.database_url).await?;
    awaiting(&pool, task_id, "claimed").await?;
    match tf_store::tasks::claim_human_task(&pool, task_id, by).await? {
        ClaimOutcome::Claimed => {
            Ok(Answer::new(json!({"task_id": task_id, "claimed_by": by}))?.text(format!("claimed {task_id} as {by}\n")))
        }
        ClaimOutcome::HeldBy(holder) => anyhow::bail!("task {task_id} is claimed by {holder}"),
        ClaimOutcome::NotAwaiting(what) => anyhow::bail!("task {task_id} is not waiting for a person ({what})"),
    }
}

/// Decides a human task with an update to its RunTask workflow (not a signal: it returns once
/// the workflow accepted the decision, and the workflow refuses a second one).
async fn decide(settings: &Settings, task_id: &str, decision: tf_temporal::HumanDecision, what: &str) -> anyhow::Result<()> {
    let pool = tf_store::connect(&settings.database_url).await?;
    awaiting(&pool, task_id, what).await?;
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    client
        .get_workflow_handle::<tf_temporal::RunTask>(task_id)
        .execute_update(tf_temporal::DecideTask, decision, Default::default())
        .await
        .with_context(|| format!("deciding task {task_id}"))?;
    Ok(())
}

pub async fn complete(settings: &Settings, task_id: &str, result: &str) -> anyhow::Result<Answer> {
    let output: Json = serde_json::from_str(result).with_context(|| format!("--result is not JSON: {result}"))?;
    let by = crate::default_actor();
    decide(settings, task_id, tf_temporal::HumanDecision::Complete { output, by: by.clone() }, "completed").await?;
    Ok(Answer::new(json!({"task_id": task_id, "decision": "complete", "by": by}))?
        .text(format!("completed {task_id}; its result is published when the workflow records it\n")))
}

pub async fn reject(settings: &Settings, task_id: &str, reason: &str) -> anyhow::Result<Answer> {
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
    let by = crate::default_actor();
    decide(settings, task_id, tf_temporal::HumanDecision::Reject { reason: reason.to_string(), by: by.clone() }, "rejected").await?;
    Ok(Answer::new(json!({"task_id": task_id, "decision": "reject", "by": by}))?
        .text(format!("rejected {task_id}; the task and its run fail with the reason\n")))
}
