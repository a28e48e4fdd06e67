//! Samples, every 100 ms while a worker runs, how many PostgreSQL connections that worker holds:
//! the rows of `pg_stat_activity` for the bench's database whose `client_port` is the local port of
//! one of the worker process's TCP connections to the server. This needs no name from the worker
//! (it sets no `application_name`) and cannot count the api's or the bench's own connections.
//! Each backend is looked up in the worker's sockets once, when it first appears: reading a
//! process's TCP table walks every socket on the machine (thousands of SMTP connections and
//! `TIME_WAIT`s in a relay run), and doing that every sample took a tenth of the machine away from
//! the worker it measured.
//! Also names the `postgres` processes that work for other databases (the monitor's own among
//! them), whose CPU is not the run's.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};
use tokio::sync::oneshot;

use crate::procfs;

/// How often the monitor samples.
const PERIOD: Duration = Duration::from_millis(100);

/// The most connections seen at one sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct PgPeak {
    /// Connections the worker had open.
    pub open: usize,
    /// Of those, connections that were not idle (running a statement, or inside a transaction).
    pub busy: usize,
    /// Samples taken.
    pub samples: usize,
}

/// The monitor's own connection, opened before the worker starts, so that a worker that takes
/// every connection the server allows cannot lock the monitor out. It is a connection to the
/// server's maintenance database, so that its samples do not count among the transactions of the
/// worker's database (`footprint.rs`).
pub struct PgWatch {
    connection: PgConnection,
    database: String,
    server_port: u16,
}

impl PgWatch {
    /// Connects to `admin_url` (the server's maintenance database) to watch `database`, the one
    /// the worker uses.
    pub async fn open(admin_url: &str, database: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions = admin_url.parse()?;
        let database = database.to_owned();
        let server_port = options.get_port();
        let connection = PgConnection::connect_with(&options.application_name("resetmail-bench"))
            .await
            .context("cannot open the PostgreSQL monitor's connection")?;
        Ok(Self {
            server_port,
            connection,
            database,
        })
    }

    /// Samples process `pid`'s connections until [`PgMonitor::stop`].
    pub fn watch(self, pid: u32) -> PgMonitor {
        let Self {
            mut connection,
            database,
            server_port,
        } = self;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = PgPeak::default();
            let mut backends = Backends::default();
            let mut interval = tokio::time::interval(PERIOD);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = interval.tick() => {}
                }
                if let Ok((open, busy)) = backends
                    .sample(&mut connection, &database, pid, server_port)
                    .await
                {
                    peak.open = peak.open.max(open);
                    peak.busy = peak.busy.max(busy);
                    peak.samples += 1;
                }
            }
            let mut not_ours = other_work(&mut connection, &database)
                .await
                .unwrap_or_default();
            if let Ok(own) = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&mut connection)
                .await
            {
                not_ours.extend(u32::try_from(own));
            }
            let _ = connection.close().await;
            (peak, not_ours)
        });
        PgMonitor { stop, task }
    }
}

/// A running monitor; [`PgMonitor::stop`] returns the peaks.
pub struct PgMonitor {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(PgPeak, HashSet<u32>)>,
}

impl PgMonitor {
    /// Stops sampling; the peaks, and the `postgres` processes that were not working for the run
    /// when it stopped ([`other_work`], and the monitor's own backend).
    pub async fn stop(self) -> (PgPeak, HashSet<u32>) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The `postgres` processes working for another database than `database` (another checkout's
/// tests on the same server, say): their CPU is not the run's.
pub async fn other_work(
    executor: impl sqlx::PgExecutor<'_>,
    database: &str,
) -> sqlx::Result<HashSet<u32>> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname IS NOT NULL AND datname <> $1",
    )
    .bind(database)
    .fetch_all(executor)
    .await?;
    Ok(pids
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect())
}

/// The backends of the watched database seen so far, each with whether it serves the worker. A
/// backend serves one client connection for its whole life, so one look at the worker's sockets
/// when it first appears settles it (the client's side is established before the server starts
/// the backend).
#[derive(Default)]
struct Backends {
    workers: HashMap<i32, bool>,
}

impl Backends {
    /// The worker's connections now, open and not idle.
    async fn sample(
        &mut self,
        connection: &mut PgConnection,
        database: &str,
        pid: u32,
        server_port: u16,
    ) -> sqlx::Result<(usize, usize)> {
        let rows: Vec<(i32, Option<i32>, Option<String>)> = sqlx::query_as(
            "SELECT pid, client_port, state FROM pg_stat_activity
             WHERE datname = $1 AND backend_type = 'client backend'",
        )
        .bind(database)
        .fetch_all(&mut *connection)
        .await?;
        if rows
            .iter()
            .any(|(backend, _, _)| !self.workers.contains_key(backend))
        {
            let ports = procfs::local_ports_to(pid, server_port);
            for (backend, port, _) in &rows {
                let port = port.and_then(|port| u16::try_from(port).ok());
                self.workers
                    .entry(*backend)
                    .or_insert_with(|| port.is_some_and(|port| ports.contains(&port)));
            }
        }
        let (mut open, mut busy) = (0, 0);
        for state in rows
            .iter()
            .filter(|(backend, _, _)| self.workers.get(backend) == Some(&true))
            .map(|(_, _, state)| state)
        {
            open += 1;
            if state.as_deref() != Some("idle") {
                busy += 1;
            }
        }
        Ok((open, busy))
    }
}
