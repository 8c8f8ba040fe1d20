//! `/dead-letters`: browse `taskfactory.dlq` (stage, reason, source coordinates, the decoded
//! event when it decodes) and redrive dead letters to their source topic, once per DLQ offset.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{Value, json};
use tf_kafka::dlq;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// The most DLQ records one request reads.
const SCAN_MAX: usize = 10_000;
/// The most value bytes one request holds: a page stops early rather than hold more (a dead
/// letter may be as large as the DLQ takes, about 1 MB).
const KEEP_MAX_BYTES: usize = 16 << 20;

/// One record of the DLQ as read.
struct DeadLetter {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        dlq::last(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())), name)
    }

    fn source_topic(&self) -> Option<String> {
        self.header(dlq::TOPIC)
    }

    /// Where on its source topic the record was when it was dead-lettered.
    fn source_at(&self) -> (Option<i32>, Option<i64>) {
        (self.header(dlq::PARTITION).and_then(|p| p.parse().ok()), self.header(dlq::OFFSET).and_then(|o| o.parse().ok()))
    }

    fn matches(&self, f: &Filter) -> bool {
        f.topic.as_ref().is_none_or(|t| self.source_topic().as_ref() == Some(t))
            && f.stage.as_ref().is_none_or(|s| self.header(dlq::STAGE).as_ref() == Some(s))
    }
}

/// What one read of the DLQ looks for: records from a partition and offset on, those matching
/// `filter`, at most `keep` of them. Records that do not match are read and let go: only the
/// kept ones (and at most [`KEEP_MAX_BYTES`] of values) stay in memory.
struct Scan {
    filter: Filter,
    keep: usize,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The source topic the record came from.
    topic: Option<String>,
    /// `decode`, `filter`, `dedupe-key`, `start`, ...
    stage: Option<String>,
    /// Read this DLQ partition only, from `offset` on.
    partition: Option<i32>,
    offset: Option<i64>,
    limit: Option<i64>,
}

/// Reads the DLQ from the start (or `partition`/`offset`) to its end, at most [`SCAN_MAX`]
/// records, keeping the matching ones ([`Scan`]), on a blocking thread (librdkafka's consumer
/// is synchronous).
async fn read(state: &AppState, scan: Scan) -> Result<Vec<DeadLetter>, ApiError> {
    let brokers = state.settings.kafka_brokers.clone();
    let topic = state.dlq_topic.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<DeadLetter>, String> {
        let (only, from) = (scan.filter.partition, scan.filter.offset);
        let consumer: BaseConsumer = tf_kafka::client_config(&brokers)
            .set("group.id", "taskfactory-api-dlq-browser")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| e.to_string())?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        let mut highs = std::collections::HashMap::new();
        for p in md.topics().first().map(rdkafka::metadata::MetadataTopic::partitions).unwrap_or_default() {
            if only.is_some_and(|o| o != p.id()) {
                continue;
            }
            let (low, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).map_err(|e| e.to_string())?;
            let start = from.filter(|_| only.is_some()).unwrap_or(low).max(low);
            if start < high {
                tpl.add_partition_offset(&topic, p.id(), Offset::Offset(start)).map_err(|e| e.to_string())?;
                highs.insert(p.id(), high);
            }
        }
        let mut out = Vec::new();
        if highs.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut scanned, mut kept_bytes) = (0usize, 0usize);
        while !highs.is_empty() && scanned < SCAN_MAX && out.len() < scan.keep && kept_bytes < KEEP_MAX_BYTES && Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(|e| e.to_string())?;
            scanned += 1;
            if m.offset() + 1 >= highs.get(&m.partition()).copied().unwrap_or(0) {
                highs.remove(&m.partition());
            }
            let headers =
                m.headers().map(|hs| hs.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect()).unwrap_or_default();
            let mut d = DeadLetter {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: Vec::new(),
                headers,
            };
            if !d.matches(&scan.filter) {
                continue;
            }
            d.value = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
            kept_bytes += d.value.len();
            out.push(d);
        }
        out.sort_by_key(|d| (d.partition, d.offset));
        Ok(out)
    })
    .await
    .expect("DLQ reader thread")
    .map_err(|e| ApiError::unavailable(format!("reading {}: {e}", state.dlq_topic)))
}

async fn describe(state: &AppState, d: &DeadLetter) -> Result<Value, ApiError> {
    let (event, decode_error) = match state.codec.decode(&d.value).await {
        Ok(tf_envelope::Decoded::Envelope { event, .. }) => (serde_json::to_value(&event).unwrap_or(Value::Null), None),
        Ok(tf_envelope::Decoded::Record { value, full_name, .. }) => (json!({"record": full_name, "value": value}), None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    let (source_partition, source_offset) = d.source_at();
    Ok(json!({
        "partition": d.partition,
        "offset": d.offset,
        "timestamp_ms": d.timestamp_ms,
        "key": d.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "stage": d.header(dlq::STAGE),
        "reason": d.header(dlq::MESSAGE),
        "class": d.header(dlq::CLASS),
        "source": {"topic": d.source_topic(), "partition": source_partition, "offset": source_offset},
        "truncated": d.header(dlq::TRUNCATED),
        "bytes": d.value.len(),
        "event": event,
        "decode_error": decode_error,
        "redrive": tf_store::redrives::get(&state.pool, (&state.dlq_topic, d.partition, d.offset)).await?,
    }))
}

pub async fn browse(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(f) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = crate::error::page_limit(f.limit, 50)? as usize;
    let mut out = Vec::new();
    for d in &read(&state, Scan { filter: f.clone(), keep: limit }).await? {
        out.push(describe(&state, d).await?);
    }
    Ok(Json(json!({"topic": state.dlq_topic, "dead_letters": out})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// These DLQ records, by partition and offset.
    #[serde(default)]
    records: Vec<Coordinates>,
    /// Or every record matching (at most `limit`).
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinates {
    partition: i32,
    offset: i64,
}

pub async fn redrive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = state.tokens.require(&headers, Scope::Write)?;
    let req: RedriveRequest = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", e.to_string()))?;
    if req.records.is_empty() && req.topic.is_none() && req.stage.is_none() {
        return Err(ApiError::bad_request("records", "name DLQ records ({partition, offset}) or a topic/stage filter"));
    }
    if req.records.len() > 1000 {
        return Err(ApiError::bad_request("records", "at most 1000 records per redrive"));
    }
    let chosen: Vec<DeadLetter> = if req.records.is_empty() {
        let filter = Filter { topic: req.topic.clone(), stage: req.stage.clone(), ..Filter::default() };
        read(&state, Scan { filter, keep: req.limit.unwrap_or(100).min(1000) }).await?
    } else {
        // Each named record is read where it is, not by scanning the DLQ for it.
        let mut chosen = Vec::new();
        for c in &req.records {
            let at = Filter { partition: Some(c.partition), offset: Some(c.offset), ..Filter::default() };
            let d = read(&state, Scan { filter: at, keep: 1 })
                .await?
                .into_iter()
                .find(|d| d.partition == c.partition && d.offset == c.offset)
                .ok_or_else(|| ApiError::not_found(format!("no dead letter at {}@{}:{}", state.dlq_topic, c.partition, c.offset)))?;
            chosen.push(d);
        }
        chosen
    };
    let (mut redriven, mut skipped) = (Vec::new(), Vec::new());
    for d in &chosen {
        let at = json!({"partition": d.partition, "offset": d.offset});
        let Some(target) = d.source_topic() else {
            skipped.push(json!({"dead_letter": at, "reason": "no __connect.errors.topic header: not written by the router"}));
            continue;
        };
        // Only a topic the router reads: anything else would let a dead letter's headers pick
        // where tf-api writes (the results topic, the relay's marker).
        if !state.router_topics.matches(&target) {
            skipped.push(json!({"dead_letter": at, "reason": format!("source topic {target} is not one the router reads ({})", state.router_topics.patterns().join(", "))}));
            continue;
        }
        if let Some(note) = d.header(dlq::TRUNCATED) {
            skipped.push(json!({"dead_letter": at, "reason": format!("truncated in the DLQ, the original is gone: {note}")}));
            continue;
        }
        let dlq = (state.dlq_topic.as_str(), d.partition, d.offset);
        let (partition, offset) = d.source_at();
        let source = partition.zip(offset);
        if !tf_store::redrives::claim(&state.pool, dlq, &target, source, &caller.token).await? {
            let earlier = tf_store::redrives::get(&state.pool, dlq).await?;
            skipped.push(json!({"dead_letter": at, "reason": "already redriven", "redrive": earlier}));
            continue;
        }
        let marker = format!("{}@{}:{}", state.dlq_topic, d.partition, d.offset);
        let mut hs = OwnedHeaders::new();
        for (k, v) in d.headers.iter().filter(|(k, _)| !dlq::is_reserved(k)) {
            hs = hs.insert(Header { key: k, value: v.as_deref() });
        }
        hs = hs.insert(Header { key: dlq::REDRIVE, value: Some(marker.as_str()) });
        // The dead letter carries the original record's timestamp (the router keeps it): a plain
        // record's event time, and so its dedupe window.
        let mut record = FutureRecord::to(&target).payload(&d.value).headers(hs);
        if let Some(ts) = d.timestamp_ms {
            record = record.timestamp(ts);
        }
        if let Some(k) = &d.key {
            record = record.key(k);
        }
        match state.producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => {
                tf_store::redrives::placed(&state.pool, dlq, delivery.partition, delivery.offset).await?;
                state.metrics.dead_letters_redriven.increment(1);
                tracing::info!(token = %caller.token, dead_letter = %marker, topic = %target, "dead letter redriven");
                redriven.push(json!({"dead_letter": at, "topic": target, "partition": delivery.partition, "offset": delivery.offset}));
            }
            Err((e, _)) => {
                tf_store::redrives::release(&state.pool, dlq).await?;
                skipped.push(json!({"dead_letter": at, "reason": format!("producing to {target} failed: {e}")}));
            }
        }
    }
    Ok((StatusCode::OK, Json(json!({"redriven": redriven, "skipped": skipped}))))
}
