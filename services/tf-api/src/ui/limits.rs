//! The Limits page: each flow-control limit and key that holds or queues runs (and budgeted
//! tasks) now, from `../flow.rs`, live.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::html::table;
use super::{PageQuery, failure, fragment, respond, run_link, signed_in};
use crate::state::AppState;

pub async fn show(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let out = match crate::flow::limits(State(state.clone()), auth).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/limits"),
    };
    let rows: Vec<Vec<Markup>> = out
        .limits
        .iter()
        .map(|l| {
            vec![
                html! { code { (l.limit) } },
                html! { @if l.key.is_empty() { "(whole definition)" } @else { (l.key) } },
                html! { (l.held) "/" (l.capacity) },
                html! { (l.waiting) },
                html! { @for (i, run) in l.next.iter().enumerate() { @if i > 0 { ", " } (run_link(run)) } },
            ]
        })
        .collect();
    let listing = html! {
        (table("Limits holding or queueing work, most waiters first", &["Limit", "Key", "Held", "Waiting", "Next in line"], &rows, "Nothing waits for a limit."))
        p { a href="/ui/runs?status=waiting" { "Waiting runs, with why each waits" } }
    };
    if own.fragment.is_some() {
        return fragment(listing);
    }
    let body = html! { div #limits data-refresh="5000" aria-live="polite" { (listing) } };
    respond("Limits", "/ui/limits", &who, body)
}
