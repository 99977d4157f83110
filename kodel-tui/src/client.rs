//! The API client: bearer auth, one transparent refresh on an expired access token,
//! and server errors turned into exit codes with their message.

use std::time::Duration;

use kodel_core::error::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Credentials;
use crate::exit::{self, CliError};

pub struct Client {
    http: reqwest::Client,
    pub server: String,
    creds: Option<Credentials>,
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
        Ok(Self { http, server: server.trim_end_matches('/').to_owned(), creds, ephemeral })
    }

    /// Another client with the same server and credentials (for the TUI's tasks).
    pub fn fork(&self) -> Client {
        Client { http: self.http.clone(), server: self.server.clone(), creds: self.creds.clone(), ephemeral: self.ephemeral }
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.creds.as_ref()
    }

    pub fn set_credentials(&mut self, creds: Credentials) {
        self.creds = Some(creds);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, CliError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&mut self, path: &str, body: Value) -> Result<T, CliError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(&mut self, path: &str, body: Value) -> Result<T, CliError> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// Sends a request; on 401 with a refresh token, refreshes once and retries.
    pub async fn send<T: DeserializeOwned>(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<T, CliError> {
        let resp = self.authed(method, path, body).await?;
        decode(resp).await
    }

    /// A request as is (for streams), after one refresh of an expired access token.
    pub async fn authed(&mut self, method: Method, path: &str, body: Option<Value>) -> Result<reqwest::Response, CliError> {
        let resp = self.raw(method.clone(), path, body.clone()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && self.refresh().await? { self.raw(method, path, body).await } else { Ok(resp) }
    }

    /// A request as is, without error mapping (for streams).
    pub async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Result<reqwest::Response, CliError> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = self.creds.as_ref().and_then(Credentials::bearer) {
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

    /// Trades the refresh token for a new pair and saves it. False if there is none.
    async fn refresh(&mut self) -> Result<bool, CliError> {
        let Some(creds) = self.creds.as_ref() else { return Ok(false) };
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
        let mut creds = creds.clone();
        creds.access_token = Some(pair.access_token);
        creds.refresh_token = Some(pair.refresh_token);
        if !self.ephemeral {
            creds.save(&self.server)?;
        }
        self.creds = Some(creds);
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
