//! The AMQP topology, declared identically by both binaries from this one place (DESIGN.md §2).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::config::{BrokerConfig, QueueType};

/// How many times a quorum queue redelivers one message before dead-lettering it: a guard against a
/// message that crashes every worker that takes it.
pub const QUORUM_DELIVERY_LIMIT: i64 = 20;

/// Names and arguments of every queue and exchange, derived from the configured prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
}

impl Topology {
    /// The topology for a broker configuration.
    pub fn new(config: &BrokerConfig) -> Self {
        Self {
            prefix: config.queue_prefix.clone(),
            queue_type: config.queue_type,
        }
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

    /// Every queue this topology declares (for tests and tooling that clean up).
    pub fn queues(&self) -> Vec<String> {
        vec![self.work_queue(), self.dead_letter_queue()]
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
        Ok(())
    }
}

fn insert_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(ShortString::from(key), AMQPValue::LongString(value.into()));
}
