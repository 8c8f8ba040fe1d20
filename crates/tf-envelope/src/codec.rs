//! Encoding and decoding record values: Confluent framing, registry lookups, Avro bodies, and
//! the envelope mapping. Every way a value can be wrong has its own error, and
//! [`DecodeError::is_bad_input`] separates bad records (dead-letter them) from an unavailable
//! registry (back off, never skip).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::types::Value;
use apache_avro::{Schema, from_avro_datum, to_avro_datum};

use crate::event::{EnvelopeError, Event};
use crate::limits::DecodeLimits;
use crate::registry::{Registry, RegistryError};
use crate::wire::{self, WireError};
use crate::{ENVELOPE_FULL_NAME, ENVELOPE_SCHEMA};

/// What a record value decoded to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A CloudEvents envelope.
    Envelope { schema_id: u32, event: Event },
    /// Any other Avro value; `full_name` is the record's full name (or the type name of a
    /// non-record schema).
    Record { schema_id: u32, full_name: String, value: serde_json::Value },
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not Confluent wire format: {0}")]
    Wire(#[from] WireError),
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchemaId(u32),
    #[error(transparent)]
    Registry(RegistryError),
    #[error("Avro body does not decode with writer schema id {schema_id}: {reason}")]
    Body { schema_id: u32, reason: String },
    #[error("Avro body of writer schema id {schema_id} refused before decoding: {source}")]
    OverLimit { schema_id: u32, source: crate::limits::LimitError },
    #[error("{extra} bytes left over after the Avro body of schema id {schema_id}")]
    TrailingBytes { schema_id: u32, extra: usize },
    #[error("schema id {schema_id}: {source}")]
    Envelope { schema_id: u32, source: EnvelopeError },
    #[error("schema id {schema_id} is not registered under subject {subject}, the only one this topic accepts")]
    WrongSubject { schema_id: u32, subject: String },
}

impl DecodeError {
    /// Bad input goes to the DLQ; anything else is a dependency failure to retry.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, DecodeError::Registry(e) if e.is_transient())
    }

    /// The registry refuses this client's settings (credentials, base path): fix the
    /// configuration, not the record.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, DecodeError::Registry(e) if e.is_misconfiguration())
    }

    /// The error class a dead letter names (its `__connect.errors.exception.class.name`).
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Wire(_) => "NotWireFormat",
            DecodeError::UnknownSchemaId(_) => "UnknownSchemaId",
            DecodeError::Body { .. } | DecodeError::TrailingBytes { .. } => "AvroDecodeError",
            DecodeError::OverLimit { .. } => "DecodeLimitExceeded",
            DecodeError::Envelope { .. } => "InvalidEnvelope",
            DecodeError::Registry(_) => "RegistryError",
            DecodeError::WrongSubject { .. } => "WrongSubject",
        }
    }
}

impl Decoded {
    /// The event a record stands for, as expressions see it. An envelope is itself; a plain
    /// Avro record becomes `event.data`, with `event.type` its full name, an id made of its
    /// coordinates (stable across replays) and `time` the Kafka timestamp.
    pub fn into_event_json(
        self,
        topic: &str,
        partition: i32,
        offset: i64,
        kafka_time_ms: Option<i64>,
    ) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Decoded::Envelope { event, .. } => serde_json::to_value(&event),
            Decoded::Record { full_name, value, .. } => Ok(serde_json::json!({
                "id": format!("{topic}-{partition}-{offset}"),
                "source": format!("kafka://{topic}"),
                "type": full_name,
                "specversion": "1.0",
                "time": kafka_time_ms,
                "data": value,
            })),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("value does not match the schema of subject {subject}: {reason}")]
    Schema { subject: String, reason: String },
}

pub struct Codec {
    registry: Arc<Registry>,
    envelope: Schema,
    /// Ids this process registered, by subject; registration is idempotent, this only saves
    /// the round trip.
    registered: Mutex<HashMap<(String, String), u32>>,
}

impl Codec {
    pub fn new(registry: Arc<Registry>) -> Self {
        let envelope = Schema::parse_str(ENVELOPE_SCHEMA).expect("committed envelope schema parses");
        Codec { registry, envelope, registered: Mutex::default() }
    }

    /// Decodes one record value.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        self.decode_checked(bytes, None).await
    }

    /// Decodes one record value whose writer schema must be registered under `subject` (the
    /// topic's, by TopicNameStrategy), checked before the body is read.
    pub async fn decode_checked(&self, bytes: &[u8], subject: Option<&str>) -> Result<Decoded, DecodeError> {
        let (schema_id, body) = wire::unframe(bytes)?;
        if let Some(subject) = subject {
            let has = self.registry.subject_has(subject, schema_id).await.map_err(|e| match e {
                RegistryError::UnknownSchemaId(id) => DecodeError::UnknownSchemaId(id),
                other => DecodeError::Registry(other),
            })?;
            if !has {
                return Err(DecodeError::WrongSubject { schema_id, subject: subject.to_string() });
            }
        }
        let schema = self.registry.schema(schema_id).await.map_err(|e| match e {
            RegistryError::UnknownSchemaId(id) => DecodeError::UnknownSchemaId(id),
            other => DecodeError::Registry(other),
        })?;
        decode_body(schema_id, &schema, body)
    }

    /// Encodes `event` with the committed envelope schema, registered under `subject`.
    pub async fn encode_event(&self, subject: &str, event: &Event) -> Result<Vec<u8>, EncodeError> {
        let id = self.schema_id(subject, ENVELOPE_SCHEMA).await?;
        let body = to_avro_datum(&self.envelope, event.to_avro())
            .map_err(|e| EncodeError::Schema { subject: subject.into(), reason: e.to_string() })?;
        Ok(wire::frame(id, &body))
    }

    /// Encodes any Avro `value` with `schema` (Avro JSON), registered under `subject`.
    pub async fn encode(&self, subject: &str, schema: &str, value: Value) -> Result<Vec<u8>, EncodeError> {
        let id = self.schema_id(subject, schema).await?;
        let parsed = self.registry.schema(id).await?;
        let body = to_avro_datum(&parsed, value).map_err(|e| EncodeError::Schema { subject: subject.into(), reason: e.to_string() })?;
        Ok(wire::frame(id, &body))
    }

    async fn schema_id(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_string(), schema.to_string());
        if let Some(id) = self.registered.lock().expect("lock").get(&key) {
            return Ok(*id);
        }
        let id = self.registry.register(subject, schema).await?;
        self.registered.lock().expect("lock").insert(key, id);
        Ok(id)
    }
}

/// Bounds what a hostile length prefix can make the Avro decoder allocate: no count or length
/// in a record may exceed `max_record_bytes` (a record cannot hold more items than it has bytes,
/// short of arrays of nulls). Process-wide and set once: call it before decoding anything.
pub fn bound_decoding(max_record_bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(max_record_bytes.max(1024))
}

/// Decodes an Avro body written with `schema` (registry id `schema_id`): an envelope when the
/// schema is the envelope's, any other record as JSON. Every reader of untrusted bytes comes
/// through here, so the [`DecodeLimits`] hold for all of them.
pub fn decode_body(schema_id: u32, schema: &Schema, mut body: &[u8]) -> Result<Decoded, DecodeError> {
    crate::limits::check(schema, body, DecodeLimits::default()).map_err(|source| match source {
        // A length past the end is a truncated or corrupt body, as the decoder would say.
        crate::limits::LimitError::LengthPastEnd { .. } => DecodeError::Body { schema_id, reason: source.to_string() },
        _ => DecodeError::OverLimit { schema_id, source },
    })?;
    let value = from_avro_datum(schema, &mut body, None).map_err(|e| DecodeError::Body { schema_id, reason: e.to_string() })?;
    if !body.is_empty() {
        // A body longer than its schema says is a framing or schema-id mix-up, not data.
        return Err(DecodeError::TrailingBytes { schema_id, extra: body.len() });
    }
    let full_name = full_name(schema);
    if full_name == ENVELOPE_FULL_NAME {
        let event = Event::from_avro(value).map_err(|source| DecodeError::Envelope { schema_id, source })?;
        Ok(Decoded::Envelope { schema_id, event })
    } else {
        Ok(Decoded::Record { schema_id, full_name, value: crate::json::avro_to_json(value) })
    }
}

fn full_name(schema: &Schema) -> String {
    match schema.name() {
        Some(name) => name.fullname(None),
        None => format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase(),
    }
}
