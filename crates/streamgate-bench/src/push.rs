//! 6. Push vs pull fan-out: subscribers on one and on eight partitions, push subscriptions against APISIX's fetch loop.

use crate::{gateway::*, measure::*, report::*, Cli};
use futures_util::{SinkExt, StreamExt};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_protocol::{CmdKafkaFetch, Message as _};
use streamgate_testkit::{fixtures, free_port, Broker};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How scenario 6's clients read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// One push subscription over every partition, credit granted in a window.
    Push,
    /// APISIX's loop: a fetch per partition per round trip (all partitions' fetches in flight).
    Pull,
    /// The same subscription as Server-Sent Events over plain HTTP/1.1.
    Sse,
    /// Push as a consumer-group member, each client its own group (a user's "resume where I
    /// left off"), the gateway committing every auto_commit_interval_ms: what the group costs.
    Group,
}

/// Numbers each group client's group, so that no two share one (and no run reuses one).
static GROUP_NAMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What one fan-out run measured.
pub(crate) struct FanRun {
    pub(crate) delivered: u64,
    pub(crate) produced: u64,
    pub(crate) connected: usize,
    pub(crate) gateway_cpu: f64,
    pub(crate) latencies: Vec<u32>,
    pub(crate) broker_fetches: u64,
}

pub(crate) type BenchWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client WebSocket with small buffers (10,000 of them live in this process).
pub(crate) async fn bench_ws(addr: SocketAddr) -> Result<BenchWs, String> {
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

pub(crate) async fn ws_send(
    ws: &mut BenchWs,
    req: streamgate_protocol::PubSubReq,
) -> Result<(), String> {
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        req.encode_to_vec().into(),
    ))
    .await
    .map_err(|e| e.to_string())
}

pub(crate) async fn ws_recv(ws: &mut BenchWs) -> Result<streamgate_protocol::PubSubResp, String> {
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
pub(crate) async fn sse_client(
    addr: SocketAddr,
    topic: String,
    ready: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    from_ms: Arc<std::sync::atomic::AtomicI64>,
) -> Result<Vec<u32>, String> {
    let mut latencies = Vec::new();
    sse_timestamps(addr, topic, ready, gate, stop, |timestamp| {
        let start = from_ms.load(std::sync::atomic::Ordering::Relaxed);
        if start > 0 && timestamp >= start {
            latencies.push(((fixtures::now_ms() - timestamp).max(0) * 1000) as u32);
        }
    })
    .await?;
    Ok(latencies)
}

/// Reads the event stream `GET /kafka?topic={query}` (`query` may add more parameters) until
/// `stop`, handing each record's timestamp to `on_record`; one permit of `ready` once the
/// stream has started.
pub(crate) async fn sse_timestamps(
    addr: SocketAddr,
    query: String,
    ready: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut on_record: impl FnMut(i64),
) -> Result<(), String> {
    let permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET /kafka?topic={query} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
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
                    on_record(timestamp);
                }
            }
        }
    }
    Ok(())
}

/// One client of scenario 6: reads every partition of `topic` until `stop`, keeping the
/// produce-to-client delay of each record produced in the window (after `from_ms`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fan_client(
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
        Mode::Push | Mode::Group => {
            const WINDOW: u32 = 1000;
            let (group, commit) = if mode == Mode::Group {
                let n = GROUP_NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let auto = streamgate_protocol::cmd_kafka_subscribe::CommitMode::Auto;
                (format!("{}-{n}", std::process::id()), auto as i32)
            } else {
                (String::new(), 0)
            };
            let subscribe = streamgate_protocol::CmdKafkaSubscribe {
                topic,
                credit_records: WINDOW,
                group,
                commit,
                // Members start where plain subscriptions do: at the end of the log.
                from: streamgate_protocol::cmd_kafka_subscribe::StartFrom::Latest as i32,
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
                let push = match frame?.resp {
                    Some(Resp::KafkaRecordsPush(push)) => push,
                    Some(Resp::ErrorResp(e)) => return Err(format!("push ended: {e:?}")),
                    _ => continue,
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
pub(crate) async fn fan_run(
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

pub(crate) async fn push_vs_pull(
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
        let mut per_cpu: [Vec<f64>; 4] = Default::default();
        let mut p50: [Vec<f64>; 4] = Default::default();
        let mut p99: [Vec<f64>; 4] = Default::default();
        let mut fetches: [Vec<f64>; 4] = Default::default();
        let mut complete: [Vec<f64>; 4] = Default::default();
        // Event streams and group members beside WebSocket push, at 1,000 readers of one
        // partition.
        let with_sse = partitions == 1 && rate == 100;
        let modes: &[Mode] = if with_sse {
            &[Mode::Push, Mode::Pull, Mode::Sse, Mode::Group]
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
        if with_sse {
            let ratio = stat(&per_cpu[3]).median / stat(&per_cpu[0]).median.max(0.001);
            report.row(
                &name,
                "group members (a group each, AUTO commits) vs plain push: records delivered per gateway CPU-second (target ≥ 0.9×)",
                fmt(stat(&per_cpu[3]), 0),
                fmt(stat(&per_cpu[0]), 0),
                format!("{ratio:.2}×"),
            );
            report.row(
                &name,
                "group members: produce-to-client p50 / p99 ms, delivered %",
                format!(
                    "{} / {}, {}",
                    fmt(stat(&p50[3]), 1),
                    fmt(stat(&p99[3]), 1),
                    fmt(stat(&complete[3]), 1)
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
    group_hand_over(cli, gateway_bin, broker, report).await?;
    idle_subscription_cost(cli, gateway_bin, broker, report).await?;
    pin(std::process::id(), "0-1");
    Ok(())
}

/// How long a group member's partitions go unread when it leaves: two members of one group
/// over 8 partitions while records are produced to all of them (200 a second); one closes, and
/// the time from its close to the first record of one of its partitions at the other member.
async fn group_hand_over(
    cli: &Cli,
    gateway_bin: &Path,
    broker: &Broker,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    use streamgate_protocol::{
        cmd_kafka_subscribe::CommitMode, pub_sub_req::Req, pub_sub_resp::Resp, CmdKafkaSubscribe,
        PubSubReq,
    };
    const PARTITIONS: i32 = 8;
    let gw = start_gateway(gateway_bin, 1, &broker.bootstrap, "").await;
    let kafka = broker.client().await;
    let mut took = Vec::new();
    for run in 0..cli.reps {
        progress(&format!("6. group hand-over, run {}", run + 1));
        let topic = format!("handover-{}-{run}", std::process::id());
        fixtures::create_topic(&kafka, &topic, PARTITIONS).await;
        let mut producers = Vec::new();
        for p in 0..PARTITIONS {
            producers.push(
                kafka
                    .partition_client(&topic, p, UnknownTopicHandling::Retry)
                    .await?,
            );
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producing = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = n % producers.len();
                    let _ = producers[p]
                        .produce(vec![fixtures::value("tick")], Compression::NoCompression)
                        .await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let group = format!("handover-{}-{run}", std::process::id());
        let subscribe = |topic: &str| CmdKafkaSubscribe {
            topic: topic.to_string(),
            credit_records: 1_000_000,
            group: group.clone(),
            commit: CommitMode::Auto as i32,
            ..Default::default()
        };
        let mut a = bench_ws(gw.addr).await?;
        ws_send(
            &mut a,
            PubSubReq::new(1, Req::CmdKafkaSubscribe(subscribe(&topic))),
        )
        .await?;
        let mut b = bench_ws(gw.addr).await?;
        ws_send(
            &mut b,
            PubSubReq::new(1, Req::CmdKafkaSubscribe(subscribe(&topic))),
        )
        .await?;
        // B's answer holds B's partitions; A then reads until it holds the other half.
        let b_parts: Vec<i32> = loop {
            match ws_recv(&mut b).await?.resp {
                Some(Resp::KafkaSubscribeResp(r)) => {
                    break r.partitions.iter().map(|p| p.partition).collect()
                }
                Some(Resp::ErrorResp(e)) => return Err(format!("subscribe: {e:?}").into()),
                _ => continue,
            }
        };
        let mut a_parts: Vec<i32> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while a_parts.len() + b_parts.len() != PARTITIONS as usize
            || a_parts.iter().any(|p| b_parts.contains(p))
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "the members did not split the partitions: {a_parts:?} {b_parts:?}"
                )
                .into());
            }
            match tokio::time::timeout(Duration::from_secs(1), ws_recv(&mut a)).await {
                Ok(Ok(frame)) => match frame.resp {
                    Some(Resp::KafkaSubscribeResp(r)) => {
                        a_parts = r.partitions.iter().map(|p| p.partition).collect()
                    }
                    Some(Resp::KafkaAssignment(r)) => {
                        a_parts = r.assigned.iter().map(|p| p.partition).collect()
                    }
                    _ => {}
                },
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        // Both read for a second, then B closes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let closed = Instant::now();
        let _ = b.close(None).await;
        drop(b);
        let handed = loop {
            if closed.elapsed() > Duration::from_secs(30) {
                return Err("B's partitions never reached A".into());
            }
            let frame = match tokio::time::timeout(Duration::from_secs(1), ws_recv(&mut a)).await {
                Ok(frame) => frame?,
                Err(_) => continue,
            };
            if let Some(Resp::KafkaRecordsPush(push)) = frame.resp {
                let from_b = push
                    .batches
                    .iter()
                    .any(|batch| b_parts.contains(&batch.partition) && !batch.messages.is_empty());
                if from_b {
                    break closed.elapsed();
                }
            }
        };
        took.push(handed.as_secs_f64() * 1000.0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = producing.await;
        let _ = a.close(None).await;
    }
    report.row(
        "6. group hand-over, 2 members, 8 partitions, 200 rec/s",
        "ms from a member's close to its partitions' records at the other member",
        fmt(stat(&took), 0),
        "-".into(),
        "-".into(),
    );
    Ok(())
}

/// RSS per paused subscription: connections holding one subscription with no credit, against
/// the same number of idle sessions, on the same gateway.
pub(crate) async fn idle_subscription_cost(
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
