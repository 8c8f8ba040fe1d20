//! `tf-loadtest`: measures the event path on a running stack with tf-router and tf-worker up
//! (`scripts/run` leaves them so). Applies a definition of its own on a fresh topic, produces
//! a burst of envelopes (some keys repeated), then follows the router's committed offsets and
//! the runs in PostgreSQL until every event is routed and every unique key has its run.
//! Prints throughput and latency percentiles (produce → run fired) and writes the timeline as
//! CSV for plotting. It measures; it never fails on a number.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tf_config::Settings;
use tf_envelope::{Codec, Event, Registry};

/// Load-test the event path (router + worker must be running), or prove it under faults
/// (`tf-loadtest chaos`, which runs its own router and worker).
#[derive(Parser)]
#[command(name = "tf-loadtest", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
    /// Events to produce.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Share of events that repeat an earlier key (deduplicated, no run).
    #[arg(long, default_value_t = 0.3)]
    duplicates: f64,
    /// Partitions of the load topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// The router's consumer group, to follow its committed offsets.
    #[arg(long, env = "TF_ROUTER_GROUP", default_value = "taskfactory-router")]
    group: String,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Where the timeline CSV goes.
    #[arg(long, default_value = "loadtest/out")]
    out: std::path::PathBuf,
    /// How events enter: produced to Kafka directly, or POSTed to tf-api's CloudEvents ingress
    /// (structured mode, one event a request), which also reports latency to `202`.
    #[arg(long, value_parser = ["kafka", "http"], default_value = "kafka")]
    via: String,
    /// tf-api's base URL, for `--via http`.
    #[arg(long, env = "TF_API_URL", default_value = "http://127.0.0.1:18088")]
    api_url: String,
    /// A token with the ingest scope, for `--via http` (the local stack's is demo-token).
    #[arg(long, env = "TF_API_TOKEN", default_value = "demo-token")]
    api_token: String,
    /// Requests in flight at once, for `--via http`.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure routing only: wait for the router's commits, not for runs, so it also works with
    /// no worker running (the fair comparison with `tf-loadtest bare`, whose workflows nobody
    /// runs either).
    #[arg(long)]
    routing_only: bool,
    /// Then send the same records again (same keys, ids and event times: what the router reads
    /// after an operator resets its offsets) and report how fast it routes a range it already
    /// routed, against the first pass. Every key already has its run, so a replay must start
    /// none.
    #[arg(long)]
    replay: bool,
    /// Send events no definition matches (the definition on the load topic wants another
    /// event type): the router decodes, matches and commits them and starts nothing. Implies
    /// --routing-only. The report adds the router's resident memory (now and peak), read
    /// from /proc for every process named tf-router on this machine.
    #[arg(long)]
    non_matching: bool,
    /// Send at this many events/s (each event at its own moment) instead of all at once.
    #[arg(long)]
    rate: Option<f64>,
    /// The load topic is `<prefix>loadtest-<n>`: `events.` is what a router reads by default
    /// (`compare` uses its own, which only its router reads).
    #[arg(long, default_value = "events.")]
    topic_prefix: String,
    /// Keep the topics and the definition a run makes (the burst, `steady`, `peer`, `chaos`):
    /// by default they are removed after a successful run and kept after a failed one.
    #[arg(long, global = true)]
    keep: bool,
}

impl Cli {
    fn routing_only(&self) -> bool {
        self.routing_only || self.non_matching
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Produce events while a fault schedule kills the router and the worker and restarts
    /// Temporal, Kafka, PostgreSQL and the registry; then check that every key ran exactly
    /// once and every task published exactly one result. Exits non-zero on any loss or
    /// duplicate.
    Chaos(chaos::ChaosArgs),
    /// Send at a constant rate for a while (open loop), then report latency per stage of each
    /// run: produce → started → run began → planned → first task done → result visible.
    Steady(steady::SteadyArgs),
    /// Start RunActivity workflows straight from here, as the router would, on a task queue
    /// nobody polls: the start rate Temporal gives any client, the router's baseline.
    Bare(bare::BareArgs),
    /// Read a burst from Kafka and start a workflow per event, with no claim lookup (repeats
    /// cost a start Temporal refuses): the plain client the router's duplicate figure is
    /// compared with.
    Peer(peer::PeerArgs),
    /// Remove what earlier load tests left on the stack: their topics, their definitions
    /// (retired) and the databases failed chaos runs kept.
    Clean(clean::CleanArgs),
    /// The router against its baseline (`bare` or `peer`), alternated baseline, router,
    /// router, baseline so that drift hits both alike; runs a router of its own on a topic
    /// only it reads, and prints each run and the ratio.
    Compare(compare::CompareArgs),
    /// Groundwork for flow control: concurrency slots as PostgreSQL rows (SKIP LOCKED, leases);
    /// grants/s, grant and refusal latency, and the most holders one key had at once.
    Leases(leases::LeasesArgs),
}

mod bare;
mod chaos;
mod clean;
mod compare;
mod leases;
mod made;
mod peer;
mod plot;
mod services;
mod stack;
mod steady;

// The shared stack helpers, by their old paths (`crate::now_ms`, `super::load_topic`).
use stack::*;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    tf_config::check_connection_settings()?;
    let mut made = made::Made::default();
    let outcome = match &cli.command {
        Some(Command::Chaos(args)) => chaos::run(&cli.settings, args, &mut made).await,
        Some(Command::Steady(args)) => steady::run(&cli.settings, args, &mut made).await,
        Some(Command::Bare(args)) => bare::run(&cli.settings, args).await,
        Some(Command::Peer(args)) => peer::run(&cli.settings, args, &mut made).await,
        Some(Command::Clean(args)) => clean::run(&cli.settings, args).await,
        Some(Command::Compare(args)) => compare::run(&cli.settings, args).await,
        Some(Command::Leases(args)) => leases::run(&cli.settings, args).await,
        None => burst(&cli, &mut made).await.map(|()| std::process::ExitCode::SUCCESS),
    };
    let succeeded = matches!(outcome, Ok(code) if code == std::process::ExitCode::SUCCESS);
    made.clean_up(&cli.settings, succeeded, cli.keep).await;
    outcome
}

async fn burst(cli: &Cli, made: &mut made::Made) -> anyhow::Result<()> {
    let s = &cli.settings;
    let nonce = now_ms() % 10_000_000;
    let topic = format!("{}loadtest-{nonce}", cli.topic_prefix);
    let def_id = format!("loadtest-{nonce}");
    let pool = tf_store::connect(&s.database_url).await?;

    tf_kafka::topics::apply(&s.kafka_brokers, &[load_topic(&topic, cli.partitions, Duration::from_secs(3600))]).await?;
    made.topic(&topic);
    // Non-matching traffic: the definition subscribes the topic (so the router reads it) but
    // wants a type the load test never sends.
    let wanted = if cli.non_matching { ", type: loadtest.never" } else { "" };
    let yaml = format!(
        "id: {def_id}\nname: Load test\ntrigger: {{event: {{topics: [{topic}]{wanted}}}}}\ndedupe: {{key: event.data.key}}\ntasks: [{{name: noop, type: human, when: 'false'}}]\n"
    );
    apply_event_definition(&pool, &yaml).await?;
    made.definition(&def_id, &pool);
    println!("definition {def_id} on {topic} ({} partitions); waiting for the router to subscribe", cli.partitions);

    let codec = Codec::new(Arc::new(Registry::new(&s.schema_registry_url)));
    let producer: FutureProducer =
        tf_kafka::client_config(&s.kafka_brokers).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    let unique_keys = ((cli.events as f64) * (1.0 - cli.duplicates)).round().max(1.0) as usize;

    // Warm-up: one event, so subscription and definition refresh are not in the figures.
    let warm = Event::new("warmup", "/loadtest", "loadtest", json!({"key": "warmup"}))?;
    let bytes = codec.encode_event(&format!("{topic}-value"), &warm).await?;
    producer.send(FutureRecord::to(&topic).key("warmup").payload(&bytes), Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    let offsets = group_reader(&s.kafka_brokers, &cli.group)?;
    let warmed_up = || async {
        if cli.routing_only() {
            committed(&offsets, &topic, cli.partitions, Duration::from_secs(10)).unwrap_or(0) >= 1
        } else {
            runs_of(&pool, &def_id).await >= 1
        }
    };
    while !warmed_up().await {
        anyhow::ensure!(
            Instant::now() < warm_deadline,
            "the warm-up event was not routed (and run) within 60 s: are tf-router and tf-worker running?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if cli.via == "http" {
        anyhow::ensure!(!cli.replay, "--replay sends to Kafka; it does not combine with --via http");
        let (produced_at, started, produce_secs) = post_all(cli, &topic, unique_keys).await?;
        return follow(cli, &pool, &topic, &def_id, unique_keys, produced_at, started, produce_secs).await.map(|_| ());
    }
    let mut payloads = Vec::with_capacity(cli.events);
    for i in 0..cli.events {
        let key = if i < unique_keys { i } else { i % unique_keys };
        let e = Event::new(format!("lt-{i}"), "/loadtest", "loadtest", json!({"key": format!("k-{key}")}))?;
        payloads.push((format!("k-{key}"), codec.encode_event(&format!("{topic}-value"), &e).await?, format!("lt-{i}")));
    }
    println!("producing {} events ({unique_keys} unique keys)", cli.events);
    let cpu = CpuSpent::now();
    let started = Instant::now();
    let mut produced_at: HashMap<String, i64> = HashMap::with_capacity(cli.events);
    // Each event's produce time is when its send is issued (and is its Kafka CreateTime), not
    // when the whole burst is acknowledged: latency is measured from there.
    let begin = tokio::time::Instant::now();
    let sends = payloads.iter().enumerate().map(|(i, (key, bytes, _))| {
        let producer = &producer;
        let topic = &topic;
        async move {
            if let Some(rate) = cli.rate.filter(|r| *r > 0.0) {
                tokio::time::sleep_until(begin + Duration::from_secs_f64(i as f64 / rate)).await;
            }
            let issued = now_ms();
            let r = producer.send(FutureRecord::to(topic).key(key).payload(bytes).timestamp(issued), Duration::from_secs(30)).await;
            (issued, r)
        }
    });
    for ((_, _, id), (issued, r)) in payloads.iter().zip(join_all(sends).await) {
        r.map_err(|(e, _)| e).context("producing")?;
        produced_at.insert(id.clone(), issued);
    }
    let produce_secs = started.elapsed().as_secs_f64();
    println!("produced in {produce_secs:.2} s ({:.0} events/s)", cli.events as f64 / produce_secs);
    let runs_expected = if cli.non_matching { 0 } else { unique_keys };
    let fresh = follow(cli, &pool, &topic, &def_id, runs_expected, produced_at, started, produce_secs).await?;
    println!("CPU during the burst   {}", cpu.report_since(cli.events));
    if cli.non_matching {
        // follow() reported the count against 0 expected; a non-matching run is a failure.
        let runs = runs_of(&pool, &def_id).await;
        anyhow::ensure!(runs == 0, "non-matching events started {runs} runs");
    }
    for (pid, rss, peak) in router_memory() {
        println!("tf-router pid {pid:<8}  resident {:.1} MiB now, peak {:.1} MiB", rss as f64 / 1024.0, peak as f64 / 1024.0);
    }
    if cli.replay {
        replay(cli, &pool, &producer, &topic, &def_id, &payloads, fresh).await?;
    }
    Ok(())
}

/// Sends the burst's records again and follows the router through them: the replay figure.
async fn replay(
    cli: &Cli,
    pool: &tf_store::PgPool,
    producer: &FutureProducer,
    topic: &str,
    def_id: &str,
    payloads: &[(String, Vec<u8>, String)],
    fresh_per_s: f64,
) -> anyhow::Result<()> {
    let runs_before = runs_of(pool, def_id).await;
    let offsets = group_reader(&cli.settings.kafka_brokers, &cli.group)?;
    let base = committed(&offsets, topic, cli.partitions, Duration::from_secs(10))?;
    println!("\nreplaying the {} records", payloads.len());
    let started = Instant::now();
    let sends =
        payloads.iter().map(|(key, bytes, _)| producer.send(FutureRecord::to(topic).key(key).payload(bytes), Duration::from_secs(30)));
    for r in join_all(sends).await {
        r.map_err(|(e, _)| e).context("producing the replay")?;
    }
    let produce_secs = started.elapsed().as_secs_f64();
    let target = base + payloads.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(cli.timeout_secs);
    let mut routed = base;
    while routed < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        routed = committed(&offsets, topic, cli.partitions, Duration::from_secs(10))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let new_runs = runs_of(pool, def_id).await - runs_before;
    let per_s = (routed - base) as f64 / secs;
    println!("replay sent            {:.0} events/s ({produce_secs:.1} s)", payloads.len() as f64 / produce_secs);
    println!(
        "replay routed          {per_s:.0} events/s ({} of {} committed after {secs:.1} s, sending included): {:.1}x the first pass's {fresh_per_s:.0} events/s",
        routed - base,
        payloads.len(),
        per_s / fresh_per_s.max(f64::MIN_POSITIVE)
    );
    println!("runs the replay started {new_runs} (must be 0)");
    anyhow::ensure!(routed >= target, "the replay was not all routed within {} s", cli.timeout_secs);
    anyhow::ensure!(new_runs == 0, "the replay started {new_runs} runs for keys that already ran");
    Ok(())
}

/// `--via http`: POSTs every event to tf-api with `concurrency` requests in flight; returns each
/// event's issue time, and reports throughput and latency to `202`.
async fn post_all(cli: &Cli, topic: &str, unique_keys: usize) -> anyhow::Result<(HashMap<String, i64>, Instant, f64)> {
    use futures::StreamExt;
    let http = reqwest::Client::new();
    let url = format!("{}/events/{topic}", cli.api_url.trim_end_matches('/'));
    let bodies: Vec<(String, String)> = (0..cli.events)
        .map(|i| {
            let key = if i < unique_keys { i } else { i % unique_keys };
            let id = format!("lt-{i}");
            let body = json!({"specversion": "1.0", "id": id, "source": "/loadtest", "type": "loadtest",
                              "partitionkey": format!("k-{key}"), "data": {"key": format!("k-{key}")}});
            (id, body.to_string())
        })
        .collect();
    println!("posting {} events to {url} ({unique_keys} unique keys, {} in flight)", cli.events, cli.concurrency);
    let started = Instant::now();
    let results: Vec<anyhow::Result<(String, i64, u128)>> = futures::stream::iter(bodies.into_iter().map(|(id, body)| {
        let (http, url, token) = (http.clone(), url.clone(), cli.api_token.clone());
        async move {
            let issued = now_ms();
            let t0 = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/cloudevents+json")
                .body(body)
                .send()
                .await
                .context("posting an event")?;
            let status = resp.status();
            anyhow::ensure!(status.as_u16() == 202, "tf-api answered {status}: {}", resp.text().await.unwrap_or_default());
            Ok((id, issued, t0.elapsed().as_micros()))
        }
    }))
    .buffer_unordered(cli.concurrency.max(1))
    .collect()
    .await;
    let produce_secs = started.elapsed().as_secs_f64();
    let mut produced_at = HashMap::with_capacity(cli.events);
    let mut latencies = Vec::with_capacity(cli.events);
    for r in results {
        let (id, issued, micros) = r?;
        produced_at.insert(id, issued);
        latencies.push(micros);
    }
    latencies.sort_unstable();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0) as f64 / 1000.0;
    println!(
        "ingress                {:.0} events/s over HTTP; latency to 202: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        cli.events as f64 / produce_secs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    Ok((produced_at, started, produce_secs))
}

/// Follows the router's committed offsets and the runs until every event is routed and every
/// key ran, then prints the report, the CSV and the plot; returns the events/s routed.
#[allow(clippy::too_many_arguments)]
async fn follow(
    cli: &Cli,
    pool: &tf_store::PgPool,
    topic: &str,
    def_id: &str,
    unique_keys: usize,
    produced_at: HashMap<String, i64>,
    started: Instant,
    produce_secs: f64,
) -> anyhow::Result<f64> {
    let s = &cli.settings;
    let total_expected = (cli.events + 1) as i64; // + warm-up
    let mut timeline = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(cli.timeout_secs);
    let (mut routed, mut runs) = (0, 0);
    let mut routed_at = None;
    let offsets = group_reader(&s.kafka_brokers, &cli.group)?;
    // Committed offsets are read every 100 ms, so the moment the last record is committed is
    // known to 0.1 s (a 1 s poll would add up to 1 s to a burst of 30 s); runs and the
    // printed timeline once a second.
    let mut next_sample = Instant::now();
    while Instant::now() < deadline {
        routed = committed(&offsets, topic, cli.partitions, Duration::from_secs(10))?;
        let t = started.elapsed().as_secs_f64();
        if routed >= total_expected && routed_at.is_none() {
            routed_at = Some(t);
        }
        let routing_done = routed_at.is_some();
        if Instant::now() >= next_sample || routing_done {
            next_sample += Duration::from_secs(1);
            runs = (runs_of(pool, def_id).await - 1).max(0); // - the warm-up's
            timeline.push((t, routed, runs));
            let memory = if cli.non_matching {
                router_memory().iter().map(|(pid, rss, _)| format!("  tf-router {pid} resident {:.1} MiB", *rss as f64 / 1024.0)).collect()
            } else {
                String::new()
            };
            println!("  t={t:6.1}s  routed {routed:>6}/{total_expected}  runs {runs:>6}/{unique_keys}{memory}");
            if routing_done && (cli.routing_only() || runs >= unique_keys as i64) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(if routing_done { 1000 } else { 100 })).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let routed_at = routed_at.unwrap_or(elapsed);

    let fired: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, (extract(epoch from fired_at) * 1000)::bigint FROM activity_runs WHERE definition_id = $1 AND event_id LIKE 'lt-%'",
    )
    .bind(def_id)
    .fetch_all(pool)
    .await?;
    let mut latencies: Vec<i64> = fired.iter().filter_map(|(id, f)| produced_at.get(id).map(|p| (f - p).max(0))).collect();
    latencies.sort_unstable();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);

    println!("\n=== tf-loadtest report ===");
    println!("events produced        {}  ({} unique keys, {:.0}% duplicates)", cli.events, unique_keys, cli.duplicates * 100.0);
    println!("sent via {:<14} {:.0} events/s  ({produce_secs:.1} s)", cli.via, cli.events as f64 / produce_secs);
    println!("runs started           {runs}  (expected {unique_keys})");
    println!("routed (committed)     {:.0} events/s  (all {} committed after {routed_at:.1} s)", cli.events as f64 / routed_at, cli.events);
    println!("runs                   {:.0} runs/s  (all after {elapsed:.1} s)", runs as f64 / elapsed);
    println!(
        "produce -> run fired   p50 {} ms  p90 {} ms  p99 {} ms  max {} ms  (n={})",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    std::fs::create_dir_all(&cli.out)?;
    write_timeline(&cli.out.join(format!("{def_id}.csv")), "seconds,routed,runs", &timeline)?;
    let svg = cli.out.join(format!("{def_id}.svg"));
    let line = |label: String, color, pick: fn(&(f64, i64, i64)) -> i64| plot::Series {
        label,
        color,
        points: timeline.iter().map(|p| (p.0, pick(p) as f64)).collect(),
    };
    let panel = plot::Panel {
        title: format!("tf-loadtest burst: {} events, {unique_keys} keys", cli.events),
        unit: "count",
        series: vec![
            line(format!("events routed (committed) of {total_expected}"), "#1f77b4", |p| p.1),
            line(format!("runs started of {unique_keys}"), "#d62728", |p| p.2),
        ],
    };
    std::fs::write(&svg, plot::svg(&[panel]))?;
    println!("plot                   {}", svg.display());
    if routed < total_expected || (!cli.routing_only() && runs < unique_keys as i64) {
        println!("INCOMPLETE after {} s: routed {routed}/{total_expected}, runs {runs}/{unique_keys}", cli.timeout_secs);
    }
    Ok(cli.events as f64 / routed_at)
}
