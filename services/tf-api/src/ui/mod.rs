//! The web console under `/ui`: server-rendered pages over the same handlers as the JSON API
//! (the console calls them with the signed-in token, so scopes, validation and errors are the
//! API's), a little progressive JavaScript (live refresh, JSON checked before it is sent) and
//! assets embedded in the binary. Signing in starts a server-side session (`../session.rs`) whose
//! id the cookie carries; every page and form needs it.
//!
//! One page per file (`runs.rs`, `definitions.rs`, `tasks.rs`, `dead_letters.rs`,
//! `lag_page.rs` over `../lag.rs`'s samples, `login.rs`), each a maud template (`html.rs` holds the shared pieces) over
//! the API's handlers; the sign-in, flash and error handling they share is here.

mod dead_letters;
mod definitions;
mod html;
mod lag_page;
mod limits;
mod login;
mod runs;
mod tasks;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{*run_id}", get(runs::show).post(runs::act))
        .route("/ui/definitions", get(definitions::list))
        .route("/ui/definitions/{id}", get(definitions::show))
        .route("/ui/definitions/{id}/schedule/{action}", post(definitions::schedule_act))
        .route("/ui/tasks", get(tasks::inbox))
        .route("/ui/tasks/{*task_id}", get(tasks::show).post(tasks::act))
        .route("/ui/dead-letters", get(dead_letters::list))
        .route("/ui/dead-letters/redrive", post(dead_letters::redrive))
        .route("/ui/lag", get(lag_page::show))
        .route("/ui/limits", get(limits::show))
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

/// A full page for the signed-in `who`.
fn respond(title: &str, current: &str, who: &str, body: Markup) -> Response {
    Html(html::page(title, current, Some(who), body).into_string()).into_response()
}

/// Only the live-refreshed part of a page.
fn fragment(part: Markup) -> Response {
    Html(part.into_string()).into_response()
}

/// What a page answers when the API said no: sign in again on 401, a readable page otherwise.
fn failure(e: ApiError, who: &str, current: &str) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        return Redirect::to("/ui/login").into_response();
    }
    let message = match e.field.as_deref() {
        Some(f) => format!("{} ({f})", e.message),
        None => e.message.clone(),
    };
    let body = html! { (html::alert(&message)) p { a href=(current) { "Back" } } };
    (e.status, Html(html::page(e.status.canonical_reason().unwrap_or("Error"), current, Some(who), body).into_string())).into_response()
}

/// `?a=b` of the request, parsed the way the JSON API parses it.
fn query<T: serde::de::DeserializeOwned>(
    raw: &Option<String>,
) -> Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection> {
    let uri: Uri = format!("/?{}", raw.as_deref().unwrap_or("")).parse().unwrap_or_else(|_| Uri::from_static("/"));
    axum::extract::Query::try_from_uri(&uri)
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

/// The link to the next page of a list page (`/ui/runs`): its query as the API saw it, with
/// the API's `next` cursor in place of any earlier one.
fn next_page_href(page: &str, raw: &Option<String>, next: &str) -> String {
    let q = api_query(raw).unwrap_or_default();
    let mut kept: Vec<&str> = q.split('&').filter(|kv| !kv.starts_with("cursor=") && !kv.is_empty()).collect();
    let cursor = format!("cursor={}", html::url_part(next, false));
    kept.push(&cursor);
    format!("{page}?{}", kept.join("&"))
}

/// Where a redirect after a form goes: `back` with a message for the page to show.
fn back_with(back: &str, message: &str, error: bool) -> Response {
    let key = if error { "error" } else { "flash" };
    Redirect::to(&format!("{back}?{key}={}", html::url_part(message, false))).into_response()
}

macro_rules! signed_in {
    ($state:expr, $headers:expr) => {
        match crate::ui::session(&$state, &$headers) {
            Some(s) => s,
            None => return axum::response::Redirect::to("/ui/login").into_response(),
        }
    };
}
use signed_in;

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
    fn flash(&self) -> Markup {
        html::flash(self.flash.as_deref().or(self.error.as_deref()), self.error.is_some())
    }
}

fn run_link(run_id: &str) -> Markup {
    html! { a href={ "/ui/runs/" (html::url_part(run_id, true)) } { (run_id) } }
}
