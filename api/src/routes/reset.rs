//! `POST {base}/user/reset`: check the request, queue the job, answer `{"code":0,"msg":""}`.
//! The address is never looked up here: a known and an unknown one get the same answer.

use std::collections::BTreeMap;

use axum::{Json as JsonResponse, extract::State};
use resetmail_shared::{EmailAddress, Job, PasswordResetJob, email::EmailError, email::mask};
use time::OffsetDateTime;
use utoipa::{
    ToSchema as _,
    openapi::{Ref, RefOr, response::Response},
};
use uuid::Uuid;

use crate::{
    AppState,
    captcha::{Answer, CaptchaError, CaptchaKind},
    correlation,
    envelope::Envelope,
    error::ApiError,
    extract::Json,
    openapi,
    publisher::PublishError,
};

/// The body Cloudreve's frontend sends.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    /// The address to send the link to.
    // Read as optional so that a missing address gets Cloudreve's own answer, not `Parameter error`;
    // the document says what a client must send.
    #[serde(default)]
    #[schema(value_type = String, format = Email, required = true, example = "jane@example.com")]
    email: Option<String>,
    /// Graphic captcha answer, or a reCAPTCHA token; required when that captcha is in force.
    #[serde(default)]
    captcha: Option<String>,
    /// Graphic captcha ticket (from `GET /site/captcha`), or a Turnstile / Cap token; required when
    /// that captcha is in force.
    #[serde(default)]
    ticket: Option<String>,
}

/// `POST /user/reset`'s answers in the API document: `{"code":0,"msg":""}`, or a failure.
pub struct ResetAnswers;

impl utoipa::IntoResponses for ResetAnswers {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let refusals = [
            ApiError::EmailEmpty,
            ApiError::EmailFormat,
            ApiError::Captcha(CaptchaKind::Normal, String::new()),
            ApiError::Captcha(CaptchaKind::Recaptcha, String::new()),
            ApiError::Captcha(CaptchaKind::Turnstile, String::new()),
            ApiError::Captcha(CaptchaKind::Cap, String::new()),
            ApiError::QueueUnavailable(String::new()),
        ];
        openapi::answers(
            "Queued; an address without an account gets the same answer and no email",
            Ref::from_schema_name(Envelope::name()).into(),
            Envelope::ok(),
            openapi::body_failures()
                .into_iter()
                .chain(refusals)
                .chain(openapi::every_route_failures()),
        )
    }
}

/// Queues a reset email for the address.
///
/// Answered at once, once the job is queued; the email follows. Whether the address has an
/// account is never said.
#[utoipa::path(post, path = "/user/reset", tag = "User", responses(ResetAnswers))]
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
