//! The model servers people run locally, as they really answer: exchanges recorded from
//! llama.cpp's `llama-server` and llama-cpp-python (Qwen2.5-Coder 0.5B, GGUF) by
//! scripts/local-models.sh, replayed byte for byte by the scripted provider
//! (kodel-testkit/fixtures/llm/). Each test names the quirk it covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestApp, test_config};
use futures::StreamExt;
use kodel_core::llm::{Assembler, FinishReason, LlmRequest, Message, Role, TextCalls, ToolCall, ToolSpec, Usage, text_tool_calls};
use kodel_server::config::LlmSettings;
use kodel_server::llm::provider::{self, CallOptions, LlmError, ProviderConfig, ProviderKind, StreamEvent, WireSettings};
use kodel_testkit::fresh_database;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm, fixture};
use serde_json::{Value, json};

const TOOLS: [&str; 3] = ["read_file", "write_file", "bash"];

fn tools() -> Vec<ToolSpec> {
    TOOLS.iter().map(|t| ToolSpec { name: (*t).into(), description: String::new(), parameters: json!({"type": "object"}) }).collect()
}

fn ask(text: &str) -> LlmRequest {
    LlmRequest { messages: vec![Message::text(Role::User, text)], tools: tools(), ..Default::default() }
}

fn opts() -> CallOptions {
    CallOptions { first_token_timeout: Duration::from_secs(10), timeout: Duration::from_secs(10), max_retries: 2, max_retry_wait: Duration::from_millis(20) }
}

/// A local server's settings: an OpenAI-compatible base URL, no key.
fn local(llm: &ScriptedLlm) -> ProviderConfig {
    ProviderConfig { kind: ProviderKind::OpenAi, base_url: llm.openai_base(), api_key: None, wire: WireSettings::default() }
}

/// What a call produced: the assembled message, the finish, the usage if any, or the error.
struct Answer {
    message: Message,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

async fn answer(cfg: &ProviderConfig, req: &LlmRequest) -> Result<Answer, LlmError> {
    let mut stream = provider::stream(&reqwest::Client::new(), cfg, "qwen", "You are a coding agent.", req, &opts()).await?;
    let mut a = Assembler::default();
    let (mut finish, mut usage) = (None, None);
    let read = async {
        while let Some(ev) = stream.next().await {
            match ev? {
                StreamEvent::Delta(d) => a.push(&d),
                StreamEvent::Finish(f) => finish = Some(f),
                StreamEvent::Usage(u) => usage = Some(u),
            }
        }
        Ok::<_, LlmError>(())
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("the stream ends")?;
    Ok(Answer { message: a.finish(), finish, usage })
}

async fn replay(names: &[&str]) -> ScriptedLlm {
    ScriptedLlm::start(names.iter().flat_map(|n| fixture(n).replies()).collect()).await
}

#[tokio::test]
async fn llama_server_streams_text_with_usage() {
    let llm = replay(&["llama-server/text-stream"]).await;
    let a = answer(&local(&llm), &ask("Say hello in five words.")).await.unwrap();
    assert!(!a.message.content.trim().is_empty());
    assert_eq!(a.finish, Some(FinishReason::Stop));
    // Its usage comes in a last chunk with no choices (and llama.cpp's `timings`).
    assert_eq!(a.usage, Some(Usage { input_tokens: 29, output_tokens: 5, cached_tokens: 28 }), "its prompt cache counts too");
    // Asked the way every compatible server understands.
    let sent = &llm.requests()[0].body;
    assert_eq!((&sent["stream"], &sent["tool_choice"]), (&json!(true), &json!("auto")), "{sent}");
}

#[tokio::test]
async fn a_tool_call_name_repeated_in_every_delta_is_one_name() {
    // llama-cpp-python repeats the name, id and index in all 16 deltas of one call.
    let llm = replay(&["llama-cpp-python/tools-stream-named"]).await;
    let a = answer(&local(&llm), &ask("Create hello.txt containing hi.")).await.unwrap();
    assert_eq!(a.message.tool_calls.len(), 1, "{:?}", a.message);
    let call = &a.message.tool_calls[0];
    assert_eq!(call.name, "write_file");
    assert!(call.id.starts_with("call__0_write_file_"), "{}", call.id);
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(args, json!({"path": "hello.txt", "content": "hi"}));
    assert_eq!(a.finish, Some(FinishReason::ToolCalls));
    // llama-cpp-python sends no usage in streams.
    assert_eq!(a.usage, None);
}

#[tokio::test]
async fn a_whole_answer_with_a_tool_call() {
    let llm = replay(&["llama-cpp-python/tools-named"]).await;
    let mut cfg = local(&llm);
    cfg.wire.stream = Some(false);
    let a = answer(&cfg, &ask("Create hello.txt containing hi.")).await.unwrap();
    assert_eq!(a.message.tool_calls[0].name, "write_file");
    assert_eq!(a.usage, Some(Usage { input_tokens: 258, output_tokens: 15, cached_tokens: 0 }));
    assert_eq!(llm.requests()[0].body["stream"], false);
}

#[tokio::test]
async fn the_token_limit_goes_in_the_field_local_servers_read() {
    // llama-cpp-python ignores max_completion_tokens (a whole answer for 8 tokens)...
    let ignored = fixture("llama-cpp-python/max-completion-tokens");
    assert_eq!(ignored.request(0)["max_completion_tokens"], 8);
    let text: String = ignored.exchanges[0].response.chunks.concat();
    assert!(text.contains("\"finish_reason\": \"stop\""), "recorded: it ran to the end");
    // ...and obeys max_tokens, which is what a non-OpenAI base gets.
    let llm = replay(&["llama-cpp-python/max-tokens"]).await;
    let req = LlmRequest { max_tokens: Some(8), ..ask("Count from 1 to 50.") };
    let a = answer(&local(&llm), &req).await.unwrap();
    assert_eq!(a.finish, Some(FinishReason::Length));
    let sent = &llm.requests()[0].body;
    assert_eq!(sent["max_tokens"], 8);
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
}

#[tokio::test]
async fn an_empty_stream_is_asked_again_without_streaming_and_its_error_shown() {
    // llama-cpp-python answers a context overflow in a stream with 200 and no events;
    // the same request without streaming gets its real (400) error.
    let llm = replay(&["llama-cpp-python/overflow-stream", "llama-cpp-python/overflow"]).await;
    let err = answer(&local(&llm), &ask(&"word ".repeat(50))).await.err().expect("an error");
    assert!(err.message.starts_with("the provider refused the request: This model's maximum context length is 4096 tokens"), "{}", err.message);
    assert_eq!((err.status, err.retryable), (Some(400), false), "nothing to retry");
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((&requests[0].body["stream"], &requests[1].body["stream"]), (&json!(true), &json!(false)));
}

#[tokio::test]
async fn llama_servers_overflow_is_a_refusal_not_an_unreachable_model() {
    let llm = replay(&["llama-server/overflow-stream"]).await;
    let err = answer(&local(&llm), &ask("long")).await.err().expect("an error");
    assert_eq!(
        err.message,
        "the provider refused the request: request (22500 tokens) exceeds the available context size (4096 tokens), try increasing it (openai, HTTP 400)"
    );
    assert!(!err.retryable);
    assert_eq!(llm.requests().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn an_assistant_turn_with_tool_calls_keeps_its_content() {
    // llama-cpp-python answers a turn without `content` with an empty stream, and one
    // with `content: null` with a 500; an empty string is what works.
    for (name, status) in [("llama-cpp-python/followup-no-content", 200), ("llama-cpp-python/followup-null-content", 500)] {
        let f = fixture(name);
        assert_eq!(f.exchanges[0].response.status, status, "{name}");
    }
    assert!(fixture("llama-cpp-python/followup-no-content").exchanges[0].response.chunks.is_empty());
    let llm = replay(&["llama-cpp-python/followup-empty-content"]).await;
    let mut req = ask("Create hello.txt containing hi.");
    let call = ToolCall { id: "call_1".into(), name: "write_file".into(), arguments: "{\"path\":\"hello.txt\",\"content\":\"hi\"}".into() };
    req.messages.push(Message { role: Role::Assistant, content: String::new(), tool_calls: vec![call], tool_call_id: None });
    req.messages.push(Message::tool_result("call_1", "wrote 2 bytes"));
    let a = answer(&local(&llm), &req).await.unwrap();
    assert_eq!(a.finish, Some(FinishReason::Stop));
    let sent = &llm.requests()[0].body["messages"][2];
    assert_eq!((&sent["role"], &sent["content"]), (&json!("assistant"), &json!("")), "{sent}");
}

#[tokio::test]
async fn tool_calls_written_as_text_are_recognised() {
    // llama-server with Qwen2.5-Coder 0.5B writes its call as fenced JSON.
    let llm = replay(&["llama-server/tools-stream-auto"]).await;
    let a = answer(&local(&llm), &ask("Create hello.txt containing hi.")).await.unwrap();
    assert!(a.message.tool_calls.is_empty(), "no structured call: {:?}", a.message);
    let TextCalls::Found(calls) = text_tool_calls(&a.message.content, &TOOLS) else { panic!("{:?}", a.message.content) };
    assert_eq!(calls[0].name, "write_file");
    let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert_eq!(args["path"], "hello.txt");
    // What cannot be read as a call says so: positional arguments (llama-server), and
    // llama-cpp-python's `functions.write_file:` with tool_choice "auto".
    for name in ["llama-server/text-tool-call", "llama-cpp-python/tools-stream-auto"] {
        let llm = replay(&[name]).await;
        let a = answer(&local(&llm), &ask("Create hello.txt")).await.unwrap();
        assert!(matches!(text_tool_calls(&a.message.content, &TOOLS), TextCalls::Unreadable(_)), "{name}: {:?}", a.message.content);
    }
}

#[tokio::test]
async fn the_wait_for_the_first_token_is_not_the_wait_between_tokens() {
    // The first pieces of a real answer, then silence: the shorter between-token wait
    // applies once the answer began.
    let recorded = fixture("llama-server/text-stream").exchanges[0].response.clone();
    let llm = ScriptedLlm::start(vec![Reply::RecordedThenHang { recorded, after: 1 }]).await;
    let opts = CallOptions { first_token_timeout: Duration::from_secs(30), timeout: Duration::from_millis(300), ..opts() };
    let mut stream = provider::stream(&reqwest::Client::new(), &local(&llm), "qwen", "", &ask("hi"), &opts).await.unwrap();
    let started = std::time::Instant::now();
    let mut error = None;
    while let Some(ev) = stream.next().await {
        if let Err(e) = ev {
            error = Some(e);
        }
    }
    let err = error.expect("a timeout");
    assert!(err.message.contains("sent nothing for 0.3 s; gave up on the stream (KODEL_LLM_TIMEOUT)"), "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A Kodel server whose `openai` provider is the replay, and a user's API token.
async fn gateway(llm: &ScriptedLlm) -> (TestApp, String) {
    let mut config = test_config();
    config.llm = LlmSettings { openai_base_url: Some(llm.openai_base()), llm_concurrency: 4, llm_timeout: 30.0, ..Default::default() };
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("local@example.com", "local", "LO").await;
    (app, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_counts_no_tokens_is_metered_with_an_estimate() {
    let llm = replay(&["llama-cpp-python/text-stream"]).await;
    let (app, token) = gateway(&llm).await;
    let body = json!({"model": "openai/qwen", "stream": true, "messages": [{"role": "user", "content": "Say hello in five words."}]});
    let resp = app.http.post(format!("{}/v1/chat/completions", app.base)).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let mut db = app.sql().await;
    let row: Value = sqlx::query_scalar("SELECT payload FROM analytics_outbox WHERE kind = 'llm_call'").fetch_one(&mut db).await.unwrap();
    assert_eq!(row["usage_estimated"], true, "{row}");
    assert!(row["input_tokens"].as_u64().unwrap() > 0 && row["output_tokens"].as_u64().unwrap() > 0, "not zero: {row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_a_local_servers_refusal_with_its_status() {
    let llm = replay(&["llama-server/overflow-stream"]).await;
    let (app, token) = gateway(&llm).await;
    let body = json!({"model": "openai/qwen", "stream": true, "messages": [{"role": "user", "content": "long"}]});
    let resp = app.http.post(format!("{}/v1/chat/completions", app.base)).bearer_auth(&token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 400, "not a 200 stream with an error inside");
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("exceeds the available context size"), "{v}");
}
