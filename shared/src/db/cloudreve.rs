//! A Cloudreve v4 site's own tables, read as Cloudreve reads them (docs/CLOUDREVE.md): accounts from
//! `public.users`, site settings from `public.settings`. The only writes are a redeemed account's
//! `password` and `updated_at`.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::{PgExecutor, PgPool};

/// The columns resetmail reads or writes, by table; a database without them is not a Cloudreve v4
/// site's.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "users",
        &[
            "id",
            "email",
            "nick",
            "password",
            "status",
            "settings",
            "deleted_at",
            "updated_at",
        ],
    ),
    ("settings", &["name", "value"]),
];

/// Fails, saying what is missing, unless the database has Cloudreve's `users` and `settings` tables
/// in the schema `public` (where Cloudreve's PostgreSQL driver puts them).
pub async fn check_tables(pool: &PgPool) -> anyhow::Result<()> {
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name IN ('users', 'settings')",
    )
    .fetch_all(pool)
    .await
    .context("cannot read the database's tables (RESETMAIL_ACCOUNT_SOURCE=cloudreve)")?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .flat_map(|(table, columns)| columns.iter().map(move |column| (*table, *column)))
        .filter(|(table, column)| !found.iter().any(|(t, c)| t == table && c == column))
        .map(|(table, column)| format!("public.{table}.{column}"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "RESETMAIL_ACCOUNT_SOURCE=cloudreve, but DATABASE_URL's database is not a Cloudreve v4 site's: \
             it lacks {}. Point DATABASE_URL at the site's PostgreSQL database (Cloudreve's \
             [Database] section), or use RESETMAIL_ACCOUNT_SOURCE=builtin",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The site settings resetmail takes from Cloudreve, as stored (absent when the row is missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteSettings {
    /// `siteURL`: the site's addresses, comma-separated; the first is the canonical one.
    pub site_url: Option<String>,
    /// `siteName`.
    pub site_name: Option<String>,
    /// `hash_id_salt`: the salt of the site's object ids.
    pub hash_id_salt: Option<String>,
}

impl SiteSettings {
    /// The first address of `siteURL`, without a trailing slash (Cloudreve splits the list on
    /// commas and takes the first for links it makes outside a request).
    pub fn first_site_url(&self) -> Option<String> {
        let first = self.site_url.as_deref()?.split(',').next()?.trim();
        (!first.is_empty()).then(|| first.trim_end_matches('/').to_owned())
    }
}

/// Reads the site settings.
pub async fn site_settings(executor: impl PgExecutor<'_>) -> sqlx::Result<SiteSettings> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name::text, value FROM public.settings
         WHERE name IN ('siteURL', 'siteName', 'hash_id_salt') AND deleted_at IS NULL",
    )
    .fetch_all(executor)
    .await?;
    let mut values: HashMap<String, Option<String>> = rows.into_iter().collect();
    let mut take = |name: &str| values.remove(name).flatten();
    Ok(SiteSettings {
        site_url: take("siteURL"),
        site_name: take("siteName"),
        hash_id_salt: take("hash_id_salt"),
    })
}

/// Marks the token used if it is the live token of the active, not deleted Cloudreve account
/// `user_id`, in one statement; the account's address and nick when it was.
pub async fn redeem(
    executor: impl PgExecutor<'_>,
    user_id: i64,
    token_hash: &[u8; 32],
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "UPDATE password_reset_tokens AS t SET used_at = now()
         FROM public.users AS u
         WHERE t.token_hash = $2 AND t.user_id = u.id AND u.id = $1
           AND u.status = 'active' AND u.deleted_at IS NULL
           AND t.used_at IS NULL AND t.revoked_at IS NULL AND t.expires_at > now()
         RETURNING u.email::text, u.nick::text",
    )
    .bind(user_id)
    .bind(token_hash.as_slice())
    .fetch_optional(executor)
    .await
}

/// Stores `stored` (Cloudreve's password format) as the account's password; nothing else of the
/// row changes but `updated_at`, as when Cloudreve itself changes a password.
pub async fn set_password(
    executor: impl PgExecutor<'_>,
    user_id: i64,
    stored: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE public.users SET password = $2, updated_at = now() WHERE id = $1")
        .bind(user_id)
        .bind(stored)
        .execute(executor)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_site_url_is_the_canonical_one() {
        let settings = |url: &str| SiteSettings {
            site_url: Some(url.into()),
            ..SiteSettings::default()
        };
        assert_eq!(
            settings("https://cloud.example.com/,http://10.0.0.2:5212").first_site_url(),
            Some("https://cloud.example.com".into())
        );
        assert_eq!(settings("").first_site_url(), None);
        assert_eq!(SiteSettings::default().first_site_url(), None);
    }
}
