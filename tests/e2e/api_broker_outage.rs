//! The broker goes away: the api answers 503 / 40028, reports not ready, and recovers by itself —
//! on another node of `AMQP_URL` when it lists several, also when its node hangs without closing.

use resetmail_testkit::{
    PATIENCE, broker, broker::TestBroker, db::TestDb, eventually, proxy::TcpProxy,
};
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
    until_queued(&api, request).await;

    // Exactly the two requests answered code 0 are queued; none of the refused ones.
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 2);
}

/// Two proxies in front of the one broker: two nodes of a cluster, as far as the api can tell.
async fn two_nodes() -> (TcpProxy, TcpProxy) {
    let first = TcpProxy::start(broker::server_addr()).await;
    let second = TcpProxy::start(broker::server_addr()).await;
    (first, second)
}

/// Which of the two proxies carries the api's connection: (in use, the other).
fn in_use(nodes: (TcpProxy, TcpProxy)) -> (TcpProxy, TcpProxy) {
    match (nodes.0.live_connections(), nodes.1.live_connections()) {
        (1, 0) => nodes,
        (0, 1) => (nodes.1, nodes.0),
        other => panic!("the api should hold one connection to one node, not {other:?}"),
    }
}

/// Posts until an answer is code 0; every other answer must be 503 / 40028.
async fn until_queued(api: &TestApi, request: &str) {
    eventually("a code 0 answer", PATIENCE, || async {
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
    })
    .await;
}

/// The api's `resetmail_broker_connected` for the node at `port`.
async fn connected_gauge(api: &TestApi, port: u16) -> String {
    let metrics = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .unwrap_or_else(|error| panic!("GET /metrics: {error}"))
        .text()
        .await
        .unwrap_or_else(|error| panic!("GET /metrics: {error}"));
    let series = format!("resetmail_broker_connected{{node=\"127.0.0.1:{port}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .to_owned()
}

#[tokio::test]
async fn an_api_given_several_nodes_moves_to_another_when_its_node_dies() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let nodes = two_nodes().await;
    let config = broker.config_via_nodes(&[nodes.0.port(), nodes.1.port()]);
    let api = TestApi::start(&db, &config).await;
    let request = r#"{"email":"jane@example.com"}"#;
    assert_eq!(api.post_reset(request).await.text, OK);
    let (dead, alive) = in_use(nodes);
    assert_eq!(connected_gauge(&api, dead.port()).await, "1");

    dead.cut();
    until_queued(&api, request).await;
    assert_eq!(alive.live_connections(), 1);
    assert_eq!(connected_gauge(&api, dead.port()).await, "0");
    assert_eq!(connected_gauge(&api, alive.port()).await, "1");
    // The two requests answered code 0 are queued, whichever node took them.
    assert_eq!(broker.count(&broker.topology.work_queue()).await, 2);
}

#[tokio::test]
async fn an_api_whose_node_hangs_without_closing_moves_to_another() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let nodes = two_nodes().await;
    let config = broker.config_via_nodes(&[nodes.0.port(), nodes.1.port()]);
    let api = TestApi::start_with(&db, &config, &["--publish-timeout", "300ms"]).await;
    let request = r#"{"email":"jane@example.com"}"#;
    assert_eq!(api.post_reset(request).await.text, OK);
    let (hung, alive) = in_use(nodes);

    // The connection stays open; nothing comes back, confirms included.
    hung.stall();
    until_queued(&api, request).await;
    assert_eq!(alive.live_connections(), 1);
    assert_eq!(connected_gauge(&api, alive.port()).await, "1");
    hung.unstall();
}
