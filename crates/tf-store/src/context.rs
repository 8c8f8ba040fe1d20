//! `sql` context sources: a definition author's read-only query on a datasource the operator
//! configured (PostgreSQL or MySQL/MariaDB), bounded in time.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value as Json;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Column, Row, TypeInfo};

/// A small pool for one `sql` datasource. It connects when first used, so a worker starts while
/// the user's database is down (the runs that need it retry). Every session is read-only and
/// has the datasource's statement timeout.
#[derive(Debug, Clone)]
pub enum ContextPool {
    Postgres(PgPool),
    Mysql(MysqlContext),
}

/// A MySQL/MariaDB datasource. Its limits are applied per statement, not per pooled session: a
/// query that runs `SET SESSION ...` could otherwise lift them for every later query on its
/// connection.
#[derive(Debug, Clone)]
pub struct MysqlContext {
    pool: MySqlPool,
    statement_timeout: Duration,
    /// The statement that sets the timeout, by server flavour (learnt on first use).
    limit: Arc<OnceLock<String>>,
}

/// Why a context query gave no rows.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
    /// The database was unavailable or busy, or the statement ran out of time: a later attempt
    /// may succeed. Otherwise the database refused the statement (syntax, permissions, types).
    pub transient: bool,
    /// Cut by the datasource's statement timeout.
    pub timed_out: bool,
}

impl ContextPool {
    pub fn postgres(url: &str, statement_timeout: Duration, connect_timeout: Duration, max: u32) -> Result<ContextPool, QueryError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| permanent(format!("{}: {e}", crate::redact(url))))?
            .application_name("taskfactory-context")
            .options([("default_transaction_read_only", "on".to_string()), ("statement_timeout", millis(statement_timeout).to_string())]);
        Ok(ContextPool::Postgres(PgPoolOptions::new().max_connections(max).acquire_timeout(connect_timeout).connect_lazy_with(options)))
    }

    pub fn mysql(url: &str, statement_timeout: Duration, connect_timeout: Duration, max: u32) -> Result<ContextPool, QueryError> {
        let options = MySqlConnectOptions::from_str(url).map_err(|e| permanent(format!("{}: {e}", crate::redact(url))))?;
        let pool = MySqlPoolOptions::new().max_connections(max).acquire_timeout(connect_timeout).connect_lazy_with(options);
        Ok(ContextPool::Mysql(MysqlContext { pool, statement_timeout, limit: Arc::default() }))
    }

    /// Runs the query with JSON params bound as text (`$1..$n` on PostgreSQL, `?` on MySQL) and
    /// returns the rows as a JSON list of objects.
    pub async fn query(&self, query: &str, params: &[Json], timeout: Duration) -> Result<Json, QueryError> {
        match self {
            ContextPool::Postgres(pool) => postgres_query(pool, query, params, timeout).await.map_err(classify),
            ContextPool::Mysql(my) => my.query(query, params).await,
        }
    }
}

impl MysqlContext {
    /// Runs one query in a read-only transaction, after setting the statement timeout again, and
    /// rolls back: whatever the previous query on this connection changed in its session, this
    /// one runs under the datasource's limits.
    async fn query(&self, query: &str, params: &[Json]) -> Result<Json, QueryError> {
        use sqlx::Executor;
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let limit = self.limit_statement(&mut conn).await.map_err(classify)?;
        // One round trip: the session's statement timeout, then a read-only transaction.
        conn.execute(format!("{limit}; START TRANSACTION READ ONLY").as_str()).await.map_err(classify)?;
        let mut q = sqlx::query(query);
        for p in params {
            q = q.bind(text(p));
        }
        let rows = q.fetch_all(&mut *conn).await;
        if conn.execute("ROLLBACK").await.is_err() {
            // A connection that cannot roll back is not handed to the next query, whether the
            // query itself failed or not.
            conn.detach();
        }
        rows.map_err(classify)?.iter().map(mysql_row).collect::<Result<Vec<_>, _>>().map(Json::Array)
    }

    /// MariaDB and MySQL name their statement timeouts differently (and in different units);
    /// each refuses the other's.
    async fn limit_statement(&self, conn: &mut sqlx::MySqlConnection) -> Result<String, sqlx::Error> {
        if let Some(s) = self.limit.get() {
            return Ok(s.clone());
        }
        let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut *conn).await?;
        let statement = if version.contains("MariaDB") {
            format!("SET SESSION max_statement_time = {}", millis(self.statement_timeout) as f64 / 1000.0)
        } else {
            format!("SET SESSION max_execution_time = {}", millis(self.statement_timeout))
        };
        Ok(self.limit.get_or_init(|| statement).clone())
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

fn permanent(message: String) -> QueryError {
    QueryError { message, transient: false, timed_out: false }
}

fn text(p: &Json) -> Option<String> {
    match p {
        Json::String(s) => Some(s.clone()),
        Json::Null => None,
        other => Some(other.to_string()),
    }
}

async fn postgres_query(pool: &PgPool, query: &str, params: &[Json], timeout: Duration) -> Result<Json, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    sqlx::query(&format!("SET LOCAL statement_timeout = {}", millis(timeout))).execute(&mut *tx).await?;
    let wrapped = format!("SELECT coalesce(json_agg(row_to_json(q)), '[]'::json) FROM ({query}) q");
    let mut q = sqlx::query_scalar::<_, Json>(&wrapped);
    for p in params {
        q = q.bind(text(p));
    }
    let rows = q.fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(rows)
}

/// A MySQL row as a JSON object. Without `row_to_json` the columns are mapped by type; DECIMAL
/// comes as a string (exact, as the wire sends it), temporal and binary types must be cast.
fn mysql_row(row: &MySqlRow) -> Result<Json, QueryError> {
    let mut out = serde_json::Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_info().name();
        let bad = |e: sqlx::Error| permanent(format!("column {}: {e}", col.name()));
        let value = match ty {
            "NULL" => Json::Null,
            "BOOLEAN" => row.try_get::<Option<bool>, _>(i).map_err(bad)?.map_or(Json::Null, Json::Bool),
            "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
                row.try_get::<Option<i64>, _>(i).map_err(bad)?.map_or(Json::Null, Json::from)
            }
            t if t.ends_with(" UNSIGNED") => row.try_get::<Option<u64>, _>(i).map_err(bad)?.map_or(Json::Null, Json::from),
            "FLOAT" | "DOUBLE" => row.try_get::<Option<f64>, _>(i).map_err(bad)?.map_or(Json::Null, Json::from),
            "DECIMAL" => row.try_get_unchecked::<Option<String>, _>(i).map_err(bad)?.map_or(Json::Null, Json::String),
            "JSON" => row.try_get::<Option<Json>, _>(i).map_err(bad)?.unwrap_or(Json::Null),
            "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" => {
                row.try_get::<Option<String>, _>(i).map_err(bad)?.map_or(Json::Null, Json::String)
            }
            other => {
                return Err(permanent(format!(
                    "column {} has type {other}, which a context query cannot return as JSON; CAST it to CHAR",
                    col.name()
                )));
            }
        };
        out.insert(col.name().to_string(), value);
    }
    Ok(Json::Object(out))
}

/// PostgreSQL: connection classes 08, operator intervention 57 (57014 is a statement timeout),
/// resources 53, serialization and deadlocks 40. MySQL/MariaDB: lost connections, too many
/// connections, lock timeouts, deadlocks and statement timeouts (MariaDB 1969, MySQL 3024).
fn classify(e: sqlx::Error) -> QueryError {
    let (transient, timed_out) = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => (true, false),
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                let n = my.number();
                ([1040, 1053, 1205, 1213, 1969, 2006, 2013, 3024].contains(&n), [1969, 3024].contains(&n))
            } else {
                let code = db.code().unwrap_or_default().to_string();
                (["08", "57", "53", "40"].iter().any(|class| code.starts_with(class)), code == "57014")
            }
        }
        _ => (false, false),
    };
    QueryError { message: e.to_string(), transient, timed_out }
}
