//! Event waits (`tf_store::waits`) on the real PostgreSQL: a wait that begins while a router
//! handles its event meets it exactly once, whichever commits first; what counts is decided by
//! the record's timestamp; a timeout loses to an earlier claim; a replay of a taken event tells
//! nobody.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use serde_json::json;
use tf_definitions::RunId;
use tf_store::waits::{self, IncomingEvent, NewWait, Source, WaitKind};
use tf_testkit::{FreshDatabase, settings};

fn wait(id: &str, key: &str, since_ms: i64) -> NewWait {
    NewWait {
        wait_id: id.into(),
        kind: WaitKind::Step,
        run_id: RunId::from_workflow_id(format!("run/{id}")),
        event_type: "paid".into(),
        topics: vec![],
        incoming: "event.data.order".into(),
        matcher: "m".into(),
        match_key: key.into(),
        since_ms,
        until_ms: None,
    }
}

/// What the worker's BeginWait does: record the wait, then look back for a remembered event.
async fn begin_and_look_back(pool: &sqlx::PgPool, w: &NewWait) {
    waits::begin(pool, w).await.unwrap();
    for (event, source) in waits::recent_events(pool, w).await.unwrap() {
        if event["data"]["order"] == w.match_key.as_str() {
            waits::claim(pool, &w.wait_id, &event, &source).await.unwrap();
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_and_its_event_racing_meet_exactly_once() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let rounds = 200;
    let mut by_router = 0;
    for i in 0..rounds {
        let key = format!("o-{i}");
        let w = wait(&format!("w-{i}"), &key, 1_000);
        let event = json!({"id": format!("p-{i}"), "type": "paid", "data": {"order": key}});
        let source = Source { topic: "t".into(), partition: 0, offset: i };
        let router = {
            let (pool, event, source, key) = (pool.clone(), event.clone(), source.clone(), key.clone());
            tokio::spawn(async move {
                let e = IncomingEvent { event_type: "paid", event: &event, source: &source, record_ms: 2_000 };
                waits::remember(&pool, &e).await.unwrap();
                waits::deliver(&pool, &e, &[("m".into(), key)]).await.unwrap()
            })
        };
        let worker = {
            let pool = pool.clone();
            tokio::spawn(async move { begin_and_look_back(&pool, &w).await })
        };
        let (told, ()) = (router.await.unwrap(), worker.await.unwrap());
        by_router += usize::from(!told.is_empty());
        let d = waits::delivery(&pool, &format!("w-{i}")).await.unwrap();
        assert_eq!(d.map(|d| d.event), Some(event), "round {i}: the event reached its wait");
    }
    println!("waits: {by_router} of {rounds} deliveries found by the router, the rest by the wait's look-back");
}

#[tokio::test]
async fn what_counts_is_decided_by_the_record_time_and_once() {
    let (_db, pool) = FreshDatabase::migrated(&settings()).await;
    let event = |id: &str, key: &str| json!({"id": id, "type": "paid", "data": {"order": key}});
    let source = |offset: i64| Source { topic: "t".into(), partition: 0, offset };

    // An event from before the wait began counts neither for the router nor the look-back.
    let early = event("p-early", "a");
    let e = IncomingEvent { event_type: "paid", event: &early, source: &source(0), record_ms: 999 };
    waits::remember(&pool, &e).await.unwrap();
    begin_and_look_back(&pool, &wait("w-a", "a", 1_000)).await;
    assert!(waits::deliver(&pool, &e, &[("m".into(), "a".into())]).await.unwrap().is_empty());
    assert_eq!(waits::delivery(&pool, "w-a").await.unwrap(), None);
    // A timeout on an open wait ends it; a later event finds nothing to deliver to.
    assert_eq!(waits::time_out(&pool, "w-a").await.unwrap(), None);
    let late = event("p-late", "a");
    let e = IncomingEvent { event_type: "paid", event: &late, source: &source(1), record_ms: 5_000 };
    assert!(waits::deliver(&pool, &e, &[("m".into(), "a".into())]).await.unwrap().is_empty());

    // A claim before the timeout wins: the timeout returns the event, and the run has taken it.
    begin_and_look_back(&pool, &wait("w-b", "b", 1_000)).await;
    let paid = event("p-b", "b");
    let e = IncomingEvent { event_type: "paid", event: &paid, source: &source(2), record_ms: 2_000 };
    let told = waits::deliver(&pool, &e, &[("m".into(), "b".into())]).await.unwrap();
    assert_eq!(told.iter().map(|d| d.wait_id.as_str()).collect::<Vec<_>>(), ["w-b"]);
    assert_eq!(waits::time_out(&pool, "w-b").await.unwrap().map(|d| d.event), Some(paid.clone()));
    assert!(waits::deliver(&pool, &e, &[("m".into(), "b".into())]).await.unwrap().is_empty(), "taken: nobody to tell");

    // The same record again (a router that died before telling): the run is told again ...
    begin_and_look_back(&pool, &wait("w-d", "d", 1_000)).await;
    let paid_d = event("p-d", "d");
    let e = IncomingEvent { event_type: "paid", event: &paid_d, source: &source(5), record_ms: 2_000 };
    assert_eq!(waits::deliver(&pool, &e, &[("m".into(), "d".into())]).await.unwrap().len(), 1);
    assert_eq!(waits::deliver(&pool, &e, &[("m".into(), "d".into())]).await.unwrap().len(), 1);
    // ... until it took the event (twice, as a retried activity would); a replay then tells
    // nobody, and a second event changes nothing.
    assert_eq!(waits::take(&pool, "w-d").await.unwrap().map(|d| d.event), Some(paid_d.clone()));
    assert_eq!(waits::take(&pool, "w-d").await.unwrap().map(|d| d.event), Some(paid_d.clone()));
    assert!(waits::deliver(&pool, &e, &[("m".into(), "d".into())]).await.unwrap().is_empty());
    let other = event("p-d2", "d");
    let e2 = IncomingEvent { event_type: "paid", event: &other, source: &source(6), record_ms: 3_000 };
    assert!(waits::deliver(&pool, &e2, &[("m".into(), "d".into())]).await.unwrap().is_empty());
    assert_eq!(waits::delivery(&pool, "w-d").await.unwrap().map(|d| d.event), Some(paid_d));

    // Topics restrict where the event may come from.
    let mut w = wait("w-c", "c", 1_000);
    w.topics = vec!["payments".into()];
    begin_and_look_back(&pool, &w).await;
    let c = event("p-c", "c");
    let wrong = IncomingEvent { event_type: "paid", event: &c, source: &source(4), record_ms: 2_000 };
    assert!(waits::deliver(&pool, &wrong, &[("m".into(), "c".into())]).await.unwrap().is_empty());
    let right_source = Source { topic: "payments".into(), partition: 0, offset: 0 };
    let right = IncomingEvent { event_type: "paid", event: &c, source: &right_source, record_ms: 2_000 };
    assert_eq!(waits::deliver(&pool, &right, &[("m".into(), "c".into())]).await.unwrap().len(), 1);
}
