//! `kodel up`: the README's first command starts a server on its managed PostgreSQL,
//! Ctrl-C stops both, and the next `kodel up` finds the same data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn up(listen: &str, data: &std::path::Path, config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kodel"))
        .args(["up", "--no-tui", "--listen", listen, "--data-dir", data.to_str().unwrap()])
        .env("KODEL_CONFIG_DIR", config)
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
    assert_eq!(r.status(), 201);
    // The CLI now points at this server.
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(config.join("config.json")).unwrap()).unwrap();
    assert_eq!(settings["server"], base.as_str());

    assert!(interrupt_and_wait(child).success());
    assert!(!data.join("postgres/postmaster.pid").exists(), "the database stopped too");
    assert!(http.get(format!("{base}/healthz")).send().await.is_err(), "nothing listens any more");

    let mut child = up(&listen, &data, &config);
    wait_ready(&base, &mut child).await;
    let r = http.post(format!("{base}/api/v1/auth/login")).json(&json!({"email": "u@x.io", "password": "longenough"})).send().await.unwrap();
    assert_eq!(r.status(), 200, "the account survived the restart");
    assert!(interrupt_and_wait(child).success());
}
