//! `tf-loadtest leases`: groundwork for flow control (issue 28). What one candidate mechanism
//! costs: concurrency slots as PostgreSQL rows, taken with `FOR UPDATE SKIP LOCKED` and held
//! under a lease that expires (so a holder SIGKILLed mid-run does not keep its slot). Clients
//! stand for runs: each takes a slot of its key, holds it for `--hold-ms`, and gives it back;
//! a client that finds no free slot waits `--wait-ms` and asks again (a Temporal timer in the
//! real design). Prints grants/s, the latency of a grant and of a refusal, and the most holders
//! one key ever had at once, which must not pass `--limit`. Runs on a scratch database that
//! is dropped afterwards; the table here is the benchmark's own, not a migration.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
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
}

const ACQUIRE: &str = "UPDATE slots SET holder = $2, expires_at = now() + interval '60 seconds'
     WHERE (key, slot) = (SELECT key, slot FROM slots WHERE key = $1 AND (holder IS NULL OR expires_at < now())
                          ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
     RETURNING slot";
const RELEASE: &str = "UPDATE slots SET holder = NULL, expires_at = NULL WHERE key = $1 AND slot = $2 AND holder = $3";

pub async fn run(s: &Settings, a: &LeasesArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(a.clients > 0 && a.keys > 0 && a.limit > 0, "--clients, --keys and --limit must be positive");
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
    let holders: Arc<Vec<AtomicI64>> = Arc::new((0..a.keys).map(|_| AtomicI64::new(0)).collect());
    let peak: Arc<Vec<AtomicI64>> = Arc::new((0..a.keys).map(|_| AtomicI64::new(0)).collect());
    let (grants, refusals) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (pool, holders, peak, grants, refusals) = (pool.clone(), holders.clone(), peak.clone(), grants.clone(), refusals.clone());
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
                let now = holders[key_index].fetch_add(1, Ordering::SeqCst) + 1;
                peak[key_index].fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                // Counted out before the row is freed, so the count never trails the table.
                holders[key_index].fetch_sub(1, Ordering::SeqCst);
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
    let most = peak.iter().map(|p| p.load(Ordering::SeqCst)).max().unwrap_or(0);
    let secs = a.seconds as f64;
    let (g, r) = (grants.load(Ordering::Relaxed), refusals.load(Ordering::Relaxed));
    println!(
        "leases: {} clients, {} key(s) x {} slot(s), hold {} ms, wait {} ms, {} s",
        a.clients, a.keys, a.limit, a.hold_ms, a.wait_ms, a.seconds
    );
    println!(
        "  grants {:.1}/s (ideal {:.1}/s), refusals {:.1}/s",
        g as f64 / secs,
        (a.keys as f64 * f64::from(a.limit)) * 1000.0 / a.hold_ms.max(1) as f64,
        r as f64 / secs
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  grant latency p50 {:.2} ms p99 {:.2} ms; refusal p50 {:.2} ms p99 {:.2} ms",
        ms(&granted, 0.5),
        ms(&granted, 0.99),
        ms(&refused, 0.5),
        ms(&refused, 0.99)
    );
    println!("  most holders of one key at once: {most} (limit {})", a.limit);
    Ok(if most > i64::from(a.limit) { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
