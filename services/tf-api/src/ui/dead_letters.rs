//! The Dead letters page: filter by stage and source topic, the decoded event, and redrive.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::html::{pretty, table, text};
use super::{PageQuery, api_query, back_with, failure, next_page_href, query, respond, signed_in};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let own = PageQuery::of(&raw);
    let filters: Value = query::<Value>(&raw).map(|q| q.0).unwrap_or(json!({}));
    let out = match crate::dlq::browse(State(state.clone()), auth, query(&api_query(&raw))).await {
        Ok(axum::Json(v)) => v,
        Err(e) => return failure(e, &who, "/ui/dead-letters"),
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let at = |v: Option<i64>| v.map_or("?".to_string(), |n| n.to_string());
    let rows: Vec<Vec<Markup>> = out
        .dead_letters
        .iter()
        .map(|d| {
            let src = &d.source;
            let (partition, offset) = (d.partition, d.offset);
            vec![
                html! { (partition) "@" (offset) },
                html! { (opt(&d.stage)) },
                html! { (opt(&d.reason)) },
                html! { (opt(&src.topic)) "[" (at(src.partition.map(i64::from))) "]@" (at(src.offset)) },
                html! {
                    @if d.event.is_null() { (opt(&d.decode_error)) }
                    @else { details { summary { "decoded" } pre { (pretty(&d.event)) } } }
                },
                html! {
                    @if let Some(redrive) = &d.redrive {
                        "redriven: " (text(redrive))
                    } @else {
                        form.inline method="post" action="/ui/dead-letters/redrive" {
                            input type="hidden" name="partition" value=(partition);
                            input type="hidden" name="offset" value=(offset);
                            button type="submit" aria-label={ "Redrive the dead letter at partition " (partition) " offset " (offset) } { "Redrive" }
                        }
                    }
                },
            ]
        })
        .collect();
    let more = out.next_cursor.as_deref().map(|next| next_page_href("/ui/dead-letters", &raw, next));
    let field = |name: &str| filters[name].as_str().unwrap_or("").to_string();
    let body = html! {
        (own.flash())
        form.filters method="get" action="/ui/dead-letters" role="search" {
            label { "Source topic " input name="topic" value=(field("topic")); }
            label { "Stage " input name="stage" value=(field("stage")) list="stages"; }
            datalist #stages { @for s in tf_kafka::dlq::STAGES { option value=(s); } }
            button type="submit" { "Filter" }
        }
        (table(&format!("Dead letters on {}", out.topic), &["At", "Stage", "Reason", "Source", "Event", ""], &rows, "No dead letters match."))
        @if let Some(href) = more { p { a href=(href) { "More dead letters" } } }
    };
    respond("Dead letters", "/ui/dead-letters", &who, body)
}

#[derive(Deserialize)]
struct RedriveForm {
    partition: i32,
    offset: i64,
}

pub async fn redrive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (auth, who) = signed_in!(state, headers);
    let Ok(form) = serde_urlencoded::from_bytes::<RedriveForm>(&body) else {
        return back_with("/ui/dead-letters", "the form names no dead letter", true);
    };
    let payload = json!({"records": [{"partition": form.partition, "offset": form.offset}]}).to_string();
    match crate::dlq::redrive(State(state.clone()), auth, Bytes::from(payload)).await {
        Ok((_, axum::Json(v))) => {
            let message = match (v.redriven.first(), v.skipped.first()) {
                (Some(r), _) => format!("redriven to {} partition {} offset {}", r.topic, r.partition, r.offset),
                (None, Some(s)) => format!("not redriven: {}", s.reason),
                _ => "nothing to redrive".into(),
            };
            back_with("/ui/dead-letters", &message, false)
        }
        Err(e) => failure(e, &who, "/ui/dead-letters"),
    }
}
