//! Scenario 7, filtered subscribers: 10,000 to 100,000 push subscriptions, each filtering on one
//! of 1,000 keys of an 8-partition topic, while a producer writes 2,000 records a second; and
//! 10,000 Server-Sent Events readers of the same filters.
//!
//! The subscribers live in other processes of this binary (`streamgate-bench subscribers`), at
//! most 10,000 connections each, so that their descriptors and their CPU are their own: the
//! report shows what the load generator itself used. Each connection is bound to its own
//! loopback source address. The gateway's open-files limit bounds its connections (about 19,900
//! where the hard limit is 20,000), so a connection carries `ceil(subscribers / 12,500)`
//! subscriptions: one each at 10,000, four at 50,000, eight at 100,000.

use crate::{gateway::*, measure::*, report::*, Cli};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamgate_protocol::{CmdKafkaSubscribe, RecordFilter};
use streamgate_testkit::subscribers::{self, Event};
use streamgate_testkit::{fixtures, Broker};
use tokio::sync::Semaphore;

const KEYS: usize = 1_000;
const PARTITIONS: i32 = 8;
const RATE: u64 = 2_000;
const VALUE_BYTES: usize = 200;
/// Connections one gateway holds here at most, with room for its own descriptors.
const MAX_CONNECTIONS: usize = 12_500;
/// Connections one load-generating process holds.
const PER_PROCESS: usize = 10_000;
/// Delays are kept per millisecond up to this; later ones count at it.
const HISTOGRAM_MS: usize = 10_000;

fn key(k: usize) -> String {
    format!("key-{k:04}")
}

/// `streamgate-bench subscribers`: one load-generating process. Prints `ready N` once its
/// subscriptions are answered, reads the window's start (ms since the epoch) from stdin, counts
/// the records stamped at or after it, and on `stop` prints `result DELIVERED MAX_MS HISTOGRAM`.
pub(crate) async fn subscribers_process(
    addr: SocketAddr,
    topic: String,
    first: usize,
    count: usize,
    per_connection: usize,
    sse: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let from_ms = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let histogram: Arc<Vec<AtomicU64>> =
        Arc::new((0..=HISTOGRAM_MS).map(|_| AtomicU64::new(0)).collect());
    let ready = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    let connections = count.div_ceil(per_connection);
    for c in 0..connections {
        let subs: Vec<usize> = (first + c * per_connection
            ..(first + (c + 1) * per_connection).min(first + count))
            .collect();
        let (ready, gate, stop, from_ms, histogram) = (
            Arc::clone(&ready),
            Arc::clone(&gate),
            Arc::clone(&stop),
            Arc::clone(&from_ms),
            Arc::clone(&histogram),
        );
        let topic = topic.clone();
        let source = subscribers::loopback_source(first / per_connection + c, 1_000);
        tasks.spawn(async move {
            let record = move |timestamp: i64| {
                let start = from_ms.load(Ordering::Relaxed);
                if start > 0 && timestamp >= start {
                    let ms = (fixtures::now_ms() - timestamp).clamp(0, HISTOGRAM_MS as i64);
                    histogram[ms as usize].fetch_add(1, Ordering::Relaxed);
                }
            };
            if sse {
                let query = format!("{topic}&key={}", key(subs[0] % KEYS));
                return crate::push::sse_timestamps(addr, query, ready, gate, stop, record).await;
            }
            let connection = subscribers::Connection {
                addr,
                source: Some(source),
                path: "/kafka".into(),
                credit_window: 1_000,
                subscribes: subs
                    .iter()
                    .map(|s| CmdKafkaSubscribe {
                        topic: topic.clone(),
                        credit_records: 1_000,
                        filter: Some(RecordFilter {
                            keys: vec![key(s % KEYS).into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            };
            subscribers::run(connection, gate, ready, stop, |_, event| {
                if let Event::Record(m) = event {
                    record(m.timestamp);
                }
            })
            .await
        });
    }
    let all = ready.acquire_many(connections as u32);
    let all_ready = tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .is_ok();
    if all_ready {
        println!("ready {connections}");
    } else {
        println!("only {} of {connections} ready", ready.available_permits());
    }
    std::io::stdout().flush()?;
    // The driver's lines, read off the runtime's thread (which the connections need).
    let (stopped, stopped_rx) = tokio::sync::oneshot::channel();
    {
        let from_ms = Arc::clone(&from_ms);
        std::thread::spawn(move || {
            let mut lines = std::io::stdin().lock().lines();
            if let Some(Ok(line)) = lines.next() {
                from_ms.store(line.trim().parse().unwrap_or(0), Ordering::Relaxed);
            }
            let _ = lines.next();
            let _ = stopped.send(());
        });
    }
    let _ = stopped_rx.await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let counts: Vec<u64> = histogram
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let delivered: u64 = counts.iter().sum();
    let max = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
    let text: Vec<String> = counts.iter().map(u64::to_string).collect();
    println!("result {delivered} {max} {failed} {}", text.join(","));
    Ok(())
}

/// One run's measurements.
struct Run {
    delivered_per_sec: f64,
    share: f64,
    p50: f64,
    p99: f64,
    max: f64,
    gateway_cpu: f64,
    rss_per_subscriber_kib: f64,
    generator_cpu: f64,
    connections: usize,
    failed: u64,
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    gateway_bin: &Path,
    broker: &Broker,
    subscribers: usize,
    sse: bool,
    window: Duration,
    run: usize,
) -> Result<Run, Box<dyn std::error::Error>> {
    let kafka = broker.client().await;
    let topic = format!("filtered-{subscribers}-{sse}-{run}-{}", std::process::id());
    fixtures::create_topic(&kafka, &topic, PARTITIONS).await;
    // The machine's two cores are shared by the gateway (two worker threads), the load
    // generator and the broker: nothing is pinned.
    let gw = start_gateway(gateway_bin, 2, &broker.bootstrap, "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_rest = gw.rss_kib();
    let per_connection = if sse {
        1
    } else {
        subscribers.div_ceil(MAX_CONNECTIONS)
    };
    let connections = subscribers.div_ceil(per_connection);
    let per_process = PER_PROCESS * per_connection;
    let me = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut first = 0;
    while first < subscribers {
        let count = per_process.min(subscribers - first);
        let mut cmd = Command::new(&me);
        cmd.args([
            "subscribers",
            "--addr",
            &gw.addr.to_string(),
            "--topic",
            &topic,
            "--first",
            &first.to_string(),
            "--count",
            &count.to_string(),
            "--per-connection",
            &per_connection.to_string(),
        ]);
        if sse {
            cmd.arg("--sse");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = std::io::BufReader::new(child.stdout.take().ok_or("child stdout")?);
        children.push((child, stdout));
        first += count;
    }
    let started = Instant::now();
    for (_, out) in &mut children {
        let mut line = String::new();
        tokio::task::block_in_place(|| out.read_line(&mut line))?;
        if !line.starts_with("ready") {
            return Err(format!("a load generator did not get ready: {line:?}").into());
        }
    }
    progress(&format!(
        "7: {subscribers} {} subscribers over {connections} connections ready in {:.1} s",
        if sse { "SSE" } else { "WebSocket" },
        started.elapsed().as_secs_f64()
    ));

    // The producer: key k in partition k % 8, 250 records a second per partition.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let window_from = Arc::new(AtomicI64::new(i64::MAX));
    let in_window = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PARTITIONS {
        let client = kafka
            .partition_client(&topic, p, UnknownTopicHandling::Retry)
            .await?;
        let (stop, produced, window_from, in_window, errors) = (
            Arc::clone(&stop),
            Arc::clone(&produced),
            Arc::clone(&window_from),
            Arc::clone(&in_window),
            Arc::clone(&errors),
        );
        producers.spawn(async move {
            let value = vec![b'v'; VALUE_BYTES];
            let keys: Vec<usize> = (0..KEYS).filter(|k| *k as i32 % PARTITIONS == p).collect();
            let per_partition = RATE / PARTITIONS as u64;
            let began = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = keys[n as usize % keys.len()];
                let now = fixtures::now_ms();
                let record =
                    fixtures::record(Some(key(k).as_bytes()), Some(&value), &[], Some(now));
                if let Err(e) = client
                    .produce(vec![record], Compression::NoCompression)
                    .await
                {
                    errors.lock().map(|mut v| v.push(e.to_string())).ok();
                }
                produced.fetch_add(1, Ordering::Relaxed);
                if now >= window_from.load(Ordering::Relaxed) {
                    in_window.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                let due = began + Duration::from_micros(n * 1_000_000 / per_partition);
                tokio::time::sleep_until(due.into()).await;
            }
        });
    }
    // Warm-up, then the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from_ms = fixtures::now_ms();
    window_from.store(from_ms, Ordering::Relaxed);
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().ok_or("child stdin")?;
        writeln!(stdin, "{from_ms}")?;
        stdin.flush()?;
    }
    let cpu0 = cpu_secs(gw.pid());
    let gen0: f64 = children.iter().map(|(c, _)| cpu_secs(c.id())).sum();
    let opened = Instant::now();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let window_secs = opened.elapsed().as_secs_f64();
    let produced_in_window = in_window.load(Ordering::Relaxed);
    // The last records reach their readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gateway_cpu = (cpu_secs(gw.pid()) - cpu0) / (window_secs + 2.0);
    let generator_cpu =
        (children.iter().map(|(c, _)| cpu_secs(c.id())).sum::<f64>() - gen0) / (window_secs + 2.0);
    let rss = gw.rss_kib();
    while producers.join_next().await.is_some() {}
    let mut histogram = vec![0u64; HISTOGRAM_MS + 1];
    let (mut delivered, mut max, mut failed) = (0u64, 0usize, 0u64);
    for (child, out) in &mut children {
        let stdin = child.stdin.as_mut().ok_or("child stdin")?;
        writeln!(stdin, "stop")?;
        stdin.flush()?;
        let mut line = String::new();
        tokio::task::block_in_place(|| out.read_line(&mut line))?;
        let mut fields = line.split_whitespace().skip(1);
        delivered += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        max = max.max(fields.next().and_then(|v| v.parse().ok()).unwrap_or(0));
        failed += fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        for (i, c) in fields.next().unwrap_or("").split(',').enumerate() {
            if let (Some(slot), Ok(c)) = (histogram.get_mut(i), c.parse::<u64>()) {
                *slot += c;
            }
        }
        let _ = child.wait();
    }
    if let Ok(errors) = errors.lock() {
        if let Some(e) = errors.first() {
            eprintln!("bench: 7: {} produce errors, first: {e}", errors.len());
        }
    }
    let quantile = |q: f64| {
        let target = (delivered as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (ms, c) in histogram.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return ms as f64;
            }
        }
        HISTOGRAM_MS as f64
    };
    let wanted = produced_in_window as f64 * subscribers as f64 / KEYS as f64;
    Ok(Run {
        delivered_per_sec: delivered as f64 / window_secs,
        share: if wanted > 0.0 {
            delivered as f64 / wanted
        } else {
            0.0
        },
        p50: quantile(0.5),
        p99: quantile(0.99),
        max: max as f64,
        gateway_cpu,
        rss_per_subscriber_kib: rss.saturating_sub(at_rest) as f64 / subscribers as f64,
        generator_cpu,
        connections,
        failed,
    })
}

pub(crate) async fn filtered_subscribers(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let window = Duration::from_secs_f64((20.0 * cli.scale).max(5.0));
    let mut sizes: Vec<(usize, bool)> = cli.filtered.iter().map(|&n| (n, false)).collect();
    if cli.filtered_sse > 0 {
        sizes.push((cli.filtered_sse, true));
    }
    for (subscribers, sse) in sizes {
        let what = if sse { "SSE readers" } else { "subscribers" };
        let mut runs = Vec::new();
        for run in 0..cli.reps {
            let r = run_once(gateway_bin, broker, subscribers, sse, window, run).await?;
            progress(&format!(
                "7: {subscribers} {what}: {:.0} records/s ({:.1} %), p50/p99/max {:.0}/{:.0}/{:.0} ms, gateway {:.2} cores, {:.1} KiB each, load generator {:.2} cores, {} connections failed",
                r.delivered_per_sec, r.share * 100.0, r.p50, r.p99, r.max, r.gateway_cpu,
                r.rss_per_subscriber_kib, r.generator_cpu, r.failed
            ));
            runs.push(r);
        }
        let s = |f: fn(&Run) -> f64| stat(&runs.iter().map(f).collect::<Vec<_>>());
        let label = format!(
            "7. {subscribers} filtered {what} ({} connections)",
            runs[0].connections
        );
        let expected = RATE as f64 * subscribers as f64 / KEYS as f64;
        report.row(
            &label,
            "delivered records/s (share of produced × readers per key)",
            format!(
                "{} ({:.1} %)",
                fmt(s(|r| r.delivered_per_sec), 0),
                s(|r| r.share).median * 100.0
            ),
            format!("{expected:.0}"),
            format!("{:.2}", s(|r| r.share).median),
        );
        report.row(
            &label,
            "produce-to-client delay p50 / p99 / max, ms",
            format!(
                "{} / {} / {}",
                fmt(s(|r| r.p50), 0),
                fmt(s(|r| r.p99), 0),
                fmt(s(|r| r.max), 0)
            ),
            "p99 ≤ 250".into(),
            String::new(),
        );
        report.row(
            &label,
            "gateway CPU, cores (2 workers) / load generator CPU, cores",
            format!(
                "{} / {}",
                fmt(s(|r| r.gateway_cpu), 2),
                fmt(s(|r| r.generator_cpu), 2)
            ),
            String::new(),
            String::new(),
        );
        report.row(
            &label,
            "gateway RSS per subscriber, KiB",
            fmt(s(|r| r.rss_per_subscriber_kib), 1),
            "≤ 12".into(),
            String::new(),
        );
    }
    Ok(())
}
