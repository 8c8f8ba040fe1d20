//! Shared helpers for integration tests. They talk to the real services of `scripts/stack`
//! (or whatever the TF_* variables point at); nothing here stands in for a service.

// Test support: a helper that cannot do its job panics, which is how a test reports failure.
#![allow(clippy::unwrap_used)]

pub mod fault_proxy;
pub mod http_stub;
pub mod otlp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use sqlx::Connection;
pub use tf_config::Settings;

pub fn settings() -> Settings {
    Settings::from_env()
}

/// The workspace root, for committed files (`topics/`, `schemas/`, `docker-compose.yml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// A name no other test run uses, so tests share one stack without seeing each other's data.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
    format!("{prefix}-{}-{:x}-{}", std::process::id(), nanos % 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// The demo's "user database" (`stack/orders-demo.sql`) on the stack's PostgreSQL, as its
/// read-only role `orders_reader` reaches it.
pub fn orders_db_url(settings: &Settings) -> String {
    let after_at = settings.database_url.rsplit_once('@').map_or(settings.database_url.as_str(), |(_, h)| h);
    let host = after_at.split_once('/').map_or(after_at, |(h, _)| h);
    format!("postgres://orders_reader:orders-reader-demo@{host}/orders")
}

/// The demo's MySQL-compatible "shop database" (`stack/shop-demo.sql`) on the stack's
/// MariaDB, as its read-only user `shop_reader` reaches it; the port is `TF_MARIADB_PORT`
/// (from the environment, else the committed `.env`).
pub fn shop_db_url() -> String {
    let port = std::env::var("TF_MARIADB_PORT").ok().or_else(|| {
        let dotenv = std::fs::read_to_string(repo_root().join(".env")).ok()?;
        dotenv.lines().find_map(|l| l.strip_prefix("TF_MARIADB_PORT=").map(|p| p.trim().to_string()))
    });
    format!("mysql://shop_reader:shop-reader-demo@127.0.0.1:{}/shop", port.expect("TF_MARIADB_PORT in the environment or .env"))
}

/// A RunActivity input as the router builds it for an event on `events.demo`: dedupe `key`,
/// a one-hour window, the first generation; for tests that start runs without a router.
pub fn run_input(definition_id: &str, version: i32, key: &str, event: serde_json::Value) -> tf_temporal::RunInput {
    tf_temporal::RunInput {
        definition_id: definition_id.into(),
        definition_version: version,
        dedupe_key: key.into(),
        dedupe_window_secs: 3600,
        generation: 0,
        event_time_ms: None,
        trigger: tf_temporal::RunSource::event("events.demo", 0, 7, Some(format!("evt-{key}"))),
        event: Some(std::sync::Arc::new(event)),
        traceparent: None,
        operator_retry: false,
    }
}

/// The tool directory of `scripts/stack` (its Python virtualenv), unless TF_PYTHON says otherwise.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TF_PYTHON") {
        return p.into();
    }
    let cache = std::env::var("TF_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        let home = std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache"));
        home.join("taskfactory")
    });
    cache.join("venv/bin/python")
}

/// A tf-worker process for the database at `db_url` and task queue `queue`, with `extra`
/// settings on top (`TF_NO_RELAY`, a relay id, a metrics address, ...).
pub fn worker(db_url: &str, queue: &str, extra: &[(&str, &str)]) -> Service {
    let mut envs = vec![("TF_DATABASE_URL", db_url), ("TF_TASK_QUEUE", queue)];
    envs.extend_from_slice(extra);
    Service::spawn(&workspace_binary("tf-worker"), &unique("tf-worker"), &envs)
}

/// A brand-new, empty database on the stack's PostgreSQL, dropped when the guard is dropped.
pub struct FreshDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl FreshDatabase {
    pub async fn create(settings: &Settings) -> Self {
        let name = unique("tf_test").replace('-', "_");
        let admin_url = settings.database_url.clone();
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} ({e}); is `scripts/stack up` running?", tf_store::redact(&admin_url)));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
        let base = admin_url.rsplit_once('/').expect("database URL has a path").0;
        FreshDatabase { url: format!("{base}/{name}"), name, admin_url }
    }
}

impl FreshDatabase {
    /// A fresh database with the project's migrations applied, and a pool on it.
    pub async fn migrated(settings: &Settings) -> (Self, sqlx::PgPool) {
        let db = FreshDatabase::create(settings).await;
        let pool = tf_store::connect(&db.url).await.expect("connecting to the fresh database");
        tf_store::migrate(&pool).await.expect("migrating the fresh database");
        (db, pool)
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async context; a short-lived thread owns its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}

pub fn kafka_admin(settings: &Settings) -> AdminClient<DefaultClientContext> {
    tf_kafka::client_config(&settings.kafka_brokers).create().expect("Kafka admin client")
}

/// Creates a topic of `partitions` partitions through the project's own topic apply.
pub async fn create_topic(settings: &Settings, name: &str, partitions: i32) {
    let spec = tf_kafka::topics::TopicSpec {
        name: name.to_string(),
        partitions,
        replication_factor: 1,
        value_schema: None,
        config: Default::default(),
    };
    tf_kafka::topics::apply(&settings.kafka_brokers, &[spec])
        .await
        .unwrap_or_else(|e| panic!("creating topic {name} on {}: {e}; is `scripts/stack up` running?", settings.kafka_brokers));
}

/// Deletes test topics; failures are ignored (the topics carry unique names).
pub async fn delete_topics(settings: &Settings, topics: &[&str]) {
    let _ = tf_kafka::topics::delete(&settings.kafka_brokers, topics).await;
}

/// Whether `topic` is gone from the broker within 10 s (its metadata may trail a deletion).
pub async fn topic_gone(settings: &Settings, topic: &str) -> bool {
    let admin = kafka_admin(settings);
    for _ in 0..50 {
        if tf_kafka::topics::describe(&admin, topic).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A service binary of this workspace running against the stack; killed when dropped. The one
/// process wrapper of the repository: the tests and the load test (`loadtest/src/services.rs`)
/// start their services through it.
pub struct Service {
    child: std::process::Child,
    pub name: String,
    log: PathBuf,
}

impl Service {
    /// Spawns `binary` with the test's environment plus `envs`; its log goes to
    /// `$TMPDIR/<name>.log` so a failing test can point at it.
    pub fn spawn(binary: &str, name: &str, envs: &[(&str, &str)]) -> Service {
        Service::spawn_with_args(binary, &[], name, envs)
    }

    /// [`Service::spawn`] with command-line arguments. Every service runs under an
    /// address-space cap ([`MEMORY_CAP_BYTES`], `TF_TEST_MEMORY_CAP_MB` to change it), so an
    /// allocation bomb a test feeds it fails that test (the allocation fails, the service
    /// aborts) instead of taking the machine's memory.
    pub fn spawn_with_args(binary: &str, args: &[&str], name: &str, envs: &[(&str, &str)]) -> Service {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        Service::start(binary.as_ref(), args, name, &log, envs, Some(memory_cap_bytes()))
            .unwrap_or_else(|e| panic!("spawning {binary}: {e}"))
    }

    /// A helper tool a test drives (chromedriver), not a service under test: no address-space
    /// cap (a browser reserves tens of GB of address space it never uses).
    pub fn spawn_tool(binary: &str, args: &[&str], name: &str) -> Service {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        Service::start(binary.as_ref(), args, name, &log, &[], None).unwrap_or_else(|e| panic!("spawning {binary}: {e}"))
    }

    /// A service as a load test runs it: logging to `log`, without the tests' memory cap, and
    /// an error (not a panic) when it cannot start.
    pub fn start_logged(binary: &std::path::Path, name: &str, log: &std::path::Path, envs: &[(&str, &str)]) -> std::io::Result<Service> {
        Service::start(binary, &[], name, log, envs, None)
    }

    fn start(
        binary: &std::path::Path,
        args: &[&str],
        name: &str,
        log: &std::path::Path,
        envs: &[(&str, &str)],
        cap: Option<u64>,
    ) -> std::io::Result<Service> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(log)?;
        let mut command = std::process::Command::new(binary);
        command.args(args).envs(envs.iter().copied()).stdout(file.try_clone()?).stderr(file).stdin(std::process::Stdio::null());
        if let Some(cap) = cap {
            // SAFETY: setrlimit is async-signal-safe, and the closure touches no memory the
            // parent's other threads may hold locked (it only reads the captured integer).
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: cap, rlim_max: cap };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
                });
            }
        }
        Ok(Service { child: command.spawn()?, name: name.to_string(), log: log.to_path_buf() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it exited on its own (a supervisor's check).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, as an orchestrator stopping the service would; waits for the exit and returns
    /// whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (up to 90 s) until run `run_id` is no longer `running` and returns its status; `logs`
/// goes into the failure message.
pub async fn run_ended(pool: &sqlx::PgPool, run_id: &str, logs: &str) -> String {
    eventually(&format!("run {run_id} to end; logs:\n{logs}"), Duration::from_secs(90), || async {
        let s: Option<String> =
            sqlx::query_scalar("SELECT status FROM activity_runs WHERE run_id = $1").bind(run_id).fetch_optional(pool).await.unwrap();
        s.filter(|s| s != "running" && s != "waiting")
    })
    .await
}

/// Path of another binary of this workspace (tests of one package cannot name the binaries of
/// another with `CARGO_BIN_EXE_*`). `cargo test --workspace` builds them all.
pub fn workspace_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` (scripts/test does)", path.display());
    path.display().to_string()
}

/// Stores a definition from YAML as `tf definitions apply` does; returns its id and version.
pub async fn apply_definition(pool: &sqlx::PgPool, yaml: &str) -> (String, i32) {
    use tf_store::definitions::{ApplyOutcome, NewDefinition, apply};
    let d = tf_definitions::Definition::from_yaml("test", yaml).unwrap_or_else(|e| panic!("{e}")).remove(0);
    let (spec, sha) = (d.spec_json(), d.spec_sha256());
    let new =
        NewDefinition { id: &d.id, name: &d.name, enabled: d.enabled, trigger_kind: d.trigger.kind(), spec: &spec, spec_sha256: &sha };
    let version = match apply(pool, &new).await.expect("storing the definition") {
        ApplyOutcome::Created { version } | ApplyOutcome::NewVersion { version, .. } | ApplyOutcome::Unchanged { version } => version,
        ApplyOutcome::EnabledChanged { version, .. } | ApplyOutcome::Restored { version } => version,
    };
    (d.id, version)
}

/// The committed results of runs whose id starts with `prefix`, once there is at least one
/// (`what` names the wait in the failure).
pub async fn published_results(what: &str, prefix: &str, within: Duration) -> Vec<serde_json::Value> {
    eventually(what, within, || async {
        let r = results_for(prefix).await;
        (!r.is_empty()).then_some(r)
    })
    .await
}

/// The JSON values of partition 0 of `topic` from the start: `n` of them, or what arrived
/// within 30 s; then a second more, so a test that expects exactly `n` sees a surplus.
pub async fn read_json_values(topic: &str, n: usize) -> Vec<serde_json::Value> {
    use rdkafka::Message;
    use rdkafka::consumer::Consumer;
    let s = settings();
    let c: rdkafka::consumer::BaseConsumer = tf_kafka::client_config(&s.kafka_brokers).set("group.id", unique("it-read")).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut counted = false;
    while std::time::Instant::now() < deadline {
        if out.len() >= n && !counted {
            counted = true;
            deadline = std::time::Instant::now() + Duration::from_secs(1);
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
        }
    }
    out
}

/// Every committed result on taskfactory.results for runs whose id starts with `prefix`.
pub async fn results_for(prefix: &str) -> Vec<serde_json::Value> {
    result_records(prefix).await.into_iter().map(|(_, value)| value).collect()
}

/// Like [`results_for`], with each record's headers.
pub async fn result_records(prefix: &str) -> Vec<(std::collections::HashMap<String, String>, serde_json::Value)> {
    let s = settings();
    let consumer: rdkafka::consumer::BaseConsumer = tf_kafka::client_config(&s.kafka_brokers)
        .set("group.id", unique("it-results"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some("taskfactory.results"), Duration::from_secs(10)).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut highs = std::collections::HashMap::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset("taskfactory.results", p.id(), rdkafka::Offset::Beginning).unwrap();
        highs.insert(p.id(), consumer.fetch_watermarks("taskfactory.results", p.id(), Duration::from_secs(10)).unwrap().1);
    }
    consumer.assign(&tpl).unwrap();
    let codec = tf_envelope::Codec::new(std::sync::Arc::new(tf_envelope::Registry::new(&s.schema_registry_url)));
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let done = consumer.position().unwrap().elements().iter().all(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o >= highs[&e.partition()],
            _ => highs[&e.partition()] == 0,
        });
        if done {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.unwrap();
        if !m.key().is_some_and(|k| k.starts_with(prefix.as_bytes())) {
            continue;
        }
        match codec.decode(m.payload().unwrap()).await.unwrap() {
            tf_envelope::Decoded::Record { full_name, value, .. } => {
                assert_eq!(full_name, "io.taskfactory.TaskResult");
                out.push((headers(&m), value));
            }
            other => panic!("{other:?}"),
        }
    }
    out
}

/// A record's headers as text, by key (none: empty).
pub fn headers(m: &impl Message) -> std::collections::HashMap<String, String> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
        .unwrap_or_default()
}

/// The address space a service under test may map: far above what the services use (about
/// 0.6 GB of mostly reserved address space, 40–60 MB resident) and far below the machine's
/// memory.
pub const MEMORY_CAP_BYTES: u64 = 4 << 30;

fn memory_cap_bytes() -> u64 {
    std::env::var("TF_TEST_MEMORY_CAP_MB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(MEMORY_CAP_BYTES, |mb| mb << 20)
}

/// Avro's zig-zag varint of `n`: the count and length prefixes hostile-input tests forge.
pub fn avro_long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// A process's peak resident set (`VmHWM`), in bytes: what a hostile input made it hold at most.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is alive");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

/// The records on a topic's partition so far (its high watermark).
pub fn high_watermark(settings: &Settings, topic: &str, partition: i32) -> i64 {
    let c: rdkafka::consumer::BaseConsumer = tf_kafka::client_config(&settings.kafka_brokers).create().expect("consumer");
    c.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks").1
}

/// A loopback address with a port nobody listens on right now.
pub fn free_local_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").to_string()
}

/// One Prometheus counter or gauge (`name` with labels, as rendered) scraped from `addr`.
pub fn scrape_metric(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// The HTTP status of `GET path` on `addr` (the services' metrics/health port).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_whitespace().nth(1)?.parse().ok()
}
