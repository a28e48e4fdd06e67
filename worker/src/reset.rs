//! Handling one password reset job: decide, issue the token, render and send the email, record it.
//! The job's delivery row stays locked from the first statement to the commit, so a job delivered
//! twice (or to two workers) is sent once.

use anyhow::Context as _;
use lettre::{
    Message,
    message::{
        Mailbox, MultiPart,
        header::{HeaderName, HeaderValue},
    },
};
use resetmail_shared::{
    PasswordResetJob,
    db::{
        deliveries::{self, Outcome},
        users::{User, UserStatus},
    },
    email::mask_addresses,
    token::ResetToken,
};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

use crate::{
    Worker, cloudreve_mail,
    mailer::MailError,
    site::SiteConfig,
    templates::{ResetEmailContext, valid_for},
};

/// Why a job is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadClass {
    /// The mail server refused it for good (5xx), or the account's address cannot be mailed.
    Permanent,
    /// Transient failures outlasted every retry step.
    Exhausted,
    /// The message is not a job this worker understands.
    Malformed,
}

impl DeadClass {
    /// The value of the `x-resetmail-error-class` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Malformed => "malformed",
        }
    }
}

/// Why a job failed, as text for the log, the delivery row and the dead letter's headers. Mail
/// servers name the recipient in their replies (`550 5.1.1 <bob@example.com>: …`), so every address
/// in the text is masked here, when it is made: nothing else can build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    /// The text with every address in it masked.
    pub fn new(text: impl AsRef<str>) -> Self {
        Self(mask_addresses(text.as_ref()))
    }

    /// The masked text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What became of a job; one place ([`crate::settle`]) turns it into an ack, a retry copy, a dead
/// letter or a requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The email was accepted by the mail server.
    Sent {
        /// Its Message-ID header.
        message_id: String,
    },
    /// Decided without sending (unknown, banned or inactive account, expired job).
    Skipped(Outcome),
    /// Already decided by an earlier delivery of the same job; nothing was done.
    Duplicate(Outcome),
    /// Failed in a way that may pass; the job waits in the next retry step.
    Retry(Failure),
    /// Failed for good; the job goes to the dead letters.
    Dead(DeadClass, Failure),
    /// Every job would fail alike now (database down, SMTP credentials rejected): the job goes back
    /// to the queue untouched and the worker stops taking jobs for a while.
    Pause(Failure),
}

impl JobOutcome {
    /// The error behind a failed outcome.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Retry(text) | Self::Dead(_, text) | Self::Pause(text) => Some(text.as_str()),
            Self::Sent { .. } | Self::Skipped(_) | Self::Duplicate(_) => None,
        }
    }
}

impl Worker {
    /// Handles attempt number `attempt` (from 1) of a job. Never panics: a failure of the database
    /// becomes [`JobOutcome::Pause`], one of the mail server the outcome its class calls for.
    pub async fn handle(&self, job: &PasswordResetJob, attempt: u32) -> JobOutcome {
        match self.try_handle(job, attempt).await {
            Ok(outcome) => outcome,
            Err(error) => JobOutcome::Pause(Failure::new(format!("{error:#}"))),
        }
    }

    async fn try_handle(&self, job: &PasswordResetJob, attempt: u32) -> anyhow::Result<JobOutcome> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("cannot begin a transaction")?;
        let (claim, user) = deliveries::claim(&mut *tx, job, &self.accounts)
            .await
            .context("cannot record the job")?;
        if claim.outcome.is_final() {
            tx.commit().await?;
            return Ok(JobOutcome::Duplicate(claim.outcome));
        }
        // Only a job that waited too long before its first attempt is stale; retries take their time.
        if claim.first && OffsetDateTime::now_utc() - job.requested_at > self.config.job_max_age {
            return decide(tx, job, None, Outcome::Expired).await;
        }
        let user = match user {
            None => return decide(tx, job, None, Outcome::UnknownAccount).await,
            Some(user) if user.status == UserStatus::Banned => {
                return decide(tx, job, Some(user.id), Outcome::Banned).await;
            }
            Some(user) if user.status == UserStatus::Inactive => {
                return decide(tx, job, Some(user.id), Outcome::Inactive).await;
            }
            Some(user) => user,
        };

        // The account's row is locked: jobs for one account see each other's sends.
        let token = ResetToken::generate().context("no randomness from the operating system")?;
        let site = self.site();
        let message_id = format!("<{}@{}>", job.job_id, site.message_id_domain);
        let send = deliveries::PreparedSend {
            job_id: job.job_id,
            user_id: user.id,
            token_hash: &token.hash(),
            token_ttl: self.config.token_ttl,
            cooldown: self.config.account_cooldown,
            daily_max: self.config.account_daily_max,
            message_id: &message_id,
        };
        let Some(token_id) = deliveries::prepare_send(&mut *tx, &send)
            .await
            .context("cannot store the token")?
        else {
            tx.commit().await?;
            return Ok(JobOutcome::Skipped(Outcome::Throttled));
        };
        let sent = match self.compose(&site, &user, &token, &message_id) {
            Ok(message) => {
                let started = std::time::Instant::now();
                let sent = site.mailer.send(message).await;
                metrics::histogram!("resetmail_worker_send_seconds")
                    .record(started.elapsed().as_secs_f64());
                sent
            }
            Err(error) => Err(MailError::Permanent(error)),
        };
        match sent {
            // The job was recorded as sent, with its token, by `prepare_send`: committing now
            // makes both true at once.
            Ok(()) => {
                tx.commit().await.context("cannot record the sent email")?;
                Ok(JobOutcome::Sent { message_id })
            }
            Err(error) => {
                let retry_steps = self.config.broker.retry_delays.0.len();
                let (give_up, outcome) = match error {
                    MailError::Permanent(text) => (
                        true,
                        JobOutcome::Dead(DeadClass::Permanent, Failure::new(text)),
                    ),
                    MailError::Transient(text) if attempt as usize > retry_steps => (
                        true,
                        JobOutcome::Dead(DeadClass::Exhausted, Failure::new(text)),
                    ),
                    MailError::Transient(text) => (false, JobOutcome::Retry(Failure::new(text))),
                    MailError::Systemic(text) => (false, JobOutcome::Pause(Failure::new(text))),
                };
                // The email never left: its token must never work.
                let text = outcome.error().unwrap_or_default();
                deliveries::undo_send(&mut *tx, job.job_id, token_id, text, give_up).await?;
                tx.commit().await?;
                Ok(outcome)
            }
        }
    }

    fn compose(
        &self,
        site: &SiteConfig,
        user: &User,
        token: &ResetToken,
        message_id: &str,
    ) -> Result<Message, String> {
        let lang = self.templates.choose_language(user.language.as_deref());
        let context = ResetEmailContext {
            site_name: site.site.name.clone(),
            site_url: site.site.url.clone(),
            name: user
                .nick
                .clone()
                .filter(|nick| !nick.trim().is_empty())
                .unwrap_or_else(|| user.email.clone()),
            email: user.email.clone(),
            link: format!(
                "{}/session/reset?id={}&secret={}",
                site.site.url,
                user.link_id,
                token.secret()
            ),
            valid_for: valid_for(self.config.token_ttl, lang),
        };
        let mut email = self
            .templates
            .render(lang, &context)
            .map_err(|error| format!("template error: {error}"))?;
        if let Some(templates) = &site.templates {
            // The site's own email: its subject and HTML; the text part stays resetmail's, since
            // Cloudreve sends HTML alone.
            let chosen = cloudreve_mail::choose(templates, user.language.as_deref());
            let data = cloudreve_mail::reset_data(
                &site.site.name,
                &site.site.url,
                &site.logo,
                &context.link,
                user.nick.as_deref().unwrap_or_default(),
                &user.email,
            );
            let rendered = chosen
                .title
                .render_text(&data)
                .and_then(|subject| Ok((subject, chosen.body.render_html(&data)?)))
                .map_err(|error| format!("the site's template: {error}"))?;
            // Before Cloudreve 4.7 the title was plain text and the code added `[site name] `.
            email.subject = if chosen.title.paths().next().is_none() && !rendered.0.starts_with('[')
            {
                format!("[{}] {}", site.site.name, rendered.0)
            } else {
                rendered.0
            };
            email.html = rendered.1;
        }
        let to: Mailbox = user
            .email
            .parse()
            .map_err(|error| format!("the account's stored address is not deliverable: {error}"))?;
        let mut builder = Message::builder().from(site.from.clone()).to(to);
        if let Some(reply_to) = &site.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        builder
            // An automatic message (RFC 3834): vacation responders and Exchange's auto-replies
            // stay quiet. lettre adds the Date header itself.
            .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".into()))
            .raw_header(HeaderValue::new(AUTO_RESPONSE_SUPPRESS, "All".into()))
            .subject(email.subject)
            .message_id(Some(message_id.to_owned()))
            .multipart(MultiPart::alternative_plain_html(email.text, email.html))
            .map(|mut message| {
                if let Some(dkim) = &site.dkim {
                    dkim.sign(&mut message);
                }
                message
            })
            .map_err(|error| format!("cannot build the message: {error}"))
    }
}

/// RFC 3834's mark of a message sent by a program, not a person.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");
/// Microsoft Exchange's request for no automatic replies of any kind.
const AUTO_RESPONSE_SUPPRESS: HeaderName =
    HeaderName::new_from_ascii_str("X-Auto-Response-Suppress");

async fn decide(
    mut tx: Transaction<'_, Postgres>,
    job: &PasswordResetJob,
    user_id: Option<i64>,
    outcome: Outcome,
) -> anyhow::Result<JobOutcome> {
    deliveries::decide(&mut *tx, job.job_id, user_id, outcome).await?;
    tx.commit().await?;
    Ok(JobOutcome::Skipped(outcome))
}
