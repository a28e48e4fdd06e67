//! The emails' templates: the reset email, and the notice sent instead when a reset is asked for an
//! address that has no account. Handlebars, one folder per email and language, HTML escaped and text
//! not, strict mode, all compiled and test-rendered at start-up so a broken template stops the worker.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use handlebars::Handlebars;

/// The three parts of one language's email.
const PARTS: [&str; 3] = ["subject.hbs", "body.html.hbs", "body.txt.hbs"];

/// The shipped templates of one email (`reset` or `notice`): every language Cloudreve's frontend
/// offers, each as its three parts in the order of [`PARTS`].
macro_rules! shipped {
    ($email:literal) => {
        shipped!($email: "en-US", "zh-CN", "zh-TW", "ja-JP", "ru-RU", "de-DE", "fr-FR", "es-ES",
            "pt-BR", "it-IT", "ko-KR", "pl-PL", "ar-AR")
    };
    ($email:literal: $($lang:literal),+) => {
        [$((
            $lang,
            [
                include_str!(concat!("../templates/", $email, "/", $lang, "/subject.hbs")),
                include_str!(concat!("../templates/", $email, "/", $lang, "/body.html.hbs")),
                include_str!(concat!("../templates/", $email, "/", $lang, "/body.txt.hbs")),
            ],
        )),+]
    };
}

/// Templates shipped with resetmail: every language Cloudreve's frontend offers.
const BUILTIN: [(&str, [&str; 3]); 13] = shipped!("reset");

/// The shipped notices, in the same languages.
const NOTICE_BUILTIN: [(&str, [&str; 3]); 13] = shipped!("notice");

/// The folder, and the prefix of the compiled templates' names, of each email.
const RESET: &str = "reset";
const NOTICE: &str = "notice";

/// The notice used when neither the wanted language nor the default one has a notice: a shipped
/// language, and an override can replace a shipped notice but never remove it.
const LAST_RESORT_NOTICE: &str = "en-US";

/// One language's parts (subject, HTML, text), each as (where it came from, its source).
type PartSources = [(String, String); 3];

/// What every reset template may use (strict mode refuses anything else).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResetEmailContext {
    /// The operator's site name.
    pub site_name: String,
    /// The site's public URL, without a trailing slash.
    pub site_url: String,
    /// How to greet: the nick, or the address when there is none.
    pub name: String,
    /// The account's address.
    pub email: String,
    /// The reset link.
    pub link: String,
    /// How long the link is valid, in the email's language.
    pub valid_for: String,
}

/// What every notice template may use (strict mode refuses anything else). The notice goes to an
/// address that has no account, so it holds nothing the recipient does not already know: the site
/// and their own address.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NoticeContext {
    /// The operator's site name.
    pub site_name: String,
    /// The site's public URL, without a trailing slash; the shipped notices link its sign-in page,
    /// `{site_url}/session`.
    pub site_url: String,
    /// The address a reset was asked for, which is also the notice's recipient.
    pub email: String,
}

/// A rendered email.
#[derive(Clone, Debug)]
pub struct RenderedEmail {
    /// One line.
    pub subject: String,
    /// The HTML part.
    pub html: String,
    /// The plain-text part.
    pub text: String,
}

/// The compiled templates of every email and language.
pub struct Templates {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
    /// The languages of the reset email, the ones [`Templates::choose_language`] picks from.
    languages: Vec<String>,
    /// The languages that have a notice of their own.
    notice_languages: Vec<String>,
    default_language: String,
}

impl Templates {
    /// The shipped templates, replaced or extended by `override_dir` when given; each is compiled and
    /// test-rendered. `default_language` must be one of the languages. The override directory must
    /// hold `reset/`; `notice/` is optional, and without it the shipped notices stay.
    pub fn load(override_dir: Option<&Path>, default_language: &str) -> anyhow::Result<Self> {
        let mut sources = builtin_sources(RESET, &BUILTIN);
        let mut notice_sources = builtin_sources(NOTICE, &NOTICE_BUILTIN);
        if let Some(dir) = override_dir {
            sources.extend(read_overrides(dir)?);
            notice_sources.extend(read_notice_overrides(dir)?);
        }

        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        for (email, sources) in [(RESET, &sources), (NOTICE, &notice_sources)] {
            register(&mut html, &mut text, email, sources)?;
        }

        let templates = Self {
            html,
            text,
            languages: sources.keys().cloned().collect(),
            notice_languages: notice_sources.keys().cloned().collect(),
            default_language: default_language.to_owned(),
        };
        if !templates
            .languages
            .iter()
            .any(|lang| lang == default_language)
        {
            bail!(
                "RESETMAIL_DEFAULT_LANGUAGE is `{default_language}`, but templates exist only for {}",
                templates.languages.join(", ")
            );
        }
        for lang in &templates.languages {
            templates
                .render(lang, &sample_context(lang))
                .with_context(|| format!("template for {lang} fails to render with sample data"))?;
        }
        for lang in &templates.notice_languages {
            templates
                .render_notice(lang, &sample_notice_context())
                .with_context(|| {
                    format!("notice template for {lang} fails to render with sample data")
                })?;
        }
        Ok(templates)
    }

    /// The languages that have a reset email (each also has a notice to render, its own or another's).
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// The language for an account: an exact match (ignoring case and `_`/`-`), then one with the
    /// same primary language, then the default.
    pub fn choose_language(&self, account_language: Option<&str>) -> &str {
        let Some(wanted) = account_language
            .map(|l| l.trim().replace('_', "-"))
            .filter(|l| !l.is_empty())
        else {
            return &self.default_language;
        };
        let primary = |tag: &str| {
            tag.split('-')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        self.languages
            .iter()
            .find(|lang| lang.eq_ignore_ascii_case(&wanted))
            .or_else(|| {
                self.languages
                    .iter()
                    .find(|lang| primary(lang) == primary(&wanted))
            })
            .map_or(&self.default_language, |lang| lang.as_str())
    }

    /// Renders the email in `lang` (one of [`Self::languages`]).
    pub fn render(
        &self,
        lang: &str,
        context: &ResetEmailContext,
    ) -> Result<RenderedEmail, handlebars::RenderError> {
        self.render_email(RESET, lang, context)
    }

    /// Renders the notice in `lang` (one of [`Self::languages`]). A language without a notice of its
    /// own gets the default language's, and failing that the shipped English one, so that every
    /// language [`Self::choose_language`] can pick has a notice.
    pub fn render_notice(
        &self,
        lang: &str,
        context: &NoticeContext,
    ) -> Result<RenderedEmail, handlebars::RenderError> {
        let lang = [lang, self.default_language.as_str()]
            .into_iter()
            .find(|wanted| self.notice_languages.iter().any(|lang| lang == wanted))
            .unwrap_or(LAST_RESORT_NOTICE);
        self.render_email(NOTICE, lang, context)
    }

    fn render_email(
        &self,
        email: &str,
        lang: &str,
        context: &impl serde::Serialize,
    ) -> Result<RenderedEmail, handlebars::RenderError> {
        let subject = self
            .text
            .render(&template_name(email, lang, "subject"), context)?;
        Ok(RenderedEmail {
            // A header is one line, whatever the template or the site name hold.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            html: self
                .html
                .render(&template_name(email, lang, "html"), context)?,
            text: self
                .text
                .render(&template_name(email, lang, "text"), context)?,
        })
    }
}

fn template_name(email: &str, lang: &str, part: &str) -> String {
    format!("{email}/{lang}/{part}")
}

/// One email's shipped templates, named for where they came from.
fn builtin_sources(email: &str, builtin: &[(&str, [&str; 3])]) -> BTreeMap<String, PartSources> {
    builtin
        .iter()
        .map(|(lang, parts)| {
            let named = [0, 1, 2].map(|i| {
                (
                    format!("built-in {email}/{lang}/{}", PARTS[i]),
                    parts[i].to_owned(),
                )
            });
            (lang.to_string(), named)
        })
        .collect()
}

/// Compiles one email's templates into the two registries: HTML into the escaping one, the subject
/// and the text into the other.
fn register(
    html: &mut Handlebars<'static>,
    text: &mut Handlebars<'static>,
    email: &str,
    sources: &BTreeMap<String, PartSources>,
) -> anyhow::Result<()> {
    for (lang, [subject, body_html, body_text]) in sources {
        for (escaped, part, (origin, source)) in [
            (false, "subject", subject),
            (true, "html", body_html),
            (false, "text", body_text),
        ] {
            let registry = if escaped { &mut *html } else { &mut *text };
            registry
                .register_template_string(&template_name(email, lang, part), source)
                .map_err(|error| {
                    let at = error.pos().map_or_else(String::new, |(line, column)| {
                        format!(" at line {line}, column {column}")
                    });
                    anyhow::anyhow!("template {origin} does not compile{at}: {}", error.reason())
                })?;
        }
    }
    Ok(())
}

/// The reset email's overrides: `reset/` must exist in the override directory.
fn read_overrides(dir: &Path) -> anyhow::Result<Vec<(String, PartSources)>> {
    let reset = dir.join(RESET);
    let entries = std::fs::read_dir(&reset)
        .with_context(|| format!("RESETMAIL_TEMPLATES_DIR: cannot read {}", reset.display()))?;
    read_languages(&reset, entries)
}

/// The notice's overrides: none when the override directory has no `notice/`.
fn read_notice_overrides(dir: &Path) -> anyhow::Result<Vec<(String, PartSources)>> {
    let notice = dir.join(NOTICE);
    let entries = match std::fs::read_dir(&notice) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries.with_context(|| {
            format!("RESETMAIL_TEMPLATES_DIR: cannot read {}", notice.display())
        })?,
    };
    read_languages(&notice, entries)
}

/// Every language folder in `folder`, each with all three parts.
fn read_languages(
    folder: &Path,
    entries: std::fs::ReadDir,
) -> anyhow::Result<Vec<(String, PartSources)>> {
    let mut languages = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", folder.display()))?
            .path();
        if !path.is_dir() {
            continue;
        }
        let lang = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        let Some(lang) = lang else { continue };
        let read = |part: &str| -> anyhow::Result<(String, String)> {
            let file: PathBuf = path.join(part);
            let source = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "template override {} is missing or unreadable",
                    file.display()
                )
            })?;
            Ok((file.display().to_string(), source))
        };
        languages.push((lang, [read(PARTS[0])?, read(PARTS[1])?, read(PARTS[2])?]));
    }
    Ok(languages)
}

fn sample_notice_context() -> NoticeContext {
    NoticeContext {
        site_name: "<Sample & Site>".into(),
        site_url: "http://localhost:5212".into(),
        email: "sample@example.com".into(),
    }
}

fn sample_context(lang: &str) -> ResetEmailContext {
    ResetEmailContext {
        site_name: "Cloudreve".into(),
        site_url: "http://localhost:5212".into(),
        name: "<Sample & User>".into(),
        email: "sample@example.com".into(),
        link: crate::config::Site {
            url: "http://localhost:5212".into(),
            name: "Cloudreve".into(),
        }
        .reset_link(uuid::Uuid::nil(), "sample"),
        valid_for: valid_for(Duration::from_secs(3600), lang),
    }
}

/// How long a link is valid, written for people in `lang` as the shipped templates use it (the
/// case each language's sentence needs; English for a language resetmail does not ship).
pub fn valid_for(ttl: Duration, lang: &str) -> String {
    let seconds = ttl.as_secs().max(1);
    let (n, unit) = if seconds.is_multiple_of(3600) {
        (seconds / 3600, 0)
    } else if seconds.is_multiple_of(60) {
        (seconds / 60, 1)
    } else {
        (seconds, 2)
    };
    let lang = lang.to_ascii_lowercase();
    let primary = lang.split(['-', '_']).next().unwrap_or_default();
    // Forms by unit (hour, minute, second): singular and plural.
    let two = |forms: [(&str, &str); 3]| {
        let (one, many) = forms[unit];
        format!("{n} {}", if n == 1 { one } else { many })
    };
    match primary {
        "zh" if ["zh-tw", "zh-hk", "zh-mo", "zh-hant"]
            .iter()
            .any(|tag| lang.starts_with(tag)) =>
        {
            format!("{n} {}", ["小時", "分鐘", "秒"][unit])
        }
        "zh" => format!("{n} {}", ["小时", "分钟", "秒"][unit]),
        // The number stands against its unit: 1時間, 30분.
        "ja" => format!("{n}{}", ["時間", "分", "秒"][unit]),
        "ko" => format!("{n}{}", ["시간", "분", "초"][unit]),
        "de" => two([
            ("Stunde", "Stunden"),
            ("Minute", "Minuten"),
            ("Sekunde", "Sekunden"),
        ]),
        "fr" => two([
            ("heure", "heures"),
            ("minute", "minutes"),
            ("seconde", "secondes"),
        ]),
        "es" | "pt" => two([
            ("hora", "horas"),
            ("minuto", "minutos"),
            ("segundo", "segundos"),
        ]),
        "it" => two([("ora", "ore"), ("minuto", "minuti"), ("secondo", "secondi")]),
        // "Ссылка действует 1 час / 2 часа / 5 часов" (accusative): one for 1, 21, 31…
        "ru" => slavic(
            n,
            n % 10 == 1 && n % 100 != 11,
            [
                ["час", "часа", "часов"],
                ["минуту", "минуты", "минут"],
                ["секунду", "секунды", "секунд"],
            ][unit],
        ),
        // "ważny przez 1 godzinę / 2 godziny / 5 godzin" (accusative): one for 1 alone.
        "pl" => slavic(
            n,
            n == 1,
            [
                ["godzinę", "godziny", "godzin"],
                ["minutę", "minuty", "minut"],
                ["sekundę", "sekundy", "sekund"],
            ][unit],
        ),
        // After "لمدة" (genitive): one and two are words of their own, 3 to 10 take the plural,
        // 11 and more the singular.
        "ar" => {
            let [one, dual, plural, single] = [
                ["ساعة واحدة", "ساعتين", "ساعات", "ساعة"],
                ["دقيقة واحدة", "دقيقتين", "دقائق", "دقيقة"],
                ["ثانية واحدة", "ثانيتين", "ثوانٍ", "ثانية"],
            ][unit];
            match n {
                1 => one.to_owned(),
                2 => dual.to_owned(),
                3..=10 => format!("{n} {plural}"),
                _ => format!("{n} {single}"),
            }
        }
        _ => two([
            ("hour", "hours"),
            ("minute", "minutes"),
            ("second", "seconds"),
        ]),
    }
}

/// `n` with the Russian or Polish form of its unit: `forms` are (one, few, many); `one` says
/// whether `n` takes the first; 2 to 4 (but not 12 to 14) take the second, the rest the third.
fn slavic(n: u64, one: bool, forms: [&str; 3]) -> String {
    let form = if one {
        forms[0]
    } else if (2..=4).contains(&(n % 10)) && !(12..=14).contains(&(n % 100)) {
        forms[1]
    } else {
        forms[2]
    };
    format!("{n} {form}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Templates {
        Templates::load(None, "en-US").unwrap_or_else(|error| panic!("{error:#}"))
    }

    #[test]
    fn languages_are_chosen_exactly_then_by_primary_then_default() {
        let templates = builtin();
        assert_eq!(templates.choose_language(Some("zh-CN")), "zh-CN");
        assert_eq!(templates.choose_language(Some("zh_cn")), "zh-CN");
        assert_eq!(templates.choose_language(Some("zh-TW")), "zh-TW");
        assert_eq!(templates.choose_language(Some("zh-HK")), "zh-CN");
        assert_eq!(templates.choose_language(Some("ja")), "ja-JP");
        assert_eq!(templates.choose_language(Some("en-GB")), "en-US");
        assert_eq!(templates.choose_language(Some("fr-FR")), "fr-FR");
        assert_eq!(templates.choose_language(Some("pt-PT")), "pt-BR");
        assert_eq!(templates.choose_language(Some("nl-NL")), "en-US");
        assert_eq!(templates.choose_language(Some("")), "en-US");
        assert_eq!(templates.choose_language(None), "en-US");
    }

    #[test]
    fn every_shipped_language_renders_the_link_and_its_validity_in_its_own_words() {
        let templates = builtin();
        let mut subjects = std::collections::HashSet::new();
        for (lang, _) in BUILTIN {
            let mut context = sample_context(lang);
            context.valid_for = valid_for(Duration::from_secs(2 * 3600), lang);
            let email = templates
                .render(lang, &context)
                .unwrap_or_else(|error| panic!("{lang}: {error}"));
            assert!(
                email.subject.starts_with("[Cloudreve] "),
                "{lang}: {}",
                email.subject
            );
            assert!(
                subjects.insert(email.subject.clone()),
                "{lang} repeats a subject"
            );
            assert!(
                email.text.contains(&context.link),
                "{lang}: no link in the text"
            );
            assert!(
                email
                    .html
                    .contains(&context.link.replace('&', "&amp;").replace('=', "&#x3D;")),
                "{lang}: no link in the HTML"
            );
            for part in [&email.text, &email.html] {
                assert!(
                    part.contains(&context.valid_for),
                    "{lang}: the validity `{}` is missing",
                    context.valid_for
                );
            }
            assert!(
                email.html.contains(&format!("lang=\"{}\"", &lang[..2]))
                    || email.html.contains(&format!("lang=\"{lang}\"")),
                "{lang}: the HTML does not say its language"
            );
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let templates = builtin();
        let mut context = sample_context("en-US");
        context.name = "<script>alert(1)</script>".into();
        let email = templates.render("en-US", &context).unwrap();
        assert!(email.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!email.html.contains("<script>"));
        assert!(email.text.contains("<script>alert(1)</script>"));
        assert!(email.subject.starts_with("[Cloudreve] "));
    }

    #[test]
    fn validity_reads_naturally() {
        assert_eq!(valid_for(Duration::from_secs(7200), "zh-TW"), "2 小時");
        assert_eq!(valid_for(Duration::from_secs(7200), "zh-CN"), "2 小时");
        assert_eq!(valid_for(Duration::from_secs(1800), "ja-JP"), "30分");
        assert_eq!(valid_for(Duration::from_secs(3600), "en-US"), "1 hour");
        let ru = |hours: u64| valid_for(Duration::from_secs(hours * 3600), "ru-RU");
        assert_eq!(
            [ru(1), ru(2), ru(5), ru(11), ru(21), ru(22)],
            [
                "1 час",
                "2 часа",
                "5 часов",
                "11 часов",
                "21 час",
                "22 часа"
            ]
        );
        let pl = |minutes: u64| valid_for(Duration::from_secs(minutes * 60), "pl-PL");
        assert_eq!(
            [pl(1), pl(3), pl(12), pl(22), pl(25)],
            ["1 minutę", "3 minuty", "12 minut", "22 minuty", "25 minut"]
        );
        let ar = |hours: u64| valid_for(Duration::from_secs(hours * 3600), "ar-AR");
        assert_eq!(
            [ar(1), ar(2), ar(3), ar(11)],
            ["ساعة واحدة", "ساعتين", "3 ساعات", "11 ساعة"]
        );
        assert_eq!(valid_for(Duration::from_secs(7200), "de-DE"), "2 Stunden");
        assert_eq!(valid_for(Duration::from_secs(60), "fr-FR"), "1 minute");
        assert_eq!(valid_for(Duration::from_secs(5), "ko-KR"), "5초");
        assert_eq!(valid_for(Duration::from_secs(7200), "en-US"), "2 hours");
        assert_eq!(valid_for(Duration::from_secs(1800), "en-US"), "30 minutes");
        assert_eq!(valid_for(Duration::from_secs(3600), "zh-CN"), "1 小时");
        assert_eq!(valid_for(Duration::from_secs(90), "zh-CN"), "90 秒");
    }

    #[test]
    fn a_broken_override_is_refused_with_its_file() {
        let dir =
            std::env::temp_dir().join(format!("resetmail-templates-{}", uuid::Uuid::new_v4()));
        let lang = dir.join("reset/de-DE");
        std::fs::create_dir_all(&lang).unwrap();
        for (part, source) in [
            ("subject.hbs", "[{{site_name}}] Passwort"),
            ("body.html.hbs", "{{#if link}}"),
            ("body.txt.hbs", "{{link}}"),
        ] {
            std::fs::write(lang.join(part), source).unwrap();
        }
        let error = Templates::load(Some(&dir), "en-US")
            .err()
            .map(|e| format!("{e:#}"));
        let _ = std::fs::remove_dir_all(&dir);
        let error = error.unwrap_or_else(|| panic!("a broken template was accepted"));
        assert!(error.contains("de-DE/body.html.hbs"), "{error}");
    }

    #[test]
    fn an_override_with_an_unknown_variable_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("resetmail-templates-{}", uuid::Uuid::new_v4()));
        let lang = dir.join("reset/en-US");
        std::fs::create_dir_all(&lang).unwrap();
        for (part, source) in [
            ("subject.hbs", "[{{site_name}}] Reset"),
            ("body.html.hbs", "{{link}} {{nickname}}"),
            ("body.txt.hbs", "{{link}}"),
        ] {
            std::fs::write(lang.join(part), source).unwrap();
        }
        let result = Templates::load(Some(&dir), "en-US");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            result.is_err(),
            "strict mode let an unknown variable through"
        );
    }

    /// A fresh override directory holding `files` (path under it, contents).
    fn override_dir(files: &[(String, &str)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("resetmail-templates-{}", uuid::Uuid::new_v4()));
        for (path, source) in files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(file, source).unwrap();
        }
        dir
    }

    /// Loads `dir` and removes it, whatever the outcome.
    fn load_and_remove(dir: &Path, default_language: &str) -> anyhow::Result<Templates> {
        let loaded = Templates::load(Some(dir), default_language);
        let _ = std::fs::remove_dir_all(dir);
        loaded
    }

    /// A reset email for `lang` that compiles and renders.
    fn reset_override(lang: &str) -> [(String, &'static str); 3] {
        [
            (format!("reset/{lang}/subject.hbs"), "[{{site_name}}] Reset"),
            (
                format!("reset/{lang}/body.html.hbs"),
                "<a href=\"{{link}}\">{{name}}</a>",
            ),
            (format!("reset/{lang}/body.txt.hbs"), "{{name}}: {{link}}"),
        ]
    }

    fn notice_context() -> NoticeContext {
        NoticeContext {
            site_name: "Example Cloud".into(),
            site_url: "https://cloud.example.com".into(),
            email: "someone@example.org".into(),
        }
    }

    #[test]
    fn every_shipped_language_renders_a_notice_naming_the_address_and_the_site() {
        let templates = builtin();
        let context = notice_context();
        let mut subjects = std::collections::HashSet::new();
        for (lang, _) in NOTICE_BUILTIN {
            let notice = templates
                .render_notice(lang, &context)
                .unwrap_or_else(|error| panic!("{lang}: {error}"));
            assert!(
                notice.subject.starts_with("[Example Cloud] "),
                "{lang}: {}",
                notice.subject
            );
            assert!(
                subjects.insert(notice.subject.clone()),
                "{lang} repeats a subject"
            );
            let reset = templates
                .render(lang, &sample_context(lang))
                .unwrap_or_else(|error| panic!("{lang}: {error}"));
            assert_ne!(
                notice.subject.strip_prefix("[Example Cloud] "),
                reset.subject.strip_prefix("[Cloudreve] "),
                "{lang}: the notice's subject is the reset email's"
            );
            for (part, body) in [("text", &notice.text), ("HTML", &notice.html)] {
                for wanted in [
                    "someone@example.org",
                    "Example Cloud",
                    "https://cloud.example.com/session",
                ] {
                    assert!(body.contains(wanted), "{lang}: no `{wanted}` in the {part}");
                }
                assert!(
                    !body.contains("/session/reset"),
                    "{lang}: the {part} has a reset link"
                );
            }
            assert!(
                notice.html.contains(&format!("lang=\"{}\"", &lang[..2]))
                    || notice.html.contains(&format!("lang=\"{lang}\"")),
                "{lang}: the HTML does not say its language"
            );
            let direction = if lang == "ar-AR" { "rtl" } else { "ltr" };
            assert!(
                notice.html.contains(&format!("dir=\"{direction}\"")),
                "{lang}: the HTML is not {direction}"
            );
        }
    }

    #[test]
    fn notice_html_is_escaped_and_text_is_not() {
        let templates = builtin();
        let context = NoticeContext {
            site_name: "Tom & Jerry".into(),
            site_url: "https://cloud.example.com".into(),
            email: "<script>alert(1)</script>@example.org".into(),
        };
        let notice = templates.render_notice("en-US", &context).unwrap();
        assert!(
            notice
                .html
                .contains("&lt;script&gt;alert(1)&lt;/script&gt;@example.org")
        );
        assert!(notice.html.contains("Tom &amp; Jerry"));
        assert!(!notice.html.contains("<script>"));
        assert!(!notice.html.contains("Tom & Jerry"));
        assert!(
            notice
                .text
                .contains("<script>alert(1)</script>@example.org")
        );
        assert!(notice.text.contains("Tom & Jerry"));
        assert_eq!(notice.subject, "[Tom & Jerry] Password reset request");
    }

    #[test]
    fn an_override_directory_with_only_reset_templates_still_renders_notices() {
        let files: Vec<_> = reset_override("de-DE")
            .into_iter()
            .chain(reset_override("xx-XX"))
            .collect();
        let templates = load_and_remove(&override_dir(&files), "en-US")
            .unwrap_or_else(|error| panic!("{error:#}"));
        let subject = |lang: &str| {
            templates
                .render_notice(templates.choose_language(Some(lang)), &notice_context())
                .map(|notice| notice.subject)
                .unwrap_or_else(|error| panic!("{lang}: {error}"))
        };
        // A reset override keeps the shipped notice of its language…
        assert_eq!(
            subject("de-DE"),
            "[Example Cloud] Anfrage zum Zurücksetzen des Passworts"
        );
        // …and a language resetmail does not ship gets the default language's.
        assert_eq!(templates.choose_language(Some("xx-XX")), "xx-XX");
        assert_eq!(subject("xx-XX"), "[Example Cloud] Password reset request");

        // With that language as the default, there is no notice of its own to fall back on.
        let dir = override_dir(&files);
        let templates = load_and_remove(&dir, "xx-XX").unwrap_or_else(|error| panic!("{error:#}"));
        let notice = templates.render_notice("xx-XX", &notice_context()).unwrap();
        assert_eq!(notice.subject, "[Example Cloud] Password reset request");
    }

    #[test]
    fn a_notice_override_replaces_the_shipped_one_and_serves_as_the_default() {
        let mut files: Vec<(String, &str)> = reset_override("xx-XX").into();
        files.extend([
            ("notice/fr-FR/subject.hbs".into(), "[{{site_name}}] Avis"),
            ("notice/fr-FR/body.html.hbs".into(), "<p>{{email}}</p>"),
            ("notice/fr-FR/body.txt.hbs".into(), "{{email}} {{site_url}}"),
        ]);
        let templates = load_and_remove(&override_dir(&files), "fr-FR")
            .unwrap_or_else(|error| panic!("{error:#}"));
        for lang in ["fr-FR", "xx-XX"] {
            let notice = templates
                .render_notice(lang, &notice_context())
                .unwrap_or_else(|error| panic!("{lang}: {error}"));
            assert_eq!(notice.subject, "[Example Cloud] Avis", "{lang}");
            assert_eq!(
                notice.text, "someone@example.org https://cloud.example.com",
                "{lang}"
            );
        }
        let german = templates.render_notice("de-DE", &notice_context()).unwrap();
        assert!(german.subject.contains("Passworts"), "{}", german.subject);
    }

    #[test]
    fn a_broken_notice_override_is_refused_with_its_file() {
        let mut files: Vec<(String, &str)> = reset_override("en-US").into();
        files.extend([
            ("notice/en-US/subject.hbs".into(), "[{{site_name}}] Notice"),
            ("notice/en-US/body.html.hbs".into(), "{{#if email}}"),
            ("notice/en-US/body.txt.hbs".into(), "{{email}}"),
        ]);
        let error = load_and_remove(&override_dir(&files), "en-US")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| panic!("a broken notice was accepted"));
        assert!(error.contains("notice/en-US/body.html.hbs"), "{error}");
    }

    #[test]
    fn a_notice_override_using_a_reset_variable_is_refused() {
        let mut files: Vec<(String, &str)> = reset_override("en-US").into();
        files.extend([
            ("notice/en-US/subject.hbs".into(), "[{{site_name}}] Notice"),
            ("notice/en-US/body.html.hbs".into(), "{{email}}"),
            ("notice/en-US/body.txt.hbs".into(), "{{email}} {{link}}"),
        ]);
        let error = load_and_remove(&override_dir(&files), "en-US")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_else(|| panic!("strict mode let `link` into a notice"));
        assert!(error.contains("notice template for en-US"), "{error}");
    }
}
