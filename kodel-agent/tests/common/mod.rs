//! What the end-to-end tests share: a real `kodel-server` on a fresh PostgreSQL
//! database, real `kodel-agent` processes, the task's event stream, the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kodel_testkit::scripted_llm::ScriptedLlm;
pub use kodel_testkit::free_port;
use kodel_testkit::{ServerProcess, api, database_url, fresh_database, register, sibling_binary};
use serde_json::{Value, json};

pub fn server_binary() -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel-agent"), "kodel-server")
}

pub struct Stack {
    pub server: Option<ServerProcess>,
    pub env: Vec<(String, String)>,
    pub listen: String,
    pub http: reqwest::Client,
    pub token: String,
    pub agent_token: String,
    pub work: tempfile::TempDir,
    pub events: Arc<Mutex<Vec<(String, Value)>>>,
    pub agents: Vec<Child>,
}

impl Stack {
    /// A server whose LLM provider is `llm` (`provider` = openai or anthropic), an org
    /// `acme` with a Software Development project `KOD`, and an agent token.
    pub async fn start(llm: &ScriptedLlm, provider: &str) -> Self {
        let env = match provider {
            "openai" => vec![
                ("OPENAI_BASE_URL", llm.openai_base()),
                ("OPENAI_API_KEY", "sk-test-secret".into()),
                ("KODEL_DEFAULT_MODEL", "openai/gpt-test".into()),
            ],
            _ => vec![
                ("ANTHROPIC_BASE_URL", llm.anthropic_base()),
                ("ANTHROPIC_API_KEY", "sk-ant-test-secret".into()),
                ("KODEL_DEFAULT_MODEL", "anthropic/claude-test".into()),
            ],
        };
        Self::start_with(&env).await
    }

    /// The same, with the server's LLM settings given as environment variables.
    pub async fn start_with(llm_env: &[(&str, String)]) -> Self {
        let db = fresh_database().await;
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url(&db)),
            ("KODEL_ENGINE_TICK".to_owned(), "0.2".to_owned()),
            ("KODEL_JOB_LEASE".to_owned(), "3".to_owned()),
            ("KODEL_SPARE_SCHEMAS".to_owned(), "0".to_owned()),
        ];
        env.extend(llm_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let listen = format!("127.0.0.1:{}", free_port());
        let mut stack = Stack {
            server: None,
            env,
            listen,
            http: reqwest::Client::new(),
            token: String::new(),
            agent_token: String::new(),
            work: tempfile::tempdir().unwrap(),
            events: Arc::default(),
            agents: Vec::new(),
        };
        stack.start_server();
        stack.token = register(&stack.base(), "ada@example.com").await;
        stack.call("POST", "/api/v1/orgs", json!({"slug": "acme", "name": "Acme"})).await;
        stack.call("POST", "/api/v1/orgs/acme/projects", json!({"key": "KOD", "name": "Kodel", "workflow": "software-development"})).await;
        let t = stack.call("POST", "/api/v1/orgs/acme/agent-tokens", json!({"name": "e2e"})).await;
        stack.agent_token = t["token"].as_str().unwrap().to_owned();
        assert!(stack.agent_token.starts_with("kodel_agt_"));
        stack
    }

    pub fn start_server(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.server = Some(ServerProcess::start_on(&server_binary(), &self.listen, &[], &env));
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        api(&self.http, &self.base(), &self.token, method, path, body).await
    }

    /// A real kodel-agent process that keeps its workspaces (tests look inside).
    pub fn agent(&mut self, name: &str) -> usize {
        self.agent_with(name, &["--keep-workspaces"], None)
    }

    /// A real kodel-agent process with extra flags, its log written to `log`.
    pub fn agent_with(&mut self, name: &str, flags: &[&str], log: Option<&Path>) -> usize {
        self.agent_at(&self.base(), name, flags, log)
    }

    /// The same, connecting to `server` (a load balancer, say) instead of this server.
    pub fn agent_at(&mut self, server: &str, name: &str, flags: &[&str], log: Option<&Path>) -> usize {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_kodel-agent"))
            .args(["--server", server, "--workdir"])
            .arg(self.work.path())
            .args(["--name", name])
            .args(if flags.contains(&"--sandbox") { &[][..] } else { &["--sandbox", "auto"][..] })
            .args(kodel_testkit::agent_user_args())
            .args(flags)
            .env("KODEL_AGENT_TOKEN", &self.agent_token)
            .env("RUST_LOG", "info")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.agents.push(child);
        self.agents.len() - 1
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().unwrap().child.id()
    }

    /// The workspaces of a task's jobs (`<work>/<KEY>-<kind>-<id>`).
    pub fn workspaces(&self, key: &str) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.work.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{key}-")))
            .collect();
        found.sort();
        found
    }

    /// The one workspace of a task's job.
    pub fn workspace(&self, key: &str) -> PathBuf {
        let found = self.workspaces(key);
        assert_eq!(found.len(), 1, "one workspace for {key}: {found:?}");
        found[0].clone()
    }

    /// Waits (bounded) until the stream has shown `n` events of this kind.
    pub async fn wait_events(&self, kind: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.events_of(kind);
            if found.len() >= n {
                return found;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self.events.lock().unwrap().iter().map(|(k, _)| k.clone()).collect();
                panic!("{} of {n} {kind} events within {within:?}; saw {seen:?}\nserver log:\n{}", found.len(), self.server_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows the task's SSE stream, stored and live events alike.
    pub async fn follow(&self, task: &str) {
        let resp = self
            .http
            .get(format!("{}/api/v1/orgs/acme/tasks/{task}/events", self.base()))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let sink = self.events.clone();
        read_sse(resp, move |kind, payload| sink.lock().unwrap().push((kind, payload)));
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events.lock().unwrap().iter().filter(|(k, _)| k == kind).map(|(_, v)| v.clone()).collect()
    }

    /// Waits (bounded) for the first event of any of these kinds: its kind and payload.
    pub async fn wait_events_any(&self, kinds: &[&str], within: Duration) -> (String, Value) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.events.lock().unwrap().iter().find(|(k, _)| kinds.contains(&k.as_str())).cloned() {
                return found;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self.events.lock().unwrap().iter().map(|(k, _)| k.clone()).collect();
                panic!("none of {kinds:?} within {within:?}; saw {seen:?}\nserver log:\n{}", self.server_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the stream has shown an event of this kind.
    pub async fn wait_event(&self, kind: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.events_of(kind).into_iter().next() {
                return v;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self.events.lock().unwrap().iter().map(|(k, _)| k.clone()).collect();
                panic!("no {kind} event within {within:?}; saw {seen:?}; failures: {:?}\nserver log:\n{}", self.events_of("job.failed"), self.server_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn server_log(&self) -> String {
        self.server.as_ref().map(|s| s.log()).unwrap_or_default()
    }

    pub async fn task_in_progress(&self, title: &str) -> String {
        let t = self.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": title, "description": "Make it so."})).await;
        let key = t["key"].as_str().unwrap().to_owned();
        self.follow(&key).await;
        for status in ["Ready", "In Progress"] {
            self.call("POST", &format!("/api/v1/orgs/acme/tasks/{key}/move"), json!({"status": status})).await;
        }
        key
    }

    pub async fn job(&self, key: &str) -> Value {
        let jobs = self.call("GET", &format!("/api/v1/orgs/acme/jobs?task={key}"), Value::Null).await;
        jobs["data"][0].clone()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

pub fn kodel_binary() -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel-agent"), "kodel")
}

impl Stack {
    /// `kodel` as a script would run it (KODEL_TOKEN and KODEL_ORG, no login).
    pub fn kodel(&self) -> Command {
        let mut cmd = Command::new(kodel_binary());
        cmd.env("KODEL_SERVER", self.base()).env("KODEL_TOKEN", &self.token).env("KODEL_ORG", "acme").env("KODEL_NO_KEYRING", "1");
        cmd.env("KODEL_CONFIG_DIR", self.work.path().join(".kodel-config"));
        cmd
    }
}


pub const CALC: &str = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n";
pub const TESTS: &str = "import unittest\n\nfrom calc import add, mul\n\n\nclass CalcTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n    def test_mul(self):\n        self.assertEqual(mul(2, 3), 6)\n\n\nif __name__ == \"__main__\":\n    unittest.main()\n";

/// The file at `rev` in a bare repository, if it is there.
pub fn show(bare: &Path, rev: &str) -> Option<String> {
    let out = Command::new("git").arg("--git-dir").arg(bare).args(["show", rev]).output().unwrap();
    out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
}

/// Reads an SSE response in the background: each event's type and its details
/// (`payload`; stored and live events alike carry them there) go to `on_event`.
pub fn read_sse(resp: reqwest::Response, mut on_event: impl FnMut(String, Value) + Send + 'static) {
    tokio::spawn(read_sse_events(resp, move |_, kind, event| on_event(kind, event["payload"].clone())));
}

/// Reads an SSE response until it ends: each event's id (None for live ones), type and
/// whole event go to `on_event`.
pub async fn read_sse_events(resp: reqwest::Response, mut on_event: impl FnMut(Option<i64>, String, Value)) {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if !kind.is_empty() {
                on_event(id, kind, serde_json::from_str(&data).unwrap_or(Value::Null));
            }
        }
    }
}

/// A bare repository at `root/<path>.git` whose `main` holds a small Python project
/// with a bug in add() and its unittest tests.
pub fn bare_repo(root: &Path, path: &str) -> PathBuf {
    let src = root.join(format!("{path}-src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("calc.py"), CALC).unwrap();
    std::fs::write(src.join("test_calc.py"), TESTS).unwrap();
    kodel_testkit::git(&src, &["init", "-q", "-b", "main"]);
    kodel_testkit::git(&src, &["add", "."]);
    kodel_testkit::git(&src, &["commit", "-q", "-m", "calc"]);
    let bare = root.join(format!("{path}.git"));
    kodel_testkit::git(root, &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    bare
}

