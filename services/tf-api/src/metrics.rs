//! tf-api's metrics, through the `metrics` facade and served by `tf-runtime` on
//! `TF_API_METRICS_ADDR` like the router's and the worker's (not on the API port, which is for
//! token holders).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, counter, describe_counter, describe_histogram, histogram};
use tf_runtime::Buckets;

/// Response classes counted per request.
const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "401", "403", "4xx", "5xx"];

/// Bounds of `tf_api_request_duration_seconds`: from a cached page to a slow redrive.
const DURATION_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub const BUCKETS: &[Buckets] = &[Buckets::Full("tf_api_request_duration_seconds", DURATION_BOUNDS)];

/// Handles to the API's series, made once (after the recorder is installed).
pub struct Metrics {
    responses: [Counter; 7],
    pub events_accepted: Counter,
    pub definitions_applied: Counter,
    pub tasks_decided: Counter,
    pub dead_letters_redriven: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        describe_counter!("tf_api_responses_total", "Responses by class (401 and 403 apart).");
        describe_counter!("tf_api_events_accepted_total", "Events acknowledged by Kafka through the ingress.");
        describe_counter!("tf_api_definitions_applied_total", "Definitions applied (any outcome).");
        describe_counter!("tf_api_tasks_decided_total", "Human-task decisions the workflow accepted.");
        describe_counter!("tf_api_dead_letters_redriven_total", "Dead letters sent back to their topic.");
        describe_histogram!(
            "tf_api_request_duration_seconds",
            "Time to answer a request, by route template (`unmatched` for unknown paths), method and status class."
        );
        Metrics {
            responses: CLASSES.map(|class| counter!("tf_api_responses_total", "class" => class)),
            events_accepted: counter!("tf_api_events_accepted_total"),
            definitions_applied: counter!("tf_api_definitions_applied_total"),
            tasks_decided: counter!("tf_api_tasks_decided_total"),
            dead_letters_redriven: counter!("tf_api_dead_letters_redriven_total"),
        }
    }

    fn count(&self, status: u16) {
        self.responses[class(status)].increment(1);
    }
}

/// The index in [`CLASSES`] of a status: only 5xx (and anything outside 100..=599) counts as a
/// server error, which the alert on `class="5xx"` reads.
fn class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        401 => 3,
        403 => 4,
        400..=499 => 5,
        _ => 6,
    }
}

/// A method as a label: the ones the API serves, anything else `other` (a client chooses the
/// method, and a label must not let it create series at will).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts every response by class and times it by route template, method and class. The route is
/// the template the request matched (`/runs/{*run_id}`), never the path a client sent.
pub async fn count(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics.count(status);
    histogram!("tf_api_request_duration_seconds", "route" => route, "method" => method, "class" => CLASSES[class(status)])
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn redirects_are_not_server_errors() {
        let name = |s: u16| super::CLASSES[super::class(s)];
        assert_eq!(
            [name(200), name(303), name(304), name(401), name(403), name(404), name(500), name(503)],
            ["2xx", "3xx", "3xx", "401", "403", "4xx", "5xx", "5xx"]
        );
    }
}
