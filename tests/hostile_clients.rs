//! Push subscriptions and event streams against clients that try to cost the gateway more than
//! they send, and the rules a review found bent: bounded filter and offset lists, refusals that
//! stay the subscribe's answer, cursors that make the other start fields irrelevant, reloads
//! that change a route's Kafka identity, and event streams that keep every detail of a record
//! (null keys, repeated headers), resume from their very start and end at the token's `exp`.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_req::Req, pub_sub_resp::Resp, ClientError,
    CmdKafkaSubscribe, CmdKafkaUnsubscribe, CmdPing, ErrorCode, KafkaHeader, Message as _,
    PartitionOffset, PubSubClient, PubSubReq, PubSubResp, RecordFilter,
};
use streamgate_testkit::{fixtures, produce_raw, unique_topic, Broker, GatewayProcess, RawRecord};
use tokio_tungstenite::tungstenite::Message;

fn subscribe(topic: &str, credit: u32) -> CmdKafkaSubscribe {
    CmdKafkaSubscribe {
        topic: topic.into(),
        from: StartFrom::Earliest as i32,
        credit_records: credit,
        ..Default::default()
    }
}

fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (i32, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn keys(n: usize, len: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let mut key = format!("{i:08}").into_bytes();
            key.resize(len, b'k');
            Bytes::from(key)
        })
        .collect()
}

fn headers(n: usize, value_len: usize) -> Vec<KafkaHeader> {
    (0..n)
        .map(|i| KafkaHeader {
            key: format!("h{i}"),
            value: Bytes::from(vec![b'v'; value_len]),
        })
        .collect()
}

#[tokio::test]
async fn lists_past_their_limits_are_refused_naming_the_limit() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("limits");
    fixtures::create_topic(&kafka, &topic, 2).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let filtered = |f: RecordFilter| CmdKafkaSubscribe {
        filter: Some(f),
        ..subscribe(&topic, 10)
    };
    let cases = [
        (
            filtered(RecordFilter {
                keys: keys(1_001, 1),
                ..Default::default()
            }),
            "the 1000",
        ),
        (
            filtered(RecordFilter {
                keys: keys(900, 80),
                ..Default::default()
            }),
            "the 65536",
        ),
        (
            filtered(RecordFilter {
                key_prefix: Bytes::from(vec![b'p'; 1025]),
                ..Default::default()
            }),
            "the 1024",
        ),
        (
            filtered(RecordFilter {
                headers: headers(33, 1),
                ..Default::default()
            }),
            "the 32",
        ),
        (
            filtered(RecordFilter {
                headers: headers(9, 1000),
                ..Default::default()
            }),
            "the 8192",
        ),
        (
            CmdKafkaSubscribe {
                offsets: vec![
                    PartitionOffset {
                        partition: 0,
                        offset: 0,
                    },
                    PartitionOffset {
                        partition: 0,
                        offset: 5,
                    },
                ],
                ..subscribe(&topic, 10)
            },
            "partition 0 more than once",
        ),
        (
            CmdKafkaSubscribe {
                partitions: vec![0; 1_025],
                ..subscribe(&topic, 10)
            },
            "the 1024",
        ),
    ];
    for (cmd, names) in cases {
        let (code, message) = refusal(c.subscribe(cmd).await);
        assert_eq!(code, ErrorCode::BadRequest as i32, "{message}");
        assert!(message.contains(names), "{names}: {message}");
    }
    // At the limits is fine.
    c.subscribe(filtered(RecordFilter {
        keys: keys(1_000, 65),
        key_prefix: Bytes::from(vec![b'0'; 1024]),
        headers: headers(32, 250),
    }))
    .await
    .expect("a subscribe at every limit");
    // Event streams have the same limits.
    let many: String = (0..1_001).map(|i| format!("&key=k{i}")).collect();
    let response = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}{many}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("the 1000"));
    assert_eq!(&c.ping("alive").await.unwrap()[..], b"alive");
}

/// Subscribe frames at every limit are held (that is what a subscription is); frames over
/// them, made of the tiniest entries (each tens of bytes once decoded), are refused and held
/// nowhere. The gateway's memory grows by no more than a small multiple of what was sent, and
/// another client is served throughout.
#[tokio::test]
async fn subscribe_frames_cost_a_small_multiple_of_their_bytes() {
    const CONNECTIONS: usize = 8;
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("frames");
    fixtures::create_topic(&kafka, &topic, 1).await;
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("r")]).await;
    let gw = gateway_for(&broker, "max_subscriptions = 16", "").await;
    let mut other = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    other.ping("warm").await.unwrap();
    let before = gw.rss_kib();

    let at_limits = PubSubReq::new(
        0,
        Req::CmdKafkaSubscribe(CmdKafkaSubscribe {
            filter: Some(RecordFilter {
                keys: keys(1_000, 65),
                key_prefix: Bytes::new(),
                headers: headers(32, 250),
            }),
            ..subscribe(&topic, 0)
        }),
    );
    // 400,000 empty header pairs in an 800 KiB frame: two bytes each on the wire, tens once
    // decoded.
    let tiny = PubSubReq::new(
        0,
        Req::CmdKafkaSubscribe(CmdKafkaSubscribe {
            filter: Some(RecordFilter {
                headers: vec![KafkaHeader::default(); 400_000],
                ..Default::default()
            }),
            ..subscribe(&topic, 0)
        }),
    );
    let frames: Vec<Bytes> = (0..16)
        .map(|i| {
            let mut request = if i < 12 {
                at_limits.clone()
            } else {
                tiny.clone()
            };
            request.sequence = i;
            Bytes::from(request.encode_to_vec())
        })
        .collect();
    let mut sent = 0usize;
    let mut sessions = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        for bytes in &frames {
            sent += bytes.len();
            c.websocket()
                .send(Message::Binary(bytes.clone()))
                .await
                .unwrap();
        }
        // Every subscribe is answered: 12 started, 4 refused.
        let (mut started, mut refused) = (0, 0);
        while started + refused < 16 {
            let frame = tokio::time::timeout(Duration::from_secs(10), c.recv())
                .await
                .expect("answers")
                .unwrap();
            match frame.resp {
                Some(Resp::KafkaSubscribeResp(_)) => started += 1,
                Some(Resp::ErrorResp(e)) => {
                    assert_eq!(e.code, ErrorCode::BadRequest as i32, "{}", e.message);
                    refused += 1;
                }
                _ => {}
            }
        }
        assert_eq!((started, refused), (12, 4));
        let t = Instant::now();
        other.ping("served").await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        sessions.push(c);
    }
    let grown = gw.rss_kib().saturating_sub(before);
    let sent_kib = (sent / 1024) as u64;
    println!("sent {sent_kib} KiB of subscribe frames; the gateway grew by {grown} KiB");
    assert!(
        grown <= 3 * sent_kib,
        "grew by {grown} KiB for {sent_kib} KiB of frames"
    );
    assert_eq!(&other.ping("alive").await.unwrap()[..], b"alive");
}

#[tokio::test]
async fn beside_a_cursor_the_other_start_fields_are_ignored() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("cursor-only");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let values: Vec<_> = (0..3).map(|i| fixtures::value(&format!("r{i}"))).collect();
    fixtures::produce_each(&kafka, &topic, 0, values).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (_, start) = c.subscribe(subscribe(&topic, 0)).await.unwrap();
    let (sub, resumed) = c
        .subscribe(CmdKafkaSubscribe {
            cursor: start.cursor.clone(),
            from: 99,
            timestamp_ms: -5,
            partitions: vec![7],
            offsets: vec![PartitionOffset {
                partition: 9,
                offset: -1,
            }],
            ..subscribe(&topic, 10)
        })
        .await
        .expect("the cursor decides where to start");
    assert_eq!(resumed.partitions[0].offset, 0);
    let frame = tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.sequence, sub);
}

/// A subscribe refused at once (FORBIDDEN) whose unsubscribe the session reads before it has
/// written the refusal (a burst of frames in front keeps it reading): the subscribe still gets
/// its FORBIDDEN, and the unsubscribe names a subscription that does not exist.
#[tokio::test]
async fn a_queued_refusal_stays_the_subscribes_answer() {
    let broker = Broker::start().await;
    let gw = gateway_for(&broker, "topics = [\"allowed\"]", "").await;
    for _ in 0..5 {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        let ws = c.websocket();
        let frame = |req: PubSubReq| Message::Binary(req.encode_to_vec().into());
        let forbidden = Req::CmdKafkaSubscribe(subscribe("forbidden", 1));
        ws.feed(frame(PubSubReq::new(1, forbidden))).await.unwrap();
        for i in 0..300 {
            let ping = Req::CmdPing(CmdPing {
                state: Bytes::from_static(b"p"),
            });
            ws.feed(frame(PubSubReq::new(1_000 + i, ping)))
                .await
                .unwrap();
        }
        let unsubscribe = Req::CmdKafkaUnsubscribe(CmdKafkaUnsubscribe { subscription: 1 });
        ws.feed(frame(PubSubReq::new(2, unsubscribe)))
            .await
            .unwrap();
        ws.flush().await.unwrap();
        let mut answers: Vec<PubSubResp> = Vec::new();
        while answers.len() < 302 {
            let next = tokio::time::timeout(Duration::from_secs(5), c.recv())
                .await
                .expect("every frame answered")
                .unwrap();
            answers.push(next);
        }
        let of = |sequence: i64| -> Vec<&PubSubResp> {
            answers.iter().filter(|a| a.sequence == sequence).collect()
        };
        let subscribe_answer = of(1);
        assert_eq!(subscribe_answer.len(), 1, "{subscribe_answer:?}");
        match &subscribe_answer[0].resp {
            Some(Resp::ErrorResp(e)) => {
                assert_eq!(e.code, ErrorCode::Forbidden as i32, "{}", e.message)
            }
            other => panic!("{other:?}"),
        }
        let unsubscribe_answer = of(2);
        assert_eq!(unsubscribe_answer.len(), 1, "{unsubscribe_answer:?}");
        assert!(matches!(
            &unsubscribe_answer[0].resp,
            Some(Resp::ErrorResp(e)) if e.code == ErrorCode::BadRequest as i32
        ));
    }
}

/// A reload that moves the route to another cluster ends its subscriptions and event streams
/// (they read through the old one), as a narrowed allow-list does; pulls go to the new cluster.
#[tokio::test]
async fn a_reload_that_changes_the_routes_kafka_identity_ends_what_reads_through_it() {
    let first = Broker::start().await;
    let second = Broker::start().await;
    let topic = unique_topic("identity");
    for broker in [&first, &second] {
        let kafka = broker.client().await;
        fixtures::create_topic(&kafka, &topic, 1).await;
    }
    let addr = listen_addr();
    let config = |broker: &Broker| {
        format!(
            "{}{}{}",
            server_toml(addr),
            kafka_upstream("kafka", &broker.bootstrap, ""),
            kafka_route("kafka", "/kafka", "kafka", "")
        )
    };
    let gw = GatewayProcess::start(binary(), &config(&first), addr).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c.subscribe(subscribe(&topic, 10)).await.unwrap();
    let stream = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    gw.reload(&config(&second));
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let frame = tokio::time::timeout_at(deadline.into(), c.recv())
            .await
            .expect("the subscription ends")
            .unwrap();
        if let Some(Resp::ErrorResp(e)) = frame.resp {
            assert_eq!(frame.sequence, sub);
            break e;
        }
    };
    assert_eq!(ended.code, ErrorCode::Forbidden as i32);
    assert!(
        ended.message.contains("another Kafka cluster"),
        "{}",
        ended.message
    );
    let text = tokio::time::timeout(Duration::from_secs(10), stream.text())
        .await
        .expect("the event stream ends")
        .unwrap();
    assert!(text.contains("another Kafka cluster"), "{text}");
    // The session goes on, reading the new cluster.
    let kafka = second.client().await;
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("second")]).await;
    let answer = c.fetch(&topic, 0, 0).await.unwrap();
    assert_eq!(&answer.messages[0].value[..], b"second");
}

/// Reads an event stream's raw text until `done` holds.
async fn read_stream(response: reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&text) {
        match tokio::time::timeout_at(deadline.into(), body.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => break,
            Err(_) => panic!("timed out: {text}"),
        }
    }
    text
}

#[tokio::test]
async fn an_event_stream_resumes_from_its_very_start() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-start");
    fixtures::create_topic(&kafka, &topic, 1).await;
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("before")]).await;
    let gw = gateway_for(&broker, "", "").await;
    let url = gw.http_url(&format!("/kafka?topic={topic}"));
    let first = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    // The opening block (before any record): its id is where the stream started.
    let opening = read_stream(first, |t| t.contains("\n\n")).await;
    let id = opening
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id in the opening: {opening:?}"))
        .to_string();
    // A record produced while the client reconnects is not lost.
    fixtures::produce_each(&kafka, &topic, 0, vec![fixtures::value("between")]).await;
    let again = http()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    let text = read_stream(again, |t| t.contains("event: record")).await;
    assert!(text.contains("\"value\":\"between\""), "{text}");
    assert!(!text.contains("\"value\":\"before\""), "{text}");
}

#[tokio::test]
async fn event_streams_keep_null_keys_and_repeated_headers() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-shape");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let header = |name: &str, value: &[u8]| (name.to_string(), Some(value.to_vec()));
    let null_key = RawRecord {
        key: None,
        value: Some(b"v".to_vec()),
        headers: vec![header("a", b"1"), header("b", b"2"), header("a", b"3")],
    };
    let empty_key = RawRecord {
        key: Some(Vec::new()),
        value: None,
        headers: vec![header("a", b"1")],
    };
    produce_raw(broker.broker_port, &topic, 0, &[null_key, empty_key]).await;
    let gw = gateway_for(&broker, "", "").await;
    let response = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}&from=earliest")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let text = read_stream(response, |t| t.matches("event: record").count() == 2).await;
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .filter(|v: &serde_json::Value| v.get("offset").is_some())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["key"], serde_json::Value::Null);
    assert_eq!(records[0]["value"], "v");
    assert_eq!(
        records[0]["headers"],
        serde_json::json!([["a", "1"], ["b", "2"], ["a", "3"]])
    );
    assert_eq!(records[1]["key"], "");
    assert_eq!(records[1]["value"], serde_json::Value::Null);
    assert_eq!(records[1]["headers"], serde_json::json!({ "a": "1" }));
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() {
    const SECRET: &str = "sse-expiry-secret-0123456789";
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("sse-exp");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let addr = listen_addr();
    let config = format!(
        "{}{}[[routes]]\nid = \"kafka\"\nuri = \"/kafka\"\nupstream_id = \"kafka\"\n[routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nfetch_max_wait_ms = 100\n\n[[consumers]]\nusername = \"app\"\n[consumers.plugins.jwt-auth]\nkey = \"app\"\nsecret = \"{SECRET}\"\n",
        server_toml(addr),
        kafka_upstream("kafka", &broker.bootstrap, ""),
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let exp = fixtures::now_ms() / 1000 + 3;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "key": "app", "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let started = Instant::now();
    let response = http()
        .get(gw.http_url(&format!("/kafka?topic={topic}&jwt={token}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .expect("the stream ends at the token's exp")
        .unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("credentials expired"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "ended before exp: {:?}",
        started.elapsed()
    );
}
