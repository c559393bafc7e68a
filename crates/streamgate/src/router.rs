//! Route matching: which route serves a request. Pure: it reads the checked routes and the
//! request's host, method and path, nothing else.
//!
//! Order, as documented in the README: a route is a candidate when its host and method filters
//! accept the request and one of its paths matches. Among candidates an exact path beats any
//! prefix, a longer prefix beats a shorter one, then the higher `priority` wins, then the route
//! that comes first in the file.

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
/// any. `host` may carry a port; it is ignored.
pub(crate) fn best<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
    host: Option<&str>,
    method: &str,
    path: &str,
) -> Option<usize> {
    let host = host.map(strip_port);
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

/// Whether a request path is safe to route: absolute, and without `.`/`..` segments (raw or
/// percent-encoded) that could step outside the prefix a route was matched on.
pub(crate) fn is_routable_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    path.split('/').all(|segment| {
        let lowered = segment.to_ascii_lowercase();
        let decoded = lowered.replace("%2e", ".");
        decoded != "." && decoded != ".."
    })
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

    #[test]
    fn dot_segments_are_not_routable() {
        assert!(is_routable_path("/api/v1/x"));
        assert!(is_routable_path("/a/..b/c."));
        assert!(!is_routable_path("/api/../admin"));
        assert!(!is_routable_path("/api/%2E%2e/admin"));
        assert!(!is_routable_path("/api/./x"));
        assert!(!is_routable_path("api"));
    }
}
