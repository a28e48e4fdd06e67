//! `ResetToken`: the one-time secret of a reset link. Only its SHA-256 is ever stored.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// 32 bytes from the operating system's CSPRNG.
pub struct ResetToken {
    secret: String,
}

impl ResetToken {
    /// A fresh token. Fails only if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self {
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        })
    }

    /// The secret as it goes into the link (URL-safe base64, no padding).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// What the database keeps: the SHA-256 of the secret.
    pub fn hash(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }
}

/// The SHA-256 of a secret as it appears in a link; tokens are looked up by it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Never prints the secret.
impl fmt::Debug for ResetToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResetToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_differ() {
        let (a, b) = match (ResetToken::generate(), ResetToken::generate()) {
            (Ok(a), Ok(b)) => (a, b),
            other => panic!("no randomness: {other:?}"),
        };
        assert_eq!(a.secret().len(), 43);
        assert!(
            a.secret()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a.secret(), b.secret());
        assert_eq!(a.hash(), hash_secret(a.secret()));
        assert!(!format!("{a:?}").contains(a.secret()));
    }
}
