//! The JSON envelope of every answer: `{code, msg, data?, error?, correlation_id?}`.

use uuid::Uuid;

/// Cloudreve's response shape. `msg` is always present; the rest only when set.
#[derive(Debug, serde::Serialize)]
pub struct Envelope<T: serde::Serialize> {
    /// 0 on success, a Cloudreve code otherwise.
    pub code: i32,
    /// Human-readable message; empty on success.
    pub msg: String,
    /// The payload, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// Internal detail, only in debug mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's correlation id, on failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
}

impl Envelope<()> {
    /// `{"code":0,"msg":""}`.
    pub fn ok() -> Self {
        Self {
            code: 0,
            msg: String::new(),
            data: None,
            error: None,
            correlation_id: None,
        }
    }
}
