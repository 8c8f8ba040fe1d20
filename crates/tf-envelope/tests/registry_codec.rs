//! The codec against the real schema registry of the stack (Apicurio's Confluent API).

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::sync::Arc;

use apache_avro::types::Value;
use serde_json::json;
use tf_envelope::{Codec, DecodeError, Decoded, ENVELOPE_SCHEMA, EnvelopeError, Event, Registry, WireError, wire};
use tf_testkit::{settings, unique};

fn codec() -> Codec {
    Codec::new(Arc::new(Registry::new(&settings().schema_registry_url)))
}

const ORDER_SCHEMA: &str = r#"{"type":"record","name":"Order","namespace":"com.example",
  "fields":[{"name":"order_id","type":"string"},{"name":"amount","type":"double"},
            {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
            {"name":"note","type":["null","string"],"default":null}]}"#;

#[tokio::test]
async fn registering_the_same_schema_twice_returns_the_same_id() {
    let registry = Registry::new(&settings().schema_registry_url);
    let subject = format!("{}-value", unique("it-register"));
    assert_eq!(registry.lookup(&subject, ENVELOPE_SCHEMA).await.unwrap(), None);
    let first = registry.register(&subject, ENVELOPE_SCHEMA).await.unwrap();
    let second = registry.register(&subject, ENVELOPE_SCHEMA).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(registry.lookup(&subject, ENVELOPE_SCHEMA).await.unwrap(), Some(first));
    // Whitespace is not content: the registry compares canonical forms.
    let reformatted: serde_json::Value = serde_json::from_str(ENVELOPE_SCHEMA).unwrap();
    assert_eq!(registry.register(&subject, &reformatted.to_string()).await.unwrap(), first);
}

#[tokio::test]
async fn an_envelope_round_trips_through_the_registry() {
    let codec = codec();
    let mut event = Event::new("evt-1", "/orders/eu", "com.example.order.created", json!({"order": 42, "tags": ["a"]})).unwrap();
    event.subject = Some("order-42".into());
    event.extensions.insert("tenant".into(), "acme".into());
    let subject = format!("{}-value", unique("it-envelope"));
    let bytes = codec.encode_event(&subject, &event).await.unwrap();
    let (id, _) = wire::unframe(&bytes).unwrap();

    // A second codec has an empty cache, so it must fetch the writer schema by id.
    match self::codec().decode(&bytes).await.unwrap() {
        Decoded::Envelope { schema_id, event: back } => {
            assert_eq!(schema_id, id);
            assert_eq!(back, event);
        }
        other => panic!("expected an envelope, got {other:?}"),
    }
}

#[tokio::test]
async fn any_avro_record_decodes_to_json_under_its_full_name() {
    let codec = codec();
    let subject = format!("{}-value", unique("it-order"));
    let value = Value::Record(vec![
        ("order_id".into(), Value::String("o-7".into())),
        ("amount".into(), Value::Double(12.5)),
        ("status".into(), Value::Enum(1, "PAID".into())),
        ("note".into(), Value::Union(1, Box::new(Value::String("rush".into())))),
    ]);
    let bytes = codec.encode(&subject, ORDER_SCHEMA, value).await.unwrap();
    match codec.decode(&bytes).await.unwrap() {
        Decoded::Record { full_name, value, .. } => {
            assert_eq!(full_name, "com.example.Order");
            assert_eq!(value, json!({"order_id": "o-7", "amount": 12.5, "status": "PAID", "note": "rush"}));
        }
        other => panic!("expected a plain record, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_bytes_give_typed_errors_that_say_what_is_wrong() {
    let codec = codec();
    let event = Event::new("evt-bad", "/s", "t", json!({"k": "v"})).unwrap();
    let good = codec.encode_event(&format!("{}-value", unique("it-bad")), &event).await.unwrap();
    let (id, body) = wire::unframe(&good).unwrap();

    let err = codec.decode(b"").await.unwrap_err();
    assert!(matches!(err, DecodeError::Wire(WireError::Empty)), "{err}");

    let err = codec.decode(br#"{"id":"json, not avro"}"#).await.unwrap_err();
    assert!(matches!(err, DecodeError::Wire(WireError::MagicByte(b'{'))), "{err}");
    assert_eq!(err.to_string(), "not Confluent wire format: first byte is 0x7b, not the Confluent magic byte 0x00");

    let err = codec.decode(&[0, 0, 0]).await.unwrap_err();
    assert!(matches!(err, DecodeError::Wire(WireError::TruncatedHeader(3))), "{err}");

    let err = codec.decode(&wire::frame(987_654_321, body)).await.unwrap_err();
    assert!(matches!(err, DecodeError::UnknownSchemaId(987_654_321)), "{err}");
    assert!(err.is_bad_input());

    let err = codec.decode(&wire::frame(id, &body[..body.len() / 2])).await.unwrap_err();
    assert!(matches!(err, DecodeError::Body { schema_id, .. } if schema_id == id), "{err}");
    assert!(err.to_string().starts_with(&format!("Avro body does not decode with writer schema id {id}")), "{err}");

    let mut long = good.clone();
    long.extend_from_slice(b"junk");
    let err = codec.decode(&long).await.unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes { extra: 4, .. }), "{err}");
    assert!(err.is_bad_input());
}

#[tokio::test]
async fn an_envelope_missing_a_required_attribute_is_named() {
    let codec = codec();
    // A producer with an older, wrong "envelope": same full name, no `source`.
    let schema = r#"{"type":"record","name":"Envelope","namespace":"io.taskfactory","fields":[
        {"name":"id","type":"string"},{"name":"type","type":"string"},
        {"name":"time","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"data","type":"string"}]}"#;
    let value = Value::Record(vec![
        ("id".into(), Value::String("e-1".into())),
        ("type".into(), Value::String("t".into())),
        ("time".into(), Value::TimestampMillis(0)),
        ("data".into(), Value::String("{}".into())),
    ]);
    let bytes = codec.encode(&format!("{}-value", unique("it-missing")), schema, value).await.unwrap();
    let err = codec.decode(&bytes).await.unwrap_err();
    assert!(matches!(&err, DecodeError::Envelope { source: EnvelopeError::MissingField("source"), .. }), "{err}");
    assert!(err.to_string().ends_with("envelope field `source` is missing"), "{err}");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_dependency_failure_not_bad_input() {
    // Port 9 (discard) is closed on loopback: the registry is "down".
    let codec = Codec::new(Arc::new(Registry::new("http://127.0.0.1:9/apis/ccompat/v7")));
    let err = codec.decode(&wire::frame(1, b"\x02")).await.unwrap_err();
    assert!(matches!(err, DecodeError::Registry(_)), "{err}");
    assert!(!err.is_bad_input(), "a down registry must pause the router, not dead-letter the record");
    assert!(err.to_string().contains("schema registry unavailable at http://127.0.0.1:9/"), "{err}");
}

/// A flood of records naming schema ids the registry does not know, or ids not under the
/// topic's subject, costs one registry request per id, not one per record.
#[tokio::test]
async fn registry_misses_are_remembered_so_a_flood_of_bad_ids_costs_one_request_each() {
    let registry = Arc::new(Registry::new(&settings().schema_registry_url));
    let codec = Codec::new(registry.clone());
    let before = registry.requests_sent();
    for _ in 0..200 {
        let err = codec.decode(&wire::frame(987_654_322, b"\x00")).await.unwrap_err();
        assert!(matches!(err, DecodeError::UnknownSchemaId(987_654_322)), "{err}");
    }
    assert_eq!(registry.requests_sent() - before, 1, "one request for 200 records of one unknown id");
    // An id that exists but not under the topic's subject.
    let subject = format!("{}-value", tf_testkit::unique("it-misses"));
    let other = tf_testkit::unique("it-misses-other");
    let id = registry.register(&format!("{other}-value"), tf_envelope::ENVELOPE_SCHEMA).await.unwrap();
    let before = registry.requests_sent();
    for _ in 0..200 {
        let err = codec.decode_checked(&wire::frame(id, b"\x00"), Some(&subject)).await.unwrap_err();
        assert!(matches!(err, DecodeError::WrongSubject { .. }), "{err}");
    }
    assert_eq!(registry.requests_sent() - before, 1, "one request for 200 records under the wrong subject");
}

/// A batch of records of a schema the router has not seen yet, decoded at once, fetches the
/// schema and checks its subject once each: concurrent lookups of one id wait for one request.
#[tokio::test]
async fn concurrent_lookups_of_a_new_schema_send_one_request() {
    let subject = format!("{}-value", tf_testkit::unique("it-single-flight"));
    let id = Registry::new(&settings().schema_registry_url).register(&subject, tf_envelope::ENVELOPE_SCHEMA).await.unwrap();
    let registry = Arc::new(Registry::new(&settings().schema_registry_url));
    let lookups = (0..50).map(|_| {
        let (registry, subject) = (registry.clone(), subject.clone());
        async move { (registry.schema(id).await.is_ok(), registry.subject_has(&subject, id).await.ok()) }
    });
    let answers = futures::future::join_all(lookups).await;
    assert!(answers.iter().all(|a| *a == (true, Some(true))), "{answers:?}");
    assert_eq!(registry.requests_sent(), 2, "one schema fetch and one subject check for 50 concurrent lookups");
}
