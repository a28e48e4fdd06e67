//! `GET {base}/site/captcha`: a graphic captcha and its ticket, always available.

use axum::{Json, extract::State};

use crate::{
    AppState, captcha::CaptchaError, captcha::graphic::Issued, envelope::DataEnvelope,
    error::ApiError,
};

/// Draws a captcha: `{"code":0,"data":{"image":"data:image/png;base64,…","ticket":"…"},"msg":""}`.
pub async fn get_captcha(
    State(state): State<AppState>,
) -> Result<Json<DataEnvelope<Issued>>, ApiError> {
    let issued = state
        .captcha()
        .graphic
        .issue(&state.pool)
        .await
        .map_err(|error| match error {
            CaptchaError::Storage(error) => {
                ApiError::Internal(format!("cannot store the captcha: {error}"))
            }
            other => ApiError::Internal(other.to_string()),
        })?;
    Ok(Json(DataEnvelope::ok(issued)))
}
