//! The AMQP topology, declared identically by both binaries from this one place (DESIGN.md §2).

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
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

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
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut work = FieldTable::default();
        // A message the worker rejects (it cannot be decoded, or it must never be retried) goes to
        // the dead letters instead of vanishing.
        insert_str(
            &mut work,
            "x-dead-letter-exchange",
            &self.dead_letter_exchange(),
        );
        match self.queue_type {
            QueueType::Classic => insert_str(&mut work, "x-queue-type", "classic"),
            QueueType::Quorum => {
                insert_str(&mut work, "x-queue-type", "quorum");
                // Quorum queues count redeliveries; past the limit the message is dead-lettered
                // rather than crash-looping workers forever.
                work.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
                );
            }
        }
        channel
            .queue_declare(self.work_queue().into(), durable, work)
            .await?;

        for step in 0..self.retry_steps() {
            let Some((name, delay)) = self.retry_queue(step) else {
                continue;
            };
            let mut retry = FieldTable::default();
            // Nobody consumes a delay queue: each message waits out the queue's TTL, then the broker
            // dead-letters it through the default exchange straight back to the work queue.
            let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            retry.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
            insert_str(&mut retry, "x-dead-letter-exchange", "");
            insert_str(&mut retry, "x-dead-letter-routing-key", &self.work_queue());
            channel.queue_declare(name.into(), durable, retry).await?;
        }
        Ok(())
    }
}

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
}

fn insert_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(ShortString::from(key), AMQPValue::LongString(value.into()));
}
