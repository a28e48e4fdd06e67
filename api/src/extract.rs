//! `Json<T>`: axum's JSON extraction, but every rejection becomes our envelope (`Parameter error`,
//! or 413 for an oversized body) instead of axum's plain-text answers.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};

use crate::error::ApiError;

/// A JSON request body, read strictly: a JSON content type, an object that parses as `T`.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::Parameter(
                "expected Content-Type: application/json".into(),
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge
                } else {
                    ApiError::Parameter(rejection.body_text())
                }
            })?;
        // Serde would read a struct from a JSON array too; every body of this api is an object.
        if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::Parameter("the body must be a JSON object".into()));
        }
        serde_json::from_slice(&body)
            .map(Json)
            .map_err(|error| ApiError::Parameter(error.to_string()))
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
