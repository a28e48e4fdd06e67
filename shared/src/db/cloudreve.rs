//! A Cloudreve v4 site's own tables, read as Cloudreve reads them (docs/CLOUDREVE.md): accounts from
//! `public.users`, site settings from `public.settings`. The only writes are a redeemed account's
//! `password` and `updated_at`.

use std::collections::BTreeMap;

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

/// The settings resetmail takes from a Cloudreve site (docs/CLOUDREVE.md §5).
pub const SETTING_NAMES: &[&str] = &[
    "siteURL",
    "siteName",
    "site_logo",
    "hash_id_salt",
    "mail_reset_template",
    "fromName",
    "fromAdress",
    "replyTo",
    "smtpHost",
    "smtpPort",
    "smtpUser",
    "smtpPass",
    "smtpEncryption",
    "forget_captcha",
    "captcha_type",
    "captcha_ReCaptchaSecret",
    "captcha_turnstile_site_secret",
    "captcha_cap_instance_url",
    "captcha_cap_site_key",
    "captcha_cap_secret_key",
];

/// Settings whose values are secrets: never logged, not even when they change.
pub const SECRET_SETTINGS: &[&str] = &[
    "smtpPass",
    "hash_id_salt",
    "captcha_ReCaptchaSecret",
    "captcha_turnstile_site_secret",
    "captcha_cap_secret_key",
];

/// The site settings resetmail takes from Cloudreve ([`SETTING_NAMES`]), as stored; a missing row
/// is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteSettings(pub BTreeMap<String, String>);

impl SiteSettings {
    /// Settings from `(name, value)` pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        )
    }

    /// The value of `name`, if the site has one that is not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    }

    /// The first address of `siteURL`, without a trailing slash (Cloudreve splits the list on
    /// commas and takes the first for links it makes outside a request).
    pub fn first_site_url(&self) -> Option<String> {
        let first = self.get("siteURL")?.split(',').next()?.trim();
        (!first.is_empty()).then(|| first.trim_end_matches('/').to_owned())
    }

    /// The names of the settings that differ between `self` and `other` (added, removed or
    /// changed), for a log line that never shows a value.
    pub fn changed_names(&self, other: &SiteSettings) -> Vec<String> {
        self.0
            .keys()
            .chain(other.0.keys())
            .filter(|name| self.0.get(*name) != other.0.get(*name))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// Reads the site settings.
pub async fn site_settings(executor: impl PgExecutor<'_>) -> sqlx::Result<SiteSettings> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name::text, value FROM public.settings
         WHERE name = ANY($1) AND deleted_at IS NULL",
    )
    .bind(SETTING_NAMES)
    .fetch_all(executor)
    .await?;
    Ok(SiteSettings(
        rows.into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect(),
    ))
}

/// Reads the site's settings again every `every` and at each `hangups` message, until `shutdown`;
/// when they differ from `known`, calls `apply` with them and the names that changed, and logs
/// those names (never a value: [`SECRET_SETTINGS`] are only counted). `apply` says whether it took
/// them; what it refused is not offered again until the settings change once more.
pub async fn follow(
    pool: PgPool,
    every: std::time::Duration,
    mut hangups: tokio::sync::mpsc::Receiver<()>,
    shutdown: tokio_util::sync::CancellationToken,
    mut known: SiteSettings,
    mut apply: impl FnMut(&SiteSettings) -> anyhow::Result<()>,
) {
    // The first read is the caller's (`known`): the next is one period away, not at once.
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
            Some(()) = hangups.recv() => tracing::info!("SIGHUP: reading the site's settings again"),
        }
        let settings = match site_settings(&pool).await {
            Ok(settings) => settings,
            Err(error) => {
                tracing::warn!(%error, "cannot read the Cloudreve site's settings; keeping the ones in use");
                continue;
            }
        };
        let changed = known.changed_names(&settings);
        if changed.is_empty() {
            continue;
        }
        if changed.iter().any(|name| name == "hash_id_salt") {
            tracing::error!(
                "the site's hash_id_salt changed: links already sent name accounts by the old one; restart resetmail's api and workers to use the new one"
            );
        }
        let secrets = changed
            .iter()
            .filter(|name| SECRET_SETTINGS.contains(&name.as_str()))
            .count();
        match apply(&settings) {
            Ok(()) => {
                tracing::info!(settings.changed = ?changed, secrets.changed = secrets, "the site's settings changed; they apply from now on")
            }
            Err(error) => {
                tracing::error!(settings.changed = ?changed, error = format!("{error:#}"), "the site's new settings cannot be used; keeping the ones in use")
            }
        }
        known = settings;
    }
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

    fn settings(pairs: &[(&str, &str)]) -> SiteSettings {
        SiteSettings::from_pairs(pairs)
    }

    #[test]
    fn the_first_site_url_is_the_canonical_one() {
        assert_eq!(
            settings(&[("siteURL", "https://cloud.example.com/,http://10.0.0.2:5212")])
                .first_site_url(),
            Some("https://cloud.example.com".into())
        );
        assert_eq!(settings(&[("siteURL", "")]).first_site_url(), None);
        assert_eq!(SiteSettings::default().first_site_url(), None);
    }

    #[test]
    fn changes_are_told_by_name() {
        let before = settings(&[("siteName", "A"), ("smtpPass", "x"), ("replyTo", "r@x.io")]);
        let after = settings(&[("siteName", "B"), ("smtpPass", "y"), ("smtpHost", "mx")]);
        assert_eq!(
            before.changed_names(&after),
            vec!["replyTo", "siteName", "smtpHost", "smtpPass"]
        );
        assert!(before.changed_names(&before).is_empty());
    }
}
