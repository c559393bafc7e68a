//! Route matching: which route serves a request. Pure: it reads the checked routes and the
//! request's host, method and path, nothing else.
//!
//! Order, as documented in the README: a route is a candidate when its host and method filters
//! accept the request and one of its paths matches. Among candidates an exact path beats any
//! prefix, a longer prefix beats a shorter one, then the higher `priority` wins, then the route
//! that comes first in the file.

use std::borrow::Cow;
use streamgate_config::model::{HostPattern, PathPattern, Route};

/// How a candidate ranks: path specificity, then priority, then earlier in the file.
type Rank = (Specificity, i32, std::cmp::Reverse<usize>);

/// How specifically a path pattern matched; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Prefix(usize),
    Exact,
}

/// The index (`Route::index`, its place in the file) of the route that serves a request, if
/// any. `host` may carry a port, which is ignored, and one trailing dot (`example.com.` is the
/// same name as `example.com`), which is dropped.
pub(crate) fn best<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
    host: Option<&str>,
    method: &str,
    path: &str,
) -> Option<usize> {
    let host = host.map(|h| {
        let h = strip_port(h);
        h.strip_suffix('.').unwrap_or(h)
    });
    let mut best: Option<Rank> = None;
    for route in routes {
        if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
            continue;
        }
        if !route.hosts.is_empty() {
            let Some(host) = host else { continue };
            if !route.hosts.iter().any(|h| host_matches(h, host)) {
                continue;
            }
        }
        let Some(spec) = route
            .paths
            .iter()
            .filter_map(|p| path_matches(p, path))
            .max()
        else {
            continue;
        };
        let rank = (spec, route.priority, std::cmp::Reverse(route.index));
        if best.is_none_or(|r| rank > r) {
            best = Some(rank);
        }
    }
    best.map(|(_, _, std::cmp::Reverse(index))| index)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
        HostPattern::Wildcard(suffix) => {
            host.len() > suffix.len()
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        }
    }
}

fn path_matches(pattern: &PathPattern, path: &str) -> Option<Specificity> {
    match pattern {
        PathPattern::Exact(p) => (p == path).then_some(Specificity::Exact),
        PathPattern::Prefix(p) => path
            .starts_with(p.as_str())
            .then_some(Specificity::Prefix(p.len())),
    }
}

/// A request path as it is matched and forwarded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NormalPath<'a> {
    /// The normalised path: sent to the node and seen by plugins.
    pub forward: Cow<'a, str>,
    /// What routes are matched against: `forward`, without `;` path parameters when the gateway
    /// normalises like a servlet container.
    pub matched: Cow<'a, str>,
}

/// Normalises a request path the way the nodes behind the gateway will read it, so that no
/// spelling of a path reaches a node while dodging the route (and plugins) meant for it:
/// percent-encoded unreserved characters are decoded (`/%61dmin` is `/admin`), runs of `/` are
/// merged (`//admin` is `/admin`), and what cannot be normalised safely is refused with the
/// reason: an encoded `/`, `\` or NUL (`%2F`, `%5C`, `%00`), a backslash, a malformed `%`
/// escape, and `.`/`..` segments (raw or encoded). Other escapes stay as written. With
/// `servlet`, `;` path parameters are left out of the matched path (`/admin;x/y` matches as
/// `/admin/y`), as Java servlet containers ignore them. Case is kept: matching is
/// case-sensitive, as in nginx. No allocation for a path that is already normal.
pub(crate) fn normalize(path: &str, servlet: bool) -> Result<NormalPath<'_>, &'static str> {
    if !path.starts_with('/') {
        return Err("the path must start with `/`");
    }
    let plain = !path.contains(['%', '\\']) && !path.contains("//") && !path.contains("/.");
    let forward: Cow<'_, str> = if plain {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(decode_and_merge(path)?)
    };
    if has_dot_segment(&forward) {
        return Err("the path has `.` or `..` segments");
    }
    let matched = if servlet && forward.contains(';') {
        let without: String = forward
            .split('/')
            .map(|segment| segment.split_once(';').map_or(segment, |(s, _)| s))
            .collect::<Vec<_>>()
            .join("/");
        if has_dot_segment(&without) {
            return Err("the path has `.` or `..` segments");
        }
        Cow::Owned(without)
    } else {
        forward.clone()
    };
    Ok(NormalPath { forward, matched })
}

/// Decodes escapes of unreserved characters and merges runs of `/`.
fn decode_and_merge(path: &str) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err("the path has a backslash"),
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err("the path has a malformed `%` escape");
                };
                let decoded = (hi * 16 + lo) as u8;
                match decoded {
                    b'/' => return Err("the path has an encoded `/` (%2F)"),
                    b'\\' => return Err("the path has an encoded backslash (%5C)"),
                    0 => return Err("the path has an encoded NUL (%00)"),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(c)
                    }
                    _ => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
                continue;
            }
            b'/' if out.last() == Some(&b'/') => {}
            _ => out.push(b),
        }
        i += 1;
    }
    // Only ASCII was decoded and escapes were copied whole, so the bytes are still UTF-8.
    String::from_utf8(out).map_err(|_| "the path is not UTF-8")
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Vec<std::sync::Arc<Route>> {
        let up = "[[upstreams]]\nid = \"u\"\nnodes = { \"127.0.0.1:1\" = 1 }\n";
        let config = streamgate_config::parse(&format!("{up}{text}"), "t").expect("valid");
        config.routes
    }

    fn id(
        routes: &[std::sync::Arc<Route>],
        host: Option<&str>,
        method: &str,
        path: &str,
    ) -> Option<String> {
        best(routes.iter().map(|r| &**r), host, method, path).map(|i| routes[i].id.clone())
    }

    const ROUTES: &str = r#"
[[routes]]
id = "catch-all"
uri = "/*"
upstream_id = "u"
[[routes]]
id = "api"
uri = "/api/*"
upstream_id = "u"
[[routes]]
id = "api-v2"
uri = "/api/v2/*"
upstream_id = "u"
[[routes]]
id = "health"
uri = "/api/health"
upstream_id = "u"
[[routes]]
id = "api-post"
uri = "/api/*"
methods = ["POST"]
priority = 5
upstream_id = "u"
[[routes]]
id = "tenant"
uri = "/api/*"
hosts = ["*.tenant.example"]
priority = 1
upstream_id = "u"
"#;

    #[test]
    fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
        let r = table(ROUTES);
        assert_eq!(
            id(&r, None, "GET", "/api/health").as_deref(),
            Some("health")
        );
        assert_eq!(id(&r, None, "GET", "/api/v2/x").as_deref(), Some("api-v2"));
        assert_eq!(id(&r, None, "GET", "/api/x").as_deref(), Some("api"));
        assert_eq!(id(&r, None, "GET", "/other").as_deref(), Some("catch-all"));
        // "/api/*" is the prefix "/api/": "/api" alone falls through to the catch-all.
        assert_eq!(id(&r, None, "GET", "/api").as_deref(), Some("catch-all"));
    }

    #[test]
    fn method_and_host_filters_then_priority() {
        let r = table(ROUTES);
        assert_eq!(id(&r, None, "POST", "/api/x").as_deref(), Some("api-post"));
        assert_eq!(
            id(&r, Some("a.tenant.example:8080"), "GET", "/api/x").as_deref(),
            Some("tenant")
        );
        assert_eq!(
            id(&r, Some("A.TENANT.EXAMPLE"), "GET", "/api/x").as_deref(),
            Some("tenant")
        );
        // The wildcard covers subdomains only, not the apex.
        assert_eq!(
            id(&r, Some("tenant.example"), "GET", "/api/x").as_deref(),
            Some("api")
        );
        // Priority 5 beats 1 among equal prefixes.
        assert_eq!(
            id(&r, Some("a.tenant.example"), "POST", "/api/x").as_deref(),
            Some("api-post")
        );
    }

    #[test]
    fn file_order_breaks_remaining_ties() {
        let r = table("[[routes]]\nid = \"first\"\nuri = \"/a\"\nupstream_id = \"u\"\n[[routes]]\nid = \"second\"\nuri = \"/a\"\nupstream_id = \"u\"\n");
        assert_eq!(id(&r, None, "GET", "/a").as_deref(), Some("first"));
    }

    #[test]
    fn no_match_is_none() {
        let r = table(
            "[[routes]]\nid = \"a\"\nuri = \"/a\"\nhosts = [\"x.com\"]\nupstream_id = \"u\"\n",
        );
        assert_eq!(id(&r, None, "GET", "/a"), None);
        assert_eq!(id(&r, Some("y.com"), "GET", "/a"), None);
        assert_eq!(id(&r, Some("x.com"), "GET", "/b"), None);
    }

    fn forward(path: &str) -> Result<String, &'static str> {
        normalize(path, false).map(|p| p.forward.into_owned())
    }

    #[test]
    fn paths_are_normalised_or_refused_with_the_reason() {
        assert_eq!(forward("/api/v1/x").as_deref(), Ok("/api/v1/x"));
        assert_eq!(forward("//admin/x").as_deref(), Ok("/admin/x"));
        assert_eq!(forward("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(forward("/%61dmin/x").as_deref(), Ok("/admin/x"));
        assert_eq!(forward("/%7Euser/%2d%5F").as_deref(), Ok("/~user/-_"));
        // Reserved and other characters stay escaped as written.
        assert_eq!(
            forward("/a%20b/%3F%c3%a9").as_deref(),
            Ok("/a%20b/%3F%c3%a9")
        );
        assert_eq!(forward("/a/..b/c.").as_deref(), Ok("/a/..b/c."));
        assert_eq!(
            forward("/admin%2fx"),
            Err("the path has an encoded `/` (%2F)")
        );
        assert_eq!(
            forward("/admin%2Fx"),
            Err("the path has an encoded `/` (%2F)")
        );
        assert_eq!(
            forward("/a%5cb"),
            Err("the path has an encoded backslash (%5C)")
        );
        assert_eq!(forward("/a%00"), Err("the path has an encoded NUL (%00)"));
        assert_eq!(forward("/a\\b"), Err("the path has a backslash"));
        assert_eq!(forward("/a%zz"), Err("the path has a malformed `%` escape"));
        assert_eq!(forward("/a%4"), Err("the path has a malformed `%` escape"));
        assert!(forward("/api/../admin").is_err());
        assert!(forward("/api/%2E%2e/admin").is_err());
        assert!(forward("/api/./x").is_err());
        assert!(forward("/api/.").is_err());
        assert!(forward("api").is_err());
    }

    #[test]
    fn servlet_mode_matches_without_path_parameters() {
        let p = normalize("/admin;jsessionid=1/x", true).expect("normal");
        assert_eq!(p.matched, "/admin/x");
        assert_eq!(p.forward, "/admin;jsessionid=1/x");
        let p = normalize("/admin;x/y", false).expect("normal");
        assert_eq!(p.matched, "/admin;x/y");
        assert!(normalize("/a/..;/admin", true).is_err());
        assert!(normalize("/a/..;/admin", false).is_ok());
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        let p = normalize("/api/items", false).expect("normal");
        assert!(matches!(p.forward, Cow::Borrowed(_)));
        assert!(matches!(p.matched, Cow::Borrowed(_)));
    }

    #[test]
    fn a_trailing_dot_in_the_host_is_the_same_name() {
        let r = table(ROUTES);
        assert_eq!(
            id(&r, Some("a.tenant.example.:8080"), "GET", "/api/x").as_deref(),
            Some("tenant")
        );
    }
}
