//! Answers written to the client as WebSocket frames by the gateway itself.
//!
//! tungstenite copies every message it sends into its own buffer before writing it, so an answer
//! carrying a megabyte of records was copied twice on its way out: into the protobuf encoding,
//! then into the frame buffer. Here an answer is encoded once, behind its frame header, into a
//! buffer sized up front, and written straight to the socket. Fetch answers are encoded from the
//! shared decoded records themselves (nothing cloned per record).
//!
//! tungstenite still writes what it sends on its own (pongs, close replies, the gateway's pings);
//! its buffer is flushed before each of our frames and each of ours is written whole before
//! tungstenite writes again, so frames never interleave.

use bytes::BufMut;
use futures_util::SinkExt;
use prost::encoding::{self, encoded_len_varint, key_len, WireType};
use prost::Message as _;
use streamgate_protocol::{KafkaMessage, PubSubResp};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

/// `PubSubResp.sequence`.
const SEQUENCE: u32 = 1;
/// `PubSubResp.kafka_fetch_resp`.
const FETCH_RESP: u32 = 33;
/// `KafkaFetchResp.messages`.
const MESSAGES: u32 = 1;
/// `KafkaFetchResp.high_watermark`.
const HIGH_WATERMARK: u32 = 2;

/// One complete server frame (FIN, binary, unmasked: RFC 6455 §5.2) holding one encoded
/// [`PubSubResp`].
#[derive(Debug)]
pub(crate) struct WireFrame {
    bytes: Vec<u8>,
}

impl WireFrame {
    /// `resp`, encoded once behind its frame header.
    pub(crate) fn answer(resp: &PubSubResp) -> Self {
        let mut bytes = with_header(resp.encoded_len());
        resp.encode_raw(&mut bytes);
        Self { bytes }
    }

    /// The fetch answer holding `records` and `high_watermark`, the bytes the same as prost's
    /// encoding of that [`PubSubResp`], without cloning a record into one first.
    pub(crate) fn fetch_answer(
        sequence: i64,
        records: &[SizedRecord<'_>],
        high_watermark: i64,
    ) -> Self {
        let records_len: usize = records.iter().map(SizedRecord::framed_len).sum();
        let fetch_len = records_len + int64_len(HIGH_WATERMARK, high_watermark);
        let total = int64_len(SEQUENCE, sequence)
            + key_len(FETCH_RESP)
            + encoded_len_varint(fetch_len as u64)
            + fetch_len;
        let mut bytes = with_header(total);
        let expected = bytes.len() + total;
        if sequence != 0 {
            encoding::int64::encode(SEQUENCE, &sequence, &mut bytes);
        }
        encoding::encode_key(FETCH_RESP, WireType::LengthDelimited, &mut bytes);
        encoding::encode_varint(fetch_len as u64, &mut bytes);
        for record in records {
            record.encode(&mut bytes);
        }
        if high_watermark != 0 {
            encoding::int64::encode(HIGH_WATERMARK, &high_watermark, &mut bytes);
        }
        debug_assert_eq!(
            bytes.len(),
            expected,
            "the frame's length as its header states"
        );
        Self { bytes }
    }

    /// The whole frame, header first.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The room a route's `max_frame_bytes` leaves for records in one frame, and the one rule for
/// what a record takes of it, for fetch answers and pushes alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameBudget {
    max_frame_bytes: usize,
    /// Everything around the records, at its longest.
    envelope: usize,
}

impl FrameBudget {
    /// A fetch answer: sequence, the fields' tags and lengths, and the high watermark.
    pub(crate) fn fetch_answer(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            envelope: 40,
        }
    }

    /// A push: as a fetch answer, plus the partition, the caught-up flag and the cursor
    /// (`cursor_len`: at its longest).
    pub(crate) fn push(max_frame_bytes: usize, cursor_len: usize) -> Self {
        Self {
            max_frame_bytes,
            envelope: 64 + cursor_len,
        }
    }

    /// Bytes the records of one frame may take together.
    pub(crate) fn for_records(&self) -> usize {
        self.max_frame_bytes.saturating_sub(self.envelope)
    }

    /// Bytes the envelope may take.
    pub(crate) fn envelope(&self) -> usize {
        self.envelope
    }

    /// What a record of `encoded_len` bytes takes of a frame: its field key (one byte in both
    /// answers), its length and itself.
    pub(crate) fn framed_len(encoded_len: usize) -> usize {
        1 + encoded_len_varint(encoded_len as u64) + encoded_len
    }

    /// Why a record that takes `framed` bytes cannot be sent even alone (the TOO_LARGE text).
    pub(crate) fn too_large(&self, offset: i64, framed: usize) -> String {
        format!(
            "record at offset {offset} needs {} bytes, more than this route's max_frame_bytes of {}",
            framed + self.envelope,
            self.max_frame_bytes
        )
    }
}

/// A record chosen for a fetch answer, its encoded size measured once: the size decides whether
/// it fits the frame and sizes the buffer it is encoded into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizedRecord<'a> {
    message: &'a KafkaMessage,
    len: usize,
}

impl<'a> SizedRecord<'a> {
    pub(crate) fn new(message: &'a KafkaMessage) -> Self {
        Self {
            message,
            len: message.encoded_len(),
        }
    }

    /// The record's offset.
    pub(crate) fn offset(&self) -> i64 {
        self.message.offset
    }

    /// The record's place in an answer: field key, length, body.
    pub(crate) fn framed_len(&self) -> usize {
        debug_assert_eq!(key_len(MESSAGES), 1);
        FrameBudget::framed_len(self.len)
    }

    /// Writes the record as a `KafkaFetchResp.messages` entry. Keys and values are copied
    /// straight from the shared buffers (prost's own encoder clones each `Bytes` first, which
    /// allocates the first time a buffer is shared). Field numbers as in `proto/pubsub.proto`:
    /// offset 1, timestamp 2, key 3, value 4, headers 5 (each a key 1 and a value 2), nulls 6.
    fn encode(&self, buf: &mut Vec<u8>) {
        let m = self.message;
        encoding::encode_key(MESSAGES, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.len as u64, buf);
        if m.offset != 0 {
            encoding::int64::encode(1, &m.offset, buf);
        }
        if m.timestamp != 0 {
            encoding::int64::encode(2, &m.timestamp, buf);
        }
        put_bytes(buf, 3, &m.key);
        put_bytes(buf, 4, &m.value);
        for h in &m.headers {
            encoding::encode_key(5, WireType::LengthDelimited, buf);
            encoding::encode_varint(h.encoded_len() as u64, buf);
            put_bytes(buf, 1, h.key.as_bytes());
            put_bytes(buf, 2, &h.value);
        }
        if m.nulls != 0 {
            encoding::uint32::encode(6, &m.nulls, buf);
        }
    }
}

/// A `bytes` or `string` field, copied from its slice; proto3 leaves an empty one out.
fn put_bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        encoding::encode_key(field, WireType::LengthDelimited, buf);
        encoding::encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value);
    }
}

/// An `int64` field's encoded size (proto3 leaves zero out).
fn int64_len(tag: u32, value: i64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value as u64)
    }
}

/// A buffer for a frame of `payload` bytes, its header already written.
fn with_header(payload: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload + 10);
    // FIN + binary opcode.
    bytes.put_u8(0x82);
    match payload {
        0..=125 => bytes.put_u8(payload as u8),
        126..=0xFFFF => {
            bytes.put_u8(126);
            bytes.put_u16(payload as u16);
        }
        _ => {
            bytes.put_u8(127);
            bytes.put_u64(payload as u64);
        }
    }
    bytes
}

/// Writes `frame` whole to the client, after anything tungstenite still holds.
pub(crate) async fn write<S>(ws: &mut WebSocketStream<S>, frame: &WireFrame) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // tungstenite's own frames (a pong it owes, say) go out first, whole.
    ws.flush().await?;
    let stream = ws.get_mut();
    stream.write_all(frame.as_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use streamgate_protocol::{pub_sub_resp::Resp, KafkaFetchResp, KafkaHeader};

    fn payload(frame: &WireFrame) -> &[u8] {
        let b = frame.as_bytes();
        assert_eq!(b[0], 0x82, "FIN + binary");
        let (len, start) = match b[1] {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(
            b.len(),
            start + len,
            "the header states the payload's length"
        );
        &b[start..]
    }

    /// Records that vary in every field proto3 may leave out: zero offsets and timestamps,
    /// negative ones, empty keys and values, no headers, headers with empty parts.
    fn record(offset: i64, value_len: usize) -> KafkaMessage {
        let headers = (0..offset % 3)
            .map(|h| KafkaHeader {
                key: if h == 1 {
                    String::new()
                } else {
                    "h".repeat(h as usize * 70 + 1)
                },
                value: Bytes::from(vec![b'1'; (offset as usize * 37) % 200]),
            })
            .collect();
        KafkaMessage {
            offset: if offset % 4 == 3 { -offset } else { offset },
            timestamp: match offset % 5 {
                0 => 0,
                1 => -1,
                _ => 1_700_000_000_000 + offset,
            },
            key: Bytes::from(vec![b'k'; (offset as usize * 13) % 150]),
            value: Bytes::from(vec![b'v'; value_len + offset as usize % 2]),
            headers,
            nulls: (offset % 4) as u32,
        }
    }

    #[test]
    fn fetch_answers_are_prosts_encoding() {
        // Payload lengths across the three header forms, and the zero fields proto3 leaves out.
        for (sequence, count, value_len, hw) in [
            (0, 0, 0, 0),
            (7, 1, 10, 2),
            (-3, 3, 100, 1 << 40),
            (1 << 33, 20, 1024, 99),
            (5, 100, 1024, 5),
            (9, 3, 20_000, 0),
            (10, 12, 0, -1),
        ] {
            let records: Vec<KafkaMessage> = (0..count).map(|o| record(o, value_len)).collect();
            let refs: Vec<SizedRecord<'_>> = records.iter().map(SizedRecord::new).collect();
            let frame = WireFrame::fetch_answer(sequence, &refs, hw);
            let expected = PubSubResp {
                sequence,
                resp: Some(Resp::KafkaFetchResp(KafkaFetchResp {
                    messages: records.clone(),
                    high_watermark: hw,
                })),
            }
            .encode_to_vec();
            assert_eq!(
                payload(&frame),
                expected,
                "{count} records of {value_len} B"
            );
            // Sized up front: the buffer never grew.
            assert_eq!(frame.bytes.capacity(), expected.len() + 10);
        }
    }

    #[test]
    fn answers_carry_their_length() {
        for len in [0usize, 125, 126, 65_535, 65_536, 300_000] {
            let resp = PubSubResp::error(
                1,
                streamgate_protocol::ErrorCode::BadRequest,
                "x".repeat(len),
            );
            let frame = WireFrame::answer(&resp);
            assert_eq!(payload(&frame), resp.encode_to_vec());
        }
    }
}
