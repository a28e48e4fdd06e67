//! `ApiError`: every failure an answer can report, and its mapping to Cloudreve's codes and HTTP status.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{captcha::CaptchaKind, correlation, envelope::Envelope, metrics::EnvelopeCode};

/// Cloudreve's message for a failed captcha of each kind.
fn captcha_message(kind: CaptchaKind) -> &'static str {
    match kind {
        CaptchaKind::Recaptcha => "Verification failed, please refresh the page and retry.",
        CaptchaKind::Turnstile | CaptchaKind::Cap => "Captcha validation failed",
        CaptchaKind::Off | CaptchaKind::Normal => "CAPTCHA not match.",
    }
}

/// A failed request. Business errors are HTTP 200 with a code, as Cloudreve answers them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 40001: the body is not a JSON object of the expected shape.
    #[error("Parameter error")]
    Parameter(String),
    /// 40001: no email was given.
    #[error("Email cannot be empty")]
    EmailEmpty,
    /// 40001: the email is not an address.
    #[error("Email format error")]
    EmailFormat,
    /// 40001 with a message of its own (`Password too short`, `Failed to parse object ID`, …).
    #[error("{0}")]
    Invalid(&'static str),
    /// 40030: the reset link is wrong, expired, used or revoked (one answer for all four).
    #[error("Link is expired")]
    LinkExpired,
    /// 429: too many requests from this client; retry after this many seconds.
    #[error("Too many requests, please try again later")]
    RateLimited(u64),
    /// 40001, HTTP 413: the body is over the limit.
    #[error("Request body is too large")]
    BodyTooLarge,
    /// 40026: the captcha was not passed (or its provider could not be asked).
    #[error("{}", captcha_message(*.0))]
    Captcha(CaptchaKind, String),
    /// 40028, HTTP 503: the job could not be queued (the broker is unreachable or did not confirm).
    #[error("Failed to send reset email, please try again later")]
    QueueUnavailable(String),
    /// HTTP 404: no such route.
    #[error("Not found")]
    NotFound,
    /// HTTP 405: the route exists with another method.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 50005, HTTP 503: the request took longer than `RESETMAIL_REQUEST_TIMEOUT` and was abandoned.
    #[error("Request timed out, please try again later")]
    Timeout(std::time::Duration),
    /// 50005: a bug or an unexpected failure.
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    /// Cloudreve's error code.
    pub fn code(&self) -> i32 {
        match self {
            Self::Parameter(_)
            | Self::EmailEmpty
            | Self::EmailFormat
            | Self::Invalid(_)
            | Self::BodyTooLarge => 40001,
            Self::LinkExpired => 40030,
            Self::RateLimited(_) => 429,
            Self::Captcha(..) => 40026,
            Self::QueueUnavailable(_) => 40028,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Timeout(_) | Self::Internal(_) => 50005,
        }
    }

    /// The HTTP status: 200 for business errors, honest statuses for what proxies must see.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Parameter(_)
            | Self::EmailEmpty
            | Self::EmailFormat
            | Self::Invalid(_)
            | Self::LinkExpired
            | Self::Captcha(..) => StatusCode::OK,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueUnavailable(_) | Self::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer's body: the code and message, the detail in debug mode, the request's correlation id.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            code: self.code(),
            msg: self.to_string(),
            error: self
                .detail()
                .filter(|_| correlation::debug_enabled())
                .map(str::to_owned),
            correlation_id: correlation::current(),
        }
    }

    fn detail(&self) -> Option<&str> {
        match self {
            Self::Parameter(detail)
            | Self::Captcha(_, detail)
            | Self::QueueUnavailable(detail)
            | Self::Internal(detail) => Some(detail),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Logged once, here, where the failure becomes an answer.
        if let Self::Timeout(limit) = self {
            tracing::warn!(
                code = self.code(),
                limit_ms = limit.as_millis() as u64,
                "request abandoned at the time limit"
            );
        } else if status.is_server_error() {
            tracing::error!(code = self.code(), error = self.detail(), "request failed");
        } else {
            tracing::info!(code = self.code(), error = self.detail(), "request refused");
        }
        let mut response = (status, Json(self.envelope())).into_response();
        response.extensions_mut().insert(EnvelopeCode(self.code()));
        if let Self::RateLimited(seconds) = self
            && let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
