//! kodel-agent: the stateless worker that takes AI jobs from a Kodel server.
//!
//! Exit codes: 0 stopped by a signal; 1 a setup error (bad flags, work dir);
//! 2 the server refused the agent (token, protocol version).

use std::path::PathBuf;

use clap::Parser;
use kodel_agent::connection::{self, AgentConfig, Fatal};
use kodel_agent::container::{self, Engine, Runtime};
use kodel_agent::sandbox::{Sandbox, SandboxMode};

#[derive(Debug, Parser)]
#[command(name = "kodel-agent", version, about = "Kodel's agent worker: takes AI jobs from a Kodel server, one at a time")]
struct Args {
    /// The server's URL, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "KODEL_SERVER")]
    server: String,
    /// An agent token of the org (kodel agent token create NAME). Prefer the
    /// environment or --token-file: a command line is visible to every user in `ps`.
    #[arg(long, env = "KODEL_AGENT_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the agent token (keep it 0600; read once at start).
    #[arg(long, env = "KODEL_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Started as root, become this unprivileged user at once (required as root: the
    /// model's commands must never run as root).
    #[arg(long, env = "KODEL_AGENT_USER")]
    user: Option<String>,
    /// Where job workspaces live (a fresh directory per job).
    #[arg(long, env = "KODEL_AGENT_WORKDIR")]
    workdir: Option<PathBuf>,
    /// Labels this agent offers (a project's instance template may require some).
    #[arg(long, env = "KODEL_AGENT_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Run bash under bubblewrap: auto (when available, else warn), required, off.
    #[arg(long, env = "KODEL_AGENT_SANDBOX", default_value = "auto")]
    sandbox: SandboxMode,
    /// Where jobs whose instance template names a base image run: auto (in containers
    /// when a Docker Engine answers), docker (one must answer at start), bwrap (never in
    /// containers: such jobs go to other agents). Other jobs run under bubblewrap.
    #[arg(long, env = "KODEL_AGENT_RUNTIME", default_value = "auto")]
    runtime: Runtime,
    /// The Docker Engine's socket (default: DOCKER_HOST, else unix:///var/run/docker.sock).
    /// Started as root, the agent keeps the socket's group to reach it.
    #[arg(long, env = "KODEL_AGENT_DOCKER_HOST")]
    docker_host: Option<String>,
    /// An image with dockerd: docker-in-docker jobs get a daemon of their own from it,
    /// in a privileged container beside theirs. Without it, the agent takes no dind jobs.
    #[arg(long, env = "KODEL_AGENT_DIND_IMAGE")]
    dind_image: Option<String>,
    /// Keep a failed job's container (stopped) for people to look at (docker rm it after).
    #[arg(long, env = "KODEL_AGENT_KEEP_FAILED_CONTAINERS", value_parser = clap::builder::BoolishValueParser::new())]
    keep_failed_containers: bool,
    /// The name shown in `kodel agent list` (default: the host name).
    #[arg(long, env = "KODEL_AGENT_NAME")]
    name: Option<String>,
    /// Hours a failed job's workspace is kept for inspection (0: not kept).
    #[arg(long, env = "KODEL_AGENT_KEEP_FAILED_HOURS", default_value_t = 24)]
    keep_failed_hours: u64,
    /// The most disk the job workspaces may take together, in GiB; kept workspaces
    /// go, oldest first, to stay under it.
    #[arg(long, env = "KODEL_AGENT_MAX_DISK_GB", default_value_t = 20)]
    max_disk_gb: u64,
    /// Keep every job's workspace, also of jobs that succeeded (to debug).
    #[arg(long, env = "KODEL_AGENT_KEEP_WORKSPACES", value_parser = clap::builder::BoolishValueParser::new())]
    keep_workspaces: bool,
    /// Let modules be cloned from file:// URLs: repositories on this host, which anyone
    /// who may add a module to a project could then read. Off by default.
    #[arg(long, env = "KODEL_AGENT_ALLOW_FILE_REMOTES", value_parser = clap::builder::BoolishValueParser::new())]
    allow_file_remotes: bool,
}

fn main() {
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let token_on_command_line = matches.value_source("token") == Some(clap::parser::ValueSource::CommandLine);
    let args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    if token_on_command_line {
        tracing::warn!("the agent token was given on the command line, where every user of this machine can read it (ps); use KODEL_AGENT_TOKEN or --token-file");
    }
    let Started { token, workdir, limits, hidden, sandbox } = match setup(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kodel-agent: {e}");
            std::process::exit(1);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kodel-agent: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let name = args.name.unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "kodel-agent".into()));
        let socket = container::socket_path(args.docker_host.as_deref());
        let detected = match Engine::detect(args.runtime, socket, args.dind_image.as_deref(), args.keep_failed_containers).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("kodel-agent: {e}");
                return 1;
            }
        };
        let cfg = AgentConfig {
            server: args.server,
            token,
            workdir,
            labels: args.labels,
            name,
            sandbox: Sandbox::detect(sandbox).hiding(hidden),
            keep_failed: std::time::Duration::from_secs(args.keep_failed_hours.saturating_mul(3600)),
            max_disk: args.max_disk_gb.saturating_mul(1 << 30),
            keep_workspaces: args.keep_workspaces,
            allow_file_remotes: args.allow_file_remotes,
            limits,
            engine: detected.engine,
            missing: detected.missing.into_iter().map(|(c, why)| (c.to_owned(), why)).collect(),
        };
        match connection::run(cfg, stop_signal()).await {
            Ok(()) => 0,
            Err(e @ Fatal::Refused(_)) => {
                eprintln!("kodel-agent: {e}");
                2
            }
            Err(e) => {
                eprintln!("kodel-agent: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// What the agent starts with, once set up.
struct Started {
    token: String,
    workdir: PathBuf,
    /// Where jobs' resource limits can be applied, or why not.
    limits: kodel_agent::limits::Setup,
    /// The token file, hidden from commands.
    hidden: Vec<PathBuf>,
    sandbox: SandboxMode,
}

/// Reads the token and, started as root, makes the agent's cgroups and becomes
/// `--user` (before any thread starts).
fn setup(args: &Args) -> Result<Started, String> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(path)) => read_token_file(path)?,
        (None, None) => return Err("no agent token: set KODEL_AGENT_TOKEN or pass --token-file (kodel agent token create NAME makes one)".into()),
    };
    // Absolute, links resolved: the sandbox hides the file itself at that path. The
    // Docker socket too: whoever reaches it is root on the host.
    let socket = (args.runtime != Runtime::Bwrap).then(|| container::socket_path(args.docker_host.as_deref()).ok()).flatten().and_then(|p| std::fs::canonicalize(p).ok());
    let hidden: Vec<PathBuf> = args.token_file.iter().filter_map(|p| std::fs::canonicalize(p).ok()).chain(socket.clone()).collect();
    // SAFETY: no other thread exists yet (the runtime starts after setup). Nothing the
    // agent starts (git, ssh, its helpers) inherits the token.
    unsafe { std::env::remove_var("KODEL_AGENT_TOKEN") };
    if !nix::unistd::geteuid().is_root() {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name).unwrap_or_else(|| nix::unistd::geteuid().to_string());
        if let Some(user) = args.user.as_ref().filter(|u| **u != me) {
            return Err(format!("--user {user} needs the agent to start as root (it runs as {me})"));
        }
        let workdir = args.workdir.clone().unwrap_or_else(|| default_workdir(std::env::var_os("HOME").map(PathBuf::from)));
        let limits = report_limits(kodel_agent::limits::Cgroups::setup(None, &me));
        return Ok(Started { token, workdir, limits, hidden, sandbox: args.sandbox });
    }
    let user = args.user.as_deref().ok_or(
        "kodel-agent is running as root, so the model's commands would too (a sandbox run by root can be escaped): \
         start it as an unprivileged user, or pass --user NAME to become that user at start",
    )?;
    let run = kodel_agent::privileges::resolve(user)?;
    let workdir = match (&args.workdir, &run.home) {
        (Some(w), _) => w.clone(),
        (None, Some(home)) => default_workdir(Some(home.clone())),
        (None, None) => return Err(format!("{user} has no home directory: pass --workdir")),
    };
    let limits = report_limits(kodel_agent::limits::Cgroups::setup(Some((run.uid, run.gid)), &run.name));
    // The Docker socket's group, kept to reach the Engine (never the root group). The
    // model's commands cannot use it: in containers they have no supplementary groups,
    // and under bubblewrap the socket is hidden. With `--sandbox off` commands would run
    // unconfined with the group, which is root on the host: then it is not kept.
    let docker_group: Vec<nix::unistd::Gid> = socket
        .as_ref()
        .filter(|_| args.sandbox != SandboxMode::Off)
        .and_then(|s| std::fs::metadata(s).ok())
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .filter(|gid| *gid != 0)
        .map(nix::unistd::Gid::from_raw)
        .into_iter()
        .collect();
    kodel_agent::privileges::become_user(&run, &workdir, &docker_group)?;
    // git and the tools look in $HOME: make it the user's (or the work dir, for an
    // account without a home), not root's, which the user cannot enter.
    let home = run.home.clone().unwrap_or_else(|| workdir.clone());
    // SAFETY: no other thread exists yet (the runtime starts after setup), so nothing
    // reads the environment while it changes.
    unsafe {
        std::env::set_var("HOME", &home);
        std::env::set_var("USER", &run.name);
        std::env::set_var("LOGNAME", &run.name);
    }
    tracing::info!(user = %run.name, "started as root; now running as {}", run.name);
    // Run by root, an agent whose sandbox does not work would run the model's commands
    // unconfined on a machine it was trusted with: it refuses them instead.
    let sandbox = match args.sandbox {
        SandboxMode::Auto => {
            tracing::info!("started as root: the sandbox is required (jobs fail, saying why, where bubblewrap does not work for {})", run.name);
            SandboxMode::Required
        }
        other => other,
    };
    Ok(Started { token, workdir, limits, hidden, sandbox })
}

fn report_limits(setup: kodel_agent::limits::Setup) -> kodel_agent::limits::Setup {
    match &setup {
        Ok(_) => tracing::info!("jobs' resource limits (memory_mb, cpu_limit, max_processes) are applied with cgroups"),
        Err(why) => tracing::info!("jobs whose instance template sets resource limits are refused: {why}"),
    }
    setup
}

fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("the token file {} can be read by others; chmod 600 it", path.display()));
    }
    let token = std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

fn default_workdir(home: Option<PathBuf>) -> PathBuf {
    home.unwrap_or_else(std::env::temp_dir).join(".local/share/kodel-agent/work")
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("stopping; a running job goes back to the queue");
}
