//! How fast routing resumes after a router is SIGKILLed: with a stable instance id (Kafka's
//! static membership) the restarted router takes its partitions back at once; without one the
//! group waits for the dead member's session to expire (`TF_ROUTER_SESSION_TIMEOUT_MS`,
//! 10 s by default instead of Kafka's 45 s). The figures are printed, not asserted.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::time::{Duration, Instant};

use serde_json::json;
use tf_testkit::{eventually, unique};

mod common;

use common::{committed, setup};

const ORDERS: &str = r#"
id: DEF_ID
name: Orders
trigger: {event: {topics: [TOPIC], type: com.example.order.*}}
dedupe: {key: event.data.order_id}
tasks:
  - {name: noop, type: human, when: "false"}
"#;

/// KIP-848 (`TF_ROUTER_GROUP_PROTOCOL=consumer`, Kafka 4.1, librdkafka 2.12) keeps a killed
/// static member in the group until the broker's session timeout (45 s): its restart is
/// refused with a fatal UnreleasedInstanceId. The router exits on that instead of idling
/// while looking alive, so its supervisor restarts it; and that measurement is why the
/// classic protocol with static membership is the default.
#[tokio::test]
async fn under_kip_848_a_fenced_restart_exits_instead_of_idling() {
    let t = setup(1, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let instance = unique("router");
    let env = [("TF_ROUTER_INSTANCE_ID", instance.as_str()), ("TF_ROUTER_GROUP_PROTOCOL", "consumer")];
    let mut router = t.router(&group, &env);
    t.send(0, "a", &t.envelope("e0", json!({"order_id": "o-0"})).await).await;
    eventually("a run under the consumer protocol", Duration::from_secs(60), || async { (t.runs().await == 1).then_some(()) }).await;
    router.kill();
    let restarted = t.router(&group, &env);
    eventually("the restarted router to exit naming the reason", Duration::from_secs(60), || async {
        restarted.log().contains("the previous member with this TF_ROUTER_INSTANCE_ID is still in the group").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_router_is_replaced_in_seconds_and_nothing_is_lost() {
    let t = setup(2, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let instance = unique("router");
    let mut router = t.router(&group, &[("TF_ROUTER_INSTANCE_ID", &instance)]);
    t.send(0, "a", &t.envelope("e0", json!({"order_id": "o-0"})).await).await;
    t.send(1, "b", &t.envelope("e1", json!({"order_id": "o-1"})).await).await;
    eventually("2 runs", Duration::from_secs(60), || async { (t.runs().await == 2).then_some(()) }).await;

    // Same instance id: static membership hands the partitions straight back.
    router.kill();
    let killed = Instant::now();
    router = t.router(&group, &[("TF_ROUTER_INSTANCE_ID", &instance)]);
    t.send(0, "c", &t.envelope("e2", json!({"order_id": "o-2"})).await).await;
    t.send(1, "d", &t.envelope("e3", json!({"order_id": "o-3"})).await).await;
    eventually("4 runs", Duration::from_secs(120), || async { (t.runs().await == 4).then_some(()) }).await;
    let static_stall = killed.elapsed();

    // No instance id: the group waits for the dead member's session to end.
    router.kill();
    let killed = Instant::now();
    let _router = t.router(&group, &[("TF_ROUTER_SESSION_TIMEOUT_MS", "6000")]);
    t.send(0, "e", &t.envelope("e4", json!({"order_id": "o-4"})).await).await;
    t.send(1, "f", &t.envelope("e5", json!({"order_id": "o-5"})).await).await;
    eventually("6 runs", Duration::from_secs(120), || async { (t.runs().await == 6).then_some(()) }).await;
    let dynamic_stall = killed.elapsed();
    println!(
        "RECOVERY FIGURES: after SIGKILL, routing resumed in {:.1} s with TF_ROUTER_INSTANCE_ID (static membership), {:.1} s without (the dead member's 10 s session)",
        static_stall.as_secs_f64(),
        dynamic_stall.as_secs_f64()
    );
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT dedupe_key FROM activity_runs ORDER BY dedupe_key").fetch_all(&t.pool).await.unwrap();
    assert_eq!(keys, ["o-0", "o-1", "o-2", "o-3", "o-4", "o-5"], "no event lost");
}

#[tokio::test]
async fn two_routers_share_a_group_and_the_survivor_takes_every_partition_when_one_dies() {
    let t = setup(3, ORDERS).await;
    let _worker = t.worker();
    let group = unique("it-group");
    let mut first = t.router(&group, &[]);
    let _second = t.router(&group, &[]);
    // Keys 0..150 once, then 0..50 again, over the three partitions; one router dies midway.
    for i in 0..200usize {
        let k = if i < 150 { i } else { i - 150 };
        t.send((i % 3) as i32, &format!("k{i}"), &t.envelope(&format!("e{i}"), json!({"order_id": format!("o-{k}")})).await).await;
        if i == 100 {
            first.kill();
        }
    }
    // Events after the death, on every partition: only the survivor can route them.
    for i in 0..30usize {
        t.send((i % 3) as i32, &format!("late{i}"), &t.envelope(&format!("late-e{i}"), json!({"order_id": format!("late-{i}")})).await)
            .await;
    }
    eventually("180 runs", Duration::from_secs(180), || async { (t.runs().await >= 180).then_some(()) }).await;
    eventually("every record committed", Duration::from_secs(60), || async { (committed(&group, &t.topic, 3) == 230).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_key: Vec<(String, i64)> =
        sqlx::query_as("SELECT dedupe_key, count(*) FROM activity_runs WHERE status <> 'deduplicated' GROUP BY 1")
            .fetch_all(&t.pool)
            .await
            .unwrap();
    assert_eq!(per_key.len(), 180, "150 keys before, 30 after");
    assert!(per_key.iter().all(|(_, n)| *n == 1), "exactly one run per key");
}
