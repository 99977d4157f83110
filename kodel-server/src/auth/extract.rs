//! `Auth`: the verified caller. `Authorization: Bearer` takes a JWT access token (its
//! session must not be revoked) or a personal API token (`kodel_pat_...`).
//!
//! The part of the check that needs the database is a SQL fragment (`caller`), so the
//! `Tenant` extractor can verify the caller and the org in one statement.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
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

/// A bearer token, checked as far as possible without the database.
pub enum Credential {
    /// A valid JWT: its session must still be alive.
    Session { user: Uuid, session: Uuid },
    /// An API token: its hash must match a live token.
    ApiToken { hash: Vec<u8> },
}

impl Credential {
    pub fn from_parts(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if token.starts_with(PAT_PREFIX) {
            return Ok(Self::ApiToken { hash: hash_token(token) });
        }
        let claims = state.jwt.verify(token).ok_or_else(ApiError::unauthorized)?;
        Ok(Self::Session { user: claims.sub, session: claims.sid })
    }

    /// CTEs defining `caller(id)`: the user behind the credential, if it is live. They
    /// use parameters $1 and $2 (see `bind`). An API token's `last_used_at` is
    /// refreshed at most once a minute.
    pub fn caller_sql(&self) -> &'static str {
        match self {
            Self::Session { .. } => {
                "caller AS (SELECT user_id AS id FROM public.sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL)"
            }
            Self::ApiToken { .. } => {
                "caller AS (
                     SELECT user_id AS id, id AS token_id, last_used_at FROM public.api_tokens
                     WHERE token_hash = $1 AND kind = $2 AND revoked_at IS NULL
                       AND (expires_at IS NULL OR expires_at > now())),
                 touch AS (
                     UPDATE public.api_tokens SET last_used_at = now()
                     WHERE id = (SELECT token_id FROM caller)
                       AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))"
            }
        }
    }

    pub fn bind<'q, O>(&'q self, q: QueryAs<'q, Postgres, O, PgArguments>) -> QueryAs<'q, Postgres, O, PgArguments> {
        match self {
            Self::Session { user, session } => q.bind(*session).bind(*user),
            Self::ApiToken { hash } => q.bind(hash.as_slice()).bind("user"),
        }
    }

    pub fn session(&self) -> Option<Uuid> {
        match self {
            Self::Session { session, .. } => Some(*session),
            Self::ApiToken { .. } => None,
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.extensions.get::<Auth>() {
            return Ok(auth.clone());
        }
        let cred = Credential::from_parts(parts, state)?;
        let sql = format!("WITH {} SELECT u.id, u.email, u.name FROM caller c JOIN public.users u ON u.id = c.id", cred.caller_sql());
        let user = cred
            .bind(sqlx::query_as::<_, AuthUser>(&sql))
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        tracing::Span::current().record("user", tracing::field::display(user.id));
        let auth = Auth { user, session: cred.session() };
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}
