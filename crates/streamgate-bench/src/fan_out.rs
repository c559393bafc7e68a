//! 3. Fan-out: 1,000 consumers tailing one partition while a producer appends.

use crate::{gateway::*, measure::*, report::*, Cli};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_protocol::{CmdKafkaFetch, PubSubClient};
use streamgate_testkit::{fixtures, free_port, Broker};
use tokio::sync::Semaphore;

pub(crate) async fn fan_out(
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
