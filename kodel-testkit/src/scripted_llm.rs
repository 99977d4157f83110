//! A scripted LLM provider: an HTTP server on 127.0.0.1 that answers OpenAI chat
//! completions (`POST /v1/chat/completions`, also what Ollama and OpenRouter speak) and
//! Anthropic Messages (`POST /v1/messages`) with replies given in advance, in the
//! providers' exact wire formats, streamed or not. It records every request it got.
//!
//! Replies are served in order to whichever format asks. Once they run out, each
//! request gets `Text("(script exhausted)")` and `exhausted()` turns true.
//!
//! Token counts are deterministic: input = (the request body re-serialized compactly
//! from its JSON value) bytes / 4, at least 1; output = the number of content chunks
//! (text pieces of 4 characters plus tool-argument pieces of 5). A conversation that
//! already holds an assistant message is a follow-up turn: half of its input counts as
//! read from the prompt cache. On a first turn, Anthropic reports a quarter of the input
//! as written to the cache. A request's `max_tokens` (`max_completion_tokens` for
//! OpenAI) smaller than the output cuts the text and finishes with `length` /
//! `max_tokens`.
//!
//! `Reply::Recorded` replays what a real server once sent, byte for byte: the fixtures
//! in kodel-testkit/fixtures/llm/ (`fixture`), recorded from llama.cpp's llama-server
//! and llama-cpp-python by scripts/local-models.sh.
//!
//! The server runs on the runtime that started it; dropping the `ScriptedLlm` stops it
//! and ends every hanging reply.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

/// Characters per streamed text piece.
const TEXT_PIECE: usize = 4;
/// Characters per streamed piece of tool-call arguments.
const ARGS_PIECE: usize = 5;

#[derive(Debug, Clone)]
pub enum Reply {
    /// Streamed as pieces of 4 characters.
    Text(String),
    /// Tool calls (name, arguments), no text; the arguments' JSON text is streamed in
    /// pieces of 5 characters.
    ToolCalls(Vec<(String, Value)>),
    TextAndTools(String, Vec<(String, Value)>),
    /// An error status in the provider's error shape: `body` is the error message, or
    /// the whole body when it starts with `{`. `retry_after` sets `Retry-After` (seconds).
    Status { code: u16, retry_after: Option<u64>, body: String },
    /// Starts streaming `text`, then drops the connection after `after_chunks` text
    /// pieces (no end marker).
    Cut { text: String, after_chunks: usize },
    /// Streams `after_chunks` pieces of `text`, then the provider's own in-stream error
    /// (Anthropic: an `error` event of type `overloaded_error`; OpenAI: a
    /// `data: {"error": ...}` chunk), then ends the stream.
    StreamError { text: String, after_chunks: usize, message: String },
    /// Accepts the request; a streamed reply sends the headers, then nothing; a
    /// non-streamed one sends nothing at all. Ends when the server is dropped.
    Hang,
    /// A real server's response, as recorded: its status, content type and body, in the
    /// pieces it came in (the chunk delay between them). Whatever was asked.
    Recorded(Recorded),
    /// Streams the first `after` pieces of a recorded response, then nothing until the
    /// server stops.
    RecordedThenHang { recorded: Recorded, after: usize },
}

/// One recorded response (`fixture`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Recorded {
    pub status: u16,
    pub content_type: String,
    pub chunks: Vec<String>,
}

/// One exchange of a fixture: what was sent, and the answer.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Exchange {
    pub request: Value,
    pub response: Recorded,
}

/// A recorded conversation with a real server (kodel-testkit/fixtures/llm/NAME.json).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Fixture {
    /// The server and its version.
    pub server: String,
    pub model: String,
    #[serde(default)]
    pub note: String,
    pub exchanges: Vec<Exchange>,
}

impl Fixture {
    /// Its responses, in order, as replies.
    pub fn replies(&self) -> Vec<Reply> {
        self.exchanges.iter().map(|e| Reply::Recorded(e.response.clone())).collect()
    }

    /// The `n`th request's body, as sent to the real server.
    pub fn request(&self, n: usize) -> &Value {
        &self.exchanges[n].request["body"]
    }
}

/// The directory of the recorded fixtures.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llm")
}

/// The fixture `name` (e.g. `llama-cpp-python/tools-stream-auto`).
pub fn fixture(name: &str) -> Fixture {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct ScriptedRequest {
    /// "openai" or "anthropic".
    pub format: &'static str,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Value::String` of the raw text if it was not JSON).
    pub body: Value,
}

impl ScriptedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub struct ScriptedLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropped with the `ScriptedLlm`: the server and hanging replies stop.
    _stop: watch::Sender<()>,
}

struct Shared {
    script: Mutex<Script>,
    arrived: Notify,
    chunk_delay_us: AtomicU64,
    stop: watch::Receiver<()>,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<ScriptedRequest>,
    exhausted: bool,
}

impl ScriptedLlm {
    pub async fn start(replies: Vec<Reply>) -> ScriptedLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            script: Mutex::new(Script { replies: replies.into(), ..Script::default() }),
            arrived: Notify::new(),
            chunk_delay_us: AtomicU64::new(0),
            stop: stop_rx.clone(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let mut stop = stop_rx;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
        ScriptedLlm { addr, shared, _stop: stop_tx }
    }

    /// Waits `d` before each streamed chunk but the first.
    pub fn with_chunk_delay(self, d: Duration) -> Self {
        self.shared.chunk_delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
        self
    }

    /// Appends a reply to the script.
    pub fn push(&self, reply: Reply) {
        self.shared.script.lock().unwrap().replies.push_back(reply);
    }

    /// `http://127.0.0.1:PORT/v1`, an OpenAI-compatible base URL.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT`, an Anthropic base URL.
    pub fn anthropic_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests that arrived, in order.
    pub fn requests(&self) -> Vec<ScriptedRequest> {
        self.shared.script.lock().unwrap().requests.clone()
    }

    /// Whether a request came after the replies ran out.
    pub fn exhausted(&self) -> bool {
        self.shared.script.lock().unwrap().exhausted
    }

    /// Replies not served yet.
    pub fn remaining(&self) -> usize {
        self.shared.script.lock().unwrap().replies.len()
    }

    /// Waits until at least `n` requests arrived (at most `within`); returns them all.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> Vec<ScriptedRequest> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.shared.arrived.notified();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                panic!("expected {n} requests at the scripted LLM within {within:?}, got {}", requests.len());
            }
        }
    }
}

impl Shared {
    /// Records the request and takes the next reply.
    fn take(&self, format: &'static str, headers: &HeaderMap, raw: &[u8]) -> (Value, Reply) {
        let body = serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()));
        let headers = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let reply = {
            let mut script = self.script.lock().unwrap();
            script.requests.push(ScriptedRequest { format, headers, body: body.clone() });
            script.replies.pop_front().unwrap_or_else(|| {
                script.exhausted = true;
                Reply::Text("(script exhausted)".into())
            })
        };
        self.arrived.notify_waiters();
        (body, reply)
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.chunk_delay_us.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------------------
// What a reply streams, independent of the format.

enum Finish {
    Stop,
    Tools,
    Length,
}

/// How a streamed body ends after its frames.
enum Ending {
    /// Normally (the frames hold the end marker).
    Done,
    /// The connection drops.
    Cut,
}

struct Call {
    id: String,
    name: String,
    arguments: Value,
    pieces: Vec<String>,
}

struct Plan {
    text: Vec<String>,
    calls: Vec<Call>,
    finish: Finish,
    usage: Tokens,
}

#[derive(Clone, Copy)]
struct Tokens {
    /// All input tokens, cached ones included.
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn is_follow_up(body: &Value) -> bool {
    body["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "assistant"))
}

fn input_tokens(body: &Value) -> u64 {
    (serde_json::to_vec(body).map(|v| v.len()).unwrap_or(0) as u64 / 4).max(1)
}

/// `format`: "openai" or "anthropic" (tool call ids look like each provider's).
fn plan(format: &str, body: &Value, text: &str, tools: &[(String, Value)], limit: Option<u64>) -> Plan {
    let mut text = pieces(text, TEXT_PIECE);
    let mut calls: Vec<Call> = tools
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            let id = match format {
                "anthropic" => format!("toolu_{:020}", next_id() * 10 + i as u64),
                _ => format!("call_{:020}", next_id() * 10 + i as u64),
            };
            let json = serde_json::to_string(arguments).unwrap();
            Call { id, name: name.clone(), arguments: arguments.clone(), pieces: pieces(&json, ARGS_PIECE) }
        })
        .collect();
    let mut output = (text.len() + calls.iter().map(|c| c.pieces.len()).sum::<usize>()) as u64;
    let mut finish = if calls.is_empty() { Finish::Stop } else { Finish::Tools };
    if let Some(limit) = limit.filter(|l| *l < output) {
        text.truncate(limit as usize);
        calls.clear();
        output = text.len() as u64;
        finish = Finish::Length;
    }
    let input = input_tokens(body);
    let (cache_read, cache_write) = if is_follow_up(body) {
        (input / 2, 0)
    } else if format == "anthropic" {
        (0, input / 4)
    } else {
        (0, 0)
    };
    Plan { text, calls, finish, usage: Tokens { input, output, cache_read, cache_write } }
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(secs) = retry_after {
        b = b.header(header::RETRY_AFTER, secs.to_string());
    }
    b.body(Body::from(body.to_string())).unwrap()
}

/// A streamed body: `frames` (with the chunk delay between them), then `ending`.
fn stream_body(content_type: &str, frames: Vec<String>, delay: Duration, ending: Ending) -> Response {
    let frames = futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(frame))
    });
    let body: BoxStream<'static, Result<Bytes, std::io::Error>> = match ending {
        Ending::Done => frames.boxed(),
        Ending::Cut => frames
            .chain(futures::stream::once(async {
                // Lets the frames before reach the socket, then aborts the response:
                // hyper closes the connection without the final chunk.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(std::io::Error::other("scripted cut"))
            }))
            .boxed(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

/// A recorded response; with `hang_after`, only its first pieces, then silence until
/// the server stops.
fn replay(r: Recorded, delay: Duration, hang_after: Option<(usize, watch::Receiver<()>)>) -> Response {
    let mut chunks = r.chunks;
    let stop = hang_after.map(|(n, stop)| {
        chunks.truncate(n);
        stop
    });
    let frames = futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(c))
    });
    let body: BoxStream<'static, Result<Bytes, std::io::Error>> = match stop {
        None => frames.boxed(),
        Some(mut stop) => frames
            .chain(futures::stream::once(async move {
                let _ = stop.changed().await;
                Err(std::io::Error::other("scripted server stopped"))
            }))
            .boxed(),
    };
    Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, r.content_type)
        .body(Body::from_stream(body))
        .unwrap()
}

/// Headers, then silence until the server stops.
fn hang_stream(content_type: &str, stop: watch::Receiver<()>) -> Response {
    let body = futures::stream::once(async move {
        let mut stop = stop;
        let _ = stop.changed().await;
        Err::<Bytes, _>(std::io::Error::other("scripted server stopped"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

/// No answer at all until the server stops.
async fn hang_silent(stop: watch::Receiver<()>) -> Response {
    let mut stop = stop;
    let _ = stop.changed().await;
    json_response(503, &json!({"error": "scripted server stopped"}), None)
}

/// A partial body, then the connection drops.
fn cut_body(partial: String) -> Response {
    stream_body("application/json", vec![partial], Duration::ZERO, Ending::Cut)
}

// ---------------------------------------------------------------------------------------
// OpenAI chat completions.

async fn openai(State(s): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let (body, reply) = s.take("openai", &headers, &raw);
    let streamed = body["stream"] == true;
    let include_usage = body["stream_options"]["include_usage"] == true;
    let model = body["model"].as_str().unwrap_or("scripted").to_owned();
    let limit = body["max_completion_tokens"].as_u64().or_else(|| body["max_tokens"].as_u64());
    let (text, tools) = match reply {
        Reply::Text(t) => (t, Vec::new()),
        Reply::ToolCalls(c) => (String::new(), c),
        Reply::TextAndTools(t, c) => (t, c),
        Reply::Status { code, retry_after, body } => return json_response(code, &openai_error(code, &body), retry_after),
        Reply::Hang if streamed => return hang_stream("text/event-stream; charset=utf-8", s.stop.clone()),
        Reply::Hang => return hang_silent(s.stop.clone()).await,
        Reply::Recorded(r) => return replay(r, s.delay(), None),
        Reply::RecordedThenHang { recorded, after } => return replay(recorded, s.delay(), Some((after, s.stop.clone()))),
        Reply::Cut { text, after_chunks } => {
            if !streamed {
                let full = openai_completion(&model, &plan("openai", &body, &text, &[], limit));
                let partial = full.to_string().chars().take(40).collect();
                return cut_body(partial);
            }
            let plan = plan("openai", &body, &text, &[], None);
            let mut frames = openai_frames(&model, &plan, include_usage);
            frames.truncate(1 + after_chunks.min(plan.text.len()));
            return stream_body("text/event-stream; charset=utf-8", frames, s.delay(), Ending::Cut);
        }
        Reply::StreamError { text, after_chunks, message } => {
            if !streamed {
                return json_response(500, &openai_error(500, &message), None);
            }
            let plan = plan("openai", &body, &text, &[], None);
            let mut frames = openai_frames(&model, &plan, include_usage);
            frames.truncate(1 + after_chunks.min(plan.text.len()));
            let error = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
            frames.push(format!("data: {error}\n\n"));
            return stream_body("text/event-stream; charset=utf-8", frames, s.delay(), Ending::Done);
        }
    };
    let plan = plan("openai", &body, &text, &tools, limit);
    if streamed {
        let frames = openai_frames(&model, &plan, include_usage);
        stream_body("text/event-stream; charset=utf-8", frames, s.delay(), Ending::Done)
    } else {
        json_response(200, &openai_completion(&model, &plan), None)
    }
}

fn openai_error(code: u16, message: &str) -> Value {
    if message.trim_start().starts_with('{') {
        return serde_json::from_str(message).unwrap_or_else(|_| json!({"error": {"message": message}}));
    }
    let (kind, code_field) = match code {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        404 => ("invalid_request_error", json!("model_not_found")),
        429 => ("requests", json!("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", Value::Null),
        _ => ("server_error", Value::Null),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code_field}})
}

fn openai_finish(f: &Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Tools => "tool_calls",
        Finish::Length => "length",
    }
}

fn openai_usage(t: &Tokens) -> Value {
    json!({
        "prompt_tokens": t.input,
        "completion_tokens": t.output,
        "total_tokens": t.input + t.output,
        "prompt_tokens_details": {"cached_tokens": t.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// The `data:` lines of a streamed completion: the role chunk, one chunk per text or
/// argument piece (a call's first chunk carries its id and name), the finish chunk, the
/// usage chunk when asked for, `[DONE]`.
fn openai_frames(model: &str, plan: &Plan, include_usage: bool) -> Vec<String> {
    let id = format!("chatcmpl-scripted{:016}", next_id());
    let created = now_secs();
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_scripted", "choices": choices,
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let call_head = |i: usize, c: &Call| {
        json!([{"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}])
    };
    let mut frames = Vec::new();
    // The first chunk names the role; with no text it already opens the first call.
    let mut calls_from = 0;
    if plan.text.is_empty() && !plan.calls.is_empty() {
        let delta = json!({"role": "assistant", "content": null, "tool_calls": call_head(0, &plan.calls[0]), "refusal": null});
        frames.push(chunk(choice(delta, Value::Null)));
        calls_from = 1;
    } else {
        frames.push(chunk(choice(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)));
    }
    for piece in &plan.text {
        frames.push(chunk(choice(json!({"content": piece}), Value::Null)));
    }
    for (i, call) in plan.calls.iter().enumerate() {
        if i >= calls_from {
            frames.push(chunk(choice(json!({"tool_calls": call_head(i, call)}), Value::Null)));
        }
        for piece in &call.pieces {
            frames.push(chunk(choice(json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}), Value::Null)));
        }
    }
    frames.push(chunk(choice(json!({}), json!(openai_finish(&plan.finish)))));
    if include_usage {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_scripted", "choices": [],
            "usage": openai_usage(&plan.usage),
        });
        frames.push(format!("data: {c}\n\n"));
    }
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

fn openai_completion(model: &str, plan: &Plan) -> Value {
    let text: String = plan.text.concat();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !plan.calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null, "annotations": []});
    if !plan.calls.is_empty() {
        let calls: Vec<Value> = plan
            .calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.pieces.concat()}}))
            .collect();
        message["tool_calls"] = json!(calls);
    }
    json!({
        "id": format!("chatcmpl-scripted{:016}", next_id()),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": openai_finish(&plan.finish)}],
        "usage": openai_usage(&plan.usage),
        "service_tier": "default",
        "system_fingerprint": "fp_scripted",
    })
}

// ---------------------------------------------------------------------------------------
// Anthropic Messages.

async fn anthropic(State(s): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let (body, reply) = s.take("anthropic", &headers, &raw);
    let streamed = body["stream"] == true;
    let model = body["model"].as_str().unwrap_or("scripted").to_owned();
    let limit = body["max_tokens"].as_u64();
    let (text, tools) = match reply {
        Reply::Text(t) => (t, Vec::new()),
        Reply::ToolCalls(c) => (String::new(), c),
        Reply::TextAndTools(t, c) => (t, c),
        Reply::Status { code, retry_after, body } => return json_response(code, &anthropic_error(code, &body), retry_after),
        Reply::Hang if streamed => return hang_stream("text/event-stream; charset=utf-8", s.stop.clone()),
        Reply::Hang => return hang_silent(s.stop.clone()).await,
        Reply::Recorded(r) => return replay(r, s.delay(), None),
        Reply::RecordedThenHang { recorded, after } => return replay(recorded, s.delay(), Some((after, s.stop.clone()))),
        Reply::Cut { text, after_chunks } => {
            if !streamed {
                let full = anthropic_message(&model, &plan("anthropic", &body, &text, &[], limit));
                let partial = full.to_string().chars().take(40).collect();
                return cut_body(partial);
            }
            let plan = plan("anthropic", &body, &text, &[], None);
            let mut frames = anthropic_frames(&model, &plan);
            // message_start, content_block_start, ping, then the text deltas.
            frames.truncate(3 + after_chunks.min(plan.text.len()));
            return stream_body("text/event-stream; charset=utf-8", frames, s.delay(), Ending::Cut);
        }
        Reply::StreamError { text, after_chunks, message } => {
            if !streamed {
                return json_response(529, &anthropic_error(529, &message), None);
            }
            let plan = plan("anthropic", &body, &text, &[], None);
            let mut frames = anthropic_frames(&model, &plan);
            frames.truncate(3 + after_chunks.min(plan.text.len()));
            frames.push(sse("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": message}})));
            return stream_body("text/event-stream; charset=utf-8", frames, s.delay(), Ending::Done);
        }
    };
    let plan = plan("anthropic", &body, &text, &tools, limit);
    if streamed {
        stream_body("text/event-stream; charset=utf-8", anthropic_frames(&model, &plan), s.delay(), Ending::Done)
    } else {
        json_response(200, &anthropic_message(&model, &plan), None)
    }
}

fn anthropic_error(code: u16, message: &str) -> Value {
    if message.trim_start().starts_with('{') {
        return serde_json::from_str(message).unwrap_or_else(|_| json!({"type": "error", "error": {"type": "api_error", "message": message}}));
    }
    let kind = match code {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn anthropic_stop(f: &Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Tools => "tool_use",
        Finish::Length => "max_tokens",
    }
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// message_start; per block content_block_start (a ping after the first),
/// content_block_delta per piece, content_block_stop; message_delta; message_stop.
fn anthropic_frames(model: &str, plan: &Plan) -> Vec<String> {
    let t = &plan.usage;
    let uncached = t.input - t.cache_read - t.cache_write;
    let mut frames = vec![sse(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_scripted{:016}", next_id()), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": uncached, "cache_creation_input_tokens": t.cache_write, "cache_read_input_tokens": t.cache_read, "output_tokens": 1, "service_tier": "standard"}
        }}),
    )];
    let mut block = 0;
    // Anthropic pings right after the first content_block_start.
    let ping = |frames: &mut Vec<String>| {
        if frames.len() == 2 {
            frames.push(sse("ping", &json!({"type": "ping"})));
        }
    };
    if !plan.text.is_empty() {
        frames.push(sse("content_block_start", &json!({"type": "content_block_start", "index": block, "content_block": {"type": "text", "text": ""}})));
        ping(&mut frames);
        for piece in &plan.text {
            frames.push(sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        frames.push(sse("content_block_stop", &json!({"type": "content_block_stop", "index": block})));
        block += 1;
    }
    for call in &plan.calls {
        frames.push(sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": block, "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
        ));
        ping(&mut frames);
        for piece in std::iter::once("").chain(call.pieces.iter().map(String::as_str)) {
            frames.push(sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        frames.push(sse("content_block_stop", &json!({"type": "content_block_stop", "index": block})));
        block += 1;
    }
    frames.push(sse(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": anthropic_stop(&plan.finish), "stop_sequence": null}, "usage": {"output_tokens": t.output}}),
    ));
    frames.push(sse("message_stop", &json!({"type": "message_stop"})));
    frames
}

fn anthropic_message(model: &str, plan: &Plan) -> Value {
    let t = &plan.usage;
    let mut content = Vec::new();
    if !plan.text.is_empty() {
        content.push(json!({"type": "text", "text": plan.text.concat()}));
    }
    for c in &plan.calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}));
    }
    json!({
        "id": format!("msg_scripted{:016}", next_id()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": anthropic_stop(&plan.finish),
        "stop_sequence": null,
        "usage": {
            "input_tokens": t.input - t.cache_read - t.cache_write,
            "cache_creation_input_tokens": t.cache_write,
            "cache_read_input_tokens": t.cache_read,
            "output_tokens": t.output,
            "service_tier": "standard",
        },
    })
}
