//! The router's Kafka consumer: the rebalance hook that keeps the offset tracker honest, and
//! storing a partition's safe offset once a record is finished.

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::offsets::{Ticket, Tracker};

/// Tells the offset tracker about revoked partitions, so records of an old assignment cannot
/// store offsets for a new one.
pub struct RouterContext {
    pub tracker: Arc<Mutex<Tracker>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl ClientContext for RouterContext {
    /// librdkafka's statistics (`statistics.interval.ms`): the lag of each assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag: Vec<(String, i32, i64)> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().map(move |p| (t, p)))
            .filter(|(_, p)| p.partition >= 0 && p.desired && p.consumer_lag_stored >= 0)
            .map(|(t, p)| (t.topic.clone(), p.partition, p.consumer_lag_stored))
            .collect();
        lag.sort();
        self.metrics.set_consumer_lag(lag);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                tracing::info!(topic = e.topic(), partition = e.partition(), "partition revoked");
                tracker.revoke(e.topic(), e.partition());
            }
        }
    }
}

pub type RouterConsumer = StreamConsumer<RouterContext>;

/// Stores the partition's safe offset after a record finished.
pub fn finished(consumer: &RouterConsumer, tracker: &Mutex<Tracker>, ticket: &Ticket) {
    let Some(next) = tracker.lock().expect("tracker lock").finish(ticket) else { return };
    let (topic, partition) = (ticket.topic.as_str(), ticket.partition);
    let mut tpl = TopicPartitionList::new();
    if tpl.add_partition_offset(topic, partition, Offset::Offset(next)).is_ok()
        && let Err(e) = consumer.store_offsets(&tpl)
    {
        // Typically the partition was revoked meanwhile; its new owner re-delivers and the
        // dedupe layers absorb the repeat.
        tracing::debug!(topic, partition, next, error = %e, "offset not stored");
    }
}
