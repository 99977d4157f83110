//! The web view at `/`: server-rendered pages for people without a terminal at hand.
//!
//! Pages are rendered with maud (HTML checked at compile time, every value escaped
//! unless marked otherwise; nothing here marks user text otherwise). Every page and
//! every action calls the REST API's own handlers in process, with the viewer's session
//! as the credential: tenancy, roles and validation are the API's, not a copy. One small
//! script (`assets/app.js`, no inline script anywhere: the CSP forbids it) follows the
//! SSE streams and swaps in fragments the server renders.
//! See docs/architecture.md, "The web view".

mod assets;
mod board;
mod home;
mod layout;
mod login;
mod render;
pub mod session;
mod sso;
mod task;

use axum::Router;
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kodel_core::ErrorCode;
use tower_http::compression::CompressionLayer;

use crate::AppState;
use crate::error::ApiError;

/// How the web view sets its cookies: Secure when people reach the server over https.
pub struct WebSettings {
    /// `KODEL_PUBLIC_URL`, without a trailing slash.
    pub public_url: String,
    pub secure_cookies: bool,
    /// `KODEL_PUBLIC_URL`'s origin (`https://kodel.example.com`).
    pub public_origin: String,
}

impl WebSettings {
    pub fn new(public_url: &str) -> Self {
        let origin = public_url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        Self { public_url: public_url.trim_end_matches('/').to_owned(), secure_cookies: public_url.starts_with("https://"), public_origin: origin }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home::page))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/sso/start", get(sso::start))
        .route("/sso/callback", get(sso::callback))
        .route("/assets/{name}", get(assets::serve))
        .route("/o/{org}/p/{project}", get(board::page))
        .route("/o/{org}/p/{project}/tasks", post(board::create))
        .route("/o/{org}/events", get(board::events))
        .route("/o/{org}/t/{task}", get(task::page))
        .route("/o/{org}/t/{task}/card", get(board::card))
        .route("/o/{org}/t/{task}/side", get(task::side))
        .route("/o/{org}/t/{task}/steps", get(task::steps))
        .route("/o/{org}/t/{task}/events", get(task::events))
        .route("/o/{org}/t/{task}/move", post(task::move_to))
        .route("/o/{org}/t/{task}/comments", post(task::comment))
        .route("/o/{org}/artifacts/{id}/{decision}", post(task::decide))
        .layer(axum::middleware::from_fn(signed_out_scripts))
        .layer(axum::middleware::map_response(security_headers))
        .layer(CompressionLayer::new())
}

/// The policy every page is served with: scripts, styles and fetches from this server
/// only, no inline script or style, no framing, forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A state change must come from a page of this server: a browser names the page's
/// origin on every POST, and it must be `KODEL_PUBLIC_URL`'s or this request's host's.
/// When `required` is false a request that names none passes (it is not a browser's,
/// which a forged cross-site request needs; the CSRF token still guards it).
pub fn same_origin(parts: &Parts, web: &WebSettings, required: bool) -> Result<(), WebError> {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return Ok(());
    }
    let named = parts.headers.get(header::ORIGIN).or_else(|| parts.headers.get(header::REFERER)).and_then(|v| v.to_str().ok());
    let Some(origin) = named else {
        return if required { Err(WebError::Api(ApiError::new(ErrorCode::Forbidden, "this request names no origin"))) } else { Ok(()) };
    };
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    // A Referer is a whole URL: its origin is what comes before the path.
    let origin = origin.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if origin.eq_ignore_ascii_case(&web.public_origin) || (!host.is_empty() && origin_host.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(WebError::Api(ApiError::new(ErrorCode::Forbidden, "this request came from another site")))
    }
}

/// A script's request (`X-Kodel-Fetch`) whose session ended gets 401, not the sign-in
/// page (which `fetch` would follow and put in the page); the script then reloads.
async fn signed_out_scripts(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let script = from_script(req.headers());
    let resp = next.run(req).await;
    let to_sign_in = resp.status() == StatusCode::SEE_OTHER && resp.headers().get(header::LOCATION).is_some_and(|l| l == "/login");
    if script && to_sign_in { (StatusCode::UNAUTHORIZED, "signed out").into_response() } else { resp }
}

/// How a page or an action fails: not signed in (to the sign-in page), or the API's
/// error shown as a page. A script's request (`X-Kodel-Fetch`) gets the message as text.
pub enum WebError {
    SignIn,
    Api(ApiError),
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        if e.code == ErrorCode::Unauthorized { WebError::SignIn } else { WebError::Api(e) }
    }
}

pub type WebResult<T> = Result<T, WebError>;

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::SignIn => Redirect::to("/login").into_response(),
            WebError::Api(e) => {
                let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, layout::error_page(status, &e.message)).into_response()
            }
        }
    }
}

/// True when the request came from the page's script rather than a plain form.
pub fn from_script(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-kodel-fetch")
}

/// The answer to a form: a script gets 204 (or the error's text), a plain form is sent
/// on to `to` (303, so a reload does not post again).
pub fn done(headers: &axum::http::HeaderMap, to: &str) -> Response {
    if from_script(headers) { StatusCode::NO_CONTENT.into_response() } else { Redirect::to(to).into_response() }
}

/// An action's error for a script: its status and message as text, which the page shows
/// next to the form.
pub fn failed(headers: &axum::http::HeaderMap, err: WebError) -> Response {
    match err {
        WebError::Api(e) if from_script(headers) => {
            let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], e.message).into_response()
        }
        other => other.into_response(),
    }
}
