//! `EmailAddress`: an address checked once, at the edge, by the rules of [`EmailAddress::parse`].

use std::fmt;

/// Longest address accepted (RFC 5321's path limit less the angle brackets).
pub const MAX_LEN: usize = 254;

/// A syntactically valid email address, as the client typed it.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

/// Why a string is not an [`EmailAddress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing was given.
    #[error("Email cannot be empty")]
    Empty,
    /// Something was given, but it is not an address.
    #[error("Email format error")]
    Format,
}

impl EmailAddress {
    /// Checks `raw` against the rules: no surrounding whitespace, at most 254 characters, one `@`,
    /// a local part, a domain that holds a dot, no whitespace or control characters.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.is_empty() {
            return Err(EmailError::Empty);
        }
        if raw.len() > MAX_LEN || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::Format);
        }
        let Some((local, domain)) = raw.split_once('@') else {
            return Err(EmailError::Format);
        };
        if local.is_empty() || local.len() > 64 || domain.contains('@') || !valid_domain(domain) {
            return Err(EmailError::Format);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key accounts are matched by: ASCII case folded, nothing else.
    pub fn match_key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// The address masked for logs: `j***@example.com`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks any address-like string for a log line: the first character of the local part, then `***`.
pub fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Masks every address-looking word in free text (an SMTP reply, an error) with [`mask`]:
/// `550 5.1.1 <bob@example.com>: rejected` becomes `550 5.1.1 <b***@example.com>: rejected`.
///
/// A word is a run of characters between whitespace, control characters and the punctuation that
/// surrounds addresses in replies and headers (`<>()[],;:"'` and the backtick); a word with an `@`
/// and something on both sides is masked whole, so whatever precedes the `@` in it is hidden even
/// where the word is wider than the address.
pub fn mask_addresses(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut word_start = 0;
    for (at, c) in text.char_indices() {
        if is_word_boundary(c) {
            push_word(&mut masked, &text[word_start..at]);
            masked.push(c);
            word_start = at + c.len_utf8();
        }
    }
    push_word(&mut masked, &text[word_start..]);
    masked
}

fn is_word_boundary(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '"' | '\'' | '`'
        )
}

fn push_word(masked: &mut String, word: &str) {
    match word.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            masked.push_str(&mask(word));
        }
        _ => masked.push_str(word),
    }
}

fn valid_domain(domain: &str) -> bool {
    domain.contains('.')
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && !label.chars().any(|c| {
                    matches!(
                        c,
                        '(' | ')' | '<' | '>' | '[' | ']' | ',' | ';' | ':' | '\\' | '"'
                    )
                })
        })
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug output is masked, so an address never reaches a log through `{:?}`.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

impl<'de> serde::Deserialize<'de> for EmailAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_are_accepted() {
        for ok in [
            "a@b.co",
            "John.Doe+reset@Example.COM",
            "用户@例子.中国",
            "x@sub.domain.example.org",
        ] {
            assert_eq!(
                EmailAddress::parse(ok).map(|e| e.as_str().to_owned()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn broken_addresses_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            " a@b.co",
            "a@b.co ",
            "a b@c.de",
            "ab.co",
            "a@@b.co",
            "a@b@c.co",
            "@b.co",
            "a@",
            "a@localhost",
            "a@.b.co",
            "a@b.co.",
            "a@b..co",
            "a\u{0}@b.co",
            "a@b.co\n",
            "a@<b>.co",
            &long,
        ] {
            assert_eq!(EmailAddress::parse(bad), Err(EmailError::Format), "{bad:?}");
        }
        assert_eq!(EmailAddress::parse(""), Err(EmailError::Empty));
    }

    #[test]
    fn matching_folds_ascii_case_only() {
        let email = EmailAddress::parse("ÀDAM@Example.COM").map(|e| e.match_key());
        assert_eq!(email, Ok("Àdam@example.com".to_owned()));
    }

    #[test]
    fn masking_keeps_only_the_first_letter_and_the_domain() {
        assert_eq!(mask("jane@example.com"), "j***@example.com");
        assert_eq!(mask("nonsense"), "***");
        let email = EmailAddress::parse("jane@example.com").ok();
        assert_eq!(format!("{email:?}"), "Some(EmailAddress(j***@example.com))");
    }

    #[test]
    fn every_address_in_free_text_is_masked() {
        for (text, expected) in [
            (
                "550 5.1.1 <bob@example.com>: Recipient address rejected",
                "550 5.1.1 <b***@example.com>: Recipient address rejected",
            ),
            (
                "to bob@example.com, alice@example.org; \"carol@example.net\" and 'dave@x.io'",
                "to b***@example.com, a***@example.org; \"c***@example.net\" and 'd***@x.io'",
            ),
            ("451 4.3.0 Try again later", "451 4.3.0 Try again later"),
            ("用户@例子.中国 拒收", "用***@例子.中国 拒收"),
            ("Ünïcode@bücher.de:", "Ü***@bücher.de:"),
            (
                "mailbox full: bob@example.com",
                "mailbox full: b***@example.com",
            ),
            ("rcpt=bob@example.com", "r***@example.com"),
            (
                "@ alone, user@ and @domain stay",
                "@ alone, user@ and @domain stay",
            ),
            ("", ""),
        ] {
            assert_eq!(mask_addresses(text), expected, "{text:?}");
        }
    }
}
