//! `GET {base}/openapi.json`: the API document of the three routes beside it ([`crate::openapi`]).

use axum::{Json, extract::State};

use crate::{AppState, openapi};

/// The API document, its server the configured base path.
pub async fn get_openapi(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document(&state.config.base_path))
}
