//! Requests an attacker would send at the edge, through the real gateway binary, to real
//! upstreams, written as raw HTTP so that no client library normalises them first.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use streamgate_testkit::{GatewayProcess, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "admin-key-0123456789";

/// A public `/*` route and a `key-auth` route `/admin/*` on one upstream, a host-bound route,
/// and a consumer with a key.
fn config(addr: SocketAddr, web: &Upstream, servlet: bool) -> String {
    format!(
        "{server}normalize_uri_like_servlet = {servlet}\n\n\
         [[upstreams]]\nid = \"web\"\nnodes = {{ \"{node}\" = 1 }}\n\n\
         [[routes]]\nid = \"public\"\nuri = \"/*\"\nupstream_id = \"web\"\n\n\
         [[routes]]\nid = \"admin\"\nuri = \"/admin/*\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\n\n\
         [[routes]]\nid = \"tenant\"\nuri = \"/tenant/*\"\nhosts = [\"api.example\"]\nupstream_id = \"web\"\n\n\
         [[consumers]]\nusername = \"ops\"\n[consumers.plugins.key-auth]\nkey = \"{KEY}\"\n",
        server = server_toml(addr),
        node = web.addr,
    )
}

/// Sends `head` (request line and headers, without the final blank line) and returns the
/// status and body of the answer (a 101 has none; other bodies are read by `Content-Length`).
async fn raw(gw: &GatewayProcess, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let request = if head.contains("\r\n\r\n") {
        head.to_string()
    } else {
        format!("{head}\r\n\r\n")
    };
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((headers, body)) = text.split_once("\r\n\r\n") {
                let length = headers
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if headers.starts_with("HTTP/1.1 101") || body.len() >= length {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn get(gw: &GatewayProcess, target: &str, extra: &str) -> (u16, String) {
    raw(
        gw,
        &format!("GET {target} HTTP/1.1\r\nHost: gw.test{extra}"),
    )
    .await
}

/// The path the node saw, from the test upstream's JSON answer.
fn node_path(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).expect("the node's JSON answer");
    json["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn spellings_of_a_protected_path_cannot_dodge_its_route() {
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let gw = GatewayProcess::start(binary(), &config(addr, &web, false), addr).await;

    // Each names /admin/x to the node; each must meet the admin route's key-auth.
    for dodge in ["//admin/x", "/%61dmin/x", "/ad%6Din//x", "/admin/%78"] {
        let (status, body) = get(&gw, dodge, "").await;
        assert_eq!(status, 401, "{dodge} reached {body}");
    }
    assert_eq!(web.hits(), 0, "the node saw none of them");

    // With the key, the node gets the normalised path and the query as sent.
    let (status, body) = get(&gw, "//ad%6Din/x?q=%2F", &format!("\r\napikey: {KEY}")).await;
    assert_eq!(status, 200);
    assert_eq!(node_path(&body), "/admin/x?q=%2F");

    // What cannot be normalised safely is refused, naming why.
    for (path, why) in [
        ("/admin%2fx", "encoded `/` (%2F)"),
        ("/admin%2Fx", "encoded `/` (%2F)"),
        ("/admin%5cx", "encoded backslash (%5C)"),
        ("/admin%00", "encoded NUL (%00)"),
        ("/admin\\x", "backslash"),
        ("/admin%zz", "malformed `%` escape"),
        ("/public/../admin/x", "`.` or `..` segments"),
        ("/public/%2e%2E/admin/x", "`.` or `..` segments"),
    ] {
        let (status, body) = get(&gw, path, "").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
    assert_eq!(
        web.hits(),
        1,
        "only the request with the key reached the node"
    );

    // Other escapes are passed on as written; case matters, as in nginx.
    let (status, body) = get(&gw, "/a%20b/%C3%A9", "").await;
    assert_eq!(status, 200);
    assert_eq!(node_path(&body), "/a%20b/%C3%A9");
    let (status, _) = get(&gw, "/ADMIN/x", "").await;
    assert_eq!(status, 200, "/ADMIN is another path");

    // A trailing dot names the same host.
    for host in ["api.example", "api.example.", "api.example.:9080"] {
        let (status, body) = raw(&gw, &format!("GET /tenant/x HTTP/1.1\r\nHost: {host}")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _) = raw(&gw, "GET /tenant/x HTTP/1.1\r\nHost: api.example..").await;
    assert_eq!(status, 200, "served by the public route, not the tenant's");

    // `;` path parameters: matched as written by default...
    let (status, body) = get(&gw, "/admin;jsessionid=1/x", "").await;
    assert_eq!(status, 200);
    assert_eq!(node_path(&body), "/admin;jsessionid=1/x");
}

#[tokio::test]
async fn servlet_normalisation_matches_without_path_parameters() {
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let gw = GatewayProcess::start(binary(), &config(addr, &web, true), addr).await;
    // ...and, for Java nodes that ignore them, matched without them when asked to.
    let (status, _) = get(&gw, "/admin;jsessionid=1/x", "").await;
    assert_eq!(status, 401);
    let (status, body) = get(&gw, "/admin;a=1/x", &format!("\r\napikey: {KEY}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        node_path(&body),
        "/admin;a=1/x",
        "the node gets the parameters"
    );
    let (status, body) = get(&gw, "/public/..;/admin/x", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(web.hits(), 1);
}

/// A node that answers every request with `answer` and reports what it received.
async fn scripted_node(answer: &'static str) -> (SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = vec![0u8; 4096];
                let n = stream.read(&mut seen).await.unwrap_or(0);
                seen.truncate(n);
                let _ = stream.write_all(answer.as_bytes()).await;
                // Whatever follows the 101 (an HTTP/2 preface, say) is reported too.
                let mut more = vec![0u8; 4096];
                if let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_millis(300), stream.read(&mut more)).await
                {
                    seen.extend_from_slice(&more[..m]);
                }
                let _ = tx.send(seen).await;
            });
        }
    });
    (addr, rx)
}

fn http_route_to(node: SocketAddr, addr: SocketAddr) -> String {
    format!(
        "{}[[upstreams]]\nid = \"n\"\nnodes = {{ \"{node}\" = 1 }}\n\n[[routes]]\nid = \"r\"\nuri = \"/*\"\nupstream_id = \"n\"\n",
        server_toml(addr)
    )
}

const WS_HEAD: &str = "GET /ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

#[tokio::test]
async fn only_websocket_upgrades_are_relayed_and_only_to_a_node_that_completes_them() {
    // A node that switches to anything it is asked for.
    let (node, mut seen) = scripted_node(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let addr = listen_addr();
    let gw = GatewayProcess::start(binary(), &http_route_to(node, addr), addr).await;

    // h2c: refused before the node, so no HTTP/2 stream can ride past the routes.
    let (status, body) = raw(
        &gw,
        "GET / HTTP/1.1\r\nHost: gw.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("only WebSocket upgrades"), "{body}");
    // Any other Upgrade, and a WebSocket handshake with a body, too.
    let (status, _) = raw(
        &gw,
        "GET / HTTP/1.1\r\nHost: gw.test\r\nUpgrade: foo\r\nConnection: Upgrade",
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = raw(
        &gw,
        &format!("{WS_HEAD}\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(seen.try_recv().is_err(), "the node saw none of them");

    // A WebSocket handshake goes to the node without HTTP2-Settings; its 101 does not complete
    // the handshake (no Sec-WebSocket-Accept, Upgrade: h2c), so the client gets a 502 and no
    // relay starts.
    let (status, body) = raw(&gw, &format!("{WS_HEAD}\r\nHTTP2-Settings: AAMAAABk")).await;
    assert_eq!(status, 502, "{body}");
    let request =
        String::from_utf8_lossy(&seen.recv().await.expect("the node saw it")).to_lowercase();
    assert!(request.contains("upgrade: websocket"), "{request}");
    assert!(!request.contains("http2-settings"), "{request}");
}

#[tokio::test]
async fn a_101_with_the_wrong_accept_key_is_not_relayed() {
    let (node, _seen) = scripted_node(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
    )
    .await;
    let addr = listen_addr();
    let gw = GatewayProcess::start(binary(), &http_route_to(node, addr), addr).await;
    let (status, body) = raw(&gw, WS_HEAD).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        gw.log().contains("without a valid WebSocket handshake"),
        "{}",
        gw.log()
    );

    // The right key is relayed (RFC 6455's example pair).
    let (node, _seen) = scripted_node(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await;
    let addr = listen_addr();
    let gw = GatewayProcess::start(binary(), &http_route_to(node, addr), addr).await;
    let (status, _) = raw(&gw, WS_HEAD).await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn credentials_in_the_query_never_reach_the_access_log() {
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let body = format!(
        "{}[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n\
         [[routes]]\nid = \"k\"\nuri = \"/k/*\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\nquery = \"apikey\"\n\n\
         [[routes]]\nid = \"j\"\nuri = \"/j/*\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\nquery = \"token\"\n\n\
         [[consumers]]\nusername = \"ops\"\n[consumers.plugins.key-auth]\nkey = \"{KEY}\"\n\
         [consumers.plugins.jwt-auth]\nkey = \"ops\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
        server_toml(addr).replace(
            "\n\n",
            "\n[server.limits]\nmax_request_header_bytes = 2048\n\n"
        ),
        web.addr,
    );
    let gw = GatewayProcess::start(binary(), &body, addr).await;
    let secret = "LEAKED-SECRET-VALUE";
    // Refused before any auth plugin runs: no route (404), headers too large (431); and a
    // route whose plugin reads another parameter name.
    let (status, _) = get(&gw, &format!("/nope?apikey={secret}&token={secret}"), "").await;
    assert_eq!(status, 404);
    let padding = "x".repeat(3000);
    let (status, _) = get(
        &gw,
        &format!("/k/x?apikey={secret}"),
        &format!("\r\nx-pad: {padding}"),
    )
    .await;
    assert_eq!(status, 431);
    let (status, _) = get(&gw, &format!("/k/x?token={secret}&a=1"), "").await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.log();
    assert!(log.contains("apikey=***"), "{log}");
    assert!(log.contains("token=***&a=1"), "{log}");
    assert!(!log.contains(secret), "{log}");
}

#[tokio::test]
async fn sasl_plain_without_tls_is_named_at_start() {
    const PLAIN: &str = "sasl = { mechanism = \"PLAIN\", username = \"u\", password = \"p\" }";
    let gw = gateway_for_dead_broker("/kafka", PLAIN).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    assert!(log.contains("SASL PLAIN without TLS"), "{log}");
    assert!(log.contains("route=dead upstream=dead"), "{log}");

    // Over TLS, or with SCRAM, nothing to warn about.
    let addr = listen_addr();
    let config = format!(
        "{}{}{}",
        server_toml(addr),
        kafka_upstream("k", "127.0.0.1:9", "[upstreams.tls]\nverify = false\n"),
        kafka_route("k", "/kafka", "k", PLAIN)
    );
    let tls = GatewayProcess::start(binary(), &config, addr).await;
    let scram = gateway_for_dead_broker(
        "/kafka",
        "sasl = { mechanism = \"SCRAM-SHA-256\", username = \"u\", password = \"p\" }",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!tls.log().contains("SASL PLAIN"), "{}", tls.log());
    assert!(!scram.log().contains("SASL PLAIN"), "{}", scram.log());
}

/// rskafka asks the broker to auto-create any topic it names in a metadata request, and Kafka
/// does by default: the gateway must never name a topic that does not exist, nor an invalid one.
/// A recording tap in front of the broker sees every byte the gateway sends it.
#[tokio::test]
async fn clients_cannot_make_the_broker_create_topics() {
    use streamgate_protocol::{ErrorCode, PubSubClient};
    use streamgate_testkit::{fixtures, Broker, BrokerOptions};
    let broker = Broker::start_with(BrokerOptions {
        tap: true,
        ..BrokerOptions::default()
    })
    .await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "present", 1).await;
    drop(client);
    // No topics list: the route allows any name, the way auto-creation would be abused.
    let gw = gateway_for(&broker, "", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    assert_eq!(c.list_offset("present", 0, -2).await.unwrap(), 0);

    for ghost in ["ghost-topic-4711", "ghost.topic_4712"] {
        let e = c.list_offset(ghost, 0, -1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
        assert!(e.to_string().contains("not found topic"), "{e}");
        let e = c.fetch(ghost, 0, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    }
    let e = c.list_offset("present", 7, -1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("not found partition"), "{e}");

    let long = "x".repeat(250);
    for invalid in ["bad/name", "..", ".", "sp ace", "ünïcode", long.as_str()] {
        let e = c.list_offset(invalid, 0, -1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{invalid}: {e}");
        assert!(
            e.to_string().contains("invalid topic name"),
            "{invalid}: {e}"
        );
    }
    // A valid name at Kafka's length limit is only looked up.
    let e = c.list_offset(&"y".repeat(249), 0, -1).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    let sent = String::from_utf8_lossy(&broker.sent_to_broker()).into_owned();
    assert!(
        sent.contains("present"),
        "the tap records the gateway's requests"
    );
    for never in [
        "ghost-topic-4711",
        "ghost.topic_4712",
        "bad/name",
        "sp ace",
        &"y".repeat(249),
    ] {
        assert!(!sent.contains(never), "{never:?} was named to the broker");
    }
    let client = broker.client().await;
    let topics: Vec<String> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(topics, ["present"], "nothing was created");
}

#[tokio::test]
async fn unauthenticated_callers_are_not_told_where_the_brokers_are() {
    use streamgate_protocol::PubSubClient;
    let gw = gateway_for_dead_broker("/kafka", "").await;
    let mut c = PubSubClient::connect(&gw.ws_url("/kafka")).await.unwrap();
    let message = c
        .list_offset("orders", 0, -1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("failed to list offset, topic: orders"),
        "{message}"
    );
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(
        message.contains("<broker>"),
        "the cause is still named: {message}"
    );
}

/// Whoever connects to the upgrade socket receives the listening sockets: it lives in a
/// private directory, never in a world-writable one such as /tmp.
#[tokio::test]
async fn the_upgrade_socket_lives_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let web = Upstream::start("web").await;
    let runtime = tempfile::tempdir().unwrap();
    let addr = listen_addr();
    let body = format!(
        "[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"r\"\nuri = \"/*\"\nupstream_id = \"web\"\n",
        web.addr
    );
    let xdg = runtime.path().to_str().unwrap();
    let gw = GatewayProcess::start_with_env(
        binary(),
        &format!("{}{body}", server_toml(addr)),
        addr,
        &[("XDG_RUNTIME_DIR", xdg), ("RUNTIME_DIRECTORY", "")],
    )
    .await;
    let dir = runtime.path().join("streamgate");
    let mode = std::fs::metadata(&dir)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    drop(gw);

    // A configured socket in a directory others can write to is refused at start.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = format!(
        "{}upgrade_sock = \"{}\"\n\n{body}",
        server_toml(addr),
        open.path().join("up.sock").display()
    );
    let file = open.path().join("streamgate.toml");
    std::fs::write(&file, config).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(binary())
            .arg("-c")
            .arg(&file)
            .output(),
    )
    .await
    .expect("exits at once")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("others can write to it"), "{err}");
}

#[tokio::test]
async fn guessing_credentials_is_throttled_per_address() {
    let web = Upstream::start("web").await;
    let addr = listen_addr();
    let config = format!(
        "{}[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n\
         [[routes]]\nid = \"k\"\nuri = \"/k/*\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\n\n\
         [[routes]]\nid = \"open\"\nuri = \"/open/*\"\nupstream_id = \"web\"\n\n\
         [[consumers]]\nusername = \"ops\"\n[consumers.plugins.key-auth]\nkey = \"{KEY}\"\n",
        server_toml(addr).replace(
            "\n\n",
            "\n[server.limits]\nmax_auth_failures_per_minute = 3\n\n"
        ),
        web.addr
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;
    let (status, _) = get(&gw, "/k/x", &format!("\r\napikey: {KEY}")).await;
    assert_eq!(status, 200, "a right key costs nothing");
    for guess in 0..3 {
        let (status, _) = get(&gw, "/k/x", &format!("\r\napikey: guess-{guess}")).await;
        assert_eq!(status, 401);
    }
    // Out of attempts: refused before any check, even with the right key, until one refills
    // (one every 20 s at 3 a minute).
    let head = format!("GET /k/x HTTP/1.1\r\nHost: gw.test\r\napikey: {KEY}\r\n\r\n");
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(
        answer.contains("too many failed authentications"),
        "{answer}"
    );
    let retry: u64 = answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Retry-After");
    assert!((1..=20).contains(&retry), "{retry}");
    // Routes that do not authenticate are not affected.
    let (status, _) = get(&gw, "/open/x", "").await;
    assert_eq!(status, 200);
    assert_eq!(web.hits(), 2);
}
