//! Migrations against the real PostgreSQL of the stack, on a fresh database per test.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use tf_testkit::{FreshDatabase, settings};

#[tokio::test]
async fn migrations_apply_once_and_then_are_a_no_op() {
    let db = FreshDatabase::create(&settings()).await;
    let pool = tf_store::connect(&db.url).await.unwrap();

    let first = tf_store::migrate(&pool).await.unwrap();
    assert!(!first.is_empty() && first.iter().all(|m| m.newly_applied), "{first:?}");
    let second = tf_store::migrate(&pool).await.unwrap();
    assert!(second.iter().all(|m| !m.newly_applied), "{second:?}");

    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    for t in ["activity_definitions", "activity_runs", "dedupe_claims", "tasks"] {
        assert!(tables.iter().any(|x| x == t), "missing table {t} in {tables:?}");
    }
    pool.close().await;
}

/// A rollback runs the previous build's `tf db migrate` against a database the next build
/// migrated: the newer migration it does not know is left alone, not an error.
#[tokio::test]
async fn a_database_migrated_by_a_newer_build_is_accepted() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'from a newer build', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let again = tf_store::migrate(&pool).await.unwrap();
    assert!(again.iter().all(|m| !m.newly_applied), "{again:?}");
    pool.close().await;
}

#[tokio::test]
async fn definition_versions_are_immutable_except_enabled() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    sqlx::query(
        "INSERT INTO activity_definitions (id, version, name, enabled, trigger_kind, spec, spec_sha256)
         VALUES ('orders', 1, 'Orders', true, 'event', '{}', 'abc')",
    )
    .execute(&pool)
    .await
    .unwrap();

    sqlx::query("UPDATE activity_definitions SET enabled = false WHERE id = 'orders'").execute(&pool).await.unwrap();
    let err = sqlx::query("UPDATE activity_definitions SET spec = '{\"x\":1}' WHERE id = 'orders'").execute(&pool).await.unwrap_err();
    assert!(err.to_string().contains("orders v1 may only change enabled"), "{err}");
    let err = sqlx::query("DELETE FROM activity_definitions").execute(&pool).await.unwrap_err();
    assert!(err.to_string().contains("cannot be deleted"), "{err}");

    // A run must reference an existing definition version and say where its event came from.
    let err = sqlx::query(
        "INSERT INTO activity_runs (run_id, definition_id, definition_version, dedupe_key, trigger_kind, fired_at)
         VALUES ('r1', 'orders', 1, 'k', 'event', now())",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
    pool.close().await;
}

#[tokio::test]
async fn a_wrong_database_url_is_a_readable_error_without_the_password() {
    let err = tf_store::connect("postgres://taskfactory:s3cret@127.0.0.1:9/none").await.unwrap_err().to_string();
    assert!(err.starts_with("cannot connect to PostgreSQL at postgres://taskfactory:***@127.0.0.1:9/none"), "{err}");
    assert!(!err.contains("s3cret"));
}
