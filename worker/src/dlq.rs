//! The dead letters, for operators: list, show, replay and purge them without the RabbitMQ UI. Reading
//! takes messages without acknowledging them and hands them back, so listing consumes nothing; a
//! replayed job is published to the work queue (confirmed) before its dead letter is removed.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use lapin::{
    BasicProperties, Channel, Connection,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use resetmail_shared::{
    Job, amqp,
    config::BrokerConfig,
    db::deliveries,
    email::{mask, mask_addresses},
    topology::{Topology, headers},
};
use sqlx::PgPool;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// One dead letter, as operators see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    /// The job id (the AMQP `message_id`), if the message had one.
    pub job_id: Option<String>,
    /// The requested address (in clear until [`DeadLetter::masked`]).
    pub email: Option<String>,
    /// Why it is dead: `permanent`, `exhausted`, `malformed`, or `rejected` (dead-lettered by the broker).
    pub error_class: String,
    /// The last error.
    pub last_error: Option<String>,
    /// Attempts made.
    pub attempts: Option<i64>,
    /// First attempt (RFC 3339).
    pub first_attempt_at: Option<String>,
    /// Last attempt (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// Every header, as text.
    pub headers: BTreeMap<String, String>,
    /// The message body (the job: no secret is ever in it).
    pub body: String,
}

impl DeadLetter {
    /// The same dead letter with every address masked: the `email`, and wherever one may hide in
    /// text (the last error, every header, the body's strings). The body stays the text of a valid
    /// JSON document when it was one.
    pub fn masked(self) -> Self {
        Self {
            email: self.email.as_deref().map(mask),
            last_error: self.last_error.as_deref().map(mask_addresses),
            headers: self
                .headers
                .into_iter()
                .map(|(key, value)| (key, mask_addresses(&value)))
                .collect(),
            body: match serde_json::from_str::<serde_json::Value>(&self.body) {
                Ok(mut body) => {
                    mask_json(&mut body);
                    body.to_string()
                }
                Err(_) => mask_addresses(&self.body),
            },
            ..self
        }
    }
}

fn mask_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => *text = mask_addresses(text),
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_json),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(mask_json),
        _ => {}
    }
}

/// A connection to the dead-letter queue of one deployment.
pub struct Dlq {
    _connection: Connection,
    channel: Channel,
    topology: Topology,
}

impl Dlq {
    /// Connects and declares the topology (so the queues exist even before any worker ran).
    pub async fn open(config: &BrokerConfig) -> anyhow::Result<Self> {
        let topology = Topology::new(config);
        let connection = amqp::connect(
            &config.url,
            &topology.connection_name("resetmail-worker dlq"),
        )
        .await?;
        let channel = connection.create_channel().await?;
        topology
            .declare(&channel)
            .await
            .context("cannot declare the queues")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
            topology,
        })
    }

    /// Up to `limit` dead letters, oldest first, left in the queue.
    pub async fn list(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        let taken = self.take(limit).await?;
        let letters = taken.iter().map(describe).collect();
        self.give_back(taken).await?;
        Ok(letters)
    }

    /// The dead letter of `job_id`, left in the queue.
    pub async fn show(&self, job_id: Uuid) -> anyhow::Result<Option<DeadLetter>> {
        let taken = self.take(usize::MAX).await?;
        let found = taken
            .iter()
            .find(|message| message_id(message) == Some(job_id.to_string()))
            .map(describe);
        self.give_back(taken).await?;
        Ok(found)
    }

    /// Moves the dead letter of `job_id` back to the work queue; false if there is none.
    pub async fn replay_one(&self, pool: &PgPool, job_id: Uuid) -> anyhow::Result<bool> {
        let mut taken = self.take(usize::MAX).await?;
        let position = taken
            .iter()
            .position(|message| message_id(message) == Some(job_id.to_string()));
        let replayed = match position {
            Some(position) => {
                let message = taken.remove(position);
                self.replay(pool, &message).await?;
                true
            }
            None => false,
        };
        self.give_back(taken).await?;
        Ok(replayed)
    }

    /// Moves every dead letter there is now back to the work queue; returns how many.
    pub async fn replay_all(&self, pool: &PgPool) -> anyhow::Result<usize> {
        // Taken first, then replayed: a job that dies again meanwhile waits for the next replay.
        let taken = self.take(usize::MAX).await?;
        let count = taken.len();
        for message in &taken {
            self.replay(pool, message).await?;
        }
        Ok(count)
    }

    /// Deletes dead letters: all of them, or those whose last attempt is older than `older_than`.
    pub async fn purge(&self, older_than: Option<Duration>) -> anyhow::Result<usize> {
        let Some(older_than) = older_than else {
            let purged = self
                .channel
                .queue_purge(
                    self.topology.dead_letter_queue().into(),
                    QueuePurgeOptions::default(),
                )
                .await?;
            return Ok(purged as usize);
        };
        let cutoff = OffsetDateTime::now_utc() - older_than;
        let taken = self.take(usize::MAX).await?;
        let (old, recent): (Vec<_>, Vec<_>) = taken
            .into_iter()
            .partition(|message| last_seen(message).is_some_and(|at| at < cutoff));
        for message in &old {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
        }
        self.give_back(recent).await?;
        Ok(old.len())
    }

    /// Dead letters waiting now.
    pub async fn count(&self) -> anyhow::Result<usize> {
        let queue = self
            .channel
            .queue_declare(
                self.topology.dead_letter_queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count() as usize)
    }

    /// Takes up to `limit` messages without acknowledging them.
    async fn take(&self, limit: usize) -> anyhow::Result<Vec<BasicGetMessage>> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match self
                .channel
                .basic_get(
                    self.topology.dead_letter_queue().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            {
                Some(message) => taken.push(message),
                None => break,
            }
        }
        Ok(taken)
    }

    /// Hands taken messages back to the queue, in their places.
    async fn give_back(&self, taken: Vec<BasicGetMessage>) -> anyhow::Result<()> {
        for message in taken {
            message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes the job to the work queue with a fresh attempt count (confirmed), makes its delivery
    /// row pending again, then removes the dead letter.
    async fn replay(&self, pool: &PgPool, message: &BasicGetMessage) -> anyhow::Result<()> {
        if let Some(job_id) = message_id(message).and_then(|id| Uuid::try_parse(&id).ok()) {
            deliveries::reopen(pool, job_id)
                .await
                .context("cannot reopen the job's delivery row")?;
        }
        let mut table = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let mut kept = FieldTable::default();
        for (key, value) in table.inner() {
            let key = key.as_str();
            if !key.starts_with("x-resetmail-")
                && !key.starts_with("x-death")
                && !key.starts_with("x-first-death")
                && !key.starts_with("x-last-death")
            {
                kept.insert(key.into(), value.clone());
            }
        }
        table = kept;
        let properties: BasicProperties = message
            .delivery
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.topology.work_queue(),
            &message.delivery.data,
            properties,
        )
        .await
        .context("the broker did not take the replayed job; its dead letter stays")?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        Ok(())
    }
}

fn message_id(message: &BasicGetMessage) -> Option<String> {
    message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Timestamp(t) => OffsetDateTime::from_unix_timestamp(*t as i64)
            .ok()
            .and_then(|at| at.format(&Rfc3339).ok())
            .unwrap_or_else(|| t.to_string()),
        other => format!("{other:?}"),
    }
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let headers: BTreeMap<String, String> = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(key, value)| (key.to_string(), header_text(value)))
                .collect()
        })
        .unwrap_or_default();
    let get = |key: &str| headers.get(key).cloned();
    let email = Job::decode(&message.delivery.data)
        .ok()
        .map(|Job::PasswordReset(job)| job.email.as_str().to_owned())
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&message.delivery.data)
                .ok()
                .and_then(|body| body["email"].as_str().map(str::to_owned))
        });
    DeadLetter {
        job_id: message_id(message),
        email,
        error_class: get(headers::ERROR_CLASS).unwrap_or_else(|| "rejected".into()),
        last_error: get(headers::LAST_ERROR),
        attempts: get(headers::ATTEMPTS).and_then(|n| n.parse().ok()),
        first_attempt_at: get(headers::FIRST_ATTEMPT_AT),
        last_attempt_at: get(headers::LAST_ATTEMPT_AT),
        body: String::from_utf8_lossy(&message.delivery.data).into_owned(),
        headers,
    }
}

/// When the dead letter was last handled: our header, else the broker's dead-lettering time.
fn last_seen(message: &BasicGetMessage) -> Option<OffsetDateTime> {
    let letter = describe(message);
    letter
        .last_attempt_at
        .as_deref()
        .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
        .or_else(|| {
            let table = message.delivery.properties.headers().as_ref()?;
            match table.inner().get("x-death")? {
                AMQPValue::FieldArray(deaths) => {
                    deaths.as_slice().iter().find_map(|death| match death {
                        AMQPValue::FieldTable(death) => match death.inner().get("time")? {
                            AMQPValue::Timestamp(t) => {
                                OffsetDateTime::from_unix_timestamp(*t as i64).ok()
                            }
                            _ => None,
                        },
                        _ => None,
                    })
                }
                _ => None,
            }
        })
}
