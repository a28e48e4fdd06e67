//! Redeeming a reset link: once, by the latest link, before it expires; the password stored as argon2.

use argon2::{Argon2, password_hash::PasswordVerifier as _, password_hash::phc::PasswordHash};
use resetmail_shared::db::users::UserStatus;
use resetmail_testkit::{PATIENCE, broker::TestBroker, db::TestDb, smtp_sink::SmtpSink};
use serde_json::json;

use crate::harness::{Answer, TestApi, TestWorker, reset_link, sent_rows, worker_config};

const OK: &str = r#"{"code":0,"msg":""}"#;

struct Site {
    db: TestDb,
    _broker: TestBroker,
    sink: SmtpSink,
    api: TestApi,
    worker: TestWorker,
}

async fn site() -> Site {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let api = TestApi::start(&db, &broker.config).await;
    let worker = TestWorker::start(worker_config(
        &db.config,
        &broker.config,
        &sink,
        &["--account-cooldown", "0s"],
    ));
    Site {
        db,
        _broker: broker,
        sink,
        api,
        worker,
    }
}

/// Asks for a reset email for `email` and returns the link's id and secret.
async fn email_link(site: &Site, email: &str) -> (String, String) {
    let before = site.sink.received().len();
    assert_eq!(
        site.api
            .post_reset(&json!({ "email": email }).to_string())
            .await
            .text,
        OK
    );
    let mails = site.sink.wait_for(before + 1, PATIENCE).await;
    let link = reset_link(&mails[before].parsed());
    // The email leaves a moment before its token is committed; wait for the commit.
    sent_rows(&site.db, before as i64 + 1).await;
    link
}

fn assert_expired(answer: &Answer, case: &str) {
    assert_eq!(
        (
            answer.status,
            answer.json["code"].clone(),
            answer.json["msg"].clone()
        ),
        (200, json!(40030), json!("Link is expired")),
        "{case}: {}",
        answer.text
    );
}

async fn stored_hash(db: &TestDb) -> Option<String> {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'jane@example.com'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_link_sets_the_password_once_and_only_the_latest_link_works() {
    let site = site().await;
    let user = site
        .db
        .add_user("jane@example.com", Some("Jane"), None, UserStatus::Active)
        .await;
    let (old_id, old_secret) = email_link(&site, "jane@example.com").await;
    let (id, secret) = email_link(&site, "JANE@example.com").await;
    assert_eq!(
        (old_id.as_str(), id.as_str()),
        (user.link_id.clone().as_str(), user.link_id.clone().as_str())
    );
    assert_ne!(old_secret, secret);

    let redeemed = site
        .api
        .redeem(
            &id,
            json!({"password": "correct horse battery", "secret": secret}),
        )
        .await;
    assert_eq!(redeemed.status, 200, "{}", redeemed.text);
    assert_eq!(
        redeemed.json,
        json!({"code": 0, "msg": "", "data": {"id": user.link_id.clone(), "email": "jane@example.com", "nickname": "Jane"}})
    );
    let hash = stored_hash(&site.db)
        .await
        .unwrap_or_else(|| panic!("no password stored"));
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::new(&hash).unwrap();
    assert!(
        Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok()
    );
    assert!(
        Argon2::default()
            .verify_password(b"correct horse batterz", &parsed)
            .is_err()
    );

    assert_expired(
        &site
            .api
            .redeem(
                &id,
                json!({"password": "another password", "secret": secret}),
            )
            .await,
        "the same link again",
    );
    assert_expired(
        &site
            .api
            .redeem(
                &old_id,
                json!({"password": "another password", "secret": old_secret}),
            )
            .await,
        "the older link",
    );
    assert_eq!(
        stored_hash(&site.db).await.as_deref(),
        Some(hash.as_str()),
        "a refused link changed the password"
    );
    site.worker.stop().await;
}

#[tokio::test]
async fn an_expired_a_foreign_or_a_made_up_link_is_refused_the_same_way() {
    let site = site().await;
    site.db
        .add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let other = site
        .db
        .add_user("other@example.com", None, None, UserStatus::Active)
        .await;
    let (id, secret) = email_link(&site, "jane@example.com").await;
    let body = json!({"password": "a fine password", "secret": secret});

    assert_expired(
        &site.api.redeem(&other.link_id.clone(), body.clone()).await,
        "another account's id",
    );
    assert_expired(
        &site
            .api
            .redeem(
                &id,
                json!({"password": "a fine password", "secret": "made-up"}),
            )
            .await,
        "a made-up secret",
    );
    sqlx::query("UPDATE password_reset_tokens SET expires_at = now() - interval '1 second'")
        .execute(&site.db.pool)
        .await
        .unwrap();
    assert_expired(&site.api.redeem(&id, body).await, "expired");
    assert_eq!(stored_hash(&site.db).await, None);
    site.worker.stop().await;
}

#[tokio::test]
async fn of_two_concurrent_redeems_of_one_link_exactly_one_succeeds() {
    let site = site().await;
    site.db
        .add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let (id, secret) = email_link(&site, "jane@example.com").await;
    let (first, second) = tokio::join!(
        site.api
            .redeem(&id, json!({"password": "first password", "secret": secret})),
        site.api.redeem(
            &id,
            json!({"password": "second password", "secret": secret})
        ),
    );
    let mut codes = [first.json["code"].as_i64(), second.json["code"].as_i64()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(40030)],
        "{} / {}",
        first.text,
        second.text
    );
    site.worker.stop().await;
}

#[tokio::test]
async fn redeem_requests_are_validated_before_the_link_is_looked_at() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start(&db, &broker.config).await;
    let id = uuid::Uuid::new_v4().to_string();
    let cases = [
        (
            "12345",
            json!({"password": "long enough", "secret": "s"}),
            40001,
            "Failed to parse object ID",
        ),
        (
            id.as_str(),
            json!({"secret": "s"}),
            40001,
            "Password cannot be empty",
        ),
        (
            id.as_str(),
            json!({"password": "", "secret": "s"}),
            40001,
            "Password cannot be empty",
        ),
        (
            id.as_str(),
            json!({"password": "12345", "secret": "s"}),
            40001,
            "Password too short",
        ),
        (
            id.as_str(),
            json!({"password": "x".repeat(129), "secret": "s"}),
            40001,
            "Password too long",
        ),
        (
            id.as_str(),
            json!({"password": "long enough"}),
            40001,
            "Secret cannot be empty",
        ),
        (
            id.as_str(),
            json!({"password": "long enough", "secret": ""}),
            40001,
            "Secret cannot be empty",
        ),
        (
            id.as_str(),
            json!({"password": 123456, "secret": "s"}),
            40001,
            "Parameter error",
        ),
        (
            id.as_str(),
            json!(["long enough", "s"]),
            40001,
            "Parameter error",
        ),
        // The boundaries pass validation and meet the link check.
        (
            id.as_str(),
            json!({"password": "123456", "secret": "s"}),
            40030,
            "Link is expired",
        ),
        (
            id.as_str(),
            json!({"password": "密".repeat(128), "secret": "s"}),
            40030,
            "Link is expired",
        ),
    ];
    for (id, body, code, msg) in cases {
        let answer = api.redeem(id, body.clone()).await;
        assert_eq!(
            (
                answer.status,
                answer.json["code"].as_i64(),
                answer.json["msg"].as_str()
            ),
            (200, Some(code), Some(msg)),
            "{body}"
        );
    }
}
