//! The `streamgate` command line: checking configurations, version and help.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::binary())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run streamgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_config_checks_clean() {
    let (code, out, err) = run(&["-t", "-c", "conf/streamgate.toml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "conf/streamgate.toml: ok (1 listeners, 2 upstreams, 2 routes)"
    );
}

#[test]
fn a_broken_config_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[[upstreams]]\nid = \"u\"\nnodes = { \"nohost\" = 1 }\n\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"missing\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("2 configuration errors"), "{err}");
    assert!(
        err.contains(":1:1: `upstreams[0].nodes.\"nohost\"`: \"nohost\" is not host:port"),
        "{err}"
    );
    assert!(
        err.contains("`routes[0].upstream_id`: no upstream has id \"missing\""),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, err) = run(&["-t", "-c", "/nonexistent/streamgate.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/streamgate.toml") && err.contains("cannot read the file"),
        "{err}"
    );
}

#[test]
fn an_unresolvable_node_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dns.toml");
    std::fs::write(
        &path,
        "[[upstreams]]\nid = \"u\"\nnodes = { \"no-such-host.invalid:80\" = 1 }\n",
    )
    .unwrap();
    let (code, _, err) = run(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstream \"u\": node no-such-host.invalid:80: cannot resolve"),
        "{err}"
    );
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("streamgate ", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("-c, --config") && out.contains("-t, --test"),
        "{out}"
    );
}

#[test]
fn a_jwt_cookie_without_listed_origins_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookie.toml");
    std::fs::write(
        &path,
        "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:8080\" = 1 }\n\n[[routes]]\nid = \"r\"\nuri = \"/\"\nupstream_id = \"u\"\n[routes.plugins.jwt-auth]\ncookie = \"jwt\"\n\n[[consumers]]\nusername = \"c\"\n[consumers.plugins.jwt-auth]\nkey = \"c\"\nsecret = \"0123456789abcdef-long\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`routes[0].plugins.jwt-auth.cookie`: a token cookie is sent with requests from any site"),
        "{err}"
    );
}

#[test]
fn a_public_admin_listener_needs_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.toml");
    std::fs::write(&path, "[admin]\nlisten = \"0.0.0.0:9091\"\n").unwrap();
    let (code, _, err) = run(&["-t", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`admin.listen`: 0.0.0.0:9091 is not a loopback address"),
        "{err}"
    );
}
