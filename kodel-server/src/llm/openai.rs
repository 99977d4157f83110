//! OpenAI, OpenRouter and Ollama: streamed chat completions through async-openai. Our
//! own tower service sends the requests, so the retry policy (and `Retry-After`) is the
//! one in `provider`, and a config without a key sends no `Authorization` header.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequest, CreateChatCompletionStreamResponse, FinishReason as OaFinish, FunctionCall,
    FunctionObject,
};
use futures::StreamExt;
use kodel_core::llm::{Delta, FinishReason, LlmRequest, Message, Role, ToolSpec, Usage};

use super::provider::{
    CallOptions, Decoder, EventStream, LlmError, ProviderConfig, ProviderKind, StreamEvent, drive, provider_message,
    send_with_retry, transport_error,
};

pub(crate) async fn stream(
    http: &reqwest::Client,
    cfg: &ProviderConfig,
    model: &str,
    system: &str,
    req: &LlmRequest,
    opts: &CallOptions,
) -> Result<EventStream, LlmError> {
    let kind = cfg.kind;
    let key = cfg.key();
    let request = build_request(kind, model, system, req)?;
    if let Some(k) = key {
        // async-openai panics on a key that cannot be a header value.
        reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
            .map_err(|_| LlmError::new(format!("the {} API key is not a valid header value", kind.name()), None, false))?;
    }
    let config = OpenAIConfig::new()
        .with_api_base(cfg.base())
        .with_api_key(key.unwrap_or_default())
        .with_org_id("")
        .with_project_id("");
    let service = {
        let http = http.clone();
        let opts = opts.clone();
        let key: Option<Arc<str>> = key.map(Arc::from);
        tower::service_fn(move |factory: HttpRequestFactory| {
            let http = http.clone();
            let opts = opts.clone();
            let key = key.clone();
            async move {
                let has_key = key.is_some();
                let send = || {
                    let factory = factory.clone();
                    let http = http.clone();
                    async move {
                        let mut request = factory
                            .build()
                            .await
                            .map_err(|e| LlmError::new(format!("could not build the {} request: {e}", kind.name()), None, false))?;
                        if !has_key {
                            request.headers_mut().remove(reqwest::header::AUTHORIZATION);
                        }
                        http.execute(request).await.map_err(|e| transport_error(kind, "could not reach", &e))
                    }
                };
                send_with_retry(kind, key.as_deref(), &opts, send).await.map_err(|e| OpenAIError::Boxed(Box::new(e)))
            }
        })
    };
    let client = Client::build(http.clone(), config).with_http_service(service);
    let chunks = client.chat().create_stream(request).await.map_err(|e| map_error(kind, e).redact(key))?;
    let source = chunks.map(move |r| r.map_err(|e| map_error(kind, e)));
    Ok(drive(source, ChunkDecoder::new(kind), opts.timeout, kind, key))
}

/// The chat completion request for a neutral one.
pub(crate) fn build_request(
    kind: ProviderKind,
    model: &str,
    system: &str,
    req: &LlmRequest,
) -> Result<CreateChatCompletionRequest, LlmError> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if !system.is_empty() {
        messages.push(system_message(system));
    }
    for m in &req.messages {
        messages.push(to_openai(m)?);
    }
    let tools = (!req.tools.is_empty()).then(|| req.tools.iter().map(to_tool).collect());
    #[allow(deprecated)] // `max_tokens`: what OpenRouter and Ollama read
    let request = CreateChatCompletionRequest {
        model: model.to_owned(),
        messages,
        tools,
        temperature: req.temperature,
        // OpenAI rejects `max_tokens` for its reasoning models; the others read it.
        max_completion_tokens: req.max_tokens.filter(|_| kind == ProviderKind::OpenAi),
        max_tokens: req.max_tokens.filter(|_| kind != ProviderKind::OpenAi),
        stream: Some(true),
        stream_options: Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None }),
        ..Default::default()
    };
    Ok(request)
}

fn system_message(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
        content: ChatCompletionRequestSystemMessageContent::Text(text.to_owned()),
        name: None,
    })
}

fn to_openai(m: &Message) -> Result<ChatCompletionRequestMessage, LlmError> {
    Ok(match m.role {
        Role::System => system_message(&m.content),
        Role::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: ChatCompletionRequestUserMessageContent::Text(m.content.clone()),
            name: None,
        }),
        Role::Assistant => {
            let calls: Vec<_> = m
                .tool_calls
                .iter()
                .map(|c| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: c.id.clone(),
                        function: FunctionCall { name: c.name.clone(), arguments: c.arguments.clone() },
                    })
                })
                .collect();
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content: (!m.content.is_empty() || calls.is_empty())
                    .then(|| ChatCompletionRequestAssistantMessageContent::Text(m.content.clone())),
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..Default::default()
            })
        }
        Role::Tool => {
            let Some(id) = &m.tool_call_id else {
                return Err(LlmError::new("a tool message needs the id of the call it answers", None, false));
            };
            ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                content: ChatCompletionRequestToolMessageContent::Text(m.content.clone()),
                tool_call_id: id.clone(),
            })
        }
    })
}

fn to_tool(t: &ToolSpec) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: t.name.clone(),
            description: (!t.description.is_empty()).then(|| t.description.clone()),
            parameters: Some(t.parameters.clone()),
            strict: None,
        },
    })
}

/// An async-openai error as ours. Errors of our own service come back as they were.
fn map_error(kind: ProviderKind, e: OpenAIError) -> LlmError {
    let name = kind.name();
    match e {
        OpenAIError::Boxed(b) => match b.downcast::<LlmError>() {
            Ok(e) => *e,
            Err(b) => LlmError::new(format!("{name} call failed: {b}"), None, false),
        },
        OpenAIError::ApiError(a) => {
            let status = a.status_code.as_u16();
            let retryable = status == 429 || a.status_code.is_server_error();
            LlmError::new(format!("{name} returned {status}: {}", a.api_error.message), Some(status), retryable)
        }
        OpenAIError::Reqwest(e) => transport_error(kind, "lost the connection to", &e),
        OpenAIError::StreamError(e) => LlmError::new(format!("{name} stream broke off: {e}"), None, true),
        // A chunk that is not a completion chunk: OpenRouter and others report errors
        // mid-stream as `data: {"error": {...}}`.
        OpenAIError::JSONDeserialize(err, content) => {
            let json: Option<serde_json::Value> = serde_json::from_str(&content).ok();
            match json.as_ref().filter(|j| j.get("error").is_some()).and_then(provider_message) {
                Some(message) => {
                    let status = json.as_ref().and_then(|j| j["error"]["code"].as_u64()).and_then(|c| u16::try_from(c).ok());
                    let retryable = status.is_none_or(|s| s == 429 || s >= 500);
                    LlmError::new(format!("{name} failed mid-stream: {message}"), status, retryable)
                }
                None => LlmError::new(format!("{name} sent a chunk that is not a chat completion chunk: {err}"), None, false),
            }
        }
        other => LlmError::new(format!("{name} call failed: {other}"), None, false),
    }
}

/// Chunks to events. Tool call indexes are the provider's, except that a new id at an
/// index already used (some OpenAI-compatible servers number every call 0) starts a new
/// call.
struct ChunkDecoder {
    kind: ProviderKind,
    /// Provider index -> (our index, id of the call there).
    calls: HashMap<u32, (u32, Option<String>)>,
    next_index: u32,
    saw_tool_call: bool,
    finished: bool,
}

impl ChunkDecoder {
    fn new(kind: ProviderKind) -> Self {
        Self { kind, calls: HashMap::new(), next_index: 0, saw_tool_call: false, finished: false }
    }

    fn call_index(&mut self, provider_index: u32, id: Option<&str>) -> u32 {
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
}

impl Decoder for ChunkDecoder {
    type Item = CreateChatCompletionStreamResponse;

    fn decode(&mut self, chunk: Self::Item, out: &mut VecDeque<StreamEvent>) -> Result<bool, LlmError> {
        // n = 1: only the first choice is ours.
        if let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) {
            let delta = choice.delta;
            for text in [delta.content, delta.refusal].into_iter().flatten() {
                if !text.is_empty() {
                    out.push_back(StreamEvent::Delta(Delta::Text { text }));
                }
            }
            for call in delta.tool_calls.unwrap_or_default() {
                let (name, arguments) = call.function.map(|f| (f.name, f.arguments)).unwrap_or_default();
                let index = self.call_index(call.index, call.id.as_deref());
                self.saw_tool_call = true;
                out.push_back(StreamEvent::Delta(Delta::ToolCall {
                    index,
                    id: call.id.filter(|s| !s.is_empty()),
                    name: name.filter(|s| !s.is_empty()),
                    arguments: arguments.unwrap_or_default(),
                }));
            }
            if let Some(reason) = choice.finish_reason {
                self.finished = true;
                let reason = match reason {
                    // Some servers say `stop` after calling tools.
                    OaFinish::Stop if self.saw_tool_call => FinishReason::ToolCalls,
                    OaFinish::Stop => FinishReason::Stop,
                    OaFinish::Length => FinishReason::Length,
                    OaFinish::ToolCalls | OaFinish::FunctionCall => FinishReason::ToolCalls,
                    OaFinish::ContentFilter => FinishReason::ContentFilter,
                };
                out.push_back(StreamEvent::Finish(reason));
            }
        }
        if let Some(u) = chunk.usage {
            let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
            out.push_back(StreamEvent::Usage(Usage {
                input_tokens: u64::from(u.prompt_tokens),
                output_tokens: u64::from(u.completion_tokens),
                cached_tokens: u64::from(cached),
            }));
        }
        // `data: [DONE]` ends async-openai's stream; nothing marks it here.
        Ok(false)
    }

    fn end_of_input(&mut self, _out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        if self.finished {
            Ok(())
        } else {
            Err(LlmError::new(format!("{} stream ended before the answer was finished", self.kind.name()), None, true))
        }
    }
}
