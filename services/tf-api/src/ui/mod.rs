//! The web console under `/ui`: server-rendered pages over the same handlers as the JSON API
//! (the console calls them with the signed-in token, so scopes, validation and errors are the
//! API's), a little progressive JavaScript (live refresh, JSON checked before it is sent) and
//! assets embedded in the binary. Signing in starts a server-side session (`session.rs`) whose
//! id the cookie carries; every page and form needs it.
//!
//! Long on purpose: one handler per console page, each a short composition of the API's own
//! handlers and the HTML pieces of `html.rs`; splitting them by page would scatter the shared
//! sign-in, flash and error handling that sits here once.

mod html;
pub mod lag;
pub mod session;

use std::fmt::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Scope;
use crate::error::ApiError;
use html::{esc, page, status, table, text, url_part};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{*run_id}", get(run).post(run_action))
        .route("/ui/definitions", get(definitions))
        .route("/ui/definitions/{id}", get(definition))
        .route("/ui/tasks", get(tasks))
        .route("/ui/tasks/{*task_id}", get(task).post(task_action))
        .route("/ui/dead-letters", get(dead_letters))
        .route("/ui/dead-letters/redrive", post(redrive))
        .route("/ui/lag", get(lag_page))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "style.css" => (include_str!("assets/style.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("assets/app.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// The signed-in token from the session cookie, as the Authorization header the API's handlers
/// read, and the token's name.
fn session(state: &AppState, headers: &HeaderMap) -> Option<(HeaderMap, String)> {
    let token = state.sessions.token(headers)?;
    // A token removed from the configuration since sign-in no longer signs anyone in.
    let name = state.tokens.name_of(&token)?;
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).ok()?);
    Some((h, name))
}

/// What a page answers when the API said no: sign in again on 401, a readable page otherwise.
fn failure(e: ApiError, who: &str, current: &str) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        return Redirect::to("/ui/login").into_response();
    }
    let field = e.field.as_deref().map(|f| format!(" ({})", esc(f))).unwrap_or_default();
    let body = format!(r#"<p role="alert" class="flash flash-error">{}{field}</p><p><a href="{current}">Back</a></p>"#, esc(&e.message));
    (e.status, Html(page(e.status.canonical_reason().unwrap_or("Error"), current, Some(who), &body))).into_response()
}

/// `?a=b` of the request, parsed the way the JSON API parses it.
fn query<T: serde::de::DeserializeOwned>(raw: &Option<String>) -> Result<Query<T>, axum::extract::rejection::QueryRejection> {
    let uri: Uri = format!("/?{}", raw.as_deref().unwrap_or("")).parse().unwrap_or_else(|_| Uri::from_static("/"));
    Query::try_from_uri(&uri)
}

macro_rules! signed_in {
    ($state:expr, $headers:expr) => {
        match session(&$state, &$headers) {
            Some(s) => s,
            None => return Redirect::to("/ui/login").into_response(),
        }
    };
}

// ---- sign in ----------------------------------------------------------------------------

async fn login_form() -> Html<String> {
    Html(page(
        "Sign in",
        "",
        None,
        r#"<form method="post" action="/ui/login" class="card narrow">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="hint">A token of tf-api (any scope; pages need the scope of what they show).</p>
<button type="submit">Sign in</button></form>"#,
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    let form: Option<LoginForm> = serde_urlencoded::from_bytes(&body).ok();
    let token = form.map(|f| f.token.trim().to_string()).unwrap_or_default();
    if state.tokens.name_of(&token).is_none() || token.contains([';', '\r', '\n']) {
        let body = r#"<p role="alert" class="flash flash-error">Unknown token.</p><p><a href="/ui/login">Try again</a></p>"#;
        return (StatusCode::UNAUTHORIZED, Html(page("Sign in", "", None, body))).into_response();
    }
    let cookie = state.sessions.start(token);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/runs")).into_response()
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let cookie = state.sessions.end(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}

// ---- runs -------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct PageQuery {
    /// Only the refreshed part of the page (the live refresh asks for it).
    fragment: Option<String>,
    flash: Option<String>,
    error: Option<String>,
}

impl PageQuery {
    /// The console's own parameters of a page's query (an unreadable query has none).
    fn of(raw: &Option<String>) -> PageQuery {
        query::<PageQuery>(raw).map(|q| q.0).unwrap_or_default()
    }

    /// The message a redirect left for the page (`flash`, or `error` shown as one).
    fn flash(&self) -> String {
        html::flash(self.flash.as_deref().or(self.error.as_deref()), self.error.is_some())
    }
}

/// The query without the console's own parameters, for the API handler.
fn api_query(raw: &Option<String>) -> Option<String> {
    raw.as_ref().map(|q| {
        q.split('&')
            .filter(|kv| {
                let k = kv.split('=').next().unwrap_or("");
                !["fragment", "flash", "error", "diff"].contains(&k) && !kv.ends_with('=')
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn run_link(run_id: &str) -> String {
    format!(r#"<a href="/ui/runs/{}">{}</a>"#, url_part(run_id, true), esc(run_id))
}

async fn runs(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let filters: Value = query::<Value>(&raw).map(|q| q.0).unwrap_or(json!({}));
    let out = match crate::runs::list(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/runs"),
    };
    let rows: Vec<Vec<String>> = out["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let source = match (r["source_topic"].as_str(), r["schedule_id"].as_str()) {
                (Some(t), _) => format!("{}[{}]@{}", esc(t), r["source_partition"], r["source_offset"]),
                (None, Some(s)) => format!("{} for {}", esc(s), esc(&text(&r["scheduled_for"]))),
                _ => "–".into(),
            };
            vec![
                esc(&text(&r["fired_at"])),
                run_link(r["run_id"].as_str().unwrap_or("")),
                format!("{} v{}", esc(&text(&r["definition_id"])), r["definition_version"]),
                esc(&text(&r["dedupe_key"])),
                source,
                status(r["status"].as_str().unwrap_or("?")),
                r["tasks_spawned"].to_string(),
            ]
        })
        .collect();
    let mut listing =
        table("Runs, newest first", &["Fired", "Run", "Definition", "Key", "Source", "Status", "Tasks"], &rows, "No runs match.");
    if let Some(next) = out["next_cursor"].as_str() {
        let mut q = api_query(&raw).unwrap_or_default();
        q = q.split('&').filter(|kv| !kv.starts_with("cursor=") && !kv.is_empty()).collect::<Vec<_>>().join("&");
        let _ = write!(
            listing,
            r#"<p><a href="/ui/runs?{q}{}cursor={}">Older runs</a></p>"#,
            if q.is_empty() { "" } else { "&amp;" },
            url_part(next, false)
        );
    }
    if own.fragment.is_some() {
        return Html(listing).into_response();
    }
    let field = |name: &str| esc(filters[name].as_str().unwrap_or(""));
    let statuses = ["", "running", "completed", "failed", "cancelled", "deduplicated"];
    let options: String = statuses
        .iter()
        .map(|s| {
            let selected = if filters["status"].as_str().unwrap_or("") == *s { " selected" } else { "" };
            format!(r#"<option value="{s}"{selected}>{}</option>"#, if s.is_empty() { "any" } else { s })
        })
        .collect();
    let body = format!(
        r#"{flash}<form method="get" action="/ui/runs" class="filters" role="search">
<label>Definition <input name="definition" value="{}"></label>
<label>Dedupe key <input name="key" value="{}"></label>
<label>Status <select name="status">{options}</select></label>
<button type="submit">Filter</button></form>
<div id="runs" data-refresh="5000" aria-live="polite">{listing}</div>"#,
        field("definition"),
        field("key"),
        flash = own.flash(),
    );
    Html(page("Runs", "/ui/runs", Some(&who), &body)).into_response()
}

async fn run(State(state): State<AppState>, headers: HeaderMap, Path(run_id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let r = match crate::runs::describe(State(state.clone()), auth, Path(run_id.clone())).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/runs"),
    };
    let src = &r["source"];
    let mut steps = String::new();
    if src["kind"] == "cron" {
        steps.push_str(&html::lineage_step(
            "schedule",
            &esc(&text(&src["schedule_id"])),
            &[format!("slot {}", esc(&text(&src["scheduled_for"])))],
        ));
    } else {
        steps.push_str(&html::lineage_step("event", &esc(&text(&src["event_id"])), &[]));
        steps.push_str(&html::lineage_step(
            "topic",
            &esc(&text(&src["topic"])),
            &[format!("partition {}", src["partition"]), format!("offset {}", src["offset"])],
        ));
    }
    steps.push_str(&html::lineage_step(
        "run",
        &esc(&run_id),
        &[
            format!("{} v{}", esc(&text(&r["definition"]["id"])), r["definition"]["version"]),
            format!("key {} · generation {} · attempt {}", esc(&text(&r["dedupe_key"])), r["generation"], r["attempt"]),
            status(r["status"].as_str().unwrap_or("?")),
        ],
    ));
    let tasks: Vec<&Value> = r["tasks"].as_array().into_iter().flatten().collect();
    let task_lines: Vec<String> =
        tasks.iter().map(|t| format!("{} {}", esc(&text(&t["task_id"])), status(t["status"].as_str().unwrap_or("?")))).collect();
    steps.push_str(&html::lineage_step("tasks", &format!("{} task(s)", tasks.len()), &task_lines));
    let results: Vec<String> = r["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| match x["offset"].as_i64() {
            Some(o) => format!("{} → partition {} offset {o}", esc(&text(&x["status"])), x["partition"]),
            None if !x["published_at"].is_null() => format!("{} (published; offset not recorded)", esc(&text(&x["status"]))),
            None => format!("{} (not published yet)", esc(&text(&x["status"]))),
        })
        .collect();
    steps.push_str(&html::lineage_step("results", "taskfactory.results", &results));
    let task_rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let id = t["task_id"].as_str().unwrap_or("");
            let link = if t["type"] == "human" && t["status"] == "awaiting_human" {
                format!(r#"<a href="/ui/tasks/{}">{}</a>"#, url_part(id, true), esc(id))
            } else {
                esc(id)
            };
            vec![
                link,
                esc(&text(&t["type"])),
                status(t["status"].as_str().unwrap_or("?")),
                esc(&text(&t["output"])),
                esc(&text(&t["error"])),
            ]
        })
        .collect();
    let mut actions = String::new();
    let st = r["status"].as_str().unwrap_or("");
    if st == "running" {
        let _ = write!(
            actions,
            r#"<form method="post" action="/ui/runs/{}/cancel" class="inline"><label>Reason <input name="reason"></label> <button type="submit">Cancel run</button></form>"#,
            url_part(&run_id, true)
        );
    }
    if st == "failed" || st == "cancelled" {
        let _ = write!(
            actions,
            r#"<form method="post" action="/ui/runs/{}/retry" class="inline"><button type="submit">Retry run</button></form>"#,
            url_part(&run_id, true)
        );
    }
    let body = format!(
        r#"{flash}<section aria-labelledby="lineage"><h2 id="lineage">Lineage</h2><ol class="lineage">{steps}</ol></section>
{actions}
<p><a href="{ui}" rel="noopener">Open in the Temporal UI</a></p>
<section aria-labelledby="tasks-h"><h2 id="tasks-h">Tasks</h2>{tasks}</section>
<section aria-labelledby="ctx"><h2 id="ctx">Context snapshot</h2><pre>{context}</pre>
<h3>How each source was obtained</h3><pre>{sources}</pre></section>"#,
        flash = own.flash(),
        ui = esc(r["temporal_ui"].as_str().unwrap_or("#")),
        tasks = table("Tasks of the run", &["Task", "Type", "Status", "Output", "Error"], &task_rows, "No tasks."),
        context = esc(&serde_json::to_string_pretty(&r["context"]).unwrap_or_default()),
        sources = esc(&serde_json::to_string_pretty(&r["context_sources"]).unwrap_or_default()),
    );
    Html(page(&format!("Run {run_id}"), "/ui/runs", Some(&who), &body)).into_response()
}

#[derive(Deserialize, Default)]
struct ReasonForm {
    #[serde(default)]
    reason: String,
}

async fn run_action(State(state): State<AppState>, headers: HeaderMap, Path(path): Path<String>, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let form: ReasonForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let run_id = path.rsplit_once('/').map_or(path.as_str(), |(id, _)| id).to_string();
    let back = format!("/ui/runs/{}", url_part(&run_id, true));
    let payload = Bytes::from(json!({"reason": form.reason}).to_string());
    match crate::runs::act(State(state.clone()), auth, Path(path.clone()), payload).await {
        Ok((_, axum::Json(v))) => Redirect::to(&format!("{back}?flash={}", url_part(&text(&v["outcome"]), false))).into_response(),
        Err(e) if e.status == StatusCode::CONFLICT => {
            Redirect::to(&format!("{back}?error={}", url_part(&e.message, false))).into_response()
        }
        Err(e) => failure(e, &who, &back),
    }
}

// ---- definitions ------------------------------------------------------------------------

async fn definitions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let out = match crate::definitions::list(State(state.clone()), auth).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/definitions"),
    };
    let rows: Vec<Vec<String>> = out["definitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let id = d["id"].as_str().unwrap_or("");
            let state = if d["retired"] == true {
                "retired"
            } else if d["enabled"] == true {
                "enabled"
            } else {
                "disabled"
            };
            vec![
                format!(r#"<a href="/ui/definitions/{}">{}</a>"#, url_part(id, false), esc(id)),
                esc(&text(&d["name"])),
                d["version"].to_string(),
                status(state),
                esc(&text(&d["trigger"])),
                esc(&text(&d["created_at"])),
            ]
        })
        .collect();
    let body =
        table("Definitions, latest version each", &["Id", "Name", "Version", "State", "Trigger", "Since"], &rows, "No definitions yet.");
    Html(page("Definitions", "/ui/definitions", Some(&who), &body)).into_response()
}

#[derive(Deserialize, Default)]
struct DefinitionQuery {
    version: Option<i32>,
}

async fn definition(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let q: DefinitionQuery = query::<DefinitionQuery>(&raw).map(|q| q.0).unwrap_or_default();
    let fetch = |version: Option<i32>| {
        let (state, auth, id) = (state.clone(), auth.clone(), id.clone());
        async move {
            let raw = version.map(|v| format!("version={v}"));
            let q = query(&raw).map_err(|e| ApiError::bad_request("version", e.body_text()))?;
            crate::definitions::get(State(state), auth, Path(id), q).await.map(|j| j.0)
        }
    };
    let latest = match fetch(None).await {
        Ok(v) => v,
        Err(e) => return failure(e, &who, "/ui/definitions"),
    };
    let newest = latest["version"].as_i64().unwrap_or(1) as i32;
    let shown_version = q.version.unwrap_or(newest).clamp(1, newest);
    let shown = if shown_version == newest { latest.clone() } else { fetch(Some(shown_version)).await.unwrap_or(latest.clone()) };
    let yaml = |v: &Value| serde_yaml::to_string(&v["spec"]).unwrap_or_default();
    let diff = if shown_version > 1 {
        match fetch(Some(shown_version - 1)).await {
            Ok(prev) => format!("<h2>Changes from v{}</h2>{}", shown_version - 1, html::diff(&yaml(&prev), &yaml(&shown))),
            Err(_) => String::new(),
        }
    } else {
        String::new()
    };
    let versions: String = (1..=newest)
        .rev()
        .map(|v| {
            let here = if v == shown_version { r#" aria-current="page""# } else { "" };
            format!(r#"<li><a href="/ui/definitions/{}?version={v}"{here}>v{v}</a></li>"#, url_part(&id, false))
        })
        .collect();
    let fires: String = shown["next_fire_times"].as_array().into_iter().flatten().map(|t| format!("<li>{}</li>", esc(&text(t)))).collect();
    let fires = if fires.is_empty() { String::new() } else { format!("<h2>Next five fire times</h2><ul>{fires}</ul>") };
    let counts = sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM activity_runs WHERE definition_id = $1 AND fired_at > now() - interval '1 day' GROUP BY 1 ORDER BY 1",
    )
    .bind(&id)
    .fetch_all(&state.pool)
    .await
    .unwrap_or_default();
    let counts: String = counts.iter().map(|(s, n)| format!("<li>{} {n}</li>", status(s))).collect();
    let body = format!(
        r#"<p>{name} · {state} · {trigger} trigger · sha256 <code>{sha}</code></p>
<nav aria-label="Versions"><h2>Versions</h2><ul class="versions">{versions}</ul></nav>
<h2>Runs in the last day</h2><ul class="counts">{counts}</ul>
{fires}<h2>v{shown_version} as stored</h2><pre>{spec}</pre>{diff}"#,
        name = esc(&text(&shown["name"])),
        state = status(if shown["retired"] == true {
            "retired"
        } else if latest["enabled"] == true {
            "enabled"
        } else {
            "disabled"
        }),
        trigger = esc(&text(&shown["trigger"])),
        sha = esc(&text(&shown["spec_sha256"])),
        spec = esc(&yaml(&shown)),
        counts = if counts.is_empty() { "<li>none</li>".to_string() } else { counts },
    );
    Html(page(&format!("Definition {id}"), "/ui/definitions", Some(&who), &body)).into_response()
}

// ---- human tasks ------------------------------------------------------------------------

async fn tasks(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let out = match crate::tasks::inbox(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/tasks"),
    };
    let rows: Vec<Vec<String>> = out["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let id = t["task_id"].as_str().unwrap_or("");
            vec![
                format!(r#"<a href="/ui/tasks/{}">{}</a>"#, url_part(id, true), esc(id)),
                esc(&format!("{} v{}", text(&t["definition_id"]), text(&t["definition_version"]))),
                esc(&text(&t["params"])),
                esc(&text(&t["claimed_by"])),
                esc(&text(&t["created_at"])),
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
        return Html(listing).into_response();
    }
    let body = format!(r#"{}<div id="inbox" data-refresh="5000" aria-live="polite">{listing}</div>"#, own.flash());
    Html(page("Human tasks", "/ui/tasks", Some(&who), &body)).into_response()
}

async fn task(State(state): State<AppState>, headers: HeaderMap, Path(task_id): Path<String>, RawQuery(raw): RawQuery) -> Response {
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
    let run_id = task_id.rsplitn(3, '/').nth(2).unwrap_or("");
    let forms = if t.status == tf_definitions::TaskStatus::AwaitingHuman {
        let action = format!("/ui/tasks/{}", url_part(&task_id, true));
        format!(
            r#"<form method="post" action="{action}/complete" class="card" data-json-field="output">
<label for="output">Output (JSON)</label>
<textarea id="output" name="output" rows="6" required aria-describedby="output-error">{{}}</textarea>
<p id="output-error" class="field-error" role="alert" aria-live="assertive"></p>
<button type="submit">Complete</button></form>
<form method="post" action="{action}/reject" class="card">
<label for="reason">Reason</label><input id="reason" name="reason" required>
<button type="submit">Reject</button></form>"#
        )
    } else {
        format!("<p>This task is {}: nothing to decide.</p>", status(t.status.as_str()))
    };
    let body = format!(
        r#"{flash}<p>Status {st} · {kind} task · created {created} · run {run}</p>
<h2>Parameters</h2><pre>{params}</pre>{forms}"#,
        flash = own.flash(),
        st = status(t.status.as_str()),
        kind = esc(t.task_type.as_str()),
        created = esc(&t.created_at),
        run = run_link(run_id),
        params = esc(&serde_json::to_string_pretty(&t.params).unwrap_or_default()),
    );
    Html(page(&format!("Task {task_id}"), "/ui/tasks", Some(&who), &body)).into_response()
}

#[derive(Deserialize, Default)]
struct DecisionForm {
    output: Option<String>,
    reason: Option<String>,
}

async fn task_action(State(state): State<AppState>, headers: HeaderMap, Path(path): Path<String>, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let form: DecisionForm = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let task_id = path.rsplit_once('/').map_or(path.as_str(), |(id, _)| id).to_string();
    let back = format!("/ui/tasks/{}", url_part(&task_id, true));
    let payload = if path.ends_with("/complete") {
        // The browser checks the JSON first; this is the check that counts.
        match serde_json::from_str::<Value>(form.output.as_deref().unwrap_or("")) {
            Ok(output) => json!({ "output": output }),
            Err(e) => {
                return Redirect::to(&format!("{back}?error={}", url_part(&format!("the output is not JSON: {e}"), false))).into_response();
            }
        }
    } else {
        json!({ "reason": form.reason.unwrap_or_default() })
    };
    match crate::tasks::act(State(state.clone()), auth, Path(path.clone()), Bytes::from(payload.to_string())).await {
        Ok(_) => {
            let run_id = task_id.rsplitn(3, '/').nth(2).unwrap_or("");
            let done = if path.ends_with("/complete") { "completed" } else { "rejected" };
            Redirect::to(&format!("/ui/runs/{}?flash={}", url_part(run_id, true), url_part(&format!("task {task_id} {done}"), false)))
                .into_response()
        }
        Err(e) if matches!(e.status, StatusCode::CONFLICT | StatusCode::BAD_REQUEST) => {
            Redirect::to(&format!("{back}?error={}", url_part(&e.message, false))).into_response()
        }
        Err(e) => failure(e, &who, &back),
    }
}

// ---- dead letters -----------------------------------------------------------------------

async fn dead_letters(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let filters: Value = query::<Value>(&raw).map(|q| q.0).unwrap_or(json!({}));
    let out = match crate::dlq::browse(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/dead-letters"),
    };
    let rows: Vec<Vec<String>> = out["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let src = &d["source"];
            let redrive = if d["redrive"].is_null() {
                format!(
                    r#"<form method="post" action="/ui/dead-letters/redrive" class="inline"><input type="hidden" name="partition" value="{}"><input type="hidden" name="offset" value="{}"><button type="submit" aria-label="Redrive the dead letter at partition {} offset {}">Redrive</button></form>"#,
                    d["partition"], d["offset"], d["partition"], d["offset"]
                )
            } else {
                format!("redriven: {}", esc(&text(&d["redrive"])))
            };
            let event = if d["event"].is_null() {
                esc(&text(&d["decode_error"]))
            } else {
                format!("<details><summary>decoded</summary><pre>{}</pre></details>", esc(&serde_json::to_string_pretty(&d["event"]).unwrap_or_default()))
            };
            vec![
                format!("{}@{}", d["partition"], d["offset"]),
                esc(&text(&d["stage"])),
                esc(&text(&d["reason"])),
                format!("{}[{}]@{}", esc(&text(&src["topic"])), src["partition"], src["offset"]),
                event,
                redrive,
            ]
        })
        .collect();
    let field = |name: &str| esc(filters[name].as_str().unwrap_or(""));
    let body = format!(
        r#"{flash}<form method="get" action="/ui/dead-letters" class="filters" role="search">
<label>Source topic <input name="topic" value="{}"></label>
<label>Stage <input name="stage" value="{}" list="stages"></label>
<datalist id="stages"><option value="decode"><option value="filter"><option value="dedupe-key"><option value="start"></datalist>
<button type="submit">Filter</button></form>{}"#,
        field("topic"),
        field("stage"),
        table(
            &format!("Dead letters on {}", text(&out["topic"])),
            &["At", "Stage", "Reason", "Source", "Event", ""],
            &rows,
            "No dead letters match."
        ),
        flash = own.flash(),
    );
    Html(page("Dead letters", "/ui/dead-letters", Some(&who), &body)).into_response()
}

#[derive(Deserialize)]
struct RedriveForm {
    partition: i32,
    offset: i64,
}

async fn redrive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let Ok(form) = serde_urlencoded::from_bytes::<RedriveForm>(&body) else {
        return Redirect::to("/ui/dead-letters?error=the%20form%20names%20no%20dead%20letter").into_response();
    };
    let payload = json!({"records": [{"partition": form.partition, "offset": form.offset}]}).to_string();
    match crate::dlq::redrive(State(state.clone()), auth, Bytes::from(payload)).await {
        Ok((_, axum::Json(v))) => {
            let message = match (v["redriven"].get(0), v["skipped"].get(0)) {
                (Some(r), _) => format!("redriven to {} partition {} offset {}", text(&r["topic"]), r["partition"], r["offset"]),
                (None, Some(s)) => format!("not redriven: {}", text(&s["reason"])),
                _ => "nothing to redrive".into(),
            };
            Redirect::to(&format!("/ui/dead-letters?flash={}", url_part(&message, false))).into_response()
        }
        Err(e) => failure(e, &who, "/ui/dead-letters"),
    }
}

// ---- lag --------------------------------------------------------------------------------

async fn lag_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    if let Err(e) = state.tokens.require(&auth, Scope::Read) {
        return failure(e, &who, "/ui/lag");
    }
    let own = PageQuery::of(&raw);
    let samples = state.lag.samples();
    let mut out = String::new();
    if let Some(e) = state.lag.last_error() {
        let _ = write!(out, r#"<p role="alert" class="flash flash-error">The last lag sample failed: {}</p>"#, esc(&e));
    }
    match samples.last() {
        None => out.push_str(r#"<p class="empty">No sample yet.</p>"#),
        Some(last) => {
            let total: Vec<f64> = samples.iter().map(|s| s.total() as f64).collect();
            let routed: Vec<f64> = samples
                .windows(2)
                .map(|w| {
                    let secs = w[1].at.duration_since(w[0].at).unwrap_or_default().as_secs_f64().max(0.001);
                    (w[1].committed() - w[0].committed()).max(0) as f64 / secs
                })
                .collect();
            let runs_per_minute = sqlx::query_scalar::<_, i64>(
                "SELECT count(r.run_id) FROM generate_series(now() - interval '59 minutes', now(), interval '1 minute') AS m(t)
                 LEFT JOIN activity_runs r ON r.fired_at > m.t - interval '1 minute' AND r.fired_at <= m.t
                 GROUP BY m.t ORDER BY m.t",
            )
            .fetch_all(&state.pool)
            .await
            .unwrap_or_default();
            let runs: Vec<f64> = runs_per_minute.iter().map(|n| *n as f64 / 60.0).collect();
            let _ = write!(
                out,
                r#"<p>Group <code>{}</code>: total lag <strong id="total-lag">{}</strong> records (sampled every {} s; {} sample(s) over the last hour).</p><div class="sparks">{}{}{}</div>"#,
                esc(&state.router_group),
                last.total(),
                state.lag_every.as_secs_f64(),
                samples.len(),
                html::sparkline("Lag", &total, "records"),
                html::sparkline("Routed", &routed, "events/s"),
                html::sparkline("Runs started", &runs, "runs/s (per minute)"),
            );
            let rows: Vec<Vec<String>> = last
                .partitions
                .iter()
                .map(|p| {
                    vec![
                        esc(&p.topic),
                        p.partition.to_string(),
                        p.committed.map_or("–".into(), |c| c.to_string()),
                        p.high.to_string(),
                        p.lag().to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                "Lag per partition, latest sample",
                &["Topic", "Partition", "Committed", "End", "Lag"],
                &rows,
                "The group reads no partition.",
            ));
        }
    }
    if own.fragment.is_some() {
        return Html(out).into_response();
    }
    let body = format!(r#"<div id="lag" data-refresh="5000" aria-live="polite">{out}</div>"#);
    Html(page("Consumer lag", "/ui/lag", Some(&who), &body)).into_response()
}
