//! `/runs`: list with filters and cursor pagination; one run's lineage; retry and cancel.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tf_definitions::{RunStatus, TriggerKind};
use tf_store::runs::{RunFilter, RunLineage, RunView};
use tf_temporal::run_control::{RetryOutcome, RunControlError, cancel_run, retry_run};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /runs` query: every filter holds together.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Runs of this definition id.
    definition: Option<String>,
    #[param(inline)]
    status: Option<RunStatus>,
    /// Runs of this dedupe key.
    key: Option<String>,
    #[param(inline)]
    trigger: Option<TriggerKind>,
    /// Fired at or after this time (RFC 3339).
    since: Option<String>,
    /// Fired before this time (RFC 3339).
    until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of runs, newest first.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunView>,
    /// The next page's `cursor`; `null` on the last page.
    pub next_cursor: Option<String>,
}

fn time(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map(|_| Some(t.clone()))
            .map_err(|e| ApiError::bad_request(field, format!("{t:?} is not an RFC 3339 time: {e}"))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = crate::error::page_limit(q.limit, 50)?;
    let filter = RunFilter {
        definition: q.definition,
        status: q.status,
        dedupe_key: q.key,
        trigger_kind: q.trigger,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
    };
    let after = crate::error::page_cursor(q.cursor.as_deref())?;
    let (mut runs, next) = tf_store::runs::list_runs(&state.pool, &filter, after.as_ref(), limit).await?;
    for r in &mut runs {
        r.temporal_ui = Some(state.settings.temporal_ui_link(&r.run_id));
    }
    Ok(Json(RunPage { runs, next_cursor: next.map(|c| c.to_string()) }))
}

pub async fn describe(State(state): State<AppState>, headers: HeaderMap, Path(run_id): Path<String>) -> Result<Json<RunLineage>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Some(mut run) = tf_store::runs::lineage(&state.pool, &run_id, tf_kafka::topics::RESULTS_TOPIC).await? else {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    };
    run.temporal_ui = Some(state.settings.temporal_ui_link(&run_id));
    Ok(Json(run))
}

/// The body of a retry or cancel (optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why (cancel; recorded with the caller's token name), at most 1024 bytes.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

/// What a run action did.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunActionOutcome {
    pub run_id: String,
    pub action: RunAction,
    /// `retry started` or `cancel requested`.
    pub outcome: String,
}

/// What can be done to a run.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunAction {
    Retry,
    Cancel,
}

/// `POST /runs/{run id}/retry` or `/cancel` (`{"reason": "..."}` optional): run ids hold
/// slashes, so the action is the path's last segment. `202`: Temporal accepted it; the run's
/// status changes when the workflow acts on it.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RunActionOutcome>), ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let parsed = path.rsplit_once('/').and_then(|(id, a)| match a {
        "retry" => Some((id, RunAction::Retry)),
        "cancel" => Some((id, RunAction::Cancel)),
        _ => None,
    });
    let Some((run_id, action)) = parsed else {
        return Err(ApiError::not_found("POST /runs/{run id}/retry or /runs/{run id}/cancel"));
    };
    let body: ReasonBody = if body.is_empty() {
        ReasonBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not a reason object: {e}")))?
    };
    let reason = body.reason.unwrap_or_default();
    if reason.len() > 1024 {
        return Err(ApiError::bad_request("reason", "must be a string of at most 1024 bytes"));
    }
    let Some((status, input)) = tf_store::runs::run_input(&state.pool, run_id).await? else {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    };
    let outcome = match action {
        RunAction::Retry => retry_run(&state.temporal, &state.settings.task_queue, run_id, status, input).await.and_then(|o| match o {
            RetryOutcome::Started => Ok("retry started"),
            RetryOutcome::StillOpen => Err(RunControlError::Refused(format!(
                "{run_id} has an open execution in Temporal (it may be finishing its failure); try again in a moment"
            ))),
        }),
        RunAction::Cancel => {
            cancel_run(&state.temporal, run_id, status, &format!("{reason} (by {})", caller.token)).await.map(|()| "cancel requested")
        }
    };
    let action_word = if action == RunAction::Retry { "retry" } else { "cancel" };
    match outcome {
        Ok(what) => {
            tracing::info!(token = %caller.token, run = %run_id, action = action_word, "run {what}");
            Ok((StatusCode::ACCEPTED, Json(RunActionOutcome { run_id: run_id.to_string(), action, outcome: what.to_string() })))
        }
        Err(RunControlError::Refused(message)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", message)),
        Err(e) => {
            tracing::warn!(error = %e, run = %run_id, action = action_word, "run control failed");
            Err(ApiError::unavailable(format!("Temporal did not take the request: {e}")))
        }
    }
}
