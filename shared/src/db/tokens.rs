//! One-time reset tokens: only their SHA-256 is stored.

use std::time::Duration;

use sqlx::PgExecutor;
use uuid::Uuid;

/// Stores a new token for the account and revokes its older unused ones, in one statement.
/// Returns the new token's row id.
pub async fn issue(
    executor: impl PgExecutor<'_>,
    user_id: i64,
    job_id: Uuid,
    token_hash: &[u8; 32],
    valid_for: Duration,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH revoked AS (
             UPDATE password_reset_tokens SET revoked_at = now()
             WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL
         )
         INSERT INTO password_reset_tokens (user_id, token_hash, job_id, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         RETURNING id",
    )
    .bind(user_id)
    .bind(token_hash.as_slice())
    .bind(job_id)
    .bind(valid_for.as_secs_f64())
    .fetch_one(executor)
    .await
}

/// Revokes one token (its email was never delivered).
pub async fn revoke(executor: impl PgExecutor<'_>, token_id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE password_reset_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .execute(executor)
    .await?;
    Ok(())
}
