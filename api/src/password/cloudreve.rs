//! Cloudreve's stored password format. Built-in accounts keep argon2id; a Cloudreve site's accounts
//! get Cloudreve's own format, `salt:hex(sha256(password + salt))` with a random alphanumeric salt,
//! because Cloudreve's sign-in must verify it (see docs/CLOUDREVE.md). That format is fast to
//! brute-force; resetmail uses it only where Cloudreve leaves no choice.

use sha2::{Digest as _, Sha256};

/// Characters of a Cloudreve salt.
const SALT_ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Length of the salt Cloudreve makes since 4.11.
pub const CLOUDREVE_SALT_CHARS: usize = 32;

/// `password` in Cloudreve's stored format, with a fresh salt from the OS's CSPRNG.
pub fn cloudreve_digest(password: &str) -> Result<String, getrandom::Error> {
    let salt = random_alphanumeric(CLOUDREVE_SALT_CHARS)?;
    Ok(digest_with_salt(password, &salt))
}

fn digest_with_salt(password: &str, salt: &str) -> String {
    let digest = Sha256::new()
        .chain_update(password.as_bytes())
        .chain_update(salt.as_bytes())
        .finalize();
    format!("{salt}:{}", hex(&digest))
}

/// `chars` characters drawn uniformly from [`SALT_ALPHABET`] (bytes of 248 and above are redrawn,
/// so that no character is likelier than another).
fn random_alphanumeric(chars: usize) -> Result<String, getrandom::Error> {
    let limit = 256 - 256 % SALT_ALPHABET.len();
    let mut salt = String::with_capacity(chars);
    let mut buffer = [0u8; 64];
    while salt.len() < chars {
        getrandom::fill(&mut buffer)?;
        for byte in buffer {
            if usize::from(byte) < limit && salt.len() < chars {
                salt.push(char::from(
                    SALT_ALPHABET[usize::from(byte) % SALT_ALPHABET.len()],
                ));
            }
        }
    }
    Ok(salt)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cloudreve's check, written from its sign-in: split at the first `:`, hash the password
    /// followed by the salt, compare the lower-case hex.
    fn cloudreve_accepts(stored: &str, password: &str) -> bool {
        let Some((salt, digest)) = stored.split_once(':') else {
            return false;
        };
        let mut input = password.as_bytes().to_vec();
        input.extend_from_slice(salt.as_bytes());
        let expected: String = Sha256::digest(&input)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        digest == expected
    }

    #[test]
    fn a_digest_verifies_under_cloudreves_check_and_only_for_its_password() {
        for password in [
            "hunter22",
            "pässwörd ünïcode",
            "with:colon",
            &"x".repeat(128),
        ] {
            let stored = cloudreve_digest(password).unwrap();
            assert!(cloudreve_accepts(&stored, password), "{stored}");
            assert!(!cloudreve_accepts(&stored, "another password"));
        }
    }

    #[test]
    fn salts_are_32_alphanumerics_and_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let stored = cloudreve_digest("hunter22").unwrap();
            let (salt, digest) = stored.split_once(':').unwrap_or_default();
            assert_eq!(salt.len(), CLOUDREVE_SALT_CHARS, "{stored}");
            assert!(
                salt.bytes().all(|byte| byte.is_ascii_alphanumeric()),
                "{stored}"
            );
            assert_eq!(digest.len(), 64);
            assert!(seen.insert(salt.to_owned()), "a salt came twice");
        }
    }

    #[test]
    fn the_password_comes_before_the_salt() {
        // `printf secret123abc | sha256sum`
        assert_eq!(
            digest_with_salt("secret123", "abc"),
            "abc:319f9d316f7e0a48b8bc591098d0bec8ab830d7f1b626a5b0184a6588b158f4f"
        );
    }
}
