//! Interop with a client nobody here wrote: the Confluent Python client's AvroSerializer and
//! AvroDeserializer (PyPI `confluent-kafka`), through the same Kafka broker and registry.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value as Json, json};
use tf_envelope::{Codec, Decoded, Event, Registry, Timestamp};
use tf_testkit::{create_topic, delete_topics, python, repo_root, settings, unique};

fn run_python(args: &[&str]) -> Vec<Json> {
    let s = settings();
    let script = repo_root().join("crates/tf-envelope/tests/confluent_avro.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .args(["--brokers", &s.kafka_brokers, "--registry", &s.schema_registry_url])
        .output()
        .unwrap_or_else(|e| panic!("running {} with {}: {e}", script.display(), python().display()));
    assert!(out.status.success(), "python {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn records_from_the_confluent_serializer_decode_in_rust() {
    let s = settings();
    let topic = unique("it-interop-py2rs");
    create_topic(&s, &topic, 1).await;
    let schema = repo_root().join("schemas/avro/envelope.avsc");
    let sent = run_python(&["produce", "--topic", &topic, "--count", "4", "--schema", schema.to_str().unwrap()]);
    assert_eq!(sent.len(), 4);

    let consumer: BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", &topic).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let codec = Codec::new(Arc::new(Registry::new(&s.schema_registry_url)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < sent.len() && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else { continue };
        let msg = msg.unwrap();
        match codec.decode(msg.payload().unwrap()).await.unwrap() {
            Decoded::Envelope { event, .. } => got.push(event),
            other => panic!("expected an envelope, got {other:?}"),
        }
    }
    assert_eq!(got.len(), sent.len(), "read {} of {} records", got.len(), sent.len());
    for (event, py) in got.iter().zip(&sent) {
        assert_eq!(event.id, py["id"].as_str().unwrap());
        assert_eq!(event.source, "/interop/python");
        assert_eq!(event.event_type, "io.taskfactory.interop.python");
        assert_eq!(event.subject.as_deref(), py["subject"].as_str());
        assert_eq!(event.time, Timestamp(py["time"].as_i64().unwrap()));
        assert_eq!(event.data, serde_json::from_str::<Json>(py["data"].as_str().unwrap()).unwrap());
        assert_eq!(event.extensions.get("lang").map(String::as_str), Some("python"));
    }
    delete_topics(&s, &[&topic]).await;
}

#[tokio::test]
async fn records_from_the_rust_encoder_decode_with_the_confluent_deserializer() {
    let s = settings();
    let topic = unique("it-interop-rs2py");
    create_topic(&s, &topic, 1).await;
    let codec = Codec::new(Arc::new(Registry::new(&s.schema_registry_url)));
    let producer: FutureProducer = tf_kafka::client_config(&s.kafka_brokers).create().unwrap();
    let mut sent = Vec::new();
    for i in 0..3 {
        let mut event = Event::new(format!("rs-{i}"), "/interop/rust", "io.taskfactory.interop.rust", json!({"i": i})).unwrap();
        event.traceparent = Some(format!("00-{:032x}-{:016x}-01", i + 1, i + 1));
        event.extensions.insert("lang".into(), "rust".into());
        let bytes = codec.encode_event(&format!("{topic}-value"), &event).await.unwrap();
        producer.send(FutureRecord::to(&topic).key(&event.id).payload(&bytes), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        sent.push(event);
    }
    let got = run_python(&["consume", "--topic", &topic, "--count", "3"]);
    assert_eq!(got.len(), 3);
    for (py, event) in got.iter().zip(&sent) {
        assert_eq!(py["id"], event.id.as_str());
        assert_eq!(py["source"], "/interop/rust");
        assert_eq!(py["type"], "io.taskfactory.interop.rust");
        assert_eq!(py["specversion"], "1.0");
        assert_eq!(py["subject"], Json::Null);
        assert_eq!(py["time"].as_i64().unwrap(), event.time.millis());
        assert_eq!(serde_json::from_str::<Json>(py["data"].as_str().unwrap()).unwrap(), event.data);
        assert_eq!(py["traceparent"], event.traceparent.as_deref().unwrap());
        assert_eq!(py["extensions"], json!({"lang": "rust"}));
    }
    delete_topics(&s, &[&topic]).await;
}
