//! Dead letters sent back to their source topic: one row per DLQ record, so a redrive happens
//! once per DLQ offset however often it is asked for.

use serde_json::Value as Json;
use sqlx::PgPool;

use crate::StoreError;

/// Takes the redrive of one dead letter; `false` when it was already taken. `source` is where
/// the dead letter first came from on `target_topic` (partition, offset), when the router said.
pub async fn claim(
    pool: &PgPool,
    dlq: (&str, i32, i64),
    target_topic: &str,
    source: Option<(i32, i64)>,
    by: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "INSERT INTO dlq_redrives (dlq_topic, dlq_partition, dlq_offset, target_topic, source_partition, source_offset, redriven_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING",
    )
    .bind(dlq.0)
    .bind(dlq.1)
    .bind(dlq.2)
    .bind(target_topic)
    .bind(source.map(|s| s.0))
    .bind(source.map(|s| s.1))
    .bind(by)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// The original coordinates (partition, offset on `topic`) of the record redriven from `dlq` that
/// now sits at `at` (partition, offset) on `topic`; `None` when no redrive put it there (a
/// producer's forged marker). A redrive whose placement is not recorded yet (the router read the
/// record before tf-api wrote where it landed) is taken at its word.
pub async fn origin(pool: &PgPool, dlq: (&str, i32, i64), topic: &str, at: (i32, i64)) -> Result<Option<(i32, i64)>, StoreError> {
    let row: Option<(i32, i64)> = sqlx::query_as(
        "SELECT source_partition, source_offset FROM dlq_redrives
         WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3 AND target_topic = $4
           AND source_partition IS NOT NULL AND source_offset IS NOT NULL
           AND (target_offset IS NULL OR (target_partition = $5 AND target_offset = $6))",
    )
    .bind(dlq.0)
    .bind(dlq.1)
    .bind(dlq.2)
    .bind(topic)
    .bind(at.0)
    .bind(at.1)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Records where a redriven record landed.
pub async fn placed(pool: &PgPool, dlq: (&str, i32, i64), partition: i32, offset: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE dlq_redrives SET target_partition = $4, target_offset = $5 WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3",
    )
    .bind(dlq.0)
    .bind(dlq.1)
    .bind(dlq.2)
    .bind(partition)
    .bind(offset)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a claim back when producing failed, so the redrive can be asked for again.
pub async fn release(pool: &PgPool, dlq: (&str, i32, i64)) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM dlq_redrives WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3 AND target_offset IS NULL")
        .bind(dlq.0)
        .bind(dlq.1)
        .bind(dlq.2)
        .execute(pool)
        .await?;
    Ok(())
}

/// The redrive of one dead letter, if it happened: `{target_topic, target_partition, target_offset, redriven_by, redriven_at}`.
pub async fn get(pool: &PgPool, dlq: (&str, i32, i64)) -> Result<Option<Json>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT json_build_object('topic', target_topic, 'partition', target_partition, 'offset', target_offset,
                                  'by', redriven_by, 'at', redriven_at)
         FROM dlq_redrives WHERE dlq_topic = $1 AND dlq_partition = $2 AND dlq_offset = $3",
    )
    .bind(dlq.0)
    .bind(dlq.1)
    .bind(dlq.2)
    .fetch_optional(pool)
    .await?)
}
