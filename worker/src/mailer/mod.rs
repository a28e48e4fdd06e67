//! Sending email: SMTP over our own pool of `TCP_NODELAY` connections ([`smtp`]) when an SMTP URL
//! is configured, otherwise `.eml` files in the outbox directory. Every SMTP send runs under a
//! timeout.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub mod smtp;

/// Why a send failed, classified once, here.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying: 4xx, timeouts, connection failures.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying will not help: 5xx on the recipient or the message.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Every job would fail alike (authentication rejected, TLS misconfigured, outbox unwritable):
    /// stop taking jobs for a while rather than burn them.
    #[error("systemic: {0}")]
    Systemic(String),
}

/// The right to open (or reuse) one SMTP connection, from [`Mailer::slot`]; given back when
/// dropped.
pub struct Slot(#[expect(dead_code, reason = "held for its drop")] Option<OwnedSemaphorePermit>);

/// The configured transport.
pub enum Mailer {
    /// A real SMTP server.
    Smtp {
        /// Kept-alive connections to the server.
        pool: smtp::Pool,
        /// Upper bound for one send.
        timeout: Duration,
        /// One permit per connection the server may see at once.
        slots: Arc<Semaphore>,
    },
    /// `.eml` files in a directory, for machines without an SMTP server.
    Outbox {
        /// Writes the files.
        transport: AsyncFileTransport<Tokio1Executor>,
        /// The directory.
        dir: PathBuf,
    },
}

impl Mailer {
    /// SMTP from `smtp_url` when given, else the outbox in `outbox_dir` (created if missing).
    /// At most `connections` SMTP connections are open at once (see [`Mailer::slot`]).
    pub fn new(
        smtp_url: Option<&smtp::SmtpUrl>,
        outbox_dir: &Path,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Self> {
        match smtp_url {
            Some(url) => {
                // The error names the part that is wrong; the URL (with its password) is not shown.
                let settings = smtp::Settings::from_url(url, timeout).map_err(|reason| {
                    anyhow::anyhow!("cannot use the SMTP server's URL: {reason}")
                })?;
                Ok(Self::Smtp {
                    pool: smtp::Pool::new(settings, connections),
                    timeout,
                    slots: Arc::new(Semaphore::new(connections.max(1))),
                })
            }
            None => {
                std::fs::create_dir_all(outbox_dir).with_context(|| {
                    format!("cannot create the outbox {}", outbox_dir.display())
                })?;
                Ok(Self::Outbox {
                    transport: AsyncFileTransport::new(outbox_dir),
                    dir: outbox_dir.to_owned(),
                })
            }
        }
    }

    /// Waits for one of the SMTP connections the server may see at once; a send happens while
    /// its job holds one, so that no more connections are open than configured however many jobs
    /// are in flight. The outbox has no limit.
    pub async fn slot(&self) -> Slot {
        match self {
            Self::Smtp { slots, .. } => Slot(slots.clone().acquire_owned().await.ok()),
            Self::Outbox { .. } => Slot(None),
        }
    }

    /// Sends one message.
    pub async fn send(&self, message: Message) -> Result<(), MailError> {
        match self {
            Self::Smtp { pool, timeout, .. } => {
                // Only the bytes and the envelope stay for the send: with a slow relay, a
                // thousand messages wait at once, and each built message is a second copy. The
                // bytes are cut to their length (lettre grows them by doubling, which left a
                // third of each buffer unused: 5 MB of a thousand sends in flight).
                let envelope = message.envelope().clone();
                let bytes = message.formatted().into_boxed_slice();
                drop(message);
                // A send cut short by the timeout drops its connection with it.
                tokio::time::timeout(*timeout, pool.send(&envelope, &bytes))
                    .await
                    .unwrap_or_else(|_| Err(classify(Fault::Timeout(*timeout))))
            }
            Self::Outbox { transport, .. } => transport
                .send(message)
                .await
                .map(|_id| ())
                .map_err(|error| classify(Fault::Outbox(error.to_string()))),
        }
    }
}

/// Everything that can go wrong in a send, before it has a class.
#[derive(Debug)]
pub enum Fault<'a> {
    /// lettre's SMTP client failed: a reply, STARTTLS, the connection under it.
    Smtp(&'a lettre::transport::smtp::Error),
    /// No TCP connection to the server (refused, unreachable, timed out).
    Connect(String),
    /// The TLS handshake of an `smtps://` connection failed.
    TlsHandshake(String),
    /// The server does not offer STARTTLS, which `tls=required` asks for.
    NoStartTls,
    /// The recipient's address is not ASCII and the server does not offer SMTPUTF8.
    NoSmtpUtf8,
    /// The message is not ASCII and the server does not offer 8BITMIME.
    No8BitMime,
    /// The whole send took longer than its time limit.
    Timeout(Duration),
    /// The message could not be made (a template, the account's address).
    Message(String),
    /// The outbox cannot be written.
    Outbox(String),
}

/// The one place where a failed send gets its class.
pub fn classify(fault: Fault<'_>) -> MailError {
    match fault {
        Fault::Smtp(error) => {
            let code = error.status().map(u16::from);
            let text = error.to_string();
            match code {
                // Authentication required, too weak, rejected, or needing encryption: the
                // configuration is wrong for every job alike.
                Some(530 | 534 | 535 | 538) => MailError::Systemic(text),
                _ if error.is_tls() || error.is_client() => MailError::Systemic(text),
                _ if error.is_permanent() => MailError::Permanent(text),
                // 4xx, timeouts, refused or dropped connections, garbled replies: worth another try.
                _ => MailError::Transient(text),
            }
        }
        Fault::Connect(text) => MailError::Transient(text),
        Fault::Timeout(limit) => {
            MailError::Transient(format!("no answer from the SMTP server within {limit:?}"))
        }
        // A certificate that does not match, or a server that speaks no TLS, fails every job
        // alike, as a failed STARTTLS does: pause rather than burn the jobs' retries.
        Fault::TlsHandshake(text) => {
            MailError::Systemic(format!("TLS handshake with the SMTP server failed: {text}"))
        }
        Fault::NoStartTls => MailError::Systemic(
            "the SMTP server does not offer STARTTLS, which tls=required asks for".into(),
        ),
        // One account's address: this job's problem, not every job's.
        Fault::NoSmtpUtf8 => MailError::Permanent(
            "the address is not ASCII and the SMTP server does not offer SMTPUTF8".into(),
        ),
        // The site's own messages (its templates, its sender) and its relay disagree.
        Fault::No8BitMime => MailError::Systemic(
            "the message is not ASCII and the SMTP server does not offer 8BITMIME".into(),
        ),
        Fault::Message(text) => MailError::Permanent(text),
        // A full disk or a missing directory is this machine's problem, not the job's.
        Fault::Outbox(text) => MailError::Systemic(format!("cannot write to the outbox: {text}")),
    }
}
