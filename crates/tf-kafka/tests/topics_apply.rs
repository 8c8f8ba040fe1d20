//! Topic apply against the real Kafka broker.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use tf_kafka::topics::{self, Drift, Outcome, TopicSpec};
use tf_testkit::{delete_topics, kafka_admin, settings, topic_gone, unique};

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        replication_factor: 1,
        value_schema: None,
        config: BTreeMap::from([("cleanup.policy".into(), "delete".into()), ("retention.ms".into(), "3600000".into())]),
    }
}

#[tokio::test]
async fn apply_creates_then_is_a_no_op() {
    let s = settings();
    let (a, b) = (unique("it-topic-a"), unique("it-topic-b"));
    let specs = [spec(&a, 3), spec(&b, 1)];

    let first = topics::apply(&s.kafka_brokers, &specs).await.unwrap();
    assert!(first.iter().all(|r| r.outcome == Outcome::Created), "{first:?}");
    let second = topics::apply(&s.kafka_brokers, &specs).await.unwrap();
    assert!(second.iter().all(|r| r.outcome == Outcome::Unchanged), "{second:?}");

    let described = topics::describe(&kafka_admin(&s), &a).await.unwrap().expect("topic exists");
    assert_eq!(described.partitions, 3);
    assert_eq!(described.config["retention.ms"], "3600000");
    delete_topics(&s, &[&a, &b]).await;
}

#[tokio::test]
async fn delete_removes_topics_and_a_missing_one_is_no_error() {
    let s = settings();
    let (a, b) = (unique("it-topic-del-a"), unique("it-topic-del-b"));
    topics::apply(&s.kafka_brokers, &[spec(&a, 2), spec(&b, 1)]).await.unwrap();
    let admin = kafka_admin(&s);
    assert!(topics::describe(&admin, &a).await.unwrap().is_some());

    topics::delete(&s.kafka_brokers, &[&a, &b]).await.unwrap();
    for t in [&a, &b] {
        assert!(topic_gone(&s, t).await, "{t} still there after delete");
    }
    // Again, and a name that never existed: a cleanup may run twice.
    topics::delete(&s.kafka_brokers, &[&a, &unique("it-topic-never")]).await.unwrap();
    topics::delete(&s.kafka_brokers, &[]).await.unwrap();
}

#[tokio::test]
async fn drift_is_reported_and_left_alone() {
    let s = settings();
    let name = unique("it-topic-drift");
    topics::apply(&s.kafka_brokers, &[spec(&name, 2)]).await.unwrap();

    // Someone changed retention by hand on the broker.
    let admin = kafka_admin(&s);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&name)).set("retention.ms", "60000");
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    admin.alter_configs([&alter], &opts).await.unwrap().into_iter().for_each(|r| {
        r.unwrap();
    });

    // And the spec now asks for more partitions.
    let reports = topics::apply(&s.kafka_brokers, &[spec(&name, 4)]).await.unwrap();
    match &reports[0].outcome {
        Outcome::Drifted(drift) => {
            assert!(drift.contains(&Drift::Partitions { want: 4, have: 2 }), "{drift:?}");
            assert!(
                drift.contains(&Drift::Config { key: "retention.ms".into(), want: "3600000".into(), have: Some("60000".into()) }),
                "{drift:?}"
            );
        }
        other => panic!("expected drift, got {other:?}"),
    }
    // Reporting drift changed nothing on the broker.
    let described = topics::describe(&admin, &name).await.unwrap().unwrap();
    assert_eq!(described.partitions, 2);
    assert_eq!(described.config["retention.ms"], "60000");
    delete_topics(&s, &[&name]).await;
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error_not_a_hang() {
    let specs = [spec(&unique("it-topic-nobroker"), 1)];
    let err = topics::apply("127.0.0.1:9", &specs).await.unwrap_err();
    assert!(err.to_string().contains("topic it-topic-nobroker"), "{err}");
}
