//! The router's Prometheus metrics, served as text on `GET /metrics`. Hand-rolled: a few
//! counters do not justify a metrics framework in the build.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const STAGES: [&str; 8] = ["size", "decode", "filter", "dedupe-key", "event-time", "claim", "start", "panic"];

/// Bounds of `tf_router_start_seconds`: a healthy start takes milliseconds.
const START_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bounds of `tf_router_event_age_seconds`: from a busy-but-healthy router to a stopped one.
const AGE_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

pub struct Metrics {
    pub records: AtomicU64,
    pub records_matched: AtomicU64,
    pub runs_started: AtomicU64,
    pub runs_deduplicated: AtomicU64,
    pub runs_deduplicated_fast: AtomicU64,
    pub generations_opened: AtomicU64,
    pub claim_batches: AtomicU64,
    dead_letters: [AtomicU64; 8],
    pub dependency_retries: AtomicU64,
    pub in_flight: AtomicI64,
    pub definitions: AtomicI64,
    /// Per assigned partition: records after the stored offset (librdkafka's statistics).
    pub consumer_lag: std::sync::Mutex<Vec<(String, i32, i64)>>,
    /// From the record's Kafka timestamp to its routing.
    pub event_age: tf_telemetry::Histogram,
    /// From asking Temporal to start a run to its acknowledgement (retries included).
    pub start_latency: tf_telemetry::Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            records: Default::default(),
            records_matched: Default::default(),
            runs_started: Default::default(),
            runs_deduplicated: Default::default(),
            runs_deduplicated_fast: Default::default(),
            generations_opened: Default::default(),
            claim_batches: Default::default(),
            dead_letters: Default::default(),
            dependency_retries: Default::default(),
            in_flight: Default::default(),
            definitions: Default::default(),
            consumer_lag: Default::default(),
            event_age: tf_telemetry::Histogram::new(AGE_BOUNDS),
            start_latency: tf_telemetry::Histogram::new(START_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn dead_letter(&self, stage: &str) {
        debug_assert!(STAGES.contains(&stage), "unknown DLQ stage {stage}");
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.dead_letters[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        use tf_telemetry::metric;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut out = String::new();
        metric(
            &mut out,
            "tf_router_records_total",
            "counter",
            "Records consumed and finished (routed, filtered out or dead-lettered).",
            &[("", get(&self.records))],
        );
        metric(
            &mut out,
            "tf_router_records_matched_total",
            "counter",
            "Records that matched at least one definition.",
            &[("", get(&self.records_matched))],
        );
        metric(&mut out, "tf_router_runs_started_total", "counter", "RunActivity workflows started.", &[("", get(&self.runs_started))]);
        metric(
            &mut out,
            "tf_router_runs_deduplicated_total",
            "counter",
            "Starts refused by Temporal because the dedupe key's run exists.",
            &[("", get(&self.runs_deduplicated))],
        );
        metric(
            &mut out,
            "tf_router_runs_deduplicated_by_claim_total",
            "counter",
            "Matches skipped without a start because their dedupe generation already has a run.",
            &[("", get(&self.runs_deduplicated_fast))],
        );
        metric(
            &mut out,
            "tf_router_generations_opened_total",
            "counter",
            "Dedupe generations (windows) opened by events.",
            &[("", get(&self.generations_opened))],
        );
        metric(
            &mut out,
            "tf_router_claim_batches_total",
            "counter",
            "Claim resolution statements sent to PostgreSQL (each resolves a batch).",
            &[("", get(&self.claim_batches))],
        );
        metric(
            &mut out,
            "tf_router_dependency_retries_total",
            "counter",
            "Retries after a dependency (registry, Temporal, Kafka) failed.",
            &[("", get(&self.dependency_retries))],
        );
        let labels: Vec<String> = STAGES.iter().map(|s| format!("{{stage=\"{s}\"}}")).collect();
        let samples: Vec<(&str, f64)> = labels.iter().zip(&self.dead_letters).map(|(l, c)| (l.as_str(), get(c))).collect();
        metric(&mut out, "tf_router_dead_letters_total", "counter", "Records written to the DLQ, by stage.", &samples);
        metric(
            &mut out,
            "tf_router_in_flight",
            "gauge",
            "Records being routed now.",
            &[("", self.in_flight.load(Ordering::Relaxed) as f64)],
        );
        metric(
            &mut out,
            "tf_router_definitions",
            "gauge",
            "Enabled event definitions loaded.",
            &[("", self.definitions.load(Ordering::Relaxed) as f64)],
        );
        let lag = self.consumer_lag.lock().expect("lag").clone();
        let labels: Vec<String> = lag.iter().map(|(t, p, _)| format!("{{topic=\"{t}\",partition=\"{p}\"}}")).collect();
        let samples: Vec<(&str, f64)> = labels.iter().zip(&lag).map(|(l, (_, _, n))| (l.as_str(), *n as f64)).collect();
        metric(
            &mut out,
            "tf_router_consumer_lag",
            "gauge",
            "Records after this router's stored offset, per assigned partition (librdkafka statistics, every 5 s).",
            &samples,
        );
        self.event_age.render(&mut out, "tf_router_event_age_seconds", "From a record's Kafka timestamp to its routing.");
        self.start_latency.render(
            &mut out,
            "tf_router_start_seconds",
            "From asking Temporal to start a run to the acknowledgement (retries included).",
        );
        tf_telemetry::build_info(&mut out, "tf-router", env!("CARGO_PKG_VERSION"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.records.fetch_add(3, Ordering::Relaxed);
        m.dead_letter("decode");
        let text = m.render();
        assert!(text.contains("tf_router_records_total 3"));
        assert!(text.contains("tf_router_dead_letters_total{stage=\"decode\"} 1"));
        assert!(text.contains("# TYPE tf_router_in_flight gauge"));
        *m.consumer_lag.lock().unwrap() = vec![("events.a".into(), 2, 7)];
        m.event_age.observe(0.3);
        let text = m.render();
        assert!(text.contains("tf_router_consumer_lag{topic=\"events.a\",partition=\"2\"} 7"), "{text}");
        assert!(text.contains("tf_router_event_age_seconds_bucket{le=\"0.5\"} 1"), "{text}");
        assert!(text.contains("tf_build_info{service=\"tf-router\""), "{text}");
    }
}
