//! Password hashing with argon2id. Hashing is CPU-heavy, so it runs off the async
//! workers. Unknown emails still cost one verification, so timing does not tell which
//! emails have accounts.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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

pub async fn hash(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(ApiError::internal)?;
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Verifies `password` against `hash`; with no hash, burns the same time and fails.
pub async fn verify(password: String, hash: Option<String>) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(ok && hash != DUMMY_HASH)
    })
    .await
    .map_err(ApiError::internal)?
}

/// An argon2id hash of a random password, used when the email is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0Ce4aWLnMHfZRzHhUVP1sXk5LqnGgOWFfXa6T3jBEOI";
