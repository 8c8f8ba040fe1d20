//! Claim resolution (`tf_resolve_generations`) on the real PostgreSQL: window boundaries,
//! out-of-order event times, batches, concurrency and keys the store refuses.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::Duration;

use tf_store::claims::{ClaimRequest, Generation, expire_generations, resolve_generations};
use tf_testkit::{FreshDatabase, settings};

const W: Duration = Duration::from_secs(10);

fn req(key: &str, t_secs: i64) -> ClaimRequest<'_> {
    ClaimRequest { definition_id: "d", dedupe_key: key, event_time_ms: t_secs * 1000, window: W }
}

async fn one(pool: &sqlx::PgPool, key: &str, t_secs: i64) -> Generation {
    resolve_generations(pool, &[req(key, t_secs)]).await.unwrap().remove(0)
}

#[tokio::test]
async fn windows_start_at_the_first_event_and_end_after_the_window() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let g = one(&pool, "k", 100).await;
    assert_eq!((g.generation, g.created, g.window_start_ms, g.window_end_ms), (1, true, 100_000, 110_000));
    assert_eq!(g.run_status, None, "no run has begun");
    let inside = one(&pool, "k", 109).await;
    assert_eq!((inside.generation, inside.created), (1, false), "t0 + 9 s is inside");
    let edge = one(&pool, "k", 110).await;
    assert_eq!((edge.generation, edge.created, edge.window_start_ms), (2, true, 110_000), "the window is half-open");
    let later = one(&pool, "k", 500).await;
    assert_eq!(later.generation, 3);
    // Replaying the earliest event long after its window expired (in wall-clock time, too)
    // maps it to its old generation.
    assert_eq!((one(&pool, "k", 100).await.generation, one(&pool, "k", 105).await.created), (1, false));
    // Keys and definitions are independent.
    assert_eq!(one(&pool, "other", 100).await.generation, 1);
    let other_def = ClaimRequest { definition_id: "d2", ..req("k", 100) };
    assert_eq!(resolve_generations(&pool, &[other_def]).await.unwrap()[0].generation, 1);
}

#[tokio::test]
async fn an_old_dated_window_outlives_expiry_for_the_claim_retention_after_it_was_opened() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    // Issue 26: two events of one key, dated 40 days ago, with the worker's expiry run between
    // them. The window ended 40 days ago in event time but was opened just now.
    let forty_days_ago = now_secs() - 40 * 24 * 3600;
    let first = one(&pool, "old", forty_days_ago).await;
    assert_eq!((first.generation, first.created), (1, true));
    let retention = tf_definitions::dedupe::CLAIM_RETENTION;
    assert_eq!(expire_generations(&pool, retention).await.unwrap(), 0, "a window opened now is kept for the retention");
    let again = one(&pool, "old", forty_days_ago + 5).await;
    assert_eq!((again.generation, again.created), (1, false), "one run per window");
    // Once it was opened more than the retention ago too, it goes.
    sqlx::query("UPDATE dedupe_generations SET created_at = now() - interval '31 days'").execute(&pool).await.unwrap();
    assert_eq!(expire_generations(&pool, retention).await.unwrap(), 1);
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn a_late_event_joins_the_generation_it_precedes_by_less_than_a_window() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    assert_eq!(one(&pool, "k", 100).await.generation, 1);
    // Routed concurrently, the event at 95 may be resolved after the one at 100.
    let late = one(&pool, "k", 95).await;
    assert_eq!((late.generation, late.created, late.window_start_ms, late.window_end_ms), (1, false, 95_000, 110_000));
    // A whole window earlier: a generation of its own, ending where the next begins.
    let early = one(&pool, "k", 84).await;
    assert_eq!((early.generation, early.created, early.window_start_ms, early.window_end_ms), (2, true, 84_000, 94_000));
    assert_eq!(one(&pool, "k", 93).await.generation, 2);
    assert_eq!(one(&pool, "k", 94).await.generation, 1, "94 is before generation 1 by less than a window");
    assert_eq!(one(&pool, "k", 10).await.generation, 3);
    let windows: Vec<(i32, f64, f64)> = sqlx::query_as(
        "SELECT generation, extract(epoch FROM window_start)::float8, extract(epoch FROM window_end)::float8
         FROM dedupe_generations ORDER BY window_start",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(windows, [(3, 10.0, 20.0), (2, 84.0, 94.0), (1, 94.0, 110.0)], "no overlap");
}

#[tokio::test]
async fn a_batch_resolves_in_order_and_sees_its_own_generations() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let batch = [req("b", 50), req("a", 0), req("b", 55), req("a", 20), req("b", 61)];
    let got: Vec<(u32, bool)> = resolve_generations(&pool, &batch).await.unwrap().iter().map(|g| (g.generation, g.created)).collect();
    assert_eq!(got, [(1, true), (1, true), (1, false), (2, true), (2, true)]);
}

#[tokio::test]
async fn concurrent_batches_agree_on_one_generation() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            // Overlapping keys in different orders: the function locks in sorted order.
            let keys: Vec<String> = (0..20).map(|k| format!("k{}", (k * (i + 1)) % 20)).collect();
            let reqs: Vec<ClaimRequest<'_>> = keys.iter().map(|k| req(k, 1000)).collect();
            resolve_generations(&pool, &reqs).await.unwrap().iter().map(|g| g.generation).collect::<Vec<_>>()
        }));
    }
    for h in handles {
        assert!(h.await.unwrap().iter().all(|g| *g == 1));
    }
    let generations: i64 = sqlx::query_scalar("SELECT count(*) FROM dedupe_generations").fetch_one(&pool).await.unwrap();
    assert_eq!(generations, 20, "one generation per key");
}

#[tokio::test]
async fn a_run_recorded_for_a_generation_is_reported_with_its_status() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let (def, version) =
        tf_testkit::apply_definition(&pool, "id: d\nname: D\ntrigger: {event: {topics: [t]}}\ntasks: [{name: t, type: human}]\n").await;
    assert_eq!(def, "d");
    let g = one(&pool, "k", 100).await;
    let run_id = tf_store::runs::RunId::from_workflow_id("run/d/k/1");
    let source = tf_store::runs::RunSource::of(tf_store::runs::TriggerKind::Manual);
    let begin = tf_store::runs::BeginRun {
        run_id: &run_id,
        execution_id: "x1",
        definition_id: "d",
        definition_version: version,
        dedupe_key: "k",
        generation: Some(g.generation),
        event_time_ms: 100_000,
        dedupe_window: W,
        fired_at_ms: 0,
        traceparent: None,
        source: &source,
        input: None,
        operator_retry: false,
    };
    tf_store::runs::begin_run(&pool, &begin).await.unwrap();
    let g = one(&pool, "k", 101).await;
    assert_eq!(g.run_status, Some(tf_store::runs::RunStatus::Running));
    assert!(g.has_live_run());
    tf_store::runs::finish_run(&pool, &run_id, tf_store::runs::RunStatus::Failed).await.unwrap();
    let g = one(&pool, "k", 102).await;
    assert!(!g.has_live_run(), "a failed generation may be run again");
    // A new execution of the failed run takes it over as attempt 2.
    let retry = tf_store::runs::BeginRun { execution_id: "x2", ..begin };
    assert_eq!(
        tf_store::runs::begin_run(&pool, &retry).await.unwrap(),
        tf_store::runs::Claim::Claimed { generation: 1, attempt: 2, succeeded: vec![] }
    );
    // Cancelled by an operator: a later event of the window neither starts it (the router
    // sees a live run) nor takes it over (the worker deduplicates); an operator's retry does.
    tf_store::runs::finish_run(&pool, &run_id, tf_store::runs::RunStatus::Cancelled).await.unwrap();
    let g = one(&pool, "k", 103).await;
    assert!(g.has_live_run(), "a cancelled run stays cancelled");
    let by_event = tf_store::runs::BeginRun { execution_id: "x4", ..begin };
    assert_eq!(tf_store::runs::begin_run(&pool, &by_event).await.unwrap(), tf_store::runs::Claim::StaysCancelled);
    let by_operator = tf_store::runs::BeginRun { execution_id: "x5", operator_retry: true, ..begin };
    assert_eq!(
        tf_store::runs::begin_run(&pool, &by_operator).await.unwrap(),
        tf_store::runs::Claim::Claimed { generation: 1, attempt: 3, succeeded: vec![] }
    );
    tf_store::runs::finish_run(&pool, &run_id, tf_store::runs::RunStatus::Completed).await.unwrap();
    let again = tf_store::runs::BeginRun { execution_id: "x3", ..begin };
    assert!(matches!(tf_store::runs::begin_run(&pool, &again).await.unwrap(), tf_store::runs::Claim::HeldBy { .. }));
}

#[tokio::test]
async fn a_key_postgres_cannot_store_fails_alone_and_says_so() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let err = resolve_generations(&pool, &[req("nul\0key", 1)]).await.unwrap_err();
    assert!(!err.is_transient(), "refused for good: {err}");
}

/// The backends that last ran a claim statement. This probe's own text names the function
/// too, so a pooled connection that last ran the probe is left out.
async fn claim_backends(pool: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%tf_resolve_generations%' AND query NOT LIKE '%pg_stat_activity%'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_held_connection_outlives_a_refused_key_and_is_replaced_once_it_breaks() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let mut held = tf_store::claims::HeldConnection::new(pool.clone());
    assert_eq!(held.resolve_generations(&[req("a", 1)]).await.unwrap()[0].generation, 1);
    let first: Vec<i32> = claim_backends(&pool).await;
    assert_eq!(first.len(), 1, "one backend served the claim: {first:?}");
    // A refused request is the request's fault: the connection stays.
    assert!(!held.resolve_generations(&[req("nul\0key", 1)]).await.unwrap_err().is_transient());
    assert_eq!(held.resolve_generations(&[req("a", 2)]).await.unwrap()[0].generation, 1);
    assert_eq!(claim_backends(&pool).await, first, "the same backend, not one per call");
    // Its backend killed (a PostgreSQL restart, a proxy's idle timeout): one transient failure,
    // then a fresh connection.
    sqlx::query("SELECT pg_terminate_backend($1)").bind(first[0]).execute(&pool).await.unwrap();
    let err = held.resolve_generations(&[req("b", 1)]).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let g = held.resolve_generations(&[req("b", 1)]).await.unwrap();
    assert_eq!((g[0].generation, g[0].created), (1, true), "the failed call changed nothing");
    let now: Vec<i32> = claim_backends(&pool).await;
    assert!(now.len() == 1 && now != first, "a new backend: {now:?} after {first:?}");
}

#[tokio::test]
async fn a_held_connection_idle_past_its_limit_goes_back_to_the_pool_so_a_killed_one_costs_no_failure() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    // Long enough that a loaded CI machine makes the second call within it.
    let limits = tf_store::claims::HoldLimits { idle: Duration::from_secs(3), total: Duration::from_secs(3600) };
    let mut held = tf_store::claims::HeldConnection::with_limits(pool.clone(), limits);
    assert_eq!(held.resolve_generations(&[req("a", 1)]).await.unwrap()[0].generation, 1);
    let first: Vec<i32> = claim_backends(&pool).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // Within the limit it is kept: the same backend.
    held.resolve_generations(&[req("a", 2)]).await.unwrap();
    assert_eq!(claim_backends(&pool).await, first);
    // Killed while idle (a proxy's idle timeout), then idle past the limit: the next call goes
    // through the pool, whose test before lending finds the dead connection and opens another,
    // so the call succeeds where a kept connection would fail once.
    sqlx::query("SELECT pg_terminate_backend($1)").bind(first[0]).execute(&pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let g = held.resolve_generations(&[req("b", 1)]).await.expect("no failure after an idle kill");
    assert_eq!((g[0].generation, g[0].created), (1, true));
    let now: Vec<i32> = claim_backends(&pool).await;
    assert!(now.len() == 1 && now != first, "a new backend: {now:?} after {first:?}");
}
