//! Cloudreve's object ids: the Hashids encoding of `[id, kind]` with the site's `hash_id_salt`
//! setting (the default alphabet, no minimum length), so that resetmail's reset links carry the same
//! user ids as the site's own (see docs/CLOUDREVE.md).

use harsh::Harsh;

/// The kinds of object Cloudreve encodes; the second number of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// An account.
    User = 1,
}

/// Why a text is not the id of an object of the wanted kind.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashIdError {
    /// Not a Hashid under this salt.
    #[error("not an object id")]
    Undecodable,
    /// A valid id of another kind of object.
    #[error("an object id of another type")]
    WrongKind,
}

/// Longest id accepted for decoding: a user id of Cloudreve's (a 63-bit number and its kind) encodes
/// in far fewer characters; longer input is refused before the decoder's arithmetic sees it.
const MAX_ID_CHARS: usize = 32;

/// Encodes and decodes ids with one site's salt.
#[derive(Clone, Debug)]
pub struct HashIds {
    harsh: Harsh,
}

impl HashIds {
    /// The codec of a site whose `hash_id_salt` is `salt`.
    pub fn new(salt: &str) -> Result<Self, String> {
        Harsh::builder()
            .salt(salt)
            .build()
            .map(|harsh| Self { harsh })
            .map_err(|error| format!("cannot build the Hashids codec: {error}"))
    }

    /// The id of `kind` number `id` as Cloudreve writes it.
    pub fn encode(&self, id: u64, kind: ObjectKind) -> String {
        self.harsh.encode(&[id, kind as u64])
    }

    /// The number of the object of `kind` that `text` names.
    pub fn decode(&self, text: &str, kind: ObjectKind) -> Result<u64, HashIdError> {
        if text.is_empty() || text.len() > MAX_ID_CHARS || !text.is_ascii() {
            return Err(HashIdError::Undecodable);
        }
        // The decoder sums digits without an overflow check; a hostile id must not panic a request.
        let decoded = std::panic::catch_unwind(|| self.harsh.decode(text))
            .map_err(|_| HashIdError::Undecodable)?
            .map_err(|_| HashIdError::Undecodable)?;
        match decoded.as_slice() {
            [id, found] if *found == kind as u64 => Ok(*id),
            [_, _] => Err(HashIdError::WrongKind),
            _ => Err(HashIdError::Undecodable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with the Python `hashids` package (an independent implementation of the same
    /// algorithm as Cloudreve's Go library): `Hashids(salt=salt).encode(id, kind)`.
    const VECTORS: &[(&str, u64, u64, &str)] = &[
        ("", 1, 1, "kRfO"),
        ("", 42, 1, "0lcG"),
        ("", 123_456_789, 1, "k3zBQ2sO"),
        ("resetmail-test-salt", 1, 1, "9qib"),
        ("resetmail-test-salt", 2, 1, "LWca"),
        ("resetmail-test-salt", 123_456_789, 1, "9agpXVUb"),
        ("Zq3rT8kX0pLm", 42, 1, "25Fb"),
        ("Zq3rT8kX0pLm", 7, 2, "z1HO"),
    ];

    fn codec(salt: &str) -> HashIds {
        HashIds::new(salt).unwrap()
    }

    #[test]
    fn user_ids_encode_as_cloudreve_encodes_them() {
        for (salt, id, kind, expected) in VECTORS.iter().filter(|vector| vector.2 == 1) {
            assert_eq!(
                codec(salt).encode(*id, ObjectKind::User),
                *expected,
                "{salt:?} {id} {kind}"
            );
        }
    }

    #[test]
    fn user_ids_decode_back_and_other_kinds_are_refused() {
        for (salt, id, kind, text) in VECTORS {
            let decoded = codec(salt).decode(text, ObjectKind::User);
            if *kind == 1 {
                assert_eq!(decoded, Ok(*id), "{text}");
            } else {
                assert_eq!(decoded, Err(HashIdError::WrongKind), "{text}");
            }
        }
    }

    #[test]
    fn ids_of_another_salt_or_garbage_do_not_decode() {
        let site = codec("resetmail-test-salt");
        for text in [
            "kRfO",
            "",
            "x",
            "9qi",
            "9qib!",
            "éé",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            &"z".repeat(33),
            "0000000000000000000000000000000",
        ] {
            assert!(
                site.decode(text, ObjectKind::User).is_err(),
                "{text:?} decoded"
            );
        }
    }
}
