//! The demo page in a real browser: Debian's headless Chromium loads it through the gateway's
//! HTTP route and reads a live topic through its pub/sub route (examples/web/test/browser.mjs
//! drives it). Screenshots land in `target/tmp/browser-demo/`.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use streamgate_testkit::{fixtures, Broker, GatewayProcess, Upstream};

#[tokio::test]
async fn the_demo_page_shows_live_messages_and_explains_errors() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
    assert!(
        web.join("dist/index.html").exists() && web.join("node_modules/playwright-core").exists(),
        "the demo page is not built: run `make test` (or `npm ci && npm run build` in examples/web)"
    );
    let broker = Broker::start().await;
    let client = broker.client().await;
    fixtures::create_topic(&client, "demo", 2).await;
    // A live topic: a record every 100 ms on partition 0, one on partition 1.
    fixtures::produce_each(&client, "demo", 1, vec![fixtures::value("other partition")]).await;
    let producer = tokio::spawn(async move {
        for n in 0.. {
            let value = format!("demo-{n}");
            let record = fixtures::record(Some(b"k"), Some(value.as_bytes()), &[("n", b"x")], None);
            fixtures::produce_each(&client, "demo", 0, vec![record]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let files = Upstream::start_static(&web.join("dist")).await;
    let addr = listen_addr();
    let config = format!(
        "{}[[upstreams]]\nid = \"web\"\nnodes = {{ \"{}\" = 1 }}\n\n[[routes]]\nid = \"web\"\nuri = \"/*\"\nupstream_id = \"web\"\n\n{}{}",
        server_toml(addr),
        files.addr,
        kafka_upstream("kafka", &broker.bootstrap, ""),
        kafka_route(
            "kafka",
            "/kafka",
            "kafka",
            // Groups for the page's "resume where I left off"; short heartbeats (600 ms).
            "topics = [\"demo\"]\ngroup_prefix = \"web.\"\ngroup_session_timeout_ms = 6000",
        ),
    ) + &kafka_route(
        "events",
        "/events-kafka",
        "kafka",
        // Streams end every 2 s, so the browser's EventSource must reconnect and resume.
        "topics = [\"demo\"]\nmax_session_seconds = 2",
    );
    let gw = GatewayProcess::start(binary(), &config, addr).await;

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-demo");
    let run = tokio::process::Command::new("node")
        .arg(web.join("test/browser.mjs"))
        .arg(gw.http_url("/"))
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test finished within 120 s")
        .expect("node runs (make test installs it)");
    producer.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed (screenshot in {}):\n{stdout}\n{stderr}\ngateway log:\n{}",
        out.display(),
        gw.log()
    );
    for shot in [
        "demo-live.png",
        "demo-forbidden.png",
        "demo-group-a.png",
        "demo-group-b.png",
        "demo-events.png",
    ] {
        let size = std::fs::metadata(out.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{shot} was saved ({size} bytes)");
    }
    println!("{stdout}");
}
