//! The results relay: publishes the `task_results` outbox to `taskfactory.results` in Kafka
//! transactions, each carrying the relay's progress marker to `taskfactory.results-relay`
//! (the pattern of Kafka Connect's exactly-once source connectors). A crash before commit
//! aborts results and marker together; after commit both are visible to `read_committed`
//! consumers. One fixed `transactional.id` fences a zombie relay when a new one starts.
//!
//! Kept in one module although it passes 400 lines: the marker protocol (read, publish, settle,
//! re-read after an unknown outcome) is only reviewable when every step is in view.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tf_envelope::{Codec, TaskResult};
use tf_store::PgPool;

pub use tf_kafka::topics::RESULTS_TOPIC;
pub const MARKER_TOPIC: &str = "taskfactory.results-relay";
const BATCH: i64 = 500;
/// How often an idle relay looks for new results.
const POLL: Duration = Duration::from_millis(200);

/// Where a committed result landed: task id, partition, offset.
type Placement = (String, i32, i64);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] tf_store::StoreError),
    /// This one result can never be published (it does not read as a result, the schema
    /// cannot express it, it is too large even truncated): it is quarantined, the rest flow.
    #[error("encoding result {task_id}: {reason}")]
    Unpublishable { task_id: String, reason: String },
    /// The schema registry is down or refuses the result schema (a subject's compatibility
    /// rule, an unknown subject, credentials): nothing can be published until it is fixed, and
    /// no result is to blame. The batch waits.
    #[error("the schema registry will not take results now: {0}")]
    Registry(tf_envelope::RegistryError),
    #[error("marker record is not (txid, seq) JSON: {0}")]
    Marker(String),
    /// A transaction failed after it began: it may or may not have committed.
    #[error("transaction: {0}")]
    Transaction(rdkafka::error::KafkaError),
    /// The producer cannot go on (fenced by a newer relay, or a fatal error): the caller makes
    /// a new one, whose `init_transactions` settles whatever this one left open.
    #[error("producer unusable: {0}")]
    Producer(rdkafka::error::KafkaError),
}

impl RelayError {
    fn leaves_marker_unknown(&self) -> bool {
        matches!(self, RelayError::Transaction(_))
    }
}

/// Sorts a Kafka error raised inside a transaction.
fn in_transaction(e: rdkafka::error::KafkaError) -> RelayError {
    let fatal = e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fenced)
        || matches!(&e, rdkafka::error::KafkaError::Transaction(t) if t.is_fatal());
    if fatal { RelayError::Producer(e) } else { RelayError::Transaction(e) }
}

pub struct Relay {
    pool: PgPool,
    codec: Arc<Codec>,
    producer: FutureProducer,
    brokers: String,
    /// Also the marker's record key: relays of different deployments may share the topic.
    transactional_id: String,
    metrics: Arc<crate::metrics::Metrics>,
    max_result_bytes: usize,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        codec: Arc<Codec>,
        brokers: &str,
        transactional_id: &str,
        metrics: Arc<crate::metrics::Metrics>,
        max_result_bytes: usize,
    ) -> Result<Self, RelayError> {
        let producer: FutureProducer = tf_kafka::client_config(brokers)
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            // Bounds how long a relay killed mid-batch blocks every relay sharing the marker
            // topic (its open transaction holds their read_committed reads back); a batch
            // normally commits in well under a second, and a broker restart in about ten.
            .set("transaction.timeout.ms", "20000")
            .create()?;
        Ok(Relay {
            pool,
            codec,
            producer,
            brokers: brokers.to_string(),
            transactional_id: transactional_id.to_string(),
            metrics,
            max_result_bytes,
        })
    }

    /// The last committed marker, read with `read_committed` so aborted markers do not count.
    fn read_marker(&self) -> Result<(i64, i64), RelayError> {
        let consumer: BaseConsumer = tf_kafka::client_config(&self.brokers)
            .set("group.id", "taskfactory-results-relay")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()?;
        // The end to read up to is the high watermark, which only a read_uncommitted client
        // gets: asked through a read_committed one, Kafka answers the last stable offset, which
        // an open transaction of another relay (say, one killed mid-batch, open until
        // transaction.timeout.ms) holds *before* our own newest markers. Reading only that far
        // once returned a stale marker, and every result after it was published twice.
        let probe: BaseConsumer = tf_kafka::client_config(&self.brokers).set("isolation.level", "read_uncommitted").create()?;
        let (low, high) = probe.fetch_watermarks(MARKER_TOPIC, 0, Duration::from_secs(10))?;
        let mut marker = (0, 0);
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(MARKER_TOPIC, 0, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(m) => {
                        let m = m?;
                        if let (Some(payload), Some(key)) = (m.payload(), m.key())
                            && key == self.transactional_id.as_bytes()
                        {
                            let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| RelayError::Marker(e.to_string()))?;
                            marker = (
                                v["txid"].as_i64().ok_or_else(|| RelayError::Marker(v.to_string()))?,
                                v["seq"].as_i64().ok_or_else(|| RelayError::Marker(v.to_string()))?,
                            );
                        }
                        if m.offset() + 1 >= high {
                            break;
                        }
                    }
                    // Transaction control records occupy offsets too; the position tells
                    // when everything up to the high watermark was read.
                    None => {
                        let pos = consumer
                            .position()?
                            .elements_for_topic(MARKER_TOPIC)
                            .first()
                            .map(rdkafka::topic_partition_list::TopicPartitionListElem::offset);
                        if matches!(pos, Some(Offset::Offset(p)) if p >= high) {
                            break;
                        }
                        // Starting from a marker that is not the last one would publish results
                        // twice: rather not start (the caller retries) than guess. An open
                        // transaction of another producer on the marker topic holds the
                        // read_committed position back like this until it ends.
                        if std::time::Instant::now() > deadline {
                            return Err(RelayError::Marker(format!(
                                "could not read the marker topic up to offset {high} within 30 s (position {pos:?}); not starting from a possibly stale marker"
                            )));
                        }
                    }
                }
            }
        }
        Ok(marker)
    }

    /// Runs until `stop` resolves. Errors are logged and retried with backoff; a fenced
    /// producer (another relay took over) ends the loop with an error.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), RelayError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(Duration::from_secs(30)))
            .await
            .expect("init_transactions thread")?;
        let mut marker = tokio::task::block_in_place(|| self.read_marker())?;
        tracing::info!(txid = marker.0, seq = marker.1, "results relay started");
        let mut backoff = tf_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // After a transaction failed, whether it committed is unknown (a commit can time out
        // on the client and still complete on the coordinator): only the marker topic knows
        // where to resume. Resuming from the marker in memory would publish the batch twice.
        let mut marker_stale = false;
        // Placements of committed results not yet recorded in the database (PostgreSQL was
        // away): recorded later, never a reason to publish a committed batch again.
        let mut unrecorded: Vec<Placement> = Vec::new();
        // Rows up to a marker read from Kafka are published whatever the database says.
        let mut settle_through = Some(marker);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if let Some(through) = settle_through {
                match tf_store::outbox::mark_published_through(&self.pool, through).await {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(count = n, "results committed by an earlier relay marked as published");
                        }
                        settle_through = None;
                    }
                    Err(e) => tracing::warn!(error = %e, "marking results up to the marker as published failed; retrying"),
                }
            }
            if marker_stale {
                match tokio::task::block_in_place(|| self.read_marker()) {
                    Ok(m) => {
                        if m != marker {
                            tracing::info!(txid = m.0, seq = m.1, "the failed transaction had committed; resuming after it");
                        }
                        marker = m;
                        marker_stale = false;
                        settle_through = Some(m);
                    }
                    Err(e) => tracing::warn!(error = %e, "results relay: re-reading the marker failed; retrying"),
                }
            }
            let outcome = if marker_stale { Err(None) } else { self.publish_batch(marker).await.map_err(Some) };
            let pause = match outcome {
                Ok(Some((next, placed))) => {
                    marker = next;
                    unrecorded.extend(placed);
                    self.record_placements(&mut unrecorded).await;
                    backoff.reset();
                    continue;
                }
                Ok(None) => {
                    self.record_placements(&mut unrecorded).await;
                    self.observe_backlog().await;
                    // Nothing to publish: look again shortly.
                    POLL
                }
                Err(None) => backoff.pause(),
                Err(Some(e @ RelayError::Producer(_))) => return Err(e),
                Err(Some(RelayError::Registry(e))) => {
                    self.metrics.relay_blocked.set(1.0);
                    tracing::error!(error = %e, "results relay paused: the schema registry will not take the result schema; no result is skipped");
                    self.observe_backlog().await;
                    backoff.pause()
                }
                Err(Some(e)) => {
                    self.metrics.relay_batches_failed.increment(1);
                    tracing::warn!(error = %e, "results relay batch failed; retrying");
                    // Relay lag keeps growing while batches fail: let the gauge show it.
                    self.observe_backlog().await;
                    marker_stale = e.leaves_marker_unknown();
                    backoff.pause()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The result as it goes on the topic; over `max_result_bytes` its output is replaced by a
    /// note (`truncated`), so one huge output never blocks the relay.
    async fn encode(&self, row: &tf_store::outbox::PendingResult) -> Result<Vec<u8>, RelayError> {
        // A registry answer says nothing about this row: every result goes through the same
        // registration, so a refusal (404, 409, 422) would quarantine them all.
        let encode_err = |e: tf_envelope::EncodeError| match e {
            tf_envelope::EncodeError::Registry(r) => RelayError::Registry(r),
            other => RelayError::Unpublishable { task_id: row.task_id.clone(), reason: other.to_string() },
        };
        // A row that does not read as a result, or a result the schema cannot express, will
        // never publish: it is quarantined.
        let permanent = |reason: String| RelayError::Unpublishable { task_id: row.task_id.clone(), reason };
        let result: TaskResult = serde_json::from_value(row.record.clone()).map_err(|e| permanent(e.to_string()))?;
        let subject = format!("{RESULTS_TOPIC}-value");
        let record = result.to_avro().map_err(|e| permanent(e.to_string()))?;
        let bytes = self.codec.encode(&subject, tf_envelope::TASK_RESULT_SCHEMA, record).await.map_err(encode_err)?;
        if bytes.len() <= self.max_result_bytes {
            return Ok(bytes);
        }
        tracing::warn!(task_id = %row.task_id, bytes = bytes.len(), limit = self.max_result_bytes, "result too large: published truncated");
        self.metrics.results_truncated.increment(1);
        let small = result.truncated(bytes.len());
        let truncated = self
            .codec
            .encode(&subject, tf_envelope::TASK_RESULT_SCHEMA, small.to_avro().map_err(|e| permanent(e.to_string()))?)
            .await
            .map_err(encode_err)?;
        if truncated.len() > self.max_result_bytes {
            // What is left is the identity and trigger, which a producer chose: still too large,
            // it would abort every transaction it is in.
            return Err(permanent(format!(
                "the result is {} bytes even truncated, over the {}-byte limit (TF_RESULT_MAX_BYTES)",
                truncated.len(),
                self.max_result_bytes
            )));
        }
        Ok(truncated)
    }

    /// Commits, retrying as librdkafka asks for errors it calls retriable (the commit's
    /// outcome is then still open and a retry settles it).
    async fn commit(&self) -> Result<(), RelayError> {
        let mut attempt = 0;
        loop {
            let producer = self.producer.clone();
            let r = tokio::task::spawn_blocking(move || producer.commit_transaction(Duration::from_secs(30))).await.expect("commit thread");
            match r {
                Ok(()) => return Ok(()),
                Err(rdkafka::error::KafkaError::Transaction(t)) if t.is_retriable() && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %t, attempt, "commit not settled yet; retrying the commit");
                }
                Err(e) => return Err(in_transaction(e)),
            }
        }
    }

    /// Sets a result aside for good, with why; `tf results requeue` queues it again once the
    /// cause is fixed.
    async fn quarantine(&self, task_id: &str, reason: &str) -> Result<(), RelayError> {
        tracing::error!(task_id, reason, "result quarantined: it cannot be published");
        tf_store::outbox::quarantine_result(&self.pool, task_id, reason).await?;
        self.metrics.results_quarantined.increment(1);
        Ok(())
    }

    /// Updates the pending and relay-lag gauges; a failed look is skipped, the next one counts.
    async fn observe_backlog(&self) {
        if let Ok(b) = tf_store::outbox::backlog(&self.pool).await {
            self.metrics.results_pending.set(b.pending as f64);
            self.metrics.results_oldest_pending_seconds.set(b.oldest_age_secs as f64);
        }
    }

    async fn record_placements(&self, unrecorded: &mut Vec<Placement>) {
        if unrecorded.is_empty() {
            return;
        }
        match tf_store::outbox::mark_published(&self.pool, unrecorded).await {
            Ok(()) => unrecorded.clear(),
            Err(e) => tracing::warn!(error = %e, count = unrecorded.len(), "recording where results landed failed; retrying later"),
        }
    }

    /// Publishes the next batch after `marker` in one transaction; returns the new marker and
    /// where each result landed.
    async fn publish_batch(&self, marker: (i64, i64)) -> Result<Option<((i64, i64), Vec<Placement>)>, RelayError> {
        let rows = tf_store::outbox::pending_results(&self.pool, marker, BATCH).await?;
        let Some(last) = rows.last() else { return Ok(None) };
        let next = (last.txid, last.seq);
        let mut encoded = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.encode(row).await {
                Ok(bytes) => encoded.push((row, bytes)),
                Err(e @ RelayError::Unpublishable { .. }) => self.quarantine(&row.task_id, &e.to_string()).await?,
                // The registry is down or refuses the schema: retry the batch later.
                Err(e) => return Err(e),
            }
        }
        self.metrics.relay_blocked.set(0.0);
        self.producer.begin_transaction().map_err(in_transaction)?;
        // Where each result landed (partition, offset), recorded once the transaction commits:
        // a run's lineage ends at its results' offsets.
        let mut placed: Vec<Placement> = Vec::with_capacity(encoded.len());
        let sent: Result<(), RelayError> = async {
            let mut deliveries = Vec::with_capacity(encoded.len() + 1);
            for (row, bytes) in &encoded {
                let mut headers = OwnedHeaders::new().insert(Header { key: "taskfactory.task_id", value: Some(&row.task_id) });
                if let Some(tp) = &row.traceparent {
                    headers = headers.insert(Header { key: "traceparent", value: Some(tp) });
                }
                let record = FutureRecord::to(RESULTS_TOPIC).key(&row.run_id).payload(bytes).headers(headers);
                deliveries.push((Some(row.task_id.clone()), self.producer.send_result(record).map_err(|(e, _)| in_transaction(e))?));
            }
            let marker_json = serde_json::json!({"txid": next.0, "seq": next.1}).to_string();
            let marker_record = FutureRecord::to(MARKER_TOPIC).key(&self.transactional_id).payload(&marker_json);
            deliveries.push((None, self.producer.send_result(marker_record).map_err(|(e, _)| in_transaction(e))?));
            for (task_id, d) in deliveries {
                match d.await {
                    Ok(Ok(delivery)) => {
                        if let Some(task_id) = task_id {
                            placed.push((task_id, delivery.partition, delivery.offset));
                        }
                    }
                    Ok(Err((e, _))) => {
                        // The topic refuses this one result (its max.message.bytes is below
                        // TF_RESULT_MAX_BYTES): set it aside, or every retry aborts again.
                        if let Some(task_id) = task_id.as_deref().filter(|_| tf_kafka::too_large(&e)) {
                            self.quarantine(task_id, &format!("{RESULTS_TOPIC} refused the record: {e}")).await?;
                        }
                        return Err(in_transaction(e));
                    }
                    Err(_) => return Err(RelayError::Transaction(rdkafka::error::KafkaError::Canceled)),
                }
            }
            Ok(())
        }
        .await;
        let committed = match sent {
            Ok(()) => self.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            let producer = self.producer.clone();
            let aborted = tokio::task::spawn_blocking(move || producer.abort_transaction(Duration::from_secs(30))).await;
            // An abort that fails leaves the producer in a state only a new one can clear.
            if let Ok(Err(abort)) = aborted
                && !matches!(e, RelayError::Producer(_))
            {
                tracing::warn!(error = %abort, "aborting the failed transaction failed too");
                return Err(RelayError::Producer(abort));
            }
            return Err(e);
        }
        self.metrics.results_published.increment(rows.len() as u64);
        tracing::debug!(
            count = rows.len(),
            from_txid = rows[0].txid,
            from_seq = rows[0].seq,
            txid = next.0,
            seq = next.1,
            "published results"
        );
        Ok(Some((next, placed)))
    }
}

/// Runs the relay in whichever worker holds the deployment's relay lock: a PostgreSQL
/// session-level advisory lock named after the transactional id. Other workers wait for it;
/// when the holder dies its session ends, the lock frees, the next worker takes over and its
/// `init_transactions` fences anything the old one left in flight.
pub async fn run_as_leader(
    pool: PgPool,
    codec: Arc<Codec>,
    brokers: String,
    transactional_id: String,
    metrics: Arc<crate::metrics::Metrics>,
    max_result_bytes: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), RelayError> {
    loop {
        let conn = loop {
            if *stop.borrow() {
                return Ok(());
            }
            match pool.acquire().await {
                Ok(mut conn) => {
                    if tf_store::outbox::try_relay_lock(&mut conn, &transactional_id).await.unwrap_or(false) {
                        break conn;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay lock: no database connection"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => {}
            }
        };
        // The lock lives with the session: this connection never goes back to the pool, on any
        // path (a pooled connection holding it would keep every worker from leading until a
        // restart). Dropping the detached connection ends the session, which frees the lock.
        let conn = conn.detach();
        tracing::info!(transactional_id = %transactional_id, "this worker runs the results relay");
        metrics.relay_leader.set(1.0);
        let result = match Relay::new(pool.clone(), codec.clone(), &brokers, &transactional_id, metrics.clone(), max_result_bytes) {
            Ok(relay) => relay.run(stop.clone()).await,
            Err(e) => Err(e),
        };
        metrics.relay_leader.set(0.0);
        drop(conn);
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "results relay stopped; handing the relay lock on");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
