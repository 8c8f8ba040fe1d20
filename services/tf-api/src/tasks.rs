//! `/tasks`: the human-task inbox. A decision goes to the task's workflow as a Temporal update,
//! so `200` means the workflow accepted it; a second decision is `409`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use temporalio_client::{WorkflowExecuteUpdateOptions, errors::WorkflowUpdateError};
use tf_definitions::TaskStatus;
use tf_store::tasks::{ClaimOutcome, TaskFilter, TaskSummary};
use tf_temporal::{DecideTask, HumanDecision, RunTask};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /tasks` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Tasks of this definition id.
    definition: Option<String>,
    /// Default `awaiting_human`.
    #[param(inline)]
    status: Option<TaskStatus>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of the inbox, oldest first.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskSummary>,
    /// The next page's `cursor`; `null` on the last page.
    pub next_cursor: Option<String>,
}

pub async fn inbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    state.tokens.require(&headers, Scope::Tasks)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let status = q.status.unwrap_or(TaskStatus::AwaitingHuman);
    let limit = crate::error::page_limit(q.limit, 50)?;
    let after = crate::error::page_cursor(q.cursor.as_deref())?;
    let filter = TaskFilter { status, task_type: Some(tf_definitions::TaskType::Human), definition: q.definition.as_deref() };
    let (tasks, next) = tf_store::tasks::list_tasks(&state.pool, &filter, after.as_ref(), limit).await?;
    Ok(Json(TaskPage { tasks, next_cursor: next.map(|c| c.to_string()) }))
}

/// The body of a decision: `complete` takes `output`, `reject` a `reason`; `claim` none.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// complete: the task's output, any JSON (`null` too).
    #[serde(default, deserialize_with = "present")]
    pub output: Option<Value>,
    /// reject: why (non-empty).
    pub reason: Option<String>,
}

/// A field that is present, even as `null`, is `Some`: a human task's output may be `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// What a task action did.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskActionOutcome {
    pub task_id: String,
    /// claim: who holds it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// complete or reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", message)
}

/// `POST /tasks/{task id}/claim|complete|reject` (task ids hold slashes, so the action is the
/// path's last segment).
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TaskActionOutcome>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Tasks)?;
    let Some((task_id, action)) = path.rsplit_once('/') else {
        return Err(ApiError::not_found("POST /tasks/{task id}/claim, /complete or /reject"));
    };
    let body: DecisionBody = if body.is_empty() {
        DecisionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not a decision object: {e}")))?
    };
    let Some(task) = tf_store::tasks::task(&state.pool, task_id).await? else {
        return Err(ApiError::not_found(format!("no task {task_id}")));
    };
    if task.task_type != tf_definitions::TaskType::Human {
        return Err(conflict(format!("task {task_id} is a {} task; only human tasks are decided by people", task.task_type)));
    }
    match action {
        "claim" => match tf_store::tasks::claim_human_task(&state.pool, task_id, &caller.token).await? {
            ClaimOutcome::Claimed => {
                tracing::info!(token = %caller.token, task = %task_id, "task claimed");
                Ok(Json(TaskActionOutcome { task_id: task_id.to_string(), claimed_by: Some(caller.token), decision: None, by: None }))
            }
            ClaimOutcome::HeldBy(holder) => Err(conflict(format!("task {task_id} is claimed by {holder}"))),
            ClaimOutcome::NotAwaiting(what) => Err(conflict(format!("task {task_id} is not waiting for a person ({what})"))),
        },
        "complete" | "reject" => {
            let decision = if action == "complete" {
                let output = body.output.ok_or_else(|| ApiError::bad_request("output", "is required (any JSON)"))?;
                HumanDecision::Complete { output, by: caller.token.clone() }
            } else {
                let reason = match body.reason {
                    Some(r) if !r.trim().is_empty() => r,
                    _ => return Err(ApiError::bad_request("reason", "is required: a non-empty string")),
                };
                HumanDecision::Reject { reason, by: caller.token.clone() }
            };
            if let Some(holder) = tf_store::tasks::claimed_by(&state.pool, task_id).await?
                && holder != caller.token
            {
                return Err(conflict(format!("task {task_id} is claimed by {holder}")));
            }
            let handle = state.temporal.get_workflow_handle::<RunTask>(task_id.to_string());
            match handle.execute_update(DecideTask, decision, WorkflowExecuteUpdateOptions::default()).await {
                Ok(_) => {
                    state.metrics.tasks_decided.increment(1);
                    tracing::info!(token = %caller.token, task = %task_id, decision = action, "task decided");
                    Ok(Json(TaskActionOutcome {
                        task_id: task_id.to_string(),
                        claimed_by: None,
                        decision: Some(action.to_string()),
                        by: Some(caller.token),
                    }))
                }
                Err(WorkflowUpdateError::Failed(failure)) => {
                    let message = failure.message.clone();
                    if message.contains(tf_temporal::ALREADY_DECIDED) || message.contains(tf_temporal::NOT_AWAITING) {
                        Err(conflict(format!("task {task_id}: {message}")))
                    } else {
                        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("task {task_id}: {message}")))
                    }
                }
                Err(WorkflowUpdateError::NotFound(_)) => Err(conflict(format!("task {task_id} has ended"))),
                Err(e) => {
                    tracing::warn!(error = %e, task = %task_id, "deciding a task");
                    Err(ApiError::unavailable(format!("Temporal did not take the decision: {e}")))
                }
            }
        }
        other => Err(ApiError::not_found(format!("no action {other:?} on tasks; use claim, complete or reject"))),
    }
}
