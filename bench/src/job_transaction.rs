//! The worker's database work for one job, alone (no broker, no SMTP), for the report's "for
//! reading" line: it tells how much of the gap between the worker and the token transaction is the
//! job's bookkeeping (its delivery record, the account's lock, the throttle) and how much the rest.
//! Not a limit the worker is held to. It calls the worker's own queries, so when their API
//! changes, [`run`] is the one function to follow it.

use std::time::Duration;

use anyhow::Context as _;
use resetmail_shared::{Job, db, token::ResetToken};
use sqlx::PgPool;

use crate::load;

/// What [`run`] does, as the report names it.
pub const DESCRIPTION: &str = "claim, prepare_send, commit";

/// One job's database work for the account `email`: `BEGIN`, the worker's own
/// `deliveries::claim` and `deliveries::prepare_send`, `COMMIT`.
pub async fn run(pool: &PgPool, email: &str) -> anyhow::Result<()> {
    let Job::PasswordReset(job) = load::job(email);
    let token = ResetToken::generate()?;
    let mut tx = pool.begin().await?;
    let (_claim, user) =
        db::deliveries::claim(&mut *tx, &job, &db::users::Accounts::Builtin).await?;
    let user = user.context("a bench account is missing")?;
    let send = db::deliveries::PreparedSend {
        job_id: job.job_id,
        user_id: user.id,
        token_hash: &token.hash(),
        token_ttl: Duration::from_secs(3600),
        cooldown: Duration::from_secs(60),
        daily_max: 5,
        message_id: &format!("<{}@localhost>", job.job_id),
    };
    db::deliveries::prepare_send(&mut *tx, &send)
        .await?
        .context("a bench account was throttled")?;
    tx.commit().await?;
    Ok(())
}
