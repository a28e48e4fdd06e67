//! The worker's configuration: shared settings plus the site, mail and job settings.

use std::{path::PathBuf, time::Duration};

use resetmail_shared::{
    config::{BrokerConfig, DatabaseConfig, LogConfig, SecretValue, parse_duration},
    db::cloudreve::SiteSettings,
};

use crate::mailer::smtp::SmtpUrl;

/// Everything the worker reads from the environment or its flags.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerConfig {
    /// Public URL of the Cloudreve site; links point there (never taken from a request). Unset: the
    /// site's `siteURL` setting in Cloudreve mode, else `http://localhost:5212` (Cloudreve's default).
    #[arg(long = "site-url", env = "RESETMAIL_SITE_URL", value_parser = parse_site_url)]
    pub site_url: Option<url::Url>,
    /// Site name, in the subject `[{site name}] …` and the email. Unset: the site's `siteName`
    /// setting in Cloudreve mode, else `Cloudreve`.
    #[arg(long = "site-name", env = "RESETMAIL_SITE_NAME")]
    pub site_name: Option<String>,
    /// SMTP server, e.g. `smtp://user:pass@host:587?tls=required`; unset writes `.eml` files instead.
    #[arg(
        long = "smtp-url",
        env = "RESETMAIL_SMTP_URL",
        hide_env_values = true,
        value_parser = SecretValue::new("RESETMAIL_SMTP_URL", SmtpUrl::parse)
    )]
    pub smtp_url: Option<SmtpUrl>,
    /// Where `.eml` files go when no SMTP server is configured.
    #[arg(
        long = "outbox-dir",
        env = "RESETMAIL_OUTBOX_DIR",
        default_value = "./outbox"
    )]
    pub outbox_dir: PathBuf,
    /// Sender of the emails. Unset: `fromName <fromAdress>` of the site in Cloudreve mode, else
    /// `Cloudreve <no-reply@localhost>`.
    #[arg(long = "mail-from", env = "RESETMAIL_MAIL_FROM", value_parser = parse_mailbox)]
    pub mail_from: Option<lettre::message::Mailbox>,
    /// In Cloudreve mode, how often the site's settings are read again (also on SIGHUP), so that
    /// changes made in Cloudreve's dashboard apply without a restart.
    #[arg(long = "settings-refresh", env = "RESETMAIL_SETTINGS_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub settings_refresh: Duration,
    /// DKIM key file: a PKCS#1 PEM RSA key (rsa-sha256) or the base64 of a 32-byte Ed25519 seed
    /// (ed25519-sha256). Unset: emails are not signed.
    #[arg(long = "dkim-key-file", env = "RESETMAIL_DKIM_KEY_FILE")]
    pub dkim_key_file: Option<PathBuf>,
    /// DKIM selector: the key's public half is published at `{selector}._domainkey.{domain}`.
    #[arg(
        long = "dkim-selector",
        env = "RESETMAIL_DKIM_SELECTOR",
        requires = "dkim_key_file"
    )]
    pub dkim_selector: Option<String>,
    /// DKIM signing domain (`d=`). Unset: the sender's domain.
    #[arg(
        long = "dkim-domain",
        env = "RESETMAIL_DKIM_DOMAIN",
        requires = "dkim_key_file"
    )]
    pub dkim_domain: Option<String>,
    /// Longest an SMTP send may take before it counts as a transient failure.
    #[arg(long = "smtp-timeout", env = "RESETMAIL_SMTP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
    /// Jobs in flight in this process (also the broker prefetch). Costs no database connections:
    /// thousands are fine; emails above the SMTP connection cap wait for a connection.
    #[arg(long = "concurrency", env = "RESETMAIL_CONCURRENCY", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Most SMTP connections open at once to the mail server (relays limit them per client;
    /// Postfix allows 50 by default).
    #[arg(long = "smtp-connections", env = "RESETMAIL_SMTP_CONNECTIONS", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..))]
    pub smtp_connections: u16,
    /// How long a reset link stays valid.
    #[arg(long = "token-ttl", env = "RESETMAIL_TOKEN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// At most one email per account within this time (`0s`: no cooldown).
    #[arg(long = "account-cooldown", env = "RESETMAIL_ACCOUNT_COOLDOWN", default_value = "60s", value_parser = parse_duration)]
    pub account_cooldown: Duration,
    /// At most this many emails per account in 24 hours.
    #[arg(
        long = "account-daily-max",
        env = "RESETMAIL_ACCOUNT_DAILY_MAX",
        default_value_t = 5
    )]
    pub account_daily_max: u32,
    /// Send an address with no account a short notice that a reset was asked for it but it has no
    /// account here (OWASP's Forgot Password guidance), throttled per address like the reset emails
    /// per account. The requester's answer and its timing do not change.
    #[arg(
        long = "notify-unknown-addresses",
        env = "RESETMAIL_NOTIFY_UNKNOWN_ADDRESSES",
        default_value_t = false
    )]
    pub notify_unknown_addresses: bool,
    /// Delivery rows older than this are deleted (used and expired tokens go after a day).
    #[arg(long = "retention", env = "RESETMAIL_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// A job older than this when first handled is recorded as expired and not sent.
    #[arg(long = "job-max-age", env = "RESETMAIL_JOB_MAX_AGE", default_value = "1h", value_parser = parse_duration)]
    pub job_max_age: Duration,
    /// Directory of template overrides (`reset/<lang>/{subject.hbs,body.html.hbs,body.txt.hbs}`).
    #[arg(long = "templates-dir", env = "RESETMAIL_TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
    /// Language used when the account's language has no template.
    #[arg(
        long = "default-language",
        env = "RESETMAIL_DEFAULT_LANGUAGE",
        default_value = "en-US"
    )]
    pub default_language: String,
    /// Pause before a failed job goes back to the queue.
    #[arg(long = "requeue-delay", env = "RESETMAIL_REQUEUE_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub requeue_delay: Duration,
    /// First pause of consumption after a failure that hits every job (database down, SMTP
    /// credentials rejected); each further one doubles.
    #[arg(long = "pause-min", env = "RESETMAIL_PAUSE_MIN", default_value = "1s", value_parser = parse_duration)]
    pub pause_min: Duration,
    /// Longest pause of consumption.
    #[arg(long = "pause-max", env = "RESETMAIL_PAUSE_MAX", default_value = "1m", value_parser = parse_duration)]
    pub pause_max: Duration,
    /// On SIGTERM, how long jobs in flight may take to finish before the worker stops anyway.
    #[arg(long = "shutdown-timeout", env = "RESETMAIL_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Address of the worker's /healthz, /readyz and /metrics, or `off`. A taken address stops the
    /// worker at start-up; port 0 (`127.0.0.1:0`) takes any free port and logs it.
    #[arg(
        long = "worker-http-addr",
        env = "RESETMAIL_WORKER_HTTP_ADDR",
        default_value = "127.0.0.1:9091",
        value_parser = parse_http_addr
    )]
    pub http_addr: HttpAddr,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub broker: BrokerConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

/// Where the worker serves its HTTP port: an address, or nowhere (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddr(pub Option<std::net::SocketAddr>);

/// Reads `RESETMAIL_WORKER_HTTP_ADDR`: `host:port`, or `off`.
fn parse_http_addr(text: &str) -> Result<HttpAddr, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    text.trim()
        .parse()
        .map(|addr| HttpAddr(Some(addr)))
        .map_err(|_| format!("`{text}` is not an address: write e.g. 127.0.0.1:9091, :0 for any free port, or off"))
}

/// Reads `RESETMAIL_SITE_URL`: an `http://` or `https://` URL.
fn parse_site_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|error| format!("`{text}`: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must start with http:// or https://"));
    }
    Ok(url)
}

/// Reads `RESETMAIL_MAIL_FROM`: `Name <address>` or an address.
fn parse_mailbox(text: &str) -> Result<lettre::message::Mailbox, String> {
    text.parse().map_err(|error| {
        format!("`{text}` is not a sender (`Name <address>` or an address): {error}")
    })
}

/// Cloudreve's own defaults for the site's address and name.
const DEFAULT_SITE_URL: &str = "http://localhost:5212";
const DEFAULT_SITE_NAME: &str = "Cloudreve";

/// The site the emails speak for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Its public address, without a trailing slash.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl Site {
    /// The link of the site's own reset page (Cloudreve's frontend route `/session/reset`) for the
    /// account whose link id is `id`, with the token's `secret`: the one place its form is written.
    pub fn reset_link(&self, id: impl std::fmt::Display, secret: &str) -> String {
        format!("{}/session/reset?id={id}&secret={secret}", self.url)
    }
}

impl WorkerConfig {
    /// The site: each of `RESETMAIL_SITE_URL` and `RESETMAIL_SITE_NAME` when set, else the Cloudreve
    /// site's setting (`cloudreve`, in Cloudreve mode), else Cloudreve's default. The address must
    /// be `http://` or `https://`.
    pub fn site(&self, cloudreve: Option<&SiteSettings>) -> anyhow::Result<Site> {
        let url = self
            .site_url
            .as_ref()
            .map(url::Url::to_string)
            .or_else(|| cloudreve.and_then(SiteSettings::first_site_url))
            .unwrap_or_else(|| DEFAULT_SITE_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            anyhow::bail!(
                "the site's URL (RESETMAIL_SITE_URL, or Cloudreve's siteURL) must start with http:// or https://, got `{url}`"
            );
        }
        let name = self
            .site_name
            .clone()
            .or_else(|| cloudreve.and_then(|settings| settings.get("siteName").map(str::to_owned)))
            .unwrap_or_else(|| DEFAULT_SITE_NAME.to_owned());
        Ok(Site { url, name })
    }
}
