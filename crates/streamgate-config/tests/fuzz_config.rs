//! Config parsing never panics: the shipped configuration and the test configurations, mutated
//! at random (bytes flipped, cut, duplicated, values swapped for hostile ones), must each give a
//! config or an error list. `STREAMGATE_FUZZ_CONFIGS` sets the count (CI: 20,000; `make fuzz`:
//! 200,000); the seed is printed so that a failure can be replayed with `STREAMGATE_FUZZ_SEED`.

use streamgate_testkit::fuzz::{self, Rng};

const SEEDS: &[&str] = &[
    include_str!("../../../conf/streamgate.toml"),
    r#"
[server]
listen = ["127.0.0.1:9080"]
[server.limits]
max_connections = 10
[admin]
listen = "127.0.0.1:9091"
[[upstreams]]
id = "web"
nodes = { "127.0.0.1:8080" = 1, "[::1]:8081" = 0 }
type = "chash"
hash_on = "cookie"
key = "sid"
timeout = { connect = 0.5, send = 1, read = 2 }
[upstreams.health_check]
path = "/healthz"
[[upstreams]]
id = "kafka"
scheme = "kafka"
nodes = { "127.0.0.1:9092" = 1 }
[upstreams.tls]
verify = false
[[routes]]
id = "a"
uris = ["/a/*", "/b"]
hosts = ["*.example.com"]
methods = ["GET"]
priority = 3
upstream_id = "web"
[routes.plugins.limit-req]
rate = 0.5
key = "consumer"
[routes.plugins.key-auth]
query = "k"
[[routes]]
id = "k"
uri = "/kafka"
upstream_id = "kafka"
[routes.plugins.kafka-proxy]
topics = ["t", "p-*"]
sasl = { mechanism = "SCRAM-SHA-512", username = "u", password = "${HOME}" }
allowed_origins = ["https://app.example.com"]
[routes.plugins.jwt-auth]
[[consumers]]
username = "c"
topics = ["t"]
[consumers.plugins.key-auth]
key = "0123456789abcdef"
[consumers.plugins.jwt-auth]
key = "c"
secret = "0123456789abcdef0123"
"#,
];

/// Replacement tokens that stress the checker: wrong types, extremes, odd strings.
const HOSTILE: &[&str] = &[
    "-1",
    "0",
    "9223372036854775807",
    "-9223372036854775808",
    "1e309",
    "nan",
    "inf",
    "\"\"",
    "\"${NOPE}\"",
    "\"$${x}\"",
    "[]",
    "{}",
    "true",
    "\"::\"",
    "\"[::1]\"",
    "\"a:99999\"",
    "\"/*/*\"",
    "\"*\"",
    "\"\\u0000\"",
    "1979-05-27T07:32:00Z",
    "[[1]]",
    "{ a = { b = 1 } }",
    "\"é\u{1F600}\"",
    "0.0",
    "-0.5",
    "\"../../etc/passwd\"",
];

fn mutate(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 => {
                if at < bytes.len() {
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let end = (at + rng.below(40)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let end = (at + rng.below(200)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            3 | 4 => {
                // Swap a value after an `=` for a hostile one.
                if let Some(eq) = bytes[at..].iter().position(|&b| b == b'=') {
                    let start = at + eq + 1;
                    let end = bytes[start..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |p| start + p);
                    let token = HOSTILE[rng.below(HOSTILE.len())];
                    bytes.splice(start..end, format!(" {token}").into_bytes());
                }
            }
            5 => bytes.insert(at, rng.next_u64() as u8),
            _ => bytes.truncate(at),
        }
    }
    bytes
}

#[test]
fn mutated_configs_never_panic() {
    let count = fuzz::count("STREAMGATE_FUZZ_CONFIGS", 20_000);
    let seed = fuzz::seed();
    println!("config fuzz: {count} cases, STREAMGATE_FUZZ_SEED={seed}");
    let mut rng = Rng::new(seed);
    let (mut ok, mut refused) = (0u64, 0u64);
    for case in 0..count {
        let base = SEEDS[rng.below(SEEDS.len())];
        let input = mutate(&mut rng, base);
        let text = String::from_utf8_lossy(&input);
        let outcome = std::panic::catch_unwind(|| streamgate_config::parse(&text, "fuzz.toml"));
        match outcome {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(
                    !e.problems.is_empty(),
                    "an error names at least one problem"
                );
                refused += 1;
            }
            Err(_) => panic!(
                "parse panicked on case {case} (STREAMGATE_FUZZ_SEED={seed}); input:\n{text}"
            ),
        }
    }
    println!("config fuzz: {ok} accepted, {refused} refused, no panic");
    assert!(refused > 0 && ok + refused == count);
}
