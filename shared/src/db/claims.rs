//! The worker's database work, many jobs per statement: claiming jobs with a lease (and deciding
//! at once what needs no email), then recording what became of the emails. Nothing here is held
//! open while an email is sent: a claim is one short transaction, a record one statement.
//!
//! A job's lease says which delivery of it may send: while the lease is live, another delivery of
//! the same job (the broker redelivered it, or a second worker got a copy) is told to wait
//! ([`Claim::Busy`]); once it ran out (its worker died), the next delivery takes the job over. An
//! email being sent holds a reservation on its account that the cooldown and the daily maximum
//! count like a sent email, so that both stay exact with many emails in flight; a token is stored
//! only when its email has left. When the operator asks for it, an address with no account gets a
//! notice saying so, throttled per address (locked and counted like an account) by the same rules.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use sqlx::{Connection as _, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    deliveries::Outcome,
    users::{Accounts, User, UserRow, UserStatus},
};
use crate::{PasswordResetJob, hashid::ObjectKind};

/// The rules a claim decides by.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// A job older than this at its first attempt is expired.
    pub job_max_age: Duration,
    /// At most one email per account within this time.
    pub cooldown: Duration,
    /// At most this many emails per account in 24 hours.
    pub daily_max: u32,
    /// How long a claimed job stays its claimer's: longer than a send can take.
    pub lease: Duration,
    /// Whether an address with no account gets a notice saying so, throttled per address like
    /// the reset emails per account.
    pub notify_unknown: bool,
}

/// One job to claim, under a lease id of its own.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The job.
    pub job: PasswordResetJob,
    /// The lease this delivery takes, if it may; its record must name it.
    pub lease_id: Uuid,
}

/// What a claim found or decided.
#[derive(Clone, Debug)]
pub enum Claim {
    /// An earlier delivery decided the job; nothing was changed.
    Duplicate(Outcome),
    /// Another delivery holds the job's lease: wait, then claim again.
    Busy,
    /// Decided now, without an email, and recorded.
    Decided(Outcome),
    /// The email may be sent to this account under the request's lease, which also reserves one
    /// of the account's emails; [`record`] says how it went.
    Send(User),
    /// No account has the address, and the notice saying so may be sent to it under the
    /// request's lease, which reserves one of the address's notices; [`record`] says how it went.
    Notice,
}

/// The first key of the advisory locks on Cloudreve accounts ("RSML"): keeps them apart from any
/// other user of advisory locks in the site's database.
const ACCOUNT_LOCK_CLASS: i32 = 0x5253_4d4c;

/// The first key of the advisory locks on addresses with no account ("RSMN").
const ADDRESS_LOCK_CLASS: i32 = 0x5253_4d4e;

/// Claims `requests` in one transaction and answers one [`Claim`] per request, in order.
///
/// 1. The jobs' existing delivery rows are read and locked, in job-id order. A job with no row
///    yet, or whose row is pending with no live lease, is to be leased (the first, at its first
///    attempt); a decided one is a duplicate; one leased by a live delivery is busy.
/// 2. The accounts of the jobs to lease are found and locked in account-id order (a built-in
///    account by its row, a Cloudreve account by an advisory lock, so that Cloudreve's own writes to
///    its row never wait on resetmail), so that jobs for one account are decided one batch at a
///    time. With notices on, the addresses of those jobs with no account are locked next (advisory
///    locks on their ASCII-lower-cased form, in address order).
/// 3. In a statement of its own (so that it sees what the previous holder of those locks
///    committed), the accounts' sent emails and live reservations are counted (and the addresses'
///    notices, likewise).
/// 4. Each job is decided in request order (expired, unknown, banned, inactive, throttled, send,
///    or notice), and each row is written once with its decision and, for a send, its lease and
///    reservation: inserted for a new job, updated for one leased again. A new job whose row
///    another delivery inserted meanwhile (the same job delivered twice at once) is busy.
///
/// A job twice in `requests` is claimed once; its second request is [`Claim::Busy`].
pub async fn claim(
    connection: &mut PgConnection,
    accounts: &Accounts,
    rules: &Rules,
    requests: &[ClaimRequest],
) -> sqlx::Result<Vec<Claim>> {
    let mut seen = HashSet::new();
    let unique: Vec<&ClaimRequest> = requests
        .iter()
        .filter(|request| seen.insert(request.job.job_id))
        .collect();
    let mut tx = connection.begin().await?;

    let existing = sqlx::query!(
        r#"SELECT job_id, outcome AS "outcome: Outcome",
                  coalesce(lease_until > now(), false) AS "leased!"
           FROM deliveries WHERE job_id = ANY($1)
           ORDER BY job_id
           FOR NO KEY UPDATE"#,
        &unique.iter().map(|r| r.job.job_id).collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let existing: HashMap<Uuid, (Outcome, bool)> = existing
        .into_iter()
        .map(|row| (row.job_id, (row.outcome, row.leased)))
        .collect();

    // The jobs to lease, and whether each is new (so at its first attempt).
    let mut leased = Vec::new();
    let mut answers: HashMap<Uuid, Claim> = HashMap::new();
    for request in &unique {
        match existing.get(&request.job.job_id) {
            None => leased.push((*request, true)),
            Some((outcome, _)) if outcome.is_final() => {
                answers.insert(request.job.job_id, Claim::Duplicate(*outcome));
            }
            Some((_, true)) => {
                answers.insert(request.job.job_id, Claim::Busy);
            }
            Some((_, false)) => leased.push((*request, false)),
        }
    }

    if !leased.is_empty() {
        let users = find_and_lock_accounts(&mut tx, accounts, &leased).await?;
        let user_ids: Vec<i64> = users.values().map(|user| user.id).collect();
        let counts = sqlx::query!(
            r#"SELECT user_id AS "user_id!",
                      count(*) FILTER (WHERE coalesce(sent_at, reserved_at)
                                             > now() - make_interval(secs => $2)) AS "recent!",
                      count(*) AS "today!"
               FROM deliveries
               WHERE user_id = ANY($1)
                 AND ((outcome = 'sent' AND sent_at > now() - interval '24 hours')
                      OR (outcome = 'pending' AND reserved_at IS NOT NULL AND lease_until > now()))
               GROUP BY user_id"#,
            &user_ids,
            rules.cooldown.as_secs_f64(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut counts: HashMap<i64, (i64, i64)> = counts
            .into_iter()
            .map(|row| (row.user_id, (row.recent, row.today)))
            .collect();

        // Addresses with no account, when they get a notice: locked (after every account, in
        // address order) and counted like the accounts, by a statement of its own.
        let unknown: Vec<String> = if rules.notify_unknown {
            let mut keys: Vec<String> = leased
                .iter()
                .filter(|(request, _)| !users.contains_key(&request.job.job_id))
                .map(|(request, _)| request.job.email.match_key())
                .collect();
            keys.sort();
            keys.dedup();
            keys
        } else {
            Vec::new()
        };
        let mut address_counts: HashMap<String, (i64, i64)> = HashMap::new();
        if !unknown.is_empty() {
            sqlx::query!(
                "SELECT pg_advisory_xact_lock($1, hashtext(key))
                 FROM unnest($2::text[]) AS key ORDER BY key",
                ADDRESS_LOCK_CLASS,
                &unknown,
            )
            .execute(&mut *tx)
            .await?;
            let counts = sqlx::query!(
                r#"SELECT ascii_lower(email) AS "key!",
                          count(*) FILTER (WHERE coalesce(sent_at, reserved_at)
                                                 > now() - make_interval(secs => $2)) AS "recent!",
                          count(*) AS "today!"
                   FROM deliveries
                   WHERE ascii_lower(email) = ANY($1) AND user_id IS NULL
                     AND ((outcome = 'unknown_account' AND sent_at > now() - interval '24 hours')
                          OR (outcome = 'pending' AND reserved_at IS NOT NULL
                              AND lease_until > now()))
                   GROUP BY 1"#,
                &unknown,
                rules.cooldown.as_secs_f64(),
            )
            .fetch_all(&mut *tx)
            .await?;
            address_counts = counts
                .into_iter()
                .map(|row| (row.key, (row.recent, row.today)))
                .collect();
        }

        let now = OffsetDateTime::now_utc();
        let mut decided = Decisions::default();
        // Takes one of the emails `counts` allows, if any is left.
        let take = |(recent, today): &mut (i64, i64)| {
            let allowed = *recent == 0 && *today < i64::from(rules.daily_max);
            if allowed {
                if !rules.cooldown.is_zero() {
                    *recent += 1;
                }
                *today += 1;
            }
            allowed
        };
        for (request, first) in &leased {
            let job = &request.job;
            let user = users.get(&job.job_id);
            let outcome = if *first && now - job.requested_at > rules.job_max_age {
                Outcome::Expired
            } else {
                match user.map(|user| user.status) {
                    None if rules.notify_unknown => {
                        let key = job.email.match_key();
                        if take(address_counts.entry(key).or_default()) {
                            Outcome::Pending
                        } else {
                            Outcome::Throttled
                        }
                    }
                    None => Outcome::UnknownAccount,
                    Some(UserStatus::Banned) => Outcome::Banned,
                    Some(UserStatus::Inactive) => Outcome::Inactive,
                    Some(UserStatus::Active) => {
                        let id = user.map(|user| user.id).unwrap_or_default();
                        if take(counts.entry(id).or_default()) {
                            Outcome::Pending
                        } else {
                            Outcome::Throttled
                        }
                    }
                }
            };
            let user_id = match outcome {
                // An expired job names no account, as it was never looked at.
                Outcome::Expired => None,
                _ => user.map(|user| user.id),
            };
            decided.push(request, *first, outcome, user_id);
            answers.insert(
                job.job_id,
                match (outcome, user) {
                    (Outcome::Pending, Some(user)) => Claim::Send(user.clone()),
                    (Outcome::Pending, None) => Claim::Notice,
                    _ => Claim::Decided(outcome),
                },
            );
        }
        decided.store(&mut tx, rules.lease).await?;
        // A new job another delivery inserted first is that delivery's.
        for job_id in decided.lost {
            answers.insert(job_id, Claim::Busy);
        }
    }
    tx.commit().await?;

    let mut answered = HashSet::new();
    Ok(requests
        .iter()
        .map(|request| {
            let job_id = request.job.job_id;
            match answers.get(&job_id) {
                Some(claim) if answered.insert(job_id) => claim.clone(),
                _ => Claim::Busy,
            }
        })
        .collect())
}

/// The decisions of a batch: the rows to insert (new jobs) and to update (jobs leased again), as
/// the arrays of one statement each.
#[derive(Default)]
struct Decisions {
    new: DecisionRows,
    again: DecisionRows,
    /// The new jobs whose row another delivery inserted first, once stored.
    lost: Vec<Uuid>,
}

#[derive(Default)]
struct DecisionRows {
    job_ids: Vec<Uuid>,
    correlation_ids: Vec<Uuid>,
    emails: Vec<String>,
    requested_at: Vec<OffsetDateTime>,
    lease_ids: Vec<Uuid>,
    outcomes: Vec<Outcome>,
    user_ids: Vec<Option<i64>>,
}

impl Decisions {
    fn push(&mut self, request: &ClaimRequest, new: bool, outcome: Outcome, user_id: Option<i64>) {
        let rows = if new { &mut self.new } else { &mut self.again };
        let job = &request.job;
        rows.job_ids.push(job.job_id);
        if new {
            rows.correlation_ids.push(job.correlation_id);
            rows.emails.push(job.email.as_str().to_owned());
            rows.requested_at.push(job.requested_at);
        }
        rows.lease_ids.push(request.lease_id);
        rows.outcomes.push(outcome);
        rows.user_ids.push(user_id);
    }

    /// Writes every decided row once: a pending one with its lease and reservation, a decided one
    /// without; then notes in [`Decisions::lost`] the new jobs another delivery inserted first.
    async fn store(&mut self, connection: &mut PgConnection, lease: Duration) -> sqlx::Result<()> {
        let lease = lease.as_secs_f64();
        if !self.new.job_ids.is_empty() {
            let rows = &self.new;
            let inserted = sqlx::query_scalar!(
                "INSERT INTO deliveries
                     (job_id, correlation_id, email, requested_at, attempts, first_attempt_at,
                      last_attempt_at, outcome, user_id, lease_id, lease_until, reserved_at)
                 SELECT job_id, correlation_id, email, requested_at, 1, now(), now(), outcome,
                        user_id,
                        CASE WHEN outcome = 'pending' THEN lease_id END,
                        CASE WHEN outcome = 'pending' THEN now() + make_interval(secs => $8) END,
                        CASE WHEN outcome = 'pending' THEN now() END
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[],
                             $6::delivery_outcome[], $7::int8[])
                      AS input(job_id, correlation_id, email, requested_at, lease_id, outcome,
                               user_id)
                 ORDER BY job_id
                 ON CONFLICT (job_id) DO NOTHING
                 RETURNING job_id",
                &rows.job_ids,
                &rows.correlation_ids,
                &rows.emails,
                &rows.requested_at,
                &rows.lease_ids,
                rows.outcomes.as_slice() as &[Outcome],
                // Elements may be NULL, which the macro's parameter types cannot say.
                &rows.user_ids as _,
                lease,
            )
            .fetch_all(&mut *connection)
            .await?;
            let inserted: HashSet<Uuid> = inserted.into_iter().collect();
            self.lost = rows
                .job_ids
                .iter()
                .filter(|job_id| !inserted.contains(job_id))
                .copied()
                .collect();
        }
        if !self.again.job_ids.is_empty() {
            let rows = &self.again;
            sqlx::query!(
                "UPDATE deliveries AS d SET
                     attempts = d.attempts + 1,
                     first_attempt_at = coalesce(d.first_attempt_at, now()),
                     last_attempt_at = now(),
                     outcome = input.outcome,
                     user_id = input.user_id,
                     lease_id = CASE WHEN input.outcome = 'pending' THEN input.lease_id END,
                     lease_until = CASE WHEN input.outcome = 'pending'
                                        THEN now() + make_interval(secs => $5) END,
                     reserved_at = CASE WHEN input.outcome = 'pending' THEN now() END,
                     updated_at = now()
                 FROM unnest($1::uuid[], $2::uuid[], $3::delivery_outcome[], $4::int8[])
                      AS input(job_id, lease_id, outcome, user_id)
                 WHERE d.job_id = input.job_id AND d.job_id = ANY($1::uuid[])",
                &rows.job_ids,
                &rows.lease_ids,
                rows.outcomes.as_slice() as &[Outcome],
                // Elements may be NULL, which the macro's parameter types cannot say.
                &rows.user_ids as _,
                lease,
            )
            .execute(&mut *connection)
            .await?;
        }
        Ok(())
    }
}

/// Finds the account of each leased job and locks it, in account-id order; answers by job id. Each
/// address is looked up on its own (`LATERAL … LIMIT 1`; the folded address is unique), so always
/// through the address index: as a join, PostgreSQL chose for a batch of a few hundred jobs to fold
/// and hash every account's address (40,000 in the bench), 100–300 ms of CPU per batch.
async fn find_and_lock_accounts(
    connection: &mut PgConnection,
    accounts: &Accounts,
    leased: &[(&ClaimRequest, bool)],
) -> sqlx::Result<HashMap<Uuid, User>> {
    let job_ids: Vec<Uuid> = leased.iter().map(|(r, _)| r.job.job_id).collect();
    let rows: Vec<AccountRow> = match accounts {
        Accounts::Builtin => {
            sqlx::query_as!(
                AccountRow,
                r#"SELECT input.job_id AS "job_id!", u.id, u.public_id AS "public_id?", u.email,
                          u.nick, u.status, u.language
                   FROM unnest($1::uuid[], $2::text[]) AS input(job_id, match_key)
                   CROSS JOIN LATERAL (
                       SELECT * FROM users WHERE ascii_lower(users.email) = input.match_key LIMIT 1
                   ) AS u
                   ORDER BY u.id
                   FOR NO KEY UPDATE OF u"#,
                &job_ids,
                &leased
                    .iter()
                    .map(|(r, _)| r.job.email.match_key())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(connection)
            .await?
        }
        // Cloudreve's table is not in the database the checked queries are described against
        // (scripts/sqlx-data.sh): this query is checked by the tests on a Cloudreve database.
        // Matched as Cloudreve's sign-in matches: case-insensitively, soft-deleted rows excluded,
        // the oldest of case variants. The lock is taken after the sort (PostgreSQL evaluates a
        // volatile function of the select list after ORDER BY).
        Accounts::Cloudreve(_) => {
            sqlx::query_as(
                "SELECT found.*, pg_advisory_xact_lock($3, (found.id % 2147483647)::int)::text AS locked
                 FROM (
                     SELECT input.job_id, u.id, NULL::uuid AS public_id, u.email, u.nick, u.status,
                            u.language
                     FROM unnest($1::uuid[], $2::text[]) AS input(job_id, email)
                     CROSS JOIN LATERAL (
                         SELECT c.id, c.email::text AS email, c.nick::text AS nick,
                                CASE c.status WHEN 'active' THEN 'active'
                                              WHEN 'inactive' THEN 'inactive'
                                              ELSE 'banned' END AS status,
                                c.settings->>'email_language' AS language
                         FROM public.users AS c
                         WHERE lower(c.email) = lower(input.email) AND c.deleted_at IS NULL
                         ORDER BY c.id LIMIT 1
                     ) AS u
                 ) AS found
                 ORDER BY found.id",
            )
            .bind(&job_ids)
            .bind(
                leased
                    .iter()
                    .map(|(r, _)| r.job.email.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(ACCOUNT_LOCK_CLASS)
            .fetch_all(connection)
            .await?
        }
    };
    rows.into_iter()
        .map(|row| {
            let job_id = row.job_id;
            let id = row.id;
            let mut user = User::try_from(UserRow {
                id: row.id,
                public_id: row.public_id.unwrap_or_default(),
                email: row.email,
                nick: row.nick,
                status: row.status,
                language: row.language,
            })?;
            if let Accounts::Cloudreve(ids) = accounts {
                let id = u64::try_from(id).map_err(|e| sqlx::Error::Decode(e.into()))?;
                user.link_id = ids.encode(id, ObjectKind::User);
            }
            Ok((job_id, user))
        })
        .collect()
}

/// An account found for a job.
#[derive(sqlx::FromRow)]
struct AccountRow {
    job_id: Uuid,
    id: i64,
    /// NULL for a Cloudreve account: its link id is made from `id`.
    public_id: Option<Uuid>,
    email: String,
    nick: Option<String>,
    status: String,
    language: Option<String>,
}

/// An email the mail server accepted, to record (with its token, for a reset email).
#[derive(Clone, Debug)]
pub struct SentEmail {
    /// The job.
    pub job_id: Uuid,
    /// The lease it was sent under.
    pub lease_id: Uuid,
    /// The email's Message-ID header.
    pub message_id: String,
    /// The reset email's token; `None` for the notice to an address with no account.
    pub token: Option<IssuedToken>,
}

/// The token a reset email carries.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The account.
    pub user_id: i64,
    /// SHA-256 of the token's secret, which only the email holds.
    pub token_hash: [u8; 32],
}

/// An email that did not leave, to record with why.
#[derive(Clone, Debug)]
pub struct UnsentEmail {
    /// The job.
    pub job_id: Uuid,
    /// The lease it was tried under.
    pub lease_id: Uuid,
    /// Why (addresses masked by the caller).
    pub error: String,
    /// Whether the job is decided for good (`failed`) rather than pending again.
    pub give_up: bool,
}

/// Records `sent` and `unsent` in one statement, and returns the ids of the jobs recorded (or
/// found recorded already, when an earlier try of the same record committed unseen). A job
/// missing from the answer lost its lease: another delivery took it over.
///
/// A sent reset email becomes `sent`, its account's older unused tokens are revoked and its token
/// is stored (of two emails for one account in the batch, the later one's token is the live one);
/// a sent notice becomes `unknown_account` with its `sent_at`; an unsent email becomes pending again
/// with its error, or `failed`. Either way its reservation and lease end.
///
/// Each step that reads `deliveries` also names the batch's keys with `= ANY(…)`, whose rows
/// PostgreSQL counts right and can reach by the primary key: joined with the batch's rows alone,
/// when the last `ANALYZE` had seen no pending row, it compared every pending row with every job
/// of the batch (O(jobs in flight × batch)) and hashed every sent row, for each batch. On a small
/// table it may still read the table through, keeping only the batch's rows.
pub async fn record(
    connection: &mut PgConnection,
    token_ttl: Duration,
    sent: &[SentEmail],
    unsent: &[UnsentEmail],
) -> sqlx::Result<HashSet<Uuid>> {
    let recorded: Vec<Uuid> = sqlx::query_scalar!(
        r#"WITH sent AS (
             SELECT *
             FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::bytea[], $5::text[])
                  WITH ORDINALITY AS s(job_id, lease_id, user_id, token_hash, message_id, n)
         ), recorded AS (
             UPDATE deliveries AS d SET
                 outcome = CASE WHEN sent.user_id IS NULL THEN 'unknown_account'::delivery_outcome
                                ELSE 'sent'::delivery_outcome END,
                 sent_at = now(), message_id = sent.message_id,
                 last_error = NULL, lease_id = NULL, lease_until = NULL, reserved_at = NULL,
                 updated_at = now()
             FROM sent
             WHERE d.job_id = sent.job_id AND d.lease_id = sent.lease_id AND d.outcome = 'pending'
               AND d.job_id = ANY($1::uuid[])
             RETURNING d.job_id
         ), already AS (
             SELECT d.job_id FROM deliveries AS d JOIN sent USING (job_id)
             WHERE d.outcome IN ('sent', 'unknown_account') AND d.message_id = sent.message_id
               AND d.job_id = ANY($1::uuid[])
         ), live AS (
             SELECT sent.* FROM sent JOIN recorded USING (job_id) WHERE sent.user_id IS NOT NULL
         ), revoked AS (
             -- `= ANY($3)` reaches the batch's accounts' live tokens by their index; matching them
             -- with `live` alone made PostgreSQL rescan `live` for every live token of every account.
             UPDATE password_reset_tokens AS t SET revoked_at = now()
             WHERE t.user_id = ANY($3::int8[]) AND t.used_at IS NULL AND t.revoked_at IS NULL
               AND EXISTS (SELECT FROM live WHERE live.user_id = t.user_id)
         ), issued AS (
             INSERT INTO password_reset_tokens (user_id, token_hash, job_id, expires_at, revoked_at)
             SELECT user_id, token_hash, job_id, now() + make_interval(secs => $6),
                    CASE WHEN row_number() OVER (PARTITION BY user_id ORDER BY n DESC) > 1
                         THEN now() END
             FROM live
         ), unsent AS (
             UPDATE deliveries AS d SET
                 outcome = CASE WHEN unsent.give_up THEN 'failed'::delivery_outcome
                                ELSE 'pending'::delivery_outcome END,
                 last_error = unsent.error, lease_id = NULL, lease_until = NULL,
                 reserved_at = NULL, updated_at = now()
             FROM unnest($7::uuid[], $8::uuid[], $9::text[], $10::bool[])
                  AS unsent(job_id, lease_id, error, give_up)
             WHERE d.job_id = unsent.job_id AND d.lease_id = unsent.lease_id
               AND d.outcome = 'pending' AND d.job_id = ANY($7::uuid[])
             RETURNING d.job_id
         )
         SELECT job_id AS "job_id!" FROM recorded
         UNION ALL SELECT job_id FROM already
         UNION ALL SELECT job_id FROM unsent"#,
        &sent.iter().map(|s| s.job_id).collect::<Vec<_>>(),
        &sent.iter().map(|s| s.lease_id).collect::<Vec<_>>(),
        // Elements are NULL for a notice, which the macro's parameter types cannot say.
        &sent
            .iter()
            .map(|s| s.token.as_ref().map(|token| token.user_id))
            .collect::<Vec<_>>() as _,
        &sent
            .iter()
            .map(|s| s.token.as_ref().map(|token| token.token_hash.to_vec()))
            .collect::<Vec<_>>() as _,
        &sent
            .iter()
            .map(|s| s.message_id.clone())
            .collect::<Vec<_>>(),
        token_ttl.as_secs_f64(),
        &unsent.iter().map(|u| u.job_id).collect::<Vec<_>>(),
        &unsent.iter().map(|u| u.lease_id).collect::<Vec<_>>(),
        &unsent.iter().map(|u| u.error.clone()).collect::<Vec<_>>(),
        &unsent.iter().map(|u| u.give_up).collect::<Vec<_>>(),
    )
    .fetch_all(connection)
    .await?;
    Ok(recorded.into_iter().collect())
}
