//! `tf runs list|retry|cancel` and `tf tasks list|complete`: runs and tasks from the
//! bookkeeping tables, and the Temporal calls that retry, cancel or complete them.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value as Json;
use tf_config::Settings;
use tf_store::runs::RunView;
use tf_temporal::run_control::RetryOutcome;

fn ui_link(settings: &Settings, workflow_id: &str) -> String {
    settings.temporal_ui_link(workflow_id)
}

pub async fn list(settings: &Settings, limit: i64, format: crate::Format) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let (mut runs, _) = tf_store::runs::list_runs(&pool, &tf_store::runs::RunFilter::default(), None, limit).await?;
    for r in &mut runs {
        r.temporal_ui = Some(ui_link(settings, &r.run_id));
    }
    print_runs(&runs, format)
}

/// Prints runs the same way in both modes (direct and `--api-url`): the JSON is the API's
/// own run objects.
pub fn print_runs(runs: &[RunView], format: crate::Format) -> anyhow::Result<ExitCode> {
    if format == crate::Format::Json {
        crate::print_json(&runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("(no runs yet)");
    }
    for r in runs {
        println!(
            "{}  {}@v{}  key={} generation {}{}  {} {}  {}  tasks {}/{} done, results published {}",
            r.fired_at,
            r.definition_id,
            r.definition_version,
            r.dedupe_key,
            r.generation,
            if r.attempt > 1 { format!(" attempt {}", r.attempt) } else { String::new() },
            r.trigger_kind,
            r.source_label(),
            r.status,
            r.tasks_done,
            r.tasks_spawned,
            r.results_published
        );
        println!("    {}  {}", r.run_id, r.temporal_ui.as_deref().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tf runs retry`: starts a failed run again with the input it first had; the worker takes the
/// run over as its next attempt.
pub async fn retry(settings: &Settings, run_id: &str) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let (status, input) = tf_store::runs::run_input(&pool, run_id).await?.with_context(|| format!("no run {run_id}"))?;
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    match tf_temporal::run_control::retry_run(&client, &settings.task_queue, run_id, status, input).await? {
        RetryOutcome::Started => {
            println!("retrying {run_id}: a new execution started; `tf runs list` shows its attempt");
            Ok(ExitCode::SUCCESS)
        }
        RetryOutcome::StillOpen => {
            println!("{run_id} has an open execution in Temporal (it may be finishing its failure); try again in a moment");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `tf runs cancel`: asks Temporal to cancel a running run; its tasks end `cancelled`.
pub async fn cancel(settings: &Settings, run_id: &str, reason: &str) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let (status, _) = tf_store::runs::run_input(&pool, run_id).await?.with_context(|| format!("no run {run_id}"))?;
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    tf_temporal::run_control::cancel_run(&client, run_id, status, reason).await?;
    println!("cancel requested for {run_id}; its tasks and the run are recorded as cancelled once the workflow has stopped them");
    Ok(ExitCode::SUCCESS)
}

pub async fn list_tasks(settings: &Settings, status: &str, limit: i64, format: crate::Format) -> anyhow::Result<ExitCode> {
    let pool = tf_store::connect(&settings.database_url).await?;
    let tasks = tf_store::tasks::tasks_by_status(&pool, status.parse()?, limit).await?;
    if format == crate::Format::Json {
        crate::print_json(&tasks)?;
        return Ok(ExitCode::SUCCESS);
    }
    if tasks.is_empty() {
        println!("(no {status} tasks)");
    }
    for t in &tasks {
        println!("{}  {}  {}  {}  params {}", t.created_at, t.task_type, t.status, t.task_id, t.params);
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes a human task: signals its RunTask workflow, which records and publishes the result.
pub async fn complete(settings: &Settings, task_id: &str, result: &str) -> anyhow::Result<ExitCode> {
    let output: Json = serde_json::from_str(result).with_context(|| format!("--result is not JSON: {result}"))?;
    let pool = tf_store::connect(&settings.database_url).await?;
    let task = tf_store::tasks::task(&pool, task_id).await?.with_context(|| format!("no task {task_id}"))?;
    anyhow::ensure!(
        task.task_type == tf_definitions::TaskType::Human,
        "task {task_id} is a {} task; only human tasks are completed by hand",
        task.task_type
    );
    anyhow::ensure!(task.status == tf_definitions::TaskStatus::AwaitingHuman, "task {task_id} is {}, not awaiting_human", task.status);
    let client = tf_temporal::connect(&settings.temporal_url, &settings.temporal_namespace, "tf-cli").await?;
    // An update, not a signal: it returns once the workflow accepted the completion, and the
    // workflow refuses a second decision.
    let by = std::env::var("USER").map(|u| format!("tf-cli:{u}")).unwrap_or_else(|_| "tf-cli".into());
    client
        .get_workflow_handle::<tf_temporal::RunTask>(task_id)
        .execute_update(tf_temporal::DecideTask, tf_temporal::HumanDecision::Complete { output, by }, Default::default())
        .await
        .with_context(|| format!("completing task {task_id}"))?;
    println!("completed {task_id}; its result is published when the workflow records it");
    Ok(ExitCode::SUCCESS)
}
