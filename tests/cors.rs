//! The `cors` plugin through the real gateway: preflights answered before authentication and
//! without the upstream, allowed origins get the headers, others do not, and an origin the list
//! leaves out cannot open a WebSocket.

mod common;

use common::*;
use streamgate_testkit::{GatewayProcess, Upstream};

const APP: &str = "https://app.example.com";

async fn gateway(web: &Upstream) -> GatewayProcess {
    let addr = listen_addr();
    let config = format!(
        r#"{}[[upstreams]]
id = "web"
nodes = {{ "{}" = 1 }}

[[routes]]
id = "api"
uri = "/api/*"
methods = ["GET"]
upstream_id = "web"
[routes.plugins.cors]
allow_origins = ["{APP}"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type", "apikey"]
expose_headers = ["x-trace"]
max_age_seconds = 600
allow_credentials = true
[routes.plugins.key-auth]

[[routes]]
id = "open"
uri = "/open/*"
upstream_id = "web"
[routes.plugins.cors]

[[consumers]]
username = "page"
[consumers.plugins.key-auth]
key = "page-key-0123456789"
"#,
        server_toml(addr),
        web.addr
    );
    GatewayProcess::start(binary(), &config, addr).await
}

fn preflight(
    gw: &GatewayProcess,
    path: &str,
    origin: &str,
    headers: &str,
) -> reqwest::RequestBuilder {
    http()
        .request(reqwest::Method::OPTIONS, gw.http_url(path))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", headers)
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_before_authentication() {
    let web = Upstream::start("web").await;
    let gw = gateway(&web).await;

    let ok = preflight(&gw, "/api/items", APP, "apikey")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204, "no key needed for a preflight");
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, apikey");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(web.hits(), 0, "the upstream never sees a preflight");

    let other = preflight(&gw, "/api/items", "https://evil.example", "apikey")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let header = preflight(&gw, "/api/items", APP, "x-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 403);
    assert!(header.text().await.unwrap().contains("x-secret"));
}

#[tokio::test]
async fn answers_carry_cors_headers_for_allowed_origins_only() {
    let web = Upstream::start("web").await;
    let gw = gateway(&web).await;
    let get = |origin: &str| {
        http()
            .get(gw.http_url("/api/items"))
            .header("origin", origin)
            .header("apikey", "page-key-0123456789")
            .send()
    };
    let ok = get(APP).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], APP);
    assert_eq!(ok.headers()["access-control-expose-headers"], "x-trace");
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert!(ok.headers().get_all("vary").iter().any(|v| v == "Origin"));

    // The gateway's own refusals carry the headers too, so the page can read why.
    let refused = http()
        .get(gw.http_url("/api/items"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], APP);
    assert!(refused.text().await.unwrap().contains("Missing API key"));

    let other = get("https://evil.example").await.unwrap();
    assert_eq!(
        other.status(),
        200,
        "the request itself is served; the browser hides it"
    );
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let open = http()
        .get(gw.http_url("/open/x"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.headers()["access-control-allow-origin"], "*");
    let no_origin = http().get(gw.http_url("/open/x")).send().await.unwrap();
    assert!(no_origin
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

/// Opens a WebSocket with the given headers: the handshake status (101 when it opened) and,
/// when it opened, whether a message came back.
async fn websocket(gw: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> (u16, bool) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error, Message};
    let mut request = gw.ws_url(path).into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes());
        request
            .headers_mut()
            .insert(name.unwrap(), value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, resp)) => {
            ws.send(Message::text("hello")).await.unwrap();
            let echoed = matches!(ws.next().await, Some(Ok(Message::Text(_))));
            (resp.status().as_u16(), echoed)
        }
        Err(Error::Http(resp)) => (resp.status().as_u16(), false),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn listed_origins_also_guard_websocket_upgrades() {
    let web = Upstream::start("web").await;
    let gw = gateway(&web).await;
    let key = ("apikey", "page-key-0123456789");
    // Browsers apply no CORS to WebSockets: an unlisted origin is refused before auth and
    // before the node, even with a valid key (a page riding on the user's credentials).
    assert_eq!(
        websocket(&gw, "/api/ws", &[("origin", "https://evil.example"), key]).await,
        (403, false)
    );
    assert_eq!(web.hits(), 0, "the node never saw the handshake");
    assert_eq!(
        websocket(&gw, "/api/ws", &[("origin", APP), key]).await,
        (101, true)
    );
    // Non-browser clients send no Origin.
    assert_eq!(websocket(&gw, "/api/ws", &[key]).await, (101, true));
    // The unlisted origin still needs the key.
    assert_eq!(websocket(&gw, "/api/ws", &[("origin", APP)]).await.0, 401);
    // A route that allows any origin lets every page open one.
    assert_eq!(
        websocket(&gw, "/open/ws", &[("origin", "https://evil.example")]).await,
        (101, true)
    );
}
