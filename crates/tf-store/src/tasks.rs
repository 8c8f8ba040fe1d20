//! Tasks (`tasks`): the units of work a run spawns, one child workflow each, including human
//! tasks awaiting completion.

use serde_json::Value as Json;
use sqlx::PgPool;
use tf_definitions::{RunId, TaskId, TaskStatus, TaskType};

use crate::StoreError;

pub struct NewTask<'a> {
    pub task_id: &'a TaskId,
    pub run_attempt: i32,
    pub template: &'a str,
    pub index: i32,
    pub task_type: TaskType,
    pub params: &'a Json,
}

/// Records the planned tasks of a run (idempotent) and how many were spawned.
pub async fn record_tasks(pool: &PgPool, run_id: &RunId, tasks: &[NewTask<'_>]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for t in tasks {
        sqlx::query(
            "INSERT INTO tasks (task_id, run_id, template, item_index, task_type, params, run_attempt)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(t.task_id)
        .bind(run_id)
        .bind(t.template)
        .bind(t.index)
        .bind(t.task_type)
        .bind(t.params)
        .bind(t.run_attempt)
        .execute(&mut *tx)
        .await?;
    }
    // Counted, not summed: a run that unfolds records its tasks template by template, and a
    // retried activity records the same ones again.
    if let Some(attempt) = tasks.first().map(|t| t.run_attempt) {
        sqlx::query("UPDATE activity_runs SET tasks_spawned = (SELECT count(*) FROM tasks WHERE run_id = $1 AND run_attempt = $2) WHERE run_id = $1")
            .bind(run_id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn set_task_status(pool: &PgPool, task_id: &TaskId, status: TaskStatus) -> Result<(), StoreError> {
    sqlx::query("UPDATE tasks SET status = $2 WHERE task_id = $1 AND finished_at IS NULL").bind(task_id).bind(status).execute(pool).await?;
    Ok(())
}

/// A sleep or a wait for an event began: what it waits for and until when (epoch ms).
pub async fn set_waiting(pool: &PgPool, task_id: &TaskId, waiting_for: &str, until_ms: Option<i64>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tasks SET status = 'waiting', waiting_for = $2, waiting_until = to_timestamp($3::float8 / 1000)
         WHERE task_id = $1 AND finished_at IS NULL",
    )
    .bind(task_id)
    .bind(waiting_for)
    .bind(until_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a task a failed dependency skipped: its row, final, with no result record.
pub async fn record_skipped(pool: &PgPool, run_id: &RunId, task: &NewTask<'_>, why: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tasks (task_id, run_id, template, item_index, task_type, params, run_attempt, status, error, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'skipped', $8, now()) ON CONFLICT (task_id) DO NOTHING",
    )
    .bind(task.task_id)
    .bind(run_id)
    .bind(task.template)
    .bind(task.index)
    .bind(task.task_type)
    .bind(task.params)
    .bind(task.run_attempt)
    .bind(why)
    .execute(pool)
    .await?;
    Ok(())
}

/// `(index, output)` of a run's tasks of `template` that succeeded, in any attempt.
pub async fn succeeded_outputs(pool: &PgPool, run_id: &RunId, template: &str) -> Result<Vec<(u32, Json)>, StoreError> {
    let rows: Vec<(i32, Option<Json>)> = sqlx::query_as(
        "SELECT item_index, output FROM tasks WHERE run_id = $1 AND template = $2 AND status = 'succeeded' ORDER BY item_index, run_attempt",
    )
    .bind(run_id)
    .bind(template)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(i, o)| (i as u32, o.unwrap_or(Json::Null))).collect())
}

/// A task as operators list it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TaskRow {
    pub task_id: TaskId,
    pub task_type: TaskType,
    pub status: TaskStatus,
    pub params: Json,
    pub created_at: String,
}

pub async fn task(pool: &PgPool, task_id: &str) -> Result<Option<TaskRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT task_id, task_type, status, params,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at
         FROM tasks WHERE task_id = $1",
    )
    .bind(task_id)
    .fetch_optional(pool)
    .await?)
}

/// A task as every surface lists it: the API's inbox, the console and both modes of
/// `tf tasks list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TaskSummary {
    pub task_id: String,
    pub run_id: String,
    pub definition_id: String,
    pub definition_version: i32,
    pub template: String,
    pub index: i32,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub status: TaskStatus,
    #[schema(value_type = Object)]
    pub params: Json,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<String>,
    pub created_at: String,
    /// Any JSON.
    #[schema(value_type = Option<Value>)]
    pub output: Option<Json>,
    pub error: Option<String>,
}

/// Which tasks to list; all conditions hold together.
#[derive(Debug, Clone)]
pub struct TaskFilter<'a> {
    pub status: TaskStatus,
    pub task_type: Option<TaskType>,
    pub definition: Option<&'a str>,
}

/// Tasks matching `f`, oldest first, after `after` (a [`crate::Cursor`] of creation time and
/// task id), with the next page's cursor.
pub async fn list_tasks(
    pool: &PgPool,
    f: &TaskFilter<'_>,
    after: Option<&crate::Cursor>,
    limit: i64,
) -> Result<(Vec<TaskSummary>, Option<crate::Cursor>), StoreError> {
    let rows: Vec<(Json, i64, String)> = sqlx::query_as(
        "SELECT json_build_object('task_id', t.task_id, 'run_id', t.run_id, 'definition_id', r.definition_id,
                                  'definition_version', r.definition_version, 'template', t.template, 'index', t.item_index,
                                  'type', t.task_type, 'status', t.status, 'params', t.params, 'claimed_by', t.claimed_by,
                                  'claimed_at', t.claimed_at, 'created_at', t.created_at, 'output', t.output, 'error', t.error),
                (extract(epoch FROM t.created_at) * 1000000)::bigint, t.task_id
         FROM tasks t JOIN activity_runs r ON r.run_id = t.run_id
         WHERE t.status = $1 AND ($2::text IS NULL OR t.task_type = $2) AND ($3::text IS NULL OR r.definition_id = $3)
           AND ($4::bigint IS NULL OR ((extract(epoch FROM t.created_at) * 1000000)::bigint, t.task_id) > ($4, $5))
         ORDER BY (extract(epoch FROM t.created_at) * 1000000)::bigint, t.task_id LIMIT $6",
    )
    .bind(f.status)
    .bind(f.task_type)
    .bind(f.definition)
    .bind(after.map(|c| c.micros))
    .bind(after.map(|c| c.id.clone()).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    crate::page(rows, limit)
}

/// What claiming a human task did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Someone else holds it.
    HeldBy(String),
    /// It is not a human task waiting for a person (or does not exist: `None` from [`task`]).
    NotAwaiting(String),
}

/// Claims an awaiting human task for `by`; claiming one's own claim again is fine.
pub async fn claim_human_task(pool: &PgPool, task_id: &str, by: &str) -> Result<ClaimOutcome, StoreError> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "UPDATE tasks SET claimed_by = coalesce(claimed_by, $2), claimed_at = coalesce(claimed_at, now())
         WHERE task_id = $1 AND task_type = 'human' AND status = 'awaiting_human'
         RETURNING task_type, status, claimed_by",
    )
    .bind(task_id)
    .bind(by)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((_, _, Some(holder))) if holder != by => ClaimOutcome::HeldBy(holder),
        Some(_) => ClaimOutcome::Claimed,
        None => {
            let status: Option<(String, String)> =
                sqlx::query_as("SELECT task_type, status FROM tasks WHERE task_id = $1").bind(task_id).fetch_optional(pool).await?;
            ClaimOutcome::NotAwaiting(status.map(|(t, s)| format!("a {t} task, {s}")).unwrap_or_default())
        }
    })
}

/// Who claimed a task, if anyone.
pub async fn claimed_by(pool: &PgPool, task_id: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<String>>("SELECT claimed_by FROM tasks WHERE task_id = $1")
        .bind(task_id)
        .fetch_optional(pool)
        .await?
        .flatten())
}
