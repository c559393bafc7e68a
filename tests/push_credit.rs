//! Push subscriptions: credit and flow. A push never carries more than the credit granted, pings are
//! never queued behind pushes, new records reach subscribers without a request, readers at the head
//! share one fetch loop, and the metrics say why subscriptions stall.

mod common;

use bytes::Bytes;
use common::push::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaSubscribe,
    CmdPing, Message as _, PubSubClient, PubSubReq, PubSubResp,
};
use streamgate_testkit::fixtures;
use streamgate_testkit::{unique_topic, Broker};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn no_credit_no_push_then_exactly_what_is_granted() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-credit");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, "r", 5).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Earliest, 0))
        .await
        .unwrap();
    nothing_for(&mut c, Duration::from_millis(400)).await;
    assert_eq!(&c.ping("alive").await.unwrap()[..], b"alive");

    c.credit(sub, 2, 0).await.unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 2
    })
    .await;
    nothing_for(&mut c, Duration::from_millis(400)).await;
    assert_eq!(seen.count(), 2, "never more than the credit");
    assert!(seen.caught_up.is_empty());

    c.credit(sub, 10, 0).await.unwrap();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 5 && s.caught_up == [0]
    })
    .await;
    let offsets: Vec<i64> = seen.records[&0].iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_byte_credit_smaller_than_the_next_record_waits() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-bytes");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // Each record: no key, a 100-byte value, one header "h" = "12345": 106 credit bytes.
    let records = (0..3)
        .map(|i| fixtures::record(None, Some(&[b'a' + i as u8; 100]), &[("h", b"12345")], None))
        .collect();
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(CmdKafkaSubscribe {
            credit_bytes: 150,
            ..subscribe(&topic, StartFrom::Earliest, 100)
        })
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 1
    })
    .await;
    // 44 bytes left, the next record needs 106.
    nothing_for(&mut c, Duration::from_millis(400)).await;
    c.credit(sub, 0, 61).await.unwrap(); // 105 left: still one short.
    nothing_for(&mut c, Duration::from_millis(400)).await;
    c.credit(sub, 0, 1).await.unwrap(); // 106: exactly the next record.
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 2
    })
    .await;
    nothing_for(&mut c, Duration::from_millis(400)).await;
    assert_eq!(seen.count(), 2);
}

#[tokio::test]
async fn pings_are_not_queued_behind_a_heavy_push() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-heavy");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // 40 MiB in 64 KiB records.
    for chunk in 0..20 {
        let records = (0..32)
            .map(|i| {
                fixtures::record(
                    None,
                    Some(&vec![(chunk * 32 + i) as u8; 64 * 1024]),
                    &[],
                    None,
                )
            })
            .collect();
        fixtures::produce_batch(&kafka, &topic, 0, records, fixtures::Codec::NoCompression).await;
    }
    let gw = gateway_for(&broker, "", "").await;
    let mut idle = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let mut quiet = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        idle.ping("q").await.unwrap();
        quiet.push(t.elapsed());
    }
    quiet.sort();

    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Earliest, 1_000_000))
        .await
        .unwrap();
    let mut busy = Vec::new();
    let mut seen = Seen::default();
    // The pushes are flowing before the first ping.
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(10), |s| {
        s.count() > 0
    })
    .await;
    let before = seen.count();
    for _ in 0..20 {
        let t = Instant::now();
        // Pushes that arrive before the pong are kept by the client; the pong's delay is
        // what the gateway queued in front of it.
        c.ping("b").await.unwrap();
        busy.push(t.elapsed());
        while let Some(frame) = next_kept(&mut c).await {
            seen.take(sub, frame);
        }
    }
    busy.sort();
    let (q, b) = (quiet[10], busy[10]);
    println!(
        "ping median: quiet {q:?}, during pushes {b:?}; records seen {}",
        seen.count()
    );
    // The heavy push was still going on: more records follow the pings.
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(10), |s| {
        s.count() > before
    })
    .await;
    // A ping is answered when it is read; at most the push being written (64 KiB records in
    // frames of up to 1 MiB) goes out before the pong. A ping queued behind the pushes waits for
    // the subscription's whole backlog (40 MiB) instead: hundreds of milliseconds.
    assert!(
        b < Duration::from_millis(50),
        "a ping waits behind pushes: median {b:?} (quiet {q:?})"
    );
}

/// A reader that stops reading: the gateway's socket fills, it blocks writing a push, and more
/// pushes wait in its queue. A ping sent then is read and answered as soon as that one write
/// completes: the client finds the pong behind what the socket buffers already held (here 4
/// pushes of 1 MiB), never behind the queued ones. With pushes served before client frames the
/// pong came after all 17 pushes of the topic.
#[tokio::test]
async fn a_ping_overtakes_the_pushes_queued_for_a_reader_that_stopped() {
    let broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-stalled");
    fixtures::create_topic(&kafka, &topic, 1).await;
    // 16 MiB in 64 KiB records: about 16 pushes of 1 MiB.
    for chunk in 0..16 {
        let records = (0..16)
            .map(|i| {
                fixtures::record(
                    None,
                    Some(&vec![(chunk * 16 + i) as u8; 64 * 1024]),
                    &[],
                    None,
                )
            })
            .collect();
        fixtures::produce_each(&kafka, &topic, 0, records).await;
    }
    let gw = gateway_for(&broker, "", "").await;
    let url = gw.ws_url("/kafka");
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap();
    let send = |req: PubSubReq| Message::Binary(req.encode_to_vec().into());
    let sub = PubSubReq::new(
        1,
        Req::CmdKafkaSubscribe(subscribe(&topic, StartFrom::Earliest, 1_000_000)),
    );
    ws.send(send(sub)).await.unwrap();
    let mut pushes = 0;
    while pushes == 0 {
        let Some(Ok(Message::Binary(data))) = ws.next().await else {
            panic!("the session ended")
        };
        let frame = PubSubResp::decode(data).unwrap();
        pushes += usize::from(matches!(frame.resp, Some(Resp::KafkaRecordsPush(_))));
    }
    // Stop reading: everything the gateway has ready piles up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ping = PubSubReq::new(
        99,
        Req::CmdPing(CmdPing {
            state: Bytes::from_static(b"p"),
        }),
    );
    ws.send(send(ping)).await.unwrap();
    let mut before_pong = 0;
    loop {
        let Some(Ok(Message::Binary(data))) = ws.next().await else {
            panic!("the session ended")
        };
        let frame = PubSubResp::decode(data).unwrap();
        match frame.resp {
            Some(Resp::PongResp(_)) => break,
            Some(Resp::KafkaRecordsPush(_)) => before_pong += 1,
            other => panic!("{other:?}"),
        }
    }
    println!("pushes between the ping and its pong: {before_pong}");
    assert!(
        before_pong <= 6,
        "the pong came after {before_pong} pushes: it waited behind the queued ones"
    );
}

#[tokio::test]
async fn a_record_reaches_a_subscriber_without_a_request_and_quickly() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-latency");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Latest, 10_000))
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.caught_up == [0]
    })
    .await;
    let partition = kafka
        .partition_client(
            &topic,
            0,
            rskafka::client::partition::UnknownTopicHandling::Error,
        )
        .await
        .unwrap();
    let mut delays = Vec::new();
    for i in 0..30 {
        let sent = Instant::now();
        partition
            .produce(
                vec![fixtures::value(&format!("l{i}"))],
                rskafka::client::partition::Compression::NoCompression,
            )
            .await
            .unwrap();
        receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
            s.count() == i + 1
        })
        .await;
        delays.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    delays.sort();
    println!(
        "produce to push: p50 {:?}, max {:?}",
        delays[15], delays[29]
    );
    assert!(
        delays[15] < Duration::from_millis(50),
        "median {:?}",
        delays[15]
    );
}

#[tokio::test]
async fn subscribers_at_the_head_share_one_fetch_loop() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-shared");
    fixtures::create_topic(&kafka, &topic, 1).await;
    let admin = listen_addr();
    let gw = gateway_for(&broker, "", &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    // The broker fetches while 20 records reach `n` subscribers that are at the head.
    async fn run(
        gw: &streamgate_testkit::GatewayProcess,
        admin: std::net::SocketAddr,
        broker: &Broker,
        topic: &str,
        n: usize,
    ) -> f64 {
        let fetches = "streamgate_kafka_broker_fetches_total";
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
            let (sub, _) = c
                .subscribe(subscribe(topic, StartFrom::Latest, 10_000))
                .await
                .unwrap();
            clients.push((c, sub, Seen::default()));
        }
        for (c, sub, seen) in &mut clients {
            receive_until(c, *sub, seen, Duration::from_secs(5), |s| {
                s.caught_up.len() == 1
            })
            .await;
        }
        let before = metric(admin, fetches).await;
        for i in 0..20 {
            produce(broker, topic, 0, &format!("s{i}-"), 1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (c, sub, seen) in &mut clients {
            receive_until(c, *sub, seen, Duration::from_secs(10), |s| s.count() == 20).await;
        }
        metric(admin, fetches).await - before
    }
    let one = run(&gw, admin, &broker, &topic, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let forty = run(&gw, admin, &broker, &topic, 40).await;
    println!("broker fetches while 20 records arrive: 1 subscriber {one}, 40 subscribers {forty}");
    assert!(
        forty <= one * 1.5 + 5.0,
        "broker fetches grow with subscribers: 1 -> {one}, 40 -> {forty}"
    );
}

#[tokio::test]
async fn metrics_show_lag_and_why_subscriptions_stall() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-lag");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, "r", 10).await;
    let admin = listen_addr();
    let gw = gateway_for(&broker, "", &format!("[admin]\nlisten = \"{admin}\"\n")).await;
    let lag = format!("streamgate_subscription_lag_records{{route=\"kafka\",topic=\"{topic}\"}}");
    let credit = "streamgate_pubsub_subscriptions_stalled{reason=\"credit\",route=\"kafka\"}";
    let slow = "streamgate_pubsub_subscriptions_stalled{reason=\"slow_reader\",route=\"kafka\"}";
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Earliest, 2))
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 2
    })
    .await;
    assert_eq!(settled(admin, &lag, 8.0).await, 8.0, "8 records behind");
    assert_eq!(settled(admin, credit, 1.0).await, 1.0, "waiting for credit");
    c.credit(sub, 100, 0).await.unwrap();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 10
    })
    .await;
    assert_eq!(settled(admin, &lag, 0.0).await, 0.0);
    assert_eq!(settled(admin, credit, 0.0).await, 0.0);
    drop(c);
    assert_eq!(
        settled(
            admin,
            "streamgate_pubsub_subscriptions{route=\"kafka\"}",
            0.0
        )
        .await,
        0.0
    );

    // A client that stops reading while records keep coming: its subscription stalls on the
    // connection, not on credit.
    let big = unique_topic("push-slow");
    fixtures::create_topic(&kafka, &big, 1).await;
    // 32 MiB: more than loopback socket buffers hold.
    for _ in 0..32 {
        let records = (0..16)
            .map(|_| fixtures::record(None, Some(&vec![b'x'; 64 * 1024]), &[], None))
            .collect();
        fixtures::produce_batch(&kafka, &big, 0, records, fixtures::Codec::NoCompression).await;
    }
    let mut quiet = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    quiet
        .subscribe(subscribe(&big, StartFrom::Earliest, 1_000_000))
        .await
        .unwrap();
    assert_eq!(
        settled(admin, slow, 1.0).await,
        1.0,
        "stalled by a slow reader"
    );
    assert_eq!(metric(admin, credit).await, 0.0);
}
