//! The JSON envelope of every answer, Cloudreve's `{code, msg, data?, error?, correlation_id?}`:
//! [`Envelope`] without a payload (a failure, or a success that carries none) and [`DataEnvelope`] with
//! one. Both describe themselves to the API document (`GET {base}/openapi.json`).

use uuid::Uuid;

/// Cloudreve's answer without a payload: every failure, and a success that carries no data.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"code": 0, "msg": ""}))]
pub struct Envelope {
    /// 0 on success, a Cloudreve code otherwise.
    pub code: i32,
    /// Human-readable message; empty on success.
    pub msg: String,
    /// Internal detail of a failure, only in debug mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's correlation id, on failures (also in the `X-Cr-Correlation-Id` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
}

impl Envelope {
    /// `{"code":0,"msg":""}`.
    pub fn ok() -> Self {
        Self {
            code: 0,
            msg: String::new(),
            error: None,
            correlation_id: None,
        }
    }
}

/// Cloudreve's answer that carries a payload: `{"code":0,"msg":"","data":…}` for a success (and,
/// from `/readyz` only, a code and message with what is not ready).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DataEnvelope<T> {
    /// 0: a success.
    pub code: i32,
    /// Empty on success.
    pub msg: String,
    /// The payload.
    pub data: T,
}

impl<T> DataEnvelope<T> {
    /// `{"code":0,"msg":"","data":data}`.
    pub fn ok(data: T) -> Self {
        Self {
            code: 0,
            msg: String::new(),
            data,
        }
    }
}
