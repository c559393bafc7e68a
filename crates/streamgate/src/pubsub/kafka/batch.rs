//! Kafka record batches (message format v2) decoded from a fetch answer, within a budget.
//!
//! A broker's answer is bounded by the fetch's `max_bytes`, but what its batches decompress to is
//! not: a 1 MiB zstd batch of zeros expands to gigabytes. So each batch is decompressed through a
//! cap on the bytes it may produce ([`Budget::max_decompressed`], for the whole answer), keys,
//! values and header values are slices of the answer or of the decompressed buffer (never copied),
//! and decoding stops after the batch whose records (at or after the asked offset) fill the
//! asker's [`Budget::max_record_bytes`]. Batches are never cut: a fetch that starts inside a
//! batch makes the broker send (and the gateway decompress) all of it again.
//!
//! Layout: <https://kafka.apache.org/documentation/#recordbatch>.

use bytes::Bytes;
use std::io::Read;
use streamgate_protocol::{KafkaHeader, KafkaMessage};

/// The fixed part of a v2 batch, from `baseOffset` to `recordsCount` inclusive.
const BATCH_HEADER: usize = 61;

/// The smallest record: one byte each for its length, attributes, timestamp delta, offset delta,
/// key length, value length and header count.
const MIN_RECORD: usize = 7;

/// zstd frames may ask for a window of up to 2^27 bytes by default; producers' batches are far
/// smaller, so a larger window is refused rather than allocated.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// How much a fetch answer may cost to decode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// The offset asked for: records before it (the rest of their batch) are skipped.
    pub from: i64,
    /// Key, value and header bytes of the records wanted: no batch is decoded once they are
    /// reached (the batch that reaches them is kept whole).
    pub max_record_bytes: usize,
    /// Bytes all compressed batches of the answer may expand to, together.
    pub max_decompressed: usize,
}

/// An aborted transaction a read-committed Fetch answer lists: its producer and first offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
}

/// Records decoded from one fetch answer.
#[derive(Debug, Default)]
pub(crate) struct BatchRecords {
    /// Records at or after [`Budget::from`], in log order.
    pub messages: Vec<KafkaMessage>,
    /// Key, value and header bytes of `messages`.
    pub record_bytes: usize,
    /// Where the next fetch starts: after the last batch this answer settled, whether it held
    /// records for the asker or not (a transaction marker, an aborted transaction's batch, an
    /// empty batch left by compaction), and never before [`Budget::from`].
    pub next: i64,
}

/// Why a fetch answer's records could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// A batch expands past the budget before any record could be kept.
    #[error(
        "the record batch at offset {base_offset} ({compressed} bytes, {codec}) decompresses to \
         more than the {limit} bytes a fetch may decode (the upstream's max_decompressed_bytes)"
    )]
    TooLarge {
        base_offset: i64,
        codec: &'static str,
        compressed: usize,
        limit: usize,
    },
    /// The bytes are not a valid v2 batch.
    #[error("malformed record batch at offset {base_offset}: {what}")]
    Malformed { base_offset: i64, what: String },
}

/// Decodes the record batches of one partition's fetch answer. `aborted` is the answer's list
/// of aborted transactions (empty when reading uncommitted): a transactional batch of a producer
/// whose aborted transaction has begun at or before the batch is left out, up to that
/// producer's abort marker, as Kafka's own consumers do. Control batches (transaction markers)
/// are never records.
pub(crate) fn decode(
    mut records: Bytes,
    budget: Budget,
    aborted: &[AbortedTxn],
) -> Result<BatchRecords, BatchError> {
    let mut out = BatchRecords {
        next: budget.from,
        ..BatchRecords::default()
    };
    let mut decompressed = 0usize;
    let mut aborts = Aborts::new(aborted);
    // A broker may end an answer with the first part of a batch (it cuts at max_bytes): whatever
    // is shorter than its own length is left for the next fetch.
    while records.len() >= 12 {
        let base_offset = i64::from_be_bytes(array(&records[0..8]));
        let length = i32::from_be_bytes(array(&records[8..12]));
        let malformed = |what: &str| BatchError::Malformed {
            base_offset,
            what: what.to_string(),
        };
        let length = usize::try_from(length)
            .ok()
            .filter(|l| *l >= BATCH_HEADER - 12)
            .ok_or_else(|| malformed("batch length below the v2 header"))?;
        if records.len() < 12 + length {
            break;
        }
        let batch = records.split_to(12 + length);
        if batch[16] != 2 {
            return Err(malformed(&format!(
                "message format v{} (only v2, Kafka 0.11 and later, is read)",
                batch[16]
            )));
        }
        let crc = u32::from_be_bytes(array(&batch[17..21]));
        if crc32c::crc32c(&batch[21..]) != crc {
            return Err(malformed("CRC mismatch"));
        }
        let attributes = i16::from_be_bytes(array(&batch[21..23]));
        let last_offset_delta = i32::from_be_bytes(array(&batch[23..27]));
        let first_timestamp = i64::from_be_bytes(array(&batch[27..35]));
        let max_timestamp = i64::from_be_bytes(array(&batch[35..43]));
        let producer_id = i64::from_be_bytes(array(&batch[43..51]));
        let count = i32::from_be_bytes(array(&batch[57..61]));
        let last_offset = base_offset.saturating_add(i64::from(last_offset_delta));
        let is_control = attributes & CONTROL != 0;
        let skipped = aborts.skips(&batch, attributes, producer_id, last_offset);
        // Settled from here on: the next fetch starts after this batch unless it is left for
        // a later one below (the decompression budget).
        let next = out.next.max(last_offset.saturating_add(1));
        // Transaction markers and aborted batches are not records; a batch wholly before the
        // asked offset is not for the asker (a fetch that starts inside a batch gets all of it).
        if is_control || skipped || last_offset < budget.from {
            out.next = next;
            continue;
        }
        let codec = Codec::of(attributes).ok_or_else(|| malformed("unknown compression"))?;
        let payload = batch.slice(BATCH_HEADER..);
        let compressed = payload.len();
        let body = match codec {
            Codec::None => payload,
            _ => {
                let left = budget.max_decompressed.saturating_sub(decompressed);
                match codec
                    .inflate(&payload, left)
                    .map_err(|e| malformed(&format!("{}: {e}", codec.name())))?
                {
                    Some(body) => {
                        decompressed += body.len();
                        Bytes::from(body)
                    }
                    None if out.messages.is_empty() => {
                        return Err(BatchError::TooLarge {
                            base_offset,
                            codec: codec.name(),
                            compressed,
                            limit: budget.max_decompressed,
                        })
                    }
                    // What was decoded so far is answered; the next fetch starts at this batch.
                    None => break,
                }
            }
        };
        let timestamp = |delta: i64| {
            if attributes & 0x08 != 0 {
                // LogAppendTime: the broker's time for the whole batch.
                Some(max_timestamp)
            } else {
                first_timestamp.checked_add(delta)
            }
        };
        read_records(body, count, base_offset, timestamp, budget.from, &mut out)
            .map_err(|what| malformed(&what))?;
        out.next = next;
        if out.record_bytes >= budget.max_record_bytes {
            break;
        }
    }
    Ok(out)
}

/// Attribute bits of a v2 batch.
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// The aborted transactions of one fetch answer, applied batch by batch in log order.
struct Aborts {
    /// Not yet begun, latest first offset first (taken from the back).
    pending: Vec<AbortedTxn>,
    /// Producers inside an aborted transaction, until its abort marker.
    open: Vec<i64>,
}

impl Aborts {
    fn new(aborted: &[AbortedTxn]) -> Self {
        let mut pending = aborted.to_vec();
        pending.sort_unstable_by_key(|t| std::cmp::Reverse(t.first_offset));
        Self {
            pending,
            open: Vec::new(),
        }
    }

    /// Whether the batch is an aborted transaction's data, left out. An abort marker of a
    /// producer ends its aborted transaction (the marker itself is skipped as a control batch).
    fn skips(&mut self, batch: &[u8], attributes: i16, producer_id: i64, last_offset: i64) -> bool {
        if producer_id < 0 || (self.pending.is_empty() && self.open.is_empty()) {
            return false;
        }
        while self
            .pending
            .last()
            .is_some_and(|t| t.first_offset <= last_offset)
        {
            if let Some(t) = self.pending.pop() {
                if !self.open.contains(&t.producer_id) {
                    self.open.push(t.producer_id);
                }
            }
        }
        if attributes & CONTROL != 0 {
            if is_abort_marker(batch) {
                self.open.retain(|p| *p != producer_id);
            }
            return false;
        }
        attributes & TRANSACTIONAL != 0 && self.open.contains(&producer_id)
    }
}

/// Whether a control batch holds an abort marker: its one record's key is a version (int16)
/// and a type (int16), 0 for abort, 1 for commit. Control batches are never compressed.
fn is_abort_marker(batch: &[u8]) -> bool {
    let body = &batch[BATCH_HEADER.min(batch.len())..];
    let mut record = Fields {
        buf: body,
        at: 0,
        end: body.len(),
    };
    let key = (|| {
        record.length("record length")?;
        record.skip(1)?;
        record.varint()?;
        record.varint()?;
        record.field()
    })();
    matches!(key, Ok(Some(r)) if r.len() >= 4 && body[r.start + 2..r.start + 4] == [0, 0])
}

/// Reads a batch's `count` records from `body` into `out` (those at or after `from`).
fn read_records(
    body: Bytes,
    count: i32,
    base_offset: i64,
    timestamp: impl Fn(i64) -> Option<i64>,
    from: i64,
    out: &mut BatchRecords,
) -> Result<(), String> {
    let count = usize::try_from(count).unwrap_or(0);
    // The claimed count is the sender's word: reserve no more than the bytes can hold.
    out.messages.reserve(count.min(body.len() / MIN_RECORD));
    let mut batch = Fields {
        buf: &body,
        at: 0,
        end: body.len(),
    };
    for _ in 0..count {
        let length = batch.length("record length")?;
        let mut record = Fields {
            buf: &body,
            at: batch.at,
            end: batch.at + length,
        };
        batch.at += length;
        record.skip(1)?; // attributes: unused in v2
        let timestamp_delta = record.varint()?;
        let offset_delta = record.varint()?;
        let (key, key_null) = record.bytes(&body)?;
        let (value, value_null) = record.bytes(&body)?;
        let header_count =
            usize::try_from(record.varint()?).map_err(|_| "negative header count".to_string())?;
        let mut headers = Vec::with_capacity(header_count.min(record.left() / 2));
        for _ in 0..header_count {
            let name = record.field()?.map_or(&[][..], |r| &body[r]);
            let key = std::str::from_utf8(name)
                .map_err(|_| "header name is not UTF-8".to_string())?
                .to_string();
            headers.push(KafkaHeader {
                key,
                value: record.bytes(&body)?.0,
            });
        }
        if record.left() != 0 {
            return Err(format!("{} bytes left after a record", record.left()));
        }
        let offset = base_offset.saturating_add(offset_delta);
        if offset < from {
            continue;
        }
        let message = KafkaMessage {
            offset,
            timestamp: timestamp(timestamp_delta).ok_or("timestamp overflow")?,
            key,
            value,
            headers,
            nulls: u32::from(key_null) | u32::from(value_null) << 1,
        };
        out.record_bytes += record_size(&message);
        out.messages.push(message);
    }
    if batch.left() != 0 {
        return Err(format!(
            "{} bytes left after the batch's records",
            batch.left()
        ));
    }
    Ok(())
}

/// A record's bytes as credit counts them: key, value, and every header's name and value.
pub(crate) fn record_size(m: &KafkaMessage) -> usize {
    m.key.len()
        + m.value.len()
        + m.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

/// Reads fields by position up to `end`: only keys and values become (shared) slices of the
/// buffer, one reference count each, rather than every record and field along the way.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    end: usize,
}

impl Fields<'_> {
    fn left(&self) -> usize {
        self.end - self.at
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if self.left() < n {
            return Err("record cut short".into());
        }
        self.at += n;
        Ok(())
    }

    /// A zig-zag varint (Kafka's varint and varlong), as i64.
    fn varint(&mut self) -> Result<i64, String> {
        let mut raw: u64 = 0;
        for shift in (0..64).step_by(7) {
            if self.at >= self.end {
                return Err("record cut short".into());
            }
            let byte = self.buf[self.at];
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// A varint length that the bytes left can hold.
    fn length(&mut self, what: &str) -> Result<usize, String> {
        let length = self.varint()?;
        self.fits(length, what)
    }

    fn fits(&self, length: i64, what: &str) -> Result<usize, String> {
        usize::try_from(length)
            .ok()
            .filter(|l| *l <= self.left())
            .ok_or_else(|| format!("{what} out of range"))
    }

    /// A varint length and the range of that many bytes (`None` for -1, null).
    fn field(&mut self) -> Result<Option<std::ops::Range<usize>>, String> {
        let length = self.varint()?;
        if length == -1 {
            return Ok(None);
        }
        let length = self.fits(length, "field length")?;
        self.at += length;
        Ok(Some(self.at - length..self.at))
    }

    /// A field as a slice of `owner` (the buffer `buf` borrows), and whether it is null (read
    /// as empty).
    fn bytes(&mut self, owner: &Bytes) -> Result<(Bytes, bool), String> {
        Ok(match self.field()? {
            Some(r) => (owner.slice(r), false),
            None => (Bytes::new(), true),
        })
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// A batch's compression, from bits 0–2 of its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn of(attributes: i16) -> Option<Self> {
        Some(match attributes & 0x07 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }

    /// `input` decompressed, or `None` when it expands past `limit` bytes (never holding more
    /// than `limit + 1` of them).
    fn inflate(self, input: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Self::None => Ok(Some(input.to_vec())),
            Self::Gzip => capped(flate2::read::GzDecoder::new(input), limit),
            Self::Lz4 => capped(lz4::Decoder::new(input)?, limit),
            Self::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(input)?;
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                capped(decoder, limit)
            }
            Self::Snappy => snappy(input, limit),
        }
    }
}

/// Reads `reader` to the end unless it yields more than `limit` bytes. The buffer grows by
/// doubling but never past `limit`, so refusing costs at most `limit` bytes, not twice that.
fn capped(mut reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    const CHUNK: usize = 64 << 10;
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(Some(out)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let len = out.len() + n;
        if len > limit {
            return Ok(None);
        }
        if len > out.capacity() {
            let grown = (out.capacity() * 2).max(CHUNK).clamp(len, limit);
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// The framing Java clients wrap snappy blocks in (xerial's snappy-java).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// Snappy, raw or in xerial framing; each block's claimed size is checked against the limit
/// before anything is allocated for it.
fn snappy(input: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let blocks: Vec<&[u8]> = match input.strip_prefix(XERIAL_MAGIC) {
        None => vec![input],
        Some(framed) => {
            // Version and compatible-version words, then length-prefixed blocks.
            let mut rest = framed
                .get(8..)
                .ok_or_else(|| invalid("xerial header cut".into()))?;
            let mut blocks = Vec::new();
            while !rest.is_empty() {
                let len = rest
                    .get(..4)
                    .map(|b| u32::from_be_bytes(array(b)) as usize)
                    .ok_or_else(|| invalid("xerial block length cut".into()))?;
                let block = rest
                    .get(4..4 + len)
                    .ok_or_else(|| invalid("xerial block cut".into()))?;
                blocks.push(block);
                rest = &rest[4 + len..];
            }
            blocks
        }
    };
    let mut out = Vec::new();
    let mut decoder = snap::raw::Decoder::new();
    for block in blocks {
        let size = snap::raw::decompress_len(block).map_err(|e| invalid(e.to_string()))?;
        if out.len() + size > limit {
            return Ok(None);
        }
        let at = out.len();
        out.resize(at + size, 0);
        let written = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| invalid(e.to_string()))?;
        out.truncate(at + written);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A v2 batch of `records` (key, value) at `base_offset`, compressed with `codec`.
    fn batch(base_offset: i64, codec: Codec, records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (key, value)) in records.iter().enumerate() {
            let mut r = vec![0u8]; // attributes
            put_varint(&mut r, 0); // timestamp delta
            put_varint(&mut r, i as i64); // offset delta
            put_varint(&mut r, key.len() as i64);
            r.extend_from_slice(key);
            put_varint(&mut r, value.len() as i64);
            r.extend_from_slice(value);
            put_varint(&mut r, 1); // one header
            put_varint(&mut r, 1);
            r.push(b'h');
            put_varint(&mut r, -1);
            put_varint(&mut body, r.len() as i64);
            body.extend_from_slice(&r);
        }
        let body = compress(codec, &body);
        let attributes: i16 = match codec {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        };
        let mut tail = Vec::new(); // from attributes on: what the CRC covers
        tail.extend_from_slice(&attributes.to_be_bytes());
        tail.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
        tail.extend_from_slice(&1_000i64.to_be_bytes());
        tail.extend_from_slice(&1_000i64.to_be_bytes());
        tail.extend_from_slice(&(-1i64).to_be_bytes());
        tail.extend_from_slice(&(-1i16).to_be_bytes());
        tail.extend_from_slice(&(-1i32).to_be_bytes());
        tail.extend_from_slice(&(records.len() as i32).to_be_bytes());
        tail.extend_from_slice(&body);
        let mut out = Vec::new();
        out.extend_from_slice(&base_offset.to_be_bytes());
        out.extend_from_slice(&((4 + 1 + 4 + tail.len()) as i32).to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&tail).to_be_bytes());
        out.extend_from_slice(&tail);
        out
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        match codec {
            Codec::None => data.to_vec(),
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            Codec::Lz4 => {
                let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
                e.write_all(data).unwrap();
                let (out, result) = e.finish();
                result.unwrap();
                out
            }
            Codec::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }

    fn budget(from: i64) -> Budget {
        Budget {
            from,
            max_record_bytes: usize::MAX,
            max_decompressed: 1 << 20,
        }
    }

    #[test]
    fn every_codec_decodes_to_the_same_records() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let bytes = batch(10, codec, &[(b"k1", b"v1"), (b"", b"value two")]);
            let got = decode(Bytes::from(bytes), budget(11), &[]).unwrap();
            assert_eq!(got.messages.len(), 1, "{codec:?}");
            let m = &got.messages[0];
            assert_eq!((m.offset, &m.value[..]), (11, &b"value two"[..]));
            assert_eq!(m.headers[0].key, "h");
            assert_eq!(got.record_bytes, 10);
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_budget_naming_the_sizes() {
        let zeros = vec![0u8; 8 << 20];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let bytes = batch(0, codec, &[(b"", &zeros)]);
            let compressed = bytes.len() - BATCH_HEADER;
            let err = decode(Bytes::from(bytes), budget(0), &[]).unwrap_err();
            assert_eq!(
                err,
                BatchError::TooLarge {
                    base_offset: 0,
                    codec: codec.name(),
                    compressed,
                    limit: 1 << 20
                },
                "{codec:?}"
            );
        }
    }

    #[test]
    fn decoding_stops_at_the_record_budget_and_after_a_cut_batch() {
        let mut bytes = batch(0, Codec::None, &[(b"", b"aaaa"), (b"", b"bbbb")]);
        bytes.extend(batch(2, Codec::Zstd, &[(b"", b"cccc")]));
        let mut cut = bytes.clone();
        cut.extend_from_slice(&batch(3, Codec::None, &[(b"", b"d")])[..20]);
        let all = decode(Bytes::from(cut), budget(0), &[]).unwrap();
        assert_eq!(all.messages.len(), 3);
        assert_eq!(all.next, 3, "a cut batch is not settled");
        // Each record is 5 bytes (a 4-byte value and the header name "h"): the first batch
        // reaches the budget and is kept whole; the second is not decoded.
        let first_batch = decode(
            Bytes::from(bytes),
            Budget {
                max_record_bytes: 6,
                ..budget(0)
            },
            &[],
        )
        .unwrap();
        assert_eq!(first_batch.messages.len(), 2);
        assert_eq!(
            first_batch.next, 2,
            "the next fetch starts after the batch kept"
        );
        assert_eq!(first_batch.record_bytes, 10);
    }

    /// `bytes` (one uncompressed batch) with its records replaced by `records`, CRC recomputed.
    fn with_records(mut bytes: Vec<u8>, count: i32, records: &[u8]) -> Vec<u8> {
        bytes.truncate(BATCH_HEADER);
        bytes[57..61].copy_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(records);
        let length = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// One record's bytes: attributes, deltas, then `rest` (key, value, headers as given).
    fn raw_record(rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8]; // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, 0); // offset delta
        body.extend_from_slice(rest);
        let mut out = Vec::new();
        put_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn every_claimed_length_is_checked_against_the_bytes() {
        let base = batch(0, Codec::None, &[(b"k", b"v")]);
        let varint = |v: i64| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        // A record that claims more bytes than the batch holds.
        let mut long_record = varint(1 << 30);
        long_record.extend_from_slice(&[0; 8]);
        cases.push(("record length", long_record));
        // A key that claims more bytes than its record holds.
        cases.push((
            "field length",
            raw_record(&[varint(1 << 30), vec![b'k'], varint(-1), varint(0)].concat()),
        ));
        // A value likewise.
        cases.push((
            "field length",
            raw_record(&[varint(-1), varint(1 << 20), vec![b'v'], varint(0)].concat()),
        ));
        // A header name and a header value likewise.
        cases.push((
            "field length",
            raw_record(
                &[
                    varint(-1),
                    varint(-1),
                    varint(1),
                    varint(1 << 20),
                    vec![b'h'],
                ]
                .concat(),
            ),
        ));
        cases.push((
            "field length",
            raw_record(
                &[
                    varint(-1),
                    varint(-1),
                    varint(1),
                    varint(1),
                    vec![b'h'],
                    varint(1 << 20),
                ]
                .concat(),
            ),
        ));
        // A billion headers in a few bytes.
        cases.push((
            "cut short",
            raw_record(&[varint(-1), varint(-1), varint(1 << 30)].concat()),
        ));
        for (what, records) in cases {
            let bytes = with_records(base.clone(), 1, &records);
            let err = decode(Bytes::from(bytes), budget(0), &[]).unwrap_err();
            assert!(
                matches!(&err, BatchError::Malformed { what: w, .. } if w.contains(what)),
                "{what}: {err}"
            );
        }
        // A xerial snappy block that claims more than the frame holds.
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(1u32 << 30).to_be_bytes());
        framed.extend_from_slice(b"abc");
        let err = snappy(&framed, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("xerial block cut"), "{err}");
        // And a raw block that claims to expand past the limit allocates nothing for it.
        let mut claims_big = Vec::new();
        let mut n = 1u64 << 40;
        while n >= 0x80 {
            claims_big.push((n as u8) | 0x80);
            n >>= 7;
        }
        claims_big.push(n as u8);
        assert!(matches!(snappy(&claims_big, 1 << 20), Ok(None) | Err(_)));
    }

    #[test]
    fn hostile_counts_and_lengths_are_errors_not_allocations() {
        let mut bytes = batch(0, Codec::None, &[(b"k", b"v")]);
        // Claim two billion records: the count is checked against the bytes, not trusted.
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let err = decode(Bytes::from(bytes.clone()), budget(0), &[]).unwrap_err();
        assert!(matches!(err, BatchError::Malformed { .. }), "{err}");
        bytes[30] ^= 1;
        let err = decode(Bytes::from(bytes), budget(0), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed record batch at offset 0: CRC mismatch"
        );
    }

    /// `bytes` (one batch) marked as `producer_id`'s, with `attributes` added, CRC recomputed.
    fn of_producer(mut bytes: Vec<u8>, producer_id: i64, attributes: i16) -> Vec<u8> {
        let mut a = i16::from_be_bytes(array(&bytes[21..23]));
        a |= attributes;
        bytes[21..23].copy_from_slice(&a.to_be_bytes());
        bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// A transaction marker of `producer_id` at `offset`: commit or abort.
    fn marker(offset: i64, producer_id: i64, commit: bool) -> Vec<u8> {
        let key = [0, 0, 0, u8::from(commit)];
        let value = [0, 0, 0, 0, 0, 0];
        of_producer(
            batch(offset, Codec::None, &[(&key, &value)]),
            producer_id,
            TRANSACTIONAL | CONTROL,
        )
    }

    fn offsets(d: &BatchRecords) -> Vec<i64> {
        d.messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn markers_and_empty_reads_still_move_the_next_offset() {
        // Two records, then a commit marker: the log ends at 3 and so does the next fetch.
        let mut bytes = of_producer(batch(0, Codec::None, &[(b"", b"a"), (b"", b"b")]), 7, 0x10);
        bytes.extend(marker(2, 7, true));
        let got = decode(Bytes::from(bytes.clone()), budget(0), &[]).unwrap();
        assert_eq!((offsets(&got), got.next), (vec![0, 1], 3));
        // Read from the marker alone: no record, and still past it.
        let got = decode(Bytes::from(bytes), budget(2), &[]).unwrap();
        assert_eq!((offsets(&got), got.next), (vec![], 3));
        // Nothing at all: the next fetch starts where this one did.
        let got = decode(Bytes::new(), budget(5), &[]).unwrap();
        assert_eq!((offsets(&got), got.next), (vec![], 5));
    }

    #[test]
    fn aborted_transactions_are_left_out_up_to_their_markers() {
        const TXN: i16 = TRANSACTIONAL;
        // 0-1: producer 7 (aborted), 2: producer 8 (committed), 3: producer 7's abort marker,
        // 4: producer 8's commit marker, 5: producer 7 again (a later, committed transaction),
        // 6: its commit marker, 7: a plain record of no producer.
        let mut bytes = of_producer(batch(0, Codec::None, &[(b"", b"x0"), (b"", b"x1")]), 7, TXN);
        bytes.extend(of_producer(batch(2, Codec::Zstd, &[(b"", b"ok2")]), 8, TXN));
        bytes.extend(marker(3, 7, false));
        bytes.extend(marker(4, 8, true));
        bytes.extend(of_producer(batch(5, Codec::None, &[(b"", b"ok5")]), 7, TXN));
        bytes.extend(marker(6, 7, true));
        bytes.extend(batch(7, Codec::None, &[(b"", b"ok7")]));
        let aborted = [AbortedTxn {
            producer_id: 7,
            first_offset: 0,
        }];
        let got = decode(Bytes::from(bytes.clone()), budget(0), &aborted).unwrap();
        assert_eq!((offsets(&got), got.next), (vec![2, 5, 7], 8));
        // Without the broker's list (read uncommitted), everything but the markers is read.
        let got = decode(Bytes::from(bytes), budget(0), &[]).unwrap();
        assert_eq!(offsets(&got), vec![0, 1, 2, 5, 7]);
    }

    #[test]
    fn a_batch_at_the_largest_offset_saturates() {
        let bytes = batch(i64::MAX - 1, Codec::None, &[(b"", b"a"), (b"", b"b")]);
        let got = decode(Bytes::from(bytes), budget(i64::MAX - 1), &[]).unwrap();
        assert_eq!(offsets(&got), vec![i64::MAX - 1, i64::MAX]);
        assert_eq!(got.next, i64::MAX);
    }
}
