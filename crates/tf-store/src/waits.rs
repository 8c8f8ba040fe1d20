//! Runs waiting for another event (docs/steps.md): `wait_for_event` steps and `cancel_on`
//! registrations in `event_waits`, the matchers routers compute, and the recent events a wait
//! that begins looks back on.
//!
//! Delivery is decided here, once: a wait goes from `open` to `delivered` in one conditional
//! update, by the router that handled the event or by the worker whose wait began while the
//! router handled it. Both write first and read after their write committed (the router stores
//! the event, then looks for waits; the worker stores the wait, then looks for events), so
//! whichever commits second sees the other: no event that counts is missed, and the claim makes
//! a second sighting a no-op.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::PgPool;
use tf_definitions::RunId;

use crate::StoreError;

/// What a wait is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// A `wait_for_event` step: the event becomes the step's output.
    Step,
    /// A `cancel_on` entry: the event cancels the run.
    Cancel,
}

impl WaitKind {
    fn as_str(self) -> &'static str {
        match self {
            WaitKind::Step => "step",
            WaitKind::Cancel => "cancel",
        }
    }
}

/// A wait as it begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWait {
    pub wait_id: String,
    pub kind: WaitKind,
    pub run_id: RunId,
    pub event_type: String,
    pub topics: Vec<String>,
    /// The CEL expression over the incoming event, and its SHA-256.
    pub incoming: String,
    pub matcher: String,
    pub match_key: String,
    /// Events whose record timestamp is at or after this count (the wait's start).
    pub since_ms: i64,
    pub until_ms: Option<i64>,
}

/// Where a delivered event was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An event delivered to a wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub wait_id: String,
    pub event: Json,
    pub source: Source,
}

/// Why `event`, read at `source`, cancelled a run (a `cancel_on` delivery), as the run's tasks
/// record it.
pub fn cancel_reason(event: &Json, source: &Source) -> String {
    let id = event.get("id").and_then(Json::as_str).unwrap_or("?");
    let kind = event.get("type").and_then(Json::as_str).unwrap_or("?");
    format!("cancel_on: {kind} event {id} ({} partition {} offset {})", source.topic, source.partition, source.offset)
}

/// A wait an event was delivered to, for the router to tell its run.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Delivered {
    pub wait_id: String,
    pub kind: String,
    pub run_id: String,
}

impl Delivered {
    pub fn cancels(&self) -> bool {
        self.kind == WaitKind::Cancel.as_str()
    }
}

/// One incoming expression routers compute for an event type.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Matcher {
    pub event_type: String,
    pub matcher: String,
    pub incoming: String,
}

/// An event of a waited-for type as the router read it.
pub struct IncomingEvent<'a> {
    pub event_type: &'a str,
    pub event: &'a Json,
    pub source: &'a Source,
    /// The record's timestamp: what "after the wait began" is measured by.
    pub record_ms: i64,
}

/// Records a wait (idempotent: a retried activity finds it) and its matcher.
pub async fn begin(pool: &PgPool, w: &NewWait) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO wait_matchers (event_type, matcher, incoming) VALUES ($1, $2, $3)
         ON CONFLICT (event_type, matcher) DO UPDATE SET last_used = now()",
    )
    .bind(&w.event_type)
    .bind(&w.matcher)
    .bind(&w.incoming)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO event_waits (wait_id, kind, run_id, event_type, topics, matcher, match_key, since_ms, until_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (wait_id) DO NOTHING",
    )
    .bind(&w.wait_id)
    .bind(w.kind.as_str())
    .bind(&w.run_id)
    .bind(&w.event_type)
    .bind(&w.topics)
    .bind(&w.matcher)
    .bind(&w.match_key)
    .bind(w.since_ms)
    .bind(w.until_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// The most recent events a beginning wait reads back: they are the ones a router handled in
/// the moment the wait was being recorded, a handful at most.
pub const LOOK_BACK_LIMIT: i64 = 500;

/// Remembered events that may count for `w`: its type, from one of its topics (any when it
/// names none, as [`deliver`] decides), recorded at or after its start; oldest first.
pub async fn recent_events(pool: &PgPool, w: &NewWait) -> Result<Vec<(Json, Source)>, StoreError> {
    let rows: Vec<(Json, String, i32, i64)> = sqlx::query_as(
        r#"SELECT event, topic, partition, "offset" FROM waitable_events
           WHERE event_type = $1 AND record_ms >= $2 AND (cardinality($3::text[]) = 0 OR topic = ANY ($3))
           ORDER BY record_ms, topic, partition, "offset" LIMIT $4"#,
    )
    .bind(&w.event_type)
    .bind(w.since_ms)
    .bind(&w.topics)
    .bind(LOOK_BACK_LIMIT)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(event, topic, partition, offset)| (event, Source { topic, partition, offset })).collect())
}

/// Claims `wait_id` for the event: `true` when it was open and now holds the event.
pub async fn claim(pool: &PgPool, wait_id: &str, event: &Json, source: &Source) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE event_waits SET status = 'delivered', event = $2, event_id = $2->>'id', source_topic = $3, source_partition = $4,
                source_offset = $5, delivered_at = now()
         WHERE wait_id = $1 AND status = 'open'",
    )
    .bind(wait_id)
    .bind(event)
    .bind(&source.topic)
    .bind(source.partition)
    .bind(source.offset)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The event a wait holds, if one was delivered to it (whatever happened since).
pub async fn delivery(pool: &PgPool, wait_id: &str) -> Result<Option<Delivery>, StoreError> {
    let row: Option<(Json, String, i32, i64)> = sqlx::query_as(
        "SELECT event, source_topic, source_partition, source_offset FROM event_waits
         WHERE wait_id = $1 AND event IS NOT NULL",
    )
    .bind(wait_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(event, topic, partition, offset)| Delivery {
        wait_id: wait_id.to_string(),
        event,
        source: Source { topic, partition, offset },
    }))
}

/// The run takes the event delivered to the wait: a replay of the event's offset tells it
/// nothing again. Returns the event (idempotent: a retried activity gets it again).
pub async fn take(pool: &PgPool, wait_id: &str) -> Result<Option<Delivery>, StoreError> {
    sqlx::query("UPDATE event_waits SET status = 'received', closed_at = now() WHERE wait_id = $1 AND status = 'delivered'")
        .bind(wait_id)
        .execute(pool)
        .await?;
    delivery(pool, wait_id).await
}

/// Ends an open wait without an event. `None` when it timed out; the delivery when an event
/// claimed it first (the run then takes the event: it came in time).
pub async fn time_out(pool: &PgPool, wait_id: &str) -> Result<Option<Delivery>, StoreError> {
    let ended = sqlx::query("UPDATE event_waits SET status = 'timed_out', closed_at = now() WHERE wait_id = $1 AND status = 'open'")
        .bind(wait_id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1;
    if ended { Ok(None) } else { take(pool, wait_id).await }
}

/// Closes a run's waits when it ends (in the transaction that records the end).
pub(crate) async fn close_run(tx: &mut sqlx::PgConnection, run_id: &RunId) -> Result<(), StoreError> {
    sqlx::query("UPDATE event_waits SET status = 'closed', closed_at = now() WHERE run_id = $1 AND status IN ('open', 'delivered')")
        .bind(run_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// Every matcher of a wait that began (routers add those of their loaded definitions).
pub async fn matchers(pool: &PgPool) -> Result<Vec<Matcher>, StoreError> {
    Ok(sqlx::query_as("SELECT event_type, matcher, incoming FROM wait_matchers ORDER BY event_type, matcher").fetch_all(pool).await?)
}

/// Keeps an event of a waited-for type for the waits that begin while it is routed. Committed
/// before [`deliver`] looks for waits.
pub async fn remember(pool: &PgPool, e: &IncomingEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        r#"INSERT INTO waitable_events (topic, partition, "offset", event_type, record_ms, event) VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (topic, partition, "offset") DO NOTHING"#,
    )
    .bind(&e.source.topic)
    .bind(e.source.partition)
    .bind(e.source.offset)
    .bind(e.event_type)
    .bind(e.record_ms)
    .bind(e.event)
    .execute(pool)
    .await?;
    Ok(())
}

/// Delivers the event to every open wait it matches (`keys`: matcher to the key the event gave)
/// and returns each wait this record was delivered to and whose run has not taken it yet,
/// including deliveries of an earlier pass over the same offset (a router that died before
/// telling the run).
pub async fn deliver(pool: &PgPool, e: &IncomingEvent<'_>, keys: &[(String, String)]) -> Result<Vec<Delivered>, StoreError> {
    let (matchers, match_keys): (Vec<&str>, Vec<&str>) = keys.iter().map(|(m, k)| (m.as_str(), k.as_str())).unzip();
    Ok(sqlx::query_as(
        "WITH claimed AS (
             UPDATE event_waits w SET status = 'delivered', event = $6, event_id = $6->>'id', source_topic = $3,
                    source_partition = $4, source_offset = $5, delivered_at = now()
             FROM unnest($7::text[], $8::text[]) AS k(matcher, match_key)
             WHERE w.event_type = $1 AND w.matcher = k.matcher AND w.match_key = k.match_key AND w.status = 'open'
               AND w.since_ms <= $2 AND (cardinality(w.topics) = 0 OR $3 = ANY (w.topics))
             RETURNING w.wait_id, w.kind, w.run_id
         )
         SELECT wait_id, kind, run_id FROM claimed
         UNION
         SELECT wait_id, kind, run_id FROM event_waits
         WHERE status = 'delivered' AND source_topic = $3 AND source_partition = $4 AND source_offset = $5
         ORDER BY wait_id",
    )
    .bind(e.event_type)
    .bind(e.record_ms)
    .bind(&e.source.topic)
    .bind(e.source.partition)
    .bind(e.source.offset)
    .bind(e.event)
    .bind(&matchers)
    .bind(&match_keys)
    .fetch_all(pool)
    .await?)
}

/// How long a router's remembered event is kept: a wait looks back only on what a router
/// handled while it was being recorded (milliseconds), so minutes are plenty.
pub const REMEMBERED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes remembered events older than [`REMEMBERED_FOR`], ended waits older than `retention`
/// (the claims' retention: a replay within it finds them ended) and matchers no open wait uses
/// and none began with for a month. Returns how many events and waits went.
pub async fn expire(pool: &PgPool, retention: std::time::Duration) -> Result<u64, StoreError> {
    let events = sqlx::query("DELETE FROM waitable_events WHERE received_at < now() - make_interval(secs => $1)")
        .bind(REMEMBERED_FOR.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    let waits = sqlx::query(
        "DELETE FROM event_waits WHERE status IN ('received', 'timed_out', 'closed') AND closed_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    let gone = events + waits;
    sqlx::query(
        "DELETE FROM wait_matchers m WHERE last_used < now() - interval '31 days'
           AND NOT EXISTS (SELECT 1 FROM event_waits w WHERE w.event_type = m.event_type AND w.matcher = m.matcher AND w.status = 'open')",
    )
    .execute(pool)
    .await?;
    Ok(gone)
}

/// A run's waits, for its page and lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WaitView {
    pub wait_id: String,
    pub kind: String,
    pub event_type: String,
    pub match_key: String,
    pub status: String,
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub event_id: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

pub async fn of_run(pool: &PgPool, run_id: &str) -> Result<Vec<WaitView>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT wait_id, kind, event_type, match_key, status, since_ms, until_ms, event_id, source_topic, source_partition,
                source_offset
         FROM event_waits WHERE run_id = $1 ORDER BY created_at, wait_id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}
