//! `resetmail-worker` run as a process: jobs through SMTP, `/healthz`, `SIGTERM`, its logs.

use resetmail_shared::{
    EmailAddress, Job, PasswordResetJob,
    config::{DatabaseConfig, format_duration},
    db::users::UserStatus,
};
use resetmail_testkit::{
    PATIENCE,
    broker::{TestBroker, TestBrokerUser},
    cloudreve::{CloudreveDb, CloudreveUser, HASH_ID_SALT},
    db::TestDb,
    process::{Process, assert_log_format, assert_secret_absent, http_get, log_field},
    smtp_sink::SmtpSink,
};
use time::OffsetDateTime;
use uuid::Uuid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_resetmail-worker");

/// The environment of a worker on the test's database, broker prefix and SMTP server, serving its
/// HTTP port on any free port.
pub(crate) fn environment(
    database: &DatabaseConfig,
    broker: &TestBroker,
    sink: &SmtpSink,
) -> Vec<(&'static str, String)> {
    let delays: Vec<String> = broker
        .config
        .retry_delays
        .0
        .iter()
        .map(|delay| format_duration(*delay))
        .collect();
    vec![
        ("DATABASE_URL", database.url.clone()),
        ("AMQP_URL", broker.config.nodes.to_env()),
        ("RESETMAIL_QUEUE_PREFIX", broker.config.queue_prefix.clone()),
        ("RESETMAIL_RETRY_DELAYS", delays.join(",")),
        ("RESETMAIL_SMTP_URL", sink.url()),
        ("RESETMAIL_WORKER_HTTP_ADDR", "127.0.0.1:0".into()),
        ("RESETMAIL_SHUTDOWN_TIMEOUT", "20s".into()),
    ]
}

/// Queues a reset job for each address, as the api does.
pub(crate) async fn queue_jobs(broker: &TestBroker, addresses: &[String]) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for address in addresses {
        let job = PasswordResetJob {
            job_id: Uuid::new_v4(),
            email: EmailAddress::parse(address).unwrap(),
            correlation_id: Uuid::new_v4(),
            requested_at: OffsetDateTime::now_utc(),
        };
        let body = Job::PasswordReset(job.clone()).encode().unwrap();
        broker
            .publish_raw(&body, Some(&job.job_id.to_string()))
            .await;
        ids.push(job.job_id);
    }
    ids
}

/// `addresses.len()` active accounts.
pub(crate) async fn accounts(db: &TestDb, n: usize) -> Vec<String> {
    let mut addresses = Vec::new();
    for i in 0..n {
        let address = format!("user{i}@example.com");
        db.add_user(&address, Some("User"), None, UserStatus::Active)
            .await;
        addresses.push(address);
    }
    addresses
}

/// The address the worker's HTTP port listens on, read from its start-up line.
pub(crate) async fn http_addr(worker: &Process) -> String {
    let line = worker
        .wait_for_line("saying where /healthz is served", PATIENCE, |line| {
            line.contains("serving /healthz")
        })
        .await;
    log_field(&line, "http.addr").unwrap_or_else(|| panic!("no http.addr on: {line}"))
}

/// Five jobs go out, `/healthz` answers, SIGTERM stops the process cleanly; returns its log lines.
async fn serve_jobs_then_stop(format: &str) -> Vec<String> {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 5).await;
    let mut env = environment(&db.config, &broker, &sink);
    env.push(("RESETMAIL_LOG_FORMAT", format.into()));
    let mut worker = Process::start(BINARY, &[], &env);
    let addr = http_addr(&worker).await;
    let (status, metrics) = http_get(&addr, "/metrics", PATIENCE).await;
    assert_eq!(status, 200);
    for series in [
        r#"resetmail_worker_jobs_total{outcome="sent"} 0"#,
        r#"resetmail_worker_jobs_total{outcome="throttled"} 0"#,
        r#"resetmail_worker_retries_total{step="1"} 0"#,
        r#"resetmail_worker_retries_total{step="5"} 0"#,
        r#"resetmail_worker_dead_letters_total{class="permanent"} 0"#,
        "resetmail_worker_send_seconds_count 0",
        "resetmail_worker_jobs_in_flight 0",
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} is not served before the first job:\n{metrics}"
        );
    }

    let jobs = queue_jobs(&broker, &addresses).await;
    sink.wait_for(jobs.len(), PATIENCE).await;
    // Every job ends with its outcome line, after its last database write.
    for job in &jobs {
        worker
            .wait_for_line("with the job's outcome", PATIENCE, |line| {
                line.contains(&job.to_string()) && line.contains("reset email sent")
            })
            .await;
    }
    let (status, body) = http_get(&addr, "/healthz", PATIENCE).await;
    assert_eq!((status, body.as_str()), (200, r#"{"code":0,"msg":""}"#));
    let (status, _) = http_get(&addr, "/readyz", PATIENCE).await;
    assert_eq!(status, 200, "{:#?}", worker.stderr());

    let lines = worker.stop_cleanly(PATIENCE).await;
    assert_eq!(sink.received().len(), jobs.len(), "a second email was sent");
    assert_log_format(format, &lines);
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn with_json_logs_the_worker_sends_answers_healthz_and_stops_on_sigterm() {
    let lines = serve_jobs_then_stop("json").await;
    let sent: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains("reset email sent"))
        .collect();
    assert_eq!(sent.len(), 5, "{lines:#?}");
    for line in sent {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let correlation = parsed["span"]["correlation_id"]
            .as_str()
            .or(parsed["correlation_id"].as_str());
        assert!(
            correlation.is_some_and(|id| Uuid::try_parse(id).is_ok()),
            "no correlation id on: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_pretty_logs_the_worker_sends_answers_healthz_and_stops_on_sigterm() {
    let lines = serve_jobs_then_stop("pretty").await;
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.contains("reset email sent"))
            .count(),
        5,
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_reaches_the_logs_even_at_trace_level() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let amqp_user = TestBrokerUser::create().await;
    let smtp_password = format!("smtp-pw-{}", Uuid::new_v4().simple());
    sink.require_auth("mailer", &smtp_password);
    // PostgreSQL trusts local connections here, so the password is never asked for; it must not
    // be printed either.
    let mut database_url = url::Url::parse(&db.config.url).unwrap();
    let database_password = format!("pg-pw-{}", Uuid::new_v4().simple());
    let _ = database_url.set_password(Some(&database_password));
    let addresses = accounts(&db, 2).await;

    for format in ["json", "pretty"] {
        let mut env = environment(&db.config, &broker, &sink);
        env.retain(|(name, _)| {
            !matches!(*name, "DATABASE_URL" | "AMQP_URL" | "RESETMAIL_SMTP_URL")
        });
        env.extend([
            ("DATABASE_URL", database_url.to_string()),
            ("AMQP_URL", amqp_user.url()),
            (
                "RESETMAIL_SMTP_URL",
                format!("smtp://mailer:{smtp_password}@{}", sink.addr()),
            ),
            ("RESETMAIL_LOG_FORMAT", format.into()),
            ("RESETMAIL_ACCOUNT_COOLDOWN", "0s".into()),
            ("RUST_LOG", "trace".into()),
        ]);
        let mut worker = Process::start(BINARY, &[], &env);
        let before = sink.received().len();
        let jobs = queue_jobs(&broker, &addresses).await;
        sink.wait_for(before + jobs.len(), PATIENCE).await;
        let logs = worker.stop_cleanly(PATIENCE).await.join("\n");
        assert!(
            logs.contains("TRACE") || logs.contains(r#""level":"TRACE""#),
            "nothing was logged at trace level"
        );
        assert!(sink.logins() > 0, "the worker never logged in to SMTP");
        use base64::Engine as _;
        let auth_plain =
            base64::prelude::BASE64_STANDARD.encode(format!("\0mailer\0{smtp_password}"));
        assert_secret_absent(&logs, "the AMQP password", &amqp_user.password, &[]);
        assert_secret_absent(&logs, "the SMTP password", &smtp_password, &[auth_plain]);
        assert_secret_absent(&logs, "the PostgreSQL password", &database_password, &[]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_http_address_that_is_taken_stops_the_worker_at_start_up() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let mut env = environment(&db.config, &broker, &sink);
    env.retain(|(name, _)| *name != "RESETMAIL_WORKER_HTTP_ADDR");
    env.push(("RESETMAIL_WORKER_HTTP_ADDR", taken_addr.to_string()));
    let mut worker = Process::start(BINARY, &[], &env);
    let exit = worker.wait_exit(PATIENCE).await;
    assert!(!exit.success(), "the worker ran without its health port");
    let logs = worker.stderr().join("\n");
    assert!(
        logs.contains(&taken_addr.to_string()) && logs.contains("in use"),
        "the error does not say which address is taken:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_cloudreve_mode_sighup_rereads_the_sites_settings_and_no_secret_is_logged() {
    let site = CloudreveDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let old_password = format!("smtp-pw-{}", Uuid::new_v4().simple());
    let new_password = format!("smtp-pw-{}", Uuid::new_v4().simple());
    sink.require_auth("mailer", &old_password);
    for (name, value) in [
        ("smtpHost", "127.0.0.1".to_owned()),
        ("smtpPort", sink.port().to_string()),
        ("smtpUser", "mailer".to_owned()),
        ("smtpPass", old_password.clone()),
        ("smtpEncryption", "0".to_owned()),
    ] {
        site.set_setting(name, &value).await;
    }
    site.add_user(&CloudreveUser::active("jane@example.com"))
        .await;
    let mut env = environment(&site.config, &broker, &sink);
    env.retain(|(name, _)| *name != "RESETMAIL_SMTP_URL");
    env.extend([
        ("RESETMAIL_ACCOUNT_SOURCE", "cloudreve".to_owned()),
        // Only the signal makes it read them again here.
        ("RESETMAIL_SETTINGS_REFRESH", "1h".to_owned()),
        ("RESETMAIL_LOG_FORMAT", "json".to_owned()),
    ]);
    let mut worker = Process::start(BINARY, &[], &env);
    http_addr(&worker).await;

    // As an administrator does in Cloudreve's dashboard, then tells resetmail.
    sink.require_auth("mailer", &new_password);
    site.set_setting("smtpPass", &new_password).await;
    site.set_setting("siteName", "Renamed Cloud").await;
    worker.signal("HUP");
    let changed = worker
        .wait_for_line("saying which settings changed", PATIENCE, |line| {
            line.contains("the site's settings changed")
        })
        .await;
    assert!(
        changed.contains("smtpPass") && changed.contains("siteName"),
        "{changed}"
    );
    queue_jobs(&broker, &["jane@example.com".to_owned()]).await;
    let mails = sink.wait_for(1, PATIENCE).await;
    assert!(
        mails[0].parsed().subject.starts_with("[Renamed Cloud]"),
        "{}",
        mails[0].parsed().subject
    );
    assert_eq!(sink.logins(), 1, "the new password was not used");

    let logs = worker.stop_cleanly(PATIENCE).await.join("\n");
    assert_log_format("json", &logs.lines().map(str::to_owned).collect::<Vec<_>>());
    assert_secret_absent(&logs, "the old SMTP password", &old_password, &[]);
    assert_secret_absent(&logs, "the new SMTP password", &new_password, &[]);
    assert_secret_absent(&logs, "the site's hash_id_salt", HASH_ID_SALT, &[]);
}
