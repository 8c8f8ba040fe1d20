//! The results relay: publishes the `task_results` outbox to `taskfactory.results` in Kafka
//! transactions, each carrying the relay's progress marker to `taskfactory.results-relay`
//! (the pattern of Kafka Connect's exactly-once source connectors). A crash before commit
//! aborts results and marker together; after commit both are visible to `read_committed`
//! consumers. One fixed `transactional.id` fences a zombie relay when a new one starts.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tf_envelope::{Codec, TaskResult};
use tf_store::PgPool;

pub const RESULTS_TOPIC: &str = "taskfactory.results";
pub const MARKER_TOPIC: &str = "taskfactory.results-relay";
const BATCH: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] tf_store::StoreError),
    #[error("encoding result {task_id}: {reason}")]
    Encode { task_id: String, reason: String, transient: bool },
    #[error("marker record is not (txid, seq) JSON: {0}")]
    Marker(String),
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
            .set("transaction.timeout.ms", "60000")
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
        let (low, high) = consumer.fetch_watermarks(MARKER_TOPIC, 0, Duration::from_secs(10))?;
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
                        let pos = consumer.position()?.elements_for_topic(MARKER_TOPIC).first().map(|e| e.offset());
                        if matches!(pos, Some(Offset::Offset(p)) if p >= high) {
                            break;
                        }
                        // Starting from a marker that is not the last one would publish results
                        // twice: rather not start (the caller retries) than guess. An open
                        // transaction of another producer on the marker topic holds the
                        // read_committed position back like this.
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
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            match self.publish_batch(marker).await {
                Ok(Some(next)) => {
                    marker = next;
                    backoff = Duration::from_millis(200);
                    continue;
                }
                Ok(None) => {
                    if let Ok(n) = tf_store::outbox::unpublished_results(&self.pool).await {
                        self.metrics.results_pending.store(n, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(RelayError::Kafka(e)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Fenced) => {
                    return Err(RelayError::Kafka(e));
                }
                Err(e) => {
                    self.metrics.relay_batches_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "results relay batch failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.max(Duration::from_millis(200))) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The result as it goes on the topic; over `max_result_bytes` its output is replaced by a
    /// note (`truncated`), so one huge output never blocks the relay.
    async fn encode(&self, row: &tf_store::outbox::PendingResult) -> Result<Vec<u8>, RelayError> {
        let encode_err = |e: tf_envelope::EncodeError| RelayError::Encode {
            task_id: row.task_id.clone(),
            transient: matches!(&e, tf_envelope::EncodeError::Registry(r) if r.is_transient()),
            reason: e.to_string(),
        };
        let result: TaskResult = serde_json::from_value(row.record.clone()).map_err(|e| RelayError::Encode {
            task_id: row.task_id.clone(),
            reason: e.to_string(),
            transient: false,
        })?;
        let subject = format!("{RESULTS_TOPIC}-value");
        let bytes = self.codec.encode(&subject, tf_envelope::TASK_RESULT_SCHEMA, result.to_avro()).await.map_err(encode_err)?;
        if bytes.len() <= self.max_result_bytes {
            return Ok(bytes);
        }
        tracing::warn!(task_id = %row.task_id, bytes = bytes.len(), limit = self.max_result_bytes, "result too large: published truncated");
        self.metrics.results_truncated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let small = result.truncated(bytes.len());
        self.codec.encode(&subject, tf_envelope::TASK_RESULT_SCHEMA, small.to_avro()).await.map_err(encode_err)
    }

    async fn publish_batch(&self, marker: (i64, i64)) -> Result<Option<(i64, i64)>, RelayError> {
        let rows = tf_store::outbox::pending_results(&self.pool, marker, BATCH).await?;
        let Some(last) = rows.last() else { return Ok(None) };
        let next = (last.txid, last.seq);
        let mut encoded = Vec::with_capacity(rows.len());
        for row in &rows {
            match self.encode(row).await {
                Ok(bytes) => encoded.push((row, bytes)),
                // The registry is down: retry the batch later.
                Err(e @ RelayError::Encode { transient: true, .. }) => return Err(e),
                Err(e) => {
                    // This row can never be published: quarantine it, let the rest flow.
                    tracing::error!(task_id = %row.task_id, error = %e, "result quarantined: it cannot be published");
                    tf_store::outbox::quarantine_result(&self.pool, &row.task_id, &e.to_string()).await?;
                    self.metrics.results_quarantined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        self.producer.begin_transaction()?;
        // Where each result landed (partition, offset), recorded once the transaction commits:
        // a run's lineage ends at its results' offsets.
        let mut placed: Vec<(String, i32, i64)> = Vec::with_capacity(encoded.len());
        let sent: Result<(), RelayError> = async {
            let mut deliveries = Vec::with_capacity(encoded.len() + 1);
            for (row, bytes) in &encoded {
                let record = FutureRecord::to(RESULTS_TOPIC)
                    .key(&row.run_id)
                    .payload(bytes)
                    .headers(OwnedHeaders::new().insert(Header { key: "taskfactory.task_id", value: Some(&row.task_id) }));
                deliveries.push((Some(row.task_id.clone()), self.producer.send_result(record).map_err(|(e, _)| e)?));
            }
            let marker_json = serde_json::json!({"txid": next.0, "seq": next.1}).to_string();
            let marker_record = FutureRecord::to(MARKER_TOPIC).key(&self.transactional_id).payload(&marker_json);
            deliveries.push((None, self.producer.send_result(marker_record).map_err(|(e, _)| e)?));
            for (task_id, d) in deliveries {
                match d.await {
                    Ok(Ok(delivery)) => {
                        if let Some(task_id) = task_id {
                            placed.push((task_id, delivery.partition, delivery.offset));
                        }
                    }
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
                }
            }
            Ok(())
        }
        .await;
        let producer = self.producer.clone();
        let committed = match sent {
            Ok(()) => tokio::task::spawn_blocking(move || producer.commit_transaction(Duration::from_secs(30)))
                .await
                .expect("commit thread")
                .map_err(RelayError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            let producer = self.producer.clone();
            let _ = tokio::task::spawn_blocking(move || producer.abort_transaction(Duration::from_secs(30))).await;
            return Err(e);
        }
        tf_store::outbox::mark_published(&self.pool, &placed).await?;
        self.metrics.results_published.fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(count = rows.len(), txid = next.0, seq = next.1, "published results");
        Ok(Some(next))
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
        let mut conn = loop {
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
        tracing::info!(transactional_id = %transactional_id, "this worker runs the results relay");
        metrics.relay_leader.store(1, std::sync::atomic::Ordering::Relaxed);
        let relay = Relay::new(pool.clone(), codec.clone(), &brokers, &transactional_id, metrics.clone(), max_result_bytes)?;
        let result = relay.run(stop.clone()).await;
        metrics.relay_leader.store(0, std::sync::atomic::Ordering::Relaxed);
        // Release the lock with the session: close the connection rather than return it.
        let _ = tf_store::outbox::release_relay_lock(&mut conn).await;
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
