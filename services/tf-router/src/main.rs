//! `tf-router`: consumes event topics, matches each event against the enabled activity
//! definitions and starts one RunActivity workflow per (definition, dedupe key). Bad records go
//! to the DLQ; a failing dependency pauses the record, never skips it. Offsets are stored only
//! once a record's starts (or its DLQ write) are acknowledged.

mod claims;
mod metrics;
mod offsets;
mod route;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use temporalio_client::Client;
use tf_config::Settings;
use tf_definitions::{Definition, Trigger};
use tf_envelope::{Codec, DecodeError, Decoded, Registry};
use tf_store::PgPool;
use tf_temporal::{FailureClass, StartOutcome, start_run};
use tokio::sync::{Semaphore, mpsc};

use crate::claims::{ClaimFailure, Claims};
use crate::offsets::{Ticket, Tracker};
use crate::route::{Active, Position, RouteError, route};

/// Route events from Kafka to deduplicated RunActivity workflows.
///
/// Every setting is also an environment variable with the TF_ prefix.
#[derive(Parser, Clone)]
#[command(name = "tf-router", version)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    /// Topics to consume: names, or a regex starting with `^`.
    #[arg(long, env = "TF_ROUTER_TOPICS", default_value = "^events\\..*", value_delimiter = ',')]
    topics: Vec<String>,
    /// Consumer group.
    #[arg(long, env = "TF_ROUTER_GROUP", default_value = "taskfactory-router")]
    group: String,
    /// Dead-letter topic.
    #[arg(long, env = "TF_DLQ_TOPIC", default_value = "taskfactory.dlq")]
    dlq_topic: String,
    /// Records in flight at once (across partitions).
    #[arg(long, env = "TF_ROUTER_MAX_IN_FLIGHT", default_value_t = 64)]
    max_in_flight: usize,
    /// Records larger than this many bytes go to the DLQ unread.
    #[arg(long, env = "TF_ROUTER_MAX_EVENT_BYTES", default_value_t = 1_048_576)]
    max_event_bytes: usize,
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
    /// A stable identity per router replica (e.g. the pod name of a StatefulSet) for Kafka's
    /// static group membership: a restarted replica takes its partitions back at once, with no
    /// rebalance. Two running routers must never share one.
    #[arg(long, env = "TF_ROUTER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Seconds to drain in-flight records after SIGTERM/SIGINT; past it the router exits
    /// non-zero naming the records it left (they are routed again by the next owner).
    #[arg(long, env = "TF_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
}

/// Tells the offset tracker about revoked partitions, so records of an old assignment cannot
/// store offsets for a new one.
struct RouterContext {
    tracker: Arc<Mutex<Tracker>>,
}

impl ClientContext for RouterContext {}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                tracing::info!(topic = e.topic(), partition = e.partition(), "partition revoked");
                tracker.revoke(e.topic(), e.partition());
            }
        }
    }
}

type RouterConsumer = StreamConsumer<RouterContext>;

/// What the per-record tasks share.
struct Shared {
    cli: Cli,
    codec: Codec,
    temporal: Client,
    dlq: FutureProducer,
    definitions: RwLock<Arc<Vec<Active>>>,
    metrics: Arc<metrics::Metrics>,
    claims: Claims,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tf_telemetry::init_logging("info");
    let cli = Cli::parse();
    let s = &cli.settings;
    // Before anything decodes: no length prefix may make the decoder allocate beyond a record.
    tf_envelope::bound_decoding(cli.max_event_bytes);
    let pool = tf_store::connect(&s.database_url).await?;
    let temporal = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-router").await?;
    let dlq: FutureProducer = tf_kafka::client_config(&s.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", cli.dlq_max_message_bytes.to_string())
        .create()?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut consumer_config = tf_kafka::client_config(&s.kafka_brokers);
    if let Some(id) = &cli.instance_id {
        consumer_config.set("group.instance.id", id);
    }
    let consumer: RouterConsumer = consumer_config
        .set("group.id", &cli.group)
        .set("session.timeout.ms", cli.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (cli.session_timeout_ms / 5).max(100).to_string())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create_with_context(RouterContext { tracker: tracker.clone() })
        .context("Kafka consumer")?;
    let topics: Vec<&str> = cli.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;

    let metrics = Arc::new(metrics::Metrics::default());
    let shared = Arc::new(Shared {
        codec: Codec::new(Arc::new(Registry::new(&s.schema_registry_url))),
        temporal,
        dlq,
        definitions: RwLock::new(Arc::new(Vec::new())),
        claims: Claims::start(pool.clone(), metrics.clone()),
        metrics,
        cli: cli.clone(),
    });
    // Ready once connected (PostgreSQL, Temporal, Kafka clients made above) and the
    // definitions are loaded; not ready again while draining.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !cli.metrics_addr.is_empty() {
        let m = shared.metrics.clone();
        tokio::spawn(tf_telemetry::serve_metrics(cli.metrics_addr.clone(), Arc::new(move || m.render()), ready.clone()));
    }
    // Routing without definitions would drop matches: wait until they load.
    let mut fingerprint = loop {
        match refresh(&pool, &shared, "").await {
            Ok(fp) => break fp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load definitions yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Ticket>();
    let permits = Arc::new(Semaphore::new(cli.max_in_flight));
    let mut refresh_tick = tokio::time::interval(Duration::from_millis(cli.refresh_ms));
    let mut shutdown = Box::pin(tokio::signal::ctrl_c());
    let sigterm = async {
        #[cfg(unix)]
        {
            let mut t = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            t.recv().await;
        }
    };
    tokio::pin!(sigterm);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(topics = ?cli.topics, group = %cli.group, "router running");

    // The record branch is enabled only while a permit is held, so completions keep being
    // handled (and offsets stored) while the consumer waits for records or for a permit.
    let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = &mut sigterm => break,
            Some(ticket) = done_rx.recv() => finished(&consumer, &tracker, &ticket),
            _ = refresh_tick.tick() => {
                match refresh(&pool, &shared, &fingerprint).await {
                    Ok(fp) => fingerprint = fp,
                    Err(e) => tracing::warn!(error = %e, "definition refresh failed; keeping the loaded set"),
                }
            }
            p = permits.clone().acquire_owned(), if permit.is_none() => permit = Some(p.expect("semaphore open")),
            received = consumer.recv(), if permit.is_some() => {
                let msg = match received {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        // Broker unreachable and the like: librdkafka reconnects by itself;
                        // do not spin on the error meanwhile.
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let held = permit.take().expect("guarded by the branch condition");
                let ticket = tracker.lock().expect("tracker lock").begin(msg.topic(), msg.partition(), msg.offset());
                let (shared, done) = (shared.clone(), done_tx.clone());
                tokio::spawn(async move {
                    shared.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                    // A panic must not leave the record in flight forever (its partition's offset
                    // would never move): the record is dead-lettered with what panicked.
                    let routed = std::panic::AssertUnwindSafe(process(&shared, &msg)).catch_unwind().await;
                    if let Err(panic) = routed {
                        let what = panic.downcast_ref::<&str>().map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        let message = format!("routing this record panicked: {what}");
                        dead_letter(&shared, &msg, DeadLetter { stage: "panic", class: "Panic", message }).await;
                    }
                    shared.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                    shared.metrics.records.fetch_add(1, Ordering::Relaxed);
                    drop(held);
                    let _ = done.send(ticket);
                });
            }
        }
    }

    ready.store(false, Ordering::Relaxed);
    let in_flight = || tracker.lock().expect("tracker lock").in_flight();
    tracing::info!(in_flight = in_flight(), "shutting down: draining in-flight records");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cli.shutdown_timeout);
    while in_flight() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(ticket)) => finished(&consumer, &tracker, &ticket),
            _ => break,
        }
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::warn!(error = %e, "final commit failed (nothing stored since the last one?)");
    }
    let left = tracker.lock().expect("tracker lock").pending();
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(|(t, p, o, n)| format!("{t}[{p}] from offset {o} ({n} record(s))")).collect();
        anyhow::bail!(
            "shutdown deadline of {} s passed with records still in flight, not committed (the partition's next owner routes them again): {}",
            cli.shutdown_timeout,
            list.join(", ")
        );
    }
    tracing::info!("router stopped");
    Ok(())
}

/// Stores the partition's safe offset after a record finished.
fn finished(consumer: &RouterConsumer, tracker: &Mutex<Tracker>, ticket: &Ticket) {
    let Some(next) = tracker.lock().expect("tracker lock").finish(ticket) else { return };
    let (topic, partition) = (ticket.topic.as_str(), ticket.partition);
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(next)).is_ok()
        && let Err(e) = consumer.store_offsets(&tpl)
    {
        // Typically the partition was revoked meanwhile; its new owner re-delivers and the
        // dedupe layers absorb the repeat.
        tracing::debug!(topic, partition, next, error = %e, "offset not stored");
    }
}

/// Loads enabled event definitions when the table changed; returns the new fingerprint.
async fn refresh(pool: &PgPool, shared: &Shared, known: &str) -> anyhow::Result<String> {
    let fp = tf_store::definitions::fingerprint(pool).await?;
    if fp == known {
        return Ok(fp);
    }
    let mut active = Vec::new();
    for row in tf_store::definitions::latest(pool).await? {
        if !row.enabled {
            continue;
        }
        match Definition::from_spec_json(row.spec) {
            Ok(definition) if matches!(definition.trigger, Trigger::Event(_)) => active.push(Active { definition, version: row.version }),
            Ok(_) => {}
            Err(e) => tracing::error!(definition = %row.id, version = row.version, error = %e, "stored definition does not parse; ignored"),
        }
    }
    tracing::info!(count = active.len(), "event definitions loaded");
    shared.metrics.definitions.store(active.len() as i64, Ordering::Relaxed);
    *shared.definitions.write().expect("lock") = Arc::new(active);
    Ok(fp)
}

/// Why a record goes to the DLQ.
struct DeadLetter {
    stage: &'static str,
    class: &'static str,
    message: String,
}

/// Routes one record to the end: starts acknowledged or a DLQ write acknowledged. Dependency
/// failures are retried here, with backoff, for as long as it takes.
async fn process(shared: &Shared, msg: &OwnedMessage) {
    let at = Position { topic: msg.topic(), partition: msg.partition(), offset: msg.offset() };
    let payload = msg.payload().unwrap_or_default();
    if payload.len() > shared.cli.max_event_bytes {
        let message = format!("record is {} bytes, over the {}-byte limit", payload.len(), shared.cli.max_event_bytes);
        return dead_letter(shared, msg, DeadLetter { stage: "size", class: "OversizeRecord", message }).await;
    }
    let decoded = retry(shared, "decode", || async {
        match shared.codec.decode(payload).await {
            Err(e) if !e.is_bad_input() => Err(e.to_string()),
            other => Ok(other),
        }
    })
    .await;
    // Event time places the event in its dedupe window: the envelope's `time`, or the Kafka
    // timestamp for plain records (and, failing that, now).
    let kafka_time = msg.timestamp().to_millis().filter(|t| tf_definitions::dedupe::valid_event_time(*t));
    let now_ms = || tf_envelope::Timestamp::now().0;
    let (event, event_time_ms) = match decoded {
        Ok(Decoded::Envelope { event, .. }) => {
            let t = event.time.0;
            if !tf_definitions::dedupe::valid_event_time(t) {
                let message = format!("event time {t} ms is outside 1970-01-01..9999-12-31");
                return dead_letter(shared, msg, DeadLetter { stage: "event-time", class: "InvalidEventTime", message }).await;
            }
            match serde_json::to_value(&event) {
                Ok(v) => (v, t),
                Err(e) => {
                    let message = format!("envelope does not convert to JSON: {e}");
                    return dead_letter(shared, msg, DeadLetter { stage: "decode", class: "InvalidEnvelope", message }).await;
                }
            }
        }
        Ok(Decoded::Record { full_name, value, .. }) => (
            json!({
                "id": format!("{}-{}-{}", at.topic, at.partition, at.offset),
                "source": format!("kafka://{}", at.topic),
                "type": full_name,
                "specversion": "1.0",
                "time": msg.timestamp().to_millis(),
                "data": value,
            }),
            kafka_time.unwrap_or_else(now_ms),
        ),
        Err(e) => {
            let class = match &e {
                DecodeError::Wire(_) => "NotWireFormat",
                DecodeError::UnknownSchemaId(_) => "UnknownSchemaId",
                DecodeError::Body { .. } | DecodeError::TrailingBytes { .. } => "AvroDecodeError",
                DecodeError::Envelope { .. } => "InvalidEnvelope",
                DecodeError::Registry(_) => "RegistryError",
            };
            return dead_letter(shared, msg, DeadLetter { stage: "decode", class, message: e.to_string() }).await;
        }
    };
    let header_tp = msg
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "traceparent").and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned()));
    let traceparent = header_tp.or_else(|| event["traceparent"].as_str().map(String::from));
    if !tf_definitions::dedupe::valid_event_time(event_time_ms) {
        let message = format!("event time {event_time_ms} ms is outside 1970-01-01..9999-12-31");
        return dead_letter(shared, msg, DeadLetter { stage: "event-time", class: "InvalidEventTime", message }).await;
    }
    let definitions = shared.definitions.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (runs, mut errors) = route(&definitions, &at, &event, event_time_ms, traceparent.as_deref());
    if !runs.is_empty() {
        shared.metrics.records_matched.fetch_add(1, Ordering::Relaxed);
    }

    for mut run in runs {
        let (def, key) = (run.definition_id.clone(), run.dedupe_key.clone());
        let window = Duration::from_secs(run.dedupe_window_secs.max(1));
        // Which window (generation) the event belongs to, opening the next one if none covers
        // its time. A generation whose run exists needs no Temporal round trip.
        let resolved = retry(shared, "claim", || async {
            match shared.claims.resolve(&def, &key, event_time_ms, window).await {
                Err(ClaimFailure::Transient(e)) => Err(e),
                other => Ok(other),
            }
        })
        .await;
        let generation = match resolved {
            Ok(g) => g,
            Err(failure) => {
                let message = match failure {
                    ClaimFailure::Permanent(m) | ClaimFailure::Transient(m) => m,
                };
                errors.push(RouteError { definition_id: def.clone(), stage: "claim", message });
                continue;
            }
        };
        if generation.created {
            shared.metrics.generations_opened.fetch_add(1, Ordering::Relaxed);
        }
        if generation.has_live_run() {
            shared.metrics.runs_deduplicated_fast.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(definition = %def, key = %key, generation = generation.generation, "deduplicated by claim");
            continue;
        }
        run.generation = generation.generation;
        let outcome = retry(shared, "start", || async {
            match start_run(&shared.temporal, &shared.cli.settings.task_queue, run.clone()).await {
                Ok(outcome) => Ok(Ok(outcome)),
                Err(e) => match e.class() {
                    FailureClass::Permanent => Ok(Err(e.to_string())),
                    FailureClass::Transient => Err(e.to_string()),
                    FailureClass::Misconfigured => {
                        Err(format!("{e} (check TF_TEMPORAL_URL, TF_TEMPORAL_NAMESPACE and the Temporal credentials)"))
                    }
                },
            }
        })
        .await;
        match outcome {
            Ok(StartOutcome::Started { .. }) => {
                shared.metrics.runs_started.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(definition = %def, key = %key, generation = generation.generation, offset = at.offset, "run started")
            }
            Ok(StartOutcome::Duplicate { .. }) => {
                shared.metrics.runs_deduplicated.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(definition = %def, key = %key, "deduplicated")
            }
            Err(message) => errors.push(RouteError {
                definition_id: def.clone(),
                stage: "start",
                message: format!("Temporal refused the start: {message}"),
            }),
        }
    }
    if !errors.is_empty() {
        let stage = errors[0].stage;
        let message = errors
            .iter()
            .map(|RouteError { definition_id, stage, message }| format!("{definition_id} ({stage}): {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        let class = match stage {
            "filter" => "ExpressionError",
            "dedupe-key" => "InvalidDedupeKey",
            "claim" => "ClaimRefused",
            _ => "StartRefused",
        };
        dead_letter(shared, msg, DeadLetter { stage, class, message }).await;
    }
}

/// Retries `op` with exponential backoff (100 ms to 10 s) until it succeeds.
async fn retry<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                attempt += 1;
                shared.metrics.dependency_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(what, attempt, error = %e, backoff_ms = backoff.as_millis() as u64, "dependency failed; pausing this record");
                // Full jitter: records paused together do not retry in lockstep.
                tokio::time::sleep(backoff.mul_f64(0.5 + 0.5 * jitter())).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A number in [0, 1) that differs between calls; good enough to spread retries.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// The original key, value and headers plus Kafka Connect's `__connect.errors.*` headers.
async fn dead_letter(shared: &Shared, msg: &OwnedMessage, why: DeadLetter) {
    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), stage = why.stage, reason = %why.message, "dead-lettered");
    shared.metrics.dead_letter(why.stage);
    let payload = msg.payload().unwrap_or_default();
    // A dead letter the DLQ cannot take (over the producer's or topic's message size) would be
    // retried forever and hold its partition: degrade it instead, first to the head of the
    // value, then without the original headers. Headers say what was cut.
    let mut shape = DeadLetterShape { keep: payload.len(), original_headers: true };
    loop {
        let headers = dead_letter_headers(msg, &why, &shape, payload.len());
        let sent = retry(shared, "dlq", || {
            let mut record = FutureRecord::to(&shared.cli.dlq_topic).payload(&payload[..shape.keep]).headers(headers.clone());
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            async move {
                match shared.dlq.send(record, Duration::from_secs(30)).await {
                    Ok(_) => Ok(Ok(())),
                    Err((e, _)) if too_large(&e) && shape.can_shrink() => Ok(Err(e.to_string())),
                    Err((e, _)) => Err(e.to_string()),
                }
            }
        })
        .await;
        match sent {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, kept = shape.keep, "dead letter too large for the DLQ; sending it truncated");
                shape = shape.shrink();
            }
        }
    }
}

/// How much of a record its dead letter carries.
#[derive(Clone, Copy)]
struct DeadLetterShape {
    keep: usize,
    original_headers: bool,
}

/// What a truncated dead letter keeps of the value: enough to recognise it.
const DLQ_TRUNCATED_BYTES: usize = 16 * 1024;

impl DeadLetterShape {
    fn can_shrink(&self) -> bool {
        self.keep > 0 || self.original_headers
    }

    fn shrink(self) -> Self {
        if self.keep > DLQ_TRUNCATED_BYTES {
            DeadLetterShape { keep: DLQ_TRUNCATED_BYTES, ..self }
        } else if self.original_headers {
            DeadLetterShape { original_headers: false, ..self }
        } else {
            DeadLetterShape { keep: 0, ..self }
        }
    }
}

fn too_large(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{MessageBatchTooLarge, MessageSizeTooLarge};
    matches!(e.rdkafka_error_code(), Some(MessageSizeTooLarge | MessageBatchTooLarge))
}

fn dead_letter_headers(msg: &OwnedMessage, why: &DeadLetter, shape: &DeadLetterShape, original_len: usize) -> OwnedHeaders {
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let mut headers = OwnedHeaders::new();
    if shape.original_headers
        && let Some(original) = msg.headers()
    {
        for h in original.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    // Reasons can quote the event; keep the header small.
    let message: String = why.message.chars().take(4000).collect();
    for (key, value) in [
        ("__connect.errors.topic", msg.topic()),
        ("__connect.errors.partition", partition.as_str()),
        ("__connect.errors.offset", offset.as_str()),
        ("__connect.errors.connector.name", "taskfactory-router"),
        ("__connect.errors.stage", why.stage),
        ("__connect.errors.exception.class.name", why.class),
        ("__connect.errors.exception.message", message.as_str()),
    ] {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    if shape.keep < original_len || !shape.original_headers {
        let note = format!(
            "value truncated to {} of {} bytes{}",
            shape.keep,
            original_len,
            if shape.original_headers { "" } else { "; original headers dropped" }
        );
        headers = headers.insert(Header { key: "__taskfactory.errors.truncated", value: Some(note.as_str()) });
    }
    headers
}
