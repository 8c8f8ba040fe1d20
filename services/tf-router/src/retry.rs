//! Pausing a record while a dependency it needs is down or refuses this router's settings:
//! retried with backoff and jitter for as long as it takes, never skipped or dead-lettered.
//! Shared by routing (`dispatch.rs`) and dead-lettering (`dlq.rs`).

use std::time::Duration;

use crate::Shared;

/// Retries `op` with exponential backoff and jitter (100 ms up to 10 s) until it succeeds.
pub async fn retry<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Paused>>,
{
    let mut backoff = tf_runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut attempt = 0u32;
    let mut paused = MisconfiguredPause { gauge: &shared.metrics.paused_misconfigured, counted: false };
    loop {
        match op().await {
            Ok(v) => return v,
            Err(Paused { misconfigured, message }) => {
                attempt += 1;
                shared.metrics.dependency_retries.increment(1);
                paused.set(misconfigured);
                let pause = backoff.pause();
                if misconfigured {
                    tracing::error!(what, attempt, error = %message, pause_ms = pause.as_millis() as u64, "a dependency refused this router's settings; pausing this record until they are fixed");
                } else {
                    tracing::warn!(what, attempt, error = %message, pause_ms = pause.as_millis() as u64, "dependency failed; pausing this record");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Why [`retry`] pauses a record: a dependency is down (transient), or it refuses this
/// router's settings (misconfigured: counted in `tf_router_paused_misconfigured` until fixed).
/// Neither is the record's fault, so neither dead-letters it.
pub struct Paused {
    pub misconfigured: bool,
    pub message: String,
}

/// This record's share of `tf_router_paused_misconfigured`: counted once while a dependency
/// refuses the settings, and given back when that ends, however it ends (success, a transient
/// failure, a panic, the future dropped at shutdown).
struct MisconfiguredPause<'a> {
    gauge: &'a metrics::Gauge,
    counted: bool,
}

impl MisconfiguredPause<'_> {
    fn set(&mut self, misconfigured: bool) {
        if misconfigured != self.counted {
            self.gauge.increment(if misconfigured { 1.0 } else { -1.0 });
            self.counted = misconfigured;
        }
    }
}

impl Drop for MisconfiguredPause<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl From<String> for Paused {
    fn from(message: String) -> Paused {
        Paused { misconfigured: false, message }
    }
}
