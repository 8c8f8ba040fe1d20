//! From the configuration to a routing loop: [`build`] connects (PostgreSQL, Temporal, the
//! Kafka consumer and DLQ producer) and loads the definitions; [`Router::run_until`] consumes
//! until told to stop, then drains what is in flight and commits. `main` goes through
//! [`crate::run`], which adds the process-wide parts (the metrics recorder and its port).

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use tf_envelope::{Codec, Registry};
use tf_kafka::dlq::Stage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::claims::Claims;
use crate::consumer::{RouterConsumer, RouterContext, finished};
use crate::dispatch::process;
use crate::dlq::{DeadLetter, dead_letter};
use crate::offsets::{Ticket, Tracker};
use crate::recent_starts::RecentStarts;
use crate::route::Routes;
use crate::{Config, GroupProtocol, Shared, metrics, refresh, refresh_every};

/// A router connected and with its definitions loaded, not yet consuming.
pub struct Router {
    cli: Config,
    consumer: RouterConsumer,
    tracker: Arc<Mutex<Tracker>>,
    shared: Arc<Shared>,
    ready: tf_runtime::Ready,
    /// The loaded definitions' fingerprint, from which the refresher goes on.
    fingerprint: String,
}

/// Connects everything the router needs and loads the definitions (waiting for them: routing
/// without definitions would drop matches). `ready` turns true once it consumes.
pub async fn build(cli: Config, ready: tf_runtime::Ready) -> anyhow::Result<Router> {
    let s = &cli.settings;
    // Before anything decodes: no length prefix may make the decoder allocate beyond a record.
    tf_envelope::bound_decoding(cli.max_event_bytes);
    let pool = tf_store::connect(&s.database_url).await?;
    let temporal = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-router").await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let dlq: FutureProducer = tf_kafka::client_config(&s.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", cli.dlq_max_message_bytes.to_string())
        .create()?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let mut consumer_config = tf_kafka::client_config(&s.kafka_brokers);
    if let Some(id) = &cli.instance_id {
        consumer_config.set("group.instance.id", id);
    }
    if cli.group_protocol == GroupProtocol::Consumer {
        // KIP-848: timeouts and assignment belong to the broker; the client refuses them.
        consumer_config.set("group.protocol", "consumer");
    } else {
        consumer_config
            .set("session.timeout.ms", cli.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (cli.session_timeout_ms / 5).max(100).to_string())
            .set("partition.assignment.strategy", "cooperative-sticky");
    }
    let consumer: RouterConsumer = consumer_config
        .set("group.id", &cli.kafka.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Feeds tf_router_consumer_lag.
        .set("statistics.interval.ms", "5000")
        .create_with_context(RouterContext { tracker: tracker.clone(), metrics: metrics.clone() })
        .context("Kafka consumer")?;
    let topics: Vec<&str> = cli.kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribing")?;

    let shared = Arc::new(Shared {
        codec: Codec::new(Arc::new(Registry::new(&s.schema_registry_url))),
        temporal,
        dlq,
        definitions: RwLock::new(Arc::new(Routes::default())),
        listeners: RwLock::new(Arc::default()),
        claims: Claims::start(pool.clone(), metrics.clone()),
        pool: pool.clone(),
        value_budget: Arc::new(Semaphore::new(cli.max_values_in_flight.max(tf_envelope::DecodeLimits::default().max_values))),
        recent_starts: RecentStarts::new(cli.recent_starts, Duration::from_secs(cli.recent_start_ttl)),
        metrics,
        cli: cli.clone(),
    });
    let mut backoff = tf_runtime::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let fingerprint = loop {
        match refresh(&pool, &shared, "").await {
            Ok(fp) => break fp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load definitions yet; retrying");
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    };
    Ok(Router { cli, consumer, tracker, shared, ready, fingerprint })
}

impl Router {
    /// Routes records until `stop` completes, then drains: records in flight finish (up to
    /// `--shutdown-timeout`), their offsets are stored and committed.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Ticket>();
        let permits = Arc::new(Semaphore::new(self.cli.max_in_flight));
        // Refreshed beside the consume loop, not in it: a slow definitions query must not hold
        // up offsets and records.
        let refresher = tokio::spawn(refresh_every(
            self.shared.pool.clone(),
            self.shared.clone(),
            self.fingerprint.clone(),
            Duration::from_millis(self.cli.refresh_ms),
        ));
        tokio::pin!(stop);
        self.ready.set(true);
        tracing::info!(topics = ?self.cli.kafka.topics, group = %self.cli.kafka.group, "router running");

        // The record branch is enabled only while a permit is held, so completions keep being
        // handled (and offsets stored) while the consumer waits for records or for a permit.
        let mut permit: Option<OwnedSemaphorePermit> = None;
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                Some(ticket) = done_rx.recv() => finished(&self.consumer, &self.tracker, &ticket),
                p = permits.clone().acquire_owned(), if permit.is_none() => permit = Some(p.expect("semaphore open")),
                received = self.consumer.recv(), if permit.is_some() => match received {
                    Ok(m) => {
                        let held = permit.take().expect("guarded by the branch condition");
                        self.route(m.detach(), held, done_tx.clone());
                    }
                    Err(e) => consumer_failed(e).await?,
                },
            }
        }
        self.drain(done_rx, refresher).await
    }

    /// Routes one record on its own task. A panic must not leave the record in flight forever
    /// (its partition's offset would never move): the record is dead-lettered with what
    /// panicked.
    fn route(&self, msg: OwnedMessage, held: OwnedSemaphorePermit, done: mpsc::UnboundedSender<Ticket>) {
        let ticket = self.tracker.lock().expect("tracker lock").begin(msg.topic(), msg.partition(), msg.offset());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            shared.metrics.in_flight.increment(1.0);
            let routed = std::panic::AssertUnwindSafe(process(&shared, &msg)).catch_unwind().await;
            if let Err(panic) = routed {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(std::string::ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                let message = format!("routing this record panicked: {what}");
                dead_letter(&shared, &msg, DeadLetter { stage: Stage::Panic, class: Stage::Panic.class(), message }).await;
            }
            shared.metrics.in_flight.decrement(1.0);
            shared.metrics.records.increment(1);
            drop(held);
            let _ = done.send(ticket);
        });
    }

    /// Not ready any more; lets records in flight finish until the deadline, stores their
    /// offsets and commits. Records still in flight then are named in the error: the partition's
    /// next owner routes them again (dedupe keeps one run per key).
    async fn drain(self, mut done_rx: mpsc::UnboundedReceiver<Ticket>, refresher: JoinHandle<()>) -> anyhow::Result<()> {
        self.ready.set(false);
        let in_flight = || self.tracker.lock().expect("tracker lock").in_flight();
        refresher.abort();
        tracing::info!(in_flight = in_flight(), "shutting down: draining in-flight records");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.cli.shutdown_timeout);
        while in_flight() > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(ticket)) => finished(&self.consumer, &self.tracker, &ticket),
                _ => break,
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final commit failed (nothing stored since the last one?)");
        }
        let left = self.tracker.lock().expect("tracker lock").pending();
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|(t, p, o, n)| format!("{t}[{p}] from offset {o} ({n} record(s))")).collect();
            anyhow::bail!(
                "shutdown deadline of {} s passed with records still in flight, not committed (the partition's next owner routes them again): {}",
                self.cli.shutdown_timeout,
                list.join(", ")
            );
        }
        tracing::info!("router stopped");
        Ok(())
    }
}

/// What a failed `recv` means. A fatal error leaves the consumer unusable (a fenced static
/// member, say): routing nothing while looking alive would wedge every partition, so the
/// router exits and its supervisor starts a fresh one; records in flight are not committed and
/// are routed again. Anything else (a broker unreachable) librdkafka recovers from by itself;
/// the loop pauses meanwhile instead of spinning on the error.
async fn consumer_failed(e: KafkaError) -> anyhow::Result<()> {
    if let KafkaError::MessageConsumptionFatal(code) = e {
        anyhow::bail!(
            "the Kafka consumer failed for good ({code}); exiting so this router is restarted{}",
            if code == RDKafkaErrorCode::UnreleasedInstanceId {
                " (the previous member with this TF_ROUTER_INSTANCE_ID is still in the group until its session times out)"
            } else {
                ""
            }
        );
    }
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
        // Misconfigured, not down: nothing is consumed until the settings change; say which.
        tracing::error!(
            error = %e,
            "Kafka refused this router's credentials: check TF_KAFKA__SASL_MECHANISMS, TF_KAFKA__SASL_USERNAME and TF_KAFKA__SASL_PASSWORD (or TF_KAFKA_PROPERTIES); routing is paused"
        );
    } else {
        tracing::warn!(error = %e, "consumer error");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}
