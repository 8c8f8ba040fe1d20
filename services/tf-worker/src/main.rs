// `tf-worker`: the binary. All wiring is in the library (`tf_worker::run`).

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tf_telemetry::init_service("tf-worker", "info").context("trace export (OTEL_EXPORTER_OTLP_*)")?;
    tf_worker::run(tf_worker::Config::parse()).await
}
