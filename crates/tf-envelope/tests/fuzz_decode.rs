//! Hostile bytes through the decoder, generated with proptest: mutations of a valid envelope,
//! and structure-aware cases (generated writer schemas with zero-width items, deep and recursive
//! nesting, and bodies that follow the schema but lie in their counts and lengths). Each must give
//! an error or a value within the decode limits, never a panic, an abort or an unbounded
//! allocation; the process's peak RSS is checked at the end of each property.
//! `TF_FUZZ_CASES=1000000 cargo test --release -p tf-envelope --test fuzz_decode` runs the long
//! version.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::cell::Cell;

use apache_avro::Schema;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tf_envelope::{DecodeError, DecodeLimits, Decoded, ENVELOPE_SCHEMA, Event, decode_body};

/// Peak RSS allowed for the whole test process while hostile cases are decoded.
const PEAK_RSS_MAX: u64 = 256 * 1024 * 1024;

fn cases(default: u32) -> u32 {
    std::env::var("TF_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

fn valid_body(schema: &Schema) -> Vec<u8> {
    let mut e = Event::new("e-1", "/fuzz", "com.example.fuzz", serde_json::json!({"k": [1, 2, 3], "s": "x"})).unwrap();
    e.subject = Some("subject".into());
    apache_avro::to_avro_datum(schema, e.to_avro()).unwrap()
}

#[test]
fn a_lying_count_prefix_is_refused_without_allocating_it() {
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let array = Schema::parse_str(r#"{"type": "array", "items": {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}}"#).unwrap();
    // Half a billion entries claimed in a handful of bytes: no process-wide allocation bound is
    // set in this test, so only the decode limits stand between it and an abort.
    let err = decode_body(7, &array, &tf_testkit::avro_long(500_000_000)).unwrap_err();
    assert!(matches!(err, DecodeError::OverLimit { .. }), "{err}");
    let map = Schema::parse_str(r#"{"type": "map", "values": "string"}"#).unwrap();
    assert!(decode_body(7, &map, &tf_testkit::avro_long(-400_000_000)).is_err());
    assert!(decode_body(7, &Schema::String, &tf_testkit::avro_long(1 << 40)).is_err());
    assert!(decode_body(7, &schema, &[0xff; 16]).is_err());
    // The reported zero-width bomb: 40 blocks of 10^6 nulls.
    let nulls = Schema::parse_str(r#"{"type": "array", "items": "null"}"#).unwrap();
    let body: Vec<u8> = (0..40).flat_map(|_| tf_testkit::avro_long(1_000_000)).chain([0]).collect();
    let err = decode_body(7, &nulls, &body).unwrap_err();
    assert_eq!(err.class(), "DecodeLimitExceeded", "{err}");
    assert!(peak_rss() < PEAK_RSS_MAX, "peak RSS {} bytes", peak_rss());
}

/// Mutations of a valid envelope: bytes replaced, huge or negative varints spliced in where a
/// length may go, truncation, or random bytes.
fn mutated_envelope(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    let lies = prop::sample::select(vec![i64::MAX, i64::MIN, -1, 1 << 31, 500_000_000, -(1 << 40), 1_000_000]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (prop::collection::vec((0..len, any::<u8>()), 1..5)).prop_map({
            let valid = valid.clone();
            move |edits| {
                let mut b = valid.clone();
                for (i, v) in edits {
                    b[i] = v;
                }
                b
            }
        }),
        (0..len, lies).prop_map({
            let valid = valid.clone();
            move |(at, n)| {
                let mut b = valid.clone();
                b.splice(at..at + 1, tf_testkit::avro_long(n));
                b
            }
        }),
        (0..len).prop_map(move |n| valid[..n].to_vec()),
    ]
}

#[test]
fn random_and_mutated_records_never_panic() {
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let valid = valid_body(&schema);
    assert!(matches!(decode_body(1, &schema, &valid), Ok(Decoded::Envelope { .. })));
    let mut runner = TestRunner::new(Config { cases: cases(50_000), failure_persistence: None, ..Config::default() });
    let (ok, refused) = (Cell::new(0usize), Cell::new(0usize));
    runner
        .run(&mutated_envelope(valid), |body| {
            let counter = if decode_body(1, &schema, &body).is_ok() { &ok } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    let (ok, refused) = (ok.get(), refused.get());
    println!("FUZZ FIGURES (envelope mutations): {} records, {ok} decoded, {refused} refused, no panic", ok + refused);
    assert!(refused > (ok + refused) / 2, "most hostile records are refused");
    assert!(peak_rss() < PEAK_RSS_MAX, "peak RSS {} bytes", peak_rss());
}

/// A writer schema to generate, kept as a tree so the body generator can follow it.
#[derive(Debug, Clone)]
enum Shape {
    Null,
    Boolean,
    Long,
    Double,
    String,
    /// A record with no fields: zero-width like `null`.
    Empty,
    Array(Box<Shape>),
    Map(Box<Shape>),
    Record(Vec<Shape>),
    Nullable(Box<Shape>),
    /// A recursive linked list: `{"next": ["null", <self>], "v": <item>}`.
    List(Box<Shape>),
}

impl Shape {
    fn to_json(&self, names: &mut usize) -> serde_json::Value {
        use serde_json::json;
        let mut name = || {
            *names += 1;
            format!("R{names}")
        };
        match self {
            Shape::Null => json!("null"),
            Shape::Boolean => json!("boolean"),
            Shape::Long => json!("long"),
            Shape::Double => json!("double"),
            Shape::String => json!("string"),
            Shape::Empty => json!({"type": "record", "name": name(), "fields": []}),
            Shape::Array(s) => json!({"type": "array", "items": s.to_json(names)}),
            Shape::Map(s) => json!({"type": "map", "values": s.to_json(names)}),
            Shape::Record(fields) => {
                let n = name();
                let fields: Vec<_> =
                    fields.iter().enumerate().map(|(i, f)| json!({"name": format!("f{i}"), "type": f.to_json(names)})).collect();
                json!({"type": "record", "name": n, "fields": fields})
            }
            // Avro forbids a union directly inside a union, and two `null` branches.
            Shape::Nullable(s) if matches!(**s, Shape::Null | Shape::Nullable(_)) => s.to_json(names),
            Shape::Nullable(s) => json!(["null", s.to_json(names)]),
            Shape::List(item) => {
                let n = name();
                json!({"type": "record", "name": n.clone(), "fields": [{"name": "v", "type": item.to_json(names)}, {"name": "next", "type": ["null", n]}]})
            }
        }
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        Just(Shape::Null),
        Just(Shape::Boolean),
        Just(Shape::Long),
        Just(Shape::Double),
        Just(Shape::String),
        Just(Shape::Empty),
    ];
    leaf.prop_recursive(6, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Shape::Array(Box::new(s))),
            inner.clone().prop_map(|s| Shape::Map(Box::new(s))),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Shape::Record),
            inner.clone().prop_map(|s| Shape::Nullable(Box::new(s))),
            inner.prop_map(|s| Shape::List(Box::new(s))),
        ]
    })
}

/// Writes a body that follows `shape` but takes its counts, lengths and list depths from
/// `choices`: mostly small and honest, sometimes huge (10^6 and more) or negative.
struct BodyWriter<'a> {
    choices: &'a [u32],
    next: usize,
    out: Vec<u8>,
}

impl BodyWriter<'_> {
    fn choose(&mut self) -> u32 {
        let c = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        c
    }

    /// A count: small, or one of the lies a hostile producer tells.
    fn count(&mut self) -> i64 {
        match self.choose() % 16 {
            0 => 1_000_000,
            1 => 500_000_000,
            2 => -1_000_000,
            3 => i64::from(self.choose() % 100_000),
            c => i64::from(c % 4),
        }
    }

    fn write(&mut self, shape: &Shape) {
        if self.out.len() > 4096 {
            return; // enough bytes; the rest of the schema reads past the end
        }
        match shape {
            Shape::Null | Shape::Empty => {}
            Shape::Boolean => {
                let b = (self.choose() % 2) as u8;
                self.out.push(b);
            }
            Shape::Long => {
                let n = i64::from(self.choose());
                self.out.extend(tf_testkit::avro_long(n));
            }
            Shape::Double => {
                let d = f64::from(self.choose());
                self.out.extend(d.to_le_bytes());
            }
            Shape::String => {
                let n = self.count();
                self.out.extend(tf_testkit::avro_long(n));
                let honest = usize::try_from(n).unwrap_or(0).min(8);
                self.out.extend(std::iter::repeat_n(b'x', honest));
            }
            Shape::Array(item) | Shape::Map(item) => {
                let blocks = 1 + self.choose() % 3;
                for _ in 0..blocks {
                    let n = self.count();
                    self.out.extend(tf_testkit::avro_long(n));
                    if n < 0 {
                        self.out.extend(tf_testkit::avro_long(0));
                    }
                    // Write a few honest items; a lying count claims the rest.
                    for _ in 0..n.unsigned_abs().min(3) {
                        if matches!(shape, Shape::Map(_)) {
                            self.out.extend(tf_testkit::avro_long(1));
                            self.out.push(b'k');
                        }
                        self.write(item);
                    }
                }
                self.out.push(0);
            }
            Shape::Record(fields) => fields.iter().for_each(|f| self.write(f)),
            Shape::Nullable(s) if matches!(**s, Shape::Null | Shape::Nullable(_)) => self.write(s),
            Shape::Nullable(s) => {
                let branch = self.choose() % 2;
                self.out.extend(tf_testkit::avro_long(i64::from(branch)));
                if branch == 1 {
                    self.write(s);
                }
            }
            Shape::List(item) => {
                // Sometimes far deeper than any stack should go.
                let links = match self.choose() % 4 {
                    0 => 100_000,
                    c => c as usize,
                };
                for _ in 0..links {
                    self.write(item);
                    self.out.extend(tf_testkit::avro_long(1));
                    if self.out.len() > 200_000 {
                        break;
                    }
                }
                self.out.extend(tf_testkit::avro_long(0));
            }
        }
    }
}

#[test]
fn generated_schemas_with_lying_bodies_stay_within_the_limits() {
    let limits = DecodeLimits::default();
    let mut runner = TestRunner::new(Config { cases: cases(20_000) / 4, failure_persistence: None, ..Config::default() });
    let (ok, refused, over_limit) = (Cell::new(0usize), Cell::new(0usize), Cell::new(0usize));
    let strategy = (shape(), prop::collection::vec(any::<u32>(), 0..256), prop::collection::vec(any::<u8>(), 0..8));
    runner
        .run(&strategy, |(shape, choices, tail)| {
            let json = shape.to_json(&mut 0);
            let schema = Schema::parse_str(&json.to_string()).unwrap();
            let mut w = BodyWriter { choices: &choices, next: 0, out: Vec::new() };
            w.write(&shape);
            w.out.extend(tail);
            let counter = match decode_body(1, &schema, &w.out) {
                Ok(Decoded::Record { value, .. }) => {
                    let n = tf_envelope::json::count_values(&value);
                    prop_assert!(n <= limits.max_values, "{n} values decoded");
                    &ok
                }
                Ok(Decoded::Envelope { .. }) => &ok,
                Err(DecodeError::OverLimit { .. }) => &over_limit,
                Err(_) => &refused,
            };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    let (ok, refused, over_limit) = (ok.get(), refused.get(), over_limit.get());
    println!(
        "FUZZ FIGURES (generated schemas): {} bodies, {ok} decoded, {over_limit} over a limit, {refused} otherwise refused, no panic",
        ok + refused + over_limit
    );
    assert!(over_limit > 0 && ok > 0, "the generator reaches both honest and hostile cases");
    assert!(peak_rss() < PEAK_RSS_MAX, "peak RSS {} bytes", peak_rss());
}
