//! Avro values as JSON, for records that are not envelopes and for CEL expressions.

use apache_avro::types::Value;
use serde_json::{Map, Number, Value as Json};

/// The values in a JSON tree, each array item, object member and scalar counted as the decode
/// limits count them: what a decoded event holds, for budgets over the records in flight.
pub fn count_values(v: &Json) -> usize {
    1 + match v {
        Json::Array(a) => a.iter().map(count_values).sum(),
        Json::Object(o) => o.values().map(count_values).sum(),
        _ => 0,
    }
}

/// Converts a decoded Avro value to JSON. Unions collapse to their branch; enums become their
/// symbol; bytes and fixed become strings of code points 0-255 (Avro's own JSON encoding);
/// logical types become their underlying number, or a string where JSON has no exact number.
pub fn avro_to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Json::from(i),
        Value::Float(f) => Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        Value::Double(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(b.iter().map(|&c| char::from(c)).collect()),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Union(_, inner) => avro_to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(avro_to_json).collect()),
        Value::Map(entries) => Json::Object(entries.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        Value::Record(fields) => {
            let mut obj = Map::with_capacity(fields.len());
            for (k, v) in fields {
                obj.insert(k, avro_to_json(v));
            }
            Json::Object(obj)
        }
        Value::Decimal(d) => {
            let bytes: Vec<u8> = (&d).try_into().unwrap_or_default();
            Json::String(bytes.iter().map(|&c| char::from(c)).collect())
        }
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        Value::Uuid(u) => Json::String(u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn nested_records_unions_and_enums() {
        let v = Value::Record(vec![
            ("id".into(), Value::Long(7)),
            ("tag".into(), Value::Union(1, Box::new(Value::String("x".into())))),
            ("none".into(), Value::Union(0, Box::new(Value::Null))),
            ("kind".into(), Value::Enum(1, "B".into())),
            ("items".into(), Value::Array(vec![Value::Int(1), Value::Double(2.5)])),
            ("attrs".into(), Value::Map(HashMap::from([("k".into(), Value::Boolean(true))]))),
            ("raw".into(), Value::Bytes(vec![104, 105])),
        ]);
        assert_eq!(
            avro_to_json(v),
            json!({"id": 7, "tag": "x", "none": null, "kind": "B", "items": [1, 2.5], "attrs": {"k": true}, "raw": "hi"})
        );
    }
}
