//! Signing in to the web view through the identity provider: `/sso/start` sends the
//! browser there (authorization code with PKCE); `/sso/callback` takes it back, checks
//! everything, and signs the browser in. What must survive the trip (state, nonce, PKCE
//! verifier) rides in a sealed, HttpOnly cookie that lives ten minutes.

use axum::extract::{Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kodel_core::ErrorCode;
use serde::Deserialize;

use super::session::read_cookie;
use super::{WebError, WebResult, login};
use crate::AppState;
use crate::auth::limits::ClientAddr;
use crate::auth::oidc::{PENDING_PURPOSE, Pending, Sso};
use crate::error::ApiError;

const COOKIE: &str = "kodel_sso";

fn sso(state: &AppState) -> Result<&Sso, WebError> {
    state.sso.as_deref().ok_or_else(|| WebError::Api(ApiError::new(ErrorCode::SsoNotConfigured, "single sign-on is not set up on this server")))
}

fn pending_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = match value {
        Some(v) => format!("{COOKIE}={v}; Path=/sso; HttpOnly; SameSite=Lax; Max-Age=600{secure}"),
        None => format!("{COOKIE}=; Path=/sso; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub async fn start(State(state): State<AppState>, ClientAddr(client): ClientAddr) -> WebResult<Response> {
    // Each start asks the provider: counted with the sign-in limits.
    state.logins.attempt(client, None)?;
    let (url, pending) = sso(&state)?.authorize().await?;
    let sealed = state.sealer.seal_for(PENDING_PURPOSE, &serde_json::to_vec(&pending).map_err(ApiError::internal)?);
    let cookie = pending_cookie(Some(&URL_SAFE_NO_PAD.encode(sealed)), state.web.secure_cookies);
    Ok(([(SET_COOKIE, cookie)], Redirect::to(&url)).into_response())
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub async fn callback(State(state): State<AppState>, ClientAddr(client): ClientAddr, Query(q): Query<Callback>, req: axum::extract::Request) -> WebResult<Response> {
    let (parts, _) = req.into_parts();
    let sso = sso(&state)?;
    state.logins.attempt(client, None)?;
    let pending = read_pending(&state, &parts)?;
    if let Some(error) = q.error {
        // The provider's own words go to the log only: this page shows fixed text.
        tracing::info!(error = %error, description = q.error_description.as_deref().unwrap_or(""), "the identity provider did not sign someone in");
        let why = match error.as_str() {
            "access_denied" => "you (or the provider) declined",
            "login_required" | "interaction_required" | "consent_required" => "the provider needs you to sign in there first",
            _ => "the provider answered with an error",
        };
        return Err(WebError::Api(ApiError::new(ErrorCode::SsoRefused, format!("the identity provider did not sign you in: {why}"))));
    }
    // The state must be the one this browser was sent with: otherwise a code from
    // someone else's sign-in could be planted here.
    let same = q.state.as_deref() == Some(pending.state.as_str());
    let (Some(code), true) = (q.code, same) else {
        return Err(WebError::Api(ApiError::new(ErrorCode::SsoRefused, "this sign-in did not start in this browser (or took too long): try again")));
    };
    let identity = sso.finish(&code, &pending).await?;
    let mut tx = crate::db::begin(&state.pool).await.map_err(ApiError::from)?;
    let user = sso.user_of(&mut tx, &identity).await?;
    let previous = read_cookie(&parts, super::session::cookie_name(state.web.secure_cookies));
    let token = super::session::start(&mut tx, user, previous).await?;
    tx.commit().await.map_err(ApiError::from)?;
    let mut resp = login::welcome(&state, &token);
    resp.headers_mut().append(SET_COOKIE, pending_cookie(None, state.web.secure_cookies));
    Ok(resp)
}

fn read_pending(state: &AppState, parts: &Parts) -> Result<Pending, WebError> {
    let pending: Option<Pending> = read_cookie(parts, COOKIE)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .and_then(|b| state.sealer.open_for(PENDING_PURPOSE, &b))
        .and_then(|b| serde_json::from_slice(&b).ok());
    match pending {
        Some(p) if p.expires > chrono::Utc::now().timestamp() => Ok(p),
        _ => Err(WebError::Api(ApiError::new(ErrorCode::SsoRefused, "this sign-in did not start in this browser (or took too long): try again"))),
    }
}
