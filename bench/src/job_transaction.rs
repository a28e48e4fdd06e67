//! The worker's database work for one job, alone (no broker, no SMTP), for the report's "for
//! reading" line: it tells how much of the gap between the worker and the token transaction is the
//! job's bookkeeping (its delivery record, the lease, the account's lock, the throttle) and how much
//! the rest. Not a limit the worker is held to: the worker batches many jobs per claim and per
//! record. It calls the worker's own queries, so when their API changes, [`run`] is the one
//! function to follow it.

use std::time::Duration;

use resetmail_shared::{
    Job,
    db::{
        self,
        claims::{Claim, ClaimRequest, IssuedToken, Rules, SentEmail},
    },
    token::ResetToken,
};
use sqlx::PgPool;

use crate::load;

/// What [`run`] does, as the report names it.
pub const DESCRIPTION: &str = "claim and record, a batch of one each";

/// One job's database work for the account `email`: the worker's own `claims::claim` (one
/// transaction) and `claims::record` (one statement), each for a batch of one job.
pub async fn run(pool: &PgPool, email: &str) -> anyhow::Result<()> {
    let Job::PasswordReset(job) = load::job(email);
    let token = ResetToken::generate()?;
    let mut connection = pool.acquire().await?;
    let rules = Rules {
        job_max_age: Duration::from_secs(3600),
        cooldown: Duration::from_secs(60),
        daily_max: 5,
        lease: Duration::from_secs(65),
        notify_unknown: false,
    };
    let lease_id = uuid::Uuid::new_v4();
    let job_id = job.job_id;
    let request = ClaimRequest { job, lease_id };
    let claims = db::claims::claim(
        &mut connection,
        &db::users::Accounts::Builtin,
        &rules,
        &[request],
    )
    .await?;
    let Some(Claim::Send(user)) = claims.into_iter().next() else {
        anyhow::bail!("a bench account was not sent to");
    };
    let sent = SentEmail {
        job_id,
        lease_id,
        message_id: format!("<{job_id}@localhost>"),
        token: Some(IssuedToken {
            user_id: user.id,
            token_hash: token.hash(),
        }),
    };
    db::claims::record(&mut connection, Duration::from_secs(3600), &[sent], &[]).await?;
    Ok(())
}
