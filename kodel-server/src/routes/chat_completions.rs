//! `POST /v1/chat/completions`: an OpenAI-compatible gateway for API tokens, so existing
//! tools can call any configured provider through Kodel (metered, keys kept here).
//!
//! The org: the `OpenAI-Organization` header (what OpenAI clients send for
//! `organization=`) or `X-Kodel-Org`, else the caller's only org. The model is
//! `provider/model`; a bare name goes to the provider of `KODEL_DEFAULT_MODEL`.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kodel_core::OrgSlug;
use kodel_core::llm::{Delta, FinishReason, LlmDone, LlmRequest, Message, Role, ToolCall, ToolChoice, ToolSpec, Usage};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::Auth;
use crate::llm::{Caller, LlmError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(completions))
}

/// An OpenAI-shaped error (`{"error": {message, type, code}}`), which OpenAI clients
/// turn into their own exceptions.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "code": Value::Null, "param": Value::Null } });
    (status, axum::Json(body)).into_response()
}

/// An OpenAI-shaped error: `{error: {message, type, code, param}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct OpenAiErrorDetail {
    message: String,
    /// `invalid_request_error`, `provider_error`, `server_error`, ...
    #[serde(rename = "type")]
    kind: String,
    code: Option<String>,
    param: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatRequest {
    /// `provider/model`, or a bare name for the default provider.
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Vec<ChatTool>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    /// "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.
    #[serde(default)]
    tool_choice: Option<Value>,
    /// A string or up to 4 strings.
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<i64>,
    /// Passed to OpenAI-compatible providers as given.
    #[serde(default)]
    response_format: Option<Value>,
}

fn tool_choice(v: Option<Value>) -> Result<Option<ToolChoice>, String> {
    let Some(v) = v else { return Ok(None) };
    Ok(Some(match (v.as_str(), v["function"]["name"].as_str()) {
        (Some("auto"), _) => ToolChoice::Auto,
        (Some("none"), _) => ToolChoice::None,
        (Some("required"), _) => ToolChoice::Required,
        (None, Some(name)) => ToolChoice::Tool { name: name.to_owned() },
        _ => return Err("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}".into()),
    }))
}

fn stop(v: Option<Value>) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items.into_iter().map(|i| i.as_str().map(str::to_owned).ok_or_else(|| "stop must be a string or an array of strings".to_owned())).collect(),
        Some(_) => Err("stop must be a string or an array of strings".into()),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatMessage {
    /// system, developer, user, assistant or tool.
    role: String,
    /// A string, or an array of text parts.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Vec<ChatToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatToolCall {
    id: String,
    function: ChatFunctionCall,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatTool {
    function: ChatFunction,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatFunction {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// Text of a message's content: a string, or the text parts of a parts array.
fn text_of(content: &Option<Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_owned()),
                (kind, _) => Err(format!("content parts of type {} are not supported; send text", kind.unwrap_or("?"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|t| t.join("")),
        Some(_) => Err("message content must be a string or an array of text parts".into()),
    }
}

/// The neutral request, with the system messages taken out as the system prompt.
fn neutral(req: ChatRequest) -> Result<(String, LlmRequest, bool, bool), String> {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in req.messages {
        let content = text_of(&m.content)?;
        let role = match m.role.as_str() {
            "system" | "developer" => {
                system.push(content);
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(format!("message role {other:?} is not supported")),
        };
        let tool_calls = m.tool_calls.into_iter().map(|c| ToolCall { id: c.id, name: c.function.name, arguments: c.function.arguments }).collect();
        messages.push(Message { role, content, tool_calls, tool_call_id: m.tool_call_id });
    }
    let tools = req
        .tools
        .into_iter()
        .map(|t| ToolSpec {
            name: t.function.name,
            description: t.function.description,
            parameters: t.function.parameters.unwrap_or_else(|| json!({ "type": "object", "properties": {} })),
        })
        .collect();
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let request = LlmRequest {
        messages,
        tools,
        model: Some(req.model),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        tool_choice: tool_choice(req.tool_choice)?,
        stop: stop(req.stop)?,
        seed: req.seed,
        response_format: req.response_format,
    };
    request.validate()?;
    Ok((system.join("\n\n"), request, req.stream, include_usage))
}

/// The org the call is billed to.
async fn org_of(state: &AppState, auth: &Auth, headers: &HeaderMap) -> Result<(Uuid, OrgSlug), Response> {
    let asked = ["openai-organization", "x-kodel-org"].iter().find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()));
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT o.id, o.slug FROM public.orgs o JOIN public.org_members m ON m.org_id = o.id
         WHERE m.user_id = $1 AND ($2::text IS NULL OR o.slug = $2) AND o.migration_error IS NULL ORDER BY o.slug LIMIT 2",
    )
    .bind(auth.user.id)
    .bind(asked)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "looking up the caller's orgs");
        error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal server error")
    })?;
    match (rows.as_slice(), asked) {
        ([(id, slug)], _) => Ok((*id, OrgSlug::parse(slug).map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "bad org slug"))?)),
        ([], Some(org)) => Err(error(StatusCode::NOT_FOUND, "invalid_request_error", format!("you are not a member of org {org:?}"))),
        ([], None) => Err(error(StatusCode::FORBIDDEN, "invalid_request_error", "you are not a member of any org")),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "you belong to several orgs: name one with the OpenAI-Organization or X-Kodel-Org header",
        )),
    }
}

/// The provider's own status for what it refused (404, 422, 429...), but 502 for a
/// refused key (401, 403: the server's or org's key, not the caller's token); 502 for
/// its failures and when nothing answers at its address; 400 for what Kodel refused
/// before asking.
fn status_of(e: &LlmError) -> StatusCode {
    if e.over_budget {
        return StatusCode::PAYMENT_REQUIRED;
    }
    match e.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => StatusCode::BAD_GATEWAY,
        Some(s) if s.is_client_error() => s,
        Some(_) => StatusCode::BAD_GATEWAY,
        None if e.unreachable => StatusCode::BAD_GATEWAY,
        None if !e.retryable => StatusCode::BAD_REQUEST,
        None => StatusCode::BAD_GATEWAY,
    }
}

fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "provider_error",
    }
}

fn llm_error(e: &LlmError) -> Response {
    let status = status_of(e);
    if e.over_budget {
        let body = json!({ "error": { "message": e.message, "type": "insufficient_quota", "code": "budget_exceeded", "param": Value::Null } });
        return (status, axum::Json(body)).into_response();
    }
    error(status, error_kind(status), e.message.clone())
}

#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "llm",
    summary = "OpenAI-compatible chat completions through Kodel's LLM proxy, for API tokens",
    description = "Streamed with `stream: true` (SSE chunks, then `data: [DONE]`). Model `provider/model` or a bare name for the default provider; org from `OpenAI-Organization` or `X-Kodel-Org` when the caller has several. Errors are OpenAI-shaped: {error: {message, type, code}}, except a missing or bad token (Kodel's 401). A provider's refusal keeps its status (404, 422, 429...; a refused provider key is a 502); nothing is streamed before the provider's first piece, so an error before it is a plain error response.",
    request_body = ChatRequest,
    responses((status = OK, description = "a chat.completion object, or (stream: true) an event stream of chat.completion.chunk objects", content(
            (Object = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = BAD_REQUEST, description = "not a chat completion request, several orgs and none named, or the provider refused it", body = OpenAiError),
        (status = UNAUTHORIZED, description = "`unauthorized`: missing, invalid, expired or revoked credentials", body = kodel_core::error::ErrorBody),
        (status = PAYMENT_REQUIRED, description = "`budget_exceeded`: a budget of the org is spent; nothing was sent to the provider", body = OpenAiError),
        (status = FORBIDDEN, description = "the caller is in no org", body = OpenAiError),
        (status = NOT_FOUND, description = "the caller is not a member of the named org, or the provider has no such model", body = OpenAiError),
        (status = UNPROCESSABLE_ENTITY, description = "the provider could not process the request", body = OpenAiError),
        (status = TOO_MANY_REQUESTS, description = "the provider's or the proxy's limit", body = OpenAiError),
        (status = INTERNAL_SERVER_ERROR, description = "server error", body = OpenAiError),
        (status = BAD_GATEWAY, description = "the provider failed", body = OpenAiError),
        (status = SERVICE_UNAVAILABLE, description = "no provider is set up, or it is busy", body = OpenAiError)),
    security(("bearer" = []))
)]
async fn completions(State(state): State<AppState>, auth: Auth, headers: HeaderMap, body: Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("the request is not a chat completion request: {e}")),
    };
    let (system, request, stream, include_usage) = match neutral(req) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let (org_id, slug) = match org_of(&state, &auth, &headers).await {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let caller = Caller { org_id, slug, job: None, template_model: None, user: Some(auth.user.id) };
    let id = format!("chatcmpl-{}", Uuid::now_v7().simple());
    let created = chrono::Utc::now().timestamp();
    if !stream {
        return match state.llm.call(&state, &caller, &system, &request, std::future::pending(), |_| {}).await {
            Ok(done) => axum::Json(completion(&id, created, &done)).into_response(),
            Err(e) => llm_error(&e),
        };
    }
    // Streamed: the call runs in its own task and sends chunks as they come. Nothing is
    // sent before the provider's first piece: an error before it is a plain error
    // response with the provider's status, not a 200 stream with an error in it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
    let model = request.model.clone().unwrap_or_default();
    tokio::spawn({
        let tx = tx.clone();
        async move {
            // A client that goes away stops the call (and what it costs); it is metered.
            let closed = tx.clone();
            let result = state.llm.call(&state, &caller, &system, &request, closed.closed(), |d| {
                let _ = tx.send(Piece::Delta(d.clone()));
            }).await;
            let _ = tx.send(Piece::End(result));
        }
    });
    drop(tx);
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
    };
    let first = match rx.recv().await {
        Some(Piece::End(Err(e))) => return llm_error(&e),
        None => return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the call ended without an answer"),
        Some(first) => first,
    };
    let role = chunk(json!({ "role": "assistant", "content": "" }), None);
    let rest = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let events = futures::stream::once(async move { first }).chain(rest).flat_map(move |piece| {
        let chunks = match piece {
            Piece::Delta(d) => vec![chunk(delta_json(&d), None)],
            Piece::End(Ok(done)) => {
                let last = chunk(json!({}), Some(finish_of(done.finish_reason)));
                let usage = json!({ "id": last["id"], "object": "chat.completion.chunk", "created": created,
                                    "model": last["model"], "choices": [], "usage": usage_of(done.usage) });
                if include_usage { vec![last, usage] } else { vec![last] }
            }
            Piece::End(Err(e)) => vec![json!({ "error": { "message": e.message, "type": error_kind(status_of(&e)), "code": Value::Null } })],
        };
        futures::stream::iter(chunks)
    });
    let events = futures::stream::once(async move { role })
        .chain(events)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Sse::new(events).into_response()
}

/// What the call task hands the response: a piece of the answer, or its end.
enum Piece {
    Delta(Delta),
    End(Result<LlmDone, LlmError>),
}

fn delta_json(d: &Delta) -> Value {
    match d {
        Delta::Text { text } => json!({ "content": text }),
        Delta::ToolCall { index, id, name, arguments } => {
            let mut call = json!({ "index": index, "function": { "arguments": arguments } });
            if let Some(id) = id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            if let Some(name) = name {
                call["function"]["name"] = json!(name);
            }
            json!({ "tool_calls": [call] })
        }
    }
}

fn finish_of(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Other => "stop",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn usage_of(u: Usage) -> Value {
    json!({ "prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens, "total_tokens": u.total(),
            "prompt_tokens_details": { "cached_tokens": u.cached_tokens } })
}

fn completion(id: &str, created: i64, done: &LlmDone) -> Value {
    let mut message = json!({ "role": "assistant", "content": done.message.content });
    if !done.message.tool_calls.is_empty() {
        message["tool_calls"] = done
            .message
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect();
    }
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": done.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_of(done.finish_reason) }],
        "usage": usage_of(done.usage),
    })
}
