//! html/template's context tracking (escape.go, transition.go) for the contexts resetmail
//! supports: where in the HTML each action stands, and how Go rewrites the literal text.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum State {
    #[default]
    Text,
    Tag,
    AttrName,
    AfterName,
    BeforeValue,
    HtmlComment,
    /// The content of `<title>` and `<textarea>`.
    Rcdata,
    Attr,
    Url,
    Srcset,
    /// An event-handler attribute's value (`<script>` elements are refused outright).
    Js,
    Css,
    CssDqStr,
    CssSqStr,
    CssDqUrl,
    CssSqUrl,
    CssUrl,
    CssBlockComment,
    CssLineComment,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Element {
    #[default]
    None,
    Style,
    Textarea,
    Title,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Attr {
    #[default]
    None,
    Script,
    Style,
    Url,
    Srcset,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Delim {
    #[default]
    None,
    Double,
    Single,
    SpaceOrTagEnd,
}

/// Where in a URL an action stands: it decides Go's URL escaper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum UrlPart {
    /// At the start: `urlFilter` (unsafe schemes become `#ZgotmplZ`) then `urlNormalizer`.
    #[default]
    None,
    /// After some literal text, before `?` or `#`: `urlNormalizer`.
    PreQuery,
    /// After `?` or `#`: `urlEscaper`.
    QueryOrFrag,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Context {
    pub(super) state: State,
    element: Element,
    attr: Attr,
    delim: Delim,
    url_part: UrlPart,
}

/// A transition: the context after some bytes and how many were consumed, or where (relative to
/// the bytes given) and why the template is refused.
pub(super) type Step = Result<(Context, usize), (usize, String)>;

use super::template::Escape;

pub(super) fn is_comment(state: State) -> bool {
    matches!(
        state,
        State::HtmlComment | State::CssBlockComment | State::CssLineComment
    )
}

pub(super) fn describe(context: Context) -> &'static str {
    match context.state {
        State::Text => "in text",
        State::Tag | State::AttrName | State::AfterName | State::BeforeValue => "inside a tag",
        State::HtmlComment => "inside an HTML comment",
        State::Rcdata => "inside a <title> or <textarea> element",
        _ if context.delim != Delim::None => "inside an attribute value",
        _ => "inside a <style> element",
    }
}

/// Go's `escapeText`: walks one text node from context `c`, returning the node as Go rewrites it
/// (HTML and CSS comments dropped, a `<` that starts no tag written `&lt;`) and the context after.
pub(super) fn escape_text(
    mut c: Context,
    text: &str,
) -> Result<(String, Context), (usize, String)> {
    let s = text.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let (mut written, mut i) = (0, 0);
    while i != s.len() {
        let (c1, read) = context_after_text(c, &s[i..]).map_err(|(at, reason)| (i + at, reason))?;
        let i1 = i + read;
        if matches!(c.state, State::Text | State::Rcdata) {
            let mut end = i1;
            if c1.state != c.state {
                // The last `<` starts the tag or comment just entered: it stays.
                if let Some(at) = s[i..i1].iter().rposition(|&b| b == b'<') {
                    end = i + at;
                }
            }
            for j in (i..end).filter(|&j| s[j] == b'<') {
                if !starts_with_ignore_case(&s[j..], b"<!DOCTYPE") {
                    out.extend_from_slice(&s[written..j]);
                    out.extend_from_slice(b"&lt;");
                    written = j + 1;
                }
            }
        } else if is_comment(c.state) && c.delim == Delim::None {
            if c.state == State::CssBlockComment {
                out.push(b' ');
            }
            written = i1;
        }
        if c.state != c1.state && is_comment(c1.state) && c1.delim == Delim::None {
            // Keep what precedes the comment's opening `<!--` or `/*` / `//`.
            let opening = if c1.state == State::HtmlComment { 4 } else { 2 };
            out.extend_from_slice(&s[written..i1 - opening]);
            written = i1;
        }
        if read == 0 && c1 == c {
            return Err((
                i,
                "internal error: the HTML scanner made no progress".to_owned(),
            ));
        }
        (c, i) = (c1, i1);
    }
    if !is_comment(c.state) || c.delim != Delim::None {
        out.extend_from_slice(&s[written..]);
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), c))
}

/// Go's `escapeAction` for the supported contexts; the others are refused.
pub(super) fn escape_action(c: Context) -> Result<(Escape, Context), &'static str> {
    let c = nudge(c);
    let quoted = matches!(c.delim, Delim::Double | Delim::Single);
    let escape = match c.state {
        State::Text | State::Rcdata => Escape::Html,
        State::HtmlComment => Escape::Drop,
        State::Attr if quoted => Escape::Html,
        State::Url if quoted => Escape::Url(c.url_part),
        State::Attr | State::Url => {
            return Err("is in an unquoted attribute value; quote the value");
        }
        State::Tag | State::AttrName | State::AfterName | State::BeforeValue => {
            return Err("is inside a tag or an attribute name");
        }
        State::Srcset => return Err("is in a srcset attribute"),
        State::Js => return Err("is in an event-handler attribute (JavaScript)"),
        _ if c.delim == Delim::None => return Err("is inside a <style> element"),
        _ => return Err("is in a style attribute"),
    };
    Ok((escape, c))
}

/// Go's `nudge`: the context an action sees where the text alone leaves it undecided.
pub(super) fn nudge(mut c: Context) -> Context {
    match c.state {
        State::Tag => c.state = State::AttrName,
        State::BeforeValue => {
            c.state = attr_start_state(c.attr);
            c.delim = Delim::SpaceOrTagEnd;
            c.attr = Attr::None;
        }
        State::AfterName => {
            c.state = State::AttrName;
            c.attr = Attr::None;
        }
        _ => {}
    }
    c
}

/// Go's `contextAfterText`.
pub(super) fn context_after_text(c: Context, s: &[u8]) -> Step {
    if c.delim == Delim::None {
        let (c1, i) = special_tag_end(c, s);
        if i == 0 {
            // `</style>` or `</title>` ends the element; what precedes it was consumed.
            return Ok((c1, 0));
        }
        return transition(c, &s[..i]);
    }
    let ends: &[u8] = match c.delim {
        Delim::Double => b"\"",
        Delim::Single => b"'",
        _ => b" \t\n\x0c\r>",
    };
    let i = s.iter().position(|b| ends.contains(b)).unwrap_or(s.len());
    if c.delim == Delim::SpaceOrTagEnd {
        // Browsers disagree on these in an unquoted value; Go refuses them.
        if let Some(at) = s[..i].iter().position(|b| b"\"'<=`".contains(b)) {
            let reason = format!(
                "{:?} in the unquoted attribute value {:?}",
                char::from(s[at]),
                String::from_utf8_lossy(&s[..i])
            );
            return Err((at, reason));
        }
    }
    if i == s.len() {
        // The value goes on past this text. Only a URL's part matters to what follows: an action
        // in any other value (script, style, srcset) is refused.
        let mut c = c;
        if matches!(c.state, State::Url | State::Srcset) {
            c = t_url(c, &decode_entities(s));
        }
        return Ok((c, s.len()));
    }
    let consumed = if c.delim == Delim::SpaceOrTagEnd {
        i
    } else {
        i + 1
    };
    let after = Context {
        state: State::Tag,
        element: c.element,
        ..Context::default()
    };
    Ok((after, consumed))
}

pub(super) fn transition(c: Context, s: &[u8]) -> Step {
    match c.state {
        State::Text => t_text(c, s),
        State::Tag => t_tag(c, s),
        State::AttrName => {
            let i = eat_attr_name(s, 0)?;
            let state = if i == s.len() {
                c.state
            } else {
                State::AfterName
            };
            Ok((Context { state, ..c }, i))
        }
        State::AfterName => {
            let i = eat_white_space(s, 0);
            match s.get(i) {
                None => Ok((c, s.len())),
                Some(b'=') => Ok((
                    Context {
                        state: State::BeforeValue,
                        ..c
                    },
                    i + 1,
                )),
                // A valueless attribute, or the end of the tag.
                Some(_) => Ok((
                    Context {
                        state: State::Tag,
                        ..c
                    },
                    i,
                )),
            }
        }
        State::BeforeValue => {
            let i = eat_white_space(s, 0);
            let (delim, start) = match s.get(i) {
                None => return Ok((c, s.len())),
                Some(b'"') => (Delim::Double, i + 1),
                Some(b'\'') => (Delim::Single, i + 1),
                Some(_) => (Delim::SpaceOrTagEnd, i),
            };
            let state = attr_start_state(c.attr);
            Ok((Context { state, delim, ..c }, start))
        }
        State::HtmlComment => Ok(match find(s, b"-->") {
            Some(i) => (Context::default(), i + 3),
            None => (c, s.len()),
        }),
        State::Rcdata | State::Attr | State::Js => Ok((c, s.len())),
        State::Url | State::Srcset => Ok((t_url(c, s), s.len())),
        State::Css => Ok(t_css(c, s)),
        State::CssDqStr | State::CssSqStr | State::CssDqUrl | State::CssSqUrl | State::CssUrl => {
            t_css_str(c, s)
        }
        State::CssBlockComment => Ok(match find(s, b"*/") {
            Some(i) => (
                Context {
                    state: State::Css,
                    ..c
                },
                i + 2,
            ),
            None => (c, s.len()),
        }),
        // The line terminator is not part of the comment.
        State::CssLineComment => Ok(match s.iter().position(|b| b"\n\x0c\r".contains(b)) {
            Some(i) => (
                Context {
                    state: State::Css,
                    ..c
                },
                i,
            ),
            None => (c, s.len()),
        }),
    }
}

/// Go's `tText`: finds the next tag or comment.
pub(super) fn t_text(c: Context, s: &[u8]) -> Step {
    let mut k = 0;
    loop {
        let Some(i) = s[k..].iter().position(|&b| b == b'<').map(|at| k + at) else {
            return Ok((c, s.len()));
        };
        if i + 1 == s.len() {
            return Ok((c, s.len()));
        }
        if s[i..].starts_with(b"<!--") {
            let comment = Context {
                state: State::HtmlComment,
                ..Context::default()
            };
            return Ok((comment, i + 4));
        }
        let mut j = i + 1;
        let closing = s[j] == b'/';
        if closing {
            if j + 1 == s.len() {
                return Ok((c, s.len()));
            }
            j += 1;
        }
        let name_end = eat_tag_name(s, j);
        if name_end != j {
            let name = s[j..name_end].to_ascii_lowercase();
            let element = match name.as_slice() {
                _ if closing => Element::None,
                b"script" => {
                    // Go rewrites script content (comments dropped, JavaScript contexts);
                    // resetmail will not guess at it, and mail clients do not run scripts.
                    return Err((
                        i,
                        "a <script> element, which resetmail does not render".to_owned(),
                    ));
                }
                b"style" => Element::Style,
                b"textarea" => Element::Textarea,
                b"title" => Element::Title,
                _ => Element::None,
            };
            let tag = Context {
                state: State::Tag,
                element,
                ..Context::default()
            };
            return Ok((tag, name_end));
        }
        k = j;
    }
}

/// Go's `tTag`: an attribute name, or the tag's end.
pub(super) fn t_tag(c: Context, s: &[u8]) -> Step {
    let i = eat_white_space(s, 0);
    match s.get(i) {
        None => return Ok((c, s.len())),
        Some(b'>') => {
            let state = match c.element {
                Element::None => State::Text,
                Element::Style => State::Css,
                Element::Textarea | Element::Title => State::Rcdata,
            };
            let content = Context {
                state,
                element: c.element,
                ..Context::default()
            };
            return Ok((content, i + 1));
        }
        Some(_) => {}
    }
    let j = eat_attr_name(s, i)?;
    if i == j {
        let reason = format!(
            "expected a space, an attribute name or the end of the tag, got {:?}",
            String::from_utf8_lossy(&s[i..])
        );
        return Err((i, reason));
    }
    let attr = match attr_type(&String::from_utf8_lossy(&s[i..j]).to_ascii_lowercase()) {
        AttrType::Url => Attr::Url,
        AttrType::Css => Attr::Style,
        AttrType::Js => Attr::Script,
        AttrType::Srcset => Attr::Srcset,
        AttrType::Plain => Attr::None,
    };
    let state = if j == s.len() {
        State::AttrName
    } else {
        State::AfterName
    };
    let after = Context {
        state,
        element: c.element,
        attr,
        ..Context::default()
    };
    Ok((after, j))
}

pub(super) fn attr_start_state(attr: Attr) -> State {
    match attr {
        Attr::None => State::Attr,
        Attr::Script => State::Js,
        Attr::Style => State::Css,
        Attr::Url => State::Url,
        Attr::Srcset => State::Srcset,
    }
}

pub(super) enum AttrType {
    Plain,
    Url,
    Css,
    Js,
    Srcset,
}

/// Go's `attrType` (attr.go): what an attribute's value holds. Only the URL-valued names of Go's
/// table are listed; its other entries are plain text or "unsafe", which Go escapes as text.
pub(super) fn attr_type(name: &str) -> AttrType {
    let name = if let Some(custom) = name.strip_prefix("data-") {
        custom
    } else if let Some((prefix, local)) = name.split_once(':') {
        if prefix == "xmlns" {
            return AttrType::Url;
        }
        local
    } else {
        name
    };
    match name {
        "action" | "archive" | "background" | "cite" | "classid" | "codebase" | "data"
        | "formaction" | "href" | "icon" | "longdesc" | "manifest" | "poster" | "profile"
        | "src" | "usemap" | "xmlns" => AttrType::Url,
        "style" => AttrType::Css,
        "srcset" => AttrType::Srcset,
        // Listed in Go's table, so not caught by the heuristics below.
        "srcdoc" | "srclang" => AttrType::Plain,
        _ if name.starts_with("on") => AttrType::Js,
        _ if name.contains("src") || name.contains("uri") || name.contains("url") => AttrType::Url,
        _ => AttrType::Plain,
    }
}

/// Go's `tURL`: `?` or `#` moves to the query or fragment; other non-space text past the start.
pub(super) fn t_url(mut c: Context, s: &[u8]) -> Context {
    if s.iter().any(|b| b"#?".contains(b)) {
        c.url_part = UrlPart::QueryOrFrag;
    } else if eat_white_space(s, 0) != s.len() && c.url_part == UrlPart::None {
        c.url_part = UrlPart::PreQuery;
    }
    c
}

/// Go's `tCSS`, for `<style>` content: finds strings, `url(` and comments (Go drops comments).
pub(super) fn t_css(mut c: Context, s: &[u8]) -> (Context, usize) {
    let mut k = 0;
    while let Some(i) = s[k..]
        .iter()
        .position(|b| b"(\"'/".contains(b))
        .map(|at| k + at)
    {
        match s[i] {
            b'(' => {
                let before = trim_end_css_space(&s[..i]);
                if ends_with_css_keyword(before, b"url") {
                    let mut j = i + 1;
                    while s.get(j).is_some_and(|&b| is_css_space(b)) {
                        j += 1;
                    }
                    (c.state, j) = match s.get(j) {
                        Some(b'"') => (State::CssDqUrl, j + 1),
                        Some(b'\'') => (State::CssSqUrl, j + 1),
                        _ => (State::CssUrl, j),
                    };
                    return (c, j);
                }
            }
            b'/' => match s.get(i + 1) {
                Some(b'/') => {
                    c.state = State::CssLineComment;
                    return (c, i + 2);
                }
                Some(b'*') => {
                    c.state = State::CssBlockComment;
                    return (c, i + 2);
                }
                _ => {}
            },
            b'"' => {
                c.state = State::CssDqStr;
                return (c, i + 1);
            }
            _ => {
                c.state = State::CssSqStr;
                return (c, i + 1);
            }
        }
        k = i + 1;
    }
    (c, s.len())
}

/// Go's `tCSSStr`: the end of a CSS string or `url(…)`, skipping backslash escapes.
pub(super) fn t_css_str(mut c: Context, s: &[u8]) -> Step {
    let ends: &[u8] = match c.state {
        State::CssDqStr | State::CssDqUrl => b"\\\"",
        State::CssSqStr | State::CssSqUrl => b"\\'",
        _ => b"\\\t\n\x0c\r )",
    };
    let mut k = 0;
    while let Some(i) = s[k..]
        .iter()
        .position(|b| ends.contains(b))
        .map(|at| k + at)
    {
        if s[i] != b'\\' {
            c.state = State::Css;
            return Ok((c, i + 1));
        }
        if i + 1 == s.len() {
            return Err((
                i,
                "an unfinished escape sequence in a CSS string".to_owned(),
            ));
        }
        k = i + 2;
    }
    Ok((c, s.len()))
}

/// Go's `indexTagEnd` through `tSpecialTagEnd`: where `</style` or `</title` (any case, then a
/// separator) ends the element's content.
pub(super) fn special_tag_end(c: Context, s: &[u8]) -> (Context, usize) {
    let tag: &[u8] = match c.element {
        Element::None => return (c, s.len()),
        Element::Style => b"style",
        Element::Textarea => b"textarea",
        Element::Title => b"title",
    };
    let found = (0..s.len()).find(|&at| {
        s[at..].starts_with(b"</")
            && starts_with_ignore_case(&s[at + 2..], tag)
            && s.get(at + 2 + tag.len())
                .is_some_and(|b| b"> \t\n\x0c/".contains(b))
    });
    match found {
        Some(at) => (Context::default(), at),
        None => (c, s.len()),
    }
}

/// Go's `eatTagName`: letters and digits, with single inner `-` or `:`.
pub(super) fn eat_tag_name(s: &[u8], i: usize) -> usize {
    if !s.get(i).is_some_and(u8::is_ascii_alphabetic) {
        return i;
    }
    let mut j = i + 1;
    while let Some(&b) = s.get(j) {
        if b.is_ascii_alphanumeric() {
            j += 1;
        } else if (b == b':' || b == b'-') && s.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) {
            j += 2;
        } else {
            break;
        }
    }
    j
}

/// Go's `eatAttrName`: refuses quotes and `<`, which mean the markup is broken.
pub(super) fn eat_attr_name(s: &[u8], i: usize) -> Result<usize, (usize, String)> {
    for (j, &b) in s.iter().enumerate().skip(i) {
        match b {
            b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' | b'=' | b'>' => return Ok(j),
            b'\'' | b'"' | b'<' => {
                let reason = format!("{:?} in an attribute name", char::from(b));
                return Err((j, reason));
            }
            _ => {}
        }
    }
    Ok(s.len())
}

pub(super) fn eat_white_space(s: &[u8], i: usize) -> usize {
    s.iter()
        .skip(i)
        .position(|b| !b" \t\n\x0c\r".contains(b))
        .map_or(s.len(), |at| i + at)
}

pub(super) fn is_css_space(b: u8) -> bool {
    b" \t\n\x0c\r".contains(&b)
}

pub(super) fn trim_end_css_space(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&b| !is_css_space(b))
        .map_or(0, |at| at + 1);
    &s[..end]
}

/// Go's `endsWithCSSKeyword`: `s` ends with `keyword`, not preceded by a name character (any
/// non-ASCII byte counts as one, as Go's `isCSSNmchar` counts nearly every non-ASCII rune).
pub(super) fn ends_with_css_keyword(s: &[u8], keyword: &[u8]) -> bool {
    let Some(start) = s.len().checked_sub(keyword.len()) else {
        return false;
    };
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80;
    (start == 0 || !name_char(s[start - 1])) && s[start..].eq_ignore_ascii_case(keyword)
}

pub(super) fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

pub(super) fn find(s: &[u8], needle: &[u8]) -> Option<usize> {
    s.windows(needle.len()).position(|window| window == needle)
}

/// Go decodes an attribute value's entities before scanning a URL. Only the characters that move
/// the URL part matter (`#`, `?`, and whether anything but space is there), so numeric entities
/// and the named ones for `#`, `?` and space are decoded; any other entity is non-space either way.
pub(super) fn decode_entities(s: &[u8]) -> Vec<u8> {
    const NAMED: [(&[u8], char); 4] = [
        (b"&num;", '#'),
        (b"&quest;", '?'),
        (b"&Tab;", '\t'),
        (b"&NewLine;", '\n'),
    ];
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let named = NAMED
            .iter()
            .find(|(name, _)| rest.starts_with(name))
            .map(|&(name, c)| (c, name.len()));
        if let Some((c, len)) = named.or_else(|| numeric_entity(rest)) {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            i += len;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// `&#35;`, `&#x23;` (the `;` optional, as browsers and Go read them).
pub(super) fn numeric_entity(s: &[u8]) -> Option<(char, usize)> {
    let rest = s.strip_prefix(b"&#")?;
    let hex = matches!(rest.first(), Some(b'x' | b'X'));
    let digits_at = usize::from(hex);
    let digits = rest[digits_at..]
        .iter()
        .take_while(|b| {
            if hex {
                b.is_ascii_hexdigit()
            } else {
                b.is_ascii_digit()
            }
        })
        .count();
    if digits == 0 {
        return None;
    }
    let text = std::str::from_utf8(&rest[digits_at..digits_at + digits]).ok()?;
    let code = u32::from_str_radix(text, if hex { 16 } else { 10 }).unwrap_or(0xFFFD);
    let semicolon = usize::from(rest.get(digits_at + digits) == Some(&b';'));
    let c = char::from_u32(code).unwrap_or('\u{FFFD}');
    Some((c, 2 + digits_at + digits + semicolon))
}
