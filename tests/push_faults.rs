//! Push subscriptions: refusals and the errors that end a subscription (and those that do not): one
//! error under the subscribe's sequence and nothing more, an offset past the log, a broker
//! outage waited out, a reload that narrows the allow-list, a log cut short under a position.

mod common;

use common::push::*;
use common::*;

use std::collections::HashSet;
use std::time::Duration;
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, CmdKafkaSubscribe, ErrorCode,
    PartitionOffset, PubSubClient,
};
use streamgate_testkit::fixtures;
use streamgate_testkit::{unique_topic, Broker, FaultOptions, FaultyCluster, GatewayProcess};

#[tokio::test]
async fn refusals_are_one_error_under_the_sequence_and_nothing_more() {
    const QUIET: Duration = Duration::from_millis(300);
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-refuse");
    let other = unique_topic("push-other");
    fixtures::create_topic(&kafka, &topic, 2).await;
    fixtures::create_topic(&kafka, &other, 1).await;
    let plugin = format!("topics = [\"{topic}\", \"{other}\"]\nmax_subscriptions = 2");
    let gw = gateway_for(&broker, &plugin, "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();

    let refused = c.next_sequence();
    let (code, message) = error_of(
        c.subscribe(subscribe("no-such-topic", StartFrom::Latest, 1))
            .await,
    );
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    nothing_more_under(&mut c, refused, QUIET).await;
    let absent = unique_topic("push-absent");
    let plugin_all = "max_subscriptions = 2";
    let gw_all = gateway_for(&broker, plugin_all, "").await;
    let mut all = PubSubClient::connect(&gw_all.ws_url("/kafka"))
        .await
        .unwrap();
    let refused = all.next_sequence();
    let (code, message) = error_of(
        all.subscribe(subscribe(&absent, StartFrom::Latest, 1))
            .await,
    );
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    assert!(message.contains("not found topic"), "{message}");
    nothing_more_under(&mut all, refused, QUIET).await;

    let refused = c.next_sequence();
    let (code, message) = error_of(
        c.subscribe(CmdKafkaSubscribe {
            partitions: vec![0, 7],
            ..subscribe(&topic, StartFrom::Latest, 1)
        })
        .await,
    );
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    assert!(message.contains("partition: 7"), "{message}");
    nothing_more_under(&mut c, refused, QUIET).await;

    // Bad cursors: garbage, damaged, another topic's.
    let (_, other_start) = c
        .subscribe(subscribe(&other, StartFrom::Latest, 0))
        .await
        .unwrap();
    let mut damaged = other_start.cursor.clone().into_bytes();
    let last = damaged.len() - 1;
    damaged[last] = if damaged[last] == b'A' { b'B' } else { b'A' };
    for (cursor, why) in [
        ("not a cursor".to_string(), "garbage"),
        (String::from_utf8(damaged).unwrap(), "damaged"),
        (other_start.cursor.clone(), "another topic's"),
    ] {
        let refused = c.next_sequence();
        let (code, message) = error_of(
            c.subscribe(CmdKafkaSubscribe {
                cursor,
                ..subscribe(&topic, StartFrom::Latest, 1)
            })
            .await,
        );
        assert_eq!(code, ErrorCode::BadRequest, "{why}: {message}");
        assert!(message.contains("cursor"), "{why}: {message}");
        nothing_more_under(&mut c, refused, QUIET).await;
    }

    // max_subscriptions = 2: one is open, a second fits, a third does not.
    let (second, _) = c
        .subscribe(subscribe(&topic, StartFrom::Latest, 0))
        .await
        .unwrap();
    let refused = c.next_sequence();
    let (code, message) = error_of(c.subscribe(subscribe(&topic, StartFrom::Latest, 0)).await);
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    nothing_more_under(&mut c, refused, QUIET).await;
    c.unsubscribe(second).await.unwrap();
    c.subscribe(subscribe(&topic, StartFrom::Latest, 0))
        .await
        .expect("room again");

    // Credit and unsubscribe for a subscription that does not exist.
    c.credit(999, 1, 0).await.unwrap();
    // (Past the caught-up markers of the subscriptions opened above.)
    let frame = loop {
        let frame = c.recv().await.unwrap();
        if !matches!(frame.resp, Some(Resp::KafkaRecordsPush(_))) {
            break frame;
        }
    };
    let (code, message) = error_frame(&frame);
    assert_eq!(code, ErrorCode::BadRequest, "{message}");
    let (code, _) = error_of(c.unsubscribe(999).await);
    assert_eq!(code, ErrorCode::BadRequest);

    // The pull protocol still works beside subscriptions.
    assert_eq!(c.list_offset(&topic, 0, -1).await.unwrap(), 0);
    assert_eq!(&c.ping("still").await.unwrap()[..], b"still");
}

#[tokio::test]
async fn an_offset_past_the_log_is_refused_naming_the_partition() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-range");
    fixtures::create_topic(&kafka, &topic, 2).await;
    produce(&broker, &topic, 1, "r", 3).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (code, message) = error_of(
        c.subscribe(CmdKafkaSubscribe {
            offsets: vec![PartitionOffset {
                partition: 1,
                offset: 50,
            }],
            ..subscribe(&topic, StartFrom::Latest, 10)
        })
        .await,
    );
    assert_eq!(code, ErrorCode::KafkaError, "{message}");
    assert!(
        message.contains("partition: 1") && message.contains("OFFSET_OUT_OF_RANGE"),
        "{message}"
    );
    nothing_for(&mut c, Duration::from_millis(300)).await;
    // At the end exactly is fine: it waits there.
    let (_, started) = c
        .subscribe(CmdKafkaSubscribe {
            partitions: vec![1],
            offsets: vec![PartitionOffset {
                partition: 1,
                offset: 3,
            }],
            ..subscribe(&topic, StartFrom::Latest, 10)
        })
        .await
        .unwrap();
    assert_eq!(started.partitions[0].offset, 3);
}

#[tokio::test]
async fn a_broker_outage_is_waited_out() {
    let mut broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-outage");
    fixtures::create_topic(&kafka, &topic, 1).await;
    produce(&broker, &topic, 0, "before", 2).await;
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(subscribe(&topic, StartFrom::Earliest, 100))
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 2
    })
    .await;
    broker.stop();
    nothing_for(&mut c, Duration::from_secs(2)).await;
    broker.restart().await;
    produce(&broker, &topic, 0, "after", 2).await;
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(15), |s| {
        s.count() == 4
    })
    .await;
    let values: Vec<&[u8]> = seen.records[&0].iter().map(|r| &r.2[..]).collect();
    assert_eq!(
        values,
        vec![&b"before0"[..], b"before1", b"after0", b"after1"]
    );
}

#[tokio::test]
async fn a_reload_that_narrows_the_allow_list_ends_the_subscription_only() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let kept = unique_topic("push-kept");
    let dropped = unique_topic("push-dropped");
    fixtures::create_topic(&kafka, &kept, 1).await;
    fixtures::create_topic(&kafka, &dropped, 1).await;
    let addr = listen_addr();
    let config = |topics: &str| {
        format!(
            "{}{}{}",
            server_toml(addr),
            kafka_upstream("kafka", &broker.bootstrap, ""),
            kafka_route("kafka", "/kafka", "kafka", &format!("topics = [{topics}]"))
        )
    };
    let gw = streamgate_testkit::GatewayProcess::start(
        binary(),
        &config(&format!("\"{kept}\", \"{dropped}\"")),
        addr,
    )
    .await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (gone, _) = c
        .subscribe(subscribe(&dropped, StartFrom::Latest, 10))
        .await
        .unwrap();
    let (stays, _) = c
        .subscribe(subscribe(&kept, StartFrom::Latest, 10))
        .await
        .unwrap();
    // The caught-up markers of both (each partition starts at its watermark).
    let mut caught = HashSet::new();
    while caught.len() < 2 {
        caught.insert(c.recv().await.unwrap().sequence);
    }
    gw.reload(&config(&format!("\"{kept}\"")));
    let frame = tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("the narrowed subscription ends")
        .unwrap();
    assert_eq!(frame.sequence, gone);
    let (code, message) = error_frame(&frame);
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    produce(&broker, &kept, 0, "v", 1).await;
    let mut seen = Seen::default();
    receive_until(&mut c, stays, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 1
    })
    .await;
}

/// tansu 0.6.0 has no DeleteRecords (the request drops the connection), so retention cannot be
/// driven here; a log cut short under a paused position is: the memory engine forgets everything
/// on restart, and the topic comes back with fewer records than the position. Records deleted
/// below a position take the same path (the broker's OFFSET_OUT_OF_RANGE ends the subscription).
/// tansu answers a fetch past its log with nothing, which a lagging new leader also does, so the
/// gateway never ends a subscription on that; the testkit's cluster answers as Kafka does.
#[tokio::test]
async fn a_log_cut_short_under_a_paused_position_ends_the_subscription_naming_the_partition() {
    let mut broker = Broker::start().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-cut");
    fixtures::create_topic(&kafka, &topic, 2).await;
    produce(&broker, &topic, 1, "r", 6).await;
    let cluster = FaultyCluster::start(
        broker.broker_port,
        FaultOptions {
            out_of_range: true,
            ..Default::default()
        },
    )
    .await;
    let addr = listen_addr();
    let config = format!(
        "{}{}{}",
        server_toml(addr),
        kafka_upstream("kafka", &cluster.bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", "")
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let (sub, _) = c
        .subscribe(CmdKafkaSubscribe {
            partitions: vec![1],
            ..subscribe(&topic, StartFrom::Earliest, 5)
        })
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 5
    })
    .await;
    // Paused at offset 5. The broker comes back with the topic holding 2 records.
    broker.restart().await;
    let kafka = broker.client().await;
    fixtures::create_topic(&kafka, &topic, 2).await;
    produce(&broker, &topic, 1, "new", 2).await;
    // Records fetched before stay shared with other readers for up to a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    c.credit(sub, 10, 0).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(20), c.recv())
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(frame.sequence, sub);
    let (code, message) = error_frame(&frame);
    assert_eq!(code, ErrorCode::KafkaError, "{message}");
    assert!(
        message.contains("partition: 1") && message.contains("OFFSET_OUT_OF_RANGE"),
        "{message}"
    );
    nothing_for(&mut c, Duration::from_millis(300)).await;
    assert_eq!(
        &c.ping("alive").await.unwrap()[..],
        b"alive",
        "the session goes on"
    );
}
