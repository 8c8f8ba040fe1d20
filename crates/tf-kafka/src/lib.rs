//! Kafka helpers shared by the CLI and the services.

pub mod groups;
pub mod topics;

use rdkafka::ClientConfig;

/// Client configuration every component starts from; callers add their role's settings.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "taskfactory")
        // Fail fast with a readable error instead of retrying forever when the broker is down.
        .set("socket.connection.setup.timeout.ms", "10000");
    c
}
