//! Register, login, refresh (rotating), logout, and who am I.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::ErrorCode;
use kodel_core::api::{LoginRequest, RefreshRequest, RegisterRequest, Registered, TokenPair, User};
use sqlx::PgConnection;
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code};
use crate::AppState;
use crate::auth::tokens::{ACCESS_TTL_SECS, REFRESH_PREFIX, REFRESH_TTL_DAYS, hash_token, random_token};
use crate::auth::limits::ClientAddr;
use crate::auth::{Auth, password};
use crate::error::{ApiError, ApiResult, require_text};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User { id: r.id, email: r.email, name: r.name, created_at: r.created_at }
    }
}

pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(char::is_whitespace);
    if valid { Ok(email) } else { Err(ApiError::invalid("email is not a valid address")) }
}

/// Makes an account, unless the email has one already: the answer is the same either
/// way (and so is the time it takes), so registering tells nobody which emails have
/// accounts. The caller then logs in; an existing account keeps its own password.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    summary = "Create an account",
    request_body = RegisterRequest,
    responses((status = ACCEPTED, description = "accepted; the same answer whether or not the email already had an account (log in next)", body = Registered), Errors<(code::TooManyRequests,)>),
    security(())
)]
async fn register(State(state): State<AppState>, ClientAddr(client): ClientAddr, ApiJson(req): ApiJson<RegisterRequest>) -> ApiResult<(StatusCode, Json<Registered>)> {
    let email = normalize_email(&req.email)?;
    let name = require_text("name", &req.name, kodel_core::api::MAX_NAME)?;
    password::validate(&req.password)?;
    state.logins.attempt(client, None)?;
    let hash = state.logins.hash(req.password).await?;
    let mut tx = crate::db::begin(&state.pool).await?;
    let made = sqlx::query("INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(Uuid::now_v7())
        .bind(&email)
        .bind(&name)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if made.rows_affected() == 1 {
        tracing::info!("registered a new account");
    } else {
        tracing::info!("registration for an email that has an account: nothing changed");
    }
    let message = "Log in with this email and password. (If the email already had an account, that account is unchanged: log in with its own password.)";
    Ok((StatusCode::ACCEPTED, Json(Registered { email, message: message.into() })))
}

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    summary = "Log in with email and password",
    request_body = LoginRequest,
    responses((status = OK, description = "a token pair", body = TokenPair), Errors<(code::InvalidCredentials, code::TooManyRequests)>),
    security(())
)]
async fn login(State(state): State<AppState>, ClientAddr(client): ClientAddr, ApiJson(req): ApiJson<LoginRequest>) -> ApiResult<Json<TokenPair>> {
    let id = check_password(&state, client, &req.email, req.password).await?;
    let mut tx = crate::db::begin(&state.pool).await?;
    let tokens = start_session(&state, &mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(tokens))
}

/// The user an email and password sign in, within the login limits (the web view's
/// sign-in uses it too).
pub async fn check_password(state: &AppState, client: Option<std::net::IpAddr>, email: &str, password: String) -> ApiResult<Uuid> {
    let email = email.trim().to_lowercase();
    if email.len() > 254 || password.len() > password::MAX_LEN {
        return Err(ApiError::new(ErrorCode::InvalidCredentials, "wrong email or password"));
    }
    state.logins.attempt(client, Some(&email))?;
    // Bounded like every request's first statement (see `db::begin`).
    let mut tx = crate::db::begin(&state.pool).await?;
    let row: Option<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = $1").bind(&email).fetch_optional(&mut *tx).await?;
    tx.commit().await?;
    let (id, hash) = match row {
        Some((id, hash)) => (Some(id), hash),
        None => (None, None),
    };
    let ok = state.logins.verify(password, hash).await?;
    let Some(id) = id.filter(|_| ok) else {
        state.logins.failed(client, &email);
        return Err(ApiError::new(ErrorCode::InvalidCredentials, "wrong email or password"));
    };
    state.logins.succeeded(client, &email);
    Ok(id)
}

pub async fn start_session(state: &AppState, conn: &mut PgConnection, user: Uuid) -> ApiResult<TokenPair> {
    let session = Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, user_id) VALUES ($1, $2)").bind(session).bind(user).execute(&mut *conn).await?;
    issue_pair(state, conn, user, session).await
}

async fn issue_pair(state: &AppState, conn: &mut PgConnection, user: Uuid, session: Uuid) -> ApiResult<TokenPair> {
    let refresh = random_token(REFRESH_PREFIX);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
         VALUES ($1, $2, now() + make_interval(days => $3))",
    )
    .bind(hash_token(&refresh))
    .bind(session)
    .bind(REFRESH_TTL_DAYS as i32)
    .execute(&mut *conn)
    .await?;
    let access = state.jwt.issue(user, session).map_err(ApiError::internal)?;
    Ok(TokenPair { access_token: access, refresh_token: refresh, token_type: "Bearer".into(), expires_in: ACCESS_TTL_SECS })
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    session_id: Uuid,
    user_id: Uuid,
    used: bool,
    expired: bool,
    revoked: bool,
}

/// Rotates a refresh token: the old one dies. Presenting a used one again means it was
/// stolen or replayed, so the whole session is revoked.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    summary = "Trade a refresh token for a new pair; the old one dies, and reusing it revokes the session",
    request_body = RefreshRequest,
    responses((status = OK, description = "a token pair", body = TokenPair), Errors<(code::Unauthorized,)>),
    security(())
)]
async fn refresh(State(state): State<AppState>, ApiJson(req): ApiJson<RefreshRequest>) -> ApiResult<Json<TokenPair>> {
    let mut tx = crate::db::begin(&state.pool).await?;
    let row = sqlx::query_as::<_, RefreshRow>(
        "SELECT r.session_id, s.user_id, r.used_at IS NOT NULL AS used, r.expires_at <= now() AS expired,
                s.revoked_at IS NOT NULL AS revoked
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
         WHERE r.token_hash = $1 FOR UPDATE OF r",
    )
    .bind(hash_token(&req.refresh_token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(ApiError::unauthorized)?;
    if row.used {
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(row.session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(session = %row.session_id, "refresh token reused; session revoked");
        return Err(ApiError::unauthorized());
    }
    if row.expired || row.revoked {
        return Err(ApiError::unauthorized());
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(hash_token(&req.refresh_token))
        .execute(&mut *tx)
        .await?;
    let pair = issue_pair(&state, &mut tx, row.user_id, row.session_id).await?;
    tx.commit().await?;
    Ok(Json(pair))
}

/// Ends the session of a refresh token (and every access token it minted).
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    summary = "End the session of a refresh token",
    request_body = RefreshRequest,
    responses((status = NO_CONTENT, description = "done"), Errors<(code::Unauthorized,)>),
    security(())
)]
async fn logout(State(state): State<AppState>, ApiJson(req): ApiJson<RefreshRequest>) -> ApiResult<StatusCode> {
    let mut tx = crate::db::begin(&state.pool).await?;
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now()
         WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL",
    )
    .bind(hash_token(&req.refresh_token))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::unauthorized());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/me", tag = "auth",
    summary = "The caller",
    responses((status = OK, description = "user", body = User)),
    security(("bearer" = []))
)]
async fn me(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<User>> {
    let user = sqlx::query_as::<_, UserRow>("SELECT id, email, name, created_at FROM users WHERE id = $1")
        .bind(auth.user.id)
        .fetch_one(&state.pool)
        .await?;
    Ok(Json(user.into()))
}
