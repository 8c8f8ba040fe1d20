//! Decode limits: what one Avro body may make a reader build, checked before the body is decoded.
//!
//! apache-avro reserves collections from the counts it reads and recurses once per nesting level,
//! so untrusted bytes can ask it for more memory or stack than the process has. Its own bound
//! (`max_allocation_bytes`) is process-wide, checks each count against a byte budget one block at
//! a time, and says nothing about zero-width items: a `null` or an empty record takes no bytes,
//! so 126 bytes of blocks of 10^6 `null`s decode to 4·10^7 values. [`check`] walks the body with
//! its writer schema, allocating nothing, and refuses it when it holds more values than
//! [`DecodeLimits::max_values`] (every value counts, zero-width ones included), nests deeper than
//! [`DecodeLimits::max_depth`], or claims a length longer than the bytes left. What is merely
//! malformed (a truncated varint, a union index out of range) is left to the decoder, whose
//! error says more; the walk stops there, and the decoder can then build no more than the walk
//! already counted, since every further value would need bytes that are not there.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, Namespace, ResolvedSchema};

/// Bounds on one decoded body, for every reader of untrusted bytes (router, tf-api, CLI, load
/// test) alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Values in one body, each array item, map entry (key and value), record, field and union
    /// branch counted, zero-width ones included. A decoded value costs ~100–200 bytes once it is
    /// JSON, so the default holds one record's memory to ~20 MB.
    pub max_values: usize,
    /// Nesting of records, arrays, maps and unions; deeper bodies would exhaust the stack of the
    /// decoder (and of every recursive walk after it).
    pub max_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_values: 100_000, max_depth: 64 }
    }
}

/// Why a body was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("body holds more than {max} values (the decode limit)")]
    TooManyValues { max: usize },
    #[error("body nests deeper than {max} levels (the decode limit)")]
    TooDeep { max: usize },
    #[error("a length of {claimed} bytes at byte {at} is longer than the {left} bytes left")]
    LengthPastEnd { claimed: u64, at: usize, left: usize },
}

/// Walks `body` as `schema` describes it and refuses it when it exceeds `limits`.
pub fn check(schema: &Schema, body: &[u8], limits: DecodeLimits) -> Result<(), LimitError> {
    let Ok(resolved) = ResolvedSchema::try_from(schema) else {
        // The decoder resolves the same names and reports why it cannot.
        return Ok(());
    };
    let mut walk = Walk { names: resolved.get_names(), body, pos: 0, values: 0, limits };
    match walk.value(schema, &None, 0) {
        Ok(()) | Err(Stop::Malformed) => Ok(()),
        Err(Stop::Limit(e)) => Err(e),
    }
}

enum Stop {
    Limit(LimitError),
    /// Not ours to describe: the decoder fails here too, with its own message.
    Malformed,
}

impl From<LimitError> for Stop {
    fn from(e: LimitError) -> Self {
        Stop::Limit(e)
    }
}

struct Walk<'a, 's> {
    names: &'a HashMap<Name, &'s Schema>,
    body: &'a [u8],
    pos: usize,
    values: usize,
    limits: DecodeLimits,
}

impl Walk<'_, '_> {
    fn left(&self) -> usize {
        self.body.len() - self.pos
    }

    fn count_value(&mut self) -> Result<(), Stop> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(LimitError::TooManyValues { max: self.limits.max_values }.into());
        }
        Ok(())
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.left() {
            return Err(Stop::Malformed);
        }
        self.pos += n;
        Ok(())
    }

    /// Avro's zig-zag varint, as apache-avro reads it (at most 10 bytes).
    fn long(&mut self) -> Result<i64, Stop> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let &b = self.body.get(self.pos).ok_or(Stop::Malformed)?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(Stop::Malformed)
    }

    /// A `bytes`/`string` length, refused when it claims more than is left.
    fn length(&mut self) -> Result<usize, Stop> {
        let at = self.pos;
        let n = self.long()?;
        let claimed = u64::try_from(n).map_err(|_| Stop::Malformed)?;
        if claimed > self.left() as u64 {
            return Err(LimitError::LengthPastEnd { claimed, at, left: self.left() }.into());
        }
        Ok(claimed as usize)
    }

    fn value(&mut self, schema: &Schema, namespace: &Namespace, depth: usize) -> Result<(), Stop> {
        self.count_value()?;
        match schema {
            Schema::Null => Ok(()),
            // At the end of the body apache-avro reads a boolean as null; so does this walk.
            Schema::Boolean => self.skip(1.min(self.left())),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.long().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Duration => self.skip(12),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
                let n = self.length()?;
                self.skip(n)
            }
            Schema::Fixed(f) => {
                if f.size > self.left() {
                    return Err(LimitError::LengthPastEnd { claimed: f.size as u64, at: self.pos, left: self.left() }.into());
                }
                self.skip(f.size)
            }
            Schema::Decimal(d) => self.value(&d.inner, namespace, depth),
            Schema::Array(a) => self.blocks(depth, |w| w.value(&a.items, namespace, depth + 1)),
            Schema::Map(m) => self.blocks(depth, |w| {
                w.count_value()?;
                let n = w.length()?;
                w.skip(n)?;
                w.value(&m.types, namespace, depth + 1)
            }),
            Schema::Union(u) => {
                self.nest(depth)?;
                let index = usize::try_from(self.long()?).map_err(|_| Stop::Malformed)?;
                let branch = u.variants().get(index).ok_or(Stop::Malformed)?;
                self.value(branch, namespace, depth + 1)
            }
            Schema::Record(r) => {
                self.nest(depth)?;
                let inner = r.name.fully_qualified_name(namespace).namespace;
                for field in &r.fields {
                    self.value(&field.schema, &inner, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                let target = *self.names.get(&full).ok_or(Stop::Malformed)?;
                // The reference itself is not a value of its own.
                self.values -= 1;
                self.value(target, &full.namespace, depth)
            }
        }
    }

    fn nest(&self, depth: usize) -> Result<(), Stop> {
        if depth >= self.limits.max_depth {
            return Err(LimitError::TooDeep { max: self.limits.max_depth }.into());
        }
        Ok(())
    }

    /// Array and map blocks: a count (negative: followed by the block's byte size), items, until
    /// a zero count.
    fn blocks(&mut self, depth: usize, mut item: impl FnMut(&mut Self) -> Result<(), Stop>) -> Result<(), Stop> {
        self.nest(depth)?;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            // The decoder reserves a block's count before reading its items, so a count over
            // what is left of the budget is refused here, even if the bytes after it are
            // malformed; each item then counts too, whatever its width.
            if count.unsigned_abs() > (self.limits.max_values - self.values) as u64 {
                return Err(LimitError::TooManyValues { max: self.limits.max_values }.into());
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tf_testkit::avro_long as long;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    #[test]
    fn zero_width_items_count_against_the_limit() {
        let nulls = schema(r#"{"type": "array", "items": "null"}"#);
        // 40 blocks of 10^6 nulls in 126 bytes: the reported bomb.
        let mut body = Vec::new();
        for _ in 0..40 {
            body.extend(long(1_000_000));
        }
        body.push(0);
        assert!(body.len() < 130);
        assert_eq!(check(&nulls, &body, DecodeLimits::default()), Err(LimitError::TooManyValues { max: 100_000 }));
        let empty = schema(r#"{"type": "array", "items": {"type": "record", "name": "E", "fields": []}}"#);
        assert!(matches!(check(&empty, &body, DecodeLimits::default()), Err(LimitError::TooManyValues { .. })));
        // A few nulls are fine.
        let small = [long(3), vec![0]].concat();
        assert_eq!(check(&nulls, &small, DecodeLimits::default()), Ok(()));
    }

    #[test]
    fn nesting_and_lengths_are_bounded() {
        let list = schema(r#"{"type": "record", "name": "L", "fields": [{"name": "next", "type": ["null", "L"]}]}"#);
        let deep = [vec![2u8; 10_000], vec![0]].concat();
        assert!(matches!(check(&list, &deep, DecodeLimits::default()), Err(LimitError::TooDeep { max: 64 })));
        let shallow = [vec![2u8; 5], vec![0]].concat();
        assert_eq!(check(&list, &shallow, DecodeLimits::default()), Ok(()));
        assert!(matches!(check(&Schema::String, &long(1 << 40), DecodeLimits::default()), Err(LimitError::LengthPastEnd { .. })));
        let fixed = schema(r#"{"type": "fixed", "name": "F", "size": 1099511627776}"#);
        assert!(matches!(check(&fixed, b"abc", DecodeLimits::default()), Err(LimitError::LengthPastEnd { .. })));
    }

    #[test]
    fn malformed_bodies_are_left_to_the_decoder() {
        // Truncated varint, union index out of range: the decoder reports them.
        assert_eq!(check(&Schema::Long, &[0x80], DecodeLimits::default()), Ok(()));
        assert_eq!(check(&schema(r#"["null", "int"]"#), &long(7), DecodeLimits::default()), Ok(()));
    }
}
