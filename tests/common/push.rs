//! Helpers of the push-subscription tests (`push_*.rs`): what a subscription delivered, as its
//! client saw it, and the brokers, producers and commands those tests share.
#![allow(dead_code)]

use bytes::Bytes;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, ClientError, CmdKafkaSubscribe, ErrorCode,
    PubSubClient, PubSubResp,
};
use streamgate_testkit::fixtures;
use streamgate_testkit::{Broker, BrokerOptions, Engine};

/// Everything one subscription delivered, as the client saw it.
#[derive(Debug, Default)]
pub struct Seen {
    /// Per partition: (offset, key, value) in arrival order.
    pub records: BTreeMap<i32, Vec<(i64, Bytes, Bytes)>>,
    /// Partitions whose caught-up batch arrived, in order (a partition twice is a bug).
    pub caught_up: Vec<i32>,
    /// The cursor of the last push.
    pub cursor: Option<String>,
    pub pushes: usize,
}

impl Seen {
    pub fn count(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }

    /// Takes one frame of `subscription`; panics on anything else.
    pub fn take(&mut self, subscription: i64, frame: PubSubResp) {
        assert_eq!(
            frame.sequence, subscription,
            "a frame of another sequence: {frame:?}"
        );
        match frame.resp {
            Some(Resp::KafkaRecordsPush(push)) => {
                self.pushes += 1;
                assert!(!push.cursor.is_empty() && push.cursor.len() <= 1024);
                for batch in push.batches {
                    let list = self.records.entry(batch.partition).or_default();
                    for m in batch.messages {
                        if let Some((last, _, _)) = list.last() {
                            assert!(m.offset > *last, "offsets increase within a partition");
                        }
                        list.push((m.offset, m.key, m.value));
                    }
                    if batch.caught_up {
                        self.caught_up.push(batch.partition);
                    }
                }
                self.cursor = Some(push.cursor);
            }
            other => panic!("expected a push, got {other:?}"),
        }
    }
}

/// Receives pushes of `subscription` until `done` holds or `within` passes.
pub async fn receive_until(
    c: &mut PubSubClient,
    subscription: i64,
    seen: &mut Seen,
    within: Duration,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.recv()).await {
            Ok(frame) => seen.take(subscription, frame.expect("a frame")),
            Err(_) => panic!("timed out: {seen:?}"),
        }
    }
}

/// Asserts that nothing arrives for `quiet`.
pub async fn nothing_for(c: &mut PubSubClient, quiet: Duration) {
    if let Ok(frame) = tokio::time::timeout(quiet, c.recv()).await {
        panic!("expected nothing, got {frame:?}");
    }
}

pub fn subscribe(topic: &str, from: StartFrom, credit: u32) -> CmdKafkaSubscribe {
    CmdKafkaSubscribe {
        topic: topic.into(),
        from: from as i32,
        credit_records: credit,
        ..Default::default()
    }
}

pub fn error_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => {
            (ErrorCode::from_i32(code).expect("known code"), message)
        }
        other => panic!("expected error_resp, got {other:?}"),
    }
}

pub fn error_frame(frame: &PubSubResp) -> (ErrorCode, String) {
    match &frame.resp {
        Some(Resp::ErrorResp(e)) => (
            ErrorCode::from_i32(e.code).expect("known code"),
            e.message.clone(),
        ),
        other => panic!("expected error_resp, got {other:?}"),
    }
}

pub async fn sqlite_broker() -> Broker {
    Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await
}

/// `n` records `{prefix}{i}` with keys `k{i % 10}`, one batch each.
pub async fn produce(broker: &Broker, topic: &str, partition: i32, prefix: &str, n: usize) {
    let kafka = broker.client().await;
    let records = (0..n)
        .map(|i| {
            let key = format!("k{}", i % 10);
            fixtures::record(
                Some(key.as_bytes()),
                Some(format!("{prefix}{i}").as_bytes()),
                &[],
                None,
            )
        })
        .collect();
    fixtures::produce_each(&kafka, topic, partition, records).await;
}

/// Reads every frame for `quiet`: none may come under `refused` (a refusal is the
/// subscription's one frame); frames of other subscriptions may.
pub async fn nothing_more_under(c: &mut PubSubClient, refused: i64, quiet: Duration) {
    let deadline = Instant::now() + quiet;
    while let Ok(frame) = tokio::time::timeout_at(deadline.into(), c.recv()).await {
        let frame = frame.expect("a frame");
        assert_ne!(
            frame.sequence, refused,
            "a frame after the refusal of {refused}: {frame:?}"
        );
    }
}

/// A frame the client already holds (kept during a call), without waiting for the network.
pub async fn next_kept(c: &mut PubSubClient) -> Option<PubSubResp> {
    tokio::time::timeout(Duration::from_millis(1), c.recv())
        .await
        .ok()
        .map(|r| r.expect("a frame"))
}
