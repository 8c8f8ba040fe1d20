//! `tf-loadtest compare`: the router against its baseline on this machine, in the order
//! baseline, router, router, baseline (ABBA), so that a drift of the stack (the dev server
//! slows as its SQLite history grows) weighs on both sides alike. Each run is this binary run
//! again (`bare`, `peer`, or a `--routing-only` burst); the router is one of its own, started
//! fresh for each run on a topic prefix only it reads, with a task queue nobody polls, as the
//! baselines start theirs. Prints every run's figure and the ratio issue 13 asks for.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tf_config::Settings;

use crate::services::Services;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// What the router is compared with: `bare` (starts from this process, no Kafka) or `peer`
    /// (a plain client reading the same burst from Kafka, no claim lookup).
    #[arg(long, value_parser = ["bare", "peer"], default_value = "bare")]
    baseline: String,
    /// Events in each burst (and starts in each bare run).
    #[arg(long, default_value_t = 6000)]
    events: usize,
    /// Share of events that repeat an earlier key (the bare loop starts only new ids).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Rounds of baseline, router, router, baseline.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seconds to rest after each baseline run: its workflows close a minute after they start,
    /// and that work should not land in the next run.
    #[arg(long, default_value_t = 70)]
    rest_secs: u64,
    /// Folder with tf-router (default: beside this binary).
    #[arg(long, env = "TF_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Where each run's output, the router's log, timelines and plots go.
    #[arg(long, default_value = "loadtest/out")]
    out: PathBuf,
}

/// The topic prefix of the bursts: no router reads it by default.
const PREFIX: &str = "compare.";

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Baseline,
    Router,
}

/// The figure a run's report gives: the line that starts with `label`, its first number.
fn figure(report: &str, label: &str) -> Option<f64> {
    report.lines().find_map(|l| l.strip_prefix(label)).and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok())
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

pub async fn run(s: &Settings, a: &CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.events > 0 && a.rounds > 0, "--events and --rounds must be at least 1");
    anyhow::ensure!((0.0..1.0).contains(&a.duplicates), "--duplicates must be in [0, 1)");
    std::fs::create_dir_all(&a.out)?;
    let nonce = crate::now_ms() % 10_000_000;
    let me = std::env::current_exe().context("this binary's path")?;
    let bin_dir = a.bin_dir.clone().unwrap_or_else(crate::services::default_bin_dir);
    let router_bin = bin_dir.join("tf-router");
    anyhow::ensure!(router_bin.exists(), "{} is missing (build it, or point --bin-dir / TF_BIN_DIR at it)", router_bin.display());
    let others = crate::router_memory();
    if !others.is_empty() {
        let pids: Vec<String> = others.iter().map(|(pid, ..)| pid.to_string()).collect();
        println!(
            "note: tf-router already runs here (pid {}); it does not read this test's topics, but its CPU is counted in `CPU during the burst` and competes with the figures",
            pids.join(", ")
        );
    }
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let group = format!("compare-{nonce}");
    let mut router_env = crate::connection_env(s, &s.database_url);
    router_env.extend(
        [
            ("TF_TASK_QUEUE", format!("compare-{nonce}")),
            ("TF_ROUTER_TOPICS", format!("^{}loadtest-[0-9]+$", PREFIX.replace('.', "\\."))),
            ("TF_ROUTER_GROUP", group.clone()),
            ("TF_ROUTER_METRICS_ADDR", metrics_addr.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut router = Services::new(bin_dir, a.out.clone(), format!("compare-{nonce}-"), router_env);
    let (events, duplicates) = (a.events.to_string(), a.duplicates.to_string());
    let baseline_args: Vec<&str> = match a.baseline.as_str() {
        "bare" => vec!["bare", "--starts", &events],
        _ => vec!["peer", "--events", &events, "--duplicates", &duplicates],
    };
    let out = a.out.display().to_string();
    let router_args =
        ["--routing-only", "--events", &events, "--duplicates", &duplicates, "--group", &group, "--topic-prefix", PREFIX, "--out", &out];
    let (baseline_label, baseline_unit) = if a.baseline == "bare" { ("throughput", "starts/s") } else { ("throughput", "events/s") };

    let order: Vec<Side> = (0..a.rounds).flat_map(|_| [Side::Baseline, Side::Router, Side::Router, Side::Baseline]).collect();
    println!(
        "compare: {} runs ({} round{} of {b}, router, router, {b}), {} events, {:.0} % duplicates, output in {out}",
        order.len(),
        a.rounds,
        if a.rounds == 1 { "" } else { "s" },
        a.events,
        a.duplicates * 100.0,
        b = a.baseline
    );
    let (mut baseline_figures, mut router_figures) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    let mut failed = false;
    for (i, side) in order.iter().enumerate() {
        let n = i + 1;
        let name = match side {
            Side::Baseline => a.baseline.clone(),
            Side::Router => "router".to_string(),
        };
        let log_path = a.out.join(format!("compare-{nonce}-{n}-{name}.txt"));
        print!("  {n:>2}/{} {name:<7} ", order.len());
        std::io::Write::flush(&mut std::io::stdout())?;
        let started = Instant::now();
        let report = match side {
            Side::Baseline => run_self(&me, &baseline_args)?,
            Side::Router => {
                router.restart_router()?;
                router_ready(&mut router, &metrics_addr).await?;
                let report = run_self(&me, &router_args);
                router.stop();
                report?
            }
        };
        std::fs::write(&log_path, &report.1)?;
        let (label, unit) = match side {
            Side::Baseline => (baseline_label, baseline_unit),
            Side::Router => ("routed (committed)", "events/s"),
        };
        let cpu = report.1.lines().find_map(|l| l.strip_prefix("CPU during the burst")).map(str::trim).unwrap_or("").to_string();
        match figure(&report.1, label).filter(|_| report.0) {
            Some(x) => {
                println!(
                    "{x:>6.0} {unit}  ({:.0} s){}",
                    started.elapsed().as_secs_f64(),
                    if cpu.is_empty() { String::new() } else { format!("  CPU: {cpu}") }
                );
                let figures = if *side == Side::Baseline { &mut baseline_figures } else { &mut router_figures };
                figures.push(x);
                rows.push((n, name, x, unit));
            }
            None => {
                println!("FAILED (see {})", log_path.display());
                failed = true;
            }
        }
        // Let the baseline's workflows close, and the router's group settle, before the next.
        let pause = match side {
            Side::Baseline => a.rest_secs,
            Side::Router => a.rest_secs.min(5),
        };
        if n < order.len() && pause > 0 {
            tokio::time::sleep(Duration::from_secs(pause)).await;
        }
    }
    println!("\n=== tf-loadtest compare report ===");
    for (n, name, x, unit) in &rows {
        println!("run {n:>2}  {name:<7} {x:>6.0} {unit}");
    }
    let (b, r) = (mean(&baseline_figures), mean(&router_figures));
    if b > 0.0 && !router_figures.is_empty() {
        println!(
            "router / {}          {:.2}  (router {r:.0} events/s, {} {b:.0} {baseline_unit}; means of {} and {} runs)",
            a.baseline,
            r / b,
            a.baseline,
            router_figures.len(),
            baseline_figures.len()
        );
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Runs this binary with `args` (the connection settings come through the environment, as
/// they came to this process); returns whether it succeeded, and its output.
fn run_self(me: &std::path::Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(me).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {}", me.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Waits for the router's `/readyz` (connected, definitions loaded), then a moment for its
/// group join.
async fn router_ready(router: &mut Services, metrics_addr: &str) -> anyhow::Result<()> {
    let url = format!("http://{metrics_addr}/readyz");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = router.router_exited() {
            anyhow::bail!("tf-router exited before it was ready ({status})");
        }
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tf-router was not ready within 60 s ({url})");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_reports_lines() {
        let router = "runs                   0 runs/s\nrouted (committed)     188 events/s  (all 6000 committed after 31.9 s)\n";
        assert_eq!(figure(router, "routed (committed)"), Some(188.0));
        let bare = "starts acknowledged    6000 of 6000  (0 failed)\nthroughput             163 starts/s  (36.9 s, 64 in flight)\n";
        assert_eq!(figure(bare, "throughput"), Some(163.0));
        assert_eq!(figure(bare, "routed (committed)"), None);
        assert_eq!(figure("throughput             n/a", "throughput"), None);
        assert_eq!(mean(&[132.0, 149.0]), 140.5);
        assert_eq!(mean(&[]), 0.0);
    }
}
