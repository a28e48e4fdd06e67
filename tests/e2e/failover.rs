//! A deployment riding out what takes machines down, with the binaries as operators run them (JSON
//! logs): the RabbitMQ node that leads the work queue is killed (SIGKILL) mid-stream and started
//! again later; PostgreSQL is restarted mid-stream. Requests stream through the api into the worker
//! all along. Every request answered code 0 is emailed, once, or more only if its job was in flight
//! at the kill (each counted); the requests refused meanwhile are counted and all fall within the
//! outage; both binaries recover by themselves, without a restart.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use resetmail_shared::config::{
    AccountSource, BrokerConfig, DatabaseConfig, QueueType, RetryDelays, format_duration,
};
use resetmail_testkit::{
    PATIENCE,
    broker::{self, TestBroker},
    cluster::TestCluster,
    db::TestDb,
    eventually,
    pg_server::TestPgServer,
    process::{Process, assert_log_format, binary, http_get, http_post_json, log_field},
    smtp_sink::SmtpSink,
};
use sqlx::PgPool;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::per_recipient;

const OK: &str = r#"{"code":0,"msg":""}"#;

/// Clients sending requests at once, each at most one request per [`PACE`].
const CLIENTS: usize = 2;
const PACE: Duration = Duration::from_millis(40);

/// How long after an outage begins (or ends) a refusal still counts as caused by it.
const OUTAGE_WINDOW: Duration = Duration::from_secs(30);

/// Accounts made for the stream; it stops, failing the test, if it runs out.
const ACCOUNTS: usize = 20_000;

/// Requests confirmed in each phase: before the outage, during it, after it.
const PER_PHASE: usize = 100;

/// How long the whole backlog may take to be emailed once the stream has stopped.
const DRAIN: Duration = Duration::from_secs(120);

#[tokio::test]
async fn killing_the_broker_node_that_leads_the_work_queue_loses_no_confirmed_request() {
    let cluster = TestCluster::start().await;
    let db = TestDb::new().await;
    add_accounts(&db.pool).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let broker = BrokerConfig {
        nodes: broker::nodes(&cluster.urls()),
        queue_prefix: prefix.clone(),
        queue_type: QueueType::Quorum,
        retry_delays: RetryDelays::parse("1s,1s,1s,1s,1s").unwrap(),
    };
    let deployment = Deployment::start(&db.config.url, &broker).await;
    let stream = Stream::start(deployment.api_addr.clone());

    deployment
        .confirmed(&stream, None, PER_PHASE, PATIENCE)
        .await;
    deployment.sink.wait_for(PER_PHASE / 2, PATIENCE).await;

    let leader = cluster.leader(&format!("{prefix}.jobs"), 1).await;
    let emailed: HashSet<String> = per_recipient(&deployment.sink).into_keys().collect();
    let killed_at = Instant::now();
    cluster.kill(leader).await;
    let in_flight = stream.confirmed_not_in(&emailed);

    // Recovery without a restart: requests confirmed after the kill, and emailed.
    let after_kill = deployment
        .confirmed(&stream, Some(killed_at), PER_PHASE, 4 * PATIENCE)
        .await;
    let recovered_in = after_kill[0].answered_at - killed_at;
    wait_emailed(&deployment.sink, &after_kill[..1], 2 * PATIENCE).await;

    let restarted_at = Instant::now();
    cluster.start_node(leader).await;
    deployment
        .confirmed(&stream, Some(Instant::now()), PER_PHASE, 2 * PATIENCE)
        .await;
    let answers = stream.stop().await;

    let report = deployment
        .check(
            &answers,
            &[killed_at, restarted_at],
            &in_flight,
            &format!("node {leader} killed"),
        )
        .await;
    eprintln!("broker failover: first confirm {recovered_in:?} after the kill; {report}");
    // The worker is connected to a node, and says so in its metrics.
    let (_, metrics) = http_get(&deployment.worker_addr, "/metrics", PATIENCE).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("resetmail_broker_connected{") && line.ends_with(" 1")),
        "{metrics}"
    );
    deployment.stop().await;
}

#[tokio::test]
async fn restarting_postgresql_mid_stream_loses_no_confirmed_request_and_sends_none_twice() {
    let server = TestPgServer::start().await;
    let config = DatabaseConfig {
        url: format!("{}/resetmail", server.url()),
        pool_size: 2,
        accounts: AccountSource::Builtin,
    };
    let pool = resetmail_shared::db::connect(&config)
        .await
        .unwrap_or_else(|error| panic!("cannot migrate the private server: {error:#}"));
    add_accounts(&pool).await;
    pool.close().await;
    let broker = TestBroker::new().await;
    // The test's broker prefix and its retry delays: its clean-up removes every queue the
    // binaries declare.
    let deployment = Deployment::start(&config.url, &broker.config).await;
    let stream = Stream::start(deployment.api_addr.clone());

    deployment
        .confirmed(&stream, None, PER_PHASE, PATIENCE)
        .await;
    deployment.sink.wait_for(PER_PHASE / 2, PATIENCE).await;

    let down_at = Instant::now();
    server.down().await;
    // The api queues requests without the database; the worker meets the refusal and waits.
    deployment
        .confirmed(&stream, Some(down_at), PER_PHASE, 2 * PATIENCE)
        .await;
    deployment
        .worker
        .wait_for_line(
            "the worker meeting the database's absence",
            PATIENCE,
            |line| line.contains("\"level\":\"WARN\"") && line.contains("database"),
        )
        .await;
    let up_at = Instant::now();
    server.up().await;
    let after = deployment
        .confirmed(&stream, Some(Instant::now()), PER_PHASE, 2 * PATIENCE)
        .await;
    wait_emailed(&deployment.sink, &after[..1], 2 * PATIENCE).await;
    let answers = stream.stop().await;

    let report = deployment
        .check(
            &answers,
            &[down_at, up_at],
            &HashSet::new(),
            "PostgreSQL restarted",
        )
        .await;
    eprintln!("PostgreSQL restart: {report}");
    deployment.stop().await;
}

/// `user0@example.com` … as active accounts, in one statement.
async fn add_accounts(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO users (email) SELECT format('user%s@example.com', n) \
         FROM generate_series(0, $1 - 1) AS n",
    )
    .bind(i64::try_from(ACCOUNTS).unwrap_or(i64::MAX))
    .execute(pool)
    .await
    .unwrap_or_else(|error| panic!("cannot add the accounts: {error}"));
}

/// The api and the worker binaries, JSON logs, on one database, broker and SMTP sink.
struct Deployment {
    api: Process,
    worker: Process,
    api_addr: String,
    worker_addr: String,
    sink: SmtpSink,
}

impl Deployment {
    async fn start(database_url: &str, broker: &BrokerConfig) -> Self {
        let sink = SmtpSink::start().await;
        let delays: Vec<String> = broker
            .retry_delays
            .0
            .iter()
            .map(|d| format_duration(*d))
            .collect();
        let queue_type = match broker.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        let common = [
            ("DATABASE_URL", database_url.to_owned()),
            ("AMQP_URL", broker.nodes.to_env()),
            ("RESETMAIL_QUEUE_PREFIX", broker.queue_prefix.clone()),
            ("RESETMAIL_QUEUE_TYPE", queue_type.to_owned()),
            ("RESETMAIL_RETRY_DELAYS", delays.join(",")),
            ("RESETMAIL_LOG_FORMAT", "json".to_owned()),
            ("RESETMAIL_SHUTDOWN_TIMEOUT", "20s".to_owned()),
        ];
        let mut api_env = common.to_vec();
        api_env.extend([
            ("RESETMAIL_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("RESETMAIL_RATE_LIMIT", "1000000".to_owned()),
            ("RESETMAIL_RATE_BURST", "1000000".to_owned()),
        ]);
        let mut worker_env = common.to_vec();
        worker_env.extend([
            ("RESETMAIL_SMTP_URL", sink.url()),
            ("RESETMAIL_WORKER_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ]);
        let api = Process::start(&binary("resetmail-api"), &[], &api_env);
        let worker = Process::start(&binary("resetmail-worker"), &[], &worker_env);
        let api_addr = listening_on(&api, "resetmail-api listening").await;
        let worker_addr = listening_on(&worker, "serving /healthz").await;
        for addr in [&api_addr, &worker_addr] {
            eventually("both binaries ready", PATIENCE, || async {
                (http_get(addr, "/readyz", PATIENCE).await.0 == 200).then_some(())
            })
            .await;
        }
        Self {
            api,
            worker,
            api_addr,
            worker_addr,
            sink,
        }
    }

    /// Waits for `n` confirmed requests answered after `since`; fails with how requests were
    /// answered and both binaries' logs.
    async fn confirmed(
        &self,
        stream: &Stream,
        since: Option<Instant>,
        n: usize,
        within: Duration,
    ) -> Vec<Answer> {
        match stream.confirmed_since(since, n, within).await {
            Ok(confirmed) => confirmed,
            Err(why) => panic!("{why}; {}", self.save_logs()),
        }
    }

    /// Writes both binaries' logs to temporary files; where they are.
    fn save_logs(&self) -> String {
        let run = Uuid::new_v4().simple();
        let mut saved = Vec::new();
        for (name, process) in [("api", &self.api), ("worker", &self.worker)] {
            let path = std::env::temp_dir().join(format!("resetmail-failover-{run}-{name}.log"));
            let _ = std::fs::write(&path, process.stderr().join("\n"));
            saved.push(format!("the {name}'s log: {}", path.display()));
        }
        saved.join(", ")
    }

    /// Waits until every confirmed request is emailed and checks the stream's answers against the
    /// mail that arrived; a line of figures for the test's output.
    async fn check(
        &self,
        answers: &[Answer],
        outages: &[Instant],
        in_flight: &HashSet<String>,
        what: &str,
    ) -> String {
        let confirmed: Vec<&Answer> = answers.iter().filter(|answer| answer.is_ok()).collect();
        let missing = not_emailed(&self.sink, &confirmed, DRAIN).await;
        if !missing.is_empty() {
            let log =
                std::env::temp_dir().join(format!("resetmail-failover-{}.log", Uuid::new_v4()));
            let _ = std::fs::write(&log, self.worker.stderr().join("\n"));
            panic!(
                "{} confirmed requests never emailed ({what}), e.g. {:?}; the worker's log: {}",
                missing.len(),
                &missing[..missing.len().min(10)],
                log.display()
            );
        }

        let refused: Vec<&Answer> = answers
            .iter()
            .filter(|answer| answer.is_refusal())
            .collect();
        let other: Vec<&Answer> = answers
            .iter()
            .filter(|answer| !answer.is_ok() && !answer.is_refusal())
            .collect();
        assert!(
            other.is_empty(),
            "answers neither code 0 nor a refusal: {other:#?}"
        );
        for answer in &refused {
            assert!(
                outages.iter().any(|start| answer.answered_at >= *start
                    && answer.answered_at - *start <= OUTAGE_WINDOW),
                "{answer:?} was refused outside the outage ({what})"
            );
        }

        let emails = per_recipient(&self.sink);
        let mut duplicated = 0;
        for (email, count) in &emails {
            if *count > 1 {
                assert!(
                    in_flight.contains(email),
                    "{email} was emailed {count} times, and its job was not in flight at the outage"
                );
                duplicated += 1;
            }
        }
        // Nothing is emailed that nobody asked for.
        let asked: HashSet<&str> = answers.iter().map(|answer| answer.email.as_str()).collect();
        assert!(emails.keys().all(|email| asked.contains(email.as_str())));

        for process in [&self.api, &self.worker] {
            assert_log_format("json", &process.stderr());
        }
        for addr in [&self.api_addr, &self.worker_addr] {
            assert_eq!(http_get(addr, "/readyz", PATIENCE).await.0, 200, "{addr}");
        }
        // When the refusals came, after the outage's start.
        let span = |pick: fn(Duration, Duration) -> Duration| {
            refused
                .iter()
                .map(|answer| answer.answered_at - outages[0])
                .reduce(pick)
                .map_or("-".to_owned(), |at| format!("{:.1} s", at.as_secs_f64()))
        };
        format!(
            "{} requests, {} answered code 0 (all emailed), {} refused during the outage \
             (from {} to {} after it began), {duplicated} emailed twice (of {} in flight)",
            answers.len(),
            confirmed.len(),
            refused.len(),
            span(Duration::min),
            span(Duration::max),
            in_flight.len()
        )
    }

    async fn stop(mut self) {
        self.api.stop_cleanly(PATIENCE).await;
        self.worker.stop_cleanly(PATIENCE).await;
    }
}

/// The address a binary logs in its line containing `marker`.
async fn listening_on(process: &Process, marker: &str) -> String {
    let line = process
        .wait_for_line("the listening address", PATIENCE, |line| {
            line.contains(marker) && line.contains("http.addr")
        })
        .await;
    log_field(&line, "http.addr").unwrap_or_else(|| panic!("no http.addr on: {line}"))
}

/// Waits until every request of `answers` has been emailed at least once, at most `within`; the
/// addresses still not emailed then.
async fn not_emailed(sink: &SmtpSink, answers: &[&Answer], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let emails = per_recipient(sink);
        let missing: Vec<String> = answers
            .iter()
            .filter(|answer| !emails.contains_key(&answer.email))
            .map(|answer| answer.email.clone())
            .collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every request of `answers` has been emailed at least once.
async fn wait_emailed<A: std::borrow::Borrow<Answer>>(
    sink: &SmtpSink,
    answers: &[A],
    within: Duration,
) {
    eventually("an email for every confirmed request", within, || async {
        let emails = per_recipient(sink);
        answers
            .iter()
            .all(|answer| emails.contains_key(&answer.borrow().email))
            .then_some(())
    })
    .await;
}

/// One request of the stream and its answer.
#[derive(Clone, Debug)]
struct Answer {
    email: String,
    answered_at: Instant,
    status: u16,
    body: String,
}

impl Answer {
    fn is_ok(&self) -> bool {
        self.status == 200 && self.body == OK
    }

    /// 503 with 40028 (not queued: no broker, or no confirm in time) or 50005 (timed out).
    fn is_refusal(&self) -> bool {
        self.status == 503 && (self.body.contains("40028") || self.body.contains("50005"))
    }
}

/// Reset requests for `user0@…`, `user1@…` in turn, from [`CLIENTS`] clients each at most one
/// request per [`PACE`], until stopped.
struct Stream {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
    clients: Vec<JoinHandle<()>>,
}

impl Stream {
    fn start(addr: String) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let next = Arc::new(AtomicUsize::new(0));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (addr, answers, stop, next) =
                    (addr.clone(), answers.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut pace = tokio::time::interval(PACE);
                    while !stop.is_cancelled() {
                        pace.tick().await;
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        assert!(n < ACCOUNTS, "the stream ran out of accounts");
                        let email = format!("user{n}@example.com");
                        let body = format!(r#"{{"email":"{email}"}}"#);
                        let (status, body) =
                            http_post_json(&addr, "/api/v4/user/reset", &body, PATIENCE).await;
                        let answer = Answer {
                            email,
                            answered_at: Instant::now(),
                            status,
                            body,
                        };
                        answers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(answer);
                    }
                })
            })
            .collect();
        Self {
            answers,
            stop,
            clients,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests answered after `since` (or all) and confirmed, once there are `n`; or, after
    /// `within`, how the requests after `since` were answered.
    async fn confirmed_since(
        &self,
        since: Option<Instant>,
        n: usize,
        within: Duration,
    ) -> Result<Vec<Answer>, String> {
        let deadline = Instant::now() + within;
        loop {
            let answers: Vec<Answer> = self
                .answers()
                .into_iter()
                .filter(|answer| since.is_none_or(|t| answer.answered_at >= t))
                .collect();
            let confirmed: Vec<Answer> = answers.iter().filter(|a| a.is_ok()).cloned().collect();
            if confirmed.len() >= n {
                return Ok(confirmed);
            }
            if Instant::now() >= deadline {
                let mut tally = std::collections::BTreeMap::<String, usize>::new();
                for answer in &answers {
                    let code = serde_json::from_str::<serde_json::Value>(&answer.body)
                        .map(|body| body["code"].to_string())
                        .unwrap_or_else(|_| answer.body.clone());
                    *tally
                        .entry(format!("HTTP {} code {code}", answer.status))
                        .or_default() += 1;
                }
                return Err(format!(
                    "{} of {n} requests confirmed after {within:?}; the answers: {tally:?}",
                    confirmed.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Addresses whose request is confirmed by now and not among `emailed`: jobs in flight.
    fn confirmed_not_in(&self, emailed: &HashSet<String>) -> HashSet<String> {
        self.answers()
            .into_iter()
            .filter(|answer| answer.is_ok() && !emailed.contains(&answer.email))
            .map(|answer| answer.email)
            .collect()
    }

    async fn stop(mut self) -> Vec<Answer> {
        self.stop.cancel();
        for client in std::mem::take(&mut self.clients) {
            if let Err(error) = client.await {
                panic!("a client of the stream failed: {error}");
            }
        }
        self.answers()
    }
}
