//! The API client: bearer auth, one transparent refresh on an expired access token,
//! and server errors turned into exit codes with their message.
//!
//! Clones share their credentials: the TUI's tasks each hold one, and a token one of
//! them refreshed is the token all of them send next.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kodel_core::error::ErrorBody;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Credentials;
use crate::exit::{self, CliError};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub server: String,
    creds: Arc<Mutex<Option<Credentials>>>,
    /// Held while a refresh is under way: a refresh token works once (a second use ends
    /// the session), so requests that met an expired token together refresh it once.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    /// Set when the token came from KODEL_TOKEN: nothing is saved then.
    ephemeral: bool,
}

impl Client {
    pub fn new(server: &str, creds: Option<Credentials>, ephemeral: bool) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("kodel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            creds: Arc::new(Mutex::new(creds)),
            refreshing: Arc::default(),
            ephemeral,
        })
    }

    pub fn credentials(&self) -> Option<Credentials> {
        self.creds.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set_credentials(&self, creds: Credentials) {
        *self.creds.lock().unwrap_or_else(PoisonError::into_inner) = Some(creds);
    }

    fn bearer(&self) -> Option<String> {
        self.creds.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(Credentials::bearer).map(str::to_owned)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, CliError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T, CliError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// Sends a request; on 401 with a refresh token, refreshes once and retries.
    pub async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T, CliError> {
        let resp = self.authed(method, path, body).await?;
        decode(resp).await
    }

    /// A request as is (for streams), after one refresh of an expired access token.
    pub async fn authed(&self, method: Method, path: &str, body: Option<Value>) -> Result<reqwest::Response, CliError> {
        self.authed_with(method, path, body, HeaderMap::new()).await
    }

    /// [`Client::authed`] with more headers (a stream's `Last-Event-ID`).
    pub async fn authed_with(&self, method: Method, path: &str, body: Option<Value>, headers: HeaderMap) -> Result<reqwest::Response, CliError> {
        let sent = self.bearer();
        let resp = self.raw_with(method.clone(), path, body.clone(), headers.clone()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && self.refresh(sent.as_deref()).await? { self.raw_with(method, path, body, headers).await } else { Ok(resp) }
    }

    /// A request as is, without error mapping (for streams).
    pub async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Result<reqwest::Response, CliError> {
        self.raw_with(method, path, body, HeaderMap::new()).await
    }

    async fn raw_with(&self, method: Method, path: &str, body: Option<Value>, headers: HeaderMap) -> Result<reqwest::Response, CliError> {
        let mut req = self.http.request(method, self.url(path)).headers(headers);
        if let Some(token) = self.bearer() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        let what = if e.is_timeout() { "timed out" } else { "cannot connect" };
        CliError::new(exit::UNAVAILABLE, format!("{what}: {}", self.server))
            .hint("is kodel-server running there? set another with --server or KODEL_SERVER")
    }

    /// After `sent` was refused: trades the refresh token for a new pair and saves it,
    /// unless another request did so meanwhile. False if there is nothing to retry with.
    async fn refresh(&self, sent: Option<&str>) -> Result<bool, CliError> {
        let _one = self.refreshing.lock().await;
        if self.bearer().as_deref() != sent {
            return Ok(true);
        }
        let Some(creds) = self.credentials() else { return Ok(false) };
        let (Some(rt), None) = (creds.refresh_token.clone(), creds.api_token.as_ref()) else { return Ok(false) };
        let resp = self
            .http
            .post(self.url("/api/v1/auth/refresh"))
            .json(&serde_json::json!({ "refresh_token": rt }))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Ok(false);
        }
        let pair: kodel_core::api::TokenPair = decode(resp).await?;
        let mut creds = creds;
        creds.access_token = Some(pair.access_token);
        creds.refresh_token = Some(pair.refresh_token);
        if !self.ephemeral {
            creds.save(&self.server)?;
        }
        self.set_credentials(creds);
        Ok(true)
    }
}

/// The body as `T`, or the server's error as a CliError with the matching exit code.
pub async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, CliError> {
    let status = resp.status();
    let text = resp.text().await.map_err(|e| CliError::new(exit::UNAVAILABLE, format!("connection lost: {e}")))?;
    if status.is_success() {
        let text = if text.is_empty() { "null" } else { &text };
        return serde_json::from_str(text).map_err(|e| CliError::new(exit::FAILURE, format!("unexpected answer from the server: {e}")));
    }
    let code = exit::for_status(status.as_u16());
    let err = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => CliError::new(code, format!("{} ({})", body.error.message, body.error.code)),
        Err(_) => CliError::new(code, format!("server answered {status}")),
    };
    Err(match status {
        StatusCode::UNAUTHORIZED => err.hint("log in again with `kodel login`, or set KODEL_TOKEN"),
        StatusCode::SERVICE_UNAVAILABLE => CliError { code: exit::UNAVAILABLE, ..err },
        _ => err,
    })
}
