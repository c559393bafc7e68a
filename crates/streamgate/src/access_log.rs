//! The access log line and the per-request metrics, written once a request ends (for an
//! upgraded connection: once it is handed to its own task).

use crate::ctx::RequestCtx;
use crate::request;
use pingora::proxy::Session;
use std::net::SocketAddr;

/// Where a request went, as far as it got.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served<'a> {
    /// The matched route's id.
    pub route: Option<&'a str>,
    /// The route's upstream id.
    pub upstream: Option<&'a str>,
    /// The HTTP node tried last.
    pub node: Option<SocketAddr>,
}

/// Counts the request in `streamgate_http_requests_total` and its duration, and writes the
/// access log line (target `streamgate::access`), credentials in the query masked.
pub(crate) fn write(
    session: &Session,
    error: Option<&pingora::Error>,
    ctx: &RequestCtx,
    served: Served<'_>,
) {
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.status)
        .unwrap_or(0);
    let route = served.route.unwrap_or("-");
    let metrics = crate::metrics::metrics();
    metrics
        .http_requests
        .with_label_values(&[route, status_label(status)])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route])
        .observe(ctx.started.elapsed().as_secs_f64());
    tracing::info!(
        target: "streamgate::access",
        client = %ctx.client.or_else(|| request::client_ip(session)).map(|i| i.to_string()).unwrap_or_default(),
        method = %req.method,
        uri = %redacted_uri(&req.uri, &ctx.secret_params),
        host = request::host(req).unwrap_or(""),
        route,
        consumer = ctx.consumer.as_ref().map_or("-", |c| c.username.as_str()),
        upstream = served.upstream.unwrap_or("-"),
        node = %served.node.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        status,
        bytes = session.body_bytes_sent(),
        duration_ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
        error = error.map(|e| e.to_string()).unwrap_or_default(),
        "access"
    );
}

/// A status code as a metric label, without allocating for the codes the gateway sees.
fn status_label(status: u16) -> &'static str {
    match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        0 => "0",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The request URI for the access log, with the credential-carrying query parameters masked.
fn redacted_uri(uri: &http::Uri, secrets: &[String]) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    let mut query = std::borrow::Cow::Borrowed(query);
    for name in secrets {
        query = std::borrow::Cow::Owned(request::masked_param(&query, name));
    }
    format!("{}?{query}", uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_are_masked() {
        let secrets = ["apikey".to_string(), "jwt".to_string()];
        assert_eq!(
            redacted_uri(&"/k?a=1&jwt=s3cret&apikey=k".parse().unwrap(), &secrets),
            "/k?a=1&jwt=***&apikey=***"
        );
        assert_eq!(redacted_uri(&"/k?a=1".parse().unwrap(), &secrets), "/k?a=1");
        assert_eq!(redacted_uri(&"/k".parse().unwrap(), &secrets), "/k");
    }
}
