//! Telemetry, set up once: logs through `tracing` for every binary, OTLP trace export for the
//! services (`trace`), and a minimal Prometheus text endpoint they serve their counters on.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod trace;

pub use trace::TraceSetupError;

/// Logs (and, for a service, traces) for the life of the process. Dropping it flushes the spans
/// not yet exported.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export: spans not flushed at exit: {e}");
        }
    }
}

/// Logging for a command-line tool: no traces.
pub fn init_logging(default: &str) {
    subscriber(default, None);
}

/// Logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, trace export for `service`
/// (the OpenTelemetry `service.name`, unless `OTEL_SERVICE_NAME` says otherwise).
pub fn init_service(service: &'static str, default: &str) -> Result<Telemetry, TraceSetupError> {
    let provider = trace::provider(service)?;
    subscriber(default, provider.as_ref());
    if provider.is_some() {
        tracing::info!(service, "traces exported over OTLP");
    }
    Ok(Telemetry { provider })
}

/// `TF_LOG` is the filter (`tracing` env-filter syntax, `default` when unset) and
/// `TF_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr, in colour only
/// when stderr is a terminal and `NO_COLOR` is unset, so log files stay plain text.
fn subscriber(default: &str, provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_env("TF_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    let fmt = if std::env::var("TF_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) { fmt.json().boxed() } else { fmt.boxed() };
    let otel = provider.map(|p| tracing_opentelemetry::layer().with_tracer(opentelemetry::trace::TracerProvider::tracer(p, "taskfactory")));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
}

/// `tf_build_info{service, version} 1`, so dashboards can tell which build answers.
pub fn build_info(out: &mut String, service: &str, version: &str) {
    metric(out, "tf_build_info", "gauge", "The running build.", &[(&format!("{{service=\"{service}\",version=\"{version}\"}}"), 1.0)]);
}

/// A Prometheus histogram with fixed bucket bounds (seconds, say), safe to observe from any
/// thread.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_micros: std::sync::atomic::AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            sum_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let value = value.max(0.0);
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    /// Appends `<name>_bucket{le=...}`, `<name>_sum` and `<name>_count`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.samples(out, name, "");
    }

    /// The sample lines, with `labels` (`a="b"`, without braces) on each.
    fn samples(&self, out: &mut String, name: &str, labels: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let (sep, braced) = if labels.is_empty() { ("", String::new()) } else { (",", format!("{{{labels}}}")) };
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Relaxed);
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
        }
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braced} {total}");
    }
}

/// One [`Histogram`] per value of a label (a definition id, say), made on first use.
pub struct LabeledHistograms {
    label: &'static str,
    bounds: &'static [f64],
    by_value: std::sync::Mutex<std::collections::BTreeMap<String, Histogram>>,
}

impl LabeledHistograms {
    pub fn new(label: &'static str, bounds: &'static [f64]) -> LabeledHistograms {
        LabeledHistograms { label, bounds, by_value: Default::default() }
    }

    pub fn observe(&self, value_of_label: &str, value: f64) {
        let mut m = self.by_value.lock().expect("histograms");
        m.entry(value_of_label.to_string()).or_insert_with(|| Histogram::new(self.bounds)).observe(value);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (v, h) in self.by_value.lock().expect("histograms").iter() {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"");
            h.samples(out, name, &format!("{}=\"{v}\"", self.label));
        }
    }
}

/// Appends one metric in Prometheus text format.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Serves `render()` on `GET /metrics` at `addr` until the process ends, with `GET /healthz`
/// (200 while the process serves) and `GET /readyz` (200 when `ready()`, else 503) for
/// orchestrators' probes. A port that cannot be bound is logged, not fatal: the service matters
/// more than its metrics.
pub async fn serve_metrics(addr: String, render: Arc<dyn Fn() -> String + Send + Sync>, ready: Arc<std::sync::atomic::AtomicBool>) {
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "metrics endpoint disabled: cannot bind");
            return;
        }
    };
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr), "metrics on /metrics");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (render, ready) = (render.clone(), ready.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let response = if buf[..n].starts_with(b"GET /metrics") {
                let body = render();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else if buf[..n].starts_with(b"GET /healthz") {
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n".to_string()
            } else if buf[..n].starts_with(b"GET /readyz") {
                if ready.load(std::sync::atomic::Ordering::Relaxed) {
                    "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n".to_string()
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot ready\n".to_string()
                }
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_prometheus_text() {
        let mut out = String::new();
        super::metric(&mut out, "x_total", "counter", "Things.", &[("", 3.0), ("{stage=\"a\"}", 1.0)]);
        assert_eq!(out, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\nx_total{stage=\"a\"} 1\n");
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "X.");
        assert!(out.contains("# TYPE x_seconds histogram"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\nx_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("x_seconds_sum 4.25\nx_seconds_count 4"), "{out}");
        let l = LabeledHistograms::new("definition", &[1.0]);
        l.observe("orders", 0.5);
        l.observe("orders", 2.0);
        let mut out = String::new();
        l.render(&mut out, "t_seconds", "T.");
        assert!(
            out.contains("t_seconds_bucket{definition=\"orders\",le=\"1\"} 1\nt_seconds_bucket{definition=\"orders\",le=\"+Inf\"} 2"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{definition=\"orders\"} 2"), "{out}");
    }
}
