//! The broker goes away: the api answers 503 / 40028, reports not ready, and recovers by itself.

use resetmail_testkit::{PATIENCE, broker, eventually, proxy::TcpProxy};
use serde_json::json;

use crate::harness::TestApi;

const OK: &str = r#"{"code":0,"msg":""}"#;

#[tokio::test]
async fn broker_down_answers_503_and_recovers_when_it_is_back() {
    let db = resetmail_testkit::db::TestDb::new().await;
    let broker = resetmail_testkit::broker::TestBroker::new().await;
    let proxy = TcpProxy::start(broker::server_addr()).await;
    let api = TestApi::start(&db, &broker.config_via(proxy.port())).await;
    let request = r#"{"email":"jane@example.com"}"#;

    assert_eq!(api.post_reset(request).await.text, OK);

    proxy.cut();
    let refused = api.post_reset(request).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.json["code"], json!(40028));
    assert_eq!(
        refused.json["correlation_id"],
        json!(refused.correlation_header.clone().unwrap_or_default())
    );
    let not_ready = eventually("readyz to report the broker down", PATIENCE, || async {
        let ready = api
            .send(api.client.get(format!("{}/readyz", api.base)))
            .await;
        (ready.status == 503).then_some(ready)
    })
    .await;
    assert_eq!(not_ready.json["data"]["broker"], json!(false));

    proxy.restore();
    eventually(
        "a code 0 answer after the broker is back",
        PATIENCE,
        || async {
            let answer = api.post_reset(request).await;
            if answer.text == OK {
                return Some(());
            }
            assert_eq!(
                (answer.status, answer.json["code"].clone()),
                (503, json!(40028)),
                "{}",
                answer.text
            );
            None
        },
    )
    .await;

    // Exactly the two requests answered code 0 are queued; none of the refused ones.
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 2);
}
