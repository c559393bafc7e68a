//! Several gateways behind a plain TCP load balancer serve as one: two gateway processes behind a
//! real HAProxy (Debian's package), a producer writing all along, readers through the balancer
//! (WebSocket push subscribers resuming from their cursors, `curl` reading Server-Sent Events,
//! restarted with `Last-Event-ID`, and Chromium's own `EventSource` on the events page, which
//! reconnects by itself), and one gateway killed (SIGKILL) and restarted three times,
//! alternating. Every reader ends with exactly the produced sequence: nothing lost, nothing
//! repeated. No gateway keeps state a restart would lose.

mod common;

use common::balancer::Balancer;
use common::*;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use streamgate_protocol::{
    cmd_kafka_subscribe::StartFrom, pub_sub_resp::Resp, CmdKafkaSubscribe, PubSubClient,
};
use streamgate_testkit::{
    fixtures, unique_topic, Broker, BrokerOptions, Engine, GatewayConfig, GatewayProcess,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const PARTITIONS: i32 = 2;
const PER_PARTITION: usize = 150;

/// What a reader received, per partition, in order.
type Received = Arc<Mutex<Vec<Vec<String>>>>;

/// A gateway at `addr` with its admin listener at `admin` (HAProxy checks `/readyz` there), the
/// pub/sub route `/kafka` and the demo pages from `web` on every other path.
fn config(broker: &Broker, addr: SocketAddr, admin: SocketAddr, web: SocketAddr) -> String {
    GatewayConfig::on(addr)
        .admin(admin)
        .kafka_upstream("kafka", &broker.bootstrap, "")
        .kafka_route("kafka", "/kafka", "kafka", "")
        .table(&format!(
            "[[upstreams]]\nid = \"web\"\nnodes = {{ \"{web}\" = 1 }}"
        ))
        .table("[[routes]]\nid = \"web\"\nuri = \"/*\"\nupstream_id = \"web\"")
        .to_toml()
}

/// Subscribes through the balancer and resumes from the last cursor after every drop.
async fn push_reader(
    url: String,
    topic: String,
    got: Received,
    done: Arc<std::sync::atomic::AtomicBool>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut cursor = String::new();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut c) = PubSubClient::connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let subscribe = CmdKafkaSubscribe {
            topic: topic.clone(),
            from: StartFrom::Earliest as i32,
            cursor: cursor.clone(),
            credit_records: 1_000_000,
            ..Default::default()
        };
        if c.subscribe(subscribe).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        loop {
            let frame = match tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
                Err(_) if done.load(std::sync::atomic::Ordering::Relaxed) => return,
                Err(_) => continue,
                Ok(Err(_)) => break,
                Ok(Ok(frame)) => frame,
            };
            if let Some(Resp::KafkaRecordsPush(push)) = frame.resp {
                let mut got = got.lock().unwrap();
                for b in &push.batches {
                    for m in &b.messages {
                        got[b.partition as usize]
                            .push(String::from_utf8_lossy(&m.value).into_owned());
                    }
                }
                cursor = push.cursor;
            }
        }
    }
}

/// Reads the event stream with curl through the balancer; after every drop, curl again with
/// `Last-Event-ID` (as EventSource does).
async fn curl_reader(
    url: String,
    got: Received,
    done: Arc<std::sync::atomic::AtomicBool>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut last_id = String::new();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sN", "--max-time", "30", "-H", "Accept: text/event-stream"]);
        if !last_id.is_empty() {
            cmd.args(["-H", &format!("Last-Event-ID: {last_id}")]);
        }
        let Ok(mut child) = cmd
            .arg(&url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        else {
            return;
        };
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut id = None;
        loop {
            let line =
                match tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
                    Err(_) if done.load(std::sync::atomic::Ordering::Relaxed) => return,
                    Err(_) => continue,
                    Ok(Ok(Some(line))) => line,
                    Ok(_) => break,
                };
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let record: serde_json::Value = match serde_json::from_str(data) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if let (Some(p), Some(v)) = (record["partition"].as_i64(), record["value"].as_str())
                {
                    got.lock().unwrap()[p as usize].push(v.to_string());
                }
                // An event's id counts once its data is taken.
                if let Some(id) = id.take() {
                    last_id = id;
                }
            } else if line.is_empty() {
                if let Some(id) = id.take() {
                    last_id = id;
                }
            }
        }
        let _ = child.kill().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_behind_haproxy_serve_as_one_through_kills_and_restarts() {
    let broker = Broker::start_with(BrokerOptions {
        engine: Engine::Sqlite,
        ..Default::default()
    })
    .await;
    let kafka = broker.client().await;
    let topic = unique_topic("scale-out");
    fixtures::create_topic(&kafka, &topic, PARTITIONS).await;

    let pages = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
    assert!(
        pages.join("dist/events.html").exists() && pages.join("node_modules/playwright-core").exists(),
        "the demo pages are not built: run `make test` (or `npm ci && npm run build` in examples/web)"
    );
    let files = streamgate_testkit::Upstream::start_static(&pages.join("dist")).await;
    let gateways: Vec<(SocketAddr, SocketAddr)> =
        (0..2).map(|_| (listen_addr(), listen_addr())).collect();
    let mut running = Vec::new();
    for (addr, admin) in &gateways {
        let config = config(&broker, *addr, *admin, files.addr);
        running.push(GatewayProcess::start(binary(), &config, *addr).await);
    }
    // The balancer: TCP only, health checks on /readyz, a refused connection tried elsewhere.
    let balancer = Balancer::start(&gateways).await;
    let lb = balancer.addr;

    // Readers: two push subscribers and two curl event streams, all through the balancer.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let got: Received = Arc::new(Mutex::new(vec![Vec::new(); PARTITIONS as usize]));
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kind = if i < 2 { "push" } else { "curl" };
        readers.push((kind, Arc::clone(&got), Arc::clone(&connects)));
        let done = Arc::clone(&done);
        tasks.push(if i < 2 {
            tokio::spawn(push_reader(
                format!("ws://{lb}/kafka"),
                topic.clone(),
                got,
                done,
                connects,
            ))
        } else {
            tokio::spawn(curl_reader(
                format!("http://{lb}/kafka?topic={topic}&from=earliest"),
                got,
                done,
                connects,
            ))
        });
    }

    // Chromium's EventSource on the events page, through the balancer.
    let browser = tokio::process::Command::new("node")
        .arg(pages.join("test/events-reader.mjs"))
        .arg(format!(
            "http://{lb}/events.html?route=/kafka&topic={topic}&from=earliest"
        ))
        .arg((PER_PARTITION * PARTITIONS as usize).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (make test installs it)");
    // Let the page open its stream before the first kill.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The producer writes all along.
    let producer = {
        let kafka = broker.client().await;
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for p in 0..PARTITIONS {
                clients.push(
                    kafka
                        .partition_client(
                            &topic,
                            p,
                            rskafka::client::partition::UnknownTopicHandling::Error,
                        )
                        .await
                        .unwrap(),
                );
            }
            for i in 0..PER_PARTITION {
                for (p, client) in clients.iter().enumerate() {
                    client
                        .produce(
                            vec![fixtures::value(&format!("{p}-{i}"))],
                            rskafka::client::partition::Compression::NoCompression,
                        )
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Kill and restart one gateway, three times, alternating.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let i = round % 2;
        running[i].signal("KILL");
        assert!(
            running[i].wait_exit(Duration::from_secs(5)).await.is_some(),
            "gateway {i} died"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (addr, admin) = gateways[i];
        running[i] =
            GatewayProcess::start(binary(), &config(&broker, addr, admin, files.addr), addr).await;
    }
    producer.await.unwrap();

    let want: Vec<Vec<String>> = (0..PARTITIONS)
        .map(|p| (0..PER_PARTITION).map(|i| format!("{p}-{i}")).collect())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let complete = readers
            .iter()
            .all(|(_, got, _)| got.lock().unwrap().iter().all(|l| l.len() >= PER_PARTITION));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(balancer);
    let output = tokio::time::timeout(Duration::from_secs(100), browser.wait_with_output())
        .await
        .expect("the browser reader finished")
        .unwrap();
    assert!(
        output.status.success(),
        "the browser reader: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("JSON from the page");
    let opens = seen["opens"].as_u64().unwrap_or(0);
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = seen["received"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == p)
            .map(|r| r[1].as_i64().unwrap())
            .collect();
        assert_eq!(
            offsets,
            (0..PER_PARTITION as i64).collect::<Vec<_>>(),
            "Chromium's EventSource, partition {p} ({opens} connections): exactly the produced offsets"
        );
    }
    println!("Chromium's EventSource connected {opens} times");
    assert!(
        opens > 1,
        "the browser lost its gateway and came back: {opens} connections"
    );
    let reconnects: Vec<(&str, usize)> = readers
        .iter()
        .map(|(kind, _, c)| (*kind, c.load(std::sync::atomic::Ordering::Relaxed)))
        .collect();
    println!("connections per reader: {reconnects:?}");
    for kind in ["push", "curl"] {
        assert!(
            reconnects.iter().any(|(k, n)| *k == kind && *n > 1),
            "a {kind} reader lost its gateway and came back through the balancer: {reconnects:?}"
        );
    }
    for (kind, got, _) in &readers {
        let got = got.lock().unwrap();
        for p in 0..PARTITIONS as usize {
            assert_eq!(
                got[p].len(),
                PER_PARTITION,
                "{kind} reader, partition {p}: {} records (a gap or a repeat)",
                got[p].len()
            );
            assert_eq!(
                got[p], want[p],
                "{kind} reader, partition {p}: exactly the produced sequence"
            );
        }
    }
}
