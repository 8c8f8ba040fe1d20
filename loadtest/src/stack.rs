//! Helpers every mode shares: definitions and topics of its own, the connection settings a
//! spawned service gets, committed offsets, runs counted, CPU and memory of the stack's
//! processes, the timeline file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tf_config::Settings;
use tf_definitions::Definition;

/// Stores an event definition from YAML, as `tf definitions apply` does.
pub(crate) async fn apply_event_definition(pool: &tf_store::PgPool, yaml: &str) -> anyhow::Result<()> {
    let d = Definition::from_yaml("loadtest", yaml)?.remove(0);
    let (spec, sha) = (d.spec_json(), d.spec_sha256());
    let new = tf_store::definitions::NewDefinition {
        id: &d.id,
        name: &d.name,
        enabled: true,
        trigger_kind: "event",
        spec: &spec,
        spec_sha256: &sha,
    };
    tf_store::definitions::apply(pool, &new).await?;
    Ok(())
}

/// The connection settings for a service this tool starts, as the services read them, with
/// the database it is to use.
pub(crate) fn connection_env(s: &Settings, database_url: &str) -> Vec<(String, String)> {
    [
        ("TF_KAFKA_BROKERS", s.kafka_brokers.as_str()),
        ("TF_SCHEMA_REGISTRY_URL", s.schema_registry_url.as_str()),
        ("TF_TEMPORAL_URL", s.temporal_url.as_str()),
        ("TF_TEMPORAL_NAMESPACE", s.temporal_namespace.as_str()),
        ("TF_DATABASE_URL", database_url),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into()
}

/// A topic of the load test's own: one replica, kept for `retention` unless the run removes it
/// (`made`).
pub(crate) fn load_topic(name: &str, partitions: i32, retention: Duration) -> tf_kafka::topics::TopicSpec {
    tf_kafka::topics::TopicSpec {
        name: name.to_string(),
        partitions,
        replication_factor: 1,
        value_schema: None,
        config: [("retention.ms".to_string(), retention.as_millis().to_string())].into(),
    }
}

/// Runs of the load test's definition that were not deduplicated (0 while PostgreSQL is away).
pub(crate) async fn runs_of(pool: &tf_store::PgPool, def_id: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM activity_runs WHERE definition_id = $1 AND status <> 'deduplicated'")
        .bind(def_id)
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// The committed offsets of `consumer`'s group on `topic`, summed over its partitions.
pub(crate) fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32, timeout: Duration) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    Ok(consumer.committed_offsets(tpl, timeout)?.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum())
}

/// A client that only reads `group`'s committed offsets.
pub(crate) fn group_reader(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(tf_kafka::client_config(brokers).set("group.id", group).create()?)
}

/// Writes the per-second timeline as CSV (`header`, then one line a sample) and says where.
pub(crate) fn write_timeline(path: &std::path::Path, header: &str, timeline: &[(f64, i64, i64)]) -> anyhow::Result<()> {
    let mut text = format!("{header}\n");
    for (t, a, b) in timeline {
        text.push_str(&format!("{t:.1},{a},{b}\n"));
    }
    std::fs::write(path, text)?;
    println!("timeline               {}", path.display());
    Ok(())
}

/// (pid, VmRSS KiB, VmHWM KiB) of every process named `tf-router` on this machine (Linux).
pub(crate) fn router_memory() -> Vec<(u32, u64, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let kib = |status: &str, field: &str| {
        status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim() != "tf-router" {
                return None;
            }
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            Some((pid, kib(&status, "VmRSS:")?, kib(&status, "VmHWM:")?))
        })
        .collect()
}

/// CPU seconds used so far by the processes named `comm` on this machine, with their reaped
/// children's (PostgreSQL's backends that ended), from /proc (Linux; 0 elsewhere). Ticks are
/// USER_HZ, which Linux fixes at 100 a second for /proc whatever the kernel's own rate.
pub(crate) fn cpu_seconds(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    let ticks: u64 = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if name.trim() != comm {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the parenthesised name: state is 3rd, utime..cstime are 14th..17th.
            let after = stat.rsplit_once(") ")?.1;
            Some(after.split_whitespace().skip(11).take(4).filter_map(|f| f.parse::<u64>().ok()).sum::<u64>())
        })
        .sum();
    ticks as f64 / 100.0
}

/// CPU spent by the router and by a PostgreSQL on this machine between two instants.
pub(crate) struct CpuSpent {
    router: f64,
    postgres: f64,
}

impl CpuSpent {
    pub(crate) fn now() -> CpuSpent {
        CpuSpent { router: cpu_seconds("tf-router"), postgres: cpu_seconds("postgres") }
    }

    /// "tf-router 6.1 s (1.02 ms/event)", and PostgreSQL's if it runs here.
    pub(crate) fn report_since(&self, events: usize) -> String {
        let now = CpuSpent::now();
        let per = |s: f64| format!("{s:.1} s ({:.2} ms/event)", 1000.0 * s / events.max(1) as f64);
        let mut line = format!("tf-router {}", per(now.router - self.router));
        if now.postgres > 0.0 {
            line.push_str(&format!(", postgres {}", per(now.postgres - self.postgres)));
        }
        line
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}
