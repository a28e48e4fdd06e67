//! Cloudreve database mode: accounts, settings and passwords in a Cloudreve v4 site's own tables
//! (a fixture made as Cloudreve's migration makes them), the whole way from the request to the
//! password Cloudreve's sign-in checks.

use resetmail_shared::{
    config::{AccountSource, DatabaseConfig},
    db::deliveries::Outcome,
    hashid::{HashIds, ObjectKind},
};
use resetmail_testkit::{
    PATIENCE,
    broker::TestBroker,
    cloudreve::{CloudreveDb, CloudreveUser, HASH_ID_SALT, cloudreve_accepts},
    db::TestDb,
    eventually,
    smtp_sink::SmtpSink,
};
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{SITE_URL, TestApi, TestWorker, api_config, reset_link, worker_config};

const OK: &str = r#"{"code":0,"msg":""}"#;

/// The Cloudreve database as the binaries see it in Cloudreve mode, connected (and migrated) as
/// they connect.
async fn cloudreve_mode(site: &CloudreveDb) -> (DatabaseConfig, PgPool) {
    let database = DatabaseConfig {
        accounts: AccountSource::Cloudreve,
        ..site.config.clone()
    };
    let pool = resetmail_shared::db::connect(&database)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    (database, pool)
}

/// An api and a worker in Cloudreve mode, the site's address and name left to its settings.
async fn start(
    database: &DatabaseConfig,
    broker: &TestBroker,
    sink: &SmtpSink,
) -> (TestApi, TestWorker) {
    let api = TestApi::start_configured(api_config(database, &broker.config, &[])).await;
    let mut config = worker_config(database, &broker.config, sink, &[]);
    config.site_url = None;
    config.site_name = None;
    (api, TestWorker::start(config))
}

/// The outcome the worker recorded for `email`, once it is final.
async fn outcome(pool: &PgPool, email: &str) -> Outcome {
    eventually(
        &format!("a final outcome for {email}"),
        PATIENCE,
        || async {
            sqlx::query_scalar::<_, Outcome>(
                "SELECT outcome FROM deliveries WHERE email = $1 AND outcome <> 'pending'",
            )
            .bind(email)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await
}

#[tokio::test]
async fn a_cloudreve_account_resets_the_password_cloudreves_sign_in_checks() {
    let site = CloudreveDb::new().await;
    site.set_setting("siteURL", &format!("{SITE_URL}/,http://10.0.0.2:5212"))
        .await;
    site.set_setting("siteName", "Example Cloud").await;
    let user_id = site
        .add_user(&CloudreveUser {
            nick: "Jane",
            language: Some("zh-CN"),
            password: Some("old-password"),
            ..CloudreveUser::active("Jane@Example.com")
        })
        .await;
    let row_before = account_row(&site.pool, user_id).await;
    let structure_before = site.cloudreve_structure().await;
    let (database, pool) = cloudreve_mode(&site).await;
    assert_eq!(
        site.cloudreve_structure().await,
        structure_before,
        "resetmail's migrations changed Cloudreve's tables"
    );
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let (api, worker) = start(&database, &broker, &sink).await;

    // Asked in another case than stored: Cloudreve's sign-in matches without regard to case.
    let asked = api.post_reset(r#"{"email":"jane@example.com"}"#).await;
    assert_eq!(asked.text, OK);
    let mails = sink.wait_for(1, PATIENCE).await;
    assert_eq!(mails[0].rcpt_to, vec!["Jane@Example.com".to_owned()]);
    let mail = mails[0].parsed();
    // The site's own email (its zh-CN title and body), in the account's language.
    assert_eq!(mail.subject, "[Example Cloud] 重设密码");
    let (id, secret) = reset_link(&mail);
    assert!(
        mail.html.contains(&format!(
            "href=\"{SITE_URL}/session/reset?id={id}&amp;secret={secret}\""
        )),
        "{}",
        mail.html
    );
    assert!(
        mail.html
            .contains(&format!("src=\"{SITE_URL}/static/img/logo.svg\"")),
        "the logo is not made absolute: {}",
        mail.html
    );
    let ids = HashIds::new(HASH_ID_SALT).unwrap();
    assert_eq!(
        ids.decode(&id, ObjectKind::User),
        Ok(u64::try_from(user_id).unwrap_or_default()),
        "the link's id is the site's own id of the account"
    );

    // The email leaves a moment before its token is stored; wait for the record.
    assert_eq!(outcome(&pool, "jane@example.com").await, Outcome::Sent);
    let redeemed = api
        .redeem(&id, json!({"password": "new-password-1", "secret": secret}))
        .await;
    assert_eq!(
        redeemed.json,
        json!({"code": 0, "msg": "", "data": {"id": id, "email": "Jane@Example.com", "nickname": "Jane"}})
    );
    let row_after = account_row(&site.pool, user_id).await;
    let stored = row_after["password"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(cloudreve_accepts(&stored, "new-password-1"), "{stored}");
    assert!(!cloudreve_accepts(&stored, "old-password"));
    assert_eq!(stored.split_once(':').map(|(salt, _)| salt.len()), Some(32));
    assert_ne!(row_after["updated_at"], row_before["updated_at"]);
    let unchanged = |mut row: serde_json::Value| {
        if let Some(fields) = row.as_object_mut() {
            fields.remove("password");
            fields.remove("updated_at");
        }
        row
    };
    assert_eq!(
        unchanged(row_after),
        unchanged(row_before),
        "more than the password and updated_at changed"
    );

    let again = api
        .redeem(&id, json!({"password": "new-password-2", "secret": secret}))
        .await;
    assert_eq!(again.json["code"], json!(40030), "the link is spent");
    worker.stop().await;
}

#[tokio::test]
async fn inactive_banned_deleted_and_unknown_cloudreve_addresses_get_the_same_answer_and_no_email()
{
    let site = CloudreveDb::new().await;
    for (email, status, deleted) in [
        ("inactive@example.com", "inactive", false),
        ("manual@example.com", "manual_banned", false),
        ("system@example.com", "sys_banned", false),
        ("deleted@example.com", "active", true),
    ] {
        site.add_user(&CloudreveUser {
            status,
            deleted,
            ..CloudreveUser::active(email)
        })
        .await;
    }
    let (database, pool) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let (api, worker) = start(&database, &broker, &sink).await;

    for (email, expected) in [
        ("inactive@example.com", Outcome::Inactive),
        ("manual@example.com", Outcome::Banned),
        ("system@example.com", Outcome::Banned),
        ("deleted@example.com", Outcome::UnknownAccount),
        ("nobody@example.com", Outcome::UnknownAccount),
    ] {
        let asked = api.post_reset(&json!({ "email": email }).to_string()).await;
        assert_eq!(asked.text, OK, "{email}");
        assert_eq!(outcome(&pool, email).await, expected, "{email}");
    }
    assert!(sink.received().is_empty(), "an email was sent");
    worker.stop().await;
}

#[tokio::test]
async fn a_link_id_that_is_not_the_sites_is_refused_as_cloudreve_refuses_it() {
    let site = CloudreveDb::new().await;
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let api = TestApi::start_configured(api_config(&database, &broker.config, &[])).await;
    let another_sites = HashIds::new("another salt").unwrap();
    for id in [
        // The built-in mode's kind of id.
        "00000000-0000-0000-0000-000000000000".to_owned(),
        // A valid id under the site's salt, of another kind of object (kind 2: docs/CLOUDREVE.md §7).
        "0LFN".to_owned(),
        // The id of user 1 (`9qib`), garbled.
        "9qibx".to_owned(),
        another_sites.encode(1, ObjectKind::User),
    ] {
        let answer = api
            .redeem(&id, json!({"password": "new-password-1", "secret": "abc"}))
            .await;
        assert_eq!(
            answer.json,
            json!({"code": 40001, "msg": "Failed to parse object ID", "correlation_id": answer.json["correlation_id"]}),
            "{id}"
        );
    }
}

#[tokio::test]
async fn cloudreve_mode_on_a_database_without_cloudreves_tables_stops_with_the_reason() {
    let not_cloudreve = TestDb::new().await;
    let database = DatabaseConfig {
        accounts: AccountSource::Cloudreve,
        ..not_cloudreve.config.clone()
    };
    let error = resetmail_shared::db::connect(&database)
        .await
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(
        error.contains("not a Cloudreve v4 site's") && error.contains("public.users.password"),
        "{error}"
    );
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'resetmail'")
            .fetch_one(&not_cloudreve.pool)
            .await
            .unwrap();
    assert_eq!(
        schemas, 0,
        "a schema was created in a database that is not Cloudreve's"
    );
}

/// Every column of the account's row, as JSON.
async fn account_row(pool: &PgPool, user_id: i64) -> serde_json::Value {
    sqlx::query_scalar("SELECT to_jsonb(u) FROM public.users u WHERE id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A worker in Cloudreve mode that takes everything it can from the site: address, name, sender,
/// reply-to and SMTP server; the site's settings read again every 100 ms.
fn worker_from_the_site(
    database: &DatabaseConfig,
    broker: &TestBroker,
    sink: &SmtpSink,
) -> resetmail_worker::config::WorkerConfig {
    let mut config = worker_config(
        database,
        &broker.config,
        sink,
        &["--settings-refresh", "100ms", "--account-cooldown", "0s"],
    );
    config.site_url = None;
    config.site_name = None;
    config.smtp_url = None;
    config.mail_from = None;
    config
}

/// Points the site's SMTP settings at `sink`, plain SMTP as Cloudreve's defaults (no encryption).
async fn site_mail_through(site: &CloudreveDb, sink: &SmtpSink) {
    site.set_setting("smtpHost", "127.0.0.1").await;
    site.set_setting("smtpPort", &sink.port().to_string()).await;
    site.set_setting("smtpUser", "").await;
    site.set_setting("smtpEncryption", "0").await;
}

#[tokio::test]
async fn the_email_leaves_through_the_sites_smtp_server_from_its_sender() {
    let site = CloudreveDb::new().await;
    let sink = SmtpSink::start().await;
    site_mail_through(&site, &sink).await;
    site.set_setting("siteName", "Example Cloud").await;
    site.set_setting("fromName", "Example Cloud").await;
    site.set_setting("fromAdress", "no-reply@cloud.example.com")
        .await;
    site.set_setting("replyTo", "support@cloud.example.com")
        .await;
    site.add_user(&CloudreveUser::active("jane@example.com"))
        .await;
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let api = TestApi::start_configured(api_config(&database, &broker.config, &[])).await;
    let worker = TestWorker::start(worker_from_the_site(&database, &broker, &sink));

    let asked = api.post_reset(r#"{"email":"jane@example.com"}"#).await;
    assert_eq!(asked.text, OK);
    let mails = sink.wait_for(1, PATIENCE).await;
    let mail = mails[0].parsed();
    assert_eq!(mails[0].mail_from, "no-reply@cloud.example.com");
    assert_eq!(
        mail.header("From"),
        Some("\"Example Cloud\" <no-reply@cloud.example.com>")
    );
    assert_eq!(
        mail.header("Reply-To"),
        Some("\"Example Cloud\" <support@cloud.example.com>")
    );
    assert!(
        mail.subject.starts_with("[Example Cloud]"),
        "{}",
        mail.subject
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_change_in_the_sites_settings_is_used_by_the_next_email_without_a_restart() {
    let site = CloudreveDb::new().await;
    let first = SmtpSink::start().await;
    let second = SmtpSink::start().await;
    site_mail_through(&site, &first).await;
    site.set_setting("siteName", "Example Cloud").await;
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let api = TestApi::start_configured(api_config(&database, &broker.config, &[])).await;
    let worker = TestWorker::start(worker_from_the_site(&database, &broker, &first));
    site.add_user(&CloudreveUser::active("jane@example.com"))
        .await;
    assert_eq!(
        api.post_reset(r#"{"email":"jane@example.com"}"#).await.text,
        OK
    );
    let before = first.wait_for(1, PATIENCE).await;
    assert!(before[0].parsed().subject.starts_with("[Example Cloud]"));

    // As an administrator does in Cloudreve's dashboard: another name, another mail server.
    site.set_setting("siteName", "Renamed Cloud").await;
    site_mail_through(&site, &second).await;
    let mut asked = 0;
    let mail = eventually("an email through the new server", PATIENCE, || {
        asked += 1;
        let email = format!("user{asked}@example.com");
        let (site, api, first, second) = (&site, &api, &first, &second);
        async move {
            site.add_user(&CloudreveUser::active(&email)).await;
            assert_eq!(
                api.post_reset(&json!({ "email": email }).to_string())
                    .await
                    .text,
                OK
            );
            // Either server takes it: the old one until the worker has read the change.
            eventually(&format!("the email to {email}"), PATIENCE, || async {
                let arrived = |sink: &SmtpSink| {
                    sink.received()
                        .into_iter()
                        .find(|mail| mail.rcpt_to.contains(&email))
                };
                match (arrived(first), arrived(second)) {
                    (_, Some(mail)) => Some(Some(mail)),
                    (Some(_), None) => Some(None),
                    (None, None) => None,
                }
            })
            .await
        }
    })
    .await;
    assert!(
        mail.parsed().subject.starts_with("[Renamed Cloud]"),
        "{}",
        mail.parsed().subject
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_sites_email_is_chosen_by_language_then_by_its_prefix_then_the_first() {
    let site = CloudreveDb::new().await;
    site.set_setting("siteName", "Example Cloud").await;
    for (email, language) in [
        ("cn@example.com", Some("ZH-cn")),
        ("tw@example.com", Some("zh-TW")),
        ("fr@example.com", Some("fr-FR")),
        ("none@example.com", None),
    ] {
        site.add_user(&CloudreveUser {
            language,
            ..CloudreveUser::active(email)
        })
        .await;
    }
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let (api, worker) = start(&database, &broker, &sink).await;
    for (email, subject) in [
        ("cn@example.com", "[Example Cloud] 重设密码"),
        ("tw@example.com", "[Example Cloud] 重设密码"),
        ("fr@example.com", "[Example Cloud] Reset your password"),
        ("none@example.com", "[Example Cloud] Reset your password"),
    ] {
        let before = sink.received().len();
        assert_eq!(
            api.post_reset(&json!({ "email": email }).to_string())
                .await
                .text,
            OK
        );
        let mails = sink.wait_for(before + 1, PATIENCE).await;
        let mail = mails
            .iter()
            .find(|mail| mail.rcpt_to.contains(&email.to_owned()))
            .unwrap_or_else(|| panic!("no email to {email}"));
        assert_eq!(mail.parsed().subject, subject, "{email}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_site_template_resetmail_cannot_render_stops_the_worker_with_the_reason() {
    let site = CloudreveDb::new().await;
    site.set_setting(
        "mail_reset_template",
        r#"[{"language":"en-US","title":"Reset","body":"<p>{{ if .Url }}<a href=\"{{ .Url }}\">here</a>{{ end }}</p>"}]"#,
    )
    .await;
    let (database, _pool) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let mut config = worker_config(&database, &broker.config, &sink, &[]);
    config.site_url = None;
    let error = resetmail_worker::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(
        error.contains("mail_reset_template") && error.contains("en-US") && error.contains("if"),
        "{error}"
    );
}

#[tokio::test]
async fn the_sites_turnstile_guards_the_reset_with_the_sites_secret() {
    let verifier = crate::captcha::FakeVerifier::start().await;
    let site = CloudreveDb::new().await;
    site.set_setting("forget_captcha", "1").await;
    site.set_setting("captcha_type", "turnstile").await;
    site.set_setting("captcha_turnstile_site_secret", "site-ts-secret")
        .await;
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    let url = verifier.url("/turnstile/v0/siteverify");
    let api = TestApi::start_configured(api_config(
        &database,
        &broker.config,
        &["--turnstile-verify-url", &url],
    ))
    .await;

    let refused = api
        .post_reset(r#"{"email":"jane@example.com","ticket":"bad"}"#)
        .await;
    assert_eq!(refused.json["code"], json!(40026), "{}", refused.text);
    assert_eq!(refused.json["msg"], json!("Captcha validation failed"));
    let passed = api
        .post_reset(r#"{"email":"jane@example.com","ticket":"good"}"#)
        .await;
    assert_eq!(passed.text, OK);
    let seen = verifier.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(_, _, body)| body.contains("secret=site-ts-secret")),
        "not verified with the site's secret: {seen:?}"
    );
}

#[tokio::test]
async fn the_sites_graphic_captcha_is_not_taken_over_and_an_explicit_setting_wins() {
    let site = CloudreveDb::new().await;
    site.set_setting("forget_captcha", "1").await;
    site.set_setting("captcha_type", "normal").await;
    let (database, _) = cloudreve_mode(&site).await;
    let broker = TestBroker::new().await;
    // Cloudreve's graphic tickets live in its own process: resetmail cannot check them.
    let api = TestApi::start_configured(api_config(&database, &broker.config, &[])).await;
    let asked = api
        .post_reset(r#"{"email":"jane@example.com","ticket":"t","captcha":"ABCD"}"#)
        .await;
    assert_eq!(asked.text, OK);
    // RESETMAIL_CAPTCHA set: resetmail's own graphic captcha, whatever the site says.
    let own = TestApi::start_configured(api_config(
        &database,
        &broker.config,
        &["--captcha", "normal"],
    ))
    .await;
    let refused = own
        .post_reset(r#"{"email":"jane@example.com","ticket":"t","captcha":"ABCD"}"#)
        .await;
    assert_eq!(refused.json["code"], json!(40026), "{}", refused.text);
}

#[tokio::test]
async fn user_add_refuses_cloudreve_mode_without_touching_the_site() {
    let site = CloudreveDb::new().await;
    let (database, _pool) = cloudreve_mode(&site).await;
    let before = site.cloudreve_structure().await;
    let added = resetmail_api::commands::add_user(
        &database,
        &resetmail_api::commands::AddUser {
            email: "new@example.com".into(),
            nick: None,
            language: None,
            status: resetmail_shared::db::users::UserStatus::Active,
            exists_ok: false,
        },
    )
    .await;
    let error = added
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("add them in Cloudreve"), "{error}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM public.users")
        .fetch_one(&site.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
    assert_eq!(site.cloudreve_structure().await, before);
}
