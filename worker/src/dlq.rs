//! The dead letters, for operators: list, show, replay and purge them without the RabbitMQ UI. Reading
//! takes messages without acknowledging them and hands them back, so listing consumes nothing; a
//! replayed job is published to the work queue (confirmed) before its dead letter is removed. Every
//! command streams: memory stays flat however many dead letters wait.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use futures_util::{
    StreamExt as _,
    stream::{self, BoxStream, FuturesUnordered},
};
use lapin::{
    BasicProperties, Channel, Connection,
    message::{BasicGetMessage, Delivery},
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
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

/// How many dead letters a replay has in flight at once: the consumer's prefetch, and so the bound on
/// the messages this process holds.
const WINDOW: u16 = 256;

/// How many channels a walk that need not keep the queue's order takes messages on at once: each
/// waits for the broker's answer to its `basic_get`, so several keep the broker busy.
const TAKERS: usize = 4;

/// How long a replay waits for a delivery before it checks whether any dead letter is left.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A connection to the dead-letter queue of one deployment.
pub struct Dlq {
    connection: Connection,
    /// Confirm mode: replayed copies are published here.
    channel: Channel,
    topology: Topology,
}

impl Dlq {
    /// Connects and declares the topology (so the queues exist even before any worker ran).
    pub async fn open(config: &BrokerConfig) -> anyhow::Result<Self> {
        let topology = Topology::new(config);
        let (connection, _node) = amqp::NodeRing::shuffled(&config.nodes)
            .connect(&topology.connection_name("resetmail-worker dlq"))
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
            connection,
            channel,
            topology,
        })
    }

    /// Up to `limit` dead letters, oldest first, left in the queue.
    pub async fn list(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        let mut walk = self.walk(limit, 1).await?;
        let mut letters = Vec::new();
        while let Some(message) = walk.next().await? {
            letters.push(describe(&message.delivery));
        }
        walk.end().await?;
        Ok(letters)
    }

    /// The dead letter of `job_id`, left in the queue.
    pub async fn show(&self, job_id: Uuid) -> anyhow::Result<Option<DeadLetter>> {
        let mut walk = self.walk(usize::MAX, TAKERS).await?;
        let found = walk
            .find(job_id)
            .await?
            .map(|message| describe(&message.delivery));
        walk.end().await?;
        Ok(found)
    }

    /// Moves the dead letter of `job_id` back to the work queue; false if there is none.
    pub async fn replay_one(&self, pool: &PgPool, job_id: Uuid) -> anyhow::Result<bool> {
        let mut walk = self.walk(usize::MAX, TAKERS).await?;
        let found = walk.find(job_id).await?;
        if let Some(message) = &found {
            self.replay(pool, &message.delivery).await?;
        }
        walk.end().await?;
        Ok(found.is_some())
    }

    /// Moves every dead letter there is now back to the work queue; returns how many.
    ///
    /// A consumer with a prefetch of [`WINDOW`] streams them: each is published to the work queue
    /// (confirmed) and then acknowledged, at most a window of them in flight, so the process holds
    /// a window of messages whatever the length of the queue. It stops after the number of dead
    /// letters there were at the start: a job that dies again meanwhile waits for the next replay.
    pub async fn replay_all(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let total = self.count().await?;
        if total == 0 {
            return Ok(0);
        }
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(WINDOW, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.topology.dead_letter_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut in_flight = FuturesUnordered::new();
        let (mut taken, mut replayed) = (0, 0);
        let outcome: anyhow::Result<()> = async {
            while taken < total || !in_flight.is_empty() {
                tokio::select! {
                    delivery = consumer.next(), if taken < total => {
                        let Some(delivery) = delivery else { break };
                        let delivery = delivery?;
                        taken += 1;
                        in_flight.push(async move {
                            let replayed = self.replay(pool, &delivery).await;
                            drop(delivery);
                            replayed
                        });
                    }
                    Some(done) = in_flight.next() => {
                        done?;
                        replayed += 1;
                    }
                    // Someone else (another operator) took dead letters counted at the start: stop
                    // once none is left rather than wait for them.
                    () = tokio::time::sleep(IDLE_CHECK), if in_flight.is_empty() => {
                        if self.count().await? == 0 {
                            break;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        // Closing hands back what was prefetched beyond the count.
        let closed = channel.close(200, "replay done".into()).await;
        outcome?;
        closed?;
        Ok(replayed)
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
        let mut walk = self.walk(usize::MAX, TAKERS).await?;
        let mut purged = 0;
        while let Some(message) = walk.next().await? {
            if last_seen(&message.delivery).is_some_and(|at| at < cutoff) {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                purged += 1;
            }
        }
        walk.end().await?;
        Ok(purged)
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

    /// A walk over at most `limit` of the dead letters there are now, taken by `takers` channels at
    /// once (one keeps them in queue order).
    async fn walk(&self, limit: usize, takers: usize) -> anyhow::Result<Walk> {
        let left = self.count().await?.min(limit);
        let queue = self.topology.dead_letter_queue();
        let mut channels = Vec::with_capacity(takers);
        for _ in 0..takers.max(1) {
            channels.push(self.connection.create_channel().await?);
        }
        // Each taker asks for its next message only when the walk wants one: at most one message
        // per taker is on its way.
        let taker = |channel: Channel| {
            let queue = queue.clone();
            stream::unfold(Some(channel), move |channel| {
                let queue = queue.clone();
                async move {
                    let channel = channel?;
                    let options = BasicGetOptions { no_ack: false };
                    match channel.basic_get(queue.as_str().into(), options).await {
                        Ok(Some(message)) => Some((Ok(message), Some(channel))),
                        Ok(None) => None,
                        Err(error) => Some((Err(error), None)),
                    }
                }
            })
        };
        let messages = stream::select_all(
            channels
                .iter()
                .cloned()
                .map(|channel| taker(channel).boxed()),
        )
        .take(left)
        .boxed();
        Ok(Walk { channels, messages })
    }

    /// Publishes the job to the work queue with a fresh attempt count (confirmed), makes its delivery
    /// row pending again, then removes the dead letter.
    async fn replay(&self, pool: &PgPool, delivery: &Delivery) -> anyhow::Result<()> {
        if let Some(job_id) = message_id(delivery).and_then(|id| Uuid::try_parse(&id).ok()) {
            deliveries::reopen(pool, job_id)
                .await
                .context("cannot reopen the job's delivery row")?;
        }
        let mut kept = FieldTable::default();
        if let Some(table) = delivery.properties.headers() {
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
        }
        let properties: BasicProperties = delivery
            .properties
            .clone()
            .with_headers(kept)
            .with_delivery_mode(2);
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.topology.work_queue(),
            &delivery.data,
            properties,
        )
        .await
        .context("the broker did not take the replayed job; its dead letter stays")?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

/// A pass over the dead letters without consuming them, on channels of its own. Each message is
/// taken (`basic_get`) and left unacknowledged: the broker keeps it, reserved for the channel that
/// took it, and this process drops it once looked at, so memory does not grow with the queue. Ending
/// the walk closes the channels and the broker puts every message still unacknowledged back in its
/// place. (Handing them back one by one would not do: a requeued message returns to the head of the
/// queue and would be taken again.) A walk takes at most the number of messages there were when it
/// began, so it ends even while workers add dead letters.
struct Walk {
    channels: Vec<Channel>,
    messages: BoxStream<'static, lapin::Result<BasicGetMessage>>,
}

impl Walk {
    /// The next dead letter, unacknowledged; `None` at the end of the walk.
    async fn next(&mut self) -> anyhow::Result<Option<BasicGetMessage>> {
        Ok(self.messages.next().await.transpose()?)
    }

    /// Walks on to the dead letter of `job_id`.
    async fn find(&mut self, job_id: Uuid) -> anyhow::Result<Option<BasicGetMessage>> {
        let wanted = job_id.to_string();
        while let Some(message) = self.next().await? {
            if message_id(&message.delivery).as_deref() == Some(wanted.as_str()) {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// Hands back every message taken and not acknowledged.
    async fn end(self) -> anyhow::Result<()> {
        drop(self.messages);
        for channel in self.channels {
            channel
                .close(200, "done reading the dead letters".into())
                .await?;
        }
        Ok(())
    }
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let headers: BTreeMap<String, String> = delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(key, value)| (key.to_string(), headers::text_of(value)))
                .collect()
        })
        .unwrap_or_default();
    let get = |key: &str| headers.get(key).cloned();
    let email = Job::decode(&delivery.data)
        .ok()
        .map(|Job::PasswordReset(job)| job.email.as_str().to_owned())
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|body| body["email"].as_str().map(str::to_owned))
        });
    DeadLetter {
        job_id: message_id(delivery),
        email,
        error_class: get(headers::ERROR_CLASS).unwrap_or_else(|| "rejected".into()),
        last_error: get(headers::LAST_ERROR),
        attempts: get(headers::ATTEMPTS).and_then(|n| n.parse().ok()),
        first_attempt_at: get(headers::FIRST_ATTEMPT_AT),
        last_attempt_at: get(headers::LAST_ATTEMPT_AT),
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
        headers,
    }
}

/// When the dead letter was last handled: our header, else the broker's dead-lettering time.
fn last_seen(delivery: &Delivery) -> Option<OffsetDateTime> {
    let table = delivery.properties.headers().as_ref();
    headers::text(table, headers::LAST_ATTEMPT_AT)
        .and_then(|at| OffsetDateTime::parse(&at, &Rfc3339).ok())
        .or_else(|| {
            let table = table?;
            match table.inner().get("x-death")? {
                AMQPValue::FieldArray(deaths) => {
                    deaths.as_slice().iter().find_map(|death| match death {
                        AMQPValue::FieldTable(death) => match death.inner().get("time")? {
                            AMQPValue::Timestamp(t) => headers::timestamp(*t),
                            _ => None,
                        },
                        _ => None,
                    })
                }
                _ => None,
            }
        })
}
