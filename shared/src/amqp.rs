//! Connecting to RabbitMQ: one place that names the connection and bounds the wait.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// How long a connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker refused or dropped the connection.
    #[error("cannot connect to the broker: {0}")]
    Broker(#[from] lapin::Error),
    /// No answer within [`CONNECT_TIMEOUT`].
    #[error("cannot connect to the broker: no answer within {0:?}")]
    Timeout(Duration),
}

/// Opens a connection named `name` (shown in the RabbitMQ UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ConnectError::Broker)
}

/// Exponential backoff: each delay doubles, up to a ceiling.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// Between reconnection attempts: from 100 ms to at most 5 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Starts at `first`, doubles, never exceeds `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the following one will be longer.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Why a confirmed publish failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// The channel or connection failed.
    #[error("the broker failed the publish: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// No queue took the (mandatory) message.
    #[error("the message was unroutable: {0}")]
    Returned(String),
}

/// The properties every job is published with: persistent, JSON, its job id as `message_id` and
/// its correlation id.
pub fn job_properties(job: &crate::Job) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(job.job_id().to_string().into())
        .with_correlation_id(job.correlation_id().to_string().into())
        .with_type("password_reset".into())
}

/// Publishes `body` as mandatory on a confirm-mode `channel` and waits for the broker's confirm: `Ok`
/// only when the broker has taken the message into a queue.
pub async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), ConfirmError> {
    let options = lapin::options::BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await?
        .await?;
    if confirmation.is_nack() {
        return Err(ConfirmError::Nacked);
    }
    match confirmation.take_message() {
        Some(returned) => Err(ConfirmError::Returned(returned.reply_text.to_string())),
        None => Ok(()),
    }
}
