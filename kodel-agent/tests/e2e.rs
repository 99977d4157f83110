//! End to end with the real binaries: `kodel-server` on a real PostgreSQL, real
//! `kodel-agent` processes, and a scripted LLM provider speaking OpenAI's and
//! Anthropic's streaming formats (the only part that is not real: no model is
//! reachable here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Stack;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

fn six_tools() -> Vec<Reply> {
    vec![
        Reply::TextAndTools("I'll write the file first.".into(), vec![("write_file".into(), json!({"path": "src/hello.txt", "content": "hello\nworld\n"}))]),
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "src/hello.txt"}))]),
        Reply::ToolCalls(vec![("edit_file".into(), json!({"path": "src/hello.txt", "old_string": "world", "new_string": "kodel"}))]),
        Reply::ToolCalls(vec![("bash".into(), json!({"command": "echo from-bash > bash.txt && cat src/hello.txt"}))]),
        Reply::ToolCalls(vec![("glob".into(), json!({"pattern": "**/*.txt"})), ("grep".into(), json!({"pattern": "kod+el"}))]),
        Reply::Text("Done: src/hello.txt now greets kodel.".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_a_job_with_all_six_tools_through_the_openai_format() {
    let llm = ScriptedLlm::start(six_tools()).await;
    let mut stack = Stack::start(&llm, "openai").await;
    stack.agent("worker-1");
    let key = stack.task_in_progress("Greet kodel").await;

    let done = stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["summary"], "Done: src/hello.txt now greets kodel.");

    // The files changed in the task's workspace.
    let ws = stack.workspace(&key);
    assert_eq!(std::fs::read_to_string(ws.join("src/hello.txt")).unwrap(), "hello\nkodel\n");
    assert_eq!(std::fs::read_to_string(ws.join("bash.txt")).unwrap(), "from-bash\n");

    // Each tool ran once, in order, and its step is on the task's stream.
    let steps = stack.events_of("job.step");
    let tools: Vec<&str> = steps.iter().filter_map(|s| s["step"]["tool"].as_str()).collect();
    assert_eq!(tools, ["write_file", "read_file", "edit_file", "bash", "glob", "grep"]);
    let seqs: Vec<u64> = steps.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "steps once each, in order");
    let out = |tool: &str| steps.iter().find(|s| s["step"]["tool"] == tool).unwrap()["step"]["output"].as_str().unwrap().to_owned();
    assert!(out("read_file").contains("world"), "{}", out("read_file"));
    assert!(out("bash").contains("hello\nkodel"), "{}", out("bash"));
    assert!(out("glob").contains("src/hello.txt"), "{}", out("glob"));
    assert!(out("grep").contains("src/hello.txt:2:kodel"), "{}", out("grep"));
    // The model's words are a step too, and streamed live while it spoke.
    assert!(stack.events_of("job.step").iter().any(|s| s["step"]["kind"] == "message"));
    let live: String = stack.events_of("job.output").iter().filter(|e| e["source"] == "model").filter_map(|e| e["text"].as_str()).collect();
    assert!(live.contains("write the file first"), "live text: {live:?}");

    // The provider got the key (only the server holds it), the system prompt, the six
    // tools, and each tool's result in the next request.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 6);
    assert!(reqs.iter().all(|r| r.header("authorization") == Some("Bearer sk-test-secret")));
    assert_eq!(reqs[0].body["messages"][0]["role"], "system");
    assert_eq!(reqs[0].body["tools"].as_array().unwrap().len(), 6);
    let second = reqs[1].body["messages"].as_array().unwrap();
    let tool_msg = second.iter().find(|m| m["role"] == "tool").expect("the tool result goes back to the model");
    assert!(tool_msg["content"].as_str().unwrap().contains("bytes"), "{tool_msg}");

    // Metered: one job.llm_call per request, usage on the job.
    let calls = stack.events_of("job.llm_call");
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c["status"] == "ok" && c["input_tokens"].as_u64().unwrap() > 0));
    let job = stack.job(&key).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["usage"]["llm_calls"], 6, "{job}");

    // The agent is listed, idle again.
    let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
    assert_eq!(agents["data"][0]["name"], "worker-1");
    assert_eq!(agents["data"][0]["status"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_through_the_anthropic_format() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "notes.md", "content": "# Notes\n"}))]),
        Reply::Text("Wrote notes.md.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "anthropic").await;
    // `kodel task logs -f` follows the task from before the job starts.
    let t = stack.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "Write notes"})).await;
    let key = t["key"].as_str().unwrap().to_owned();
    let mut follower = stack.kodel().args(["task", "logs", &key, "-f"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let follower_out = Arc::new(Mutex::new(String::new()));
    {
        let sink = follower_out.clone();
        let mut stdout = follower.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    stack.agents.push(follower); // stopped with the stack
    stack.follow(&key).await;
    stack.agent("worker-a");
    for status in ["Ready", "In Progress"] {
        stack.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
    }
    let done = stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["summary"], "Wrote notes.md.");
    assert_eq!(std::fs::read_to_string(stack.workspace(&key).join("notes.md")).unwrap(), "# Notes\n");
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.format == "anthropic" && r.header("x-api-key") == Some("sk-ant-test-secret")));
    assert!(reqs[0].body["system"].as_str().unwrap().contains("software engineer"));
    // The tool result went back as a tool_result block.
    let last = reqs[1].body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"][0]["type"], "tool_result", "{last}");

    // The task's story as text, and as NDJSON.
    let out = stack.kodel().args(["task", "logs", &key]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in ["task.created", "Backlog -> Ready", "job.started", "write_file {\"content\":\"# Notes\\n\",\"path\":\"notes.md\"}", "job.llm_call", "said: Wrote notes.md.", "job.succeeded"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let out = stack.kodel().args(["task", "logs", &key, "--json", "--since", "2"]).output().unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.first().unwrap()["seq"].as_i64().unwrap() == 3, "--since 2 starts after event 2");
    assert!(lines.iter().any(|e| e["type"] == "job.step"));
    // The follower saw it all happen, live text included, without a repeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !follower_out.lock().unwrap().contains("job.succeeded") {
        assert!(Instant::now() < deadline, "the follower did not see the job end:\n{}", follower_out.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let followed = follower_out.lock().unwrap().clone();
    assert_eq!(followed.matches("job.succeeded").count(), 1, "{followed}");
    assert!(followed.contains("Wrote notes.md."), "{followed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_its_agent_mid_job() {
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls(vec![("bash".into(), json!({"command": "echo started; sleep 30; echo never > late.txt"}))])]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    stack.agent("worker-c");
    let key = stack.task_in_progress("Slow work").await;
    // The bash step is running once its live output shows.
    let live = stack.wait_event("job.output", Duration::from_secs(60)).await;
    let job = stack.job(&key).await;
    assert_eq!(job["status"], "running");
    stack.call("POST", &format!("/api/v1/orgs/acme/jobs/{}/cancel", job["id"].as_str().unwrap()), json!({})).await;
    stack.wait_event("job.cancelled", Duration::from_secs(10)).await;
    // The agent stopped and is idle again, and took no further step.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
        if agents["data"][0]["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not become idle: {agents}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(live["text"].as_str().is_some_and(|t| t.contains("started")), "{live} {:?}", stack.events.lock().unwrap());
    assert_eq!(llm.requests().len(), 1, "no LLM call after the cancel");
    assert!(stack.events_of("job.step").is_empty(), "the cut-off bash step is not reported");
    assert!(!stack.workspace(&key).join("late.txt").exists(), "the command was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_is_requeued_and_finished_by_another() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "first.txt", "content": "first agent\n"}))]),
        Reply::ToolCalls(vec![("bash".into(), json!({"command": "echo first; sleep 60"}))]),
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "done.txt", "content": "second agent\n"}))]),
        Reply::Text("Finished by the second agent.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    let first = stack.agent("worker-1");
    let key = stack.task_in_progress("Survive a crash").await;
    stack.wait_event("job.output", Duration::from_secs(60)).await;
    // SIGKILL: no goodbye. The 3 s lease runs out and the job is queued again.
    stack.agents[first].kill().unwrap();
    stack.agents[first].wait().unwrap();
    let requeued = stack.wait_event("job.requeued", Duration::from_secs(20)).await;
    assert!(requeued["error"].as_str().unwrap().contains("lease expired"), "{requeued}");
    stack.agent("worker-2");
    let done = stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["summary"], "Finished by the second agent.");
    let job = stack.job(&key).await;
    assert_eq!(job["attempts"], 2, "{job}");
    // The second attempt started afresh, in a workspace of its own.
    let all = stack.workspaces(&key);
    assert_eq!(all.len(), 2, "{all:?}");
    let ws = all[1].clone();
    assert!(ws.to_string_lossy().ends_with("-2"), "{ws:?}");
    assert_eq!(std::fs::read_to_string(ws.join("done.txt")).unwrap(), "second agent\n");
    assert!(!ws.join("first.txt").exists());
    // Both attempts' steps are kept, the second's numbered after the first's.
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let story: Vec<(u64, String)> = steps["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["seq"].as_u64().unwrap(), s["step"]["input"]["path"].as_str().or(s["step"]["text"].as_str()).unwrap_or("-").to_owned()))
        .collect();
    assert_eq!(story, [(0, "first.txt".to_owned()), (1, "done.txt".to_owned()), (2, "Finished by the second agent.".to_owned())]);
    // The killed agent is not listed as holding the job the other one finished.
    let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
    let holding: Vec<(&str, &Value)> = agents["data"].as_array().unwrap().iter().map(|a| (a["name"].as_str().unwrap(), &a["current_job"])).collect();
    assert!(holding.iter().all(|(_, job)| job.is_null()), "{holding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_goes_on_with_its_job_across_a_server_restart() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("bash".into(), json!({"command": "echo one; sleep 3; echo two"}))]),
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "after.txt", "content": "after the restart\n"}))]),
        Reply::Text("Survived the restart.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    stack.agent("worker-r");
    let key = stack.task_in_progress("Restart-proof").await;
    stack.wait_event("job.output", Duration::from_secs(60)).await;
    // Graceful stop while the bash step runs: the agent is told and reconnects to the
    // server that comes back on the same address; its lease (3 s) is still held.
    let status = stack.server.take().unwrap().stop();
    assert!(status.success(), "the server stopped cleanly");
    stack.start_server();
    stack.follow(&key).await;
    let done = stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["summary"], "Survived the restart.");
    let job = stack.job(&key).await;
    assert_eq!(job["attempts"], 1, "the same attempt went on: {job}");
    // Every step stored exactly once, in order.
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let tools: Vec<(u64, &str)> = steps["data"].as_array().unwrap().iter().map(|s| (s["seq"].as_u64().unwrap(), s["step"]["tool"].as_str().unwrap_or("-"))).collect();
    assert_eq!(tools, [(0, "bash"), (1, "write_file"), (2, "-")], "each step once");
    assert_eq!(steps["data"][2]["step"]["text"], "Survived the restart.");
    let bash = &steps["data"][0]["step"]["output"];
    assert!(bash.as_str().unwrap().contains("one\ntwo"), "{bash}");
    assert_eq!(std::fs::read_to_string(stack.workspace(&key).join("after.txt")).unwrap(), "after the restart\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_bad_token_says_why_and_exits() {
    let llm = ScriptedLlm::start(vec![]).await;
    let stack = Stack::start(&llm, "openai").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kodel-agent"))
        .args(["--server", &stack.base(), "--workdir"])
        .arg(stack.work.path())
        .args(kodel_testkit::agent_user_args())
        .env("KODEL_AGENT_TOKEN", "kodel_agt_not-a-real-token")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "refused agents exit 2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token is unknown, revoked or expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_token_budget_stops_the_job() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "a.txt", "content": "a"}))]),
        Reply::Text("never asked".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    stack.call("PATCH", "/api/v1/orgs/acme/job-templates/implement-template", json!({"budget_tokens": 100})).await;
    stack.agent("worker-b");
    let key = stack.task_in_progress("Expensive").await;
    let failed = stack.wait_event("job.failed", Duration::from_secs(60)).await;
    assert!(failed["error"].as_str().unwrap().contains("token budget of 100 is spent"), "{failed}");
    assert_eq!(llm.requests().len(), 1, "the call over budget never reached the provider");
    let job = stack.job(&key).await;
    assert_eq!(job["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_gives_its_job_back_at_once() {
    let llm = ScriptedLlm::start(vec![Reply::ToolCalls(vec![("bash".into(), json!({"command": "echo working; sleep 60"}))])]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let a = stack.agent("worker-s");
    let key = stack.task_in_progress("Interrupted").await;
    stack.wait_event("job.output", Duration::from_secs(60)).await;
    let pid = nix::unistd::Pid::from_raw(stack.agents[a].id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let requeued = stack.wait_event("job.requeued", Duration::from_secs(10)).await;
    assert!(requeued["error"].as_str().unwrap().contains("\"worker-s\" was stopped"), "not a lease expiry: {requeued}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = stack.agents[a].try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // Given back, not failed: the attempt does not count.
    let job = stack.job(&key).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("pending"), Some(0)), "{job}");
}

/// A tool's output with a NUL byte (a binary file, `find -print0`) is stored and shown
/// (as ␀), not refused: the task's story has no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_a_tools_output_is_stored_and_shown() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("bash".into(), json!({"command": "printf 'bin\\0ary\\n'"}))]),
        Reply::Text("Printed it.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    stack.agent("nul");
    let key = stack.task_in_progress("Print a NUL").await;
    stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    let job = stack.job(&key).await;
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let seqs: Vec<u64> = steps["data"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "every step stored: {steps}");
    let bash = steps["data"].as_array().unwrap().iter().find(|s| s["step"]["tool"] == "bash").expect("the bash step");
    assert!(bash["step"]["output"].as_str().unwrap().contains("bin\u{2400}ary"), "{bash}");
}

/// A model server nobody runs (connection refused): the job fails at its first call,
/// with what to do first in its error, and is not tried again (no retry can start it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_model_fails_the_job_at_once_with_what_to_do() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut stack = Stack::start_with(&[("OLLAMA_BASE_URL", format!("http://127.0.0.1:{closed}")), ("KODEL_DEFAULT_MODEL", "ollama/qwen2.5-coder".into())]).await;
    stack.agent("worker-u");
    let started = std::time::Instant::now();
    let key = stack.task_in_progress("No model here").await;
    let failed = stack.wait_event("job.failed", Duration::from_secs(60)).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("Ollama does not answer: start it"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(20), "failed only after {:?}", started.elapsed());
    let job = stack.job(&key).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("failed"), Some(1)), "{job}");
}

/// A budget is a gate: a job whose org budget is spent stops as `paused` (not failed)
/// with its steps kept, a warning said at 80 %, the gateway refuses with 402; resuming
/// while it is still spent is refused, and raising the budget sends the job on to the
/// end, numbering its steps after the ones it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pauses_at_its_budget_and_goes_on_when_it_is_raised() {
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "a.txt", "content": "one\n"}))]),
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "a.txt"}))]),
        Reply::Text("Done after the pause.".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    // One token: the first call is let through (nothing spent yet) and spends it.
    let b = stack.call("PUT", "/api/v1/orgs/acme/budgets", json!({"scope": "org", "max_tokens": 1})).await;
    assert_eq!((b["max_tokens"].as_i64(), b["spent_tokens"].as_i64()), (Some(1), Some(0)), "{b}");
    // A rule reacts to the warning.
    let rule = json!({"name": "flag spend", "project": "KOD", "trigger": {"type": "budget_warning", "scope": "org"}, "actions": [{"add_label": "over-budget"}]});
    stack.call("POST", "/api/v1/orgs/acme/rules", rule).await;
    stack.agent("worker-b");
    let key = stack.task_in_progress("Spend carefully").await;

    let paused = stack.wait_event("job.paused", Duration::from_secs(60)).await;
    assert!(paused["reason"].as_str().unwrap().contains("the org's budget of 1 tokens"), "{paused}");
    let warning = stack.wait_event("budget.warning", Duration::from_secs(5)).await;
    assert_eq!(warning["scope"], "org");
    let task = stack.call("GET", &format!("/api/v1/orgs/acme/tasks/{key}"), Value::Null).await;
    assert!(task["labels"].as_array().unwrap().contains(&json!("over-budget")), "the rule fired: {task}");
    let job = stack.job(&key).await;
    assert_eq!(job["status"], "paused", "{job}");
    assert_eq!(llm.requests().len(), 1, "the second call never reached the provider");
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let before = steps["data"].as_array().unwrap().len();
    assert!(steps["data"].as_array().unwrap().iter().any(|s| s["step"]["tool"] == "write_file"), "steps kept: {steps}");

    // Still spent: resuming by hand is refused, and the gateway says 402.
    let resume = stack
        .http
        .post(format!("{}/api/v1/orgs/acme/jobs/{}/resume", stack.base(), job["id"].as_str().unwrap()))
        .bearer_auth(&stack.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 402);
    let body: Value = resume.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    let gw = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base()))
        .bearer_auth(&stack.token)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(gw.status(), 402);
    assert_eq!(gw.json::<Value>().await.unwrap()["error"]["code"], "budget_exceeded");

    // Raised: the job goes on by itself and finishes.
    stack.call("PUT", "/api/v1/orgs/acme/budgets", json!({"scope": "org", "max_tokens": 1_000_000})).await;
    stack.wait_event("job.resumed", Duration::from_secs(10)).await;
    let done = stack.wait_event("job.succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["summary"], "Done after the pause.");
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    let seqs: Vec<u64> = steps["data"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert!(seqs.len() > before, "{steps}");
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "the earlier steps kept, the new ones after them");
    let job = stack.job(&key).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("succeeded"), Some(1)), "the pause cost no attempt: {job}");
    // The model was told what it had done before the pause, and went on from there.
    let resumed = llm.requests()[1].body.to_string();
    assert!(resumed.contains("now goes on") && resumed.contains("write_file") && resumed.contains("a.txt"), "{resumed}");
}
