//! Password hashing with argon2id. Hashing is CPU- and memory-heavy (~19 MiB), so it
//! runs on the few threads of `limits::LoginLimits`. Unknown emails still cost one
//! verification, so timing does not tell which emails have accounts.

use argon2::password_hash::{self, PasswordHash, SaltString};
use argon2::Argon2;

use crate::error::{ApiError, ApiResult};

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

pub fn validate(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_LEN {
        return Err(ApiError::invalid(format!("password must be at least {MIN_LEN} characters")));
    }
    if password.len() > MAX_LEN {
        return Err(ApiError::invalid(format!("password must be at most {MAX_LEN} bytes")));
    }
    Ok(())
}

thread_local! {
    /// The memory argon2 works in (~19 MiB), kept by each password thread and reused:
    /// allocated afresh per hash, freed blocks piled up in malloc's arenas (hundreds of
    /// MiB after a burst of logins).
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// argon2 into `out`, in this thread's reused memory.
fn argon2_into(argon: &Argon2, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), argon2::Error> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        blocks.resize(argon.params().block_count(), argon2::Block::default());
        argon.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
    })
}

/// An argon2id hash of `password`, as a PHC string (CPU-heavy: run it through
/// `LoginLimits`).
pub fn hash(password: &str) -> ApiResult<String> {
    let salt: [u8; 16] = rand::random();
    let argon = Argon2::default();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon, password.as_bytes(), &salt, &mut out).map_err(ApiError::internal)?;
    let p = argon.params();
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    let out = password_hash::Output::new(&out).map_err(ApiError::internal)?;
    Ok(format!("$argon2id$v=19$m={},t={},p={}${}${}", p.m_cost(), p.t_cost(), p.p_cost(), salt.as_str(), out))
}

/// Verifies `password` against a PHC `hash`; with no hash, burns the same time and fails.
pub fn verify(password: &str, hash: Option<&str>) -> ApiResult<bool> {
    let stored = hash.unwrap_or(DUMMY_HASH);
    let parsed = PasswordHash::new(stored).map_err(ApiError::internal)?;
    let params = argon2::Params::try_from(&parsed).map_err(ApiError::internal)?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm).map_err(ApiError::internal)?;
    let version = parsed.version.map(argon2::Version::try_from).transpose().map_err(ApiError::internal)?.unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(ApiError::internal("a stored password hash has no salt or output"));
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(ApiError::internal)?;
    let mut out = vec![0u8; expected.len()];
    argon2_into(&Argon2::new(algorithm, version, params), password.as_bytes(), salt, &mut out).map_err(ApiError::internal)?;
    // Constant time: every byte is compared.
    let same = out.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    Ok(same && hash.is_some())
}

/// An argon2id hash of a random password, used when the email is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0Ce4aWLnMHfZRzHhUVP1sXk5LqnGgOWFfXa6T3jBEOI";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_match_the_standard_encoding() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse", Some(&h)).unwrap());
        assert!(!verify("wrong horse", Some(&h)).unwrap());
        assert!(!verify("anything", None).unwrap());
        // A hash made by the argon2 crate's own hasher (as stored before) still verifies.
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::default().hash_password(b"old password", &salt).unwrap().to_string();
        assert!(verify("old password", Some(&theirs)).unwrap());
        assert!(!verify("new password", Some(&theirs)).unwrap());
    }
}
