//! Kafka helpers shared by the CLI and the services.

pub mod dlq;
pub mod groups;
pub mod subscription;
pub mod topics;

use std::sync::OnceLock;

use rdkafka::ClientConfig;

/// The extra librdkafka properties of this process (`TF_KAFKA_PROPERTIES`, `TF_KAFKA__*`),
/// read once. Binaries call this at startup so a bad setting stops them with its name.
pub fn properties() -> Result<&'static [(String, String)], tf_config::kafka::KafkaPropertiesError> {
    static PROPERTIES: OnceLock<Result<Vec<(String, String)>, tf_config::kafka::KafkaPropertiesError>> = OnceLock::new();
    PROPERTIES.get_or_init(tf_config::kafka::from_env).as_ref().map(Vec::as_slice).map_err(Clone::clone)
}

/// Whether Kafka refused a record for its size (over the producer's or the topic's limit): the
/// record, not the broker, is at fault, and sending it again fails again.
pub fn too_large(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{MessageBatchTooLarge, MessageSizeTooLarge};
    matches!(e.rdkafka_error_code(), Some(MessageSizeTooLarge | MessageBatchTooLarge))
}

/// Client configuration every component starts from; callers add their role's settings.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "taskfactory")
        // Fail fast with a readable error instead of retrying forever when the broker is down.
        .set("socket.connection.setup.timeout.ms", "10000");
    // A bad setting was reported at startup (see `properties`); clients made anyway get none.
    for (k, v) in properties().unwrap_or_default() {
        c.set(k, v);
    }
    c
}
