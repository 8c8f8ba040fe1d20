//! `tf-loadtest bare`: the router's baseline. Starts RunActivity workflows straight from this
//! process, with the router's own start call (same SDK, workflow ids, policies and search
//! attributes, an event-sized input) and as many in flight as the router allows by default,
//! on a task queue nobody polls; each closes by itself a minute later. Starts acknowledged per
//! second is what Temporal gives any client on this machine; the router's events/s over it is
//! the ratio issue 13 asks for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tf_config::Settings;
use tf_temporal::{RunInput, RunSource, StartOutcome};

use crate::now_ms;

#[derive(clap::Args)]
pub struct BareArgs {
    /// Workflows to start.
    #[arg(long, default_value_t = 2000)]
    starts: usize,
    /// Starts in flight at once (the router's TF_ROUTER_MAX_IN_FLIGHT default).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub async fn run(s: &Settings, a: &BareArgs) -> anyhow::Result<std::process::ExitCode> {
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-loadtest-bare").await?;
    let nonce = now_ms() % 10_000_000;
    let queue = format!("tf-loadtest-bare-{nonce}");
    let definition = format!("loadtest-bare-{nonce}");
    let input = |i: usize| RunInput {
        definition_id: definition.clone(),
        definition_version: 1,
        dedupe_key: format!("k-{i}"),
        dedupe_window_secs: 3600,
        generation: 1,
        event_time_ms: Some(now_ms()),
        trigger: RunSource::event(&format!("events.loadtest-bare-{nonce}"), (i % 6) as i32, i as i64, Some(format!("lt-{i}"))),
        event: Some(Arc::new(json!({"id": format!("lt-{i}"), "source": "/loadtest", "type": "loadtest", "specversion": "1.0",
                           "time": now_ms(), "data": {"key": format!("k-{i}"), "customer": "c-1001"}}))),
        traceparent: None,
        operator_retry: false,
    };
    // One start outside the figures: connection and namespace lookups.
    tf_temporal::start_run_expiring(&client, &queue, input(a.starts), Duration::from_secs(60)).await?;
    println!("starting {} RunActivity workflows on {queue} (unpolled), {} in flight", a.starts, a.concurrency);
    let started = Instant::now();
    let outcomes: Vec<_> = futures::stream::iter((0..a.starts).map(|i| {
        let (client, queue, input) = (client.clone(), queue.clone(), input(i));
        async move {
            let t0 = Instant::now();
            let r = tf_temporal::start_run_expiring(&client, &queue, input, Duration::from_secs(60)).await;
            (r, t0.elapsed())
        }
    }))
    .buffer_unordered(a.concurrency.max(1))
    .collect()
    .await;
    let secs = started.elapsed().as_secs_f64();
    let t = Tally::of(outcomes.into_iter().map(|(r, took)| (r.map_err(|e| e.to_string()), took)), "start failed");
    // Every start here is of a new id: a refusal is a failure too.
    let failed = t.refused + t.failed;
    println!("\n=== tf-loadtest bare report ===");
    println!("starts acknowledged    {} of {}  ({failed} failed)", t.started, a.starts);
    println!("throughput             {:.0} starts/s  ({secs:.1} s, {} in flight)", t.started as f64 / secs, a.concurrency);
    println!(
        "start latency          p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms",
        t.percentile_ms(0.5),
        t.percentile_ms(0.9),
        t.percentile_ms(0.99)
    );
    Ok(if failed == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// What a load of starts came to: started (with each one's latency), refused by Temporal as a
/// duplicate, failed (the first three failures are printed, after `what`).
pub struct Tally {
    pub started: usize,
    pub refused: usize,
    pub failed: usize,
    /// Latencies of the starts that started, sorted.
    latencies: Vec<Duration>,
}

impl Tally {
    pub fn of(outcomes: impl IntoIterator<Item = (Result<StartOutcome, String>, Duration)>, what: &str) -> Tally {
        let mut t = Tally { started: 0, refused: 0, failed: 0, latencies: Vec::new() };
        for (r, took) in outcomes {
            match r {
                Ok(StartOutcome::Started { .. }) => {
                    t.started += 1;
                    t.latencies.push(took);
                }
                Ok(StartOutcome::Duplicate { .. }) => t.refused += 1,
                Err(e) => {
                    t.failed += 1;
                    if t.failed <= 3 {
                        eprintln!("{what}: {e}");
                    }
                }
            }
        }
        t.latencies.sort_unstable();
        t
    }

    /// The `q` quantile of the started ones' latency, in ms (0 when none started).
    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latencies.get(((self.latencies.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}
