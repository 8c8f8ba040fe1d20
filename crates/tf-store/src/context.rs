//! `sql` context sources: a definition author's read-only query on a datasource the operator
//! configured, bounded in time.

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value as Json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::StoreError;

/// A small pool for one `postgres` datasource. It connects when first used, so a worker starts
/// while the user's database is down (the runs that need it retry). Every session is read-only
/// and has the datasource's `statement_timeout`.
pub fn datasource_pool(
    url: &str,
    statement_timeout: Duration,
    connect_timeout: Duration,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|source| StoreError::Connect { url: crate::redact(url), source })?
        .application_name("taskfactory-context")
        .options([
            ("default_transaction_read_only", "on".to_string()),
            ("statement_timeout", statement_timeout.as_millis().max(1).to_string()),
        ]);
    Ok(PgPoolOptions::new().max_connections(max_connections).acquire_timeout(connect_timeout).connect_lazy_with(options))
}

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
