//! Telemetry, set up once: logs through `tracing` for every binary, and a minimal Prometheus
//! text endpoint the services serve their counters on.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `TF_LOG` is the filter (`tracing` env-filter syntax, `default` when unset) and
/// `TF_LOG_FORMAT=json` switches to one JSON object per line. Logs go to stderr, in colour only
/// when stderr is a terminal and `NO_COLOR` is unset, so log files stay plain text.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TF_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if std::env::var("TF_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
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
