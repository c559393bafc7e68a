//! The forwarding headers a node receives: who called (`X-Forwarded-For`, `X-Real-IP`), over
//! what (`X-Forwarded-Proto`) and for which host (`X-Forwarded-Host`).
//!
//! This runs for every proxied request, and was a tenth of the gateway's own instructions per
//! request (BENCHMARKS.md, "Per request"): the client's address is written without `fmt` (only
//! a trusted proxy's list is extended with `format!`), and the host is the client's own header
//! value, shared rather than copied.

use http::HeaderValue;
use pingora::http::RequestHeader;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

/// Sets the forwarding headers on `upstream` for a request that arrived as `downstream` from
/// `client`. `X-Forwarded-For` is kept and appended to only when the client is one of
/// `trusted_proxies`, else replaced.
pub(crate) fn set(
    upstream: &mut RequestHeader,
    downstream: &RequestHeader,
    client: Option<IpAddr>,
    tls: bool,
    trusted_proxies: &[ipnet::IpNet],
) -> pingora::Result<()> {
    if let Some(client) = client {
        let ip = ip_value(client);
        // Only a trusted proxy's list is kept: anyone else could write any address there.
        let prior = trusted_proxies
            .iter()
            .any(|net| net.contains(&client))
            .then(|| downstream.headers.get("x-forwarded-for"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty());
        match prior {
            Some(prior) => {
                upstream.insert_header("x-forwarded-for", format!("{prior}, {client}"))?
            }
            None => upstream.insert_header("x-forwarded-for", ip.clone())?,
        }
        upstream.insert_header("x-real-ip", ip)?;
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    upstream.insert_header("x-forwarded-proto", proto)?;
    // The Host header as the client sent it, else the request target's authority (as
    // `request::host` reads it).
    let host = match downstream.headers.get(http::header::HOST) {
        Some(host) if host.to_str().is_ok() => Some(host.clone()),
        _ => downstream
            .uri
            .host()
            .and_then(|h| HeaderValue::from_str(h).ok()),
    };
    if let Some(host) = host {
        upstream.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// `ip` in text, as a header value. Written into a stack buffer: `IpAddr`'s `Display` into a
/// `String` cost more than the rest of this module together.
fn ip_value(ip: IpAddr) -> HeaderValue {
    // The longest text form of an IPv6 address is 45 bytes (`ffff:…:255.255.255.255`).
    let mut buf = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => write_v4(v4, &mut buf),
        IpAddr::V6(v6) => {
            let mut rest = &mut buf[..];
            let _ = write!(rest, "{v6}");
            let left = rest.len();
            buf.len() - left
        }
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Writes `ip` in dotted-decimal form at the start of `buf`; returns its length (at most 15).
fn write_v4(ip: Ipv4Addr, buf: &mut [u8; 48]) -> usize {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.100.9",
            "192.168.10.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
        req.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn the_node_learns_the_client_the_scheme_and_the_host() {
        let downstream = request(&[("Host", "shop.example"), ("X-Forwarded-For", "6.6.6.6")]);
        let mut upstream = downstream.clone();
        let client = "203.0.113.7".parse().ok();
        set(&mut upstream, &downstream, client, true, &[]).unwrap();
        assert_eq!(header(&upstream, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(header(&upstream, "x-real-ip"), Some("203.0.113.7"));
        assert_eq!(header(&upstream, "x-forwarded-proto"), Some("https"));
        assert_eq!(header(&upstream, "x-forwarded-host"), Some("shop.example"));
    }

    #[test]
    fn a_trusted_proxy_list_is_extended() {
        let downstream = request(&[("Host", "a"), ("X-Forwarded-For", "198.51.100.1")]);
        let mut upstream = downstream.clone();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        set(
            &mut upstream,
            &downstream,
            "10.1.2.3".parse().ok(),
            false,
            &trusted,
        )
        .unwrap();
        assert_eq!(
            header(&upstream, "x-forwarded-for"),
            Some("198.51.100.1, 10.1.2.3")
        );
        assert_eq!(header(&upstream, "x-real-ip"), Some("10.1.2.3"));
        assert_eq!(header(&upstream, "x-forwarded-proto"), Some("http"));
    }
}
