//! `tf-loadtest steady`: open-loop load at a constant arrival rate (each event is sent at its
//! scheduled moment, whatever the pipeline does), then latency per stage of every run, from
//! timestamps the pipeline records itself:
//!
//! - produce → started: the client's send → the workflow's start time at Temporal (the router
//!   decoded, matched, claimed and asked; `activity_runs.fired_at`);
//! - started → run began: → BeginRun recorded the run (`activity_runs.began_at`);
//! - run began → planned: context resolved (the `sql` source) and tasks recorded;
//! - planned → first task done;
//! - first task done → first result visible on `taskfactory.results` to a `read_committed`
//!   consumer in this process;
//!
//! and end to end event → run began and event → first result visible. Histograms are
//! HdrHistogram (1 ms to 1 h, 3 significant figures). The stack, `tf-router` and `tf-worker`
//! must be running (`scripts/run`, or `scripts/stack app-up` with release binaries).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tf_config::Settings;
use tf_envelope::{Codec, Event, Registry};

use crate::{apply_event_definition, now_ms, runs_of, write_timeline};

#[derive(clap::Args)]
pub struct SteadyArgs {
    /// Events per second, sent at evenly spaced moments (open loop: a slow pipeline does not
    /// slow the sender down).
    #[arg(long)]
    rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// `tasks`: each run resolves one `sql` context source (the `orders` datasource) and spawns
    /// two kafka tasks; `bare`: runs spawn nothing (the router and RunActivity's bookkeeping).
    #[arg(long, value_parser = ["tasks", "bare"], default_value = "tasks")]
    profile: String,
    /// How the `tasks` profile's kafka tasks run: as activities of the run (the product's
    /// default) or as `child` workflows (the template's `execution`).
    #[arg(long, value_parser = ["child", "activity"], default_value = "activity")]
    execution: String,
    /// Partitions of the load topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Flow control: at most this many runs per tenant executing at once
    /// (`flow_control.concurrency` keyed by `event.data.tenant`); 0 for no limit. The report
    /// then gives the most runs of one tenant that executed at once.
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Tenants the events are spread over, round robin (`event.data.tenant`).
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Give up waiting for the pipeline to drain this many seconds after the last send.
    #[arg(long, default_value_t = 600)]
    drain_secs: u64,
    /// Ramp instead of one rate: start at --rate and multiply it by 1.5 (for --duration each)
    /// until a step does not keep up (a run missing, or event -> run began p99 over 1 s); the
    /// capacity is the last rate that kept up.
    #[arg(long)]
    find_capacity: bool,
    /// With --find-capacity: then run at these percentages of the capacity found and print
    /// their per-stage latency as one table.
    #[arg(long, value_delimiter = ',', default_values_t = [25u32, 50, 90])]
    report_at: Vec<u32>,
    /// Where the per-second timeline (runs, runs with a visible result) goes, as CSV, and its
    /// plot (rates and latency over time), as SVG.
    #[arg(long, default_value = "loadtest/out")]
    out: std::path::PathBuf,
}

const STAGES: [&str; 7] = [
    "produce -> started",
    "started -> run began",
    "run began -> planned",
    "planned -> first task done",
    "task done -> result visible",
    "event -> run began",
    "event -> result visible",
];

/// One run's milestones, ms since the epoch (`None` where the run has not reached it).
#[derive(sqlx::FromRow)]
struct RunTimes {
    run_id: String,
    event_id: String,
    fired: i64,
    began: Option<i64>,
    planned: Option<i64>,
    first_done: Option<i64>,
}

/// What one rate came to.
struct Step {
    rate: f64,
    complete: bool,
    runs_per_s: f64,
    began_p99_ms: u64,
    result_p99_ms: Option<u64>,
    /// p50 and p99 of each of [`STAGES`] (ms), where it was measured.
    stages: Vec<Option<(u64, u64)>>,
}

impl Step {
    fn kept_up(&self) -> bool {
        self.complete && self.began_p99_ms <= 1000
    }
}

pub async fn run(s: &Settings, a: &SteadyArgs, made: &mut crate::made::Made) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(a.rate > 0.0 && a.rate <= 10_000.0, "--rate must be in (0, 10000] events/s");
    if !a.find_capacity {
        let step = run_at(s, a, a.rate, made).await?;
        return Ok(if step.complete { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE });
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = a.rate;
    while rate <= 10_000.0 {
        let step = run_at(s, a, rate, made).await?;
        let kept_up = step.kept_up();
        steps.push(step);
        if !kept_up {
            break;
        }
        rate = (rate * 1.5 * 10.0).round() / 10.0;
    }
    println!("\n=== capacity ramp ({} profile, {} s per step) ===", a.profile, a.duration);
    println!("{:>8} {:>8} {:>22} {:>26}  kept up", "rate", "runs/s", "event->run began p99", "event->result visible p99");
    for st in &steps {
        let result = st.result_p99_ms.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:>8} {:>8.1} {:>22} {:>26}  {}",
            st.rate,
            st.runs_per_s,
            st.began_p99_ms,
            result,
            if st.kept_up() { "yes" } else { "no" }
        );
    }
    match steps.iter().rev().find(|st| st.kept_up()) {
        Some(st) => println!(
            "capacity: at least {} events/s (the next step, {} events/s, did not keep up)",
            st.rate,
            steps.last().map_or(0.0, |l| l.rate)
        ),
        None => println!("capacity: below {} events/s (the first step did not keep up)", a.rate),
    }
    let Some(capacity) = steps.iter().rev().find(|st| st.kept_up()).map(|st| st.rate) else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let mut shares = Vec::new();
    for pct in a.report_at.iter().copied().filter(|p| (1..=100).contains(p)) {
        let rate = (capacity * f64::from(pct) / 100.0 * 10.0).round().max(1.0) / 10.0;
        shares.push((pct, run_at(s, a, rate, made).await?));
    }
    if !shares.is_empty() {
        println!("\n=== per-stage latency at shares of the capacity ({capacity} events/s), p50 / p99 ms ===");
        let mut header = "| share | rate | runs/s |".to_string();
        let mut rule = "|---|---|---|".to_string();
        for stage in STAGES {
            header.push_str(&format!(" {stage} |"));
            rule.push_str("---|");
        }
        println!("{header}\n{rule}");
        for (pct, st) in &shares {
            let cells: Vec<String> = st.stages.iter().map(|c| c.map_or("-".to_string(), |(p50, p99)| format!("{p50} / {p99}"))).collect();
            println!("| {pct} % | {}/s | {:.1} | {} |", st.rate, st.runs_per_s, cells.join(" | "));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One steady run at `rate` events/s; prints its report.
async fn run_at(s: &Settings, a: &SteadyArgs, rate: f64, made: &mut crate::made::Made) -> anyhow::Result<Step> {
    let nonce = now_ms() % 10_000_000;
    let (topic, sink, def_id) = (format!("events.loadtest-{nonce}"), format!("loadtest-sink-{nonce}"), format!("loadtest-{nonce}"));
    let pool = tf_store::connect(&s.database_url).await?;
    let spec = |name: &str, partitions| super::load_topic(name, partitions, Duration::from_secs(3600));
    tf_kafka::topics::apply(&s.kafka_brokers, &[spec(&topic, a.partitions), spec(&sink, 1)]).await?;
    made.topic(&topic);
    made.topic(&sink);
    let yaml = match a.profile.as_str() {
        "bare" => format!(
            "id: {def_id}\nname: Load test (bare)\ntrigger: {{event: {{topics: [{topic}]}}}}\ndedupe: {{key: event.data.key}}\ntasks: [{{name: noop, type: human, when: 'false'}}]\n"
        ),
        _ => format!(
            r#"id: {def_id}
name: Load test (sql context, two kafka tasks)
trigger: {{event: {{topics: [{topic}]}}}}
dedupe: {{key: event.data.key}}
context:
  customer:
    sql:
      datasource: orders
      query: SELECT id, name, tier FROM customers WHERE id = $1
      params: [event.data.customer]
tasks:
  - {{name: ship, type: kafka, execution: {execution}, params: {{topic: "'{sink}'", key: event.data.key, value: event.data}}}}
  - {{name: notify, type: kafka, execution: {execution}, params: {{topic: "'{sink}'", key: event.data.key, value: context.customer}}}}
"#,
            execution = a.execution
        ),
    };
    let yaml = if a.concurrency > 0 {
        format!("{yaml}flow_control: {{concurrency: {{limit: {}, key: event.data.tenant}}}}\n", a.concurrency)
    } else {
        yaml
    };
    apply_event_definition(&pool, &yaml).await?;
    made.definition(&def_id, &pool);
    let expected_results: i64 = if a.profile == "bare" { 0 } else { 2 };
    println!("definition {def_id} ({} profile) on {topic}; waiting for the router to subscribe", a.profile);

    let codec = Codec::new(Arc::new(Registry::new(&s.schema_registry_url)));
    let producer: FutureProducer =
        tf_kafka::client_config(&s.kafka_brokers).set("enable.idempotence", "true").set("linger.ms", "1").create()?;
    let subject = format!("{topic}-value");
    let tenants = a.tenants.max(1);
    let envelope = |id: &str, key: &str, n: usize| {
        Event::new(id, "/loadtest", "loadtest", json!({"key": key, "customer": "c-1001", "tenant": format!("t-{}", n % tenants)}))
    };

    // The results consumer starts before anything is sent, so no result is missed.
    let visible: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let consumer: StreamConsumer = tf_kafka::client_config(&s.kafka_brokers)
        .set("group.id", format!("tf-loadtest-{nonce}"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&["taskfactory.results"])?;
    let run_prefix = format!("run/{def_id}/");
    let watch = {
        let visible = visible.clone();
        tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else { continue };
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                // The warm-up's result is not one of the measured runs.
                if key.starts_with(&run_prefix) && !key.contains("/warmup/") {
                    visible.lock().expect("visible").entry(key).or_insert_with(now_ms);
                }
            }
        })
    };

    // Warm-up: subscription, definition refresh and the first registry lookups stay out of the
    // figures.
    let warm = codec.encode_event(&subject, &envelope("warmup", "warmup", 0)?).await?;
    producer.send(FutureRecord::to(&topic).key("warmup").payload(&warm), Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while runs_of(&pool, &def_id).await < 1 {
        anyhow::ensure!(Instant::now() < warm_deadline, "no run for the warm-up event within 60 s: are tf-router and tf-worker running?");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let total = (rate * a.duration as f64).round() as usize;
    let mut payloads = Vec::with_capacity(total);
    for i in 0..total {
        let key = format!("k-{i}");
        payloads.push((key.clone(), codec.encode_event(&subject, &envelope(&format!("lt-{i}"), &key, i)?).await?));
    }
    println!("sending {total} events at {rate} events/s for {} s", a.duration);
    let produced: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let (started, started_ms) = (Instant::now(), now_ms());
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sends = Vec::with_capacity(total);
    let mut behind_ms = 0u128;
    for (i, (key, bytes)) in payloads.into_iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        behind_ms = behind_ms.max(Instant::now().saturating_duration_since(due).as_millis());
        let (producer, topic, produced) = (producer.clone(), topic.clone(), produced.clone());
        sends.push(tokio::spawn(async move {
            let issued = now_ms();
            let record = FutureRecord::to(&topic).key(&key).payload(&bytes).timestamp(issued);
            let r = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e);
            produced.lock().expect("produced").insert(format!("lt-{i}"), issued);
            r.map(|_| ())
        }));
    }
    for s in sends {
        s.await?.context("producing")?;
    }
    let send_secs = started.elapsed().as_secs_f64();
    println!("sent in {send_secs:.1} s ({:.1} events/s; the sender was at most {behind_ms} ms behind schedule)", total as f64 / send_secs);

    // Drain: every event has its run, every run its results.
    let deadline = Instant::now() + Duration::from_secs(a.drain_secs);
    let mut timeline = Vec::new();
    loop {
        let runs = runs_of(&pool, &def_id).await - 1;
        let results = visible.lock().expect("visible").len() as i64;
        let t = started.elapsed().as_secs_f64();
        timeline.push((t, runs, results));
        println!("  t={t:6.1}s  runs {runs:>6}/{total}  runs with a visible result {results:>6}");
        let done = runs >= total as i64 && (expected_results == 0 || results >= total as i64);
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    watch.abort();

    let rows: Vec<RunTimes> = sqlx::query_as(
        "SELECT r.run_id, r.event_id,
                (extract(epoch FROM r.fired_at) * 1000)::bigint AS fired,
                (extract(epoch FROM r.began_at) * 1000)::bigint AS began,
                (SELECT (extract(epoch FROM min(t.created_at)) * 1000)::bigint FROM tasks t WHERE t.run_id = r.run_id) AS planned,
                (SELECT (extract(epoch FROM min(t.finished_at)) * 1000)::bigint FROM tasks t WHERE t.run_id = r.run_id) AS first_done
         FROM activity_runs r WHERE r.definition_id = $1 AND r.event_id LIKE 'lt-%'",
    )
    .bind(&def_id)
    .fetch_all(&pool)
    .await?;
    let produced = produced.lock().expect("produced").clone();
    let visible = visible.lock().expect("visible").clone();
    let mut hist: Vec<Histogram<u64>> = (0..STAGES.len()).map(|_| Histogram::new_with_bounds(1, 3_600_000, 3).expect("bounds")).collect();
    let mut record = |stage: usize, from: Option<i64>, to: Option<i64>| {
        if let (Some(f), Some(t)) = (from, to) {
            let _ = hist[stage].record((t - f).clamp(1, 3_600_000) as u64);
        }
    };
    for r in &rows {
        let sent = produced.get(&r.event_id).copied();
        let seen = visible.get(&r.run_id).copied();
        record(0, sent, Some(r.fired));
        record(1, Some(r.fired), r.began);
        if expected_results > 0 {
            record(2, r.began, r.planned);
            record(3, r.planned, r.first_done);
            record(4, r.first_done, seen);
            record(6, sent, seen);
        }
        record(5, sent, r.began);
    }

    println!("\n=== tf-loadtest steady report ===");
    println!(
        "profile                {} ({})",
        a.profile,
        if a.profile == "bare" { "no tasks".to_string() } else { format!("sql context + 2 kafka tasks, execution: {}", a.execution) }
    );
    println!("offered                {rate} events/s for {} s ({total} events, distinct keys)", a.duration);
    println!("runs                   {} of {total}; {:.1} runs/s over {elapsed:.1} s", rows.len(), rows.len() as f64 / elapsed);
    if expected_results > 0 {
        println!("runs with a result     {} of {total}", visible.len());
    }
    println!("{:<30} {:>8} {:>8} {:>8} {:>8} {:>6}", "stage (ms)", "p50", "p90", "p99", "max", "n");
    for (i, h) in hist.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        println!(
            "{:<30} {:>8} {:>8} {:>8} {:>8} {:>6}",
            STAGES[i],
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    }
    if a.concurrency > 0 {
        let peak = peak_per_tenant(&pool, &def_id).await?;
        println!(
            "flow control           concurrency {} per tenant over {tenants} tenant(s); most executing at once for one tenant: {peak}",
            a.concurrency
        );
    }
    std::fs::create_dir_all(&a.out)?;
    write_timeline(&a.out.join(format!("{def_id}-steady.csv")), "seconds,runs,runs_with_result", &timeline)?;
    let svg = a.out.join(format!("{def_id}-steady.svg"));
    std::fs::write(&svg, plot(started_ms, rate, &rows, &produced, &visible))?;
    println!("plot                   {}", svg.display());
    let complete = rows.len() >= total && (expected_results == 0 || visible.len() >= total);
    if !complete {
        println!("INCOMPLETE after draining {} s: {} runs, {} with a result, of {total}", a.drain_secs, rows.len(), visible.len());
    }
    Ok(Step {
        rate,
        complete,
        runs_per_s: rows.len() as f64 / elapsed,
        began_p99_ms: if hist[5].is_empty() { u64::MAX } else { hist[5].value_at_quantile(0.99) },
        result_p99_ms: (!hist[6].is_empty()).then(|| hist[6].value_at_quantile(0.99)),
        stages: hist.iter().map(|h| (!h.is_empty()).then(|| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))).collect(),
    })
}

/// Rates (events sent, runs begun, first results visible, per second) and latency (p99 of
/// event -> run began and event -> result visible among the events sent in each second) over
/// time, seconds from the first send.
fn plot(started_ms: i64, rate: f64, rows: &[RunTimes], produced: &HashMap<String, i64>, visible: &HashMap<String, i64>) -> String {
    use crate::plot::{Panel, Series};
    let second = |ms: i64| ((ms - started_ms).max(0) / 1000) as usize;
    let per_second = |times: &mut dyn Iterator<Item = i64>| {
        let mut counts: Vec<f64> = Vec::new();
        for t in times {
            let i = second(t);
            if counts.len() <= i {
                counts.resize(i + 1, 0.0);
            }
            counts[i] += 1.0;
        }
        counts.into_iter().enumerate().map(|(i, c)| (i as f64, c)).collect::<Vec<_>>()
    };
    let p99_per_second = |pairs: &mut dyn Iterator<Item = (i64, i64)>| {
        let mut buckets: Vec<Vec<i64>> = Vec::new();
        for (sent, to) in pairs {
            let i = second(sent);
            if buckets.len() <= i {
                buckets.resize(i + 1, Vec::new());
            }
            buckets[i].push((to - sent).max(0));
        }
        buckets
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, mut b)| {
                b.sort_unstable();
                (i as f64, b[((b.len() - 1) as f64 * 0.99).round() as usize] as f64)
            })
            .collect::<Vec<_>>()
    };
    let sent_of = |r: &RunTimes| produced.get(&r.event_id).copied();
    let rates = Panel {
        title: format!("rates at {rate} events/s offered"),
        unit: "per s",
        series: vec![
            Series { label: "events sent".into(), color: "#7f7f7f", points: per_second(&mut produced.values().copied()) },
            Series { label: "runs begun".into(), color: "#1f77b4", points: per_second(&mut rows.iter().filter_map(|r| r.began)) },
            Series {
                label: "first results visible".into(),
                color: "#2ca02c",
                points: per_second(&mut rows.iter().filter_map(|r| visible.get(&r.run_id).copied())),
            },
        ],
    };
    let latency = Panel {
        title: "latency by send second, p99".into(),
        unit: "ms",
        series: vec![
            Series {
                label: "event -> run began".into(),
                color: "#1f77b4",
                points: p99_per_second(&mut rows.iter().filter_map(|r| Some((sent_of(r)?, r.began?)))),
            },
            Series {
                label: "event -> result visible".into(),
                color: "#2ca02c",
                points: p99_per_second(&mut rows.iter().filter_map(|r| Some((sent_of(r)?, *visible.get(&r.run_id)?)))),
            },
        ],
    };
    crate::plot::svg(&[rates, latency])
}

/// The most runs of one tenant executing at once, from when flow control admitted each run to
/// when it finished (what the limit bounds), swept over every run of the definition.
async fn peak_per_tenant(pool: &tf_store::PgPool, def_id: &str) -> anyhow::Result<usize> {
    let rows: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT coalesce(input->'event'->'data'->>'tenant', ''), extract(epoch FROM admitted_at)::float8, extract(epoch FROM finished_at)::float8
         FROM activity_runs WHERE definition_id = $1 AND admitted_at IS NOT NULL AND finished_at IS NOT NULL",
    )
    .bind(def_id)
    .fetch_all(pool)
    .await?;
    let mut by_tenant: HashMap<String, Vec<(f64, i32)>> = HashMap::new();
    for (tenant, from, to) in rows {
        let edges = by_tenant.entry(tenant).or_default();
        edges.push((from, 1));
        edges.push((to, -1));
    }
    let mut peak = 0;
    for edges in by_tenant.values_mut() {
        // An end before a start at the same instant: a slot handed over is not an overlap.
        edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut now = 0i32;
        for (_, step) in edges.iter() {
            now += step;
            peak = peak.max(now as usize);
        }
    }
    Ok(peak)
}
