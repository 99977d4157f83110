//! Support for tests of this crate and of the clients: a fresh PostgreSQL database per
//! test, and the real `kodel-server` binary as a child process with its log collected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod forge;
pub mod scripted_llm;
pub mod tmux;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// Where tests create their databases: KODEL_TEST_DATABASE_URL, else the local server.
pub fn admin_url() -> String {
    std::env::var("KODEL_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database (`kodel_test_*`; scripts/test.sh drops old ones).
pub async fn fresh_database() -> PgConnectOptions {
    let admin: PgConnectOptions = admin_url().parse().unwrap();
    let name = format!("kodel_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&admin).await.expect("test PostgreSQL reachable (see scripts/test.sh)");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    conn.close().await.unwrap();
    admin.database(&name)
}

/// A URL for the options (tests use TCP with no password).
pub fn database_url(db: &PgConnectOptions) -> String {
    format!("postgres://{}@{}:{}/{}", db.get_username(), db.get_host(), db.get_port(), db.get_database().unwrap_or("postgres"))
}

/// The real `kodel-server` binary, with its log collected.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `binary` on a free port and waits until it listens (60 s at most).
    pub fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(binary, "127.0.0.1:0", args, env)
    }

    /// The same on a given address (to restart a server where its clients expect it).
    pub fn start_on(binary: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", listen]).args(args).env_remove("DATABASE_URL").env("RUST_LOG", "debug,sqlx=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(rest) = line.split("addr=").nth(1)
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Self { child, base: format!("http://{addr}"), log },
            Err(_) => {
                let _ = child.kill();
                panic!("kodel-server did not start:\n{}", log.lock().unwrap());
            }
        }
    }

    /// SIGTERM, then wait for the exit (30 s at most).
    pub fn stop(mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kodel-server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (for a server that must come back where it was).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A binary of the workspace next to `beside` (a test's or bench's own binary, from
/// `env!("CARGO_BIN_EXE_...")`): a workspace build puts them all in one directory.
pub fn sibling_binary(beside: &str, name: &str) -> std::path::PathBuf {
    let bin = Path::new(beside).parent().unwrap().join(name);
    assert!(bin.exists(), "{} missing: build the workspace first (cargo build --workspace, with --release for benches)", bin.display());
    bin
}

/// Registers a user through the API; gives its access token.
pub async fn register(base: &str, email: &str) -> String {
    let reg: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery", "name": email}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reg["access_token"].as_str().unwrap_or_else(|| panic!("registering {email}: {reg}")).to_owned()
}

/// Calls the API at `base` as `token` and gives the JSON answer (Null when empty);
/// anything but a success fails the test.
pub async fn api(http: &reqwest::Client, base: &str, token: &str, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    let req = http.request(method.parse().unwrap(), format!("{base}{path}")).bearer_auth(token);
    let req = if body.is_null() { req } else { req.json(&body) };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// Runs git in `dir` as a test's fixture maker would (a fixed identity); gives stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(["-c", "user.name=Test", "-c", "user.email=test@example.com"]).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Resident memory of a process, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}
