//! `tf demo roundtrip` and `tf demo events`: one envelope through the registry and Kafka and
//! back, and the burst of example events the README's first command routes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tf_config::Settings;
use tf_envelope::{Codec, Decoded, Event, Registry};

use crate::output::{Answer, say};

/// One envelope out through the registry and Kafka, and back in.
pub async fn roundtrip(settings: &Settings, topic: &str) -> anyhow::Result<Answer> {
    let codec = Codec::new(Arc::new(Registry::new(&settings.schema_registry_url)));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let mut event = Event::new(
        format!("demo-{nanos}"),
        "/taskfactory/demo",
        "io.taskfactory.demo.hello",
        json!({"greeting": "hello", "sent_by": "tf demo roundtrip"}),
    )?;
    event.subject = Some("demo".into());
    let traceparent = format!("00-{nanos:032x}-{:016x}-01", nanos as u64);
    event.traceparent = Some(traceparent.clone());

    let value = codec.encode_event(&format!("{topic}-value"), &event).await?;
    let producer: FutureProducer = tf_kafka::client_config(&settings.kafka_brokers).set("enable.idempotence", "true").create()?;
    let record = FutureRecord::to(topic)
        .key(event.id.as_str())
        .payload(&value)
        .headers(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(&traceparent) }));
    let delivery = producer
        .send(record, Duration::from_secs(15))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("producing to {topic} at {}", settings.kafka_brokers))?;
    let mut text = String::new();
    let schema_id = u32::from_be_bytes(value[1..5].try_into()?);
    say!(
        text,
        "produced  event {} ({}) to {topic}[{}]@{}: {} bytes, schema id {}",
        event.id,
        event.event_type,
        delivery.partition,
        delivery.offset,
        value.len(),
        schema_id
    );

    let consumer: BaseConsumer = tf_kafka::client_config(&settings.kafka_brokers)
        .set("group.id", "tf-demo-roundtrip")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, delivery.partition, Offset::Offset(delivery.offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let msg = loop {
        if std::time::Instant::now() > deadline {
            bail!("did not read back {topic}[{}]@{} within 15 s", delivery.partition, delivery.offset);
        }
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            break m?.detach();
        }
    };
    let header = msg.headers().and_then(|h| h.iter().find(|h| h.key == "traceparent")).and_then(|h| h.value).map(String::from_utf8_lossy);
    match codec.decode(msg.payload().unwrap_or_default()).await? {
        Decoded::Envelope { schema_id, event: back } => {
            say!(
                text,
                "consumed  {topic}[{}]@{}: envelope via schema id {schema_id}, traceparent header {}",
                msg.partition(),
                msg.offset(),
                header.as_deref().unwrap_or("-")
            );
            say!(text, "decoded   {}", serde_json::to_string_pretty(&back)?);
            anyhow::ensure!(back == event, "decoded event differs from the one produced");
            say!(text, "round trip OK: the decoded event equals the produced one");
            let answer = json!({"topic": topic, "partition": delivery.partition, "offset": delivery.offset, "schema_id": schema_id,
                                "traceparent": header.as_deref(), "event": back, "round_trip": "ok"});
            Ok(Answer::new(answer)?.text(text))
        }
        other => bail!("expected an envelope, decoded {other:?}"),
    }
}

/// A burst of example events for `examples/definitions`: orders (some small, so filtered out;
/// some from gold customers, so a human review; some repeated, so deduplicated), signups
/// (one e-mail twice) and one record that is not Avro (to the DLQ); then payments and
/// cancellations for some of the orders, which `order-payment` waits for.
pub async fn events(settings: &Settings, topic: &str, orders: usize) -> anyhow::Result<Answer> {
    let codec = Codec::new(Arc::new(Registry::new(&settings.schema_registry_url)));
    let producer: FutureProducer =
        tf_kafka::client_config(&settings.kafka_brokers).set("enable.idempotence", "true").set("linger.ms", "10").create()?;
    let batch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 100_000;
    let subject = format!("{topic}-value");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..orders {
        let order_id = format!("demo-{batch}-order-{}", i % (orders * 3 / 4).max(1)); // the last quarter repeats
        let amount = if i % 5 == 4 { 20 } else { 100 + 10 * i as i64 };
        let data = json!({
            "order_id": order_id,
            "amount": amount,
            "customer_tier": if i % 4 == 0 { "gold" } else { "silver" },
            // Customers of the stack's orders database (stack/orders-demo.sql).
            "customer_id": if i % 2 == 0 { "c-1001" } else { "c-1002" },
            "items": [{"sku": format!("sku-{}", i % 7), "qty": 1 + i % 3}, {"sku": "sku-gift", "qty": 1}],
        });
        let event = Event::new(format!("demo-{batch}-e{i}"), "/demo/shop", "com.example.order.created", data)?;
        records.push((order_id, codec.encode_event(&subject, &event).await?));
    }
    for (i, email) in ["ada@example.com", "grace@example.com", "ada@example.com"].iter().enumerate() {
        let email = format!("{batch}.{email}");
        let event = Event::new(
            format!("demo-{batch}-s{i}"),
            "/demo/signup",
            "com.example.user.signed_up",
            json!({"email": email, "name": "Demo"}),
        )?;
        records.push((email, codec.encode_event(&subject, &event).await?));
    }
    records.push((format!("demo-{batch}-bad"), b"{\"this\": \"is JSON, not Avro\"}".to_vec()));

    let mut sent = 0;
    for (key, value) in &records {
        send(&producer, topic, key, value).await?;
        sent += 1;
    }
    // What `order-payment` waits for (docs/steps.md): a payment for every third order and a
    // cancellation for every seventh, sent once the orders' runs had time to begin waiting (a
    // payment from before its wait began does not count).
    let mut later: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut payments, mut cancellations) = (0, 0);
    for i in 0..(orders * 3 / 4).max(1) {
        let order_id = format!("demo-{batch}-order-{i}");
        let (kind, id) = if i % 3 == 0 {
            payments += 1;
            ("com.example.payment.received", format!("demo-{batch}-pay{i}"))
        } else if i % 7 == 5 {
            cancellations += 1;
            ("com.example.order.cancelled", format!("demo-{batch}-cancel{i}"))
        } else {
            continue;
        };
        let amount = if i % 5 == 4 { 20 } else { 100 + 10 * i as i64 };
        let data = json!({"order_id": order_id, "amount": amount, "customer_id": if i % 2 == 0 { "c-1001" } else { "c-1002" }});
        later.push((order_id, codec.encode_event(&subject, &Event::new(id, "/demo/shop", kind, data)?).await?));
    }
    eprintln!("waiting {} s for the orders' runs to begin waiting for their payments ...", PAYMENTS_AFTER.as_secs());
    tokio::time::sleep(PAYMENTS_AFTER).await;
    for (key, value) in &later {
        send(&producer, topic, key, value).await?;
        sent += 1;
    }
    let text = format!(
        "produced {sent} records to {topic}: {orders} orders (every 5th under the filter's amount, the last quarter repeating earlier order ids), 3 signups (one e-mail twice), 1 record that is not Avro, then {payments} payments and {cancellations} cancellations\n"
    );
    let answer = json!({"topic": topic, "records": sent, "orders": orders, "signups": 3, "not_avro": 1,
                        "payments": payments, "cancellations": cancellations});
    Ok(Answer::new(answer)?.text(text))
}

/// How long after the orders their payments and cancellations are sent.
const PAYMENTS_AFTER: Duration = Duration::from_secs(5);

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(15))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("producing to {topic}"))?;
    Ok(())
}
