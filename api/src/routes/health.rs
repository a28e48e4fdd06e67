//! `GET /healthz` (the process answers) and `GET /readyz` (broker and database reachable).

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::AppState;

/// Liveness: the process is up and serving.
pub async fn get_healthz() -> Json<Value> {
    Json(json!({"code": 0, "msg": ""}))
}

/// Readiness: 200 when the broker channel is open and the database answers, else 503 with what is down.
pub async fn get_readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let broker = state.publisher.is_connected();
    let database = resetmail_shared::db::ping(&state.pool).await;
    let status = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let code = if status == StatusCode::OK { 0 } else { 503 };
    let msg = if status == StatusCode::OK {
        ""
    } else {
        "Not ready"
    };
    (
        status,
        Json(json!({"code": code, "msg": msg, "data": {"broker": broker, "database": database}})),
    )
}
