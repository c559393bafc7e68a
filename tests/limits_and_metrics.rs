//! Abuse limits and Prometheus metrics, through the real gateway: each limit is hit, answered
//! with its error, and recovers; metrics move as traffic flows.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_req::Req, CmdKafkaCredit, CmdKafkaFetch,
    CmdKafkaSubscribe, CmdPing, ErrorCode, Message as _, PubSubClient, PubSubReq, PubSubResp,
};
use streamgate_testkit::{fixtures, unique_topic, Broker, GatewayProcess, Upstream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// A gateway with an admin listener, an HTTP route `/web/*` to `web`, a pub/sub route `/kafka`
/// with `plugin` settings, and `extra` config. Returns it and its admin address.
async fn gateway(
    broker: &Broker,
    web: &Upstream,
    plugin: &str,
    extra: &str,
) -> (GatewayProcess, SocketAddr) {
    let addr = listen_addr();
    let admin = listen_addr();
    let config = [
        server_toml(addr),
        format!("[admin]\nlisten = \"{admin}\"\n\n"),
        format!(
            "[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n",
            web.addr
        ),
        "[[routes]]\nid = \"web\"\nuri = \"/web/*\"\nupstream_id = \"web\"\n\n".into(),
        kafka_upstream("kafka", &broker.bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", plugin),
        extra.into(),
    ]
    .concat();
    (GatewayProcess::start(binary(), &config, addr).await, admin)
}

#[tokio::test]
async fn metrics_follow_http_and_pubsub_traffic() {
    let broker = Broker::start().await;
    let topic = unique_topic("metrics");
    let client = broker.client().await;
    fixtures::create_topic(&client, &topic, 1).await;
    let records = (0..5).map(|i| fixtures::value(&format!("m{i}"))).collect();
    fixtures::produce_each(&client, &topic, 0, records).await;
    let web = Upstream::start("web").await;
    let dead = format!(
        "[[upstreams]]\nid = \"dead\"\nnodes = {{ \"127.0.0.1:{}\" = 1 }}\n\n[[routes]]\nid = \"dead\"\nuri = \"/dead\"\nupstream_id = \"dead\"\n",
        streamgate_testkit::free_port()
    );
    let (gw, admin) = gateway(&broker, &web, "topics = [\"metrics*\"]", &dead).await;

    for _ in 0..3 {
        assert_eq!(
            http()
                .get(gw.http_url("/web/a"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        http()
            .get(gw.http_url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        settled(
            admin,
            r#"streamgate_http_requests_total{route="web",status="200"}"#,
            3.0
        )
        .await,
        3.0
    );
    assert_eq!(
        settled(
            admin,
            r#"streamgate_http_requests_total{route="-",status="404"}"#,
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        settled(
            admin,
            r#"streamgate_http_request_duration_seconds_count{route="web"}"#,
            3.0
        )
        .await,
        3.0
    );

    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    c.ping("p").await.unwrap();
    assert_eq!(c.list_offset(&topic, 0, -2).await.unwrap(), 0);
    let batch = c.fetch(&topic, 0, 0).await.unwrap();
    assert_eq!(batch.messages.len(), 5);
    assert!(c.list_offset("secret", 0, -2).await.is_err());
    assert_eq!(settled(admin, "streamgate_pubsub_sessions", 1.0).await, 1.0);
    assert_eq!(
        settled(
            admin,
            r#"streamgate_http_requests_total{route="kafka",status="101"}"#,
            1.0
        )
        .await,
        1.0
    );
    for (command, result, want) in [
        ("ping", "ok", 1.0),
        ("list_offset", "ok", 1.0),
        ("fetch", "ok", 1.0),
        ("list_offset", "FORBIDDEN", 1.0),
    ] {
        let sample = format!(
            r#"streamgate_pubsub_commands_total{{command="{command}",result="{result}",route="kafka"}}"#
        );
        assert_eq!(metric(admin, &sample).await, want, "{sample}");
    }
    assert_eq!(
        settled(
            admin,
            r#"streamgate_pubsub_records_total{route="kafka"}"#,
            5.0
        )
        .await,
        5.0
    );
    assert!(
        metric(
            admin,
            r#"streamgate_pubsub_record_bytes_total{route="kafka"}"#
        )
        .await
            >= 10.0
    );
    assert!(
        metric(
            admin,
            r#"streamgate_kafka_request_duration_seconds_count{operation="fetch"}"#
        )
        .await
            >= 1.0
    );
    assert!(metric(admin, "streamgate_kafka_broker_fetches_total").await >= 1.0);
    assert_eq!(settled(admin, "streamgate_kafka_clients", 1.0).await, 1.0);
    c.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(admin, "streamgate_pubsub_sessions").await != 0.0 {
        assert!(Instant::now() < deadline, "the session gauge returns to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        settled(
            admin,
            r#"streamgate_pubsub_sessions_closed_total{reason="client"}"#,
            1.0
        )
        .await,
        1.0
    );

    // A node that is down: a connect failure per attempt.
    assert_eq!(
        http()
            .get(gw.http_url("/dead"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    assert_eq!(
        settled(
            admin,
            r#"streamgate_upstream_failures_total{kind="connect",upstream="dead"}"#,
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn limit_req_answers_429_with_retry_after_and_recovers() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let extra = "[[routes]]\nid = \"slow\"\nuri = \"/slow/*\"\nupstream_id = \"web\"\n[routes.plugins.limit-req]\nrate = 2\nburst = 3\n";
    let (gw, admin) = gateway(&broker, &web, "", extra).await;
    let get = || http().get(gw.http_url("/slow/x")).send();
    for _ in 0..3 {
        assert_eq!(get().await.unwrap().status(), 200, "the burst is allowed");
    }
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap_or("")
            .contains("2 requests per second"),
        "{body}"
    );
    // Other routes are not limited.
    assert_eq!(
        http()
            .get(gw.http_url("/web/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "a token came back after 0.5 s"
    );
    assert_eq!(
        metric(admin, r#"streamgate_limited_total{limit="limit-req"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn connections_per_ip_and_sessions_per_consumer_are_bounded() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let extra = r#"
[server.limits]
max_connections_per_ip = 3
max_sessions_per_consumer = 1

[[routes]]
id = "keyed"
uri = "/keyed"
upstream_id = "kafka"
[routes.plugins.key-auth]

[[consumers]]
username = "phone"
[consumers.plugins.key-auth]
key = "phone-key-123456"
"#;
    let (gw, admin) = gateway(&broker, &web, "", extra).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap());
    }
    match PubSubClient::connect(&gw.ws_url("/kafka")).await {
        Err(streamgate_protocol::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(resp),
        )) => {
            assert_eq!(resp.status(), 429);
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        other => panic!("a fourth session from one address must be refused: {other:?}"),
    }
    // HTTP requests count too while the sessions are open.
    assert_eq!(
        http()
            .get(gw.http_url("/web/a"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    let first = held.pop().unwrap();
    first.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        match PubSubClient::connect(&gw.ws_url("/kafka")).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("a closed session gives its place back: {e}"),
        }
    };
    again.ping("back").await.unwrap();
    drop(again);
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let keyed = || {
        let mut req = gw.ws_url("/keyed").into_client_request().unwrap();
        req.headers_mut()
            .insert("apikey", "phone-key-123456".parse().unwrap());
        PubSubClient::connect_request(req)
    };
    let mut one = keyed().await.expect("the consumer's first session");
    one.ping("x").await.unwrap();
    match keyed().await {
        Err(streamgate_protocol::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(resp),
        )) => assert_eq!(resp.status(), 429),
        other => panic!("a second session of the consumer must be refused: {other:?}"),
    }
    assert_eq!(
        metric(
            admin,
            r#"streamgate_limited_total{limit="max_sessions_per_consumer"}"#
        )
        .await,
        1.0
    );
    assert!(
        metric(
            admin,
            r#"streamgate_limited_total{limit="max_connections_per_ip"}"#
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let extra = "[server.limits]\nmax_request_header_bytes = 2048\nmax_request_body_bytes = 1000\n";
    let (gw, _admin) = gateway(&broker, &web, "", extra).await;
    let big = "x".repeat(3000);
    let resp = http()
        .get(gw.http_url("/web/a"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);

    let resp = http()
        .post(gw.http_url("/web/count"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "a declared length over the limit");
    assert_eq!(web.hits(), 0, "refused before the upstream");

    // A chunked body declares no length: it is cut off when it passes the limit.
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 400]))),
    );
    let resp = http()
        .post(gw.http_url("/web/count"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    let resp = http()
        .post(gw.http_url("/web/count"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a body at the limit goes through");
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("\"content-length\":\"1000\""));
}

/// Encodes a command the gateway answers at once without Kafka (a credit for no subscription:
/// BAD_REQUEST). Pings would not do: they are answered whatever the rate.
fn instant_command(sequence: i64) -> Message {
    let credit = CmdKafkaCredit {
        subscription: 999,
        records: 1,
        bytes: 0,
    };
    let req = PubSubReq::new(sequence, Req::CmdKafkaCredit(credit));
    Message::Binary(req.encode_to_vec().into())
}

#[tokio::test]
async fn sessions_are_rate_limited_pinged_when_idle_and_closed_when_old() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let plugin = "max_commands_per_second = 5\nidle_timeout_ms = 1000";
    let (gw, admin) = gateway(&broker, &web, plugin, "").await;

    // Twenty commands at once: the first five are answered, the rest refused by sequence; a
    // ping among them is answered all the same.
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    for seq in 1..=20 {
        c.websocket().feed(instant_command(seq)).await.unwrap();
    }
    let ping = PubSubReq::new(21, Req::CmdPing(CmdPing { state: "s".into() }));
    let ping = Message::Binary(ping.encode_to_vec().into());
    c.websocket().feed(ping).await.unwrap();
    c.websocket().flush().await.unwrap();
    let (mut answered, mut limited, mut pongs) = (0, 0, 0);
    for _ in 1..=21 {
        let resp: PubSubResp = c.recv().await.unwrap();
        match resp.resp {
            Some(streamgate_protocol::pub_sub_resp::Resp::PongResp(_)) => pongs += 1,
            Some(streamgate_protocol::pub_sub_resp::Resp::ErrorResp(e))
                if e.code == ErrorCode::LimitExceeded as i32 =>
            {
                assert!(e.message.contains("5/s"), "{}", e.message);
                assert!(
                    resp.sequence > 0,
                    "the refusal carries the command's sequence"
                );
                limited += 1;
            }
            Some(streamgate_protocol::pub_sub_resp::Resp::ErrorResp(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest as i32, "{}", e.message);
                answered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((answered, limited, pongs), (5, 15, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.websocket().send(instant_command(22)).await.unwrap();
    let again = c.recv().await.unwrap();
    assert!(
        matches!(&again.resp, Some(streamgate_protocol::pub_sub_resp::Resp::ErrorResp(e)) if e.code == ErrorCode::BadRequest as i32),
        "the rate recovers: {again:?}"
    );

    // A client that reads (and so answers the gateway's pings) stays connected while idle.
    let reader = tokio::time::timeout(Duration::from_millis(2500), async {
        let mut pings = 0;
        while let Some(frame) = c.websocket().next().await {
            match frame {
                Ok(Message::Ping(_)) => pings += 1,
                other => return Err(format!("unexpected {other:?} after {pings} pings")),
            }
        }
        Ok(pings)
    })
    .await;
    assert!(reader.is_err(), "the session stayed open: {reader:?}");
    assert!(c.ping("alive").await.is_ok());

    // A peer that answers nothing: closed with 1001 after the idle timeout.
    let (mut dead, _) = tokio_tungstenite::connect_async(gw.ws_url("/kafka"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let mut close = None;
    while let Some(Ok(frame)) = dead.next().await {
        if let Message::Close(f) = frame {
            close = f;
            break;
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.contains("idle"), "{}", close.reason);
    assert!(
        metric(
            admin,
            r#"streamgate_pubsub_sessions_closed_total{reason="idle"}"#
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn sessions_end_at_their_lifetime_and_slow_readers_are_cut_off() {
    let broker = Broker::start().await;
    let topic = unique_topic("slow");
    let client = broker.client().await;
    fixtures::create_topic(&client, &topic, 1).await;
    let big = vec![b'v'; 900 * 1024];
    let records = (0..4)
        .map(|_| fixtures::record(None, Some(&big), &[], None))
        .collect();
    fixtures::produce_each(&client, &topic, 0, records).await;
    let web = Upstream::start("web").await;
    let (short, _) = gateway(&broker, &web, "max_session_seconds = 1", "").await;

    let mut old = PubSubClient::connect(&short.ws_url("/kafka"))
        .await
        .unwrap();
    old.ping("x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    match old.ping("y").await {
        Err(streamgate_protocol::ClientError::Closed(Some(reason))) => {
            assert!(
                reason.starts_with("1001") && reason.contains("lifetime"),
                "{reason}"
            )
        }
        other => panic!("the session must end at its lifetime: {other:?}"),
    }

    // A client that asks for 900 KiB answers, one every 10 ms, and never reads them.
    let plugin = "send_timeout_ms = 1000\nmax_in_flight = 4\nmax_commands_per_second = 0";
    let (gw, admin) = gateway(&broker, &web, plugin, "").await;
    let rss_before = gw.rss_kib();
    let mut slow = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let slow_topic = topic.clone();
    let fetch = move |seq| {
        let req = PubSubReq::new(
            seq,
            Req::CmdKafkaFetch(CmdKafkaFetch {
                topic: slow_topic.clone(),
                partition: 0,
                offset: 0,
                ..Default::default()
            }),
        );
        Message::Binary(req.encode_to_vec().into())
    };
    let sender = tokio::spawn(async move {
        for seq in 1..=200 {
            if slow.websocket().send(fetch(seq)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slow
    });
    // Meanwhile another client is served normally.
    let mut fine = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        admin,
        r#"streamgate_pubsub_sessions_closed_total{reason="slow_reader"}"#,
    )
    .await
        < 1.0
    {
        if Instant::now() > deadline {
            let text = http()
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let closed: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("closed") || l.contains("commands_total"))
                .collect();
            panic!(
                "the slow reader is cut off: {closed:#?} rss {} KiB",
                gw.rss_kib()
            );
        }
        assert_eq!(fine.fetch(&topic, 0, 3).await.unwrap().messages.len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = gw.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "buffered answers stay bounded (max_in_flight x frame): grew {grown} KiB"
    );
    drop(sender);
}

#[tokio::test]
async fn the_admin_listener_answers_health_and_names_its_paths() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let (_gw, admin) = gateway(&broker, &web, "", "").await;
    let get = |path: &str| {
        let url = format!("http://{admin}{path}");
        async move {
            let resp = http().get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("ready\npubsub_sessions 0\n"), "{body}");
    let (status, body) = get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/healthz, /readyz or /metrics"), "{body}");
}

#[tokio::test]
async fn a_client_frame_over_max_frame_bytes_closes_with_1009() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let (gw, admin) = gateway(&broker, &web, "max_frame_bytes = 4096", "").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/kafka"))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![0u8; 8192].into()))
        .await
        .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed within 5 s")
    .expect("a close code");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(close.reason.contains("max_frame_bytes"), "{close:?}");
    let closed = "streamgate_pubsub_sessions_closed_total{reason=\"frame_too_large\"}";
    assert_eq!(settled(admin, closed, 1.0).await, 1.0);
}

#[tokio::test]
async fn the_gateway_as_a_whole_holds_at_most_max_connections() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let (gw, _) = gateway(&broker, &web, "", "[server.limits]\nmax_connections = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
        c.ping("x").await.unwrap();
        held.push(c);
    }
    let resp = http().get(gw.http_url("/web/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(resp.text().await.unwrap().contains("connection limit"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = http()
            .get(gw.http_url("/web/x"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers waiting to be written share one process-wide budget: past it a command is answered
/// LIMIT_EXCEEDED instead of holding its records (here one answer is larger than the budget).
#[tokio::test]
async fn answers_waiting_to_be_written_share_one_budget() {
    let broker = Broker::start().await;
    let topic = unique_topic("budget");
    let client = broker.client().await;
    fixtures::create_topic(&client, &topic, 1).await;
    // 12 MiB of 60 KiB records: more than loopback socket buffers hold for a reader that stops.
    let big = vec![b'b'; 60 * 1024];
    let mut records: Vec<_> = (0..200)
        .map(|_| fixtures::record(None, Some(&big), &[], None))
        .collect();
    records.push(fixtures::record(None, Some(b"small"), &[], None));
    fixtures::produce_each(&client, &topic, 0, records).await;
    let web = Upstream::start("web").await;
    // The budget must hold the largest frame (the config check refuses less), so it is spent
    // by answers waiting for a reader that stopped, not by one answer alone.
    let (gw, admin) = gateway(
        &broker,
        &web,
        "max_frame_bytes = 65536",
        "[server.limits]\nmax_queued_answer_bytes = 65536\n",
    )
    .await;
    let mut stalled = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    stalled
        .subscribe(CmdKafkaSubscribe {
            topic: topic.clone(),
            from: StartFrom::Earliest as i32,
            credit_records: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    // `stalled` reads no more: its pushes fill the socket, then one waits in the budget.
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let big_fetch = || CmdKafkaFetch {
        topic: topic.clone(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        max_wait_ms: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match c.fetch_with(big_fetch()).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the budget was never spent");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    assert!(
        e.to_string().contains("max_queued_answer_bytes = 65536"),
        "{e}"
    );
    let limited = "streamgate_limited_total{limit=\"max_queued_answer_bytes\"}";
    assert!(metric(admin, limited).await >= 1.0);
    // The small record (offset 200, at most 1 KiB asked) still fits beside the waiting push.
    let small = c
        .fetch_with(CmdKafkaFetch {
            offset: 200,
            max_bytes: 1024,
            ..big_fetch()
        })
        .await
        .unwrap();
    assert_eq!(small.messages.len(), 1, "a small answer fits");
    // The stalled reader goes: what it held is given back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.fetch_with(big_fetch()).await.is_err() {
        assert!(Instant::now() < deadline, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(&c.ping("p").await.unwrap()[..], b"p");
}
