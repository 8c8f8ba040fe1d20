//! The Runs pages: the filtered list (live), a run's lineage with its tasks and context, and
//! the cancel and retry forms.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use tf_definitions::{RunStatus, TaskStatus, TaskType, TriggerKind};
use tf_kafka::topics::RESULTS_TOPIC;

use super::html::{lineage_step, pretty, status, table, text, url_part, when};
use super::{PageQuery, api_query, back_with, failure, fragment, next_page_href, query, respond, run_link, signed_in};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let filters: Value = query::<Value>(&raw).map(|q| q.0).unwrap_or(json!({}));
    let out = match crate::runs::list(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/runs"),
    };
    let rows: Vec<Vec<Markup>> = out
        .runs
        .iter()
        .map(|r| {
            vec![
                when(&r.fired_at),
                run_link(&r.run_id),
                html! { (r.definition_id) " v" (r.definition_version) },
                html! { (r.dedupe_key) },
                html! { (r.source_label()) },
                html! { (status(r.status.as_str())) @if let Some(why) = &r.status_reason { " " small { (why) } } },
                html! { (r.tasks_done) "/" (r.tasks_spawned) },
            ]
        })
        .collect();
    let older = out.next_cursor.as_deref().map(|next| next_page_href("/ui/runs", &raw, next));
    let listing = html! {
        (table("Runs, newest first", &["Fired", "Run", "Definition", "Key", "Source", "Status", "Tasks"], &rows, "No runs match."))
        @if let Some(href) = older { p { a href=(href) { "Older runs" } } }
    };
    if own.fragment.is_some() {
        return fragment(listing);
    }
    let field = |name: &str| filters[name].as_str().unwrap_or("").to_string();
    let chosen = field("status");
    let body = html! {
        (own.flash())
        form.filters method="get" action="/ui/runs" role="search" {
            label { "Definition " input name="definition" value=(field("definition")); }
            label { "Dedupe key " input name="key" value=(field("key")); }
            label { "Status "
                select name="status" {
                    option value="" selected[chosen.is_empty()] { "any" }
                    @for s in RunStatus::ALL {
                        option value=(s.as_str()) selected[chosen == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        div #runs data-refresh="5000" aria-live="polite" { (listing) }
    };
    respond("Runs", "/ui/runs", &who, body)
}

pub async fn show(State(state): State<AppState>, headers: HeaderMap, Path(run_id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let r = match crate::runs::describe(State(state.clone()), auth, Path(run_id.clone())).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/runs"),
    };
    let src = &r.source;
    let task_lines: Vec<Markup> = r.tasks.iter().map(|t| html! { (t.task_id) " " (status(t.status.as_str())) }).collect();
    let results: Vec<Markup> = r
        .results
        .iter()
        .map(|x| match (x.partition, x.offset) {
            (Some(p), Some(o)) => html! { (x.status) " → partition " (p) " offset " (o) },
            _ if x.published_at.is_some() => html! { (x.status) " (published; offset not recorded)" },
            _ => html! { (x.status) " (not published yet)" },
        })
        .collect();
    let task_rows: Vec<Vec<Markup>> = r
        .tasks
        .iter()
        .map(|t| {
            let decidable = t.task_type == TaskType::Human && t.status == TaskStatus::AwaitingHuman;
            vec![
                html! { @if decidable { a href={ "/ui/tasks/" (url_part(&t.task_id, true)) } { (t.task_id) } } @else { (t.task_id) } },
                html! { (t.task_type.as_str()) },
                status(t.status.as_str()),
                html! { (text(t.output.as_ref().unwrap_or(&Value::Null))) },
                html! { (t.error.as_deref().unwrap_or("")) },
            ]
        })
        .collect();
    let at = |v: Option<i64>| v.map_or("–".to_string(), |n| n.to_string());
    // A run that unfolds: each template with what it runs after and where it is; a sleep or
    // wait in progress says what it waits for and until when.
    let step_rows: Vec<Vec<Markup>> = r
        .steps
        .iter()
        .map(|n| {
            let waiting = r
                .tasks
                .iter()
                .filter(|t| t.template == n.template && t.status == TaskStatus::Waiting)
                .find_map(|t| t.waiting_for.as_ref().map(|w| (w.clone(), t.waiting_until.clone())));
            vec![
                html! { (n.template) },
                html! { (n.task_type) },
                html! { @if n.after.is_empty() { "–" } @else { (n.after.join(", ")) @if n.always { " (always)" } } },
                html! {
                    (status(&n.state))
                    @if let Some((what, until)) = waiting {
                        " " @if what == "sleep" { "sleeping" } @else { "waiting for " (what) }
                        @if let Some(until) = until { " until " (when(&until)) }
                    }
                },
            ]
        })
        .collect();
    let wait_lines: Vec<Markup> = r
        .waits
        .iter()
        .filter(|w| w.event_id.is_some())
        .map(|w| {
            html! {
                (w.kind) " " (w.wait_id) " ← " (w.event_type) " " (w.event_id.as_deref().unwrap_or(""))
                " (" (w.source_topic.as_deref().unwrap_or("")) " partition " (at(w.source_partition.map(i64::from)))
                " offset " (at(w.source_offset)) ")"
            }
        })
        .collect();
    let st = r.status;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let action = format!("/ui/runs/{}", url_part(&run_id, true));
    let body = html! {
        (own.flash())
        section aria-labelledby="lineage" {
            h2 #lineage { "Lineage" }
            ol.lineage {
                @if src.kind == TriggerKind::Cron {
                    (lineage_step("schedule", &opt(&src.schedule_id), &[html! { "slot " (opt(&src.scheduled_for)) }]))
                } @else {
                    (lineage_step("event", &opt(&src.event_id), &[]))
                    (lineage_step("topic", &opt(&src.topic), &[html! { "partition " (at(src.partition.map(i64::from))) }, html! { "offset " (at(src.offset)) }]))
                }
                (lineage_step("run", &run_id, &[
                    html! { (r.definition.id) " v" (r.definition.version) },
                    html! { "key " (r.dedupe_key) " · generation " (r.generation) " · attempt " (r.attempt) },
                    html! { (status(st.as_str())) @if let Some(why) = &r.status_reason { " " (why) } },
                    html! { @if let Some(at) = &r.admitted_at { "admitted " (when(at)) } },
                ]))
                @if !wait_lines.is_empty() {
                    (lineage_step("events waited for", &format!("{} delivered", wait_lines.len()), &wait_lines))
                }
                (lineage_step("tasks", &format!("{} task(s)", r.tasks.len()), &task_lines))
                (lineage_step("results", RESULTS_TOPIC, &results))
            }
        }
        @if matches!(st, RunStatus::Running | RunStatus::Waiting) {
            form.inline method="post" action={ (action) "/cancel" } {
                label { "Reason " input name="reason"; } " "
                button type="submit" { "Cancel run" }
            }
        }
        @if matches!(st, RunStatus::Failed | RunStatus::Cancelled) {
            form.inline method="post" action={ (action) "/retry" } { button type="submit" { "Retry run" } }
        }
        p { a href=(r.temporal_ui.as_deref().unwrap_or("#")) rel="noopener" { "Open in the Temporal UI" } }
        @if !step_rows.is_empty() {
            section aria-labelledby="steps-h" {
                h2 #steps-h { "Steps" }
                (table("Steps of the run, in definition order", &["Template", "Type", "Runs after", "State"], &step_rows, "No steps."))
            }
        }
        section aria-labelledby="tasks-h" {
            h2 #tasks-h { "Tasks" }
            (table("Tasks of the run", &["Task", "Type", "Status", "Output", "Error"], &task_rows, "No tasks."))
        }
        section aria-labelledby="ctx" {
            h2 #ctx { "Context snapshot" }
            pre { (pretty(r.context.as_ref().unwrap_or(&Value::Null))) }
            h3 { "How each source was obtained" }
            pre { (pretty(r.context_sources.as_ref().unwrap_or(&Value::Null))) }
        }
    };
    respond(&format!("Run {run_id}"), "/ui/runs", &who, body)
}

#[derive(Deserialize, Default)]
struct ReasonForm {
    #[serde(default)]
    reason: String,
}

pub async fn act(State(state): State<AppState>, headers: HeaderMap, Path(path): Path<String>, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let form: ReasonForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let run_id = path.rsplit_once('/').map_or(path.as_str(), |(id, _)| id).to_string();
    let back = format!("/ui/runs/{}", url_part(&run_id, true));
    let payload = Bytes::from(json!({"reason": form.reason}).to_string());
    match crate::runs::act(State(state.clone()), auth, Path(path.clone()), payload).await {
        Ok((_, axum::Json(v))) => back_with(&back, &v.outcome, false),
        Err(e) if e.status == StatusCode::CONFLICT => back_with(&back, &e.message, true),
        Err(e) => failure(e, &who, &back),
    }
}
