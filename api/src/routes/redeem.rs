//! `PATCH {base}/user/reset/{id}`: redeem a reset link. The token is checked and spent in one
//! statement, the new password stored as argon2id, every other outstanding token of the account
//! revoked. A wrong, expired, used or revoked link all get the same answer.

use axum::{
    Json as JsonResponse,
    extract::{Path, State},
};
use resetmail_shared::{
    db::{tokens, users},
    token::hash_secret,
};
use uuid::Uuid;

use crate::{AppState, envelope::Envelope, error::ApiError, extract::Json, password};

/// Shortest and longest password accepted, in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 6..=128;

/// The body Cloudreve's frontend sends from the reset page.
#[derive(serde::Deserialize)]
pub struct RedeemRequest {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    secret: Option<String>,
}

/// The account, as Cloudreve's frontend reads it after a reset (it signs in with `email`).
#[derive(Debug, serde::Serialize)]
pub struct ResetUser {
    /// The opaque id.
    pub id: Uuid,
    /// The account's address.
    pub email: String,
    /// Its display name (empty when it has none).
    pub nickname: String,
}

/// Sets a new password with the secret from a reset link.
pub async fn redeem_reset(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<RedeemRequest>,
) -> Result<JsonResponse<Envelope<ResetUser>>, ApiError> {
    let public_id =
        Uuid::try_parse(&id).map_err(|_| ApiError::Invalid("Failed to parse object ID"))?;
    let password = request.password.unwrap_or_default();
    let length = password.chars().count();
    if length == 0 {
        return Err(ApiError::Invalid("Password cannot be empty"));
    }
    if length < *PASSWORD_CHARS.start() {
        return Err(ApiError::Invalid("Password too short"));
    }
    if length > *PASSWORD_CHARS.end() {
        return Err(ApiError::Invalid("Password too long"));
    }
    let secret = request.secret.unwrap_or_default();
    if secret.is_empty() {
        return Err(ApiError::Invalid("Secret cannot be empty"));
    }

    // Hashed before the link is checked: every well-formed attempt costs the same (the wait for a
    // turn included), and the transaction below never waits on the hash.
    let password_hash = password::hash(password)
        .await
        .map_err(|error| ApiError::Internal(format!("cannot hash the password: {error}")))?;

    let internal =
        |error: sqlx::Error| ApiError::Internal(format!("cannot redeem the link: {error}"));
    let mut tx = state.pool.begin().await.map_err(internal)?;
    let Some(user) = tokens::redeem(&mut *tx, public_id, &hash_secret(&secret))
        .await
        .map_err(internal)?
    else {
        tracing::info!(user.public_id = %public_id, "reset link refused: wrong, expired, used or revoked");
        return Err(ApiError::LinkExpired);
    };
    users::set_password_hash(&mut *tx, user.user_id, &password_hash)
        .await
        .map_err(internal)?;
    let revoked = tokens::revoke_all(&mut *tx, user.user_id)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(user.public_id = %user.public_id, tokens.revoked = revoked, "password reset by link");
    Ok(JsonResponse(Envelope {
        code: 0,
        msg: String::new(),
        data: Some(ResetUser {
            id: user.public_id,
            email: user.email,
            nickname: user.nick.unwrap_or_default(),
        }),
        error: None,
        correlation_id: None,
    }))
}
