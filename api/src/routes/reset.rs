//! `POST {base}/user/reset`: check the request, queue the job, answer `{"code":0,"msg":""}`.
//! The address is never looked up here: a known and an unknown one get the same answer.

use axum::{Json as JsonResponse, extract::State};
use resetmail_shared::{EmailAddress, Job, PasswordResetJob, email::EmailError, email::mask};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AppState,
    captcha::{Answer, CaptchaError},
    correlation,
    envelope::Envelope,
    error::ApiError,
    extract::Json,
    publisher::PublishError,
};

/// The body Cloudreve's frontend sends.
#[derive(Debug, serde::Deserialize)]
pub struct ResetRequest {
    /// The address to send the link to.
    #[serde(default)]
    email: Option<String>,
    /// Graphic captcha answer, or a reCAPTCHA token.
    #[serde(default)]
    captcha: Option<String>,
    /// Graphic captcha ticket, or a Turnstile / Cap token.
    #[serde(default)]
    ticket: Option<String>,
}

/// Queues a reset email for the address.
pub async fn send_reset(
    State(state): State<AppState>,
    Json(request): Json<ResetRequest>,
) -> Result<JsonResponse<Envelope>, ApiError> {
    let email =
        EmailAddress::parse(request.email.as_deref().unwrap_or_default()).map_err(|error| {
            match error {
                EmailError::Empty => ApiError::EmailEmpty,
                EmailError::Format => ApiError::EmailFormat,
            }
        })?;
    // Checked before anything is published: a request that fails it queues nothing.
    let answer = Answer {
        captcha: request.captcha.as_deref(),
        ticket: request.ticket.as_deref(),
    };
    let captcha = state.captcha();
    captcha
        .check(&state.pool, answer)
        .await
        .map_err(|error| match error {
            CaptchaError::Storage(error) => {
                ApiError::Internal(format!("cannot check the captcha: {error}"))
            }
            other => ApiError::Captcha(captcha.kind(), other.to_string()),
        })?;
    let job = PasswordResetJob {
        job_id: Uuid::new_v4(),
        correlation_id: correlation::current().unwrap_or_else(Uuid::new_v4),
        email,
        requested_at: OffsetDateTime::now_utc(),
    };
    let masked = mask(job.email.as_str());
    let job_id = job.job_id;
    state
        .publisher
        .publish(&Job::PasswordReset(job))
        .await
        .map_err(|error| match error {
            PublishError::Encode(_) => ApiError::Internal(error.to_string()),
            _ => ApiError::QueueUnavailable(error.to_string()),
        })?;
    tracing::info!(job.id = %job_id, email = %masked, "reset job queued");
    Ok(JsonResponse(Envelope::ok()))
}
