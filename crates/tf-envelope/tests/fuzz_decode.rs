//! Hostile bytes through the decoder: random bodies and mutations of a valid envelope must give
//! an error or a value, never a panic, an abort or an unbounded allocation. No registry is
//! involved: this exercises the Avro body and envelope mapping, which is where a lying length
//! prefix bites. `TF_FUZZ_CASES=1000000 cargo test --release -p tf-envelope --test fuzz_decode`
//! runs the long version.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use apache_avro::Schema;
use tf_envelope::{DecodeError, Decoded, ENVELOPE_SCHEMA, Event, bound_decoding, decode_body};

/// A small deterministic generator (xorshift64*), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Avro's zig-zag varint of `n`.
fn long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return out;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn valid_body(schema: &Schema) -> Vec<u8> {
    let mut e = Event::new("e-1", "/fuzz", "com.example.fuzz", serde_json::json!({"k": [1, 2, 3], "s": "x"})).unwrap();
    e.subject = Some("subject".into());
    apache_avro::to_avro_datum(schema, e.to_avro()).unwrap()
}

#[test]
fn a_lying_count_prefix_is_refused_without_allocating_it() {
    bound_decoding(1 << 20);
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let array = Schema::parse_str(r#"{"type": "array", "items": {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}}"#).unwrap();
    // Half a billion entries claimed in a handful of bytes.
    let body = long(500_000_000);
    let err = decode_body(7, &array, &body).unwrap_err();
    assert!(matches!(err, DecodeError::Body { .. }), "{err}");
    let map = Schema::parse_str(r#"{"type": "map", "values": "string"}"#).unwrap();
    assert!(decode_body(7, &map, &long(-400_000_000)).is_err());
    let string = long(1 << 40);
    assert!(decode_body(7, &Schema::String, &string).is_err());
    assert!(decode_body(7, &schema, &[0xff; 16]).is_err());
}

#[test]
fn random_and_mutated_records_never_panic() {
    bound_decoding(1 << 20);
    let cases: usize = std::env::var("TF_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
    let valid = valid_body(&schema);
    assert!(matches!(decode_body(1, &schema, &valid), Ok(Decoded::Envelope { .. })));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut refused) = (0usize, 0usize);
    for case in 0..cases {
        let body: Vec<u8> = match case % 4 {
            0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                b
            }
            2 => {
                // A huge or negative varint spliced in where a length goes.
                let mut b = valid.clone();
                let at = rng.below(b.len());
                let n = [i64::MAX, i64::MIN, -1, 1 << 31, 500_000_000, -(1 << 40)][rng.below(6)];
                b.splice(at..at + 1.min(b.len() - at), long(n));
                b
            }
            _ => {
                let mut b = valid.clone();
                b.truncate(rng.below(b.len()));
                b
            }
        };
        match decode_body(1, &schema, &body) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    println!("FUZZ FIGURES: {cases} records, {ok} decoded, {refused} refused, no panic");
    assert_eq!(ok + refused, cases);
    assert!(refused > cases / 2, "most hostile records are refused");
}
