//! `/v1/chat/completions` used by the real OpenAI Python client (installed by
//! scripts/test.sh), against a scripted provider behind the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestApp, test_config};
use kodel_server::config::LlmSettings;
use kodel_testkit::fresh_database;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_uses_kodel_as_its_gateway() {
    let llm = ScriptedLlm::start(vec![
        Reply::Text("Hello there!".into()),
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "README.md"}))]),
        Reply::Status { code: 400, retry_after: None, body: "the scripted provider refuses".into() },
    ])
    .await;
    let mut config = test_config();
    config.llm = LlmSettings {
        openai_base_url: Some(llm.openai_base()),
        openai_api_key: Some("sk-gateway-secret".into()),
        default_model: Some("openai/gpt-test".into()),
        llm_concurrency: 4,
        llm_timeout: 30.0,
        ..Default::default()
    };
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("gw@example.com", "gw", "GW").await;
    let (_, pat) = app.post("/api/v1/tokens", &token, json!({"name": "gateway"})).await;
    let pat = pat["token"].as_str().unwrap().to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/openai_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("OPENAI_BASE_URL", format!("{}/v1", app.base))
        .env("OPENAI_API_KEY", &pat)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("No module named 'openai'"), "the openai package is missing: scripts/test.sh installs it (pip install openai)");
    assert!(out.status.success(), "python failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(seen["plain"]["content"], "Hello there!");
    assert_eq!(seen["plain"]["finish_reason"], "stop");
    assert!(seen["plain"]["prompt_tokens"].as_u64().unwrap() > 0);
    let calls = seen["stream"]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{seen}");
    assert_eq!(calls[0]["name"], "read_file");
    assert_eq!(serde_json::from_str::<Value>(calls[0]["arguments"].as_str().unwrap()).unwrap(), json!({"path": "README.md"}));
    assert_eq!(seen["stream"]["finish_reason"], "tool_calls");
    assert!(seen["stream"]["total_tokens"].as_u64().unwrap() > 0, "usage arrives in the last chunk");
    assert!(seen["stream"]["chunks"].as_u64().unwrap() >= 3, "it streamed: {seen}");
    assert_eq!(seen["error"]["status"], 400, "{seen}");
    assert!(seen["error"]["message"].as_str().unwrap().contains("refuses"));

    // The provider saw the server's key and the system prompt, never the Kodel token.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.header("authorization") == Some("Bearer sk-gateway-secret")));
    assert_eq!(reqs[0].body["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(reqs[1].body["model"], "gpt-test", "a bare model goes to the default provider");

    // Every call is metered in the outbox, the failed one too.
    let mut db = app.sql().await;
    let rows: Vec<Value> = sqlx::query_scalar("SELECT payload FROM analytics_outbox WHERE kind = 'llm_call' ORDER BY id").fetch_all(&mut db).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["org"], "gw");
    assert_eq!(rows[0]["status"], "ok");
    assert!(rows[0]["output_tokens"].as_u64().unwrap() > 0);
    assert_eq!(rows[2]["status"], "error");
    assert!(rows.iter().all(|r| !r["user_id"].is_null() && r["job_id"].is_null()));
}

#[tokio::test]
async fn the_gateway_needs_a_token_and_a_valid_request() {
    let app = TestApp::spawn().await;
    let resp = app.http.post(format!("{}/v1/chat/completions", app.base)).json(&json!({"model": "x", "messages": []})).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let token = app.owner_with_project("gw2@example.com", "gw2", "GW").await;
    let bad = app.http.post(format!("{}/v1/chat/completions", app.base)).bearer_auth(&token).json(&json!({"model": "x", "messages": []})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("at least one message"), "{v}");
    // No provider configured: a clear error, not a hang.
    let none = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&json!({"model": "openai/gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    let v: Value = none.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("not configured"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_own_provider_key_is_used_and_never_shown() {
    let llm = ScriptedLlm::start(vec![Reply::Text("from the org's key".into())]).await;
    // The server has no provider of its own.
    let app = TestApp::spawn().await;
    let token = app.owner_with_project("own@example.com", "own", "OWN").await;
    let (s, v) = app
        .call(reqwest::Method::PUT, "/api/v1/orgs/own/llm-providers/openai", Some(&token), Some(json!({"api_key": "sk-org-own-secret", "base_url": llm.openai_base()})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["has_key"], true);
    assert!(!v.to_string().contains("sk-org-own-secret"));
    let (_, list) = app.get("/api/v1/orgs/own/llm-providers", &token).await;
    assert!(!list.to_string().contains("sk-org-own"), "{list}");
    let (s, _) = app.call(reqwest::Method::PUT, "/api/v1/orgs/own/llm-providers/openai", Some(&token), Some(json!({"base_url": "http://user:pw@example.com"}))).await;
    assert_eq!(s, 422, "credentials in a URL are refused");

    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&json!({"model": "openai/gpt-org", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "from the org's key", "{v}");
    assert_eq!(llm.requests()[0].header("authorization"), Some("Bearer sk-org-own-secret"));

    // Sealed at rest.
    let mut db = app.sql().await;
    let raw: Vec<u8> = sqlx::query_scalar("SELECT api_key FROM org_own.llm_providers WHERE provider = 'openai'").fetch_one(&mut db).await.unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("sk-org-own-secret"));

    // Its wire settings are shown and applied to the next call (after the cache of
    // org settings is dropped by the change).
    llm.push(Reply::Text("whole".into()));
    let wire = json!({"stream": false, "max_tokens_field": "max_completion_tokens", "tool_choice": false});
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/own/llm-providers/openai", Some(&token), Some(json!({"wire": wire}))).await;
    assert_eq!((s.as_u16(), &v["wire"], &v["has_key"]), (200, &wire, &json!(true)), "the key is kept: {v}");
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/own/llm-providers/openai", Some(&token), Some(json!({"wire": {"stream": "no"}}))).await;
    assert_eq!(s, 422, "{v}");
    let body = json!({"model": "openai/gpt-org", "stream": true, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                      "tools": [{"type": "function", "function": {"name": "read_file"}}]});
    let resp = app.http.post(format!("{}/v1/chat/completions", app.base)).bearer_auth(&token).json(&body).send().await.unwrap();
    assert!(resp.text().await.unwrap().contains("whole"));
    let sent = &llm.requests()[1].body;
    assert_eq!((&sent["stream"], &sent["max_completion_tokens"]), (&json!(false), &json!(5)), "{sent}");
    assert!(sent.get("tool_choice").is_none(), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_call_and_it_is_still_metered() {
    let long = "word ".repeat(400);
    let llm = ScriptedLlm::start(vec![Reply::Text(long)]).await.with_chunk_delay(std::time::Duration::from_millis(20));
    let mut config = test_config();
    config.llm = LlmSettings { openai_base_url: Some(llm.openai_base()), openai_api_key: Some("k".into()), llm_concurrency: 4, llm_timeout: 30.0, ..Default::default() };
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("leave@example.com", "leave", "LV").await;
    let mut resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&json!({"model": "openai/gpt-test", "stream": true, "messages": [{"role": "user", "content": "talk"}]}))
        .send()
        .await
        .unwrap();
    // A few chunks arrive, then the client goes away.
    for _ in 0..3 {
        resp.chunk().await.unwrap().unwrap();
    }
    drop(resp);
    let mut db = app.sql().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let row: Value = loop {
        let row: Option<Value> = sqlx::query_scalar("SELECT payload FROM analytics_outbox WHERE kind = 'llm_call'").fetch_optional(&mut db).await.unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned call was never metered");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(row["status"], "cancelled", "{row}");
    // It stopped early: far from the 8 s the whole answer takes.
    assert!(row["total_ms"].as_u64().unwrap() < 5_000, "{row}");
}

#[tokio::test]
async fn orgs_cannot_point_the_server_at_private_addresses() {
    let mut config = test_config();
    config.allow_private_urls = false;
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("ssrf@example.com", "ssrf", "SS").await;
    for url in ["http://127.0.0.1:11434/v1", "http://169.254.169.254/latest", "http://localhost/v1"] {
        let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/ssrf/llm-providers/openai", Some(&token), Some(json!({"base_url": url}))).await;
        assert_eq!(s, 422, "{url}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("private or local address"), "{v}");
    }
    let rule = json!({"name": "hook", "project": "SS", "trigger": {"type": "task_created"},
                      "actions": [{"webhook": {"url": "http://10.0.0.5/hook"}}]});
    let (s, v) = app.post("/api/v1/orgs/ssrf/rules", &token, rule).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("webhook"), "{v}");
}

#[tokio::test]
async fn an_unreachable_ollama_says_what_to_do() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = test_config();
    config.llm = LlmSettings { ollama_base_url: Some(format!("http://127.0.0.1:{closed}")), llm_concurrency: 4, llm_timeout: 10.0, ..Default::default() };
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("olla@example.com", "olla", "OL").await;
    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&json!({"model": "ollama/qwen2.5-coder", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    // What to do comes first (lists and logs cut messages short), the cause after.
    assert!(msg.starts_with("Ollama does not answer: start it (`ollama serve`"), "{msg}");
    assert!(msg.contains("KODEL_DEFAULT_MODEL") && msg.contains("could not reach ollama"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_passes_on_what_the_client_asked_and_keeps_the_providers_status() {
    let refuse = |code: u16, message: &str| Reply::Status { code, retry_after: None, body: message.into() };
    let llm = ScriptedLlm::start(vec![
        Reply::Text("{\"ok\": true}".into()),
        refuse(401, "Incorrect API key provided"),
        refuse(404, "model 'nope' not found"),
        refuse(422, "stop must be shorter"),
        refuse(404, "model 'nope' not found"),
    ])
    .await;
    let mut config = test_config();
    config.llm = LlmSettings { openai_base_url: Some(llm.openai_base()), openai_api_key: Some("sk-gateway-0123456789".into()), llm_concurrency: 4, llm_timeout: 30.0, ..Default::default() };
    let app = TestApp::spawn_with(fresh_database().await, config).await;
    let token = app.owner_with_project("pass@example.com", "pass", "PS").await;
    let ask = |extra: Value| {
        let mut body = json!({"model": "openai/local", "messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (s, v) = app
        .post(
            "/v1/chat/completions",
            &token,
            ask(json!({"tool_choice": "required", "stop": ["END"], "seed": 7, "top_p": 0.5, "max_tokens": 9,
                       "response_format": {"type": "json_object"}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sent = &llm.requests()[0].body;
    assert_eq!((&sent["tool_choice"], &sent["stop"], &sent["seed"]), (&json!("required"), &json!(["END"]), &json!(7)), "{sent}");
    assert_eq!((&sent["top_p"], &sent["response_format"], &sent["max_tokens"]), (&json!(0.5), &json!({"type": "json_object"}), &json!(9)), "{sent}");

    // The provider's refusals keep their status and say what it said.
    // A refused provider key is the server's problem, not the caller's token: 502.
    for (status, said) in [(502, "Incorrect API key"), (404, "not found"), (422, "stop must be shorter")] {
        let (s, v) = app.post("/v1/chat/completions", &token, ask(json!({}))).await;
        assert_eq!(s, status, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("the provider refused the request: ") && message.contains(said), "{message}");
    }
    // Streamed too: nothing is sent before the provider answered, so the error is the
    // response, not a 200 stream with an error in it.
    let resp = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&token)
        .json(&ask(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("model 'nope' not found"), "{v}");
    assert_eq!(llm.requests().len(), 5, "refusals are not retried");

    // An org that sets only how to speak keeps the server's endpoint and key.
    llm.push(Reply::Text("whole".into()));
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/pass/llm-providers/openai", Some(&token), Some(json!({"wire": {"stream": false}}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app.call(reqwest::Method::PUT, "/api/v1/orgs/pass/llm-providers/openai", Some(&token), Some(json!({"wire": {"straem": false}}))).await;
    assert_eq!(s, 422, "a misspelt setting is refused, not stored as the defaults: {v}");
    let (s, v) = app.post("/v1/chat/completions", &token, ask(json!({}))).await;
    assert_eq!(s, 200, "{v}");
    let sent = &llm.requests()[5];
    assert_eq!((sent.header("authorization"), &sent.body["stream"]), (Some("Bearer sk-gateway-0123456789"), &json!(false)));
}
