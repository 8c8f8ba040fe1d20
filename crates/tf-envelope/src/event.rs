//! The CloudEvents envelope as a typed value. Constructing or decoding an [`Event`] checks the
//! attributes CloudEvents requires, so code holding one never re-validates it.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use serde::Serialize;

/// Milliseconds since the Unix epoch, UTC; serialised as RFC 3339 for people and expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }

    pub fn millis(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Timestamp {
    /// `2026-11-26T21:04:05.123Z`; the bare number when outside chrono's range.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One event: CloudEvents 1.0 attributes plus the parsed `data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub specversion: String,
    pub subject: Option<String>,
    pub time: Timestamp,
    pub datacontenttype: String,
    /// Parsed JSON for JSON content types, otherwise the text as a JSON string.
    pub data: serde_json::Value,
    pub traceparent: Option<String>,
    pub extensions: BTreeMap<String, String>,
}

/// Why a record with the envelope's name is not a usable event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope field `{0}` is missing")]
    MissingField(&'static str),
    #[error("envelope field `{0}` is empty")]
    EmptyField(&'static str),
    #[error("envelope field `{field}` has the wrong type: expected {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("envelope specversion is {0:?}; only CloudEvents 1.0 is supported")]
    SpecVersion(String),
    #[error("envelope data is not valid JSON for datacontenttype {content_type}: {reason}")]
    DataNotJson { content_type: String, reason: String },
}

impl Event {
    /// A new event with `specversion` 1.0, JSON data and the current time.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        event_type: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Self, EnvelopeError> {
        let event = Event {
            id: id.into(),
            source: source.into(),
            event_type: event_type.into(),
            specversion: "1.0".into(),
            subject: None,
            time: Timestamp::now(),
            datacontenttype: "application/json".into(),
            data,
            traceparent: None,
            extensions: BTreeMap::new(),
        };
        event.check()?;
        Ok(event)
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        for (field, value) in [("id", &self.id), ("source", &self.source), ("type", &self.event_type)] {
            if value.is_empty() {
                return Err(EnvelopeError::EmptyField(field));
            }
        }
        if self.specversion != "1.0" {
            return Err(EnvelopeError::SpecVersion(self.specversion.clone()));
        }
        Ok(())
    }

    /// The Avro record for the committed envelope schema, field by field in schema order.
    pub fn to_avro(&self) -> Value {
        let optional = |v: &Option<String>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        };
        let data = match &self.data {
            serde_json::Value::String(s) if !is_json(&self.datacontenttype) => s.clone(),
            other => other.to_string(),
        };
        Value::Record(vec![
            ("id".into(), Value::String(self.id.clone())),
            ("source".into(), Value::String(self.source.clone())),
            ("type".into(), Value::String(self.event_type.clone())),
            ("specversion".into(), Value::String(self.specversion.clone())),
            ("subject".into(), optional(&self.subject)),
            ("time".into(), Value::TimestampMillis(self.time.0)),
            ("datacontenttype".into(), Value::String(self.datacontenttype.clone())),
            ("data".into(), Value::String(data)),
            ("traceparent".into(), optional(&self.traceparent)),
            ("extensions".into(), Value::Map(self.extensions.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())),
        ])
    }

    /// Reads an envelope record by field name, so writer schemas that reorder fields or add
    /// new ones still decode.
    pub fn from_avro(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Record(fields) = value else {
            return Err(EnvelopeError::WrongType { field: "(record)", expected: "record" });
        };
        let mut fields: BTreeMap<String, Value> = fields.into_iter().collect();
        let mut take = |name: &'static str| fields.remove(name).map(unwrap_union);

        let string = |name: &'static str, v: Option<Value>| match v {
            None | Some(Value::Null) => Err(EnvelopeError::MissingField(name)),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(EnvelopeError::WrongType { field: name, expected: "string" }),
        };
        let optional = |name: &'static str, v: Option<Value>| match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(EnvelopeError::WrongType { field: name, expected: "string or null" }),
        };

        let id = string("id", take("id"))?;
        let source = string("source", take("source"))?;
        let event_type = string("type", take("type"))?;
        let specversion = optional("specversion", take("specversion"))?.unwrap_or_else(|| "1.0".into());
        let subject = optional("subject", take("subject"))?;
        let time = match take("time") {
            None | Some(Value::Null) => return Err(EnvelopeError::MissingField("time")),
            Some(Value::TimestampMillis(ms) | Value::Long(ms)) => Timestamp(ms),
            Some(Value::TimestampMicros(us)) => Timestamp(us.div_euclid(1000)),
            Some(_) => {
                return Err(EnvelopeError::WrongType { field: "time", expected: "timestamp-millis" });
            }
        };
        let datacontenttype = optional("datacontenttype", take("datacontenttype"))?.unwrap_or_else(|| "application/json".into());
        let data_text = string("data", take("data"))?;
        let data = if is_json(&datacontenttype) {
            serde_json::from_str(&data_text)
                .map_err(|e| EnvelopeError::DataNotJson { content_type: datacontenttype.clone(), reason: e.to_string() })?
        } else {
            serde_json::Value::String(data_text)
        };
        let traceparent = optional("traceparent", take("traceparent"))?;
        let extensions = match take("extensions") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Map(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(EnvelopeError::WrongType { field: "extensions", expected: "map of strings" }),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(EnvelopeError::WrongType { field: "extensions", expected: "map of strings" });
            }
        };
        let event = Event { id, source, event_type, specversion, subject, time, datacontenttype, data, traceparent, extensions };
        event.check()?;
        Ok(event)
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

/// `application/json`, `text/json` and any `+json` suffix, parameters ignored.
/// Whether a content type carries JSON (`application/json`, `text/json`, `...+json`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        let mut e = Event::new("e-1", "/orders", "com.example.order.created", json!({"n": 1})).unwrap();
        e.subject = Some("order-1".into());
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        e.extensions.insert("tenant".into(), "eu".into());
        e
    }

    #[test]
    fn avro_round_trip_keeps_every_attribute() {
        let e = sample();
        assert_eq!(Event::from_avro(e.to_avro()).unwrap(), e);
    }

    #[test]
    fn missing_and_empty_attributes_are_named() {
        let mut v = sample().to_avro();
        if let Value::Record(f) = &mut v {
            f.retain(|(k, _)| k != "source");
        }
        assert_eq!(Event::from_avro(v), Err(EnvelopeError::MissingField("source")));
        assert_eq!(Event::new("", "/s", "t", json!(null)).unwrap_err().to_string(), "envelope field `id` is empty");
    }

    #[test]
    fn data_must_be_json_for_json_content_types() {
        let mut v = sample().to_avro();
        if let Value::Record(f) = &mut v {
            for (k, val) in f.iter_mut() {
                if k == "data" {
                    *val = Value::String("{not json".into());
                }
            }
        }
        let err = Event::from_avro(v).unwrap_err().to_string();
        assert!(err.starts_with("envelope data is not valid JSON for datacontenttype application/json"), "{err}");

        let mut text = sample();
        text.datacontenttype = "text/plain".into();
        text.data = json!("plain words");
        assert_eq!(Event::from_avro(text.to_avro()).unwrap().data, json!("plain words"));
        assert!(is_json("application/cloudevents+json; charset=utf-8"));
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(951_782_400_123).to_string(), "2000-02-29T00:00:00.123Z");
        assert_eq!(Timestamp(1_795_719_845_007).to_string(), "2026-11-26T19:04:05.007Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }
}
