//! `kodel up`: a local stack in the foreground: the server on its managed PostgreSQL
//! and one local agent. The first run creates a local account, an org `local` and a
//! project `DEMO` (Software Development) whose module is a small git repository made
//! in the data dir (`demo.git`, with a test script as the project's test command), so
//! a task can go from In Progress to a patch, a review and a test report; and logs the
//! CLI in. Later runs reuse them.
//! Then it opens the TUI, logged in (the server's and agent's logs go to files in the
//! data dir meanwhile); quitting it, Ctrl-C or SIGTERM stops the agent, then the
//! server, which stops its database. `--no-tui` (or no terminal) runs it headless.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};

use super::Ctx;
use crate::cli::UpArgs;
use crate::exit::{self, CliError};

/// A binary of ours next to this one (an install or a cargo build), else on PATH.
fn sibling_binary(name: &str) -> Result<PathBuf, CliError> {
    let sibling = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join(name)));
    if let Some(p) = sibling.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(CliError::new(exit::FAILURE, format!("{name} not found next to kodel or on PATH")).hint("run ./install.sh"))
}

/// The server's data dir (the same rule as kodel-server's).
fn data_dir(args: &UpArgs) -> Result<PathBuf, CliError> {
    if let Some(d) = &args.data_dir {
        return Ok(d.clone());
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/kodel"));
    }
    directories::ProjectDirs::from("dev", "kodel", "kodel")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| CliError::usage("cannot find a home directory").hint("pass --data-dir"))
}

/// What the first run made, kept in the data dir (0600): later runs log in with it.
#[derive(Serialize, Deserialize)]
struct LocalStack {
    email: String,
    password: String,
    org: String,
    project: String,
    agent_token: String,
}

const LOCAL_EMAIL: &str = "you@kodel.localhost";

/// The DEMO project's repository: a bare git repository in the data dir with one
/// commit (a README, a script and its test), given to the agent's user when the agent
/// runs as one (it clones it and pushes task branches to it).
fn demo_repository(dir: &std::path::Path, agent_user: Option<&str>) -> Result<PathBuf, String> {
    let bare = dir.join("demo.git");
    if bare.exists() {
        return std::fs::canonicalize(&bare).map_err(|e| e.to_string());
    }
    let git = |args: &[&str], cwd: &std::path::Path| -> Result<(), String> {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=Kodel", "-c", "user.email=kodel@localhost", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(cwd)
            .output()
            .map_err(|e| format!("cannot run git ({e}): install git"))?;
        if out.status.success() { Ok(()) } else { Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())) }
    };
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    for (name, text) in DEMO_FILES {
        std::fs::write(work.path().join(name), text).map_err(|e| e.to_string())?;
    }
    git(&["init", "-q", "-b", "main"], work.path())?;
    git(&["add", "."], work.path())?;
    git(&["commit", "-q", "-m", "The demo: a greeting script and its test"], work.path())?;
    git(&["clone", "-q", "--bare", &work.path().display().to_string(), &bare.display().to_string()], dir)?;
    if let Some(user) = agent_user.and_then(|u| nix::unistd::User::from_name(u).ok().flatten()) {
        // Children before their directory: while a directory is still root's, the
        // agent's user cannot swap an entry in it for a link, so root never follows one.
        for entry in walkdir(&bare).into_iter().rev() {
            std::os::unix::fs::lchown(&entry, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(|e| format!("{}: {e}", entry.display()))?;
        }
    }
    std::fs::canonicalize(&bare).map_err(|e| e.to_string())
}

/// `root` and everything under it.
fn walkdir(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i])
            && std::fs::symlink_metadata(&out[i]).is_ok_and(|m| m.is_dir())
        {
            out.extend(entries.flatten().map(|e| e.path()));
        }
        i += 1;
    }
    out
}

/// What the DEMO repository starts with.
const DEMO_FILES: [(&str, &str); 3] = [
    (
        "README.md",
        "# Demo\n\nA tiny project to try Kodel with. `sh greet.sh NAME` greets NAME; `sh test.sh` checks it\n(the project's test command, which QA jobs run).\n\nA first task to try: \"greet.sh: greet with an exclamation mark\" (then update test.sh).\n",
    ),
    ("greet.sh", "#!/bin/sh\n# Greets the name given (or the world).\necho \"Hello, ${1:-world}\"\n"),
    (
        "test.sh",
        "#!/bin/sh\n# The demo's tests: greet.sh greets the name it is given.\nout=$(sh greet.sh Ada)\nif [ \"$out\" != \"Hello, Ada\" ]; then\n  echo \"FAIL: greet.sh Ada printed '$out', expected 'Hello, Ada'\"\n  exit 1\nfi\necho \"ok: greet.sh\"\n",
    ),
];

/// Logs the CLI in to the local stack, creating the account, org, project and agent
/// token on the first run.
async fn local_stack(ctx: &mut Ctx, dir: &std::path::Path, agent_user: Option<&str>) -> Result<LocalStack, CliError> {
    let file = dir.join("local-stack.json");
    let existing: Option<LocalStack> = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
    let (stack, tokens) = match existing {
        Some(stack) => {
            let pair = super::auth::password_login(&ctx.client, &stack.email, &stack.password).await?;
            (stack, (pair.access_token, pair.refresh_token))
        }
        None => {
            let password: String = (0..24).map(|_| char::from(b"abcdefghijkmnopqrstuvwxyz23456789"[rand::random_range(0..33)])).collect();
            let resp = ctx
                .client
                .raw(reqwest::Method::POST, "/api/v1/auth/register", Some(json!({ "email": LOCAL_EMAIL, "password": password, "name": "You" })))
                .await?;
            let _: kodel_core::api::Registered = crate::client::decode(resp).await?;
            let pair = super::auth::password_login(&ctx.client, LOCAL_EMAIL, &password).await.map_err(|e| {
                e.hint(format!("the local account exists but {} is gone; remove the data dir to start over", file.display()))
            })?;
            let tokens = (pair.access_token, pair.refresh_token);
            ctx.client.set_credentials(credentials(&tokens));
            let _: serde_json::Value = ctx.client.post("/api/v1/orgs", json!({ "slug": "local", "name": "Local" })).await?;
            let _: serde_json::Value = ctx
                .client
                .post("/api/v1/orgs/local/projects", json!({ "key": "DEMO", "name": "Demo", "workflow": "software-development" }))
                .await?;
            match demo_repository(dir, agent_user) {
                Ok(repo) => {
                    // Said and passed over: the stack is set up either way.
                    let module: Result<serde_json::Value, CliError> = ctx
                        .client
                        .post("/api/v1/orgs/local/modules", json!({ "project": "DEMO", "name": "demo", "url": repo.display().to_string(), "default_branch": "main" }))
                        .await;
                    let test: Result<serde_json::Value, CliError> = ctx.client.patch("/api/v1/orgs/local/projects/DEMO", json!({ "test_command": "sh test.sh" })).await;
                    if let Err(e) = module.and(test) {
                        say(&format!("DEMO has no repository: {}", e.message));
                    }
                }
                // The stack works without it; AI jobs then have no repository.
                Err(e) => say(&format!("DEMO has no repository: {e}")),
            }
            let t: kodel_core::api::ApiTokenCreated = ctx.client.post("/api/v1/orgs/local/agent-tokens", json!({ "name": "local agent" })).await?;
            let stack = LocalStack { email: LOCAL_EMAIL.into(), password, org: "local".into(), project: "DEMO".into(), agent_token: t.token };
            write_private(&file, &serde_json::to_string_pretty(&stack).unwrap_or_default())?;
            (stack, tokens)
        }
    };
    let creds = credentials(&tokens);
    creds.save(&ctx.client.server)?;
    ctx.client.set_credentials(creds);
    ctx.settings.org = Some(stack.org.clone());
    ctx.settings.project = Some(stack.project.clone());
    Ok(stack)
}

fn credentials(tokens: &(String, String)) -> crate::config::Credentials {
    crate::config::Credentials {
        email: Some(LOCAL_EMAIL.into()),
        access_token: Some(tokens.0.clone()),
        refresh_token: Some(tokens.1.clone()),
        api_token: None,
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(|e| CliError::new(exit::FAILURE, format!("cannot write {}: {e}", path.display())))
}

/// Which LLM the local stack uses when none is configured: Ollama at its default
/// address (a job then says plainly if Ollama is not there).
fn llm_defaults(cmd: &mut Command) -> Option<String> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set("KODEL_DEFAULT_MODEL") {
        return None;
    }
    let pick = [
        ("OPENAI_API_KEY", "openai/gpt-4.1-mini"),
        ("ANTHROPIC_API_KEY", "anthropic/claude-sonnet-4-5"),
        ("OPENROUTER_API_KEY", "openrouter/openai/gpt-4.1-mini"),
        ("OLLAMA_BASE_URL", "ollama/qwen2.5-coder"),
    ]
    .into_iter()
    .find(|(k, _)| set(k));
    let model = match pick {
        Some((_, model)) => model,
        None => {
            cmd.env("OLLAMA_BASE_URL", "http://127.0.0.1:11434");
            "ollama/qwen2.5-coder"
        }
    };
    cmd.env("KODEL_DEFAULT_MODEL", model);
    Some(model.to_owned())
}

async fn stop(child: &mut Child, what: &str) -> Result<(), CliError> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(status) => {
            status?;
            Ok(())
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(CliError::new(exit::FAILURE, format!("{what} did not stop within 60 s; killed it")))
        }
    }
}

pub async fn run(ctx: &mut Ctx, args: UpArgs) -> Result<(), CliError> {
    let url = format!("http://{}", args.listen);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    if http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        return Err(CliError::new(exit::CONFLICT, format!("a Kodel server already answers at {url}")).hint("use it, or pass --listen with another address"));
    }
    let data = data_dir(&args)?;
    // Signals are ours from here on: the children run in their own process group, and
    // an interrupted start must still stop what it started.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut cmd = Command::new(sibling_binary("kodel-server")?);
    let model = llm_defaults(&mut cmd);
    cmd.arg("--listen").arg(&args.listen).env_remove("DATABASE_URL").stdin(Stdio::null()).kill_on_drop(true);
    // A local, single-user stack: its webhooks and a local Ollama live on this machine.
    if std::env::var_os("KODEL_ALLOW_PRIVATE_URLS").is_none() {
        cmd.env("KODEL_ALLOW_PRIVATE_URLS", "true");
    }
    cmd.arg("--data-dir").arg(&data);
    use std::io::IsTerminal;
    let tui = !args.no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    // Under the TUI, the stack's messages go to files (they would garble the screen).
    let logs = |name: &str| -> Result<(Stdio, Stdio), CliError> {
        if !tui {
            return Ok((Stdio::inherit(), Stdio::inherit()));
        }
        std::fs::create_dir_all(&data)?;
        // Private: the server's log names failed logins, and the agent's user may read
        // what others may.
        let f = std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).append(true), 0o600).open(data.join(name))?;
        std::fs::set_permissions(data.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
    };
    let (out, err) = logs("kodel-server.log")?;
    // Their own process group: a Ctrl-C or a hang-up of the terminal reaches this
    // process only, which stops them in order (the agent, then the server and its
    // database).
    cmd.stdout(out).stderr(err).process_group(0);
    let mut child = cmd.spawn().map_err(|e| CliError::new(exit::FAILURE, format!("cannot start kodel-server: {e}")))?;

    // Wait until it serves (the first start initialises the database).
    say(&format!("Starting Kodel at {url} (the first start sets up its database; data in {})…", data.display()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            let see = if tui { format!("see {}", data.join("kodel-server.log").display()) } else { "see its messages above".to_owned() };
            return Err(CliError::new(exit::FAILURE, format!("kodel-server exited ({status}) before it was ready; {see}")));
        }
        if http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(CliError::new(exit::UNAVAILABLE, "kodel-server did not become ready within 120 s"));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = interrupt.recv() => return stop(&mut child, "kodel-server").await,
            _ = term.recv() => return stop(&mut child, "kodel-server").await,
            _ = hangup.recv() => return stop(&mut child, "kodel-server").await,
        }
    }
    ctx.settings.server = Some(url.clone());
    ctx.client = crate::client::Client::new(&url, None, false)?;
    // Run by root, the agent becomes an unprivileged user of its own: the model's
    // commands must never run as root.
    let run_as = match agent_user() {
        Ok(user) => user,
        Err(e) => {
            stop(&mut child, "kodel-server").await?;
            return Err(e);
        }
    };
    let stack = match local_stack(ctx, &data, run_as).await {
        Ok(s) => s,
        Err(e) => {
            stop(&mut child, "kodel-server").await?;
            return Err(e);
        }
    };
    ctx.settings.save()?;
    let (out, err) = logs("kodel-agent.log")?;
    let mut agent = match Command::new(sibling_binary("kodel-agent")?)
        .args(["--server", &url, "--name", "local", "--allow-file-remotes", "--workdir"])
        .arg(data.join("agent-work"))
        .args(run_as.iter().flat_map(|u| ["--user", u]))
        .env("KODEL_AGENT_TOKEN", &stack.agent_token)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(a) => a,
        Err(e) => {
            stop(&mut child, "kodel-server").await?;
            return Err(CliError::new(exit::FAILURE, format!("cannot start kodel-agent: {e}")));
        }
    };
    if tui {
        ctx.org = Some(stack.org.clone());
        let welcome = match &model {
            Some(m) => format!("AI jobs use {m}: set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY before `kodel up` for another. ? shows the keys."),
            None => format!("AI jobs use {}. ? shows the keys.", std::env::var("KODEL_DEFAULT_MODEL").unwrap_or_default()),
        };
        let result = tokio::select! {
            r = crate::tui::run_with(ctx, Some(welcome)) => r,
            status = child.wait() => Err(CliError::new(exit::FAILURE, format!("kodel-server stopped ({})", status.map(|s| s.to_string()).unwrap_or_default()))
                .hint(format!("see {}", data.join("kodel-server.log").display()))),
            _ = term.recv() => Ok(()),
            _ = hangup.recv() => Ok(()),
            _ = interrupt.recv() => Ok(()),
        };
        say("Stopping Kodel…");
        let _ = stop(&mut agent, "kodel-agent").await;
        let stopped = stop(&mut child, "kodel-server").await;
        say(&format!("Logs: {} and {}", data.join("kodel-server.log").display(), data.join("kodel-agent.log").display()));
        return result.and(stopped);
    }
    say(&format!("Kodel is up at {url}, with a local agent. Ctrl-C stops it."));
    say(&format!("You are logged in as {} in org {} (project {}).", stack.email, stack.org, stack.project));
    say(&format!(
        "The web view is at {url}: sign in as {} with the password in {}.",
        stack.email,
        data.join("local-stack.json").display()
    ));
    if let Some(model) = model {
        say(&format!(
            "AI jobs use {model}. Set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY (and KODEL_DEFAULT_MODEL) before `kodel up` for another."
        ));
    }
    say("Try: kodel task create \"Add a README\" && kodel task move DEMO-1 Ready && kodel task move DEMO-1 \"In Progress\" && kodel task logs DEMO-1 -f");

    tokio::select! {
        status = child.wait() => {
            let status = status?;
            let _ = stop(&mut agent, "kodel-agent").await;
            return if status.success() { Ok(()) } else { Err(CliError::new(exit::FAILURE, format!("kodel-server stopped ({status})"))) };
        }
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
        _ = hangup.recv() => {}
    }
    say("Stopping Kodel…");
    // The agent first (a job it runs goes back to the queue), then the server, which
    // shuts down gracefully and stops its database.
    let _ = stop(&mut agent, "kodel-agent").await;
    stop(&mut child, "kodel-server").await
}

/// The user the local agent runs as when `kodel up` runs as root: `kodel-agent`, a
/// system account made here on first use. None when not root.
const AGENT_USER: &str = "kodel-agent";

fn agent_user() -> Result<Option<&'static str>, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let exists = || nix::unistd::User::from_name(AGENT_USER).ok().flatten().is_some();
    // Another `kodel up` may be making it at the same moment (useradd then fails, or
    // finds /etc/passwd locked): look again before giving up.
    let mut why = String::new();
    for _ in 0..5 {
        if exists() {
            return Ok(Some(AGENT_USER));
        }
        let made = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", AGENT_USER])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()) });
        match made {
            Ok(()) => return Ok(Some(AGENT_USER)),
            Err(e) => why = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if exists() {
        return Ok(Some(AGENT_USER));
    }
    Err(CliError::new(exit::FAILURE, format!("cannot create the user {AGENT_USER} for the local agent (useradd): {why}"))
        .hint("run kodel up as a normal user, or create it: useradd --system kodel-agent"))
}

/// A message on stderr that cannot fail the shutdown (stderr may be a closed pipe).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
