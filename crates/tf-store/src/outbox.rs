//! The results outbox (`task_results`, docs/design.md dedupe layer 4): a finished task queues its
//! result once, whatever the retries; the relay publishes the outbox in marker order inside
//! Kafka transactions, and takes the deployment's relay lock here.

use serde_json::Value as Json;
use sqlx::PgPool;

use crate::StoreError;

pub struct FinishedTask<'a> {
    pub task_id: &'a tf_definitions::TaskId,
    pub run_id: &'a tf_definitions::RunId,
    pub status: tf_definitions::TaskStatus,
    pub output: Option<&'a Json>,
    pub error: Option<&'a str>,
    pub attempts: i32,
    /// The result record to publish, as JSON.
    pub record: &'a Json,
    /// Sent as the record's `traceparent` header.
    pub traceparent: Option<&'a str>,
}

/// Finishes a task and queues its result for the relay, once per task whatever the retries.
/// Returns whether this call queued it.
pub async fn record_result(pool: &PgPool, o: &FinishedTask<'_>) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE tasks SET status = $2, output = $3, error = $4, attempts = $5, finished_at = coalesce(finished_at, now())
         WHERE task_id = $1",
    )
    .bind(o.task_id)
    .bind(o.status)
    .bind(o.output)
    .bind(o.error)
    .bind(o.attempts)
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO task_results (task_id, run_id, record, traceparent) VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING",
    )
    .bind(o.task_id)
    .bind(o.run_id)
    .bind(o.record)
    .bind(o.traceparent)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(inserted == 1)
}

/// One result waiting for the relay.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingResult {
    pub txid: i64,
    pub seq: i64,
    pub task_id: String,
    pub run_id: String,
    pub record: Json,
    pub traceparent: Option<String>,
}

/// Results after the marker `(txid, seq)` whose transactions are older than any still running,
/// in marker order, and neither published nor quarantined: a relay whose marker is missing
/// resumes after what was recorded as published, not from the outbox's start.
pub async fn pending_results(pool: &PgPool, after: (i64, i64), limit: i64) -> Result<Vec<PendingResult>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT txid, seq, task_id, run_id, record, traceparent FROM task_results
         WHERE (txid, seq) > ($1, $2) AND published_at IS NULL AND quarantined_at IS NULL
           AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         ORDER BY txid, seq LIMIT $3",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Marks a result the relay skipped for good, with why.
pub async fn quarantine_result(pool: &PgPool, task_id: &str, reason: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE task_results SET quarantined_at = coalesce(quarantined_at, now()), quarantine_reason = $2 WHERE task_id = $1")
        .bind(task_id)
        .bind(reason)
        .execute(pool)
        .await?;
    Ok(())
}

/// A result the relay set aside, with why.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Quarantined {
    pub task_id: String,
    pub run_id: String,
    pub reason: Option<String>,
    pub quarantined_at_ms: i64,
}

/// Quarantined results, oldest first.
pub async fn quarantined(pool: &PgPool, limit: i64) -> Result<Vec<Quarantined>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT task_id, run_id, quarantine_reason AS reason, (extract(epoch FROM quarantined_at) * 1000)::bigint AS quarantined_at_ms
         FROM task_results WHERE quarantined_at IS NOT NULL AND published_at IS NULL ORDER BY quarantined_at, task_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Queues quarantined results again (after the cause was fixed: a registry setting, the
/// topic's size limit): each takes a new place after everything queued so far, so the relay,
/// whose marker moved past them, reads them next. Returns the task ids re-queued.
pub async fn requeue(pool: &PgPool, task_ids: &[String]) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE task_results SET quarantined_at = NULL, quarantine_reason = NULL,
             seq = nextval(pg_get_serial_sequence('task_results', 'seq')), txid = pg_current_xact_id()::text::bigint
         WHERE task_id = ANY($1) AND quarantined_at IS NOT NULL AND published_at IS NULL
         RETURNING task_id",
    )
    .bind(task_ids)
    .fetch_all(pool)
    .await?)
}

/// Records where committed results landed on the results topic: `(task id, partition,
/// offset)`. Informational (the Kafka transaction's marker is the source of truth), first
/// placement wins.
pub async fn mark_published(pool: &PgPool, placed: &[(String, i32, i64)]) -> Result<(), StoreError> {
    let ids: Vec<&str> = placed.iter().map(|p| p.0.as_str()).collect();
    let partitions: Vec<i32> = placed.iter().map(|p| p.1).collect();
    let offsets: Vec<i64> = placed.iter().map(|p| p.2).collect();
    sqlx::query(
        "UPDATE task_results r SET published_at = now(), published_partition = p.partition, published_offset = p.off
         FROM unnest($1::text[], $2::int[], $3::bigint[]) AS p(task_id, partition, off)
         WHERE r.task_id = p.task_id AND r.published_at IS NULL",
    )
    .bind(&ids)
    .bind(&partitions)
    .bind(&offsets)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks as published every result up to the relay's marker that is not marked yet: a relay
/// killed between its Kafka commit and [`mark_published`] leaves such rows, which are on the
/// topic (the marker committed with them) but would count as pending for ever. Their placement
/// stays unknown.
pub async fn mark_published_through(pool: &PgPool, marker: (i64, i64)) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE task_results SET published_at = now()
         WHERE (txid, seq) <= ($1, $2) AND published_at IS NULL AND quarantined_at IS NULL",
    )
    .bind(marker.0)
    .bind(marker.1)
    .execute(pool)
    .await?
    .rows_affected())
}

/// What waits for the relay: results queued and not yet published, and the seconds since the
/// oldest of them was queued (0 when none waits), the relay's lag.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_secs: i64,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0)::bigint AS oldest_age_secs
         FROM task_results WHERE published_at IS NULL AND quarantined_at IS NULL",
    )
    .fetch_one(pool)
    .await?)
}

/// Takes the deployment's relay lock on this session (a PostgreSQL session-level advisory lock
/// named after the relay's transactional id); false when another session holds it. The lock
/// lives as long as the connection: when the holder dies, its session ends and the lock frees.
pub async fn try_relay_lock(conn: &mut sqlx::PgConnection, transactional_id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('taskfactory-relay:' || $1))")
        .bind(transactional_id)
        .fetch_one(conn)
        .await?)
}
