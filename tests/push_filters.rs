//! Push subscriptions: record filters (keys, key prefix, headers) and the caught-up marker.

mod common;

use bytes::Bytes;
use common::push::*;
use common::*;

use std::time::Duration;
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, CmdKafkaSubscribe, KafkaHeader, PartitionOffset, PubSubClient,
    RecordFilter,
};
use streamgate_testkit::fixtures;
use streamgate_testkit::unique_topic;

#[tokio::test]
async fn filters_and_the_caught_up_marker() {
    let broker = sqlite_broker().await;
    let kafka = broker.client().await;
    let topic = unique_topic("push-filter");
    fixtures::create_topic(&kafka, &topic, 2).await;
    let records = vec![
        fixtures::record(Some(b"eu-1"), Some(b"a"), &[("kind", b"order")], None),
        fixtures::record(Some(b"eu-2"), Some(b"b"), &[("kind", b"refund")], None),
        fixtures::record(Some(b"us-1"), Some(b"c"), &[("kind", b"order")], None),
        fixtures::record(
            Some(b"eu-3"),
            Some(b"d"),
            &[("kind", b"order"), ("x", b"y")],
            None,
        ),
        fixtures::record(None, Some(b"e"), &[("kind", b"order")], None),
    ];
    fixtures::produce_each(&kafka, &topic, 0, records).await;
    // Partition 1 stays empty: it starts at its high watermark.
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    // With no credit, the empty partition is still caught up right after the answer.
    let (sub, _) = c
        .subscribe(CmdKafkaSubscribe {
            filter: Some(RecordFilter {
                key_prefix: Bytes::from_static(b"eu-"),
                headers: vec![KafkaHeader {
                    key: "kind".into(),
                    value: Bytes::from_static(b"order"),
                }],
                ..Default::default()
            }),
            ..subscribe(&topic, StartFrom::Earliest, 0)
        })
        .await
        .unwrap();
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.caught_up == [1]
    })
    .await;
    assert_eq!(seen.count(), 0);
    // One credit: the filtered-out records use none of it.
    c.credit(sub, 1, 0).await.unwrap();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 1
    })
    .await;
    c.credit(sub, 5, 0).await.unwrap();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.count() == 2 && s.caught_up.len() == 2
    })
    .await;
    let keys: Vec<&[u8]> = seen.records[&0].iter().map(|r| &r.1[..]).collect();
    assert_eq!(keys, vec![&b"eu-1"[..], b"eu-3"], "prefix AND header");
    assert_eq!(seen.caught_up, vec![1, 0]);
    let cursor = c.unsubscribe(sub).await.unwrap();
    assert!(!cursor.is_empty());

    // Exact keys (any of), from offsets given per partition.
    let (sub, started) = c
        .subscribe(CmdKafkaSubscribe {
            partitions: vec![0],
            offsets: vec![PartitionOffset {
                partition: 0,
                offset: 1,
            }],
            filter: Some(RecordFilter {
                keys: vec![Bytes::from_static(b"eu-1"), Bytes::from_static(b"us-1")],
                ..Default::default()
            }),
            ..subscribe(&topic, StartFrom::Latest, 10)
        })
        .await
        .unwrap();
    assert_eq!(started.partitions.len(), 1);
    assert_eq!(started.partitions[0].offset, 1);
    let mut seen = Seen::default();
    receive_until(&mut c, sub, &mut seen, Duration::from_secs(5), |s| {
        s.caught_up == [0]
    })
    .await;
    let keys: Vec<&[u8]> = seen.records[&0].iter().map(|r| &r.1[..]).collect();
    assert_eq!(keys, vec![&b"us-1"[..]]);
}
