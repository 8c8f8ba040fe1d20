//! The Definitions pages: the latest version of each, and one definition's versions with a line
//! diff against the previous one, its next fire times, its runs of the last day and, for a time
//! trigger, its Temporal Schedule with pause, resume, trigger and backfill.

use super::html::{alert, diff, status, table, url_part};
use super::{PageQuery, api_query, back_with, failure, next_page_href, query, respond, signed_in};
use crate::definitions::{DefinitionSummary, DefinitionVersion};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

/// Whether a definition is retired, enabled or disabled (`enabled` is the latest version's).
fn state_of(d: &DefinitionSummary, latest: &DefinitionSummary) -> &'static str {
    if d.retired {
        "retired"
    } else if latest.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let out = match crate::definitions::list(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/definitions"),
    };
    let rows: Vec<Vec<Markup>> = out
        .definitions
        .iter()
        .map(|d| {
            vec![
                html! { a href={ "/ui/definitions/" (url_part(&d.id, false)) } { (d.id) } },
                html! { (d.name) },
                html! { (d.version) },
                status(state_of(d, d)),
                html! { (d.trigger) },
                html! { (d.created_at) },
            ]
        })
        .collect();
    let body = html! {
        (table("Definitions, latest version each", &["Id", "Name", "Version", "State", "Trigger", "Since"], &rows, "No definitions yet."))
        @if let Some(next) = &out.next_cursor { p { a href=(next_page_href("/ui/definitions", &raw, next)) { "More definitions" } } }
    };
    respond("Definitions", "/ui/definitions", &who, body)
}

#[derive(Deserialize, Default)]
struct DefinitionQuery {
    version: Option<i32>,
}

pub async fn show(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let q: DefinitionQuery = query::<DefinitionQuery>(&raw).map(|q| q.0).unwrap_or_default();
    let fetch = |version: Option<i32>| {
        let (state, auth, id) = (state.clone(), auth.clone(), id.clone());
        async move {
            let raw = version.map(|v| format!("version={v}"));
            let q = query(&raw).map_err(|e| ApiError::bad_request("version", e.body_text()))?;
            crate::definitions::get(State(state), auth, Path(id), Ok(q)).await.map(|j| j.0)
        }
    };
    let latest = match fetch(None).await {
        Ok(v) => v,
        Err(e) => return failure(e, &who, "/ui/definitions"),
    };
    let newest = latest.summary.version;
    let shown_version = q.version.unwrap_or(newest).clamp(1, newest);
    let older = if shown_version == newest { None } else { fetch(Some(shown_version)).await.ok() };
    let shown = older.as_ref().unwrap_or(&latest);
    let yaml = |v: &DefinitionVersion| yaml_serde::to_string(&v.spec).unwrap_or_default();
    let previous = if shown_version > 1 { fetch(Some(shown_version - 1)).await.ok() } else { None };
    let fires: &[String] = shown.next_fire_times.as_deref().unwrap_or_default();
    let counts = tf_store::runs::counts_by_status(&state.pool, &id, std::time::Duration::from_secs(86_400)).await;
    let own = PageQuery::of(&raw);
    let schedule = if latest.next_fire_times.is_some() {
        Some(crate::schedules::show(State(state.clone()), auth.clone(), Path(id.clone())).await.map(|j| j.0))
    } else {
        None
    };
    let action = format!("/ui/definitions/{}/schedule", url_part(&id, false));
    let body = html! {
        (own.flash())
        p {
            (shown.summary.name) " · " (status(state_of(&shown.summary, &latest.summary))) " · " (shown.summary.trigger)
            " trigger · sha256 " code { (shown.spec_sha256) }
        }
        nav aria-label="Versions" {
            h2 { "Versions" }
            ul.versions {
                @for v in (1..=newest).rev() {
                    li { a href={ "/ui/definitions/" (url_part(&id, false)) "?version=" (v) } aria-current=[(v == shown_version).then_some("page")] { "v" (v) } }
                }
            }
        }
        h2 { "Runs in the last day" }
        @match &counts {
            Ok(counts) if counts.is_empty() => ul.counts { li { "none" } },
            Ok(counts) => ul.counts { @for (s, n) in counts { li { (status(s.as_str())) " " (n) } } },
            Err(e) => (alert(&format!("counting the runs failed: {e}"))),
        }
        @if !fires.is_empty() {
            h2 { "Next five fire times" }
            ul { @for t in fires { li { (t) } } }
        }
        @match &schedule {
            None => {}
            Some(Err(e)) => { h2 { "Schedule" } (alert(&e.message)) }
            Some(Ok(s)) => {
                section aria-labelledby="schedule-h" {
                    h2 #schedule-h { "Schedule " code { (s.schedule_id) } }
                    p #schedule-state {
                        @if s.paused { (status("paused")) " " (s.note.as_deref().unwrap_or("")) } @else { (status("active")) }
                        " · " (s.actions) " run(s) started · " (s.missed_catchup_window) " missed the catch-up window · "
                        (s.overlap_skipped) " skipped by overlap"
                    }
                    h3 { "Recent fires" }
                    @if s.recent.is_empty() { p { "none yet" } } @else {
                        ul { @for r in &s.recent { li { "nominal " (r.nominal) " · started " (r.started) " · " (r.workflow_id) } } }
                    }
                    h3 { "Next fires (Temporal, with jitter)" }
                    ul { @for t in &s.next { li { (t) } } }
                    @if s.paused {
                        form.inline method="post" action={ (action) "/resume" } { button type="submit" { "Resume schedule" } }
                    } @else {
                        form.inline method="post" action={ (action) "/pause" } {
                            label { "Note " input name="note" maxlength="1024"; } " "
                            button type="submit" { "Pause schedule" }
                        }
                    }
                    form.inline method="post" action={ (action) "/trigger" } { button type="submit" { "Trigger a run now" } }
                    form.inline method="post" action={ (action) "/backfill" } {
                        label { "From " input name="from" placeholder="2026-12-01T00:00:00Z" required; } " "
                        label { "To " input name="to" placeholder="2026-12-02T00:00:00Z" required; } " "
                        button type="submit" { "Backfill" }
                    }
                }
            }
        }
        h2 { "v" (shown_version) " as stored" }
        pre { (yaml(shown)) }
        @if let Some(prev) = &previous {
            h2 { "Changes from v" (shown_version - 1) }
            (diff(&yaml(prev), &yaml(shown)))
        }
    };
    respond(&format!("Definition {id}"), "/ui/definitions", &who, body)
}

#[derive(Deserialize, Default)]
struct ScheduleForm {
    #[serde(default)]
    note: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// The schedule's buttons: `POST /ui/definitions/{id}/schedule/{pause|resume|trigger|backfill}`,
/// through the API's handlers (their scope checks and validation), then back to the page.
pub async fn schedule_act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let form: ScheduleForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let back = format!("/ui/definitions/{}", url_part(&id, false));
    let (state, path) = (State(state), Path(id.clone()));
    let done = match action.as_str() {
        "pause" => {
            let body = serde_json::json!({"note": form.note}).to_string();
            crate::schedules::pause(state, auth, path, body.into()).await.map(|j| j.0)
        }
        "resume" => crate::schedules::resume(state, auth, path).await.map(|j| j.0),
        "trigger" => crate::schedules::trigger(state, auth, path).await.map(|j| j.0),
        "backfill" => {
            let body = serde_json::json!({"from": form.from.trim(), "to": form.to.trim()}).to_string();
            crate::schedules::backfill(state, auth, path, body.into()).await.map(|(_, j)| j.0)
        }
        _ => Err(ApiError::not_found(format!("no schedule action {action:?}"))),
    };
    match done {
        Ok(o) => back_with(&back, &format!("{}: {}", o.action, o.outcome), false),
        Err(e) if e.status.is_client_error() && e.status != axum::http::StatusCode::UNAUTHORIZED => {
            let message = match &e.field {
                Some(f) => format!("{} ({f})", e.message),
                None => e.message.clone(),
            };
            back_with(&back, &message, true)
        }
        Err(e) => failure(e, &who, &back),
    }
}
