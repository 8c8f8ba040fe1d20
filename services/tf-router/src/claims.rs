//! Claim resolution in batches (docs/design.md, dedupe layer 3): records in flight ask for the
//! generation of their (definition, key, event time); one task sends whatever has queued up as
//! one statement, so a new key costs a share of a round trip rather than one, and a replay of
//! already-routed ranges costs a few queries rather than a Temporal start per event.

use std::sync::Arc;
use std::time::Duration;

use tf_store::PgPool;
use tf_store::claims::{ClaimRequest, Generation, HeldConnection};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// The most requests one statement resolves.
const MAX_BATCH: usize = 512;

/// Why a generation could not be resolved.
#[derive(Debug, Clone)]
pub enum ClaimFailure {
    /// PostgreSQL unavailable: pause the record and ask again.
    Transient(String),
    /// PostgreSQL refuses this request for good: dead-letter the record.
    Permanent(String),
}

struct Job {
    definition_id: String,
    dedupe_key: String,
    event_time_ms: i64,
    window: Duration,
    reply: oneshot::Sender<Result<Generation, ClaimFailure>>,
}

impl Job {
    fn request(&self) -> ClaimRequest<'_> {
        ClaimRequest {
            definition_id: &self.definition_id,
            dedupe_key: &self.dedupe_key,
            event_time_ms: self.event_time_ms,
            window: self.window,
        }
    }
}

#[derive(Clone)]
pub struct Claims {
    tx: mpsc::UnboundedSender<Job>,
}

impl Claims {
    pub fn start(pool: PgPool, metrics: Arc<Metrics>) -> Claims {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(pool, metrics, rx));
        Claims { tx }
    }

    pub async fn resolve(
        &self,
        definition_id: &str,
        dedupe_key: &str,
        event_time_ms: i64,
        window: Duration,
    ) -> Result<Generation, ClaimFailure> {
        let (reply, answer) = oneshot::channel();
        let job = Job { definition_id: definition_id.into(), dedupe_key: dedupe_key.into(), event_time_ms, window, reply };
        self.tx.send(job).map_err(|_| ClaimFailure::Transient("claim resolver stopped".into()))?;
        answer.await.map_err(|_| ClaimFailure::Transient("claim resolver stopped".into()))?
    }
}

async fn batcher(pool: PgPool, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Job>) {
    // Its own connection, kept between statements: see HeldConnection.
    let mut conn = HeldConnection::new(pool);
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics.claim_batches.increment(1);
        let requests: Vec<ClaimRequest<'_>> = jobs.iter().map(Job::request).collect();
        match conn.resolve_generations(&requests).await {
            Ok(generations) => {
                drop(requests);
                for (job, g) in jobs.into_iter().zip(generations) {
                    let _ = job.reply.send(Ok(g));
                }
            }
            Err(e) if e.is_transient() || jobs.len() == 1 => {
                let failure =
                    if e.is_transient() { ClaimFailure::Transient(e.to_string()) } else { ClaimFailure::Permanent(e.to_string()) };
                drop(requests);
                for job in jobs {
                    let _ = job.reply.send(Err(failure.clone()));
                }
            }
            Err(e) => {
                // One bad request must not fail its neighbours: resolve each on its own.
                tracing::warn!(error = %e, batch = jobs.len(), "claim batch refused; resolving its requests one by one");
                drop(requests);
                for job in jobs {
                    let result = match conn.resolve_generations(&[job.request()]).await {
                        Ok(mut g) => Ok(g.remove(0)),
                        Err(e) if e.is_transient() => Err(ClaimFailure::Transient(e.to_string())),
                        Err(e) => Err(ClaimFailure::Permanent(e.to_string())),
                    };
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}
