//! Sealing secrets at rest (module credentials, org LLM keys, instance-template env
//! values) with ChaCha20-Poly1305. The key comes from KODEL_ENCRYPTION_KEY (base64 of 32
//! bytes); without it one is generated on first start and kept in `sealing.key` in the
//! data dir (mode 0600), never in the database: a dump of the database alone opens no
//! sealed secret. A key an older version kept in `public.server_secrets` is moved to the
//! file. The database keeps a value sealed with the key (`sealing_check`), so a server
//! started with another key (a second replica without KODEL_ENCRYPTION_KEY) refuses to
//! start instead of sealing with a key the others cannot open.
//!
//! Rotation: start with the new key in KODEL_ENCRYPTION_KEY and the old one in
//! KODEL_ENCRYPTION_KEY_PREVIOUS. Secrets open with either meanwhile, and `reseal_all`
//! seals every stored secret again with the new key; once it says so, the previous
//! key can go.

use anyhow::Context;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::path::Path;

use sqlx::PgPool;

const NONCE_LEN: usize = 12;

pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// The key secrets were sealed with before a rotation; they still open with it.
    previous: Option<ChaCha20Poly1305>,
}

/// The generated key in `path` (base64), made on first start: the key an older version
/// kept in the database (then deleted there), else a fresh one. Written mode 0600.
async fn key_file(pool: &PgPool, path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_owned());
    }
    let legacy: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'sealing'").fetch_optional(pool).await?;
    let key = legacy.clone().unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written whole under another name, then linked into place: a server starting at
    // the same time on the same data dir reads a complete key or makes none.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let cannot = || format!("cannot write the sealing key to {} (or set KODEL_ENCRYPTION_KEY)", path.display());
    {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).with_context(cannot)?;
        file.write_all(format!("{b64}\n").as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(std::fs::read_to_string(path)?.trim().to_owned()),
        Err(e) => return Err(e).with_context(cannot),
    }
    if legacy.is_some() {
        sqlx::query("DELETE FROM server_secrets WHERE name = 'sealing'").execute(pool).await?;
        tracing::info!(file = %path.display(), "moved the sealing key out of the database");
    } else {
        tracing::info!(file = %path.display(), "generated a sealing key; keep a copy of it (or set KODEL_ENCRYPTION_KEY)");
    }
    Ok(b64)
}

/// What `Sealer::reseal` found.
pub enum Resealed {
    /// Already sealed with the current key.
    Current,
    /// Opened with the previous key: here it is sealed with the current one.
    Again(Vec<u8>),
    /// Opens with neither key.
    Unreadable,
}

fn cipher(b64: &str, var: &str) -> anyhow::Result<ChaCha20Poly1305> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .with_context(|| format!("{var} must be the base64 of 32 bytes (try: openssl rand -base64 32)"))?;
    Ok(ChaCha20Poly1305::new(Key::from_slice(&key)))
}

/// The file of a generated key, in the data dir.
pub const KEY_FILE: &str = "sealing.key";

/// What `sealing_check` holds, sealed.
const CHECK: &[u8] = b"kodel sealing key check";

impl Sealer {
    /// The key from the environment, else the data dir's `sealing.key` (made on first
    /// start), and the previous one; checked against the database's `sealing_check`.
    pub async fn load(pool: &PgPool, from_env: Option<&str>, previous: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let previous = previous.map(|p| cipher(p, "KODEL_ENCRYPTION_KEY_PREVIOUS")).transpose()?;
        let (cipher, source) = match from_env {
            Some(b64) => (cipher(b64, "KODEL_ENCRYPTION_KEY")?, "KODEL_ENCRYPTION_KEY".to_owned()),
            None => {
                let path = data_dir.join(KEY_FILE);
                (cipher(&key_file(pool, &path).await?, &path.display().to_string())?, path.display().to_string())
            }
        };
        let sealer = Self { cipher, previous };
        sealer.check(pool, &source).await?;
        Ok(sealer)
    }

    /// The database's check value opens with this key (or the previous one, during a
    /// rotation: then it is sealed again with this one); a database without one gets it.
    async fn check(&self, pool: &PgPool, source: &str) -> anyhow::Result<()> {
        let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'sealing_check'").fetch_optional(pool).await?;
        let fresh = self.seal(CHECK);
        match stored {
            Some(sealed) if open_with(&self.cipher, &sealed).as_deref() == Some(CHECK) => Ok(()),
            Some(sealed) if self.previous.as_ref().and_then(|p| open_with(p, &sealed)).as_deref() == Some(CHECK) => {
                sqlx::query("UPDATE server_secrets SET value = $1 WHERE name = 'sealing_check'").bind(&fresh).execute(pool).await?;
                Ok(())
            }
            Some(_) => anyhow::bail!(
                "the sealing key ({source}) is not the one this database's secrets were sealed with: every server on one database \
                 needs the same key. Set KODEL_ENCRYPTION_KEY to it (a generated one is in {KEY_FILE} in the first server's data dir), \
                 or during a rotation the old one in KODEL_ENCRYPTION_KEY_PREVIOUS"
            ),
            None => {
                sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('sealing_check', $1) ON CONFLICT (name) DO NOTHING")
                    .bind(&fresh)
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// Whether a previous key is set (a rotation is under way).
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// nonce || ciphertext (with its tag).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        out.extend(self.cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap_or_default());
        out
    }

    /// Seals `plain` for one purpose (`open_for` with another purpose refuses it), for
    /// data the server hands out and takes back, such as a sign-in's state.
    pub fn seal_for(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        let mut labelled = Vec::with_capacity(purpose.len() + 1 + plain.len());
        labelled.extend_from_slice(purpose.as_bytes());
        labelled.push(0);
        labelled.extend_from_slice(plain);
        self.seal(&labelled)
    }

    pub fn open_for(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let plain = self.open(sealed)?;
        let rest = plain.strip_prefix(purpose.as_bytes())?.strip_prefix(&[0u8])?;
        Some(rest.to_vec())
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.cipher, sealed).or_else(|| open_with(self.previous.as_ref()?, sealed))
    }

    /// `sealed` again with the current key, when only the previous one opens it.
    pub fn reseal(&self, sealed: &[u8]) -> Resealed {
        if open_with(&self.cipher, sealed).is_some() {
            return Resealed::Current;
        }
        match self.previous.as_ref().and_then(|p| open_with(p, sealed)) {
            Some(plain) => Resealed::Again(self.seal(&plain)),
            None => Resealed::Unreadable,
        }
    }

    /// `reseal` for a `seal_text` value; a value stored before sealing is sealed now.
    pub fn reseal_text(&self, stored: &str) -> Resealed {
        let Some(b64) = stored.strip_prefix(SEALED_TEXT) else { return Resealed::Again(self.seal_text(stored).into_bytes()) };
        let Ok(sealed) = base64::engine::general_purpose::STANDARD.decode(b64) else { return Resealed::Unreadable };
        match self.reseal(&sealed) {
            Resealed::Again(again) => Resealed::Again(format!("{SEALED_TEXT}{}", base64::engine::general_purpose::STANDARD.encode(again)).into_bytes()),
            other => other,
        }
    }

    /// A secret kept inside JSON (an instance template's env value): `sealed:` and
    /// the base64 of `seal`.
    pub fn seal_text(&self, plain: &str) -> String {
        format!("{SEALED_TEXT}{}", base64::engine::general_purpose::STANDARD.encode(self.seal(plain.as_bytes())))
    }

    /// A stored `seal_text` value kept as it is; one stored before values were sealed
    /// is sealed now.
    pub fn keep_text(&self, stored: &str) -> String {
        if stored.starts_with(SEALED_TEXT) { stored.to_owned() } else { self.seal_text(stored) }
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

fn open_with(cipher: &ChaCha20Poly1305, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(Nonce::from_slice(nonce), body).ok()
}

/// Seals again the sealed `table.column` values only the previous key opens; returns
/// (sealed again, opening with neither key). Names come from the code, never input.
async fn reseal_column(conn: &mut sqlx::PgConnection, sealer: &Sealer, table: &str, key: &str, column: &str, only: &str) -> anyhow::Result<(u64, u64)> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as(&format!("SELECT {key}::text, {column} FROM {table} WHERE {column} IS NOT NULL AND ({only}) FOR UPDATE")).fetch_all(&mut *conn).await?;
    let (mut again, mut unreadable) = (0, 0);
    for (id, sealed) in rows {
        match sealer.reseal(&sealed) {
            Resealed::Again(v) => {
                sqlx::query(&format!("UPDATE {table} SET {column} = $2 WHERE {key}::text = $1")).bind(id).bind(v).execute(&mut *conn).await?;
                again += 1;
            }
            Resealed::Unreadable => unreadable += 1,
            Resealed::Current => {}
        }
    }
    Ok((again, unreadable))
}

/// Seals again with the current key the server's own sealed secret (the generated JWT
/// secret; not the clear rows an older version left, nor the check value, which
/// `Sealer::check` keeps) and every stored secret of every org that only the previous key opens (and
/// any instance-template env value stored before values were sealed), one org per
/// transaction. Returns (sealed again, opening with neither key).
pub async fn reseal_all(pool: &PgPool, sealer: &Sealer) -> anyhow::Result<(u64, u64)> {
    let mut tx = crate::db::begin(pool).await?;
    let (mut again, mut unreadable) = reseal_column(&mut tx, sealer, "public.server_secrets", "name", "value", "name = 'jwt_sealed'").await?;
    tx.commit().await?;
    let slugs: Vec<String> = sqlx::query_scalar("SELECT slug FROM public.orgs WHERE migration_error IS NULL ORDER BY slug").fetch_all(pool).await?;
    for slug in slugs {
        let slug = kodel_core::OrgSlug::parse(&slug).map_err(|e| anyhow::anyhow!("org {slug}: {}", e.0))?;
        let mut tx = crate::db::scoped::begin_scoped(pool, &slug).await?;
        for (table, key, column) in [("modules", "id", "credentials"), ("llm_providers", "provider", "api_key")] {
            let (a, u) = reseal_column(&mut tx, sealer, table, key, column, "true").await?;
            again += a;
            unreadable += u;
        }
        let templates: Vec<(uuid::Uuid, sqlx::types::Json<std::collections::BTreeMap<String, String>>)> =
            sqlx::query_as("SELECT id, env FROM instance_templates WHERE env <> '{}'::jsonb FOR UPDATE").fetch_all(&mut *tx).await?;
        for (id, sqlx::types::Json(mut env)) in templates {
            let mut changed = false;
            for value in env.values_mut() {
                match sealer.reseal_text(value) {
                    Resealed::Again(v) => {
                        *value = String::from_utf8(v)?;
                        changed = true;
                        again += 1;
                    }
                    Resealed::Unreadable => unreadable += 1,
                    Resealed::Current => {}
                }
            }
            if changed {
                sqlx::query("UPDATE instance_templates SET env = $2 WHERE id = $1").bind(id).bind(sqlx::types::Json(&env)).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
    }
    Ok((again, unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_and_tampering_is_caught() {
        let s = Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32])), previous: None };
        let sealed = s.seal(b"ghp_secret");
        assert!(!sealed.windows(10).any(|w| w == b"ghp_secret"));
        assert_eq!(s.open(&sealed).unwrap(), b"ghp_secret");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(s.open(&bad).is_none());
        assert_ne!(s.seal(b"x"), s.seal(b"x"), "a fresh nonce each time");
    }

    #[test]
    fn after_a_rotation_old_secrets_open_and_are_sealed_again() {
        let old = Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&[1u8; 32])), previous: None };
        let new = Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&[2u8; 32])), previous: Some(ChaCha20Poly1305::new(Key::from_slice(&[1u8; 32]))) };
        let sealed = old.seal(b"secret");
        assert_eq!(new.open(&sealed).unwrap(), b"secret");
        let Resealed::Again(again) = new.reseal(&sealed) else { panic!("sealed again") };
        assert!(old.open(&again).is_none(), "the new seal needs the new key");
        assert!(matches!(new.reseal(&again), Resealed::Current));
        assert!(matches!(new.reseal(b"garbage-garbage-garbage"), Resealed::Unreadable));
        let text = old.seal_text("t0k");
        let Resealed::Again(again) = new.reseal_text(&text) else { panic!() };
        assert_eq!(new.open_text(&String::from_utf8(again).unwrap()).unwrap(), "t0k");
        // A value stored before values were sealed gets sealed.
        let Resealed::Again(sealed_now) = new.reseal_text("plain") else { panic!() };
        assert!(String::from_utf8(sealed_now).unwrap().starts_with("sealed:"));
    }
}
