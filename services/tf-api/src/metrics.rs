//! tf-api's Prometheus metrics, served on `TF_API_METRICS_ADDR` like the router's and the
//! worker's (not on the API port, which is for token holders).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// Response classes counted per request.
const CLASSES: [&str; 5] = ["2xx", "401", "403", "4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    responses: [AtomicU64; 5],
    pub events_accepted: AtomicU64,
    pub definitions_applied: AtomicU64,
    pub tasks_decided: AtomicU64,
    pub dead_letters_redriven: AtomicU64,
}

impl Metrics {
    fn count(&self, status: u16) {
        let class = match status {
            200..=299 => 0,
            401 => 1,
            403 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        use tf_telemetry::metric;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut out = String::new();
        let labels: Vec<String> = CLASSES.iter().map(|c| format!("{{class=\"{c}\"}}")).collect();
        let samples: Vec<(&str, f64)> = labels.iter().zip(&self.responses).map(|(l, c)| (l.as_str(), get(c))).collect();
        metric(&mut out, "tf_api_responses_total", "counter", "Responses by class (401 and 403 apart).", &samples);
        metric(
            &mut out,
            "tf_api_events_accepted_total",
            "counter",
            "Events acknowledged by Kafka through the ingress.",
            &[("", get(&self.events_accepted))],
        );
        metric(
            &mut out,
            "tf_api_definitions_applied_total",
            "counter",
            "Definitions applied (any outcome).",
            &[("", get(&self.definitions_applied))],
        );
        metric(
            &mut out,
            "tf_api_tasks_decided_total",
            "counter",
            "Human-task decisions the workflow accepted.",
            &[("", get(&self.tasks_decided))],
        );
        metric(
            &mut out,
            "tf_api_dead_letters_redriven_total",
            "counter",
            "Dead letters sent back to their topic.",
            &[("", get(&self.dead_letters_redriven))],
        );
        tf_telemetry::build_info(&mut out, "tf-api", env!("CARGO_PKG_VERSION"));
        out
    }
}

/// Counts every response by class.
pub async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics.count(response.status().as_u16());
    response
}

pub fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
