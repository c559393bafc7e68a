//! Resume cursors: a topic and the next offset of each of its subscribed partitions, as a
//! printable string any gateway on the same cluster can read back.
//!
//! The cursor holds positions only, never rights: on resume the topic is checked against the
//! route's and consumer's allow-lists again. A checksum catches a truncated or mistyped cursor,
//! which is refused rather than read as other offsets.
//!
//! Layout before encoding: version byte `1`, the topic (varint length, bytes), the partition count
//! (varint), then each partition and its next offset (varints), then the CRC-32C of all that (4
//! bytes, little endian). Printed as URL-safe base64 without padding (safe in a query string and in
//! an SSE `id:` line).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use prost::encoding::{decode_varint, encode_varint};

/// Longest cursor handed out or accepted, in characters.
pub(crate) const MAX_CURSOR_CHARS: usize = 1024;

const VERSION: u8 = 1;

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The topic it is a position in.
    pub topic: String,
    /// Each partition and the offset of the next record to deliver from it.
    pub positions: Vec<(i32, i64)>,
}

/// The cursor for `topic` at `positions`. Subscriptions are refused when theirs could grow past
/// [`MAX_CURSOR_CHARS`] (very many partitions).
pub(crate) fn encode(topic: &str, positions: impl ExactSizeIterator<Item = (i32, i64)>) -> String {
    let mut raw = Vec::with_capacity(8 + topic.len() + positions.len() * 8);
    raw.push(VERSION);
    encode_varint(topic.len() as u64, &mut raw);
    raw.extend_from_slice(topic.as_bytes());
    encode_varint(positions.len() as u64, &mut raw);
    for (partition, offset) in positions {
        encode_varint(u64::from(partition as u32), &mut raw);
        encode_varint(offset as u64, &mut raw);
    }
    let sum = crc32c::crc32c(&raw);
    raw.extend_from_slice(&sum.to_le_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

/// Reads a cursor; the error says what is wrong with it.
pub(crate) fn decode(text: &str) -> Result<Cursor, &'static str> {
    if text.len() > MAX_CURSOR_CHARS {
        return Err("cursor longer than 1 KiB");
    }
    let raw = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| "cursor is not one this gateway gave out (not base64url)")?;
    if raw.len() < 5 {
        return Err("cursor is too short");
    }
    let (body, sum) = raw.split_at(raw.len() - 4);
    let sum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if crc32c::crc32c(body) != sum {
        return Err(
            "cursor is damaged (checksum mismatch): use a cursor exactly as the gateway gave it",
        );
    }
    let mut buf = body;
    let malformed = "cursor is malformed";
    let version = *buf.first().ok_or(malformed)?;
    if version != VERSION {
        return Err("cursor is of an unknown version");
    }
    buf = &buf[1..];
    let topic_len = decode_varint(&mut buf).map_err(|_| malformed)? as usize;
    if topic_len > buf.len() {
        return Err(malformed);
    }
    let topic = std::str::from_utf8(&buf[..topic_len])
        .map_err(|_| malformed)?
        .to_string();
    buf = &buf[topic_len..];
    let count = decode_varint(&mut buf).map_err(|_| malformed)? as usize;
    // Each position takes at least two bytes: a count beyond that is a lie.
    if count > buf.len() / 2 {
        return Err(malformed);
    }
    let mut positions = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = decode_varint(&mut buf).map_err(|_| malformed)?;
        let offset = decode_varint(&mut buf).map_err(|_| malformed)?;
        let partition = i32::try_from(partition).map_err(|_| malformed)?;
        let offset = i64::try_from(offset).map_err(|_| malformed)?;
        if positions.iter().any(|(p, _)| *p == partition) {
            return Err("cursor names a partition twice");
        }
        positions.push((partition, offset));
    }
    if !buf.is_empty() {
        return Err(malformed);
    }
    Ok(Cursor { topic, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let positions = vec![(0, 0), (1, 17), (7, i64::MAX), (300, 1 << 40)];
        let text = encode("orders.eu-1", positions.iter().copied());
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let back = decode(&text).expect("decodes");
        assert_eq!(back.topic, "orders.eu-1");
        assert_eq!(back.positions, positions);
    }

    #[test]
    fn damaged_cursors_are_refused() {
        let text = encode("t", [(0, 5), (1, 9)].into_iter());
        // One character changed anywhere.
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(decode(&changed).is_err(), "changed at {i}: {changed}");
        }
        assert!(decode(&text[..text.len() - 2]).is_err());
        assert!(decode("").is_err());
        assert!(decode("not a cursor!").is_err());
        assert!(decode(&"A".repeat(2000)).is_err());
    }
}
