//! Traces: one trace per event, from the producer's W3C `traceparent` through the router's
//! decode, match and start, the run's activities and each task, to the result record's own
//! `traceparent` header. Exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (`OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf`, the default, or `http/json`); without it
//! spans stay log context and `traceparent`s pass through unchanged.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported here: use http/protobuf or http/json")]
    Protocol(String),
    #[error("cannot build the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The tracer provider when export is configured, `None` otherwise.
pub(crate) fn provider(service: &'static str) -> Result<Option<SdkTracerProvider>, TraceSetupError> {
    let endpoint_set = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default().trim() {
        "" | "http/protobuf" => Protocol::HttpBinary,
        "http/json" => Protocol::HttpJson,
        other => return Err(TraceSetupError::Protocol(other.to_string())),
    };
    // The endpoint (with `/v1/traces` appended), headers, timeout and compression come from the
    // standard OTEL_EXPORTER_OTLP_* variables, read by the exporter itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(protocol).build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(Some(SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build()))
}

/// Makes `span` a child of the W3C `traceparent` it continues (the producer's, or the router's
/// start span carried in a run's input). A missing or malformed one leaves `span` a root.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to link.
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` to hand downstream from inside `span`: its own context when traces are
/// exported, else `fallback` (the one it received), so correlation survives either way. A
/// fallback that is not a W3C `traceparent` is dropped, not carried: it is a producer's bytes,
/// and they end up in run rows, result headers and the user's systems (a NUL, say, is text
/// PostgreSQL refuses).
pub fn traceparent(span: &tracing::Span, fallback: Option<&str>) -> Option<String> {
    let cx = span.context();
    let fallback = || fallback.and_then(|tp| parse(tp).map(|_| tp.to_string()));
    if !cx.span().span_context().is_valid() {
        return fallback();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").or_else(fallback)
}

/// The context a W3C `traceparent` names, if it is one. The propagator alone accepts short
/// ids (`00-aa-bb-01`), so the field lengths are checked here: `00-<32 hex>-<16 hex>-<2 hex>`.
fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    let fields: Vec<&str> = traceparent.split('-').collect();
    let shaped = fields.len() == 4
        && fields
            .iter()
            .zip([2, 32, 16, 2])
            .all(|(f, n)| f.len() == n && f.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if !shaped {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_traceparents_pass_through() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = tracing::info_span!("x");
        continue_trace(&span, Some(tp));
        assert_eq!(traceparent(&span, Some(tp)).as_deref(), Some(tp));
        assert_eq!(traceparent(&span, None), None);
        // A producer's garbage is not handed on.
        for bad in ["00-aa-bb-01", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\0", ""] {
            assert_eq!(traceparent(&span, Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn with_the_layer_a_span_continues_the_producers_trace() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(opentelemetry::trace::TracerProvider::tracer(&provider, "t"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("route");
            continue_trace(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
            let tp = traceparent(&span, None).expect("a traceparent");
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!((parts[0], parts[1], parts[3]), ("00", "0af7651916cd43dd8448eb211c80319c", "01"), "{tp}");
            assert_ne!(parts[2], "b7ad6b7169203331", "the span's own id, not its parent's");
            // Garbage leaves a fresh root instead of failing the record.
            let root = tracing::info_span!("other");
            continue_trace(&root, Some("00-not-a-trace-01"));
            assert!(!traceparent(&root, None).expect("a root").contains("0af7651916cd43dd8448eb211c80319c"));
        });
    }
}
