//! `POST /api/v4/user/reset`: answers, validation, the published job, correlation ids.

use resetmail_shared::db::users::UserStatus;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{Answer, setup_api as setup};

fn assert_error(answer: &Answer, status: u16, code: i64, msg: &str, case: &str) {
    assert_eq!(
        answer.status, status,
        "{case}: HTTP status of {}",
        answer.text
    );
    assert_eq!(
        answer.json["code"],
        json!(code),
        "{case}: code of {}",
        answer.text
    );
    assert_eq!(
        answer.json["msg"],
        json!(msg),
        "{case}: msg of {}",
        answer.text
    );
    let header = answer
        .correlation_header
        .as_deref()
        .unwrap_or_else(|| panic!("{case}: no correlation header"));
    assert_eq!(
        answer.json["correlation_id"],
        json!(header),
        "{case}: correlation id in the body"
    );
    assert!(
        answer.json.get("error").is_none(),
        "{case}: internal detail leaked without debug mode"
    );
}

#[tokio::test]
async fn bad_bodies_get_our_envelope_and_publish_nothing() {
    let (_db, broker, api) = setup().await;
    let long = format!("{}@example.com", "a".repeat(243));
    assert_eq!(long.len(), 255);
    let long_body = json!({ "email": long }).to_string();
    let cases: Vec<(&str, String, i64, &str)> = vec![
        ("empty body", String::new(), 40001, "Parameter error"),
        ("not JSON", "email=a@b.co".into(), 40001, "Parameter error"),
        (
            "truncated JSON",
            r#"{"email":"a@b.co""#.into(),
            40001,
            "Parameter error",
        ),
        (
            "trailing garbage",
            r#"{"email":"a@b.co"} x"#.into(),
            40001,
            "Parameter error",
        ),
        ("an array", r#"["a@b.co"]"#.into(), 40001, "Parameter error"),
        ("a string", r#""a@b.co""#.into(), 40001, "Parameter error"),
        ("JSON null", "null".into(), 40001, "Parameter error"),
        (
            "number email",
            r#"{"email":42}"#.into(),
            40001,
            "Parameter error",
        ),
        (
            "array email",
            r#"{"email":["a@b.co"]}"#.into(),
            40001,
            "Parameter error",
        ),
        (
            "nested junk",
            r#"{"email":{"email":{"x":[1,{"y":null}]}}}"#.into(),
            40001,
            "Parameter error",
        ),
        (
            "duplicate key",
            r#"{"email":"a@b.co","email":"c@d.co"}"#.into(),
            40001,
            "Parameter error",
        ),
        (
            "number captcha",
            r#"{"email":"a@b.co","captcha":5}"#.into(),
            40001,
            "Parameter error",
        ),
        ("no email", "{}".into(), 40001, "Email cannot be empty"),
        (
            "null email",
            r#"{"email":null}"#.into(),
            40001,
            "Email cannot be empty",
        ),
        (
            "empty email",
            r#"{"email":""}"#.into(),
            40001,
            "Email cannot be empty",
        ),
        (
            "whitespace email",
            r#"{"email":"   "}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "leading space",
            r#"{"email":" a@b.co"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "trailing newline",
            r#"{"email":"a@b.co\n"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "no @",
            r#"{"email":"ab.co"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "two @",
            r#"{"email":"a@@b.co"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "no dot in the domain",
            r#"{"email":"a@localhost"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "empty local part",
            r#"{"email":"@b.co"}"#.into(),
            40001,
            "Email format error",
        ),
        (
            "control character",
            r#"{"email":"a\u0000b@c.co"}"#.into(),
            40001,
            "Email format error",
        ),
        ("255 characters", long_body, 40001, "Email format error"),
    ];
    assert!(cases.len() >= 20);
    for (case, body, code, msg) in &cases {
        let answer = api.post_reset(body).await;
        assert_error(&answer, 200, *code, msg, case);
    }

    let wrong_type = api
        .send(
            api.client
                .post(format!("{}/api/v4/user/reset", api.base))
                .header("content-type", "text/plain")
                .body(r#"{"email":"a@b.co"}"#),
        )
        .await;
    assert_error(
        &wrong_type,
        200,
        40001,
        "Parameter error",
        "text/plain content type",
    );
    let no_type = api
        .send(
            api.client
                .post(format!("{}/api/v4/user/reset", api.base))
                .body(r#"{"email":"a@b.co"}"#),
        )
        .await;
    assert_error(&no_type, 200, 40001, "Parameter error", "no content type");
    let huge = json!({ "email": "a@b.co", "captcha": "x".repeat(20 * 1024) }).to_string();
    assert_error(
        &api.post_reset(&huge).await,
        413,
        40001,
        "Request body is too large",
        "huge body",
    );

    assert_eq!(
        broker.count(&broker.topology.work_queue()).await,
        0,
        "a refused request published a job"
    );
    // The count can see a job: one good request after all the bad ones is there.
    assert_eq!(
        api.post_reset(r#"{"email":"a@b.co"}"#).await.text,
        r#"{"code":0,"msg":""}"#
    );
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 1);
}

#[tokio::test]
async fn unknown_email_gets_the_same_answer_as_a_known_one() {
    let (db, broker, api) = setup().await;
    db.add_user("known@example.com", None, None, UserStatus::Active)
        .await;
    db.add_user("banned@example.com", None, None, UserStatus::Banned)
        .await;

    let mut answers = Vec::new();
    for email in [
        "known@example.com",
        "nobody@example.com",
        "banned@example.com",
        "KNOWN@example.com",
    ] {
        let answer = api
            .post_reset(&json!({ "email": email, "captcha": "", "ticket": "" }).to_string())
            .await;
        answers.push((answer.status, answer.text));
    }
    for answer in &answers {
        assert_eq!(answer, &(200, r#"{"code":0,"msg":""}"#.to_owned()));
    }
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 4);
}

#[tokio::test]
async fn the_job_is_published_persistent_with_its_ids_after_the_confirm() {
    let (_db, broker, api) = setup().await;
    let correlation_id = Uuid::new_v4();
    let answer = api
        .send(
            api.client
                .post(format!("{}/api/v4/user/reset", api.base))
                .header("content-type", "application/json; charset=utf-8")
                .header("X-Cr-Correlation-Id", correlation_id.to_string())
                .body(r#"{"email":"Jane.Doe@Example.com","captcha":null,"ticket":null}"#),
        )
        .await;
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (200, r#"{"code":0,"msg":""}"#)
    );
    assert_eq!(answer.correlation_header, Some(correlation_id.to_string()));

    // The answer came after the broker's confirm, so the job is in the queue now.
    let message = broker
        .take(&broker.topology.work_queue())
        .await
        .unwrap_or_else(|| panic!("no job queued"));
    let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body["v"], json!(1));
    assert_eq!(body["type"], json!("password_reset"));
    assert_eq!(body["email"], json!("Jane.Doe@Example.com"));
    assert_eq!(body["correlation_id"], json!(correlation_id.to_string()));
    let job_id = body["job_id"]
        .as_str()
        .and_then(|id| Uuid::try_parse(id).ok())
        .unwrap_or_else(|| panic!("job_id: {body}"));
    let requested_at = body["requested_at"].as_str().unwrap_or_default();
    assert!(
        time::OffsetDateTime::parse(requested_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{requested_at}"
    );

    let properties = &message.delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "not persistent");
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.to_string()),
        Some(job_id.to_string())
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|s| s.to_string()),
        Some(correlation_id.to_string())
    );
}

#[tokio::test]
async fn a_missing_or_invalid_correlation_id_is_replaced_by_a_new_one() {
    let (_db, _broker, api) = setup().await;
    let invalid = api
        .send(
            api.client
                .post(format!("{}/api/v4/user/reset", api.base))
                .header("content-type", "application/json")
                .header("X-Cr-Correlation-Id", "not-a-uuid")
                .body("{}"),
        )
        .await;
    let header = invalid.correlation_header.clone().unwrap_or_default();
    assert!(Uuid::try_parse(&header).is_ok(), "{header:?}");
    assert_eq!(invalid.json["correlation_id"], json!(header));

    let missing = api.post_reset("{}").await;
    let other = missing.correlation_header.clone().unwrap_or_default();
    assert!(
        Uuid::try_parse(&other).is_ok() && other != header,
        "{other:?}"
    );
}

#[tokio::test]
async fn health_readiness_and_unknown_routes_answer_in_the_envelope() {
    let (_db, _broker, api) = setup().await;
    let health = api
        .send(api.client.get(format!("{}/healthz", api.base)))
        .await;
    assert_eq!(
        (health.status, health.json["code"].clone()),
        (200, json!(0))
    );
    let ready = api
        .send(api.client.get(format!("{}/readyz", api.base)))
        .await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(
        ready.json["data"],
        json!({"broker": true, "database": true})
    );

    let missing = api
        .send(api.client.get(format!("{}/api/v4/nothing", api.base)))
        .await;
    assert_error(&missing, 404, 404, "Not found", "unknown route");
    let wrong_method = api
        .send(api.client.get(format!("{}/api/v4/user/reset", api.base)))
        .await;
    assert_error(
        &wrong_method,
        405,
        405,
        "Method not allowed",
        "GET on the reset route",
    );
}
