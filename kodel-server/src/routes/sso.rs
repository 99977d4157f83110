//! Single sign-on for the terminal: the device authorization grant. `kodel login --sso`
//! starts it, shows the person where to go and what code to enter, and polls until they
//! have signed in at the provider; then it holds Kodel tokens as after a password login.

use axum::Json;
use axum::extract::State;
use kodel_core::ErrorCode;
use kodel_core::api::{SsoDevicePoll, SsoDeviceStart, TokenPair};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code};
use crate::AppState;
use crate::auth::limits::ClientAddr;
use crate::auth::oidc::Sso;
use crate::error::{ApiError, ApiResult};
use crate::json::ApiJson;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(device_start)).routes(routes!(device_token))
}

fn sso(state: &AppState) -> ApiResult<&Sso> {
    state.sso.as_deref().ok_or_else(|| ApiError::new(ErrorCode::SsoNotConfigured, "single sign-on is not set up on this server (KODEL_OIDC_ISSUER)"))
}

#[utoipa::path(
    post, path = "/api/v1/auth/sso/device", tag = "auth",
    summary = "Begin a single sign-on from a terminal (device authorization grant)",
    responses((status = OK, description = "where the person signs in, the code they enter, and the handle to poll with", body = SsoDeviceStart), Errors<(code::SsoNotConfigured, code::SsoRefused, code::SsoUnavailable, code::TooManyRequests)>),
    security(())
)]
async fn device_start(State(state): State<AppState>, ClientAddr(client): ClientAddr) -> ApiResult<Json<SsoDeviceStart>> {
    // Each start asks the provider: counted with the login limits.
    state.logins.attempt(client, None)?;
    Ok(Json(sso(&state)?.device_start(&state.sealer).await?))
}

#[utoipa::path(
    post, path = "/api/v1/auth/sso/device/token", tag = "auth",
    summary = "Finish a terminal's single sign-on: waits up to 20 s for the person, then 428 authorization_pending (poll again)",
    request_body = SsoDevicePoll,
    responses((status = OK, description = "a token pair, as a password login gives", body = TokenPair), Errors<(code::AuthorizationPending, code::SsoNotConfigured, code::SsoRefused, code::SsoUnavailable, code::InvalidRequest, code::TooManyRequests)>),
    security(())
)]
async fn device_token(State(state): State<AppState>, ClientAddr(client): ClientAddr, ApiJson(req): ApiJson<SsoDevicePoll>) -> ApiResult<Json<TokenPair>> {
    let sso = sso(&state)?;
    state.logins.attempt(client, None)?;
    let identity = sso.device_poll(&state.sealer, &req.handle).await?;
    let mut tx = crate::db::begin(&state.pool).await?;
    let user = sso.user_of(&mut tx, &identity).await?;
    let tokens = super::auth::start_session(&state, &mut tx, user).await?;
    tx.commit().await?;
    Ok(Json(tokens))
}
