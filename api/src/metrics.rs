//! The api's metrics: requests by route and envelope code, publish latency and failures, rate-limited
//! requests; `GET /metrics` renders them as Prometheus text.

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::AppState;

/// The envelope code of an answer, left on the response by whoever built it (0 when absent).
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeCode(pub i32);

/// Middleware (per route): counts the request by route and code.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let code = response
        .extensions()
        .get::<EnvelopeCode>()
        .map_or(0, |code| code.0);
    metrics::counter!("resetmail_api_requests_total", "route" => route, "code" => code.to_string())
        .increment(1);
    response
}

/// `GET /metrics`: Prometheus text.
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
