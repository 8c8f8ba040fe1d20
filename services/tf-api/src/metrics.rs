//! tf-api's metrics, through the `metrics` facade and served by `tf-runtime` on
//! `TF_API_METRICS_ADDR` like the router's and the worker's (not on the API port, which is for
//! token holders).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, counter, describe_counter};

use crate::AppState;

/// Response classes counted per request.
const CLASSES: [&str; 5] = ["2xx", "401", "403", "4xx", "5xx"];

/// Handles to the API's series, made once (after the recorder is installed).
pub struct Metrics {
    responses: [Counter; 5],
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
        Metrics {
            responses: CLASSES.map(|class| counter!("tf_api_responses_total", "class" => class)),
            events_accepted: counter!("tf_api_events_accepted_total"),
            definitions_applied: counter!("tf_api_definitions_applied_total"),
            tasks_decided: counter!("tf_api_tasks_decided_total"),
            dead_letters_redriven: counter!("tf_api_dead_letters_redriven_total"),
        }
    }

    fn count(&self, status: u16) {
        let class = match status {
            200..=299 => 0,
            401 => 1,
            403 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.responses[class].increment(1);
    }
}

/// Counts every response by class.
pub async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics.count(response.status().as_u16());
    response
}
