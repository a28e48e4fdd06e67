//! Consuming jobs: manual acks and a prefetch equal to the concurrency; a supervisor that reconnects
//! with backoff; a pause, with growing backoff, when a failure would hit every job alike; and a
//! graceful shutdown that lets jobs in flight finish and settle, within a time limit.

use std::{sync::Arc, time::Duration};

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::{
    Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::FieldTable,
};
use resetmail_shared::{
    Job,
    amqp::{self, Backoff, BrokerNode, NodeRing, Unconfirmed},
    topology::Topology,
};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    Worker,
    acks::Acks,
    outcome::{DeadClass, Failure, JobOutcome},
    settle::{Attempt, CopyFate, requeue, settle},
};

/// How a consuming session on one connection ended.
enum SessionEnd {
    Shutdown,
    Lost,
    /// The connection works but its copies are refused: closed, and another opened.
    Reopen,
}

/// What the tasks of one connection share.
struct Session {
    worker: Arc<Worker>,
    topology: Topology,
    publisher: Channel,
    /// The acks of the consuming channel.
    acks: Acks,
    /// Raised by a task whose job met a failure that every job would meet.
    pause: Arc<Notify>,
    /// Copies refused in a row on `publisher` (the api's rule for its publishes, the same limit).
    refused: Unconfirmed,
    /// Raised when `refused` reaches its limit.
    reopen: Notify,
    /// Fires when the worker is asked to stop.
    stopping: CancellationToken,
}

/// Consumes until `shutdown` fires, then lets the jobs in flight finish.
pub async fn consume(worker: Arc<Worker>, shutdown: CancellationToken) {
    let topology = Topology::new(&worker.config.broker);
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::default();
    let mut nodes = NodeRing::shuffled(&worker.config.broker.nodes);
    while !shutdown.is_cancelled() {
        match open(&worker, &topology, &mut nodes).await {
            Ok((connection, (channel, publisher), node)) => {
                tracing::info!(node = node.label(), "connected to the broker");
                backoff.reset();
                let session = Arc::new(Session {
                    worker: worker.clone(),
                    topology: topology.clone(),
                    publisher,
                    acks: Acks::new(channel.clone()),
                    pause: Arc::new(Notify::new()),
                    refused: Unconfirmed::default(),
                    reopen: Notify::new(),
                    stopping: shutdown.clone(),
                });
                let end = run_session(&session, &channel, &tracker, &shutdown).await;
                nodes.lost(&node);
                if let SessionEnd::Shutdown = end {
                    let close = connection.close(200, "worker shutting down".into());
                    let _ = tokio::time::timeout(amqp::CONNECT_TIMEOUT, close).await;
                    tracing::info!("worker stopped");
                    return;
                }
                if let SessionEnd::Reopen = end {
                    let close = connection.close(200, "copies refused; reconnecting".into());
                    let _ = tokio::time::timeout(amqp::CONNECT_TIMEOUT, close).await;
                    tracing::warn!(
                        node = node.label(),
                        "the broker refuses the retry copies and dead letters; reconnecting, to the next node"
                    );
                } else {
                    tracing::warn!(
                        node = node.label(),
                        "lost the broker connection; reconnecting (unacked jobs will be redelivered)"
                    );
                }
            }
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "cannot start consuming"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    drain(&tracker, worker.config.shutdown_timeout).await;
}

/// Connects to the next node that answers: a consuming channel, and a confirm-mode channel of its
/// own for retry copies and dead letters.
async fn open(
    worker: &Worker,
    topology: &Topology,
    nodes: &mut NodeRing,
) -> anyhow::Result<(Connection, (Channel, Channel), BrokerNode)> {
    let name = topology.connection_name("resetmail-worker");
    nodes
        .open(&name, async |connection| {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .basic_qos(worker.config.concurrency, BasicQosOptions::default())
                .await?;
            let publisher = connection.create_channel().await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok((channel, publisher))
        })
        .await
}

/// Consumes on `channel`, pausing when told to, until shutdown or the connection is lost.
async fn run_session(
    session: &Arc<Session>,
    channel: &Channel,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let config = &session.worker.config;
    let mut pause_backoff = Backoff::new(config.pause_min, config.pause_max);
    loop {
        let consumer = match channel
            .basic_consume(
                session.topology.work_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%error, "cannot consume");
                return SessionEnd::Lost;
            }
        };
        let tag = consumer.tag();
        let consuming_since = std::time::Instant::now();
        tracing::info!(queue = %session.topology.work_queue(), concurrency = config.concurrency, "consuming jobs");
        session.worker.health.set_consuming(true);
        let mut consumer = consumer;
        let stop = take_deliveries(session, &mut consumer, tracker, shutdown).await;
        session.worker.health.set_consuming(false);
        // Whatever the reason, take no new deliveries; those in flight still settle on this connection.
        let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
        let _ = tokio::time::timeout(amqp::CONNECT_TIMEOUT, cancel).await;
        if !matches!(stop, Stop::Lost) {
            requeue_untaken(&mut consumer).await;
        }
        match stop {
            Stop::Lost => return SessionEnd::Lost,
            Stop::Reopen => {
                drain(tracker, config.shutdown_timeout).await;
                tracker.reopen();
                return SessionEnd::Reopen;
            }
            Stop::Shutdown => {
                drain(tracker, config.shutdown_timeout).await;
                return SessionEnd::Shutdown;
            }
            Stop::Pause => {
                drain(tracker, config.shutdown_timeout).await;
                tracker.reopen();
                // Jobs that met the same failure while draining asked for this very pause.
                let _ = session.pause.notified().now_or_never();
                // A failure long after the last one starts the backoff over.
                if consuming_since.elapsed() > config.pause_max {
                    pause_backoff.reset();
                }
                let delay = pause_backoff.next_delay();
                tracing::error!(
                    pause_ms = delay.as_millis() as u64,
                    "a failure hits every job alike; pausing consumption"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return SessionEnd::Shutdown,
                    () = tokio::time::sleep(delay) => {}
                }
                tracing::info!("resuming consumption after the pause");
            }
        }
    }
}

enum Stop {
    Shutdown,
    Lost,
    Pause,
    Reopen,
}

/// Hands each delivery to its own task until something asks to stop.
async fn take_deliveries(
    session: &Arc<Session>,
    consumer: &mut Consumer,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Stop {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Stop::Shutdown,
            () = session.pause.notified() => return Stop::Pause,
            () = session.reopen.notified() => return Stop::Reopen,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    session.acks.taken(delivery.delivery_tag);
                    tracker.spawn(process(session.clone(), delivery));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "the consumer failed");
                    return Stop::Lost;
                }
                None => return Stop::Lost,
            },
        }
    }
}

/// Requeues the deliveries the broker sent before the cancel took effect, which wait in the consumer
/// untaken: left there they would stay unacknowledged on this channel, out of every worker's reach,
/// until the connection closes. The consumer ends once the cancel is through; a consumer that has
/// nothing more within [`UNTAKEN_WAIT`] is taken to be empty.
async fn requeue_untaken(consumer: &mut Consumer) {
    let mut requeued = 0_u32;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(UNTAKEN_WAIT, consumer.next()).await {
        if let Err(error) = requeue(&delivery).await {
            tracing::warn!(%error, "cannot requeue a delivery the worker did not take; the broker will redeliver it when the connection closes");
        }
        requeued += 1;
    }
    if requeued > 0 {
        tracing::info!(requeued, "deliveries not yet taken went back to the queue");
    }
}

/// How long [`requeue_untaken`] waits for one more delivery.
const UNTAKEN_WAIT: Duration = Duration::from_millis(200);

/// Waits for the jobs in flight, at most `limit`; those still running then are redelivered later.
async fn drain(tracker: &TaskTracker, limit: Duration) {
    tracker.close();
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "jobs still running at the time limit; the broker will redeliver them"
        );
    }
}

async fn process(session: Arc<Session>, delivery: Delivery) {
    let arrived = std::time::Instant::now();
    let in_flight = metrics::gauge!("resetmail_worker_jobs_in_flight");
    in_flight.increment(1.0);
    let attempt = Attempt::of(&delivery);
    let requeue_delay = session.worker.config.requeue_delay;
    let job = Job::decode(&delivery.data);
    let span = match &job {
        Ok(Job::PasswordReset(job)) => {
            tracing::info_span!("job", job.id = %job.job_id, correlation_id = %job.correlation_id)
        }
        Err(_) => {
            let message_id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string);
            tracing::info_span!("job", message_id = message_id.as_deref().unwrap_or("-"))
        }
    };
    async {
        let outcome = match job {
            Ok(Job::PasswordReset(job)) => {
                session
                    .worker
                    .handle(&job, attempt.number, &session.stopping)
                    .await
            }
            Err(error) => JobOutcome::Dead(DeadClass::Malformed, Failure::new(error.to_string())),
        };
        if let JobOutcome::Pause(_) = outcome {
            session.pause.notify_one();
            // Give the pause a moment to stop the consumer before this job is offered again.
            tokio::time::sleep(requeue_delay).await;
        }
        let copy = settle(
            &session.topology,
            &session.publisher,
            &session.acks,
            &delivery,
            &attempt,
            &outcome,
            requeue_delay,
        )
        .await;
        let reached = match copy {
            CopyFate::NoCopy => false,
            CopyFate::Confirmed => session.refused.record(true),
            CopyFate::Refused => session.refused.record(false),
        };
        if reached {
            session.reopen.notify_one();
        }
    }
    .instrument(span)
    .await;
    metrics::histogram!("resetmail_worker_job_seconds").record(arrived.elapsed().as_secs_f64());
    in_flight.decrement(1.0);
}
