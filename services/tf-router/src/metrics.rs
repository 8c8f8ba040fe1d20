//! The router's Prometheus metrics, served as text on `GET /metrics`. Hand-rolled: a few
//! counters do not justify a metrics framework in the build.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STAGES: [&str; 4] = ["size", "decode", "filter", "dedupe-key"];

#[derive(Default)]
pub struct Metrics {
    pub records: AtomicU64,
    pub records_matched: AtomicU64,
    pub runs_started: AtomicU64,
    pub runs_deduplicated: AtomicU64,
    pub runs_deduplicated_fast: AtomicU64,
    dead_letters: [AtomicU64; 4],
    pub dependency_retries: AtomicU64,
    pub in_flight: AtomicI64,
    pub definitions: AtomicI64,
}

impl Metrics {
    pub fn dead_letter(&self, stage: &str) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.dead_letters[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter("tf_router_records_total", "Records consumed and finished (routed, filtered out or dead-lettered).", get(&self.records));
        counter("tf_router_records_matched_total", "Records that matched at least one definition.", get(&self.records_matched));
        counter("tf_router_runs_started_total", "RunActivity workflows started.", get(&self.runs_started));
        counter("tf_router_runs_deduplicated_total", "Starts refused by Temporal because the dedupe key's run exists.", get(&self.runs_deduplicated));
        counter(
            "tf_router_runs_deduplicated_by_claim_total",
            "Matches skipped without a start because the dedupe key's claim is held.",
            get(&self.runs_deduplicated_fast),
        );
        counter("tf_router_dependency_retries_total", "Retries after a dependency (registry, Temporal, Kafka) failed.", get(&self.dependency_retries));
        let _ = writeln!(out, "# HELP tf_router_dead_letters_total Records written to the DLQ, by stage.\n# TYPE tf_router_dead_letters_total counter");
        for (stage, c) in STAGES.iter().zip(&self.dead_letters) {
            let _ = writeln!(out, "tf_router_dead_letters_total{{stage=\"{stage}\"}} {}", get(c));
        }
        let _ = writeln!(
            out,
            "# HELP tf_router_in_flight Records being routed now.\n# TYPE tf_router_in_flight gauge\ntf_router_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tf_router_definitions Enabled event definitions loaded.\n# TYPE tf_router_definitions gauge\ntf_router_definitions {}",
            self.definitions.load(Ordering::Relaxed)
        );
        out
    }
}

/// Serves `/metrics` on `addr` until the process ends. A port that cannot be bound is logged,
/// not fatal: routing matters more than its metrics.
pub async fn serve(addr: String, metrics: std::sync::Arc<Metrics>) {
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
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let response = if request.starts_with("GET /metrics") {
                let body = metrics.render();
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
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
    }
}
