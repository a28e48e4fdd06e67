//! Publishing jobs: one broker connection and one confirm-mode channel shared by all requests, kept
//! open by a supervisor that reconnects with backoff. A publish succeeds only on the broker's confirm.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt as _;
use lapin::{Channel, Connection, Event, options::ConfirmSelectOptions};
use resetmail_shared::{
    Job,
    amqp::{self, Backoff, BrokerNode, NodeRing, Unconfirmed},
    config::BrokerConfig,
    topology::Topology,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// There is no open broker connection right now.
    #[error("the broker is unreachable")]
    Unavailable,
    /// The broker failed, refused or could not route the publish.
    #[error(transparent)]
    Confirm(#[from] amqp::ConfirmError),
    /// No confirm within the timeout.
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The job could not be written as a message body.
    #[error("cannot encode the job: {0}")]
    Encode(#[from] serde_json::Error),
}

impl PublishError {
    /// Every label [`PublishError::reason`] can give.
    pub const REASONS: [&'static str; 6] = [
        "unavailable",
        "broker",
        "timeout",
        "nacked",
        "returned",
        "encode",
    ];

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Confirm(amqp::ConfirmError::Broker(_)) => "broker",
            Self::Timeout(_) => "timeout",
            Self::Encode(_) => "encode",
            Self::Confirm(amqp::ConfirmError::Nacked) => "nacked",
            Self::Confirm(amqp::ConfirmError::Returned(_)) => "returned",
        }
    }
}

/// A handle to the shared publishing channel; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    confirm_timeout: Duration,
    channel: RwLock<Option<Channel>>,
    /// Wakes the supervisor to check the connection after a failed publish.
    suspect: Notify,
    /// Publishes in a row that got no confirm (in time, or at all).
    unconfirmed: Unconfirmed,
}

impl Publisher {
    /// Starts the supervisor that connects (and reconnects) to the broker; it stops on `shutdown`.
    /// Returns at once: until the first connection succeeds, publishes fail with `Unavailable`.
    pub fn start(
        config: &BrokerConfig,
        confirm_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let publisher = Self {
            inner: Arc::new(Inner {
                topology: Topology::new(config),
                confirm_timeout,
                channel: RwLock::new(None),
                suspect: Notify::new(),
                unconfirmed: Unconfirmed::default(),
            }),
        };
        tokio::spawn(
            publisher
                .clone()
                .supervise(NodeRing::shuffled(&config.nodes), shutdown),
        );
        publisher
    }

    /// Whether a confirm-mode channel is open now.
    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|channel| channel.status().connected())
    }

    /// Publishes `job` (persistent, mandatory) and waits for the broker's confirm.
    pub async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        let result = self.publish_confirmed(job).await;
        metrics::histogram!("resetmail_api_publish_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                self.inner.unconfirmed.record(true);
            }
            Err(error) => {
                metrics::counter!("resetmail_api_publish_failures_total", "reason" => error.reason())
                    .increment(1);
                if matches!(
                    error,
                    PublishError::Timeout(_) | PublishError::Confirm(amqp::ConfirmError::Nacked)
                ) {
                    self.inner.unconfirmed.record(false);
                }
                if !matches!(error, PublishError::Encode(_)) {
                    self.inner.suspect.notify_one();
                }
            }
        }
        result
    }

    async fn publish_confirmed(&self, job: &Job) -> Result<(), PublishError> {
        let body = job.encode()?;
        let channel = self.current().ok_or(PublishError::Unavailable)?;
        let properties = amqp::job_properties(job);
        let queue = self.inner.topology.work_queue();
        let confirm = amqp::publish_confirmed(&channel, "", &queue, &body, properties);
        match tokio::time::timeout(self.inner.confirm_timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout(self.inner.confirm_timeout)),
            Ok(result) => result.map_err(PublishError::Confirm),
        }
    }

    fn current(&self) -> Option<Channel> {
        self.inner
            .channel
            .read()
            .ok()
            .and_then(|guard| guard.clone())
    }

    fn set_current(&self, channel: Option<Channel>) {
        if let Ok(mut guard) = self.inner.channel.write() {
            *guard = channel;
        }
    }

    async fn supervise(self, mut nodes: NodeRing, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            match self.open(&mut nodes).await {
                Ok((connection, channel, node)) => {
                    tracing::info!(node = node.label(), "connected to the broker");
                    backoff.reset();
                    self.set_current(Some(channel.clone()));
                    let lost = self.watch(&connection, &channel, &shutdown).await;
                    self.set_current(None);
                    nodes.lost(&node);
                    // Closing a connection that is already gone fails; nothing more to do then.
                    // A lost one is closed aside: a hung node would hold up the next connection.
                    let close = async move {
                        let close = connection.close(200, "closing".into());
                        let _ = tokio::time::timeout(amqp::CONNECT_TIMEOUT, close).await;
                    };
                    if !lost {
                        close.await;
                        return;
                    }
                    tokio::spawn(close);
                    tracing::warn!(
                        node = node.label(),
                        "lost the broker connection; reconnecting"
                    );
                }
                Err(error) => tracing::warn!(%error, "cannot open the broker connection"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Connects to the next node that answers, with a confirm-mode channel and the topology.
    async fn open(
        &self,
        nodes: &mut NodeRing,
    ) -> anyhow::Result<(Connection, Channel, BrokerNode)> {
        let name = self.inner.topology.connection_name("resetmail-api");
        nodes
            .open(&name, async |connection| {
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                self.inner.topology.declare(&channel).await?;
                Ok(channel)
            })
            .await
    }

    /// Waits until the connection or channel is lost (true) or shutdown is asked (false).
    async fn watch(
        &self,
        connection: &Connection,
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut events = connection.events_listener();
        self.inner.unconfirmed.reset();
        loop {
            if !connection.status().connected() || !channel.status().connected() {
                return true;
            }
            if self.inner.unconfirmed.reached() {
                tracing::warn!(
                    "the broker confirms none of the publishes; reconnecting, to the next node"
                );
                return true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                event = events.next() => match event {
                    Some(Event::Error(error)) => {
                        tracing::warn!(%error, "broker connection error");
                        return true;
                    }
                    Some(_) => {}
                    None => return true,
                },
                () = self.inner.suspect.notified() => {}
            }
        }
    }
}
