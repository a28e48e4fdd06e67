//! The delivery table: one row per job, the operator's record of what happened to every request,
//! and the worker's idempotency key.

use std::{fmt, str::FromStr, time::Duration};

use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

use super::users::{Accounts, User, UserRow};
use crate::PasswordResetJob;
use crate::hashid::ObjectKind;

/// What became of a job. Every value but `Pending` is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The value stored in `deliveries.outcome`.
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
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            Self::Pending,
            Self::Sent,
            Self::UnknownAccount,
            Self::Banned,
            Self::Inactive,
            Self::Expired,
            Self::Throttled,
            Self::Failed,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == value)
        .ok_or_else(|| format!("unknown delivery outcome `{value}`"))
    }
}

/// The state of a job's row once the worker holds it.
#[derive(Clone, Copy, Debug)]
pub struct Claim {
    /// Its outcome so far; final means the job was handled before.
    pub outcome: Outcome,
    /// Attempts so far, this one included when the job is still pending.
    pub attempts: i32,
    /// Whether the job was never recorded before: its first attempt (a replayed dead letter is not).
    pub first: bool,
}

/// Records the job if it is new, counts this attempt if it is still pending, and locks its row until
/// the transaction ends: a second delivery of the same job waits here, then finds it decided. While
/// the job is pending, the same statement finds the account of the job's address and locks it,
/// always after the job's row (the account's lock depends on the claim), so that jobs for one
/// account are handled one at a time without deadlocks. A built-in account is matched folding ASCII
/// case and locked by its row; a Cloudreve account is matched as Cloudreve's sign-in matches it
/// (case-insensitively, soft-deleted rows excluded, the oldest of case variants) and locked by an
/// advisory lock, so that Cloudreve's own writes to its row never wait on resetmail.
pub async fn claim(
    executor: impl PgExecutor<'_>,
    job: &PasswordResetJob,
    accounts: &Accounts,
) -> sqlx::Result<(Claim, Option<User>)> {
    let account = match accounts {
        Accounts::Builtin => {
            "SELECT id, public_id, email, nick, status, language FROM users
             WHERE ascii_lower(email) = $5 AND (SELECT outcome FROM claim) = 'pending'
             FOR NO KEY UPDATE"
        }
        Accounts::Cloudreve(_) => {
            "SELECT found.*, pg_advisory_xact_lock($6, (found.id % 2147483647)::int)::text AS locked
             FROM (
                 SELECT u.id, NULL::uuid AS public_id, u.email::text AS email, u.nick::text AS nick,
                        CASE u.status WHEN 'active' THEN 'active' WHEN 'inactive' THEN 'inactive'
                                      ELSE 'banned' END AS status,
                        u.settings->>'email_language' AS language
                 FROM public.users AS u
                 WHERE lower(u.email) = lower($3) AND u.deleted_at IS NULL
                   AND (SELECT outcome FROM claim) = 'pending'
                 ORDER BY u.id LIMIT 1
             ) AS found"
        }
    };
    let statement = format!(
        "WITH claim AS (
             INSERT INTO deliveries
                 (job_id, correlation_id, email, requested_at, attempts, first_attempt_at,
                  last_attempt_at)
             VALUES ($1, $2, $3, $4, 1, now(), now())
             ON CONFLICT (job_id) DO UPDATE SET
                 attempts = deliveries.attempts + (deliveries.outcome = 'pending')::int,
                 first_attempt_at = coalesce(deliveries.first_attempt_at, now()),
                 last_attempt_at = CASE WHEN deliveries.outcome = 'pending' THEN now()
                                        ELSE deliveries.last_attempt_at END,
                 updated_at = now()
             RETURNING outcome, attempts, (xmax = 0) AS inserted
         ), account AS ({account})
         SELECT claim.outcome AS claim_outcome, claim.attempts AS claim_attempts,
                claim.inserted AS claim_first, account.id, account.public_id, account.email,
                account.nick, account.status, account.language
         FROM claim LEFT JOIN account ON true"
    );
    let row: ClaimRow = sqlx::query_as(sqlx::AssertSqlSafe(statement))
        .bind(job.job_id)
        .bind(job.correlation_id)
        .bind(job.email.as_str())
        .bind(job.requested_at)
        .bind(job.email.match_key())
        .bind(ACCOUNT_LOCK_CLASS)
        .fetch_one(executor)
        .await?;
    let outcome = row
        .claim_outcome
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    let claim = Claim {
        outcome,
        attempts: row.claim_attempts,
        first: row.claim_first,
    };
    let user = match (row.account(), accounts) {
        (None, _) => None,
        (Some(row), Accounts::Builtin) => Some(User::try_from(row)?),
        (Some(row), Accounts::Cloudreve(ids)) => {
            let id = u64::try_from(row.id).map_err(|e| sqlx::Error::Decode(e.into()))?;
            let mut user = User::try_from(row)?;
            user.link_id = ids.encode(id, ObjectKind::User);
            Some(user)
        }
    };
    Ok((claim, user))
}

/// The first key of the advisory locks on Cloudreve accounts ("RSML"): keeps them apart from any
/// other user of advisory locks in the site's database.
const ACCOUNT_LOCK_CLASS: i32 = 0x5253_4d4c;

/// The claim, and the account's columns (all NULL without an account).
#[derive(sqlx::FromRow)]
struct ClaimRow {
    claim_outcome: String,
    claim_attempts: i32,
    claim_first: bool,
    id: Option<i64>,
    /// NULL for a Cloudreve account: its link id is made from `id`.
    public_id: Option<Uuid>,
    email: Option<String>,
    nick: Option<String>,
    status: Option<String>,
    language: Option<String>,
}

impl ClaimRow {
    fn account(self) -> Option<UserRow> {
        Some(UserRow {
            id: self.id?,
            public_id: self.public_id.unwrap_or_default(),
            email: self.email?,
            nick: self.nick,
            status: self.status?,
            language: self.language,
        })
    }
}

/// An email about to be sent, for [`prepare_send`].
#[derive(Clone, Copy, Debug)]
pub struct PreparedSend<'a> {
    /// The job.
    pub job_id: Uuid,
    /// The account, locked by [`claim`].
    pub user_id: i64,
    /// SHA-256 of the new token's secret.
    pub token_hash: &'a [u8; 32],
    /// How long the token stays valid.
    pub token_ttl: Duration,
    /// At most one email per account within this time.
    pub cooldown: Duration,
    /// At most this many emails per account in 24 hours.
    pub daily_max: u32,
    /// The Message-ID header of the email.
    pub message_id: &'a str,
}

/// Under the account's lock taken by [`claim`] (a statement of its own, so that it sees the sends
/// committed by whoever held the lock before): unless the account had an email within the cooldown
/// or its daily maximum, revokes its unused tokens, stores the new one and records the job as sent,
/// and returns the token's id; otherwise records the job as throttled and returns `None`. The
/// caller commits once the mail server has accepted the email, or calls [`undo_send`].
pub async fn prepare_send(
    executor: impl PgExecutor<'_>,
    send: &PreparedSend<'_>,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "WITH sends AS (
             SELECT count(*) FILTER (WHERE sent_at > now() - make_interval(secs => $5)) AS recent,
                    count(*) AS today
             FROM deliveries
             WHERE user_id = $2 AND outcome = 'sent' AND sent_at > now() - interval '24 hours'
         ), allowed AS (
             SELECT FROM sends WHERE recent = 0 AND today < $6
         ), revoked AS (
             UPDATE password_reset_tokens SET revoked_at = now()
             WHERE user_id = $2 AND used_at IS NULL AND revoked_at IS NULL
               AND EXISTS (SELECT FROM allowed)
         ), token AS (
             INSERT INTO password_reset_tokens (user_id, token_hash, job_id, expires_at)
             SELECT $2, $3, $1, now() + make_interval(secs => $4) FROM allowed
             RETURNING id
         ), delivery AS (
             UPDATE deliveries SET
                 outcome = CASE WHEN EXISTS (SELECT FROM allowed) THEN 'sent' ELSE 'throttled' END,
                 user_id = $2,
                 message_id = CASE WHEN EXISTS (SELECT FROM allowed) THEN $7 ELSE message_id END,
                 sent_at = CASE WHEN EXISTS (SELECT FROM allowed) THEN now() ELSE sent_at END,
                 last_error = CASE WHEN EXISTS (SELECT FROM allowed) THEN NULL ELSE last_error END,
                 updated_at = now()
             WHERE job_id = $1
         )
         SELECT (SELECT id FROM token)",
    )
    .bind(send.job_id)
    .bind(send.user_id)
    .bind(send.token_hash.as_slice())
    .bind(send.token_ttl.as_secs_f64())
    .bind(send.cooldown.as_secs_f64())
    .bind(i64::from(send.daily_max))
    .bind(send.message_id)
    .fetch_one(executor)
    .await
}

/// The email of [`prepare_send`] never left: its token is revoked (it must never work) and the job
/// is pending again with `error`, or `failed` when `give_up`.
pub async fn undo_send(
    executor: impl PgExecutor<'_>,
    job_id: Uuid,
    token_id: i64,
    error: &str,
    give_up: bool,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH revoked AS (
             UPDATE password_reset_tokens SET revoked_at = now()
             WHERE id = $2 AND revoked_at IS NULL
         )
         UPDATE deliveries SET
             outcome = CASE WHEN $4 THEN 'failed' ELSE 'pending' END,
             message_id = NULL, sent_at = NULL, last_error = $3, updated_at = now()
         WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(token_id)
    .bind(error)
    .bind(give_up)
    .execute(executor)
    .await?;
    Ok(())
}

/// Sets a final outcome that sent nothing (unknown account, banned, expired, ...).
pub async fn decide(
    executor: impl PgExecutor<'_>,
    job_id: Uuid,
    user_id: Option<i64>,
    outcome: Outcome,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE deliveries SET outcome = $2, user_id = $3, updated_at = now() WHERE job_id = $1",
    )
    .bind(job_id)
    .bind(outcome.as_str())
    .bind(user_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// A delivery row, for operators and tests.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Delivery {
    /// The job.
    pub job_id: Uuid,
    /// The request's correlation id.
    pub correlation_id: Uuid,
    /// The address as requested.
    pub email: String,
    /// The account, when one was found.
    pub user_id: Option<i64>,
    /// Outcome as stored (see [`Outcome`]).
    pub outcome: String,
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
    sqlx::query_as(
        "SELECT job_id, correlation_id, email, user_id, outcome, attempts, last_error, message_id,
                requested_at, sent_at
         FROM deliveries WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(executor)
    .await
}

/// The rows of every job requested for an address (ASCII case folded), oldest first.
pub async fn find_by_email(
    executor: impl PgExecutor<'_>,
    match_key: &str,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(
        "SELECT job_id, correlation_id, email, user_id, outcome, attempts, last_error, message_id,
                requested_at, sent_at
         FROM deliveries WHERE ascii_lower(email) = $1 ORDER BY requested_at, job_id",
    )
    .bind(match_key)
    .fetch_all(executor)
    .await
}

/// Makes a failed job pending again with no attempts, for a replay from the dead letters; true if
/// the job had a row to reset.
pub async fn reopen(executor: impl PgExecutor<'_>, job_id: Uuid) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE deliveries SET outcome = 'pending', attempts = 0, updated_at = now()
         WHERE job_id = $1 AND outcome = 'failed'",
    )
    .bind(job_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The rows of every job of a request's correlation id.
pub async fn find_by_correlation_id(
    executor: impl PgExecutor<'_>,
    correlation_id: Uuid,
) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(
        "SELECT job_id, correlation_id, email, user_id, outcome, attempts, last_error, message_id,
                requested_at, sent_at
         FROM deliveries WHERE correlation_id = $1 ORDER BY requested_at, job_id",
    )
    .bind(correlation_id)
    .fetch_all(executor)
    .await
}

/// Deletes rows requested longer than `retention` ago; returns how many.
pub async fn prune(
    executor: impl PgExecutor<'_>,
    retention: std::time::Duration,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM deliveries WHERE requested_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}
