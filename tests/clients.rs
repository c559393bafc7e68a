//! The clients in examples/, run as a person runs them: the `streamgate-consume` command line,
//! the Python client and the Node client, each against the real gateway and a real broker.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use streamgate_testkit::{fixtures, unique_topic, Broker, GatewayProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

fn consume_binary() -> &'static Path {
    streamgate_testkit::binary("streamgate-consume")
}

/// A broker with `topic` holding `count` records `msg-0` .. (offsets 0..count), keyed `k-N`.
async fn broker_with(topic: &str, count: usize) -> Broker {
    let broker = Broker::start().await;
    let client = broker.client().await;
    fixtures::create_topic(&client, topic, 1).await;
    produce(&broker, topic, 0..count).await;
    broker
}

async fn produce(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    let records = range
        .map(|i| {
            fixtures::record(
                Some(format!("k-{i}").as_bytes()),
                Some(format!("msg-{i}").as_bytes()),
                &[("n", i.to_string().as_bytes())],
                None,
            )
        })
        .collect();
    fixtures::produce_each(&broker.client().await, topic, 0, records).await;
}

/// Runs a client to completion (bounded) and returns (exit code, stdout, stderr).
async fn run(mut cmd: Command) -> (i32, String, String) {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the client finished within 60 s")
        .expect("the client started");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn consume(gw: &GatewayProcess, args: &[&str]) -> Command {
    let mut cmd = Command::new(consume_binary());
    cmd.arg(gw.ws_url("/kafka")).args(args);
    cmd
}

/// The offsets (first column) of text output lines.
fn offsets(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").parse().expect("offset"))
        .collect()
}

#[tokio::test]
async fn consume_cli_starts_where_asked_and_stops_at_the_end() {
    let topic = unique_topic("cli");
    let broker = broker_with(&topic, 10).await;
    let gw = gateway_for(&broker, "", "").await;

    let (code, stdout, stderr) = run(consume(&gw, &["--topic", &topic])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(offsets(&stdout), (0..10).collect::<Vec<_>>());
    let first: Vec<&str> = stdout.lines().next().unwrap_or("").split('\t').collect();
    assert_eq!(
        first[2..],
        ["k-0", "msg-0", "n=0", "0"],
        "key, value, headers, partition"
    );

    let (code, stdout, _) = run(consume(&gw, &["--topic", &topic, "--from", "7"])).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![7, 8, 9]));

    let (code, stdout, _) = run(consume(
        &gw,
        &["--topic", &topic, "--from", "2", "--limit", "3"],
    ))
    .await;
    assert_eq!((code, offsets(&stdout)), (0, vec![2, 3, 4]));

    let (code, stdout, _) = run(consume(&gw, &["--topic", &topic, "--from", "latest"])).await;
    assert_eq!((code, stdout.as_str()), (0, ""), "latest: nothing new");

    // A time after every record: start at the end. A time before all: from the start.
    let later = format!("@{}", fixtures::now_ms() + 60_000);
    let (code, stdout, _) = run(consume(&gw, &["--topic", &topic, "--from", &later])).await;
    assert_eq!((code, stdout.as_str()), (0, ""));
    let (code, stdout, _) = run(consume(
        &gw,
        &["--topic", &topic, "--from", "@2020-01-01T00:00:00Z"],
    ))
    .await;
    assert_eq!((code, offsets(&stdout).len()), (0, 10));

    // The cursor printed on exit resumes exactly after the last record printed.
    let (code, stdout, stderr) = run(consume(
        &gw,
        &["--topic", &topic, "--limit", "4", "--credit", "3"],
    ))
    .await;
    assert_eq!((code, offsets(&stdout)), (0, vec![0, 1, 2, 3]));
    let cursor = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cursor: "))
        .unwrap_or_else(|| panic!("a cursor on exit: {stderr}"))
        .to_string();
    let (code, stdout, _) = run(consume(&gw, &["--topic", &topic, "--cursor", &cursor])).await;
    assert_eq!((code, offsets(&stdout)), (0, (4..10).collect::<Vec<_>>()));
    // Filters run at the gateway; --pull keeps APISIX's fetch loop.
    let (code, stdout, _) = run(consume(
        &gw,
        &["--topic", &topic, "--key", "k-3", "--key", "k-8"],
    ))
    .await;
    assert_eq!((code, offsets(&stdout)), (0, vec![3, 8]));
    let (code, stdout, _) = run(consume(&gw, &["--topic", &topic, "--pull", "--from", "6"])).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![6, 7, 8, 9]));

    let (code, stdout, _) = run(consume(
        &gw,
        &["--topic", &topic, "--format", "json", "--limit", "1"],
    ))
    .await;
    assert_eq!(code, 0);
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["offset"], 0);
    assert_eq!(line["key"], "k-0");
    assert_eq!(line["value"], "msg-0");
    assert_eq!(line["headers"]["n"], "0");
    assert!(line["timestamp"].as_i64().unwrap_or(0) > 1_600_000_000_000);
}

#[tokio::test]
async fn consume_cli_reports_refusals_without_retrying() {
    let topic = unique_topic("cli-refused");
    let broker = broker_with(&topic, 1).await;
    let gw = gateway_for(&broker, "topics = [\"cli-refused*\"]", "").await;

    let (code, _, stderr) = run(consume(&gw, &["--topic", "secret"])).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("code 3"),
        "forbidden names its class: {stderr}"
    );
    assert!(!stderr.contains("reconnecting"), "{stderr}");

    let (code, _, stderr) = run(consume(&gw, &["--topic", &topic, "--from", "99"])).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("OFFSET_OUT_OF_RANGE") && stderr.contains("--from earliest"),
        "{stderr}"
    );

    let (code, _, stderr) = run(consume(&gw, &["--topic", &topic, "--from", "soon"])).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("expected earliest, latest"), "{stderr}");

    // Nothing listens: retries are bounded when asked.
    let mut cmd = Command::new(consume_binary());
    cmd.arg(format!(
        "ws://127.0.0.1:{}/kafka",
        streamgate_testkit::free_port()
    ))
    .args(["--topic", &topic, "--max-retries", "2"]);
    let (code, _, stderr) = run(cmd).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("gave up after 2 retries"), "{stderr}");
}

/// Reads lines from a running client until `want` offsets arrived (bounded in time).
async fn read_offsets(
    lines: &mut tokio::io::Lines<BufReader<ChildStdout>>,
    want: usize,
) -> Vec<i64> {
    let mut seen = Vec::new();
    while seen.len() < want {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no record within 20 s; got {seen:?}"))
            .expect("read stdout")
            .unwrap_or_else(|| panic!("the consumer exited; got {seen:?}"));
        seen.push(offsets(&line)[0]);
    }
    seen
}

#[tokio::test]
async fn consume_cli_follows_and_resumes_after_the_gateway_restarts() {
    let topic = unique_topic("cli-follow");
    let broker = broker_with(&topic, 5).await;
    let addr = listen_addr();
    let config = format!(
        "{}{}{}",
        server_toml(addr),
        kafka_upstream("kafka", &broker.bootstrap, ""),
        kafka_route("kafka", "/kafka", "kafka", "")
    );
    let mut gw = GatewayProcess::start(binary(), &config, addr).await;

    let mut child: Child = consume(&gw, &["--topic", &topic, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start streamgate-consume");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(read_offsets(&mut lines, 5).await, vec![0, 1, 2, 3, 4]);

    // Gone: the consumer must retry, then resume exactly after offset 4.
    gw.terminate();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).await, Some(0));
    produce(&broker, &topic, 5..8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _gw = GatewayProcess::start(binary(), &config, addr).await;
    produce(&broker, &topic, 8..10).await;
    assert_eq!(read_offsets(&mut lines, 5).await, vec![5, 6, 7, 8, 9]);

    child.start_kill().expect("stop the consumer");
    let output = child.wait_with_output().await.expect("consumer output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reconnecting")
            && stderr.contains("resuming after the last record printed"),
        "the consumer says what it does: {stderr}"
    );
}

/// The interpreter with the Python client's requirements: `$STREAMGATE_PYTHON` (the virtualenv
/// `make test` prepares), else `python3`.
fn python() -> String {
    std::env::var("STREAMGATE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs one of the script clients against `topic` (10 records, allowed) and `secret` (refused).
async fn check_script_client(program: &str, script: &str, hint: &str) {
    let topic = unique_topic("script");
    let broker = broker_with(&topic, 10).await;
    let gw = gateway_for(&broker, "topics = [\"script*\"]", "").await;
    let script = streamgate_testkit::workspace_root().join(script);
    let client = |args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.arg(&script).arg(gw.ws_url("/kafka")).args(args);
        cmd
    };

    let (code, stdout, stderr) = run(client(&["--topic", &topic])).await;
    assert_eq!(
        code,
        0,
        "{program} {}: {stderr}\n({hint})",
        script.display()
    );
    assert_eq!(offsets(&stdout), (0..10).collect::<Vec<_>>(), "{stdout}");
    let fields: Vec<&str> = stdout.lines().nth(3).unwrap_or("").split('\t').collect();
    assert_eq!(fields[2..], ["k-3", "msg-3", "0"], "key, value, partition");
    assert!(
        fields[1].parse::<i64>().unwrap_or(0) > 1_600_000_000_000,
        "timestamp"
    );

    let (code, stdout, _) = run(client(&["--topic", &topic, "--from", "8"])).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![8, 9]));
    // Push: the cursor printed at exit resumes exactly after the last record printed.
    let (code, stdout, stderr) = run(client(&[
        "--topic", &topic, "--limit", "3", "--credit", "2",
    ]))
    .await;
    assert_eq!((code, offsets(&stdout)), (0, vec![0, 1, 2]), "{stderr}");
    let cursor = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cursor: "))
        .unwrap_or_else(|| panic!("a cursor at exit: {stderr}"))
        .to_string();
    let (code, stdout, _) = run(client(&["--topic", &topic, "--cursor", &cursor])).await;
    assert_eq!((code, offsets(&stdout)), (0, (3..10).collect::<Vec<_>>()));
    let (code, stdout, _) = run(client(&["--topic", &topic, "--from", "latest"])).await;
    assert_eq!((code, stdout.as_str()), (0, ""));
    let (code, stdout, _) = run(client(&["--topic", &topic, "--limit", "2", "--follow"])).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![0, 1]));

    let (code, _, stderr) = run(client(&["--topic", "secret"])).await;
    assert_eq!(code, 1, "a refused topic fails the client: {stderr}");
    assert!(
        stderr.contains("forbidden") && stderr.contains("code 3"),
        "{stderr}"
    );
}

#[tokio::test]
async fn python_client_reads_and_reports_refusals() {
    check_script_client(
        &python(),
        "examples/python/consume.py",
        "make test installs its requirements; or pip install -r examples/python/requirements.txt",
    )
    .await;
}

#[tokio::test]
async fn node_client_reads_and_reports_refusals() {
    check_script_client(
        "node",
        "examples/node/consume.mjs",
        "make test installs its packages; or npm ci --prefix examples/node",
    )
    .await;
}

#[tokio::test]
async fn consume_cli_with_a_group_goes_on_where_the_last_run_stopped() {
    let topic = unique_topic("cli-group");
    let broker = broker_with(&topic, 10).await;
    let gw = gateway_for(
        &broker,
        "group_prefix = \"cli.\"\ngroup_session_timeout_ms = 6000",
        "",
    )
    .await;
    let group = |limit: &str| {
        consume(
            &gw,
            &["--topic", &topic, "--group", "nightly", "--limit", limit],
        )
    };
    let (code, stdout, stderr) = run(group("4")).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![0, 1, 2, 3]), "{stderr}");
    // Another run of the same group (any machine, any gateway) starts after what was printed.
    let (code, stdout, stderr) = run(group("3")).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![4, 5, 6]), "{stderr}");
    let (code, _, stderr) = run(consume(&gw, &["--topic", &topic, "--group", "g", "--pull"])).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("drop --pull"), "{stderr}");
}

#[tokio::test]
async fn python_client_with_a_group_goes_on_where_the_last_run_stopped() {
    check_group_client(&python(), "examples/python/consume.py").await;
}

#[tokio::test]
async fn node_client_with_a_group_goes_on_where_the_last_run_stopped() {
    check_group_client("node", "examples/node/consume.mjs").await;
}

/// Two runs of a script client in one group: the second goes on where the first stopped.
async fn check_group_client(program: &str, script: &str) {
    let topic = unique_topic("script-group");
    let broker = broker_with(&topic, 10).await;
    let gw = gateway_for(
        &broker,
        "group_prefix = \"scripts.\"\ngroup_session_timeout_ms = 6000",
        "",
    )
    .await;
    let script = streamgate_testkit::workspace_root().join(script);
    let run_group = |limit: &str| {
        let mut cmd = Command::new(program);
        cmd.arg(&script)
            .arg(gw.ws_url("/kafka"))
            .args(["--topic", &topic, "--group", "reports", "--limit", limit]);
        cmd
    };
    let (code, stdout, stderr) = run(run_group("4")).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![0, 1, 2, 3]), "{stderr}");
    let (code, stdout, stderr) = run(run_group("3")).await;
    assert_eq!((code, offsets(&stdout)), (0, vec![4, 5, 6]), "{stderr}");
}
