//! The dead-letter vocabulary shared by the router (which writes dead letters) and tf-api (which
//! browses and redrives them): header names, and who owns them.
//!
//! The router owns the `__connect.*` and `__taskfactory.*` header namespaces. A producer's own
//! headers in them are dropped when its record is dead-lettered, so every such header on a dead
//! letter was written by the router; readers still take the last occurrence of a name (the
//! router appends its own after the record's), so a dead letter written before the router
//! dropped them reads the router's value too.

/// Kafka Connect's names, so Connect tooling reads the router's dead letters.
pub const TOPIC: &str = "__connect.errors.topic";
pub const PARTITION: &str = "__connect.errors.partition";
pub const OFFSET: &str = "__connect.errors.offset";
pub const CONNECTOR: &str = "__connect.errors.connector.name";
pub const STAGE: &str = "__connect.errors.stage";
pub const CLASS: &str = "__connect.errors.exception.class.name";
pub const MESSAGE: &str = "__connect.errors.exception.message";
/// The router's own: what was cut from a dead letter the DLQ could not take whole.
pub const TRUNCATED: &str = "__taskfactory.errors.truncated";
/// Marks a record sent back from the DLQ: `<dlq topic>@<partition>:<offset>`.
pub const REDRIVE: &str = "taskfactory.redrive";
/// The connector name the router writes.
pub const CONNECTOR_NAME: &str = "taskfactory-router";

/// Where in the router's pipeline a record was refused, in pipeline order: the `STAGE` header's
/// value and the `stage` label of `tf_router_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Larger than the router takes.
    Size,
    /// Not a record the registry's schemas decode, or not an event.
    Decode,
    /// A definition's filter failed to evaluate.
    Filter,
    /// A definition's dedupe key failed to evaluate or is no key.
    DedupeKey,
    /// No usable event time, or one beyond the replay horizon.
    EventTime,
    /// The claim store refused the record for good.
    Claim,
    /// Temporal refused the start for good.
    Start,
    /// The wait store refused the event for good (a value PostgreSQL cannot hold), so it cannot
    /// be delivered to the runs that wait for it (docs/steps.md).
    Deliver,
    /// Routing the record panicked.
    Panic,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Size,
        Stage::Decode,
        Stage::Filter,
        Stage::DedupeKey,
        Stage::EventTime,
        Stage::Claim,
        Stage::Start,
        Stage::Deliver,
        Stage::Panic,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Size => "size",
            Stage::Decode => "decode",
            Stage::Filter => "filter",
            Stage::DedupeKey => "dedupe-key",
            Stage::EventTime => "event-time",
            Stage::Claim => "claim",
            Stage::Start => "start",
            Stage::Deliver => "deliver",
            Stage::Panic => "panic",
        }
    }

    /// The `CLASS` header of a refusal at this stage when the error names none of its own
    /// (a decode error does: its class says which check refused the record).
    pub const fn class(self) -> &'static str {
        match self {
            Stage::Size => "OversizeRecord",
            Stage::Decode => "InvalidEnvelope",
            Stage::Filter => "ExpressionError",
            Stage::DedupeKey => "InvalidDedupeKey",
            Stage::EventTime => "InvalidEventTime",
            Stage::Claim => "ClaimRefused",
            Stage::Start => "StartRefused",
            Stage::Deliver => "UndeliverableEvent",
            Stage::Panic => "Panic",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every stage's name, in pipeline order (what the console offers to filter by).
pub const STAGES: [&str; 9] = {
    let mut names = [""; 9];
    let mut i = 0;
    while i < names.len() {
        names[i] = Stage::ALL[i].as_str();
        i += 1;
    }
    names
};

/// Whether a header name is in the namespaces the router owns: never copied from a producer's
/// record into a dead letter, nor from a dead letter back onto its source topic.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("__connect.") || name.starts_with("__taskfactory.")
}

/// Parses a [`REDRIVE`] marker, `<dlq topic>@<partition>:<offset>`.
pub fn parse_redrive(marker: &str) -> Option<(&str, i32, i64)> {
    let (topic, at) = marker.rsplit_once('@')?;
    let (partition, offset) = at.split_once(':')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// The value of the last header called `name`, as text.
pub fn last<'a, I>(headers: I, name: &str) -> Option<String>
where
    I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
{
    headers.into_iter().filter(|(k, _)| *k == name).last().and_then(|(_, v)| v).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_namespaces_and_the_last_value_wins() {
        assert!(is_reserved(TOPIC) && is_reserved(TRUNCATED) && is_reserved("__connect.anything"));
        assert!(!is_reserved("traceparent") && !is_reserved(REDRIVE) && !is_reserved("_connect.errors.topic"));
        let forged: &[(&str, Option<&[u8]>)] = &[(TOPIC, Some(b"taskfactory.results")), ("x", None), (TOPIC, Some(b"events.orders"))];
        assert_eq!(last(forged.iter().copied(), TOPIC).as_deref(), Some("events.orders"));
        assert_eq!(last(forged.iter().copied(), STAGE), None);
        assert_eq!(parse_redrive("taskfactory.dlq@2:40"), Some(("taskfactory.dlq", 2, 40)));
        assert_eq!(parse_redrive("a@b@0:1"), Some(("a@b", 0, 1)));
        assert_eq!(parse_redrive("taskfactory.dlq@x:1"), None);
        assert_eq!(parse_redrive("nothing"), None);
    }

    /// The metrics index series by `stage as usize`: ALL, STAGES and the declaration agree.
    #[test]
    fn stages_are_listed_once_in_pipeline_order() {
        for (i, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(*stage as usize, i);
            assert_eq!(STAGES[i], stage.as_str());
            assert_eq!(stage.to_string(), stage.as_str());
        }
        let distinct: std::collections::HashSet<&str> = STAGES.into_iter().collect();
        assert_eq!(distinct.len(), STAGES.len());
    }
}
