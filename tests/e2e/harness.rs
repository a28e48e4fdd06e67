//! The processes under test, started from their libraries: an api served on a real TCP port and a
//! worker consuming, both on the test's own database and queue prefix, mail going to an SMTP sink.

use std::time::Duration;

use clap::Parser as _;
use resetmail_api::{captcha::graphic::CaptchaSecret, config::ApiConfig, publisher::Publisher};
use resetmail_shared::{
    EmailAddress, Job, PasswordResetJob,
    config::{BrokerConfig, DatabaseConfig},
    db::deliveries::{self, Delivery, Outcome},
};
use resetmail_testkit::{
    PATIENCE, broker::TestBroker, db::TestDb, eventually, smtp_sink::SmtpSink,
};
use resetmail_worker::config::WorkerConfig;
use time::OffsetDateTime;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The site the worker's links point to in tests.
pub const SITE_URL: &str = "https://cloud.example.com";
/// The site name in tests.
pub const SITE_NAME: &str = "Example Cloud";
/// The graphic captcha's key in tests, unless a test gives its own `--captcha-secret`.
pub const CAPTCHA_SECRET: &str = "tests-captcha-secret-0123456789abcdef";

#[derive(clap::Parser)]
struct Cli<T: clap::Args> {
    #[command(flatten)]
    config: T,
}

/// A configuration parsed from flags as an operator would give them, on the test's database and broker.
fn parse<T: clap::Args>(args: &[&str]) -> T {
    Cli::<T>::try_parse_from(args).unwrap().config
}

/// The api's configuration, on the test's database and broker, with `extra` flags.
pub fn api_config(database: &DatabaseConfig, broker: &BrokerConfig, extra: &[&str]) -> ApiConfig {
    let mut args = vec!["resetmail-api"];
    if !extra.contains(&"--publish-timeout") {
        args.extend_from_slice(&["--publish-timeout", "2s"]);
    }
    // Tests send many requests from one address; the rate-limit tests set their own limits.
    if !extra.contains(&"--rate-limit") {
        args.extend_from_slice(&["--rate-limit", "1000000", "--rate-burst", "1000000"]);
    }
    if !extra.contains(&"--captcha-secret") {
        args.extend_from_slice(&["--captcha-secret", CAPTCHA_SECRET]);
    }
    args.extend_from_slice(extra);
    let mut config: ApiConfig = parse(&args);
    config.database = database.clone();
    config.broker = broker.clone();
    config
}

/// The worker's configuration, sending to `sink`, with `extra` flags.
pub fn worker_config(
    database: &DatabaseConfig,
    broker: &BrokerConfig,
    sink: &SmtpSink,
    extra: &[&str],
) -> WorkerConfig {
    let url = sink.url();
    let mut args = vec![
        "resetmail-worker",
        "--smtp-url",
        &url,
        "--smtp-timeout",
        "10s",
        "--site-url",
        SITE_URL,
        "--site-name",
        SITE_NAME,
        "--mail-from",
        "Example Cloud <no-reply@cloud.example.com>",
        "--requeue-delay",
        "50ms",
        "--worker-http-addr",
        "off",
    ];
    args.extend_from_slice(extra);
    let mut config: WorkerConfig = parse(&args);
    config.database = database.clone();
    config.broker = broker.clone();
    config
}

/// The graphic captcha's key of an api started with `secret`.
pub fn captcha_secret(secret: &str) -> CaptchaSecret {
    secret
        .parse()
        .unwrap_or_else(|error| panic!("captcha secret: {error}"))
}

/// A running worker; stopped gracefully when dropped or by [`TestWorker::stop`].
pub struct TestWorker {
    /// Where its `/healthz`, `/readyz` and `/metrics` answer (`host:port`).
    pub addr: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestWorker {
    /// Starts a worker with `config` as `resetmail-worker` runs it, serving its HTTP port on a
    /// listener of the test's own ([`TestWorker::addr`]).
    pub fn start(config: WorkerConfig) -> TestWorker {
        resetmail_testkit::init_logs();
        // Tests that talk HTTP to the worker use the same TLS provider as everything else.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shutdown = CancellationToken::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let task = tokio::spawn(resetmail_worker::run_with_listener(
            config,
            Some(listener),
            shutdown.clone(),
        ));
        TestWorker {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Asks the worker to stop and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(PATIENCE, task).await;
            match result {
                Ok(Ok(Ok(()))) => {}
                other => panic!("the worker did not stop cleanly: {other:?}"),
            }
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A running api.
pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub publisher: Publisher,
    shutdown: CancellationToken,
}

impl TestApi {
    /// Serves the api and waits until its publisher is connected.
    pub async fn start(db: &TestDb, broker: &BrokerConfig) -> TestApi {
        Self::start_with(db, broker, &[]).await
    }

    /// Serves the api configured with `extra` flags, and waits until its publisher is connected.
    pub async fn start_with(db: &TestDb, broker: &BrokerConfig, extra: &[&str]) -> TestApi {
        Self::start_configured(api_config(&db.config, broker, extra)).await
    }

    /// Serves the api configured with `config`, and waits until its publisher is connected.
    pub async fn start_configured(config: ApiConfig) -> TestApi {
        let api = Self::serve(config).await;
        eventually("the api's broker connection", PATIENCE, || async {
            api.publisher.is_connected().then_some(())
        })
        .await;
        api
    }

    /// The api as `resetmail-api` builds and serves it, on a listener of the test's own.
    async fn serve(config: ApiConfig) -> TestApi {
        resetmail_testkit::init_logs();
        // The test's HTTP client uses the same TLS provider as the api's captcha client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shutdown = CancellationToken::new();
        let api = resetmail_api::Api::build(config, &shutdown)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
        let publisher = api.publisher();
        let (listener, base) = local_listener().await;
        tokio::spawn(api.run_with_listener(listener, shutdown.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        TestApi {
            base,
            client,
            publisher,
            shutdown,
        }
    }

    /// POSTs a JSON body to the reset endpoint.
    pub async fn post_reset(&self, body: &str) -> Answer {
        self.send(
            self.client
                .post(format!("{}/api/v4/user/reset", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// Sends any request and reads the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("no answer: {error}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let correlation_header = headers
            .get("x-cr-correlation-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
        Answer {
            headers,
            status,
            text,
            json,
            correlation_header,
        }
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub headers: reqwest::header::HeaderMap,
    pub status: u16,
    pub text: String,
    pub json: serde_json::Value,
    pub correlation_header: Option<String>,
}

/// A fresh database and broker prefix with an api on them.
pub async fn setup_api() -> (TestDb, TestBroker, TestApi) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start(&db, &broker.config).await;
    (db, broker, api)
}

/// A job for `email`, requested now.
pub fn job_for(email: &str) -> PasswordResetJob {
    PasswordResetJob {
        job_id: Uuid::new_v4(),
        email: EmailAddress::parse(email).unwrap_or_else(|error| panic!("{email}: {error}")),
        correlation_id: Uuid::new_v4(),
        requested_at: OffsetDateTime::now_utc(),
    }
}

/// Publishes `job` straight to the work queue, as the api would.
pub async fn publish(broker: &TestBroker, job: &PasswordResetJob) {
    broker
        .publish_raw(
            &Job::PasswordReset(job.clone()).encode().unwrap(),
            Some(&job.job_id.to_string()),
        )
        .await;
}

/// Waits until the job's outcome is final.
pub async fn decided(db: &TestDb, job_id: Uuid) -> Delivery {
    eventually(
        &format!("a final outcome for job {job_id}"),
        PATIENCE,
        || async {
            deliveries::find(&db.pool, job_id)
                .await
                .ok()
                .flatten()
                .filter(|row| row.outcome != Outcome::Pending)
        },
    )
    .await
}

/// The opaque user id and the secret of the reset link in an email's text part.
pub fn reset_link(mail: &resetmail_testkit::smtp_sink::ParsedMail) -> (String, String) {
    let prefix = format!("{SITE_URL}/session/reset?id=");
    let start = mail
        .text
        .find(&prefix)
        .unwrap_or_else(|| panic!("no reset link in:\n{}", mail.text));
    let link: String = mail.text[start + prefix.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let (id, secret) = link
        .split_once("&secret=")
        .unwrap_or_else(|| panic!("malformed link {link}"));
    (id.to_owned(), secret.to_owned())
}

impl TestApi {
    /// PATCHes the redeem endpoint for user `id`.
    pub async fn redeem(&self, id: &str, body: serde_json::Value) -> Answer {
        self.send(
            self.client
                .patch(format!("{}/api/v4/user/reset/{id}", self.base))
                .json(&body),
        )
        .await
    }
}

/// Waits until `n` deliveries say sent.
pub async fn sent_rows(db: &TestDb, n: i64) {
    eventually(&format!("{n} deliveries to say sent"), PATIENCE, || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE outcome = 'sent'")
                .fetch_one(&db.pool)
                .await
                .ok()?;
        (sent == n).then_some(())
    })
    .await;
}

/// How many emails each recipient got.
pub fn per_recipient(sink: &SmtpSink) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for mail in sink.received() {
        *counts.entry(mail.rcpt_to.join(",")).or_insert(0) += 1;
    }
    counts
}

/// A listener on a free loopback port, and its base URL `http://127.0.0.1:port`.
pub async fn local_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, format!("http://{addr}"))
}
