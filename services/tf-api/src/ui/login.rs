//! Signing in and out: the token becomes a server-side session (`session.rs`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::html::{alert, page};
use crate::state::AppState;

pub async fn form() -> Html<String> {
    Html(
        page(
            "Sign in",
            "",
            None,
            html! {
                form.card.narrow method="post" action="/ui/login" {
                    label for="token" { "API token" }
                    input #token name="token" type="password" autocomplete="current-password" required autofocus;
                    p.hint { "A token of tf-api (any scope; pages need the scope of what they show)." }
                    button type="submit" { "Sign in" }
                }
            },
        )
        .into_string(),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

pub async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    let form: Option<LoginForm> = serde_urlencoded::from_bytes(&body).ok();
    let token = form.map(|f| f.token.trim().to_string()).unwrap_or_default();
    if state.tokens.name_of(&token).is_none() || token.contains([';', '\r', '\n']) {
        let body = html! { (alert("Unknown token.")) p { a href="/ui/login" { "Try again" } } };
        return (StatusCode::UNAUTHORIZED, Html(page("Sign in", "", None, body).into_string())).into_response();
    }
    let cookie = state.sessions.start(token);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/runs")).into_response()
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let cookie = state.sessions.end(&headers);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}
