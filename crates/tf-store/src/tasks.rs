//! Tasks (`tasks`): the units of work a run spawns, one child workflow each, including human
//! tasks awaiting completion.

use serde_json::Value as Json;
use sqlx::PgPool;

use crate::StoreError;

pub struct NewTask<'a> {
    pub task_id: &'a str,
    pub run_attempt: i32,
    pub template: &'a str,
    pub index: i32,
    pub task_type: &'a str,
    pub params: &'a Json,
}

/// Records the planned tasks of a run (idempotent) and how many were spawned.
pub async fn record_tasks(pool: &PgPool, run_id: &str, tasks: &[NewTask<'_>]) -> Result<(), StoreError> {
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
    sqlx::query("UPDATE activity_runs SET tasks_spawned = $2 WHERE run_id = $1")
        .bind(run_id)
        .bind(tasks.len() as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn set_task_status(pool: &PgPool, task_id: &str, status: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE tasks SET status = $2 WHERE task_id = $1 AND finished_at IS NULL").bind(task_id).bind(status).execute(pool).await?;
    Ok(())
}

/// A task as operators list it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub task_id: String,
    pub task_type: String,
    pub status: String,
    pub params: Json,
    pub created_at: String,
}

/// Tasks in `status` (e.g. `awaiting_human`), oldest first.
pub async fn tasks_by_status(pool: &PgPool, status: &str, limit: i64) -> Result<Vec<TaskRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT task_id, task_type, status, params,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at
         FROM tasks WHERE status = $1 ORDER BY created_at, task_id LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await?)
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
