//! `kodel up`: the README's first command starts a server on its managed PostgreSQL,
//! Ctrl-C stops both, and the next `kodel up` finds the same data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kodel_testkit::free_port;
use serde_json::{Value, json};


fn up(listen: &str, data: &std::path::Path, config: &std::path::Path) -> Child {
    up_with(listen, data, config, &[])
}

fn up_with(listen: &str, data: &std::path::Path, config: &std::path::Path, env: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["up", "--no-tui", "--listen", listen, "--data-dir", data.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("KODEL_CONFIG_DIR", config)
        .env("KODEL_NO_KEYRING", "1")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let http = reqwest::Client::new();
    loop {
        assert!(child.try_wait().unwrap().is_none(), "kodel up exited early");
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "kodel up did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kodel --json ARGS` with the CLI's config as `kodel up` left it.
fn kodel_json(config: &std::path::Path, args: &[&str]) -> Value {
    let (ok, out, err) = try_kodel_json(config, args);
    assert!(ok, "kodel {args:?}: {err}");
    out
}

fn try_kodel_json(config: &std::path::Path, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(args)
        .arg("--json")
        .env("KODEL_CONFIG_DIR", config)
        .env("KODEL_NO_KEYRING", "1")
        .env_remove("KODEL_SERVER")
        .env_remove("KODEL_TOKEN")
        .env_remove("KODEL_ORG")
        .output()
        .unwrap();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits (bounded) until `kodel up` has logged the CLI in and its agent is connected.
async fn wait_agent(config: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, agents, _) = try_kodel_json(config, &["agent", "list"]);
        if agents["data"].as_array().is_some_and(|a| a.iter().any(|a| a["name"] == "local" && a["status"] == "online")) {
            return agents;
        }
        assert!(Instant::now() < deadline, "the local agent never connected: {agents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn interrupt_and_wait(mut child: Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "kodel up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn up_serves_stops_on_ctrl_c_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");

    let mut child = up(&listen, &data, &config);
    wait_ready(&base, &mut child).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "u@x.io", "password": "longenough", "name": "U"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "registering answers alike whether the email is taken or not");
    // The CLI now points at this server, logged in to the local org with its sample
    // project, and a local agent is connected.
    wait_agent(&config).await;
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(config.join("config.json")).unwrap()).unwrap();
    assert_eq!(settings["server"], base.as_str());
    let projects = kodel_json(&config, &["project", "list"]);
    assert_eq!(projects["data"][0]["key"], "DEMO", "{projects}");
    let secrets = std::fs::metadata(data.join("local-stack.json")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&secrets.permissions()) & 0o777, 0o600);
    // The web view takes the local account (its password is in that file, as `kodel up`
    // says) and shows the DEMO board.
    let stack: Value = serde_json::from_str(&std::fs::read_to_string(data.join("local-stack.json")).unwrap()).unwrap();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let signed_in = browser
        .post(format!("{base}/login"))
        .header("origin", &base)
        .form(&[("email", stack["email"].as_str().unwrap()), ("password", stack["password"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let board = browser.get(format!("{base}/o/local/p/DEMO")).header("cookie", cookie).send().await.unwrap();
    assert_eq!(board.status(), 200);
    assert!(board.text().await.unwrap().contains("data-board"));

    assert!(interrupt_and_wait(child).success());
    assert!(!data.join("postgres/postmaster.pid").exists(), "the database stopped too");
    assert!(http.get(format!("{base}/healthz")).send().await.is_err(), "nothing listens any more");

    let mut child = up(&listen, &data, &config);
    wait_ready(&base, &mut child).await;
    let r = http.post(format!("{base}/api/v1/auth/login")).json(&json!({"email": "u@x.io", "password": "longenough"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "the account survived the restart");
    // The same local account, org and agent: nothing made twice.
    let agents = wait_agent(&config).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(kodel_json(&config, &["org", "list"])["data"].as_array().unwrap().len(), 1);
    assert!(interrupt_and_wait(child).success());
}

/// Waits (bounded) for the task's artifact of `kind`.
async fn wait_artifact(config: &std::path::Path, task: &str, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, arts, _) = try_kodel_json(config, &["artifact", "list", "--task", task]);
        if let Some(a) = arts["data"].as_array().and_then(|a| a.iter().find(|a| a["kind"] == kind)) {
            return a.clone();
        }
        let (_, jobs, _) = try_kodel_json(config, &["job", "list", "--task", task]);
        assert!(Instant::now() < deadline, "no {kind} artifact for {task}: {arts}\njobs: {jobs}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// On a clean data dir the DEMO project can go all the way: `kodel up` gives it a git
/// repository of its own and a test command, so a task goes from In Progress to an
/// approved patch, review and test report (the model is the scripted provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_project_takes_a_task_to_an_approved_patch_review_and_test_report() {
    use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
    let review = json!({"verdict": "approve", "summary": "A note of the change, as asked.", "findings": []});
    let llm = ScriptedLlm::start(vec![
        Reply::ToolCalls(vec![("write_file".into(), json!({"path": "CHANGES.md", "content": "- greet.sh greets the name it is given\n"}))]),
        Reply::Text("Noted the change in CHANGES.md.".into()),
        Reply::Text(format!("```json\n{review}\n```")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [("OPENAI_BASE_URL", llm.openai_base()), ("OPENAI_API_KEY", "sk-test".to_owned())];
    let mut child = up_with(&listen, &data, &config, &env);
    wait_ready(&format!("http://{listen}"), &mut child).await;
    wait_agent(&config).await;

    let modules = kodel_json(&config, &["module", "list", "--project", "DEMO"]);
    let url = modules["data"][0]["url"].as_str().unwrap_or_default().to_owned();
    assert!(url.starts_with("file:///") && url.ends_with("/demo.git"), "{modules}");
    assert_eq!(kodel_json(&config, &["project", "list"])["data"][0]["test_command"], "sh test.sh");

    kodel_json(&config, &["task", "create", "Note the change in CHANGES.md"]);
    for status in ["Ready", "In Progress"] {
        kodel_json(&config, &["task", "move", "DEMO-1", status]);
    }
    let patch = wait_artifact(&config, "DEMO-1", "patch").await;
    assert!(patch["content"].as_str().unwrap_or_default().contains("+- greet.sh greets the name it is given"), "{patch}");
    kodel_json(&config, &["artifact", "approve", patch["id"].as_str().unwrap()]);
    let review = wait_artifact(&config, "DEMO-1", "review").await;
    assert_eq!(review["data"]["verdict"], "approve", "{review}");
    kodel_json(&config, &["artifact", "approve", review["id"].as_str().unwrap()]);
    // QA runs the repository's own test script on the task's branch.
    let report = wait_artifact(&config, "DEMO-1", "test_report").await;
    assert_eq!(report["data"]["passed"], true, "{report}");
    assert!(report["data"]["output_tail"].as_str().unwrap_or_default().contains("ok: greet.sh"), "{report}");
    kodel_json(&config, &["artifact", "approve", report["id"].as_str().unwrap()]);
    assert_eq!(kodel_json(&config, &["task", "show", "DEMO-1"])["status"], "Staging");
    assert!(interrupt_and_wait(child).success());
}
