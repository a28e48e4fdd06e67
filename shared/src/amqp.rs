//! Connecting to RabbitMQ: the nodes `AMQP_URL` lists, taken in turn; one place that names the
//! connection and bounds the wait; confirmed publishing.

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
    /// No node of `AMQP_URL` answered; why, node by node.
    #[error("no broker node answers: {0}")]
    NoNode(String),
}

/// Opens a connection named `name` (shown in the RabbitMQ UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
        .map_err(ConnectError::Broker)
}

/// One node named in `AMQP_URL`: its URL, credentials included, and a label without them (host and
/// port) for logs and metrics.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerNode {
    url: String,
    label: String,
}

impl BrokerNode {
    /// Reads one AMQP URL; the error never repeats the URL, which may hold a password.
    fn parse(url: &str) -> Result<Self, String> {
        let uri: lapin::uri::AMQPUri = url
            .parse()
            .map_err(|error| format!("not an AMQP URL ({error})"))?;
        let label = format!("{}:{}", uri.authority.host, uri.authority.port);
        Ok(Self {
            url: url.to_owned(),
            label,
        })
    }

    /// The URL to connect with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port`, safe to log.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl std::fmt::Debug for BrokerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// The nodes of one RabbitMQ deployment, as `AMQP_URL` lists them: one URL, or the URLs of a
/// cluster's nodes separated by commas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerNodes(Vec<BrokerNode>);

impl BrokerNodes {
    /// Reads `amqp://…[,amqp://…]`; at least one URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let nodes = text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .enumerate()
            .map(|(index, url)| {
                BrokerNode::parse(url).map_err(|error| format!("URL {}: {error}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(
                "no URL; write e.g. amqp://user:password@host:5672/%2f, or several \
                        separated by commas for a cluster"
                    .into(),
            );
        }
        Ok(Self(nodes))
    }

    /// The nodes, in the order written.
    pub fn nodes(&self) -> &[BrokerNode] {
        &self.0
    }

    /// `AMQP_URL` again, as a child process is given it.
    pub fn to_env(&self) -> String {
        let urls: Vec<&str> = self.0.iter().map(BrokerNode::url).collect();
        urls.join(",")
    }
}

/// Connections to a deployment's nodes in turn: the nodes are shuffled once, so that a fleet of
/// processes spreads over a cluster, and each attempt starts at the node after the one last used,
/// so that a process whose node died moves on to the next instead of waiting for it.
#[derive(Debug)]
pub struct NodeRing {
    nodes: Vec<BrokerNode>,
    next: usize,
}

impl NodeRing {
    /// The nodes of `nodes` in a random order.
    pub fn shuffled(nodes: &BrokerNodes) -> Self {
        let mut nodes = nodes.0.clone();
        // Fisher–Yates; the order only spreads load, so a failed random source keeps the written one.
        for index in (1..nodes.len()).rev() {
            let Ok(random) = getrandom::u64() else { break };
            let other = usize::try_from(random % (index as u64 + 1)).unwrap_or(index);
            nodes.swap(index, other);
        }
        Self { nodes, next: 0 }
    }

    /// Tries each node once, from the one after the last connected; the connection, named `name`,
    /// and its node. Marks the node in the `resetmail_broker_connected` gauge.
    pub async fn connect(&mut self, name: &str) -> Result<(Connection, BrokerNode), ConnectError> {
        let mut failures = Vec::new();
        for offset in 0..self.nodes.len() {
            let index = (self.next + offset) % self.nodes.len();
            let node = &self.nodes[index];
            match connect(node.url(), name).await {
                Ok(connection) => {
                    self.next = index + 1;
                    metrics::gauge!("resetmail_broker_connected", "node" => node.label.clone())
                        .set(1.0);
                    return Ok((connection, node.clone()));
                }
                Err(error) => failures.push(format!("{}: {error}", node.label)),
            }
        }
        // The next round starts after the node that answered last, whatever failed since.
        Err(ConnectError::NoNode(failures.join("; ")))
    }

    /// Connects as [`NodeRing::connect`] does, then sets the connection up with `setup` (its
    /// channels, the topology); a node whose setup fails counts as lost, and the next attempt
    /// starts after it.
    pub async fn open<T>(
        &mut self,
        name: &str,
        setup: impl AsyncFnOnce(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Connection, T, BrokerNode)> {
        let (connection, node) = self.connect(name).await?;
        match setup(&connection).await {
            Ok(ready) => Ok((connection, ready, node)),
            Err(error) => {
                self.lost(&node);
                Err(error.context(format!("on broker node {}", node.label())))
            }
        }
    }

    /// Records that the connection to `node` is gone (the gauge back to 0).
    pub fn lost(&self, node: &BrokerNode) {
        metrics::gauge!("resetmail_broker_connected", "node" => node.label.clone()).set(0.0);
    }
}

/// Publishes in a row that the broker did not confirm — no confirm in time, or a refusal — after
/// which a connection counts as lost although it is open, and the process reconnects, to the next
/// node: its node may take messages and confirm none (hung, cut off from its cluster), or its
/// channel may refuse them all — seen with RabbitMQ 3.10, for minutes, on a channel opened while a
/// quorum queue elected its leader, while a new channel worked at once (docs/SCALING.md).
pub const UNCONFIRMED_LIMIT: u32 = 3;

/// Publishes in a row that the broker did not confirm, counted up to [`UNCONFIRMED_LIMIT`]; a
/// confirmed publish starts the count over. Shared by the tasks that publish on one connection.
#[derive(Debug, Default)]
pub struct Unconfirmed(std::sync::atomic::AtomicU32);

impl Unconfirmed {
    /// Records one publish: `confirmed` or not. True when this makes the limit.
    pub fn record(&self, confirmed: bool) -> bool {
        use std::sync::atomic::Ordering;
        if confirmed {
            self.0.store(0, Ordering::Relaxed);
            false
        } else {
            self.0.fetch_add(1, Ordering::Relaxed) + 1 >= UNCONFIRMED_LIMIT
        }
    }

    /// Whether the limit has been reached since the count last started over.
    pub fn reached(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) >= UNCONFIRMED_LIMIT
    }

    /// Starts the count over (a new connection).
    pub fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Describes the broker metrics every binary shares.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "resetmail_broker_connected",
        "1 for the broker node (label `node`, host:port) this process is connected to, 0 for the \
         nodes it was connected to before"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_lists_its_nodes_labelled_without_credentials() {
        let nodes = BrokerNodes::parse(
            "amqp://app:s3cret@rabbit-1:5672/%2f, amqp://app:s3cret@rabbit-2/%2f,",
        )
        .expect("two URLs");
        let labels: Vec<&str> = nodes.nodes().iter().map(BrokerNode::label).collect();
        assert_eq!(labels, ["rabbit-1:5672", "rabbit-2:5672"]);
        assert!(!format!("{nodes:?}").contains("s3cret"));
        assert_eq!(
            nodes.to_env(),
            "amqp://app:s3cret@rabbit-1:5672/%2f,amqp://app:s3cret@rabbit-2/%2f"
        );
    }

    #[test]
    fn a_bad_url_is_named_by_its_place_and_its_password_is_not_repeated() {
        let error = BrokerNodes::parse("amqp://app:s3cret@rabbit-1/%2f,http://app:s3cret@x:y")
            .expect_err("a bad second URL");
        assert!(error.starts_with("URL 2: "), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        assert!(BrokerNodes::parse(" , ").is_err());
    }

    #[test]
    fn three_unconfirmed_publishes_in_a_row_reach_the_limit_and_a_confirm_starts_over() {
        let count = Unconfirmed::default();
        assert!(!count.record(false));
        assert!(!count.record(false));
        assert!(!count.record(true));
        assert!(!count.record(false));
        assert!(!count.record(false));
        assert!(!count.reached());
        assert!(count.record(false));
        assert!(count.reached());
        count.reset();
        assert!(!count.reached());
    }

    #[test]
    fn a_shuffled_ring_keeps_every_node_once() {
        let nodes = BrokerNodes::parse(
            "amqp://h1/%2f,amqp://h2/%2f,amqp://h3/%2f,amqp://h4/%2f,amqp://h5/%2f",
        )
        .expect("five URLs");
        let ring = NodeRing::shuffled(&nodes);
        let mut labels: Vec<&str> = ring.nodes.iter().map(BrokerNode::label).collect();
        labels.sort_unstable();
        assert_eq!(
            labels,
            ["h1:5672", "h2:5672", "h3:5672", "h4:5672", "h5:5672"]
        );
    }
}
