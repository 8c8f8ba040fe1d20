//! The envelope codec: Confluent wire format through a schema registry, the CloudEvents
//! envelope as a typed [`Event`], and any other Avro record as JSON.

pub mod codec;
pub mod event;
pub mod json;
pub mod limits;
pub mod registry;
pub mod result;
pub mod wire;

pub use codec::{Codec, DecodeError, Decoded, EncodeError, bound_decoding, decode_body};
pub use event::{EnvelopeError, Event, Timestamp};
pub use limits::{DecodeLimits, LimitError};
pub use registry::{Registry, RegistryError};
pub use result::{NotASymbol, TaskResult};
pub use wire::WireError;

/// The envelope schema as committed in `schemas/avro/envelope.avsc`.
pub const ENVELOPE_SCHEMA: &str = include_str!("../../../schemas/avro/envelope.avsc");
/// The task result schema as committed in `schemas/avro/task_result.avsc`.
pub const TASK_RESULT_SCHEMA: &str = include_str!("../../../schemas/avro/task_result.avsc");
/// Full name of the envelope record; a writer schema with this name is decoded as an [`Event`].
pub const ENVELOPE_FULL_NAME: &str = "io.taskfactory.Envelope";
