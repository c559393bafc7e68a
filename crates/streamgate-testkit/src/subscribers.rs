//! Many push subscriptions over few WebSocket connections, as the scale test and the
//! filtered-subscribers benchmark open them: an optional loopback source address per connection
//! (so that 127.0.0.0/8, not one address's ports, bounds the count), and credit granted in a
//! window as records arrive.
//!
//! The load generator must cost little next to the gateway it measures: after the handshake
//! (tokio-tungstenite) a connection reads frames itself and looks into a push only for each
//! record's offset, timestamp and key, without decoding the rest.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaCredit, CmdKafkaSubscribe, KafkaSubscribeResp,
    Message as _, PubSubReq, PubSubResp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// One connection's subscriptions and how it reads them.
pub struct Connection {
    /// The gateway's listener.
    pub addr: SocketAddr,
    /// Bind the connection to this loopback address first (`None`: the system's choice).
    pub source: Option<IpAddr>,
    /// The pub/sub route's path, e.g. `/kafka`.
    pub path: String,
    /// The subscribes to send, each with its credit in `credit_records`; subscription `i` is
    /// sent under sequence `i + 1`.
    pub subscribes: Vec<CmdKafkaSubscribe>,
    /// Granted again once half of each subscription's credit is used.
    pub credit_window: u32,
}

/// A record as a connection saw it: the fields the tests and the benchmark look at.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub key: &'a [u8],
}

/// What a connection saw of one of its subscriptions.
pub enum Event<'a> {
    /// The subscribe's answer (where each partition starts).
    Subscribed(&'a KafkaSubscribeResp),
    /// A record pushed.
    Record(Record<'a>),
}

/// Opens the connection holding a permit of `gate` (so that only so many connections subscribe
/// at once), subscribes, lets the permit go and adds one to `ready` once every subscription is
/// answered, then hands each answer and record to `on_event(subscription index, event)` until
/// `stop`. An error frame or a closed connection is an error.
pub async fn run(
    c: Connection,
    gate: Arc<Semaphore>,
    ready: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    mut on_event: impl FnMut(usize, Event<'_>),
) -> Result<(), String> {
    let mut permit = Some(gate.acquire_owned().await.map_err(|e| e.to_string())?);
    let mut tcp = connect(c.addr, c.source, &c.path).await?;
    let mut outstanding = Vec::with_capacity(c.subscribes.len());
    for (i, subscribe) in c.subscribes.into_iter().enumerate() {
        outstanding.push(subscribe.credit_records);
        let req = PubSubReq::new(i as i64 + 1, Req::CmdKafkaSubscribe(subscribe));
        send(&mut tcp, &req).await?;
    }
    let mut answered = 0;
    let mut sequence = outstanding.len() as i64;
    let mut frames = Frames::default();
    while !stop.load(Ordering::Relaxed) {
        let payload =
            match tokio::time::timeout(Duration::from_millis(200), frames.next(&mut tcp)).await {
                Err(_) => continue,
                Ok(frame) => frame?,
            };
        let Some(payload) = payload else {
            continue;
        };
        let (sequence_of, push) = match scan_push(payload) {
            Some(scanned) => scanned,
            None => {
                // Not a push: an answer or an error, decoded whole (rare).
                let frame = PubSubResp::decode(payload).map_err(|e| format!("decode: {e}"))?;
                let index = usize::try_from(frame.sequence - 1)
                    .ok()
                    .filter(|i| *i < outstanding.len());
                match (frame.resp, index) {
                    (Some(Resp::KafkaSubscribeResp(answer)), Some(i)) => {
                        on_event(i, Event::Subscribed(&answer));
                        answered += 1;
                        if answered == outstanding.len() {
                            drop(permit.take());
                            ready.add_permits(1);
                        }
                    }
                    (Some(Resp::ErrorResp(e)), _) => return Err(format!("error frame: {e:?}")),
                    _ => {}
                }
                continue;
            }
        };
        let Some(i) = usize::try_from(sequence_of - 1)
            .ok()
            .filter(|i| *i < outstanding.len())
        else {
            continue;
        };
        let mut records = 0u32;
        for_each_record(push, |r| {
            on_event(i, Event::Record(r));
            records += 1;
        })?;
        outstanding[i] = outstanding[i].saturating_sub(records);
        if 2 * outstanding[i] < c.credit_window {
            sequence += 1;
            let credit = CmdKafkaCredit {
                subscription: i as i64 + 1,
                records: c.credit_window - outstanding[i],
                bytes: 0,
            };
            send(
                &mut tcp,
                &PubSubReq::new(sequence, Req::CmdKafkaCredit(credit)),
            )
            .await?;
            outstanding[i] = c.credit_window;
        }
    }
    // A close frame (status 1000), then the connection is dropped.
    let _ = write_frame(&mut tcp, 0x8, &[0x03, 0xe8]).await;
    Ok(())
}

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Nothing follows the 101 before the first subscribe's answer, so no byte is left behind in
    // tungstenite's buffer.
    Ok(ws.into_inner())
}

async fn send(tcp: &mut TcpStream, req: &PubSubReq) -> Result<(), String> {
    write_frame(tcp, 0x2, &req.encode_to_vec()).await
}

/// Writes one client frame: masked, as clients must, with a zero key (so the payload is as is).
async fn write_frame(tcp: &mut TcpStream, opcode: u8, payload: &[u8]) -> Result<(), String> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    tcp.write_all(&frame)
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Server frames read off a connection; a message's payload is borrowed from the buffer.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out (dropped before the next read).
    used: usize,
    /// A fragmented message being put together.
    message: Vec<u8>,
}

impl Frames {
    /// The next binary message's payload (`None`: a control or text frame, handled here).
    async fn next(&mut self, tcp: &mut TcpStream) -> Result<Option<&[u8]>, String> {
        self.buf.drain(..self.used);
        self.used = 0;
        loop {
            if let Some((fin, opcode, start, end)) = parse_header(&self.buf) {
                if end <= self.buf.len() {
                    self.used = end;
                    return match opcode {
                        0x8 => Err("connection ended: close frame".into()),
                        0x9 => {
                            let payload = self.buf[start..end].to_vec();
                            write_frame(tcp, 0xa, &payload).await?;
                            Ok(None)
                        }
                        0x2 | 0x0 if !fin => {
                            self.message.extend_from_slice(&self.buf[start..end]);
                            Ok(None)
                        }
                        0x0 => {
                            self.message.extend_from_slice(&self.buf[start..end]);
                            let whole = std::mem::take(&mut self.message);
                            self.buf.splice(0..end, whole.iter().copied());
                            self.used = whole.len();
                            Ok(Some(&self.buf[..whole.len()]))
                        }
                        0x2 => Ok(Some(&self.buf[start..end])),
                        _ => Ok(None),
                    };
                }
            }
            let before = self.buf.len();
            self.buf.reserve(16 * 1024);
            let n = tcp
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("connection ended: {e}"))?;
            if n == 0 || self.buf.len() == before {
                return Err("connection ended: closed".into());
            }
        }
    }
}

/// FIN, opcode, and where the payload starts and ends, once the header is complete.
fn parse_header(b: &[u8]) -> Option<(bool, u8, usize, usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if b1 & 0x80 != 0 {
        at += 4; // Servers do not mask; skip a key all the same.
    }
    Some((b0 & 0x80 != 0, b0 & 0x0f, at, at + len))
}

/// Protobuf's varint at `b[*at..]`.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Calls `f(field, wire type, value or length-delimited bytes)` for each field of a message.
fn fields<'a>(b: &'a [u8], mut f: impl FnMut(u64, &'a [u8], u64)) -> Option<()> {
    let mut at = 0;
    while at < b.len() {
        let tag = varint(b, &mut at)?;
        match tag & 7 {
            0 => {
                let v = varint(b, &mut at)?;
                f(tag >> 3, &[], v);
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = usize::try_from(varint(b, &mut at)?).ok()?;
                let bytes = b.get(at..at.checked_add(len)?)?;
                at += len;
                f(tag >> 3, bytes, 0);
            }
            _ => return None,
        }
    }
    Some(())
}

/// A push's sequence and its `KafkaRecordsPush` bytes, if `payload` is a push.
fn scan_push(payload: &[u8]) -> Option<(i64, &[u8])> {
    let (mut sequence, mut push) = (0i64, None);
    fields(payload, |field, bytes, value| match field {
        1 => sequence = value as i64,
        38 => push = Some(bytes),
        _ => {}
    })?;
    Some((sequence, push?))
}

/// Each record of a push: its offset, timestamp and key, nothing decoded that is not needed.
fn for_each_record<'a>(push: &'a [u8], mut f: impl FnMut(Record<'a>)) -> Result<(), String> {
    let mut bad = false;
    fields(push, |field, batch, _| {
        if field != 1 {
            return;
        }
        let scanned = fields(batch, |field, message, _| {
            if field != 2 {
                return;
            }
            let mut record = Record {
                offset: 0,
                timestamp: 0,
                key: &[],
            };
            let scanned = fields(message, |field, bytes, value| match field {
                1 => record.offset = value as i64,
                2 => record.timestamp = value as i64,
                3 => record.key = bytes,
                _ => {}
            });
            if scanned.is_some() {
                f(record);
            } else {
                bad = true;
            }
        });
        bad |= scanned.is_none();
    })
    .ok_or("a push that is not protobuf")?;
    if bad {
        return Err("a push that is not protobuf".into());
    }
    Ok(())
}

/// The `n`th loopback source address of 127.0.0.0/8 past 127.0.0.1, a new one every `per`
/// connections (each address has its own ~28,000 ephemeral ports).
pub fn loopback_source(n: usize, per: usize) -> IpAddr {
    let i = (n / per.max(1)) as u32 + 2;
    IpAddr::from([127, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamgate_protocol::{KafkaMessage, KafkaPartitionRecords, KafkaRecordsPush};

    #[test]
    fn a_push_is_scanned_for_each_records_offset_timestamp_and_key() {
        let message = |offset: i64, key: &'static str| KafkaMessage {
            offset,
            timestamp: 1_700_000_000_000 + offset,
            key: key.as_bytes().to_vec().into(),
            value: vec![b'v'; 300].into(),
            ..Default::default()
        };
        let push = PubSubResp {
            sequence: 7,
            resp: Some(Resp::KafkaRecordsPush(KafkaRecordsPush {
                batches: vec![
                    KafkaPartitionRecords {
                        partition: 3,
                        messages: vec![message(5, "a"), message(9, "bb")],
                        high_watermark: 10,
                        caught_up: true,
                    },
                    KafkaPartitionRecords {
                        partition: 4,
                        messages: vec![message(200, "")],
                        ..Default::default()
                    },
                ],
                cursor: "c".repeat(40),
            })),
        }
        .encode_to_vec();
        let (sequence, body) = scan_push(&push).expect("a push");
        assert_eq!(sequence, 7);
        let mut seen = Vec::new();
        for_each_record(body, |r| seen.push((r.offset, r.timestamp, r.key.to_vec())))
            .expect("scanned");
        assert_eq!(
            seen,
            [
                (5, 1_700_000_000_005, b"a".to_vec()),
                (9, 1_700_000_000_009, b"bb".to_vec()),
                (200, 1_700_000_000_200, Vec::new()),
            ]
        );
        let answer = PubSubResp {
            sequence: 1,
            resp: Some(Resp::KafkaSubscribeResp(KafkaSubscribeResp::default())),
        }
        .encode_to_vec();
        assert!(scan_push(&answer).is_none(), "an answer is not a push");
        assert!(for_each_record(&[0x0a, 0x05, 0x12], |_| {}).is_err());
    }

    #[test]
    fn frame_headers_of_every_length() {
        assert_eq!(parse_header(&[0x82, 5]), Some((true, 2, 2, 7)));
        assert_eq!(parse_header(&[0x02, 126, 1, 0]), Some((false, 2, 4, 260)));
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(parse_header(&long), Some((true, 2, 10, 70_010)));
        assert_eq!(parse_header(&[0x82, 126, 1]), None, "incomplete");
    }
}
