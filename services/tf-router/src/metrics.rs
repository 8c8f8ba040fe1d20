//! The router's metrics, through the `metrics` facade; `tf-runtime` renders them on
//! `GET /metrics`. The names are the contract dashboards and alerts use (README, "Metrics").

use std::collections::BTreeSet;
use std::sync::Mutex;

use metrics::{Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tf_runtime::Buckets;

// Every DLQ stage is a `stage` label of `tf_router_dead_letters_total` from the start, so a
// dashboard's rate() has a series before the first dead letter.
use tf_kafka::dlq::{STAGES, Stage};

/// Bounds of `tf_router_start_seconds`: a healthy start takes milliseconds.
const START_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bounds of `tf_router_event_age_seconds`: from a busy-but-healthy router to a stopped one.
const AGE_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

pub const BUCKETS: &[Buckets] =
    &[Buckets::Full("tf_router_start_seconds", START_BOUNDS), Buckets::Full("tf_router_event_age_seconds", AGE_BOUNDS)];

/// Handles to the router's series, made once (after the recorder is installed).
pub struct Metrics {
    pub records: Counter,
    pub records_matched: Counter,
    pub runs_started: Counter,
    /// Matches that started no run, by what knew their generation's run: Temporal (the start
    /// was refused), the claim (the run has begun) or this router's recent starts.
    pub runs_deduplicated: Counter,
    pub runs_deduplicated_fast: Counter,
    pub runs_deduplicated_recent: Counter,
    pub generations_opened: Counter,
    pub claim_batches: Counter,
    dead_letters: [Counter; 9],
    pub dependency_retries: Counter,
    pub paused_misconfigured: Gauge,
    pub in_flight: Gauge,
    pub recent_starts: Gauge,
    pub definitions: Gauge,
    /// Partitions whose lag this router reported last, so revoked ones can be zeroed.
    lag_partitions: Mutex<BTreeSet<(String, i32)>>,
    /// From the record's Kafka timestamp to its routing.
    pub event_age: Histogram,
    /// From asking Temporal to start a run to its acknowledgement (retries included).
    pub start_latency: Histogram,
    /// Events delivered to waiting runs: to a `wait_for_event` step, or cancelling by `cancel_on`.
    pub delivered_to_steps: Counter,
    pub delivered_cancels: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        describe_counter!("tf_router_records_total", "Records consumed and finished (routed, filtered out or dead-lettered).");
        describe_counter!("tf_router_records_matched_total", "Records that matched at least one definition.");
        describe_counter!("tf_router_runs_started_total", "RunActivity workflows started.");
        describe_counter!(
            "tf_router_runs_deduplicated_total",
            "Matches that started no run because their generation has one, by who knew: `temporal` (the start was refused), `claim` (the run has begun; no start sent), `recent_start` (this router saw the start acknowledged; no start sent)."
        );
        describe_counter!("tf_router_generations_opened_total", "Dedupe generations (windows) opened by events.");
        describe_counter!("tf_router_claim_batches_total", "Claim resolution statements sent to PostgreSQL (each resolves a batch).");
        describe_counter!("tf_router_dependency_retries_total", "Retries after a dependency (registry, Temporal, Kafka) failed.");
        describe_counter!("tf_router_dead_letters_total", "Records written to the DLQ, by stage.");
        describe_gauge!(
            "tf_router_paused_misconfigured",
            "Records paused because a dependency refused this router's settings (credentials, base path, namespace); the log names the setting."
        );
        describe_gauge!("tf_router_in_flight", "Records being routed now.");
        describe_gauge!("tf_router_recent_starts", "Acknowledged starts remembered (TF_ROUTER_RECENT_STARTS bounds it).");
        describe_gauge!("tf_router_definitions", "Enabled event definitions loaded.");
        describe_gauge!(
            "tf_router_consumer_lag",
            "Records after this router's stored offset, per partition it is assigned (librdkafka statistics, every 5 s; 0 once revoked)."
        );
        describe_counter!(
            "tf_router_events_delivered_total",
            "Events delivered to runs that wait for them (docs/steps.md), by `to`: `step` (a wait_for_event step's event) or `cancel` (cancel_on cancelled the run). A replayed offset whose run took its event counts nothing."
        );
        describe_histogram!("tf_router_event_age_seconds", "From a record's Kafka timestamp to its routing.");
        describe_histogram!("tf_router_start_seconds", "From asking Temporal to start a run to the acknowledgement (retries included).");
        Metrics {
            records: counter!("tf_router_records_total"),
            records_matched: counter!("tf_router_records_matched_total"),
            runs_started: counter!("tf_router_runs_started_total"),
            runs_deduplicated: counter!("tf_router_runs_deduplicated_total", "by" => "temporal"),
            runs_deduplicated_fast: counter!("tf_router_runs_deduplicated_total", "by" => "claim"),
            runs_deduplicated_recent: counter!("tf_router_runs_deduplicated_total", "by" => "recent_start"),
            generations_opened: counter!("tf_router_generations_opened_total"),
            claim_batches: counter!("tf_router_claim_batches_total"),
            dead_letters: STAGES.map(|stage| counter!("tf_router_dead_letters_total", "stage" => stage)),
            dependency_retries: counter!("tf_router_dependency_retries_total"),
            paused_misconfigured: gauge!("tf_router_paused_misconfigured"),
            in_flight: gauge!("tf_router_in_flight"),
            recent_starts: gauge!("tf_router_recent_starts"),
            definitions: gauge!("tf_router_definitions"),
            lag_partitions: Mutex::default(),
            event_age: histogram!("tf_router_event_age_seconds"),
            start_latency: histogram!("tf_router_start_seconds"),
            delivered_to_steps: counter!("tf_router_events_delivered_total", "to" => "step"),
            delivered_cancels: counter!("tf_router_events_delivered_total", "to" => "cancel"),
        }
    }

    pub fn dead_letter(&self, stage: Stage) {
        self.dead_letters[stage as usize].increment(1);
    }

    /// Sets each assigned partition's lag; a partition no longer assigned reads 0 from this
    /// router, so summing over routers counts each partition once.
    pub fn set_consumer_lag(&self, lag: Vec<(String, i32, i64)>) {
        let mut known = self.lag_partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now: BTreeSet<(String, i32)> = lag.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        for (topic, partition) in known.difference(&now) {
            gauge!("tf_router_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string()).set(0.0);
        }
        for (topic, partition, n) in lag {
            gauge!("tf_router_consumer_lag", "topic" => topic, "partition" => partition.to_string()).set(n as f64);
        }
        *known = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let recorder = tf_runtime::test_recorder(BUCKETS);
        let m = metrics::with_local_recorder(&recorder, Metrics::new);
        m.records.increment(3);
        m.dead_letter(Stage::Decode);
        metrics::with_local_recorder(&recorder, || {
            m.set_consumer_lag(vec![("events.a".into(), 2, 7), ("events.a".into(), 3, 1)]);
            m.set_consumer_lag(vec![("events.a".into(), 2, 8)]);
        });
        m.event_age.record(0.3);
        let text = recorder.handle().render();
        assert!(text.contains("tf_router_records_total 3"), "{text}");
        assert!(text.contains("tf_router_dead_letters_total{stage=\"decode\"} 1"), "{text}");
        assert!(text.contains("tf_router_dead_letters_total{stage=\"start\"} 0"), "every stage has a series: {text}");
        assert!(text.contains("# TYPE tf_router_in_flight gauge"), "{text}");
        assert!(text.contains("tf_router_consumer_lag{topic=\"events.a\",partition=\"2\"} 8"), "{text}");
        assert!(text.contains("tf_router_consumer_lag{topic=\"events.a\",partition=\"3\"} 0"), "revoked reads 0: {text}");
        assert!(text.contains("tf_router_event_age_seconds_bucket{le=\"0.5\"} 1"), "{text}");
    }
}
