//! Faults under load, through the real gateway: the broker killed and restarted while 100
//! sessions read from it.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamgate_protocol::{ErrorCode, PubSubClient};
use streamgate_testkit::{fixtures, Broker, BrokerOptions, Engine};

const SESSIONS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_100_sessions_gives_clear_errors_and_they_all_recover() {
    let mut broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "orders", 1).await;
    let first = (0..10)
        .map(|i| fixtures::value(&format!("before-{i}")))
        .collect();
    fixtures::produce_each(&client, "orders", 0, first).await;
    drop(client);
    let admin = listen_addr();
    let extra = format!("[admin]\nlisten = \"{admin}\"\n");
    let gw = gateway_for(&broker, "socket_timeout_ms = 1000", &extra).await;
    let pid = gw.pid();

    // Each session tails the partition; it records every error class it is answered with and
    // stops once it has read offset 19 (ten records produced after the restart).
    let errors = Arc::new(std::sync::Mutex::new(Vec::<(
        usize,
        Option<ErrorCode>,
        String,
    )>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut sessions = tokio::task::JoinSet::new();
    for session in 0..SESSIONS {
        let url = gw.ws_url("/kafka");
        let (errors, done) = (Arc::clone(&errors), Arc::clone(&done));
        sessions.spawn(async move {
            let mut c = PubSubClient::connect(&url).await.expect("connect");
            let mut next = 0;
            while next < 20 {
                match c.fetch("orders", 0, next).await {
                    Ok(batch) => {
                        for m in &batch.messages {
                            assert_eq!(m.offset, next, "records arrive in order without gaps");
                            next += 1;
                        }
                    }
                    Err(e) => {
                        let class = e.code();
                        errors.lock().unwrap().push((session, class, e.to_string()));
                        assert!(
                            class.is_some(),
                            "a Kafka failure is an error_resp, the session stays: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    broker.stop();
    let stopped = Instant::now();
    // Not a count of errors (one session could answer for all): each session must hear of it.
    let heard = || {
        let errors = errors.lock().unwrap();
        errors
            .iter()
            .map(|(session, _, _)| *session)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    while heard() < SESSIONS && stopped.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = heard();
    assert_eq!(
        during, SESSIONS,
        "every session hears of the outage ({during} of {SESSIONS} did)"
    );

    broker.restart().await;
    let client = broker.client().await;
    let after = (10..20)
        .map(|i| fixtures::value(&format!("after-{i}")))
        .collect();
    fixtures::produce_each(&client, "orders", 0, after).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "{} of {SESSIONS} sessions recovered",
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(joined) = sessions.join_next().await {
        joined.expect("a session task");
    }
    assert_eq!(gw.pid(), pid, "no gateway restart");
    let errors = errors.lock().unwrap();
    for (_, class, message) in errors.iter() {
        assert!(
            matches!(
                class,
                Some(ErrorCode::Unavailable | ErrorCode::KafkaError | ErrorCode::NotFound)
            ),
            "a broker outage reads as one: {message}"
        );
        assert!(
            message.starts_with("failed to fetch message, topic: orders, partition: 0, err: "),
            "{message}"
        );
    }
    let unavailable = errors
        .iter()
        .filter(|(_, c, _)| *c == Some(ErrorCode::Unavailable))
        .count();
    assert!(
        unavailable * 2 >= errors.len(),
        "mostly UNAVAILABLE: {unavailable} of {}",
        errors.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_node_costs_few_requests_and_every_failure_is_clear() {
    use streamgate_testkit::{GatewayProcess, Upstream};
    let steady = Upstream::start("steady").await;
    let mut flappy = Upstream::start("flappy").await;
    let addr = listen_addr();
    let admin = listen_addr();
    let config = format!(
        "{}[admin]\nlisten = \"{admin}\"\n\n[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1, \"{}\" = 1 }}\nretries = 1\ntimeout = {{ connect = 1, send = 5, read = 5 }}\n[upstreams.health_check]\npath = \"/healthz\"\ninterval_seconds = 0.2\nhealthy_threshold = 1\nunhealthy_threshold = 1\n\n[[routes]]\nid = \"web\"\nuri = \"/*\"\nupstream_id = \"web\"\n",
        server_toml(addr),
        steady.addr,
        flappy.addr
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;

    // The node goes down (connections dropped, port closed) and up every 300 ms while requests
    // flow on four concurrent clients.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flapping = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut flaps = 0;
            while !stop.load(Ordering::SeqCst) {
                flappy.stop();
                tokio::time::sleep(Duration::from_millis(300)).await;
                flappy.restart().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                flaps += 1;
            }
            (flappy, flaps)
        }
    });
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = gw.http_url("/x");
        clients.spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let (mut served, mut failures) = (
                std::collections::HashMap::<String, usize>::new(),
                Vec::new(),
            );
            for _ in 0..250 {
                let started = Instant::now();
                let resp = http
                    .get(&url)
                    .send()
                    .await
                    .expect("the gateway always answers");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "no request hangs"
                );
                let status = resp.status().as_u16();
                let body: serde_json::Value = resp.json().await.expect("a JSON body");
                if status == 200 {
                    *served
                        .entry(body["name"].as_str().unwrap_or("").to_string())
                        .or_default() += 1;
                } else {
                    failures.push((status, body.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (served, failures)
        });
    }
    let (mut served, mut failures) = (
        std::collections::HashMap::<String, usize>::new(),
        Vec::new(),
    );
    while let Some(done) = clients.join_next().await {
        let (s, f) = done.expect("a client");
        for (k, v) in s {
            *served.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    stop.store(true, Ordering::SeqCst);
    let (_flappy, flaps) = flapping.await.unwrap();
    assert!(flaps >= 2, "the node flapped {flaps} times");
    for (status, body) in &failures {
        assert_eq!(*status, 502, "a failure is a clear 502: {body}");
        assert!(body.contains("502 Bad Gateway"), "{body}");
    }
    assert!(
        failures.len() <= 20,
        "{} of 1,000 requests failed: {failures:?}",
        failures.len()
    );
    assert!(served.get("steady").copied().unwrap_or(0) > 0, "{served:?}");
    assert!(
        served.get("flappy").copied().unwrap_or(0) > 0,
        "the node served between flaps: {served:?}"
    );
    println!(
        "flapping: served {served:?}, {} failures, {flaps} flaps",
        failures.len()
    );

    // Back for good: health checks put it back in rotation.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut names = std::collections::HashSet::new();
    for _ in 0..20 {
        let body: serde_json::Value = get_json(&gw.http_url("/x")).await;
        names.insert(body["name"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(names.len(), 2, "both nodes serve again: {names:?}");
}
