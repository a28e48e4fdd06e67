//! Cloudreve's own reset email: its `mail_reset_template` setting parsed, and its Go
//! `html/template` texts rendered as Go renders them, for the subset resetmail supports (field
//! paths, trim markers, comments); anything else is refused when the setting is loaded.

use serde_json::Value;

pub use self::template::GoTemplate;

mod context;
mod escape;
mod template;
#[cfg(test)]
mod tests;

/// Why a template cannot be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The setting as a whole is unusable: not JSON, not a list of entries, or empty. Entries
    /// are counted from 0.
    #[error("mail_reset_template: {0}")]
    Setting(String),
    /// One entry's title or body is refused.
    #[error("mail_reset_template[{language}].{part}: {error}")]
    Entry {
        /// The entry's `language`.
        language: String,
        /// `title` or `body`.
        part: &'static str,
        /// Why.
        error: Box<TemplateError>,
    },
    /// The text uses something outside resetmail's subset, or something Go's `html/template`
    /// would itself refuse.
    #[error("{reason} at line {line}")]
    Compile {
        /// Line of the template, from 1.
        line: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A field path names nothing in the data.
    #[error("{path} is not in the data")]
    Missing {
        /// The path as written, e.g. `.User.Phone`.
        path: String,
    },
    /// A field path names an object or a list, which resetmail will not print.
    #[error("{path} is an object or a list, not a value")]
    NotAValue {
        /// The path as written.
        path: String,
    },
}

/// One entry of `mail_reset_template`: a language and its compiled title and body.
#[derive(Clone, Debug)]
pub struct SiteTemplate {
    /// The language tag as stored, e.g. `en-US`.
    pub language: String,
    /// The subject. Cloudreve runs it through `html/template` too, so a site named `A & B` gives
    /// the subject `A &amp; B` there (docs/CLOUDREVE.md §6); a subject is not HTML, so resetmail's
    /// caller should render it with [`GoTemplate::render_text`].
    pub title: GoTemplate,
    /// The HTML body, for [`GoTemplate::render_html`].
    pub body: GoTemplate,
}

/// Parses the `mail_reset_template` setting: a JSON array of `{language, title, body}` in any key
/// order, every title and body compiled, so a template resetmail cannot render is refused here
/// with its language and the reason.
pub fn parse_reset_templates(json: &str) -> Result<Vec<SiteTemplate>, TemplateError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|error| TemplateError::Setting(format!("not valid JSON: {error}")))?;
    let Value::Array(entries) = value else {
        return Err(TemplateError::Setting("not a JSON array".to_owned()));
    };
    if entries.is_empty() {
        // Cloudreve cannot send a reset email either then (error 40028).
        return Err(TemplateError::Setting("an empty list".to_owned()));
    }
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let field = |name: &str| {
                entry.get(name).and_then(Value::as_str).ok_or_else(|| {
                    TemplateError::Setting(format!("entry {index} has no string `{name}`"))
                })
            };
            let language = field("language")?;
            let compile = |part: &'static str| {
                GoTemplate::compile(field(part)?).map_err(|error| TemplateError::Entry {
                    language: language.to_owned(),
                    part,
                    error: Box::new(error),
                })
            };
            Ok(SiteTemplate {
                language: language.to_owned(),
                title: compile("title")?,
                body: compile("body")?,
            })
        })
        .collect()
}

/// The template for a user's language: the first whose language equals it ignoring ASCII case
/// (Cloudreve's `strings.EqualFold`), else — resetmail's addition — the first with the same
/// primary subtag (`zh-TW` → `zh-CN`), else the first template (Cloudreve's fallback).
///
/// # Panics
/// If `templates` is empty, which [`parse_reset_templates`] never returns.
pub fn choose<'a>(templates: &'a [SiteTemplate], language: Option<&str>) -> &'a SiteTemplate {
    if let Some(wanted) = language.filter(|wanted| !wanted.is_empty()) {
        if let Some(exact) = templates
            .iter()
            .find(|template| template.language.eq_ignore_ascii_case(wanted))
        {
            return exact;
        }
        let primary = primary_subtag(wanted);
        if let Some(near) = templates.iter().find(|template| {
            !primary.is_empty() && primary_subtag(&template.language).eq_ignore_ascii_case(primary)
        }) {
            return near;
        }
    }
    match templates.first() {
        Some(first) => first,
        None => {
            panic!("choose needs at least one template; parse_reset_templates never gives none")
        }
    }
}

fn primary_subtag(tag: &str) -> &str {
    tag.split(['-', '_']).next().unwrap_or(tag)
}

/// The data Cloudreve passes to the reset title and body (`ResetContext.templateData()` in
/// `pkg/email/template.go`, docs/CLOUDREVE.md §6). `logo` as Cloudreve resolves it: a logo not
/// starting with `http` is joined to the site URL. Fields resetmail cannot know are empty
/// strings, so that a template using them still renders.
pub fn reset_data(
    site_name: &str,
    site_url: &str,
    logo: &str,
    url: &str,
    user_nick: &str,
    user_email: &str,
) -> Value {
    serde_json::json!({
        "CommonContext": {
            "SiteBasic": {
                "Name": site_name,
                "Title": "",
                "ID": "",
                "Description": "",
                "Script": "",
            },
            "Logo": { "Normal": logo, "Light": "" },
            "SiteUrl": site_url,
        },
        // Cloudreve passes the whole account (`ent.User`); these are the fields the doc lists.
        "User": {
            "Nick": user_nick,
            "Email": user_email,
            "ID": "",
            "Settings": { "Language": "" },
        },
        "Url": url,
    })
}
