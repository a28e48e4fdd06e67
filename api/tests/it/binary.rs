//! `resetmail-api` run as a process: reset requests queued, `/healthz`, `SIGTERM`, its logs.

use resetmail_shared::config::DatabaseConfig;
use resetmail_testkit::{
    PATIENCE,
    broker::{TestBroker, TestBrokerUser},
    cloudreve::CloudreveDb,
    db::TestDb,
    process::{
        Process, assert_log_format, assert_secret_absent, http_get, http_post_json, log_field,
    },
};
use uuid::Uuid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_resetmail-api");

/// The environment of an api on the test's database and broker prefix, on any free port.
pub fn environment(database: &DatabaseConfig, broker: &TestBroker) -> Vec<(&'static str, String)> {
    let delays: Vec<String> = broker
        .config
        .retry_delays
        .0
        .iter()
        .map(|delay| resetmail_shared::config::format_duration(*delay))
        .collect();
    vec![
        ("DATABASE_URL", database.url.clone()),
        ("AMQP_URL", broker.config.nodes.to_env()),
        ("RESETMAIL_QUEUE_PREFIX", broker.config.queue_prefix.clone()),
        ("RESETMAIL_RETRY_DELAYS", delays.join(",")),
        ("RESETMAIL_HTTP_ADDR", "127.0.0.1:0".into()),
        // Every request of a test comes from one address.
        ("RESETMAIL_RATE_LIMIT", "100000".into()),
        ("RESETMAIL_RATE_BURST", "100000".into()),
    ]
}

/// The address the api listens on, read from its start-up line (JSON or pretty).
pub async fn http_addr(api: &Process) -> String {
    let line = api
        .wait_for_line("saying where the api listens", PATIENCE, |line| {
            line.contains("resetmail-api listening")
        })
        .await;
    log_field(&line, "http.addr").unwrap_or_else(|| panic!("no http.addr on: {line}"))
}

/// Posts a reset until the api's broker connection is up, then `requests` more;
/// every answer must be code 0.
async fn ask_resets(addr: &str, requests: usize) {
    // The api answers 503 / 40028 until its publisher has connected; that is its contract.
    resetmail_testkit::eventually("the api to queue a request", PATIENCE, || async {
        let (status, body) = http_post_json(
            addr,
            "/api/v4/user/reset",
            r#"{"email":"first@example.com"}"#,
            PATIENCE,
        )
        .await;
        (status == 200 && body == r#"{"code":0,"msg":""}"#).then_some(())
    })
    .await;
    for i in 0..requests {
        let (status, body) = http_post_json(
            addr,
            "/api/v4/user/reset",
            &format!(r#"{{"email":"user{i}@example.com"}}"#),
            PATIENCE,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, r#"{"code":0,"msg":""}"#));
    }
}

/// Queues requests, answers `/healthz`, stops on SIGTERM, all its lines in `format`.
async fn serve_then_stop(format: &str) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let mut env = environment(&db.config, &broker);
    env.push(("RESETMAIL_LOG_FORMAT", format.into()));
    let mut api = Process::start(BINARY, &[], &env);
    let addr = http_addr(&api).await;
    let (status, metrics) = http_get(&addr, "/metrics", PATIENCE).await;
    assert_eq!(status, 200);
    for series in [
        r#"resetmail_api_publish_failures_total{reason="unavailable"} 0"#,
        r#"resetmail_api_publish_failures_total{reason="timeout"} 0"#,
        "resetmail_api_rate_limited_total 0",
        "resetmail_api_publish_seconds_count 0",
        r#"resetmail_api_requests_total{route="/api/v4/user/reset",code="0"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "{series} is not served before the first request:\n{metrics}"
        );
    }

    ask_resets(&addr, 5).await;
    broker
        .wait_for_count(&broker.topology.work_queue(), 6, PATIENCE)
        .await;
    let (status, body) = http_get(&addr, "/healthz", PATIENCE).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&addr, "/readyz", PATIENCE).await;
    assert_eq!(status, 200, "{body}");

    let lines = api.stop_cleanly(PATIENCE).await;
    assert_log_format(format, &lines);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("connected to the broker")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_json_logs_the_api_queues_answers_healthz_and_stops_on_sigterm() {
    serve_then_stop("json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_pretty_logs_the_api_queues_answers_healthz_and_stops_on_sigterm() {
    serve_then_stop("pretty").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_credential_reaches_the_api_logs_even_at_trace_level() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let amqp_user = TestBrokerUser::create().await;
    let mut database_url = url::Url::parse(&db.config.url).unwrap();
    let database_password = format!("pg-pw-{}", Uuid::new_v4().simple());
    let _ = database_url.set_password(Some(&database_password));
    for format in ["json", "pretty"] {
        let mut env = environment(&db.config, &broker);
        env.retain(|(name, _)| !matches!(*name, "DATABASE_URL" | "AMQP_URL"));
        env.extend([
            ("DATABASE_URL", database_url.to_string()),
            ("AMQP_URL", amqp_user.url()),
            ("RESETMAIL_LOG_FORMAT", format.into()),
            ("RUST_LOG", "trace".into()),
        ]);
        let mut api = Process::start(BINARY, &[], &env);
        let addr = http_addr(&api).await;
        ask_resets(&addr, 1).await;
        let logs = api.stop_cleanly(PATIENCE).await.join("\n");
        assert!(logs.contains("TRACE"), "nothing was logged at trace level");
        assert_secret_absent(&logs, "the AMQP password", &amqp_user.password, &[]);
        assert_secret_absent(&logs, "the PostgreSQL password", &database_password, &[]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_cloudreve_mode_sighup_applies_the_sites_new_captcha_and_logs_no_secret() {
    let site = CloudreveDb::new().await;
    let broker = TestBroker::new().await;
    let mut env = environment(&site.config, &broker);
    env.extend([
        ("RESETMAIL_ACCOUNT_SOURCE", "cloudreve".to_owned()),
        // Only the signal makes it read them again here.
        ("RESETMAIL_SETTINGS_REFRESH", "1h".to_owned()),
        ("RESETMAIL_LOG_FORMAT", "json".to_owned()),
    ]);
    let mut api = Process::start(BINARY, &[], &env);
    let addr = http_addr(&api).await;
    ask_resets(&addr, 1).await;

    // As an administrator does in Cloudreve's dashboard, then tells resetmail.
    let secret = format!("rc-secret-{}", Uuid::new_v4().simple());
    site.set_setting("captcha_type", "recaptcha").await;
    site.set_setting("captcha_ReCaptchaSecret", &secret).await;
    site.set_setting("forget_captcha", "1").await;
    api.signal("HUP");
    api.wait_for_line("saying which settings changed", PATIENCE, |line| {
        line.contains("the site's settings changed") && line.contains("forget_captcha")
    })
    .await;
    // No token: refused as Cloudreve's reCAPTCHA refuses, before any provider is asked.
    let (status, body) = http_post_json(
        &addr,
        "/api/v4/user/reset",
        r#"{"email":"jane@example.com"}"#,
        PATIENCE,
    )
    .await;
    let body: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"));
    assert_eq!(
        (status, &body["code"], &body["msg"]),
        (
            200,
            &serde_json::json!(40026),
            &serde_json::json!("Verification failed, please refresh the page and retry.")
        )
    );

    let logs = api.stop_cleanly(PATIENCE).await.join("\n");
    assert_secret_absent(&logs, "the site's reCAPTCHA secret", &secret, &[]);
}
