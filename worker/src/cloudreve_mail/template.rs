//! A compiled template of resetmail's Go subset: text/template's lexer for field paths, trim
//! markers and comments, and rendering with the escaper html/template puts after each action.

use std::borrow::Cow;

use serde_json::Value;

use super::{TemplateError, context::*, escape::*};

/// A compiled Go template of resetmail's subset: literal text, `{{ .A.B }}` field paths, trim
/// markers (`{{- ` and ` -}}`) and comments. The HTML context of every action is worked out here,
/// as Go's `html/template` does, so rendering escapes as Go would.
#[derive(Clone, Debug)]
pub struct GoTemplate {
    nodes: Vec<Node>,
}

#[derive(Clone, Debug)]
pub(super) enum Node {
    /// Literal text: as written (for text), and as Go's escaper rewrites it (for HTML).
    Text { raw: String, html: String },
    /// A field path such as `.CommonContext.SiteUrl`, and how Go escapes it where it stands.
    Action { path: String, escape: Escape },
}

/// The escapers Go puts after an action, for the contexts resetmail supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Escape {
    /// Text, RCDATA and quoted attribute values: `htmlEscaper` / `attrEscaper`.
    Html,
    /// A quoted URL attribute value: by URL part, then `attrEscaper`.
    Url(UrlPart),
    /// Inside an HTML comment: Go's `commentEscaper` prints nothing.
    Drop,
}

impl GoTemplate {
    /// Compiles `source`; refuses anything outside the subset, and anything Go's `html/template`
    /// would refuse or resetmail would have to guess at, with the reason and line.
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        let mut nodes = Vec::new();
        let mut context = Context::default();
        for piece in lex(source)? {
            match piece {
                Piece::Text { text, offset } => {
                    let (html, after) = escape_text(context, text)
                        .map_err(|(at, reason)| compile_error(source, offset + at, reason))?;
                    nodes.push(Node::Text {
                        raw: text.to_owned(),
                        html,
                    });
                    context = after;
                }
                Piece::Action { path, offset } => {
                    let (escape, after) = escape_action(context).map_err(|reason| {
                        compile_error(source, offset, format!("{{{{{path}}}}} {reason}"))
                    })?;
                    nodes.push(Node::Action {
                        path: path.to_owned(),
                        escape,
                    });
                    context = after;
                }
            }
        }
        if context.state != State::Text {
            let reason = format!(
                "the template ends {}, and Go's html/template refuses a template that does not end in text",
                describe(context)
            );
            return Err(compile_error(source, source.len(), reason));
        }
        Ok(Self { nodes })
    }

    /// The field paths the template uses, as written (`.CommonContext.SiteUrl`).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter_map(|node| match node {
            Node::Action { path, .. } => Some(path.as_str()),
            Node::Text { .. } => None,
        })
    }

    /// Checks that every path resolves to a printable value in `data`; run at load with sample
    /// data, so a template using a variable resetmail does not provide is refused then.
    pub fn check(&self, data: &Value) -> Result<(), TemplateError> {
        self.paths()
            .try_for_each(|path| lookup(data, path).map(|_| ()))
    }

    /// Renders with Go's `html/template` escaping.
    pub fn render_html(&self, data: &Value) -> Result<String, TemplateError> {
        self.render(data, true)
    }

    /// Renders with `text/template` semantics: nothing escaped, literal text as written.
    pub fn render_text(&self, data: &Value) -> Result<String, TemplateError> {
        self.render(data, false)
    }

    fn render(&self, data: &Value, html: bool) -> Result<String, TemplateError> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text { raw, html: escaped } => out.push_str(if html { escaped } else { raw }),
                Node::Action { path, escape } => {
                    let value = lookup(data, path)?;
                    match (html, escape) {
                        (false, _) => out.push_str(&value),
                        (true, Escape::Html) => html_escape(&value, &mut out),
                        (true, Escape::Url(part)) => {
                            html_escape(&url_escape(&value, *part), &mut out)
                        }
                        (true, Escape::Drop) => {}
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The value at `path` as Go prints it: strings as they are, numbers and booleans as their JSON
/// text, null as nothing.
pub(super) fn lookup<'d>(data: &'d Value, path: &str) -> Result<Cow<'d, str>, TemplateError> {
    let mut value = data;
    for key in path.split('.').skip(1) {
        value = value.get(key).ok_or_else(|| TemplateError::Missing {
            path: path.to_owned(),
        })?;
    }
    match value {
        Value::String(text) => Ok(Cow::Borrowed(text)),
        Value::Null => Ok(Cow::Borrowed("")),
        Value::Bool(flag) => Ok(Cow::Owned(flag.to_string())),
        Value::Number(number) => Ok(Cow::Owned(number.to_string())),
        Value::Array(_) | Value::Object(_) => Err(TemplateError::NotAValue {
            path: path.to_owned(),
        }),
    }
}

pub(super) fn compile_error(source: &str, offset: usize, reason: String) -> TemplateError {
    let line = 1 + source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count();
    TemplateError::Compile { line, reason }
}

// ---------------------------------------------------------------------------------------------
// text/template's lexer, for the subset.

pub(super) enum Piece<'s> {
    /// Literal text, after trim markers; `offset` is where it starts in the source.
    Text { text: &'s str, offset: usize },
    /// A field path; `offset` is where its `{{` starts.
    Action { path: &'s str, offset: usize },
}

/// What text/template's trim markers remove and what must sit between `-` and the action.
pub(super) fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits `source` into text and actions as text/template does. Each comment and action ends a
/// text node, as in Go, which matters to the escaper (it works node by node).
pub(super) fn lex(source: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let (mut pos, mut trim_next) = (0, false);
    loop {
        let open = source[pos..].find("{{").map(|at| pos + at);
        let end = open.unwrap_or(source.len());
        // `{{- ` trims the text before; `{{-3}}` is the number -3, not a marker.
        let trim_before = open.is_some_and(|open| {
            let after = &source.as_bytes()[open + 2..];
            after.first() == Some(&b'-')
                && after.get(1).is_some_and(|&b| is_go_space(char::from(b)))
        });
        let mut text = &source[pos..end];
        let mut offset = pos;
        if trim_next {
            text = text.trim_start_matches(is_go_space);
            offset = end - text.len();
        }
        if trim_before {
            text = text.trim_end_matches(is_go_space);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text { text, offset });
        }
        let Some(open) = open else { break };
        let inner_start = open + if trim_before { 4 } else { 2 };
        let rest = &source[inner_start..];
        if let Some(comment) = rest.strip_prefix("/*") {
            // Go requires `*/` right before the closing delimiter.
            let Some(close) = comment.find("*/") else {
                return Err(compile_error(source, open, "unclosed comment".to_owned()));
            };
            let after = &comment[close + 2..];
            let after_at = source.len() - after.len();
            if after.starts_with("}}") {
                (pos, trim_next) = (after_at + 2, false);
            } else if ends_right_trim(after) {
                (pos, trim_next) = (after_at + 4, true);
            } else {
                let reason = "comment ends before the closing }}".to_owned();
                return Err(compile_error(source, open, reason));
            }
            continue;
        }
        let Some(close) = rest.find("}}") else {
            let reason = "unclosed action: no }} after this {{".to_owned();
            return Err(compile_error(source, open, reason));
        };
        let mut inner = &rest[..close];
        let bytes = inner.as_bytes();
        trim_next = bytes.len() >= 2
            && bytes[bytes.len() - 1] == b'-'
            && is_go_space(char::from(bytes[bytes.len() - 2]));
        if trim_next {
            inner = &inner[..inner.len() - 2];
        }
        let inner = inner.trim_matches(is_go_space);
        if !is_field_path(inner) {
            let reason = if inner.is_empty() {
                "empty action {{}}".to_owned()
            } else {
                format!("unsupported action {{{{{inner}}}}}")
            };
            return Err(compile_error(source, open, reason));
        }
        pieces.push(Piece::Action {
            path: inner,
            offset: open,
        });
        pos = inner_start + close + 2;
    }
    Ok(pieces)
}

/// Whether `rest` starts with a right trim marker and the closing delimiter (` -}}`).
pub(super) fn ends_right_trim(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    bytes.len() >= 4 && is_go_space(char::from(bytes[0])) && &bytes[1..4] == b"-}}"
}

/// `.A.B.C`: fields only, each an identifier as Go lexes one. `{{.}}` (the whole data) is not one.
pub(super) fn is_field_path(inner: &str) -> bool {
    inner.strip_prefix('.').is_some_and(|fields| {
        fields.split('.').all(|field| {
            let mut chars = field.chars();
            chars
                .next()
                .is_some_and(|first| first == '_' || first.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
    })
}
