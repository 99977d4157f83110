//! The served OpenAPI document, fuzzed: schemathesis (installed by scripts/test.sh)
//! generates requests for every operation from the document, with a token, and checks
//! every answer: no 5xx, the status documented, the body, content type and headers as
//! documented, a 401 without the token (and a wrong one), a 405 for a method the path
//! does not have. Bounded (20 examples an operation, a fixed seed) so a run takes about a
//! minute and means the same thing each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApp;
use serde_json::json;

/// Every check schemathesis has but one: positive_data_acceptance (ST202) wants every
/// schema-valid request answered 2xx/401/403/404/409, and a request can be well formed
/// and still name what does not exist or is not allowed: a status the project's
/// workflow lacks, an assignee who is not a member, a move the workflow forbids. Those
/// are 422s the API owes its users, and no schema can describe them. (Path parameters
/// do carry their syntax in the document: slug, key and task key patterns, UUIDs.)
const CHECKS: &str = "all";
const EXCLUDED: &str = "positive_data_acceptance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_holds_to_the_document_under_generated_requests() {
    let bin = std::env::var("KODEL_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    if std::process::Command::new(&bin).arg("--version").output().is_err() {
        panic!("schemathesis is missing: scripts/test.sh installs it (KODEL_SCHEMATHESIS={bin})");
    }
    // The default body limit (1 MiB), so a field over its maxLength is refused for its
    // length (422), not for the body's size (413, which the check does not count).
    let config = kodel_server::Config { max_body: 1024 * 1024, ..common::test_config() };
    let app = TestApp::spawn_with(common::fresh_database().await, config).await;
    let owner = app.owner_with_project("fuzz@example.com", "fuzz", "FZ").await;
    let (_, pat) = app.post("/api/v1/tokens", &owner, json!({"name": "fuzz"})).await;
    let pat = pat["token"].as_str().unwrap().to_owned();
    // Its own directory: schemathesis keeps a cache of past failures where it runs and
    // replays them, and a run must mean the same thing each time.
    let cwd = tempfile::tempdir().unwrap();
    // One worker: with several, Python 3.11's parser, which hypothesis calls from each
    // worker thread, now and then fails ("AST constructor recursion depth mismatch").
    let out = tokio::process::Command::new(&bin)
        .current_dir(cwd.path())
        .args(["run", &format!("{}/api/v1/openapi.json", app.base)])
        .args(["-H", &format!("Authorization: Bearer {pat}")])
        .args(["--checks", CHECKS, "--exclude-checks", EXCLUDED, "--max-examples", "20", "--seed", "1", "--no-color"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: String = text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(out.status.success(), "schemathesis found failures:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // It really ran: thousands of requests ("4549 generated, 4549 passed").
    let generated = text.lines().find_map(|l| l.trim().split_once(" generated,").and_then(|(n, _)| n.trim().parse::<u64>().ok()));
    assert!(generated.is_some_and(|n| n >= 1000), "{summary}");
    println!("{summary}");
}
