//! Support for the tests and benchmarks of every Kodel crate (a dev-dependency only,
//! never part of a shipped binary): a fresh PostgreSQL database per test, the real
//! `kodel-server` binary as a child process with its log collected, a scripted LLM
//! provider speaking the providers' wire formats (`scripted_llm`), a forge
//! (`forge`), and a tmux driver for the TUI (`tmux`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod clickhouse;
pub mod docker;
pub mod forge;
pub mod scripted_llm;
pub mod tmux;
pub mod web;

use std::io::BufRead;
use std::path::{Path, PathBuf};
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

/// Registers a user through the API and logs in; gives its access token.
pub async fn register(base: &str, email: &str) -> String {
    let http = reqwest::Client::new();
    let body = serde_json::json!({"email": email, "password": "correct horse battery", "name": email});
    let resp = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "registering {email}: {}", resp.text().await.unwrap_or_default());
    let login = serde_json::json!({"email": email, "password": "correct horse battery"});
    let pair: serde_json::Value = http.post(format!("{base}/api/v1/auth/login")).json(&login).send().await.unwrap().json().await.unwrap();
    pair["access_token"].as_str().unwrap_or_else(|| panic!("logging in {email}: {pair}")).to_owned()
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
/// Repositories may belong to the agents' user (`agent_may_use`), so any owner is fine.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", any_owner_gitconfig())
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A git config that trusts repositories whatever their owner, given as the global
/// one (git passes that on to the other end of a local push, unlike `-c`).
fn any_owner_gitconfig() -> PathBuf {
    let path = std::env::temp_dir().join(format!("kodel-test-gitconfig-{}", nix::unistd::geteuid()));
    if !path.exists() {
        let tmp = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&tmp, "[safe]\n\tdirectory = *\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// Resident memory of a process, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The flags an agent started by a test needs: run as root (as CI runs), an agent must
/// be told whom to become, as `kodel up` does; tests take `nobody`, which every Debian
/// has.
pub fn agent_user_args() -> Vec<&'static str> {
    if nix::unistd::geteuid().is_root() { vec!["--user", AGENT_TEST_USER] } else { Vec::new() }
}

pub const AGENT_TEST_USER: &str = "nobody";

/// Lets a test's agent (which runs as `nobody` when the test runs as root) read and
/// write `path` (a repository on this host): it becomes that user's, and the private
/// temporary directories above it may be entered.
pub fn agent_may_use(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() || !path.exists() {
        return;
    }
    let user = nix::unistd::User::from_name(AGENT_TEST_USER).unwrap().unwrap();
    let out = Command::new("chown").arg("-R").arg(format!("{}:{}", user.uid, user.gid)).arg(path).output().unwrap();
    assert!(out.status.success(), "chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let tmp = std::env::temp_dir();
    for dir in path.ancestors().skip(1).take_while(|d| d.starts_with(&tmp) && *d != tmp) {
        let mode = std::fs::metadata(dir).unwrap().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o711)).unwrap();
        }
    }
}
