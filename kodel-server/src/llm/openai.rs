//! OpenAI's chat completions, which OpenRouter, Ollama and the servers people run
//! locally (llama.cpp's `llama-server`, llama-cpp-python, vLLM) speak too, each a
//! little differently: `POST {base}/chat/completions` as plain JSON, streamed as
//! server-sent events or answered whole (`ProviderConfig::wire`).
//!
//! What real servers do that the documentation does not say, and what this client
//! does about it (each has a recorded fixture in kodel-testkit/fixtures/llm):
//! - llama-cpp-python repeats a tool call's name (and id) in every delta: a call's name
//!   is taken from its first delta only.
//! - llama-cpp-python reads the tools only with `tool_choice`: "auto" is sent with
//!   tools unless the provider's `tool_choice` setting is off.
//! - llama-cpp-python fails on an assistant turn without `content`: it is always sent,
//!   empty when the turn only called tools.
//! - A stream that ends with nothing in it (llama-cpp-python's context overflow) is
//!   asked once more without streaming, which returns the real error.
//! - A server may leave out usage; the proxy then estimates it (`LlmDone::estimated`).

use std::collections::{HashMap, VecDeque};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use kodel_core::llm::{Delta, FinishReason, LlmRequest, Message, Role, ToolChoice, Usage};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::provider::{
    CallOptions, Decoder, EMPTY_STREAM, EventStream, LlmError, ProviderConfig, ProviderKind, StreamEvent, Wire, answered,
    drive, error_chain, error_from_body, provider_message, read_body, send_with_retry, transport_error,
};

/// The call, streamed.
pub(crate) async fn streamed(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let kind = cfg.kind;
    let body = build_body(cfg.wire(), model, system, req, true)?;
    let response = post(http, cfg, &body, true, opts).await?;
    let is_stream = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.contains("event-stream"));
    if !is_stream {
        // Some servers answer a streamed request with one JSON body (often an error).
        let json = read_json(kind, response, opts).await?;
        return Ok(answered(decode_whole(kind, &json)?));
    }
    let name = kind.name();
    let bytes = response.bytes_stream().map(|r| r.map_err(|e| error_chain(&e)));
    let events = Box::pin(bytes.eventsource()).map(move |r| r.map_err(|e| LlmError::new(format!("{name} stream broke off: {e}"), None, true)));
    Ok(drive(events, ChunkDecoder::new(kind), opts, kind, cfg.key()))
}

/// The call without streaming: the whole answer as events.
pub(crate) async fn whole(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let body = build_body(cfg.wire(), model, system, req, false)?;
    let response = post(http, cfg, &body, false, opts).await?;
    let json = read_json(cfg.kind, response, opts).await?;
    Ok(answered(decode_whole(cfg.kind, &json)?))
}

/// Sends `body` with the retry policy; a 2xx response.
async fn post(http: &reqwest::Client, cfg: &ProviderConfig, body: &Value, stream: bool, opts: &CallOptions) -> Result<reqwest::Response, LlmError> {
    let kind = cfg.kind;
    let key = cfg.key();
    let bytes = serde_json::to_vec(body).map_err(|e| LlmError::new(format!("could not encode the {} request: {e}", kind.name()), None, false))?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(ACCEPT, HeaderValue::from_static(if stream { "text/event-stream" } else { "application/json" }));
    if let Some(k) = key {
        let value = HeaderValue::from_str(&format!("Bearer {k}"))
            .map_err(|_| LlmError::new(format!("the {} API key is not a valid header value", kind.name()), None, false))?;
        headers.insert(AUTHORIZATION, value);
    }
    let url = format!("{}/chat/completions", cfg.base());
    let send = || {
        let request = http.post(&url).headers(headers.clone()).body(bytes.clone());
        async move { request.send().await.map_err(|e| transport_error(kind, "could not reach", &e)) }
    };
    send_with_retry(kind, key, opts, send).await
}

/// A whole JSON body, within the first-token timeout (a server that does not stream
/// writes its answer before it sends it).
async fn read_json(kind: ProviderKind, response: reqwest::Response, opts: &CallOptions) -> Result<Value, LlmError> {
    let name = kind.name();
    let bytes = read_body(kind, response, opts.first_token_timeout).await?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.trim().chars().take(300).collect();
        LlmError::new(format!("{name} answered with something that is not JSON: {text:?}"), None, false)
    })?;
    if json.get("error").is_some_and(|e| !e.is_null()) {
        // An error in a 200 answer: its own code when it has one.
        let status = json["error"]["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| (400..600).contains(c)).unwrap_or(400);
        return Err(error_from_body(kind, status, &bytes));
    }
    Ok(json)
}

/// The chat completion body for a neutral request.
pub(crate) fn build_body(wire: Wire, model: &str, system: &str, req: &LlmRequest, stream: bool) -> Result<Value, LlmError> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &req.messages {
        messages.push(to_openai(m)?);
    }
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if !t.description.is_empty() {
                    function["description"] = json!(t.description);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    let choice = match &req.tool_choice {
        Some(ToolChoice::Auto) => Some(json!("auto")),
        Some(ToolChoice::None) => Some(json!("none")),
        Some(ToolChoice::Required) => Some(json!("required")),
        Some(ToolChoice::Tool { name }) => Some(json!({"type": "function", "function": {"name": name}})),
        None if wire.tool_choice && !req.tools.is_empty() => Some(json!("auto")),
        None => None,
    };
    if let Some(choice) = choice {
        body["tool_choice"] = choice;
    }
    if let Some(n) = req.max_tokens {
        body[wire.max_tokens_field.as_str()] = json!(n);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(seed) = req.seed {
        body["seed"] = json!(seed);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if let Some(format) = &req.response_format {
        body["response_format"] = format.clone();
    }
    Ok(body)
}

fn to_openai(m: &Message) -> Result<Value, LlmError> {
    Ok(match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Assistant => {
            // `content` always: llama-cpp-python's templates read it even next to calls.
            let mut msg = json!({"role": "assistant", "content": m.content});
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                msg["tool_calls"] = Value::Array(calls);
            }
            msg
        }
        Role::Tool => {
            let Some(id) = &m.tool_call_id else {
                return Err(LlmError::new("a tool message needs the id of the call it answers", None, false));
            };
            json!({"role": "tool", "content": m.content, "tool_call_id": id})
        }
    })
}

fn finish_reason(reason: &str, saw_tool_call: bool) -> FinishReason {
    match reason {
        // Some servers say `stop` after calling tools.
        "stop" | "eos" if saw_tool_call => FinishReason::ToolCalls,
        "stop" | "eos" | "end_turn" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn usage_of(u: &Value) -> Option<Usage> {
    let input = u["prompt_tokens"].as_u64()?;
    Some(Usage {
        input_tokens: input,
        output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        cached_tokens: u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
    })
}

/// Tool-call arguments: JSON text, or (some servers) the object itself.
fn arguments_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The events a whole (not streamed) answer stands for.
fn decode_whole(kind: ProviderKind, json: &Value) -> Result<Vec<StreamEvent>, LlmError> {
    let name = kind.name();
    let choices = json["choices"].as_array().ok_or_else(|| LlmError::new(format!("{name} answered without choices"), None, false))?;
    let choice = choices.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0).ok_or_else(|| {
        LlmError::new(format!("{name} answered with no choice: the model produced nothing"), None, false)
    })?;
    let message = &choice["message"];
    let mut events = Vec::new();
    for text in [message["content"].as_str(), message["refusal"].as_str()].into_iter().flatten() {
        if !text.is_empty() {
            events.push(StreamEvent::Delta(Delta::Text { text: text.to_owned() }));
        }
    }
    let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (i, call) in calls.iter().enumerate() {
        events.push(StreamEvent::Delta(Delta::ToolCall {
            index: i as u32,
            id: call["id"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
            name: call["function"]["name"].as_str().map(str::to_owned),
            arguments: arguments_of(&call["function"]["arguments"]),
        }));
    }
    if events.is_empty() {
        return Err(LlmError::new(format!("{name} answered with nothing: no text and no tool call"), None, false));
    }
    let finish = choice["finish_reason"].as_str().map_or(FinishReason::Stop, |r| finish_reason(r, !calls.is_empty()));
    events.push(StreamEvent::Finish(finish));
    if let Some(u) = usage_of(&json["usage"]) {
        events.push(StreamEvent::Usage(u));
    }
    Ok(events)
}

/// Server-sent chunks to events. Tool call indexes are the provider's, except that a
/// new id at an index already used (some servers number every call 0) starts a new
/// call; a call's name is taken once (llama-cpp-python repeats it in every delta).
struct ChunkDecoder {
    kind: ProviderKind,
    /// Provider index -> (our index, id of the call there).
    calls: HashMap<u64, (u32, Option<String>)>,
    /// Our indexes whose name was sent.
    named: std::collections::HashSet<u32>,
    next_index: u32,
    saw_tool_call: bool,
    saw_anything: bool,
    finished: bool,
}

impl ChunkDecoder {
    fn new(kind: ProviderKind) -> Self {
        Self { kind, calls: HashMap::new(), named: Default::default(), next_index: 0, saw_tool_call: false, saw_anything: false, finished: false }
    }

    fn call_index(&mut self, provider_index: u64, id: Option<&str>) -> u32 {
        match self.calls.get_mut(&provider_index) {
            Some((ours, known)) => match (id, known.as_deref()) {
                (Some(new), Some(old)) if new != old => {
                    let fresh = self.next_index;
                    self.next_index += 1;
                    *ours = fresh;
                    *known = Some(new.to_owned());
                    fresh
                }
                (Some(new), None) => {
                    *known = Some(new.to_owned());
                    *ours
                }
                _ => *ours,
            },
            None => {
                let fresh = self.next_index;
                self.next_index += 1;
                self.calls.insert(provider_index, (fresh, id.map(str::to_owned)));
                fresh
            }
        }
    }

    /// The end: an answer with nothing in it is `EMPTY_STREAM`; one without a finish
    /// reason after `[DONE]` finished normally.
    fn end(&mut self, out: &mut VecDeque<StreamEvent>, done_marker: bool) -> Result<(), LlmError> {
        if self.finished {
            return Ok(());
        }
        if !self.saw_anything {
            return Err(LlmError::new(EMPTY_STREAM, None, true));
        }
        if done_marker {
            self.finished = true;
            out.push_back(StreamEvent::Finish(if self.saw_tool_call { FinishReason::ToolCalls } else { FinishReason::Stop }));
            return Ok(());
        }
        Err(LlmError::new(format!("{} stream ended before the answer was finished", self.kind.name()), None, true))
    }
}

impl Decoder for ChunkDecoder {
    type Item = eventsource_stream::Event;

    fn decode(&mut self, event: Self::Item, out: &mut VecDeque<StreamEvent>) -> Result<bool, LlmError> {
        let name = self.kind.name();
        let data = event.data.trim();
        if data == "[DONE]" {
            self.end(out, true)?;
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| LlmError::new(format!("{name} sent a chunk that is not JSON ({e}): {:?}", data.chars().take(200).collect::<String>()), None, false))?;
        // OpenRouter and others report errors mid-stream as `data: {"error": {...}}`.
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            let message = provider_message(&chunk).unwrap_or_else(|| chunk["error"].to_string());
            let status = chunk["error"]["code"].as_u64().and_then(|c| u16::try_from(c).ok());
            let retryable = status.is_none_or(|s| s == 429 || s >= 500);
            return Err(LlmError::new(format!("{name} failed mid-stream: {message}"), status, retryable));
        }
        let choices = chunk["choices"].as_array().map(Vec::as_slice).unwrap_or_default();
        // n = 1: only the first choice is ours.
        if let Some(choice) = choices.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0) {
            let delta = &choice["delta"];
            for text in [delta["content"].as_str(), delta["refusal"].as_str()].into_iter().flatten() {
                if !text.is_empty() {
                    self.saw_anything = true;
                    out.push_back(StreamEvent::Delta(Delta::Text { text: text.to_owned() }));
                }
            }
            let calls = delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
            for (position, call) in calls.iter().enumerate() {
                let id = call["id"].as_str().filter(|s| !s.is_empty());
                let index = self.call_index(call["index"].as_u64().unwrap_or(position as u64), id);
                let fresh_name = call["function"]["name"].as_str().filter(|s| !s.is_empty() && !self.named.contains(&index));
                if fresh_name.is_some() {
                    self.named.insert(index);
                }
                self.saw_tool_call = true;
                self.saw_anything = true;
                out.push_back(StreamEvent::Delta(Delta::ToolCall {
                    index,
                    id: id.map(str::to_owned),
                    name: fresh_name.map(str::to_owned),
                    arguments: arguments_of(&call["function"]["arguments"]),
                }));
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finished = true;
                self.saw_anything = true;
                out.push_back(StreamEvent::Finish(finish_reason(reason, self.saw_tool_call)));
            }
        }
        if let Some(u) = usage_of(&chunk["usage"]) {
            out.push_back(StreamEvent::Usage(u));
        }
        Ok(false)
    }

    fn end_of_input(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        self.end(out, false)
    }
}
