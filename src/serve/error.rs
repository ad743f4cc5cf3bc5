//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`)
//! with the status a client of OpenAI would get for the same problem.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::{AbortReason, ItemError};

/// A request that cannot be answered.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn invalid(message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            param,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The error for an upstream call that produced no reply. `status` is
    /// the HTTP status of the last failed upstream attempt, when it had one:
    /// a key the upstream refuses is the client's 401 too, a request it
    /// finds invalid is the client's 400; everything else is a bad gateway.
    pub fn upstream(err: ItemError, status: Option<u16>) -> Self {
        match err {
            ItemError::Aborted(AbortReason::ErrorRate) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "the upstream failed most recent requests; cai serve pauses sending to it for a while",
            )
            .code("upstream_unavailable")
            .retry_after(super::BREAKER_COOLDOWN.as_secs()),
            ItemError::Aborted(r) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                format!("the server is stopping ({r})"),
            )
            .retry_after(5),
            ItemError::Stop(msg) | ItemError::Reject(msg) => match status {
                Some(401) | Some(403) => Self::new(
                    StatusCode::from_u16(status.unwrap_or(401)).unwrap_or(StatusCode::UNAUTHORIZED),
                    "authentication_error",
                    "the upstream refused the key it was sent (HTTP 401/403): the server's own key, or the client's with --forward-client-key",
                )
                .code("upstream_authentication"),
                Some(404) => Self::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("upstream: {msg}"),
                )
                .code("upstream_not_found"),
                Some(429) => Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("upstream still rate-limited after retries: {msg}"),
                )
                .retry_after(5),
                Some(s @ 400..=499) => Self::new(
                    StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                    "invalid_request_error",
                    format!("upstream: {msg}"),
                ),
                _ => Self::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    format!("upstream: {msg}"),
                )
                .code("upstream_error"),
            },
        }
    }

    /// The error body as JSON.
    pub fn body(&self) -> String {
        serde_json::to_string(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body(),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
