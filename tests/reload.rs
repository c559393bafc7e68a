//! Live reload on SIGHUP through the real gateway: a valid file takes effect for new requests
//! and sessions, and open sessions are re-checked against it; an invalid one changes nothing.

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
async fn sighup_applies_a_valid_file_and_rechecks_open_sessions() {
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
    // A session that has read nothing yet.
    let mut idle = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert_eq!(&idle.ping("a").await.unwrap()[..], b"a");

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

    // The session that read "first", which the new allow-list leaves out, is closed with 1008
    // and the reason; the other goes on under the new allow-list, as a new session does.
    match before.ping("x").await {
        Err(streamgate_protocol::ClientError::Closed(Some(reason))) => assert!(
            reason.starts_with("1008") && reason.contains("\"first\" is no longer allowed"),
            "{reason}"
        ),
        other => panic!("the session that read a revoked topic must be closed: {other:?}"),
    }
    assert_eq!(
        &idle.ping("still").await.unwrap()[..],
        b"still",
        "not dropped"
    );
    assert!(forbidden(&mut idle, "first").await);
    assert!(!forbidden(&mut idle, "second").await);
    let mut after = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert!(forbidden(&mut after, "first").await);
    assert!(!forbidden(&mut after, "second").await);
}

#[tokio::test]
async fn a_reload_ends_sessions_of_removed_or_changed_credentials() {
    let broker = Broker::start().await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "orders", 1).await;
    let addr = listen_addr();
    let config = |bob_key: Option<&str>| {
        let mut text = format!(
            "{}{}{}[routes.plugins.key-auth]\n\n[[consumers]]\nusername = \"alice\"\n[consumers.plugins.key-auth]\nkey = \"alice-key-0123456789\"\n\n",
            server_toml(addr),
            kafka_upstream("kafka", &broker.bootstrap, ""),
            kafka_route("kafka", "/kafka", "kafka", ""),
        );
        if let Some(key) = bob_key {
            text.push_str(&format!("[[consumers]]\nusername = \"bob\"\n[consumers.plugins.key-auth]\nkey = \"{key}\"\n"));
        }
        text
    };
    let gw = GatewayProcess::start(binary(), &config(Some("bob-key-0123456789")), addr).await;
    let url = |key: &str| gw.ws_url(&format!("/kafka?apikey={key}"));
    let mut alice = PubSubClient::connect(&url("alice-key-0123456789"))
        .await
        .unwrap();
    let mut bob = PubSubClient::connect(&url("bob-key-0123456789"))
        .await
        .unwrap();
    assert_eq!(bob.list_offset("orders", 0, -2).await.unwrap(), 0);

    let closed = |reason: Result<bytes::Bytes, streamgate_protocol::ClientError>| match reason {
        Err(streamgate_protocol::ClientError::Closed(Some(r))) => r,
        other => panic!("expected a close: {other:?}"),
    };
    // Bob's key changes: his open session ends; Alice's goes on.
    gw.reload(&config(Some("bob-new-key-0123456789")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("a reload revoked a pub/sub session") {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = closed(bob.ping("b").await);
    assert!(
        reason.starts_with("1008")
            && reason.contains("\"bob\" or its credentials were removed or changed"),
        "{reason}"
    );
    assert_eq!(&alice.ping("a").await.unwrap()[..], b"a");
    let mut bob = PubSubClient::connect(&url("bob-new-key-0123456789"))
        .await
        .unwrap();
    assert_eq!(&bob.ping("b").await.unwrap()[..], b"b");
    // Bob is removed: his new session ends too.
    gw.reload(&config(None));
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bob.ping("b").await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return closed(other),
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert!(reason.starts_with("1008"), "{reason}");
    assert_eq!(&alice.ping("a").await.unwrap()[..], b"a");
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

    // A WebSocket relayed by the old process, open across the upgrade.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(old.ws_url("/ws/echo"))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));

    let new = GatewayProcess::start_upgrade(binary(), &config, addr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    // The old process keeps relaying while it drains...
    ws.send(Message::text("draining")).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
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
    // ...and its WebSocket ends with it (the client reconnects), while a new one opens on the
    // new process.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the old WebSocket ends when its process does");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let (mut fresh, _) = tokio_tungstenite::connect_async(new.ws_url("/ws/echo"))
        .await
        .expect("a WebSocket opens on the new process");
    fresh.send(Message::text("after")).await.unwrap();
    assert!(matches!(fresh.next().await, Some(Ok(Message::Text(_)))));
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
