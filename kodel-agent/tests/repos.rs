//! Agents on real git repositories, end to end with the real binaries: modules served
//! from local bare repositories (file:// and smart HTTP through a local forge), the
//! Software Development flow through implement, review and QA jobs, pull requests on a
//! local GitHub/GitLab API, and the failures people must be told about clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{CALC, Stack, bare_repo, show};
use kodel_testkit::forge::FakeForge;
use kodel_testkit::git;
use kodel_testkit::scripted_llm::{Reply, ScriptedLlm, fixture};
use serde_json::{Value, json};


fn fix_add() -> Vec<Reply> {
    vec![
        Reply::TextAndTools("add() subtracts; fixing it.".into(), vec![("edit_file".into(), json!({"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}))]),
        Reply::Text("Fixed add(): it returned a - b.".into()),
    ]
}

impl Stack {
    async fn module(&self, project: &str, body: Value) {
        if let Some(path) = body["url"].as_str().and_then(|u| u.strip_prefix("file://")) {
            kodel_testkit::agent_may_use(Path::new(path));
        }
        let mut body = body;
        body["project"] = json!(project);
        self.call("POST", "/api/v1/orgs/acme/modules", body).await;
    }

    async fn artifacts(&self, key: &str) -> Vec<Value> {
        let page = self.call("GET", &format!("/api/v1/orgs/acme/artifacts?task={key}"), Value::Null).await;
        let mut all = page["data"].as_array().unwrap().clone();
        all.reverse(); // oldest first
        all
    }

    async fn status(&self, key: &str) -> String {
        self.call("GET", &format!("/api/v1/orgs/acme/tasks/{key}"), Value::Null).await["status"].as_str().unwrap().to_owned()
    }

    async fn wait_status(&self, key: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status(key).await != status {
            assert!(Instant::now() < deadline, "{key} did not reach {status}: it is {}", self.status(key).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_task(&self, project: &str, title: &str) -> String {
        let t = self.call("POST", &format!("/api/v1/orgs/acme/projects/{project}/tasks"), json!({"title": title, "description": "Make add() add."})).await;
        let key = t["key"].as_str().unwrap().to_owned();
        self.follow(&key).await;
        key
    }

    async fn to_in_progress(&self, key: &str) {
        for status in ["Ready", "In Progress"] {
            self.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_through_implement_review_and_qa_on_a_real_repository() {
    let review = json!({"verdict": "approve", "summary": "The fix is right and covered by test_add.",
                        "findings": [{"file": "calc.py", "line": 2, "severity": "nit", "message": "a docstring would help"}]});
    let mut script = fix_add();
    script.push(Reply::Text(format!("```json\n{review}\n```")));
    let llm = ScriptedLlm::start(script).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    stack.module("KOD", json!({"name": "calc", "url": format!("file://{}", bare.display()), "default_branch": "main"})).await;
    stack
        .call("PATCH", "/api/v1/orgs/acme/projects/KOD", json!({"test_command": "python3 -m unittest -v", "review_rules": "Every fix needs a test that would have caught it."}))
        .await;
    stack.call("POST", "/api/v1/orgs/acme/instance-templates", json!({"name": "py", "setup_script": "echo preparing the workspace; python3 --version; mkdir -p ~/.cache && echo junk > ~/.cache/pip.log"})).await;
    stack.call("PATCH", "/api/v1/orgs/acme/projects/KOD", json!({"instance_template": "py"})).await;
    stack.agent_with("worker-git", &["--allow-file-remotes"], None);
    let key = stack.new_task("KOD", "Fix add").await;
    stack.to_in_progress(&key).await;

    // implement: the change is committed and pushed to the task's branch.
    let done = stack.wait_events("job.succeeded", 1, Duration::from_secs(90)).await;
    assert!(done[0]["summary"].as_str().unwrap().starts_with("Fixed add()"), "{}", done[0]);
    let branch = format!("kodel/{key}-fix-add");
    assert_eq!(show(&bare, &format!("{branch}:calc.py")).unwrap(), CALC.replace("a - b", "a + b"));
    assert_eq!(show(&bare, "main:calc.py").unwrap(), CALC, "main is untouched");
    let log = show(&bare, &branch).unwrap();
    assert!(log.contains(&format!("{key}: Fix add")) && log.contains("Fixed add(): it returned a - b."), "{log}");
    // The steps show the clone, the setup script and the push.
    let steps = stack.events_of("job.step");
    let commands: Vec<String> = steps.iter().filter_map(|s| s["step"]["input"]["command"].as_str().map(str::to_owned)).collect();
    assert!(commands.iter().any(|c| c.starts_with("git clone file://")), "{commands:?}");
    let setup = steps.iter().find(|s| s["step"]["tool"] == "setup").expect("a setup step");
    assert!(setup["step"]["output"].as_str().unwrap().contains("preparing the workspace"), "{setup}");
    assert!(commands.iter().any(|c| c == &format!("git push origin HEAD:refs/heads/{branch}")), "{commands:?}");
    let seqs: Vec<u64> = steps.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "steps numbered once each");

    // Branch and patch artifacts; approving the patch moves the task on.
    let arts = stack.artifacts(&key).await;
    let kinds: Vec<&str> = arts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["branch", "patch"]);
    assert_eq!(arts[0]["reference"], branch.as_str());
    let patch = arts[1]["content"].as_str().unwrap();
    assert!(patch.contains("-    return a - b") && patch.contains("+    return a + b"), "{patch}");
    assert_eq!(arts[1]["data"]["stat"], "1 file changed, 1 insertion(+), 1 deletion(-)", "what HOME holds is not part of the change");
    stack.call("POST", &format!("/api/v1/orgs/acme/artifacts/{}/approve", arts[1]["id"].as_str().unwrap()), json!({})).await;
    stack.wait_status(&key, "Code Review").await;
    let arts = stack.artifacts(&key).await;
    assert_eq!(arts[0]["status"], "approved", "the job's branch artifact is decided with its patch");

    // review: the model gets the diff and the rules, and its verdict is an artifact.
    stack.wait_events("job.succeeded", 2, Duration::from_secs(90)).await;
    let reqs = llm.requests();
    let asked = reqs[2].body["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(asked.contains("+    return a + b") && asked.contains("Every fix needs a test"), "{asked}");
    let arts = stack.artifacts(&key).await;
    let rev = arts.iter().find(|a| a["kind"] == "review").expect("a review artifact");
    assert_eq!(rev["title"], "Review: approve (1 finding)");
    assert_eq!(rev["data"]["verdict"], "approve");
    assert_eq!(rev["data"]["findings"][0]["file"], "calc.py");
    assert!(rev["content"].as_str().unwrap().contains("`calc.py:2` (nit): a docstring would help"), "{rev}");
    stack.call("POST", &format!("/api/v1/orgs/acme/artifacts/{}/approve", rev["id"].as_str().unwrap()), json!({})).await;
    stack.wait_status(&key, "QA").await;

    // qa: the module's real tests run on the branch; the report says they pass.
    stack.wait_events("job.succeeded", 3, Duration::from_secs(90)).await;
    let arts = stack.artifacts(&key).await;
    let report = arts.iter().find(|a| a["kind"] == "test_report").expect("a test report");
    assert_eq!(report["data"]["passed"], true, "{report}");
    assert_eq!(report["data"]["counts"], json!({"passed": 2, "failed": 0, "skipped": 0}));
    assert_eq!(report["title"], "Tests passed: 2 passed");
    assert!(report["data"]["output_tail"].as_str().unwrap().contains("test_add"), "{report}");
    assert_eq!(llm.requests().len(), 3, "passing tests need no model");
    stack.call("POST", &format!("/api/v1/orgs/acme/artifacts/{}/approve", report["id"].as_str().unwrap()), json!({})).await;
    stack.wait_status(&key, "Staging").await;

    // Succeeded jobs leave no workspace behind, and the agent says what disk its
    // workspaces take (with its heartbeats).
    assert!(stack.workspaces(&key).is_empty(), "{:?}", stack.workspaces(&key));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let agents = stack.call("GET", "/api/v1/orgs/acme/agents", Value::Null).await;
        if agents["data"][0]["disk_bytes"].is_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "no disk use reported: {agents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An implement job on a small model that llama.cpp's `llama-server` serves on a CPU
/// (Qwen2.5-Coder, GGUF), replayed byte for byte from
/// kodel-testkit/fixtures/llm/llama-server/implement.json. With KODEL_LLM_RECORD set to
/// the recording proxy of scripts/record-llm-fixtures.py (`scripts/local-models.sh
/// record` does it), the same test runs against the real server and the proxy writes
/// the fixture again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_local_model_fixes_add_through_llama_cpp() {
    let recording = std::env::var("KODEL_LLM_RECORD").ok();
    let recorded = recording.is_none().then(|| fixture("llama-server/implement"));
    let llm = ScriptedLlm::start(recorded.as_ref().map(|f| f.replies()).unwrap_or_default()).await;
    let base = match &recording {
        Some(proxy) => format!("{}/rec/llama-server/implement/v1", proxy.trim_end_matches('/')),
        None => llm.openai_base(),
    };
    // What a user sets for a local server: its base URL and a model; no key.
    let mut stack = Stack::start_with(&[("OPENAI_BASE_URL", base), ("KODEL_DEFAULT_MODEL", "openai/qwen2.5-coder".into())]).await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    stack.module("KOD", json!({"name": "calc", "url": format!("file://{}", bare.display()), "default_branch": "main"})).await;
    stack.agent_with("worker-local", &["--allow-file-remotes"], None);
    let t = stack
        .call(
            "POST",
            "/api/v1/orgs/acme/projects/KOD/tasks",
            json!({"title": "Fix add", "description": "The file calc.py (in the workspace root) has a bug: add(a, b) returns a - b. Edit calc.py so that it returns a + b."}),
        )
        .await;
    let key = t["key"].as_str().unwrap().to_owned();
    stack.follow(&key).await;
    stack.to_in_progress(&key).await;

    let wait = Duration::from_secs(if recording.is_some() { 900 } else { 90 });
    let outcome = stack.wait_events_any(&["job.succeeded", "job.failed"], wait).await;
    assert_eq!(outcome.0, "job.succeeded", "the job failed: {}\nsteps: {:#?}", outcome.1, stack.events_of("job.step"));
    let branch = format!("kodel/{key}-fix-add");
    let fixed = show(&bare, &format!("{branch}:calc.py")).expect("the branch was pushed");
    assert!(fixed.contains("return a + b") && !fixed.contains("return a - b"), "{fixed}");
    let arts = stack.artifacts(&key).await;
    let kinds: Vec<&str> = arts.iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["branch", "patch"]);
    // The model wrote its edit as JSON text; the steps say it was run as a call.
    let steps = stack.events_of("job.step");
    let said: Vec<&str> = steps.iter().filter_map(|s| s["step"]["text"].as_str()).collect();
    if recording.is_none() {
        assert!(said.iter().any(|t| t.starts_with("[kodel] The model wrote edit_file as text")), "{said:?}");
        assert!(steps.iter().any(|s| s["step"]["tool"] == "edit_file" && s["step"]["error"] == false), "{steps:?}");
    }
    // Every call of the job was metered with the server's own token counts.
    let calls = stack.events_of("job.llm_call");
    assert!(!calls.is_empty() && calls.iter().all(|c| c["status"] == "ok" && c["input_tokens"].as_u64() > Some(0)), "{calls:?}");
    assert!(calls.iter().all(|c| c.get("usage_estimated").is_none()), "llama-server counts its tokens: {calls:?}");
    if let Some(recorded) = recorded {
        assert_eq!(llm.requests().len(), recorded.exchanges.len(), "the job asked what the recording answered");
        assert!(!llm.exhausted());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tests_are_reported_with_the_models_summary() {
    let llm = ScriptedLlm::start(vec![Reply::Text("test_add fails: add() in calc.py:2 subtracts instead of adding.".into())]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    stack.module("KOD", json!({"name": "calc", "url": format!("file://{}", bare.display())})).await;
    stack.call("PATCH", "/api/v1/orgs/acme/projects/KOD", json!({"test_command": "python3 -m unittest"})).await;
    let key = stack.new_task("KOD", "Check calc").await;
    // The task's branch exists already (pushed earlier), with the bug still in it.
    let src = repos.path().join("calc-src");
    git(&src, &["push", "-q", bare.to_str().unwrap(), &format!("main:refs/heads/kodel/{key}-check-calc")]);
    stack.agent_with("worker-qa", &["--allow-file-remotes"], None);
    stack.call("POST", "/api/v1/orgs/acme/jobs", json!({"task": key, "template": "qa-template"})).await;

    let done = stack.wait_events("job.succeeded", 1, Duration::from_secs(90)).await;
    assert!(done[0]["summary"].as_str().unwrap().contains("subtracts instead of adding"), "{}", done[0]);
    let arts = stack.artifacts(&key).await;
    let report = &arts[0];
    assert_eq!(report["kind"], "test_report");
    assert_eq!(report["data"]["passed"], false);
    assert_eq!(report["data"]["exit_code"], 1);
    assert_eq!(report["data"]["counts"], json!({"passed": 1, "failed": 1, "skipped": 0}));
    assert_eq!(report["title"], "Tests failed: 1 failed, 1 passed");
    // The model was shown the failing output to explain.
    let asked = llm.requests()[0].body["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(asked.contains("FAILED (failures=1)") && asked.contains("AssertionError"), "{asked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_setup_and_push_failures_name_their_cause() {
    let llm = ScriptedLlm::start(fix_add()).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    for (key, name) in [("MISS", "Missing repo"), ("SETUP", "Broken setup"), ("PUSH", "Protected repo")] {
        stack.call("POST", "/api/v1/orgs/acme/projects", json!({"key": key, "name": name, "workflow": "software-development"})).await;
    }
    stack.module("MISS", json!({"name": "ghost", "url": format!("file://{}/nowhere.git", repos.path().display())})).await;
    let setup_repo = bare_repo(repos.path(), "setup");
    stack.module("SETUP", json!({"name": "calc", "url": format!("file://{}", setup_repo.display())})).await;
    stack.call("POST", "/api/v1/orgs/acme/instance-templates", json!({"name": "broken", "setup_script": "echo installing deps; exit 3"})).await;
    stack.call("PATCH", "/api/v1/orgs/acme/projects/SETUP", json!({"instance_template": "broken"})).await;
    let protected = bare_repo(repos.path(), "protected");
    let hook = protected.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'branch protection: pushes need a review' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    stack.module("PUSH", json!({"name": "calc", "url": format!("file://{}", protected.display())})).await;
    stack.agent_with("worker-f", &["--keep-failed-hours", "1", "--allow-file-remotes"], None);

    let missing = stack.new_task("MISS", "Anything").await;
    stack.to_in_progress(&missing).await;
    let failed = stack.wait_events("job.failed", 1, Duration::from_secs(60)).await;
    let err = failed[0]["error"].as_str().unwrap();
    assert!(err.contains("cannot clone module \"ghost\"") && err.contains("does not appear to be a git repository"), "{err}");
    let job = stack.job(&missing).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("failed"), Some(1)), "a missing repository is not retried: {job}");

    let setup = stack.new_task("SETUP", "Anything").await;
    stack.to_in_progress(&setup).await;
    let failed = stack.wait_events("job.failed", 2, Duration::from_secs(60)).await;
    let err = failed[1]["error"].as_str().unwrap();
    assert!(err.contains("the setup script failed") && err.contains("installing deps") && err.contains("exit code: 3"), "{err}");

    let push = stack.new_task("PUSH", "Fix add").await;
    stack.to_in_progress(&push).await;
    let failed = stack.wait_events("job.failed", 3, Duration::from_secs(60)).await;
    let err = failed[2]["error"].as_str().unwrap();
    assert!(err.contains(&format!("pushing kodel/{push}-fix-add to file://")) && err.contains("pre-receive hook declined") && err.contains("branch protection: pushes need a review"), "{err}");
    assert!(show(&protected, &format!("kodel/{push}-fix-add")).is_none(), "nothing was pushed");

    // Failed jobs keep their workspace for inspection, with the model's change in it.
    let kept = stack.workspace(&push);
    assert_eq!(std::fs::read_to_string(kept.join("calc.py")).unwrap(), CALC.replace("a - b", "a + b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implement_opens_then_updates_a_github_pull_request_over_http() {
    let mut script = fix_add();
    script.extend([
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "CHANGES.md", "content": "- add() adds\n"}))]),
        Reply::Text("Noted the fix in CHANGES.md.".into()),
    ]);
    let llm = ScriptedLlm::start(script).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    bare_repo(&repos.path().join("acme"), "widget");
    let token = "ghp_forge-secret-token-1234";
    let forge = FakeForge::start(repos.path(), token).await;
    stack.module("KOD", json!({"name": "widget", "url": forge.url("acme/widget.git"), "forge": "github", "credentials": {"secret": token}})).await;
    let modules = stack.call("GET", "/api/v1/orgs/acme/modules?project=KOD", Value::Null).await;
    assert_eq!(modules["data"][0]["forge"], "github");
    // Beside the work dir, not in it: the agent takes over only an empty one.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("agent.log");
    stack.agent_with("worker-pr", &[], Some(&log));
    let key = stack.new_task("KOD", "Fix add").await;
    stack.to_in_progress(&key).await;

    stack.wait_events("job.succeeded", 1, Duration::from_secs(90)).await;
    let branch = format!("kodel/{key}-fix-add");
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let (repo, number, head, base, title, body) = pulls[0].clone();
    assert_eq!((repo.as_str(), number, head.as_str(), base.as_str()), ("acme/widget", 1, branch.as_str(), "main"));
    assert_eq!(title, format!("{key}: Fix add"));
    assert!(body.contains("Fixed add()") && body.contains("approving does not merge"), "{body}");
    // It links to the task's page in the web view, which a reviewer can open from it.
    let link = format!("[{key}]({}/o/acme/t/{key})", stack.base());
    assert!(body.contains(&link), "{body}");
    let arts = stack.artifacts(&key).await;
    let pr = arts.iter().find(|a| a["kind"] == "pull_request").expect("a pull request artifact");
    assert_eq!(pr["reference"], format!("{}/acme/widget/pull/1", forge.url("").trim_end_matches('/')));

    // Rejected: back to Ready, and the next implement job updates the same pull request.
    let patch = arts.iter().find(|a| a["kind"] == "patch").unwrap();
    stack.call("POST", &format!("/api/v1/orgs/acme/artifacts/{}/reject", patch["id"].as_str().unwrap()), json!({"comment": "note it in CHANGES.md"})).await;
    stack.wait_status(&key, "Ready").await;
    stack.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": "In Progress"})).await;
    stack.wait_events("job.succeeded", 2, Duration::from_secs(90)).await;
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1, "updated, not opened again: {pulls:?}");
    assert!(pulls[0].5.contains("CHANGES.md"), "{pulls:?}");
    let calls: Vec<String> = forge.calls().iter().map(|c| format!("{} {}", c.path, c.status)).collect();
    assert_eq!(
        calls,
        ["GET /repos/acme/widget/pulls 200", "POST /repos/acme/widget/pulls 201", "GET /repos/acme/widget/pulls 200", "PATCH /repos/acme/widget/pulls/1 200"]
    );
    // The second job built on the first: both commits are on the branch.
    let bare = repos.path().join("acme/widget.git");
    assert_eq!(show(&bare, &format!("{branch}:CHANGES.md")).unwrap(), "- add() adds\n");
    assert_eq!(show(&bare, &format!("{branch}:calc.py")).unwrap(), CALC.replace("a - b", "a + b"));

    // The token went to git and the forge only: not to the log, the steps or the
    // workspace's git config.
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(!agent_log.contains(token), "{agent_log}");
    assert!(!stack.server_log().contains(token));
    let story = serde_json::to_string(&*stack.events.lock().unwrap()).unwrap();
    assert!(!story.contains(token));
    let job = stack.job(&key).await;
    let steps = stack.call("GET", &format!("/api/v1/orgs/acme/jobs/{}/steps", job["id"].as_str().unwrap()), Value::Null).await;
    assert!(!steps.to_string().contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implement_opens_a_gitlab_merge_request() {
    let llm = ScriptedLlm::start(fix_add()).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    bare_repo(&repos.path().join("team/tools"), "gadget");
    let token = "glpat-forge-secret-5678";
    let forge = FakeForge::start(repos.path(), token).await;
    stack.module("KOD", json!({"name": "gadget", "url": forge.url("team/tools/gadget.git"), "forge": "gitlab", "credentials": {"secret": token}})).await;
    stack.agent_with("worker-gl", &[], None);
    let key = stack.new_task("KOD", "Fix add").await;
    stack.to_in_progress(&key).await;
    stack.wait_events("job.succeeded", 1, Duration::from_secs(90)).await;
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!((pulls[0].0.as_str(), pulls[0].2.as_str(), pulls[0].3.as_str()), ("team/tools/gadget", format!("kodel/{key}-fix-add").as_str(), "main"));
    let arts = stack.artifacts(&key).await;
    let mr = arts.iter().find(|a| a["kind"] == "pull_request").expect("a merge request artifact");
    assert!(mr["reference"].as_str().unwrap().ends_with("/team/tools/gadget/-/merge_requests/1"), "{mr}");
    let calls: Vec<String> = forge.calls().iter().map(|c| format!("{} {}", c.path, c.status)).collect();
    assert_eq!(calls, ["GET /projects/team/tools/gadget/merge_requests 200", "POST /projects/team/tools/gadget/merge_requests 201"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_cannot_make_the_agent_run_code_through_git() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("PWNED");
    // The model plants what would make an unsandboxed `git add` run a command: a .git
    // of its own whose config (through commondir) defines a clean filter, and a
    // .gitattributes that applies it; and a link to a file of the agent's host.
    let attack = format!(
        "rm -f .git && mkdir -p .git evil/objects evil/refs && echo ../evil > .git/commondir && printf 'ref: refs/heads/main\\n' > evil/HEAD && \\
         printf '[filter \"x\"]\\n\\tclean = touch {p}\\n' > evil/config && cp evil/config .git/config && \\
         echo '* filter=x' > .gitattributes && ln -s {p}.target host-file",
        p = pwned.display()
    );
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("bash".into(), json!({"command": attack}))]),
        Reply::ToolCalls(vec![("edit_file".into(), json!({"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"}))]),
        Reply::Text("Fixed add().".into()),
    ])
    .await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "calc");
    stack.module("KOD", json!({"name": "calc", "url": format!("file://{}", bare.display())})).await;
    stack.agent_with("worker-x", &["--allow-file-remotes"], None);
    let key = stack.new_task("KOD", "Fix add").await;
    stack.to_in_progress(&key).await;
    stack.wait_events("job.succeeded", 1, Duration::from_secs(90)).await;
    assert!(!pwned.exists(), "the model's filter ran outside the sandbox");
    // The agent's git never saw the planted .git: the change is committed, and the
    // planted files are just files of the change.
    let branch = format!("kodel/{key}-fix-add");
    assert_eq!(show(&bare, &format!("{branch}:calc.py")).unwrap(), CALC.replace("a - b", "a + b"));
    assert_eq!(show(&bare, &format!("{branch}:.gitattributes")).unwrap(), "* filter=x\n");
    assert!(show(&bare, &format!("{branch}:.git/config")).is_none(), ".git is never committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_remotes_need_the_agent_operators_consent() {
    let llm = ScriptedLlm::start(vec![]).await;
    let mut stack = Stack::start(&llm, "openai").await;
    let repos = tempfile::tempdir().unwrap();
    let bare = bare_repo(repos.path(), "secret");
    stack.module("KOD", json!({"name": "secret", "url": format!("file://{}", bare.display())})).await;
    stack.agent_with("worker-nf", &[], None);
    let key = stack.new_task("KOD", "Read the host").await;
    stack.to_in_progress(&key).await;
    let failed = stack.wait_events("job.failed", 1, Duration::from_secs(60)).await;
    let err = failed[0]["error"].as_str().unwrap();
    assert!(err.contains("--allow-file-remotes"), "{err}");
    assert_eq!(llm.requests().len(), 0);
}
