//! `TestBroker`: a queue prefix of its own for one test on the real RabbitMQ; its queues and
//! exchanges are deleted when the test ends.

use std::{net::SocketAddr, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicGetOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use resetmail_shared::{
    amqp::{self, BrokerNodes},
    config::{BrokerConfig, QueueType, RetryDelays},
    topology::Topology,
};
use uuid::Uuid;

/// The broker tests use; `RESETMAIL_TEST_AMQP_URL` overrides it.
pub fn server_url() -> String {
    std::env::var("RESETMAIL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker's address, for a proxy in front of it.
pub fn server_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5672))
}

fn config(delays: &str, queue_type: QueueType) -> BrokerConfig {
    BrokerConfig {
        nodes: nodes(&server_url()),
        queue_prefix: format!("test-{}", Uuid::new_v4().simple()),
        queue_type,
        retry_delays: RetryDelays::parse(delays).unwrap(),
    }
}

/// `AMQP_URL` as the binaries read it.
pub fn nodes(url: &str) -> BrokerNodes {
    BrokerNodes::parse(url).unwrap()
}

/// A unique prefix on the real broker, with a connection for the test's own inspections.
pub struct TestBroker {
    /// The configuration for the code under test.
    pub config: BrokerConfig,
    /// The topology under that prefix.
    pub topology: Topology,
    _connection: Connection,
    /// A confirm-mode channel for the test.
    pub channel: Channel,
}

impl TestBroker {
    /// A new prefix, with its topology declared, and five retry steps of 100 ms.
    pub async fn new() -> TestBroker {
        Self::with_retry_delays("100ms,100ms,100ms,100ms,100ms").await
    }

    /// A new prefix whose retry steps wait `delays` (as `RESETMAIL_RETRY_DELAYS` writes them).
    pub async fn with_retry_delays(delays: &str) -> TestBroker {
        Self::with_config(config(delays, QueueType::Classic)).await
    }

    /// A new prefix with a quorum work queue.
    pub async fn quorum() -> TestBroker {
        Self::with_config(config("100ms,100ms,100ms,100ms,100ms", QueueType::Quorum)).await
    }

    async fn with_config(config: BrokerConfig) -> TestBroker {
        let topology = Topology::new(&config);
        let connection = amqp::connect(&server_url(), "resetmail-test")
            .await
            .unwrap_or_else(|error| panic!("cannot reach RabbitMQ at {}: {error}", server_url()));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        topology
            .declare(&channel)
            .await
            .unwrap_or_else(|error| panic!("cannot declare the topology: {error}"));
        TestBroker {
            config,
            topology,
            _connection: connection,
            channel,
        }
    }

    /// The same configuration, but reaching the broker through `port` (a proxy).
    pub fn config_via(&self, port: u16) -> BrokerConfig {
        BrokerConfig {
            nodes: nodes(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
            ..self.config.clone()
        }
    }

    /// Every queue of this prefix as the broker lists it (`rabbitmqctl list_queues`): name, type
    /// and arguments, one line each.
    pub fn declared_queues(&self) -> Vec<String> {
        let output = std::process::Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "type",
                "arguments",
            ])
            .output()
            .unwrap_or_else(|error| panic!("cannot run rabbitmqctl: {error}"));
        let prefix = format!("{}.", self.config.queue_prefix);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// The same configuration, but with `AMQP_URL` listing the broker once per proxy port, as if
    /// each were a node of a cluster.
    pub fn config_via_nodes(&self, ports: &[u16]) -> BrokerConfig {
        let urls: Vec<String> = ports
            .iter()
            .map(|port| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .collect();
        BrokerConfig {
            nodes: nodes(&urls.join(",")),
            ..self.config.clone()
        }
    }

    /// Messages ready in `queue`.
    pub async fn count(&self, queue: &str) -> u32 {
        self.inspect(queue).await.message_count()
    }

    /// Consumers of `queue`.
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.inspect(queue).await.consumer_count()
    }

    async fn inspect(&self, queue: &str) -> lapin::Queue {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("cannot inspect {queue}: {error}"))
    }

    /// Takes one message from `queue` (acknowledged), if there is one.
    pub async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|error| panic!("cannot read {queue}: {error}"))
    }

    /// Publishes a raw body to the work queue, as the api would, and waits for the confirm.
    pub async fn publish_raw(&self, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.topology.work_queue(),
            body,
            properties,
        )
        .await
        .unwrap_or_else(|error| panic!("the broker did not take the message: {error}"));
    }

    /// Waits until `queue` holds `n` ready messages.
    pub async fn wait_for_count(&self, queue: &str, n: u32, within: Duration) {
        crate::eventually(&format!("{n} messages in {queue}"), within, || async {
            (self.count(queue).await == n).then_some(())
        })
        .await;
    }
}

/// Has the broker close (`rabbitmqctl close_connection`) every connection whose name contains
/// `fragment`, as an operator or a broker restart would; returns how many it closed.
pub async fn close_connections_named(fragment: &str) -> usize {
    let fragment = fragment.to_owned();
    let closed = tokio::task::spawn_blocking(move || {
        let listing = std::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .unwrap_or_else(|error| panic!("cannot run rabbitmqctl: {error}"));
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        let pids: Vec<String> = listing
            .lines()
            .filter(|line| line.contains(&fragment))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        for pid in &pids {
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "closed by a resetmail test"])
                .status()
                .unwrap_or_else(|error| panic!("cannot run rabbitmqctl: {error}"));
            assert!(
                status.success(),
                "rabbitmqctl close_connection {pid} failed"
            );
        }
        pids.len()
    });
    closed.await.unwrap()
}

/// A header of a message as text (strings as they are, numbers in decimal).
pub fn header(message: &lapin::message::BasicGetMessage, key: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    match message
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(key)?
    {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        AMQPValue::LongLongInt(value) => Some(value.to_string()),
        AMQPValue::LongInt(value) => Some(value.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let queues = self.topology.queues();
        let exchanges = self.topology.exchanges();
        // The test's own connection ends with the test's runtime; cleanup uses a connection of its own.
        crate::run_to_completion(async move {
            let Ok(connection) = amqp::connect(&server_url(), "resetmail-test-cleanup").await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in exchanges {
                    let _ = channel
                        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = connection.close(200, "cleanup done".into()).await;
        });
    }
}

/// A RabbitMQ user of the test's own with a password no other test uses (made with `rabbitmqctl`,
/// allowed everything on the default vhost), deleted when dropped: a test can then look for that
/// password in logs without mistaking it for anything else.
pub struct TestBrokerUser {
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: String,
}

impl TestBrokerUser {
    /// Creates the user.
    pub async fn create() -> TestBrokerUser {
        let user = TestBrokerUser {
            name: format!("resetmail-test-{}", Uuid::new_v4().simple()),
            password: format!("amqp-pw-{}", Uuid::new_v4().simple()),
        };
        let (name, password) = (user.name.clone(), user.password.clone());
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["add_user", &name, &password]);
            rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        })
        .await
        .unwrap();
        user
    }

    /// `url` (an `amqp://` URL) with this user's credentials instead of its own.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&server_url()).unwrap();
        let set = url
            .set_username(&self.name)
            .and_then(|()| url.set_password(Some(&self.password)));
        set.unwrap_or_else(|()| panic!("cannot put credentials in {}", server_url()));
        url.to_string()
    }
}

impl Drop for TestBrokerUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || rabbitmqctl(&["delete_user", &name])).join();
    }
}

/// Runs `rabbitmqctl` with `args`; panics if it fails.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run rabbitmqctl: {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {} failed: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
}
