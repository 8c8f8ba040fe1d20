//! What an operator does to a run after it started: retry a failed one, cancel a running one.
//! Shared by `tf runs` and `tf-api`; the run's status and recorded input come from the store,
//! which this crate does not reach, so callers pass them in.

use serde_json::Value as Json;
use temporalio_client::{Client, WorkflowCancelOptions};

use crate::{RunActivity, RunInput, StartOutcome, TemporalError};
use tf_definitions::{RunStatus, TriggerKind};

#[derive(Debug, thiserror::Error)]
pub enum RunControlError {
    /// The run is in a state the operation does not apply to (the API answers 409).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Temporal(#[from] TemporalError),
    #[error("cancelling {run_id}: {reason}")]
    Cancel { run_id: String, reason: String },
    /// Temporal has no open workflow for the run: it ended, so there is nothing to cancel.
    #[error("cancelling {run_id}: {reason}")]
    Ended { run_id: String, reason: String },
}

/// How a retry went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// A new execution of the same run id and generation started; the worker makes it the
    /// run's next attempt, skipping tasks that succeeded before.
    Started,
    /// Temporal still has an open execution under the run id (it may be finishing its failure).
    StillOpen,
}

/// Starts a failed or cancelled run again with the input it first had. Temporal's reuse policy
/// (AllowDuplicateFailedOnly) admits the new execution.
pub async fn retry_run(
    client: &Client,
    task_queue: &str,
    run_id: &str,
    status: RunStatus,
    input: Option<Json>,
) -> Result<RetryOutcome, RunControlError> {
    if !status.retryable() {
        return Err(RunControlError::Refused(format!("run {run_id} is {status}; only failed or cancelled runs are retried")));
    }
    let input = input.ok_or_else(|| {
        RunControlError::Refused(format!("run {run_id} was started before its input was recorded; send its event again instead"))
    })?;
    let mut input: RunInput = serde_json::from_value(input)
        .map_err(|e| RunControlError::Refused(format!("run {run_id}: the recorded input does not read as a RunActivity input: {e}")))?;
    if input.trigger.kind == TriggerKind::Cron {
        return Err(RunControlError::Refused(format!(
            "run {run_id} was started by a schedule; retry it with `tf schedules backfill` over its scheduled time"
        )));
    }
    input.operator_retry = true;
    Ok(match crate::start_run(client, task_queue, input).await? {
        StartOutcome::Started { .. } => RetryOutcome::Started,
        StartOutcome::Duplicate { .. } => RetryOutcome::StillOpen,
    })
}

/// What Temporal says of a run's latest execution, for reconciling a run recorded `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Execution {
    /// Still open (running, or paused): nothing to reconcile.
    Open,
    /// Closed, with the run status PostgreSQL should record: `execution_id` is Temporal's run id
    /// of the execution that closed.
    Closed { execution_id: String, status: RunStatus, how: &'static str },
    /// Temporal no longer knows the run id (its history passed the namespace's retention).
    Gone,
}

/// How the latest execution of `run_id` stands. A run that ended outside the worker's hands
/// (terminated, timed out, its history deleted) maps to the status it would have had: an
/// operator's termination is a cancellation (sticky, like `runs cancel`), a timeout or an
/// unrecorded end is a failure (a later event, or `runs retry`, runs it again).
pub async fn execution(client: &Client, run_id: &str) -> Result<Execution, RunControlError> {
    use temporalio_client::WorkflowExecutionStatus as S;
    let handle = client.get_workflow_handle::<RunActivity>(run_id.to_string());
    let described = match handle.describe(Default::default()).await {
        Ok(d) => d,
        Err(temporalio_client::errors::WorkflowInteractionError::NotFound(_)) => return Ok(Execution::Gone),
        Err(e) => return Err(RunControlError::Cancel { run_id: run_id.to_string(), reason: format!("describing: {e}") }),
    };
    let (status, how) = match described.status() {
        S::Running | S::Paused | S::ContinuedAsNew | S::Unspecified => return Ok(Execution::Open),
        S::Canceled => (RunStatus::Cancelled, "canceled"),
        S::Terminated => (RunStatus::Cancelled, "terminated"),
        S::TimedOut => (RunStatus::Failed, "timed out"),
        S::Failed => (RunStatus::Failed, "failed"),
        S::Completed => (RunStatus::Failed, "completed without recording its end"),
        _ => (RunStatus::Failed, "closed in a state this version does not know"),
    };
    Ok(Execution::Closed { execution_id: described.run_id().to_string(), status, how })
}

/// Asks Temporal to cancel a running run. The workflow cancels its tasks (each records a
/// `CANCELLED` result) and records the run as `cancelled`; this returns once Temporal accepted
/// the request, before that happened.
pub async fn cancel_run(client: &Client, run_id: &str, status: RunStatus, reason: &str) -> Result<(), RunControlError> {
    if !matches!(status, RunStatus::Running | RunStatus::Waiting) {
        return Err(RunControlError::Refused(format!("run {run_id} is {status}; only running and waiting runs are cancelled")));
    }
    client
        .get_workflow_handle::<RunActivity>(run_id.to_string())
        .cancel(WorkflowCancelOptions::builder().reason(reason.to_string()).build())
        .await
        .map_err(|e| match e {
            temporalio_client::errors::WorkflowInteractionError::NotFound(_) => {
                RunControlError::Ended { run_id: run_id.to_string(), reason: e.to_string() }
            }
            e => RunControlError::Cancel { run_id: run_id.to_string(), reason: e.to_string() },
        })
}
