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

/// The stages at which the router dead-letters a record, in pipeline order (the `STAGE` header's
/// values and the `stage` label of `tf_router_dead_letters_total`).
pub const STAGES: [&str; 8] = ["size", "decode", "filter", "dedupe-key", "event-time", "claim", "start", "panic"];

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
}
