//! The bash sandbox: bubblewrap (`bwrap`) gives each command a read-only view of the
//! machine with only the workspace writable, a private /tmp, no network, its own PID
//! namespace (no host process is visible) and no capabilities. Other tools need no
//! sandbox: they check every path themselves.
//!
//! bwrap run by root keeps nearly every capability unless told otherwise, so the flags
//! drop them all; and the agent never runs as root in the first place (it drops to
//! `--user` at start, see `privileges`), so the sandbox has no mapping to root either.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// How the agent treats the sandbox (`--sandbox auto|required|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Use bwrap when it works; otherwise warn once and run commands unconfined.
    Auto,
    /// Refuse to run commands unless bwrap works.
    Required,
    /// Never use bwrap.
    Off,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(SandboxMode::Auto),
            "required" => Ok(SandboxMode::Required),
            "off" => Ok(SandboxMode::Off),
            other => Err(format!("unknown sandbox mode {other:?}; use auto, required or off")),
        }
    }
}

/// The sandbox as detected at start: the mode and, when it works, the bwrap to run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    mode: SandboxMode,
    /// A bwrap that ran the probe successfully.
    bwrap: Option<PathBuf>,
    /// Why bwrap cannot be used (when it cannot and the mode is not Off).
    problem: Option<String>,
    /// Files and directories of the agent's that commands must not see (its token
    /// file): empty in the sandbox.
    hidden: Vec<PathBuf>,
}

/// The flags every sandboxed command gets, apart from the workspace bind and the
/// network. The probe runs with them too, so a bwrap that passes the probe can run
/// commands (some containers allow `--ro-bind` but not `--proc`).
pub(crate) const BASE_ARGS: [&str; 17] = [
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    // Docker's socket, the session bus, ssh-agent: connecting to a socket needs no
    // write access, so they are hidden rather than read-only.
    "--tmpfs",
    "/run",
    "--unshare-pid",
    "--unshare-ipc",
    "--die-with-parent",
    "--new-session",
    // As root bwrap would keep every capability but CAP_SYS_MODULE.
    "--cap-drop",
    "ALL",
];

static WARNED: AtomicBool = AtomicBool::new(false);

impl Sandbox {
    /// Finds bwrap on PATH (or /usr/bin/bwrap) and checks once that it works.
    pub fn detect(mode: SandboxMode) -> Sandbox {
        let bwrap = find_on_path("bwrap").unwrap_or_else(|| PathBuf::from("/usr/bin/bwrap"));
        Sandbox::detect_with(mode, &bwrap)
    }

    /// Like [`Sandbox::detect`] with a given bwrap; lets tests probe a missing one.
    #[doc(hidden)]
    pub fn detect_with(mode: SandboxMode, bwrap: &Path) -> Sandbox {
        if mode == SandboxMode::Off {
            return Sandbox::off();
        }
        match probe(bwrap) {
            Ok(()) => Sandbox { mode, bwrap: Some(bwrap.to_path_buf()), problem: None, hidden: Vec::new() },
            Err(problem) => {
                if mode == SandboxMode::Auto && !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "bash runs WITHOUT a sandbox: {problem}; install bubblewrap (apt-get install bubblewrap) \
                         and allow unprivileged user namespaces to confine commands to the workspace"
                    );
                }
                Sandbox { mode, bwrap: None, problem: Some(problem), hidden: Vec::new() }
            }
        }
    }

    /// No sandbox: commands run with the agent's own rights.
    pub fn off() -> Sandbox {
        Sandbox { mode: SandboxMode::Off, bwrap: None, problem: None, hidden: Vec::new() }
    }

    /// Also hides these paths from commands (a file reads as empty, a directory is empty).
    pub fn hiding(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Sandbox {
        self.hidden.extend(paths);
        self
    }

    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// Whether bash commands run under bwrap.
    pub fn is_active(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Err only when the sandbox is required and bwrap does not work, saying how to fix it.
    pub fn ready(&self) -> Result<(), String> {
        match (&self.mode, &self.bwrap, &self.problem) {
            (SandboxMode::Required, None, problem) => Err(format!(
                "the sandbox is required but bubblewrap does not work: {}. Install it (apt-get install bubblewrap) \
                 and make sure unprivileged user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1, \
                 and in a container run it with user namespaces enabled), or start the agent with --sandbox auto or off",
                problem.as_deref().unwrap_or("not found")
            )),
            _ => Ok(()),
        }
    }

    /// The bwrap command line (without the command itself) for a workspace root: the
    /// system read-only, the workspace the only writable place, and nothing of the
    /// agent's own reachable: its home, the other workspaces and /run (where sockets
    /// such as Docker's, the session bus and ssh-agent live) are empty tmpfs. The
    /// toolchain homes in `env` (RUSTUP_HOME, CARGO_HOME, ...) and `read_only` (the
    /// modules' git dirs, kept out of the workspace) come back read-only. The
    /// command gets exactly `env` (`--clearenv`), so not even bwrap sees the rest.
    pub(crate) fn bwrap_command(&self, root: &Path, network: bool, env: &[(String, String)], read_only: &[PathBuf]) -> Option<Command> {
        let bwrap = self.bwrap.as_ref()?;
        let mut cmd = Command::new(bwrap);
        cmd.args(BASE_ARGS);
        // The agent's home, by $HOME and by its account (they differ once an agent
        // started as root has dropped to its user).
        let account_home = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir);
        let mut homes: Vec<PathBuf> = std::env::var_os("HOME").map(PathBuf::from).into_iter().chain(account_home).collect();
        homes.dedup();
        for home in homes.iter().filter(|h| h.is_dir() && h.parent().is_some()) {
            cmd.arg("--tmpfs").arg(home);
        }
        if let Some(workdir) = root.parent().filter(|p| p.parent().is_some()) {
            cmd.arg("--tmpfs").arg(workdir);
        }
        for (k, v) in env {
            if TOOLCHAIN_HOMES.contains(&k.as_str()) && Path::new(v).is_dir() {
                cmd.arg("--ro-bind").arg(v).arg(v);
            }
        }
        for dir in read_only.iter().filter(|d| d.is_dir()) {
            cmd.arg("--ro-bind").arg(dir).arg(dir);
        }
        cmd.arg("--bind").arg(root).arg(root).arg("--chdir").arg(root);
        for path in &self.hidden {
            if path.is_dir() {
                cmd.arg("--tmpfs").arg(path);
            } else if path.exists() {
                cmd.arg("--ro-bind").arg("/dev/null").arg(path);
            }
        }
        if !network {
            cmd.arg("--unshare-net");
        }
        cmd.arg("--clearenv");
        for (k, v) in env {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()));
        Some(cmd)
    }
}

/// Toolchain directories a sandboxed command may read (they are often under the
/// agent's home, which is hidden).
const TOOLCHAIN_HOMES: [&str; 5] = ["RUSTUP_HOME", "CARGO_HOME", "GOROOT", "GOPATH", "JAVA_HOME"];

/// Runs `bwrap <flags> true`; Err carries what went wrong.
fn probe(bwrap: &Path) -> Result<(), String> {
    let out = Command::new(bwrap)
        .args(BASE_ARGS)
        .arg("--unshare-net")
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("{} failed ({}): {}", bwrap.display(), out.status, stderr.trim()))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}
