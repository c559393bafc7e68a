//! The frame decoder and the session command loop under random and mutated frames, through the
//! real gateway against a real broker: every binary frame must get exactly one answer (the
//! contract: a decodable request under its sequence, anything else `wrong command` under 0), except
//! a credit, which is answered only when it fails; pushes come only under the sequence of a
//! subscribe that was sent. The gateway must not crash, and a fresh session must work afterwards.
//!
//! `STREAMGATE_FUZZ_FRAMES` sets the count (CI: 200,000; `make fuzz`: 1,000,000); the seed is
//! printed so that a failure can be replayed with `STREAMGATE_FUZZ_SEED`.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, CmdEmpty, CmdKafkaCredit, CmdKafkaFetch,
    CmdKafkaListOffset, CmdKafkaSubscribe, CmdKafkaUnsubscribe, CmdPing, Message as _,
    PartitionOffset, PubSubClient, PubSubReq, PubSubResp, RecordFilter,
};
use streamgate_testkit::fuzz::{self, Rng};
use streamgate_testkit::{fixtures, Broker};
use tokio_tungstenite::tungstenite::Message;

/// Connections the frames are spread over, each with this many frames awaiting answers.
const CONNECTIONS: usize = 4;
const WINDOW: usize = 64;

const TOPICS: &[&str] = &["fuzz-t", "fuzz-none", "secret", "", "fuzz-t\0", "ü"];
const NUMBERS: &[i64] = &[
    0,
    1,
    2,
    -1,
    -2,
    -3,
    3,
    29,
    30,
    31,
    i64::MAX,
    i64::MIN,
    1 << 40,
];

/// A valid request with hostile field values.
fn request(rng: &mut Rng) -> PubSubReq {
    let sequence = rng.pick(NUMBERS).wrapping_add(rng.below(1000) as i64);
    let topic = rng.pick(TOPICS).to_string();
    let partition = rng.pick(NUMBERS) as i32;
    let cmd = match rng.below(8) {
        5 => Req::CmdKafkaSubscribe(CmdKafkaSubscribe {
            topic,
            partitions: (0..rng.below(3))
                .map(|_| rng.pick(NUMBERS) as i32)
                .collect(),
            from: rng.pick(NUMBERS) as i32,
            timestamp_ms: rng.pick(NUMBERS),
            offsets: (0..rng.below(2))
                .map(|_| PartitionOffset {
                    partition: rng.pick(NUMBERS) as i32,
                    offset: rng.pick(NUMBERS),
                })
                .collect(),
            cursor: if rng.below(4) == 0 {
                (0..rng.below(40))
                    .map(|_| (b'A' + rng.below(58) as u8) as char)
                    .collect()
            } else {
                String::new()
            },
            credit_records: rng.pick(NUMBERS) as u32,
            credit_bytes: rng.pick(NUMBERS) as u64,
            group: ["", "team", "../x", "a.b", &"g".repeat(101)][rng.below(5)].to_string(),
            commit: rng.pick(NUMBERS) as i32,
            filter: (rng.below(2) == 0).then(|| RecordFilter {
                keys: vec![vec![rng.next_u64() as u8; rng.below(4)].into()],
                key_prefix: vec![rng.next_u64() as u8; rng.below(3)].into(),
                headers: vec![],
            }),
        }),
        6 => Req::CmdKafkaCredit(CmdKafkaCredit {
            subscription: rng.pick(NUMBERS).wrapping_add(rng.below(1000) as i64),
            records: rng.pick(NUMBERS) as u32,
            bytes: rng.pick(NUMBERS) as u64,
        }),
        7 => Req::CmdKafkaUnsubscribe(CmdKafkaUnsubscribe {
            subscription: rng.pick(NUMBERS).wrapping_add(rng.below(1000) as i64),
        }),
        0 => Req::CmdPing(CmdPing {
            state: vec![rng.next_u64() as u8; rng.below(64)].into(),
        }),
        1 => Req::CmdEmpty(CmdEmpty {}),
        2 => Req::CmdKafkaListOffset(CmdKafkaListOffset {
            topic,
            partition,
            timestamp: rng.pick(NUMBERS),
        }),
        _ => Req::CmdKafkaFetch(CmdKafkaFetch {
            topic,
            partition,
            offset: rng.pick(NUMBERS),
            max_bytes: rng.pick(NUMBERS) as i32,
            max_wait_ms: (rng.pick(NUMBERS) as i32).min(50),
        }),
    };
    PubSubReq::new(sequence, cmd)
}

/// One frame: random bytes, a mutated request, or a hostile valid one.
fn frame(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => (0..rng.below(128)).map(|_| rng.next_u64() as u8).collect(),
        1 => {
            let mut bytes = request(rng).encode_to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(4) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, rng.next_u64() as u8),
                    _ => bytes.extend_from_slice(&[0x0a, rng.next_u64() as u8, 0xff]),
                }
            }
            bytes
        }
        _ => request(rng).encode_to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_random_or_mutated_frame_is_answered_and_nothing_crashes() {
    let count = fuzz::count("STREAMGATE_FUZZ_FRAMES", 200_000);
    let seed = fuzz::seed();
    println!("frame fuzz: {count} frames, STREAMGATE_FUZZ_SEED={seed}");

    let broker = Broker::start().await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "fuzz-t", 1).await;
    let records = (0..30).map(|i| fixtures::value(&format!("f{i}"))).collect();
    fixtures::produce_each(&client, "fuzz-t", 0, records).await;
    let plugin = "topics = [\"fuzz*\"]\nmax_commands_per_second = 0\nmax_in_flight = 16\nmax_frame_bytes = 65536";
    // A second route with the default command rate, for the pings after the fuzzing.
    let limited = kafka_route(
        "limited",
        "/limited",
        "kafka",
        "topics = [\"fuzz*\"]\nmax_frame_bytes = 65536",
    );
    let gw = gateway_for(&broker, plugin, &limited).await;

    let started = Instant::now();
    let per_connection = count / CONNECTIONS as u64;
    let mut runs = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS as u64 {
        let url = gw.ws_url("/kafka");
        let mut rng = Rng::new(seed.wrapping_add(c.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        runs.spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let (mut tx, mut rx) = ws.split();
            let (mut sent, mut answered) = (0u64, 0u64);
            // The sequences owed: each frame's own when it decodes, else 0. Every answer must
            // pay one off: a stray or duplicate answer, or a missing one, fails the test. A credit
            // may be answered (when it fails) or not; pushes may come under any subscribe's
            // sequence, any number of times.
            let mut owed: std::collections::HashMap<i64, u64> = Default::default();
            let mut maybe: std::collections::HashMap<i64, u64> = Default::default();
            let mut subscribed: std::collections::HashSet<i64> = Default::default();
            let mut outstanding = 0u64;
            let mut maybe_sent = 0u64;
            while sent < per_connection || outstanding > 0 {
                while sent < per_connection && outstanding < WINDOW as u64 {
                    let bytes = frame(&mut rng);
                    match PubSubReq::decode(&bytes[..]) {
                        Ok(PubSubReq {
                            sequence,
                            req: Some(Req::CmdKafkaCredit(_)),
                        }) => {
                            *maybe.entry(sequence).or_default() += 1;
                            maybe_sent += 1;
                        }
                        Ok(PubSubReq { sequence, req }) => {
                            if matches!(req, Some(Req::CmdKafkaSubscribe(_))) {
                                subscribed.insert(sequence);
                            }
                            *owed.entry(sequence).or_default() += 1;
                            outstanding += 1;
                        }
                        Err(_) => {
                            *owed.entry(0).or_default() += 1;
                            outstanding += 1;
                        }
                    }
                    tx.feed(Message::Binary(bytes.into()))
                        .await
                        .expect("send a frame");
                    sent += 1;
                }
                tx.flush().await.expect("flush");
                if outstanding == 0 {
                    continue;
                }
                let next = tokio::time::timeout(Duration::from_secs(20), rx.next())
                    .await
                    .unwrap_or_else(|_| panic!("no answer within 20 s after {answered} answers"));
                match next {
                    Some(Ok(Message::Binary(data))) => {
                        let answer = PubSubResp::decode(data).expect("every answer decodes");
                        if matches!(answer.resp, Some(Resp::KafkaRecordsPush(_))) {
                            assert!(
                                subscribed.contains(&answer.sequence),
                                "a push under sequence {} that no subscribe used",
                                answer.sequence
                            );
                            continue;
                        }
                        match owed.get_mut(&answer.sequence) {
                            Some(n) if *n > 0 => {
                                *n -= 1;
                                outstanding -= 1;
                                answered += 1;
                            }
                            _ => match maybe.get_mut(&answer.sequence) {
                                Some(n) if *n > 0 => *n -= 1,
                                // A subscription that ends with an error after its answer.
                                _ if subscribed.contains(&answer.sequence)
                                    && matches!(answer.resp, Some(Resp::ErrorResp(_))) => {}
                                _ => panic!(
                                    "an answer under sequence {} that no frame was owed: {answer:?}",
                                    answer.sequence
                                ),
                            },
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => {
                        panic!("connection ended after {answered} of {sent} answers: {other:?}")
                    }
                }
            }
            assert!(owed.values().all(|n| *n == 0), "every frame answered once");
            // Frames accounted for: the answered ones and the credits (answered or not).
            answered + maybe_sent
        });
    }
    let mut total = 0;
    while let Some(done) = runs.join_next().await {
        total += done.expect("a fuzz connection");
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "frame fuzz: {total} frames answered (or credits taken) in {took:.1} s ({:.0}/s)",
        total as f64 / took
    );
    assert_eq!(total, per_connection * CONNECTIONS as u64);

    // Pings after a burst: sessions on the rate-limited route each send 1,500 random and
    // mutated frames (some become subscribes) as fast as they can, far past the route's 1,000
    // frames a second, then a ping. Every session answers it with its pong within a second: a
    // pong waits behind nothing a client can start, the command rate included.
    let mut pings = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS as u64 {
        let url = gw.ws_url("/limited");
        let mut rng = Rng::new(seed.wrapping_add(c).wrapping_mul(31));
        pings.spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let (mut tx, mut rx) = ws.split();
            // Read everything the gateway sends while the burst goes out.
            let reader = tokio::spawn(async move {
                let mut pong_at = None;
                while let Some(Ok(message)) = rx.next().await {
                    if let Message::Binary(data) = message {
                        let answer = PubSubResp::decode(data).expect("every answer decodes");
                        if answer.sequence == i64::MIN + 7
                            && matches!(answer.resp, Some(Resp::PongResp(_)))
                        {
                            pong_at = Some(Instant::now());
                            break;
                        }
                    }
                }
                pong_at
            });
            for _ in 0..1_500 {
                let bytes = frame(&mut rng);
                tx.feed(Message::Binary(bytes.into()))
                    .await
                    .expect("send a frame");
            }
            let ping = PubSubReq::new(
                i64::MIN + 7,
                Req::CmdPing(CmdPing {
                    state: vec![1].into(),
                }),
            );
            tx.send(Message::Binary(ping.encode_to_vec().into()))
                .await
                .expect("send the ping");
            let sent = Instant::now();
            let pong_at = tokio::time::timeout(Duration::from_secs(1), reader)
                .await
                .unwrap_or_else(|_| panic!("session {c}: no pong within a second"))
                .expect("the reader")
                .unwrap_or_else(|| panic!("session {c}: the connection ended before the pong"));
            pong_at.duration_since(sent)
        });
    }
    while let Some(took) = pings.join_next().await {
        println!(
            "pong after a burst in {:?}",
            took.expect("a pinging session")
        );
    }

    // The gateway is alive and serves a fresh session as before.
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert_eq!(c.fetch("fuzz-t", 0, 29).await.unwrap().messages.len(), 1);
    assert!(
        gw.rss_kib() < 256 * 1024,
        "memory stays bounded: {} KiB",
        gw.rss_kib()
    );
}
