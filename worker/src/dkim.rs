//! DKIM signatures (RFC 6376) on every reset email, so that receiving servers can tell the mail
//! came from the sender's domain: `rsa-sha256` with a PKCS#1 PEM key, or `ed25519-sha256` (RFC
//! 8463) with the base64 of the 32-byte Ed25519 seed, as lettre reads them.

use std::path::Path;

use anyhow::Context as _;
use lettre::{
    Message,
    message::{
        dkim::{
            DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
            DkimSigningKey,
        },
        header::HeaderName,
    },
};

/// The headers signed: those a forger would change, and none a relay adds or rewrites. Not
/// `MIME-Version` or `Content-Type`: lettre hashes them in another form than it sends them, so
/// signing them broke every signature (tests/e2e/dkim.rs found it with an independent verifier).
const SIGNED_HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

/// A signing key and where its public half is published (`{selector}._domainkey.{domain}`).
pub struct Dkim {
    config: DkimConfig,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dkim(…)")
    }
}

impl Dkim {
    /// Reads the key in `key_file`: a PEM `RSA PRIVATE KEY` (PKCS#1) for rsa-sha256, otherwise the
    /// base64 of a 32-byte Ed25519 seed. The error names the file, never its contents.
    pub fn load(key_file: &Path, selector: &str, domain: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(key_file).with_context(|| {
            format!(
                "cannot read the DKIM key {} (RESETMAIL_DKIM_KEY_FILE)",
                key_file.display()
            )
        })?;
        let text = text.trim();
        let algorithm = if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            DkimSigningAlgorithm::Rsa
        } else if text.starts_with("-----BEGIN") {
            anyhow::bail!(
                "the DKIM key {} is a PEM key of another kind: an RSA key must be PKCS#1 (`openssl genrsa -traditional 2048`), an Ed25519 key the base64 of its 32-byte seed (see the README)",
                key_file.display()
            );
        } else {
            DkimSigningAlgorithm::Ed25519
        };
        let key = DkimSigningKey::new(text, algorithm).map_err(|_| {
            anyhow::anyhow!(
                "the DKIM key {} is not a valid {} key",
                key_file.display(),
                match algorithm {
                    DkimSigningAlgorithm::Rsa => "RSA (PKCS#1 PEM)",
                    DkimSigningAlgorithm::Ed25519 => "Ed25519 (base64 of the 32-byte seed)",
                }
            )
        })?;
        if selector.is_empty() || domain.is_empty() {
            anyhow::bail!("DKIM needs a selector (RESETMAIL_DKIM_SELECTOR) and a domain");
        }
        Ok(Self {
            config: DkimConfig::new(
                selector.to_owned(),
                domain.to_owned(),
                key,
                SIGNED_HEADERS
                    .iter()
                    .map(|name| HeaderName::new_from_ascii_str(name))
                    .collect(),
                // Relaxed both ways: a relay that refolds a header or re-wraps whitespace does not
                // break the signature.
                DkimCanonicalization {
                    header: DkimCanonicalizationType::Relaxed,
                    body: DkimCanonicalizationType::Relaxed,
                },
            ),
        })
    }

    /// Adds the `DKIM-Signature` header to `message`.
    pub fn sign(&self, message: &mut Message) {
        message.sign(&self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(contents: Option<&str>) -> String {
        let path = std::env::temp_dir().join(format!(
            "resetmail-dkim-unit-{}-{}",
            std::process::id(),
            contents.map_or(0, str::len)
        ));
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        let error = Dkim::load(&path, "s1", "example.com")
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        error
    }

    #[test]
    fn keys_that_cannot_be_used_are_refused_with_the_reason_and_never_shown() {
        assert!(load(None).contains("cannot read the DKIM key"));
        let pkcs8 = "-----BEGIN PRIVATE KEY-----\nTUlJQ0VBSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbU13Z2dKZkFnRUFBb0dCQUs=\n-----END PRIVATE KEY-----\n";
        let error = load(Some(pkcs8));
        assert!(error.contains("another kind"), "{error}");
        assert!(!error.contains("TUlJ"), "the key is in the error: {error}");
        let error = load(Some("bm90IDMyIGJ5dGVz"));
        assert!(error.contains("not a valid Ed25519"), "{error}");
        assert!(!error.contains("bm90"), "the key is in the error: {error}");
    }

    #[test]
    fn an_ed25519_seed_loads() {
        let seed = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let path = std::env::temp_dir().join(format!("resetmail-dkim-seed-{}", std::process::id()));
        std::fs::write(&path, seed).unwrap();
        let loaded = Dkim::load(&path, "s1", "example.com");
        let _ = std::fs::remove_file(&path);
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }
}
