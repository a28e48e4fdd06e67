//! Captcha for the reset action, as Cloudreve's frontend sends it: `normal` (our graphic captcha),
//! `recaptcha` (token in `captcha`), `turnstile` and `cap` (token in `ticket`). Checked before anything
//! is published; a provider that cannot be asked fails closed.

pub mod graphic;
pub mod provider;

use std::{str::FromStr as _, time::Duration};

use resetmail_shared::{config::parse_duration, db::cloudreve::SiteSettings};
use sqlx::PgPool;

use self::{
    graphic::{CaptchaSecret, GraphicCaptcha},
    provider::Provider,
};

/// Which captcha guards the reset action.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptchaKind {
    /// No captcha.
    Off,
    /// The graphic captcha served by `GET /site/captcha`.
    Normal,
    /// Google reCAPTCHA v2.
    Recaptcha,
    /// Cloudflare Turnstile.
    Turnstile,
    /// Cap, self-hosted proof of work.
    Cap,
}

/// Captcha settings.
#[derive(clap::Args, Clone, Debug)]
pub struct CaptchaConfig {
    /// Captcha required before a reset email is queued. Unset: off, or in Cloudreve mode the site's
    /// (`forget_captcha` and `captcha_type`).
    #[arg(long = "captcha", env = "RESETMAIL_CAPTCHA", value_enum)]
    pub kind: Option<CaptchaKind>,
    /// Width of the graphic captcha in pixels.
    #[arg(long = "captcha-width", env = "RESETMAIL_CAPTCHA_WIDTH", default_value_t = 240, value_parser = clap::value_parser!(u32).range(120..=i64::from(graphic::MAX_WIDTH)))]
    pub width: u32,
    /// Height of the graphic captcha in pixels.
    #[arg(long = "captcha-height", env = "RESETMAIL_CAPTCHA_HEIGHT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(50..=i64::from(graphic::MAX_HEIGHT)))]
    pub height: u32,
    /// Characters in the graphic captcha.
    #[arg(long = "captcha-length", env = "RESETMAIL_CAPTCHA_LENGTH", default_value_t = 6, value_parser = clap::value_parser!(u8).range(4..=10))]
    pub length: u8,
    /// Key of the graphic captcha's stored answers (HMAC-SHA256), at least 32 characters, the same on
    /// every api replica; required with `--captcha normal`.
    #[arg(
        long = "captcha-secret",
        env = "RESETMAIL_CAPTCHA_SECRET",
        hide_env_values = true,
        value_parser = CaptchaSecret::from_str
    )]
    pub secret: Option<CaptchaSecret>,
    /// How long a graphic captcha can be answered.
    #[arg(long = "captcha-ttl", env = "RESETMAIL_CAPTCHA_TTL", default_value = "10m", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Longest wait for a captcha provider's verdict; no verdict in time is a failure.
    #[arg(long = "captcha-timeout", env = "RESETMAIL_CAPTCHA_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// reCAPTCHA secret key.
    #[arg(
        long = "recaptcha-secret",
        env = "RESETMAIL_RECAPTCHA_SECRET",
        hide_env_values = true
    )]
    pub recaptcha_secret: Option<String>,
    /// reCAPTCHA verify endpoint.
    #[arg(
        long = "recaptcha-verify-url",
        env = "RESETMAIL_RECAPTCHA_VERIFY_URL",
        default_value = "https://www.google.com/recaptcha/api/siteverify"
    )]
    pub recaptcha_verify_url: String,
    /// Turnstile secret key.
    #[arg(
        long = "turnstile-secret",
        env = "RESETMAIL_TURNSTILE_SECRET",
        hide_env_values = true
    )]
    pub turnstile_secret: Option<String>,
    /// Turnstile verify endpoint.
    #[arg(
        long = "turnstile-verify-url",
        env = "RESETMAIL_TURNSTILE_VERIFY_URL",
        default_value = "https://challenges.cloudflare.com/turnstile/v0/siteverify"
    )]
    pub turnstile_verify_url: String,
    /// URL of the Cap instance.
    #[arg(long = "cap-instance-url", env = "RESETMAIL_CAP_INSTANCE_URL")]
    pub cap_instance_url: Option<String>,
    /// Cap site key id.
    #[arg(long = "cap-key-id", env = "RESETMAIL_CAP_KEY_ID")]
    pub cap_key_id: Option<String>,
    /// Cap key secret.
    #[arg(
        long = "cap-secret",
        env = "RESETMAIL_CAP_SECRET",
        hide_env_values = true
    )]
    pub cap_secret: Option<String>,
}

/// What the reset request carries for the captcha.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answer<'a> {
    /// The graphic answer, or the reCAPTCHA token.
    pub captcha: Option<&'a str>,
    /// The graphic ticket, or the Turnstile / Cap token.
    pub ticket: Option<&'a str>,
}

/// Why a captcha was not passed.
#[derive(Debug, thiserror::Error)]
pub enum CaptchaError {
    /// Wrong, reused, expired or missing: the user's side.
    #[error("{0}")]
    Failed(String),
    /// The provider could not give a verdict; it counts as failed.
    #[error("captcha provider unavailable: {0}")]
    Unavailable(String),
    /// Our own storage failed.
    #[error("captcha storage: {0}")]
    Storage(#[from] sqlx::Error),
}

/// The captcha in force, checked on every reset request.
pub struct Captcha {
    kind: CaptchaKind,
    /// The graphic captcha; `GET /site/captcha` serves it whatever the kind in force.
    pub graphic: GraphicCaptcha,
    provider: Option<Provider>,
}

impl Captcha {
    /// Checks the configuration: a provider without its secret (or Cap without its instance and key)
    /// is an error here, at start-up, not a surprise on the first request.
    pub fn from_config(config: &CaptchaConfig) -> anyhow::Result<Self> {
        let kind = config.kind.unwrap_or(CaptchaKind::Off);
        let provider = match kind {
            CaptchaKind::Off | CaptchaKind::Normal => None,
            kind => Some(Provider::from_config(kind, config)?),
        };
        Ok(Self {
            kind,
            graphic: GraphicCaptcha::new(config)?,
            provider,
        })
    }

    /// The kind in force.
    pub fn kind(&self) -> CaptchaKind {
        self.kind
    }

    /// Checks the request's answer; `Ok` when captcha is off or passed.
    pub async fn check(&self, pool: &PgPool, answer: Answer<'_>) -> Result<(), CaptchaError> {
        match (self.kind, &self.provider) {
            (CaptchaKind::Off, _) => Ok(()),
            (CaptchaKind::Normal, _) => {
                self.graphic
                    .check(pool, answer.ticket, answer.captcha)
                    .await
            }
            (_, Some(provider)) => provider.verify(answer).await,
            (_, None) => Err(CaptchaError::Unavailable("no provider configured".into())),
        }
    }
}

impl CaptchaConfig {
    /// This configuration with, for what resetmail's own settings leave unset, a Cloudreve site's
    /// captcha for its "forgot password" page (`forget_captcha`, `captcha_type` and the provider's
    /// secret). The site's graphic captcha cannot be taken over: its tickets live in Cloudreve's
    /// process, where resetmail cannot check them, and `GET /site/captcha` must stay with Cloudreve
    /// for its sign-in; requests then pass unchecked, which is logged at start-up.
    pub fn with_site(&self, site: &SiteSettings) -> Self {
        let mut config = self.clone();
        let owned = |name: &str| site.get(name).map(str::to_owned);
        config.recaptcha_secret = config
            .recaptcha_secret
            .or_else(|| owned("captcha_ReCaptchaSecret"));
        config.turnstile_secret = config
            .turnstile_secret
            .or_else(|| owned("captcha_turnstile_site_secret"));
        config.cap_instance_url = config
            .cap_instance_url
            .or_else(|| owned("captcha_cap_instance_url"));
        config.cap_key_id = config.cap_key_id.or_else(|| owned("captcha_cap_site_key"));
        config.cap_secret = config
            .cap_secret
            .or_else(|| owned("captcha_cap_secret_key"));
        if config.kind.is_none() {
            let asked = matches!(site.get("forget_captcha"), Some("1" | "true"));
            config.kind = Some(match site.get("captcha_type") {
                _ if !asked => CaptchaKind::Off,
                Some("recaptcha") => CaptchaKind::Recaptcha,
                Some("turnstile") => CaptchaKind::Turnstile,
                Some("cap") => CaptchaKind::Cap,
                other => {
                    tracing::warn!(
                        captcha_type = other.unwrap_or("normal"),
                        "the site asks for its graphic captcha on \"forgot password\"; resetmail cannot check Cloudreve's graphic tickets, so reset requests pass without a captcha (rate limits still apply); use reCAPTCHA, Turnstile or Cap on the site, or set RESETMAIL_CAPTCHA"
                    );
                    CaptchaKind::Off
                }
            });
        }
        config
    }
}
