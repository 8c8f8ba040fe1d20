//! `sql` context queries on the stack's real MariaDB (the demo shop database, as its read-only
//! user): the datasource's limits hold per statement, whatever an earlier query on the same
//! pooled connection did to its session.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::{Duration, Instant};

use tf_store::context::ContextPool;
use tf_testkit::shop_db_url;

#[tokio::test]
async fn a_query_that_lifts_the_session_limits_does_not_lift_them_for_the_next_one() {
    // One connection, so the second query runs on the session the first one changed.
    let pool = ContextPool::mysql(&shop_db_url(), Duration::from_millis(500), Duration::from_secs(5), 1).unwrap();
    let t = Duration::from_millis(500);
    assert_eq!(pool.query("SELECT 1 AS one", &[], t).await.unwrap(), serde_json::json!([{"one": 1}]));
    // A definition's author turns the timeout off for the session...
    let _ = pool.query("SET SESSION max_statement_time = 0", &[], t).await;
    // ...and tries to leave the read-only mode for later queries too.
    let _ = pool.query("SET SESSION TRANSACTION READ WRITE", &[], t).await;
    let started = Instant::now();
    let err = pool.query("SELECT SLEEP(3) AS slept", &[], t).await.unwrap_err();
    assert!(err.timed_out, "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(2), "cut after {:?}", started.elapsed());
    // Read-only is the transaction's mode, set for each query: no session setting lifts it.
    let ro: serde_json::Value = pool.query("SELECT @@in_transaction AS tx", &[], t).await.unwrap();
    assert_eq!(ro, serde_json::json!([{"tx": 1}]), "each query runs inside the read-only transaction");
}
