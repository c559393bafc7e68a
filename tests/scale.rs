//! 10,000 pub/sub sessions against the real gateway, three times over: each session is answered,
//! an idle session stays cheap, and memory returns to the baseline after they close.
//!
//! The sessions' client side lives in this test process and the gateway in its own, so each
//! process holds about 10,000 descriptors (the machine's limit is 20,000).

mod common;

use common::*;
use std::time::{Duration, Instant};
use streamgate_protocol::{pub_sub_req::Req, CmdPing, Message as _, PubSubReq};
use streamgate_testkit::{sessions, Broker};

const SESSIONS: usize = 10_000;

/// The soft open-files limit of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_three_times_and_memory_returns_to_baseline() {
    let limit = open_files_limit();
    assert!(
        limit >= SESSIONS as u64 + 1_000,
        "this test needs {} open files per process; the limit is {limit}: raise it (ulimit -n)",
        SESSIONS + 1_000
    );
    let broker = Broker::start().await;
    let admin = listen_addr();
    let extra =
        format!("[admin]\nlisten = \"{admin}\"\n[server.limits]\nmax_connections_per_ip = 20000\n");
    let gw = gateway_for(&broker, "", &extra).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_rest = gw.rss_kib();
    let ping = PubSubReq::new(1, Req::CmdPing(CmdPing { state: "x".into() })).encode_to_vec();

    let mut report = Vec::new();
    for round in 1..=3 {
        let started = Instant::now();
        let open = sessions::open_sessions(gw.addr, "/kafka", SESSIONS, &ping)
            .await
            .expect("every session opens and answers its ping");
        let opened_in = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with_open = gw.rss_kib();

        sessions::close_sessions(open).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .expect("readyz")
                .text()
                .await
                .expect("body");
            if text.contains("pubsub_sessions 0\n") {
                break;
            }
            assert!(Instant::now() < deadline, "sessions end: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // jemalloc returns freed pages after its 1 s decay.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = gw.rss_kib();
        let per_session = (with_open.saturating_sub(at_rest)) as f64 / SESSIONS as f64;
        println!(
            "round {round}: opened {SESSIONS} in {:.2} s; at rest {at_rest} KiB, open {with_open} KiB ({per_session:.1} KiB/session), after close {after} KiB",
            opened_in.as_secs_f64()
        );
        report.push((per_session, after));
    }
    for (round, (per_session, _)) in report.iter().enumerate() {
        assert!(
            *per_session <= 12.0,
            "round {}: an idle session costs {per_session:.1} KiB",
            round + 1
        );
    }
    let first = report[0].1 as f64;
    let last = report[2].1 as f64;
    assert!(
        last <= first * 1.10,
        "RSS after round 3 ({last} KiB) is within 10% of round 1 ({first} KiB)"
    );
    assert!(
        last <= (at_rest + 16 * 1024) as f64,
        "RSS after close ({last} KiB) returns near the process at rest ({at_rest} KiB)"
    );
}
