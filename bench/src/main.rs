//! `resetmail-bench`: measures the api, the worker and the whole path next to the raw limits of
//! the same machine in the same run, then prints a table and one JSON line.
//!
//! Needs PostgreSQL and RabbitMQ (`DATABASE_URL`'s server, `AMQP_URL`); starts the release
//! binaries found beside itself and an SMTP sink of its own; works in a database and under a queue
//! prefix of its own and removes both at the end. `scripts/bench.sh` builds and runs it.
//! Knobs (environment): `BENCH_SECONDS` (3, measured seconds per api run), `BENCH_ROUNDS` (3,
//! api runs per kind and concurrency; medians are reported), `BENCH_JOBS` (2000, jobs of the
//! worker run), `BENCH_E2E_SECONDS` (5).

mod load;
mod sink;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use lettre::{
    Message,
    message::MultiPart,
    transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
};
use load::{Figures, HttpClient, PublishClient, closed_loop, median};
use resetmail_shared::{
    Job,
    config::{BrokerConfig, DatabaseConfig, QueueType, RetryDelays},
    db,
    token::ResetToken,
    topology::Topology,
};
use serde_json::json;
use sink::Sink;
use sqlx::{Connection as _, PgPool};
use tokio::process::{Child, Command};

/// The worker's default concurrency (`RESETMAIL_CONCURRENCY`): the baselines use as many
/// connections as the worker at default settings does.
const WORKER_CONCURRENCY: usize = 8;
const CLIENTS: [usize; 3] = [1, 16, 64];

struct Options {
    seconds: f64,
    rounds: usize,
    jobs: usize,
    e2e_seconds: f64,
    database_server: String,
    amqp_url: String,
}

impl Options {
    fn from_env() -> anyhow::Result<Self> {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name} must be a number, got `{text}`")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            seconds: number("BENCH_SECONDS", 3.0)?,
            rounds: number("BENCH_ROUNDS", 3)?,
            jobs: number("BENCH_JOBS", 2000)?,
            e2e_seconds: number("BENCH_E2E_SECONDS", 5.0)?,
            database_server: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        })
    }
}

/// What this run made and must remove: the database, the queues, the processes.
struct Run {
    name: String,
    database_url: String,
    admin_url: String,
    amqp_url: String,
    topology: Topology,
    broker: lapin::Connection,
    channel: lapin::Channel,
    pool: PgPool,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    children: Vec<Child>,
}

impl Run {
    async fn start(options: &Options) -> anyhow::Result<Self> {
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
            url: options.amqp_url.clone(),
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
            bin_dir,
            log_dir,
            children: Vec::new(),
        })
    }

    /// Starts `program` (`resetmail-api` or `resetmail-worker`) on this run's database and queues.
    fn spawn(&mut self, program: &str, env: &[(&str, String)]) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log_dir.join(format!("{program}.log")))?;
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
        self.children.push(child);
        Ok(pid)
    }

    async fn purge(&self) -> anyhow::Result<()> {
        self.channel
            .queue_purge(
                self.topology.work_queue().into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        Ok(())
    }

    async fn cleanup(mut self) {
        for child in &mut self.children {
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

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

/// Accounts `{prefix}1@bench.example` … `{prefix}{n}@bench.example`.
async fn seed_accounts(pool: &PgPool, prefix: &str, n: usize) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO users (email, nick)
         SELECT $1 || g || '@bench.example', 'Bench user ' || g FROM generate_series(0, $2 - 1) g
         RETURNING id",
    )
    .bind(prefix)
    .bind(n as i64)
    .fetch_all(pool)
    .await?)
}

async fn http_clients(addr: SocketAddr, n: usize, prefix: &str) -> anyhow::Result<Vec<HttpClient>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(HttpClient::connect(addr, prefix, Arc::clone(&next)).await?);
    }
    Ok(clients)
}

async fn wait_until_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let request =
                format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            if stream.write_all(request.as_bytes()).await.is_ok()
                && stream.read_to_string(&mut answer).await.is_ok()
                && answer.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the api at {addr} did not get ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One api concurrency level: medians over the rounds, for the api and for the baseline.
struct ApiRow {
    clients: usize,
    api: Figures,
    baseline: Figures,
    /// CPU ms per request by program, in the last round: api, then baseline.
    api_cpu: Vec<(String, f64)>,
    baseline_cpu: Vec<(String, f64)>,
}

impl ApiRow {
    fn ratio(&self) -> f64 {
        self.api.per_second / self.baseline.per_second
    }
}

fn medians(runs: &[Figures]) -> Figures {
    Figures {
        per_second: median(runs.iter().map(|f| f.per_second).collect()),
        p50_ms: median(runs.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|f| f.p99_ms).collect()),
        count: runs.iter().map(|f| f.count).sum(),
        failed: runs.iter().map(|f| f.failed).sum(),
    }
}

async fn bench_api(run: &Run, options: &Options, api: SocketAddr) -> anyhow::Result<Vec<ApiRow>> {
    let (warmup, window) = (
        Duration::from_millis(500),
        Duration::from_secs_f64(options.seconds),
    );
    let mut rows = Vec::new();
    for clients in CLIENTS {
        let (mut api_runs, mut baseline_runs) = (Vec::new(), Vec::new());
        let (mut api_cpu, mut baseline_cpu) = (Vec::new(), Vec::new());
        for round in 0..options.rounds {
            // Alternate which goes first, so a drift of the machine's load favours neither.
            for api_first in [round % 2 == 0, round % 2 != 0] {
                if api_first {
                    let http = http_clients(api, clients, &format!("a{clients}r{round}-")).await?;
                    let before = cpu_by_program();
                    let figures = closed_loop(http, warmup, window).await;
                    api_cpu = cpu_split(&before, &cpu_by_program(), requests(&figures, warmup));
                    api_runs.push(figures);
                } else {
                    let publishers = (0..clients)
                        .map(|_| PublishClient {
                            channel: run.channel.clone(),
                            queue: run.topology.work_queue(),
                        })
                        .collect();
                    let before = cpu_by_program();
                    let figures = closed_loop(publishers, warmup, window).await;
                    baseline_cpu =
                        cpu_split(&before, &cpu_by_program(), requests(&figures, warmup));
                    baseline_runs.push(figures);
                }
                run.purge().await?;
            }
        }
        let row = ApiRow {
            clients,
            api: medians(&api_runs),
            baseline: medians(&baseline_runs),
            api_cpu,
            baseline_cpu,
        };
        eprintln!(
            "api, {clients} clients: {:.0}/s vs baseline {:.0}/s",
            row.api.per_second, row.baseline.per_second
        );
        rows.push(row);
    }
    Ok(rows)
}

/// A message like the worker's: the real templates, rendered for a bench account.
fn sample_message(to: &str) -> anyhow::Result<Message> {
    let templates = resetmail_worker::templates::Templates::load(None, "en-US")?;
    let email = templates.render(
        "en-US",
        &resetmail_worker::templates::ResetEmailContext {
            site_name: "Cloudreve".into(),
            site_url: "http://localhost:5212".into(),
            name: "Bench user".into(),
            email: to.into(),
            link: format!(
                "http://localhost:5212/session/reset?id={}&secret={}",
                uuid::Uuid::new_v4(),
                ResetToken::generate()?.secret()
            ),
            valid_for: resetmail_worker::templates::valid_for(Duration::from_secs(3600), "en-US"),
        },
    )?;
    Ok(Message::builder()
        .from("Cloudreve <no-reply@localhost>".parse()?)
        .to(to.parse()?)
        .subject(email.subject)
        .message_id(Some(format!("<{}@localhost>", uuid::Uuid::new_v4())))
        .multipart(MultiPart::alternative_plain_html(email.text, email.html))?)
}

/// Emails per second of a bare SMTP client: `WORKER_CONCURRENCY` kept-alive connections with
/// `TCP_NODELAY`, the worker's message, nothing else.
async fn bare_smtp(sink: &Sink, n: usize) -> anyhow::Result<f64> {
    sink.reset();
    let bytes = Arc::new(sample_message("bench@bench.example")?.formatted());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKER_CONCURRENCY {
        let (addr, bytes, next) = (sink.addr(), Arc::clone(&bytes), Arc::clone(&next));
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut connection =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                    .await?;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let envelope = lettre::address::Envelope::new(
                    Some("no-reply@localhost".parse()?),
                    vec![format!("s{i}@bench.example").parse()?],
                )?;
                connection.send(&envelope, &bytes).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    sink.wait_for(n, Duration::from_secs(10)).await?;
    rate(n, sink.span())
}

/// Transactions per second of `transaction`, run once per item on `WORKER_CONCURRENCY` connections.
async fn transactions_per_second<T, F, Fut>(
    pool: &PgPool,
    items: Vec<T>,
    transaction: F,
) -> anyhow::Result<f64>
where
    T: Send + Sync + 'static,
    F: Fn(PgPool, Arc<Vec<T>>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let n = items.len();
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKER_CONCURRENCY {
        let (pool, items, next) = (pool.clone(), Arc::clone(&items), Arc::clone(&next));
        let transaction = transaction.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= items.len() {
                    return anyhow::Ok(());
                }
                transaction(pool.clone(), Arc::clone(&items), i).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Token transactions per second on PostgreSQL alone: `BEGIN`, one statement that revokes the
/// account's older tokens and stores a new one, `COMMIT`.
async fn token_transactions(pool: &PgPool, accounts: Vec<i64>) -> anyhow::Result<f64> {
    transactions_per_second(pool, accounts, |pool, accounts, i| async move {
        let token = ResetToken::generate()?;
        let mut tx = pool.begin().await?;
        // The least a token needs: the account's older ones revoked, the new one stored.
        sqlx::query(
            "WITH revoked AS (
                 UPDATE password_reset_tokens SET revoked_at = now()
                 WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL
             )
             INSERT INTO password_reset_tokens (user_id, token_hash, job_id, expires_at)
             VALUES ($1, $2, $3, now() + interval '1 hour')",
        )
        .bind(accounts[i])
        .bind(token.hash().as_slice())
        .bind(uuid::Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// The worker's whole database work for a job, alone (no broker, no SMTP): its claim (one
/// transaction) and its record (one statement), each for a batch of one job, with the worker's own
/// `claims::claim` and `claims::record`. Not a limit the worker is held to (the worker batches
/// many jobs per claim and per record), but it tells what the job's bookkeeping (its delivery
/// record, the account's lock, the throttle) costs next to the token transaction.
async fn job_transactions(pool: &PgPool, emails: Vec<String>) -> anyhow::Result<f64> {
    transactions_per_second(pool, emails, |pool, emails, i| async move {
        let Job::PasswordReset(job) = load::job(&emails[i]);
        let token = ResetToken::generate()?;
        let mut connection = pool.acquire().await?;
        let rules = db::claims::Rules {
            job_max_age: Duration::from_secs(3600),
            cooldown: Duration::from_secs(60),
            daily_max: 5,
            lease: Duration::from_secs(65),
        };
        let lease_id = uuid::Uuid::new_v4();
        let job_id = job.job_id;
        let request = db::claims::ClaimRequest { job, lease_id };
        let claims = db::claims::claim(
            &mut connection,
            &db::users::Accounts::Builtin,
            &rules,
            &[request],
        )
        .await?;
        let Some(db::claims::Claim::Send(user)) = claims.into_iter().next() else {
            anyhow::bail!("a bench account was not sent to");
        };
        let sent = db::claims::SentEmail {
            job_id,
            lease_id,
            user_id: user.id,
            token_hash: token.hash(),
            message_id: format!("<{job_id}@localhost>"),
        };
        db::claims::record(&mut connection, Duration::from_secs(3600), &[sent], &[]).await?;
        Ok(())
    })
    .await
}

fn rate(n: usize, span: Option<Duration>) -> anyhow::Result<f64> {
    let span = span.context("nothing was accepted")?;
    Ok((n.saturating_sub(1)) as f64 / span.as_secs_f64().max(1e-9))
}

struct WorkerFigures {
    worker: f64,
    smtp: f64,
    tokens: f64,
    /// The job's database transaction alone (for reading, not a baseline of the ratio).
    job_tx: f64,
    /// The worker process's CPU time (user + system) per email, start-up included.
    cpu_ms_per_email: f64,
    /// The share of the machine's CPU time that was busy while the worker ran (0–1).
    machine_busy: f64,
    /// CPU ms per email by program while the worker ran.
    cpu: Vec<(String, f64)>,
}

/// Clock ticks of the whole machine, busy and in all (`/proc/stat`).
struct MachineCpu {
    busy: f64,
    total: f64,
}

fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Ok(MachineCpu {
        busy: total - idle,
        total,
    })
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&stat).context("unreadable /proc/<pid>/stat")?.1)
}

/// The command name and CPU seconds of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, after_name) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // Fields after the name start at the state (field 3); utime and stime are fields 14 and 15,
    // i.e. 11 and 12 after the state, in ticks of 1/100 s.
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse().ok())
        .collect();
    Some((name, fields.iter().sum::<f64>() / 100.0))
}

/// CPU seconds used so far by every running process, summed by command name.
fn cpu_by_program() -> std::collections::BTreeMap<String, f64> {
    let mut programs = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some((name, seconds)) = parse_stat(&stat) {
            // Kernel threads such as `kworker/1:5-events` count under their base name.
            let name = name.split('/').next().unwrap_or_default().to_owned();
            *programs.entry(name).or_insert(0.0) += seconds;
        }
    }
    programs
}

/// Where the CPU went between two [`cpu_by_program`] readings: the busiest programs, in ms per
/// `unit` (an email, a request).
fn cpu_split(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    units: usize,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(name, seconds)| {
            let spent = seconds - before.get(name).copied().unwrap_or(0.0);
            (name.clone(), spent * 1000.0 / units.max(1) as f64)
        })
        .filter(|(_, ms)| *ms >= 0.01)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.truncate(5);
    used
}

impl WorkerFigures {
    fn ratio(&self) -> f64 {
        self.worker / self.smtp.min(self.tokens)
    }
}

struct EndToEnd {
    rate: f64,
    requests: usize,
    failed: usize,
    missing: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Peak resident memory of a process so far (`VmHWM`), in MB (10^6 bytes, as the targets are).
fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib * 1024.0 / 1e6)
}

struct Report {
    api: Vec<ApiRow>,
    worker: WorkerFigures,
    e2e: EndToEnd,
    api_rss: f64,
    worker_rss: f64,
}

async fn bench(run: &mut Run, options: &Options) -> anyhow::Result<Report> {
    let api_addr = free_port()?;
    let api_pid = run.spawn(
        "resetmail-api",
        &[
            ("RESETMAIL_HTTP_ADDR", api_addr.to_string()),
            // The limit is part of the api's work; set out of reach so that it never answers 429.
            ("RESETMAIL_RATE_LIMIT", "4000000000".into()),
            ("RESETMAIL_RATE_BURST", "4000000000".into()),
        ],
    )?;
    wait_until_ready(api_addr).await?;
    eprintln!("api ready; measuring the api against raw confirmed publishes");
    let api = bench_api(run, options, api_addr).await?;

    eprintln!("measuring the worker against a bare SMTP client and the token transaction");
    let sink = Sink::start().await?;
    let smtp = bare_smtp(&sink, options.jobs).await?;
    let token_accounts = seed_accounts(&run.pool, "t", options.jobs).await?;
    let tokens = token_transactions(&run.pool, token_accounts).await?;
    seed_accounts(&run.pool, "j", options.jobs).await?;
    let job_emails = (0..options.jobs)
        .map(|i| format!("j{i}@bench.example"))
        .collect();
    let job_tx = job_transactions(&run.pool, job_emails).await?;
    seed_accounts(&run.pool, "w", options.jobs).await?;
    let emails = (0..options.jobs)
        .map(|i| format!("w{i}@bench.example"))
        .collect();
    load::publish_jobs(&run.channel, &run.topology, emails).await?;
    sink.reset();
    let worker_pid = run.spawn(
        "resetmail-worker",
        &[
            ("RESETMAIL_SMTP_URL", sink.url()),
            ("RESETMAIL_WORKER_HTTP_ADDR", "off".into()),
        ],
    )?;
    let machine_before = machine_cpu()?;
    let programs_before = cpu_by_program();
    sink.wait_for(options.jobs, Duration::from_secs(300))
        .await?;
    let machine_after = machine_cpu()?;
    let cpu = cpu_split(&programs_before, &cpu_by_program(), options.jobs);
    let worker = WorkerFigures {
        worker: rate(options.jobs, sink.span())?,
        smtp,
        tokens,
        job_tx,
        cpu_ms_per_email: process_cpu_seconds(worker_pid)? * 1000.0 / options.jobs as f64,
        machine_busy: (machine_after.busy - machine_before.busy)
            / (machine_after.total - machine_before.total),
        cpu,
    };

    let peak = api.iter().map(|row| row.api.per_second).fold(0.0, f64::max);
    let e2e_rate = (peak / 2.0).max(1.0);
    let requests = (e2e_rate * options.e2e_seconds).ceil() as usize;
    eprintln!("end to end: {requests} requests at {e2e_rate:.0}/s");
    seed_accounts(&run.pool, "e", requests).await?;
    sink.reset();
    let clients = http_clients(api_addr, 64, "unused").await?;
    let (start, failed) = load::open_loop(clients, "e", e2e_rate, requests).await;
    let waited = sink
        .wait_for(requests - failed, Duration::from_secs(120))
        .await;
    if let Err(error) = waited {
        eprintln!("{error}");
    }
    let mut latencies = Vec::with_capacity(requests);
    let mut missing = 0;
    for i in 0..requests {
        match sink.accepted_at(&format!("e{i}@bench.example")) {
            Some(at) => latencies.push(at.saturating_duration_since(load::due(start, e2e_rate, i))),
            None => missing += 1,
        }
    }
    latencies.sort_unstable();
    let e2e = EndToEnd {
        rate: e2e_rate,
        requests,
        failed,
        missing,
        p50_ms: load::percentile_ms(&latencies, 0.50),
        p99_ms: load::percentile_ms(&latencies, 0.99),
    };
    Ok(Report {
        api,
        worker,
        e2e,
        api_rss: peak_rss_mb(api_pid)?,
        worker_rss: peak_rss_mb(worker_pid)?,
    })
}

fn print(report: &Report) {
    println!();
    println!("api: POST /api/v4/user/reset, closed loop; baseline: raw lapin publish + confirm");
    println!(
        "{:>7} {:>10} {:>8} {:>8} {:>7} {:>12} {:>8} {:>8} {:>7}",
        "clients",
        "api req/s",
        "p50 ms",
        "p99 ms",
        "non-0",
        "baseline/s",
        "p50 ms",
        "p99 ms",
        "ratio"
    );
    for row in &report.api {
        println!(
            "{:>7} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>12.0} {:>8.2} {:>8.2} {:>7.2}",
            row.clients,
            row.api.per_second,
            row.api.p50_ms,
            row.api.p99_ms,
            row.api.failed,
            row.baseline.per_second,
            row.baseline.p50_ms,
            row.baseline.p99_ms,
            row.ratio()
        );
    }
    for row in &report.api {
        println!(
            "  CPU ms per request at {} clients: api run {}; baseline run {}",
            row.clients,
            show_cpu(&row.api_cpu),
            show_cpu(&row.baseline_cpu)
        );
    }
    let w = &report.worker;
    println!();
    println!(
        "worker (1 process, defaults): {:.0} emails/s; bare SMTP {:.0}/s; token transaction {:.0}/s; \
         ratio to the lower {:.2}",
        w.worker,
        w.smtp,
        w.tokens,
        w.ratio()
    );
    println!(
        "  worker CPU {:.2} ms per email; the machine was {:.0} % busy while it ran",
        w.cpu_ms_per_email,
        w.machine_busy * 100.0
    );
    println!("  CPU ms per email while it ran: {}", show_cpu(&w.cpu));
    println!(
        "  for reading: the job's database transaction alone (claim, prepare_send, commit) {:.0}/s, \
         {:.2} of the token transaction",
        w.job_tx,
        w.job_tx / w.tokens
    );
    let e = &report.e2e;
    println!(
        "end to end at {:.0} req/s (half the api peak): p50 {:.2} ms, p99 {:.2} ms \
         ({} requests, {} not answered 0, {} never emailed)",
        e.rate, e.p50_ms, e.p99_ms, e.requests, e.failed, e.missing
    );
    println!(
        "peak RSS: api {:.1} MB, worker {:.1} MB",
        report.api_rss, report.worker_rss
    );
    let row = |clients| report.api.iter().find(|row| row.clients == clients);
    let api_ok = [16, 64]
        .iter()
        .all(|&c| row(c).is_some_and(|row| row.ratio() >= 0.85));
    let p99_ok = row(64).is_some_and(|row| row.api.p99_ms < 20.0);
    let json = json!({
        "api": report.api.iter().map(|row| json!({
            "clients": row.clients,
            "rps": round(row.api.per_second),
            "p50_ms": round(row.api.p50_ms),
            "p99_ms": round(row.api.p99_ms),
            "non_zero": row.api.failed,
            "baseline_rps": round(row.baseline.per_second),
            "baseline_p50_ms": round(row.baseline.p50_ms),
            "baseline_p99_ms": round(row.baseline.p99_ms),
            "ratio": round(row.ratio()),
        })).collect::<Vec<_>>(),
        "worker": {
            "emails_per_s": round(w.worker),
            "bare_smtp_per_s": round(w.smtp),
            "token_tx_per_s": round(w.tokens),
            "job_tx_per_s": round(w.job_tx),
            "ratio": round(w.ratio()),
            "cpu_ms_per_email": round(w.cpu_ms_per_email),
            "machine_busy": round(w.machine_busy),
        },
        "e2e": {
            "offered_rps": round(e.rate),
            "requests": e.requests,
            "non_zero": e.failed,
            "never_emailed": e.missing,
            "p50_ms": round(e.p50_ms),
            "p99_ms": round(e.p99_ms),
        },
        "peak_rss_mb": { "api": round(report.api_rss), "worker": round(report.worker_rss) },
        "targets": {
            "api_ratio_ge_0_85": api_ok,
            "api_p99_64_lt_20ms": p99_ok,
            "worker_ratio_ge_0_8": w.ratio() >= 0.8,
            "e2e_p99_lt_50ms": e.missing == 0 && e.p99_ms < 50.0,
            "api_rss_lt_40mb": report.api_rss < 40.0,
            "worker_rss_lt_60mb": report.worker_rss < 60.0,
        },
    });
    println!();
    println!("{json}");
}

fn show_cpu(split: &[(String, f64)]) -> String {
    split
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requests a closed loop made in all, warm-up included (its figures count the window only).
fn requests(figures: &Figures, warmup: Duration) -> usize {
    figures.count + figures.failed + (figures.per_second * warmup.as_secs_f64()) as usize
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::from_env()?;
    let mut run = Run::start(&options).await?;
    let report = bench(&mut run, &options).await;
    let logs = run.log_dir.clone();
    run.cleanup().await;
    match report {
        Ok(report) => {
            print(&report);
            Ok(())
        }
        Err(error) => Err(error.context(format!("the processes' logs are in {}", logs.display()))),
    }
}
