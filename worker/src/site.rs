//! The site the emails speak for and the way they leave: resetmail's own settings, and in Cloudreve
//! mode the site's settings for whatever resetmail's leave unset (docs/CLOUDREVE.md §5). Resolved as
//! a whole, so that a change in Cloudreve's dashboard replaces it as a whole while jobs run.

use anyhow::Context as _;
use lettre::message::Mailbox;
use resetmail_shared::db::cloudreve::SiteSettings;

use crate::{
    cloudreve_mail::{self, SiteTemplate},
    config::{Site, WorkerConfig},
    dkim::Dkim,
    mailer::{Mailer, smtp::SmtpUrl},
};

/// The sender when neither resetmail nor the site names one.
const DEFAULT_FROM: &str = "Cloudreve <no-reply@localhost>";

/// Everything about the site an email needs.
pub struct SiteConfig {
    /// Its address and name.
    pub site: Site,
    /// The sender.
    pub from: Mailbox,
    /// Where replies go, when the site says (Cloudreve's `replyTo`).
    pub reply_to: Option<Mailbox>,
    /// The domain every Message-ID ends with: the sender's.
    pub message_id_domain: String,
    /// The transport.
    pub mailer: Mailer,
    /// The site's own reset email (Cloudreve's `mail_reset_template`), used unless resetmail's
    /// templates were chosen with `RESETMAIL_TEMPLATES_DIR`.
    pub templates: Option<Vec<SiteTemplate>>,
    /// The site's logo, absolute, for the site's templates.
    pub logo: String,
    /// Signs every email, when a DKIM key is configured.
    pub dkim: Option<Dkim>,
}

impl SiteConfig {
    /// Resolves the site from `config` and, in Cloudreve mode, the site's `cloudreve` settings:
    /// each resetmail setting that is set wins; otherwise the site's; otherwise the default.
    pub fn resolve(
        config: &WorkerConfig,
        cloudreve: Option<&SiteSettings>,
    ) -> anyhow::Result<Self> {
        let site = config.site(cloudreve)?;
        let from_name = cloudreve.and_then(|settings| settings.get("fromName"));
        let from: Mailbox = match (
            &config.mail_from,
            cloudreve.and_then(|s| s.get("fromAdress")),
        ) {
            (Some(from), _) => from.clone(),
            (None, Some(address)) => Mailbox::new(
                from_name.map(str::to_owned),
                address
                    .parse()
                    .context("the site's sender address (fromAdress) is not an address")?,
            ),
            (None, None) => DEFAULT_FROM
                .parse()
                .context("the default sender is not an address")?,
        };
        let reply_to = cloudreve
            .and_then(|settings| settings.get("replyTo"))
            .map(|address| {
                address
                    .parse()
                    .map(|address| Mailbox::new(from_name.map(str::to_owned), address))
                    .context("the site's reply-to address (replyTo) is not an address")
            })
            .transpose()?;
        let smtp_url = match (&config.smtp_url, cloudreve) {
            (Some(url), _) => Some(url.clone()),
            (None, Some(settings)) => cloudreve_smtp_url(settings)?,
            (None, None) => None,
        };
        let logo = absolute(
            cloudreve
                .and_then(|settings| settings.get("site_logo"))
                .unwrap_or_default(),
            &site.url,
        );
        let templates = match cloudreve.and_then(|settings| settings.get("mail_reset_template")) {
            Some(json) if config.templates_dir.is_none() => {
                Some(site_templates(json, &site, &logo).context(
                    "the site's reset email (mail_reset_template) cannot be used; set \
                     RESETMAIL_TEMPLATES_DIR to send resetmail's own instead",
                )?)
            }
            _ => None,
        };
        let dkim = match &config.dkim_key_file {
            Some(key_file) => Some(Dkim::load(
                key_file,
                config.dkim_selector.as_deref().unwrap_or_default(),
                config
                    .dkim_domain
                    .as_deref()
                    .unwrap_or_else(|| from.email.domain()),
            )?),
            None => None,
        };
        let mailer = Mailer::new(
            smtp_url.as_ref(),
            &config.outbox_dir,
            config.smtp_timeout,
            usize::from(config.smtp_connections),
        )?;
        Ok(Self {
            site,
            message_id_domain: from.email.domain().to_owned(),
            from,
            reply_to,
            mailer,
            templates,
            logo,
            dkim,
        })
    }
}

/// Compiles the site's templates and renders each once with sample data, so that one using what
/// resetmail cannot give fails here, with its language and reason, rather than at a job.
fn site_templates(json: &str, site: &Site, logo: &str) -> anyhow::Result<Vec<SiteTemplate>> {
    let templates = cloudreve_mail::parse_reset_templates(json)?;
    let sample = cloudreve_mail::reset_data(
        &site.name,
        &site.url,
        logo,
        &site.reset_link("sample", "sample"),
        "Sample",
        "user@example.com",
    );
    for template in &templates {
        for (part, compiled) in [("title", &template.title), ("body", &template.body)] {
            compiled
                .check(&sample)
                .with_context(|| format!("mail_reset_template[{}].{part}", template.language))?;
        }
    }
    Ok(templates)
}

/// `path` as Cloudreve resolves a logo: kept when it starts with `http`, else joined to the site.
fn absolute(path: &str, site_url: &str) -> String {
    if path.is_empty() || path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{site_url}/{}", path.trim_start_matches('/'))
    }
}

/// The SMTP URL of the site's mail settings, or `None` when it names no SMTP host. Cloudreve's
/// `smtpEncryption` means implicit TLS (`smtps`); without it Cloudreve uses STARTTLS when the server
/// offers it.
fn cloudreve_smtp_url(settings: &SiteSettings) -> anyhow::Result<Option<SmtpUrl>> {
    let Some(host) = settings.get("smtpHost") else {
        return Ok(None);
    };
    let implicit_tls = matches!(settings.get("smtpEncryption"), Some("1" | "true"));
    let port: u16 = match settings.get("smtpPort") {
        Some(port) => port
            .trim()
            .parse()
            .context("the site's SMTP port (smtpPort) is not a port number")?,
        None => 25,
    };
    let mut url = url::Url::parse(if implicit_tls {
        "smtps://localhost"
    } else {
        "smtp://localhost/?tls=opportunistic"
    })
    .context("cannot build the SMTP URL")?;
    url.set_host(Some(host.trim()))
        .context("the site's SMTP host (smtpHost) is not a host name")?;
    let set_port = url.set_port(Some(port));
    let set_user = match settings.get("smtpUser") {
        Some(user) => url
            .set_username(user)
            .and_then(|()| url.set_password(Some(settings.get("smtpPass").unwrap_or_default()))),
        None => Ok(()),
    };
    set_port
        .and(set_user)
        .map_err(|()| anyhow::anyhow!("the site's SMTP settings do not make an SMTP URL"))?;
    SmtpUrl::try_from(url).map(Some).map_err(|reason| {
        anyhow::anyhow!("the site's SMTP settings do not make an SMTP URL: {reason}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> SiteSettings {
        SiteSettings::from_pairs(pairs)
    }

    #[test]
    fn the_sites_mail_settings_make_an_smtp_url() {
        let url = |pairs| {
            cloudreve_smtp_url(&settings(pairs))
                .unwrap()
                .map(|url| url.as_url().to_string())
        };
        assert_eq!(url(&[("smtpHost", "")]), None);
        assert_eq!(
            url(&[("smtpHost", "mx.example.com"), ("smtpPort", "587")]),
            Some("smtp://mx.example.com:587/?tls=opportunistic".into())
        );
        assert_eq!(
            url(&[
                ("smtpHost", "mx.example.com"),
                ("smtpPort", "465"),
                ("smtpEncryption", "1"),
                ("smtpUser", "me@example.com"),
                ("smtpPass", "p@ss:w/rd"),
            ]),
            Some("smtps://me%40example.com:p%40ss%3Aw%2Frd@mx.example.com:465".into())
        );
        assert!(cloudreve_smtp_url(&settings(&[("smtpHost", "mx"), ("smtpPort", "x")])).is_err());
    }
}
