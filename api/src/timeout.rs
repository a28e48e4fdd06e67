//! The request time limit (`RESETMAIL_REQUEST_TIMEOUT`): a request still unanswered then gets a 503 in
//! our envelope, with its correlation id, like every other answer.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use crate::error::ApiError;

/// Middleware: answers [`ApiError::Timeout`] when the rest of the stack takes longer than `limit`.
/// It runs inside `correlation::correlate`, so the answer's body and header carry the request's id.
pub async fn limit_time(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}
