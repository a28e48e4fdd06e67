//! The api's metrics: requests by route and envelope code, publish latency and failures, rate-limited
//! requests; `GET /metrics` renders them as Prometheus text.

use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{AppState, publisher::PublishError};

/// The api's routes under the base path, as `route` labels read.
const API_ROUTES: [&str; 4] = [
    "/user/reset",
    "/user/reset/{id}",
    "/site/captcha",
    "/openapi.json",
];

/// Describes every series of the api and makes it present at zero, so that `rate()` and `increase()` see
/// it from the start rather than from its first event. Call once the recorder is installed.
pub fn register(base_path: &str) {
    resetmail_shared::amqp::describe_metrics();
    metrics::describe_counter!(
        "resetmail_api_requests_total",
        "Requests answered, by route and envelope code"
    );
    metrics::describe_histogram!(
        "resetmail_api_publish_seconds",
        metrics::Unit::Seconds,
        "Publish plus broker confirm"
    );
    metrics::describe_counter!(
        "resetmail_api_publish_failures_total",
        "Jobs not queued (answered 503), by reason"
    );
    metrics::describe_counter!("resetmail_api_rate_limited_total", "Requests answered 429");
    let base = base_path.trim_end_matches('/');
    let routes = API_ROUTES
        .iter()
        .map(|route| format!("{base}{route}"))
        .chain(["/healthz", "/readyz", "/metrics"].map(str::to_owned));
    for route in routes {
        metrics::counter!("resetmail_api_requests_total", "route" => route, "code" => "0")
            .increment(0);
    }
    let _registered = metrics::histogram!("resetmail_api_publish_seconds");
    for reason in PublishError::REASONS {
        metrics::counter!("resetmail_api_publish_failures_total", "reason" => reason).increment(0);
    }
    metrics::counter!("resetmail_api_rate_limited_total").increment(0);
}

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
