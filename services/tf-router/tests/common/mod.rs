//! What the router tests share: a fresh database, topics, a task queue, and the services.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tf_envelope::{Codec, Event, Registry};
use tf_testkit::{FreshDatabase, Service, apply_definition, create_topic, settings, unique, workspace_binary};

impl Drop for Setup {
    fn drop(&mut self) {
        let (topic, dlq) = (self.topic.clone(), self.dlq.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(tf_testkit::delete_topics(&settings(), &[&topic, &dlq]));
        })
        .join();
    }
}

pub struct Setup {
    pub db: FreshDatabase,
    pub pool: tf_store::PgPool,
    pub topic: String,
    pub dlq: String,
    pub queue: String,
    pub codec: Codec,
    pub producer: FutureProducer,
}

pub async fn setup(partitions: i32, definition: &str) -> Setup {
    let s = settings();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    // Not under `events.`: a router on its default subscription must not pick test topics up.
    let topic = unique("it-events");
    let dlq = unique("it-dlq");
    create_topic(&s, &topic, partitions).await;
    create_topic(&s, &dlq, 1).await;
    // Workflow ids derive from the definition id and are namespace-wide: make it unique.
    let def_id = unique("it-orders").to_lowercase();
    apply_definition(&pool, &definition.replace("TOPIC", &topic).replace("DEF_ID", &def_id)).await;
    Setup {
        db,
        pool,
        topic,
        dlq,
        queue: unique("it-queue"),
        codec: Codec::new(Arc::new(Registry::new(&s.schema_registry_url))),
        producer: tf_kafka::client_config(&s.kafka_brokers).set("linger.ms", "5").create().unwrap(),
    }
}

impl Setup {
    pub fn worker(&self) -> Service {
        Service::spawn(
            &workspace_binary("tf-worker"),
            &unique("tf-worker"),
            // `own`: the test's database as a datasource, for definitions whose context queries it.
            &[
                ("TF_DATABASE_URL", &self.db.url),
                ("TF_TASK_QUEUE", &self.queue),
                ("TF_NO_RELAY", "true"),
                ("TF_DATASOURCE__OWN__URL", &self.db.url),
            ],
        )
    }

    pub fn router(&self, group: &str, extra: &[(&str, &str)]) -> Service {
        let mut envs = vec![
            ("TF_DATABASE_URL", self.db.url.as_str()),
            ("TF_TASK_QUEUE", self.queue.as_str()),
            ("TF_ROUTER_TOPICS", self.topic.as_str()),
            ("TF_ROUTER_GROUP", group),
            ("TF_DLQ_TOPIC", self.dlq.as_str()),
            ("TF_ROUTER_METRICS_ADDR", "127.0.0.1:0"),
        ];
        envs.extend_from_slice(extra);
        Service::spawn(env!("CARGO_BIN_EXE_tf-router"), &unique("tf-router"), &envs)
    }

    pub async fn envelope(&self, id: &str, data: serde_json::Value) -> Vec<u8> {
        let e = Event::new(id, "/test", "com.example.order.created", data).unwrap();
        self.codec.encode_event(&format!("{}-value", self.topic), &e).await.unwrap()
    }

    pub async fn send(&self, partition: i32, key: &str, payload: &[u8]) {
        self.producer
            .send(FutureRecord::to(&self.topic).partition(partition).key(key).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    pub async fn runs(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE status <> 'deduplicated'").fetch_one(&self.pool).await.unwrap()
    }
}

/// The group's committed offsets, summed over partitions.
pub fn committed(group: &str, topic: &str, partitions: i32) -> i64 {
    let s = settings();
    let c: BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

impl Setup {
    /// An envelope whose `time` attribute is `time_ms`: event time decides the dedupe window.
    pub async fn envelope_at(&self, id: &str, data: serde_json::Value, time_ms: i64) -> Vec<u8> {
        let mut e = Event::new(id, "/test", "com.example.order.created", data).unwrap();
        e.time = tf_envelope::Timestamp(time_ms);
        self.codec.encode_event(&format!("{}-value", self.topic), &e).await.unwrap()
    }

    /// A worker that also runs the results relay (under its own transactional id).
    pub fn worker_with_relay(&self) -> Service {
        let relay_id = unique("it-relay");
        Service::spawn(
            &workspace_binary("tf-worker"),
            &unique("tf-worker"),
            &[("TF_DATABASE_URL", &self.db.url), ("TF_TASK_QUEUE", &self.queue), ("TF_RELAY_TRANSACTIONAL_ID", &relay_id)],
        )
    }

    /// Every record on the DLQ topic so far, by record key: (headers, value).
    pub fn dead_letters(&self, expected: usize) -> std::collections::HashMap<String, (std::collections::HashMap<String, String>, Vec<u8>)> {
        use rdkafka::Message;
        use rdkafka::message::Headers;
        let s = settings();
        let c: BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", unique("it-dlq-reader")).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq, 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut dead = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while dead.len() < expected && std::time::Instant::now() < deadline {
            let Some(m) = c.poll(Duration::from_millis(200)) else { continue };
            let m = m.unwrap();
            let h = tf_testkit::headers(&m);
            // The router owns these names: each appears once, written by the router.
            let names: Vec<&str> = m.headers().map(|hs| hs.iter().map(|h| h.key).collect()).unwrap_or_default();
            for name in names.iter().filter(|n| tf_kafka::dlq::is_reserved(n)) {
                assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name} repeated in a dead letter: {names:?}");
            }
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            dead.insert(key, (h, m.payload().unwrap_or_default().to_vec()));
        }
        dead
    }

    /// Runs by status, as (dedupe key, generation, status, attempt), ordered.
    pub async fn run_rows(&self) -> Vec<(String, i32, String, i32)> {
        sqlx::query_as("SELECT dedupe_key, generation, status, attempt FROM activity_runs ORDER BY dedupe_key, generation")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// `tf` with this setup's database and task queue: (success, stdout, stderr).
    pub fn tf(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(workspace_binary("tf"))
            .args(args)
            .env("TF_DATABASE_URL", &self.db.url)
            .env("TF_TASK_QUEUE", &self.queue)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
