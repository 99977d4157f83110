//! The provider clients (OpenAI-compatible and Anthropic) against the scripted provider
//! server: streaming, tool calls, usage, retries, timeouts, and what errors may show.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use kodel_core::llm::{Assembler, Delta, FinishReason, LlmRequest, Message, Role, ToolSpec, Usage};
use kodel_server::llm::provider::{self, CallOptions, EventStream, LlmError, MaxTokensField, ProviderConfig, ProviderKind, StreamEvent, WireSettings};
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm, ScriptedRequest};
use serde_json::{Value, json};

const BOTH: [ProviderKind; 2] = [ProviderKind::OpenAi, ProviderKind::Anthropic];
const KEY: &str = "sk-test-S3CRET-0123456789abcdef";
const SYSTEM: &str = "You are terse.";

fn config(kind: ProviderKind, llm: &ScriptedLlm, key: Option<&str>) -> ProviderConfig {
    let base_url = if kind == ProviderKind::Anthropic { llm.anthropic_base() } else { llm.openai_base() };
    ProviderConfig { kind, base_url, api_key: key.map(str::to_owned), wire: Default::default() }
}

fn opts() -> CallOptions {
    CallOptions { first_token_timeout: Duration::from_secs(5), timeout: Duration::from_secs(5), max_retries: 3, max_retry_wait: Duration::from_millis(50) }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest { messages: vec![Message::text(Role::User, text)], ..Default::default() }
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "read_file".into(),
            description: "Reads a file of the workspace.".into(),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        },
        ToolSpec {
            name: "glob".into(),
            description: "Lists files matching a pattern.".into(),
            parameters: json!({"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]}),
        },
    ]
}

async fn call(kind: ProviderKind, llm: &ScriptedLlm, req: &LlmRequest, opts: &CallOptions) -> Result<EventStream, LlmError> {
    provider::stream(&http(), &config(kind, llm, Some(KEY)), "test-model", SYSTEM, req, opts).await
}

/// Everything a stream produced, read to its end (20 s at most).
struct Outcome {
    events: Vec<StreamEvent>,
    error: Option<LlmError>,
}

impl Outcome {
    async fn of(mut stream: EventStream) -> Self {
        let mut events = Vec::new();
        let mut error: Option<LlmError> = None;
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(item) = stream.next().await {
                assert!(error.is_none(), "an item after the error: {item:?}");
                match item {
                    Ok(e) => events.push(e),
                    Err(e) => error = Some(e),
                }
            }
        })
        .await
        .expect("the stream ends");
        Self { events, error }
    }

    fn message(&self) -> Message {
        let mut a = Assembler::default();
        for e in &self.events {
            if let StreamEvent::Delta(d) = e {
                a.push(d);
            }
        }
        a.finish()
    }

    fn text_pieces(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Delta(Delta::Text { text }) => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// Tool call deltas that carry a piece of arguments, per call index.
    fn argument_pieces(&self, index: u32) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Delta(Delta::ToolCall { index: i, arguments, .. }) if *i == index && !arguments.is_empty()))
            .count()
    }

    fn finishes(&self) -> Vec<FinishReason> {
        self.events.iter().filter_map(|e| if let StreamEvent::Finish(f) = e { Some(*f) } else { None }).collect()
    }

    fn usages(&self) -> Vec<Usage> {
        self.events.iter().filter_map(|e| if let StreamEvent::Usage(u) = e { Some(*u) } else { None }).collect()
    }

    /// The one usage, which comes after the finish.
    fn usage(&self) -> Usage {
        let usages = self.usages();
        assert_eq!(usages.len(), 1, "one usage event: {:?}", self.events);
        let at_usage = self.events.iter().position(|e| matches!(e, StreamEvent::Usage(_))).unwrap();
        let at_finish = self.events.iter().position(|e| matches!(e, StreamEvent::Finish(_))).unwrap();
        assert!(at_finish < at_usage, "finish, then usage: {:?}", self.events);
        usages[0]
    }

    fn ok(self) -> Self {
        assert!(self.error.is_none(), "stream failed: {:?}", self.error);
        self
    }
}

/// The scripted server's input count for a request: body bytes / 4.
fn scripted_input(r: &ScriptedRequest) -> u64 {
    (serde_json::to_vec(&r.body).unwrap().len() as u64 / 4).max(1)
}

#[tokio::test]
async fn text_streams_and_assembles() {
    for kind in BOTH {
        let text = "Hello there, how can I help you today?";
        let llm = ScriptedLlm::start(vec![Reply::Text(text.into())]).await;
        let req = LlmRequest { temperature: Some(0.2), max_tokens: Some(100), ..ask("Say hello") };
        let out = Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();

        let pieces = out.text_pieces();
        assert!(pieces.len() >= 5, "{kind:?}: text comes in pieces: {pieces:?}");
        let message = out.message();
        assert_eq!(message.content, text, "{kind:?}");
        assert!(message.tool_calls.is_empty());
        assert_eq!(out.finishes(), vec![FinishReason::Stop], "{kind:?}");

        let requests = llm.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        let usage = out.usage();
        // First turn: nothing read from the cache. Anthropic wrote a quarter of the input
        // to the cache, which counts as input too.
        assert_eq!(usage, Usage { input_tokens: scripted_input(r), output_tokens: pieces.len() as u64, cached_tokens: 0 }, "{kind:?}");

        let body = &r.body;
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6, "{kind:?}: {body}");
        assert!(body.get("tools").is_none(), "{kind:?}: no tools, no tools field");
        match kind {
            ProviderKind::Anthropic => {
                assert_eq!(r.format, "anthropic");
                assert_eq!(body["system"], SYSTEM);
                assert_eq!(body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]));
                assert_eq!(body["max_tokens"], 100);
                assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(r.header("x-api-key"), Some(KEY));
                assert!(r.header("content-type").unwrap().starts_with("application/json"));
            }
            _ => {
                assert_eq!(r.format, "openai");
                assert_eq!(body["messages"], json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Say hello"}]));
                assert_eq!(body["stream_options"]["include_usage"], true);
                // Not OpenAI's own API: the field every compatible server reads.
                assert_eq!(body["max_tokens"], 100);
                assert!(body.get("max_completion_tokens").is_none());
                assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
            }
        }
        assert!(!llm.exhausted());
    }
}

#[tokio::test]
async fn tool_calls_round_trip() {
    for kind in BOTH {
        let calls = vec![
            ("read_file".to_owned(), json!({"path": "src/main.rs"})),
            ("glob".to_owned(), json!({"pattern": "**/*.rs", "limit": 20})),
        ];
        let llm = ScriptedLlm::start(vec![Reply::TextAndTools("Let me look.".into(), calls.clone()), Reply::Text("Done.".into())]).await;
        let mut req = LlmRequest { tools: tools(), ..ask("What is in this project?") };
        let out = Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();

        let message = out.message();
        assert_eq!(message.content, "Let me look.", "{kind:?}");
        assert_eq!(message.tool_calls.len(), 2, "{kind:?}: {message:?}");
        for (i, (call, (name, args))) in message.tool_calls.iter().zip(&calls).enumerate() {
            assert_eq!(&call.name, name);
            let prefix = if kind == ProviderKind::Anthropic { "toolu_" } else { "call_" };
            assert!(call.id.starts_with(prefix), "{kind:?}: the provider's id, {}", call.id);
            assert!(out.argument_pieces(i as u32) > 2, "{kind:?}: arguments come in pieces");
            let parsed: Value = serde_json::from_str(&call.arguments).unwrap();
            assert_eq!(&parsed, args, "{kind:?}");
        }
        assert_ne!(message.tool_calls[0].id, message.tool_calls[1].id);
        assert_eq!(out.finishes(), vec![FinishReason::ToolCalls], "{kind:?}");
        let first_usage = out.usage();
        let content_pieces = out.text_pieces().len() + out.argument_pieces(0) + out.argument_pieces(1);
        assert_eq!(first_usage.output_tokens, content_pieces as u64, "{kind:?}");

        // The tool results go back; the follow-up turn is half cached.
        req.messages.push(message.clone());
        req.messages.push(Message::tool_result(&message.tool_calls[0].id, "fn main() {}"));
        req.messages.push(Message::tool_result(&message.tool_calls[1].id, "src/main.rs"));
        let out = Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();
        assert_eq!(out.message().content, "Done.");
        let requests = llm.requests();
        assert_eq!(requests.len(), 2);
        let input = scripted_input(&requests[1]);
        assert_eq!(out.usage().input_tokens, input, "{kind:?}");
        assert_eq!(out.usage().cached_tokens, input / 2, "{kind:?}");
        assert!(out.usage().cached_tokens > 0);

        let body = &requests[1].body;
        let (id0, id1) = (&message.tool_calls[0].id, &message.tool_calls[1].id);
        match kind {
            ProviderKind::Anthropic => {
                assert_eq!(
                    body["tools"][0],
                    json!({"name": "read_file", "description": "Reads a file of the workspace.", "input_schema": tools()[0].parameters})
                );
                assert_eq!(body["tools"].as_array().unwrap().len(), 2);
                assert_eq!(body["system"], SYSTEM);
                assert_eq!(
                    body["messages"],
                    json!([
                        {"role": "user", "content": [{"type": "text", "text": "What is in this project?"}]},
                        {"role": "assistant", "content": [
                            {"type": "text", "text": "Let me look."},
                            {"type": "tool_use", "id": id0, "name": "read_file", "input": {"path": "src/main.rs"}},
                            {"type": "tool_use", "id": id1, "name": "glob", "input": {"pattern": "**/*.rs", "limit": 20}},
                        ]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": id0, "content": "fn main() {}"},
                            {"type": "tool_result", "tool_use_id": id1, "content": "src/main.rs"},
                        ]},
                    ])
                );
            }
            _ => {
                assert_eq!(
                    body["tools"][1],
                    json!({"type": "function", "function": {"name": "glob", "description": "Lists files matching a pattern.", "parameters": tools()[1].parameters}})
                );
                let messages = body["messages"].as_array().unwrap();
                assert_eq!(messages.len(), 5, "{body}");
                assert_eq!(messages[0], json!({"role": "system", "content": SYSTEM}));
                assert_eq!(messages[2]["role"], "assistant");
                assert_eq!(messages[2]["content"], "Let me look.");
                assert_eq!(
                    messages[2]["tool_calls"],
                    json!([
                        {"id": id0, "type": "function", "function": {"name": "read_file", "arguments": message.tool_calls[0].arguments}},
                        {"id": id1, "type": "function", "function": {"name": "glob", "arguments": message.tool_calls[1].arguments}},
                    ])
                );
                assert_eq!(messages[3], json!({"role": "tool", "content": "fn main() {}", "tool_call_id": id0}));
                assert_eq!(messages[4], json!({"role": "tool", "content": "src/main.rs", "tool_call_id": id1}));
            }
        }
        assert!(!llm.exhausted());
    }
}

#[tokio::test]
async fn tool_only_replies_and_the_length_limit() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![
            Reply::ToolCalls(vec![("glob".into(), json!({"pattern": "*.toml"}))]),
            Reply::Text("This answer is longer than three pieces.".into()),
        ])
        .await;
        let req = LlmRequest { tools: tools(), ..ask("Find the manifest") };
        let out = Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();
        let message = out.message();
        assert_eq!(message.content, "", "{kind:?}");
        assert_eq!(message.tool_calls.len(), 1);
        assert_eq!(message.tool_calls[0].name, "glob");
        assert_eq!(serde_json::from_str::<Value>(&message.tool_calls[0].arguments).unwrap(), json!({"pattern": "*.toml"}));
        assert_eq!(out.finishes(), vec![FinishReason::ToolCalls]);

        let req = LlmRequest { max_tokens: Some(3), ..ask("Talk") };
        let out = Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();
        assert_eq!(out.message().content, "This answer ", "{kind:?}");
        assert_eq!(out.finishes(), vec![FinishReason::Length], "{kind:?}");
        assert_eq!(out.usage().output_tokens, 3);
    }
}

#[tokio::test]
async fn retry_after_429_is_honoured() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![
            Reply::Status { code: 429, retry_after: Some(1), body: "Rate limit reached, try again in 1s.".into() },
            Reply::Text("ok".into()),
        ])
        .await;
        let opts = CallOptions { max_retry_wait: Duration::from_secs(5), ..opts() };
        let started = Instant::now();
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts).await.unwrap()).await.ok();
        let waited = started.elapsed();
        assert_eq!(out.message().content, "ok");
        assert!(waited >= Duration::from_millis(995), "{kind:?}: waited {waited:?}");
        assert!(waited < Duration::from_secs(3), "{kind:?}: waited {waited:?}");
        assert_eq!(llm.requests().len(), 2, "{kind:?}: retried exactly once");
    }
}

#[tokio::test]
async fn retry_after_is_capped_by_max_retry_wait() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![
            Reply::Status { code: 429, retry_after: Some(600), body: "Slow down.".into() },
            Reply::Text("ok".into()),
        ])
        .await;
        let opts = CallOptions { max_retry_wait: Duration::from_millis(200), ..opts() };
        let started = Instant::now();
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts).await.unwrap()).await.ok();
        assert_eq!(out.message().content, "ok");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(3), "{kind:?}: waited {waited:?}");
        assert_eq!(llm.requests().len(), 2);
    }
}

#[tokio::test]
async fn server_errors_are_retried() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![
            Reply::Status { code: 500, retry_after: None, body: "The server had an error.".into() },
            Reply::Status { code: 503, retry_after: None, body: "Unavailable.".into() },
            Reply::Text("finally".into()),
        ])
        .await;
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts()).await.unwrap()).await.ok();
        assert_eq!(out.message().content, "finally", "{kind:?}");
        assert_eq!(llm.requests().len(), 3);
        // The same request each time.
        let requests = llm.requests();
        assert_eq!(requests[0].body, requests[2].body);
    }
}

#[tokio::test]
async fn server_errors_beyond_max_retries_fail() {
    for kind in BOTH {
        let status = |n: u32| Reply::Status { code: 500, retry_after: None, body: format!("Internal error number {n}.") };
        let llm = ScriptedLlm::start(vec![status(1), status(2), status(3), Reply::Text("too late".into())]).await;
        let opts = CallOptions { max_retries: 2, ..opts() };
        let err = call(kind, &llm, &ask("hi"), &opts).await.err().expect("an error");
        assert_eq!(err.status, Some(500), "{kind:?}: {err:?}");
        assert!(err.retryable);
        assert!(err.message.contains("Internal error number 3."), "{kind:?}: the last error: {}", err.message);
        assert_eq!(llm.requests().len(), 3, "{kind:?}: the first attempt and two retries");
        assert_eq!(llm.remaining(), 1);
    }
}

#[tokio::test]
async fn client_errors_fail_at_once() {
    for kind in BOTH {
        let message = "Invalid value for 'model': 'test-model' does not exist.";
        let llm = ScriptedLlm::start(vec![
            Reply::Status { code: 400, retry_after: None, body: message.into() },
            Reply::Text("not asked".into()),
        ])
        .await;
        let err = call(kind, &llm, &ask("hi"), &opts()).await.err().expect("an error");
        assert_eq!(err.status, Some(400), "{kind:?}");
        assert!(!err.retryable);
        assert!(err.message.contains(message), "{kind:?}: {}", err.message);
        assert_eq!(llm.requests().len(), 1, "{kind:?}: no retry");
        assert_eq!(llm.remaining(), 1);
    }
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let body = json!({"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
    let llm = ScriptedLlm::start(vec![Reply::Status { code: 429, retry_after: Some(1), body: body.to_string() }]).await;
    let err = call(ProviderKind::OpenAi, &llm, &ask("hi"), &opts()).await.err().expect("an error");
    assert_eq!(err.status, Some(429));
    assert!(!err.retryable);
    assert!(err.message.contains("You exceeded your current quota."), "{}", err.message);
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![Reply::Cut { text: "Hello there, world".into(), after_chunks: 2 }]).await;
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts()).await.unwrap()).await;
        assert_eq!(out.text_pieces(), vec!["Hell", "o th"], "{kind:?}: the deltas before the cut");
        assert!(out.finishes().is_empty() && out.usages().is_empty());
        let err = out.error.expect("an error item after the deltas");
        assert!(err.retryable, "{kind:?}: {err:?}");
        assert_eq!(llm.requests().len(), 1, "{kind:?}: no retry once streaming");
    }
}

#[tokio::test]
async fn a_provider_error_mid_stream_is_an_error_item() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![Reply::StreamError { text: "Working on it".into(), after_chunks: 1, message: "Overloaded".into() }]).await;
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts()).await.unwrap()).await;
        assert_eq!(out.text_pieces(), vec!["Work"], "{kind:?}");
        let err = out.error.expect("an error item");
        assert!(err.message.contains("Overloaded"), "{kind:?}: {}", err.message);
        assert!(err.retryable, "{kind:?}: {err:?}");
        if kind == ProviderKind::Anthropic {
            assert!(err.message.contains("overloaded_error"), "{}", err.message);
            assert_eq!(err.status, Some(529));
        }
    }
}

#[tokio::test]
async fn a_hanging_stream_times_out() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![Reply::Hang]).await;
        // The wait for the first token applies, not the (longer) one between tokens.
        let opts = CallOptions { first_token_timeout: Duration::from_millis(300), timeout: Duration::from_secs(30), ..opts() };
        let started = Instant::now();
        // The headers come at once; then nothing.
        let stream = call(kind, &llm, &ask("hi"), &opts).await.unwrap();
        let out = Outcome::of(stream).await;
        let took = started.elapsed();
        assert!(out.events.is_empty(), "{kind:?}: {:?}", out.events);
        let err = out.error.expect("a timeout");
        assert!(err.retryable);
        assert!(err.message.contains("no answer within 0.3 s (KODEL_LLM_FIRST_TOKEN_TIMEOUT)"), "{kind:?}: {}", err.message);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{kind:?}: {took:?}");
        assert_eq!(llm.requests().len(), 1);
    }
}

#[tokio::test]
async fn no_response_within_the_timeout_fails_without_retry() {
    for kind in BOTH {
        // Accepts connections, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        let base_url = if kind == ProviderKind::Anthropic { format!("http://{addr}") } else { format!("http://{addr}/v1") };
        let cfg = ProviderConfig { kind, base_url, api_key: Some(KEY.into()), wire: Default::default() };
        let opts = CallOptions { first_token_timeout: Duration::from_millis(300), ..opts() };
        let started = Instant::now();
        let err = provider::stream(&http(), &cfg, "m", "", &ask("hi"), &opts).await.err().expect("a timeout");
        let took = started.elapsed();
        assert!(err.retryable, "{kind:?}: {err:?}");
        assert_eq!(err.status, None);
        assert!(err.message.contains("no response within 0.3 s"), "{}", err.message);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{kind:?}: {took:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "{kind:?}: not retried");
        server.abort();
    }
}

/// Nothing listens where the provider should be: no retry can fix that, so the call
/// fails at once (not after backoffs) and says it is not worth retrying.
#[tokio::test]
async fn a_refused_connection_fails_at_once() {
    for kind in BOTH {
        // A port nobody listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let base_url = if kind == ProviderKind::Anthropic { format!("http://{addr}") } else { format!("http://{addr}/v1") };
        let cfg = ProviderConfig { kind, base_url, api_key: Some(KEY.into()), wire: Default::default() };
        let opts = CallOptions { max_retries: 3, max_retry_wait: Duration::from_secs(5), ..opts() };
        let started = Instant::now();
        let err = provider::stream(&http(), &cfg, "m", "", &ask("hi"), &opts).await.err().expect("an error");
        assert!(!err.retryable, "{kind:?}: {err:?}");
        assert_eq!(err.status, None);
        assert!(err.message.contains("could not reach") && err.message.contains("Connection refused"), "{}", err.message);
        // One backoff alone would be 400 ms or more.
        assert!(started.elapsed() < Duration::from_millis(400), "{kind:?}: tried again ({:?})", started.elapsed());
    }
}

#[tokio::test]
async fn the_api_key_is_sent_but_never_shown() {
    for kind in BOTH {
        let echo = format!("Incorrect API key provided: {KEY}. You can find your API key in your account.");
        let llm = ScriptedLlm::start(vec![Reply::Status { code: 401, retry_after: None, body: echo }]).await;
        let cfg = config(kind, &llm, Some(KEY));
        let err = provider::stream(&http(), &cfg, "m", "", &ask("hi"), &opts()).await.err().expect("an error");
        assert_eq!(err.status, Some(401));
        assert!(!err.retryable);
        assert!(err.message.contains("Incorrect API key provided"), "{}", err.message);
        assert!(!err.message.contains(KEY), "{kind:?}: {}", err.message);
        assert!(!format!("{err:?} {err}").contains(KEY));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains(KEY) && shown.contains("redacted"), "{shown}");

        let r = &llm.requests()[0];
        match kind {
            ProviderKind::Anthropic => {
                assert_eq!(r.header("x-api-key"), Some(KEY));
                assert_eq!(r.header("authorization"), None);
            }
            _ => {
                assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
                assert_eq!(r.header("x-api-key"), None);
            }
        }
    }
}

#[tokio::test]
async fn ollama_and_openrouter_speak_openai() {
    let llm = ScriptedLlm::start(vec![Reply::Text("from ollama".into()), Reply::Text("from openrouter".into())]).await;
    let req = LlmRequest { max_tokens: Some(50), ..ask("hi") };

    let ollama = config(ProviderKind::Ollama, &llm, None);
    let out = Outcome::of(provider::stream(&http(), &ollama, "llama3.2", "", &req, &opts()).await.unwrap()).await.ok();
    assert_eq!(out.message().content, "from ollama");
    let router = config(ProviderKind::OpenRouter, &llm, Some(KEY));
    let out = Outcome::of(provider::stream(&http(), &router, "meta/llama-3", "", &req, &opts()).await.unwrap()).await.ok();
    assert_eq!(out.message().content, "from openrouter");

    let requests = llm.requests();
    assert_eq!(requests[0].format, "openai");
    assert_eq!(requests[0].header("authorization"), None, "no key, no Authorization");
    assert_eq!(requests[0].body["model"], "llama3.2");
    assert_eq!(requests[0].body["max_tokens"], 50, "max_tokens for OpenAI-compatible servers");
    assert!(requests[0].body.get("max_completion_tokens").is_none());
    // No system prompt: no system message.
    assert_eq!(requests[0].body["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(requests[1].header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(requests[1].body["model"], "meta/llama-3");
}

#[tokio::test]
async fn system_messages_in_the_conversation() {
    let llm = ScriptedLlm::start(vec![Reply::Text("a".into()), Reply::Text("b".into())]).await;
    let req = LlmRequest {
        messages: vec![Message::text(Role::System, "Be kind."), Message::text(Role::User, "hi"), Message::text(Role::User, "there")],
        ..ask("")
    };
    Outcome::of(call(ProviderKind::Anthropic, &llm, &req, &opts()).await.unwrap()).await.ok();
    Outcome::of(call(ProviderKind::OpenAi, &llm, &req, &opts()).await.unwrap()).await.ok();
    let requests = llm.requests();
    // Anthropic: into `system`, after the system prompt; one user turn.
    assert_eq!(requests[0].body["system"], format!("{SYSTEM}\n\nBe kind."));
    assert_eq!(
        requests[0].body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}])
    );
    // OpenAI: system messages where they were.
    let roles: Vec<&str> = requests[1].body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "system", "user", "user"]);
}

#[tokio::test]
async fn chunk_delay_spaces_the_stream_within_the_idle_timeout() {
    for kind in BOTH {
        let llm = ScriptedLlm::start(vec![Reply::Text("0123456789ab".into())]).await.with_chunk_delay(Duration::from_millis(80));
        let opts = CallOptions { timeout: Duration::from_millis(400), ..opts() };
        let started = Instant::now();
        let out = Outcome::of(call(kind, &llm, &ask("hi"), &opts).await.unwrap()).await.ok();
        assert_eq!(out.message().content, "0123456789ab");
        // At least 3 text chunks and the end marker, each after a delay: longer than the
        // idle timeout in total, but never that long between two chunks.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{kind:?}: {took:?}");
    }
}

#[tokio::test]
async fn the_scripted_server_answers_without_streaming() {
    let llm = ScriptedLlm::start(vec![
        Reply::TextAndTools("Sure.".into(), vec![("glob".into(), json!({"pattern": "*"}))]),
        Reply::Text("Hi!".into()),
    ])
    .await;
    let http = http();
    let openai: Value = http
        .post(format!("{}/chat/completions", llm.openai_base()))
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "chat.completion");
    assert_eq!(openai["model"], "gpt-x");
    let choice = &openai["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Sure.");
    assert_eq!(choice["message"]["tool_calls"][0]["type"], "function");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "glob");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], r#"{"pattern":"*"}"#);
    assert_eq!(choice["finish_reason"], "tool_calls");
    let u = &openai["usage"];
    assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());

    let anthropic: Value = http
        .post(format!("{}/v1/messages", llm.anthropic_base()))
        .json(&json!({"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["type"], "message");
    assert_eq!(anthropic["content"], json!([{"type": "text", "text": "Hi!"}]));
    assert_eq!(anthropic["stop_reason"], "end_turn");
    assert!(anthropic["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(!llm.exhausted());

    // Out of replies: a placeholder, and it shows.
    let out = Outcome::of(call(ProviderKind::OpenAi, &llm, &ask("more?"), &opts()).await.unwrap()).await.ok();
    assert_eq!(out.message().content, "(script exhausted)");
    assert!(llm.exhausted());
    llm.push(Reply::Text("pushed".into()));
    let out = Outcome::of(call(ProviderKind::Anthropic, &llm, &ask("more?"), &opts()).await.unwrap()).await.ok();
    assert_eq!(out.message().content, "pushed");
    assert_eq!(llm.wait_requests(4, Duration::from_secs(1)).await.len(), 4);
}

#[test]
fn retry_after_reads_seconds_milliseconds_and_dates() {
    let headers = |pairs: &[(&'static str, String)]| {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    };
    assert_eq!(provider::retry_after(&headers(&[("retry-after", "2".into())])), Some(Duration::from_secs(2)));
    assert_eq!(
        provider::retry_after(&headers(&[("retry-after", "2".into()), ("retry-after-ms", "150".into())])),
        Some(Duration::from_millis(150))
    );
    let later = chrono::Utc::now() + chrono::Duration::seconds(30);
    let date = later.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let wait = provider::retry_after(&headers(&[("retry-after", date)])).unwrap();
    assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
    let past = (chrono::Utc::now() - chrono::Duration::seconds(30)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    assert_eq!(provider::retry_after(&headers(&[("retry-after", past)])), Some(Duration::ZERO));
    assert_eq!(provider::retry_after(&headers(&[("retry-after", "soon".into())])), None);
}

#[test]
fn provider_names_round_trip() {
    for kind in [ProviderKind::OpenAi, ProviderKind::OpenRouter, ProviderKind::Ollama, ProviderKind::Anthropic] {
        assert_eq!(ProviderKind::parse(kind.name()), Some(kind));
    }
    assert_eq!(ProviderKind::parse("gemini"), None);
}

#[test]
fn wire_defaults_follow_the_provider_and_its_base_url() {
    let cfg = |kind, base: &str| ProviderConfig { kind, base_url: base.into(), api_key: None, wire: WireSettings::default() };
    // OpenAI's own API wants max_completion_tokens; every other server reads max_tokens.
    assert_eq!(cfg(ProviderKind::OpenAi, "").wire().max_tokens_field, MaxTokensField::MaxCompletionTokens);
    assert_eq!(cfg(ProviderKind::OpenAi, "https://api.openai.com/v1").wire().max_tokens_field, MaxTokensField::MaxCompletionTokens);
    for (kind, base) in [(ProviderKind::OpenAi, "http://127.0.0.1:8080/v1"), (ProviderKind::OpenRouter, ""), (ProviderKind::Ollama, "")] {
        let wire = cfg(kind, base).wire();
        assert_eq!(wire.max_tokens_field, MaxTokensField::MaxTokens, "{kind:?} {base}");
        assert!(wire.stream && wire.tool_choice, "{kind:?}: streamed, with tool_choice");
    }
    let mut set = cfg(ProviderKind::OpenAi, "");
    set.wire = WireSettings { max_tokens_field: Some(MaxTokensField::MaxTokens), ..Default::default() };
    assert_eq!(set.wire().max_tokens_field, MaxTokensField::MaxTokens, "a setting wins");
}

#[tokio::test]
async fn wire_settings_shape_the_request() {
    for kind in BOTH {
        let read = || Reply::ToolCalls(vec![("read_file".into(), json!({"path": "a"}))]);
        let llm = ScriptedLlm::start(vec![read(), read()]).await;
        let req = LlmRequest { tools: tools(), max_tokens: Some(50), ..ask("Look") };
        // The defaults: streamed, tool_choice "auto" with tools (OpenAI format).
        Outcome::of(call(kind, &llm, &req, &opts()).await.unwrap()).await.ok();
        // Off: one whole answer, no tool_choice, and the field asked for.
        let mut cfg = config(kind, &llm, Some(KEY));
        cfg.wire = WireSettings { stream: Some(false), max_tokens_field: Some(MaxTokensField::MaxCompletionTokens), tool_choice: Some(false) };
        let out = Outcome::of(provider::stream(&http(), &cfg, "m", SYSTEM, &req, &opts()).await.unwrap()).await.ok();
        let m = out.message();
        assert_eq!((m.tool_calls.len(), m.tool_calls[0].name.as_str()), (1, "read_file"), "{kind:?}");
        assert_eq!(out.finishes(), [FinishReason::ToolCalls], "{kind:?}");
        assert!(out.usage().input_tokens > 0, "{kind:?}: the whole answer's usage");
        let requests = llm.requests();
        let (streamed, whole) = (&requests[0].body, &requests[1].body);
        assert_eq!((&streamed["stream"], &whole["stream"]), (&json!(true), &json!(false)), "{kind:?}");
        if kind == ProviderKind::OpenAi {
            assert_eq!(streamed["tool_choice"], "auto");
            assert!(whole.get("tool_choice").is_none(), "{whole}");
            assert_eq!((&streamed["max_tokens"], &whole["max_completion_tokens"]), (&json!(50), &json!(50)));
            assert!(whole.get("stream_options").is_none(), "{whole}");
        }
    }
}
