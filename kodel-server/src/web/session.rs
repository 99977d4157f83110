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

pub const COOKIE_NAME: &str = "kodel_session";
const TOKEN_PREFIX: &str = "kodel_web_";
/// How long a web sign-in lasts.
pub const TTL_SECS: i64 = 7 * 24 * 3600;

/// Starts a web session for `user`; the answer is the cookie's token.
pub async fn start(conn: &mut PgConnection, user: Uuid) -> ApiResult<String> {
    let token = random_token(TOKEN_PREFIX);
    sqlx::query(
        "INSERT INTO sessions (id, user_id, web_token_hash, web_expires_at) VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(hash_token(&token))
    .bind(TTL_SECS as f64)
    .execute(conn)
    .await?;
    Ok(token)
}

/// The `Set-Cookie` value that signs the browser in (`Some(token)`) or out (`None`).
pub fn cookie(token: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = match token {
        Some(t) => format!("{COOKIE_NAME}={t}; Path=/; HttpOnly; SameSite=Lax; Max-Age={TTL_SECS}{secure}"),
        None => format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
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

/// The CSRF token of a session: only a page that read it from this server knows it.
pub fn csrf_token(session_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::new().chain_update(b"kodel-csrf\0").chain_update(session_token.as_bytes()).finalize())
}

/// The signed-in person looking at a page.
#[derive(Clone)]
pub struct Viewer {
    pub user: AuthUser,
    /// The session as a credential, for the API's handlers.
    pub credential: Credential,
    /// The token every form of this viewer's pages carries.
    pub csrf: String,
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
        let token = read_cookie(parts, COOKIE_NAME).ok_or(WebError::SignIn)?;
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 100 {
            return Err(WebError::SignIn);
        }
        let row = sqlx::query_as::<_, SessionRow>(
            "SELECT s.id, s.user_id, u.email, u.name, extract(epoch FROM s.web_expires_at)::bigint AS expires
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.web_token_hash = $1 AND s.revoked_at IS NULL AND s.web_expires_at > now()",
        )
        .bind(hash_token(token))
        .fetch_optional(&state.pool)
        .await
        .map_err(ApiError::from)?
        .ok_or(WebError::SignIn)?;
        tracing::Span::current().record("user", tracing::field::display(row.user_id));
        let viewer = Viewer {
            user: AuthUser { id: row.user_id, email: row.email, name: row.name },
            credential: Credential::Session { user: row.user_id, session: row.id, expires: row.expires },
            csrf: csrf_token(token),
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
        super::same_origin(&parts)?;
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| ApiError::invalid("the form could not be read"))?;
        let form: WithCsrf<T> =
            serde_urlencoded::from_bytes(&bytes).map_err(|e| ApiError::invalid(format!("the form is not valid: {e}")))?;
        let expected = viewer.csrf.as_bytes();
        let same = form.csrf.len() == expected.len() && form.csrf.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(WebError::Api(ApiError::new(
                kodel_core::ErrorCode::Forbidden,
                "this form is out of date or did not come from this site: reload the page and try again",
            )));
        }
        Ok(Form(viewer, form.form))
    }
}
