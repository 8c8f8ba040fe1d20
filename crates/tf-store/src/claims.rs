//! Dedupe claims and their generations (docs/design.md, "Dedupe and exactly-once", layers 1–3).
//!
//! The claim on (definition, dedupe key) owns the key's windows. Each window is a numbered
//! generation covering [time of the event that opened it, + `dedupe.window`) in event time, and
//! has at most one run, whose workflow id carries the generation. Resolution happens before a
//! start, in one statement per batch (`tf_resolve_generations`, see the migration): an event maps
//! to the generation whose window covers its time, or opens the next one. A generation opened by
//! an event older than existing windows ends where the next window starts, so windows of one key
//! never overlap.
//!
//! Generations are deleted [`expire_generations`] once both their window ended and they were
//! opened more than the claim retention ago; the claim row itself (its generation counter) is kept as long as the runs
//! table, so a workflow id is never used twice.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::StoreError;

/// One event to place: which claim, at what event time, with which window.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub definition_id: &'a str,
    pub dedupe_key: &'a str,
    /// Event time, ms since the epoch (must be within 1970..=9999).
    pub event_time_ms: i64,
    pub window: Duration,
}

/// The generation an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation: u32,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// This call opened the generation.
    pub created: bool,
    /// Status of the generation's run as recorded by the worker (`running`, `completed`,
    /// `failed`, ...), `None` while no run has begun.
    pub run_status: Option<tf_definitions::RunStatus>,
}

impl Generation {
    /// Whether a run already exists for the generation and must not be started again. A failed
    /// run may be: a redelivered event or a new event of the same window retries it. A
    /// cancelled one stays cancelled.
    pub fn has_live_run(&self) -> bool {
        self.run_status.is_some_and(|s| !s.restarts_on_event())
    }
}

/// Resolves the generation of every request, in order, in one statement.
pub async fn resolve_generations(pool: &PgPool, requests: &[ClaimRequest<'_>]) -> Result<Vec<Generation>, StoreError> {
    let mut conn = pool.acquire().await?;
    resolve_generations_in(&mut conn, requests).await
}

/// [`resolve_generations`] on a connection kept between calls, for a caller that resolves
/// batch after batch (the router's claim batcher): taking a connection from the pool for each
/// call costs a ping round trip (the pool tests a connection before lending it) and the pool's
/// bookkeeping, on both sides. A connection that failed is dropped; the next call takes another.
///
/// A connection that sat idle, or was held for long, goes back to the pool before the next
/// call: proxies and firewalls close idle connections (PgBouncer, cloud load balancers), and
/// the pool tests a connection before lending it and retires it at its maximum lifetime, so a
/// quiet router's next batch does not pay a failure for a connection killed meanwhile.
pub struct HeldConnection {
    pool: PgPool,
    held: Option<Held>,
    limits: HoldLimits,
}

struct Held {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    since: Instant,
    last_used: Instant,
}

/// How long a [`HeldConnection`] keeps its connection.
#[derive(Debug, Clone, Copy)]
pub struct HoldLimits {
    /// Idle longer than this, it goes back to the pool.
    pub idle: Duration,
    /// Held longer than this, it goes back to the pool (which then applies its lifetime).
    pub total: Duration,
}

impl Default for HoldLimits {
    /// Far below the idle timeouts of common proxies and load balancers (minutes); a busy
    /// router pays one pool round trip every five minutes for it.
    fn default() -> HoldLimits {
        HoldLimits { idle: Duration::from_secs(30), total: Duration::from_secs(300) }
    }
}

impl HeldConnection {
    pub fn new(pool: PgPool) -> HeldConnection {
        HeldConnection::with_limits(pool, HoldLimits::default())
    }

    pub fn with_limits(pool: PgPool, limits: HoldLimits) -> HeldConnection {
        HeldConnection { pool, held: None, limits }
    }

    pub async fn resolve_generations(&mut self, requests: &[ClaimRequest<'_>]) -> Result<Vec<Generation>, StoreError> {
        let now = Instant::now();
        if self
            .held
            .as_ref()
            .is_some_and(|h| now.duration_since(h.last_used) > self.limits.idle || now.duration_since(h.since) > self.limits.total)
        {
            self.held = None;
        }
        let held = match &mut self.held {
            Some(held) => held,
            slot => slot.insert(Held { conn: self.pool.acquire().await?, since: now, last_used: now }),
        };
        let result = resolve_generations_in(&mut held.conn, requests).await;
        held.last_used = Instant::now();
        if result.as_ref().is_err_and(StoreError::is_transient) {
            self.held = None;
        }
        result
    }
}

/// [`resolve_generations`] on a connection (or inside a transaction).
pub async fn resolve_generations_in(conn: &mut sqlx::PgConnection, requests: &[ClaimRequest<'_>]) -> Result<Vec<Generation>, StoreError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let defs: Vec<&str> = requests.iter().map(|r| r.definition_id).collect();
    let keys: Vec<&str> = requests.iter().map(|r| r.dedupe_key).collect();
    let times: Vec<i64> = requests.iter().map(|r| r.event_time_ms).collect();
    let windows: Vec<f64> = requests.iter().map(|r| r.window.as_secs_f64()).collect();
    let rows: Vec<(i32, i32, i64, i64, bool, Option<tf_definitions::RunStatus>)> = sqlx::query_as(
        "SELECT ord, generation,
                (extract(epoch FROM window_start) * 1000)::bigint,
                (extract(epoch FROM window_end) * 1000)::bigint,
                created, run_status
         FROM tf_resolve_generations($1, $2,
                ARRAY(SELECT to_timestamp(t / 1000.0) FROM unnest($3::bigint[]) WITH ORDINALITY AS u(t, i) ORDER BY i),
                $4)
         ORDER BY ord",
    )
    .bind(&defs)
    .bind(&keys)
    .bind(&times)
    .bind(&windows)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(_, generation, window_start_ms, window_end_ms, created, run_status)| Generation {
            generation: generation as u32,
            window_start_ms,
            window_end_ms,
            created,
            run_status,
        })
        .collect())
}

/// Deletes generations whose window ended more than `retention` ago and which were opened more
/// than `retention` ago; returns how many. The second condition is what keeps an old-dated
/// event's window: its window ended long ago in event time, but a repeat of the event routed
/// minutes later must still find it. So a generation lives at least `created_at + retention`,
/// and the router refuses events older than the replay horizon, whose generation may be gone.
pub async fn expire_generations(pool: &PgPool, retention: Duration) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM dedupe_generations
         WHERE window_end < now() - make_interval(secs => $1) AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
