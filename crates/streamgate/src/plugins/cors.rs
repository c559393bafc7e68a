//! `cors`: Cross-Origin Resource Sharing for browsers calling an HTTP route.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! before authentication (browsers send preflights without credentials) and without contacting
//! the upstream: 204 with the allowed methods and headers, or 403 for an origin, method or header
//! that is not allowed. Other requests from an allowed origin get `Access-Control-Allow-Origin`
//! (and the exposed headers) on every answer: the upstream's, and the gateway's own refusals (a
//! page can then read why a later plugin said 401 or 429). A disallowed origin gets no CORS
//! headers, so the browser keeps the answer from the page.
//!
//! Browsers apply no CORS to WebSockets: a page on any site may open one, with the user's
//! cookies. So when `allow_origins` lists origins, a WebSocket (any `Upgrade`) handshake from
//! another origin is refused here with 403, before the node sees it (cross-site WebSocket
//! hijacking). Handshakes without `Origin` (non-browser clients) are not affected.

use super::Plugin;
use crate::ctx::RequestCtx;
use crate::request::origin_listed;
use crate::respond::{self, Answer};
use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use streamgate_config::model::Cors;

/// The plugin on one route.
#[derive(Debug)]
pub(crate) struct CorsPlugin {
    settings: Cors,
    methods: String,
    expose: Option<String>,
}

impl CorsPlugin {
    /// The plugin with its checked settings.
    pub(crate) fn new(settings: Cors) -> Self {
        let methods = settings.allow_methods.join(", ");
        let expose =
            (!settings.expose_headers.is_empty()).then(|| settings.expose_headers.join(", "));
        Self {
            settings,
            methods,
            expose,
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request's `Origin`, when allowed.
    fn allow_origin<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        let origin = req.headers.get(header::ORIGIN)?.to_str().ok()?;
        match &self.settings.allow_origins {
            None if !self.settings.allow_credentials => Some("*"),
            None => None,
            Some(list) => origin_listed(origin, list).then_some(origin),
        }
    }

    /// Why a preflight is refused, if it is.
    fn preflight_problem(&self, req: &RequestHeader) -> Option<String> {
        let method = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self
            .settings
            .allow_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return Some(format!("method {method} is not allowed from other origins"));
        }
        if let Some(allowed) = &self.settings.allow_headers {
            let asked = req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            for name in asked.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                    return Some(format!("header {name} is not allowed from other origins"));
                }
            }
        }
        None
    }

    /// The CORS headers for an answer to a request from an allowed origin (none otherwise).
    fn answer_headers(&self, req: &RequestHeader) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = self
            .allow_origin(req)
            .and_then(|o| HeaderValue::from_str(o).ok())
        else {
            return Vec::new();
        };
        let specific = origin != "*";
        let mut headers = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)];
        if specific {
            headers.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        if self.settings.allow_credentials {
            headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(expose) = self
            .expose
            .as_ref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            headers.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose));
        }
        headers
    }

    /// A WebSocket (or other upgrade) handshake from a browser origin the list leaves out.
    fn is_foreign_websocket(&self, req: &RequestHeader) -> bool {
        self.settings.allow_origins.is_some()
            && req.headers.contains_key(header::UPGRADE)
            && req.headers.contains_key(header::ORIGIN)
            && self.allow_origin(req).is_none()
    }

    fn is_preflight(req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req.headers.contains_key(header::ORIGIN)
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }
}

#[async_trait]
impl Plugin for CorsPlugin {
    fn name(&self) -> &'static str {
        "cors"
    }

    async fn access(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        let req = session.req_header();
        if !Self::is_preflight(req) {
            if self.is_foreign_websocket(req) {
                refuse(
                    session,
                    ctx,
                    "this origin may not open a WebSocket on this route",
                )
                .await?;
                return Ok(true);
            }
            ctx.answer_headers = self.answer_headers(req);
            return Ok(false);
        }
        let origin = self.allow_origin(req).map(str::to_string);
        let refusal = match &origin {
            None => Some("this origin may not call this route".to_string()),
            Some(_) => self.preflight_problem(req),
        };
        if let Some(why) = refusal {
            refuse(session, ctx, &why).await?;
            return Ok(true);
        }
        let origin = origin.unwrap_or_else(|| "*".into());
        let allow_headers = match &self.settings.allow_headers {
            Some(list) => list.join(", "),
            None => req
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        };
        let mut resp = ResponseHeader::build(204, Some(7))?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.as_str())?;
        if !allow_headers.is_empty() {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers)?;
        }
        resp.insert_header(
            header::ACCESS_CONTROL_MAX_AGE,
            self.settings.max_age_seconds.to_string(),
        )?;
        if self.settings.allow_credentials {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
        }
        resp.insert_header(
            header::VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        )?;
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
        respond::header(session, ctx, resp, true).await?;
        Ok(true)
    }

    fn response(
        &self,
        _session: &Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        for (name, value) in &ctx.answer_headers {
            if name == header::VARY {
                response.append_header(name.clone(), value.clone())?;
            } else {
                response.insert_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }
}

/// Answers 403 with the reason.
async fn refuse(session: &mut Session, ctx: &mut RequestCtx, why: &str) -> pingora::Result<()> {
    let message = format!("403 Forbidden (CORS): {why}");
    respond::send(session, ctx, Answer::error(403, &message)).await
}
