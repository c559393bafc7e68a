//! `make bench`: Streamgate against its baselines, each measured in the same run.
//!
//! 1. consume throughput: through the gateway vs rskafka reading the broker directly;
//! 2. protocol overhead: `cmd_ping` round trips vs a bare tokio-tungstenite echo server;
//! 3. fan-out: 1,000 consumers tailing one partition while a producer appends;
//! 4. connection cost: RSS per idle pub/sub session, over three open/close rounds;
//! 5. HTTP proxying: requests/s and latency vs nginx and bare Pingora (alone, and doing a
//!    proxy's duties: forwarding headers, upstream timeouts), with wrk;
//! 6. push vs pull fan-out: subscribers on one and on eight partitions, push subscriptions
//!    against APISIX's fetch loop, in the same run.
//!
//! Everything runs on 127.0.0.1 and is bounded in count and time. Prints a Markdown table of
//! medians (with min and max) over repetitions; `BENCHMARKS.md` records a run.
#![deny(rust_2018_idioms, unsafe_code)]

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_protocol::{CmdKafkaFetch, Message as _, PubSubClient};
use streamgate_testkit::{fixtures, free_port, Broker, GatewayProcess};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The release `streamgate` binary.
    #[arg(long, default_value = "target/release/streamgate")]
    gateway: PathBuf,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Run only these scenarios (1-6).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Scale record counts and durations down (e.g. 0.1) for a quick smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

#[derive(Subcommand)]
enum Cmd {
    /// A bare tokio-tungstenite echo server: the practical limit for scenario 2.
    EchoServer {
        #[arg(long)]
        port: u16,
    },
    /// Pingora's HTTP proxy with nothing of the gateway's: every request to one node, one
    /// worker thread. Scenario 5's middle baseline, between nginx and the gateway.
    BarePingora {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        node: SocketAddr,
        /// Also do what any proxy must and the gateway does per request: send the four
        /// forwarding headers and bound upstream connects, reads and writes with timeouts.
        #[arg(long)]
        duties: bool,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::EchoServer { port }) => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(echo_server(port));
        }
        Some(Cmd::BarePingora {
            listen,
            node,
            duties,
        }) => bare_pingora(listen, node, duties),
        None => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_all(cli))
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Median, min and max of a sample.
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(values: &[f64]) -> Stat {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Stat {
        median: if v.is_empty() { 0.0 } else { v[v.len() / 2] },
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

fn fmt(s: Stat, decimals: usize) -> String {
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals, s.median, decimals, s.min, decimals, s.max
    )
}

fn percentile(sorted_micros: &[u32], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let i = ((sorted_micros.len() as f64 - 1.0) * p).round() as usize;
    sorted_micros[i] as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Pins every thread of `pid` to `cpus` (e.g. "0").
fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn progress(text: &str) {
    eprintln!("bench: {text}");
}

/// The rows of the final table.
#[derive(Default)]
struct Report {
    rows: Vec<[String; 5]>,
}

impl Report {
    fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        gateway: String,
        baseline: String,
        ratio: String,
    ) {
        self.rows
            .push([scenario.into(), metric.into(), gateway, baseline, ratio]);
    }

    fn markdown(&self) -> String {
        let mut out = String::from(
            "| scenario | metric | Streamgate | baseline | ratio |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r[0], r[1], r[2], r[3], r[4]
            ));
        }
        out
    }
}

fn gateway_config(addr: SocketAddr, threads: usize, broker: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = ["{addr}"]
threads = {threads}
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1

# Every benchmark client comes from 127.0.0.1: lift the per-client limits.
[server.limits]
max_connections = 1000000
max_connections_per_ip = 1000000

[[upstreams]]
id = "kafka"
scheme = "kafka"
nodes = {{ "{broker}" = 1 }}

[[routes]]
id = "kafka"
uri = "/kafka"
upstream_id = "kafka"
[routes.plugins.kafka-proxy]
max_frame_bytes = 67108864
fetch_max_bytes = 1048576
fetch_max_wait_ms = 200
max_in_flight = 64
max_commands_per_second = 0
idle_timeout_ms = 3600000

{extra}
"#
    )
}

async fn start_gateway(binary: &Path, threads: usize, broker: &str, extra: &str) -> GatewayProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    GatewayProcess::start_with_env(
        binary,
        &gateway_config(addr, threads, broker, extra),
        addr,
        &[("STREAMGATE_LOG", "warn")],
    )
    .await
}

/// A counter from the gateway's `/readyz` (e.g. `kafka_broker_fetches`).
async fn admin_counter(admin: SocketAddr, name: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| format!("{name} not in /readyz").into())
}

async fn run_all(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let wanted = |n: u8| cli.only.is_empty() || cli.only.contains(&n);
    let gateway_bin = std::fs::canonicalize(&cli.gateway).map_err(|e| {
        format!(
            "{}: {e} (build it with cargo build --release)",
            cli.gateway.display()
        )
    })?;
    let mut report = Report::default();
    progress("starting the broker");
    let broker = Broker::start().await;
    let started = Instant::now();
    if wanted(1) {
        consume_throughput(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(2) {
        ping_overhead(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(3) {
        fan_out(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(4) {
        connection_cost(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(5) {
        http_proxying(&cli, &gateway_bin, &mut report).await?;
    }
    if wanted(6) {
        push_vs_pull(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    let table = report.markdown();
    println!("\n{table}");
    println!(
        "medians of {} repetitions, (min–max); total {:.0} s",
        cli.reps,
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all("target").ok();
    std::fs::write("target/bench-results.md", &table).ok();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Consume throughput

async fn consume_throughput(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let kafka = broker.client().await;
    let gw = start_gateway(gateway_bin, 2, &broker.bootstrap, "").await;
    let bench_pid = std::process::id();
    for (records, size) in [
        ((1_000_000.0 * cli.scale) as usize, 100usize),
        ((200_000.0 * cli.scale) as usize, 1024),
    ] {
        let topic = format!("consume-{size}");
        fixtures::create_topic(&kafka, &topic, 1).await;
        progress(&format!("1: producing {records} records of {size} B"));
        let pc = kafka
            .partition_client(&topic, 0, UnknownTopicHandling::Retry)
            .await?;
        let value = vec![b'x'; size];
        let batch = 1000;
        for start in (0..records).step_by(batch) {
            let n = batch.min(records - start);
            let recs = (0..n)
                .map(|_| fixtures::record(None, Some(&value), &[], None))
                .collect();
            pc.produce(recs, Compression::NoCompression).await?;
        }
        let (mut direct_rate, mut gw_rate, mut direct_cpu, mut gw_cpu) =
            (vec![], vec![], vec![], vec![]);
        for rep in 0..cli.reps {
            progress(&format!("1: {size} B, repetition {}: direct", rep + 1));
            let cpu0 = cpu_secs(bench_pid);
            let t = Instant::now();
            let mut offset = 0i64;
            let mut got = 0usize;
            while got < records {
                // No broker-side wait, as the gateway sends its fetches (tansu sleeps inside
                // fetches that may wait, even when records are there).
                let (recs, _hw) = pc.fetch_records(offset, 1..1_048_576, 0).await?;
                if recs.is_empty() {
                    return Err(format!("direct read stalled at offset {offset}").into());
                }
                got += recs.len();
                offset = recs.last().map(|r| r.offset + 1).unwrap_or(offset);
            }
            let secs = t.elapsed().as_secs_f64();
            direct_rate.push(records as f64 / secs);
            direct_cpu.push((cpu_secs(bench_pid) - cpu0) / records as f64 * 1e6);

            progress(&format!(
                "1: {size} B, repetition {}: through the gateway",
                rep + 1
            ));
            let mut client = PubSubClient::connect(&gw.ws_url("/kafka")).await?;
            let gcpu0 = cpu_secs(gw.pid());
            let t = Instant::now();
            let mut offset = 0i64;
            let mut got = 0usize;
            while got < records {
                let resp = client
                    .fetch_with(CmdKafkaFetch {
                        topic: topic.clone(),
                        partition: 0,
                        offset,
                        max_bytes: 1_048_576,
                        max_wait_ms: 200,
                    })
                    .await?;
                if resp.messages.is_empty() {
                    return Err(format!("gateway read stalled at offset {offset}").into());
                }
                got += resp.messages.len();
                offset = resp.messages.last().map(|m| m.offset + 1).unwrap_or(offset);
            }
            let secs = t.elapsed().as_secs_f64();
            gw_rate.push(records as f64 / secs);
            gw_cpu.push((cpu_secs(gw.pid()) - gcpu0) / records as f64 * 1e6);
        }
        let (d, g) = (stat(&direct_rate), stat(&gw_rate));
        let name = format!("1. consume {records} × {size} B");
        report.row(
            &name,
            "records/s",
            fmt(g, 0),
            fmt(d, 0),
            format!("{:.0} %", g.median / d.median * 100.0),
        );
        let mb = |s: Stat| Stat {
            median: s.median * size as f64 / 1e6,
            min: s.min * size as f64 / 1e6,
            max: s.max * size as f64 / 1e6,
        };
        report.row(
            &name,
            "MB/s (values)",
            fmt(mb(g), 1),
            fmt(mb(d), 1),
            format!("{:.0} %", g.median / d.median * 100.0),
        );
        let (dc, gc) = (stat(&direct_cpu), stat(&gw_cpu));
        report.row(
            &name,
            "CPU µs per record (gateway process vs direct reader)",
            fmt(gc, 2),
            fmt(dc, 2),
            format!("{:.2}×", gc.median / dc.median),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Protocol overhead

async fn echo_server(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true).ok();
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_binary() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// `connections` clients ping for `duration`; returns (pings/s, sorted latencies in µs).
async fn ping_load(
    url: &str,
    connections: usize,
    duration: Duration,
) -> Result<(f64, Vec<u32>), Box<dyn std::error::Error>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(PubSubClient::connect(url).await?);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let t = Instant::now();
                if c.ping(bytes::Bytes::from_static(b"bench")).await.is_err() {
                    break;
                }
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            let _ = c.close().await;
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r?);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((all.len() as f64 / secs, all))
}

async fn ping_overhead(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let echo_port = free_port();
    let mut echo = Command::new(std::env::current_exe()?)
        .args(["echo-server", "--port", &echo_port.to_string()])
        .spawn()?;
    streamgate_testkit::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], echo_port)),
        Duration::from_secs(5),
    )
    .await?;
    let gw = start_gateway(gateway_bin, 1, &broker.bootstrap, "").await;
    // Server on core 0, this load generator on core 1.
    pin(echo.id(), "0");
    pin(gw.pid(), "0");
    pin(std::process::id(), "1");
    let echo_url = format!("ws://127.0.0.1:{echo_port}/");
    let duration = Duration::from_secs_f64((3.0 * cli.scale).max(1.0));
    for connections in [1usize, 100, 1000] {
        let (mut g_rate, mut e_rate, mut g_p50, mut e_p50, mut g_p99, mut e_p99) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for rep in 0..cli.reps {
            progress(&format!(
                "2: {connections} connections, repetition {}",
                rep + 1
            ));
            let (rate, lat) = ping_load(&gw.ws_url("/kafka"), connections, duration).await?;
            g_rate.push(rate);
            g_p50.push(percentile(&lat, 0.50));
            g_p99.push(percentile(&lat, 0.99));
            let (rate, lat) = ping_load(&echo_url, connections, duration).await?;
            e_rate.push(rate);
            e_p50.push(percentile(&lat, 0.50));
            e_p99.push(percentile(&lat, 0.99));
        }
        let name = format!("2. ping, {connections} conn.");
        let (g, e) = (stat(&g_rate), stat(&e_rate));
        report.row(
            &name,
            "round trips/s",
            fmt(g, 0),
            fmt(e, 0),
            format!("{:.0} %", g.median / e.median * 100.0),
        );
        let (g, e) = (stat(&g_p50), stat(&e_p50));
        report.row(
            &name,
            "p50 ms",
            fmt(g, 3),
            fmt(e, 3),
            format!("{:.2}×", g.median / e.median),
        );
        let (g, e) = (stat(&g_p99), stat(&e_p99));
        report.row(
            &name,
            "p99 ms",
            fmt(g, 3),
            fmt(e, 3),
            format!("{:.2}×", g.median / e.median),
        );
    }
    pin(std::process::id(), "0,1");
    let _ = echo.kill();
    let _ = echo.wait();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Fan-out

async fn fan_out(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let consumers = 1000usize;
    let rate = 100u64; // records per second
    let duration = Duration::from_secs_f64((10.0 * cli.scale).max(3.0));
    let kafka = broker.client().await;
    let topic = "fan-out";
    fixtures::create_topic(&kafka, topic, 1).await;
    let pc = Arc::new(
        kafka
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await?,
    );
    pc.produce(vec![fixtures::value("start")], Compression::NoCompression)
        .await?;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_toml = format!("[admin]\nlisten = \"{admin}\"\n");
    let gw = start_gateway(gateway_bin, 2, &broker.bootstrap, &admin_toml).await;
    progress(&format!(
        "3: {consumers} consumers tailing one partition, {rate} records/s for {:?}",
        duration
    ));
    let url = gw.ws_url("/kafka");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(200));
    for _ in 0..consumers {
        let (url, stop, fetches, gate) = (
            url.clone(),
            Arc::clone(&stop),
            Arc::clone(&fetches),
            Arc::clone(&gate),
        );
        tasks.spawn(async move {
            let mut client = {
                let _permit = gate.acquire().await;
                PubSubClient::connect(&url)
                    .await
                    .map_err(|e| eprintln!("connect: {e}"))
                    .ok()?
            };
            let mut offset = client
                .list_offset(topic, 0, -1)
                .await
                .map_err(|e| eprintln!("list: {e}"))
                .ok()?;
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let resp = client
                    .fetch_with(CmdKafkaFetch {
                        topic: topic.into(),
                        partition: 0,
                        offset,
                        max_bytes: 1 << 20,
                        max_wait_ms: 200,
                    })
                    .await
                    .map_err(|e| eprintln!("bench: consumer fetch: {e}"))
                    .ok()?;
                let now = fixtures::now_ms();
                for m in &resp.messages {
                    latencies.push(((now - m.timestamp).max(0) * 1000) as u32);
                    offset = m.offset + 1;
                }
            }
            let _ = client.close().await;
            Some(latencies)
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let every consumer connect
    let cpu0 = cpu_secs(gw.pid());
    let fetches0 = fetches.load(std::sync::atomic::Ordering::Relaxed);
    let broker0 = admin_counter(admin, "kafka_broker_fetches").await?;
    let started = Instant::now();
    let mut peak = rss_kib(gw.pid());
    let mut produced = 0u64;
    while started.elapsed() < duration {
        pc.produce(vec![fixtures::value("tick")], Compression::NoCompression)
            .await?;
        produced += 1;
        peak = peak.max(rss_kib(gw.pid()));
        let next = Duration::from_millis(produced * 1000 / rate);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(gw.pid()) - cpu0;
    let polls = fetches.load(std::sync::atomic::Ordering::Relaxed) - fetches0;
    let broker_fetches = admin_counter(admin, "kafka_broker_fetches").await? - broker0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    let mut connected = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(l)) = r {
            connected += 1;
            all.extend(l);
        }
    }
    all.sort_unstable();
    let name = format!("3. fan-out, {connected} consumers, {rate} rec/s");
    report.row(
        &name,
        "records delivered/s (all consumers)",
        format!("{:.0}", all.len() as f64 / secs),
        format!("{} produced × {connected}", produced),
        format!(
            "{:.0} %",
            all.len() as f64 / (produced as f64 * connected as f64) * 100.0
        ),
    );
    report.row(
        &name,
        "end-to-end latency p50 / p99 ms",
        format!(
            "{:.1} / {:.1}",
            percentile(&all, 0.5),
            percentile(&all, 0.99)
        ),
        "-".into(),
        "-".into(),
    );
    report.row(
        &name,
        "gateway CPU s / peak RSS MiB",
        format!("{cpu:.1} / {:.0}", peak as f64 / 1024.0),
        "-".into(),
        "-".into(),
    );
    report.row(
        &name,
        "fetch requests reaching the broker (baseline: client fetch commands)",
        format!("{broker_fetches} ({:.0}/s)", broker_fetches as f64 / secs),
        format!("{polls} ({:.0}/s)", polls as f64 / secs),
        format!(
            "{:.1} %",
            broker_fetches as f64 / polls.max(1) as f64 * 100.0
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Connection cost

async fn connection_cost(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let sessions = ((10_000.0 * cli.scale) as usize).max(100);
    let gw = start_gateway(gateway_bin, 2, &broker.bootstrap, "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_rest = rss_kib(gw.pid());
    let ping = streamgate_protocol::PubSubReq::new(
        1,
        streamgate_protocol::pub_sub_req::Req::CmdPing(streamgate_protocol::CmdPing {
            state: "x".into(),
        }),
    )
    .encode_to_vec();
    let (mut per_session, mut after, mut open_secs) = (vec![], vec![], vec![]);
    for round in 0..3 {
        progress(&format!(
            "4: round {}: opening {sessions} sessions",
            round + 1
        ));
        let started = Instant::now();
        let open =
            streamgate_testkit::sessions::open_sessions(gw.addr, "/kafka", sessions, &ping).await?;
        open_secs.push(started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let with_open = rss_kib(gw.pid());
        per_session.push((with_open.saturating_sub(at_rest)) as f64 / sessions as f64);
        progress(&format!(
            "4: round {}: {} KiB with {sessions} open; closing",
            round + 1,
            with_open
        ));
        streamgate_testkit::sessions::close_sessions(open).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        after.push(rss_kib(gw.pid()) as f64);
    }
    let name = format!("4. {sessions} idle pub/sub sessions");
    report.row(
        &name,
        "KiB per idle session (RSS over the process at rest)",
        fmt(stat(&per_session), 1),
        "10 KiB target; bare tokio-tungstenite 6.9".into(),
        "-".into(),
    );
    report.row(
        &name,
        "RSS MiB at rest / after rounds 1, 2, 3 closed",
        format!(
            "{:.1} / {}",
            at_rest as f64 / 1024.0,
            after
                .iter()
                .map(|k| format!("{:.1}", k / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "-".into(),
        format!("round 3 {:.0} % of round 1", after[2] / after[0] * 100.0),
    );
    report.row(
        &name,
        "seconds to open them all",
        fmt(stat(&open_secs), 2),
        "-".into(),
        "-".into(),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. HTTP proxying vs nginx

/// A `ProxyHttp` that only picks the one node: what Pingora costs before any gateway code. With
/// `duties`, it also does the work any proxy must (see [`Cmd::BarePingora`]), through the same
/// Pingora calls the gateway makes, so that the gateway's cost can be told from the cost of the
/// job itself.
struct BareProxy {
    node: SocketAddr,
    duties: bool,
}

#[async_trait::async_trait]
impl pingora::proxy::ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut pingora::proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        let mut peer = pingora::upstreams::peer::HttpPeer::new(self.node, false, String::new());
        if self.duties {
            // The gateway's defaults (`[upstreams.timeouts]`).
            peer.options.connection_timeout = Some(Duration::from_secs(6));
            peer.options.total_connection_timeout = Some(Duration::from_secs(6));
            peer.options.read_timeout = Some(Duration::from_secs(60));
            peer.options.write_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut pingora::proxy::Session,
        upstream: &mut pingora::http::RequestHeader,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        if !self.duties {
            return Ok(());
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let ip = http::HeaderValue::from_str(&ip.to_string())
                .map_err(|_| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
            upstream.insert_header("x-forwarded-for", ip.clone())?;
            upstream.insert_header("x-real-ip", ip)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned()
        {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }
}

/// Serves [`BareProxy`] until killed.
fn bare_pingora(listen: SocketAddr, node: SocketAddr, duties: bool) -> ! {
    let conf = pingora::server::configuration::ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(
        pingora::server::configuration::Opt::default(),
        conf,
    );
    server.bootstrap();
    let mut proxy =
        pingora::proxy::http_proxy_service(&server.configuration, BareProxy { node, duties });
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}

/// A child process, killed when dropped (also on an early return).
struct Running {
    child: std::process::Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(
    dir: &Path,
    name: &str,
    server_block: &str,
) -> Result<Running, Box<dyn std::error::Error>> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::create_dir_all(dir.join(format!("{name}-tmp")))?;
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log {dir}/{name}-error.log;\npid {dir}/{name}.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/{name}-tmp;\n  proxy_temp_path {dir}/{name}-tmp;\n  fastcgi_temp_path {dir}/{name}-tmp;\n  uwsgi_temp_path {dir}/{name}-tmp;\n  scgi_temp_path {dir}/{name}-tmp;\n  {server_block}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let child = Command::new("nginx")
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (apt-get install nginx)"))?;
    Ok(Running { child })
}

/// Runs wrk against `url`; returns (requests/s, p50 ms, p99 ms).
fn wrk(url: &str, seconds: u64) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c50",
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap_or(0.0)
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap_or(0.0) * 1000.0
        } else {
            0.0
        }
    };
    let mut rps = 0.0;
    let (mut p50, mut p99) = (0.0, 0.0);
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = ms(v);
        }
    }
    if rps == 0.0 || text.contains("Non-2xx") {
        return Err(format!("wrk against {url} failed:\n{text}").into());
    }
    Ok((rps, p50, p99))
}

async fn http_proxying(
    cli: &Cli,
    gateway_bin: &Path,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("streamgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1k"), vec![b'k'; 1024])?;
    std::fs::write(dir.join("www/1m"), vec![b'm'; 1 << 20])?;
    let origin_port = free_port();
    let nginx_port = free_port();
    let origin = nginx(
        &dir,
        "origin",
        &format!(
            "server {{ listen 127.0.0.1:{origin_port}; root {}/www; }}",
            dir.display()
        ),
    )?;
    let proxy = nginx(
        &dir,
        "proxy",
        &format!(
            "upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }} }}"
        ),
    )?;
    let spawn_bare = |duties: bool| -> Result<(SocketAddr, Running), Box<dyn std::error::Error>> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "bare-pingora",
            "--listen",
            &addr.to_string(),
            "--node",
            &format!("127.0.0.1:{origin_port}"),
        ]);
        if duties {
            cmd.arg("--duties");
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok((addr, Running { child }))
    };
    let (bare_addr, bare) = spawn_bare(false)?;
    let (duties_addr, duties) = spawn_bare(true)?;
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = [\"{gw_addr}\"]\nthreads = 1\n\n[[upstreams]]\nid = \"origin\"\nnodes = {{ \"127.0.0.1:{origin_port}\" = 1 }}\n\n[[routes]]\nid = \"all\"\nuri = \"/*\"\nupstream_id = \"origin\"\n"
    );
    let gw = GatewayProcess::start_with_env(
        gateway_bin,
        &config,
        gw_addr,
        &[("STREAMGATE_LOG", "warn")],
    )
    .await;
    streamgate_testkit::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], nginx_port)),
        Duration::from_secs(5),
    )
    .await?;
    streamgate_testkit::wait_for_port(bare_addr, Duration::from_secs(5)).await?;
    streamgate_testkit::wait_for_port(duties_addr, Duration::from_secs(5)).await?;
    // Proxies on core 0; origin and wrk on core 1.
    pin(gw.pid(), "0");
    pin(bare.child.id(), "0");
    pin(duties.child.id(), "0");
    pin(proxy.child.id(), "0");
    pin(origin.child.id(), "1");
    let seconds = ((5.0 * cli.scale) as u64).max(2);
    for file in ["1k", "1m"] {
        let (mut g, mut n, mut b, mut d) = (
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
            (vec![], vec![], vec![]),
        );
        for rep in 0..cli.reps {
            progress(&format!("5: {file}, repetition {}", rep + 1));
            let (r, p50, p99) = wrk(&format!("http://{gw_addr}/{file}"), seconds)?;
            g.0.push(r);
            g.1.push(p50);
            g.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://127.0.0.1:{nginx_port}/{file}"), seconds)?;
            n.0.push(r);
            n.1.push(p50);
            n.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://{bare_addr}/{file}"), seconds)?;
            b.0.push(r);
            b.1.push(p50);
            b.2.push(p99);
            let (r, p50, p99) = wrk(&format!("http://{duties_addr}/{file}"), seconds)?;
            d.0.push(r);
            d.1.push(p50);
            d.2.push(p99);
        }
        let name = format!("5. HTTP {file} responses, 50 conn.");
        for (baseline, base) in [
            ("nginx", &n),
            ("bare Pingora", &b),
            ("bare Pingora + duties", &d),
        ] {
            let (x, y) = (stat(&g.0), stat(&base.0));
            report.row(
                &name,
                &format!("requests/s (vs {baseline})"),
                fmt(x, 0),
                fmt(y, 0),
                format!("{:.0} %", x.median / y.median * 100.0),
            );
            let (x, y) = (stat(&g.1), stat(&base.1));
            report.row(
                &name,
                &format!("p50 ms (vs {baseline})"),
                fmt(x, 2),
                fmt(y, 2),
                format!("{:.2}×", x.median / y.median),
            );
            let (x, y) = (stat(&g.2), stat(&base.2));
            report.row(
                &name,
                &format!("p99 ms (vs {baseline})"),
                fmt(x, 2),
                fmt(y, 2),
                format!("{:.2}×", x.median / y.median),
            );
        }
    }
    drop(bare);
    drop(duties);
    drop(proxy);
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Push vs pull fan-out

/// How scenario 6's clients read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// One push subscription over every partition, credit granted in a window.
    Push,
    /// APISIX's loop: a fetch per partition per round trip (all partitions' fetches in flight).
    Pull,
    /// The same subscription as Server-Sent Events over plain HTTP/1.1.
    Sse,
}

/// What one fan-out run measured.
struct FanRun {
    delivered: u64,
    produced: u64,
    connected: usize,
    gateway_cpu: f64,
    latencies: Vec<u32>,
    broker_fetches: u64,
}

type BenchWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client WebSocket with small buffers (10,000 of them live in this process).
async fn bench_ws(addr: SocketAddr) -> Result<BenchWs, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/kafka"),
        tcp,
        Some(config),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn ws_send(ws: &mut BenchWs, req: streamgate_protocol::PubSubReq) -> Result<(), String> {
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        req.encode_to_vec().into(),
    ))
    .await
    .map_err(|e| e.to_string())
}

async fn ws_recv(ws: &mut BenchWs) -> Result<streamgate_protocol::PubSubResp, String> {
    loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(data))) => {
                return streamgate_protocol::PubSubResp::decode(data).map_err(|e| e.to_string())
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("connection ended: {other:?}")),
        }
    }
}

/// A scenario-6 reader of the Server-Sent Events stream (plain HTTP/1.1, no library).
async fn sse_client(
    addr: SocketAddr,
    topic: String,
    ready: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    from_ms: Arc<std::sync::atomic::AtomicI64>,
) -> Result<Vec<u32>, String> {
    let mut latencies = Vec::new();
    let permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET /kafka?topic={topic} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(permit);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut started = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Whole lines only; each `data:` line is one record.
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let lines: Vec<u8> = pending.drain(..=end).collect();
        for line in lines.split(|&b| b == b'\n') {
            if !started && line.starts_with(b"HTTP/1.1 200") {
                started = true;
                ready.add_permits(1);
            }
            if let Some(data) = line.strip_prefix(b"data: {") {
                let text = String::from_utf8_lossy(data);
                let Some(at) = text.find("\"timestamp\":") else {
                    continue;
                };
                let digits: String = text[at + 12..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if let Ok(timestamp) = digits.parse::<i64>() {
                    let start = from_ms.load(std::sync::atomic::Ordering::Relaxed);
                    if start > 0 && timestamp >= start {
                        latencies.push(((fixtures::now_ms() - timestamp).max(0) * 1000) as u32);
                    }
                }
            }
        }
    }
    Ok(latencies)
}

/// One client of scenario 6: reads every partition of `topic` until `stop`, keeping the
/// produce-to-client delay of each record produced in the window (after `from_ms`).
#[allow(clippy::too_many_arguments)]
async fn fan_client(
    addr: SocketAddr,
    topic: String,
    partitions: i32,
    mode: Mode,
    ready: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    from_ms: Arc<std::sync::atomic::AtomicI64>,
) -> Result<Vec<u32>, String> {
    use streamgate_protocol::{pub_sub_req::Req, pub_sub_resp::Resp, PubSubReq};
    if mode == Mode::Sse {
        return sse_client(addr, topic, ready, gate, stop, from_ms).await;
    }
    let mut ws = {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        bench_ws(addr).await?
    };
    let mut latencies = Vec::new();
    let mut keep = |m: &streamgate_protocol::KafkaMessage| {
        let start = from_ms.load(std::sync::atomic::Ordering::Relaxed);
        if start > 0 && m.timestamp >= start {
            latencies.push(((fixtures::now_ms() - m.timestamp).max(0) * 1000) as u32);
        }
    };
    match mode {
        Mode::Push => {
            const WINDOW: u32 = 1000;
            let subscribe = streamgate_protocol::CmdKafkaSubscribe {
                topic,
                credit_records: WINDOW,
                ..Default::default()
            };
            ws_send(
                &mut ws,
                PubSubReq::new(1, Req::CmdKafkaSubscribe(subscribe)),
            )
            .await?;
            match ws_recv(&mut ws).await?.resp {
                Some(Resp::KafkaSubscribeResp(_)) => {}
                other => return Err(format!("subscribe: {other:?}")),
            }
            ready.add_permits(1);
            let mut outstanding = WINDOW;
            let mut sequence = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(frame) =
                    tokio::time::timeout(Duration::from_millis(200), ws_recv(&mut ws)).await
                else {
                    continue;
                };
                let Some(Resp::KafkaRecordsPush(push)) = frame?.resp else {
                    continue;
                };
                for batch in &push.batches {
                    for m in &batch.messages {
                        keep(m);
                        outstanding -= 1;
                    }
                }
                if 2 * outstanding < WINDOW {
                    sequence += 1;
                    let credit = streamgate_protocol::CmdKafkaCredit {
                        subscription: 1,
                        records: WINDOW - outstanding,
                        bytes: 0,
                    };
                    ws_send(
                        &mut ws,
                        PubSubReq::new(sequence, Req::CmdKafkaCredit(credit)),
                    )
                    .await?;
                    outstanding = WINDOW;
                }
            }
        }
        Mode::Sse => unreachable!("event-stream clients are sse_client"),
        Mode::Pull => {
            let mut offsets = Vec::new();
            for p in 0..partitions {
                let list = streamgate_protocol::CmdKafkaListOffset {
                    topic: topic.clone(),
                    partition: p,
                    timestamp: -1,
                };
                ws_send(&mut ws, PubSubReq::new(1, Req::CmdKafkaListOffset(list))).await?;
                match ws_recv(&mut ws).await?.resp {
                    Some(Resp::KafkaListOffsetResp(r)) => offsets.push(r.offset),
                    other => return Err(format!("list offset: {other:?}")),
                }
            }
            ready.add_permits(1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Every partition's fetch in flight at once; answers come in any order.
                for (p, offset) in offsets.iter().enumerate() {
                    let fetch = CmdKafkaFetch {
                        topic: topic.clone(),
                        partition: p as i32,
                        offset: *offset,
                        max_bytes: 1 << 20,
                        max_wait_ms: 200,
                    };
                    ws_send(
                        &mut ws,
                        PubSubReq::new(p as i64 + 1, Req::CmdKafkaFetch(fetch)),
                    )
                    .await?;
                }
                for _ in 0..partitions {
                    let resp = ws_recv(&mut ws).await?;
                    let p = (resp.sequence - 1) as usize;
                    if let Some(Resp::KafkaFetchResp(r)) = resp.resp {
                        let from = offsets[p];
                        for m in r.messages.iter().filter(|m| m.offset >= from) {
                            keep(m);
                            offsets[p] = m.offset + 1;
                        }
                    }
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

/// One fan-out run: `subscribers` clients on a fresh `partitions`-partition topic while
/// `rate` records a second are produced for `duration`.
#[allow(clippy::too_many_arguments)]
async fn fan_run(
    gateway_bin: &Path,
    broker: &Broker,
    mode: Mode,
    subscribers: usize,
    partitions: i32,
    rate: u64,
    duration: Duration,
    run: usize,
) -> Result<FanRun, Box<dyn std::error::Error>> {
    let kafka = broker.client().await;
    let topic = format!("fan6-{mode:?}-{subscribers}-{partitions}-{run}").to_lowercase();
    fixtures::create_topic(&kafka, &topic, partitions).await;
    let mut producers = Vec::new();
    for p in 0..partitions {
        producers.push(
            kafka
                .partition_client(&topic, p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = start_gateway(
        gateway_bin,
        1,
        &broker.bootstrap,
        &format!("[admin]\nlisten = \"{admin}\"\n"),
    )
    .await;
    pin(gw.pid(), "0");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let from_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let ready = Arc::new(Semaphore::new(0));
    let gate = Arc::new(Semaphore::new(256));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..subscribers {
        clients.spawn(fan_client(
            gw.addr,
            topic.clone(),
            partitions,
            mode,
            Arc::clone(&ready),
            Arc::clone(&gate),
            Arc::clone(&stop),
            Arc::clone(&from_ms),
        ));
    }
    // Every client subscribed (or listed its offsets) before the window opens.
    let all_ready = ready.acquire_many(subscribers as u32);
    if tokio::time::timeout(Duration::from_secs(60), all_ready)
        .await
        .is_err()
    {
        return Err(format!("{mode:?}: not every client was ready within 60 s").into());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_secs(gw.pid());
    let broker0 = admin_counter(admin, "kafka_broker_fetches").await?;
    from_ms.store(fixtures::now_ms(), std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let mut produced = 0u64;
    while started.elapsed() < duration {
        let p = (produced % partitions as u64) as usize;
        producers[p]
            .produce(vec![fixtures::value("tick")], Compression::NoCompression)
            .await?;
        produced += 1;
        let next = Duration::from_micros(produced * 1_000_000 / rate);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    // The last records reach their readers.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let gateway_cpu = cpu_secs(gw.pid()) - cpu0;
    let broker_fetches = admin_counter(admin, "kafka_broker_fetches").await? - broker0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut connected = 0;
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok(Ok(l)) => {
                connected += 1;
                latencies.extend(l);
            }
            Ok(Err(e)) => eprintln!("bench: 6: a client failed: {e}"),
            Err(e) => eprintln!("bench: 6: a client task failed: {e}"),
        }
    }
    latencies.sort_unstable();
    Ok(FanRun {
        delivered: latencies.len() as u64,
        produced,
        connected,
        gateway_cpu,
        latencies,
        broker_fetches,
    })
}

async fn push_vs_pull(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    // The gateway gets core 0 (one worker thread), the clients core 1.
    pin(std::process::id(), "1");
    let duration = Duration::from_secs_f64((10.0 * cli.scale).max(3.0));
    let scaled = |n: usize| ((n as f64 * cli.scale) as usize).max(50);
    for (subscribers, partitions, rate) in [
        (scaled(1_000), 1, 100u64),
        (scaled(1_000), 8, 100),
        (scaled(10_000), 1, 20),
        (scaled(10_000), 8, 20),
    ] {
        let name = format!("6. {subscribers} subscribers, {partitions} partition(s), {rate} rec/s");
        let mut per_cpu = [Vec::new(), Vec::new(), Vec::new()];
        let mut p50 = [Vec::new(), Vec::new(), Vec::new()];
        let mut p99 = [Vec::new(), Vec::new(), Vec::new()];
        let mut fetches = [Vec::new(), Vec::new(), Vec::new()];
        let mut complete = [Vec::new(), Vec::new(), Vec::new()];
        // Event streams beside WebSocket push, at 1,000 readers of one partition.
        let with_sse = partitions == 1 && rate == 100;
        let modes: &[Mode] = if with_sse {
            &[Mode::Push, Mode::Pull, Mode::Sse]
        } else {
            &[Mode::Push, Mode::Pull]
        };
        for run in 0..cli.reps {
            for (i, &mode) in modes.iter().enumerate() {
                progress(&format!("{name}: {mode:?}, run {}", run + 1));
                let r = fan_run(
                    gateway_bin,
                    broker,
                    mode,
                    subscribers,
                    partitions,
                    rate,
                    duration,
                    run,
                )
                .await?;
                per_cpu[i].push(r.delivered as f64 / r.gateway_cpu.max(0.001));
                p50[i].push(percentile(&r.latencies, 0.5));
                p99[i].push(percentile(&r.latencies, 0.99));
                fetches[i].push(r.broker_fetches as f64 / duration.as_secs_f64());
                complete[i].push(
                    r.delivered as f64 / (r.produced as f64 * r.connected.max(1) as f64) * 100.0,
                );
                if r.connected < subscribers {
                    eprintln!(
                        "bench: 6: only {} of {subscribers} clients finished",
                        r.connected
                    );
                }
            }
        }
        if with_sse {
            let ratio = stat(&per_cpu[2]).median / stat(&per_cpu[0]).median.max(0.001);
            report.row(
                &name,
                "Server-Sent Events vs WebSocket push: records delivered per gateway CPU-second",
                fmt(stat(&per_cpu[2]), 0),
                fmt(stat(&per_cpu[0]), 0),
                format!("{ratio:.2}×"),
            );
            report.row(
                &name,
                "Server-Sent Events: produce-to-client p50 / p99 ms, delivered %",
                format!(
                    "{} / {}, {}",
                    fmt(stat(&p50[2]), 1),
                    fmt(stat(&p99[2]), 1),
                    fmt(stat(&complete[2]), 1)
                ),
                "-".into(),
                "-".into(),
            );
        }
        let ratio = stat(&per_cpu[0]).median / stat(&per_cpu[1]).median.max(0.001);
        report.row(
            &name,
            "records delivered per gateway CPU-second (push vs pull; target push ≥ 3×)",
            fmt(stat(&per_cpu[0]), 0),
            fmt(stat(&per_cpu[1]), 0),
            format!("{ratio:.1}×"),
        );
        report.row(
            &name,
            "produce-to-client p50 / p99 ms (push vs pull; target at 1,000: < 50 / < 200)",
            format!("{} / {}", fmt(stat(&p50[0]), 1), fmt(stat(&p99[0]), 1)),
            format!("{} / {}", fmt(stat(&p50[1]), 1), fmt(stat(&p99[1]), 1)),
            "-".into(),
        );
        report.row(
            &name,
            "broker fetches per second (push vs pull)",
            fmt(stat(&fetches[0]), 0),
            fmt(stat(&fetches[1]), 0),
            "-".into(),
        );
        report.row(
            &name,
            "records delivered of produced × clients, %",
            fmt(stat(&complete[0]), 1),
            fmt(stat(&complete[1]), 1),
            "-".into(),
        );
    }
    idle_subscription_cost(cli, gateway_bin, broker, report).await?;
    pin(std::process::id(), "0-1");
    Ok(())
}

/// RSS per paused subscription: connections holding one subscription with no credit, against
/// the same number of idle sessions, on the same gateway.
async fn idle_subscription_cost(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    use streamgate_protocol::{pub_sub_req::Req, PubSubReq};
    let sessions = ((10_000.0 * cli.scale) as usize).max(100);
    let kafka = broker.client().await;
    let topic = "fan6-idle";
    fixtures::create_topic(&kafka, topic, 1).await;
    let gw = start_gateway(gateway_bin, 2, &broker.bootstrap, "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ping = PubSubReq::new(
        1,
        Req::CmdPing(streamgate_protocol::CmdPing { state: "x".into() }),
    )
    .encode_to_vec();
    let subscribe = PubSubReq::new(
        1,
        Req::CmdKafkaSubscribe(streamgate_protocol::CmdKafkaSubscribe {
            topic: topic.into(),
            credit_records: 0,
            ..Default::default()
        }),
    )
    .encode_to_vec();
    let (mut idle, mut subscribed) = (Vec::new(), Vec::new());
    for _ in 0..cli.reps {
        for (hello, into) in [(&ping, &mut idle), (&subscribe, &mut subscribed)] {
            let before = rss_kib(gw.pid());
            let open =
                streamgate_testkit::sessions::open_sessions(gw.addr, "/kafka", sessions, hello)
                    .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            into.push(rss_kib(gw.pid()).saturating_sub(before) as f64 / sessions as f64);
            streamgate_testkit::sessions::close_sessions(open).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let per_sub: Vec<f64> = subscribed.iter().zip(&idle).map(|(s, i)| s - i).collect();
    report.row(
        &format!("6. {sessions} paused subscriptions"),
        "KiB per subscription with no credit, over an idle session (target ≤ 12)",
        fmt(stat(&per_sub), 1),
        format!("idle session {}", fmt(stat(&idle), 1)),
        "-".into(),
    );
    Ok(())
}
