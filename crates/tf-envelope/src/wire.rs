//! Confluent wire format: magic byte `0`, the schema id as 4 big-endian bytes, the Avro body.

pub const MAGIC: u8 = 0;
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("record value is empty")]
    Empty,
    #[error("first byte is {0:#04x}, not the Confluent magic byte 0x00")]
    MagicByte(u8),
    #[error("record value is {0} bytes, shorter than the 5-byte Confluent header")]
    TruncatedHeader(usize),
}

pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed value into its schema id and Avro body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match bytes {
        [] => Err(WireError::Empty),
        [m, ..] if *m != MAGIC => Err(WireError::MagicByte(*m)),
        b if b.len() < HEADER_LEN => Err(WireError::TruncatedHeader(b.len())),
        b => Ok((u32::from_be_bytes([b[1], b[2], b[3], b[4]]), &b[HEADER_LEN..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_unframe_round_trip() {
        let framed = frame(0x01020304, b"body");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        assert_eq!(unframe(&framed), Ok((0x01020304, &b"body"[..])));
        assert_eq!(unframe(&frame(7, b"")), Ok((7, &b""[..])));
    }

    #[test]
    fn rejects_what_is_not_the_wire_format() {
        assert_eq!(unframe(b""), Err(WireError::Empty));
        assert_eq!(unframe(b"{\"json\":1}"), Err(WireError::MagicByte(b'{')));
        assert_eq!(unframe(&[0, 0, 1]), Err(WireError::TruncatedHeader(3)));
    }
}
