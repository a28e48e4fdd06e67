//! `PATCH {base}/user/reset/{id}`: redeem a reset link. The token is checked and spent in one
//! statement, the new password stored (argon2id for a built-in account; Cloudreve's own format in
//! the site's `users.password` for a Cloudreve account, since Cloudreve's sign-in must verify it),
//! every other outstanding token of the account revoked. A wrong, expired, used or revoked link all
//! get the same answer.

use std::collections::BTreeMap;

use axum::{
    Json as JsonResponse,
    extract::{Path, State},
};
use resetmail_shared::{
    db::{
        cloudreve, tokens,
        users::{self, Accounts},
    },
    hashid::ObjectKind,
    token::hash_secret,
};
use utoipa::{
    PartialSchema as _,
    openapi::{RefOr, response::Response},
};
use uuid::Uuid;

use crate::{AppState, envelope::DataEnvelope, error::ApiError, extract::Json, openapi, password};

/// Shortest and longest password accepted, in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 6..=128;

/// The link's id is not one this api writes (Cloudreve's answer to a bad object id).
const BAD_LINK_ID: ApiError = ApiError::Invalid("Failed to parse object ID");
/// No password was given.
const PASSWORD_EMPTY: ApiError = ApiError::Invalid("Password cannot be empty");
/// The password is shorter than [`PASSWORD_CHARS`].
const PASSWORD_SHORT: ApiError = ApiError::Invalid("Password too short");
/// The password is longer than [`PASSWORD_CHARS`].
const PASSWORD_LONG: ApiError = ApiError::Invalid("Password too long");
/// No secret was given.
const SECRET_EMPTY: ApiError = ApiError::Invalid("Secret cannot be empty");

/// The body Cloudreve's frontend sends from the reset page.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct RedeemRequest {
    /// The new password, 6 to 128 characters.
    // Read as optional, as the email of a reset request is: a missing one gets Cloudreve's answer.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 6, max_length = 128)]
    password: Option<String>,
    /// The `secret` of the reset link.
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    secret: Option<String>,
}

/// The account, as Cloudreve's frontend reads it after a reset (it signs in with `email`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ResetUser {
    /// The account's id, as in the link.
    pub id: String,
    /// The account's address.
    #[schema(format = Email)]
    pub email: String,
    /// Its display name (empty when it has none).
    pub nickname: String,
}

/// `PATCH /user/reset/{id}`'s answers in the API document: the account, or a failure.
pub struct RedeemAnswers;

impl utoipa::IntoResponses for RedeemAnswers {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let refusals = [
            BAD_LINK_ID,
            PASSWORD_EMPTY,
            PASSWORD_SHORT,
            PASSWORD_LONG,
            SECRET_EMPTY,
            ApiError::LinkExpired,
        ];
        openapi::answers(
            "The password is set and the link spent",
            DataEnvelope::<ResetUser>::schema(),
            DataEnvelope::ok(ResetUser {
                id: "9b2f4e0c-51c4-4a51-8f3e-2a1c5d7e9f00".to_owned(),
                email: "jane@example.com".to_owned(),
                nickname: "Jane".to_owned(),
            }),
            openapi::body_failures()
                .into_iter()
                .chain(refusals)
                .chain(openapi::every_route_failures()),
        )
    }
}

/// Sets a new password with the secret from a reset link.
///
/// A wrong, expired, used or revoked link gets one answer, `40030`. Every other link of the
/// account is revoked.
#[utoipa::path(
    patch,
    path = "/user/reset/{id}",
    tag = "User",
    params(("id", description = "The account's id, as in the reset link")),
    responses(RedeemAnswers)
)]
pub async fn redeem_reset(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<RedeemRequest>,
) -> Result<JsonResponse<DataEnvelope<ResetUser>>, ApiError> {
    let account = LinkAccount::parse(&state.accounts, &id)?;
    let password = request.password.unwrap_or_default();
    let length = password.chars().count();
    if length == 0 {
        return Err(PASSWORD_EMPTY);
    }
    if length < *PASSWORD_CHARS.start() {
        return Err(PASSWORD_SHORT);
    }
    if length > *PASSWORD_CHARS.end() {
        return Err(PASSWORD_LONG);
    }
    let secret = request.secret.unwrap_or_default();
    if secret.is_empty() {
        return Err(SECRET_EMPTY);
    }

    // Hashed before the link is checked: every well-formed attempt costs the same (the wait for a
    // turn included), and the transaction below never waits on the hash.
    let stored = match account {
        LinkAccount::Builtin(_) => password::hash(password)
            .await
            .map_err(|error| ApiError::Internal(format!("cannot hash the password: {error}")))?,
        LinkAccount::Cloudreve(_) => password::cloudreve::cloudreve_digest(&password)
            .map_err(|error| ApiError::Internal(format!("cannot salt the password: {error}")))?,
    };

    let internal =
        |error: sqlx::Error| ApiError::Internal(format!("cannot redeem the link: {error}"));
    let token_hash = hash_secret(&secret);
    let mut tx = state.pool.begin().await.map_err(internal)?;
    let redeemed = match account {
        LinkAccount::Builtin(public_id) => tokens::redeem(&mut *tx, public_id, &token_hash)
            .await
            .map_err(internal)?
            .map(|user| (user.user_id, user.email, user.nick.unwrap_or_default())),
        LinkAccount::Cloudreve(user_id) => cloudreve::redeem(&mut *tx, user_id, &token_hash)
            .await
            .map_err(internal)?
            .map(|(email, nick)| (user_id, email, nick)),
    };
    let Some((user_id, email, nickname)) = redeemed else {
        tracing::info!(user.link_id = %id, "reset link refused: wrong, expired, used or revoked");
        return Err(ApiError::LinkExpired);
    };
    match account {
        LinkAccount::Builtin(_) => users::set_password_hash(&mut *tx, user_id, &stored).await,
        LinkAccount::Cloudreve(_) => cloudreve::set_password(&mut *tx, user_id, &stored).await,
    }
    .map_err(internal)?;
    let revoked = tokens::revoke_all(&mut *tx, user_id)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(user.link_id = %id, tokens.revoked = revoked, "password reset by link");
    Ok(JsonResponse(DataEnvelope::ok(ResetUser {
        id,
        email,
        nickname,
    })))
}

/// The account a link's id names.
#[derive(Clone, Copy)]
enum LinkAccount {
    /// A built-in account's `public_id`.
    Builtin(Uuid),
    /// A Cloudreve account's `users.id`.
    Cloudreve(i64),
}

impl LinkAccount {
    /// Reads `id` as `accounts` write it; an id that is not one is refused as Cloudreve refuses it.
    fn parse(accounts: &Accounts, id: &str) -> Result<Self, ApiError> {
        match accounts {
            Accounts::Builtin => Uuid::try_parse(id)
                .map(Self::Builtin)
                .map_err(|_| BAD_LINK_ID),
            Accounts::Cloudreve(ids) => ids
                .decode(id, ObjectKind::User)
                .ok()
                .and_then(|user_id| i64::try_from(user_id).ok())
                .map(Self::Cloudreve)
                .ok_or(BAD_LINK_ID),
        }
    }
}
