//! A time-triggered definition's Temporal Schedule over HTTP (`/definitions/{id}/schedule`): its
//! state, recent and next fires (read), and pause with a note, resume, trigger and backfill
//! (write), through the same `tf_temporal::schedule_control` as `tf schedules`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use temporalio_client::schedules::ScheduleOverlapPolicy;
use tf_temporal::schedule_control::{self, ScheduleControlError, ScheduleView};

use crate::AppState;
use crate::auth::Scope;
use crate::error::ApiError;

fn api_error(e: ScheduleControlError) -> ApiError {
    match e {
        ScheduleControlError::NotFound(_) => ApiError::not_found(e.to_string()),
        ScheduleControlError::Refused(m) => ApiError::bad_request("to", m),
        ScheduleControlError::Temporal(e) => ApiError::unavailable(format!("Temporal: {e}")),
    }
}

pub async fn show(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<ScheduleView>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    Ok(Json(schedule_control::view(&state.temporal, &id).await.map_err(api_error)?))
}

/// The body of a pause (optional).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// Why, shown with the schedule (recorded with the caller's token name), at most 1024 bytes.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub note: Option<String>,
}

/// The body of a backfill.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    /// RFC 3339; fires at or after it run.
    pub from: String,
    /// RFC 3339; fires at or before it run (Temporal's backfill includes both ends). At most
    /// 366 days after `from`.
    pub to: String,
    /// What a backfilled run does when another of the schedule's runs is running: `skip`,
    /// `buffer_one`, `buffer_all`, `cancel_other`, `terminate_other` or `allow_all` (default).
    #[serde(default)]
    pub overlap: Option<String>,
}

/// What a schedule action did.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleActionOutcome {
    pub schedule_id: String,
    /// `pause`, `resume`, `trigger` or `backfill`.
    pub action: String,
    pub outcome: String,
    /// A backfill's one-day batches, both ends included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BackfillBatch>,
    /// A backfill's starting point for progress: the schedule's `actions` before it; `GET
    /// /definitions/{id}/schedule` shows how many have started since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions_before: Option<i64>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillBatch {
    pub from: String,
    pub to: String,
}

fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("body", format!("not a valid body: {e}")))
}

fn outcome(id: &str, action: &str, what: impl Into<String>) -> Json<ScheduleActionOutcome> {
    Json(ScheduleActionOutcome {
        schedule_id: tf_temporal::schedules::schedule_id(id),
        action: action.into(),
        outcome: what.into(),
        batches: Vec::new(),
        actions_before: None,
    })
}

pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Json<ScheduleActionOutcome>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let b: PauseBody = body(&bytes)?;
    let note = b.note.unwrap_or_default();
    if note.len() > 1024 || note.chars().any(char::is_control) {
        return Err(ApiError::bad_request("note", "must be at most 1024 bytes without control characters"));
    }
    let note = if note.is_empty() { format!("paused by {}", caller.token) } else { format!("{note} (by {})", caller.token) };
    schedule_control::pause(&state.temporal, &id, &note).await.map_err(api_error)?;
    tracing::info!(token = %caller.token, definition = %id, %note, "schedule paused");
    Ok(outcome(&id, "pause", format!("paused: {note}")))
}

pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ScheduleActionOutcome>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    schedule_control::resume(&state.temporal, &id, &format!("resumed by {}", caller.token)).await.map_err(api_error)?;
    tracing::info!(token = %caller.token, definition = %id, "schedule resumed");
    Ok(outcome(&id, "resume", "resumed"))
}

pub async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ScheduleActionOutcome>, ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    schedule_control::trigger(&state.temporal, &id).await.map_err(api_error)?;
    tracing::info!(token = %caller.token, definition = %id, "schedule triggered");
    Ok(outcome(&id, "trigger", "one run starts now"))
}

fn overlap(text: Option<&str>) -> Result<ScheduleOverlapPolicy, ApiError> {
    schedule_control::overlap_policy(text.unwrap_or("allow_all")).map_err(|e| ApiError::bad_request("overlap", e))
}

pub async fn backfill(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<ScheduleActionOutcome>), ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let b: BackfillBody = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("body", format!("not a backfill: {e}")))?;
    let time = |field: &str, text: &str| tf_definitions::cron::parse_time(text).map_err(|e| ApiError::bad_request(field, e));
    let (from, to) = (time("from", &b.from)?, time("to", &b.to)?);
    let policy = overlap(b.overlap.as_deref())?;
    let (batches, before) = schedule_control::backfill(&state.temporal, &id, from, to, policy).await.map_err(api_error)?;
    tracing::info!(token = %caller.token, definition = %id, %from, %to, batches = batches.len(), "schedule backfilled");
    let mut answer = outcome(&id, "backfill", format!("{} batch(es) requested", batches.len()));
    answer.batches = batches.iter().map(|(f, t)| BackfillBatch { from: f.to_rfc3339(), to: t.to_rfc3339() }).collect();
    answer.actions_before = Some(before);
    Ok((StatusCode::ACCEPTED, answer))
}
