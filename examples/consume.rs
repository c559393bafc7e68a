//! A command-line consumer over Streamgate's pub/sub WebSocket protocol.
//!
//! `consume ws://127.0.0.1:9080/kafka --topic demo [--partition 0]
//!          [--from earliest|latest|OFFSET|@MILLIS] [--follow] [--format text|json]`
//!
//! Prints each record (offset, timestamp, key, value, headers). With `--follow` it keeps
//! polling at the end of the log.

use clap::{Parser, ValueEnum};
use streamgate_protocol::{CmdKafkaFetch, KafkaMessage, PubSubClient};

#[derive(Parser)]
#[command(about = "Read a Kafka partition through a Streamgate pub/sub route")]
struct Args {
    /// The route's WebSocket URL, e.g. ws://127.0.0.1:9080/kafka
    url: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 0)]
    partition: i32,
    /// earliest, latest, an offset, or @MILLISECONDS (the first record at or after that time)
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Keep waiting for new records at the end of the log.
    #[arg(long)]
    follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args).await {
        eprintln!("consume: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = PubSubClient::connect(&args.url).await?;
    let mut offset = match args.from.as_str() {
        "earliest" => client.list_offset(&args.topic, args.partition, -2).await?,
        "latest" => client.list_offset(&args.topic, args.partition, -1).await?,
        at if at.starts_with('@') => {
            let ms: i64 = at[1..]
                .parse()
                .map_err(|_| format!("--from {at}: expected @MILLISECONDS"))?;
            match client.list_offset(&args.topic, args.partition, ms).await? {
                -1 => client.list_offset(&args.topic, args.partition, -1).await?,
                o => o,
            }
        }
        n => n.parse().map_err(|_| {
            format!("--from {n}: expected earliest, latest, an offset or @MILLISECONDS")
        })?,
    };
    loop {
        let batch = client
            .fetch_with(CmdKafkaFetch {
                topic: args.topic.clone(),
                partition: args.partition,
                offset,
                ..Default::default()
            })
            .await?;
        for m in &batch.messages {
            print(args.format, m);
            offset = m.offset + 1;
        }
        if batch.messages.is_empty() && !args.follow {
            return Ok(());
        }
    }
}

fn print(format: Format, m: &KafkaMessage) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match format {
        Format::Text => {
            let headers: Vec<String> = m
                .headers
                .iter()
                .map(|h| format!("{}={}", h.key, text(&h.value)))
                .collect();
            println!(
                "{}\t{}\t{}\t{}\t{}",
                m.offset,
                m.timestamp,
                text(&m.key),
                text(&m.value),
                headers.join(",")
            );
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = m
                .headers
                .iter()
                .map(|h| (h.key.clone(), text(&h.value).into()))
                .collect();
            println!(
                "{}",
                serde_json::json!({"offset": m.offset, "timestamp": m.timestamp, "key": text(&m.key), "value": text(&m.value), "headers": headers})
            );
        }
    }
}
