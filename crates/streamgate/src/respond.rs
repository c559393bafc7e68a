//! The one way the gateway answers a request itself: refusals, errors, preflights and the 101
//! of a detached connection. Every answer records its status on the context (for the access
//! log and metrics); the JSON ones also carry the headers plugins asked every answer to carry
//! (CORS).

use crate::ctx::RequestCtx;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A JSON answer the gateway writes itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer<'a> {
    status: u16,
    field: &'static str,
    message: &'a str,
    retry_after: Option<u64>,
    /// A 401 from an auth plugin: it counts against the caller's failed authentications.
    failed_auth: bool,
}

impl<'a> Answer<'a> {
    /// `{"error_msg": message}`: the gateway's own refusals and errors.
    pub(crate) fn error(status: u16, message: &'a str) -> Self {
        Self {
            status,
            field: "error_msg",
            message,
            retry_after: None,
            failed_auth: false,
        }
    }

    /// `{"message": message}`: the shape APISIX's auth plugins answer with.
    /// A 401 counts as a failed authentication of the caller.
    pub(crate) fn auth(status: u16, message: &'a str) -> Self {
        Self {
            field: "message",
            failed_auth: status == 401,
            ..Self::error(status, message)
        }
    }

    /// Adds `Retry-After: seconds`.
    pub(crate) fn retry_after(self, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }
}

/// Writes `answer` as the whole response. A failed authentication is counted before the answer
/// goes out, so the caller's next attempt already meets the count.
pub(crate) async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer<'_>,
) -> pingora::Result<()> {
    if answer.failed_auth {
        if let Some(slot) = &ctx.slot {
            slot.auth_failed();
        }
    }
    let mut body = serde_json::Map::with_capacity(1);
    body.insert(answer.field.into(), answer.message.into());
    let body = serde_json::Value::Object(body).to_string();
    let mut resp = ResponseHeader::build(answer.status, Some(3 + ctx.answer_headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some(seconds) = answer.retry_after {
        resp.insert_header("retry-after", seconds.to_string())?;
    }
    for (name, value) in &ctx.answer_headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    header(session, ctx, resp, false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Writes a response header as the caller built it (a preflight's 204, a 101, a node's answer
/// to an upgrade request); `end` when no body follows.
pub(crate) async fn header(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: ResponseHeader,
    end: bool,
) -> pingora::Result<()> {
    ctx.status = Some(resp.status.as_u16());
    session.write_response_header(Box::new(resp), end).await
}
