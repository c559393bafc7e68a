//! 1. Consume throughput: through the gateway vs rskafka reading the broker directly.

use crate::{gateway::*, measure::*, report::*, Cli};

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use std::path::Path;
use std::time::Instant;
use streamgate_protocol::{CmdKafkaFetch, PubSubClient};
use streamgate_testkit::{fixtures, Broker};

pub(crate) async fn consume_throughput(
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
