//! What one bench run makes and must remove — its database, its queues, the processes it starts —
//! and the small chores around them: accounts to send to, free ports, waiting for readiness.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lapin::{
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::FieldTable,
};
use resetmail_shared::{
    config::{BrokerConfig, DatabaseConfig, QueueType, RetryDelays},
    db,
    topology::Topology,
};
use sqlx::{Connection as _, PgPool};
use tokio::process::{Child, Command};

use crate::{Options, baselines::WORKER_CONCURRENCY, broker_node, load::HttpClient};

/// The database, the queues and the processes of this run.
pub struct Run {
    pub name: String,
    pub database_url: String,
    /// The server's maintenance database (`DATABASE_URL`), for what must not count as the run's.
    pub admin_url: String,
    amqp_url: String,
    pub topology: Topology,
    broker: lapin::Connection,
    pub channel: lapin::Channel,
    pub pool: PgPool,
    /// The processes of the RabbitMQ node the run uses (`broker_node::processes`).
    pub broker_pids: HashSet<u32>,
    bin_dir: PathBuf,
    pub log_dir: PathBuf,
    children: Vec<(u32, Child)>,
}

impl Run {
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let name = format!("resetmail_bench_{}", std::process::id());
        let bin_dir = std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .to_owned();
        let log_dir = bin_dir.join("bench-logs");
        std::fs::create_dir_all(&log_dir)?;
        let database_url = url_with_database(&options.database_server, &name);
        let pool = db::connect(&DatabaseConfig {
            url: database_url.clone(),
            pool_size: WORKER_CONCURRENCY as u32 + 1,
            accounts: Default::default(),
        })
        .await?;
        let broker_config = BrokerConfig {
            nodes: resetmail_shared::amqp::BrokerNodes::parse(&options.amqp_url)
                .map_err(anyhow::Error::msg)?,
            queue_prefix: name.replace('_', "-"),
            queue_type: QueueType::Classic,
            retry_delays: RetryDelays::parse("5s,30s,2m,10m,30m").map_err(anyhow::Error::msg)?,
        };
        let topology = Topology::new(&broker_config);
        let broker = async {
            let broker =
                resetmail_shared::amqp::connect(&options.amqp_url, "resetmail-bench").await?;
            let channel = broker.create_channel().await?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            topology.declare(&channel).await?;
            anyhow::Ok((broker, channel))
        }
        .await;
        let (broker, channel) = match broker {
            Ok(broker) => broker,
            Err(error) => {
                pool.close().await;
                drop_database(&options.database_server, &name).await;
                return Err(error);
            }
        };
        Ok(Self {
            admin_url: options.database_server.clone(),
            name,
            database_url,
            amqp_url: options.amqp_url.clone(),
            topology,
            broker,
            channel,
            pool,
            broker_pids: broker_node::processes(&amqp_ports(&options.amqp_url)),
            bin_dir,
            log_dir,
            children: Vec::new(),
        })
    }

    /// Starts `program` (`resetmail-api` or `resetmail-worker`) on this run's database and queues,
    /// its standard error in `log` (a file name in the log directory).
    pub fn spawn(
        &mut self,
        program: &str,
        log: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log_dir.join(log))?;
        let child = Command::new(self.bin_dir.join(program))
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("RESETMAIL_QUEUE_PREFIX", self.name.replace('_', "-"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {program} from {} (build it with --release)",
                    self.bin_dir.display()
                )
            })?;
        let pid = child.id().context("the child has no pid")?;
        self.children.push((pid, child));
        Ok(pid)
    }

    /// Kills the process `pid` that [`Run::spawn`] started, and waits for it to go.
    pub async fn stop(&mut self, pid: u32) {
        if let Some(at) = self.children.iter().position(|(id, _)| *id == pid) {
            let (_, mut child) = self.children.swap_remove(at);
            let _ = child.kill().await;
        }
    }

    /// The processes [`Run::spawn`] started that are still this run's.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(pid, _)| *pid).collect()
    }

    /// Whether the process `pid` that [`Run::spawn`] started has ended.
    pub fn has_exited(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|(id, _)| *id == pid)
            .is_none_or(|(_, child)| !matches!(child.try_wait(), Ok(None)))
    }

    /// Empties the work queue.
    pub async fn purge(&self) -> anyhow::Result<()> {
        self.channel
            .queue_purge(
                self.topology.work_queue().into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        Ok(())
    }

    /// Empties every queue, retries and dead letters included (what a stopped worker left), once
    /// the broker has seen the worker go: until then it may still return the worker's unacked jobs
    /// to the work queue, where the next run's worker would find them.
    pub async fn purge_all(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.consumers(&self.topology.work_queue()).await? > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for queue in self.topology.queues() {
            self.channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Consumers of `queue` now.
    async fn consumers(&self, queue: &str) -> anyhow::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        Ok(queue.consumer_count())
    }

    pub async fn cleanup(mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill().await;
        }
        for queue in self.topology.queues() {
            let _ = self
                .channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in self.topology.exchanges() {
            let _ = self
                .channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.broker.close(200, "bench done".into()).await;
        self.pool.close().await;
        drop_database(&self.admin_url, &self.name).await;
    }
}

/// Drops the run's database; says so on standard error if it cannot.
async fn drop_database(admin_url: &str, name: &str) {
    let dropped = async {
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
    }
    .await;
    if let Err(error) = dropped {
        eprintln!("could not drop the database {name}: {error}");
    }
}

/// `server_url` with its database replaced by `database`.
fn url_with_database(server_url: &str, database: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let authority_end = base
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    let mut url = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The AMQP ports of the nodes `amqp_url` names (one URL, or several separated by commas).
fn amqp_ports(amqp_url: &str) -> Vec<u16> {
    amqp_url
        .split(',')
        .filter_map(|url| url.trim().parse::<lapin::uri::AMQPUri>().ok())
        .map(|uri| uri.authority.port)
        .collect()
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// Accounts `{prefix}0@bench.example` … `{prefix}{n-1}@bench.example`.
pub async fn seed_accounts(pool: &PgPool, prefix: &str, n: usize) -> anyhow::Result<Vec<i64>> {
    let ids = sqlx::query_scalar(
        "INSERT INTO users (email, nick)
         SELECT $1 || g || '@bench.example', 'Bench user ' || g FROM generate_series(0, $2 - 1) g
         RETURNING id",
    )
    .bind(prefix)
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    // A site's accounts have statistics; thousands inserted a moment ago have none until
    // autovacuum comes by, and PostgreSQL would plan the worker's lookups for an empty table.
    sqlx::query("ANALYZE users").execute(pool).await?;
    Ok(ids)
}

/// The addresses [`seed_accounts`] made for `prefix`.
pub fn emails(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i}@bench.example"))
        .collect()
}

pub async fn http_clients(
    addr: SocketAddr,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<HttpClient>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(HttpClient::connect(addr, prefix, Arc::clone(&next)).await?);
    }
    Ok(clients)
}

/// Waits until `GET /readyz` on `addr` (the api's port, or the worker's) answers 200.
pub async fn wait_until_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = HttpClient::connect(addr, "", Arc::default()).await
            && client
                .get("/readyz")
                .await
                .is_some_and(|status| status.is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing was ready at {addr} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_query_kept() {
        assert_eq!(
            url_with_database(
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
                "b"
            ),
            "postgres://postgres@127.0.0.1:5432/b?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
    }
}
