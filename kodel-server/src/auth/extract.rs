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
#[derive(Clone)]
pub enum Credential {
    /// A valid JWT: its session must still be alive. `expires`: its `exp`, in Unix
    /// seconds (a stream opened with it ends then).
    Session { user: Uuid, session: Uuid, expires: i64 },
    /// An API token: its hash must match a live token.
    ApiToken { hash: Vec<u8> },
}

impl Credential {
    pub fn from_parts(parts: &Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::parse(bearer(parts).ok_or_else(ApiError::unauthorized)?, state)
    }

    /// A bearer token's credential: an API token's hash, or a JWT's verified claims.
    pub fn parse(token: &str, state: &AppState) -> Result<Self, ApiError> {
        if token.starts_with(PAT_PREFIX) {
            return Ok(Self::ApiToken { hash: hash_token(token) });
        }
        let claims = state.jwt.verify(token).ok_or_else(ApiError::unauthorized)?;
        Ok(Self::Session { user: claims.sub, session: claims.sid, expires: claims.exp })
    }

    /// A CTE defining `caller(id)`: the user behind the credential, if it is live. It
    /// uses parameters $1 and $2 (see `bind`) and writes nothing, so the transaction it
    /// runs in takes no transaction id before its real work.
    pub fn caller_sql(&self) -> &'static str {
        match self {
            Self::Session { .. } => {
                "caller AS (SELECT user_id AS id FROM public.sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL)"
            }
            Self::ApiToken { .. } => {
                "caller AS (
                     SELECT user_id AS id FROM public.api_tokens
                     WHERE token_hash = $1 AND kind = $2 AND revoked_at IS NULL
                       AND (expires_at IS NULL OR expires_at > now()))"
            }
        }
    }

    /// The same check for many credentials at once (task creations committed
    /// together): a FROM item `callers(i, id)` giving, for each live credential, its
    /// 1-based position in the arrays bound by `bind_many` ($1, $2, $3) and its user.
    pub const CALLERS_SQL: &'static str = "(
        SELECT r.i, coalesce(s.user_id, k.user_id) AS id
        FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) WITH ORDINALITY AS r(session_id, user_id, token_hash, i)
        LEFT JOIN public.sessions s ON s.id = r.session_id AND s.user_id = r.user_id AND s.revoked_at IS NULL
        LEFT JOIN public.api_tokens k ON k.token_hash = r.token_hash AND k.kind = 'user' AND k.revoked_at IS NULL
                                     AND (k.expires_at IS NULL OR k.expires_at > now())
        WHERE s.user_id IS NOT NULL OR k.user_id IS NOT NULL) AS callers";

    pub fn bind_many<'q, O>(creds: &[&Credential], q: QueryAs<'q, Postgres, O, PgArguments>) -> QueryAs<'q, Postgres, O, PgArguments> {
        let (mut sessions, mut users, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        for c in creds {
            let (s, u, h) = match c {
                Self::Session { user, session, .. } => (Some(*session), Some(*user), None),
                Self::ApiToken { hash } => (None, None, Some(hash.clone())),
            };
            sessions.push(s);
            users.push(u);
            hashes.push(h);
        }
        q.bind(sessions).bind(users).bind(hashes)
    }

    pub fn bind<'q, O>(&'q self, q: QueryAs<'q, Postgres, O, PgArguments>) -> QueryAs<'q, Postgres, O, PgArguments> {
        match self {
            Self::Session { user, session, .. } => q.bind(*session).bind(*user),
            Self::ApiToken { hash } => q.bind(hash.as_slice()).bind("user"),
        }
    }

    /// After a successful check: records that an API token was used, at most once a
    /// minute per token and server, off the request's path.
    pub fn touch(&self, state: &AppState) {
        if let Self::ApiToken { hash } = self
            && state.token_uses.due(hash)
        {
            let (pool, hash) = (state.pool.clone(), hash.clone());
            tokio::spawn(async move {
                let _ = sqlx::query("UPDATE public.api_tokens SET last_used_at = now() WHERE token_hash = $1")
                    .bind(hash)
                    .execute(&pool)
                    .await;
            });
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
        // In a transaction begun with `db::begin`: a database that holds connections but
        // answers nothing is found out within KODEL_DB_TIMEOUT (503), here as for org
        // requests.
        let mut tx = crate::db::begin(&state.pool).await?;
        let user = cred.bind(sqlx::query_as::<_, AuthUser>(&sql)).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        let user = user.ok_or_else(ApiError::unauthorized)?;
        tracing::Span::current().record("user", tracing::field::display(user.id));
        cred.touch(state);
        let auth = Auth { user, session: cred.session() };
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

/// When each API token was last recorded as used by this server.
#[derive(Default)]
pub struct TokenUses(std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::time::Instant>>);

impl TokenUses {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// True when the token passed a check on this server in the last two minutes (its
    /// use is noted at most once a minute while it is used).
    pub fn seen_lately(&self, hash: &[u8]) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(hash).is_some_and(|at| at.elapsed() < 2 * Self::EVERY)
    }

    /// True (and noted) when the token's use has not been recorded for a minute.
    pub fn due(&self, hash: &[u8]) -> bool {
        let now = std::time::Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        match map.get(hash) {
            Some(at) if now.duration_since(*at) < Self::EVERY => false,
            _ => {
                map.insert(hash.to_vec(), now);
                true
            }
        }
    }
}
