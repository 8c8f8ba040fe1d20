//! `POST /events/{topic}`: CloudEvents over HTTP for producers that do not speak Kafka. Structured
//! (`application/cloudevents+json`), binary (`ce-*` headers) and batch
//! (`application/cloudevents-batch+json`) modes; every event of a request is checked before any
//! is produced, encoded as the topic's registered Avro envelope, produced with the idempotent
//! producer, and `202` answers only after the broker acknowledged them all.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{Map, Value, json};
use tf_envelope::{Event, Timestamp};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;

/// The most events one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// CloudEvents attributes this API reads itself; any other top-level string attribute is an
/// extension.
const CORE: [&str; 9] = ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data", "dataschema"];

/// An event ready to produce, with its Kafka key.
#[derive(Debug)]
struct Outgoing {
    event: Event,
    key: String,
}

/// One event the broker acknowledged.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The answer of an ingest: every event of the body, in order.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AcceptedEvents {
    pub accepted: Vec<Accepted>,
}

pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<AcceptedEvents>), ApiError> {
    let caller = state.tokens.require(&headers, Scope::Ingest)?;
    if topic.is_empty() || topic.len() > 249 || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(ApiError::bad_request("topic", format!("{topic:?} is not a Kafka topic name")));
    }
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let idempotency = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let events: Vec<Outgoing> = match essence.as_str() {
        "application/cloudevents+json" => {
            let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not JSON: {e}")))?;
            vec![structured(&v, "", idempotency.as_deref())?]
        }
        "application/cloudevents-batch+json" => {
            if idempotency.is_some() {
                return Err(ApiError::bad_request("Idempotency-Key", "a batch takes each event's own id, not an Idempotency-Key"));
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", format!("not JSON: {e}")))?;
            let Value::Array(items) = v else { return Err(ApiError::bad_request("body", "a batch is a JSON array of events")) };
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(ApiError::bad_request("body", format!("a batch holds 1 to {MAX_BATCH} events, not {}", items.len())));
            }
            items.iter().enumerate().map(|(i, v)| structured(v, &format!("[{i}]."), None)).collect::<Result<_, _>>()?
        }
        _ => vec![binary(&headers, &content_type, &body, idempotency.as_deref())?],
    };
    if !state.envelope_topic(&topic).await? {
        return Err(ApiError::not_found(format!(
            "topic {topic} does not take events: no envelope schema is registered under {topic}-value (tf schemas register)"
        )));
    }
    let subject = format!("{topic}-value");
    let mut encoded = Vec::with_capacity(events.len());
    for (i, out) in events.iter().enumerate() {
        let bytes = state.codec.encode_event(&subject, &out.event).await.map_err(|e| {
            tracing::warn!(error = %e, "encoding an event");
            ApiError::unavailable(format!("the schema registry could not encode the event: {e}"))
        })?;
        if bytes.len() > state.max_event_bytes {
            let field = if events.len() > 1 { format!("[{i}].data") } else { "data".into() };
            return Err(ApiError {
                field: Some(field),
                ..ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the event encodes to {} bytes; the limit is {} (TF_API_MAX_EVENT_BYTES)", bytes.len(), state.max_event_bytes),
                )
            });
        }
        encoded.push(bytes);
    }
    let sends = events.iter().zip(&encoded).map(|(out, bytes)| {
        let mut headers = OwnedHeaders::new().insert(Header { key: "taskfactory.ingress", value: Some("http") });
        if let Some(tp) = &out.event.traceparent {
            headers = headers.insert(Header { key: "traceparent", value: Some(tp) });
        }
        let record = FutureRecord::to(&topic).key(&out.key).payload(bytes).headers(headers);
        state.producer.send(record, Duration::from_secs(30))
    });
    let delivered = futures::future::join_all(sends).await;
    let mut accepted = Vec::with_capacity(events.len());
    for (out, d) in events.iter().zip(delivered) {
        match d {
            Ok(delivery) => {
                accepted.push(Accepted {
                    id: out.event.id.clone(),
                    topic: topic.clone(),
                    partition: delivery.partition,
                    offset: delivery.offset,
                });
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, %topic, "producing an event");
                let unknown = matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition | rdkafka::types::RDKafkaErrorCode::UnknownTopic)
                );
                let err = if unknown {
                    ApiError::not_found(format!("topic {topic} does not exist in Kafka"))
                } else {
                    ApiError::unavailable(format!("Kafka did not acknowledge the event: {e}"))
                };
                return Err(err.with_details(json!({"accepted": accepted})));
            }
        }
    }
    state.metrics.events_accepted.increment(accepted.len() as u64);
    tracing::info!(token = %caller.token, %topic, events = accepted.len(), "events accepted");
    Ok((StatusCode::ACCEPTED, Json(AcceptedEvents { accepted })))
}

fn string(v: &Value, field: &str, at: &str, required: bool) -> Result<Option<String>, ApiError> {
    match v.get(field) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("{at}{field}"), "is required")),
        Some(Value::String(s)) if s.is_empty() && required => Err(ApiError::bad_request(format!("{at}{field}"), "must not be empty")),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{at}{field}"), "must be a string")),
    }
}

fn time(text: Option<String>, field: &str) -> Result<Timestamp, ApiError> {
    match text {
        None => Ok(Timestamp::now()),
        Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
            .map(|d| Timestamp(d.timestamp_millis()))
            .map_err(|e| ApiError::bad_request(field, format!("{t:?} is not an RFC 3339 time: {e}"))),
    }
}

fn id_with(id: Option<String>, idempotency: Option<&str>, field: &str) -> Result<String, ApiError> {
    match (id, idempotency) {
        (Some(id), Some(key)) if id != key => {
            Err(ApiError::bad_request(field, format!("{id:?} differs from the Idempotency-Key {key:?}; send one or make them equal")))
        }
        (Some(id), _) => Ok(id),
        (None, Some(key)) if !key.is_empty() => Ok(key.to_string()),
        _ => Err(ApiError::bad_request(field, "is required (or an Idempotency-Key header)")),
    }
}

fn valid_extension(name: &str) -> bool {
    !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// One structured-mode event (`at` prefixes field names in errors: `[3].`).
fn structured(v: &Value, at: &str, idempotency: Option<&str>) -> Result<Outgoing, ApiError> {
    let Value::Object(map) = v else {
        return Err(ApiError::bad_request(if at.is_empty() { "body" } else { at.trim_end_matches('.') }, "an event is a JSON object"));
    };
    let spec = string(v, "specversion", at, true)?.unwrap_or_default();
    if spec != "1.0" {
        return Err(ApiError::bad_request(format!("{at}specversion"), format!("{spec:?}: only CloudEvents 1.0 is accepted")));
    }
    if map.contains_key("data_base64") {
        return Err(ApiError::bad_request(format!("{at}data_base64"), "binary data is not accepted; send JSON or text in `data`"));
    }
    let id = id_with(string(v, "id", at, false)?, idempotency, &format!("{at}id"))?;
    let source = string(v, "source", at, true)?.unwrap_or_default();
    let event_type = string(v, "type", at, true)?.unwrap_or_default();
    let content_type = string(v, "datacontenttype", at, false)?.unwrap_or_else(|| "application/json".into());
    let data = map.get("data").cloned().unwrap_or(Value::Null);
    if !tf_envelope::event::is_json(&content_type) && !data.is_string() {
        return Err(ApiError::bad_request(format!("{at}data"), format!("must be a string for datacontenttype {content_type}")));
    }
    let mut event = Event::new(id, source, event_type, data).map_err(|e| ApiError::bad_request(format!("{at}event"), e.to_string()))?;
    event.time = time(string(v, "time", at, false)?, &format!("{at}time"))?;
    event.subject = string(v, "subject", at, false)?;
    event.datacontenttype = content_type;
    let mut key = None;
    for (name, value) in map.iter().filter(|(k, _)| !CORE.contains(&k.as_str()) && k.as_str() != "data_base64") {
        if !valid_extension(name) {
            return Err(ApiError::bad_request(format!("{at}{name}"), "extension names are 1-20 lowercase letters or digits"));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            _ => return Err(ApiError::bad_request(format!("{at}{name}"), "extension values are strings, numbers or booleans")),
        };
        match name.as_str() {
            "traceparent" => event.traceparent = Some(text),
            "partitionkey" => key = Some(text),
            _ => {
                event.extensions.insert(name.clone(), text);
            }
        }
    }
    let key = key.or_else(|| event.subject.clone()).unwrap_or_else(|| event.id.clone());
    Ok(Outgoing { event, key })
}

/// A binary-mode event: attributes in `ce-*` headers, the body as data.
fn binary(headers: &HeaderMap, content_type: &str, body: &[u8], idempotency: Option<&str>) -> Result<Outgoing, ApiError> {
    let mut attrs = Map::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else { continue };
        let text = value.to_str().map_err(|_| ApiError::bad_request(name.as_str(), "must be visible ASCII"))?;
        attrs.insert(attr.to_string(), Value::String(text.to_string()));
    }
    if attrs.is_empty() {
        return Err(ApiError::bad_request(
            "Content-Type",
            format!(
                "{content_type:?} with no ce-* headers: send application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode event (ce-id, ce-source, ce-type, ce-specversion headers)"
            ),
        ));
    }
    let content_type = if content_type.is_empty() { "application/json".to_string() } else { content_type.to_string() };
    let data = if tf_envelope::event::is_json(&content_type) {
        if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body", format!("not JSON ({content_type}): {e}")))?
        }
    } else {
        Value::String(String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("body", "text data must be UTF-8"))?)
    };
    attrs.insert("datacontenttype".into(), Value::String(content_type));
    attrs.insert("data".into(), data);
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        attrs.entry("traceparent").or_insert_with(|| Value::String(tp.to_string()));
    }
    // Errors name the header a binary-mode attribute came from.
    structured(&Value::Object(attrs), "ce-", idempotency).map_err(|mut e| {
        if let Some(f) = &e.field
            && (f == "ce-data" || f == "ce-datacontenttype")
        {
            e.field = Some("body".into());
        }
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_events_are_checked_field_by_field() {
        let ok = json!({"specversion": "1.0", "id": "e1", "source": "/shop", "type": "order.created", "data": {"n": 1},
                        "partitionkey": "o-1", "traceparent": "00-aa-bb-01", "tenant": "acme", "time": "2026-11-27T10:00:00Z"});
        let out = structured(&ok, "", None).unwrap();
        assert_eq!((out.key.as_str(), out.event.traceparent.as_deref()), ("o-1", Some("00-aa-bb-01")));
        assert_eq!(out.event.extensions["tenant"], "acme");
        assert_eq!(out.event.time.to_string(), "2026-11-27T10:00:00.000Z");
        let field = |v: Value, at: &str| structured(&v, at, None).unwrap_err().field.unwrap();
        let mut no_type = ok.clone();
        no_type.as_object_mut().unwrap().remove("type");
        assert_eq!(field(no_type, "[2]."), "[2].type");
        assert_eq!(field(json!({"specversion": "0.3", "id": "x", "source": "s", "type": "t"}), ""), "specversion");
        assert_eq!(field(json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "time": "yesterday"}), ""), "time");
        assert_eq!(field(json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "Bad-Name": "v"}), ""), "Bad-Name");
        assert_eq!(field(json!({"specversion": "1.0", "source": "s", "type": "t"}), ""), "id");
        let by_key = structured(&json!({"specversion": "1.0", "source": "s", "type": "t"}), "", Some("k-1")).unwrap();
        assert_eq!(by_key.event.id, "k-1");
        let clash = structured(&json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t"}), "", Some("y")).unwrap_err();
        assert_eq!(clash.field.as_deref(), Some("id"));
    }
}
