//! 4. Connection cost: RSS per idle pub/sub session, over three open/close rounds.

use crate::{gateway::*, measure::*, report::*, Cli};

use std::path::Path;
use std::time::{Duration, Instant};
use streamgate_protocol::Message as _;
use streamgate_testkit::Broker;

pub(crate) async fn connection_cost(
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
