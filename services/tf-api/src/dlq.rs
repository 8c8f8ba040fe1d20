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
use serde::{Deserialize, Serialize};
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

/// `GET /dead-letters` query.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Dead letters of records from this source topic.
    topic: Option<String>,
    /// `decode`, `filter`, `dedupe-key`, `start`, ... (the `stage` header).
    stage: Option<String>,
    /// Read this DLQ partition only, from `offset` on.
    partition: Option<i32>,
    /// With `partition`: the first DLQ offset to read.
    offset: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A DLQ position pages continue after: `partition:offset`.
fn dlq_cursor(v: Option<&str>) -> Result<Option<(i32, i64)>, ApiError> {
    let bad = || ApiError::bad_request("cursor", "not a cursor this API gave out (next_cursor)");
    v.map(|v| {
        let (p, o) = v.split_once(':').ok_or_else(bad)?;
        Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
    })
    .transpose()
}

/// What one read found: the kept records, in (partition, offset) order, and where to continue
/// (`None`: the DLQ was read to its end).
struct Found {
    kept: Vec<DeadLetter>,
    next: Option<(i32, i64)>,
}

/// Reads the DLQ from the start (or `partition`/`offset`, or after a cursor) towards its end,
/// one partition after the other so pages follow (partition, offset) order, at most
/// [`SCAN_MAX`] records, keeping the matching ones ([`Scan`]), on a blocking thread
/// (librdkafka's consumer is synchronous).
async fn read(state: &AppState, scan: Scan, after: Option<(i32, i64)>) -> Result<Found, ApiError> {
    let brokers = state.settings.kafka_brokers.clone();
    let topic = state.dlq_topic.clone();
    tokio::task::spawn_blocking(move || -> Result<Found, String> {
        let (only, from) = (scan.filter.partition, scan.filter.offset);
        let consumer: BaseConsumer = tf_kafka::client_config(&brokers)
            .set("group.id", "taskfactory-api-dlq-browser")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| e.to_string())?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let mut ranges = Vec::new();
        for p in md.topics().first().map(rdkafka::metadata::MetadataTopic::partitions).unwrap_or_default() {
            if only.is_some_and(|o| o != p.id()) || after.is_some_and(|(ap, _)| p.id() < ap) {
                continue;
            }
            let (low, high) = consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).map_err(|e| e.to_string())?;
            let mut start = from.filter(|_| only.is_some()).unwrap_or(low).max(low);
            if let Some((ap, ao)) = after
                && ap == p.id()
            {
                start = start.max(ao.saturating_add(1));
            }
            if start < high {
                ranges.push((p.id(), start, high));
            }
        }
        ranges.sort_unstable();
        let mut kept = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        let (mut scanned, mut kept_bytes) = (0usize, 0usize);
        let mut last: Option<(i32, i64)> = None;
        let full = |kept: &Vec<DeadLetter>, scanned: usize, kept_bytes: usize| {
            scanned >= SCAN_MAX || kept.len() >= scan.keep || kept_bytes >= KEEP_MAX_BYTES || Instant::now() >= deadline
        };
        for (i, &(partition, start, high)) in ranges.iter().enumerate() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(start)).map_err(|e| e.to_string())?;
            consumer.assign(&tpl).map_err(|e| e.to_string())?;
            let mut done = false;
            while !done && !full(&kept, scanned, kept_bytes) {
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    // Nothing delivered: the partition is done once the consumer's position is at
                    // its end (its last offset may be a record never delivered, a control one).
                    let position = consumer.position().ok().and_then(|tpl| tpl.find_partition(&topic, partition)?.offset().to_raw());
                    done = position.is_some_and(|o| o >= high);
                    continue;
                };
                let m = m.map_err(|e| e.to_string())?;
                scanned += 1;
                last = Some((m.partition(), m.offset()));
                done = m.offset() + 1 >= high;
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
                kept.push(d);
            }
            if !done {
                // Stopped inside this partition: the next page goes on from the last record read.
                return Ok(Found { kept, next: last.or(Some((partition, start - 1))) });
            }
            if full(&kept, scanned, kept_bytes) && i + 1 < ranges.len() {
                return Ok(Found { kept, next: last });
            }
        }
        Ok(Found { kept, next: None })
    })
    .await
    .expect("DLQ reader thread")
    .map_err(|e| ApiError::unavailable(format!("reading {}: {e}", state.dlq_topic)))
}

/// Where a dead letter's record was on its source topic.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceAt {
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// One dead letter as the browser shows it.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The record's key, as text (lossy).
    pub key: Option<String>,
    /// The failure stage (`decode`, `filter`, ...).
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// `poison` or `transient`.
    pub class: Option<String>,
    pub source: SourceAt,
    /// Set when the DLQ had to cut the value; such a letter cannot be redriven.
    pub truncated: Option<String>,
    /// The value's size.
    pub bytes: usize,
    /// The decoded event (or `{record, value}` for a plain Avro record); `null` when it did not
    /// decode.
    pub event: Value,
    pub decode_error: Option<String>,
    /// Its redrive, if one was made.
    #[schema(value_type = Option<Object>)]
    pub redrive: Option<Value>,
}

/// A page of dead letters in (partition, offset) order.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// The DLQ topic read.
    pub topic: String,
    pub dead_letters: Vec<DeadLetterView>,
    /// The next page's `cursor`; `null` once the DLQ was read to its end.
    pub next_cursor: Option<String>,
}

async fn describe(state: &AppState, d: &DeadLetter) -> Result<DeadLetterView, ApiError> {
    let (event, decode_error) = match state.codec.decode(&d.value).await {
        Ok(tf_envelope::Decoded::Envelope { event, .. }) => (serde_json::to_value(&event).unwrap_or(Value::Null), None),
        Ok(tf_envelope::Decoded::Record { value, full_name, .. }) => (json!({"record": full_name, "value": value}), None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    let (source_partition, source_offset) = d.source_at();
    Ok(DeadLetterView {
        partition: d.partition,
        offset: d.offset,
        timestamp_ms: d.timestamp_ms,
        key: d.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        stage: d.header(dlq::STAGE),
        reason: d.header(dlq::MESSAGE),
        class: d.header(dlq::CLASS),
        source: SourceAt { topic: d.source_topic(), partition: source_partition, offset: source_offset },
        truncated: d.header(dlq::TRUNCATED),
        bytes: d.value.len(),
        event,
        decode_error,
        redrive: tf_store::redrives::get(&state.pool, (&state.dlq_topic, d.partition, d.offset)).await?,
    })
}

pub async fn browse(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    state.tokens.require(&headers, Scope::Read)?;
    let Query(f) = q.map_err(|e| ApiError::bad_request("query", e.body_text()))?;
    let limit = crate::error::page_limit(f.limit, 50)? as usize;
    let after = dlq_cursor(f.cursor.as_deref())?;
    let found = read(&state, Scan { filter: f.clone(), keep: limit }, after).await?;
    let mut out = Vec::new();
    for d in &found.kept {
        out.push(describe(&state, d).await?);
    }
    Ok(Json(DeadLetterPage { topic: state.dlq_topic.clone(), dead_letters: out, next_cursor: found.next.map(|(p, o)| format!("{p}:{o}")) }))
}

/// What to redrive: named DLQ records, or every record matching a filter.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// These DLQ records, by partition and offset (at most 1000).
    #[serde(default)]
    records: Vec<Coordinates>,
    /// Or every record from this source topic ...
    #[serde(default)]
    topic: Option<String>,
    /// ... and/or of this stage ...
    #[serde(default)]
    stage: Option<String>,
    /// ... at most this many (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// A DLQ record's place.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Coordinates {
    pub partition: i32,
    pub offset: i64,
}

/// A dead letter written back to its source topic.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Redriven {
    pub dead_letter: Coordinates,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A dead letter not redriven, and why.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Skipped {
    pub dead_letter: Coordinates,
    pub reason: String,
    /// The earlier redrive, when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub redrive: Option<Value>,
}

/// The answer of a redrive.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RedriveResult {
    pub redriven: Vec<Redriven>,
    pub skipped: Vec<Skipped>,
}

pub async fn redrive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
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
        read(&state, Scan { filter, keep: req.limit.unwrap_or(100).min(1000) }, None).await?.kept
    } else {
        // Each named record is read where it is, not by scanning the DLQ for it.
        let mut chosen = Vec::new();
        for c in &req.records {
            let at = Filter { partition: Some(c.partition), offset: Some(c.offset), ..Filter::default() };
            let d = read(&state, Scan { filter: at, keep: 1 }, None)
                .await?
                .kept
                .into_iter()
                .find(|d| d.partition == c.partition && d.offset == c.offset)
                .ok_or_else(|| ApiError::not_found(format!("no dead letter at {}@{}:{}", state.dlq_topic, c.partition, c.offset)))?;
            chosen.push(d);
        }
        chosen
    };
    let (mut redriven, mut skipped) = (Vec::new(), Vec::new());
    for d in &chosen {
        let at = Coordinates { partition: d.partition, offset: d.offset };
        let skip = |reason: String| Skipped { dead_letter: at, reason, redrive: None };
        let Some(target) = d.source_topic() else {
            skipped.push(skip("no __connect.errors.topic header: not written by the router".into()));
            continue;
        };
        // Only a topic the router reads: anything else would let a dead letter's headers pick
        // where tf-api writes (the results topic, the relay's marker).
        if !state.router_topics.matches(&target) {
            skipped
                .push(skip(format!("source topic {target} is not one the router reads ({})", state.router_topics.patterns().join(", "))));
            continue;
        }
        if let Some(note) = d.header(dlq::TRUNCATED) {
            skipped.push(skip(format!("truncated in the DLQ, the original is gone: {note}")));
            continue;
        }
        let dlq = (state.dlq_topic.as_str(), d.partition, d.offset);
        let (partition, offset) = d.source_at();
        let source = partition.zip(offset);
        if !tf_store::redrives::claim(&state.pool, dlq, &target, source, &caller.token).await? {
            let earlier = tf_store::redrives::get(&state.pool, dlq).await?;
            skipped.push(Skipped { dead_letter: at, reason: "already redriven".into(), redrive: earlier });
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
                redriven.push(Redriven { dead_letter: at, topic: target, partition: delivery.partition, offset: delivery.offset });
            }
            Err((e, _)) => {
                tf_store::redrives::release(&state.pool, dlq).await?;
                skipped.push(skip(format!("producing to {target} failed: {e}")));
            }
        }
    }
    Ok((StatusCode::OK, Json(RedriveResult { redriven, skipped })))
}
