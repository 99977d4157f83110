//! The TUI in a real terminal: tmux runs the real `kodel` against a real `kodel-server`
//! and `kodel-agent` (only the model is scripted); the tests type keys and read the
//! screen (capture-pane), with deadlines, never fixed sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kodel_testkit::scripted_llm::{Reply, ScriptedLlm};
use kodel_testkit::tmux::Tmux;
use kodel_testkit::{ServerProcess, api, database_url, free_port, fresh_database, git, register, sibling_binary};
use serde_json::{Value, json};

fn sibling(name: &str) -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_kodel"), name)
}

struct Stack {
    server: Option<ServerProcess>,
    listen: String,
    env: Vec<(String, String)>,
    token: String,
    http: reqwest::Client,
    config: tempfile::TempDir,
    agent: Option<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(a) = &mut self.agent {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Stack {
    async fn start(llm: Option<&ScriptedLlm>) -> Stack {
        let db = fresh_database().await;
        let mut env = vec![("DATABASE_URL".to_owned(), database_url(&db)), ("KODEL_ENGINE_TICK".to_owned(), "0.2".to_owned()), ("KODEL_SPARE_SCHEMAS".to_owned(), "0".to_owned())];
        if let Some(llm) = llm {
            env.push(("OPENAI_BASE_URL".into(), llm.openai_base()));
            env.push(("OPENAI_API_KEY".into(), "sk-test".into()));
            env.push(("KODEL_DEFAULT_MODEL".into(), "openai/gpt-test".into()));
        }
        let mut s = Stack { server: None, listen: format!("127.0.0.1:{}", free_port()), env, token: String::new(), http: reqwest::Client::new(), config: tempfile::tempdir().unwrap(), agent: None };
        s.start_server();
        s.token = register(&s.base(), "ada@example.com").await;
        s.call("POST", "/api/v1/orgs", json!({"slug": "acme", "name": "Acme"})).await;
        s.call("POST", "/api/v1/orgs/acme/projects", json!({"key": "KOD", "name": "Kodel", "workflow": "software-development"})).await;
        s
    }

    fn start_server(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.server = Some(ServerProcess::start_on(&sibling("kodel-server"), &self.listen, &[], &env));
    }

    fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        api(&self.http, &self.base(), &self.token, method, path, body).await
    }

    /// `kodel` (the TUI) in tmux, as a script-free user would run it: token, org and
    /// project from the environment.
    fn tui(&self, width: u16, height: u16) -> Tmux {
        let env = vec![
            ("KODEL_SERVER", self.base()),
            ("KODEL_TOKEN", self.token.clone()),
            ("KODEL_ORG", "acme".to_owned()),
            ("KODEL_PROJECT", "KOD".to_owned()),
            ("KODEL_CONFIG_DIR", self.config.path().to_string_lossy().into_owned()),
            ("KODEL_NO_KEYRING", "1".to_owned()),
            ("TERM", "xterm-256color".to_owned()),
        ];
        Tmux::start(&sibling("kodel").to_string_lossy(), &env, width, height)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_from_creation_to_an_approved_patch_in_the_tui() {
    let llm = ScriptedLlm::start(vec![
        Reply::TextAndTools("Fixing add() now.".into(), vec![("edit_file".into(), json!({"path": "calc.py", "old_string": "a - b", "new_string": "a + b"}))]),
        Reply::Text("Fixed add(): it subtracted.".into()),
    ])
    .await;
    let mut stack = Stack::start(Some(&llm)).await;
    let repos = tempfile::tempdir().unwrap();
    let src = repos.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("calc.py"), "def add(a, b):\n    return a - b\n").unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "calc"]);
    let bare = repos.path().join("calc.git");
    git(repos.path(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    kodel_testkit::agent_may_use(&bare);
    stack.call("POST", "/api/v1/orgs/acme/modules", json!({"project": "KOD", "name": "calc", "url": format!("file://{}", bare.display())})).await;
    let t = stack.call("POST", "/api/v1/orgs/acme/agent-tokens", json!({"name": "tui"})).await;
    let work = tempfile::tempdir().unwrap();
    stack.agent = Some(
        Command::new(sibling("kodel-agent"))
            .args(["--server", &stack.base(), "--name", "tui-agent", "--allow-file-remotes", "--workdir"])
            .arg(work.path())
            .args(kodel_testkit::agent_user_args())
            .env("KODEL_AGENT_TOKEN", t["token"].as_str().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let tui = stack.tui(120, 32);
    tui.wait_for("Backlog (0)", Duration::from_secs(20));
    tui.wait_for("● live", Duration::from_secs(10));
    // Create a task in the form.
    tui.keys(&["n"]);
    tui.wait_for("new task", Duration::from_secs(5));
    tui.text("Fix add");
    tui.keys(&["C-s"]);
    tui.wait_for("Backlog (1)", Duration::from_secs(10));
    // Into the bound status, one allowed move at a time; the AI marker shows.
    tui.keys(&[">"]);
    tui.wait_for("Ready (1)", Duration::from_secs(10));
    tui.keys(&[">"]);
    tui.wait_for("In Progress (1)", Duration::from_secs(10));
    // The task: the agent's words and its tool call appear on screen.
    tui.keys(&["Enter"]);
    tui.wait_for("agent stream", Duration::from_secs(5));
    tui.wait_for("Fixing add() now.", Duration::from_secs(60));
    tui.wait_for("edit_file calc.py", Duration::from_secs(30));
    let screen = tui.wait_for("pending  patch", Duration::from_secs(60));
    assert!(screen.contains("job.succeeded"), "{screen}");
    // Approve: the task moves on to Code Review.
    tui.keys(&["A"]);
    tui.wait_for("approve: a comment", Duration::from_secs(5));
    tui.text("looks right");
    tui.keys(&["Enter"]);
    tui.wait_for("approved patch", Duration::from_secs(10));
    let screen = tui.wait_for("Code Review  none", Duration::from_secs(10));
    assert!(screen.contains("approved"), "{screen}");
    tui.keys(&["Escape"]);
    tui.wait_for("Code Review (1)", Duration::from_secs(10));
    let task = stack.call("GET", "/api/v1/orgs/acme/tasks/KOD-1", Value::Null).await;
    assert_eq!(task["status"], "Code Review");
    // q quits and gives the terminal back.
    tui.keys(&["q"]);
    tui.wait_for("KODEL-EXITED 0", Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tui_reconnects_after_a_server_restart_and_shows_what_it_missed() {
    let mut stack = Stack::start(None).await;
    stack.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "First"})).await;
    let tui = stack.tui(100, 24);
    tui.wait_for("First", Duration::from_secs(20));
    tui.wait_for("● live", Duration::from_secs(10));
    // An event seen live: the stream now has a place to resume from (Last-Event-ID).
    stack.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "Seen live"})).await;
    tui.wait_for("Seen live", Duration::from_secs(10));
    let status = stack.server.take().unwrap().stop();
    assert!(status.success());
    tui.wait_for("reconnecting", Duration::from_secs(10));
    stack.start_server();
    // Changes made as soon as the server is back, before the TUI reconnected, show up.
    stack.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "Missed one"})).await;
    stack.call("POST", "/api/v1/orgs/acme/tasks/KOD-1/move", json!({"status": "Ready"})).await;
    tui.wait_for("● live", Duration::from_secs(20));
    let screen = tui.wait_for("Missed one", Duration::from_secs(10));
    let screen = if screen.contains("Ready (1)") { screen } else { tui.wait_for("Ready (1)", Duration::from_secs(10)) };
    // With an event id to resume from, the TUI does not reload the board: what it
    // missed came from the server's replay after that id.
    assert!(screen.contains("Backlog (2)"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kodel_up_opens_the_tui_logged_in_on_a_clean_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = vec![
        ("KODEL_CONFIG_DIR", config.path().to_string_lossy().into_owned()),
        ("KODEL_NO_KEYRING", "1".to_owned()),
        // No provider: the stack falls back to Ollama's default address.
        ("OPENAI_API_KEY", String::new()),
        ("ANTHROPIC_API_KEY", String::new()),
        ("OPENROUTER_API_KEY", String::new()),
        ("OLLAMA_BASE_URL", String::new()),
        ("KODEL_DEFAULT_MODEL", String::new()),
        ("HOME", data.path().to_string_lossy().into_owned()),
        ("TERM", "xterm-256color".to_owned()),
    ];
    let cmd = format!("{} up --listen {listen} --data-dir {}", sibling("kodel").display(), data.path().join("kodel").display());
    let tui = Tmux::start(&cmd, &env, 100, 30);
    let screen = tui.wait_for("Backlog (0)", Duration::from_secs(180));
    assert!(screen.contains("local / DEMO"), "{screen}");
    // The footer says which model AI jobs will use (no provider is set here).
    assert!(screen.contains("AI jobs use ollama/qwen2.5-coder: set OPENAI_API_KEY"), "{screen}");
    tui.wait_for("● live", Duration::from_secs(10));
    // The local agent is there, connected.
    tui.keys(&["a"]);
    let screen = tui.wait_for("online", Duration::from_secs(30));
    assert!(screen.contains("agents (1)"), "{screen}");
    // Quitting the TUI stops the stack: the server no longer answers, and its data
    // dir is free for the next `kodel up`.
    tui.keys(&["b"]);
    tui.keys(&["q"]);
    let screen = tui.wait_for("KODEL-EXITED", Duration::from_secs(90));
    assert!(screen.contains("KODEL-EXITED 0"), "{screen}");
    assert!(screen.contains("Stopping Kodel"), "{screen}");
    assert!(std::net::TcpStream::connect(&listen).is_err(), "the server stopped");
    let again = Tmux::start(&cmd, &env, 100, 30);
    again.wait_for("Backlog (0)", Duration::from_secs(120));
    again.keys(&["q"]);
    again.wait_for("KODEL-EXITED 0", Duration::from_secs(90));
}

/// A project picked in the TUI is where the TUI opens next time, and the CLI's default
/// project stays what `kodel project use` made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_switch_in_the_tui_leaves_the_clis_default_alone() {
    let stack = Stack::start(None).await;
    stack.call("POST", "/api/v1/orgs/acme/projects", json!({"key": "WEB", "name": "Website"})).await;
    let config = stack.config.path();
    std::fs::write(config.join("config.json"), json!({"server": stack.base(), "org": "acme", "project": "KOD"}).to_string()).unwrap();
    let env = vec![
        ("KODEL_TOKEN", stack.token.clone()),
        ("KODEL_CONFIG_DIR", config.to_string_lossy().into_owned()),
        ("KODEL_NO_KEYRING", "1".to_owned()),
        ("TERM", "xterm-256color".to_owned()),
    ];
    let tui = Tmux::start(&sibling("kodel").to_string_lossy(), &env, 100, 30);
    tui.wait_for("acme / KOD Kodel", Duration::from_secs(20));
    tui.keys(&["p"]);
    tui.wait_for("WEB  Website", Duration::from_secs(10));
    tui.keys(&["j", "Enter"]);
    tui.wait_for("acme / WEB Website", Duration::from_secs(10));
    tui.keys(&["q"]);
    tui.wait_for("KODEL-EXITED 0", Duration::from_secs(10));
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(config.join("config.json")).unwrap()).unwrap();
    assert_eq!((settings["project"].as_str(), settings["tui_project"].as_str()), (Some("KOD"), Some("WEB")), "{settings}");
    // The TUI opens where it was left.
    let again = Tmux::start(&sibling("kodel").to_string_lossy(), &env, 100, 30);
    again.wait_for("acme / WEB Website", Duration::from_secs(20));
    again.keys(&["q"]);
    again.wait_for("KODEL-EXITED 0", Duration::from_secs(10));
}

/// `s` in the task view starts a job on the task from the template picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_started_from_the_task_view() {
    let stack = Stack::start(None).await;
    stack.call("POST", "/api/v1/orgs/acme/projects/KOD/tasks", json!({"title": "Run it again"})).await;
    let tui = stack.tui(100, 30);
    tui.wait_for("Backlog (1)", Duration::from_secs(20));
    tui.keys(&["Enter"]);
    tui.wait_for("Run it again", Duration::from_secs(10));
    tui.keys(&["s"]);
    tui.wait_for("qa-template", Duration::from_secs(10));
    tui.keys(&["Enter"]);
    let screen = tui.wait_for("job on KOD-1", Duration::from_secs(10));
    assert!(screen.contains("started a"), "{screen}");
    let jobs = stack.call("GET", "/api/v1/orgs/acme/jobs?task=KOD-1", Value::Null).await;
    let jobs = jobs["data"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0]["for_status"].is_null(), "started by hand: {jobs:?}");
    tui.keys(&["q"]);
    tui.wait_for("KODEL-EXITED 0", Duration::from_secs(10));
}
