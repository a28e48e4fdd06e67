//! The one place where a job's outcome becomes broker actions: an ack; a retry copy in the next delay
//! queue; a dead letter with headers that say why; or a requeue while the worker pauses. Copies are
//! published with a confirm before the original is acked, so a crash in between duplicates a message
//! (which the delivery table absorbs) but never loses one.

use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicNackOptions, BasicRejectOptions},
    types::{AMQPValue, LongString, ShortString},
};
use resetmail_shared::{
    amqp,
    topology::{Topology, headers},
};
use std::sync::atomic::{AtomicU8, Ordering};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    acks::Acks,
    outcome::{DeadClass, Failure, JobOutcome},
};

/// Longest wait for the broker to take an ack, a nack or a confirmed copy.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which attempt a delivery is, read from the headers earlier attempts left on it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When the first attempt was made (RFC 3339).
    pub first_at: String,
}

impl Attempt {
    /// Reads the attempt headers of `delivery`; a delivery without them is a first attempt.
    pub fn of(delivery: &Delivery) -> Self {
        let table = delivery.properties.headers().as_ref();
        let previous = headers::int(table, headers::ATTEMPTS).unwrap_or(0);
        let first_at = headers::text(table, headers::FIRST_ATTEMPT_AT);
        Self {
            number: u32::try_from(previous)
                .unwrap_or(u32::MAX - 1)
                .saturating_add(1)
                .max(1),
            first_at: first_at.unwrap_or_else(now),
        }
    }
}

/// What became of the copy a settlement published (a retry copy or a dead letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFate {
    /// The settlement published no copy.
    NoCopy = 0,
    /// The broker confirmed it.
    Confirmed = 1,
    /// The broker refused it, or the channel failed under it.
    Refused = 2,
}

impl CopyFate {
    fn of(published: &Result<(), amqp::ConfirmError>) -> Self {
        if published.is_ok() {
            Self::Confirmed
        } else {
            Self::Refused
        }
    }
}

/// Carries out `outcome` for `delivery`, publishing copies on the confirm-mode `publisher` channel
/// and acking through `acks`; says whether the broker took the copy it published.
pub async fn settle(
    topology: &Topology,
    publisher: &Channel,
    acks: &Acks,
    delivery: &Delivery,
    attempt: &Attempt,
    outcome: &JobOutcome,
    requeue_delay: std::time::Duration,
) -> CopyFate {
    record(outcome, attempt);
    // Set where a copy is published; an atomic, so that the future stays `Send`.
    let fate = AtomicU8::new(CopyFate::NoCopy as u8);
    let settling = async {
        match outcome {
            JobOutcome::Sent { message_id } => {
                tracing::info!(outcome = "sent", message_id = %message_id, attempt = attempt.number, "reset email sent");
                ack(acks, delivery).await
            }
            JobOutcome::Notified { message_id } => {
                tracing::info!(outcome = "notified", message_id = %message_id, attempt = attempt.number, "the address has no account; notice sent");
                ack(acks, delivery).await
            }
            JobOutcome::Skipped(decided) => {
                tracing::info!(outcome = %decided, "reset job decided; no email sent");
                ack(acks, delivery).await
            }
            JobOutcome::Duplicate(decided) => {
                tracing::info!(outcome = %decided, "job already handled; acknowledged without a second email");
                ack(acks, delivery).await
            }
            JobOutcome::Retry(error) => {
                let step = attempt.number.saturating_sub(1) as usize;
                match topology.retry_queue(step) {
                    Some((queue, delay)) => {
                        tracing::warn!(outcome = "retry", attempt = attempt.number, retry_in_ms = delay.as_millis() as u64, %error, "reset email failed; it will be retried");
                        let copy = with_headers(delivery, attempt, error, None);
                        let published = publish(publisher, "", &queue, delivery, copy).await;
                        fate.store(CopyFate::of(&published) as u8, Ordering::Relaxed);
                        match published {
                            Ok(()) => ack(acks, delivery).await,
                            Err(publish_error) => {
                                tracing::warn!(error = %publish_error, "cannot queue the retry; the job goes back to the work queue");
                                tokio::time::sleep(requeue_delay).await;
                                give_back(acks, delivery).await
                            }
                        }
                    }
                    // Only reachable when the delays changed between attempts: treat as exhausted.
                    None => {
                        dead_letter(
                            (topology, publisher, acks),
                            delivery,
                            attempt,
                            DeadClass::Exhausted,
                            error,
                            &fate,
                        )
                        .await
                    }
                }
            }
            JobOutcome::Dead(class, error) => {
                dead_letter(
                    (topology, publisher, acks),
                    delivery,
                    attempt,
                    *class,
                    error,
                    &fate,
                )
                .await
            }
            JobOutcome::Pause(error) => {
                tracing::error!(outcome = "paused", %error, "the job cannot be handled now; it goes back to the queue");
                give_back(acks, delivery).await
            }
            JobOutcome::Requeue(reason) => {
                tracing::warn!(outcome = "requeued", %reason, "the job goes back to the queue");
                give_back(acks, delivery).await
            }
        }
    };
    // A broker that vanished mid-operation must not hold this task (and a graceful shutdown) forever.
    let Ok(settled) = tokio::time::timeout(SETTLE_TIMEOUT, settling).await else {
        tracing::warn!(
            timeout_ms = SETTLE_TIMEOUT.as_millis() as u64,
            "the broker did not answer; it will redeliver the job"
        );
        return CopyFate::Refused;
    };
    match settled {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the delivery was already settled or its channel closed; the broker will redeliver it"
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot settle the delivery; the broker will redeliver it")
        }
    }
    match fate.load(Ordering::Relaxed) {
        1 => CopyFate::Confirmed,
        2 => CopyFate::Refused,
        _ => CopyFate::NoCopy,
    }
}

/// Publishes the dead letter (the work queue's topology, on `publisher`), then acks the delivery.
async fn dead_letter(
    (topology, publisher, acks): (&Topology, &Channel, &Acks),
    delivery: &Delivery,
    attempt: &Attempt,
    class: DeadClass,
    error: &Failure,
    fate: &AtomicU8,
) -> lapin::Result<bool> {
    tracing::error!(outcome = "dead", error.class = class.as_str(), attempt = attempt.number, %error, "reset job moved to the dead letters");
    let copy = with_headers(
        delivery,
        attempt,
        error,
        Some((class, &topology.work_queue())),
    );
    let published = publish(
        publisher,
        &topology.dead_letter_exchange(),
        &topology.work_queue(),
        delivery,
        copy,
    )
    .await;
    fate.store(CopyFate::of(&published) as u8, Ordering::Relaxed);
    match published {
        Ok(()) => ack(acks, delivery).await,
        Err(publish_error) => {
            // The work queue dead-letters what it rejects, so the job still reaches the dead letters,
            // with the broker's x-death headers instead of ours.
            tracing::warn!(error = %publish_error, "cannot publish the dead letter; rejecting it to the dead-letter exchange instead");
            let rejected = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            acks.settled(delivery.delivery_tag);
            rejected
        }
    }
}

async fn ack(acks: &Acks, delivery: &Delivery) -> lapin::Result<bool> {
    acks.ack(delivery.delivery_tag).await
}

/// [`requeue`] for a delivery a job took: once the frame is sent, acks may cover its tag.
async fn give_back(acks: &Acks, delivery: &Delivery) -> lapin::Result<bool> {
    let requeued = requeue(delivery).await;
    acks.settled(delivery.delivery_tag);
    requeued
}

/// Gives the delivery back to the queue, for any consumer to take (`basic.nack` with requeue).
pub(crate) async fn requeue(delivery: &Delivery) -> lapin::Result<bool> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
}

async fn publish(
    publisher: &Channel,
    exchange: &str,
    routing_key: &str,
    delivery: &Delivery,
    properties: BasicProperties,
) -> Result<(), amqp::ConfirmError> {
    amqp::publish_confirmed(publisher, exchange, routing_key, &delivery.data, properties).await
}

/// The delivery's properties with the attempt headers (and, for a dead letter, why).
fn with_headers(
    delivery: &Delivery,
    attempt: &Attempt,
    error: &Failure,
    dead: Option<(DeadClass, &str)>,
) -> BasicProperties {
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    let mut put = |key: &str, value: AMQPValue| {
        table.insert(ShortString::from(key), value);
    };
    put(
        headers::ATTEMPTS,
        AMQPValue::LongLongInt(i64::from(attempt.number)),
    );
    put(headers::FIRST_ATTEMPT_AT, long_string(&attempt.first_at));
    put(headers::LAST_ATTEMPT_AT, long_string(&now()));
    put(
        headers::LAST_ERROR,
        long_string(&truncate(error.as_str(), 1000)),
    );
    if let Some((class, routing_key)) = dead {
        put(headers::ERROR_CLASS, long_string(class.as_str()));
        put(headers::ORIGINAL_ROUTING_KEY, long_string(routing_key));
    }
    delivery
        .properties
        .clone()
        .with_headers(table)
        .with_delivery_mode(2)
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// Counts the outcome (and the retry step or the dead letter's class).
fn record(outcome: &JobOutcome, attempt: &Attempt) {
    match outcome {
        JobOutcome::Retry(_) => {
            metrics::counter!("resetmail_worker_retries_total", "step" => attempt.number.to_string()).increment(1);
        }
        JobOutcome::Dead(class, _) => {
            metrics::counter!("resetmail_worker_dead_letters_total", "class" => class.as_str())
                .increment(1);
        }
        _ => {}
    }
    metrics::counter!("resetmail_worker_jobs_total", "outcome" => outcome.label()).increment(1);
}
