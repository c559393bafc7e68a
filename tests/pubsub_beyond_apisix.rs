//! Pub/sub behaviour beyond APISIX's test suite (PUBSUB.md §3): compressed batches, headers,
//! frame limits, credential isolation, the allow-list, concurrency, broker restarts, graceful
//! shutdown, many sessions and memory. Real gateway, real broker, real WebSocket client.

mod common;

use common::*;
use futures_util::StreamExt;
use std::time::Duration;
use streamgate_protocol::{
    pub_sub_req::Req, pub_sub_resp::Resp, ClientError, CmdKafkaFetch, CmdPing, ErrorCode,
    PubSubClient, PubSubReq,
};
use streamgate_testkit::fixtures::{self, Codec};
use streamgate_testkit::{unique_topic, Broker, BrokerOptions, Engine, GatewayProcess, SaslUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => {
            (ErrorCode::from_i32(code).expect("known code"), message)
        }
        other => panic!("expected error_resp, got {other:?}"),
    }
}

fn mixed_records() -> Vec<rskafka::record::Record> {
    vec![
        fixtures::record(
            Some(b"k0"),
            Some(b"v0"),
            &[("trace", b"t0"), ("z", b"")],
            Some(1_700_000_000_000),
        ),
        fixtures::record(None, Some(b"no key"), &[], Some(1_700_000_000_001)),
        fixtures::record(Some(b"tombstone"), None, &[], Some(1_700_000_000_002)),
        fixtures::record(
            Some(b"k3"),
            Some(&[0u8, 255, 1]),
            &[("bin", &[0, 1, 2])],
            Some(1_700_000_000_003),
        ),
    ]
}

/// Checks a fetch of `mixed_records()` from `from` (0 or 1).
fn check_mixed(got: &streamgate_protocol::KafkaFetchResp, from: i64, what: &str) {
    let offsets: Vec<i64> = got.messages.iter().map(|m| m.offset).collect();
    assert_eq!(
        offsets,
        (from..4).collect::<Vec<_>>(),
        "{what}: never a record before the requested offset"
    );
    let m = |o: i64| &got.messages[(o - from) as usize];
    if from == 0 {
        assert_eq!(&m(0).key[..], b"k0");
        let headers: Vec<(&str, &[u8])> = m(0)
            .headers
            .iter()
            .map(|h| (h.key.as_str(), &h.value[..]))
            .collect();
        assert_eq!(
            headers,
            vec![("trace", &b"t0"[..]), ("z", &b""[..])],
            "{what}"
        );
    }
    assert!(
        m(1).key.is_empty() && &m(1).value[..] == b"no key",
        "{what}: null key"
    );
    assert!(
        m(2).value.is_empty() && &m(2).key[..] == b"tombstone",
        "{what}: null value"
    );
    assert_eq!(&m(3).value[..], &[0u8, 255, 1], "{what}");
    assert_eq!(m(3).headers.len(), 1);
    assert_eq!(
        (m(3).headers[0].key.as_str(), &m(3).headers[0].value[..]),
        ("bin", &[0u8, 1, 2][..])
    );
    assert_eq!(m(3).timestamp, 1_700_000_000_003);
}

#[tokio::test]
async fn compressed_batches_keys_nulls_and_headers_and_fetch_from_mid_batch() {
    // sqlite: the memory engine serves nothing for an offset inside a multi-record batch.
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let kafka = broker.client().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    for codec in [Codec::NoCompression, Codec::Gzip, Codec::Lz4, Codec::Zstd] {
        let topic = unique_topic("codec");
        fixtures::create_topic(&kafka, &topic, 1).await;
        fixtures::produce_batch(&kafka, &topic, 0, mixed_records(), codec).await;
        check_mixed(
            &c.fetch(&topic, 0, 1).await.unwrap(),
            1,
            &format!("{codec:?} mid-batch"),
        );
        check_mixed(
            &c.fetch(&topic, 0, 0).await.unwrap(),
            0,
            &format!("{codec:?}"),
        );
    }
}

#[tokio::test]
async fn snappy_batches() {
    // sqlite cannot serve snappy batches; the memory engine can (from the batch start).
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let topic = unique_topic("snappy");
    fixtures::create_topic(&kafka, &topic, 1).await;
    fixtures::produce_batch(&kafka, &topic, 0, mixed_records(), Codec::Snappy).await;
    check_mixed(&c.fetch(&topic, 0, 0).await.unwrap(), 0, "Snappy");
}

#[tokio::test]
async fn list_offset_by_time_finds_the_first_record_at_or_after_it() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("time");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let records = fixtures::records_at(&[1_000_000, 2_000_000, 3_000_000]);
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert_eq!(c.list_offset(&topic, 0, 1_500_000).await.unwrap(), 1);
    assert_eq!(c.list_offset(&topic, 0, 2_000_000).await.unwrap(), 1);
    assert_eq!(c.list_offset(&topic, 0, 2_500_000).await.unwrap(), 2);
    assert_eq!(c.list_offset(&topic, 0, 3_000_001).await.unwrap(), -1);
    let (code, message) = code_of(c.list_offset(&topic, 0, -7).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("invalid timestamp -7"), "{message}");
}

#[tokio::test]
async fn a_5_mib_record_needs_a_raised_frame_limit() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("big");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let big = vec![b'b'; 5 << 20];
    fixtures::produce_each(
        &kafka,
        &topic,
        0,
        vec![fixtures::record(None, Some(&big), &[], None)],
    )
    .await;

    let raised = format!(
        "{}{}",
        kafka_upstream("k2", &broker.bootstrap, ""),
        kafka_route(
            "big",
            "/kafka-big",
            "k2",
            "max_frame_bytes = 8388608\nfetch_max_bytes = 8388608"
        )
    );
    let gw = gateway_for(&broker, "", &raised).await;

    let mut default = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (code, message) = code_of(default.fetch(&topic, 0, 0).await);
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(
        message.contains("record at offset 0 needs 524")
            && message.contains("max_frame_bytes of 1048576"),
        "{message}"
    );

    let mut big_route = PubSubClient::connect(&gw.ws_url("/kafka-big"))
        .await
        .unwrap();
    let got = big_route.fetch(&topic, 0, 0).await.unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(got.messages[0].value.len(), 5 << 20);
}

/// A decompression bomb: one zstd batch of a few KiB that expands to 256 MiB. The gateway refuses
/// it at the upstream's `max_decompressed_bytes` (32 MiB by default) with TOO_LARGE naming the
/// sizes, its memory never grows by the expansion, and the record after it is still served.
/// (Through rskafka's decoder the whole 256 MiB was built before any limit applied.)
#[tokio::test]
async fn a_decompression_bomb_is_refused_within_the_budget() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("bomb");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let zeros = vec![0u8; 256 << 20];
    fixtures::produce_batch(
        &kafka,
        &topic,
        0,
        vec![fixtures::record(None, Some(&zeros), &[], None)],
        Codec::Zstd,
    )
    .await;
    drop(zeros);
    fixtures::produce_batch(
        &kafka,
        &topic,
        0,
        vec![fixtures::record(None, Some(b"after"), &[], None)],
        Codec::Zstd,
    )
    .await;
    let admin = listen_addr();
    let gw = gateway_for(&broker, "", &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    c.ping(&b"warm"[..]).await.unwrap();
    let before = gw.peak_rss_kib();
    for _ in 0..3 {
        let (code, message) = code_of(c.fetch(&topic, 0, 0).await);
        assert_eq!(code, ErrorCode::TooLarge, "{message}");
        assert!(
            message.contains("record batch at offset 0")
                && message.contains("zstd")
                && message.contains("more than the 33554432 bytes")
                && message.contains("max_decompressed_bytes"),
            "{message}"
        );
    }
    let grown = gw.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 96 << 10,
        "peak memory grew by {grown} KiB decoding a bomb"
    );
    let after = c.fetch(&topic, 0, 1).await.unwrap();
    assert_eq!(&after.messages[0].value[..], b"after");
    assert_eq!(
        metric(admin, "streamgate_kafka_batches_refused_total").await,
        3.0
    );
}

#[tokio::test]
async fn a_fetch_returns_fewer_records_rather_than_exceed_the_frame_limit() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let kafka = broker.client().await;
    let topic = unique_topic("frame");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let value = vec![b'v'; 1000];
    let records = (0..20)
        .map(|_| fixtures::record(None, Some(&value), &[], None))
        .collect();
    fixtures::produce_batch(&kafka, &topic, 0, records, Codec::NoCompression).await;
    let gw = gateway_for(&broker, "max_frame_bytes = 4096", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let mut offset = 0;
    let mut calls = 0;
    while offset < 20 {
        let got = c.fetch(&topic, 0, offset).await.unwrap();
        assert!(
            !got.messages.is_empty() && got.messages.len() <= 4,
            "{} records",
            got.messages.len()
        );
        assert_eq!(got.messages[0].offset, offset);
        offset = got.messages.last().unwrap().offset + 1;
        calls += 1;
    }
    assert!(
        calls >= 5,
        "20 KB over 4 KiB frames takes at least 5 fetches, took {calls}"
    );
}

#[tokio::test]
async fn scram_credentials_are_never_shared_between_routes() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![SaslUser {
            name: "alice".into(),
            password: "alice-secret".into(),
            mechanism: "scram256",
        }],
        tls: None,
        tap: false,
    })
    .await;
    fixtures::apisix_fixture(&broker.client().await).await;
    let addr = listen_addr();
    let good = "sasl = { mechanism = \"SCRAM-SHA-256\", username = \"alice\", password = \"alice-secret\" }";
    let bad =
        "sasl = { mechanism = \"SCRAM-SHA-256\", username = \"alice\", password = \"wrong\" }";
    let config = format!(
        "{}{}{}{}",
        server_toml(addr),
        kafka_upstream("sasl", &broker.bootstrap, ""),
        kafka_route("good", "/good", "sasl", good),
        kafka_route("bad", "/bad", "sasl", bad),
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let mut good = PubSubClient::connect(&gw.ws_url("/good")).await.unwrap();
    let mut bad = PubSubClient::connect(&gw.ws_url("/bad")).await.unwrap();
    // The good route first, so a client with working credentials exists in the pool.
    assert_eq!(good.list_offset("test-consumer", 0, -1).await.unwrap(), 30);
    let (code, message) = code_of(bad.list_offset("test-consumer", 0, -1).await);
    assert_eq!(code, ErrorCode::AuthFailed, "{message}");
    assert!(!message.contains("not found topic"), "{message}");
    assert_eq!(
        good.fetch("test-consumer", 0, 29)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}

#[tokio::test]
async fn the_allow_list_refuses_without_asking_kafka() {
    // The route's broker does not exist: a forbidden topic must be refused as forbidden,
    // without the connection attempt that an allowed topic fails on.
    let gw = gateway_for_dead_broker("/kafka", "topics = [\"orders\", \"audit-*\"]").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let started = std::time::Instant::now();
    let (code, message) = code_of(c.fetch("payments", 0, 0).await);
    assert_eq!(code, ErrorCode::Forbidden);
    assert_eq!(message, "failed to fetch message, topic: payments, partition: 0, err: forbidden: the topic is not in this route's allow-list");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered without a Kafka round trip"
    );
    let (code, _) = code_of(c.list_offset("audit-2026", 0, -1).await);
    assert_eq!(
        code,
        ErrorCode::Unavailable,
        "an allowed prefix goes to Kafka"
    );
}

#[tokio::test]
async fn a_ping_is_answered_while_a_fetch_waits_and_the_in_flight_limit_holds() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("wait");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // Long-poll for 3 s at the end of the log; at most one Kafka command in flight.
    let extra = format!(
        "{}{}",
        kafka_upstream("k2", &broker.bootstrap, ""),
        kafka_route(
            "slow",
            "/slow",
            "k2",
            "fetch_max_wait_ms = 3000\nmax_in_flight = 1"
        )
    );
    let gw = gateway_for(&broker, "", &extra).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/slow")).await.unwrap();
    let fetch = |seq| {
        PubSubReq::new(
            seq,
            Req::CmdKafkaFetch(CmdKafkaFetch {
                topic: topic.clone(),
                partition: 0,
                offset: 0,
                ..Default::default()
            }),
        )
    };
    c.send(&fetch(1)).await.unwrap();
    c.send(&fetch(2)).await.unwrap();
    c.send(&PubSubReq::new(
        3,
        Req::CmdPing(CmdPing { state: "p".into() }),
    ))
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let first = c.recv().await.unwrap();
    assert_eq!(
        first.sequence, 2,
        "the second fetch is refused at once: {first:?}"
    );
    assert!(
        matches!(first.resp, Some(Resp::ErrorResp(ref e)) if e.code == ErrorCode::LimitExceeded as i32)
    );
    let second = c.recv().await.unwrap();
    assert_eq!(
        second.sequence, 3,
        "the ping does not wait behind the fetch"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let third = c.recv().await.unwrap();
    assert_eq!(third.sequence, 1);
    assert!(matches!(third.resp, Some(Resp::KafkaFetchResp(ref f)) if f.messages.is_empty()));
}

#[tokio::test]
async fn a_broker_restart_is_a_clear_error_then_works_again() {
    let mut broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    fixtures::apisix_fixture(&broker.client().await).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert_eq!(c.list_offset("test-consumer", 0, -1).await.unwrap(), 30);

    broker.stop();
    let (code, message) = code_of(c.fetch("test-consumer", 0, 0).await);
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert!(
        message.starts_with("failed to fetch message, topic: test-consumer, partition: 0, err: "),
        "{message}"
    );
    assert_eq!(
        &c.ping("alive").await.unwrap()[..],
        b"alive",
        "the session survives"
    );

    broker.restart().await;
    let mut answered = None;
    for _ in 0..20 {
        match c.list_offset("test-consumer", 0, -1).await {
            Ok(o) => {
                answered = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(
        answered,
        Some(30),
        "the same session works once the broker is back"
    );
}

#[tokio::test]
async fn a_frame_in_the_same_write_as_the_handshake_is_answered() {
    let broker = Broker::start().await;
    let gw = gateway_for(&broker, "", "").await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let ping = PubSubReq::new(
        42,
        Req::CmdPing(CmdPing {
            state: "early".into(),
        }),
    );
    let payload = streamgate_protocol::Message::encode_to_vec(&ping);
    let mut bytes = format!(
        "GET /kafka HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    // One masked binary frame (client frames must be masked), appended to the handshake.
    let mask = [1u8, 2, 3, 4];
    bytes.push(0x82);
    bytes.push(0x80 | payload.len() as u8);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&bytes).await.unwrap();

    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(
                head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "RFC 6455 sample accept key: {head}"
            );
            let frame = &got[end + 4..];
            if frame.len() >= 2 && frame.len() >= 2 + frame[1] as usize {
                break frame[2..2 + frame[1] as usize].to_vec();
            }
        }
    };
    let resp: streamgate_protocol::PubSubResp =
        streamgate_protocol::Message::decode(&answer[..]).unwrap();
    assert_eq!(resp.sequence, 42);
    assert!(matches!(resp.resp, Some(Resp::PongResp(ref p)) if &p.state[..] == b"early"));
}

#[tokio::test]
async fn sigterm_gives_open_sessions_close_1001() {
    let broker = Broker::start().await;
    let mut gw = gateway_for(&broker, "", "").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        c.ping("hi").await.unwrap();
        clients.push(c);
    }
    gw.terminate();
    for mut c in clients {
        let frame = tokio::time::timeout(Duration::from_secs(5), c.websocket().next())
            .await
            .expect("close in time");
        match frame {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                assert_eq!(f.reason, "shutting down");
            }
            other => panic!("expected Close 1001, got {other:?}"),
        }
        let _ = c.websocket().close(None).await;
    }
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "the gateway exits cleanly"
    );
}

/// Opens `n` sessions, has each answer one ping, and returns them open.
async fn open_sessions(url: &str, n: usize) -> Vec<PubSubClient> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = url.to_string();
        tasks.spawn(async move {
            let mut c = PubSubClient::connect(&url).await.expect("connect");
            let state = format!("s{i}");
            assert_eq!(c.ping(state.clone()).await.expect("ping"), state.as_bytes());
            c
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(c) = tasks.join_next().await {
        out.push(c.expect("session task"));
    }
    out
}

#[tokio::test]
async fn a_thousand_sessions_and_memory_stays_at_baseline_over_three_rounds() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    fixtures::apisix_fixture(&kafka).await;
    let admin = listen_addr();
    // All sessions come from 127.0.0.1, and a round may open before the last one's are gone.
    let extra =
        format!("[admin]\nlisten = \"{admin}\"\n[server.limits]\nmax_connections_per_ip = 10000\n");
    let gw = gateway_for(&broker, "", &extra).await;
    let url = gw.ws_url("/kafka");
    let at_rest = gw.rss_kib();
    let mut after_close = Vec::new();
    let mut open_cost = Vec::new();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let before = gw.rss_kib();
        let mut sessions = open_sessions(&url, 1000).await;
        // Every session also reads from Kafka once, through the shared client.
        for c in sessions.iter_mut().step_by(50) {
            assert_eq!(
                c.fetch("test-consumer", 0, 29)
                    .await
                    .unwrap()
                    .messages
                    .len(),
                1
            );
        }
        let open = gw.rss_kib();
        open_cost.push((open.saturating_sub(before)) as f64 / 1000.0);
        let mut closing = tokio::task::JoinSet::new();
        for c in sessions {
            closing.spawn(async move {
                let _ = c.close().await;
            });
        }
        while closing.join_next().await.is_some() {}
        // Give the gateway a moment to drop the sessions and return freed pages.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        after_close.push(gw.rss_kib());
        let ready = reqwest::get(format!("http://{}/readyz", admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        eprintln!(
            "round {round}: at rest {at_rest} KiB, before {before} KiB, 1000 open {open} KiB, after close {} KiB; {}",
            after_close[round],
            ready.replace('\n', " ")
        );
    }
    // After each round the gateway gives the sessions' memory back: RSS within 10 MiB of the
    // process at rest (a 1,000-session leak of 10 KiB each would exceed it), and no growth from
    // the first round to the last.
    for (round, rss) in after_close.iter().enumerate() {
        assert!(
            *rss <= at_rest + 10 * 1024,
            "round {round}: {rss} KiB after close, {at_rest} KiB at rest: {after_close:?}"
        );
    }
    assert!(
        after_close[after_close.len() - 1] <= after_close[0] + 4 * 1024,
        "memory grew across rounds: {after_close:?} KiB"
    );
    // Approach D: a detached idle session costs a few KiB (192 KiB per session would be a leak
    // of Pingora's request state).
    assert!(
        open_cost.iter().all(|kib| *kib < 40.0),
        "KiB per open session: {open_cost:?}"
    );
}

async fn admin_counter(admin: std::net::SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// A reader going through the log in order finds its next fetch already read (the gateway
/// fetches ahead while the client handles an answer), and nothing is read past the head.
#[tokio::test]
async fn a_reader_going_through_the_log_finds_its_next_fetch_read_ahead() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("ahead");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let value = "v".repeat(1000);
    let records = (0..4).map(|_| fixtures::value(&value)).collect();
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let admin = listen_addr();
    let gw = gateway_for(&broker, "", &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let before = admin_counter(admin, "kafka_broker_fetches").await;
    // 500 bytes: one 1,000-byte record (a batch of its own) per fetch.
    let fetch = |offset| CmdKafkaFetch {
        topic: topic.clone(),
        partition: 0,
        offset,
        max_bytes: 500,
        ..Default::default()
    };
    let mut fetches_after = Vec::new();
    for offset in 0..4 {
        let got = c.fetch_with(fetch(offset)).await.unwrap();
        let offsets: Vec<i64> = got.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [offset], "fetch at {offset}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        fetches_after.push(admin_counter(admin, "kafka_broker_fetches").await - before);
    }
    // Each fetch found its records read already and started the next read, except the last:
    // offset 4 is the head. Without reading ahead: [1, 2, 3, 4].
    assert_eq!(fetches_after, [2, 3, 4, 4]);

    // Two readers at different places of one partition, taking turns: neither pushes out what
    // was read ahead for the other, so each record is read from the broker once (once more
    // at most, if a result ages out on a slow machine). Kept in the one window, it took 11.
    let topic = unique_topic("ahead-two");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let records = (0..8).map(|_| fixtures::value(&value)).collect();
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let mut other = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let fetch = |offset| CmdKafkaFetch {
        topic: topic.clone(),
        partition: 0,
        offset,
        max_bytes: 500,
        ..Default::default()
    };
    let before = admin_counter(admin, "kafka_broker_fetches").await;
    for offset in 0..4 {
        for (client, at) in [(&mut c, offset), (&mut other, offset + 4)] {
            let got = client.fetch_with(fetch(at)).await.unwrap();
            assert_eq!(got.messages.first().map(|m| m.offset), Some(at));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetches = admin_counter(admin, "kafka_broker_fetches").await - before;
    assert!(fetches <= 9, "8 records took {fetches} broker fetches");
}

#[tokio::test]
async fn many_sessions_tailing_a_partition_share_broker_fetches_and_block_nobody() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("tail");
    fixtures::create_topic(&kafka, &topic, 1).await;
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("first")]).await;
    let admin = listen_addr();
    let extra = format!(
        "{}{}[admin]\nlisten = \"{admin}\"\n",
        kafka_upstream("k2", &broker.bootstrap, ""),
        kafka_route(
            "tail",
            "/tail",
            "k2",
            "fetch_max_wait_ms = 5000\nsocket_timeout_ms = 3000"
        )
    );
    let gw = gateway_for(&broker, "", &extra).await;

    // 300 sessions long-poll at the end of the log (offset 1) on one shared Kafka client.
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (url, topic) = (gw.ws_url("/tail"), topic.clone());
        waiting.spawn(async move {
            let mut c = PubSubClient::connect(&url).await.unwrap();
            let got = c.fetch(&topic, 0, 1).await.unwrap();
            (
                got.messages.first().map(|m| m.value.clone()),
                std::time::Instant::now(),
            )
        });
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = admin_counter(admin, "kafka_broker_fetches").await;

    // Other requests on the same client are not stuck behind the waiting fetches.
    let mut other = PubSubClient::connect(&gw.ws_url("/tail")).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(other.list_offset(&topic, 0, -1).await.unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "list offset waited {:?}",
        started.elapsed()
    );

    let produced_at = std::time::Instant::now();
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("second")]).await;
    let mut delivered = 0;
    while let Some(r) = waiting.join_next().await {
        let (value, at) = r.unwrap();
        assert_eq!(value.as_deref(), Some(&b"second"[..]));
        assert!(
            at.duration_since(produced_at) < Duration::from_secs(2),
            "delivered after {:?}",
            at.duration_since(produced_at)
        );
        delivered += 1;
    }
    assert_eq!(delivered, 300);
    let fetches = admin_counter(admin, "kafka_broker_fetches").await - before;
    assert!(
        fetches < 100,
        "300 tailing sessions caused {fetches} broker fetches"
    );
}

/// SCRAM-SHA-512 over TLS, through the gateway: both at once, and a wrong password refused.
#[tokio::test]
async fn scram_sha_512_over_tls_with_a_wrong_password_refused() {
    let ca = streamgate_testkit::TestCa::new();
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        users: vec![SaslUser {
            name: "bob".into(),
            password: "bob-secret-512".into(),
            mechanism: "scram512",
        }],
        tls: Some(ca.clone()),
        tap: false,
    })
    .await;
    fixtures::apisix_fixture(&broker.client().await).await;
    let addr = listen_addr();
    let tls = format!(
        "[upstreams.tls]\nca_file = \"{}\"\n",
        ca.ca_file().display()
    );
    let sasl = |password: &str| {
        format!("sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"bob\", password = \"{password}\" }}")
    };
    let config = format!(
        "{}{}{}{}",
        server_toml(addr),
        kafka_upstream("secure", &broker.bootstrap, &tls),
        kafka_route("good", "/good", "secure", &sasl("bob-secret-512")),
        kafka_route("bad", "/bad", "secure", &sasl("not-bobs")),
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let mut good = PubSubClient::connect(&gw.ws_url("/good")).await.unwrap();
    assert_eq!(good.list_offset("test-consumer", 0, -1).await.unwrap(), 30);
    assert_eq!(
        good.fetch("test-consumer", 0, 29)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    let mut bad = PubSubClient::connect(&gw.ws_url("/bad")).await.unwrap();
    let (code, message) = code_of(bad.list_offset("test-consumer", 0, -1).await);
    assert_eq!(code, ErrorCode::AuthFailed, "{message}");
}

/// A small `max_bytes` against batches larger than it, read twice in a row (the second time the
/// shared window holds the newest results): every record, in order, both times. The window once
/// cut answers at the asker's budget, so the next fetch started inside a broker batch, which
/// re-reads the whole batch from a real broker and, from tansu's memory engine, skipped records.
#[tokio::test]
async fn small_fetches_over_large_batches_read_every_record_twice_over() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("small-fetch");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // More batches than the window keeps (64 results), so the second pass meets the broker.
    for _ in 0..100 {
        let records = (0..100)
            .map(|_| fixtures::record(None, Some(&[b'x'; 100]), &[], None))
            .collect();
        fixtures::produce_batch(&kafka, &topic, 0, records, Codec::NoCompression).await;
    }
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    for pass in 1..=2 {
        let mut offset = 0;
        let mut read = 0;
        while offset < 10_000 {
            let batch = c
                .fetch_with(CmdKafkaFetch {
                    topic: topic.clone(),
                    partition: 0,
                    offset,
                    max_bytes: 4096,
                    max_wait_ms: 0,
                })
                .await
                .unwrap();
            assert!(
                !batch.messages.is_empty(),
                "pass {pass}: stalled at {offset}"
            );
            assert_eq!(
                batch.messages[0].offset, offset,
                "pass {pass}: a gap after offset {offset}"
            );
            read += batch.messages.len();
            offset = batch.messages.last().unwrap().offset + 1;
        }
        assert_eq!(read, 10_000, "pass {pass}");
    }
}
