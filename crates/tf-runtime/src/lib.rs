//! The service runtime the router, the worker and the API share, so they cannot drift:
//! settings and logging come first (`tf-config`, `tf-telemetry`), then
//!
//! 1. **metrics** through the [`metrics`] facade, rendered by its Prometheus exporter
//!    ([`Metrics::install`]; each service declares its histograms' buckets there);
//! 2. **health** on the same port: `GET /metrics`, `GET /healthz` (200 while the process
//!    serves) and `GET /readyz` (200 while [`Ready`] says so: connected and working, not
//!    draining) ([`serve`]);
//! 3. **run until a shutdown signal**, SIGTERM or SIGINT ([`shutdown_signal`]), then each
//!    service drains its own work within `TF_SHUTDOWN_TIMEOUT` ([`deadline`]);
//! 4. **backoff** with jitter for every retry loop ([`Backoff`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// A histogram's bucket bounds (seconds, say), matched by its full metric name or, for families
/// such as the Temporal SDK's, by a name prefix.
pub enum Buckets {
    Full(&'static str, &'static [f64]),
    Prefix(&'static str, &'static [f64]),
}

/// The process's Prometheus recorder; every `metrics::counter!`/`gauge!`/`histogram!` after
/// [`Metrics::install`] lands here.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the global recorder with `buckets` (a histogram without buckets would render as
    /// a summary) and sets `tf_build_info{service, version} 1`. Call it before any metric handle
    /// is made: handles bind to the recorder present when they are created.
    pub fn install(service: &'static str, version: &'static str, buckets: &[Buckets]) -> Result<Metrics, RuntimeError> {
        let handle = builder(buckets)?.install_recorder()?;
        build_info(service, version);
        // Histograms keep raw samples until upkeep folds them in; with nobody scraping they
        // would grow without bound.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Metrics { handle })
    }

    /// Everything recorded so far, in Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

fn builder(buckets: &[Buckets]) -> Result<PrometheusBuilder, RuntimeError> {
    let mut b = PrometheusBuilder::new();
    for bucket in buckets {
        b = match bucket {
            Buckets::Full(name, bounds) => b.set_buckets_for_metric(Matcher::Full((*name).to_string()), bounds)?,
            Buckets::Prefix(prefix, bounds) => b.set_buckets_for_metric(Matcher::Prefix((*prefix).to_string()), bounds)?,
        };
    }
    Ok(b)
}

fn build_info(service: &'static str, version: &'static str) {
    metrics::describe_gauge!("tf_build_info", "The running build.");
    metrics::gauge!("tf_build_info", "service" => service, "version" => version).set(1.0);
}

/// A recorder for unit tests: use it with `metrics::with_local_recorder` and render it. Panics
/// on bounds the exporter refuses, as `Metrics::install` would fail on them.
pub fn test_recorder(buckets: &[Buckets]) -> metrics_exporter_prometheus::PrometheusRecorder {
    builder(buckets).map(PrometheusBuilder::build_recorder).expect("histogram bucket bounds the exporter accepts")
}

/// Whether the service is ready for traffic: false until it has connected its dependencies and
/// started working, false again once it drains.
#[derive(Clone, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics` (everything recorded), `/healthz` and `/readyz` on `addr` until the process
/// ends. An empty `addr` serves nothing; a
/// port that cannot be bound is logged, not fatal: the service matters more than its metrics.
pub fn serve(addr: &str, metrics: Metrics, ready: Ready) {
    use axum::http::StatusCode;
    use axum::routing::get;
    if addr.is_empty() {
        return;
    }
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.get();
                async move { if ready { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") } }
            }),
        );
    let addr = addr.to_string();
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "metrics endpoint disabled: cannot bind");
                return;
            }
        };
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr), "metrics on /metrics, probes on /healthz and /readyz");
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
}

/// Resolves on SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// Resolves `grace` after `stopping` does: what a service's drain races against.
pub async fn deadline(stopping: impl Future<Output = ()>, grace: Duration) {
    stopping.await;
    tokio::time::sleep(grace).await;
}

/// Pauses between retries: from `min` doubling up to `max`, each with random jitter (up to the
/// pause again, so callers paused together do not retry in lockstep), without end: the caller
/// decides when to stop, and `reset` after a success.
pub struct Backoff {
    min: Duration,
    max: Duration,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, delays: Backoff::delays(min, max) }
    }

    fn delays(min: Duration, max: Duration) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::new().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times().build()
    }

    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        // Built without a limit on times, the delays never run out; `max` is only a fallback.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from `min`.
    pub fn reset(&mut self) {
        self.delays = Backoff::delays(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_twice_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.pause()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)), "{delays:?}");
        assert!(delays[9] >= Duration::from_secs(1), "reaches the cap: {delays:?}");
        backoff.reset();
        let first = backoff.pause();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200), "starts again: {first:?}");
    }

    #[test]
    fn histograms_render_with_their_buckets() {
        let recorder = test_recorder(&[Buckets::Full("x_seconds", &[0.1, 1.0])]);
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_histogram!("x_seconds", "X.");
            for v in [0.05, 0.5, 0.7, 3.0] {
                metrics::histogram!("x_seconds").record(v);
            }
            metrics::counter!("y_total", "stage" => "a").increment(2);
            let _registered_only = metrics::gauge!("z");
        });
        let out = handle.render();
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\nx_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("x_seconds_sum 4.25\nx_seconds_count 4"), "{out}");
        assert!(out.contains("y_total{stage=\"a\"} 2"), "{out}");
        assert!(out.contains("\nz 0\n"), "a series renders from its registration: {out}");
    }
}
