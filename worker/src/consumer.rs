//! Consuming jobs: manual acks, a prefetch equal to the concurrency, a supervisor that reconnects with
//! backoff, and graceful shutdown that lets jobs in flight finish and ack.

use std::sync::Arc;

use futures_util::StreamExt as _;
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use resetmail_shared::{
    Job,
    amqp::{self, Backoff},
    topology::Topology,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{Worker, reset::JobOutcome};

/// Consumes until `shutdown` fires, then waits for the jobs in flight.
pub async fn consume(worker: Arc<Worker>, shutdown: CancellationToken) {
    let topology = Topology::new(&worker.config.broker);
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match open(&worker, &topology).await {
            Ok((connection, channel, consumer)) => {
                backoff.reset();
                tracing::info!(queue = %topology.work_queue(), concurrency = worker.config.concurrency, "consuming jobs");
                let stopped = take_deliveries(&worker, consumer, &tracker, &shutdown).await;
                if stopped {
                    // No new deliveries; jobs in flight still ack on this channel before it closes.
                    let _ = channel
                        .basic_cancel("".into(), BasicCancelOptions::default())
                        .await;
                    tracker.close();
                    tracker.wait().await;
                    let _ = connection.close(200, "worker shutting down".into()).await;
                    tracing::info!("worker stopped");
                    return;
                }
                tracing::warn!(
                    "lost the broker connection; reconnecting (unacked jobs will be redelivered)"
                );
            }
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "cannot start consuming"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn open(
    worker: &Worker,
    topology: &Topology,
) -> anyhow::Result<(Connection, Channel, Consumer)> {
    let connection = amqp::connect(&worker.config.broker.url, "resetmail-worker").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    channel
        .basic_qos(worker.config.concurrency, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            topology.work_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, consumer))
}

/// Hands each delivery to its own task; returns true on shutdown, false when the stream broke.
async fn take_deliveries(
    worker: &Arc<Worker>,
    mut consumer: Consumer,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return true,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(process(worker.clone(), delivery));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "the consumer failed");
                    return false;
                }
                None => return false,
            },
        }
    }
}

async fn process(worker: Arc<Worker>, delivery: Delivery) {
    match Job::decode(&delivery.data) {
        Ok(Job::PasswordReset(job)) => {
            let span = tracing::info_span!("job", job.id = %job.job_id, correlation_id = %job.correlation_id);
            async {
                let outcome = worker.handle(&job).await;
                settle(&worker, &delivery, outcome).await;
            }
            .instrument(span)
            .await;
        }
        Err(error) => {
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string);
            let span =
                tracing::info_span!("job", message_id = message_id.as_deref().unwrap_or("-"));
            settle(&worker, &delivery, JobOutcome::Dead(error.to_string()))
                .instrument(span)
                .await;
        }
    }
}

/// The one place where an outcome becomes an ack, a requeue or a dead letter.
async fn settle(worker: &Worker, delivery: &Delivery, outcome: JobOutcome) {
    let result = match &outcome {
        JobOutcome::Sent { message_id } => {
            tracing::info!(outcome = "sent", message_id = %message_id, "reset email sent");
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        JobOutcome::Skipped(decided) => {
            tracing::info!(outcome = %decided, "reset job decided; no email sent");
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        JobOutcome::Duplicate(decided) => {
            tracing::info!(outcome = %decided, "job already handled; acknowledged without a second email");
            delivery.acker.ack(BasicAckOptions::default()).await
        }
        JobOutcome::Retry(error) => {
            tracing::warn!(outcome = "retry", %error, "reset job failed; it goes back to the queue");
            tokio::time::sleep(worker.config.requeue_delay).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        JobOutcome::Dead(error) => {
            tracing::error!(outcome = "dead", %error, "reset job cannot be delivered; moved to the dead letters");
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the delivery was already settled or its channel closed; the broker will redeliver it"
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot settle the delivery; the broker will redeliver it")
        }
    }
}
