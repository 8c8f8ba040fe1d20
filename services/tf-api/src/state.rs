//! What every handler shares: connections, settings, the console's sessions and lag history.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rdkafka::producer::FutureProducer;
use tf_config::Settings;
use tf_envelope::{Codec, Registry};

use crate::error::ApiError;
use crate::{auth, metrics};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: tf_store::PgPool,
    pub tokens: Arc<auth::Tokens>,
    pub codec: Arc<Codec>,
    pub registry: Arc<Registry>,
    pub producer: FutureProducer,
    pub settings: Arc<Settings>,
    /// The operator's datasources when this process sees them (definitions are then checked).
    pub datasources: Option<Arc<tf_config::Datasources>>,
    pub max_event_bytes: usize,
    pub temporal: temporalio_client::Client,
    pub dlq_topic: String,
    pub metrics: Arc<metrics::Metrics>,
    /// The router group's lag over the last hour, for the console.
    pub lag: Arc<crate::lag::LagHistory>,
    /// Console sessions (server-side; the cookie holds only their id).
    pub sessions: Arc<crate::session::Sessions>,
    pub router_group: String,
    /// The topics the router reads: the only ones a redrive writes to.
    pub router_topics: Arc<tf_kafka::subscription::Subscription>,
    pub lag_every: std::time::Duration,
    /// Topics known to take envelopes (their subject has the envelope schema).
    pub(crate) envelope_topics: Arc<Mutex<HashSet<String>>>,
}

impl AppState {
    /// Whether `topic`'s subject has the envelope schema registered.
    pub async fn envelope_topic(&self, topic: &str) -> Result<bool, ApiError> {
        if self.envelope_topics.lock().expect("lock").contains(topic) {
            return Ok(true);
        }
        let found = self.registry.lookup(&format!("{topic}-value"), tf_envelope::ENVELOPE_SCHEMA).await.map_err(|e| {
            tracing::warn!(error = %e, "schema registry lookup");
            ApiError::unavailable(format!("the schema registry is unavailable: {e}"))
        })?;
        if found.is_some() {
            self.envelope_topics.lock().expect("lock").insert(topic.to_string());
        }
        Ok(found.is_some())
    }
}
