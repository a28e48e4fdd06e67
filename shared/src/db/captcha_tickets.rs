//! Graphic captcha tickets: stored with their answer hashed and a time to live; any check consumes one.

use std::time::Duration;

use sqlx::PgExecutor;

/// Stores a ticket whose answer hashes to `answer_hash`, valid for `ttl`.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    ticket: &str,
    answer_hash: &[u8; 32],
    ttl: Duration,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO captcha_tickets (ticket, answer_hash, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
        ticket,
        answer_hash.as_slice(),
        ttl.as_secs_f64(),
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes the ticket and returns its answer hash if it had not expired yet. A ticket is good for
/// one check, whatever its outcome.
pub async fn take(executor: impl PgExecutor<'_>, ticket: &str) -> sqlx::Result<Option<Vec<u8>>> {
    let row = sqlx::query!(
        r#"DELETE FROM captcha_tickets WHERE ticket = $1
           RETURNING answer_hash, expires_at > now() AS "live!""#,
        ticket,
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.and_then(|row| row.live.then_some(row.answer_hash)))
}

/// Deletes expired tickets; returns how many.
pub async fn prune(executor: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let done = sqlx::query!("DELETE FROM captcha_tickets WHERE expires_at <= now()")
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
