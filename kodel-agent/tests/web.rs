//! The web view in a real browser: Debian's chromium driven by playwright-core
//! (kodel-testkit/web/board.mjs) against the real server, with a real agent working a
//! task through the scripted provider while the page watches. Screenshots of every step
//! are kept in target/web-screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Stack, bare_repo};
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_works_the_board_and_approves_a_patch_in_a_real_browser() {
    let hostile_output = r#"printf '%s\n' '"><img src=x onerror="window.__xss=3"><script>window.__xss=4</script>'"#;
    let script = vec![
        Reply::TextAndTools("Reading calc.py first. <b>Not bold</b>".into(), vec![("read_file".into(), json!({"path": "calc.py"}))]),
        Reply::TextAndTools("Printing something hostile.".into(), vec![("bash".into(), json!({"command": hostile_output}))]),
        Reply::TextAndTools("add() subtracts; fixing it.".into(), vec![("edit_file".into(), json!({"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}))]),
        Reply::ToolCalls(vec![("read_file".into(), json!({"path": "no/such/file.py"}))]),
        Reply::Text("Fixed add(): it returned a - b.".into()),
    ];
    // Then the review job, once the patch is approved: a verdict with a hostile finding.
    let review = json!({"verdict": "request_changes", "summary": "Needs a test.",
                        "findings": [{"file": "calc.py", "line": 2, "severity": "<b>major</b>", "message": "no test covers add() <img src=x onerror=\"window.__xss=5\">"}]});
    let mut script = script;
    script.push(Reply::Text(format!("```json\n{review}\n```")));
    // Slow enough that the page is open while the agent works.
    let llm = ScriptedLlm::start(script).await.with_chunk_delay(Duration::from_millis(300));
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    kodel_testkit::agent_may_use(&bare);
    stack.call("POST", "/api/v1/orgs/acme/modules", json!({"project": "KOD", "name": "calc", "url": format!("file://{}", bare.display()), "default_branch": "main"})).await;
    stack.agent_with("worker-web", &["--allow-file-remotes"], None);

    let shots = kodel_testkit::web::screenshots("board");
    let ran = kodel_testkit::web::run(
        "board.mjs",
        &[
            ("BASE", stack.base()),
            ("EMAIL", "ada@example.com".into()),
            ("PASSWORD", "correct horse battery".into()),
            ("TOKEN", stack.token.clone()),
            ("SHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(240),
    )
    .await;
    assert!(ran.ok, "the browser run failed:\n{}\n{}\nserver log:\n{}", ran.stdout, ran.stderr, stack.server_log());
    let measured = ran.json();
    eprintln!("measured in the browser: {measured}");
    assert!(measured["live_update_ms"].as_u64().is_some(), "{measured}");
    assert!(std::fs::read_dir(&shots).unwrap().count() >= 10, "a screenshot of each step");

    // What the browser did is what the API now says.
    let tasks = stack.call("GET", "/api/v1/orgs/acme/projects/KOD/tasks", Value::Null).await;
    let hostile = tasks["data"].as_array().unwrap().iter().find(|t| t["title"].as_str().unwrap().contains("window.__xss=1")).unwrap();
    assert_eq!(hostile["title"], r#"<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">"#);
    assert_eq!(hostile["labels"], json!(["web", "<b>bold</b>"]));
    let key = hostile["key"].as_str().unwrap();
    let arts = stack.call("GET", &format!("/api/v1/orgs/acme/artifacts?task={key}"), Value::Null).await;
    let patch = arts["data"].as_array().unwrap().iter().find(|a| a["kind"] == "patch").unwrap();
    assert_eq!(patch["status"], "approved", "{patch}");
    assert_eq!(patch["decided_by"], "ada@example.com");
    assert_eq!(patch["comment"], "Looks right <b>to me</b>");
    let review = arts["data"].as_array().unwrap().iter().find(|a| a["kind"] == "review").unwrap();
    assert_eq!((review["status"].as_str(), review["comment"].as_str()), (Some("rejected"), Some("Add the test first")), "{review}");
}
