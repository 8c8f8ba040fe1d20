//! The Lag page: the router group's lag per partition from `../lag.rs`'s samples, with sparklines
//! of lag, routed events/s and runs started/s over the last hour (live).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::html::{alert, sparkline, table};
use super::{PageQuery, failure, fragment, respond, signed_in};
use crate::auth::Scope;
use crate::state::AppState;

pub async fn show(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let (auth, who) = signed_in!(state, headers);
    if let Err(e) = state.tokens.require(&auth, Scope::Read) {
        return failure(e, &who, "/ui/lag");
    }
    let own = PageQuery::of(&raw);
    let samples = state.lag.samples();
    let runs = match samples.last() {
        Some(_) => Some(tf_store::runs::fired_per_minute(&state.pool, 60).await),
        None => None,
    };
    let out = html! {
        @if let Some(e) = state.lag.last_error() { (alert(&format!("The last lag sample failed: {e}"))) }
        @match samples.last() {
            None => p.empty { "No sample yet." },
            Some(last) => {
                @let total: Vec<f64> = samples.iter().map(|s| s.total() as f64).collect();
                @let routed: Vec<f64> = samples
                    .windows(2)
                    .map(|w| {
                        let secs = w[1].at.duration_since(w[0].at).unwrap_or_default().as_secs_f64().max(0.001);
                        (w[1].committed() - w[0].committed()).max(0) as f64 / secs
                    })
                    .collect();
                p {
                    "Group " code { (state.router_group) } ": total lag " strong #total-lag { (last.total()) }
                    " records (sampled every " (state.lag_every.as_secs_f64()) " s; " (samples.len()) " sample(s) over the last hour)."
                }
                div.sparks {
                    (sparkline("Lag", &total, "records"))
                    (sparkline("Routed", &routed, "events/s"))
                    @match &runs {
                        Some(Ok(per_minute)) => (sparkline("Runs started", &per_minute.iter().map(|n| *n as f64 / 60.0).collect::<Vec<_>>(), "runs/s (per minute)")),
                        Some(Err(e)) => (alert(&format!("counting the runs started failed: {e}"))),
                        None => {}
                    }
                }
                (table("Lag per partition, latest sample", &["Topic", "Partition", "Committed", "End", "Lag"], &partition_rows(last), "The group reads no partition."))
            }
        }
    };
    if own.fragment.is_some() {
        return fragment(out);
    }
    respond("Consumer lag", "/ui/lag", &who, html! { div #lag data-refresh="5000" aria-live="polite" { (out) } })
}

fn partition_rows(last: &crate::lag::Sample) -> Vec<Vec<Markup>> {
    last.partitions
        .iter()
        .map(|p| {
            vec![
                html! { (p.topic) },
                html! { (p.partition) },
                html! { @match p.committed { Some(c) => (c), None => "–" } },
                html! { (p.high) },
                html! { (p.lag()) },
            ]
        })
        .collect()
}
