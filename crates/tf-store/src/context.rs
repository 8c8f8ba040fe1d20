//! `sql` context sources: a definition author's read-only query, bounded in time.

use serde_json::Value as Json;
use sqlx::PgPool;

use crate::StoreError;

/// Runs a read-only query of a `sql` context source with JSON parameters bound as text, and
/// returns the rows as a JSON list of objects. The query may run for `timeout` at most.
pub async fn context_query(pool: &PgPool, query: &str, params: &[Json], timeout: std::time::Duration) -> Result<Json, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    sqlx::query(&format!("SET LOCAL statement_timeout = {}", timeout.as_millis().max(1))).execute(&mut *tx).await?;
    let wrapped = format!("SELECT coalesce(json_agg(row_to_json(q)), '[]'::json) FROM ({query}) q");
    let mut q = sqlx::query_scalar::<_, Json>(&wrapped);
    for p in params {
        q = q.bind(match p {
            Json::String(s) => Some(s.clone()),
            Json::Null => None,
            other => Some(other.to_string()),
        });
    }
    let rows = q.fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(rows)
}
