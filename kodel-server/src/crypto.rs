//! Sealing secrets at rest (module credentials) with ChaCha20-Poly1305. The key comes
//! from KODEL_ENCRYPTION_KEY (base64 of 32 bytes); without it one is generated on first
//! start and kept in `public.server_secrets`, which protects against a leaked tenant
//! dump but not a leaked database: production sets the variable (README).

use anyhow::Context;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sqlx::PgPool;

const NONCE_LEN: usize = 12;

pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub async fn load(pool: &PgPool, from_env: Option<&str>) -> anyhow::Result<Self> {
        let key: Vec<u8> = match from_env {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .context("KODEL_ENCRYPTION_KEY must be the base64 of 32 bytes (try: openssl rand -base64 32)")?,
            None => {
                let fresh: [u8; 32] = rand::random();
                sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('sealing', $1) ON CONFLICT (name) DO NOTHING")
                    .bind(&fresh[..])
                    .execute(pool)
                    .await?;
                sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'sealing'").fetch_one(pool).await?
            }
        };
        Ok(Self { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    /// nonce || ciphertext (with its tag).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        out.extend(self.cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap_or_default());
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), body).ok()
    }

    /// A secret kept inside JSON (an instance template's env value): `sealed:` and
    /// the base64 of `seal`.
    pub fn seal_text(&self, plain: &str) -> String {
        format!("{SEALED_TEXT}{}", base64::engine::general_purpose::STANDARD.encode(self.seal(plain.as_bytes())))
    }

    /// The secret behind `seal_text`; a value stored before secrets were sealed comes
    /// back as it is. None when it does not open with this server's key.
    pub fn open_text(&self, stored: &str) -> Option<String> {
        let Some(b64) = stored.strip_prefix(SEALED_TEXT) else { return Some(stored.to_owned()) };
        let sealed = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        String::from_utf8(self.open(&sealed)?).ok()
    }
}

const SEALED_TEXT: &str = "sealed:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_tampering_is_caught() {
        let s = Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32])) };
        let sealed = s.seal(b"ghp_secret");
        assert!(!sealed.windows(10).any(|w| w == b"ghp_secret"));
        assert_eq!(s.open(&sealed).unwrap(), b"ghp_secret");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(&bad).is_none());
        assert_ne!(s.seal(b"x"), s.seal(b"x"), "a fresh nonce each time");
    }
}
