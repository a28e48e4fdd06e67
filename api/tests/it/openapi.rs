//! The API document: `POST /user/reset` in it against the schema Cloudreve v4 publishes for that route
//! (both documents read the same way, their references resolved), the document whole (every
//! reference resolves), and `GET /api/v4/openapi.json` as the api binary serves it.

use std::collections::{BTreeMap, BTreeSet};

use resetmail_testkit::{
    PATIENCE,
    broker::TestBroker,
    db::TestDb,
    process::{Process, http_get},
};
use serde_json::{Value, json};

use crate::binary::{BINARY, environment, http_addr};

/// Cloudreve v4's published schema of `POST /user/reset`: OpenAPI 3.0.1 as Apifox exports it.
const CLOUDREVE: &str = include_str!("../fixtures/cloudreve-user-reset.openapi.yaml");

/// Cloudreve's own base path, the server of its documented paths.
const CLOUDREVE_BASE: &str = "/api/v4";

/// One property of an object schema, as both documents can write it.
#[derive(Debug, PartialEq, Eq)]
struct Property {
    /// JSON types, `null` included when the property is nullable (OpenAPI 3.0's `nullable: true`,
    /// 3.1's `type: [T, "null"]`, or a `oneOf` with `{"type": "null"}`).
    types: BTreeSet<String>,
    /// `format`, except an integer's width: Cloudreve's documents give none.
    format: Option<String>,
}

/// An object schema, read: its properties and the required ones.
#[derive(Debug, Default, PartialEq, Eq)]
struct Object {
    properties: BTreeMap<String, Property>,
    required: BTreeSet<String>,
}

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

/// Reads a property's schema.
fn read_property(document: &Value, schema: &Value) -> Result<Property, String> {
    let schema = resolve(document, schema)?;
    if let Some(members) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        let members = members.as_array().ok_or("oneOf is not a list")?;
        let (null, other): (Vec<&Value>, Vec<&Value>) = members
            .iter()
            .partition(|member| member.get("type") == Some(&json!("null")));
        let [other] = other[..] else {
            return Err(format!("a choice of several schemas: {schema}"));
        };
        let mut property = read_property(document, other)?;
        if !null.is_empty() {
            property.types.insert("null".to_owned());
        }
        return Ok(property);
    }
    let mut types: BTreeSet<String> = match schema.get("type") {
        Some(Value::String(name)) => [name.clone()].into(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|name| {
                name.as_str()
                    .map(str::to_owned)
                    .ok_or("a type is not a string")
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(format!("a property without a type: {schema}")),
    };
    if schema.get("nullable") == Some(&json!(true)) {
        types.insert("null".to_owned());
    }
    let format = schema
        .get("format")
        .and_then(Value::as_str)
        .filter(|format| !(types.contains("integer") && matches!(*format, "int32" | "int64")))
        .map(str::to_owned);
    Ok(Property { types, format })
}

/// Reads an object schema: its own properties, those of `allOf` (OpenAPI's composition) and those of
/// `x-apifox-refs` (Apifox's: each a `$ref` whose properties are copied in, less those its
/// `x-apifox-overrides` set to null; the export also inlines the copies and lists them in
/// `x-apifox-ignore-properties`, and they must agree with the reference).
fn read_object(document: &Value, schema: &Value) -> Result<Object, String> {
    let schema = resolve(document, schema)?;
    let mut object = Object::default();
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let part = read_object(document, part)?;
        object.properties.extend(part.properties);
        object.required.extend(part.required);
    }
    let copied: BTreeSet<&str> = schema
        .get("x-apifox-ignore-properties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut referenced = Object::default();
    for (_, reference) in schema
        .get("x-apifox-refs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut part = read_object(document, reference)?;
        for (name, value) in reference
            .get("x-apifox-overrides")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if !value.is_null() {
                return Err(format!(
                    "an override other than removal, of {name}: {value}"
                ));
            }
            part.properties.remove(name);
            part.required.remove(name);
        }
        referenced.properties.extend(part.properties);
        referenced.required.extend(part.required);
    }
    for (name, property) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let property = read_property(document, property)?;
        if copied.contains(name.as_str()) {
            match referenced.properties.get(name) {
                Some(from_reference) if *from_reference == property => {}
                Some(from_reference) => {
                    return Err(format!(
                        "{name} is {property:?} inline but {from_reference:?} in its reference"
                    ));
                }
                None => {
                    return Err(format!(
                        "{name} is said to be copied, but no reference has it"
                    ));
                }
            }
        }
        object.properties.insert(name.clone(), property);
    }
    object.properties.extend(referenced.properties);
    object.required.extend(referenced.required);
    object.required.extend(
        schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
    if let Some(name) = object
        .required
        .iter()
        .find(|name| !object.properties.contains_key(*name))
    {
        return Err(format!("{name} is required but not a property"));
    }
    Ok(object)
}

/// The JSON schema of an operation's request body, or of its answer with `status`.
fn body_schema<'a>(
    document: &'a Value,
    path: &str,
    method: &str,
    status: Option<&str>,
) -> Result<&'a Value, String> {
    let operation = document
        .get("paths")
        .and_then(|paths| paths.get(path))
        .and_then(|item| item.get(method))
        .ok_or_else(|| format!("no {method} {path}"))?;
    let body = match status {
        None => operation.get("requestBody"),
        Some(status) => operation
            .get("responses")
            .and_then(|responses| responses.get(status)),
    }
    .ok_or_else(|| format!("{method} {path}: no body for {status:?}"))?;
    resolve(document, body)?
        .pointer("/content/application~1json/schema")
        .ok_or_else(|| format!("{method} {path}: no JSON body for {status:?}"))
}

/// How `theirs` and `ours` differ in properties, property by property.
fn property_differences(what: &str, theirs: &Object, ours: &Object) -> Vec<String> {
    let names: BTreeSet<&String> = theirs
        .properties
        .keys()
        .chain(ours.properties.keys())
        .collect();
    names
        .into_iter()
        .filter_map(
            |name| match (theirs.properties.get(name), ours.properties.get(name)) {
                (Some(theirs), Some(ours)) if theirs == ours => None,
                (Some(theirs), Some(ours)) => Some(format!(
                    "{what}: {name} is {ours:?} in ours, {theirs:?} in Cloudreve's"
                )),
                (Some(_), None) => Some(format!("{what}: {name} is missing from ours")),
                (None, _) => Some(format!("{what}: {name} is ours only")),
            },
        )
        .collect()
}

/// How our `POST /user/reset` differs from Cloudreve's: the same path and method; the request body's
/// properties (type, nullability, format) and required ones the same; the answer's properties the
/// same, and every one Cloudreve requires required in ours (ours may promise more: `msg` is always
/// there, as in Cloudreve's own answers).
fn reset_differences(cloudreve: &Value, ours: &Value) -> Result<Vec<String>, String> {
    let mut differences = Vec::new();
    let (theirs_request, ours_request) = (
        read_object(
            cloudreve,
            body_schema(cloudreve, "/user/reset", "post", None)?,
        )?,
        read_object(ours, body_schema(ours, "/user/reset", "post", None)?)?,
    );
    differences.extend(property_differences(
        "request",
        &theirs_request,
        &ours_request,
    ));
    if theirs_request.required != ours_request.required {
        differences.push(format!(
            "request: {:?} required in ours, {:?} in Cloudreve's",
            ours_request.required, theirs_request.required
        ));
    }
    let (theirs_answer, ours_answer) = (
        read_object(
            cloudreve,
            body_schema(cloudreve, "/user/reset", "post", Some("200"))?,
        )?,
        read_object(ours, body_schema(ours, "/user/reset", "post", Some("200"))?)?,
    );
    differences.extend(property_differences("answer", &theirs_answer, &ours_answer));
    if !theirs_answer.required.is_subset(&ours_answer.required) {
        differences.push(format!(
            "answer: {:?} required in ours, {:?} in Cloudreve's",
            ours_answer.required, theirs_answer.required
        ));
    }
    Ok(differences)
}

/// Cloudreve's document, read from its YAML.
fn cloudreve_document() -> Value {
    yaml_serde::from_str(CLOUDREVE).unwrap_or_else(|error| panic!("the fixture: {error}"))
}

/// Our document, its server Cloudreve's base path.
fn our_document() -> Value {
    serde_json::to_value(resetmail_api::openapi::document(CLOUDREVE_BASE)).unwrap()
}

#[test]
fn reset_request_and_answer_match_cloudreves_published_schema() {
    let (cloudreve, ours) = (cloudreve_document(), our_document());

    let differences = reset_differences(&cloudreve, &ours).unwrap();

    assert_eq!(differences, Vec::<String>::new());
    // What was compared, read from Cloudreve's document: its composition resolved as intended.
    let request = read_object(
        &cloudreve,
        body_schema(&cloudreve, "/user/reset", "post", None).unwrap(),
    )
    .unwrap();
    let string = |nullable: bool, format: Option<&str>| Property {
        types: if nullable {
            ["string".to_owned(), "null".to_owned()].into()
        } else {
            ["string".to_owned()].into()
        },
        format: format.map(str::to_owned),
    };
    assert_eq!(
        request,
        Object {
            properties: [
                ("email".to_owned(), string(false, Some("email"))),
                ("captcha".to_owned(), string(true, None)),
                ("ticket".to_owned(), string(true, None)),
            ]
            .into(),
            required: ["email".to_owned()].into(),
        }
    );
    let answer = read_object(
        &cloudreve,
        body_schema(&cloudreve, "/user/reset", "post", Some("200")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        answer,
        Object {
            properties: [
                (
                    "code".to_owned(),
                    Property {
                        types: ["integer".to_owned()].into(),
                        format: None
                    }
                ),
                ("msg".to_owned(), string(false, None)),
                ("error".to_owned(), string(true, None)),
                ("correlation_id".to_owned(), string(true, Some("uuid"))),
            ]
            .into(),
            required: ["code".to_owned()].into(),
        }
    );
    assert_eq!(ours["servers"], json!([{"url": CLOUDREVE_BASE}]));
}

#[test]
fn a_document_that_drifts_from_cloudreves_reset_schema_is_told_apart() {
    let cloudreve = cloudreve_document();
    let drifts: [(&str, &str, Value); 6] = [
        (
            "email without its format",
            "/components/schemas/ResetRequest/properties/email",
            json!({"type": "string"}),
        ),
        (
            "captcha not nullable",
            "/components/schemas/ResetRequest/properties/captcha",
            json!({"type": "string"}),
        ),
        (
            "ticket required",
            "/components/schemas/ResetRequest/required",
            json!(["email", "ticket"]),
        ),
        (
            "email optional",
            "/components/schemas/ResetRequest/required",
            json!([]),
        ),
        (
            "code a string",
            "/components/schemas/Envelope/properties/code",
            json!({"type": "string"}),
        ),
        (
            "correlation_id without its format",
            "/components/schemas/Envelope/properties/correlation_id",
            json!({"type": ["string", "null"]}),
        ),
    ];
    for (drift, pointer, value) in drifts {
        let mut ours = our_document();
        *ours
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in our document")) = value;

        let differences = reset_differences(&cloudreve, &ours).unwrap();

        assert_ne!(differences, Vec::<String>::new(), "{drift} went unnoticed");
    }
    let mut ours = our_document();
    if let Some(properties) = ours
        .pointer_mut("/components/schemas/Envelope/properties")
        .and_then(Value::as_object_mut)
    {
        properties.insert("data".to_owned(), json!({"type": "string"}));
    }
    let differences = reset_differences(&cloudreve, &ours).unwrap();
    assert_eq!(differences, ["answer: data is ours only"]);
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
        resolve(&ours, reference).unwrap();
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
        .unwrap();

    let answer = client
        .get(format!("http://{addr}/api/v4/openapi.json"))
        .send()
        .await
        .unwrap();

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
