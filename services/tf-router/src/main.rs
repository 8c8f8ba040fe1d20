// `tf-router`: the binary. All wiring is in the library (`tf_router::run`).

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tf_telemetry::init_service("tf-router", "info").context("trace export (OTEL_EXPORTER_OTLP_*)")?;
    tf_router::run(tf_router::Config::parse()).await
}
