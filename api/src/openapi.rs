//! The API document served at `GET {base}/openapi.json`: OpenAPI 3.1, generated from the handlers
//! (`#[utoipa::path]`), their request and answer types (`ToSchema`), and, for each route's failures,
//! from [`ApiError`] itself: the codes, HTTP statuses and messages are the ones it answers with.

use std::collections::BTreeMap;

use utoipa::{
    OpenApi as _, ToSchema as _,
    openapi::{
        ContentBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Ref, RefOr, ResponseBuilder,
        Schema, SchemaFormat, Type, example::ExampleBuilder, header::HeaderBuilder,
        response::Response, server::Server,
    },
};
use uuid::Uuid;

use crate::{
    captcha::graphic::Issued, correlation, envelope::Envelope, error::ApiError, routes,
    routes::redeem::ResetUser,
};

/// The media type of every body.
const JSON: &str = "application/json";

/// The correlation id the document's examples of failures carry.
const EXAMPLE_CORRELATION_ID: Uuid = Uuid::from_u128(0xb435_1ecc_ee1a_4455_bc94_2c3d_bcc5_8538);

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        routes::reset::send_reset,
        routes::redeem::redeem_reset,
        routes::captcha::get_captcha
    ),
    // The answers' schemas; the request bodies' are found from the handlers. A missing one would be a
    // `$ref` to nothing, which the tests look for.
    components(schemas(Envelope, ResetUser, Issued))
)]
struct Document;

/// The document of the api served under `base_path`: its paths are relative to that server
/// (`/user/reset` on `/api/v4`), as in Cloudreve's own documentation.
pub fn document(base_path: &str) -> utoipa::openapi::OpenApi {
    let mut document = Document::openapi();
    let base = base_path.trim_end_matches('/');
    document.servers = Some(vec![Server::new(if base.is_empty() { "/" } else { base })]);
    document
}

/// A route's answers: `success` under 200 (with the failures Cloudreve also answers with HTTP 200, as
/// `oneOf` when the success has a payload), and every other failure under its HTTP status. Each
/// failure is an example, named by its code and message, of the body the api sends.
pub fn answers(
    success_description: &str,
    success: RefOr<Schema>,
    success_example: impl serde::Serialize,
    failures: impl IntoIterator<Item = ApiError>,
) -> BTreeMap<String, RefOr<Response>> {
    let envelope: RefOr<Schema> = Ref::from_schema_name(Envelope::name()).into();
    let mut by_status: BTreeMap<u16, Vec<ApiError>> = BTreeMap::new();
    for failure in failures {
        let same = by_status.entry(failure.status().as_u16()).or_default();
        if !same
            .iter()
            .any(|known| (known.code(), known.to_string()) == (failure.code(), failure.to_string()))
        {
            same.push(failure);
        }
    }
    let refused_on_success = by_status.remove(&200).unwrap_or_default();
    let mut answers = BTreeMap::new();
    let schema = if refused_on_success.is_empty() || success == envelope {
        success
    } else {
        RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .item(success)
                .item(envelope.clone())
                .build(),
        ))
    };
    let succeeded = serde_json::to_value(success_example).ok();
    answers.insert(
        "200".to_owned(),
        response(success_description, schema, succeeded, &refused_on_success).into(),
    );
    for (status, failures) in by_status {
        let reason = axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Failure");
        answers.insert(
            status.to_string(),
            response(reason, envelope.clone(), None, &failures).into(),
        );
    }
    answers
}

/// One HTTP status's answer: `description`, then the failures it carries; the success (example
/// `"0"`) and each failure (named by its code and message) as examples of the body.
fn response(
    description: &str,
    schema: RefOr<Schema>,
    success: Option<serde_json::Value>,
    failures: &[ApiError],
) -> Response {
    let listed = failures
        .iter()
        .map(|failure| format!("- `{}` {}", failure.code(), failure))
        .collect::<Vec<_>>();
    let description = if listed.is_empty() {
        description.to_owned()
    } else {
        format!("{description}. Failures:\n{}", listed.join("\n"))
    };
    let refused = failures.iter().filter_map(|failure| {
        let mut body = failure.envelope();
        body.correlation_id = Some(EXAMPLE_CORRELATION_ID);
        let value = serde_json::to_value(body).ok()?;
        Some((format!("{} {}", failure.code(), failure), value))
    });
    let examples = success
        .map(|value| ("0".to_owned(), value))
        .into_iter()
        .chain(refused)
        .map(|(name, value)| (name, ExampleBuilder::new().value(Some(value)).build()));
    let mut answer = ResponseBuilder::new()
        .description(description)
        .content(
            JSON,
            ContentBuilder::new()
                .schema(Some(schema))
                .examples_from_iter(examples)
                .build(),
        )
        .header(
            correlation::HEADER.as_str(),
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                ))
                .description(Some("The request's correlation id, on every answer"))
                .build(),
        );
    if failures
        .iter()
        .any(|failure| matches!(failure, ApiError::RateLimited(_)))
    {
        answer = answer.header(
            axum::http::header::RETRY_AFTER.as_str(),
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                .description(Some("Seconds to wait before the next request"))
                .build(),
        );
    }
    answer.build()
}

/// The failures any api route can answer, whatever it does: too many requests from the client, the
/// request's time limit, a bug or an unreachable database.
pub fn every_route_failures() -> [ApiError; 3] {
    [
        ApiError::RateLimited(60),
        ApiError::Timeout(std::time::Duration::ZERO),
        ApiError::Internal(String::new()),
    ]
}

/// The failures of reading a route's JSON body ([`crate::extract::Json`]).
pub fn body_failures() -> [ApiError; 2] {
    [ApiError::Parameter(String::new()), ApiError::BodyTooLarge]
}
