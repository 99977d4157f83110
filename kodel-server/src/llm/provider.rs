//! What every provider client shares: which provider, where it is, how long to wait,
//! the events a streamed call produces, and the retry policy (429 / 5xx / connect
//! errors before the first byte, with backoff honouring `Retry-After`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kodel_core::llm::{Delta, FinishReason, LlmRequest, Usage};
pub use kodel_core::llm::{MaxTokensField, WireSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    OpenRouter,
    Ollama,
    Anthropic,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::OpenRouter => "openrouter",
            Self::Ollama => "ollama",
            Self::Anthropic => "anthropic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(Self::OpenAi),
            "openrouter" => Some(Self::OpenRouter),
            "ollama" => Some(Self::Ollama),
            "anthropic" => Some(Self::Anthropic),
            _ => None,
        }
    }

    /// The public endpoint, used when a config leaves `base_url` empty. OpenAI-compatible
    /// bases include `/v1`; Anthropic's does not (the client appends `/v1/messages`).
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::OpenAi => "https://api.openai.com/v1",
            Self::OpenRouter => "https://openrouter.ai/api/v1",
            Self::Ollama => "http://localhost:11434/v1",
            Self::Anthropic => "https://api.anthropic.com",
        }
    }
}

/// Where a provider is, how to authenticate, and how to speak to it. `Debug` never
/// shows the key.
#[derive(Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<String>,
    pub wire: WireSettings,
}

/// The settings a call uses, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub stream: bool,
    pub max_tokens_field: MaxTokensField,
    pub tool_choice: bool,
}

impl ProviderConfig {
    /// `base_url` without a trailing slash, or the provider's public endpoint.
    pub(crate) fn base(&self) -> String {
        let base = self.base_url.trim().trim_end_matches('/');
        if base.is_empty() { self.kind.default_base_url().to_owned() } else { base.to_owned() }
    }

    /// How to speak to it: the settings, else the defaults that work for the provider.
    /// `max_completion_tokens` only for OpenAI's own API; any other OpenAI-compatible
    /// server (llama.cpp, vLLM, a proxy) reads `max_tokens`.
    pub fn wire(&self) -> Wire {
        let openai_itself = self.kind == ProviderKind::OpenAi && self.base().starts_with("https://api.openai.com");
        Wire {
            stream: self.wire.stream.unwrap_or(true),
            max_tokens_field: self.wire.max_tokens_field.unwrap_or(if openai_itself {
                MaxTokensField::MaxCompletionTokens
            } else {
                MaxTokensField::MaxTokens
            }),
            tool_choice: self.wire.tool_choice.unwrap_or(true),
        }
    }

    /// The key, if one is set and not empty.
    pub(crate) fn key(&self) -> Option<&str> {
        self.api_key.as_deref().filter(|k| !k.is_empty())
    }
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("wire", &self.wire)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Longest wait for the answer to begin: the response headers of one attempt and
    /// the first piece of a streamed answer (a CPU server reads a long prompt first).
    pub first_token_timeout: Duration,
    /// Longest silence between two pieces of a streamed answer.
    pub timeout: Duration,
    /// Retries after the first attempt (429, 5xx and connect errors only).
    pub max_retries: u32,
    /// Cap on one sleep between attempts (`Retry-After` or backoff).
    pub max_retry_wait: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            first_token_timeout: Duration::from_secs(600),
            timeout: Duration::from_secs(120),
            max_retries: 3,
            max_retry_wait: Duration::from_secs(30),
        }
    }
}

/// One piece of a streamed call. `Usage` carries the call's totals and comes once, near
/// the end (after `Finish`); a provider that reports no usage sends none.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Delta(Delta),
    Usage(Usage),
    Finish(FinishReason),
}

/// A failed call or a stream that broke. `message` is safe to show: it never contains
/// the API key. `retryable`: trying the same call again later may succeed.
/// `unreachable`: nothing answered at the provider's address. `over_budget`: the call
/// was not made, a budget being spent (`analytics::budgets`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct LlmError {
    pub message: String,
    pub status: Option<u16>,
    pub retryable: bool,
    pub unreachable: bool,
    pub over_budget: bool,
}

impl LlmError {
    pub fn new(message: impl Into<String>, status: Option<u16>, retryable: bool) -> Self {
        Self { message: message.into(), status, retryable, unreachable: false, over_budget: false }
    }

    /// Removes every occurrence of `key` from the message.
    pub(crate) fn redact(mut self, key: Option<&str>) -> Self {
        if let Some(key) = key.filter(|k| !k.is_empty())
            && self.message.contains(key)
        {
            self.message = self.message.replace(key, "[redacted]");
        }
        self
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

/// Starts a call, streamed or not (`ProviderConfig::wire`); either way the answer
/// comes as events. 429 and 5xx (and connect errors) BEFORE the first byte are retried
/// up to `max_retries` with backoff, honouring `Retry-After` (seconds or HTTP date)
/// capped at `max_retry_wait`; other 4xx fail at once with the provider's error message
/// (never the API key). No response headers within `opts.first_token_timeout`: an error
/// (retryable, not retried here). A failure mid-stream is an `Err` item in the stream,
/// after which the stream ends; so is a silence longer than `opts.first_token_timeout`
/// before the first piece or `opts.timeout` after it. A stream that ends with nothing
/// in it is asked once more without streaming (some servers report errors that way).
pub async fn stream(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let whole = || async {
        match cfg.kind {
            ProviderKind::Anthropic => super::anthropic::whole(http, cfg, model, system, req, opts).await,
            _ => super::openai::whole(http, cfg, model, system, req, opts).await,
        }
    };
    let stream = if cfg.wire().stream {
        let streamed = match cfg.kind {
            ProviderKind::Anthropic => super::anthropic::streamed(http, cfg, model, system, req, opts).await,
            _ => super::openai::streamed(http, cfg, model, system, req, opts).await,
        };
        match streamed {
            Ok(s) => unless_empty(s, whole).await,
            Err(e) => Err(e),
        }
    } else {
        whole().await
    };
    // Whatever a provider echoes back, its key never reaches a message.
    let key = cfg.key().map(str::to_owned);
    let stream = stream.map_err(|e| e.redact(key.as_deref()))?;
    Ok(Box::pin(stream.map(move |item| item.map_err(|e| e.redact(key.as_deref())))))
}

/// The most a whole (not streamed) answer may take.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A whole response body, at most `MAX_ANSWER_BYTES`, within `within`.
pub(crate) async fn read_body(kind: ProviderKind, mut response: reqwest::Response, within: Duration) -> Result<Vec<u8>, LlmError> {
    let name = kind.name();
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(kind, "lost the connection to", &e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(LlmError::new(format!("{name} answered with more than {} MiB", MAX_ANSWER_BYTES >> 20), None, false));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| LlmError::new(format!("{name} sent no whole answer within {} s (KODEL_LLM_FIRST_TOKEN_TIMEOUT)", within.as_secs_f64()), None, true))?
}

/// A finished answer (a call made without streaming) as the events of a stream.
pub(crate) fn answered(events: Vec<StreamEvent>) -> EventStream {
    Box::pin(futures::stream::iter(events.into_iter().map(Ok)))
}

/// The message of a stream that ended before anything was in it.
pub(crate) const EMPTY_STREAM: &str = "the stream ended before anything was in it";

/// `stream`, unless it ends before its first event: then `fallback()`, the same call
/// without streaming. Waits for the first event (or the end) before returning.
async fn unless_empty<F, Fut>(mut stream: EventStream, fallback: F) -> Result<EventStream, LlmError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<EventStream, LlmError>>,
{
    match stream.next().await {
        Some(Err(e)) if e.message == EMPTY_STREAM => {
            tracing::info!("the provider sent an empty stream; asking again without streaming");
            fallback().await
        }
        None => fallback().await,
        Some(first) => Ok(Box::pin(futures::stream::once(async { first }).chain(stream))),
    }
}

// ---------------------------------------------------------------------------------------
// Retry policy, shared by both clients.

/// First backoff step; doubled per attempt, capped by `max_retry_wait`.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Error bodies longer than this are cut in messages.
const MAX_ERROR_TEXT: usize = 1_000;

/// Sends (via `send`, called once per attempt) until a 2xx response, retrying 429, 5xx
/// and retryable transport errors. Each attempt must produce response headers within
/// `opts.timeout`.
pub(crate) async fn send_with_retry<F, Fut>(
    kind: ProviderKind,
    key: Option<&str>,
    opts: &CallOptions,
    mut send: F,
) -> Result<reqwest::Response, LlmError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<reqwest::Response, LlmError>>,
{
    let mut attempt = 0u32;
    loop {
        let (err, wait) = match tokio::time::timeout(opts.first_token_timeout, send()).await {
            Err(_) => {
                let message = format!(
                    "{} sent no response within {} s (KODEL_LLM_FIRST_TOKEN_TIMEOUT)",
                    kind.name(),
                    opts.first_token_timeout.as_secs_f64()
                );
                return Err(LlmError::new(message, None, true));
            }
            Ok(Err(e)) => (e.redact(key), None),
            Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
            Ok(Ok(resp)) => {
                let status = resp.status();
                let wait = retry_after(resp.headers());
                let body = match tokio::time::timeout(opts.timeout, resp.bytes()).await {
                    Ok(Ok(b)) => b.to_vec(),
                    _ => Vec::new(),
                };
                (error_from_body(kind, status.as_u16(), &body).redact(key), wait)
            }
        };
        if !err.retryable || attempt >= opts.max_retries {
            return Err(err);
        }
        let wait = wait.unwrap_or_else(|| backoff(attempt)).min(opts.max_retry_wait);
        tracing::info!(provider = kind.name(), attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %err, "retrying LLM call");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// Exponential backoff with ±20 % jitter: 0.5 s, 1 s, 2 s, ...
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16));
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// How long a 429 / 503 asks to wait: `retry-after-ms` (OpenAI), else `Retry-After` as
/// seconds or as an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(86_400.0)));
    }
    let value = get("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = (date.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds().max(0);
    Some(Duration::from_millis(ms as u64))
}

/// The error a non-2xx response stands for, with the provider's own message. A 4xx
/// (but 408 and 429) is a refusal: asking again will not help.
pub(crate) fn error_from_body(kind: ProviderKind, status: u16, body: &[u8]) -> LlmError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let detail = json.as_ref().and_then(provider_message).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("no details").to_owned()
        } else {
            cut(text)
        }
    });
    // An exhausted quota looks like a rate limit (429) but waiting does not help.
    let no_quota = json.as_ref().is_some_and(|j| {
        let e = &j["error"];
        e["code"] == "insufficient_quota" || e["type"] == "insufficient_quota"
    });
    let name = kind.name();
    let (message, retryable) = match status {
        429 if no_quota => (format!("the provider refused the request: {detail} ({name}, HTTP 429)"), false),
        429 => (format!("{name} is rate limiting (HTTP 429): {detail}"), true),
        408 => (format!("{name} timed out (HTTP 408): {detail}"), true),
        400..=499 => (format!("the provider refused the request: {detail} ({name}, HTTP {status})"), false),
        _ => (format!("{name} failed (HTTP {status}): {detail}"), (500..600).contains(&status)),
    };
    LlmError::new(message, Some(status), retryable)
}

/// `error.message` (OpenAI, Anthropic, OpenRouter), `error` as text (Ollama), `message`.
pub(crate) fn provider_message(json: &serde_json::Value) -> Option<String> {
    let text = json["error"]["message"]
        .as_str()
        .or_else(|| json["error"].as_str())
        .or_else(|| json["message"].as_str())
        .or_else(|| json["detail"].as_str())?;
    Some(cut(text))
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A transport failure (connect, reset, body): retryable unless the request itself was
/// malformed, or nothing answered at the address (refused, or no such host): that
/// needs someone to start the provider or fix its URL, which no retry does. A timeout,
/// a temporary DNS failure, a network that is down or a TLS failure stay retryable.
pub(crate) fn transport_error(kind: ProviderKind, what: &str, e: &reqwest::Error) -> LlmError {
    let nobody_there = e.is_connect() && !e.is_timeout() && nobody_answers(e);
    LlmError { unreachable: nobody_there, ..LlmError::new(format!("{what} {}: {}", kind.name(), error_chain(e)), None, !e.is_builder() && !nobody_there) }
}

/// The connection was refused, or the host name definitely does not exist (not the
/// resolver's "temporary failure").
fn nobody_answers(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        let text = s.to_string();
        if text.contains("Name or service not known") || text.contains("No address associated with hostname") || text.contains("nodename nor servname provided") {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its sources, `a: b: c` (reqwest's own message hides the cause).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source
        && depth < 8
    {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
        depth += 1;
    }
    text
}

// ---------------------------------------------------------------------------------------
// Turning a provider's stream into `StreamEvent`s.

/// Maps a provider's stream items (chunks, SSE events) to `StreamEvent`s.
pub(crate) trait Decoder: Send + 'static {
    type Item: Send;

    /// Adds the events `item` stands for to `out`. `Ok(true)`: the provider's end marker;
    /// nothing more is read. `Err`: the stream broke (reported after `out`).
    fn decode(&mut self, item: Self::Item, out: &mut VecDeque<StreamEvent>) -> Result<bool, LlmError>;

    /// The source ended without an end marker: `Err` unless that is normal.
    fn end_of_input(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError>;
}

struct Driver<S, D> {
    source: S,
    decoder: D,
    /// The wait for the first event, then for each item after it.
    first: Duration,
    idle: Duration,
    started: bool,
    kind: ProviderKind,
    key: Option<String>,
    pending: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    done: bool,
}

/// The `EventStream` of `source` decoded by `decoder`: ends after the end marker or the
/// first error, and with an error after `opts.first_token_timeout` without an event at
/// the start, `opts.timeout` without an item after it.
pub(crate) fn drive<S, D>(source: S, decoder: D, opts: &CallOptions, kind: ProviderKind, key: Option<&str>) -> EventStream
where
    S: Stream<Item = Result<D::Item, LlmError>> + Send + Unpin + 'static,
    D: Decoder,
{
    let driver = Driver {
        source,
        decoder,
        first: opts.first_token_timeout,
        idle: opts.timeout,
        started: false,
        kind,
        key: key.map(str::to_owned),
        pending: VecDeque::new(),
        error: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(driver, |mut d| async move {
        loop {
            if let Some(event) = d.pending.pop_front() {
                d.started = true;
                return Some((Ok(event), d));
            }
            if let Some(err) = d.error.take() {
                return Some((Err(err.redact(d.key.as_deref())), d));
            }
            if d.done {
                return None;
            }
            let wait = if d.started { d.idle } else { d.first };
            match tokio::time::timeout(wait, d.source.next()).await {
                Err(_) => {
                    d.done = true;
                    let message = if d.started {
                        format!("{} sent nothing for {} s; gave up on the stream (KODEL_LLM_TIMEOUT)", d.kind.name(), wait.as_secs_f64())
                    } else {
                        format!("{} sent no answer within {} s (KODEL_LLM_FIRST_TOKEN_TIMEOUT)", d.kind.name(), wait.as_secs_f64())
                    };
                    d.error = Some(LlmError::new(message, None, true));
                }
                Ok(None) => {
                    d.done = true;
                    d.error = d.decoder.end_of_input(&mut d.pending).err();
                }
                Ok(Some(Err(e))) => {
                    d.done = true;
                    d.error = Some(e);
                }
                Ok(Some(Ok(item))) => match d.decoder.decode(item, &mut d.pending) {
                    Ok(end) => d.done = end,
                    Err(e) => {
                        d.done = true;
                        d.error = Some(e);
                    }
                },
            }
        }
    }))
}
