//! The demo's live data: appends a readable order event to a topic twice a second, so `make run`
//! has something to watch. Creates the topic (two partitions) when it does not exist; all events
//! of one order go to the same partition, as keyed Kafka producers do.
//!
//! `demo_producer --broker 127.0.0.1:9092 --topic demo [--interval-ms 500] [--partitions 2]`

use clap::Parser;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    broker: String,
    #[arg(long, default_value = "demo")]
    topic: String,
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    #[arg(long, default_value_t = 2)]
    partitions: i32,
}

const WORDS: [&str; 8] = [
    "order placed",
    "payment captured",
    "parcel packed",
    "parcel shipped",
    "out for delivery",
    "delivered",
    "review posted",
    "refund requested",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = loop {
        match ClientBuilder::new(vec![args.broker.clone()]).build().await {
            Ok(c) => break c,
            Err(e) => {
                eprintln!(
                    "demo_producer: waiting for the broker at {}: {e}",
                    args.broker
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    match client
        .controller_client()?
        .create_topic(&args.topic, args.partitions, 1, 5_000)
        .await
    {
        Ok(()) => eprintln!("demo_producer: created topic {}", args.topic),
        Err(e) if e.to_string().contains("TopicAlreadyExists") => {}
        Err(e) => return Err(e.into()),
    }
    let mut partitions = Vec::new();
    for p in 0..args.partitions.max(1) {
        partitions.push(
            client
                .partition_client(&args.topic, p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    for n in 0u64.. {
        let order = n / 8;
        let partition = &partitions[(order % partitions.len() as u64) as usize];
        let event = WORDS[(n % WORDS.len() as u64) as usize];
        let record = Record {
            key: Some(format!("order-{order}").into_bytes()),
            value: Some(format!("#{n} {event}").into_bytes()),
            headers: BTreeMap::from([("source".to_string(), b"demo_producer".to_vec())]),
            timestamp: Utc
                .timestamp_millis_opt(now_ms())
                .single()
                .unwrap_or_default(),
        };
        // One record per batch keeps the development broker's "latest offset" exact.
        if let Err(e) = partition
            .produce(vec![record], Compression::NoCompression)
            .await
        {
            eprintln!("demo_producer: produce failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
