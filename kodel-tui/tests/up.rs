//! `kodel up`: the README's first command starts a server on its managed PostgreSQL,
//! Ctrl-C stops both, and the next `kodel up` finds the same data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kodel_testkit::free_port;
use serde_json::{Value, json};


fn up(listen: &str, data: &std::path::Path, config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["up", "--no-tui", "--listen", listen, "--data-dir", data.to_str().unwrap()])
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
