//! `RESETMAIL_REQUEST_TIMEOUT`: a request that outlives it is answered like every other failure, in
//! Cloudreve's envelope and with its correlation id.

use resetmail_testkit::{broker::TestBroker, db::TestDb};
use serde_json::json;
use sqlx::Connection as _;
use uuid::Uuid;

use crate::harness::TestApi;

#[tokio::test]
async fn a_request_past_the_time_limit_gets_503_in_the_envelope_with_its_correlation_id() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start_with(&db, &broker.config, &["--request-timeout", "3s"]).await;
    // A stuck database: while this transaction holds the table, a redeem waits on it for ever.
    let mut blocker = sqlx::PgConnection::connect(&db.config.url).await.unwrap();
    let mut stuck = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE password_reset_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *stuck)
        .await
        .unwrap();
    let correlation_id = Uuid::new_v4().to_string();

    let answer = api
        .send(
            api.client
                .patch(format!("{}/api/v4/user/reset/{}", api.base, Uuid::new_v4()))
                .header("X-Cr-Correlation-Id", &correlation_id)
                .json(&json!({"password": "a new password", "secret": "not-a-real-secret"})),
        )
        .await;

    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(
        (answer.json["code"].clone(), answer.json["msg"].clone()),
        (
            json!(50005),
            json!("Request timed out, please try again later")
        ),
        "{}",
        answer.text
    );
    assert_eq!(
        answer.correlation_header.as_deref(),
        Some(correlation_id.as_str())
    );
    assert_eq!(answer.json["correlation_id"], json!(correlation_id));

    // The database free again, the same request gets its ordinary answer.
    stuck.rollback().await.unwrap();
    let answer = api
        .redeem(
            &Uuid::new_v4().to_string(),
            json!({"password": "a new password", "secret": "not-a-real-secret"}),
        )
        .await;
    assert_eq!(
        (answer.status, answer.json["code"].clone()),
        (200, json!(40030)),
        "{}",
        answer.text
    );
}
