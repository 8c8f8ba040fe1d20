//! `tf-loadtest chaos`: the pipeline under faults. Runs its own tf-router and tf-worker on a
//! fresh database, topic, DLQ, consumer group and task queue, produces events at a steady rate
//! (some keys repeated, each run spawning 1–3 kafka tasks) while a fault schedule SIGKILLs the
//! router every K seconds, SIGKILLs the worker M times and restarts Temporal, Kafka, PostgreSQL
//! and the registry once each through `scripts/stack restart`. Then it waits for the pipeline
//! to drain and checks invariants 1 and 2 of docs/design.md: exactly one run per key, exactly one
//! result per task on `taskfactory.results` (read_committed), nothing in the DLQ. It prints how
//! long each fault stalled routing and exits non-zero on any loss or duplicate.
//!
//! The fault schedule and the final check are one experiment, read top to bottom; the processes
//! it kills and revives are `services.rs`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::Connection;
use tf_config::Settings;
use tf_envelope::{Codec, Event, Registry};

use crate::services::{Services, default_bin_dir};

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Events to produce.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Share of events that repeat an earlier key.
    #[arg(long, default_value_t = 0.3)]
    duplicates: f64,
    /// Events per second (steady arrival, so faults land mid-stream).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Partitions of the chaos topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// SIGKILL the router once per this many seconds of production (0: never). Faults happen one
    /// at a time, `--fault-gap` seconds after the previous one finished; choose `--events` and
    /// `--rate` so production outlasts them.
    #[arg(long, default_value_t = 15)]
    kill_router_every: u64,
    /// SIGKILL the worker this many times while producing.
    #[arg(long, default_value_t = 2)]
    kill_worker: u32,
    /// Seconds between the end of one fault and the start of the next.
    #[arg(long, default_value_t = 8)]
    fault_gap: u64,
    /// Stack services to restart once each while producing (`scripts/stack restart`).
    #[arg(long, value_delimiter = ',', default_value = "temporal,kafka,postgres,registry")]
    restart: Vec<String>,
    /// Folder with tf-router and tf-worker (default: beside this binary).
    #[arg(long, env = "TF_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The stack script that restarts services.
    #[arg(long, default_value = "scripts/stack")]
    stack_script: PathBuf,
    /// Give up draining this many seconds after the last event was sent.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Where the services' logs go.
    #[arg(long, default_value = "loadtest/out")]
    out: PathBuf,
    /// Share of keys whose run waits for a second event (docs/steps.md): a `wait_for_event`
    /// step before its tasks, answered by a `chaos.paid` event sent once the wait shows in
    /// PostgreSQL (a third of them twice). A lost delivery fails the run (`on_timeout: fail`).
    #[arg(long, default_value_t = 0.0)]
    waiting_share: f64,
}

/// One scheduled fault.
#[derive(Debug, Clone)]
enum Fault {
    KillRouter,
    KillWorker,
    Restart(String),
}

/// A fault as it happened: when (seconds since the start) and how long routing stalled after.
struct Done {
    fault: Fault,
    at: f64,
    took: f64,
}

pub async fn run(settings: &Settings, args: &ChaosArgs, made: &mut super::made::Made) -> anyhow::Result<ExitCode> {
    let nonce = super::now_ms() % 10_000_000;
    let (topic, sink, dlq) = (format!("chaos-{nonce}"), format!("chaos-{nonce}-sink"), format!("chaos-{nonce}-dlq"));
    let def_id = format!("chaos-{nonce}");
    let group = format!("chaos-{nonce}-router");
    std::fs::create_dir_all(&args.out)?;

    // A database of its own: the worker's results relay publishes every outbox row of its
    // database, so sharing one with another deployment would publish theirs too.
    let db_name = format!("tf_chaos_{nonce}");
    let admin_url = settings.database_url.clone();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.context("PostgreSQL (TF_DATABASE_URL)")?;
    sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut admin).await?;
    let db_url = format!("{}/{db_name}", admin_url.rsplit_once('/').context("TF_DATABASE_URL has no database")?.0);
    let pool = tf_store::connect(&db_url).await?;
    tf_store::migrate(&pool).await?;

    let spec = |name: &str, partitions| super::load_topic(name, partitions, Duration::from_secs(86_400));
    tf_kafka::topics::apply(&settings.kafka_brokers, &[spec(&topic, args.partitions), spec(&sink, 1), spec(&dlq, 1)]).await?;
    // The definition lives in the run's own database, dropped below when the run succeeds.
    for t in [&topic, &sink, &dlq] {
        made.topic(t);
    }
    let ship = format!(
        "  - name: ship\n    type: kafka\n    for_each: event.data.items\n    retry: {{max_attempts: 100, max_interval: 5s}}\n    \
         params: {{topic: \"'{sink}'\", value: \"{{'key': event.data.key, 'item': item}}\"}}\n"
    );
    let yaml = format!(
        "id: {def_id}\nname: Chaos\ntrigger: {{event: {{topics: [{topic}], type: chaos, filter: \"!event.data.waits\"}}}}\n\
         dedupe: {{key: event.data.key}}\ntasks:\n{ship}"
    );
    super::apply_event_definition(&pool, &yaml).await?;
    // Runs that wait for a second event: the same tasks after a wait for `chaos.paid`.
    let waiting_def = format!("{def_id}-waits");
    let yaml = format!(
        "id: {waiting_def}\nname: Chaos waits\ntrigger: {{event: {{topics: [{topic}], type: chaos, filter: event.data.waits}}}}\n\
         dedupe: {{key: event.data.key}}\ntasks:\n  - name: pay\n    type: wait_for_event\n    \
         event: {{type: chaos.paid, topics: [{topic}], match: {{incoming: event.data.key, run: event.data.key}}}}\n    \
         timeout: 30m\n    on_timeout: fail\n{}",
        ship.replace("  - name: ship\n", "  - name: ship\n    after: [pay]\n")
    );
    super::apply_event_definition(&pool, &yaml).await?;

    let mut env = super::connection_env(settings, &db_url);
    env.extend(
        [
            ("TF_TASK_QUEUE", format!("chaos-{nonce}")),
            ("TF_ROUTER_TOPICS", topic.clone()),
            ("TF_ROUTER_GROUP", group.clone()),
            ("TF_ROUTER_INSTANCE_ID", format!("chaos-{nonce}-router")),
            ("TF_DLQ_TOPIC", dlq.clone()),
            ("TF_RELAY_TRANSACTIONAL_ID", format!("chaos-{nonce}-relay")),
            ("TF_ROUTER_METRICS_ADDR", String::new()),
            ("TF_WORKER_METRICS_ADDR", String::new()),
            ("TF_NO_SCHEDULER", "true".into()),
            // The relay logs each committed batch (txid, seq, count) at debug: what a duplicate
            // result would be traced back to.
            ("TF_LOG", "info,tf_worker::relay=debug".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let services =
        Arc::new(Mutex::new(Services::new(args.bin_dir.clone().unwrap_or_else(default_bin_dir), args.out.clone(), String::new(), env)));
    {
        let mut s = services.lock().expect("services");
        s.restart_worker()?;
        s.restart_router()?;
    }

    // Events: keys 0..unique once, then repeats; key k's run spawns 1 + k % 3 tasks.
    let unique = ((args.events as f64) * (1.0 - args.duplicates)).round().max(1.0) as usize;
    let codec = Codec::new(Arc::new(Registry::new(&settings.schema_registry_url)));
    let mut payloads = Vec::with_capacity(args.events);
    // Key k waits when k's position in the spread falls under the share: spread evenly.
    let waits = |k: usize| ((k as f64 + 0.5) * args.waiting_share).floor() != ((k as f64 - 0.5) * args.waiting_share).floor();
    for i in 0..args.events {
        let k = if i < unique { i } else { (i * 7919) % unique };
        let items: Vec<usize> = (0..1 + k % 3).collect();
        let e = Event::new(format!("c-{i}"), "/chaos", "chaos", json!({"key": format!("k-{k}"), "items": items, "waits": waits(k)}))?;
        payloads.push((format!("k-{k}"), codec.encode_event(&format!("{topic}-value"), &e).await?));
    }
    let waiting_keys = (0..unique).filter(|k| waits(*k)).count();
    let expected_tasks: i64 = (0..unique).map(|k| 1 + (k % 3) as i64 + i64::from(waits(k))).sum();
    // Like an upstream producer that retries: a send that fails or times out while Kafka
    // restarts is sent again. A record may land twice; the pipeline must absorb that too.
    let producer: FutureProducer = tf_kafka::client_config(&settings.kafka_brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000")
        .create()?;
    let produce_secs = args.events as f64 / args.rate.max(0.1);
    println!(
        "chaos {nonce}: {} events ({unique} keys, {waiting_keys} of them waiting for a second event, {expected_tasks} tasks) at {:.0}/s over {produce_secs:.0} s on {topic}; database {db_name}",
        args.events, args.rate
    );

    // Faults one at a time, evenly spread over the production window, so each stall can be
    // told apart: dependency restarts, worker kills and router kills interleaved.
    let mut faults: Vec<Fault> = Vec::new();
    let router_kills = if args.kill_router_every > 0 { (produce_secs / args.kill_router_every as f64).floor() as usize } else { 0 };
    let restarts: Vec<Fault> = args.restart.iter().filter(|s| !s.is_empty()).map(|s| Fault::Restart(s.clone())).collect();
    let mut rest: Vec<Fault> = std::iter::repeat_n(Fault::KillWorker, args.kill_worker as usize)
        .chain(std::iter::repeat_n(Fault::KillRouter, router_kills))
        .collect();
    for r in restarts {
        faults.push(r);
        if !rest.is_empty() {
            faults.push(rest.remove(0));
        }
    }
    faults.extend(rest);
    let gap = Duration::from_secs(args.fault_gap);

    let started = Instant::now();
    let produced = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let producing = {
        let (producer, topic, produced) = (producer.clone(), topic.clone(), produced.clone());
        let rate = args.rate.max(0.1);
        tokio::spawn(async move {
            let mut inflight = Vec::new();
            for (i, (key, bytes)) in payloads.into_iter().enumerate() {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let (producer, topic, produced) = (producer.clone(), topic.clone(), produced.clone());
                inflight.push(tokio::spawn(async move {
                    send_retrying(&producer, &topic, &key, &bytes).await?;
                    produced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok::<(), rdkafka::error::KafkaError>(())
                }));
            }
            for f in inflight {
                f.await.expect("send task")?;
            }
            Ok::<(), rdkafka::error::KafkaError>(())
        })
    };

    // The second events: each waiting run's `chaos.paid`, sent once its wait shows (a third of
    // them twice, as a producer that retries would), until every waiting key was answered.
    let paid_sent = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let paying = {
        let (producer, topic, pool, paid_sent) = (producer.clone(), topic.clone(), pool.clone(), paid_sent.clone());
        let codec = Codec::new(Arc::new(Registry::new(&settings.schema_registry_url)));
        tokio::spawn(async move {
            let mut answered = std::collections::HashSet::new();
            while answered.len() < waiting_keys {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let waiting: Vec<String> = match sqlx::query_scalar(
                    "SELECT r.dedupe_key FROM tasks t JOIN activity_runs r USING (run_id) WHERE t.template = 'pay' AND t.status = 'waiting'",
                )
                .fetch_all(&pool)
                .await
                {
                    Ok(w) => w,
                    Err(_) => continue, // PostgreSQL restarting: look again
                };
                let fresh: Vec<String> = waiting.into_iter().filter(|k| !answered.contains(k)).collect();
                for key in fresh {
                    let n: usize = key.trim_start_matches("k-").parse().unwrap_or(0);
                    for copy in 0..1 + usize::from(n.is_multiple_of(3)) {
                        let e = Event::new(format!("paid-{key}-{copy}"), "/chaos", "chaos.paid", json!({"key": key}))?;
                        let bytes = codec.encode_event(&format!("{topic}-value"), &e).await?;
                        send_retrying(&producer, &topic, &key, &bytes).await?;
                        paid_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    answered.insert(key);
                }
            }
            Ok::<(), anyhow::Error>(())
        })
    };

    // Routed (committed) over time, for the stall figures.
    let samples: Arc<Mutex<Vec<(f64, i64)>>> = Arc::default();
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = {
        let (samples, brokers, group, topic, partitions, stop, services) = (
            samples.clone(),
            settings.kafka_brokers.clone(),
            group.clone(),
            topic.clone(),
            args.partitions,
            stop_sampling.clone(),
            services.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = tf_kafka::client_config(&brokers).set("group.id", &group).create().expect("consumer");
            loop {
                let c = super::committed(&consumer, &topic, partitions, Duration::from_secs(5)).unwrap_or(-1);
                let mut s = samples.lock().expect("samples");
                s.push((started.elapsed().as_secs_f64(), c));
                if s.len() > 1 && s.len() % 40 == 0 {
                    println!("  t={:6.1}s  routed {c}", started.elapsed().as_secs_f64());
                }
                drop(s);
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = services.lock().expect("services").revive() {
                    println!("  could not restart a service: {e:#}");
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let mut done = Vec::new();
    for fault in faults {
        tokio::time::sleep(gap).await;
        let t0 = started.elapsed().as_secs_f64();
        match &fault {
            Fault::KillRouter => services.lock().expect("services").restart_router()?,
            Fault::KillWorker => services.lock().expect("services").restart_worker()?,
            Fault::Restart(svc) => {
                let status = tokio::process::Command::new(&args.stack_script)
                    .args(["restart", svc])
                    .stdout(Stdio::null())
                    .status()
                    .await
                    .with_context(|| format!("{} restart {svc}", args.stack_script.display()))?;
                anyhow::ensure!(status.success(), "{} restart {svc} failed", args.stack_script.display());
            }
        }
        let took = started.elapsed().as_secs_f64() - t0;
        println!("  t={t0:6.1}s  fault: {fault:?} ({took:.1} s)");
        done.push(Done { fault, at: t0, took });
    }
    producing.await.expect("producer task").context("producing")?;
    println!("  produced {} events in {:.1} s", produced.load(std::sync::atomic::Ordering::Relaxed), started.elapsed().as_secs_f64());

    // Drain: every event committed, every key's run completed, every task's result published.
    // From the last send, as --timeout-secs says: a long run must not count its production.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let drained = loop {
        let routed = samples.lock().expect("samples").last().map_or(0, |s| s.1);
        let produced_all = args.events as i64 + paid_sent.load(std::sync::atomic::Ordering::Relaxed);
        let answered_all = paying.is_finished();
        let runs: i64 =
            sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE status = 'completed'").fetch_one(&pool).await.unwrap_or(-1);
        let results: i64 =
            sqlx::query_scalar("SELECT count(*) FROM task_results WHERE published_at IS NOT NULL").fetch_one(&pool).await.unwrap_or(-1);
        if answered_all && routed >= produced_all && runs >= unique as i64 && results >= expected_tasks {
            break true;
        }
        if Instant::now() > deadline {
            println!(
                "  drain timed out: routed {routed}/{produced_all}, runs completed {runs}/{unique}, results {results}/{expected_tasks}, second events sent for all waits: {answered_all}"
            );
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drained_after = started.elapsed().as_secs_f64();
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    sampling.await.expect("sampler");
    let revived = {
        let mut s = services.lock().expect("services");
        s.stop();
        s.revived.clone()
    };
    let samples = samples.lock().expect("samples").clone();

    // Invariant checks.
    let per_key: Vec<(String, i64)> =
        sqlx::query_as("SELECT dedupe_key, count(*) FROM activity_runs WHERE status <> 'deduplicated' GROUP BY 1").fetch_all(&pool).await?;
    let (runs_min, runs_max) = (per_key.iter().map(|r| r.1).min().unwrap_or(0), per_key.iter().map(|r| r.1).max().unwrap_or(0));
    let keys_missing = unique as i64 - per_key.len() as i64;
    let not_completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM activity_runs WHERE status NOT IN ('completed', 'deduplicated')").fetch_one(&pool).await?;
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await?;
    if paying.is_finished() {
        paying.await.expect("paying task").context("sending the second events")?;
    } else {
        paying.abort();
    }
    let results = tokio::task::spawn_blocking({
        let (brokers, prefixes) = (settings.kafka_brokers.clone(), [format!("run/{def_id}/"), format!("run/{waiting_def}/")]);
        move || results_per_task(&brokers, &prefixes)
    })
    .await??;
    // Each waiting run took exactly one of its key's second events.
    let deliveries: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT r.dedupe_key, t.output->>'id' FROM tasks t JOIN activity_runs r USING (run_id) WHERE t.template = 'pay'")
            .fetch_all(&pool)
            .await?;
    let wrong_deliveries =
        deliveries.iter().filter(|(k, id)| !id.as_deref().is_some_and(|id| id.starts_with(&format!("paid-{k}-")))).count();
    let received: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_waits WHERE kind = 'step' AND status = 'received'").fetch_one(&pool).await?;
    let (res_min, res_max) =
        (results.values().map(Vec::len).min().unwrap_or(0) as i64, results.values().map(Vec::len).max().unwrap_or(0) as i64);
    let tasks_without_result = expected_tasks - results.len() as i64;
    let dead = {
        let c: BaseConsumer = tf_kafka::client_config(&settings.kafka_brokers).create()?;
        let (low, high) = c.fetch_watermarks(&dlq, 0, Duration::from_secs(10))?;
        high - low
    };

    println!("\n=== tf-loadtest chaos report ===");
    println!("events                 {} ({unique} distinct keys, {:.0}% repeats)", args.events, args.duplicates * 100.0);
    println!("runs per key           min {runs_min} max {runs_max}; keys without a run {keys_missing}; runs not completed {not_completed}");
    println!("tasks                  {tasks} (expected {expected_tasks})");
    println!(
        "results per task       min {res_min} max {res_max} on taskfactory.results (read_committed); tasks without a result {tasks_without_result}"
    );
    let mut duplicated: Vec<(&String, &Vec<(i32, i64)>)> = results.iter().filter(|r| r.1.len() > 1).collect();
    duplicated.sort();
    for (task, copies) in duplicated.iter().take(10) {
        println!("  duplicate result: task {task} at (partition, offset) {copies:?}");
    }
    println!(
        "waits                  {} of {waiting_keys} runs waited, {received} received their second event, wrong or missing deliveries {wrong_deliveries}; second events sent {}",
        deliveries.len(),
        paid_sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("dead letters           {dead}");
    println!(
        "exited on their own    {} (restarted like a supervisor would){}",
        revived.len(),
        revived.iter().map(|(n, s)| format!("; {n}: {s}")).collect::<String>()
    );
    if drained {
        println!("drained after          {drained_after:.1} s");
    } else {
        println!("NOT drained            gave up after {drained_after:.1} s (--timeout-secs counts from the last send)");
    }
    println!("faults (routing stall = from the fault until the committed offset moved again, while events were waiting):");
    for d in &done {
        println!(
            "  {:>6.1} s  {:<26} took {:>5.1} s  routing stalled {}",
            d.at,
            format!("{:?}", d.fault),
            d.took,
            stall(&samples, d.at, args.events as i64)
        );
    }
    let ok = drained
        && keys_missing == 0
        && runs_min == 1
        && runs_max == 1
        && not_completed == 0
        && tasks == expected_tasks
        && tasks_without_result == 0
        && res_max == 1
        && deliveries.len() == waiting_keys
        && received == waiting_keys as i64
        && wrong_deliveries == 0
        && dead == 0;
    println!("{}", if ok { "OK: no loss, no duplicate" } else { "FAILED: see the figures above" });
    if ok {
        drop(pool);
        let _ = sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)")).execute(&mut admin).await;
        Ok(ExitCode::SUCCESS)
    } else {
        println!("kept database {db_name} and the logs in {} for inspection", args.out.display());
        Ok(ExitCode::FAILURE)
    }
}

/// Sends like an upstream producer that retries: a send that fails or times out while Kafka
/// restarts is sent again (for up to 30 tries), so a record may land twice.
async fn send_retrying(producer: &FutureProducer, topic: &str, key: &str, bytes: &[u8]) -> Result<(), rdkafka::error::KafkaError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match producer.send(FutureRecord::to(topic).key(key).payload(bytes), Duration::from_secs(20)).await {
            Ok(_) => return Ok(()),
            Err(_) if attempts < 30 => tokio::time::sleep(Duration::from_secs(1)).await,
            Err((e, _)) => return Err(e),
        }
    }
}

/// Seconds from `at` until the committed offset moved again, when events were waiting.
fn stall(samples: &[(f64, i64)], at: f64, total: i64) -> String {
    let Some(before) = samples.iter().rev().find(|s| s.0 <= at).map(|s| s.1) else { return "n/a".into() };
    if before >= total {
        return "n/a (nothing waiting)".into();
    }
    match samples.iter().find(|s| s.0 > at && s.1 > before) {
        Some(s) => format!("{:.1} s", s.0 - at),
        None => "until the end".into(),
    }
}

/// Where each task of runs whose id starts with one of `prefixes` has committed results on
/// `taskfactory.results`: `(partition, offset)` per copy.
fn results_per_task(brokers: &str, prefixes: &[String]) -> anyhow::Result<HashMap<String, Vec<(i32, i64)>>> {
    const TOPIC: &str = "taskfactory.results";
    let consumer: BaseConsumer = tf_kafka::client_config(brokers)
        .set("group.id", format!("chaos-check-{}", super::now_ms()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut highs = HashMap::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(TOPIC, p.id(), Offset::Beginning)?;
        highs.insert(p.id(), consumer.fetch_watermarks(TOPIC, p.id(), Duration::from_secs(10))?.1);
    }
    consumer.assign(&tpl)?;
    let mut counts = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let caught_up = consumer.position()?.elements().iter().all(|e| match e.offset() {
            Offset::Offset(o) => o >= highs[&e.partition()],
            _ => highs[&e.partition()] == 0,
        });
        if caught_up {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        if !m.key().is_some_and(|k| prefixes.iter().any(|p| k.starts_with(p.as_bytes()))) {
            continue;
        }
        let task_id = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "taskfactory.task_id").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        counts.entry(task_id).or_insert_with(Vec::new).push((m.partition(), m.offset()));
    }
    Ok(counts)
}
