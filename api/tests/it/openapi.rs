//! The API document: `GET /api/v4/openapi.json` as the api binary serves it, and the document
//! itself, whole (every reference resolves).

use std::collections::BTreeMap;

use resetmail_testkit::{
    PATIENCE,
    broker::TestBroker,
    db::TestDb,
    process::{Process, http_get},
};
use serde_json::{Value, json};

use crate::binary::{BINARY, environment, http_addr};

/// `schema`, its `$ref`s followed within `document`.
fn resolve<'a>(document: &'a Value, mut schema: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..16 {
        let Some(reference) = schema.get("$ref") else {
            return Ok(schema);
        };
        let pointer = reference
            .as_str()
            .and_then(|reference| reference.strip_prefix('#'))
            .ok_or_else(|| format!("not a reference within the document: {reference}"))?;
        schema = document
            .pointer(pointer)
            .ok_or_else(|| format!("{reference} refers to nothing"))?;
    }
    Err(format!("a cycle of references at {schema}"))
}

fn our_document() -> Value {
    serde_json::to_value(resetmail_api::openapi::document("/api/v4"))
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn every_reference_in_the_document_resolves() {
    fn references<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
        match value {
            Value::Object(object) => {
                if object.contains_key("$ref") {
                    found.push(value);
                }
                object.values().for_each(|value| references(value, found));
            }
            Value::Array(values) => values.iter().for_each(|value| references(value, found)),
            _ => {}
        }
    }
    let ours = our_document();
    let mut found = Vec::new();
    references(&ours, &mut found);

    assert!(!found.is_empty());
    for reference in found {
        resolve(&ours, reference).unwrap_or_else(|error| panic!("{error}"));
    }
}

#[test]
fn the_documented_password_lengths_are_the_enforced_ones() {
    let ours = our_document();

    let password = &ours["components"]["schemas"]["RedeemRequest"]["properties"]["password"];

    let enforced = resetmail_api::routes::redeem::PASSWORD_CHARS;
    assert_eq!(
        (&password["minLength"], &password["maxLength"]),
        (&json!(enforced.start()), &json!(enforced.end())),
        "{password}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_serves_its_document_of_its_three_routes_like_any_api_route() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let mut api = Process::start(BINARY, &[], &environment(&db.config, &broker));
    let addr = http_addr(&api).await;
    // The same TLS provider as the api's own clients (reqwest is built without one of its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap_or_else(|error| panic!("{error}"));

    let answer = client
        .get(format!("http://{addr}/api/v4/openapi.json"))
        .send()
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(answer.status(), 200);
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert!(
        header("x-cr-correlation-id").is_some_and(|id| uuid::Uuid::try_parse(&id).is_ok()),
        "no correlation id on the answer"
    );
    let document: Value = answer
        .json()
        .await
        .unwrap_or_else(|error| panic!("not JSON: {error}"));
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.")),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["servers"], json!([{"url": "/api/v4"}]));
    let routes: BTreeMap<&str, Vec<&str>> = document["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no paths: {document}"))
        .iter()
        .map(|(path, item)| {
            let methods = item.as_object().into_iter().flatten();
            (
                path.as_str(),
                methods.map(|(method, _)| method.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        BTreeMap::from([
            ("/site/captcha", vec!["get"]),
            ("/user/reset", vec!["post"]),
            ("/user/reset/{id}", vec!["patch"]),
        ])
    );
    // Counted as the other api routes are (the per-route layers: metrics, then the rate limit).
    let (status, metrics) = http_get(&addr, "/metrics", PATIENCE).await;
    assert_eq!(status, 200);
    let served = r#"resetmail_api_requests_total{route="/api/v4/openapi.json",code="0"} 1"#;
    assert!(
        metrics.lines().any(|line| line == served),
        "{served} is not in:\n{metrics}"
    );
    api.stop_cleanly(PATIENCE).await;
}
