//! The AMQP topology, declared identically by both binaries from this one place
//! (docs/ARCHITECTURE.md). With `RESETMAIL_QUEUE_TYPE=quorum` every queue is a quorum queue and
//! dead-lettering between them is at least once (docs/SCALING.md).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use std::time::Duration;

use crate::config::{BrokerConfig, QueueType, format_duration};

/// How many times a quorum queue redelivers one message before dead-lettering it: a guard against a
/// message that crashes every worker that takes it.
pub const QUORUM_DELIVERY_LIMIT: i64 = 20;

/// Names and arguments of every queue and exchange, derived from the configured prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
    retry_delays: Vec<Duration>,
}

impl Topology {
    /// The topology for a broker configuration.
    pub fn new(config: &BrokerConfig) -> Self {
        Self {
            prefix: config.queue_prefix.clone(),
            queue_type: config.queue_type,
            retry_delays: config.retry_delays.0.clone(),
        }
    }

    /// The name an AMQP connection of `program` shows in the broker (and its UI): the program and the
    /// queue prefix, so operators can tell deployments apart.
    pub fn connection_name(&self, program: &str) -> String {
        format!("{program} ({})", self.prefix)
    }

    /// The durable queue jobs are published to and consumed from.
    pub fn work_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The exchange dead letters are published (or dead-lettered by the broker) to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The durable queue that keeps dead letters for operators.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The delay queue of retry step `step` (0-based), and its delay; `None` past the last step.
    pub fn retry_queue(&self, step: usize) -> Option<(String, Duration)> {
        let delay = *self.retry_delays.get(step)?;
        // Named by the delay: one fixed TTL per queue, so changing the delays never meets a queue
        // declared with another TTL.
        Some((
            format!("{}.retry.{}", self.prefix, format_duration(delay)),
            delay,
        ))
    }

    /// How many retry steps there are.
    pub fn retry_steps(&self) -> usize {
        self.retry_delays.len()
    }

    /// Every queue this topology declares (for tests and tooling that clean up).
    pub fn queues(&self) -> Vec<String> {
        let retries = (0..self.retry_steps())
            .filter_map(|step| self.retry_queue(step))
            .map(|(name, _)| name);
        [self.work_queue(), self.dead_letter_queue()]
            .into_iter()
            .chain(retries)
            .collect()
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.dead_letter_exchange()]
    }

    /// Declares everything; idempotent, and safe for any number of processes to run at once.
    pub async fn declare(&self, channel: &Channel) -> Result<(), DeclareError> {
        // Fanout: whatever routing key a dead letter carries, it lands in the one dead-letter queue.
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| DeclareError::new(self.dead_letter_exchange(), source))?;

        let dead = self.dead_letter_queue();
        self.declare_queue(channel, &dead, self.queue_arguments())
            .await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| DeclareError::new(dead.clone(), source))?;

        let mut work = self.queue_arguments();
        // A message the worker rejects (it cannot be decoded, or it must never be retried) goes to
        // the dead letters instead of vanishing.
        self.dead_letter_to(&mut work, &self.dead_letter_exchange(), None);
        match self.queue_type {
            // Explicit, as the work queue was always declared.
            QueueType::Classic => insert_str(&mut work, "x-queue-type", "classic"),
            // Quorum queues count redeliveries; past the limit the message is dead-lettered rather
            // than crash-looping workers forever.
            QueueType::Quorum => {
                work.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
                );
            }
        }
        self.declare_queue(channel, &self.work_queue(), work)
            .await?;

        for step in 0..self.retry_steps() {
            let Some((name, delay)) = self.retry_queue(step) else {
                continue;
            };
            let mut retry = self.queue_arguments();
            // Nobody consumes a delay queue: each message waits out the queue's TTL, then the broker
            // dead-letters it through the default exchange straight back to the work queue.
            let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            retry.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
            self.dead_letter_to(&mut retry, "", Some(&self.work_queue()));
            self.declare_queue(channel, &name, retry).await?;
        }
        Ok(())
    }

    /// The arguments every queue starts from: nothing for classic queues (as they always were
    /// declared), the type for quorum queues.
    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            insert_str(&mut arguments, "x-queue-type", "quorum");
        }
        arguments
    }

    /// Makes a queue dead-letter to `exchange` (with `routing_key`, or the message's own). Between
    /// quorum queues the move is at least once: the broker keeps the message in the source until
    /// the target has confirmed it, so a message on its way from a retry step back to work
    /// survives a node's death. RabbitMQ allows that only with overflow `reject-publish`.
    fn dead_letter_to(
        &self,
        arguments: &mut FieldTable,
        exchange: &str,
        routing_key: Option<&str>,
    ) {
        insert_str(arguments, "x-dead-letter-exchange", exchange);
        if let Some(routing_key) = routing_key {
            insert_str(arguments, "x-dead-letter-routing-key", routing_key);
        }
        if self.queue_type == QueueType::Quorum {
            insert_str(arguments, "x-dead-letter-strategy", "at-least-once");
            insert_str(arguments, "x-overflow", "reject-publish");
        }
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        arguments: FieldTable,
    ) -> Result<(), DeclareError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), durable, arguments)
            .await
            .map(drop)
            .map_err(|source| DeclareError::new(name.to_owned(), source))
    }
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with other arguments: declared by another `RESETMAIL_QUEUE_TYPE`, or by a
    /// version of resetmail that declared it otherwise. RabbitMQ never changes a queue's type.
    #[error(
        "queue or exchange `{name}` exists with other arguments than this configuration gives it \
         ({source}); a queue's type never changes once declared: see docs/SCALING.md, \
         \"Moving an existing deployment to quorum queues\""
    )]
    Inequivalent {
        /// The queue or exchange.
        name: String,
        /// The broker's refusal.
        source: lapin::Error,
    },
    /// Any other failure of the broker or the connection.
    #[error("cannot declare `{name}`: {source}")]
    Broker {
        /// The queue or exchange.
        name: String,
        /// The failure.
        source: lapin::Error,
    },
}

impl DeclareError {
    fn new(name: String, source: lapin::Error) -> Self {
        // 406 PRECONDITION_FAILED is how RabbitMQ refuses a declaration that differs from the
        // existing queue's.
        let refused = matches!(source.kind(), lapin::ErrorKind::ProtocolError(error)
            if error.get_id() == PRECONDITION_FAILED);
        if refused {
            Self::Inequivalent { name, source }
        } else {
            Self::Broker { name, source }
        }
    }
}

/// AMQP's reply code for a declaration that does not match the existing queue.
const PRECONDITION_FAILED: u16 = 406;

/// Headers the worker sets on retried and dead-lettered messages.
pub mod headers {
    /// Attempts made so far (retry copies and dead letters).
    pub const ATTEMPTS: &str = "x-resetmail-attempts";
    /// When the first attempt was made (RFC 3339).
    pub const FIRST_ATTEMPT_AT: &str = "x-resetmail-first-attempt-at";
    /// When the last attempt was made (RFC 3339).
    pub const LAST_ATTEMPT_AT: &str = "x-resetmail-last-attempt-at";
    /// The last error, without secrets.
    pub const LAST_ERROR: &str = "x-resetmail-last-error";
    /// Why a dead letter is dead: `permanent`, `exhausted` or `malformed`.
    pub const ERROR_CLASS: &str = "x-resetmail-error-class";
    /// The routing key the job was first published with (the work queue).
    pub const ORIGINAL_ROUTING_KEY: &str = "x-resetmail-original-routing-key";

    use lapin::types::{AMQPValue, FieldTable};
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};

    /// Header `key` of `table` as an integer, whichever integer type carried it.
    pub fn int(table: Option<&FieldTable>, key: &str) -> Option<i64> {
        match table?.inner().get(key)? {
            AMQPValue::LongLongInt(value) => Some(*value),
            AMQPValue::LongInt(value) => Some(i64::from(*value)),
            AMQPValue::LongUInt(value) => Some(i64::from(*value)),
            AMQPValue::ShortInt(value) => Some(i64::from(*value)),
            AMQPValue::ShortUInt(value) => Some(i64::from(*value)),
            _ => None,
        }
    }

    /// Header `key` of `table` as text (see [`text_of`]).
    pub fn text(table: Option<&FieldTable>, key: &str) -> Option<String> {
        table?.inner().get(key).map(text_of)
    }

    /// A header's value as text: strings as they are, numbers in decimal, timestamps in RFC 3339.
    pub fn text_of(value: &AMQPValue) -> String {
        match value {
            AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
            AMQPValue::ShortString(text) => text.as_str().to_owned(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            AMQPValue::LongUInt(n) => n.to_string(),
            AMQPValue::ShortInt(n) => n.to_string(),
            AMQPValue::ShortUInt(n) => n.to_string(),
            AMQPValue::Timestamp(t) => timestamp(*t)
                .and_then(|at| at.format(&Rfc3339).ok())
                .unwrap_or_else(|| t.to_string()),
            other => format!("{other:?}"),
        }
    }

    /// An AMQP timestamp (seconds since the epoch) as a time.
    pub fn timestamp(seconds: u64) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()
    }
}

fn insert_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(ShortString::from(key), AMQPValue::LongString(value.into()));
}
