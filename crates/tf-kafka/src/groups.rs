//! Consumer-group operations for operators, with `kafka-consumer-groups` semantics: lag per
//! partition, and offset resets that are a dry run unless executed, refused while the group has
//! active members (the running router would overwrite them).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("invalid topic pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("no topic matches {0:?}")]
    NoTopics(Vec<String>),
    #[error("group {group} has {members} active member(s); stop them (the router) before resetting its offsets")]
    Active { group: String, members: usize },
}

fn consumer(brokers: &str, group: &str) -> Result<BaseConsumer, GroupError> {
    Ok(crate::client_config(brokers).set("group.id", group).set("enable.auto.commit", "false").create()?)
}

/// Topic names matching `patterns`: plain names, or regexes starting with `^` (as the router's
/// subscription), sorted.
pub fn resolve_topics(brokers: &str, patterns: &[String]) -> Result<Vec<String>, GroupError> {
    let c = consumer(brokers, "taskfactory-cli")?;
    let md = c.fetch_metadata(None, TIMEOUT)?;
    let subscription =
        crate::subscription::Subscription::parse(patterns).map_err(|e| GroupError::Pattern { pattern: e.pattern, reason: e.reason })?;
    let mut out: Vec<String> = md.topics().iter().map(|t| t.name().to_string()).filter(|name| subscription.matches(name)).collect();
    out.sort();
    if out.is_empty() {
        return Err(GroupError::NoTopics(patterns.to_vec()));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// `None` when the group never committed on this partition.
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl PartitionLag {
    /// Records not yet routed: from the committed offset (or the low watermark) to the end.
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }
}

fn partitions(c: &BaseConsumer, topics: &[String]) -> Result<TopicPartitionList, GroupError> {
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = c.fetch_metadata(Some(t), TIMEOUT)?;
        for p in md.topics().iter().flat_map(rdkafka::metadata::MetadataTopic::partitions) {
            tpl.add_partition(t, p.id());
        }
    }
    Ok(tpl)
}

pub fn lag(brokers: &str, group: &str, topics: &[String]) -> Result<Vec<PartitionLag>, GroupError> {
    let c = consumer(brokers, group)?;
    let committed = c.committed_offsets(partitions(&c, topics)?, TIMEOUT)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = c.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
        let committed = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push(PartitionLag { topic: e.topic().to_string(), partition: e.partition(), committed, low, high });
    }
    Ok(out)
}

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// The first offset at or after this time (ms since the epoch).
    Datetime(i64),
    /// Relative to the committed offset (negative replays).
    ShiftBy(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedReset {
    pub topic: String,
    pub partition: i32,
    pub current: Option<i64>,
    pub new: i64,
}

/// The offsets a reset would commit; changes nothing.
pub fn plan_reset(brokers: &str, group: &str, topics: &[String], to: ResetTo) -> Result<Vec<PlannedReset>, GroupError> {
    let c = consumer(brokers, group)?;
    let lags = lag(brokers, group, topics)?;
    let by_time = if let ResetTo::Datetime(ms) = to {
        let mut tpl = TopicPartitionList::new();
        for l in &lags {
            tpl.add_partition_offset(&l.topic, l.partition, Offset::Offset(ms))?;
        }
        Some(c.offsets_for_times(tpl, TIMEOUT)?)
    } else {
        None
    };
    Ok(lags
        .into_iter()
        .map(|l| {
            let new = match to {
                ResetTo::Earliest => l.low,
                ResetTo::Latest => l.high,
                ResetTo::ShiftBy(n) => (l.committed.unwrap_or(l.low) + n).clamp(l.low, l.high),
                ResetTo::Datetime(_) => by_time
                    .as_ref()
                    .and_then(|t| t.find_partition(&l.topic, l.partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None, // no record at or after the time: the end
                    })
                    .unwrap_or(l.high),
            };
            PlannedReset { topic: l.topic, partition: l.partition, current: l.committed, new }
        })
        .collect())
}

/// Commits a planned reset for `group`, refused while the group has active members.
pub fn execute_reset(brokers: &str, group: &str, plan: &[PlannedReset]) -> Result<(), GroupError> {
    let c = consumer(brokers, group)?;
    let groups = c.fetch_group_list(Some(group), TIMEOUT)?;
    if let Some(g) = groups.groups().iter().find(|g| g.name() == group)
        && !g.members().is_empty()
    {
        return Err(GroupError::Active { group: group.to_string(), members: g.members().len() });
    }
    let mut tpl = TopicPartitionList::new();
    for p in plan {
        tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.new))?;
    }
    c.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}
