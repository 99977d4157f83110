//! Signing in and out: email and password, or the identity provider when SSO is set up.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::SET_COOKIE;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::{WebError, WebResult, layout, same_origin, session};
use crate::AppState;
use crate::auth::limits::ClientAddr;
use crate::error::ApiError;

pub async fn page(State(state): State<AppState>) -> Html<String> {
    login_page(&state, None)
}

fn login_page(state: &AppState, error: Option<&str>) -> Html<String> {
    layout::page(
        "Sign in",
        None,
        html! {
            section.signin {
                h1 { "Sign in to Kodel" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    label { "Email" input type="email" name="email" autocomplete="username" required autofocus; }
                    label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Sign in" }
                }
                @if let Some(sso) = &state.sso {
                    p.or { "or" }
                    a.button href="/sso/start" { "Sign in with " (sso.display_name()) }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

/// A password sign-in. (No CSRF token exists before signing in; the Origin check and
/// SameSite keep other sites from signing a browser in to their account.)
pub async fn submit(State(state): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    if let Err(e) = same_origin(&parts, &state.web, true) {
        return e.into_response();
    }
    let previous = session::read_cookie(&parts, session::cookie_name(state.web.secure_cookies)).map(str::to_owned);
    let ClientAddr(client) = match ClientAddr::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(never) => match never {},
    };
    let form: Option<Credentials> = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => serde_urlencoded::from_bytes(&bytes).ok(),
        Err(_) => None,
    };
    let Some(form) = form else { return (axum::http::StatusCode::BAD_REQUEST, login_page(&state, Some("Fill in your email and password."))).into_response() };
    match signed_in(&state, client, form, previous.as_deref()).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = axum::http::StatusCode::from_u16(e.code.http_status()).unwrap_or(axum::http::StatusCode::UNAUTHORIZED);
            (status, login_page(&state, Some(&e.message))).into_response()
        }
    }
}

async fn signed_in(state: &AppState, client: Option<std::net::IpAddr>, form: Credentials, previous: Option<&str>) -> Result<Response, ApiError> {
    let user = crate::routes::auth::check_password(state, client, &form.email, form.password).await?;
    let mut tx = crate::db::begin(&state.pool).await?;
    let token = session::start(&mut tx, user, previous).await?;
    tx.commit().await?;
    Ok(welcome(state, &token))
}

/// Sets the session cookie and goes to the boards.
pub fn welcome(state: &AppState, token: &str) -> Response {
    ([(SET_COOKIE, session::cookie(Some(token), state.web.secure_cookies))], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
pub struct Nothing {}

/// Signing out ends the session (its form carries the CSRF token: another site must not
/// end a session either).
pub async fn logout(State(state): State<AppState>, session::Form(viewer, Nothing {}): session::Form<Nothing>) -> WebResult<Response> {
    if let Some(id) = viewer.credential.session() {
        session::end(&state, id).await.map_err(WebError::from)?;
    }
    Ok(([(SET_COOKIE, session::cookie(None, state.web.secure_cookies))], Redirect::to("/login")).into_response())
}
