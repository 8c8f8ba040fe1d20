//! `tf-loadtest peer`: the plain client issue 13 measures the router against. It reads a burst
//! from Kafka, decodes each envelope and starts a RunActivity workflow per event with the
//! router's own start call (same SDK, ids, policies, search attributes, 64 in flight), with no
//! claim lookup: a repeated key costs a start that Temporal refuses as a duplicate. Workflows go
//! to a task queue nobody polls and close by themselves a minute later, as `bare`'s do.
//!
//! Next to `bare` (starts only) it shows what reading Kafka costs any client on this machine;
//! against the router on the same burst it is the "peer" of the duplicate goal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tf_config::Settings;
use tf_envelope::{Codec, Event, Registry};
use tf_temporal::{RunInput, RunSource, StartOutcome};

use crate::bare::Tally;
use crate::now_ms;

#[derive(clap::Args)]
pub struct PeerArgs {
    /// Events in the burst.
    #[arg(long, default_value_t = 6000)]
    events: usize,
    /// Share of events that repeat an earlier key (as the burst of `tf-loadtest` does).
    #[arg(long, default_value_t = 0.3)]
    duplicates: f64,
    /// Starts in flight at once (the router's TF_ROUTER_MAX_IN_FLIGHT default).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Partitions of the burst's topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

pub async fn run(s: &Settings, a: &PeerArgs, made: &mut crate::made::Made) -> anyhow::Result<std::process::ExitCode> {
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-loadtest-peer").await?;
    let nonce = now_ms() % 10_000_000;
    // Not under `events.`: the router must not read the peer's burst.
    let topic = format!("loadtest-peer-{nonce}");
    let queue = format!("tf-loadtest-peer-{nonce}");
    let definition = format!("loadtest-peer-{nonce}");
    tf_kafka::topics::apply(&s.kafka_brokers, &[crate::load_topic(&topic, a.partitions, Duration::from_secs(3600))]).await?;
    made.topic(&topic);
    let codec = Codec::new(Arc::new(Registry::new(&s.schema_registry_url)));
    let unique_keys = ((a.events as f64) * (1.0 - a.duplicates)).round().max(1.0) as usize;
    let mut payloads = Vec::with_capacity(a.events);
    for i in 0..a.events {
        let key = format!("k-{}", if i < unique_keys { i } else { i % unique_keys });
        let e = Event::new(format!("lt-{i}"), "/loadtest", "loadtest", json!({"key": key}))?;
        payloads.push((key, codec.encode_event(&format!("{topic}-value"), &e).await?));
    }
    // Assigned, not subscribed: no group join in the figures (the router has joined before a
    // burst too).
    let consumer: StreamConsumer =
        tf_kafka::client_config(&s.kafka_brokers).set("group.id", format!("tf-loadtest-peer-{nonce}")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: FutureProducer =
        tf_kafka::client_config(&s.kafka_brokers).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    // One start outside the figures: connection and namespace lookups.
    let warm = RunInput {
        definition_id: definition.clone(),
        definition_version: 1,
        dedupe_key: "warm-up".into(),
        dedupe_window_secs: 3600,
        generation: 1,
        event_time_ms: Some(now_ms()),
        trigger: RunSource::event(&topic, 0, -1, None),
        event: None,
        traceparent: None,
        operator_retry: false,
    };
    tf_temporal::start_run_expiring(&client, &queue, warm, Duration::from_secs(60)).await?;

    println!("peer: {} events ({unique_keys} unique keys) on {topic}, read and started with {} in flight", a.events, a.concurrency);
    let started = Instant::now();
    let sends =
        payloads.iter().map(|(key, bytes)| producer.send(FutureRecord::to(&topic).key(key).payload(bytes), Duration::from_secs(30)));
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| e)?;
    }
    let outcomes: Vec<(anyhow::Result<StartOutcome>, Duration)> = consumer
        .stream()
        .take(a.events)
        .map(|m| {
            let (client, queue, codec, definition) = (client.clone(), queue.clone(), &codec, definition.clone());
            async move {
                let t0 = Instant::now();
                let r: anyhow::Result<StartOutcome> = async {
                    let m = m?;
                    let event = codec.decode_checked(m.payload().unwrap_or_default(), None).await?.into_event_json(
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.timestamp().to_millis(),
                    )?;
                    let key = event["data"]["key"].as_str().unwrap_or_default().to_string();
                    let input = RunInput {
                        definition_id: definition,
                        definition_version: 1,
                        dedupe_key: key,
                        dedupe_window_secs: 3600,
                        generation: 1,
                        event_time_ms: Some(now_ms()),
                        trigger: RunSource::event(m.topic(), m.partition(), m.offset(), event["id"].as_str().map(String::from)),
                        event: Some(Arc::new(event)),
                        traceparent: None,
                        operator_retry: false,
                    };
                    Ok(tf_temporal::start_run_expiring(&client, &queue, input, Duration::from_secs(60)).await?)
                }
                .await;
                (r, t0.elapsed())
            }
        })
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let tally = Tally::of(outcomes.into_iter().map(|(r, took)| (r.map_err(|e| format!("{e:#}")), took)), "event failed");
    let (runs, refused, failed) = (tally.started, tally.refused, tally.failed);
    println!("\n=== tf-loadtest peer report ===");
    println!("events                 {}  ({unique_keys} unique keys, {:.0}% duplicates)", a.events, a.duplicates * 100.0);
    println!("runs started           {runs}  (expected {unique_keys}); refused by Temporal as duplicates {refused}; failed {failed}");
    println!(
        "throughput             {:.0} events/s  ({secs:.1} s from the first send to the last start acknowledged)",
        a.events as f64 / secs
    );
    println!("start latency          p50 {:.1} ms  p99 {:.1} ms", tally.percentile_ms(0.5), tally.percentile_ms(0.99));
    Ok(if failed == 0 && runs == unique_keys { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}
