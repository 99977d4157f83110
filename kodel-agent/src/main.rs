//! kodel-agent: the stateless worker that takes AI jobs from a Kodel server.
//!
//! Exit codes: 0 stopped by a signal; 1 a setup error (bad flags, work dir);
//! 2 the server refused the agent (token, protocol version).

use std::path::PathBuf;

use clap::Parser;
use kodel_agent::connection::{self, AgentConfig, Fatal};
use kodel_agent::sandbox::{Sandbox, SandboxMode};

#[derive(Debug, Parser)]
#[command(name = "kodel-agent", version, about = "Kodel's agent worker: takes AI jobs from a Kodel server, one at a time")]
struct Args {
    /// The server's URL, e.g. http://127.0.0.1:7700.
    #[arg(long, env = "KODEL_SERVER")]
    server: String,
    /// An agent token of the org (kodel agent token create NAME).
    #[arg(long, env = "KODEL_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// Where job workspaces live (a fresh directory per job).
    #[arg(long, env = "KODEL_AGENT_WORKDIR")]
    workdir: Option<PathBuf>,
    /// Labels this agent offers (a project's instance template may require some).
    #[arg(long, env = "KODEL_AGENT_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Run bash under bubblewrap: auto (when available, else warn), required, off.
    #[arg(long, env = "KODEL_AGENT_SANDBOX", default_value = "auto")]
    sandbox: SandboxMode,
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
    #[arg(long, env = "KODEL_AGENT_KEEP_WORKSPACES")]
    keep_workspaces: bool,
    /// Let modules be cloned from file:// URLs: repositories on this host, which anyone
    /// who may add a module to a project could then read. Off by default.
    #[arg(long, env = "KODEL_AGENT_ALLOW_FILE_REMOTES")]
    allow_file_remotes: bool,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kodel-agent: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let workdir = args.workdir.unwrap_or_else(default_workdir);
        let name = args.name.unwrap_or_else(|| nix_hostname().unwrap_or_else(|| "kodel-agent".into()));
        let cfg = AgentConfig {
            server: args.server,
            token: args.token,
            workdir,
            labels: args.labels,
            name,
            sandbox: Sandbox::detect(args.sandbox),
            keep_failed: std::time::Duration::from_secs(args.keep_failed_hours.saturating_mul(3600)),
            max_disk: args.max_disk_gb.saturating_mul(1 << 30),
            keep_workspaces: args.keep_workspaces,
            allow_file_remotes: args.allow_file_remotes,
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

fn default_workdir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".local/share/kodel-agent/work")
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
