//! Flow control's state: who holds and who waits for each limit, and the decisions made once
//! per run. PostgreSQL is the truth (docs/flow-control.md, "The mechanism"): a decision for one
//! limit and key takes that key's `flow_keys` row `FOR UPDATE`, so routers and workers on any
//! number of machines decide one at a time per key and never grant N + 1. Waiting costs nothing
//! here: a waiter is a row, woken by a signal its releaser sends ([`Released::wake`]).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::PgConnection;
use tf_definitions::RunId;
use tf_definitions::flow::{
    Admission, BatchAt, DebounceAt, RateLimitAt, SingletonAt, SingletonMode, SlotRequest, Spacing, WHOLE_DEFINITION,
};

use crate::{PgPool, StoreError};

/// What a run (or a task) does next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every limit admits it: execute.
    Go,
    /// A limit holds it back; look again when woken, or after `retry_in_ms` (a throttled start
    /// knows its time; a concurrency waiter is woken by a signal).
    Wait { reason: String, retry_in_ms: Option<u64> },
    /// A rate limit, a batch (the event went into another run), a debounce (a newer event
    /// came) or a singleton turned it away; the run is recorded `skipped` with the reason.
    Skip { reason: String },
}

/// A limit's row name: the kind and whose limit it is, so one definition's concurrency and a
/// budget of the same name never share a key.
fn limit_name(kind: &str, owner: &str) -> String {
    format!("{kind}:{owner}")
}

fn with_key(key: &str) -> String {
    if key == WHOLE_DEFINITION { String::new() } else { format!(" key {key}") }
}

/// A period as a definition writes it (`1m`, `1500ms`).
fn period_text(ms: u64) -> String {
    tf_definitions::duration::format(std::time::Duration::from_millis(ms))
}

/// Decides whether a run may execute, in the order of docs/flow-control.md: its rate limit
/// (decided once per run, in event time), its batch or debounce, its singleton, a concurrency
/// slot, then a throttled start. `event` is the run's event, which a batch gathers. Called when
/// the run begins and again each time it is woken; every step is idempotent by run id, so a
/// retried activity or a second look gets the same slot, decision and start time. The run's
/// row says why it waits or was skipped.
pub async fn admit(pool: &PgPool, run_id: &RunId, definition_id: &str, a: &Admission, event: &Json) -> Result<Admitted, StoreError> {
    if let Some(r) = &a.rate_limit
        && !rate_limit(pool, run_id, definition_id, r).await?
    {
        return skip(pool, run_id, format!("rate_limited {}/{}{}", r.limit, period_text(r.period_ms), with_key(&r.key))).await;
    }
    if let Some(b) = &a.batch {
        match batch(pool, run_id, definition_id, b, event).await? {
            Batching::Due => {}
            Batching::Open { in_ms, size } => {
                let reason = format!("batch {size}/{}: runs in {in_ms} ms unless it fills first{}", b.max_size, with_key(&b.key));
                return wait(pool, run_id, reason, Some(in_ms)).await;
            }
            Batching::Joined { owner, full } => {
                let skipped = skip(pool, run_id, format!("batched into {owner}{}", with_key(&b.key))).await?;
                return Ok(Admitted { wake: if full { vec![owner] } else { Vec::new() }, ..skipped });
            }
        }
    }
    if let Some(d) = &a.debounce {
        match debounce(pool, run_id, definition_id, d).await? {
            Burst::Due => {}
            Burst::Quiet { in_ms } => {
                let reason =
                    format!("debounce {}: runs in {in_ms} ms unless a newer event comes{}", period_text(d.period_ms), with_key(&d.key));
                return wait(pool, run_id, reason, Some(in_ms)).await;
            }
            Burst::Superseded { by } => return skip(pool, run_id, format!("debounced: {by} is newer{}", with_key(&d.key))).await,
        }
    }
    if let Some(s) = &a.singleton {
        match singleton(pool, run_id, definition_id, s).await? {
            Single::Active => {}
            Single::Skip { active } => return skip(pool, run_id, format!("singleton: {active} is active{}", with_key(&s.key))).await,
            Single::Replacing { older } => {
                let waiting = wait(pool, run_id, format!("singleton: replacing {}{}", older.join(", "), with_key(&s.key)), None).await?;
                return Ok(Admitted { cancel: older, ..waiting });
            }
        }
    }
    if let Some(c) = &a.concurrency {
        let take = Take {
            limit: limit_name("concurrency", definition_id),
            request: c,
            holder: run_id.as_str(),
            run_id,
            wake: run_id.as_str(),
            priority: a.priority,
        };
        if let Slot::Waiting { held, ahead } = take_slot(pool, &take).await? {
            return wait(pool, run_id, format!("concurrency {held}/{}{}, {ahead} ahead", c.limit, with_key(&c.key)), None).await;
        }
    }
    if let Some(t) = &a.throttle {
        let wait_ms = schedule_start(pool, &limit_name("throttle", definition_id), t, run_id).await?;
        if wait_ms > 0 {
            let reason = format!("throttle {}/{}{}, starts in {wait_ms} ms", t.limit, period_text(t.period_ms), with_key(&t.key));
            return wait(pool, run_id, reason, Some(wait_ms)).await;
        }
    }
    set_admitted(pool, run_id).await?;
    Ok(Verdict::Go.into())
}

/// What [`admit`] decided, and the runs the caller must cancel for it (a `singleton` with
/// `mode: cancel` replacing older runs of its key; cancelling is Temporal's, not the store's).
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub verdict: Verdict,
    pub cancel: Vec<String>,
    /// Workflows to signal: the owner of a batch this run's event filled.
    pub wake: Vec<String>,
}

impl From<Verdict> for Admitted {
    fn from(verdict: Verdict) -> Admitted {
        Admitted { verdict, cancel: Vec::new(), wake: Vec::new() }
    }
}

/// A batch closes at this size of its events' JSON even before `max_size`: its run carries them
/// through planning, whose answer Temporal keeps in the run's history.
pub const MAX_BATCH_BYTES: i64 = 1 << 20;

enum Batching {
    /// This run owns its batch and the batch is closed (full, or its wait passed): it executes.
    Due,
    /// This run owns the open batch (`size` events so far); it closes in `in_ms` unless it
    /// fills first.
    Open { in_ms: u64, size: i32 },
    /// This run's event went into `owner`'s batch; `full`: it was the one that filled it.
    Joined { owner: String, full: bool },
}

/// Batch: the first run of a key opens a batch and owns it; the runs after it add their event
/// to it and end skipped, until it holds `max_size` events (or [`MAX_BATCH_BYTES`]) or
/// `max_wait` passed since it opened. Then the owner executes with the batch's events (read by
/// planning, [`batch_events`]) and the key's next run opens a new batch. Membership is a row per
/// run, so a run that looks again gets the same answer and its event is added once.
async fn batch(pool: &PgPool, run_id: &RunId, definition_id: &str, b: &BatchAt, event: &Json) -> Result<Batching, StoreError> {
    let limit = limit_name("batch", definition_id);
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &limit, &b.key, b.max_size).await?;
    let member_of: Option<String> =
        sqlx::query_scalar("SELECT owner_run FROM flow_batch_members WHERE run_id = $1").bind(run_id).fetch_optional(&mut *tx).await?;
    if let Some(owner) = member_of.filter(|o| o != run_id.as_str()) {
        return Ok(Batching::Joined { owner, full: false });
    }
    let now_ms = clock_ms(&mut tx).await?;
    let owned: Option<(bool, i32, i64, f64)> = sqlx::query_as(
        "SELECT closed_at IS NOT NULL, size, bytes, extract(epoch FROM opened_at)::float8 * 1000 FROM flow_batches WHERE owner_run = $1",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let close = "UPDATE flow_batches SET closed_at = clock_timestamp() WHERE owner_run = $1 AND closed_at IS NULL";
    let outcome = match owned {
        Some((true, _, _, _)) => Batching::Due,
        Some((false, size, bytes, opened_ms)) => {
            let due_ms = opened_ms + b.max_wait_ms as f64;
            if size >= b.max_size as i32 || bytes >= MAX_BATCH_BYTES || now_ms >= due_ms {
                sqlx::query(close).bind(run_id).execute(&mut *tx).await?;
                Batching::Due
            } else {
                Batching::Open { in_ms: (due_ms - now_ms).ceil().max(1.0) as u64, size }
            }
        }
        None => {
            let event_bytes = i64::try_from(event.to_string().len()).unwrap_or(i64::MAX);
            let joined: Option<(String, i32, i64)> = sqlx::query_as(
                "UPDATE flow_batches SET events = events || jsonb_build_array($3::jsonb), size = size + 1, bytes = bytes + $4
                 WHERE flow_limit = $1 AND key = $2 AND closed_at IS NULL
                 RETURNING owner_run, size, bytes",
            )
            .bind(&limit)
            .bind(&b.key)
            .bind(event)
            .bind(event_bytes)
            .fetch_optional(&mut *tx)
            .await?;
            match joined {
                Some((owner, size, bytes)) => {
                    let full = size >= b.max_size as i32 || bytes >= MAX_BATCH_BYTES;
                    if full {
                        sqlx::query(close).bind(&owner).execute(&mut *tx).await?;
                    }
                    sqlx::query("INSERT INTO flow_batch_members (run_id, owner_run) VALUES ($1, $2)")
                        .bind(run_id)
                        .bind(&owner)
                        .execute(&mut *tx)
                        .await?;
                    Batching::Joined { owner, full }
                }
                None => {
                    let closed = b.max_size <= 1 || event_bytes >= MAX_BATCH_BYTES;
                    sqlx::query(
                        "INSERT INTO flow_batches (owner_run, flow_limit, key, opened_at, closed_at, size, bytes, events)
                         VALUES ($1, $2, $3, clock_timestamp(), CASE WHEN $4 THEN clock_timestamp() END, 1, $5, jsonb_build_array($6::jsonb))",
                    )
                    .bind(run_id)
                    .bind(&limit)
                    .bind(&b.key)
                    .bind(closed)
                    .bind(event_bytes)
                    .bind(event)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("INSERT INTO flow_batch_members (run_id, owner_run) VALUES ($1, $1)")
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await?;
                    if closed { Batching::Due } else { Batching::Open { in_ms: b.max_wait_ms.max(1), size: 1 } }
                }
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The events of the batch a run owns, oldest first; `None` when it owns none.
pub async fn batch_events(pool: &PgPool, run_id: &RunId) -> Result<Option<Json>, StoreError> {
    Ok(sqlx::query_scalar("SELECT events FROM flow_batches WHERE owner_run = $1").bind(run_id).fetch_optional(pool).await?)
}

enum Burst {
    /// This run is its burst's latest and the burst is due: it executes.
    Due,
    /// This run is the latest so far; the burst is due in `in_ms`.
    Quiet { in_ms: u64 },
    /// A newer run of the burst took over; this one is skipped.
    Superseded { by: String },
}

/// Debounce: the runs of a key that begin less than `period` apart form a burst, and only the
/// run of its latest event (event time) executes, once `period` passed without a newer one (or
/// `max_wait` after the burst began). Periods are measured on PostgreSQL's clock when runs
/// begin, not in event time: a quiet period is about arrivals. Each run's first look is told apart from a later one by its
/// row under the limit, so a retried look neither restarts the burst nor loses its turn.
async fn debounce(pool: &PgPool, run_id: &RunId, definition_id: &str, d: &DebounceAt) -> Result<Burst, StoreError> {
    let limit = limit_name("debounce", definition_id);
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &limit, &d.key, 0).await?;
    let row = SlotRow { limit: &limit, key: &d.key, holder: run_id.as_str() };
    let first_look = row.enter(&mut tx, run_id.as_str(), run_id.as_str(), 0).await?;
    if row.granted(&mut tx).await? {
        return Ok(Burst::Due);
    }
    let now_ms = clock_ms(&mut tx).await?;
    let open: Option<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT latest_run, latest_event_ms, extract(epoch FROM started_at)::float8 * 1000, extract(epoch FROM last_event_at)::float8 * 1000
         FROM flow_bursts WHERE flow_limit = $1 AND key = $2",
    )
    .bind(&limit)
    .bind(&d.key)
    .fetch_optional(&mut *tx)
    .await?;
    let (latest, started_ms, last_ms) = match (open, first_look) {
        (None, true) => {
            sqlx::query(
                "INSERT INTO flow_bursts (flow_limit, key, latest_run, latest_event_ms, started_at, last_event_at)
                 VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), to_timestamp($5::float8 / 1000))",
            )
            .bind(&limit)
            .bind(&d.key)
            .bind(run_id)
            .bind(d.event_time_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            (run_id.to_string(), now_ms, now_ms)
        }
        // A new run of an open burst: every arrival restarts the quiet period; the run becomes
        // the latest unless an event later in event time is already in (ties: the newcomer).
        (Some((latest, latest_event_ms, started_ms, _)), true) => {
            let newer = d.event_time_ms >= latest_event_ms;
            sqlx::query(
                "UPDATE flow_bursts SET last_event_at = to_timestamp($5::float8 / 1000),
                        latest_run = CASE WHEN $6 THEN $3 ELSE latest_run END,
                        latest_event_ms = CASE WHEN $6 THEN $4 ELSE latest_event_ms END
                 WHERE flow_limit = $1 AND key = $2",
            )
            .bind(&limit)
            .bind(&d.key)
            .bind(run_id)
            .bind(d.event_time_ms)
            .bind(now_ms)
            .bind(newer)
            .execute(&mut *tx)
            .await?;
            (if newer { run_id.to_string() } else { latest }, started_ms, now_ms)
        }
        (Some((latest, _, started_ms, last_ms)), false) => (latest, started_ms, last_ms),
        // Looked before, and the burst is gone: a newer run of it executed.
        (None, false) => (String::from("a newer run of its burst"), now_ms, now_ms),
    };
    let burst = if latest != run_id.as_str() {
        row.leave(&mut tx).await?;
        Burst::Superseded { by: latest }
    } else {
        let quiet_at = last_ms + d.period_ms as f64;
        let due_ms = d.max_wait_ms.map_or(quiet_at, |w| quiet_at.min(started_ms + w as f64));
        if now_ms >= due_ms {
            row.grant(&mut tx).await?;
            sqlx::query("DELETE FROM flow_bursts WHERE flow_limit = $1 AND key = $2").bind(&limit).bind(&d.key).execute(&mut *tx).await?;
            Burst::Due
        } else {
            Burst::Quiet { in_ms: (due_ms - now_ms).ceil().max(1.0) as u64 }
        }
    };
    tx.commit().await?;
    Ok(burst)
}

enum Single {
    /// This run is the key's one active run.
    Active,
    /// Another run is active: this one is skipped (`mode: skip`).
    Skip { active: String },
    /// Older runs hold or wait for the key: they are to be cancelled and this run waits for
    /// them to end (`mode: cancel`).
    Replacing { older: Vec<String> },
}

/// One active run per key. The slot is a concurrency slot of capacity 1 under its own limit
/// name, so the same release and wake-up free it when the active run ends.
async fn singleton(pool: &PgPool, run_id: &RunId, definition_id: &str, s: &SingletonAt) -> Result<Single, StoreError> {
    let limit = limit_name("singleton", definition_id);
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &limit, &s.key, 1).await?;
    let row = SlotRow { limit: &limit, key: &s.key, holder: run_id.as_str() };
    row.enter(&mut tx, run_id.as_str(), run_id.as_str(), 0).await?;
    // Live rows other than this run's that came before it, the active one first.
    let older: Vec<String> = sqlx::query_scalar(&format!(
        "WITH me AS (SELECT arrived_at, granted_at FROM flow_slots WHERE flow_limit = $1 AND key = $2 AND holder = $3)
         SELECT s.run_id FROM flow_slots s {LIVE}, me
         WHERE s.flow_limit = $1 AND s.key = $2 AND s.holder <> $3 AND me.granted_at IS NULL
           AND (s.granted_at IS NOT NULL OR (s.arrived_at, s.holder) < (me.arrived_at, $3))
         ORDER BY s.granted_at IS NULL, s.arrived_at"
    ))
    .bind(&limit)
    .bind(&s.key)
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    let single = if row.granted(&mut tx).await? {
        Single::Active
    } else if older.is_empty() {
        row.grant(&mut tx).await?;
        Single::Active
    } else if s.mode == SingletonMode::Skip {
        row.leave(&mut tx).await?;
        Single::Skip { active: older[0].clone() }
    } else {
        Single::Replacing { older }
    };
    tx.commit().await?;
    Ok(single)
}

/// A run that waits: its row says why, and it looks again when woken or after `retry_in_ms`.
async fn wait(pool: &PgPool, run_id: &RunId, reason: String, retry_in_ms: Option<u64>) -> Result<Admitted, StoreError> {
    sqlx::query(
        "UPDATE activity_runs SET status = 'waiting', status_reason = $2
         WHERE run_id = $1 AND status IN ('running', 'waiting') AND status_reason IS DISTINCT FROM $2",
    )
    .bind(run_id)
    .bind(&reason)
    .execute(pool)
    .await?;
    Ok(Verdict::Wait { reason, retry_in_ms }.into())
}

/// Records that flow control let a live run execute, and when.
async fn set_admitted(pool: &PgPool, run_id: &RunId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE activity_runs SET status = 'running', status_reason = NULL, admitted_at = clock_timestamp()
         WHERE run_id = $1 AND status IN ('running', 'waiting')",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A run a control turned away: ended, `skipped`, with the reason.
async fn skip(pool: &PgPool, run_id: &RunId, reason: String) -> Result<Admitted, StoreError> {
    sqlx::query(
        "UPDATE activity_runs SET status = 'skipped', status_reason = $2, finished_at = now()
         WHERE run_id = $1 AND status IN ('running', 'waiting')",
    )
    .bind(run_id)
    .bind(&reason)
    .execute(pool)
    .await?;
    Ok(Verdict::Skip { reason }.into())
}

/// Takes a slot of a shared budget for a task while it executes (`budget:` on its template).
/// `wake` is the workflow that waits: the run for a task executed inside it, the task's own
/// workflow for a child.
pub async fn take_budget(
    pool: &PgPool,
    budget: &str,
    capacity: u32,
    task_id: &str,
    run_id: &RunId,
    wake: &str,
) -> Result<Verdict, StoreError> {
    let request = SlotRequest { key: WHOLE_DEFINITION.to_string(), limit: capacity };
    let take = Take { limit: limit_name("budget", budget), request: &request, holder: task_id, run_id, wake, priority: 0 };
    Ok(match take_slot(pool, &take).await? {
        Slot::Held => Verdict::Go,
        Slot::Waiting { held, ahead } => {
            Verdict::Wait { reason: format!("budget {budget} {held}/{capacity}, {ahead} ahead"), retry_in_ms: None }
        }
    })
}

/// Locks (creating it when new) the row that serializes one limit's key, recording the
/// capacity the caller's definition gives it (the last admitted run's word wins).
async fn lock_key(tx: &mut PgConnection, limit: &str, key: &str, capacity: u32) -> Result<Option<f64>, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO flow_keys (flow_limit, key, capacity) VALUES ($1, $2, $3)
         ON CONFLICT (flow_limit, key) DO UPDATE SET capacity = EXCLUDED.capacity
         RETURNING extract(epoch FROM next_start)::float8 * 1000",
    )
    .bind(limit)
    .bind(key)
    .bind(capacity as i32)
    .fetch_one(&mut *tx)
    .await?)
}

/// Whether a rate limit admits the run: at most `limit` admitted runs per key and event-time
/// window. Decided once; asking again returns the first answer.
async fn rate_limit(pool: &PgPool, run_id: &RunId, definition_id: &str, r: &RateLimitAt) -> Result<bool, StoreError> {
    let limit = limit_name("rate_limit", definition_id);
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &limit, &r.key, r.limit).await?;
    let decided: Option<bool> =
        sqlx::query_scalar("SELECT admitted FROM flow_decisions WHERE run_id = $1").bind(run_id).fetch_optional(&mut *tx).await?;
    if let Some(admitted) = decided {
        return Ok(admitted);
    }
    let admitted_so_far: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM flow_decisions
         WHERE flow_limit = $1 AND key = $2 AND window_start = to_timestamp($3::float8 / 1000) AND admitted",
    )
    .bind(&limit)
    .bind(&r.key)
    .bind(r.window_start_ms as f64)
    .fetch_one(&mut *tx)
    .await?;
    let admitted = admitted_so_far < i64::from(r.limit);
    sqlx::query(
        "INSERT INTO flow_decisions (run_id, flow_limit, key, window_start, admitted)
         VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000), $5)",
    )
    .bind(run_id)
    .bind(&limit)
    .bind(&r.key)
    .bind(r.window_start_ms as f64)
    .bind(admitted)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(admitted)
}

/// One holder's row of `flow_slots`: the statements every control makes about it.
struct SlotRow<'a> {
    limit: &'a str,
    key: &'a str,
    holder: &'a str,
}

impl SlotRow<'_> {
    /// Queues the holder, unless it is in already; whether it was new (a run's first look).
    async fn enter(&self, tx: &mut PgConnection, run_id: &str, wake: &str, priority: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO flow_slots (flow_limit, key, holder, run_id, wake, priority) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (flow_limit, key, holder) DO NOTHING",
        )
        .bind(self.limit)
        .bind(self.key)
        .bind(self.holder)
        .bind(run_id)
        .bind(wake)
        .bind(priority)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1)
    }

    /// Whether the holder was granted (false when it has no row).
    async fn granted(&self, tx: &mut PgConnection) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce((SELECT granted_at IS NOT NULL FROM flow_slots WHERE flow_limit = $1 AND key = $2 AND holder = $3), false)",
        )
        .bind(self.limit)
        .bind(self.key)
        .bind(self.holder)
        .fetch_one(&mut *tx)
        .await?)
    }

    async fn grant(&self, tx: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("UPDATE flow_slots SET granted_at = clock_timestamp() WHERE flow_limit = $1 AND key = $2 AND holder = $3")
            .bind(self.limit)
            .bind(self.key)
            .bind(self.holder)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn leave(&self, tx: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM flow_slots WHERE flow_limit = $1 AND key = $2 AND holder = $3")
            .bind(self.limit)
            .bind(self.key)
            .bind(self.holder)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// PostgreSQL's clock now, ms since the epoch: every control's periods are measured on it, so
/// routers and workers on machines with skewed clocks agree.
async fn clock_ms(tx: &mut PgConnection) -> Result<f64, StoreError> {
    Ok(sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8 * 1000").fetch_one(&mut *tx).await?)
}

struct Take<'a> {
    limit: String,
    request: &'a SlotRequest,
    holder: &'a str,
    run_id: &'a RunId,
    wake: &'a str,
    priority: i64,
}

#[derive(Debug, PartialEq)]
enum Slot {
    Held,
    /// `held` slots are taken and `ahead` live waiters come first.
    Waiting {
        held: i64,
        ahead: i64,
    },
}

/// Rows that still count: their run is live. A run that ended without releasing (its workflow
/// terminated, and the reconciler settled it) no longer holds or waits.
const LIVE: &str = "JOIN activity_runs r ON r.run_id = s.run_id AND r.status IN ('running', 'waiting')";

/// Takes a slot, or queues for one. A waiter is granted only when every live waiter ahead of
/// it (higher priority, then earlier arrival) fits too, so newcomers never overtake the queue.
async fn take_slot(pool: &PgPool, t: &Take<'_>) -> Result<Slot, StoreError> {
    let mut tx = pool.begin().await?;
    lock_key(&mut tx, &t.limit, &t.request.key, t.request.limit).await?;
    let row = SlotRow { limit: &t.limit, key: &t.request.key, holder: t.holder };
    row.enter(&mut tx, t.run_id.as_str(), t.wake, t.priority).await?;
    let (held, ahead, mine): (i64, i64, bool) = sqlx::query_as(&format!(
        "WITH me AS (SELECT priority, arrived_at, granted_at FROM flow_slots WHERE flow_limit = $1 AND key = $2 AND holder = $3)
         SELECT
           (SELECT count(*) FROM flow_slots s {LIVE} WHERE s.flow_limit = $1 AND s.key = $2 AND s.granted_at IS NOT NULL AND s.holder <> $3),
           (SELECT count(*) FROM flow_slots s {LIVE}, me WHERE s.flow_limit = $1 AND s.key = $2 AND s.granted_at IS NULL AND s.holder <> $3
              AND (s.priority > me.priority OR (s.priority = me.priority AND (s.arrived_at, s.holder) < (me.arrived_at, $3)))),
           (SELECT granted_at IS NOT NULL FROM me)"
    ))
    .bind(&t.limit)
    .bind(&t.request.key)
    .bind(t.holder)
    .fetch_one(&mut *tx)
    .await?;
    let slot = if mine {
        Slot::Held
    } else if held + ahead < i64::from(t.request.limit) {
        row.grant(&mut tx).await?;
        Slot::Held
    } else {
        Slot::Waiting { held, ahead }
    };
    tx.commit().await?;
    Ok(slot)
}

/// Gives a throttled run its start time and returns how many ms from now it is (0: now).
/// Starts are spaced `period / limit` apart per key, `burst` of them allowed at once (the
/// generic cell rate algorithm, scheduling instead of refusing): first come, first scheduled,
/// and a run asking again keeps its time.
async fn schedule_start(pool: &PgPool, limit: &str, t: &Spacing, run_id: &RunId) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let next_start = lock_key(&mut tx, limit, &t.key, t.limit).await?;
    let (now_ms, scheduled): (f64, Option<f64>) = sqlx::query_as(
        "SELECT extract(epoch FROM clock_timestamp())::float8 * 1000,
                (SELECT extract(epoch FROM granted_at)::float8 * 1000 FROM flow_slots WHERE flow_limit = $1 AND key = $2 AND holder = $3)",
    )
    .bind(limit)
    .bind(&t.key)
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    let start = match scheduled {
        Some(start) => start,
        None => {
            let interval = t.interval_ms();
            let tat = next_start.unwrap_or(now_ms);
            let start = now_ms.max(tat - f64::from(t.burst) * interval);
            sqlx::query("UPDATE flow_keys SET next_start = to_timestamp($3::float8 / 1000) WHERE flow_limit = $1 AND key = $2")
                .bind(limit)
                .bind(&t.key)
                .bind(tat.max(now_ms) + interval)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO flow_slots (flow_limit, key, holder, run_id, wake, granted_at)
                 VALUES ($1, $2, $3, $3, $3, to_timestamp($4::float8 / 1000))",
            )
            .bind(limit)
            .bind(&t.key)
            .bind(run_id)
            .bind(start)
            .execute(&mut *tx)
            .await?;
            start
        }
    };
    tx.commit().await?;
    Ok((start - now_ms).max(0.0).ceil() as u64)
}

/// What releasing freed: the workflows to signal, one per slot that became free (the next
/// waiters in order). A lost signal costs only time: every waiter also looks again on a timer.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub wake: Vec<String>,
}

/// Frees what a run and its tasks hold or wait for, in the transaction that records its end.
pub async fn release_run(tx: &mut PgConnection, run_id: &RunId) -> Result<Released, StoreError> {
    let freed: Vec<(String, String)> =
        sqlx::query_as("DELETE FROM flow_slots WHERE run_id = $1 RETURNING flow_limit, key").bind(run_id).fetch_all(&mut *tx).await?;
    next_waiters(tx, freed).await
}

/// Deletes batches closed longer than `retention` ago, with their members. They outlive their
/// run so that `runs retry` of a batched run plans with the same events.
pub async fn expire_batches(pool: &PgPool, retention: std::time::Duration) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let owners: Vec<String> =
        sqlx::query_scalar("DELETE FROM flow_batches WHERE closed_at < now() - make_interval(secs => $1) RETURNING owner_run")
            .bind(retention.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM flow_batch_members WHERE owner_run = ANY($1)").bind(&owners).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(owners.len() as u64)
}

/// Frees what one task holds (its budget), once its outcome is recorded.
pub async fn release_task(pool: &PgPool, task_id: &str) -> Result<Released, StoreError> {
    let mut tx = pool.begin().await?;
    let freed: Vec<(String, String)> =
        sqlx::query_as("DELETE FROM flow_slots WHERE holder = $1 RETURNING flow_limit, key").bind(task_id).fetch_all(&mut *tx).await?;
    let released = next_waiters(&mut tx, freed).await?;
    tx.commit().await?;
    Ok(released)
}

async fn next_waiters(tx: &mut PgConnection, mut freed: Vec<(String, String)>) -> Result<Released, StoreError> {
    freed.sort();
    freed.dedup();
    let mut wake = Vec::new();
    // Throttled starts and debounced bursts wait on their own timers, not for a slot.
    for (limit, key) in freed.into_iter().filter(|(limit, _)| !limit.starts_with("throttle:") && !limit.starts_with("debounce:")) {
        let next: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT s.wake FROM flow_slots s {LIVE}
             WHERE s.flow_limit = $1 AND s.key = $2 AND s.granted_at IS NULL
             ORDER BY s.priority DESC, s.arrived_at, s.holder
             LIMIT greatest(
               coalesce((SELECT capacity FROM flow_keys WHERE flow_limit = $1 AND key = $2), 0)
               - (SELECT count(*) FROM flow_slots s {LIVE} WHERE s.flow_limit = $1 AND s.key = $2 AND s.granted_at IS NOT NULL),
               0)"
        ))
        .bind(&limit)
        .bind(&key)
        .fetch_all(&mut *tx)
        .await?;
        wake.extend(next);
    }
    wake.sort();
    wake.dedup();
    Ok(Released { wake })
}

/// One limit's key as the API lists it: what holds it and what waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitView {
    /// `concurrency:<definition>`, `throttle:<definition>` or `budget:<name>`.
    pub limit: String,
    pub key: String,
    pub capacity: i32,
    pub held: i64,
    pub waiting: i64,
    /// The run ids waiting, in the order they will be granted (at most 20).
    pub next: Vec<String>,
}

/// What waits for flow control now (`GET /flow/limits`, `tf runs limits`): at most 500 limits
/// and keys, those with the most waiters first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    pub limits: Vec<LimitView>,
}

/// The limits with live holders or waiters, busiest first.
pub async fn limits(pool: &PgPool) -> Result<Limits, StoreError> {
    let rows: Vec<(String, String, i32, i64, i64, Vec<String>)> = sqlx::query_as(&format!(
        "SELECT k.flow_limit, k.key, k.capacity,
                count(*) FILTER (WHERE s.granted_at IS NOT NULL),
                count(*) FILTER (WHERE s.granted_at IS NULL),
                coalesce((array_agg(s.run_id ORDER BY s.priority DESC, s.arrived_at, s.holder)
                          FILTER (WHERE s.granted_at IS NULL))[1:20], '{{}}')
         FROM flow_keys k JOIN flow_slots s ON s.flow_limit = k.flow_limit AND s.key = k.key {LIVE}
         GROUP BY k.flow_limit, k.key, k.capacity
         ORDER BY count(*) FILTER (WHERE s.granted_at IS NULL) DESC, k.flow_limit, k.key
         LIMIT 500"
    ))
    .fetch_all(pool)
    .await?;
    Ok(Limits {
        limits: rows
            .into_iter()
            .map(|(limit, key, capacity, held, waiting, next)| LimitView { limit, key, capacity, held, waiting, next })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_as_written() {
        assert_eq!([1000, 60_000, 3_600_000, 86_400_000, 1500].map(period_text), ["1s", "1m", "1h", "1d", "1500ms"].map(String::from));
        assert_eq!(with_key(WHOLE_DEFINITION), "");
        assert_eq!(with_key("c-1"), " key c-1");
    }

    #[test]
    fn verdicts_travel_as_tagged_json() {
        let wait = Verdict::Wait { reason: "concurrency 2/2".into(), retry_in_ms: None };
        let json = serde_json::to_value(&wait).unwrap();
        assert_eq!(json["verdict"], "wait");
        assert_eq!(serde_json::from_value::<Verdict>(json).unwrap(), wait);
    }
}
