//! The `cors` plugin through the real gateway: preflights answered before authentication and
//! without the upstream, allowed origins get the headers, others do not.

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
