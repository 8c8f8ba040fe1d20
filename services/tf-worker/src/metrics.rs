//! The worker's Prometheus metrics: the results relay and the schedule reconciler. Workflow and
//! activity metrics are Temporal's own (server side, and the UI).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tf_telemetry::metric;

#[derive(Default)]
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
        tf_telemetry::build_info(&mut out, "tf-worker", env!("CARGO_PKG_VERSION"));
        out
    }
}
