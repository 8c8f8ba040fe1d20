//! The Human tasks pages: the inbox (live), a task with its parameters, and the complete and
//! reject forms.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::html::{status, table, text, url_part, when};
use super::{PageQuery, api_query, back_with, failure, fragment, query, respond, run_link, signed_in};
use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn inbox(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let out = match crate::tasks::inbox(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/tasks"),
    };
    let rows: Vec<Vec<Markup>> = out
        .tasks
        .iter()
        .map(|t| {
            vec![
                html! { a href={ "/ui/tasks/" (url_part(&t.task_id, true)) } { (t.task_id) } },
                html! { (t.definition_id) " v" (t.definition_version) },
                html! { (text(&t.params)) },
                html! { (t.claimed_by.as_deref().unwrap_or("")) },
                when(&t.created_at),
            ]
        })
        .collect();
    let listing = table(
        "Human tasks waiting for a decision",
        &["Task", "Definition", "Params", "Claimed by", "Since"],
        &rows,
        "Nothing waits for a person.",
    );
    if own.fragment.is_some() {
        return fragment(listing);
    }
    respond("Human tasks", "/ui/tasks", &who, html! { (own.flash()) div #inbox data-refresh="5000" aria-live="polite" { (listing) } })
}

/// The run a task id belongs to (`<run id>/<template>/<index>`).
fn run_of(task_id: &str) -> &str {
    task_id.rsplitn(3, '/').nth(2).unwrap_or("")
}

pub async fn show(State(state): State<AppState>, headers: HeaderMap, Path(task_id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    if let Err(e) = state.tokens.require(&auth, Scope::Tasks) {
        return failure(e, &who, "/ui/tasks");
    }
    let t = match tf_store::tasks::task(&state.pool, &task_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return failure(ApiError::not_found(format!("no task {task_id}")), &who, "/ui/tasks"),
        Err(e) => return failure(e.into(), &who, "/ui/tasks"),
    };
    let action = format!("/ui/tasks/{}", url_part(&task_id, true));
    let body = html! {
        (own.flash())
        p {
            "Status " (status(t.status.as_str())) " · " (t.task_type.as_str()) " task · created " (t.created_at)
            " · run " (run_link(run_of(&task_id)))
        }
        h2 { "Parameters" }
        pre { (serde_json::to_string_pretty(&t.params).unwrap_or_default()) }
        @if t.status == tf_definitions::TaskStatus::AwaitingHuman {
            form.card method="post" action={ (action) "/complete" } data-json-field="output" {
                label for="output" { "Output (JSON)" }
                textarea #output name="output" rows="6" required aria-describedby="output-error" { "{}" }
                p #output-error .field-error role="alert" aria-live="assertive" {}
                button type="submit" { "Complete" }
            }
            form.card method="post" action={ (action) "/reject" } {
                label for="reason" { "Reason" }
                input #reason name="reason" required;
                button type="submit" { "Reject" }
            }
        } @else {
            p { "This task is " (status(t.status.as_str())) ": nothing to decide." }
        }
    };
    respond(&format!("Task {task_id}"), "/ui/tasks", &who, body)
}

#[derive(Deserialize, Default)]
struct DecisionForm {
    output: Option<String>,
    reason: Option<String>,
}

pub async fn act(State(state): State<AppState>, headers: HeaderMap, Path(path): Path<String>, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let form: DecisionForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let task_id = path.rsplit_once('/').map_or(path.as_str(), |(id, _)| id).to_string();
    let back = format!("/ui/tasks/{}", url_part(&task_id, true));
    let completing = path.ends_with("/complete");
    let payload = if completing {
        // The browser checks the JSON first; this is the check that counts.
        match serde_json::from_str::<Value>(form.output.as_deref().unwrap_or("")) {
            Ok(output) => json!({ "output": output }),
            Err(e) => return back_with(&back, &format!("the output is not JSON: {e}"), true),
        }
    } else {
        json!({ "reason": form.reason.unwrap_or_default() })
    };
    match crate::tasks::act(State(state.clone()), auth, Path(path.clone()), Bytes::from(payload.to_string())).await {
        Ok(_) => {
            let done = if completing { "completed" } else { "rejected" };
            back_with(&format!("/ui/runs/{}", url_part(run_of(&task_id), true)), &format!("task {task_id} {done}"), false)
        }
        Err(e) if matches!(e.status, StatusCode::CONFLICT | StatusCode::BAD_REQUEST) => back_with(&back, &e.message, true),
        Err(e) => failure(e, &who, &back),
    }
}
