//! The correlation id of each request: taken from `X-Cr-Correlation-Id` when it is a UUID, else new;
//! returned as the same header on every answer, in error bodies, on every log line, and in the job.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::AppState;

/// The header Cloudreve uses for correlation ids.
pub static HEADER: HeaderName = HeaderName::from_static("x-cr-correlation-id");

#[derive(Clone, Copy, Debug)]
struct RequestContext {
    correlation_id: Uuid,
    debug: bool,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The correlation id of the request being handled, if any.
pub fn current() -> Option<Uuid> {
    REQUEST.try_with(|request| request.correlation_id).ok()
}

/// Whether answers of the request being handled may carry internal error details.
pub fn debug_enabled() -> bool {
    REQUEST.try_with(|request| request.debug).unwrap_or(false)
}

/// Middleware: assigns the id, runs the request in a span that carries it, and logs one line per request.
pub async fn correlate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let correlation_id = request
        .headers()
        .get(&HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::try_parse(value).ok())
        .unwrap_or_else(Uuid::new_v4);
    let span = tracing::info_span!(
        "request",
        correlation_id = %correlation_id,
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    let context = RequestContext {
        correlation_id,
        debug: state.config.debug,
    };
    let started = Instant::now();
    let mut response = REQUEST
        .scope(context, next.run(request))
        .instrument(span.clone())
        .await;
    if let Ok(value) = HeaderValue::from_str(&correlation_id.to_string()) {
        response.headers_mut().insert(HEADER.clone(), value);
    }
    span.in_scope(|| {
        tracing::debug!(
            http.status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request finished"
        );
    });
    response
}
