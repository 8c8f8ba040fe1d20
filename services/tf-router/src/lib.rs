//! `tf-router`: consumes event topics, matches each event against the enabled activity
//! definitions and starts one RunActivity workflow per (definition, dedupe key). Bad records go
//! to the DLQ; a failing dependency pauses the record, never skips it. Offsets are stored only
//! once a record's starts (or its DLQ write) are acknowledged.
//!
//! A library whose [`run`] the binary calls, so the wiring is one function.

mod claims;
mod consumer;
mod dispatch;
mod dlq;
mod metrics;
mod offsets;
mod recent_starts;
mod retry;
mod route;
mod startup;
mod waits;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use temporalio_client::Client;
use tf_config::Settings;
use tf_definitions::{Definition, Trigger};
use tf_envelope::Codec;
use tf_store::PgPool;
use tokio::sync::Semaphore;

use crate::claims::Claims;
use crate::recent_starts::RecentStarts;
use crate::route::{Active, Routes};

/// Kafka's consumer group protocols (`group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GroupProtocol {
    Classic,
    Consumer,
}

/// Route events from Kafka to deduplicated RunActivity workflows.
///
/// Every setting is also an environment variable with the TF_ prefix.
#[derive(clap::Parser, Clone)]
#[command(name = "tf-router", version)]
pub struct Config {
    #[command(flatten)]
    settings: Settings,
    #[command(flatten)]
    kafka: tf_config::RouterKafka,
    /// Records in flight at once (across partitions).
    #[arg(long, env = "TF_ROUTER_MAX_IN_FLIGHT", default_value_t = 64)]
    max_in_flight: usize,
    /// Decoded values all records in flight may hold together. Each record reserves the decode
    /// limit (100,000 values) before it is decoded and keeps what it decoded to, so records at
    /// the limit wait for each other instead of multiplying it by TF_ROUTER_MAX_IN_FLIGHT
    /// (~50 bytes a value: the default holds decoded events to ~50 MB).
    #[arg(long, env = "TF_ROUTER_MAX_VALUES_IN_FLIGHT", default_value_t = 1_000_000)]
    max_values_in_flight: usize,
    /// Records larger than this many bytes go to the DLQ unread.
    #[arg(long, env = "TF_ROUTER_MAX_EVENT_BYTES", default_value_t = 1_048_576)]
    max_event_bytes: usize,
    /// Which writer schemas a topic accepts: `any` schema id the registry knows, or only those
    /// registered under the topic's own subject `<topic>-value` (`topic`, Confluent's
    /// TopicNameStrategy). With `topic`, a producer cannot make the router decode a record with
    /// an unrelated schema; a record that tries goes to the DLQ (`WrongSubject`).
    #[arg(long, env = "TF_ROUTER_SUBJECT_POLICY", value_enum, default_value_t = SubjectPolicy::Any)]
    subject_policy: SubjectPolicy,
    /// The largest dead letter to produce (Kafka `message.max.bytes` of the DLQ producer); a
    /// larger one is sent with its value truncated and a header saying so. Keep it at or under
    /// the DLQ topic's `max.message.bytes`.
    #[arg(long, env = "TF_DLQ_MAX_MESSAGE_BYTES", default_value_t = 1_000_000)]
    dlq_max_message_bytes: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`); empty to disable.
    #[arg(long, env = "TF_ROUTER_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: String,
    /// How often to look for changed definitions, in milliseconds.
    #[arg(long, env = "TF_ROUTER_REFRESH_MS", default_value_t = 1000)]
    refresh_ms: u64,
    /// Consumer group session timeout: how long a crashed router's partitions wait before the
    /// group hands them to another member (Kafka's default is 45 s).
    #[arg(long, env = "TF_ROUTER_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u32,
    /// Consumer group protocol: `classic` (cooperative-sticky assignment, the session timeout
    /// above) or `consumer` (KIP-848: the broker assigns, its `group.consumer.session.timeout.ms`
    /// applies; see loadtest/README.md for the measured difference).
    #[arg(long, env = "TF_ROUTER_GROUP_PROTOCOL", value_enum, default_value_t = GroupProtocol::Classic)]
    group_protocol: GroupProtocol,
    /// A stable identity per router replica (e.g. the pod name of a StatefulSet) for Kafka's
    /// static group membership: a restarted replica takes its partitions back at once, with no
    /// rebalance. Two running routers must never share one.
    #[arg(long, env = "TF_ROUTER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Generations whose start Temporal acknowledged that the router remembers, so a repeat of
    /// the key before its run begins costs no Temporal round trip (0: ask Temporal every time).
    /// About 100 bytes each, whatever the key's length (each holds a 128-bit digest).
    #[arg(long, env = "TF_ROUTER_RECENT_STARTS", default_value_t = 100_000)]
    recent_starts: usize,
    /// How long a remembered start counts, in seconds: past it a repeat asks Temporal again, so
    /// a run that ended before it began is retried by its window's next event after this long
    /// at the latest.
    #[arg(long, env = "TF_ROUTER_RECENT_START_TTL", default_value_t = 300)]
    recent_start_ttl: u64,
    /// Seconds to drain in-flight records after SIGTERM/SIGINT; past it the router exits
    /// non-zero naming the records it left (they are routed again by the next owner).
    #[arg(long, env = "TF_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SubjectPolicy {
    Any,
    Topic,
}

impl SubjectPolicy {
    fn subject_for(self, topic: &str) -> Option<String> {
        match self {
            SubjectPolicy::Any => None,
            SubjectPolicy::Topic => Some(format!("{topic}-value")),
        }
    }
}

/// What the per-record tasks share.
struct Shared {
    cli: Config,
    codec: Codec,
    temporal: Client,
    dlq: FutureProducer,
    definitions: RwLock<Arc<Routes>>,
    /// What runs wait for (docs/steps.md), refreshed with the definitions.
    listeners: RwLock<Arc<waits::Listeners>>,
    metrics: Arc<metrics::Metrics>,
    claims: Claims,
    recent_starts: RecentStarts,
    /// Decoded values of the records in flight (TF_ROUTER_MAX_VALUES_IN_FLIGHT).
    value_budget: Arc<Semaphore>,
    /// For the rare lookups outside the claim batches (a redriven record's origin).
    pool: PgPool,
}

/// Runs the router until SIGTERM/SIGINT: everything `main` does after telemetry is set up.
pub async fn run(cli: Config) -> anyhow::Result<()> {
    tf_config::check_connection_settings()?;
    let recorder = tf_runtime::Metrics::install("tf-router", env!("CARGO_PKG_VERSION"), metrics::BUCKETS)?;
    // Ready once connected and the definitions are loaded; not ready again while draining.
    let ready = tf_runtime::Ready::default();
    tf_runtime::serve(&cli.metrics_addr, recorder, ready.clone());
    startup::build(cli, ready).await?.run_until(tf_runtime::shutdown_signal()).await
}

/// How long one refresh may take before it is given up (the loaded set stays).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// Refreshes the definitions every `every`, for as long as the router runs.
async fn refresh_every(pool: PgPool, shared: Arc<Shared>, mut fingerprint: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(REFRESH_TIMEOUT, refresh(&pool, &shared, &fingerprint)).await {
            Ok(Ok(fp)) => fingerprint = fp,
            Ok(Err(e)) => tracing::warn!(error = %e, "definition refresh failed; keeping the loaded set"),
            Err(_) => tracing::warn!(timeout_s = REFRESH_TIMEOUT.as_secs(), "definition refresh timed out; keeping the loaded set"),
        }
    }
}

/// Loads enabled event definitions when the table changed, and what runs wait for (every
/// time: a wait that began may name a matcher no loaded definition has); returns the new
/// fingerprint.
async fn refresh(pool: &PgPool, shared: &Shared, known: &str) -> anyhow::Result<String> {
    let stored = tf_store::waits::matchers(pool).await?;
    let fp = tf_store::definitions::fingerprint(pool).await?;
    let fp_with_waits = format!("{fp}/{}", stored.len());
    if fp_with_waits == known {
        return Ok(fp_with_waits);
    }
    let mut active = Vec::new();
    let mut all = Vec::new();
    for row in tf_store::definitions::latest(pool).await? {
        if !row.enabled {
            continue;
        }
        match Definition::from_spec_json(row.spec) {
            Ok(definition) if matches!(definition.trigger, Trigger::Event(_)) => {
                all.push(definition.clone());
                active.push(Active { definition, version: row.version });
            }
            Ok(definition) => all.push(definition),
            Err(e) => tracing::error!(definition = %row.id, version = row.version, error = %e, "stored definition does not parse; ignored"),
        }
    }
    let listeners = waits::Listeners::new(&all, &stored);
    if listeners.count() > 0 {
        tracing::info!(matchers = listeners.count(), "event waits loaded");
    }
    *shared.listeners.write().expect("lock") = Arc::new(listeners);
    let routes = Routes::new(active);
    tracing::info!(count = routes.count(), "event definitions loaded");
    shared.metrics.definitions.set(routes.count() as f64);
    *shared.definitions.write().expect("lock") = Arc::new(routes);
    Ok(fp_with_waits)
}
