//! Anthropic's Messages API, native: `POST {base}/v1/messages`, streamed (`stream:
//! true`, the server-sent events parsed with eventsource-stream) or answered whole
//! (the provider's `stream` setting off).

use std::collections::VecDeque;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use kodel_core::llm::{Delta, FinishReason, LlmRequest, Role, ToolChoice, Usage};
use serde_json::{Value, json};

use super::provider::{
    CallOptions, Decoder, EMPTY_STREAM, EventStream, LlmError, ProviderConfig, ProviderKind, StreamEvent, answered, drive,
    error_chain, read_body, send_with_retry, transport_error,
};

pub const API_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 8192;

/// The call, streamed.
pub(crate) async fn streamed(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let response = post(http, cfg, &build_body(model, system, req, true)?, opts).await?;
    // reqwest's own message hides the cause; keep the whole chain.
    let bytes = response.bytes_stream().map(|r| r.map_err(|e| error_chain(&e)));
    let events = Box::pin(bytes.eventsource())
        .map(|r| r.map_err(|e| LlmError::new(format!("anthropic stream broke off: {e}"), None, true)));
    Ok(drive(events, EventDecoder::default(), opts, ProviderKind::Anthropic, cfg.key()))
}

async fn post(http: &reqwest::Client, cfg: &ProviderConfig, body: &Value, opts: &CallOptions) -> Result<reqwest::Response, LlmError> {
    let kind = ProviderKind::Anthropic;
    let key = cfg.key();
    let body = serde_json::to_vec(body).map_err(|e| LlmError::new(format!("could not encode the anthropic request: {e}"), None, false))?;
    let url = format!("{}/v1/messages", cfg.base());
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = key {
        let value = reqwest::header::HeaderValue::from_str(k)
            .map_err(|_| LlmError::new("the anthropic API key is not a valid header value", None, false))?;
        headers.insert("x-api-key", value);
    }
    headers.insert("anthropic-version", reqwest::header::HeaderValue::from_static(API_VERSION));
    headers.insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
    let send = || {
        let request = http.post(&url).headers(headers.clone()).body(body.clone());
        async move { request.send().await.map_err(|e| transport_error(kind, "could not reach", &e)) }
    };
    send_with_retry(kind, key, opts, send).await
}

/// The call without streaming: the whole message as events.
pub(crate) async fn whole(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let response = post(http, cfg, &build_body(model, system, req, false)?, opts).await?;
    let bytes = read_body(ProviderKind::Anthropic, response, opts.first_token_timeout).await?;
    let message: Value = serde_json::from_slice(&bytes)
        .map_err(|e| LlmError::new(format!("anthropic answered with something that is not JSON: {e}"), None, false))?;
    let mut events = Vec::new();
    let mut calls = 0u32;
    for block in message["content"].as_array().map(Vec::as_slice).unwrap_or_default() {
        match block["type"].as_str() {
            Some("text") => {
                if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    events.push(StreamEvent::Delta(Delta::Text { text: text.to_owned() }));
                }
            }
            Some("tool_use") => {
                events.push(StreamEvent::Delta(Delta::ToolCall {
                    index: calls,
                    id: block["id"].as_str().map(str::to_owned),
                    name: block["name"].as_str().map(str::to_owned),
                    arguments: block["input"].to_string(),
                }));
                calls += 1;
            }
            _ => {}
        }
    }
    if events.is_empty() {
        return Err(LlmError::new("anthropic answered with nothing: no text and no tool call", None, false));
    }
    events.push(StreamEvent::Finish(finish_reason(message["stop_reason"].as_str().unwrap_or("end_turn"))));
    let mut decoder = EventDecoder::default();
    decoder.read_usage(&message["usage"]);
    events.push(StreamEvent::Usage(decoder.usage));
    Ok(answered(events))
}

/// The Messages API body for a neutral request. System messages in the list join the
/// system prompt; consecutive messages of one role become one message (tool results,
/// which are user content, come first in theirs).
pub(crate) fn build_body(model: &str, system: &str, req: &LlmRequest, stream: bool) -> Result<Value, LlmError> {
    let mut systems: Vec<&str> = Vec::new();
    if !system.is_empty() {
        systems.push(system);
    }
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System => {
                if !m.content.is_empty() {
                    systems.push(&m.content);
                }
                continue;
            }
            Role::User => ("user", text_block(&m.content).into_iter().collect::<Vec<_>>()),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(&m.content).into_iter().collect();
                for c in &m.tool_calls {
                    let input = serde_json::from_str::<Value>(&c.arguments).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let Some(id) = &m.tool_call_id else {
                    return Err(LlmError::new("a tool message needs the id of the call it answers", None, false));
                };
                ("user", vec![json!({"type": "tool_result", "tool_use_id": id, "content": m.content})])
            }
        };
        if blocks.is_empty() {
            continue; // Anthropic rejects empty messages
        }
        match messages.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    let mut body = json!({
        "model": model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": stream,
    });
    if !systems.is_empty() {
        body["system"] = Value::String(systems.join("\n\n"));
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
        body["tools"] = Value::Array(tools);
    }
    if let Some(choice) = &req.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool { name } => json!({"type": "tool", "name": name}),
        };
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
    }
    // `seed` and `response_format` have no Anthropic counterpart.
    Ok(body)
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// Server-sent events to stream events. Tool calls are numbered in the order their
/// `tool_use` blocks start.
#[derive(Default)]
struct EventDecoder {
    usage: Usage,
    /// Content block index -> tool call number, for `tool_use` blocks.
    tool_blocks: Vec<(u64, u32)>,
    saw_anything: bool,
    finished: bool,
}

impl EventDecoder {
    fn tool_index(&self, block: u64) -> Option<u32> {
        self.tool_blocks.iter().find(|(b, _)| *b == block).map(|(_, i)| *i)
    }

    /// Usage fields of `message_start` and `message_delta`; later values replace earlier
    /// ones (Anthropic's counts are cumulative).
    fn read_usage(&mut self, u: &Value) {
        let n = |k: &str| u[k].as_u64();
        if n("input_tokens").is_some() || n("cache_read_input_tokens").is_some() || n("cache_creation_input_tokens").is_some() {
            let read = n("cache_read_input_tokens").unwrap_or(self.usage.cached_tokens);
            // Anthropic's input_tokens leaves out both cache reads and cache writes.
            self.usage.input_tokens = n("input_tokens").unwrap_or(0) + read + n("cache_creation_input_tokens").unwrap_or(0);
            self.usage.cached_tokens = read;
        }
        if let Some(out) = n("output_tokens") {
            self.usage.output_tokens = out;
        }
    }
}

impl Decoder for EventDecoder {
    type Item = eventsource_stream::Event;

    fn decode(&mut self, event: Self::Item, out: &mut VecDeque<StreamEvent>) -> Result<bool, LlmError> {
        let data: Value = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(_) if event.event == "ping" || event.data.trim().is_empty() => return Ok(false),
            Err(e) => {
                return Err(LlmError::new(format!("anthropic sent an event that is not JSON ({}): {e}", event.event), None, false));
            }
        };
        let kind = data["type"].as_str().unwrap_or(event.event.as_str());
        self.saw_anything |= kind != "ping";
        match kind {
            "message_start" => self.read_usage(&data["message"]["usage"]),
            "content_block_start" => {
                let block = &data["content_block"];
                let at = data["index"].as_u64().unwrap_or(0);
                match block["type"].as_str() {
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push_back(StreamEvent::Delta(Delta::Text { text: text.to_owned() }));
                        }
                    }
                    Some("tool_use") => {
                        let index = self.tool_blocks.len() as u32;
                        self.tool_blocks.push((at, index));
                        // `input` is `{}` here; the arguments come as input_json_delta.
                        out.push_back(StreamEvent::Delta(Delta::ToolCall {
                            index,
                            id: block["id"].as_str().map(str::to_owned),
                            name: block["name"].as_str().map(str::to_owned),
                            arguments: String::new(),
                        }));
                    }
                    _ => {} // thinking and other blocks are not part of the answer
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                let at = data["index"].as_u64().unwrap_or(0);
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push_back(StreamEvent::Delta(Delta::Text { text: text.to_owned() }));
                        }
                    }
                    Some("input_json_delta") => {
                        let piece = delta["partial_json"].as_str().unwrap_or_default();
                        if let Some(index) = self.tool_index(at)
                            && !piece.is_empty()
                        {
                            out.push_back(StreamEvent::Delta(Delta::ToolCall {
                                index,
                                id: None,
                                name: None,
                                arguments: piece.to_owned(),
                            }));
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.read_usage(&data["usage"]);
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    self.finished = true;
                    out.push_back(StreamEvent::Finish(finish_reason(reason)));
                    out.push_back(StreamEvent::Usage(self.usage));
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let e = &data["error"];
                let error_type = e["type"].as_str().unwrap_or("error");
                let message = e["message"].as_str().unwrap_or("no details");
                let (status, retryable) = match error_type {
                    "overloaded_error" => (Some(529), true),
                    "api_error" => (Some(500), true),
                    "rate_limit_error" => (Some(429), true),
                    _ => (None, false),
                };
                return Err(LlmError::new(format!("anthropic failed mid-stream: {error_type}: {message}"), status, retryable));
            }
            _ => {} // ping, content_block_stop, and events added later
        }
        Ok(false)
    }

    fn end_of_input(&mut self, _out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        if self.finished {
            Ok(())
        } else if !self.saw_anything {
            Err(LlmError::new(EMPTY_STREAM, None, true))
        } else {
            Err(LlmError::new("anthropic stream ended before message_stop", None, true))
        }
    }
}

fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}
