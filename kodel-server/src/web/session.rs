//! Signing in to the web view. The browser holds a cookie with a random token; the
//! server keeps only its SHA-256, on a row of `public.sessions` like a CLI login's, so
//! logging out or revoking the session ends it. The cookie is HttpOnly, SameSite=Lax,
//! and Secure when the server is reached over https (`KODEL_PUBLIC_URL`).
//!
//! Every state change is a POST that carries a CSRF token: a hash of the cookie's token,
//! which a page of another site can neither read nor compute. `Form` checks it (and the
//! request's Origin) before a handler sees the form.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, HeaderValue};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kodel_core::OrgSlug;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::WebError;
use crate::AppState;
use crate::auth::AuthUser;
use crate::auth::extract::Credential;
use crate::auth::tokens::{hash_token, random_token};
use crate::error::{ApiError, ApiResult};
use crate::tenant::Tenant;

/// The cookie's name: with the `__Host-` prefix when it is Secure, so a sibling
/// subdomain cannot plant one the browser would send here.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-kodel_session" } else { "kodel_session" }
}
const TOKEN_PREFIX: &str = "kodel_web_";
/// How long a web sign-in lasts.
pub const TTL_SECS: i64 = 7 * 24 * 3600;

/// Starts a web session for `user`; the answer is the cookie's token. The session of
/// the cookie the browser had before, if any, ends (a new sign-in never keeps an old
/// session alive behind it).
pub async fn start(conn: &mut PgConnection, user: Uuid, previous: Option<&str>) -> ApiResult<String> {
    if let Some(old) = previous {
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE web_token_hash = $1 AND revoked_at IS NULL")
            .bind(hash_token(old))
            .execute(&mut *conn)
            .await?;
    }
    let token = random_token(TOKEN_PREFIX);
    sqlx::query(
        "INSERT INTO sessions (id, user_id, web_token_hash, web_expires_at) VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hash_token(&token))
    .bind(TTL_SECS as f64)
    .execute(&mut *conn)
    .await?;
    Ok(token)
}

/// The `Set-Cookie` value that signs the browser in (`Some(token)`) or out (`None`).
pub fn cookie(token: Option<&str>, secure: bool) -> HeaderValue {
    let name = cookie_name(secure);
    let flag = if secure { "; Secure" } else { "" };
    let value = match token {
        Some(t) => format!("{name}={t}; Path=/; HttpOnly; SameSite=Lax; Max-Age={TTL_SECS}{flag}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{flag}"),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A cookie's value from the request's `Cookie` headers.
pub fn read_cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF secret of a session: only a page that read it from this server knows it.
fn csrf_secret(session_token: &str) -> [u8; 32] {
    Sha256::new().chain_update(b"kodel-csrf\0").chain_update(session_token.as_bytes()).finalize().into()
}

/// Whether a form's token (`Viewer::csrf`) is the session's, in constant time.
fn csrf_matches(secret: &[u8; 32], token: &str) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(token.trim()) else { return false };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
    let (pad, masked) = bytes.split_at(32);
    pad.iter().zip(masked).zip(secret).fold(0u8, |acc, ((p, m), s)| acc | (p ^ m ^ s)) == 0
}

/// The signed-in person looking at a page.
#[derive(Clone)]
pub struct Viewer {
    pub user: AuthUser,
    /// The session as a credential, for the API's handlers.
    pub credential: Credential,
    /// What every form of this viewer's pages proves (see `csrf`).
    csrf: [u8; 32],
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    email: String,
    name: String,
    expires: i64,
}

impl Viewer {
    /// The token a form carries: the session's CSRF secret under a fresh random mask,
    /// so no two pages carry the same bytes (a compressed page that also reflects the
    /// visitor's input cannot leak it a byte at a time).
    pub fn csrf(&self) -> String {
        let pad: [u8; 32] = rand::random();
        let mut out = pad.to_vec();
        out.extend(pad.iter().zip(&self.csrf).map(|(p, s)| p ^ s));
        URL_SAFE_NO_PAD.encode(out)
    }

    /// A transaction scoped to `org` as this viewer, exactly as an API request's.
    pub async fn tenant(&self, state: &AppState, org: &str) -> ApiResult<Tenant> {
        let slug = OrgSlug::parse(org).map_err(|e| ApiError::new(kodel_core::ErrorCode::InvalidSlug, e.0))?;
        Tenant::open(state, slug, self.credential.clone()).await
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(viewer) = parts.extensions.get::<Viewer>() {
            return Ok(viewer.clone());
        }
        let token = read_cookie(parts, cookie_name(state.web.secure_cookies)).ok_or(WebError::SignIn)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 100 {
            return Err(WebError::SignIn);
        }
        // Bounded like every request's first statement (see `db::begin`).
        let mut tx = crate::db::begin(&state.pool).await.map_err(ApiError::from)?;
        let row = sqlx::query_as::<_, SessionRow>(
            "SELECT s.id, s.user_id, u.email, u.name, extract(epoch FROM s.web_expires_at)::bigint AS expires
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.web_token_hash = $1 AND s.revoked_at IS NULL AND s.web_expires_at > now()",
        )
        .bind(hash_token(token))
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        let row = row.ok_or(WebError::SignIn)?;
        tracing::Span::current().record("user", tracing::field::display(row.user_id));
        let viewer = Viewer {
            user: AuthUser { id: row.user_id, email: row.email, name: row.name },
            credential: Credential::Session { user: row.user_id, session: row.id, expires: row.expires },
            csrf: csrf_secret(token),
        };
        parts.extensions.insert(viewer.clone());
        Ok(viewer)
    }
}

/// Ends a session (signing out).
pub async fn end(state: &AppState, session: Uuid) -> ApiResult<()> {
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL").bind(session).execute(&state.pool).await?;
    Ok(())
}

/// A POSTed form of a signed-in viewer whose CSRF token (field `csrf`) matches the
/// session's. Anything else is refused before the handler runs.
pub struct Form<T>(pub Viewer, pub T);

#[derive(serde::Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Form<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        super::same_origin(&parts, &state.web, false)?;
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| ApiError::invalid("the form could not be read"))?;
        let form: WithCsrf<T> =
            serde_urlencoded::from_bytes(&bytes).map_err(|e| ApiError::invalid(format!("the form is not valid: {e}")))?;
        if !csrf_matches(&viewer.csrf, &form.csrf) {
            return Err(WebError::Api(ApiError::new(
                kodel_core::ErrorCode::Forbidden,
                "this form is out of date or did not come from this site: reload the page and try again",
            )));
        }
        Ok(Form(viewer, form.form))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_token_proves_its_session_only() {
        let secret = csrf_secret("kodel_web_one");
        let mask = |secret: &[u8; 32]| {
            let pad: [u8; 32] = rand::random();
            let mut out = pad.to_vec();
            out.extend(pad.iter().zip(secret).map(|(p, s)| p ^ s));
            URL_SAFE_NO_PAD.encode(out)
        };
        let (a, b) = (mask(&secret), mask(&secret));
        assert_ne!(a, b, "each page carries different bytes");
        assert!(csrf_matches(&secret, &a) && csrf_matches(&secret, &b));
        assert!(!csrf_matches(&csrf_secret("kodel_web_two"), &a), "another session's token");
        assert!(!csrf_matches(&secret, ""));
        assert!(!csrf_matches(&secret, "not base64 !"));
        assert!(!csrf_matches(&secret, &URL_SAFE_NO_PAD.encode([0u8; 64])));
    }
}
