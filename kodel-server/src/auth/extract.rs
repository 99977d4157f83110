//! `Auth`: the verified caller. `Authorization: Bearer` takes a JWT access token (its
//! session must not be revoked) or a personal API token (`kodel_pat_...`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use super::tokens::{PAT_PREFIX, hash_token};
use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthUser {
    pub id: Uuid,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub user: AuthUser,
    /// The login session, when the caller used an access token.
    pub session: Option<Uuid>,
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.extensions.get::<Auth>() {
            return Ok(auth.clone());
        }
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let auth = if token.starts_with(PAT_PREFIX) {
            let user = sqlx::query_as::<_, AuthUser>(
                "WITH t AS (
                     SELECT id, user_id, last_used_at FROM api_tokens
                     WHERE token_hash = $1 AND kind = 'user' AND revoked_at IS NULL
                       AND (expires_at IS NULL OR expires_at > now())),
                 touch AS (
                     UPDATE api_tokens SET last_used_at = now()
                     WHERE id = (SELECT id FROM t)
                       AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))
                 SELECT u.id, u.email, u.name FROM t JOIN users u ON u.id = t.user_id",
            )
            .bind(hash_token(token))
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
            Auth { user, session: None }
        } else {
            let claims = state.jwt.verify(token).ok_or_else(ApiError::unauthorized)?;
            let user = sqlx::query_as::<_, AuthUser>(
                "SELECT u.id, u.email, u.name FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL",
            )
            .bind(claims.sid)
            .bind(claims.sub)
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
            Auth { user, session: Some(claims.sid) }
        };
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}
