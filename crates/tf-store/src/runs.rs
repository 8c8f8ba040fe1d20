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

/// What recording a run's end did.
#[derive(Debug, Default)]
pub struct Finished {
    /// The definition and the run's duration in seconds (from its trigger firing) when this
    /// call finished it, `None` when it was already finished (a retried activity).
    pub ended: Option<(String, f64)>,
    /// The flow-control waiters to wake for the slots the run held.
    pub released: crate::flow::Released,
}

/// Records a run's end and frees its flow-control slots in one transaction, so a slot is never
/// held by a run recorded as ended.
pub async fn finish_run(pool: &PgPool, run_id: &RunId, status: RunStatus) -> Result<Finished, StoreError> {
    let mut tx = pool.begin().await?;
    let ended = sqlx::query_as(
        "UPDATE activity_runs SET status = $2, finished_at = now() WHERE run_id = $1 AND status IN ('running', 'waiting')
         RETURNING definition_id, greatest(extract(epoch FROM finished_at - fired_at), 0)::float8",
    )
    .bind(run_id)
    .bind(status)
    .fetch_optional(&mut *tx)
    .await?;
    let released = crate::flow::release_run(&mut tx, run_id).await?;
    crate::waits::close_run(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(Finished { ended, released })
}

/// Runs recorded `running` that began more than `older_than` ago, oldest first: (run id, the
/// execution that runs it). The reconciler asks Temporal about each.
pub async fn running_since(pool: &PgPool, older_than: std::time::Duration, limit: i64) -> Result<Vec<(RunId, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT run_id, execution_id FROM activity_runs
         WHERE status IN ('running', 'waiting') AND fired_at < now() - make_interval(secs => $1)
         ORDER BY fired_at LIMIT $2",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Records the end of a run whose workflow ended outside the worker's hands, if the run is
/// still `running` under `execution_id` (a retry that took it over since is left alone).
/// Returns what settling it freed, `None` when it was not settled. Its unfinished tasks are left as they are: a task's end
/// is recorded with its result, and no result was produced for them.
pub async fn settle(
    pool: &PgPool,
    run_id: &RunId,
    execution_id: &str,
    status: RunStatus,
) -> Result<Option<crate::flow::Released>, StoreError> {
    let mut tx = pool.begin().await?;
    let settled = sqlx::query(
        "UPDATE activity_runs SET status = $3, finished_at = now()
         WHERE run_id = $1 AND execution_id = $2 AND status IN ('running', 'waiting')",
    )
    .bind(run_id)
    .bind(execution_id)
    .bind(status)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !settled {
        return Ok(None);
    }
    let released = crate::flow::release_run(&mut tx, run_id).await?;
    crate::waits::close_run(&mut tx, run_id).await?;
    tx.commit().await?;
    Ok(Some(released))
}

/// A run's status and the input it was started with (`tf runs retry`).
pub async fn run_input(pool: &PgPool, run_id: &str) -> Result<Option<(RunStatus, Option<Json>)>, StoreError> {
    Ok(sqlx::query_as("SELECT status, input FROM activity_runs WHERE run_id = $1").bind(run_id).fetch_optional(pool).await?)
}

/// A run as every surface lists it: the API's `GET /runs`, the console's Runs page and
/// `tf runs list` (both modes) read this one type, so a field added here shows everywhere.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub definition_id: String,
    pub definition_version: i32,
    pub dedupe_key: String,
    pub generation: i32,
    pub attempt: i32,
    pub status: RunStatus,
    /// Why a run waits or was skipped (`concurrency 2/2 key c-1, 3 ahead`; `rate_limited 5/1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When flow control let the run execute (RFC 3339); only runs of definitions with limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<String>,
    pub trigger_kind: TriggerKind,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub event_id: Option<String>,
    pub schedule_id: Option<String>,
    /// The schedule slot a cron run is for (RFC 3339).
    pub scheduled_for: Option<String>,
    /// RFC 3339.
    pub fired_at: String,
    pub finished_at: Option<String>,
    pub tasks_spawned: i32,
    /// Tasks that reached a final status.
    pub tasks_done: i64,
    /// Results the relay published to the results topic.
    pub results_published: i64,
    /// A link to the run's workflow in the Temporal UI (set by the API, which knows the UI's
    /// address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_ui: Option<String>,
}

impl RunView {
    /// Where the run came from, in one line: `topic[partition]@offset` or `schedule for slot`.
    pub fn source_label(&self) -> String {
        match (&self.source_topic, &self.schedule_id) {
            (Some(t), _) => format!(
                "{t}[{}]@{}",
                self.source_partition.map_or("?".into(), |p| p.to_string()),
                self.source_offset.map_or("?".into(), |o| o.to_string())
            ),
            (None, Some(s)) => format!("{s} for {}", self.scheduled_for.as_deref().unwrap_or("?")),
            (None, None) => "-".into(),
        }
    }
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

/// One page of runs, newest first, after `after` (fire time and run id), with the cursor of the
/// next page (`None` on the last).
pub async fn list_runs(
    pool: &PgPool,
    f: &RunFilter,
    after: Option<&crate::Cursor>,
    limit: i64,
) -> Result<(Vec<RunView>, Option<crate::Cursor>), StoreError> {
    // The row leaves PostgreSQL as JSON, so its time columns keep PostgreSQL's own RFC 3339
    // text and the struct's serde is the one mapping from row to view.
    let rows: Vec<(Json, i64, String)> = sqlx::query_as(
        "SELECT json_build_object(
                    'run_id', r.run_id, 'definition_id', r.definition_id, 'definition_version', r.definition_version,
                    'dedupe_key', r.dedupe_key, 'generation', r.generation, 'attempt', r.attempt, 'status', r.status,
                    'status_reason', r.status_reason, 'admitted_at', r.admitted_at, 'trigger_kind', r.trigger_kind, 'source_topic', r.source_topic, 'source_partition', r.source_partition,
                    'source_offset', r.source_offset, 'event_id', r.event_id, 'schedule_id', r.schedule_id,
                    'scheduled_for', r.scheduled_for, 'fired_at', r.fired_at, 'finished_at', r.finished_at,
                    'tasks_spawned', r.tasks_spawned,
                    'tasks_done', (SELECT count(*) FROM tasks t WHERE t.run_id = r.run_id AND t.finished_at IS NOT NULL),
                    'results_published', (SELECT count(*) FROM task_results x WHERE x.run_id = r.run_id AND x.published_at IS NOT NULL)),
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
    .bind(after.map(|c| c.micros))
    .bind(after.map(|c| c.id.clone()).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    // Pages go newest first, so the next page holds runs strictly before the cursor.
    crate::page(rows, limit)
}

/// Everything about one run: where it came from, the definition version, the context snapshot
/// and how it was obtained, its tasks, and where their results landed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RunLineage {
    pub run_id: String,
    pub definition: DefinitionRef,
    pub dedupe_key: String,
    pub generation: i32,
    pub attempt: i32,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<String>,
    pub source: SourceView,
    pub fired_at: String,
    pub finished_at: Option<String>,
    pub traceparent: Option<String>,
    /// The context snapshot the tasks were planned from.
    #[schema(value_type = Option<Object>)]
    pub context: Option<Json>,
    /// How each context source was obtained (cache, query, static).
    #[schema(value_type = Option<Object>)]
    pub context_sources: Option<Json>,
    pub tasks: Vec<TaskView>,
    pub results: Vec<ResultView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_ui: Option<String>,
    /// A run that unfolds (docs/steps.md): its templates in definition order, each with what
    /// it runs after and how far it got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepNode>,
    /// Events the run waited for (`wait_for_event` steps, `cancel_on`), with where the
    /// delivered one was read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits: Vec<crate::waits::WaitView>,
}

/// One template of a run that unfolds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StepNode {
    pub template: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub after: Vec<String>,
    pub always: bool,
    /// `not planned yet` (the run is still going), `not run` (the run ended without it: its
    /// `when` was false, or the run failed or was cancelled first), or its tasks' statuses
    /// (`succeeded`, `waiting`, `2 succeeded, 1 failed`).
    pub state: String,
}

impl StepNode {
    /// The step graph of a stored spec and the run's tasks (`ended`: the run is over); empty for
    /// a run that does not unfold.
    pub fn graph(spec: &Json, tasks: &[TaskView], ended: bool) -> Vec<StepNode> {
        let Some(templates) = spec.get("tasks").and_then(Json::as_array) else { return Vec::new() };
        let unfolds = templates.iter().any(|t| {
            t.get("after").is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()))
                || matches!(t.get("type").and_then(Json::as_str), Some("sleep" | "wait_for_event"))
        });
        if !unfolds {
            return Vec::new();
        }
        let last_attempt = tasks.iter().map(|t| t.run_attempt).max().unwrap_or(1);
        templates
            .iter()
            .map(|t| {
                let name = t.get("name").and_then(Json::as_str).unwrap_or_default().to_string();
                let mine: Vec<&TaskView> = tasks.iter().filter(|x| x.template == name && x.run_attempt == last_attempt).collect();
                let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
                for x in &mine {
                    *counts.entry(x.status.as_str()).or_default() += 1;
                }
                let state = match (mine.as_slice(), counts.len()) {
                    ([], _) if ended => "not run".to_string(),
                    ([], _) => "not planned yet".to_string(),
                    ([one], _) => one.status.as_str().to_string(),
                    (_, _) => counts.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", "),
                };
                StepNode {
                    template: name,
                    task_type: t.get("type").and_then(Json::as_str).unwrap_or_default().to_string(),
                    after: t
                        .get("after")
                        .and_then(Json::as_array)
                        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                        .unwrap_or_default(),
                    always: t.get("always").and_then(Json::as_bool).unwrap_or(false),
                    state,
                }
            })
            .collect()
    }
}

/// A definition version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DefinitionRef {
    pub id: String,
    pub version: i32,
}

/// What started a run: a record (topic, partition, offset, event id) or a schedule slot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SourceView {
    pub kind: TriggerKind,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub event_id: Option<String>,
    pub schedule_id: Option<String>,
    pub scheduled_for: Option<String>,
}

/// One task of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub template: String,
    pub index: i32,
    #[serde(rename = "type")]
    pub task_type: tf_definitions::TaskType,
    pub status: tf_definitions::TaskStatus,
    pub run_attempt: i32,
    pub attempts: i32,
    #[schema(value_type = Object)]
    pub params: Json,
    /// Any JSON.
    #[schema(value_type = Option<Value>)]
    pub output: Option<Json>,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// A sleep or wait in progress: what it waits for (`sleep`, `<type> key <key>`) and until.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_until: Option<String>,
}

/// Where a task's result landed on the results topic.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResultView {
    pub task_id: String,
    /// The result record's status symbol (`SUCCEEDED`, `FAILED`, ...).
    pub status: String,
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub published_at: Option<String>,
    pub quarantined: bool,
    pub quarantine_reason: Option<String>,
}

/// One run's [`RunLineage`]; `results_topic` is where the relay publishes.
pub async fn lineage(pool: &PgPool, run_id: &str, results_topic: &str) -> Result<Option<RunLineage>, StoreError> {
    let row: Option<Json> = sqlx::query_scalar(
        "SELECT json_build_object(
            'run_id', r.run_id,
            'definition', json_build_object('id', r.definition_id, 'version', r.definition_version),
            'dedupe_key', r.dedupe_key, 'generation', r.generation, 'attempt', r.attempt, 'status', r.status,
            'status_reason', r.status_reason, 'admitted_at', r.admitted_at,
            'source', json_build_object('kind', r.trigger_kind, 'topic', r.source_topic, 'partition', r.source_partition,
                                        'offset', r.source_offset, 'event_id', r.event_id, 'schedule_id', r.schedule_id,
                                        'scheduled_for', r.scheduled_for),
            'fired_at', r.fired_at, 'finished_at', r.finished_at, 'traceparent', r.traceparent,
            'context', r.context, 'context_sources', r.context_sources,
            'tasks', coalesce((SELECT json_agg(json_build_object(
                    'task_id', t.task_id, 'template', t.template, 'index', t.item_index, 'type', t.task_type, 'status', t.status,
                    'run_attempt', t.run_attempt, 'attempts', t.attempts, 'params', t.params, 'output', t.output, 'error', t.error,
                    'created_at', t.created_at, 'finished_at', t.finished_at, 'waiting_for', t.waiting_for,
                    'waiting_until', t.waiting_until) ORDER BY t.task_id)
                FROM tasks t WHERE t.run_id = r.run_id), '[]'::json),
            'spec', (SELECT d.spec FROM activity_definitions d WHERE d.id = r.definition_id AND d.version = r.definition_version),
            'results', coalesce((SELECT json_agg(json_build_object(
                    'task_id', x.task_id, 'status', upper(x.record->>'status'), 'topic', $2::text,
                    'partition', x.published_partition, 'offset', x.published_offset, 'published_at', x.published_at,
                    'quarantined', x.quarantined_at IS NOT NULL, 'quarantine_reason', x.quarantine_reason) ORDER BY x.task_id)
                FROM task_results x WHERE x.run_id = r.run_id), '[]'::json))
         FROM activity_runs r WHERE r.run_id = $1",
    )
    .bind(run_id)
    .bind(results_topic)
    .fetch_optional(pool)
    .await?;
    let Some(mut row) = row else { return Ok(None) };
    let spec = row.as_object_mut().and_then(|o| o.remove("spec")).unwrap_or(Json::Null);
    let mut lineage: RunLineage = serde_json::from_value(row).map_err(StoreError::Shape)?;
    lineage.steps = StepNode::graph(&spec, &lineage.tasks, !matches!(lineage.status, RunStatus::Running | RunStatus::Waiting));
    lineage.waits = crate::waits::of_run(pool, run_id).await?;
    Ok(Some(lineage))
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
