//! `GET {base}/site/captcha`: a graphic captcha and its ticket, always available.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use utoipa::{
    PartialSchema as _,
    openapi::{RefOr, response::Response},
};

use crate::{
    AppState, captcha::CaptchaError, captcha::graphic::Issued, envelope::DataEnvelope,
    error::ApiError, openapi,
};

/// `GET /site/captcha`'s answers in the API document: a captcha and its ticket, or a failure.
pub struct CaptchaAnswers;

impl utoipa::IntoResponses for CaptchaAnswers {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        openapi::answers(
            "A new captcha",
            DataEnvelope::<Issued>::schema(),
            DataEnvelope::ok(Issued {
                image: "data:image/png;base64,iVBORw0KGgo…".to_owned(),
                ticket: "4qXv7KmbYajJ0yFDKcmJ".to_owned(),
            }),
            openapi::every_route_failures(),
        )
    }
}

/// Draws a captcha: `{"code":0,"data":{"image":"data:image/png;base64,…","ticket":"…"},"msg":""}`.
#[utoipa::path(get, path = "/site/captcha", tag = "Site", responses(CaptchaAnswers))]
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
