//! Runs (`activity_runs`): one per RunActivity execution of a claim generation, recorded by
//! the run's first activity and finished by its last. Every write is idempotent, because
//! Temporal retries activities.

use serde_json::Value as Json;
use sqlx::PgPool;
pub use tf_definitions::{RunId, RunSource, RunStatus, TriggerKind};

use crate::StoreError;

pub struct BeginRun<'a> {
    pub run_id: &'a RunId,
    pub execution_id: &'a str,
    pub definition_id: &'a str,
    pub definition_version: i32,
    pub dedupe_key: &'a str,
    /// The generation the starter resolved; `None` to resolve it here (scheduled runs).
    pub generation: Option<u32>,
    /// The event time that places the run in a generation, ms since the epoch.
    pub event_time_ms: i64,
    pub dedupe_window: std::time::Duration,
    pub fired_at_ms: i64,
    pub traceparent: Option<&'a str>,
    pub source: &'a RunSource,
    /// The workflow input, kept for `tf runs retry`.
    pub input: Option<&'a Json>,
    /// An operator's retry (`runs retry`): it may take over a cancelled run, which an event
    /// may not.
    pub operator_retry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This execution runs the generation, as attempt `attempt` (2 and up: a failed run retried).
    Claimed {
        generation: u32,
        attempt: u32,
        /// `(template, index)` of tasks that succeeded in earlier attempts: not run again.
        succeeded: Vec<(String, u32)>,
    },
    /// Another run owns the generation (or this run id already ran and did not fail).
    HeldBy { run_id: String },
    /// The run was cancelled and this execution is no operator's retry: it stays cancelled.
    StaysCancelled,
}

/// Records the run of its generation, in one transaction: the first execution of a run id
/// inserts it; a retried activity of the same execution finds itself; a new execution of a
/// failed run (or of a cancelled one, when an operator retries it) takes it over as the next
/// attempt; anything else is a duplicate.
pub async fn begin_run(pool: &PgPool, r: &BeginRun<'_>) -> Result<Claim, StoreError> {
    let mut tx = pool.begin().await?;
    let generation = match r.generation {
        Some(g) if g > 0 => g,
        _ => {
            let req = crate::claims::ClaimRequest {
                definition_id: r.definition_id,
                dedupe_key: r.dedupe_key,
                event_time_ms: r.event_time_ms,
                window: r.dedupe_window,
            };
            crate::claims::resolve_generations_in(&mut tx, std::slice::from_ref(&req)).await?.remove(0).generation
        }
    };
    // The generation's run under another id (a second execution of a schedule slot started
    // under a new workflow id) makes this one a duplicate.
    let other: Option<String> = sqlx::query_scalar(
        "SELECT run_id FROM activity_runs
         WHERE definition_id = $1 AND dedupe_key = $2 AND generation = $3 AND run_id <> $4
           AND status NOT IN ('deduplicated', 'failed', 'cancelled')
         LIMIT 1",
    )
    .bind(r.definition_id)
    .bind(r.dedupe_key)
    .bind(generation as i32)
    .bind(r.run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let s = r.source;
    let status = if other.is_some() { RunStatus::Deduplicated } else { RunStatus::Running };
    let inserted = sqlx::query(
        "INSERT INTO activity_runs (run_id, execution_id, definition_id, definition_version, dedupe_key, trigger_kind,
             source_topic, source_partition, source_offset, event_id, schedule_id, scheduled_for, fired_at,
             traceparent, status, finished_at, generation, attempt, input)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, to_timestamp($12::double precision / 1000),
             to_timestamp($13::double precision / 1000), $14, $15, CASE WHEN $15 = 'deduplicated' THEN now() END, $16, 1, $17)
         ON CONFLICT (run_id) DO NOTHING",
    )
    .bind(r.run_id)
    .bind(r.execution_id)
    .bind(r.definition_id)
    .bind(r.definition_version)
    .bind(r.dedupe_key)
    .bind(s.kind)
    .bind(&s.topic)
    .bind(s.partition)
    .bind(s.offset)
    .bind(&s.event_id)
    .bind(&s.schedule_id)
    .bind(s.scheduled_for_ms)
    .bind(r.fired_at_ms)
    .bind(r.traceparent)
    .bind(status)
    .bind(generation as i32)
    .bind(r.input)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let claim = if let Some(run_id) = other {
        Claim::HeldBy { run_id }
    } else if inserted {
        Claim::Claimed { generation, attempt: 1, succeeded: Vec::new() }
    } else {
        let (execution_id, status, attempt): (String, RunStatus, i32) =
            sqlx::query_as("SELECT execution_id, status, attempt FROM activity_runs WHERE run_id = $1 FOR UPDATE")
                .bind(r.run_id)
                .fetch_one(&mut *tx)
                .await?;
        if execution_id == r.execution_id {
            Claim::Claimed { generation, attempt: attempt as u32, succeeded: succeeded_tasks(&mut tx, r.run_id, attempt).await? }
        } else if status.restarts_on_event() || (status.retryable() && r.operator_retry) {
            sqlx::query(
                "UPDATE activity_runs SET execution_id = $2, status = 'running', finished_at = NULL, attempt = attempt + 1
                 WHERE run_id = $1",
            )
            .bind(r.run_id)
            .bind(r.execution_id)
            .execute(&mut *tx)
            .await?;
            let attempt = attempt + 1;
            Claim::Claimed { generation, attempt: attempt as u32, succeeded: succeeded_tasks(&mut tx, r.run_id, attempt).await? }
        } else if status == RunStatus::Cancelled {
            Claim::StaysCancelled
        } else {
            Claim::HeldBy { run_id: r.run_id.to_string() }
        }
    };
    tx.commit().await?;
    Ok(claim)
}

/// Tasks that succeeded in attempts before `attempt`.
async fn succeeded_tasks(tx: &mut sqlx::PgConnection, run_id: &RunId, attempt: i32) -> Result<Vec<(String, u32)>, StoreError> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT DISTINCT template, item_index FROM tasks WHERE run_id = $1 AND run_attempt < $2 AND status = 'succeeded'
         ORDER BY template, item_index",
    )
    .bind(run_id)
    .bind(attempt)
    .fetch_all(tx)
    .await?;
    Ok(rows.into_iter().map(|(t, i)| (t, i as u32)).collect())
}

/// Stores the run's context snapshot and how each source was obtained.
pub async fn set_context(pool: &PgPool, run_id: &RunId, context: &Json, sources: Option<&Json>) -> Result<(), StoreError> {
    sqlx::query("UPDATE activity_runs SET context = $2, context_sources = $3 WHERE run_id = $1")
        .bind(run_id)
        .bind(context)
        .bind(sources)
        .execute(pool)
        .await?;
    Ok(())
}

/// Returns the definition and the run's duration in seconds (from its trigger firing) when this
/// call finished it, `None` when it was already finished (a retried activity).
pub async fn finish_run(pool: &PgPool, run_id: &RunId, status: RunStatus) -> Result<Option<(String, f64)>, StoreError> {
    Ok(sqlx::query_as(
        "UPDATE activity_runs SET status = $2, finished_at = now() WHERE run_id = $1 AND status = 'running'
         RETURNING definition_id, greatest(extract(epoch FROM finished_at - fired_at), 0)::float8",
    )
    .bind(run_id)
    .bind(status)
    .fetch_optional(pool)
    .await?)
}

/// Runs recorded `running` that began more than `older_than` ago, oldest first: (run id, the
/// execution that runs it). The reconciler asks Temporal about each.
pub async fn running_since(pool: &PgPool, older_than: std::time::Duration, limit: i64) -> Result<Vec<(RunId, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT run_id, execution_id FROM activity_runs
         WHERE status = 'running' AND fired_at < now() - make_interval(secs => $1)
         ORDER BY fired_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Records the end of a run whose workflow ended outside the worker's hands, if the run is
/// still `running` under `execution_id` (a retry that took it over since is left alone).
/// Returns whether the run was settled. Its unfinished tasks are left as they are: a task's end
/// is recorded with its result, and no result was produced for them.
pub async fn settle(pool: &PgPool, run_id: &RunId, execution_id: &str, status: RunStatus) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE activity_runs SET status = $3, finished_at = now() WHERE run_id = $1 AND execution_id = $2 AND status = 'running'",
    )
    .bind(run_id)
    .bind(execution_id)
    .bind(status)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// A run as operators list it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RunRow {
    pub run_id: RunId,
    pub definition_id: String,
    pub definition_version: i32,
    pub dedupe_key: String,
    pub generation: i32,
    pub attempt: i32,
    pub trigger_kind: TriggerKind,
    pub source: String,
    pub status: RunStatus,
    pub tasks_spawned: i32,
    pub tasks_done: i64,
    pub results_published: i64,
    pub fired_at: String,
}

/// A run's status and the input it was started with (`tf runs retry`).
pub async fn run_input(pool: &PgPool, run_id: &str) -> Result<Option<(RunStatus, Option<Json>)>, StoreError> {
    Ok(sqlx::query_as("SELECT status, input FROM activity_runs WHERE run_id = $1").bind(run_id).fetch_optional(pool).await?)
}

/// The most recent runs, newest first.
pub async fn recent_runs(pool: &PgPool, limit: i64) -> Result<Vec<RunRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.run_id, r.definition_id, r.definition_version, r.dedupe_key, r.generation, r.attempt, r.trigger_kind,
                coalesce(r.source_topic || '[' || r.source_partition || ']@' || r.source_offset,
                         r.schedule_id || ' ' || to_char(r.scheduled_for AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '-') AS source,
                r.status, r.tasks_spawned,
                (SELECT count(*) FROM tasks t WHERE t.run_id = r.run_id AND t.finished_at IS NOT NULL) AS tasks_done,
                (SELECT count(*) FROM task_results x WHERE x.run_id = r.run_id AND x.published_at IS NOT NULL) AS results_published,
                to_char(r.fired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS fired_at
         FROM activity_runs r ORDER BY r.fired_at DESC, r.run_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Which runs to list; all conditions hold together.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub definition: Option<String>,
    pub status: Option<RunStatus>,
    pub dedupe_key: Option<String>,
    pub trigger_kind: Option<TriggerKind>,
    /// Fired at or after (RFC 3339).
    pub since: Option<String>,
    /// Fired before (RFC 3339).
    pub until: Option<String>,
}

/// Where a page of runs ends: the last run's fire time (microseconds) and id. Pages go newest
/// first, so the next page holds runs strictly before it.
pub type RunCursor = (i64, String);

/// One page of runs as JSON objects, newest first, with the cursor of the next page (`None`
/// on the last).
pub async fn list_runs(
    pool: &PgPool,
    f: &RunFilter,
    after: Option<&RunCursor>,
    limit: i64,
) -> Result<(Vec<Json>, Option<RunCursor>), StoreError> {
    let rows: Vec<(Json, i64, String)> = sqlx::query_as(
        "SELECT json_build_object(
                    'run_id', r.run_id, 'definition_id', r.definition_id, 'definition_version', r.definition_version,
                    'dedupe_key', r.dedupe_key, 'generation', r.generation, 'attempt', r.attempt, 'status', r.status,
                    'trigger_kind', r.trigger_kind, 'source_topic', r.source_topic, 'source_partition', r.source_partition,
                    'source_offset', r.source_offset, 'event_id', r.event_id, 'schedule_id', r.schedule_id,
                    'scheduled_for', r.scheduled_for, 'fired_at', r.fired_at, 'finished_at', r.finished_at,
                    'tasks_spawned', r.tasks_spawned),
                (extract(epoch FROM r.fired_at) * 1000000)::bigint, r.run_id
         FROM activity_runs r
         WHERE ($1::text IS NULL OR r.definition_id = $1) AND ($2::text IS NULL OR r.status = $2)
           AND ($3::text IS NULL OR r.dedupe_key = $3) AND ($4::text IS NULL OR r.trigger_kind = $4)
           AND ($5::timestamptz IS NULL OR r.fired_at >= $5::timestamptz) AND ($6::timestamptz IS NULL OR r.fired_at < $6::timestamptz)
           AND ($7::bigint IS NULL OR ((extract(epoch FROM r.fired_at) * 1000000)::bigint, r.run_id) < ($7, $8))
         ORDER BY r.fired_at DESC, r.run_id DESC LIMIT $9",
    )
    .bind(&f.definition)
    .bind(f.status)
    .bind(&f.dedupe_key)
    .bind(f.trigger_kind)
    .bind(&f.since)
    .bind(&f.until)
    .bind(after.map(|c| c.0))
    .bind(after.map(|c| c.1.clone()).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let page: Vec<(Json, i64, String)> = rows.into_iter().take(limit as usize).collect();
    let next = if more { page.last().map(|(_, ts, id)| (*ts, id.clone())) } else { None };
    Ok((page.into_iter().map(|(j, _, _)| j).collect(), next))
}

/// Everything about one run in one object: where it came from (source topic, partition, offset
/// and event id, or schedule and slot), the definition version, the context snapshot and how it
/// was obtained, its tasks, and where their results landed on `taskfactory.results`.
pub async fn lineage(pool: &PgPool, run_id: &str) -> Result<Option<Json>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT json_build_object(
            'run_id', r.run_id,
            'definition', json_build_object('id', r.definition_id, 'version', r.definition_version),
            'dedupe_key', r.dedupe_key, 'generation', r.generation, 'attempt', r.attempt, 'status', r.status,
            'source', json_build_object('kind', r.trigger_kind, 'topic', r.source_topic, 'partition', r.source_partition,
                                        'offset', r.source_offset, 'event_id', r.event_id, 'schedule_id', r.schedule_id,
                                        'scheduled_for', r.scheduled_for),
            'fired_at', r.fired_at, 'finished_at', r.finished_at, 'traceparent', r.traceparent,
            'context', r.context, 'context_sources', r.context_sources,
            'tasks', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'template', t.template, 'index', t.item_index, 'type', t.task_type, 'status', t.status,
                    'run_attempt', t.run_attempt, 'attempts', t.attempts, 'params', t.params, 'output', t.output, 'error', t.error,
                    'created_at', t.created_at, 'finished_at', t.finished_at) ORDER BY t.task_id)
                FROM tasks t WHERE t.run_id = r.run_id), '[]'::json),
            'results', coalesce((SELECT json_agg(json_build_object(
                    'task_id', x.task_id, 'status', upper(x.record->>'status'), 'topic', 'taskfactory.results',
                    'partition', x.published_partition, 'offset', x.published_offset, 'published_at', x.published_at,
                    'quarantined', x.quarantined_at IS NOT NULL, 'quarantine_reason', x.quarantine_reason) ORDER BY x.task_id)
                FROM task_results x WHERE x.run_id = r.run_id), '[]'::json))
         FROM activity_runs r WHERE r.run_id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?)
}

/// How many runs of `definition_id` fired in the last `window`, per status (for the console's
/// definition page).
pub async fn counts_by_status(
    pool: &PgPool,
    definition_id: &str,
    window: std::time::Duration,
) -> Result<Vec<(RunStatus, i64)>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM activity_runs
         WHERE definition_id = $1 AND fired_at > now() - make_interval(secs => $2) GROUP BY 1 ORDER BY 1",
    )
    .bind(definition_id)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(|(s, n)| s.parse().ok().map(|s| (s, n))).collect())
}

/// Runs fired in each of the last `minutes` minutes, oldest first (the console's lag page).
pub async fn fired_per_minute(pool: &PgPool, minutes: i32) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(r.run_id) FROM generate_series(now() - make_interval(mins => $1 - 1), now(), interval '1 minute') AS m(t)
         LEFT JOIN activity_runs r ON r.fired_at > m.t - interval '1 minute' AND r.fired_at <= m.t
         GROUP BY m.t ORDER BY m.t",
    )
    .bind(minutes)
    .fetch_all(pool)
    .await?)
}
