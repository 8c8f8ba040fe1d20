//! The worker's Prometheus metrics: the results relay, the schedule reconciler, task and run
//! durations, and the Temporal SDK's own worker metrics (`temporal_*`, see `sdk_metrics`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tf_telemetry::metric;

/// Bounds of `tf_worker_task_duration_seconds`: from a quick HTTP call to a human decision.
const TASK_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0];

pub struct Metrics {
    pub results_published: AtomicU64,
    pub relay_batches_failed: AtomicU64,
    pub results_truncated: AtomicU64,
    pub results_quarantined: AtomicU64,
    /// 1 while this worker holds the relay lock.
    pub relay_leader: AtomicI64,
    /// Results in the outbox not yet published, as last seen by the relay.
    pub results_pending: AtomicI64,
    pub schedule_changes: AtomicU64,
    pub reconcile_failures: AtomicU64,
    /// Age of the oldest result waiting for the relay, in seconds (0 when none waits).
    pub results_oldest_pending_seconds: AtomicI64,
    /// From a task's start to its result, by definition.
    pub task_duration: tf_telemetry::LabeledHistograms,
    /// From a run's trigger firing to its end, by definition.
    pub run_duration: tf_telemetry::LabeledHistograms,
    /// What the Temporal SDK reports about this worker.
    pub sdk: crate::sdk_metrics::SdkMetrics,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            results_published: Default::default(),
            relay_batches_failed: Default::default(),
            results_truncated: Default::default(),
            results_quarantined: Default::default(),
            relay_leader: Default::default(),
            results_pending: Default::default(),
            schedule_changes: Default::default(),
            reconcile_failures: Default::default(),
            results_oldest_pending_seconds: Default::default(),
            task_duration: tf_telemetry::LabeledHistograms::new("definition", TASK_BOUNDS),
            run_duration: tf_telemetry::LabeledHistograms::new("definition", TASK_BOUNDS),
            sdk: Default::default(),
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed) as f64;
        let mut out = String::new();
        metric(
            &mut out,
            "tf_worker_results_published_total",
            "counter",
            "Task results the relay published to taskfactory.results.",
            &[("", c(&self.results_published))],
        );
        metric(
            &mut out,
            "tf_worker_relay_batches_failed_total",
            "counter",
            "Relay transactions aborted and retried.",
            &[("", c(&self.relay_batches_failed))],
        );
        metric(
            &mut out,
            "tf_worker_results_truncated_total",
            "counter",
            "Results published with their output replaced by a note (over the size limit).",
            &[("", c(&self.results_truncated))],
        );
        metric(
            &mut out,
            "tf_worker_results_quarantined_total",
            "counter",
            "Results that can never be published, marked in task_results and skipped.",
            &[("", c(&self.results_quarantined))],
        );
        metric(
            &mut out,
            "tf_worker_relay_leader",
            "gauge",
            "1 when this worker runs the deployment's results relay.",
            &[("", g(&self.relay_leader))],
        );
        metric(
            &mut out,
            "tf_worker_results_pending",
            "gauge",
            "Results in the outbox not yet published (seen by the relay).",
            &[("", g(&self.results_pending))],
        );
        metric(
            &mut out,
            "tf_worker_schedule_changes_total",
            "counter",
            "Schedules created, updated, paused, resumed or deleted.",
            &[("", c(&self.schedule_changes))],
        );
        metric(
            &mut out,
            "tf_worker_schedule_reconcile_failures_total",
            "counter",
            "Reconcile rounds that failed and were retried.",
            &[("", c(&self.reconcile_failures))],
        );
        metric(
            &mut out,
            "tf_worker_results_oldest_pending_seconds",
            "gauge",
            "Age of the oldest result waiting for the relay (relay lag), as the relay last saw it.",
            &[("", g(&self.results_oldest_pending_seconds))],
        );
        self.task_duration.render(&mut out, "tf_worker_task_duration_seconds", "From a task's start to its result, by definition.");
        self.run_duration.render(
            &mut out,
            "tf_worker_run_duration_seconds",
            "From a run's trigger firing to the run's end, by definition.",
        );
        self.sdk.render(&mut out);
        tf_telemetry::build_info(&mut out, "tf-worker", env!("CARGO_PKG_VERSION"));
        out
    }
}
