//! `kodel up`: a local server on its managed PostgreSQL, in the foreground. Ctrl-C (or
//! SIGTERM) stops the server, which stops its database. The next `kodel up` reuses the
//! data. (The TUI, the local agent and the first-run account come with later issues.)

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::Ctx;
use crate::cli::UpArgs;
use crate::exit::{self, CliError};

/// kodel-server next to this binary (an install or a cargo build), else on PATH.
fn server_binary() -> Result<PathBuf, CliError> {
    let sibling = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("kodel-server")));
    if let Some(p) = sibling.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("kodel-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(CliError::new(exit::FAILURE, "kodel-server not found next to kodel or on PATH").hint("run ./install.sh"))
}

pub async fn run(ctx: &mut Ctx, args: UpArgs) -> Result<(), CliError> {
    let url = format!("http://{}", args.listen);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    if http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
        return Err(CliError::new(exit::CONFLICT, format!("a Kodel server already answers at {url}")).hint("use it, or pass --listen with another address"));
    }
    let mut cmd = Command::new(server_binary()?);
    cmd.arg("--listen").arg(&args.listen).env_remove("DATABASE_URL").stdin(Stdio::null()).kill_on_drop(true);
    // A local, single-user stack: its webhooks and a local Ollama live on this machine.
    if std::env::var_os("KODEL_ALLOW_PRIVATE_URLS").is_none() {
        cmd.env("KODEL_ALLOW_PRIVATE_URLS", "true");
    }
    if let Some(dir) = &args.data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    let mut child = cmd.spawn().map_err(|e| CliError::new(exit::FAILURE, format!("cannot start kodel-server: {e}")))?;

    // Wait until it serves (the first start initialises the database).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(CliError::new(exit::FAILURE, format!("kodel-server exited ({status}) before it was ready; see its messages above")));
        }
        if http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(CliError::new(exit::UNAVAILABLE, "kodel-server did not become ready within 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.settings.server = Some(url.clone());
    ctx.settings.save()?;
    if !args.no_tui {
        say("kodel: the TUI is not built yet; running the server only.");
    }
    say(&format!("Kodel is up at {url}. Ctrl-C stops it."));
    say("Next: kodel register --email you@example.com --name You && kodel org create myorg && kodel project create DEMO --name Demo");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            return if status.success() { Ok(()) } else { Err(CliError::new(exit::FAILURE, format!("kodel-server stopped ({status})"))) };
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    say("Stopping Kodel…");
    if let Some(pid) = child.id() {
        // SIGTERM: the server shuts down gracefully and stops its database.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(status) => {
            status?;
            Ok(())
        }
        Err(_) => {
            let _ = child.kill().await;
            Err(CliError::new(exit::FAILURE, "kodel-server did not stop within 60 s; killed it"))
        }
    }
}

/// A message on stderr that cannot fail the shutdown (stderr may be a closed pipe).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
