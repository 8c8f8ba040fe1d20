//! PostgreSQL store. Owns the connection pool and the schema (`migrations/`, embedded at build
//! time so a binary migrates the database it was built for).

pub mod claims;
pub mod context;
pub mod definitions;
pub mod flow;
pub mod outbox;
pub mod redrives;
pub mod runs;
pub mod schema_changes;
pub mod tasks;
pub mod waits;

use std::collections::HashSet;

use sqlx::migrate::Migrator;
pub use sqlx::postgres::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The embedded migrations. A database migrated further than this build knows is accepted
/// (`ignore_missing`): migrations only expand ([`schema_changes`]), so an older `tf db migrate`,
/// as a rollback runs it, has nothing to do there rather than an error.
fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations");
    m.set_ignore_missing(true);
    m
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A conditional write found the row changed since the caller read it (`current`: its tag
    /// now, `None` when it does not exist).
    #[error("{what} changed since it was read (now {})", current.as_deref().unwrap_or("absent"))]
    Stale { what: String, current: Option<String> },
    /// A row did not have the shape of its view type (a schema and code out of step).
    #[error("a stored row does not fit its view: {0}")]
    Shape(serde_json::Error),
}

impl StoreError {
    /// Whether PostgreSQL refused a value the caller supplied: a NUL character or an invalid
    /// byte sequence (22021, 22P05), text that is no number or time (22P02, 22007), a value out
    /// of range or too long (22003, 22008, 22001). The caller's input, not the service, is at
    /// fault. Other data exceptions (a division by zero in our own SQL) stay server errors.
    pub fn is_bad_value(&self) -> bool {
        const CALLER_VALUES: [&str; 7] = ["22021", "22P05", "22P02", "22007", "22003", "22008", "22001"];
        matches!(self, StoreError::Query(sqlx::Error::Database(db)) if db.code().is_some_and(|c| CALLER_VALUES.contains(&c.as_ref())))
    }

    /// Whether PostgreSQL was unavailable (retry later) rather than refusing the statement
    /// (retrying cannot help): connection problems, an administrator shutdown, lack of
    /// resources, serialization failures and deadlocks.
    pub fn is_transient(&self) -> bool {
        let e = match self {
            StoreError::Connect { .. } => return true,
            StoreError::Migrate(_) | StoreError::Stale { .. } | StoreError::Shape(_) => return false,
            StoreError::Query(e) => e,
        };
        match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| ["08", "57", "53", "40"].iter().any(|class| c.starts_with(class))),
            _ => false,
        }
    }
}

/// Opens a pool. The URL's password is not echoed in errors.
pub async fn connect(url: &str) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|source| StoreError::Connect { url: redact(url), source })
}

/// One migration and whether this call applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub newly_applied: bool,
}

/// Applies every pending migration; idempotent.
pub async fn migrate(pool: &PgPool) -> Result<Vec<MigrationStatus>, StoreError> {
    let before = applied_versions(pool).await?;
    let migrator = migrator();
    migrator.run(pool).await?;
    Ok(migrator
        .iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            newly_applied: !before.contains(&m.version),
        })
        .collect())
}

async fn applied_versions(pool: &PgPool) -> Result<HashSet<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(HashSet::new());
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool).await?;
    Ok(versions.into_iter().collect())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    /// A cursor survives its own text, ids with colons included (dedupe keys may hold them).
    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let c = Cursor { micros: 1_765_000_000_000_000, id: "run/orders/tenant:7/1".into() };
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        for bad in ["", "nocolon", "x:1", ":id", "1.5:id"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    /// `limit + 1` rows make a full page and a cursor at its last row; `limit` rows or fewer, the
    /// last page; a row that does not fit the view is an error, not a dropped row.
    #[test]
    fn a_page_cuts_at_its_limit_and_points_after_its_last_row() {
        let rows = |n: i64| (0..n).map(|i| (serde_json::json!(i), i * 10, format!("id-{i}"))).collect::<Vec<_>>();
        let (views, next) = page::<i64>(rows(3), 2).unwrap();
        assert_eq!((views, next), (vec![0, 1], Some(Cursor { micros: 10, id: "id-1".into() })));
        let (views, next) = page::<i64>(rows(2), 2).unwrap();
        assert_eq!((views, next), (vec![0, 1], None));
        assert!(matches!(page::<String>(rows(1), 2), Err(StoreError::Shape(_))));
    }

    #[test]
    fn migrations_are_embedded_in_order() {
        let versions: Vec<i64> = migrator().iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}

/// Where a page of a list ends, for the next page: a time in microseconds and an id. Every list
/// of the API pages with it; clients see it as an opaque `next_cursor` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub micros: i64,
    pub id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.micros, self.id)
    }
}

/// A cursor string this API did not give out.
#[derive(Debug, thiserror::Error)]
#[error("not a cursor this API gave out (next_cursor)")]
pub struct BadCursor;

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Cursor, BadCursor> {
        let (micros, id) = s.split_once(':').ok_or(BadCursor)?;
        Ok(Cursor { micros: micros.parse().map_err(|_| BadCursor)?, id: id.to_string() })
    }
}

/// One page of `limit` views from `limit + 1` rows of (view JSON, cursor time, cursor id): the
/// extra row only says whether there is a next page.
pub(crate) fn page<T: serde::de::DeserializeOwned>(
    rows: Vec<(serde_json::Value, i64, String)>,
    limit: i64,
) -> Result<(Vec<T>, Option<Cursor>), StoreError> {
    let more = rows.len() as i64 > limit;
    let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more { page.last().map(|(_, micros, id)| Cursor { micros: *micros, id: id.clone() }) } else { None };
    let views = page.into_iter().map(|(j, _, _)| serde_json::from_value(j)).collect::<Result<_, _>>().map_err(StoreError::Shape)?;
    Ok((views, next))
}
