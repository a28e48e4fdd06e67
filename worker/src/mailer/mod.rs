//! Sending email: SMTP over our own pool of `TCP_NODELAY` connections ([`smtp`]) when an SMTP URL
//! is configured, otherwise `.eml` files in the outbox directory. Every SMTP send runs under a
//! timeout.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor};

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

/// The configured transport.
pub enum Mailer {
    /// A real SMTP server.
    Smtp {
        /// Kept-alive connections to the server.
        pool: smtp::Pool,
        /// Upper bound for one send.
        timeout: Duration,
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
    /// `connections` bounds the idle SMTP connections kept (the worker's concurrency).
    pub fn new(
        smtp_url: Option<&str>,
        outbox_dir: &Path,
        timeout: Duration,
        connections: usize,
    ) -> anyhow::Result<Self> {
        match smtp_url {
            Some(url) => {
                // The error names the part that is wrong; the URL (with its password) is not shown.
                let settings = smtp::Settings::from_url(url, timeout).map_err(|reason| {
                    anyhow::anyhow!("RESETMAIL_SMTP_URL is not a valid SMTP URL: {reason}")
                })?;
                Ok(Self::Smtp {
                    pool: smtp::Pool::new(settings, connections),
                    timeout,
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

    /// Sends one message.
    pub async fn send(&self, message: Message) -> Result<(), MailError> {
        match self {
            Self::Smtp { pool, timeout } => {
                let bytes = message.formatted();
                // A send cut short by the timeout drops its connection with it.
                tokio::time::timeout(*timeout, pool.send(message.envelope(), &bytes))
                    .await
                    .unwrap_or_else(|_| {
                        Err(MailError::Transient(format!(
                            "no answer from the SMTP server within {timeout:?}"
                        )))
                    })
            }
            // A full disk or a missing directory is this machine's problem, not the job's.
            Self::Outbox { transport, .. } => {
                transport
                    .send(message)
                    .await
                    .map(|_id| ())
                    .map_err(|error| {
                        MailError::Systemic(format!("cannot write to the outbox: {error}"))
                    })
            }
        }
    }
}

/// The one place where an SMTP failure gets its class.
pub fn classify(error: &lettre::transport::smtp::Error) -> MailError {
    let code = error.status().map(u16::from);
    let text = error.to_string();
    match code {
        // Authentication required, too weak, rejected, or needing encryption: the configuration
        // is wrong for every job alike.
        Some(530 | 534 | 535 | 538) => MailError::Systemic(text),
        _ if error.is_tls() || error.is_client() => MailError::Systemic(text),
        _ if error.is_permanent() => MailError::Permanent(text),
        // 4xx, timeouts, refused or dropped connections, garbled replies: worth another try.
        _ => MailError::Transient(text),
    }
}
