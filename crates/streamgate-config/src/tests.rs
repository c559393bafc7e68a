//! Parsing and checking, one behaviour per test; every error is asserted by its message.
use super::*;
use model::*;

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, "test.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.problems,
    }
}

fn one_problem(text: &str) -> Problem {
    let mut p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.remove(0)
}

const UPSTREAM: &str = r#"
[[upstreams]]
id = "web"
nodes = { "127.0.0.1:8080" = 1 }
"#;

#[test]
fn the_stable_core_of_config_md_parses() {
    std::env::set_var("STREAMGATE_TEST_KAFKA_PASSWORD", "admin-secret");
    let text = r#"
[server]
listen = ["127.0.0.1:9080"]
threads = 2
grace_period_seconds = 10

[admin]
listen = "127.0.0.1:9091"

[[upstreams]]
id = "web"
scheme = "http"
nodes = { "127.0.0.1:8080" = 1, "127.0.0.1:8081" = 2 }
type = "roundrobin"

[[upstreams]]
id = "events"
scheme = "kafka"
nodes = { "127.0.0.1:9092" = 1 }
[upstreams.tls]
verify = true

[[routes]]
id = "api"
uri = "/api/*"
hosts = ["api.example.com"]
methods = ["GET", "POST"]
upstream_id = "web"

[[routes]]
id = "events"
uri = "/kafka"
upstream_id = "events"
[routes.plugins.kafka-proxy]
sasl = { mechanism = "PLAIN", username = "admin", password = "${STREAMGATE_TEST_KAFKA_PASSWORD}" }
topics = ["orders", "audit-*"]
"#;
    let config = parse(text, "core.toml").expect("valid");
    assert_eq!(
        config.server.listen,
        vec!["127.0.0.1:9080".parse().unwrap()]
    );
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(
        config.upstreams[0]
            .nodes
            .iter()
            .map(|n| n.weight)
            .sum::<u32>(),
        3
    );
    let api = &config.routes[0];
    assert_eq!(api.paths, vec![PathPattern::Prefix("/api/".into())]);
    assert_eq!(
        api.hosts,
        vec![HostPattern::Exact("api.example.com".into())]
    );
    assert_eq!(api.methods, vec!["GET", "POST"]);
    let kafka = config.routes[1]
        .plugins
        .kafka_proxy
        .as_ref()
        .expect("plugin");
    let sasl = kafka.sasl.as_ref().expect("sasl");
    assert_eq!(sasl.password, "admin-secret");
    assert!(
        !format!("{sasl:?}").contains("admin-secret"),
        "Debug must redact"
    );
    assert!(kafka.allows("orders") && kafka.allows("audit-2026") && !kafka.allows("payments"));
    assert!(config.upstreams[1].tls.as_ref().expect("tls").verify);
}

#[test]
fn a_kafka_route_without_the_plugin_gets_default_settings() {
    let text = r#"
[[upstreams]]
id = "k"
scheme = "kafka"
nodes = { "127.0.0.1:9092" = 1 }
[[routes]]
id = "r"
uri = "/kafka"
upstream_id = "k"
"#;
    let config = parse(text, "t").expect("valid");
    assert_eq!(
        config.routes[0].plugins.kafka_proxy,
        Some(KafkaProxy::default())
    );
}

#[test]
fn unknown_keys_are_rejected_with_line_and_path() {
    let p = one_problem(&format!(
        "{UPSTREAM}\n[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\nprioritty = 3\n"
    ));
    assert_eq!(p.key, "routes[0].prioritty");
    assert!(
        p.message.contains("unknown field `prioritty`"),
        "{}",
        p.message
    );
    assert_eq!(p.location.map(|l| l.0), Some(10));
}

#[test]
fn an_unknown_plugin_is_named() {
    let p = one_problem(&format!(
        "{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.kafka-proxi]\n"
    ));
    assert_eq!(p.key, "routes[0].plugins.kafka-proxi");
    assert!(
        p.message.contains("unknown field `kafka-proxi`") && p.message.contains("kafka-proxy"),
        "{}",
        p.message
    );
}

#[test]
fn duplicate_ids_and_missing_upstreams_are_all_reported() {
    let text = format!(
        "{UPSTREAM}{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"nope\"\n[[routes]]\nid = \"a\"\nuri = \"/b\"\nupstream_id = \"web\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].key == "upstreams[1].id" && p[0].message.contains("duplicate upstream id \"web\"")
    );
    assert!(
        p[1].key == "routes[0].upstream_id" && p[1].message.contains("no upstream has id \"nope\"")
    );
    assert!(p[1].fix.contains("web"), "the fix lists known upstreams");
    assert!(p[2].key == "routes[1].id" && p[2].message.contains("duplicate route id"));
    let shown = parse(&text, "gw.toml").unwrap_err().to_string();
    assert!(
        shown.starts_with("gw.toml: 3 configuration errors"),
        "{shown}"
    );
    assert!(shown.contains("gw.toml:6:1: `upstreams[1].id`"), "{shown}");
}

#[test]
fn nodes_must_be_host_port_with_a_usable_weight() {
    let p = one_problem("[[upstreams]]\nid = \"u\"\nnodes = { \"localhost\" = 1 }\n");
    assert!(
        p.message.contains("is not host:port (missing `:port`)"),
        "{}",
        p.message
    );
    let p = one_problem("[[upstreams]]\nid = \"u\"\nnodes = { \"h:99999\" = 1 }\n");
    assert!(p.message.contains("not a port"), "{}", p.message);
    let p = one_problem("[[upstreams]]\nid = \"u\"\nnodes = { \"a:1\" = 0, \"b:2\" = 0 }\n");
    assert!(
        p.message.contains("every node has weight 0"),
        "{}",
        p.message
    );
    let p = one_problem("[[upstreams]]\nid = \"u\"\nnodes = { \"a:1\" = -1 }\n");
    assert!(p.message.contains("-1 is out of range"), "{}", p.message);
    assert!(parse(
        "[[upstreams]]\nid = \"u\"\nnodes = { \"[::1]:80\" = 1 }\n",
        "t"
    )
    .is_ok());
}

#[test]
fn wrong_types_name_the_expected_type() {
    let p = one_problem("[server]\nthreads = \"two\"\n");
    assert_eq!(p.key, "server.threads");
    assert!(
        p.message
            .contains("invalid type: string \"two\", expected i64"),
        "{}",
        p.message
    );
}

#[test]
fn a_missing_environment_variable_is_named() {
    let p = one_problem(&format!(
        "{UPSTREAM}[[routes]]\nid = \"${{STREAMGATE_SURELY_UNSET_VAR}}\"\nuri = \"/\"\nupstream_id = \"web\"\n"
    ));
    assert!(
        p.message
            .contains("`STREAMGATE_SURELY_UNSET_VAR` is not set"),
        "{}",
        p.message
    );
    assert_eq!(p.key, "routes[0].id");
}

#[test]
fn route_paths_hosts_and_methods_are_checked() {
    let route =
        |extra: &str| format!("{UPSTREAM}[[routes]]\nid = \"a\"\nupstream_id = \"web\"\n{extra}\n");
    assert!(one_problem(&route("uri = \"api\""))
        .message
        .contains("is not a route path"));
    assert!(one_problem(&route("uri = \"/a*/b\""))
        .message
        .contains("is not a route path"));
    assert!(one_problem(&route("")).message.contains("matches no path"));
    assert!(one_problem(&route("uri = \"/\"\nhosts = [\"a.*.com\"]"))
        .message
        .contains("not a host name"));
    assert!(one_problem(&route("uri = \"/\"\nmethods = [\"FETCH\"]"))
        .message
        .contains("unknown method"));
    let ok = parse(
        &route("uris = [\"/x\", \"/y/*\"]\nhosts = [\"*.Example.com\"]\nmethods = [\"get\"]"),
        "t",
    )
    .unwrap();
    let r = &ok.routes[0];
    assert_eq!(
        r.paths,
        vec![
            PathPattern::Exact("/x".into()),
            PathPattern::Prefix("/y/".into())
        ]
    );
    assert_eq!(r.hosts, vec![HostPattern::Wildcard(".example.com".into())]);
    assert_eq!(r.methods, vec!["GET"]);
}

#[test]
fn kafka_proxy_needs_a_kafka_upstream() {
    let p = one_problem(&format!(
        "{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.kafka-proxy]\n"
    ));
    assert!(
        p.message.contains("is not a kafka upstream"),
        "{}",
        p.message
    );
}

#[test]
fn upstream_options_are_checked() {
    let up =
        |extra: &str| format!("[[upstreams]]\nid = \"u\"\nnodes = {{ \"a:1\" = 1 }}\n{extra}\n");
    assert!(one_problem(&up("type = \"chash\"\nhash_on = \"header\""))
        .message
        .contains("needs the header name"));
    assert!(one_problem(&up("pass_host = \"rewrite\""))
        .message
        .contains("needs upstream_host"));
    assert!(one_problem(&up("[upstreams.tls]\nverify = false"))
        .message
        .contains("on an http upstream"));
    assert!(one_problem(&up("timeout = { connect = -1 }"))
        .message
        .contains("not a usable number of seconds"));
    let p = one_problem(&up(
        "scheme = \"https\"\n[upstreams.tls]\nca_file = \"/definitely/not/here.pem\"",
    ));
    assert_eq!(p.key, "upstreams[0].tls.ca_file");
    let ok = parse(&up("type = \"chash\"\nhash_on = \"header\"\nkey = \"X-User\"\n[upstreams.health_check]\npath = \"/healthz\"\ninterval_seconds = 0.5"), "t").unwrap();
    assert_eq!(
        ok.upstreams[0].balance,
        Balance::Chash(HashOn::Header("x-user".into()))
    );
    assert_eq!(
        ok.upstreams[0].health_check.as_ref().unwrap().interval,
        std::time::Duration::from_millis(500)
    );
}

#[test]
fn broken_toml_syntax_has_a_position() {
    let p = one_problem("[server\nthreads = 2\n");
    assert_eq!(p.location.map(|l| l.0), Some(1));
}

// The plugin config check cases of the contract (APISIX's kafka-proxy schema tests).

#[test]
fn kafka_proxy_empty_table_is_valid() {
    assert_eq!(check_kafka_proxy("").expect("valid"), KafkaProxy::default());
}

#[test]
fn kafka_proxy_sasl_with_username_and_password_is_valid() {
    let k = check_kafka_proxy("sasl = { username = \"admin\", password = \"admin-secret\" }")
        .expect("valid");
    assert_eq!(k.sasl.expect("sasl").mechanism, SaslMechanism::Plain);
}

#[test]
fn kafka_proxy_sasl_without_password_names_sasl_password() {
    let e = check_kafka_proxy("sasl = { username = \"admin\" }").unwrap_err();
    assert_eq!(e.problems[0].key, "sasl.password");
    assert!(
        e.to_string()
            .contains("`sasl.password`: required key `password` is missing"),
        "{e}"
    );
}

#[test]
fn kafka_proxy_numeric_password_names_the_expected_type() {
    let e = check_kafka_proxy("sasl = { username = \"admin\", password = 1234 }").unwrap_err();
    assert_eq!(e.problems[0].key, "sasl.password");
    assert!(
        e.problems[0]
            .message
            .contains("invalid type: integer `1234`, expected a string"),
        "{e}"
    );
}

#[test]
fn kafka_proxy_limits_and_allow_list_are_checked() {
    assert!(check_kafka_proxy("max_frame_bytes = 10")
        .unwrap_err()
        .to_string()
        .contains("max_frame_bytes"));
    assert!(check_kafka_proxy("topics = []")
        .unwrap_err()
        .to_string()
        .contains("forbids every topic"));
    assert!(check_kafka_proxy("topics = [\"a*b\"]")
        .unwrap_err()
        .to_string()
        .contains("not a topic name"));
    let e =
        check_kafka_proxy("sasl = { mechanism = \"GSSAPI\", username = \"a\", password = \"b\" }")
            .unwrap_err();
    assert!(e.to_string().contains("unknown SASL mechanism"), "{e}");
    let k = check_kafka_proxy("sasl = { mechanism = \"scram-sha-512\", username = \"a\", password = \"b\" }\nfetch_max_wait_ms = 0").unwrap();
    assert_eq!(k.sasl.unwrap().mechanism, SaslMechanism::ScramSha512);
    assert_eq!(k.fetch_max_wait, std::time::Duration::ZERO);
}

#[test]
fn consumers_and_key_auth_are_checked() {
    let with = |consumers: &str| {
        format!("{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.key-auth]\n{consumers}")
    };
    let ok = parse(&with("[[consumers]]\nusername = \"app\"\ntopics = [\"orders\"]\n[consumers.plugins.key-auth]\nkey = \"0123456789abcdef\"\n"), "t").expect("valid");
    let app = &ok.consumers[0];
    assert!(app.allows("orders") && !app.allows("payments"));
    assert!(
        !format!("{app:?}").contains("0123456789abcdef"),
        "Debug must redact the key"
    );
    assert_eq!(
        ok.routes[0].plugins.key_auth.as_ref().unwrap().header,
        "apikey"
    );

    let p = one_problem(&with(""));
    assert!(p.message.contains("no consumer has a key"), "{}", p.message);
    let p = problems(&with(
        "[[consumers]]\nusername = \"app\"\n[consumers.plugins.key-auth]\nkey = \"short\"\n",
    ));
    assert!(
        p.iter()
            .any(|p| p.key == "consumers[0].plugins.key-auth.key"
                && p.message.contains("shorter than 8")),
        "{p:#?}"
    );
    let two = "[[consumers]]\nusername = \"a\"\n[consumers.plugins.key-auth]\nkey = \"same-key-123\"\n[[consumers]]\nusername = \"a\"\n[consumers.plugins.key-auth]\nkey = \"same-key-123\"\n";
    let p = problems(&with(two));
    assert!(
        p.iter().any(|p| p.message.contains("duplicate consumer")),
        "{p:#?}"
    );
    assert!(p.iter().any(|p| p.message.contains("same key")), "{p:#?}");
    let p = one_problem(&with(
        "[[consumers]]\nusername = \"a\"\n[consumers.plugins.basic-auth]\nusername = \"x\"\n",
    ));
    assert!(
        p.message.contains("unknown field `basic-auth`"),
        "{}",
        p.message
    );
}

#[test]
fn jwt_auth_credentials_are_checked() {
    let with = |consumers: &str| {
        format!("{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n{consumers}")
    };
    let jwt = |body: &str| {
        format!(
            "[[consumers]]\nusername = \"u\"\n[consumers.plugins.jwt-auth]\nkey = \"u\"\n{body}\n"
        )
    };
    let ok = parse(&with(&jwt("secret = \"0123456789abcdef-long\"")), "t").expect("valid");
    let cred = ok.consumers[0].jwt.as_ref().expect("jwt");
    assert_eq!(cred.algorithm, "HS256");
    assert!(
        !format!("{:?}", ok.consumers[0]).contains("0123456789abcdef"),
        "Debug must redact the secret"
    );
    assert_eq!(
        ok.routes[0].plugins.jwt_auth.as_ref().unwrap().header,
        "authorization"
    );

    let has = |text: String, needle: &str| {
        let p = problems(&text);
        assert!(
            p.iter().any(|p| p.message.contains(needle)),
            "{needle}: {p:#?}"
        );
    };
    has(with(""), "no consumer has a jwt-auth credential");
    has(with(&jwt("secret = \"short\"")), "shorter than 16");
    has(
        with(&jwt(
            "algorithm = \"RS256\"\nsecret = \"0123456789abcdef-long\"",
        )),
        "RS256 needs `public_key_file`",
    );
    has(
        with(&jwt(
            "algorithm = \"none\"\nsecret = \"0123456789abcdef-long\"",
        )),
        "unsupported algorithm",
    );
    has(
        with(&jwt(
            "algorithm = \"ES256\"\npublic_key_file = \"/nope.pem\"",
        )),
        "cannot read",
    );
    let twice = format!(
        "{}{}",
        jwt("secret = \"0123456789abcdef-long\""),
        jwt("secret = \"0123456789abcdef-long\"").replace("username = \"u\"", "username = \"v\"")
    );
    has(with(&twice), "another consumer's tokens use the key");
}

#[test]
fn allowed_origins_are_origins() {
    let k = check_kafka_proxy("allowed_origins = [\"https://App.example.com/\"]").expect("valid");
    assert_eq!(
        k.allowed_origins,
        Some(vec!["https://app.example.com".to_string()])
    );
    for bad in [
        "app.example.com",
        "https://*.example.com",
        "https://a.com/path",
    ] {
        let e = check_kafka_proxy(&format!("allowed_origins = [\"{bad}\"]")).unwrap_err();
        assert!(e.to_string().contains("is not an origin"), "{bad}: {e}");
    }
}

#[test]
fn limit_req_and_server_limits_are_checked() {
    let route = |plugin: &str| {
        format!("{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.limit-req]\n{plugin}\n")
    };
    let config = parse(&route("rate = 0.5"), "test.toml").expect("valid");
    let limit = config.routes[0]
        .plugins
        .limit_req
        .clone()
        .expect("limit-req");
    assert_eq!(
        (limit.rate, limit.burst, limit.key, limit.rejected_code),
        (0.5, 1.0, LimitKey::RemoteAddr, 429)
    );

    let p = one_problem(&route("rate = 0"));
    assert_eq!(p.key, "routes[0].plugins.limit-req.rate");
    let p = one_problem(&route("rate = 5\nkey = \"cookie\""));
    assert_eq!(p.key, "routes[0].plugins.limit-req.key");
    assert!(p.fix.contains("remote_addr"), "{}", p.fix);
    let p = one_problem(&route("rate = 5\nrejected_code = 200"));
    assert_eq!(p.key, "routes[0].plugins.limit-req.rejected_code");
    let p = one_problem(&route("burst = 5"));
    assert!(
        p.message.contains("rate"),
        "a rate is required: {}",
        p.message
    );

    let p = one_problem(&format!(
        "[server.limits]\nmax_connections_per_ip = 0\n{UPSTREAM}"
    ));
    assert_eq!(p.key, "server.limits.max_connections_per_ip");
    let p = one_problem(&format!("[server.limits]\nmax_sessions = 3\n{UPSTREAM}"));
    assert!(p.message.contains("max_sessions"), "{}", p.message);
    let config = parse(UPSTREAM, "test.toml").expect("defaults");
    assert_eq!(config.server.limits, Limits::default());
}

#[test]
fn kafka_proxy_session_limits_are_checked() {
    let k =
        check_kafka_proxy("max_session_seconds = 0\nmax_commands_per_second = 0").expect("valid");
    assert_eq!((k.max_session, k.max_commands_per_second), (None, 0));
    let e = check_kafka_proxy("idle_timeout_ms = 10").unwrap_err();
    assert!(e.to_string().contains("idle_timeout_ms"), "{e}");
}

#[test]
fn a_host_starting_with_a_multibyte_character_is_an_error_not_a_panic() {
    // Found by tests/fuzz_config.rs: the wildcard check sliced the name at byte 1.
    let p = one_problem(&format!(
        "{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nhosts = [\"é*.example.com\"]\nupstream_id = \"web\"\n"
    ));
    assert_eq!(p.key, "routes[0].hosts[0]");
}

#[test]
fn cors_is_checked() {
    let route = |upstream: &str, plugin: &str| {
        format!("{UPSTREAM}[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = {{ \"127.0.0.1:9092\" = 1 }}\n[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"{upstream}\"\n[routes.plugins.cors]\n{plugin}\n")
    };
    let config = parse(&route("web", ""), "test.toml").expect("defaults");
    let cors = config.routes[0].plugins.cors.clone().expect("cors");
    assert_eq!(
        (
            cors.allow_origins,
            cors.max_age_seconds,
            cors.allow_credentials
        ),
        (None, 5, false)
    );
    assert!(cors.allow_methods.contains(&"GET".to_string()));

    let p = one_problem(&route("web", "allow_credentials = true"));
    assert_eq!(p.key, "routes[0].plugins.cors.allow_credentials");
    let p = one_problem(&route("web", "allow_origins = [\"app.example.com\"]"));
    assert_eq!(p.key, "routes[0].plugins.cors.allow_origins[0]");
    let p = one_problem(&route("web", "allow_headers = [\"bad header\"]"));
    assert_eq!(p.key, "routes[0].plugins.cors.allow_headers[0]");
    let p = one_problem(&route("k", ""));
    assert_eq!(p.key, "routes[0].plugins.cors");
    assert!(p.fix.contains("allowed_origins"), "{}", p.fix);
}

#[test]
fn a_jwt_cookie_is_opt_in_and_needs_listed_origins() {
    const CONSUMER: &str = "[[consumers]]\nusername = \"u\"\n[consumers.plugins.jwt-auth]\nkey = \"u\"\nsecret = \"0123456789abcdef-long\"\n";
    let route = |plugins: &str| {
        format!("{UPSTREAM}[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = {{ \"127.0.0.1:9092\" = 1 }}\n{plugins}\n{CONSUMER}")
    };
    let http = |extra: &str| {
        route(&format!("[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n{extra}"))
    };
    let ok = parse(&http(""), "t").expect("valid");
    assert_eq!(ok.routes[0].plugins.jwt_auth.as_ref().unwrap().cookie, None);

    let p = one_problem(&http("cookie = \"jwt\""));
    assert_eq!(p.key, "routes[0].plugins.jwt-auth.cookie");
    assert!(p.message.contains("lists no browser origins"), "{p:?}");
    assert!(p.fix.contains("cors allow_origins"), "{p:?}");
    let listed =
        http("cookie = \"jwt\"\n[routes.plugins.cors]\nallow_origins = [\"https://app.example\"]");
    let ok = parse(&listed, "t").expect("valid");
    assert_eq!(
        ok.routes[0]
            .plugins
            .jwt_auth
            .as_ref()
            .unwrap()
            .cookie
            .as_deref(),
        Some("jwt")
    );
    // cors without a list allows every origin: not enough.
    assert!(parse(&http("cookie = \"jwt\"\n[routes.plugins.cors]"), "t").is_err());

    let kafka = |extra: &str| {
        route(&format!("[[routes]]\nid = \"e\"\nuri = \"/kafka\"\nupstream_id = \"k\"\n[routes.plugins.jwt-auth]\ncookie = \"jwt\"\n[routes.plugins.kafka-proxy]\n{extra}"))
    };
    let p = one_problem(&kafka(""));
    assert!(p.fix.contains("allowed_origins"), "{p:?}");
    parse(&kafka("allowed_origins = [\"https://app.example\"]"), "t").expect("valid");
}

#[test]
fn trusted_proxies_are_addresses_or_ranges() {
    let with = |list: &str| format!("[server]\ntrusted_proxies = {list}\n{UPSTREAM}");
    let ok = parse(&with("[\"10.0.0.0/8\", \"192.0.2.1\", \"::1\"]"), "t").expect("valid");
    let nets: Vec<String> = ok
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]);
    let p = one_problem(&with("[\"10.0.0.0/8\", \"lb.internal\"]"));
    assert_eq!(p.key, "server.trusted_proxies[1]");
    assert!(
        p.message.contains("not an IP address or CIDR range"),
        "{p:?}"
    );
    assert!(parse(UPSTREAM, "t")
        .expect("valid")
        .server
        .trusted_proxies
        .is_empty());
}

#[test]
fn the_admin_listener_stays_on_loopback_unless_allowed() {
    let admin = |body: &str| format!("[admin]\n{body}\n{UPSTREAM}");
    parse(&admin("listen = \"127.0.0.1:9091\""), "t").expect("loopback");
    parse(&admin("listen = \"[::1]:9091\""), "t").expect("loopback");
    let p = one_problem(&admin("listen = \"0.0.0.0:9091\""));
    assert_eq!(p.key, "admin.listen");
    assert!(p.message.contains("no authentication"), "{p:?}");
    assert!(p.fix.contains("allow_remote = true"), "{p:?}");
    let ok = parse(
        &admin("listen = \"0.0.0.0:9091\"\nallow_remote = true"),
        "t",
    )
    .expect("allowed");
    assert_eq!(ok.admin.expect("admin").listen.port(), 9091);
}

#[test]
fn tunnels_are_capped_at_a_day_unless_configured() {
    use std::time::Duration;
    let day = Some(Duration::from_secs(24 * 3600));
    assert_eq!(
        parse(UPSTREAM, "t")
            .expect("valid")
            .server
            .limits
            .max_tunnel,
        day
    );
    let with = |v: &str| format!("[server.limits]\nmax_tunnel_seconds = {v}\n{UPSTREAM}");
    let one = parse(&with("60"), "t").expect("valid");
    assert_eq!(one.server.limits.max_tunnel, Some(Duration::from_secs(60)));
    assert_eq!(
        parse(&with("0"), "t")
            .expect("valid")
            .server
            .limits
            .max_tunnel,
        None
    );
    assert_eq!(
        one_problem(&with("-1")).key,
        "server.limits.max_tunnel_seconds"
    );
}

#[test]
fn auth_failures_per_minute_are_checked() {
    assert_eq!(
        parse(UPSTREAM, "t")
            .expect("valid")
            .server
            .limits
            .max_auth_failures_per_minute,
        100
    );
    let with = |v: &str| format!("[server.limits]\nmax_auth_failures_per_minute = {v}\n{UPSTREAM}");
    assert_eq!(
        parse(&with("5"), "t")
            .expect("valid")
            .server
            .limits
            .max_auth_failures_per_minute,
        5
    );
    assert_eq!(
        one_problem(&with("0")).key,
        "server.limits.max_auth_failures_per_minute"
    );
}

#[test]
fn max_decompressed_bytes_is_for_kafka_upstreams_within_range() {
    let kafka = |v: &str| {
        format!("[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = {{ \"127.0.0.1:9092\" = 1 }}\nmax_decompressed_bytes = {v}\n")
    };
    let ok = parse(&kafka("4194304"), "t").expect("valid");
    assert_eq!(ok.upstreams[0].max_decompressed_bytes, 4 << 20);
    for bad in ["1000", "2147483648"] {
        assert_eq!(
            one_problem(&kafka(bad)).key,
            "upstreams[0].max_decompressed_bytes"
        );
    }
    let p = one_problem(&format!("{UPSTREAM}max_decompressed_bytes = 4194304\n"));
    assert!(p.message.contains("only a kafka upstream"), "{p:?}");
    assert_eq!(
        parse(UPSTREAM, "t").expect("valid").upstreams[0].max_decompressed_bytes,
        crate::model::DEFAULT_MAX_DECOMPRESSED_BYTES
    );
}

#[test]
fn broker_fetch_wait_is_for_kafka_upstreams() {
    let kafka = |v: &str| {
        format!("[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = {{ \"127.0.0.1:9092\" = 1 }}\nbroker_fetch_wait_ms = {v}\n")
    };
    let ok = parse(&kafka("5"), "t").expect("valid");
    assert_eq!(
        ok.upstreams[0].broker_fetch_wait,
        std::time::Duration::from_millis(5)
    );
    assert_eq!(
        one_problem(&kafka("101")).key,
        "upstreams[0].broker_fetch_wait_ms"
    );
    let p = one_problem(&format!("{UPSTREAM}broker_fetch_wait_ms = 1\n"));
    assert!(p.message.contains("only a kafka upstream"), "{p:?}");
    assert_eq!(
        parse(UPSTREAM, "t").expect("valid").upstreams[0].broker_fetch_wait,
        std::time::Duration::ZERO
    );
}

#[test]
fn queued_answer_bytes_have_a_floor() {
    assert_eq!(
        parse(UPSTREAM, "t")
            .expect("valid")
            .server
            .limits
            .max_queued_answer_bytes,
        1 << 30
    );
    let with = |v: &str| format!("[server.limits]\nmax_queued_answer_bytes = {v}\n{UPSTREAM}");
    assert_eq!(
        one_problem(&with("1000")).key,
        "server.limits.max_queued_answer_bytes"
    );
    parse(&with("65536"), "t").expect("valid");
}

#[test]
fn the_answer_budget_holds_the_largest_frame() {
    let kafka = "[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = { \"127.0.0.1:9092\" = 1 }\n\n[[routes]]\nid = \"r\"\nuri = \"/kafka\"\nupstream_id = \"k\"\n[routes.plugins.kafka-proxy]\nmax_frame_bytes = 1048576\n";
    let with = |v: &str| format!("[server.limits]\nmax_queued_answer_bytes = {v}\n{kafka}");
    let p = one_problem(&with("1000000"));
    assert_eq!(p.key, "routes[0].plugins.kafka-proxy.max_frame_bytes");
    assert!(
        p.message.contains("max_queued_answer_bytes (1000000)"),
        "{p:?}"
    );
    parse(&with("1048576"), "t").expect("valid");
}

#[test]
fn isolation_is_read_committed_unless_set() {
    assert_eq!(
        check_kafka_proxy("").expect("valid").isolation,
        Isolation::ReadCommitted
    );
    assert_eq!(
        check_kafka_proxy("isolation = \"read_uncommitted\"")
            .expect("valid")
            .isolation,
        Isolation::ReadUncommitted
    );
    let e = check_kafka_proxy("isolation = \"serializable\"").unwrap_err();
    assert_eq!(e.problems[0].key, "isolation");
}

#[test]
fn row_filters_are_checked() {
    let kafka =
        "[[upstreams]]\nid = \"k\"\nscheme = \"kafka\"\nnodes = { \"127.0.0.1:9092\" = 1 }\n";
    let p = one_problem(&format!(
        "{kafka}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"k\"\n[routes.plugins.kafka-proxy]\nkey_prefix_from_claim = \"sub\"\nkey_prefix_delimiter = \":\"\n"
    ));
    assert!(p.message.contains("verifies no JWT"), "{}", p.message);
    let p = one_problem(&format!(
        "{kafka}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"k\"\n[routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nkey_prefix_from_claim = \"sub\"\n\n[[consumers]]\nusername = \"c\"\n[consumers.plugins.jwt-auth]\nkey = \"c\"\nsecret = \"0123456789abcdef-long\"\n"
    ));
    assert_eq!(p.key, "routes[0].plugins.kafka-proxy.key_prefix_delimiter");
    let p = one_problem(&format!(
        "{kafka}[[consumers]]\nusername = \"c\"\nrecord_filter = {{ key_prefix = \"\" }}\n"
    ));
    assert!(
        p.message.contains("lets every record through"),
        "{}",
        p.message
    );
    let p = one_problem(&format!(
        "{kafka}[[consumers]]\nusername = \"c\"\nrecord_filter = {{ prefix = \"x\" }}\n"
    ));
    assert!(p.message.contains("prefix"), "{}", p.message);
    let ok = parse(
        &format!(
            "{kafka}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"k\"\n[routes.plugins.jwt-auth]\n[routes.plugins.kafka-proxy]\nkey_prefix_from_claim = \"sub\"\nkey_prefix_delimiter = \":\"\n\n\
             [[consumers]]\nusername = \"c\"\nrecord_filter = {{ key_prefix = \"c:\", headers = {{ tenant = \"7\" }} }}\n\
             [consumers.plugins.jwt-auth]\nkey = \"c\"\nsecret = \"0123456789abcdef-long\"\n"
        ),
        "test.toml",
    )
    .expect("valid");
    assert_eq!(
        ok.consumers[0].record_filter,
        Some(RecordFilter {
            key_prefix: Some("c:".into()),
            headers: vec![("tenant".into(), "7".into())],
        })
    );
    let route = &ok.routes[0];
    assert_eq!(
        route
            .plugins
            .kafka_proxy
            .as_ref()
            .and_then(|k| k.key_prefix_from_claim.as_deref()),
        Some("sub")
    );
}

#[test]
fn group_keys_are_checked() {
    assert!(check_kafka_proxy("").expect("valid").groups.is_none());
    let groups = check_kafka_proxy(
        "group_prefix = \"web.\"\nallowed_groups = [\"team-*\"]\ngroup_session_timeout_ms = 6000",
    )
    .expect("valid")
    .groups
    .expect("groups on");
    assert_eq!(groups.prefix, "web.");
    assert!(groups.allows("team-a") && !groups.allows("billing"));
    assert_eq!(groups.session_timeout, std::time::Duration::from_secs(6));
    assert_eq!(
        groups.auto_commit_interval,
        std::time::Duration::from_secs(5)
    );
    let default = check_kafka_proxy("group_prefix = \"web.\"").unwrap();
    assert!(default.groups.unwrap().allows("anything"));
    for (text, key) in [
        ("allowed_groups = [\"a\"]", "allowed_groups"),
        ("group_prefix = \"\"", "group_prefix"),
        ("group_prefix = \"a b\"", "group_prefix"),
        (
            "group_prefix = \"w.\"\nallowed_groups = [\"a/b\"]",
            "allowed_groups[0]",
        ),
        (
            "group_prefix = \"w.\"\nallowed_groups = []",
            "allowed_groups",
        ),
        (
            "group_prefix = \"w.\"\ngroup_session_timeout_ms = 10",
            "group_session_timeout_ms",
        ),
    ] {
        let e = check_kafka_proxy(text).unwrap_err();
        assert_eq!(e.problems[0].key, key, "{text}");
    }
}

#[test]
fn identity_providers_are_checked() {
    let route = format!(
        "{UPSTREAM}[[routes]]\nid = \"a\"\nuri = \"/\"\nupstream_id = \"web\"\n[routes.plugins.jwt-auth]\n"
    );
    let consumer =
        "[[consumers]]\nusername = \"staff\"\n[consumers.plugins.jwt-auth]\nprovider = \"sso\"\n";
    let with = |provider: &str| {
        format!("{route}[[identity_providers]]\nid = \"sso\"\n{provider}\n{consumer}")
    };
    let good = "issuer = \"https://sso.example.com/realms/acme\"\naudiences = [\"streamgate\"]";
    let ok = parse(&with(good), "t").expect("valid");
    let p = &ok.identity_providers[0];
    assert_eq!(p.issuer, "https://sso.example.com/realms/acme");
    assert_eq!(p.jwks_url, None, "discovery by default");
    assert_eq!(p.algorithms.len(), 9);
    assert!(!p.algorithms.iter().any(|a| a.starts_with("HS")));
    assert_eq!(p.leeway, std::time::Duration::from_secs(30));
    assert_eq!(ok.consumers[0].jwt_provider.as_deref(), Some("sso"));
    assert!(ok.consumers[0].jwt.is_none());

    let has = |text: String, says: &str| {
        let all = problems(&text);
        assert!(
            all.iter().any(|p| p.message.contains(says)),
            "{says}: {all:#?}"
        );
    };
    has(
        with("issuer = \"http://sso.example.com\"\naudiences = [\"a\"]"),
        "plain HTTP to another machine",
    );
    has(with("issuer = \"sso\"\naudiences = [\"a\"]"), "not a URL");
    has(with("issuer = \"https://sso.example.com\""), "no audiences");
    has(
        with(&format!("{good}\nalgorithms = [\"HS256\"]")),
        "not an algorithm a key set verifies",
    );
    has(
        with(&format!("{good}\nalgorithms = [\"none\"]")),
        "not an algorithm a key set verifies",
    );
    has(
        with(&format!("{good}\njwks_url = \"ftp://x/keys\"")),
        "not an https:// URL",
    );
    has(
        with(&format!(
            "{good}\nrefresh_min_seconds = 600\nrefresh_max_seconds = 60"
        )),
        "below refresh_min_seconds",
    );
    // Loopback over plain HTTP is allowed (a provider beside the gateway).
    parse(
        &with("issuer = \"http://127.0.0.1:5556/dex\"\naudiences = [\"a\"]"),
        "t",
    )
    .expect("loopback http");
    // Consumers and providers must meet.
    has(
        format!("{route}{consumer}"),
        "no [[identity_providers]] entry has the id \"sso\"",
    );
    has(
        format!("{route}[[identity_providers]]\nid = \"sso\"\n{good}\n[[consumers]]\nusername = \"u\"\n[consumers.plugins.jwt-auth]\nkey = \"u\"\nsecret = \"0123456789abcdef-long\"\n"),
        "no consumer names this provider",
    );
    has(
        with(good).replace("provider = \"sso\"", "provider = \"sso\"\nkey = \"k\""),
        "provider is given beside key",
    );
}
