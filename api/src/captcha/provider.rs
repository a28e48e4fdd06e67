//! Third-party captcha verdicts: reCAPTCHA v2 and Turnstile (form POST of secret and token) and Cap
//! (JSON POST to `{instance}/{key id}/siteverify`), each under a timeout.

use anyhow::{Context as _, bail};

use super::{Answer, CaptchaConfig, CaptchaError, CaptchaKind};

/// A configured provider.
pub struct Provider {
    kind: CaptchaKind,
    verify_url: String,
    secret: String,
    client: reqwest::Client,
}

#[derive(serde::Deserialize)]
struct Verdict {
    success: bool,
}

impl Provider {
    /// The provider `kind` as configured.
    pub fn from_config(kind: CaptchaKind, config: &CaptchaConfig) -> anyhow::Result<Self> {
        let required = |value: &Option<String>, name: &str| -> anyhow::Result<String> {
            match value.as_deref().map(str::trim) {
                Some(value) if !value.is_empty() => Ok(value.to_owned()),
                _ => bail!("RESETMAIL_CAPTCHA={} needs {name}", kind_name(kind)),
            }
        };
        let (verify_url, secret) = match kind {
            CaptchaKind::Recaptcha => (
                config.recaptcha_verify_url.clone(),
                required(&config.recaptcha_secret, "RESETMAIL_RECAPTCHA_SECRET")?,
            ),
            CaptchaKind::Turnstile => (
                config.turnstile_verify_url.clone(),
                required(&config.turnstile_secret, "RESETMAIL_TURNSTILE_SECRET")?,
            ),
            CaptchaKind::Cap => {
                let instance = required(&config.cap_instance_url, "RESETMAIL_CAP_INSTANCE_URL")?;
                let key_id = required(&config.cap_key_id, "RESETMAIL_CAP_KEY_ID")?;
                let secret = required(&config.cap_secret, "RESETMAIL_CAP_SECRET")?;
                (
                    format!("{}/{key_id}/siteverify", instance.trim_end_matches('/')),
                    secret,
                )
            }
            CaptchaKind::Off | CaptchaKind::Normal => {
                bail!("{} is not a third-party captcha", kind_name(kind))
            }
        };
        if !(verify_url.starts_with("https://") || verify_url.starts_with("http://")) {
            bail!(
                "the {} verify URL must start with http:// or https://",
                kind_name(kind)
            );
        }
        // One TLS implementation (ring) for the whole process; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .context("cannot build the HTTP client for the captcha provider")?;
        Ok(Self {
            kind,
            verify_url,
            secret,
            client,
        })
    }

    /// Asks the provider about the token in `answer`.
    pub async fn verify(&self, answer: Answer<'_>) -> Result<(), CaptchaError> {
        // Cloudreve's frontend sends the reCAPTCHA token in `captcha`, the others' in `ticket`.
        let token = match self.kind {
            CaptchaKind::Recaptcha => answer.captcha,
            _ => answer.ticket,
        };
        let Some(token) = token.filter(|token| !token.is_empty()) else {
            return Err(CaptchaError::Failed("no captcha token".into()));
        };
        let request = match self.kind {
            CaptchaKind::Cap => self
                .client
                .post(&self.verify_url)
                .json(&serde_json::json!({"secret": self.secret, "response": token})),
            _ => self
                .client
                .post(&self.verify_url)
                .form(&[("secret", self.secret.as_str()), ("response", token)]),
        };
        let response = request
            .send()
            .await
            .map_err(|error| CaptchaError::Unavailable(without_url(error).to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CaptchaError::Unavailable(format!(
                "the provider answered HTTP {status}"
            )));
        }
        let verdict: Verdict = response.json().await.map_err(|error| {
            CaptchaError::Unavailable(format!("unreadable verdict: {}", without_url(error)))
        })?;
        if verdict.success {
            Ok(())
        } else {
            Err(CaptchaError::Failed(
                "the provider rejected the token".into(),
            ))
        }
    }
}

/// reqwest's errors name the URL; ours carry no query secrets, but keep log lines short and uniform.
fn without_url(error: reqwest::Error) -> reqwest::Error {
    error.without_url()
}

fn kind_name(kind: CaptchaKind) -> &'static str {
    match kind {
        CaptchaKind::Off => "off",
        CaptchaKind::Normal => "normal",
        CaptchaKind::Recaptcha => "recaptcha",
        CaptchaKind::Turnstile => "turnstile",
        CaptchaKind::Cap => "cap",
    }
}
