//! The worker's metrics, through the `metrics` facade (`tf-runtime` renders them): the results
//! relay, the schedule reconciler, task and run durations, and the Temporal SDK's own worker
//! metrics (`temporal_*`, see `sdk_metrics`).

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tf_runtime::Buckets;

/// Bounds of the task and run durations: from a quick HTTP call to a human decision.
const TASK_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0];

pub const BUCKETS: &[Buckets] = &[
    Buckets::Full("tf_worker_task_duration_seconds", TASK_BOUNDS),
    Buckets::Full("tf_worker_run_duration_seconds", TASK_BOUNDS),
    Buckets::Full("tf_worker_flow_wait_seconds", TASK_BOUNDS),
    Buckets::Full("tf_worker_event_wait_seconds", TASK_BOUNDS),
    Buckets::Prefix("temporal_", crate::sdk_metrics::BOUNDS),
];

/// Handles to the worker's series, made once (after the recorder is installed).
pub struct Metrics {
    pub results_published: Counter,
    pub relay_batches_failed: Counter,
    pub results_truncated: Counter,
    pub results_quarantined: Counter,
    /// 1 while this worker holds the relay lock.
    pub relay_leader: Gauge,
    /// 1 while the relay is paused because the schema registry refuses the result schema.
    pub relay_blocked: Gauge,
    /// Results in the outbox not yet published, as last seen by the relay.
    pub results_pending: Gauge,
    pub schedule_changes: Counter,
    pub reconcile_failures: Counter,
    /// Age of the oldest result waiting for the relay, in seconds (0 when none waits).
    pub results_oldest_pending_seconds: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        describe_counter!("tf_worker_results_published_total", "Task results the relay published to taskfactory.results.");
        describe_counter!("tf_worker_relay_batches_failed_total", "Relay transactions aborted and retried.");
        describe_counter!(
            "tf_worker_results_truncated_total",
            "Results published with their output replaced by a note (over the size limit)."
        );
        describe_counter!(
            "tf_worker_results_quarantined_total",
            "Results that can never be published, marked in task_results and skipped."
        );
        describe_gauge!("tf_worker_relay_leader", "1 when this worker runs the deployment's results relay.");
        describe_gauge!(
            "tf_worker_relay_blocked",
            "1 while the relay is paused because the schema registry refuses the result schema (a setting to fix; no result is skipped)."
        );
        describe_gauge!("tf_worker_results_pending", "Results in the outbox not yet published (seen by the relay).");
        describe_counter!("tf_worker_schedule_changes_total", "Schedules created, updated, paused, resumed or deleted.");
        describe_counter!("tf_worker_schedule_reconcile_failures_total", "Reconcile rounds that failed and were retried.");
        describe_gauge!(
            "tf_worker_results_oldest_pending_seconds",
            "Age of the oldest result waiting for the relay (relay lag), as the relay last saw it."
        );
        describe_histogram!("tf_worker_task_duration_seconds", "From a task's start to its result, by definition.");
        describe_histogram!("tf_worker_run_duration_seconds", "From a run's trigger firing to the run's end, by definition.");
        describe_counter!(
            "tf_worker_flow_decisions_total",
            "Flow-control decisions by definition (or budget) and verdict: go, wait (a look that found the limit full) or skip (rate-limited)."
        );
        describe_histogram!(
            "tf_worker_flow_wait_seconds",
            "How long runs (or budgeted tasks) waited for a flow-control limit before they executed, by definition (or budget)."
        );
        describe_counter!(
            "tf_worker_event_waits_total",
            "wait_for_event steps that ended, by definition and outcome: received (an event came) or timed_out (docs/steps.md)."
        );
        describe_histogram!(
            "tf_worker_event_wait_seconds",
            "How long wait_for_event steps waited until their event or their timeout, by definition."
        );
        Metrics {
            results_published: counter!("tf_worker_results_published_total"),
            relay_batches_failed: counter!("tf_worker_relay_batches_failed_total"),
            results_truncated: counter!("tf_worker_results_truncated_total"),
            results_quarantined: counter!("tf_worker_results_quarantined_total"),
            relay_leader: gauge!("tf_worker_relay_leader"),
            relay_blocked: gauge!("tf_worker_relay_blocked"),
            results_pending: gauge!("tf_worker_results_pending"),
            schedule_changes: counter!("tf_worker_schedule_changes_total"),
            reconcile_failures: counter!("tf_worker_schedule_reconcile_failures_total"),
            results_oldest_pending_seconds: gauge!("tf_worker_results_oldest_pending_seconds"),
        }
    }

    /// From a task's start to its result.
    pub fn task_finished(&self, definition: &str, seconds: f64) {
        histogram!("tf_worker_task_duration_seconds", "definition" => definition.to_string()).record(seconds);
    }

    /// A flow-control decision about a run of `definition`.
    pub fn flow_verdict(&self, definition: &str, verdict: &tf_store::flow::Verdict) {
        let (verdict, control) = words(verdict);
        counter!("tf_worker_flow_decisions_total", "definition" => definition.to_string(), "verdict" => verdict, "control" => control)
            .increment(1);
    }

    /// A decision about a task's shared budget.
    pub fn budget_verdict(&self, budget: &str, verdict: &tf_store::flow::Verdict) {
        let (verdict, control) = words(verdict);
        counter!("tf_worker_flow_decisions_total", "budget" => budget.to_string(), "verdict" => verdict, "control" => control).increment(1);
    }

    /// A run or task that waited was let through after `seconds`.
    pub fn flow_waited(&self, label: (&'static str, &str), seconds: f64) {
        histogram!("tf_worker_flow_wait_seconds", label.0 => label.1.to_string()).record(seconds);
    }

    /// A wait for an event ended after `seconds`: `received` or `timed_out`.
    pub fn event_wait_ended(&self, definition: &str, outcome: &'static str, seconds: f64) {
        counter!("tf_worker_event_waits_total", "definition" => definition.to_string(), "outcome" => outcome).increment(1);
        histogram!("tf_worker_event_wait_seconds", "definition" => definition.to_string()).record(seconds);
    }

    /// From a run's trigger firing to its end.
    pub fn run_finished(&self, definition: &str, seconds: f64) {
        histogram!("tf_worker_run_duration_seconds", "definition" => definition.to_string()).record(seconds);
    }
}

/// The verdict, and the control that gave it (from the reason's first word; empty for `go`).
fn words(verdict: &tf_store::flow::Verdict) -> (&'static str, &'static str) {
    use tf_store::flow::Verdict;
    let (word, reason) = match verdict {
        Verdict::Go => return ("go", ""),
        Verdict::Wait { reason, .. } => ("wait", reason),
        Verdict::Skip { reason } => ("skip", reason),
    };
    let control = ["concurrency", "throttle", "rate_limit", "debounce", "batch", "singleton", "budget"]
        .into_iter()
        .find(|c| reason.starts_with(c.trim_end_matches("_limit")))
        .unwrap_or("other");
    (word, control)
}

#[cfg(test)]
mod tests {
    use tf_store::flow::Verdict;

    #[test]
    fn an_ended_wait_is_counted_by_outcome_and_timed() {
        let recorder = tf_runtime::test_recorder(super::BUCKETS);
        let m = metrics::with_local_recorder(&recorder, super::Metrics::new);
        metrics::with_local_recorder(&recorder, || {
            m.event_wait_ended("orders", "received", 3.0);
            m.event_wait_ended("orders", "timed_out", 86_400.0);
        });
        let text = recorder.handle().render();
        assert!(text.contains("tf_worker_event_waits_total{definition=\"orders\",outcome=\"received\"} 1"), "{text}");
        assert!(text.contains("tf_worker_event_waits_total{definition=\"orders\",outcome=\"timed_out\"} 1"), "{text}");
        assert!(text.contains("tf_worker_event_wait_seconds_bucket{definition=\"orders\",le=\"5\"} 1"), "{text}");
    }

    #[test]
    fn each_reason_names_its_control() {
        let skip = |r: &str| super::words(&Verdict::Skip { reason: r.into() });
        let wait = |r: &str| super::words(&Verdict::Wait { reason: r.into(), retry_in_ms: None });
        assert_eq!(skip("rate_limited 5/1m key c"), ("skip", "rate_limit"));
        assert_eq!(skip("debounced: run/x is newer"), ("skip", "debounce"));
        assert_eq!(skip("batched into run/x"), ("skip", "batch"));
        assert_eq!(skip("singleton: run/x is active"), ("skip", "singleton"));
        assert_eq!(wait("concurrency 2/2, 0 ahead"), ("wait", "concurrency"));
        assert_eq!(wait("throttle 10/1s, starts in 100 ms"), ("wait", "throttle"));
        assert_eq!(wait("budget crm 3/3, 1 ahead"), ("wait", "budget"));
        assert_eq!(super::words(&Verdict::Go), ("go", ""));
    }
}
