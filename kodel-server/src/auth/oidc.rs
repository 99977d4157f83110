//! Single sign-on with an OpenID provider (`KODEL_OIDC_ISSUER`, `_CLIENT_ID`,
//! `_CLIENT_SECRET`): the authorization code flow with PKCE for the web view, and the
//! device authorization grant for the terminal (`kodel login --sso`).
//!
//! The `openidconnect` crate does the protocol and checks ID tokens fully: the signature
//! against the provider's published keys, the issuer, the audience, the expiry and the
//! nonce. It sends its requests through `send`, a small adapter over the workspace's
//! reqwest. Its metadata type does not carry `device_authorization_endpoint`, so that
//! one is read from the raw discovery document.
//!
//! A person at the provider is (issuer, subject) in `public.oidc_identities`. The first
//! sign-in links an existing account only by an email the provider verified, else makes
//! an account (or refuses, `KODEL_OIDC_AUTO_CREATE=false`).

use std::time::Duration;

use kodel_core::ErrorCode;
use openidconnect::core::{CoreClient, CoreDeviceAuthorizationResponse, CoreIdToken, CoreIdTokenClaims, CoreProviderMetadata, CoreJsonWebKeySet};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl, IssuerUrl, Nonce, NonceVerifier,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use kodel_core::api::SsoDeviceStart;

use crate::error::{ApiError, ApiResult};

/// What the server was told about its provider.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub display_name: String,
    pub auto_create: bool,
    pub org_claim: Option<String>,
    /// Where the provider sends the browser back (`<public url>/sso/callback`).
    pub redirect_url: String,
}

/// What discovery found (read once, when first needed, and again after a failure).
struct Provider {
    metadata: CoreProviderMetadata,
    device_url: Option<String>,
}

pub struct Sso {
    config: SsoConfig,
    http: reqwest::Client,
    provider: tokio::sync::RwLock<Option<std::sync::Arc<Provider>>>,
    /// When the provider's keys were last read again for a token they did not verify.
    refreshed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What the device flow's handle is sealed for (nothing else sealed opens as one).
const DEVICE_PURPOSE: &str = "sso-device-handle";
/// What a browser's sign-in in progress is sealed for.
pub const PENDING_PURPOSE: &str = "sso-pending";
/// The largest answer read from the provider.
const MAX_ANSWER: usize = 1 << 20;

/// How long a request to the provider may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call of `POST /auth/sso/device/token` waits for the person to finish.
pub const DEVICE_WAIT: Duration = Duration::from_secs(20);

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %what, "the identity provider failed");
    ApiError::new(ErrorCode::SsoUnavailable, format!("the identity provider failed: {what}"))
}

fn refused(what: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::SsoRefused, what)
}

/// The adapter `openidconnect` sends its requests through: the workspace's reqwest.
struct Http(reqwest::Client);

type Sent = std::pin::Pin<Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, reqwest::Error>> + Send>>;

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = reqwest::Error;
    type Future = Sent;

    fn call(&'c self, req: openidconnect::HttpRequest) -> Sent {
        Box::pin(send(self.0.clone(), req))
    }
}

async fn send(http: reqwest::Client, req: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, reqwest::Error> {
    let (parts, body) = req.into_parts();
    let resp = http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
    let mut out = openidconnect::http::Response::builder().status(resp.status());
    if let Some(headers) = out.headers_mut() {
        *headers = resp.headers().clone();
    }
    let body = read_bounded(resp).await?;
    // The builder only fails on a bad status or header, which came from a parsed response.
    Ok(out.body(body).unwrap_or_default())
}

/// A response's body, cut at `MAX_ANSWER` (a provider has no reason to send more; what
/// is cut then fails to parse).
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            body.truncate(MAX_ANSWER);
            break;
        }
    }
    Ok(body)
}

/// The claims Kodel reads from a verified ID token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    /// The org slugs of the configured claim.
    pub orgs: Vec<String>,
}

/// The browser's half of a sign-in in progress, kept sealed in a short-lived cookie.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub expires: i64,
}

/// A device sign-in in progress: what the provider answered, sealed into the handle the
/// terminal polls with (any replica can open it).
#[derive(Serialize, Deserialize)]
struct DeviceHandle {
    response: CoreDeviceAuthorizationResponse,
    expires: i64,
}

impl Sso {
    pub fn new(config: SsoConfig) -> anyhow::Result<Self> {
        IssuerUrl::new(config.issuer.clone()).map_err(|e| anyhow::anyhow!("KODEL_OIDC_ISSUER: {e}"))?;
        RedirectUrl::new(config.redirect_url.clone()).map_err(|e| anyhow::anyhow!("KODEL_PUBLIC_URL: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            // The library must see a redirect as the answer (never follow one with a code).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { config, http, provider: tokio::sync::RwLock::new(None), refreshed: std::sync::Mutex::new(None) })
    }

    pub fn display_name(&self) -> &str {
        &self.config.display_name
    }

    /// The provider's metadata and keys (discovered on first use).
    async fn provider(&self) -> ApiResult<std::sync::Arc<Provider>> {
        if let Some(p) = self.provider.read().await.as_ref() {
            return Ok(p.clone());
        }
        let mut slot = self.provider.write().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let p = std::sync::Arc::new(self.discover().await?);
        *slot = Some(p.clone());
        Ok(p)
    }

    async fn discover(&self) -> ApiResult<Provider> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let raw: Value = self.get_json(&url).await?;
        let device_url = raw.get("device_authorization_endpoint").and_then(Value::as_str).map(str::to_owned);
        let metadata: CoreProviderMetadata = serde_json::from_value(raw).map_err(|e| unavailable(format!("its discovery document: {e}")))?;
        if metadata.issuer().as_str().trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(unavailable(format!("its discovery document names another issuer ({})", metadata.issuer().as_str())));
        }
        let jwks: CoreJsonWebKeySet =
            serde_json::from_value(self.get_json(metadata.jwks_uri().as_str()).await?).map_err(|e| unavailable(format!("its keys: {e}")))?;
        Ok(Provider { metadata: metadata.set_jwks(jwks), device_url })
    }

    async fn get_json(&self, url: &str) -> ApiResult<Value> {
        let resp = self.http.get(url).send().await.map_err(unavailable)?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("{url} answered {}", resp.status())));
        }
        let body = read_bounded(resp).await.map_err(unavailable)?;
        serde_json::from_slice(&body).map_err(|e| unavailable(format!("{url}: {e}")))
    }

    fn client(&self, p: &Provider) -> ApiResult<openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >> {
        let redirect = RedirectUrl::new(self.config.redirect_url.clone()).map_err(ApiError::internal)?;
        Ok(CoreClient::from_provider_metadata(
            p.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// Where to send the browser to sign in, and what to keep until it comes back.
    pub async fn authorize(&self) -> ApiResult<(String, Pending)> {
        let p = self.provider().await?;
        let client = self.client(&p)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(openidconnect::core::CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = Pending {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            expires: chrono::Utc::now().timestamp() + 600,
        };
        Ok((url.to_string(), pending))
    }

    /// The browser came back with `code`: trades it (with the PKCE verifier) for tokens
    /// and checks the ID token.
    pub async fn finish(&self, code: &str, pending: &Pending) -> ApiResult<Identity> {
        let p = self.provider().await?;
        let client = self.client(&p)?;
        let http = Http(self.http.clone());
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(unavailable)?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| refused(format!("the provider did not take the sign-in: {}", token_error(&e))))?;
        let id_token = tokens.id_token().ok_or_else(|| unavailable("its answer has no ID token"))?;
        self.check(id_token, &Nonce::new(pending.nonce.clone())).await
    }

    /// Checks an ID token as `finish` does (with the nonce the sign-in was sent with).
    pub async fn verify_raw(&self, raw: &str, nonce: &str) -> ApiResult<Identity> {
        let token: CoreIdToken = raw.parse().map_err(|e| refused(format!("not an ID token: {e}")))?;
        self.check(&token, &Nonce::new(nonce.to_owned())).await
    }

    /// Checks an ID token. One the cached keys do not verify may be signed with a key
    /// the provider rotated in since: its keys are then read again (at most once a
    /// minute) and the token checked once more.
    async fn check(&self, token: &CoreIdToken, nonce: impl NonceVerifier + Copy) -> ApiResult<Identity> {
        let p = self.provider().await?;
        match self.verify(&p, token, nonce) {
            Err(e) if self.may_refresh() => {
                tracing::info!(error = %e.message, "an ID token was refused: reading the provider's keys again");
                *self.provider.write().await = None;
                let p = self.provider().await?;
                self.verify(&p, token, nonce)
            }
            other => other,
        }
    }

    fn may_refresh(&self) -> bool {
        let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    fn verify(&self, p: &Provider, token: &CoreIdToken, nonce: impl NonceVerifier) -> ApiResult<Identity> {
        let client = self.client(p)?;
        let verifier = client.id_token_verifier();
        let claims: &CoreIdTokenClaims = token.claims(&verifier, nonce).map_err(|e| refused(format!("the ID token was refused: {e}")))?;
        let orgs = match &self.config.org_claim {
            Some(name) => payload(&token.to_string())
                .and_then(|v| v.get(name).cloned())
                .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Identity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_lowercase()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            orgs,
        })
    }

    /// Asks the provider for a device code (the terminal's sign-in).
    pub async fn device_start(&self, sealer: &crate::crypto::Sealer) -> ApiResult<SsoDeviceStart> {
        let p = self.provider().await?;
        let url = p.device_url.clone().ok_or_else(|| refused("the identity provider does not offer the device sign-in (no device_authorization_endpoint)"))?;
        let client = self.client(&p)?.set_device_authorization_url(DeviceAuthorizationUrl::new(url).map_err(unavailable)?);
        let http = Http(self.http.clone());
        let response: CoreDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .request_async(&http)
            .await
            .map_err(|e| unavailable(token_error(&e)))?;
        let expires_in = response.expires_in().as_secs();
        let start = SsoDeviceStart {
            verification_uri: response.verification_uri().to_string(),
            verification_uri_complete: response.verification_uri_complete().map(|u| u.secret().clone()),
            user_code: response.user_code().secret().clone(),
            expires_in,
            interval: response.interval().as_secs().max(1),
            handle: String::new(),
        };
        let handle = DeviceHandle { response, expires: chrono::Utc::now().timestamp() + expires_in as i64 };
        let sealed = sealer.seal_for(DEVICE_PURPOSE, &serde_json::to_vec(&handle).map_err(ApiError::internal)?);
        use base64::Engine;
        Ok(SsoDeviceStart { handle: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed), ..start })
    }

    /// Waits (up to `DEVICE_WAIT`) for the person to finish the device sign-in.
    pub async fn device_poll(&self, sealer: &crate::crypto::Sealer, handle: &str) -> ApiResult<Identity> {
        use base64::Engine;
        let handle: DeviceHandle = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(handle.trim())
            .ok()
            .and_then(|b| sealer.open_for(DEVICE_PURPOSE, &b))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::invalid("handle is not one this server gave out"))?;
        let left = handle.expires - chrono::Utc::now().timestamp();
        if left <= 0 {
            return Err(refused("the sign-in code expired: run `kodel login --sso` again"));
        }
        let p = self.provider().await?;
        let client = self.client(&p)?;
        let http = Http(self.http.clone());
        let wait = DEVICE_WAIT.min(Duration::from_secs(left as u64));
        let result = client
            .exchange_device_access_token(&handle.response)
            .map_err(unavailable)?
            .request_async(&http, tokio::time::sleep, Some(wait))
            .await;
        match result {
            Ok(tokens) => {
                let id_token = tokens.id_token().ok_or_else(|| unavailable("its answer has no ID token"))?;
                self.check(id_token, NoNonce).await
            }
            Err(openidconnect::RequestTokenError::ServerResponse(e)) => match e.error() {
                openidconnect::DeviceCodeErrorResponseType::ExpiredToken if handle.expires > chrono::Utc::now().timestamp() => {
                    Err(ApiError::new(ErrorCode::AuthorizationPending, "not signed in at the provider yet"))
                }
                other => Err(refused(format!("the provider refused: {}", serde_json::to_value(other).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()))),
            },
            Err(e) => Err(unavailable(token_error(&e))),
        }
    }

    /// The Kodel user of a verified identity: linked before, or linked now by an email
    /// the provider verified, or made now (when allowed, and only for a verified email:
    /// an unverified one could be someone else's address, whose owner would later be
    /// linked to the account a squatter made). At an identity's first sign-in it joins
    /// the orgs of the configured claim; later changes to memberships are the org
    /// admins' (a removal is not undone by the next sign-in).
    pub async fn user_of(&self, conn: &mut PgConnection, id: &Identity) -> ApiResult<Uuid> {
        let linked: Option<Uuid> = sqlx::query_scalar(
            "UPDATE oidc_identities SET last_login_at = now(), email = coalesce($3, email) WHERE issuer = $1 AND subject = $2 RETURNING user_id",
        )
        .bind(&id.issuer)
        .bind(&id.subject)
        .bind(&id.email)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(user) = linked {
            return Ok(user);
        }
        let email = id.email.clone().ok_or_else(|| refused("the provider gave no email for this identity, so no account can be linked or made"))?;
        if !id.email_verified {
            return Err(refused("the identity provider has not verified this email, so no account is linked to it or made for it"));
        }
        let existing: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1").bind(&email).fetch_optional(&mut *conn).await?;
        let user = match existing {
            Some(user) => user,
            None if !self.config.auto_create => {
                return Err(refused("no Kodel account is linked to this identity; ask an administrator to create yours"));
            }
            None => {
                let user = Uuid::now_v7();
                let name = id.name.clone().unwrap_or_else(|| email.split('@').next().unwrap_or(&email).to_owned());
                let made = sqlx::query("INSERT INTO users (id, email, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(user)
                    .bind(&email)
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                if made.rows_affected() == 0 {
                    return Err(refused("this account was being made by another sign-in at the same moment: sign in again"));
                }
                tracing::info!(user = %user, "made an account at its first single sign-on");
                user
            }
        };
        let linked = sqlx::query("INSERT INTO oidc_identities (issuer, subject, user_id, email) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&id.issuer)
            .bind(&id.subject)
            .bind(user)
            .bind(&email)
            .execute(&mut *conn)
            .await?;
        if linked.rows_affected() == 0 {
            return Err(refused("this identity was being linked by another sign-in at the same moment: sign in again"));
        }
        if !id.orgs.is_empty() {
            sqlx::query(
                "INSERT INTO org_members (org_id, user_id, role)
                 SELECT o.id, $1, 'member' FROM orgs o WHERE o.slug = ANY($2) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(&id.orgs)
            .execute(&mut *conn)
            .await?;
        }
        Ok(user)
    }
}

/// The device flow's ID token carries no nonce (none was sent).
#[derive(Clone, Copy)]
struct NoNonce;

impl NonceVerifier for NoNonce {
    fn verify(self, _: Option<&Nonce>) -> Result<(), String> {
        Ok(())
    }
}

/// A JWT's payload as JSON (read only after its signature was checked).
fn payload(jwt: &str) -> Option<Value> {
    use base64::Engine;
    let part = jwt.split('.').nth(1)?;
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn token_error<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(e: &openidconnect::RequestTokenError<RE, T>) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => r.to_string(),
        other => other.to_string(),
    }
}
