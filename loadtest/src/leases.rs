//! `tf-loadtest leases`: groundwork for flow control (issue 28). What the candidate mechanisms
//! for a concurrency limit cost. Clients stand for runs: each takes a slot of its key, holds it
//! for `--hold-ms`, and gives it back. Prints grants/s, the latency of a grant, and the most
//! holders one key ever had at once, which must not pass `--limit`.
//!
//! - Default: slots as PostgreSQL rows, taken with `FOR UPDATE SKIP LOCKED` and held under a
//!   lease that expires (so a holder SIGKILLed mid-run does not keep its slot); a client that
//!   finds no free slot waits `--wait-ms` and asks again (a Temporal timer in the real design).
//!   Runs on a scratch database that is dropped afterwards; the table is the benchmark's own.
//! - `--coordinator`: a coordinator workflow per key (run by a worker in this process on a task
//!   queue of its own); a client takes a slot with an update that returns once one is free and
//!   gives it back with a signal; nobody polls. Also prints the history events per grant.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use temporalio_sdk::{SyncWorkflowContext, WorkflowContext, WorkflowResult};
use tf_config::Settings;

#[derive(clap::Args)]
pub struct LeasesArgs {
    /// Concurrent clients (runs wanting a slot).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Slots per key (the concurrency limit).
    #[arg(long, default_value_t = 2)]
    limit: i32,
    /// Keys the clients spread over (1: everyone contends for one key).
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// How long a client holds its slot, in milliseconds (the run's work).
    #[arg(long, default_value_t = 20)]
    hold_ms: u64,
    /// How long a refused client waits before asking again, in milliseconds.
    #[arg(long, default_value_t = 10)]
    wait_ms: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// A coordinator workflow per key instead of PostgreSQL rows.
    #[arg(long)]
    coordinator: bool,
}

/// How many clients hold a slot of each key now, and the most any key ever had: counted by
/// the clients themselves, between a grant and the release, so the check does not trust the
/// mechanism it checks.
struct Holders {
    now: Vec<AtomicI64>,
    peak: Vec<AtomicI64>,
}

impl Holders {
    fn new(keys: usize) -> Arc<Holders> {
        Arc::new(Holders { now: (0..keys).map(|_| AtomicI64::new(0)).collect(), peak: (0..keys).map(|_| AtomicI64::new(0)).collect() })
    }

    fn enter(&self, key: usize) {
        let now = self.now[key].fetch_add(1, Ordering::SeqCst) + 1;
        self.peak[key].fetch_max(now, Ordering::SeqCst);
    }

    /// Counted out before the slot is given back, so the count never trails the mechanism.
    fn leave(&self, key: usize) {
        self.now[key].fetch_sub(1, Ordering::SeqCst);
    }

    fn most(&self) -> i64 {
        self.peak.iter().map(|p| p.load(Ordering::SeqCst)).max().unwrap_or(0)
    }
}

/// The figures both mechanisms report.
struct Tally {
    granted: Histogram<u64>,
    refused: Histogram<u64>,
    grants: u64,
    refusals: u64,
    most: i64,
}

fn report(a: &LeasesArgs, what: &str, t: &Tally) -> std::process::ExitCode {
    let secs = a.seconds as f64;
    println!(
        "leases ({what}): {} clients, {} key(s) x {} slot(s), hold {} ms, wait {} ms, {} s",
        a.clients, a.keys, a.limit, a.hold_ms, a.wait_ms, a.seconds
    );
    println!(
        "  grants {:.1}/s (ideal {:.1}/s), refusals {:.1}/s",
        t.grants as f64 / secs,
        (a.keys as f64 * f64::from(a.limit)) * 1000.0 / a.hold_ms.max(1) as f64,
        t.refusals as f64 / secs
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  grant latency p50 {:.2} ms p99 {:.2} ms; refusal p50 {:.2} ms p99 {:.2} ms",
        ms(&t.granted, 0.5),
        ms(&t.granted, 0.99),
        ms(&t.refused, 0.5),
        ms(&t.refused, 0.99)
    );
    println!("  most holders of one key at once: {} (limit {})", t.most, a.limit);
    if t.most > i64::from(a.limit) { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}

const ACQUIRE: &str = "UPDATE slots SET holder = $2, expires_at = now() + interval '60 seconds'
     WHERE (key, slot) = (SELECT key, slot FROM slots WHERE key = $1 AND (holder IS NULL OR expires_at < now())
                          ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
     RETURNING slot";
const RELEASE: &str = "UPDATE slots SET holder = NULL, expires_at = NULL WHERE key = $1 AND slot = $2 AND holder = $3";

pub async fn run(s: &Settings, a: &LeasesArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(a.clients > 0 && a.keys > 0 && a.limit > 0, "--clients, --keys and --limit must be positive");
    if a.coordinator { coordinator(s, a).await } else { rows(s, a).await }
}

async fn rows(s: &Settings, a: &LeasesArgs) -> anyhow::Result<std::process::ExitCode> {
    let db = tf_testkit::FreshDatabase::create(s).await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(a.clients.min(64) as u32).connect(&db.url).await?;
    sqlx::query("CREATE TABLE slots (key text, slot integer, holder text, expires_at timestamptz, PRIMARY KEY (key, slot))")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO slots (key, slot) SELECT 'k' || k, s FROM generate_series(0, $1 - 1) k, generate_series(0, $2 - 1) s")
        .bind(a.keys as i32)
        .bind(a.limit)
        .execute(&pool)
        .await?;
    let holders = Holders::new(a.keys);
    let (grants, refusals) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (pool, holders, grants, refusals) = (pool.clone(), holders.clone(), grants.clone(), refusals.clone());
        let (hold, wait, key_index) = (Duration::from_millis(a.hold_ms), Duration::from_millis(a.wait_ms), c % a.keys);
        tasks.push(tokio::spawn(async move {
            let mut granted = Histogram::<u64>::new(3).expect("histogram");
            let mut refused = Histogram::<u64>::new(3).expect("histogram");
            let (key, me) = (format!("k{key_index}"), format!("client-{c}"));
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let slot: Option<i32> = sqlx::query_scalar(ACQUIRE).bind(&key).bind(&me).fetch_optional(&pool).await?;
                let micros = t0.elapsed().as_micros() as u64;
                let Some(slot) = slot else {
                    refused.record(micros).ok();
                    refusals.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    continue;
                };
                granted.record(micros).ok();
                grants.fetch_add(1, Ordering::Relaxed);
                holders.enter(key_index);
                tokio::time::sleep(hold).await;
                holders.leave(key_index);
                sqlx::query(RELEASE).bind(&key).bind(slot).bind(&me).execute(&pool).await?;
            }
            anyhow::Ok((granted, refused))
        }));
    }
    let mut granted = Histogram::<u64>::new(3)?;
    let mut refused = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (g, r) = t.await??;
        granted.add(&g)?;
        refused.add(&r)?;
    }
    pool.close().await;
    // The scratch database goes when `db` is dropped, at the end of this function.
    let most = holders.most();
    let tally = Tally { granted, refused, grants: grants.load(Ordering::Relaxed), refusals: refusals.load(Ordering::Relaxed), most };
    Ok(report(a, "PostgreSQL rows", &tally))
}

/// A coordinator of one key's slots: `acquire` returns once a slot is free and takes it,
/// `release` gives one back. Handlers that wake together check again, so no two take the
/// last slot.
#[temporalio_macros::workflow]
#[derive(Default)]
pub struct LeaseCoordinator {
    free: i32,
    grants: u64,
    stop: bool,
}

#[temporalio_macros::workflow_methods]
impl LeaseCoordinator {
    #[run(name = "LeaseCoordinator")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, slots: i32) -> WorkflowResult<u64> {
        ctx.state_mut(|s| s.free = slots);
        ctx.wait_condition(|s| s.stop).await?;
        Ok(ctx.state(|s| s.grants))
    }

    #[update(name = "acquire")]
    pub async fn acquire(ctx: &mut WorkflowContext<Self>, _who: String) -> bool {
        loop {
            if ctx.wait_condition(|s| s.free > 0).await.is_err() {
                return false;
            }
            let taken = ctx.state_mut(|s| {
                let free = s.free > 0;
                if free {
                    s.free -= 1;
                    s.grants += 1;
                }
                free
            });
            if taken {
                return true;
            }
        }
    }

    #[signal(name = "release")]
    pub fn release(&mut self, _ctx: &mut SyncWorkflowContext<Self>, _who: String) {
        self.free += 1;
    }

    #[signal(name = "stop")]
    pub fn stop(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.stop = true;
    }
}

async fn coordinator(s: &Settings, a: &LeasesArgs) -> anyhow::Result<std::process::ExitCode> {
    use temporalio_client::{WorkflowExecuteUpdateOptions, WorkflowSignalOptions, WorkflowStartOptions};
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-loadtest-leases").await?;
    let nonce = crate::now_ms() % 10_000_000;
    let queue = format!("tf-loadtest-leases-{nonce}");
    let runtime = temporalio_sdk::Runtime::from_current_tokio(temporalio_sdk::runtime::RuntimeOptions::default())?;
    let options = temporalio_sdk::WorkerOptions::new(queue.as_str()).register_workflow::<LeaseCoordinator>()?.build();
    let mut worker = temporalio_sdk::Worker::new(&runtime, client.clone(), options)?;
    let shutdown = worker.shutdown_handle();
    let ids: Vec<String> = (0..a.keys).map(|k| format!("leases-{nonce}-k{k}")).collect();
    let bench = async {
        for id in &ids {
            client.start_workflow(LeaseCoordinator::run, a.limit, WorkflowStartOptions::new(queue.as_str(), id.as_str()).build()).await?;
        }
        let holders = Holders::new(a.keys);
        let grants = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let mut tasks = Vec::new();
        for c in 0..a.clients {
            let (client, holders, grants) = (client.clone(), holders.clone(), grants.clone());
            let (hold, key_index, id) = (Duration::from_millis(a.hold_ms), c % a.keys, ids[c % a.keys].clone());
            tasks.push(tokio::spawn(async move {
                let mut granted = Histogram::<u64>::new(3).expect("histogram");
                let handle = client.get_workflow_handle::<LeaseCoordinator>(id);
                let me = format!("client-{c}");
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let ok = handle.execute_update(LeaseCoordinator::acquire, me.clone(), WorkflowExecuteUpdateOptions::default()).await?;
                    anyhow::ensure!(ok, "the coordinator stopped");
                    granted.record(t0.elapsed().as_micros() as u64).ok();
                    grants.fetch_add(1, Ordering::Relaxed);
                    holders.enter(key_index);
                    tokio::time::sleep(hold).await;
                    holders.leave(key_index);
                    handle.signal(LeaseCoordinator::release, me.clone(), WorkflowSignalOptions::default()).await?;
                }
                anyhow::Ok(granted)
            }));
        }
        let mut granted = Histogram::<u64>::new(3)?;
        for t in tasks {
            granted.add(&t.await??)?;
        }
        let mut events = 0usize;
        for id in &ids {
            let handle = client.get_workflow_handle::<LeaseCoordinator>(id.clone());
            handle.signal(LeaseCoordinator::stop, (), WorkflowSignalOptions::default()).await?;
            let history: serde_json::Value = serde_json::from_slice(&handle.fetch_history(Default::default()).to_json().await?)?;
            events += history["events"].as_array().map_or(0, Vec::len);
        }
        let most = holders.most();
        let tally = Tally { granted, refused: Histogram::new(3)?, grants: grants.load(Ordering::Relaxed), refusals: 0, most };
        anyhow::Ok((tally, events))
    };
    let (ran, outcome) = tokio::join!(worker.run(), async {
        let outcome = bench.await;
        shutdown();
        outcome
    });
    ran?;
    let (tally, events) = outcome?;
    let code = report(a, "coordinator workflow", &tally);
    println!("  history events per grant: {:.1} ({events} events)", events as f64 / tally.grants.max(1) as f64);
    Ok(code)
}
