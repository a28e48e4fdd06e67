//! Accounts: looked up by address (ASCII case folded), added by the `user add` command; and how the
//! queries reach accounts, here or in a Cloudreve site's database ([`Accounts`]).

use std::{fmt, str::FromStr};

use anyhow::Context as _;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{config::AccountSource, hashid::HashIds};

/// Whether an account may receive a reset email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UserStatus {
    /// May reset its password.
    Active,
    /// Not activated yet: no email.
    Inactive,
    /// Banned: no email.
    Banned,
}

impl UserStatus {
    /// The value stored in `users.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Banned => "banned",
        }
    }
}

impl fmt::Display for UserStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for UserStatus {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "active" => Ok(Self::Active),
            "inactive" => Ok(Self::Inactive),
            "banned" => Ok(Self::Banned),
            other => Err(format!("unknown account status `{other}`")),
        }
    }
}

/// Where the queries find accounts, and how reset links name them.
#[derive(Clone, Debug)]
pub enum Accounts {
    /// resetmail's own `users` table; links carry the account's `public_id`.
    Builtin,
    /// A Cloudreve site's `public.users`; links carry the account's id as the site encodes it.
    Cloudreve(HashIds),
}

impl Accounts {
    /// The accounts of `source`: in Cloudreve mode the site's `hash_id_salt` is read from its
    /// settings (a site without one cannot make links the site understands).
    pub async fn load(pool: &sqlx::PgPool, source: AccountSource) -> anyhow::Result<Self> {
        match source {
            AccountSource::Builtin => Ok(Self::Builtin),
            AccountSource::Cloudreve => {
                let settings = super::cloudreve::site_settings(pool)
                    .await
                    .context("cannot read the Cloudreve site's settings")?;
                let salt = settings.get("hash_id_salt").context(
                    "the Cloudreve site has no `hash_id_salt` setting: start Cloudreve once so that it makes one",
                )?;
                Ok(Self::Cloudreve(
                    HashIds::new(salt).map_err(anyhow::Error::msg)?,
                ))
            }
        }
    }
}

/// An account, as the worker needs it.
#[derive(Clone, Debug)]
pub struct User {
    /// Database id (never shown outside).
    pub id: i64,
    /// The id reset links carry: the opaque `public_id` of a built-in account, Cloudreve's own id
    /// of a Cloudreve account.
    pub link_id: String,
    /// The address stored on the account: the one the email goes to.
    pub email: String,
    /// Display name, if any.
    pub nick: Option<String>,
    /// Whether it may receive an email.
    pub status: UserStatus,
    /// Preferred language such as `en-US`, if known.
    pub language: Option<String>,
}

pub(super) struct UserRow {
    pub(super) id: i64,
    pub(super) public_id: Uuid,
    pub(super) email: String,
    pub(super) nick: Option<String>,
    pub(super) status: String,
    pub(super) language: Option<String>,
}

impl TryFrom<UserRow> for User {
    type Error = sqlx::Error;
    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        Ok(User {
            id: row.id,
            link_id: row.public_id.to_string(),
            email: row.email,
            nick: row.nick,
            status: row
                .status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            language: row.language,
        })
    }
}

/// A new account, as `resetmail-api user add` creates it.
#[derive(Clone, Debug)]
pub struct NewUser<'a> {
    /// Its address.
    pub email: &'a str,
    /// Display name.
    pub nick: Option<&'a str>,
    /// Language such as `zh-CN`.
    pub language: Option<&'a str>,
    /// Status.
    pub status: UserStatus,
}

/// Inserts an account; fails if one with the same address (ASCII case folded) exists.
pub async fn insert(executor: impl PgExecutor<'_>, user: &NewUser<'_>) -> sqlx::Result<User> {
    let row = sqlx::query_as!(
        UserRow,
        "INSERT INTO users (email, nick, language, status) VALUES ($1, $2, $3, $4)
         RETURNING id, public_id, email, nick, status, language",
        user.email,
        user.nick,
        user.language,
        user.status.as_str(),
    )
    .fetch_one(executor)
    .await?;
    User::try_from(row)
}

/// Stores a new password hash (a PHC string) for the account.
pub async fn set_password_hash(
    executor: impl PgExecutor<'_>,
    user_id: i64,
    password_hash: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id,
        password_hash,
    )
    .execute(executor)
    .await?;
    Ok(())
}
