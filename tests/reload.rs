//! Live reload on SIGHUP through the real gateway: a valid file takes effect for new requests
//! and sessions while open sessions keep their settings; an invalid one changes nothing.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use streamgate_protocol::{ErrorCode, PubSubClient};
use streamgate_testkit::{fixtures, Broker, GatewayProcess, Upstream};

fn config(addr: SocketAddr, broker: &Broker, web: &Upstream, route_b: bool, topic: &str) -> String {
    let mut text = format!(
        "{}[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"a\"\nuri = \"/a\"\nupstream_id = \"web\"\n\n{}{}",
        server_toml(addr),
        web.addr,
        kafka_upstream("kafka", &broker.bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", &format!("topics = [\"{topic}\"]")),
    );
    if route_b {
        text.push_str("[[routes]]\nid = \"b\"\nuri = \"/b\"\nupstream_id = \"web\"\n");
    }
    text
}

async fn status(gw: &GatewayProcess, path: &str) -> u16 {
    http()
        .get(gw.http_url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn forbidden(c: &mut PubSubClient, topic: &str) -> bool {
    matches!(c.list_offset(topic, 0, -2).await, Err(e) if e.code() == Some(ErrorCode::Forbidden))
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_keeps_open_sessions_on_their_settings() {
    let broker = Broker::start().await;
    let client = broker.client().await;
    for topic in ["first", "second"] {
        fixtures::create_topic(&client, topic, 1).await;
    }
    let (one, two) = (Upstream::start("one").await, Upstream::start("two").await);
    let addr = listen_addr();
    let gw =
        GatewayProcess::start(binary(), &config(addr, &broker, &one, false, "first"), addr).await;
    assert_eq!(status(&gw, "/b").await, 404);
    let mut before = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert!(!forbidden(&mut before, "first").await);

    gw.reload(&config(addr, &broker, &two, true, "second"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&gw, "/b").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the new route appears:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body: serde_json::Value = get_json(&gw.http_url("/a")).await;
    assert_eq!(
        body["name"], "two",
        "the route now goes to the new upstream"
    );
    assert!(gw.log().contains("configuration reloaded"));

    // The open session keeps the allow-list it started with; a new one gets the new list.
    assert!(
        !forbidden(&mut before, "first").await,
        "an open session keeps its settings"
    );
    assert!(forbidden(&mut before, "second").await);
    let mut after = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert!(forbidden(&mut after, "first").await);
    assert!(!forbidden(&mut after, "second").await);
    assert_eq!(
        &before.ping("still").await.unwrap()[..],
        b"still",
        "no connection was dropped"
    );
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_every_problem_is_logged() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let good = config(addr, &broker, &web, true, "first");
    let gw = GatewayProcess::start(binary(), &good, addr).await;
    let mut session = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();

    let broken = good.replace("uri = \"/b\"", "uri = \"b\"").replace(
        "upstream_id = \"web\"\n\n[[upstreams]]",
        "upstream_id = \"nowhere\"\n\n[[upstreams]]",
    );
    gw.reload(&broken);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("configuration reload refused") {
        assert!(
            Instant::now() < deadline,
            "the refusal is logged:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.log();
    assert!(
        log.contains("routes[2].uri") || log.contains("routes[1].uri"),
        "{log}"
    );
    assert!(log.contains("nowhere"), "every problem is named:\n{log}");
    assert_eq!(
        status(&gw, "/b").await,
        200,
        "the old configuration stays in force"
    );
    assert_eq!(status(&gw, "/a").await, 200);
    assert_eq!(&session.ping("ok").await.unwrap()[..], b"ok");

    // A file that is not TOML at all: the same.
    gw.reload("[server\nlisten = ");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&gw, "/b").await, 200);
    assert_eq!(gw.log().matches("configuration reload refused").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_hands_the_listener_over_without_failing_a_request() {
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}upgrade_sock = \"{}\"\n\n[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"a\"\nuri = \"/*\"\nupstream_id = \"web\"\n",
        server_toml(addr),
        dir.path().join("upgrade.sock").display(),
        web.addr
    );
    let mut old = GatewayProcess::start(binary(), &config, addr).await;

    // Requests flow the whole time, each on a fresh connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = old.http_url("/x");
    let flow = tokio::spawn({
        let stop = std::sync::Arc::clone(&stop);
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = GatewayProcess::start_upgrade(binary(), &config, addr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    assert!(
        new.wait_log("started", Duration::from_secs(15)).await,
        "the new process took the listener over:\n{}",
        new.log()
    );
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "the old process leaves:\n{}",
        old.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = flow.await.unwrap();
    assert!(
        failed.is_empty(),
        "no request failed during the upgrade ({ok} ok): {failed:?}"
    );
    assert!(ok > 50, "{ok} requests");
    assert!(
        new.log().contains("streamgate::access"),
        "the new process serves:\n{}",
        new.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_lets_requests_finish_and_closes_sessions_with_1001() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let text = config(addr, &broker, &web, true, "first")
        + "[[routes]]\nid = \"slow\"\nuri = \"/sleep/*\"\nupstream_id = \"web\"\n";
    let mut gw = GatewayProcess::start(binary(), &text, addr).await;
    let mut session = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    session.ping("x").await.unwrap();
    // Requests in flight when the signal comes: each takes 600 ms at the upstream.
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = gw.http_url("/sleep/600");
        slow.spawn(async move {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.terminate();
    while let Some(done) = slow.join_next().await {
        let resp = done.unwrap().expect("an in-flight request is answered");
        assert_eq!(resp.status(), 200, "an in-flight request completes");
    }
    match session.ping("y").await {
        Err(streamgate_protocol::ClientError::Closed(Some(reason))) => {
            assert!(reason.starts_with("1001"), "{reason}")
        }
        other => panic!("the session is closed with 1001: {other:?}"),
    }
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn with_reload_on_change_an_edited_file_is_applied_without_a_signal() {
    let broker = Broker::start().await;
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let watched = |route_b: bool| {
        config(addr, &broker, &web, route_b, "first").replacen(
            "[server]\n",
            "[server]\nreload_on_change = true\n",
            1,
        )
    };
    let gw = GatewayProcess::start(binary(), &watched(false), addr).await;
    assert_eq!(status(&gw, "/b").await, 404);
    std::fs::write(gw.config_path(), watched(true)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&gw, "/b").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the edit is picked up:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw
        .log()
        .contains("the file changed: reloading the configuration"));
}
