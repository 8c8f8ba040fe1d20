//! `tf-worker`: hosts the RunActivity and RunTask workflows and their activities on the
//! `taskfactory` task queue, and runs the results relay.
//!
//! A library so that the binary and the tests share one wiring ([`run`]) and so that the
//! workflow replay test (`tests/histories.rs`) replays recorded histories against the very
//! workflow types the worker registers ([`workflows`]).

pub mod activities;
mod context_cache;
mod egress;
mod http;
mod metrics;
pub mod patches;
mod reconcile;
mod relay;
mod scheduler;
mod sdk_metrics;
mod sources;
mod task_path;
mod unfold;
pub mod workflows;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::FutureProducer;
use temporalio_sdk::runtime::PollerBehavior;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tf_config::Settings;
use tf_envelope::{Codec, Registry};

/// Run the task factory's Temporal worker and results relay.
///
/// Every setting is also an environment variable with the TF_ prefix.
#[derive(clap::Parser)]
#[command(name = "tf-worker", version)]
pub struct Config {
    #[command(flatten)]
    settings: Settings,
    /// Kafka transactional.id of the results relay, one per deployment. Workers sharing it elect
    /// one relay through a PostgreSQL advisory lock; the others take over when it dies.
    #[arg(long, env = "TF_RELAY_TRANSACTIONAL_ID", default_value = "taskfactory-results-relay")]
    relay_transactional_id: String,
    /// Results larger than this many bytes are published with their output replaced by a note
    /// (the full output stays in the tasks table). Keep it under the results topic's
    /// `max.message.bytes` and the producer's `message.max.bytes` (both about 1 MB by default).
    #[arg(long, env = "TF_RESULT_MAX_BYTES", default_value_t = 900_000)]
    result_max_bytes: usize,
    /// Hosts `http` context sources and tasks may call (`api.example.com`, `*.corp.example`),
    /// comma separated. Empty: any host except those resolving to loopback, private or
    /// link-local addresses.
    #[arg(long, env = "TF_HTTP_ALLOWED_HOSTS", value_delimiter = ',', default_value = "")]
    http_allowed_hosts: Vec<String>,
    /// Let `secret()` in a definition's headers go to calls that name no datasource. Off:
    /// anyone allowed to write definitions could otherwise send any worker secret to a URL of
    /// their choice.
    #[arg(long, env = "TF_HTTP_SECRETS_WITHOUT_DATASOURCE", default_value_t = false)]
    http_secrets_without_datasource: bool,
    /// Largest HTTP response body read from a context source or task.
    #[arg(long, env = "TF_HTTP_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    http_max_body_bytes: usize,
    /// YAML file of named datasources (`postgres`, `http`) that context sources and http tasks
    /// reach; `TF_DATASOURCE__<NAME>__URL` and friends add to it. See docs/datasources.md.
    #[arg(long = "datasources", env = "TF_DATASOURCES")]
    datasources_file: Option<std::path::PathBuf>,
    /// Directory of one file per secret (a Kubernetes secret mount); `TF_SECRET_<NAME>`
    /// variables hold secrets too.
    #[arg(long, env = "TF_SECRETS_DIR")]
    secrets_dir: Option<std::path::PathBuf>,
    /// Do not run the results relay in this process.
    #[arg(long, env = "TF_NO_RELAY")]
    no_relay: bool,
    /// Do not reconcile Temporal Schedules for cron definitions in this process.
    #[arg(long, env = "TF_NO_SCHEDULER")]
    no_scheduler: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); empty to disable.
    #[arg(long, env = "TF_WORKER_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    metrics_addr: String,
    /// Seconds to finish in-flight workflow and activity tasks after SIGTERM/SIGINT; past it the
    /// worker exits non-zero (Temporal retries what it left on another worker).
    #[arg(long, env = "TF_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
    /// How often runs recorded `running` are checked against Temporal, in seconds: a run whose
    /// workflow was terminated, timed out or lost its history is settled (0 turns it off).
    #[arg(long, env = "TF_RUN_RECONCILE_SECS", default_value_t = 60)]
    run_reconcile_secs: u64,
    /// How often the scheduler looks for changed definitions, in milliseconds.
    #[arg(long, env = "TF_SCHEDULER_REFRESH_MS", default_value_t = 2000)]
    scheduler_refresh_ms: u64,
    /// Concurrent workflow task polls on the task queue (at least 2). Unset: the Temporal SDK's
    /// default (5, or the server's poller autoscaling where it offers it).
    #[arg(long, env = "TF_WORKER_WORKFLOW_POLLERS", value_parser = clap::value_parser!(u16).range(2..))]
    workflow_pollers: Option<u16>,
    /// Patch ids (workflow changes, see docs/architecture.md "Workflow versioning") this worker
    /// leaves dormant, comma separated: the first step of rolling out a build with a new patch,
    /// until every worker runs it. An id this build does not know is refused.
    #[arg(long, env = "TF_WORKER_DORMANT_PATCHES", value_delimiter = ',', default_value = "")]
    dormant_patches: Vec<String>,
    /// Concurrent activity task polls on the task queue. Unset: the Temporal SDK's default.
    #[arg(long, env = "TF_WORKER_ACTIVITY_POLLERS", value_parser = clap::value_parser!(u16).range(1..))]
    activity_pollers: Option<u16>,
    /// Shared concurrency budgets, comma separated `name=limit` (`crm-api=3,erp=10`): a task
    /// template with `budget: crm-api` holds one of its slots while it executes, across every
    /// definition and worker. Every worker must declare the same budgets.
    #[arg(long, env = "TF_BUDGETS", value_delimiter = ',', default_value = "", value_parser = parse_budget)]
    budgets: Vec<Option<(String, u32)>>,
}

/// One `name=limit` of `TF_BUDGETS`; a blank entry is no budget.
fn parse_budget(text: &str) -> Result<Option<(String, u32)>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (name, limit) = text.split_once('=').ok_or_else(|| format!("{text:?} is not name=limit (crm-api=3)"))?;
    let name = name.trim();
    if !tf_definitions::flow::valid_budget_name(name) {
        return Err(format!("{name:?} must be 1-64 of a-z, 0-9, '-', '_', '.'"));
    }
    match limit.trim().parse::<u32>() {
        Ok(n) if (1..=tf_definitions::flow::MAX_LIMIT).contains(&n) => Ok(Some((name.to_string(), n))),
        _ => Err(format!("{name}: the limit {limit:?} must be a whole number from 1 to {}", tf_definitions::flow::MAX_LIMIT)),
    }
}

/// Runs the worker until SIGTERM/SIGINT: everything `main` does after telemetry is set up.
pub async fn run(cli: Config) -> anyhow::Result<()> {
    tf_config::check_connection_settings()?;
    let recorder = tf_runtime::Metrics::install("tf-worker", env!("CARGO_PKG_VERSION"), metrics::BUCKETS)?;
    // Ready once PostgreSQL, Kafka and Temporal are connected and the worker polls; not ready
    // while shutting down.
    let ready = tf_runtime::Ready::default();
    tf_runtime::serve(&cli.metrics_addr, recorder, ready.clone());
    build(cli, ready).await?.run_until(tf_runtime::shutdown_signal()).await
}

/// A worker connected and registered, with its background tasks (relay, scheduler,
/// reconciler, generation expiry) started, not yet polling.
pub struct Application {
    worker: Worker,
    /// Kept alive with the worker it runs.
    _runtime: Runtime,
    stop_tx: tokio::sync::watch::Sender<bool>,
    relay: Option<tokio::task::JoinHandle<Result<(), relay::RelayError>>>,
    ready: tf_runtime::Ready,
    task_queue: String,
    dormant: Vec<String>,
    shutdown_timeout: u64,
}

/// Everything between the configuration and a polling worker, shared by `main` (through
/// [`run`]); the process-wide parts (the metrics recorder and its port) stay in [`run`].
pub async fn build(cli: Config, ready: tf_runtime::Ready) -> anyhow::Result<Application> {
    let s = &cli.settings;
    let pool = tf_store::connect(&s.database_url).await?;
    let datasources = tf_config::Datasources::load(cli.datasources_file.as_deref(), std::env::vars())?;
    let secrets = Arc::new(tf_config::Secrets::new(std::env::vars(), cli.secrets_dir.clone()));
    let producer: FutureProducer =
        tf_kafka::client_config(&s.kafka_brokers).set("enable.idempotence", "true").create().context("Kafka producer")?;
    let http = http::HttpClient::new(cli.http_allowed_hosts.clone(), cli.http_max_body_bytes)?
        .secrets_without_datasource(cli.http_secrets_without_datasource);
    let sources = sources::Sources::new(&datasources, http, secrets)?;
    tracing::info!(datasources = %datasources.describe(), "datasources configured");
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "tf-worker").await?;
    let codec = Arc::new(Codec::new(Arc::new(Registry::new(&s.schema_registry_url))));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::new());
    let relay = if cli.no_relay {
        None
    } else {
        Some(tokio::spawn(relay::run_as_leader(
            pool.clone(),
            codec,
            s.kafka_brokers.clone(),
            cli.relay_transactional_id.clone(),
            metrics.clone(),
            cli.result_max_bytes,
            stop_rx,
        )))
    };

    if !cli.no_scheduler {
        tokio::spawn(scheduler::run(
            pool.clone(),
            client.clone(),
            s.task_queue.clone(),
            Duration::from_millis(cli.scheduler_refresh_ms),
            metrics.clone(),
            stop_tx.subscribe(),
        ));
    }

    let dormant = patches::Dormant::parse(&cli.dormant_patches)?;
    let meter: Arc<dyn temporalio_common::telemetry::metrics::CoreMeter> = Arc::new(sdk_metrics::SdkMetrics);
    let telemetry = temporalio_common::telemetry::TelemetryOptions::builder().metrics(meter).build();
    let runtime = Runtime::from_current_tokio(RuntimeOptions::builder().telemetry_options(telemetry).build().map_err(anyhow::Error::msg)?)?;
    let options = WorkerOptions::new(s.task_queue.as_str())
        .register_activities(activities::RunActivities {
            pool: pool.clone(),
            metrics: metrics.clone(),
            producer,
            sources,
            temporal: client.clone(),
            budgets: Arc::new(cli.budgets.iter().flatten().cloned().collect()),
        })
        .register_workflow::<workflows::RunActivityWorkflow>()?
        .register_workflow::<workflows::RunTaskWorkflow>()?
        .maybe_workflow_task_poller_behavior(cli.workflow_pollers.map(|n| PollerBehavior::SimpleMaximum(n.into())))
        .maybe_activity_task_poller_behavior(cli.activity_pollers.map(|n| PollerBehavior::SimpleMaximum(n.into())))
        .maybe_patch_activation_callback(dormant.callback())
        .build();
    if cli.run_reconcile_secs > 0 {
        let every = Duration::from_secs(cli.run_reconcile_secs);
        tokio::spawn(reconcile::run(pool.clone(), client.clone(), every, stop_tx.subscribe()));
    }
    let worker = Worker::new(&runtime, client, options)?;
    tokio::spawn(expire_generations(pool, stop_tx.subscribe()));
    Ok(Application {
        worker,
        _runtime: runtime,
        stop_tx,
        relay,
        ready,
        task_queue: s.task_queue.clone(),
        dormant: dormant.ids().map(str::to_string).collect(),
        shutdown_timeout: cli.shutdown_timeout,
    })
}

impl Application {
    /// Polls until `stop` completes, then lets in-flight tasks finish (up to
    /// `--shutdown-timeout`) and waits for the relay to stop.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let shutdown = self.worker.shutdown_handle();
        let (ready, stop_tx) = (self.ready.clone(), self.stop_tx.clone());
        let mut stopping = self.stop_tx.subscribe();
        tokio::spawn(async move {
            stop.await;
            ready.set(false);
            tracing::info!("shutting down: finishing in-flight tasks");
            let _ = stop_tx.send(true);
            shutdown();
        });
        self.ready.set(true);
        tracing::info!(task_queue = %self.task_queue, patches = ?patches::KNOWN, dormant = ?self.dormant, "worker running");
        let deadline = tf_runtime::deadline(
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            },
            Duration::from_secs(self.shutdown_timeout),
        );
        tokio::select! {
            ran = self.worker.run() => ran?,
            () = deadline => anyhow::bail!(
                "shutdown deadline of {} s passed with workflow or activity tasks still running; Temporal retries them on another worker",
                self.shutdown_timeout
            ),
        }
        if let Some(relay) = self.relay {
            relay.await??;
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Deletes dedupe generations whose window ended more than the claim retention ago, batches
/// closed that long ago, and remembered events and ended waits (tf_store::waits), every ten
/// minutes (claims themselves stay: their generation counter
/// keeps workflow ids unique).
async fn expire_generations(pool: tf_store::PgPool, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match tf_store::claims::expire_generations(&pool, tf_definitions::dedupe::CLAIM_RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired dedupe generations deleted"),
            Err(e) => tracing::warn!(error = %e, "expiring dedupe generations failed; next try in ten minutes"),
        }
        match tf_store::flow::expire_batches(&pool, tf_definitions::dedupe::CLAIM_RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired flow-control batches deleted"),
            Err(e) => tracing::warn!(error = %e, "expiring batches failed; next try in ten minutes"),
        }
        match tf_store::waits::expire(&pool, tf_definitions::dedupe::CLAIM_RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "remembered events and ended waits deleted"),
            Err(e) => tracing::warn!(error = %e, "expiring event waits failed; next try in ten minutes"),
        }
    }
}
