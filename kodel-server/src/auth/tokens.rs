//! Token minting and checking. Access tokens are JWTs (HS256, 15 minutes) naming the
//! user and the session; refresh and API tokens are random strings of which only a
//! SHA-256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

pub const ACCESS_TTL_SECS: i64 = 15 * 60;
pub const REFRESH_TTL_DAYS: i64 = 30;

pub const PAT_PREFIX: &str = "kodel_pat_";
pub const REFRESH_PREFIX: &str = "kodel_rt_";
pub const AGENT_PREFIX: &str = "kodel_agt_";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub typ: String,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        // Only HS256: a token that names another algorithm, or `none`, is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// The secret from the environment, else the generated one the database keeps
    /// sealed with the sealing key (made on the first start, shared by every replica on
    /// the database): a dump of the database alone cannot mint tokens. A secret an older
    /// version kept there in the clear is sealed now and its clear copy deleted.
    pub async fn load(pool: &PgPool, from_env: Option<&str>, sealer: &crate::crypto::Sealer) -> anyhow::Result<Self> {
        if let Some(secret) = from_env {
            anyhow::ensure!(secret.len() >= 32, "KODEL_JWT_SECRET must be at least 32 bytes");
            return Ok(Self::new(secret.as_bytes()));
        }
        let mut tx = crate::db::begin(pool).await?;
        let legacy: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'jwt' FOR UPDATE").fetch_optional(&mut *tx).await?;
        let plain = legacy.unwrap_or_else(|| rand::random::<[u8; 64]>().to_vec());
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('jwt_sealed', $1) ON CONFLICT (name) DO NOTHING")
            .bind(sealer.seal(&plain))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM server_secrets WHERE name = 'jwt'").execute(&mut *tx).await?;
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'jwt_sealed'").fetch_one(&mut *tx).await?;
        tx.commit().await?;
        let secret = sealer
            .open(&sealed)
            .ok_or_else(|| anyhow::anyhow!("the database's JWT secret does not open with this server's sealing key (or set KODEL_JWT_SECRET)"))?;
        Ok(Self::new(&secret))
    }

    pub fn issue(&self, user: Uuid, session: Uuid) -> Result<String, jsonwebtoken::errors::Error> {
        self.issue_for(user, session, ACCESS_TTL_SECS)
    }

    /// An access token that lives `ttl_secs` (tests of expiry use short ones).
    pub fn issue_for(&self, user: Uuid, session: Uuid, ttl_secs: i64) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims { sub: user, sid: session, iat: now, exp: now + ttl_secs, typ: "access".into() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    pub fn verify(&self, token: &str) -> Option<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == "access").then_some(data.claims)
    }
}

/// A new random token with the given prefix (256 bits of entropy).
pub fn random_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_round_trip_and_refusals() {
        let keys = JwtKeys::new(&[7u8; 64]);
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(u, s).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (u, s));

        // Signed with another key.
        let other = JwtKeys::new(&[8u8; 64]).issue(u, s).unwrap();
        assert!(keys.verify(&other).is_none());

        // Tampered payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let evil = Claims { sub: Uuid::new_v4(), sid: s, iat: 0, exp: i64::MAX / 2, typ: "access".into() };
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
        assert!(keys.verify(&parts.join(".")).is_none());

        // alg: none.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(keys.verify(&format!("{header}.{}.", parts[1])).is_none());

        // Expired.
        let now = chrono::Utc::now().timestamp();
        let old = Claims { sub: u, sid: s, iat: now - 3600, exp: now - 60, typ: "access".into() };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &old, &EncodingKey::from_secret(&[7u8; 64])).unwrap();
        assert!(keys.verify(&expired).is_none());

        // HS512 with the right key is still refused: one algorithm only.
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &Claims { sub: u, sid: s, iat: now, exp: now + 60, typ: "access".into() }, &EncodingKey::from_secret(&[7u8; 64])).unwrap();
        assert!(keys.verify(&hs512).is_none());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = random_token(PAT_PREFIX);
        assert!(a.starts_with(PAT_PREFIX));
        assert_ne!(a, random_token(PAT_PREFIX));
        assert_eq!(hash_token(&a).len(), 32);
    }
}
