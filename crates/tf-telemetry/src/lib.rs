//! Telemetry, set up once: logs through `tracing` for every binary and OTLP trace export for the
//! services (`trace`). Metrics and probes belong to the service runtime, `tf-runtime`.

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
