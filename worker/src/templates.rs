//! The reset email's templates: Handlebars, one folder per language, HTML escaped and text not,
//! strict mode, all compiled and test-rendered at start-up so a broken template stops the worker.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use handlebars::Handlebars;

/// The three parts of one language's email.
const PARTS: [&str; 3] = ["subject.hbs", "body.html.hbs", "body.txt.hbs"];

/// Templates shipped with resetmail: every language Cloudreve's frontend offers.
const BUILTIN: [(&str, [&str; 3]); 13] = [
    (
        "en-US",
        [
            include_str!("../templates/reset/en-US/subject.hbs"),
            include_str!("../templates/reset/en-US/body.html.hbs"),
            include_str!("../templates/reset/en-US/body.txt.hbs"),
        ],
    ),
    (
        "zh-CN",
        [
            include_str!("../templates/reset/zh-CN/subject.hbs"),
            include_str!("../templates/reset/zh-CN/body.html.hbs"),
            include_str!("../templates/reset/zh-CN/body.txt.hbs"),
        ],
    ),
    (
        "zh-TW",
        [
            include_str!("../templates/reset/zh-TW/subject.hbs"),
            include_str!("../templates/reset/zh-TW/body.html.hbs"),
            include_str!("../templates/reset/zh-TW/body.txt.hbs"),
        ],
    ),
    (
        "ja-JP",
        [
            include_str!("../templates/reset/ja-JP/subject.hbs"),
            include_str!("../templates/reset/ja-JP/body.html.hbs"),
            include_str!("../templates/reset/ja-JP/body.txt.hbs"),
        ],
    ),
    (
        "ru-RU",
        [
            include_str!("../templates/reset/ru-RU/subject.hbs"),
            include_str!("../templates/reset/ru-RU/body.html.hbs"),
            include_str!("../templates/reset/ru-RU/body.txt.hbs"),
        ],
    ),
    (
        "de-DE",
        [
            include_str!("../templates/reset/de-DE/subject.hbs"),
            include_str!("../templates/reset/de-DE/body.html.hbs"),
            include_str!("../templates/reset/de-DE/body.txt.hbs"),
        ],
    ),
    (
        "fr-FR",
        [
            include_str!("../templates/reset/fr-FR/subject.hbs"),
            include_str!("../templates/reset/fr-FR/body.html.hbs"),
            include_str!("../templates/reset/fr-FR/body.txt.hbs"),
        ],
    ),
    (
        "es-ES",
        [
            include_str!("../templates/reset/es-ES/subject.hbs"),
            include_str!("../templates/reset/es-ES/body.html.hbs"),
            include_str!("../templates/reset/es-ES/body.txt.hbs"),
        ],
    ),
    (
        "pt-BR",
        [
            include_str!("../templates/reset/pt-BR/subject.hbs"),
            include_str!("../templates/reset/pt-BR/body.html.hbs"),
            include_str!("../templates/reset/pt-BR/body.txt.hbs"),
        ],
    ),
    (
        "it-IT",
        [
            include_str!("../templates/reset/it-IT/subject.hbs"),
            include_str!("../templates/reset/it-IT/body.html.hbs"),
            include_str!("../templates/reset/it-IT/body.txt.hbs"),
        ],
    ),
    (
        "ko-KR",
        [
            include_str!("../templates/reset/ko-KR/subject.hbs"),
            include_str!("../templates/reset/ko-KR/body.html.hbs"),
            include_str!("../templates/reset/ko-KR/body.txt.hbs"),
        ],
    ),
    (
        "pl-PL",
        [
            include_str!("../templates/reset/pl-PL/subject.hbs"),
            include_str!("../templates/reset/pl-PL/body.html.hbs"),
            include_str!("../templates/reset/pl-PL/body.txt.hbs"),
        ],
    ),
    (
        "ar-AR",
        [
            include_str!("../templates/reset/ar-AR/subject.hbs"),
            include_str!("../templates/reset/ar-AR/body.html.hbs"),
            include_str!("../templates/reset/ar-AR/body.txt.hbs"),
        ],
    ),
];

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

/// The compiled templates of every language.
pub struct Templates {
    html: Handlebars<'static>,
    text: Handlebars<'static>,
    languages: Vec<String>,
    default_language: String,
}

impl Templates {
    /// The shipped templates, replaced or extended by `override_dir` when given; each is compiled and
    /// test-rendered. `default_language` must be one of the languages.
    pub fn load(override_dir: Option<&Path>, default_language: &str) -> anyhow::Result<Self> {
        let mut sources: BTreeMap<String, PartSources> = BUILTIN
            .iter()
            .map(|(lang, parts)| {
                let named = [0, 1, 2].map(|i| {
                    (
                        format!("built-in reset/{lang}/{}", PARTS[i]),
                        parts[i].to_owned(),
                    )
                });
                (lang.to_string(), named)
            })
            .collect();
        if let Some(dir) = override_dir {
            for (lang, parts) in read_overrides(dir)? {
                sources.insert(lang, parts);
            }
        }

        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        let mut text = Handlebars::new();
        text.set_strict_mode(true);
        text.register_escape_fn(handlebars::no_escape);
        for (lang, [subject, body_html, body_text]) in &sources {
            for (escaped, part, (origin, source)) in [
                (false, "subject", subject),
                (true, "html", body_html),
                (false, "text", body_text),
            ] {
                let registry = if escaped { &mut html } else { &mut text };
                registry
                    .register_template_string(&template_name(lang, part), source)
                    .map_err(|error| {
                        let at = error.pos().map_or_else(String::new, |(line, column)| {
                            format!(" at line {line}, column {column}")
                        });
                        anyhow::anyhow!(
                            "template {origin} does not compile{at}: {}",
                            error.reason()
                        )
                    })?;
            }
        }

        let templates = Self {
            html,
            text,
            languages: sources.keys().cloned().collect(),
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
        Ok(templates)
    }

    /// The languages that have templates.
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
        let subject = self.text.render(&template_name(lang, "subject"), context)?;
        Ok(RenderedEmail {
            // A header is one line, whatever the template or the site name hold.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            html: self.html.render(&template_name(lang, "html"), context)?,
            text: self.text.render(&template_name(lang, "text"), context)?,
        })
    }
}

fn template_name(lang: &str, part: &str) -> String {
    format!("reset/{lang}/{part}")
}

fn read_overrides(dir: &Path) -> anyhow::Result<Vec<(String, PartSources)>> {
    let reset = dir.join("reset");
    let entries = std::fs::read_dir(&reset)
        .with_context(|| format!("RESETMAIL_TEMPLATES_DIR: cannot read {}", reset.display()))?;
    let mut languages = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", reset.display()))?
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

fn sample_context(lang: &str) -> ResetEmailContext {
    ResetEmailContext {
        site_name: "Cloudreve".into(),
        site_url: "http://localhost:5212".into(),
        name: "<Sample & User>".into(),
        email: "sample@example.com".into(),
        link: "http://localhost:5212/session/reset?id=00000000-0000-0000-0000-000000000000&secret=sample".into(),
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
        let email = templates
            .render("en-US", &context)
            .unwrap_or_else(|error| panic!("{error}"));
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
        std::fs::create_dir_all(&lang).unwrap_or_else(|e| panic!("{e}"));
        for (part, source) in [
            ("subject.hbs", "[{{site_name}}] Passwort"),
            ("body.html.hbs", "{{#if link}}"),
            ("body.txt.hbs", "{{link}}"),
        ] {
            std::fs::write(lang.join(part), source).unwrap_or_else(|e| panic!("{e}"));
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
        std::fs::create_dir_all(&lang).unwrap_or_else(|e| panic!("{e}"));
        for (part, source) in [
            ("subject.hbs", "[{{site_name}}] Reset"),
            ("body.html.hbs", "{{link}} {{nickname}}"),
            ("body.txt.hbs", "{{link}}"),
        ] {
            std::fs::write(lang.join(part), source).unwrap_or_else(|e| panic!("{e}"));
        }
        let result = Templates::load(Some(&dir), "en-US");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            result.is_err(),
            "strict mode let an unknown variable through"
        );
    }
}
