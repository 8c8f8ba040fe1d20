//! Decode + match throughput on one core: the router's per-record CPU work without any I/O.
//! 2,000 envelopes are recorded once in the Confluent wire format, as a producer writes them;
//! the loop then unframes, Avro-decodes and converts each to the JSON expressions see, and
//! matches it against 100 enabled definitions (topic, type pattern, a CEL filter, a CEL
//! dedupe key), exactly as `dispatch` does. Prints records/s; never fails on a figure.
//!
//! `cargo bench -p tf-router --bench route` (release profile, one thread).

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

// The router is a binary: the bench compiles its matching module in (with its unit tests'
// imports, unused here).
#[path = "../src/route.rs"]
#[allow(dead_code, unused_imports)]
mod route;

use std::time::{Duration, Instant};

use apache_avro::{Schema, to_avro_datum};
use serde_json::json;
use tf_envelope::{Decoded, Event, decode_body, wire};

const TOPIC: &str = "events.orders";
const SCHEMA_ID: u32 = 7;

fn definitions() -> Vec<route::Active> {
    (0..100)
        .map(|i| {
            // Every definition listens on the topic; types and filters decide which match: a
            // quarter per type, about half of those through the filter.
            let yaml = format!(
                "id: bench-{i}\nname: Bench {i}\ntrigger:\n  event:\n    topics: [{TOPIC}]\n    type: com.example.order.{}\n    filter: event.data.amount >= {}\ndedupe: {{key: event.data.order_id + '/' + event.data.customer}}\ntasks: [{{name: t, type: human}}]\n",
                ["created", "paid", "shipped", "*"][i % 4],
                (i % 10) * 10
            );
            let definition = tf_definitions::Definition::from_yaml("bench", &yaml).expect("a valid definition").remove(0);
            route::Active { definition, version: 1 }
        })
        .collect()
}

fn recorded() -> Vec<Vec<u8>> {
    let schema = Schema::parse_str(tf_envelope::ENVELOPE_SCHEMA).expect("envelope schema");
    (0..2000)
        .map(|i| {
            let kind = ["created", "paid", "shipped", "cancelled"][i % 4];
            let data = json!({"order_id": format!("o-{i}"), "customer": format!("c-{}", i % 97), "amount": (i * 7) % 100,
                              "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]});
            let mut e = Event::new(format!("e-{i}"), "/shop", format!("com.example.order.{kind}"), data).expect("event");
            e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            let body = to_avro_datum(&schema, e.to_avro()).expect("encodes");
            wire::frame(SCHEMA_ID, &body)
        })
        .collect()
}

fn main() {
    let active = definitions();
    let records = recorded();
    let schema = Schema::parse_str(tf_envelope::ENVELOPE_SCHEMA).expect("envelope schema");
    let bytes: usize = records.iter().map(Vec::len).sum();
    println!("{} recorded envelopes (avg {} bytes), {} definitions", records.len(), bytes / records.len(), active.len());

    let (mut n, mut runs, mut errors) = (0u64, 0usize, 0usize);
    let pass = |n: &mut u64, runs: &mut usize, errors: &mut usize| {
        for (offset, record) in records.iter().enumerate() {
            let (id, body) = wire::unframe(record).expect("framed");
            let Ok(Decoded::Envelope { event, .. }) = decode_body(id, &schema, body) else { panic!("not an envelope") };
            let time = event.time.0;
            let event = serde_json::to_value(&event).expect("json");
            let at = route::Position { topic: TOPIC, partition: 0, offset: offset as i64 };
            let (r, e) = route::route(&active, &at, &event, time, None);
            *runs += r.len();
            *errors += e.len();
            *n += 1;
        }
    };
    // Warm-up, then measure for ~5 s.
    pass(&mut n, &mut runs, &mut errors);
    let (mut n, mut runs, mut errors) = (0u64, 0usize, 0usize);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        pass(&mut n, &mut runs, &mut errors);
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "no definition may fail on these events");
    println!(
        "decode + match: {:.0} records/s on one thread ({:.1} µs a record; {:.1} runs matched per record, {n} records in {secs:.1} s)",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        runs as f64 / n as f64
    );

    // The two halves apart, to see where the time goes.
    let started = Instant::now();
    let mut decoded = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for record in &records {
            let (id, body) = wire::unframe(record).expect("framed");
            let Ok(Decoded::Envelope { event, .. }) = decode_body(id, &schema, body) else { panic!("not an envelope") };
            std::hint::black_box(serde_json::to_value(&event).expect("json"));
            decoded += 1;
        }
    }
    println!("decode only:    {:.0} records/s", decoded as f64 / started.elapsed().as_secs_f64());
}
