//! `/runs`: list with filters and cursor pagination; one run's lineage; retry and cancel.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tf_definitions::{RunStatus, TriggerKind};
use tf_store::runs::{RunCursor, RunFilter};
use tf_temporal::run_control::{RetryOutcome, RunControlError, cancel_run, retry_run};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    definition: Option<String>,
    status: Option<String>,
    key: Option<String>,
    trigger: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn time(field: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map(|_| Some(t.clone()))
            .map_err(|e| ApiError::bad_request(field, format!("{t:?} is not an RFC 3339 time: {e}"))),
    }
}

fn cursor(v: &str) -> Result<RunCursor, ApiError> {
    let bad = || ApiError::bad_request("cursor", "not a cursor this API gave out (next_cursor)");
    let (ts, id) = v.split_once(':').ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, id.to_string()))
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = crate::error::page_limit(q.limit, 50)?;
    let status = q.status.map(|s| s.parse::<RunStatus>()).transpose().map_err(|e| ApiError::bad_request("status", e.to_string()))?;
    let trigger = q.trigger.map(|t| t.parse::<TriggerKind>()).transpose().map_err(|e| ApiError::bad_request("trigger", e.to_string()))?;
    let filter = RunFilter {
        definition: q.definition,
        status,
        dedupe_key: q.key,
        trigger_kind: trigger,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
    };
    let after = q.cursor.as_deref().map(cursor).transpose()?;
    let (mut runs, next) = tf_store::runs::list_runs(&state.pool, &filter, after.as_ref(), limit).await?;
    for r in &mut runs {
        let id = r["run_id"].as_str().unwrap_or_default().to_string();
        r["temporal_ui"] = json!(state.settings.temporal_ui_link(&id));
    }
    Ok(Json(json!({"runs": runs, "next_cursor": next.map(|(ts, id)| format!("{ts}:{id}"))})))
}

pub async fn describe(State(state): State<AppState>, headers: HeaderMap, Path(run_id): Path<String>) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Some(mut run) = tf_store::runs::lineage(&state.pool, &run_id).await? else {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    };
    run["temporal_ui"] = json!(state.settings.temporal_ui_link(&run_id));
    Ok(Json(run))
}

/// `POST /runs/{run id}/retry` or `/cancel` (`{"reason": "..."}` optional): run ids hold
/// slashes, so the action is the path's last segment. `202`: Temporal accepted it; the run's
/// status changes when the workflow acts on it.
pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let Some((run_id, action)) = path.rsplit_once('/').filter(|(_, a)| matches!(*a, "retry" | "cancel")) else {
        return Err(ApiError::not_found("POST /runs/{run id}/retry or /runs/{run id}/cancel"));
    };
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not JSON: {e}")))?
    };
    let reason = match body.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(r)) if r.len() <= 1024 => r.clone(),
        Some(_) => return Err(ApiError::bad_request("reason", "must be a string of at most 1024 bytes")),
    };
    let Some((status, input)) = tf_store::runs::run_input(&state.pool, run_id).await? else {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    };
    let outcome = if action == "retry" {
        retry_run(&state.temporal, &state.settings.task_queue, run_id, status, input).await.and_then(|o| match o {
            RetryOutcome::Started => Ok("retry started"),
            RetryOutcome::StillOpen => Err(RunControlError::Refused(format!(
                "{run_id} has an open execution in Temporal (it may be finishing its failure); try again in a moment"
            ))),
        })
    } else {
        cancel_run(&state.temporal, run_id, status, &format!("{reason} (by {})", caller.token)).await.map(|()| "cancel requested")
    };
    match outcome {
        Ok(what) => {
            tracing::info!(token = %caller.token, run = %run_id, action, "run {what}");
            Ok((StatusCode::ACCEPTED, Json(json!({"run_id": run_id, "action": action, "outcome": what}))))
        }
        Err(RunControlError::Refused(message)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", message)),
        Err(e) => {
            tracing::warn!(error = %e, run = %run_id, action, "run control failed");
            Err(ApiError::unavailable(format!("Temporal did not take the request: {e}")))
        }
    }
}
