//! `tf-api`: the task factory over HTTP, for operators and for services that do not speak Kafka
//! or hold database credentials. Definitions (list, get, validate, apply, retire), runs (list,
//! lineage) and CloudEvents ingress; every endpoint but `/healthz` and `/readyz` needs a bearer
//! token with the endpoint's scope.
//!
//! A library whose [`run`] the binary calls, so the wiring is one function.

mod auth;
mod definitions;
mod dlq;
mod error;
mod flow;
mod ingress;
mod lag;
mod metrics;
mod openapi;
mod runs;
mod schedules;
mod session;
mod state;
mod tasks;
mod ui;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use clap::Subcommand;
use rdkafka::producer::FutureProducer;
use tf_config::Settings;
use tf_envelope::{Codec, Registry};

use crate::error::ApiError;
use crate::state::AppState;

/// Serve the task factory's HTTP API.
///
/// Every setting is also an environment variable with the TF_ prefix.
#[derive(clap::Parser)]
#[command(name = "tf-api", version)]
pub struct Config {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "TF_API_ADDR", default_value = "127.0.0.1:18088")]
    addr: String,
    /// YAML file of API tokens: a list of {name, sha256, scopes: [read|write|ingest|tasks]}.
    /// `TF_API_TOKEN__<NAME>=<scope>,<scope>:<sha256 hex>` variables add to it.
    #[arg(long, env = "TF_API_TOKENS")]
    tokens: Option<std::path::PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`); empty to disable.
    #[arg(long, env = "TF_API_METRICS_ADDR", default_value = "127.0.0.1:9466")]
    metrics_addr: String,
    /// Largest request body in bytes (413 above it).
    #[arg(long, env = "TF_API_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// The router's topics, group and dead-letter topic: the dead letters `/dead-letters`
    /// browses and redrives (only to the router's topics), and the group whose lag the console
    /// shows.
    #[command(flatten)]
    router: tf_config::RouterKafka,
    /// Mark the console's session cookie `Secure`: set it when the console is served over TLS
    /// (directly or behind a proxy), so the browser never sends the cookie in clear.
    #[arg(long, env = "TF_API_SECURE_COOKIES", default_value_t = false)]
    secure_cookies: bool,
    /// How often the console samples the router group's lag, in milliseconds.
    #[arg(long, env = "TF_API_LAG_SAMPLE_MS", default_value_t = 10_000)]
    lag_sample_ms: u64,
    /// Largest encoded event in bytes; keep it under the topics' `max.message.bytes`.
    #[arg(long, env = "TF_API_MAX_EVENT_BYTES", default_value_t = 900_000)]
    max_event_bytes: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Print the SHA-256 of a token, the form the API is configured with (reads the token from
    /// stdin when not given, so it stays out of the shell history).
    HashToken {
        /// The token; prefer stdin.
        token: Option<String>,
    },
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// axum's own rejections (a body over the limit, a wrong content type) come as plain text;
/// clients get the same problem document as from every handler (ours are left as they are).
fn json_rejection(r: axum::response::Response, max_body_bytes: usize) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let is_json = r.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !is_json => ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is over {max_body_bytes} bytes (TF_API_MAX_BODY_BYTES)"),
            )
        }
        .into_response(),
        s @ (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::METHOD_NOT_ALLOWED) if !is_json => {
            ApiError::new(s, "invalid", s.canonical_reason().unwrap_or("refused").to_string()).into_response()
        }
        _ => r,
    }
}

/// The router, built from the table of operations the OpenAPI document is made of.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut by_path: std::collections::BTreeMap<&str, axum::routing::MethodRouter<AppState>> = Default::default();
    let mut routed = std::collections::HashSet::new();
    for o in openapi::operations() {
        // Actions that share a wildcard route (retry and cancel) share its handler.
        if !routed.insert((o.route, o.method)) {
            continue;
        }
        let handler = (o.handler)();
        let merged = match by_path.remove(o.route) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(o.route, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        .merge(ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(session::same_origin))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::count))
        .layer(axum::middleware::map_response(move |r: axum::response::Response| async move { json_rejection(r, max_body_bytes) }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves the API (or runs its subcommand) until SIGTERM/SIGINT: everything `main` does.
pub async fn run(cli: Config) -> anyhow::Result<()> {
    if let Some(Command::HashToken { token }) = &cli.command {
        let token = match token {
            Some(t) => t.clone(),
            None => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the token from stdin")?;
                line.trim_end_matches(['\n', '\r']).to_string()
            }
        };
        anyhow::ensure!(!token.is_empty(), "an empty token");
        println!("{}", auth::hash(&token));
        return Ok(());
    }
    let _telemetry = tf_telemetry::init_service("tf-api", "info").context("trace export (OTEL_EXPORTER_OTLP_*)")?;
    tf_config::check_connection_settings()?;
    let recorder = tf_runtime::Metrics::install("tf-api", env!("CARGO_PKG_VERSION"), metrics::BUCKETS)?;
    let app = build(&cli).await?;
    // Connected in build; the API's own /readyz answers on its port too.
    let ready = tf_runtime::Ready::default();
    ready.set(true);
    tf_runtime::serve(&cli.metrics_addr, recorder, ready);
    app.run_until(async {
        tf_runtime::shutdown_signal().await;
        tracing::info!("shutting down");
    })
    .await
}

/// A built API: connected to its services and listening, not yet serving.
pub struct Application {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Application {
    /// Where it listens (`--addr 127.0.0.1:0` picks a free port).
    pub fn addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` completes, then finishes the requests in flight.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(stop).await?;
        Ok(())
    }
}

/// Everything between the configuration and a listening API, shared by `main` (through
/// [`run`]) and the tests, which start it in-process on port 0. The process-wide parts (logging,
/// the metrics recorder and its port) stay in [`run`].
pub async fn build(cli: &Config) -> anyhow::Result<Application> {
    let tokens = auth::Tokens::load(cli.tokens.as_deref(), std::env::vars())?;
    anyhow::ensure!(
        !tokens.is_empty(),
        "no API tokens are configured (TF_API_TOKENS or TF_API_TOKEN__<NAME>=<scopes>:<sha256>); `tf-api hash-token` makes the hash"
    );
    let s = &cli.settings;
    let pool = tf_store::connect(&s.database_url).await?;
    let registry = Arc::new(Registry::new(&s.schema_registry_url));
    let producer: FutureProducer = tf_kafka::client_config(&s.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .context("Kafka producer")?;
    let temporal = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-api").await?;
    let datasources = if tf_config::Datasources::configured_in_env() { Some(Arc::new(tf_config::Datasources::from_env()?)) } else { None };
    let state = AppState {
        pool,
        tokens: Arc::new(tokens),
        codec: Arc::new(Codec::new(registry.clone())),
        registry,
        producer,
        settings: Arc::new(s.clone()),
        datasources,
        max_event_bytes: cli.max_event_bytes,
        temporal,
        dlq_topic: cli.router.dlq_topic.clone(),
        metrics: Arc::new(metrics::Metrics::new()),
        envelope_topics: Arc::default(),
        lag: Arc::default(),
        router_group: cli.router.group.clone(),
        sessions: Arc::new(session::Sessions::new(cli.secure_cookies)),
        router_topics: Arc::new(tf_kafka::subscription::Subscription::parse(&cli.router.topics).context("TF_ROUTER_TOPICS")?),
        lag_every: std::time::Duration::from_millis(cli.lag_sample_ms.max(100)),
    };
    tokio::spawn(lag::sample(
        state.lag.clone(),
        s.kafka_brokers.clone(),
        cli.router.group.clone(),
        cli.router.topics.clone(),
        state.lag_every,
    ));
    let token_count = state.tokens.len();
    let listener = tokio::net::TcpListener::bind(&cli.addr).await.with_context(|| format!("listening on {}", cli.addr))?;
    tracing::info!(addr = %listener.local_addr()?, tokens = token_count, "api running");
    Ok(Application { listener, router: router(state, cli.max_body_bytes) })
}
