//! Password hashing for redeemed links: argon2id with the crate's defaults (19 MiB, two passes), at
//! most one hash per core at once, each in working memory kept for the next. Cloudreve's own format,
//! for a Cloudreve site's accounts, is in [`cloudreve`].

pub mod cloudreve;

use std::{
    num::NonZeroUsize,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use tokio::sync::Semaphore;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The blocking thread that hashed it stopped.
    #[error("the hashing thread stopped: {0}")]
    Stopped(String),
    /// No salt: the operating system's CSPRNG failed.
    #[error("no randomness for a salt: {0}")]
    Random(String),
    /// argon2 refused (a password over its limit, a bad parameter).
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::password_hash::Error),
}

/// The hashing capacity of the process. A hash is pure CPU, so more at once than there are cores
/// would not finish sooner, only hold more memory: unbounded, a flood of redeems from many addresses
/// would run as many as tokio's blocking pool has threads (512), about 10 GB. Each permit's 19 MiB is
/// allocated once and reused: freed after each hash, glibc's malloc kept it anyway, spread over its
/// arenas (up to 8 per core), several times the memory of the hashes in flight.
struct Hashers {
    /// One permit per core.
    permits: Arc<Semaphore>,
    /// The working memory of hashes that finished, for the next ones (at most one per permit).
    memory: Mutex<Vec<Vec<Block>>>,
}

static HASHERS: LazyLock<Hashers> = LazyLock::new(|| Hashers {
    permits: Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    )),
    memory: Mutex::new(Vec::new()),
});

/// The PHC string of `password` hashed with a new salt (`$argon2id$v=19$m=19456,t=2,p=1$…`). Waits
/// its turn behind the hashes in flight; every caller waits alike. If the caller is dropped meanwhile,
/// the hash still finishes before its permit is given back.
pub async fn hash(password: String) -> Result<String, HashError> {
    let permit = HASHERS
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|error| HashError::Stopped(error.to_string()))?;
    // Off the async workers: argon2 is deliberately slow.
    tokio::task::spawn_blocking(move || {
        let kept = HASHERS
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut memory =
            kept.unwrap_or_else(|| vec![Block::default(); Params::default().block_count()]);
        let hashed = hash_in(password.as_bytes(), &mut memory);
        // Nothing derived from this password stays behind for the next hash.
        memory.fill(Block::default());
        HASHERS
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
        drop(permit);
        hashed
    })
    .await
    .map_err(|error| HashError::Stopped(error.to_string()))?
}

/// What `argon2`'s `PasswordHasher::hash_password` does, in `memory` instead of a fresh allocation.
fn hash_in(password: &[u8], memory: &mut [Block]) -> Result<String, HashError> {
    let argon2 = Argon2::default();
    let mut salt = [0u8; Salt::RECOMMENDED_LENGTH];
    getrandom::fill(&mut salt).map_err(|error| HashError::Random(error.to_string()))?;
    let salt = Salt::new(&salt).map_err(argon2::password_hash::Error::from)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(password, &salt, &mut out, memory)
        .map_err(argon2::password_hash::Error::from)?;
    let hash = PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(argon2::password_hash::Error::from)?),
    };
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier as _;

    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_with_argon2_and_reused_memory_changes_nothing() {
        for _ in 0..2 {
            let stored = hash("correct horse battery".into()).await.unwrap();
            assert!(
                stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
                "{stored}"
            );
            let parsed = PasswordHash::new(&stored).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"correct horse battery", &parsed)
                    .is_ok()
            );
            assert!(
                Argon2::default()
                    .verify_password(b"correct horse battery!", &parsed)
                    .is_err()
            );
        }
        assert!(
            !HASHERS
                .memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }
}
