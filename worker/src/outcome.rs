//! What becomes of a job, and the policy that decides it: the one place that knows the outcomes,
//! the classes of a dead job, and when a failed send is retried, dead-lettered or pauses the
//! worker. [`crate::reset`] produces a [`JobOutcome`]; [`crate::settle`] turns it into broker
//! actions; neither decides the other's part.

use resetmail_shared::{db::deliveries::Outcome, email::mask_addresses};

use crate::mailer::MailError;

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

/// What became of a job; [`crate::settle`] turns it into an ack, a retry copy, a dead letter or a
/// requeue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The email was accepted by the mail server.
    Sent {
        /// Its Message-ID header.
        message_id: String,
    },
    /// The address has no account, and the notice saying so was accepted by the mail server.
    Notified {
        /// Its Message-ID header.
        message_id: String,
    },
    /// Decided without sending (unknown, banned or inactive account, expired job, throttled).
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
    /// The job cannot be finished by this delivery now, through no fault of its own (another
    /// delivery of it holds its lease while the worker stops, or its result could not be recorded
    /// before the worker stopped): it goes back to the queue, and the worker goes on.
    Requeue(Failure),
}

impl JobOutcome {
    /// The error behind a failed outcome.
    pub fn error(&self) -> Option<&Failure> {
        match self {
            Self::Retry(failure)
            | Self::Dead(_, failure)
            | Self::Pause(failure)
            | Self::Requeue(failure) => Some(failure),
            Self::Sent { .. } | Self::Notified { .. } | Self::Skipped(_) | Self::Duplicate(_) => {
                None
            }
        }
    }

    /// The outcome of attempt number `attempt` (from 1) whose send failed with `error`, when
    /// `retry_steps` retry steps are configured: a transient failure is retried until every step
    /// was used, then the job is dead as exhausted.
    pub fn of_failed_send(error: MailError, attempt: u32, retry_steps: usize) -> Self {
        match error {
            MailError::Permanent(text) => Self::Dead(DeadClass::Permanent, Failure::new(text)),
            MailError::Transient(text) if attempt as usize > retry_steps => {
                Self::Dead(DeadClass::Exhausted, Failure::new(text))
            }
            MailError::Transient(text) => Self::Retry(Failure::new(text)),
            MailError::Systemic(text) => Self::Pause(Failure::new(text)),
        }
    }

    /// Whether the job is decided for good: its delivery row becomes `failed`, not pending again.
    pub fn gives_up(&self) -> bool {
        matches!(self, Self::Dead(..))
    }

    /// The `outcome` label of `resetmail_worker_jobs_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Notified { .. } => "notified",
            Self::Skipped(decided) => decided.as_str(),
            Self::Duplicate(_) => "duplicate",
            Self::Retry(_) => "retry",
            Self::Dead(..) => "dead",
            Self::Pause(_) => "paused",
            Self::Requeue(_) => "requeued",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_failure_is_retried_until_the_steps_run_out() {
        let transient = || MailError::Transient("421 busy".into());
        assert!(matches!(
            JobOutcome::of_failed_send(transient(), 1, 2),
            JobOutcome::Retry(_)
        ));
        assert!(matches!(
            JobOutcome::of_failed_send(transient(), 2, 2),
            JobOutcome::Retry(_)
        ));
        let last = JobOutcome::of_failed_send(transient(), 3, 2);
        assert!(matches!(last, JobOutcome::Dead(DeadClass::Exhausted, _)));
        assert!(last.gives_up());
    }

    #[test]
    fn permanent_failures_die_at_once_and_systemic_ones_pause() {
        let permanent =
            JobOutcome::of_failed_send(MailError::Permanent("550 <bob@example.com>".into()), 1, 3);
        assert_eq!(
            permanent,
            JobOutcome::Dead(DeadClass::Permanent, Failure::new("550 <bob@example.com>"))
        );
        assert!(
            !permanent
                .error()
                .is_some_and(|failure| failure.as_str().contains("bob@example.com"))
        );
        let systemic = JobOutcome::of_failed_send(MailError::Systemic("535 auth".into()), 1, 3);
        assert!(matches!(systemic, JobOutcome::Pause(_)));
        assert!(!systemic.gives_up());
    }
}
