//! HTTP edge proxying through the real gateway binary, to real upstream servers on loopback,
//! with a real HTTP client.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use streamgate_testkit::{free_port, GatewayProcess, TestCa, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn upstream_toml(id: &str, nodes: &[(String, u32)], extra: &str) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(n, w)| format!("\"{n}\" = {w}"))
        .collect();
    format!(
        "[[upstreams]]\nid = \"{id}\"\nnodes = {{ {} }}\n{extra}\n",
        nodes.join(", ")
    )
}

fn route_toml(id: &str, uri: &str, upstream: &str, extra: &str) -> String {
    format!("[[routes]]\nid = \"{id}\"\nuri = \"{uri}\"\nupstream_id = \"{upstream}\"\n{extra}\n")
}

async fn start(config_body: &str) -> GatewayProcess {
    let addr = listen_addr();
    GatewayProcess::start(
        binary(),
        &format!("{}{config_body}", server_toml(addr)),
        addr,
    )
    .await
}

async fn name_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    body["name"].as_str().unwrap_or_default().to_string()
}

fn node(u: &Upstream) -> String {
    u.addr.to_string()
}

#[tokio::test]
async fn route_precedence_exact_prefix_host_method_priority() {
    let (a, b, c, d) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    );
    let config = [
        upstream_toml("a", &[(node(&a), 1)], ""),
        upstream_toml("b", &[(node(&b), 1)], ""),
        upstream_toml("c", &[(node(&c), 1)], ""),
        upstream_toml("d", &[(node(&d), 1)], ""),
        route_toml("prefix", "/api/*", "a", ""),
        route_toml("exact", "/api/health", "b", ""),
        route_toml("post", "/api/*", "c", "methods = [\"POST\"]\npriority = 5"),
        route_toml(
            "tenant",
            "/api/*",
            "d",
            "hosts = [\"*.tenant.test\"]\npriority = 1",
        ),
    ]
    .concat();
    let gw = start(&config).await;
    let http = client();
    assert_eq!(
        name_of(http.get(gw.http_url("/api/x")).send().await.unwrap()).await,
        "a"
    );
    assert_eq!(
        name_of(http.get(gw.http_url("/api/health")).send().await.unwrap()).await,
        "b"
    );
    assert_eq!(
        name_of(http.post(gw.http_url("/api/x")).send().await.unwrap()).await,
        "c"
    );
    let tenant = http
        .get(gw.http_url("/api/x"))
        .header("host", "shop.tenant.test")
        .send()
        .await
        .unwrap();
    assert_eq!(name_of(tenant).await, "d");
    let not_found = http.get(gw.http_url("/nope")).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    assert_eq!(not_found.headers()["content-type"], "application/json");
    assert_eq!(
        not_found.text().await.unwrap(),
        r#"{"error_msg":"404 Route Not Found"}"#
    );
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = start(
        &[
            upstream_toml("ab", &[(node(&a), 1), (node(&b), 3)], ""),
            route_toml("r", "/*", "ab", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *counts
            .entry(name_of(http.get(gw.http_url("/")).send().await.unwrap()).await)
            .or_default() += 1;
    }
    let (na, nb) = (counts["a"], counts["b"]);
    assert!(
        (90..=110).contains(&na) && (290..=310).contains(&nb),
        "1:3 weights gave {counts:?}"
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_node() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = start(
        &[
            upstream_toml(
                "ab",
                &[(node(&a), 1), (node(&b), 1)],
                "type = \"chash\"\nhash_on = \"header\"\nkey = \"x-user\"",
            ),
            route_toml("r", "/*", "ab", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    let mut seen = std::collections::HashSet::new();
    // 40 keys: with two equal nodes on a ring built from random ports, six keys all landed on
    // one node in a few percent of runs; 40 do so about once in 10^11.
    for user in (0..40).map(|i| format!("user-{i}")) {
        let first = name_of(
            http.get(gw.http_url("/"))
                .header("x-user", &user)
                .send()
                .await
                .unwrap(),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(
                name_of(
                    http.get(gw.http_url("/"))
                        .header("x-user", &user)
                        .send()
                        .await
                        .unwrap()
                )
                .await,
                first
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "forty keys use both nodes");
}

#[tokio::test]
async fn a_down_node_is_skipped_by_retrying_another() {
    let live = Upstream::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = start(
        &[
            upstream_toml("u", &[(node(&live), 1), (dead.clone(), 1)], "retries = 1"),
            route_toml("r", "/*", "u", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(
            name_of(http.get(gw.http_url("/")).send().await.unwrap()).await,
            "live"
        );
    }
    assert!(gw.log().contains(&dead), "the failed node is logged");
}

#[tokio::test]
async fn every_node_down_is_a_502_with_a_json_body_and_a_log_line() {
    let dead = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let gw = start(
        &[
            upstream_toml(
                "down",
                &[(dead[0].clone(), 1), (dead[1].clone(), 1)],
                "retries = 1",
            ),
            route_toml("r", "/*", "down", ""),
        ]
        .concat(),
    )
    .await;
    let resp = client().get(gw.http_url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error_msg":"502 Bad Gateway"}"#
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("proxying failed"))
        .unwrap_or_else(|| panic!("no failure line in:\n{log}"));
    assert!(
        line.contains("route=\"r\"") || line.contains("route=r"),
        "{line}"
    );
    assert!(
        line.contains("down") && (line.contains(&dead[0]) || line.contains(&dead[1])),
        "{line}"
    );
}

#[tokio::test]
async fn an_upstream_timeout_is_a_504() {
    let slow = Upstream::start("slow").await;
    let gw = start(
        &[
            upstream_toml("slow", &[(node(&slow), 1)], "timeout = { read = 0.3 }"),
            route_toml("r", "/*", "slow", ""),
        ]
        .concat(),
    )
    .await;
    let started = std::time::Instant::now();
    let resp = client()
        .get(gw.http_url("/sleep/3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error_msg":"504 Gateway Timeout"}"#
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_checks_take_a_node_out_and_bring_it_back() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let checks = "[upstreams.health_check]\npath = \"/healthz\"\ninterval_seconds = 0.2\ntimeout_seconds = 0.5\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let gw = start(
        &[
            upstream_toml("ab", &[(node(&a), 1), (node(&b), 1)], checks),
            route_toml("r", "/*", "ab", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    let spread = |http: reqwest::Client, url: String| async move {
        let mut seen = HashMap::<String, usize>::new();
        for _ in 0..20 {
            *seen
                .entry(name_of(http.get(&url).send().await.unwrap()).await)
                .or_default() += 1;
        }
        seen
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        spread(http.clone(), gw.http_url("/")).await.len(),
        2,
        "both healthy at first"
    );
    b.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = spread(http.clone(), gw.http_url("/")).await;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["a"],
        "b is out: {seen:?}"
    );
    b.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(spread(http, gw.http_url("/")).await.len(), 2, "b is back");
}

/// An upstream of one node takes a shorter way to its node than Pingora's selector: it must
/// still follow the node's health and never retry the node that just failed.
#[tokio::test]
async fn a_lone_node_is_left_when_its_health_checks_fail_and_not_retried_when_down() {
    let lone = Upstream::start("lone").await;
    let checks = "[upstreams.health_check]\npath = \"/healthz\"\ninterval_seconds = 0.2\ntimeout_seconds = 0.5\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = start(
        &[
            upstream_toml("checked", &[(node(&lone), 1)], checks),
            route_toml("checked", "/checked/*", "checked", ""),
            upstream_toml("down", &[(dead.clone(), 1)], "retries = 2"),
            route_toml("down", "/down/*", "down", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), gw.http_url(path));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status("/checked/x").await, 200, "healthy at first");
    lone.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        status("/checked/x").await,
        502,
        "out after failing its checks"
    );
    lone.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(status("/checked/x").await, 200, "back");

    assert_eq!(status("/down/x").await, 502);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    let attempts = log
        .lines()
        .filter(|l| l.contains("connecting to the upstream node failed"))
        .count();
    assert_eq!(attempts, 1, "the one node is tried once:\n{log}");
    assert!(log.contains("no other healthy node to retry on"), "{log}");
}

#[tokio::test]
async fn forwarded_headers_and_host_policies() {
    let u = Upstream::start("u").await;
    let config = [
        upstream_toml("pass", &[(node(&u), 1)], ""),
        upstream_toml("node", &[(node(&u), 1)], "pass_host = \"node\""),
        upstream_toml(
            "rewrite",
            &[(node(&u), 1)],
            "pass_host = \"rewrite\"\nupstream_host = \"internal.example\"",
        ),
        route_toml("pass", "/pass", "pass", ""),
        route_toml("node", "/node", "node", ""),
        route_toml("rewrite", "/rewrite", "rewrite", ""),
    ]
    .concat();
    let gw = start(&config).await;
    let http = client();
    let get = |path: &str| {
        http.get(gw.http_url(path))
            .header("host", "shop.example:8443")
            .header("x-forwarded-for", "203.0.113.7")
            .send()
    };
    let body: serde_json::Value = get("/pass").await.unwrap().json().await.unwrap();
    let h = &body["headers"];
    // The client is no trusted proxy: what it wrote there is replaced, not passed on.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example:8443");
    assert_eq!(h["host"], "shop.example:8443");
    let body: serde_json::Value = get("/node").await.unwrap().json().await.unwrap();
    assert_eq!(body["headers"]["host"], node(&u));
    let body: serde_json::Value = get("/rewrite").await.unwrap().json().await.unwrap();
    assert_eq!(body["headers"]["host"], "internal.example");

    // Behind a trusted proxy (a load balancer on loopback here) its list is kept and appended to.
    let addr = listen_addr();
    let trusted = server_toml(addr).replace(
        "\n\n",
        "\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n\n",
    );
    let gw = GatewayProcess::start(binary(), &format!("{trusted}{config}"), addr).await;
    let body: serde_json::Value = http
        .get(gw.http_url("/pass"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
}

#[tokio::test]
async fn fifty_mib_bodies_stream_both_ways_without_growing_memory() {
    let u = Upstream::start("u").await;
    let gw = start(
        &[
            upstream_toml("u", &[(node(&u), 1)], ""),
            route_toml("r", "/*", "u", ""),
        ]
        .concat(),
    )
    .await;
    let http = client();
    let before = gw.rss_kib();
    let mut resp = http
        .get(gw.http_url("/bytes/52428800"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut total = 0usize;
    let mut peak = before;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len();
        if total % (8 << 20) < chunk.len() {
            peak = peak.max(gw.rss_kib());
        }
    }
    assert_eq!(total, 50 << 20);
    // An upload streamed from a generator, never held whole by the client either.
    let chunks = futures_util::stream::iter(
        (0..800).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'u'; 64 * 1024]))),
    );
    let resp = http
        .post(gw.http_url("/count"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    peak = peak.max(gw.rss_kib());
    assert_eq!(resp.text().await.unwrap(), (800 * 64 * 1024).to_string());
    assert!(
        peak.saturating_sub(before) < 16 * 1024,
        "gateway RSS grew {} KiB while streaming 50 MiB",
        peak - before
    );
}

#[tokio::test]
async fn https_upstreams_verify_against_the_configured_ca() {
    let ca = TestCa::new();
    let secure = Upstream::start_tls("secure", &ca).await;
    let other_ca = TestCa::new();
    let config = [
        upstream_toml(
            "good",
            &[(format!("127.0.0.1:{}", secure.addr.port()), 1)],
            &format!(
                "scheme = \"https\"\n[upstreams.tls]\nca_file = \"{}\"",
                ca.ca_file().display()
            ),
        ),
        upstream_toml(
            "wrong",
            &[(format!("127.0.0.1:{}", secure.addr.port()), 1)],
            &format!(
                "scheme = \"https\"\n[upstreams.tls]\nca_file = \"{}\"",
                other_ca.ca_file().display()
            ),
        ),
        route_toml("good", "/good", "good", ""),
        route_toml("wrong", "/wrong", "wrong", ""),
    ]
    .concat();
    let gw = start(&config).await;
    let http = client();
    assert_eq!(
        name_of(http.get(gw.http_url("/good")).send().await.unwrap()).await,
        "secure"
    );
    let resp = http.get(gw.http_url("/wrong")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    // WebSocket upgrades take the same TLS settings.
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/good"))
        .await
        .expect("upgrade to the https node");
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = ws.next().await;
    assert!(
        matches!(echoed, Some(Ok(Message::Text(ref t))) if t.as_str() == "over tls"),
        "{echoed:?}\n{}",
        gw.log()
    );
    match tokio_tungstenite::connect_async(gw.ws_url("/wrong")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("an untrusted node is a 502 for upgrades too: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The failed attempt's own log line names the certificate problem (not just any line
    // that mentions TLS: the start-up line does).
    let log = gw.log();
    assert!(
        log.lines().any(|l| {
            let l = l.to_lowercase();
            l.contains("connecting to the upstream node failed")
                && (l.contains("certificate") || l.contains("unknownissuer"))
        }),
        "clear TLS log:\n{log}"
    );
}

#[tokio::test]
async fn a_tls_listener_serves_https_and_http2() {
    let ca = TestCa::new();
    let u = Upstream::start("u").await;
    let plain = listen_addr();
    let tls: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "{}[[server.tls_listen]]\naddress = \"{tls}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}{}",
        server_toml(plain),
        ca.cert_file().display(),
        ca.key_file().display(),
        upstream_toml("u", &[(node(&u), 1)], ""),
        route_toml("r", "/*", "u", "")
    );
    let _gw = GatewayProcess::start(binary(), &config, plain).await;
    streamgate_testkit::wait_for_port(tls, Duration::from_secs(5))
        .await
        .unwrap();
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = https
        .get(format!("https://localhost:{}/x", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn websocket_upgrades_to_an_http_upstream_are_relayed() {
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let u = Upstream::start("ws").await;
    let gw = start(
        &[
            upstream_toml("ws", &[(node(&u), 1)], ""),
            route_toml("r", "/*", "ws", ""),
        ]
        .concat(),
    )
    .await;
    // Fifty in a row: Pingora 0.9's own upgrade path ended some tunnels right after the 101
    // when the node answered fast (cloudflare/pingora#946), a few percent under test load.
    for i in 0..50 {
        let (mut ws, resp) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
            .await
            .expect("upgrade through the gateway");
        assert_eq!(resp.status(), 101);
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo within 5 s");
        assert!(
            matches!(echoed, Some(Ok(Message::Text(ref t))) if t.as_str() == text),
            "upgrade {i}: {echoed:?}\ngateway log:\n{}",
            gw.log()
        );
        ws.close(None).await.unwrap();
    }

    // The node's first message right behind its 101, the forwarding headers it was sent, and
    // a 1 MiB message each way.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/greet"))
        .await
        .expect("upgrade");
    let greeting = match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        other => panic!("no greeting: {other:?}"),
    };
    let greeting: serde_json::Value = serde_json::from_str(greeting.as_str()).unwrap();
    assert_eq!(greeting["name"], "ws");
    assert_eq!(greeting["headers"]["upgrade"], "websocket");
    assert_eq!(greeting["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(greeting["headers"]["x-forwarded-proto"], "http");
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => assert!(b[..] == big[..], "1 MiB echoed intact"),
        other => panic!("no echo of 1 MiB: {other:?}"),
    }

    // A node that refuses the upgrade: its answer reaches the client as it is.
    match tokio_tungstenite::connect_async(gw.ws_url("/ws/refuse")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            assert_eq!(
                resp.body().as_deref(),
                Some(&b"no WebSocket for you"[..]),
                "the node's body is passed on"
            );
        }
        other => panic!("expected the node's 403, got {other:?}"),
    }
    assert!(
        gw.wait_log("status=403", Duration::from_secs(5)).await,
        "the refusal is in the access log:\n{}",
        gw.log()
    );
}

#[tokio::test]
async fn upgrade_requests_retry_a_dead_node_and_idle_tunnels_close() {
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let u = Upstream::start("ws").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let admin = listen_addr();
    let gw = start(
        &[
            format!("[admin]\nlisten = \"{admin}\"\n\n"),
            upstream_toml(
                "ws",
                &[(node(&u), 1), (dead.clone(), 1)],
                "retries = 1\ntimeout = { read = 1 }",
            ),
            route_toml("r", "/ws/*", "ws", ""),
            upstream_toml("gone", &[(dead, 1)], ""),
            route_toml("gone", "/gone", "gone", ""),
        ]
        .concat(),
    )
    .await;
    // Round robin puts half of the first attempts on the dead node: each is retried.
    for _ in 0..6 {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
            .await
            .expect("the live node takes the upgrade");
        ws.send(Message::text("hi")).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    }
    // No node at all: the JSON 502 the HTTP path gives.
    match tokio_tungstenite::connect_async(gw.ws_url("/gone")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 502);
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error_msg"], "502 Bad Gateway");
        }
        other => panic!("expected 502, got {other:?}"),
    }

    // Traffic keeps a tunnel open past the read timeout; silence closes it.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    assert_eq!(
        settled(admin, "streamgate_tunnels", 1.0).await,
        1.0,
        "the gauge counts it"
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text("still here")).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    }
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the idle tunnel is closed within 5 s");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)) | Ok(Message::Binary(_)))),
        "{end:?}"
    );
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "closed after {idle:?} of silence, expected about 1 s"
    );
    assert_eq!(settled(admin, "streamgate_tunnels", 0.0).await, 0.0);
}

#[tokio::test]
async fn a_tunnel_ends_at_max_tunnel_seconds_whatever_its_traffic() {
    use tokio_tungstenite::tungstenite::Message;
    let u = Upstream::start("ws").await;
    let addr = listen_addr();
    let config = format!(
        "{}{}{}",
        server_toml(addr).replace("\n\n", "\n[server.limits]\nmax_tunnel_seconds = 1\n\n"),
        upstream_toml("ws", &[(node(&u), 1)], "timeout = { read = 30 }"),
        route_toml("r", "/ws/*", "ws", ""),
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Busy the whole time: only the cap can end it.
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        if ws.send(Message::text("busy")).await.is_err() {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => break started.elapsed(),
        }
    };
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(3),
        "closed after {ended:?}, expected about 1 s"
    );
    assert!(
        gw.log().contains("max_tunnel_seconds reached"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn dot_segments_are_refused() {
    let u = Upstream::start("u").await;
    let gw = start(
        &[
            upstream_toml("u", &[(node(&u), 1)], ""),
            route_toml("r", "/public/*", "u", ""),
        ]
        .concat(),
    )
    .await;
    for path in ["/public/../admin", "/public/%2e%2e/admin"] {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(u.hits(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn sigterm_with_relayed_websockets_open_exits_and_closes_them() {
    use tokio_tungstenite::tungstenite::Message;
    let u = Upstream::start("ws").await;
    let mut gw = start(
        &[
            upstream_toml("ws", &[(node(&u), 1)], ""),
            route_toml("r", "/*", "ws", ""),
        ]
        .concat(),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    gw.signal("TERM");
    // grace_period_seconds = 1 and graceful_shutdown_timeout_seconds = 1 in these tests.
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "a clean exit with a tunnel open:\n{}",
        gw.log()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the client learns the connection is gone");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)) | Ok(Message::Binary(_)))),
        "{end:?}"
    );
}
