//! `GET /healthz` (the process answers) and `GET /readyz` (broker and database reachable).

use axum::{Json, extract::State, http::StatusCode};

use crate::{
    AppState,
    envelope::{DataEnvelope, Envelope},
};

/// What `/readyz` found.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    /// The publishing channel is open.
    broker: bool,
    /// The database answers.
    database: bool,
}

/// Liveness: the process is up and serving.
pub async fn get_healthz() -> Json<Envelope> {
    Json(Envelope::ok())
}

/// Readiness: 200 when the broker channel is open and the database answers, else 503 (code 503,
/// "Not ready") with what is down.
pub async fn get_readyz(
    State(state): State<AppState>,
) -> (StatusCode, Json<DataEnvelope<Readiness>>) {
    let readiness = Readiness {
        broker: state.publisher.is_connected(),
        database: resetmail_shared::db::ping(&state.pool).await,
    };
    if readiness.broker && readiness.database {
        return (StatusCode::OK, Json(DataEnvelope::ok(readiness)));
    }
    let not_ready = DataEnvelope {
        code: 503,
        msg: "Not ready".into(),
        data: readiness,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(not_ready))
}
