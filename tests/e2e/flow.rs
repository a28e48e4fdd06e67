//! The whole path across both processes: HTTP request → confirmed job → token → email at the sink.

use resetmail_shared::{
    db::{deliveries::Outcome, users::UserStatus},
    token::hash_secret,
};
use resetmail_testkit::{
    PATIENCE, broker::TestBroker, db::TestDb, eventually, smtp_sink::SmtpSink,
};
use uuid::Uuid;

use crate::harness::{SITE_NAME, TestApi, TestWorker, decided, reset_link, worker_config};

const OK: &str = r#"{"code":0,"msg":""}"#;

#[tokio::test]
async fn a_known_address_gets_one_email_whose_link_secret_hashes_to_the_stored_token() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let user = db
        .add_user(
            "Jane.Doe@Example.com",
            Some("Jane"),
            Some("en-US"),
            UserStatus::Active,
        )
        .await;
    let api = TestApi::start(&db, &broker.config).await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));

    let correlation_id = Uuid::new_v4();
    let answer = api
        .send(
            api.client
                .post(format!("{}/api/v4/user/reset", api.base))
                .header("content-type", "application/json")
                .header("X-Cr-Correlation-Id", correlation_id.to_string())
                .body(r#"{"email":"jane.doe@EXAMPLE.com"}"#),
        )
        .await;
    assert_eq!((answer.status, answer.text.as_str()), (200, OK));

    let mails = sink.wait_for(1, PATIENCE).await;
    // The sink has the email a moment before the worker commits; the row says when it did.
    let job_id: Uuid = eventually("the delivery row to say sent", PATIENCE, || async {
        sqlx::query_scalar("SELECT job_id FROM deliveries WHERE outcome = 'sent'")
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
    })
    .await;
    let mail = mails[0].parsed();
    // To the address stored on the account, not the string the client typed.
    assert_eq!(mails[0].rcpt_to, vec!["Jane.Doe@Example.com".to_owned()]);
    assert_eq!(mail.to, vec!["Jane.Doe@Example.com".to_owned()]);
    assert_eq!(mail.subject, format!("[{SITE_NAME}] Reset your password"));
    assert!(
        mail.content_type
            .eq_ignore_ascii_case("multipart/alternative"),
        "{}",
        mail.content_type
    );
    assert!(mail.text.contains("Hello Jane"), "{}", mail.text);

    let (id, secret) = reset_link(&mail);
    assert_eq!(id, user.link_id.clone(), "the link carries the opaque id");
    assert_eq!(secret.len(), 43, "32 bytes in URL-safe base64: {secret}");
    assert!(mail.html.contains(&secret), "the HTML part lacks the link");
    assert!(
        mail.html.contains(&format!(
            "?id&#x3D;{}&amp;secret&#x3D;{secret}",
            user.link_id
        )),
        "{}",
        mail.html
    );

    let (stored_hash, expires_in): (Vec<u8>, f64) = sqlx::query_as(
        "SELECT token_hash, extract(epoch FROM expires_at - now())::float8 FROM password_reset_tokens WHERE user_id = $1",
    )
    .bind(user.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored_hash, hash_secret(&secret).to_vec());
    assert!(
        (3000.0..=3600.0).contains(&expires_in),
        "expires in {expires_in}s, not about an hour"
    );

    let row = decided(&db, job_id).await;
    assert_eq!(row.outcome, Outcome::Sent);
    assert_eq!(row.correlation_id, correlation_id);
    assert_eq!(row.user_id, Some(user.id));
    assert_eq!(
        row.message_id.as_deref(),
        Some(format!("<{job_id}@cloud.example.com>").as_str())
    );
    assert_eq!(mail.message_id, format!("{job_id}@cloud.example.com"));
    // An automatic message: no vacation responder answers it (RFC 3834, Exchange).
    assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
    assert_eq!(mail.header("X-Auto-Response-Suppress"), Some("All"));
    let date = mail.header("Date").unwrap_or_default();
    assert!(
        time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc2822).is_ok(),
        "no RFC 5322 Date: {date:?}"
    );
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn unknown_banned_and_inactive_addresses_get_the_same_answer_and_no_email() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    db.add_user("banned@example.com", None, None, UserStatus::Banned)
        .await;
    db.add_user("inactive@example.com", None, None, UserStatus::Inactive)
        .await;
    db.add_user("known@example.com", None, None, UserStatus::Active)
        .await;
    let api = TestApi::start(&db, &broker.config).await;
    let worker = TestWorker::start(worker_config(
        &db.config,
        &broker.config,
        &sink,
        &["--concurrency", "1"],
    ));

    let mut answers = Vec::new();
    for email in [
        "nobody@example.com",
        "banned@example.com",
        "inactive@example.com",
        "known@example.com",
    ] {
        let answer = api.post_reset(&format!(r#"{{"email":"{email}"}}"#)).await;
        answers.push((answer.status, answer.text));
    }
    assert!(
        answers.iter().all(|answer| answer == &(200, OK.to_owned())),
        "{answers:?}"
    );

    // One job at a time, in order: the known address's email comes after the other three were decided.
    let mails = sink.wait_for(1, PATIENCE).await;
    assert_eq!(mails[0].rcpt_to, vec!["known@example.com".to_owned()]);
    eventually("the known address's row to say sent", PATIENCE, || async {
        let sent: Option<i64> =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE outcome = 'sent'")
                .fetch_one(&db.pool)
                .await
                .ok();
        (sent == Some(1)).then_some(())
    })
    .await;
    let outcomes: Vec<(String, Outcome)> =
        sqlx::query_as("SELECT email, outcome FROM deliveries ORDER BY requested_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let expected = [
        ("nobody@example.com", Outcome::UnknownAccount),
        ("banned@example.com", Outcome::Banned),
        ("inactive@example.com", Outcome::Inactive),
        ("known@example.com", Outcome::Sent),
    ]
    .map(|(email, outcome)| (email.to_owned(), outcome));
    assert_eq!(outcomes, expected);
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}
