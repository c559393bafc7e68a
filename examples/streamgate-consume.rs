//! `streamgate-consume`: read a Kafka topic through a Streamgate pub/sub route.
//!
//! ```text
//! streamgate-consume ws://127.0.0.1:9080/kafka --topic demo [--partition N]
//!     [--from earliest|latest|OFFSET|@MILLIS|@RFC3339] [--cursor CURSOR] [--follow]
//!     [--credit N] [--key K]... [--key-prefix P] [--match NAME=VALUE]...
//!     [--format text|json] [--header apikey:KEY] [--limit N] [--pull]
//! ```
//!
//! By default it opens a push subscription (every partition, or `--partition`) and grants credit
//! in a window of `--credit` records, so the gateway pushes records as they come and never more
//! than the client has room for. `--pull` reads one partition with APISIX's fetch loop instead.
//!
//! Prints one line per record (offset, timestamp, key, value, headers, partition) on stdout.
//! When the connection drops or the gateway reports a passing Kafka failure, it reconnects with
//! backoff and resumes after the last record it printed: no record is skipped or printed twice.
//! On exit it prints the resume cursor on stderr (`cursor: ...`); `--cursor` starts from one. While
//! it catches up and stderr is a terminal, a progress line shows how far behind the log's end it is.

use clap::{Parser, ValueEnum};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::{CommitMode, StartFrom},
    pub_sub_resp::Resp,
    ClientError, CmdKafkaFetch, CmdKafkaSubscribe, ErrorCode, KafkaFetchResp, KafkaHeader,
    KafkaMessage, PartitionOffset, PubSubClient, RecordFilter,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

#[derive(Parser)]
#[command(
    name = "streamgate-consume",
    version,
    about = "Read a Kafka topic through a Streamgate pub/sub route"
)]
struct Args {
    /// The route's WebSocket URL, e.g. ws://127.0.0.1:9080/kafka
    url: String,
    /// The topic to read.
    #[arg(long)]
    topic: String,
    /// The partition to read (default: every partition; with --pull or an offset in --from, 0).
    #[arg(long)]
    partition: Option<i32>,
    /// Where to start: earliest, latest, an offset, @MILLISECONDS or @RFC3339 time (the first
    /// record at or after that time).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Keep waiting for new records at the end of the log (otherwise stop there).
    #[arg(long)]
    follow: bool,
    /// Output: text (tab-separated) or json (one object per line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Extra handshake header, NAME:VALUE (e.g. `apikey:...` for key-auth). Repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Stop after printing this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Give up after this many failed reconnects in a row (0 = never give up).
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// Resume from a cursor printed by an earlier run (wins over --from and --partition).
    #[arg(long)]
    cursor: Option<String>,
    /// Records the gateway may push ahead of what has been printed.
    #[arg(long, default_value_t = 500)]
    credit: u32,
    /// Only records with this key (repeatable: any of them).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Only records whose key starts with this.
    #[arg(long)]
    key_prefix: Option<String>,
    /// Only records with this header and value, NAME=VALUE (repeatable: all of them).
    #[arg(long = "match")]
    matches: Vec<String>,
    /// Read one partition with APISIX's pull protocol (a fetch per round trip) instead.
    #[arg(long)]
    pull: bool,
    /// Read as a member of this consumer group (the route needs group_prefix): the group assigns
    /// partitions and keeps the position, so the next run, anywhere, goes on from there.
    #[arg(long)]
    group: Option<String>,
    /// With --group: `manual` commits after each push is printed; `auto` leaves it to the gateway
    /// (every auto_commit_interval_ms and at the end).
    #[arg(long, value_enum, default_value_t = Commit::Manual)]
    commit: Commit,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Commit {
    Manual,
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Where reading starts, parsed once from `--from`.
#[derive(Clone, Copy)]
enum Start {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
}

impl Start {
    fn parse(from: &str) -> Result<Self, String> {
        match from {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            at if at.starts_with('@') => {
                let at = &at[1..];
                if let Ok(ms) = at.parse::<i64>() {
                    return Ok(Start::Time(ms));
                }
                rskafka::chrono::DateTime::parse_from_rfc3339(at)
                    .map(|t| Start::Time(t.timestamp_millis()))
                    .map_err(|_| {
                        format!("--from @{at}: expected @MILLISECONDS or @2026-01-31T12:00:00Z")
                    })
            }
            n => n.parse().map(Start::Offset).map_err(|_| {
                format!(
                    "--from {n}: expected earliest, latest, an offset, @MILLISECONDS or @RFC3339"
                )
            }),
        }
    }
}

/// Why a read stopped: for good, or worth a reconnect.
enum Stop {
    Fatal(String),
    Retry(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => {}
        Err(message) => {
            eprintln!("streamgate-consume: {message}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let start = Start::parse(&args.from)?;
    if args.group.is_some() {
        if args.pull {
            return Err("--group reads with a push subscription: drop --pull".into());
        }
        if matches!(start, Start::Offset(_)) || args.partition.is_some() || args.cursor.is_some() {
            return Err("--group starts where the group committed and reads the partitions it assigns: drop --partition, --cursor and offsets in --from".into());
        }
    }
    let filter = filter(args)?;
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{}: {e}", args.url))?;
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?}: expected NAME:VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("--header {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| format!("--header {}: {e}", name.as_str()))?;
        request.headers_mut().insert(name, value);
    }

    let mut out = Output::new(args.format, args.limit);
    // The next offset to read, once known. Resuming uses it instead of `--from`.
    let mut next: Option<i64> = None;
    // Push: the cursor after the last record printed. Resuming uses it.
    let mut cursor: Option<String> = args.cursor.clone();
    let mut failures = 0u32;
    loop {
        let stop = match PubSubClient::connect_request(request.clone()).await {
            Ok(mut client) => {
                if failures > 0 {
                    let at = if args.pull {
                        format!(
                            "at offset {}",
                            next.map_or_else(|| args.from.clone(), |n| n.to_string())
                        )
                    } else {
                        "after the last record printed".to_string()
                    };
                    eprintln!("streamgate-consume: reconnected; resuming {at}");
                }
                failures = 0;
                if args.pull {
                    read(&mut client, args, start, &mut next, &mut out).await
                } else {
                    let read = subscribe(&mut client, args, start, &filter, &mut cursor, &mut out);
                    tokio::select! {
                        stop = read => stop,
                        _ = tokio::signal::ctrl_c() => {
                            out.clear_progress();
                            Ok(())
                        }
                    }
                }
            }
            Err(e) => Err(classify(e)),
        };
        match stop {
            Ok(()) => {
                if let Some(cursor) = &cursor {
                    eprintln!("cursor: {cursor}");
                }
                return Ok(());
            }
            Err(Stop::Fatal(message)) => {
                if let Some(cursor) = &cursor {
                    eprintln!("cursor: {cursor}");
                }
                return Err(message);
            }
            Err(Stop::Retry(message)) => {
                out.clear_progress();
                failures += 1;
                if args.max_retries > 0 && failures > args.max_retries {
                    return Err(format!(
                        "{message} (gave up after {} retries)",
                        failures - 1
                    ));
                }
                let backoff =
                    Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5));
                eprintln!(
                    "streamgate-consume: {message}; reconnecting in {} ms",
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Reads on one connection until the end (without `--follow`), the limit, or a failure.
async fn read(
    client: &mut PubSubClient,
    args: &Args,
    start: Start,
    next: &mut Option<i64>,
    out: &mut Output,
) -> Result<(), Stop> {
    let (topic, partition) = (args.topic.as_str(), args.partition.unwrap_or(0));
    let mut offset = match *next {
        Some(offset) => offset,
        None => {
            let offset = match start {
                Start::Earliest => client.list_offset(topic, partition, -2).await,
                Start::Latest => client.list_offset(topic, partition, -1).await,
                Start::Offset(offset) => Ok(offset),
                // No record at or after the time: start at the end, like Kafka consumers do.
                Start::Time(ms) => match client.list_offset(topic, partition, ms).await {
                    Ok(-1) => client.list_offset(topic, partition, -1).await,
                    other => other,
                },
            }
            .map_err(classify)?;
            *next = Some(offset);
            offset
        }
    };
    loop {
        let batch: KafkaFetchResp = client
            .fetch_with(CmdKafkaFetch {
                topic: topic.into(),
                partition,
                offset,
                ..Default::default()
            })
            .await
            .map_err(classify)?;
        for message in &batch.messages {
            if message.offset < offset {
                continue;
            }
            out.record(partition, message);
            offset = message.offset + 1;
            *next = Some(offset);
            if out.limit_reached() {
                out.clear_progress();
                return Ok(());
            }
        }
        out.progress(offset, batch.high_watermark);
        if !args.follow && offset >= batch.high_watermark && batch.messages.is_empty() {
            out.clear_progress();
            return Ok(());
        }
    }
}

/// The record filter from `--key`, `--key-prefix` and `--match`.
fn filter(args: &Args) -> Result<Option<RecordFilter>, String> {
    let mut headers = Vec::new();
    for m in &args.matches {
        let (name, value) = m
            .split_once('=')
            .ok_or_else(|| format!("--match {m:?}: expected NAME=VALUE"))?;
        headers.push(KafkaHeader {
            key: name.to_string(),
            value: value.as_bytes().to_vec().into(),
        });
    }
    let filter = RecordFilter {
        keys: args
            .keys
            .iter()
            .map(|k| k.as_bytes().to_vec().into())
            .collect(),
        key_prefix: args
            .key_prefix
            .as_deref()
            .unwrap_or("")
            .as_bytes()
            .to_vec()
            .into(),
        headers,
    };
    let any = filter.keys.is_empty() && filter.key_prefix.is_empty() && filter.headers.is_empty();
    if any {
        return Ok(None);
    }
    if args.pull {
        return Err(
            "--key, --key-prefix and --match filter push subscriptions: drop --pull".into(),
        );
    }
    Ok(Some(filter))
}

/// Reads through a push subscription until every partition is caught up (without `--follow`),
/// the limit, or a failure. `cursor` follows the last record printed.
async fn subscribe(
    client: &mut PubSubClient,
    args: &Args,
    start: Start,
    filter: &Option<RecordFilter>,
    cursor: &mut Option<String>,
    out: &mut Output,
) -> Result<(), Stop> {
    let window = args.credit.max(1);
    // Never more credit than the limit leaves: the cursor then never passes an unprinted record.
    let room = |out: &Output| -> u32 {
        match out.limit {
            Some(limit) => window.min(limit.saturating_sub(out.printed) as u32),
            None => window,
        }
    };
    let mut cmd = CmdKafkaSubscribe {
        topic: args.topic.clone(),
        credit_records: room(out),
        filter: filter.clone(),
        ..Default::default()
    };
    if let Some(group) = &args.group {
        // The group assigns the partitions and holds the positions.
        cmd.group = group.clone();
        cmd.commit = match args.commit {
            Commit::Manual => CommitMode::Manual,
            Commit::Auto => CommitMode::Auto,
        } as i32;
        cmd.from = match start {
            Start::Latest => StartFrom::Latest,
            Start::Time(ms) => {
                cmd.timestamp_ms = ms;
                StartFrom::Timestamp
            }
            _ => StartFrom::Earliest,
        } as i32;
    } else {
        match &*cursor {
            Some(c) => cmd.cursor = c.clone(),
            None => match start {
                Start::Earliest => cmd.from = StartFrom::Earliest as i32,
                Start::Latest => cmd.from = StartFrom::Latest as i32,
                Start::Time(ms) => {
                    cmd.from = StartFrom::Timestamp as i32;
                    cmd.timestamp_ms = ms;
                }
                Start::Offset(offset) => {
                    let partition = args.partition.unwrap_or(0);
                    cmd.partitions = vec![partition];
                    cmd.offsets = vec![PartitionOffset { partition, offset }];
                }
            },
        }
        if cmd.cursor.is_empty() && cmd.partitions.is_empty() {
            cmd.partitions = args.partition.into_iter().collect();
        }
    }
    if room(out) == 0 {
        return Ok(());
    }
    let (subscription, started) = client.subscribe(cmd).await.map_err(classify)?;
    *cursor = Some(started.cursor);
    let mut waiting: std::collections::HashSet<i32> =
        started.partitions.iter().map(|p| p.partition).collect();
    // Records granted and not yet received.
    let mut outstanding = room(out);
    loop {
        if !args.follow && waiting.is_empty() {
            out.clear_progress();
            let last = client.unsubscribe(subscription).await.map_err(classify)?;
            // Pushes that came before the answer: counted in its cursor, so print them.
            while let Ok(Ok(frame)) =
                tokio::time::timeout(Duration::from_millis(1), client.recv()).await
            {
                if let Some(Resp::KafkaRecordsPush(push)) = frame.resp {
                    for batch in &push.batches {
                        for m in &batch.messages {
                            out.record(batch.partition, m);
                        }
                    }
                }
            }
            *cursor = Some(last);
            return Ok(());
        }
        let frame = client.recv().await.map_err(classify)?;
        let push = match frame.resp {
            Some(Resp::KafkaRecordsPush(push)) if frame.sequence == subscription => push,
            Some(Resp::KafkaAssignment(a)) if frame.sequence == subscription => {
                out.clear_progress();
                let assigned: Vec<i32> = a.assigned.iter().map(|s| s.partition).collect();
                eprintln!(
                    "streamgate-consume: group generation {}: partitions {assigned:?} (revoked {:?})",
                    a.generation, a.revoked
                );
                waiting = assigned.into_iter().collect();
                continue;
            }
            Some(Resp::ErrorResp(e)) => {
                return Err(classify(ClientError::Server {
                    code: e.code,
                    message: e.message,
                }))
            }
            _ => continue,
        };
        for batch in &push.batches {
            for m in &batch.messages {
                out.record(batch.partition, m);
                outstanding = outstanding.saturating_sub(1);
            }
            if let Some(last) = batch.messages.last() {
                out.progress(last.offset + 1, batch.high_watermark);
            }
            if batch.caught_up {
                waiting.remove(&batch.partition);
            }
        }
        if args.group.is_some() && args.commit == Commit::Manual {
            // What was printed is committed; a commit during a rebalance is refused and the
            // next one, after the new assignment, covers it.
            match client.commit(subscription, &push.cursor).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::Rebalancing) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        *cursor = Some(push.cursor);
        if out.limit_reached() {
            out.clear_progress();
            return Ok(());
        }
        // Top the window up once half of it is used.
        let want = room(out);
        if 2 * outstanding < want {
            client
                .credit(subscription, want - outstanding, 0)
                .await
                .map_err(classify)?;
            outstanding = want;
        }
    }
}

/// Which failures are worth a reconnect: lost connections and passing Kafka trouble, not refusals.
fn classify(error: ClientError) -> Stop {
    let message = error.to_string();
    match &error {
        ClientError::Server {
            message: reason, ..
        } => match error.code() {
            // The offset is gone (retention) or not there yet: retrying cannot help.
            Some(ErrorCode::KafkaError) if reason.contains("OFFSET_OUT_OF_RANGE") => Stop::Fatal(
                format!("{message}; start again with --from earliest or --from latest"),
            ),
            Some(ErrorCode::Unavailable | ErrorCode::KafkaError | ErrorCode::Internal) => {
                Stop::Retry(message)
            }
            _ => Stop::Fatal(message),
        },
        ClientError::InvalidUrl(_) | ClientError::Decode(_) | ClientError::Unexpected(_) => {
            Stop::Fatal(message)
        }
        // A refused handshake (401, 403, 404) will not change by retrying.
        ClientError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Stop::Fatal(format!(
                "the gateway refused the WebSocket: {}",
                response.status()
            ))
        }
        _ => Stop::Retry(message),
    }
}

/// Prints records and, on a terminal, the catch-up progress line.
struct Output {
    format: Format,
    stdout: std::io::StdoutLock<'static>,
    limit: Option<u64>,
    printed: u64,
    progress: Option<Progress>,
}

/// Catch-up progress, redrawn on stderr at most ten times a second.
struct Progress {
    shown: bool,
    last_draw: Instant,
    since: Instant,
    printed_since: u64,
}

impl Output {
    fn new(format: Format, limit: Option<u64>) -> Self {
        let progress = std::io::stderr().is_terminal().then(|| Progress {
            shown: false,
            last_draw: Instant::now(),
            since: Instant::now(),
            printed_since: 0,
        });
        Output {
            format,
            stdout: std::io::stdout().lock(),
            limit,
            printed: 0,
            progress,
        }
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|limit| self.printed >= limit)
    }

    fn record(&mut self, partition: i32, m: &KafkaMessage) {
        if self.progress.as_ref().is_some_and(|p| p.shown) {
            eprint!("\r\x1b[2K");
            if let Some(p) = &mut self.progress {
                p.shown = false;
            }
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // A closed stdout (`| head`) ends the program quietly, like other command-line tools.
        let written = match self.format {
            Format::Text => {
                let headers: Vec<String> = m
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.key, text(&h.value)))
                    .collect();
                writeln!(
                    self.stdout,
                    "{}\t{}\t{}\t{}\t{}\t{partition}",
                    m.offset,
                    m.timestamp,
                    text(&m.key),
                    text(&m.value),
                    headers.join(",")
                )
            }
            Format::Json => {
                let headers: serde_json::Map<String, serde_json::Value> = m
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), text(&h.value).into()))
                    .collect();
                let line = serde_json::json!({
                    "partition": partition,
                    "offset": m.offset,
                    "timestamp": m.timestamp,
                    "key": text(&m.key),
                    "value": text(&m.value),
                    "headers": headers,
                });
                writeln!(self.stdout, "{line}")
            }
        };
        if written.and_then(|()| self.stdout.flush()).is_err() {
            std::process::exit(0);
        }
        self.printed += 1;
        if let Some(p) = &mut self.progress {
            p.printed_since += 1;
        }
    }

    fn progress(&mut self, offset: i64, high_watermark: i64) {
        let Some(p) = &mut self.progress else { return };
        let behind = high_watermark - offset;
        if behind <= 0 {
            self.clear_progress();
            return;
        }
        if p.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        let rate = p.printed_since as f64 / p.since.elapsed().as_secs_f64().max(0.001);
        let done = 100.0 * offset as f64 / high_watermark.max(1) as f64;
        eprint!("\r\x1b[2Kcatching up: offset {offset} of {high_watermark} ({done:.1} %), {behind} behind, {rate:.0} records/s");
        p.shown = true;
        p.last_draw = Instant::now();
    }

    fn clear_progress(&mut self) {
        if let Some(p) = &mut self.progress {
            if p.shown {
                eprint!("\r\x1b[2K");
                p.shown = false;
            }
            p.since = Instant::now();
            p.printed_since = 0;
        }
    }
}
