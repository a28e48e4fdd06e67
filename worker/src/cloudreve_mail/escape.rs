//! Go's escapers (html.go, url.go) for plain strings.

use super::context::UrlPart;

/// Go's `htmlEscaper` and `attrEscaper` for plain strings (`htmlReplacementTable`).
pub(super) fn html_escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\0' => out.push('\u{FFFD}'),
            '"' => out.push_str("&#34;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&#39;"),
            '+' => out.push_str("&#43;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

/// The URL escapers Go chains for `part`, before `attrEscaper`.
pub(super) fn url_escape(value: &str, part: UrlPart) -> String {
    match part {
        UrlPart::None if !is_safe_url(value) => "#ZgotmplZ".to_owned(),
        UrlPart::None | UrlPart::PreQuery => process_url(value, true),
        UrlPart::QueryOrFrag => process_url(value, false),
    }
}

/// Go's `isSafeURL`: relative, or with the scheme http, https or mailto.
pub(super) fn is_safe_url(value: &str) -> bool {
    match value.split_once(':') {
        Some((scheme, _)) if !scheme.contains('/') => ["http", "https", "mailto"]
            .iter()
            .any(|safe| scheme.eq_ignore_ascii_case(safe)),
        _ => true,
    }
}

/// Go's `processURLOnto`: percent-encodes (lower-case hex) every byte but unreserved ones; when
/// normalizing, reserved characters and valid `%xx` escapes are left alone too.
pub(super) fn process_url(value: &str, normalize: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let s = value.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, &b) in s.iter().enumerate() {
        let keep = match b {
            b'!' | b'#' | b'$' | b'&' | b'*' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?'
            | b'@' | b'[' | b']' => normalize,
            b'-' | b'.' | b'_' | b'~' => true,
            b'%' => {
                normalize
                    && i + 2 < s.len()
                    && s[i + 1].is_ascii_hexdigit()
                    && s[i + 2].is_ascii_hexdigit()
            }
            _ => b.is_ascii_alphanumeric(),
        };
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}
