//! Handling one password reset job: claim it, render and send the email, record what happened.
//! No transaction is open while the email is sent: the job's lease (docs/ARCHITECTURE.md, "A job's
//! life") keeps a job delivered twice, or to two workers, from being sent twice.

use lettre::{
    Message,
    message::{
        Mailbox, MultiPart,
        header::{HeaderName, HeaderValue},
    },
};
use resetmail_shared::{
    PasswordResetJob,
    amqp::Backoff,
    db::{
        claims::{Claim, ClaimRequest, IssuedToken, SentEmail, UnsentEmail},
        deliveries::Outcome,
        users::User,
    },
    token::ResetToken,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Worker, cloudreve_mail,
    mailer::{Fault, classify},
    outcome::{Failure, JobOutcome},
    site::SiteConfig,
    store::Record,
    templates::{NoticeContext, RenderedEmail, ResetEmailContext, valid_for},
};

impl Worker {
    /// Handles attempt number `attempt` (from 1) of a job. Never panics: a database that does not
    /// answer becomes [`JobOutcome::Pause`], a failed send the outcome its class calls for.
    ///
    /// The job waits for an SMTP connection slot, then is claimed (a short transaction, shared
    /// with the other jobs claimed at that moment) under a lease of its own; the email is sent
    /// with no transaction open; then the result is recorded (one statement, shared too). A job
    /// whose lease another delivery holds waits for it; `stopping` ends that wait.
    pub async fn handle(
        &self,
        job: &PasswordResetJob,
        attempt: u32,
        stopping: &CancellationToken,
    ) -> JobOutcome {
        let site = self.site();
        let Ok(token) = ResetToken::generate() else {
            return JobOutcome::Pause(Failure::new("no randomness from the operating system"));
        };
        let lease_id = Uuid::new_v4();
        let mut waited = false;
        let (user, slot) = loop {
            // The lease starts once a connection is free, so that it need only outlast a send.
            let slot = site.mailer.slot().await;
            let request = ClaimRequest {
                job: job.clone(),
                lease_id,
            };
            match self.store.claim(request).await {
                Err(error) => {
                    return JobOutcome::Pause(Failure::new(format!(
                        "cannot claim the job: {error}"
                    )));
                }
                Ok(Claim::Duplicate(outcome)) => return JobOutcome::Duplicate(outcome),
                Ok(Claim::Decided(outcome)) => return JobOutcome::Skipped(outcome),
                Ok(Claim::Send(user)) => break (Some(user), slot),
                Ok(Claim::Notice) => break (None, slot),
                Ok(Claim::Busy) => {
                    drop(slot);
                    if !std::mem::replace(&mut waited, true) {
                        tracing::info!("another delivery of this job holds its lease; waiting");
                    }
                    tokio::select! {
                        () = stopping.cancelled() => {
                            return JobOutcome::Requeue(Failure::new(
                                "another delivery of the job holds its lease and the worker is stopping",
                            ));
                        }
                        () = tokio::time::sleep(self.config.requeue_delay) => {}
                    }
                }
            }
        };

        let message_id = format!("<{}@{}>", job.job_id, site.message_id_domain);
        let message = match &user {
            Some(user) => self.compose(&site, user, &token, &message_id),
            None => self.compose_notice(&site, job, &message_id),
        };
        let sent = match message {
            Ok(message) => {
                let started = std::time::Instant::now();
                let sent = site.mailer.send(message).await;
                metrics::histogram!("resetmail_worker_send_seconds")
                    .record(started.elapsed().as_secs_f64());
                sent
            }
            Err(error) => Err(classify(Fault::Message(error))),
        };
        drop(slot);
        let (outcome, record) = match sent {
            Ok(()) => (
                match user {
                    Some(_) => JobOutcome::Sent {
                        message_id: message_id.clone(),
                    },
                    None => JobOutcome::Notified {
                        message_id: message_id.clone(),
                    },
                },
                Record::Sent(SentEmail {
                    job_id: job.job_id,
                    lease_id,
                    message_id,
                    token: user.map(|user| IssuedToken {
                        user_id: user.id,
                        token_hash: token.hash(),
                    }),
                }),
            ),
            Err(error) => {
                let retry_steps = self.config.broker.retry_delays.0.len();
                let outcome = JobOutcome::of_failed_send(error, attempt, retry_steps);
                // The email never left, so no token was stored: nothing can redeem it.
                let record = Record::Unsent(UnsentEmail {
                    job_id: job.job_id,
                    lease_id,
                    error: outcome
                        .error()
                        .map(|failure| failure.as_str().to_owned())
                        .unwrap_or_default(),
                    give_up: outcome.gives_up(),
                });
                (outcome, record)
            }
        };
        match self.record(record, stopping).await {
            Ok(true) => outcome,
            Ok(false) => {
                tracing::warn!(
                    outcome = outcome.label(),
                    "another delivery took the job over while this one worked on it; its result is not recorded"
                );
                JobOutcome::Duplicate(Outcome::Pending)
            }
            Err(failure) => JobOutcome::Requeue(failure),
        }
    }

    /// Records a result, trying again while the database fails, until `stopping` has fired and
    /// the shutdown timeout passed since: a result is never dropped while the worker runs.
    async fn record(&self, record: Record, stopping: &CancellationToken) -> Result<bool, Failure> {
        let mut backoff = Backoff::default();
        let given_up = async {
            stopping.cancelled().await;
            tokio::time::sleep(self.config.shutdown_timeout).await;
        };
        tokio::pin!(given_up);
        loop {
            let error = match self.store.record(record.clone()).await {
                Ok(recorded) => return Ok(recorded),
                Err(error) => error,
            };
            tracing::warn!(%error, "cannot record the job's result; trying again");
            tokio::select! {
                () = &mut given_up => {
                    return Err(Failure::new(format!(
                        "the job's result could not be recorded before the worker stopped: {error}"
                    )));
                }
                () = tokio::time::sleep(backoff.next_delay()) => {}
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
            link: site.site.reset_link(&user.link_id, token.secret()),
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
        message(site, to, email, message_id)
    }

    /// The notice to an address with no account, in the default language, to the address as asked.
    fn compose_notice(
        &self,
        site: &SiteConfig,
        job: &PasswordResetJob,
        message_id: &str,
    ) -> Result<Message, String> {
        let context = NoticeContext {
            site_name: site.site.name.clone(),
            site_url: site.site.url.clone(),
            email: job.email.as_str().to_owned(),
        };
        let email = self
            .templates
            .render_notice(self.templates.choose_language(None), &context)
            .map_err(|error| format!("template error: {error}"))?;
        let to: Mailbox = job
            .email
            .as_str()
            .parse()
            .map_err(|error| format!("the address is not deliverable: {error}"))?;
        message(site, to, email, message_id)
    }
}

/// The message of `email` from the site to `to`, marked automatic and signed when DKIM is on.
fn message(
    site: &SiteConfig,
    to: Mailbox,
    email: RenderedEmail,
    message_id: &str,
) -> Result<Message, String> {
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

/// RFC 3834's mark of a message sent by a program, not a person.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");
/// Microsoft Exchange's request for no automatic replies of any kind.
const AUTO_RESPONSE_SUPPRESS: HeaderName =
    HeaderName::new_from_ascii_str("X-Auto-Response-Suppress");
