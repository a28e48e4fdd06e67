//! The delivery table: one row per job, the operator's record of what happened to every request,
//! and the worker's idempotency key.

use std::fmt;

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// What became of a job, stored as the PostgreSQL type `delivery_outcome`. Every value but
/// `Pending` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, sqlx::Type)]
#[sqlx(type_name = "delivery_outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Not decided yet (being worked on, or waiting for a retry).
    Pending,
    /// The email was accepted by the mail server.
    Sent,
    /// No account has this address.
    UnknownAccount,
    /// The account is banned.
    Banned,
    /// The account is not activated.
    Inactive,
    /// The job waited longer than its maximum age.
    Expired,
    /// The account had too many emails recently.
    Throttled,
    /// The email could not be delivered and will not be retried.
    Failed,
}

impl Outcome {
    /// The outcome's name, as stored and as logs and metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::UnknownAccount => "unknown_account",
            Self::Banned => "banned",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
            Self::Throttled => "throttled",
            Self::Failed => "failed",
        }
    }

    /// Whether the job is decided for good.
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A delivery row, for operators and tests.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The job.
    pub job_id: Uuid,
    /// The request's correlation id.
    pub correlation_id: Uuid,
    /// The address as requested.
    pub email: String,
    /// The account, when one was found.
    pub user_id: Option<i64>,
    /// What became of it.
    pub outcome: Outcome,
    /// Attempts made.
    pub attempts: i32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Message-ID of the sent email.
    pub message_id: Option<String>,
    /// When the api accepted the request.
    pub requested_at: OffsetDateTime,
    /// When the email was accepted by the mail server.
    pub sent_at: Option<OffsetDateTime>,
}

/// The row of one job, if the worker has seen it.
pub async fn find(executor: impl PgExecutor<'_>, job_id: Uuid) -> sqlx::Result<Option<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT job_id, correlation_id, email, user_id, outcome AS "outcome: Outcome", attempts,
                  last_error, message_id, requested_at, sent_at
           FROM deliveries WHERE job_id = $1"#,
        job_id,
    )
    .fetch_optional(executor)
    .await
}

/// The rows of every job requested for an address (ASCII case folded), oldest first.
pub async fn find_by_email(
    executor: impl PgExecutor<'_>,
    match_key: &str,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT job_id, correlation_id, email, user_id, outcome AS "outcome: Outcome", attempts,
                  last_error, message_id, requested_at, sent_at
           FROM deliveries WHERE ascii_lower(email) = $1 ORDER BY requested_at, job_id"#,
        match_key,
    )
    .fetch_all(executor)
    .await
}

/// Makes a failed job pending again with no attempts, for a replay from the dead letters; true if
/// the job had a row to reset.
pub async fn reopen(executor: impl PgExecutor<'_>, job_id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query!(
        "UPDATE deliveries SET outcome = 'pending', attempts = 0, updated_at = now()
         WHERE job_id = $1 AND outcome = 'failed'",
        job_id,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The rows of every job of a request's correlation id.
pub async fn find_by_correlation_id(
    executor: impl PgExecutor<'_>,
    correlation_id: Uuid,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"SELECT job_id, correlation_id, email, user_id, outcome AS "outcome: Outcome", attempts,
                  last_error, message_id, requested_at, sent_at
           FROM deliveries WHERE correlation_id = $1 ORDER BY requested_at, job_id"#,
        correlation_id,
    )
    .fetch_all(executor)
    .await
}

/// Deletes rows requested longer than `retention` ago; returns how many.
pub async fn prune(pool: &PgPool, retention: std::time::Duration) -> sqlx::Result<u64> {
    super::delete_in_batches(pool, |batch| {
        sqlx::query!(
            "DELETE FROM deliveries WHERE job_id IN (
                 SELECT job_id FROM deliveries
                  WHERE requested_at < now() - make_interval(secs => $1)
                  LIMIT $2)",
            retention.as_secs_f64(),
            batch,
        )
    })
    .await
}
