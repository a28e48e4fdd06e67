//! One-time reset tokens: only their SHA-256 is stored.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// The account a redeemed token belonged to.
#[derive(Clone, Debug)]
pub struct Redeemed {
    /// Database id.
    pub user_id: i64,
    /// The opaque id from the link.
    pub public_id: Uuid,
    /// The account's address.
    pub email: String,
    /// Its display name.
    pub nick: Option<String>,
}

/// Marks the token used if it is the live token of the active account `public_id`, in one statement:
/// of two concurrent redeems of one link, the second waits for the first and then finds it used.
pub async fn redeem(
    executor: impl PgExecutor<'_>,
    public_id: Uuid,
    token_hash: &[u8; 32],
) -> sqlx::Result<Option<Redeemed>> {
    sqlx::query_as!(
        Redeemed,
        "UPDATE password_reset_tokens AS t SET used_at = now()
         FROM users AS u
         WHERE t.token_hash = $2 AND t.user_id = u.id AND u.public_id = $1 AND u.status = 'active'
           AND t.used_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > now()
         RETURNING u.id AS user_id, u.public_id, u.email, u.nick",
        public_id,
        token_hash.as_slice(),
    )
    .fetch_optional(executor)
    .await
}

/// Revokes every unused token of the account (after its password changed).
pub async fn revoke_all(executor: impl PgExecutor<'_>, user_id: i64) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        "UPDATE password_reset_tokens SET revoked_at = now()
         WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
        user_id,
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes tokens that can no longer be redeemed (expired, used or revoked) and are older than a
/// day, so that the table stays small; returns how many.
pub async fn prune(pool: &PgPool) -> sqlx::Result<u64> {
    super::delete_in_batches(pool, |batch| {
        sqlx::query!(
            "DELETE FROM password_reset_tokens WHERE id IN (
                 SELECT id FROM password_reset_tokens
                  WHERE created_at < now() - interval '1 day'
                    AND (expires_at < now() OR used_at IS NOT NULL OR revoked_at IS NOT NULL)
                  LIMIT $1)",
            batch,
        )
    })
    .await
}
