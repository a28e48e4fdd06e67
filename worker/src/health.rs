//! The worker's small HTTP port: `/healthz` (the process answers), `/readyz` (consuming, not paused,
//! database reachable) and `/metrics` (Prometheus text). Plain hyper: the worker has no web framework.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the worker is taking jobs now.
#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
}

impl Health {
    /// Records whether a consumer is active (false while paused or reconnecting).
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
        metrics::gauge!("resetmail_worker_consuming").set(if consuming { 1.0 } else { 0.0 });
    }

    /// Whether a consumer is active.
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct Probe {
    /// Consumer state.
    pub health: Arc<Health>,
    /// The database, pinged by `/readyz`.
    pub pool: PgPool,
    /// The process's metrics.
    pub metrics: PrometheusHandle,
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, probe: Probe, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let probe = probe.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(probe.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    probe: Probe,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (
            StatusCode::OK,
            "application/json",
            r#"{"code":0,"msg":""}"#.to_owned(),
        ),
        "/readyz" => {
            let consuming = probe.health.consuming();
            let database = resetmail_shared::db::ping(&probe.pool).await;
            let ready = consuming && database;
            let body = serde_json::json!({
                "code": if ready { 0 } else { 503 },
                "msg": if ready { "" } else { "Not ready" },
                "data": {"consuming": consuming, "database": database},
            });
            (
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                body.to_string(),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            probe.metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"code":404,"msg":"Not found"}"#.to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
