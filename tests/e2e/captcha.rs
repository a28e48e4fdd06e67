//! Captcha before a reset: the graphic flow end to end, and each third-party provider against a fake
//! verifier served by the test.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing};
use base64::Engine as _;
use resetmail_api::captcha::graphic::{TICKET_LEN, answer_hash};
use resetmail_testkit::{broker::TestBroker, db::TestDb};
use serde_json::json;

use crate::harness::{Answer, CAPTCHA_SECRET, TestApi, captcha_secret};

const OK: &str = r#"{"code":0,"msg":""}"#;

async fn post(api: &TestApi, body: serde_json::Value) -> Answer {
    api.post_reset(&body.to_string()).await
}

fn assert_refused(answer: &Answer, msg: &str, case: &str) {
    assert_eq!(answer.status, 200, "{case}: {}", answer.text);
    assert_eq!(answer.json["code"], json!(40026), "{case}: {}", answer.text);
    assert_eq!(answer.json["msg"], json!(msg), "{case}");
    assert!(
        answer.json["correlation_id"].is_string(),
        "{case}: {}",
        answer.text
    );
}

/// Fetches a captcha and sets its answer to `answer` (the test cannot read the picture).
async fn captcha_answered(api: &TestApi, db: &TestDb, answer: &str) -> String {
    let fetched = api
        .send(api.client.get(format!("{}/api/v4/site/captcha", api.base)))
        .await;
    assert_eq!(
        (fetched.status, fetched.json["code"].clone()),
        (200, json!(0)),
        "{}",
        fetched.text
    );
    let ticket = fetched.json["data"]["ticket"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sqlx::query("UPDATE captcha_tickets SET answer_hash = $2 WHERE ticket = $1")
        .bind(&ticket)
        .bind(answer_hash(&captcha_secret(CAPTCHA_SECRET), &ticket, answer).as_slice())
        .execute(&db.pool)
        .await
        .unwrap();
    ticket
}

#[tokio::test]
async fn the_graphic_captcha_is_a_png_with_a_ticket_that_lives_ten_minutes() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start(&db, &broker.config).await;

    let fetched = api
        .send(api.client.get(format!("{}/api/v4/site/captcha", api.base)))
        .await;
    assert_eq!(
        (
            fetched.status,
            fetched.json["code"].clone(),
            fetched.json["msg"].clone()
        ),
        (200, json!(0), json!(""))
    );
    let ticket = fetched.json["data"]["ticket"].as_str().unwrap_or_default();
    assert_eq!(ticket.len(), TICKET_LEN);
    assert!(
        ticket.chars().all(|c| c.is_ascii_alphanumeric()),
        "{ticket}"
    );
    let image = fetched.json["data"]["image"].as_str().unwrap_or_default();
    let png = image
        .strip_prefix("data:image/png;base64,")
        .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
        .unwrap_or_else(|| panic!("not a PNG data URI: {}", &image[..image.len().min(60)]));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let size = (
        u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
        u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
    );
    assert_eq!(size, (240, 60));

    let lives: f64 = sqlx::query_scalar("SELECT extract(epoch FROM expires_at - now())::float8 FROM captcha_tickets WHERE ticket = $1")
        .bind(ticket)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!((590.0..=600.0).contains(&lives), "{lives}");
    let other = api
        .send(api.client.get(format!("{}/api/v4/site/captcha", api.base)))
        .await;
    assert_ne!(other.json["data"]["ticket"], fetched.json["data"]["ticket"]);
}

#[tokio::test]
async fn the_graphic_captcha_lets_only_a_right_fresh_unused_answer_through() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start_with(&db, &broker.config, &["--captcha", "normal"]).await;
    let work_queue = broker.topology.work_queue();
    let not_match = "CAPTCHA not match.";

    // Wrong answer: refused, and the ticket is spent.
    let ticket = captcha_answered(&api, &db, "K7PX3A").await;
    assert_refused(
        &post(
            &api,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": "K7PX3B"}),
        )
        .await,
        not_match,
        "wrong",
    );
    assert_refused(
        &post(
            &api,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": "K7PX3A"}),
        )
        .await,
        not_match,
        "reused after a wrong answer",
    );
    // Missing parts and unknown tickets.
    assert_refused(
        &post(&api, json!({"email": "a@b.co"})).await,
        not_match,
        "no captcha",
    );
    assert_refused(
        &post(
            &api,
            json!({"email": "a@b.co", "ticket": "nope", "captcha": "K7PX3A"}),
        )
        .await,
        not_match,
        "unknown ticket",
    );
    let ticket = captcha_answered(&api, &db, "K7PX3A").await;
    assert_refused(
        &post(&api, json!({"email": "a@b.co", "ticket": ticket})).await,
        not_match,
        "no answer",
    );
    assert_eq!(
        broker.count(&work_queue).await,
        0,
        "a refused request published a job"
    );

    // Right answer, in other case: through; the same ticket again: refused.
    let ticket = captcha_answered(&api, &db, "K7PX3A").await;
    assert_eq!(
        post(
            &api,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": "k7px3a"})
        )
        .await
        .text,
        OK
    );
    assert_eq!(broker.count(&work_queue).await, 1);
    assert_refused(
        &post(
            &api,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": "K7PX3A"}),
        )
        .await,
        not_match,
        "reused after a right answer",
    );

    // Expired: refused even when right.
    let ticket = captcha_answered(&api, &db, "K7PX3A").await;
    sqlx::query(
        "UPDATE captcha_tickets SET expires_at = now() - interval '1 second' WHERE ticket = $1",
    )
    .bind(&ticket)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_refused(
        &post(
            &api,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": "K7PX3A"}),
        )
        .await,
        not_match,
        "expired",
    );
    assert_eq!(broker.count(&work_queue).await, 1);
}

#[tokio::test]
async fn expired_captcha_tickets_are_pruned() {
    let db = TestDb::new().await;
    let hash = answer_hash(&captcha_secret(CAPTCHA_SECRET), "t", "A");
    for (ticket, ttl) in [
        ("fresh", Duration::from_secs(600)),
        ("stale", Duration::from_millis(1)),
    ] {
        resetmail_shared::db::captcha_tickets::insert(&db.pool, ticket, &hash, ttl)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE captcha_tickets SET expires_at = now() - interval '1 second' WHERE ticket = 'stale'")
        .execute(&db.pool)
        .await
        .unwrap();
    let pruned = resetmail_shared::db::captcha_tickets::prune(&db.pool)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT ticket FROM captcha_tickets")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, ["fresh"]);
}

/// Every answer of `length` characters the graphic captcha can draw.
fn every_answer(length: u32) -> impl Iterator<Item = String> {
    let alphabet = resetmail_api::captcha::graphic::ANSWER_ALPHABET;
    let base = alphabet.len();
    (0..base.pow(length)).map(move |mut n| {
        (0..length)
            .map(|_| {
                let character = char::from(alphabet[n % base]);
                n /= base;
                character
            })
            .collect()
    })
}

/// A ticket issued by `api`, and the hash stored for its (unknown) answer.
async fn issued(api: &TestApi, db: &TestDb) -> (String, Vec<u8>) {
    let fetched = api
        .send(api.client.get(format!("{}/api/v4/site/captcha", api.base)))
        .await;
    let ticket = fetched.json["data"]["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("no ticket: {}", fetched.text))
        .to_owned();
    let stored = sqlx::query_scalar("SELECT answer_hash FROM captcha_tickets WHERE ticket = $1")
        .bind(&ticket)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (ticket, stored)
}

/// The answers of `length` characters whose hash under `hash` is `stored`, tried in a blocking thread.
async fn answers_matching(
    length: u32,
    stored: &[u8],
    hash: impl Fn(&str) -> [u8; 32] + Send + 'static,
) -> Vec<String> {
    let stored = stored.to_vec();
    tokio::task::spawn_blocking(move || {
        every_answer(length)
            .filter(|answer| hash(answer).as_slice() == stored.as_slice())
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn graphic_answers_are_stored_keyed_so_only_replicas_that_share_the_secret_can_check_them() {
    use sha2::Digest as _;
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    // Four characters: 23^4 answers, few enough for this test to try them all.
    let shared = "the-secret-every-replica-shares-0123456789";
    let other = "another-secret-of-another-deployment-0123";
    let flags = |secret| {
        [
            "--captcha",
            "normal",
            "--captcha-length",
            "4",
            "--captcha-secret",
            secret,
        ]
    };
    let replica_a = TestApi::start_with(&db, &broker.config, &flags(shared)).await;
    let replica_b = TestApi::start_with(&db, &broker.config, &flags(shared)).await;
    let stranger = TestApi::start_with(&db, &broker.config, &flags(other)).await;

    // Whoever reads the table but lacks the secret cannot find the answer: no answer's plain
    // SHA-256 is the stored hash, nor its HMAC under another secret.
    let (ticket, stored) = issued(&replica_a, &db).await;
    let unkeyed_ticket = ticket.clone();
    let unkeyed = answers_matching(4, &stored, move |answer| {
        sha2::Sha256::new()
            .chain_update(unkeyed_ticket.as_bytes())
            .chain_update(b"\n")
            .chain_update(answer.as_bytes())
            .finalize()
            .into()
    })
    .await;
    assert_eq!(unkeyed, Vec::<String>::new(), "found without any secret");
    let (other_key, other_ticket) = (captcha_secret(other), ticket.clone());
    let under_other = answers_matching(4, &stored, move |answer| {
        answer_hash(&other_key, &other_ticket, answer)
    })
    .await;
    assert_eq!(
        under_other,
        Vec::<String>::new(),
        "found with another secret"
    );

    // With the secret, exactly one answer is the stored one, and another replica sharing the secret
    // takes it.
    let (key, right_ticket) = (captcha_secret(shared), ticket.clone());
    let right = answers_matching(4, &stored, move |answer| {
        answer_hash(&key, &right_ticket, answer)
    })
    .await;
    assert_eq!(right.len(), 1, "{right:?}");
    assert_eq!(
        post(
            &replica_b,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": right[0].to_lowercase()}),
        )
        .await
        .text,
        OK
    );

    // An api with another secret refuses the right answer.
    let (ticket, stored) = issued(&replica_a, &db).await;
    let (key, right_ticket) = (captcha_secret(shared), ticket.clone());
    let right = answers_matching(4, &stored, move |answer| {
        answer_hash(&key, &right_ticket, answer)
    })
    .await;
    assert_eq!(right.len(), 1, "{right:?}");
    assert_refused(
        &post(
            &stranger,
            json!({"email": "a@b.co", "ticket": ticket, "captcha": right[0]}),
        )
        .await,
        "CAPTCHA not match.",
        "right answer, another secret",
    );
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 1);
}

/// A stand-in for a provider's siteverify endpoint; its verdict depends on the token.
pub struct FakeVerifier {
    /// `http://127.0.0.1:port`.
    base: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl FakeVerifier {
    pub async fn start() -> FakeVerifier {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/{*path}", routing::post(verdict))
            .with_state(seen.clone());
        let (listener, base) = crate::harness::local_listener().await;
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeVerifier { base, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// (path, content type, body) of every request so far.
    pub fn seen(&self) -> Vec<(String, String, String)> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }
}

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

async fn verdict(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, String) {
    let body = String::from_utf8_lossy(&body).into_owned();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if let Ok(mut seen) = seen.lock() {
        seen.push((uri.path().to_owned(), content_type, body.clone()));
    }
    let token = ["good", "bad", "slow", "junk", "broken"]
        .into_iter()
        .find(|token| {
            body.contains(&format!("response={token}"))
                || body.contains(&format!("\"response\":\"{token}\""))
        });
    match token {
        Some("good") => (axum::http::StatusCode::OK, r#"{"success":true}"#.into()),
        // A provider that hangs; the api's timeout (300 ms in these tests) must give up first.
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (axum::http::StatusCode::OK, r#"{"success":true}"#.into())
        }
        Some("junk") => (
            axum::http::StatusCode::OK,
            "<html>not a verdict</html>".into(),
        ),
        Some("broken") => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"success":true}"#.into(),
        ),
        _ => (
            axum::http::StatusCode::OK,
            r#"{"success":false,"error-codes":["invalid-input-response"]}"#.into(),
        ),
    }
}

/// Runs the provider cases: the token goes in `field`; failures answer `msg`.
async fn provider_cases(
    kind: &str,
    field: &str,
    msg: &str,
    flags: &[&str],
    verifier: &FakeVerifier,
    expected_path: &str,
    secret: &str,
) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let mut args = vec!["--captcha", kind, "--captcha-timeout", "300ms"];
    args.extend_from_slice(flags);
    let api = TestApi::start_with(&db, &broker.config, &args).await;
    let work_queue = broker.topology.work_queue();

    assert_eq!(
        post(&api, json!({"email": "a@b.co", field: "good"}))
            .await
            .text,
        OK,
        "{kind}: accepted token"
    );
    assert_eq!(broker.count(&work_queue).await, 1);
    for token in ["bad", "slow", "junk", "broken"] {
        assert_refused(
            &post(&api, json!({"email": "a@b.co", field: token})).await,
            msg,
            &format!("{kind}: {token}"),
        );
    }
    let before = verifier.seen().len();
    assert_refused(
        &post(&api, json!({"email": "a@b.co"})).await,
        msg,
        &format!("{kind}: no token"),
    );
    assert_eq!(
        verifier.seen().len(),
        before,
        "{kind}: a missing token must not be sent to the provider"
    );
    assert_eq!(
        broker.count(&work_queue).await,
        1,
        "{kind}: a refused request published a job"
    );

    let (path, content_type, body) = verifier.seen().first().cloned().unwrap_or_default();
    assert_eq!(path, expected_path, "{kind}");
    assert!(
        body.contains(secret),
        "{kind}: the secret was not sent: {body}"
    );
    if kind == "cap" {
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
    } else {
        assert!(
            content_type.starts_with("application/x-www-form-urlencoded"),
            "{content_type}"
        );
    }
}

#[tokio::test]
async fn recaptcha_tokens_are_verified_with_the_provider() {
    let verifier = FakeVerifier::start().await;
    let url = verifier.url("/recaptcha/api/siteverify");
    let flags = [
        "--recaptcha-secret",
        "rc-secret",
        "--recaptcha-verify-url",
        &url,
    ];
    let msg = "Verification failed, please refresh the page and retry.";
    provider_cases(
        "recaptcha",
        "captcha",
        msg,
        &flags,
        &verifier,
        "/recaptcha/api/siteverify",
        "secret=rc-secret",
    )
    .await;
}

#[tokio::test]
async fn turnstile_tokens_are_verified_with_the_provider() {
    let verifier = FakeVerifier::start().await;
    let url = verifier.url("/turnstile/v0/siteverify");
    let flags = [
        "--turnstile-secret",
        "ts-secret",
        "--turnstile-verify-url",
        &url,
    ];
    provider_cases(
        "turnstile",
        "ticket",
        "Captcha validation failed",
        &flags,
        &verifier,
        "/turnstile/v0/siteverify",
        "secret=ts-secret",
    )
    .await;
}

#[tokio::test]
async fn cap_tokens_are_verified_with_the_instance() {
    let verifier = FakeVerifier::start().await;
    let instance = verifier.url("/cap/");
    let flags = [
        "--cap-instance-url",
        &instance,
        "--cap-key-id",
        "site123",
        "--cap-secret",
        "cap-secret",
    ];
    provider_cases(
        "cap",
        "ticket",
        "Captcha validation failed",
        &flags,
        &verifier,
        "/cap/site123/siteverify",
        "\"secret\":\"cap-secret\"",
    )
    .await;
}

#[test]
fn a_captcha_without_its_secret_is_refused_at_start_up() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        captcha: resetmail_api::captcha::CaptchaConfig,
    }
    for (args, missing) in [
        // The graphic captcha's key: without it, replicas could not check each other's tickets.
        (
            vec!["api", "--captcha", "normal"],
            "RESETMAIL_CAPTCHA_SECRET",
        ),
        (
            vec!["api", "--captcha", "recaptcha"],
            "RESETMAIL_RECAPTCHA_SECRET",
        ),
        (
            vec!["api", "--captcha", "turnstile"],
            "RESETMAIL_TURNSTILE_SECRET",
        ),
        (
            vec![
                "api",
                "--captcha",
                "cap",
                "--cap-key-id",
                "k",
                "--cap-secret",
                "s",
            ],
            "RESETMAIL_CAP_INSTANCE_URL",
        ),
        (
            vec![
                "api",
                "--captcha",
                "cap",
                "--cap-instance-url",
                "https://cap.example.com",
                "--cap-secret",
                "s",
            ],
            "RESETMAIL_CAP_KEY_ID",
        ),
        (
            vec![
                "api",
                "--captcha",
                "cap",
                "--cap-instance-url",
                "https://cap.example.com",
                "--cap-key-id",
                "k",
            ],
            "RESETMAIL_CAP_SECRET",
        ),
    ] {
        let config = Cli::try_parse_from(&args).unwrap().captcha;
        let error = resetmail_api::captcha::Captcha::from_config(&config)
            .err()
            .map(|error| error.to_string());
        assert!(
            error.as_deref().unwrap_or_default().contains(missing),
            "{args:?}: {error:?}"
        );
    }
}
