//! Reading a request: the client's address, `Host`, cookies, query parameters and browser
//! origins. One implementation of each, shared by the proxy, the plugins and pub/sub.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::net::IpAddr;

/// The client's IP address (none for a Unix-socket client).
pub(crate) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The host the request is for: its `Host` header, else the request target's authority.
pub(crate) fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of query parameter `name`, decoded as a form would be (`%XX`, `+` for space).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Every parameter of a query string, names and values decoded, in order (names may repeat).
pub(crate) fn query_params(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// Each `name=value` pair of a query string as written, with its decoded name.
fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
    query.split('&').map(|pair| {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        let decoded = form_urlencoded::parse(name.as_bytes())
            .next()
            .map_or(Cow::Borrowed(""), |(k, _)| k);
        (decoded, pair)
    })
}

/// The query string without parameter `name` (the other pairs exactly as written).
pub(crate) fn without_param(query: &str, name: &str) -> String {
    query_pairs(query)
        .filter(|(k, _)| k != name)
        .map(|(_, pair)| pair)
        .collect::<Vec<_>>()
        .join("&")
}

/// The query string with the value of parameter `name` written as `***`.
pub(crate) fn masked_param(query: &str, name: &str) -> String {
    query_pairs(query)
        .map(|(k, pair)| match pair.split_once('=') {
            Some((raw, _)) if k == name => Cow::Owned(format!("{raw}=***")),
            _ => Cow::Borrowed(pair),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Why a request is not a usable WebSocket handshake (RFC 6455 §4.2.1), if it is not;
/// `not_websocket` is the answer when it does not ask for a WebSocket at all.
pub(crate) fn websocket_handshake_problem(
    req: &RequestHeader,
    not_websocket: &'static str,
) -> Option<&'static str> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.method != http::Method::GET {
        return Some("a WebSocket handshake must use GET");
    }
    if req.version != http::Version::HTTP_11 {
        return Some("a WebSocket handshake must use HTTP/1.1");
    }
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Some(not_websocket);
    }
    if header("sec-websocket-version") != Some("13") {
        return Some("unsupported WebSocket version: send `Sec-WebSocket-Version: 13`");
    }
    if header("sec-websocket-key").is_none_or(|k| k.trim().len() != 24) {
        return Some("missing or malformed `Sec-WebSocket-Key`");
    }
    None
}

/// Whether the request asks to switch protocols (it has an `Upgrade` header).
pub(crate) fn asks_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE)
}

/// Whether the request declares a body (`Content-Length` above 0, or `Transfer-Encoding`).
pub(crate) fn declares_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Whether a browser `Origin` is in a configured list. The configuration keeps origins in lower
/// case without a trailing `/`; the request's is compared the same way.
pub(crate) fn origin_listed(origin: &str, listed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    listed.iter().any(|o| o.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_headers_and_pairs() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("cookie", "a=1; jwt=tok.en.sig")
            .expect("header");
        req.append_header("cookie", "user=alice").expect("header");
        assert_eq!(cookie(&req, "jwt"), Some("tok.en.sig"));
        assert_eq!(cookie(&req, "user"), Some("alice"));
        assert_eq!(cookie(&req, "j"), None);
    }

    #[test]
    fn query_parameters_are_found_decoded_removed_and_masked() {
        assert_eq!(
            query_param("a=1&apikey=s%3Dcret%2B&b=2", "apikey").as_deref(),
            Some("s=cret+")
        );
        assert_eq!(query_param("apikey=a+b", "apikey").as_deref(), Some("a b"));
        assert_eq!(query_param("xapikey=1", "apikey"), None);
        assert_eq!(query_param("k=%zz%4", "k").as_deref(), Some("%zz%4"));
        assert_eq!(without_param("a=1&apikey=s&b=2", "apikey"), "a=1&b=2");
        assert_eq!(without_param("apikey=s", "apikey"), "");
        assert_eq!(masked_param("a=1&jwt=s3cret", "jwt"), "a=1&jwt=***");
        // A name spelled with escapes is the same parameter to the node, so it is masked and
        // removed too.
        assert_eq!(masked_param("api%6bey=s&b", "apikey"), "api%6bey=***&b");
        assert_eq!(without_param("api%6bey=s&b=%20", "apikey"), "b=%20");
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/ws", None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn websocket_handshakes_are_checked() {
        let valid = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(websocket_handshake_problem(&request(&valid), "x"), None);
        let h2c = [
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ];
        assert_eq!(websocket_handshake_problem(&request(&h2c), "x"), Some("x"));
        assert!(websocket_handshake_problem(&request(&valid[..3]), "x").is_some());
        let mut http10 = request(&valid);
        http10.set_version(http::Version::HTTP_10);
        assert!(websocket_handshake_problem(&http10, "x").is_some());
    }

    #[test]
    fn declared_bodies_are_seen() {
        assert!(!declares_body(&request(&[])));
        assert!(!declares_body(&request(&[("content-length", "0")])));
        assert!(declares_body(&request(&[("content-length", "5")])));
        assert!(declares_body(&request(&[("transfer-encoding", "chunked")])));
    }

    #[test]
    fn origins_compare_without_case_or_trailing_slash() {
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_listed("https://App.Example/", &listed));
        assert!(!origin_listed("https://app.example.evil", &listed));
    }
}
