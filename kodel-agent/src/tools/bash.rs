//! bash: runs `bash -c COMMAND` in the workspace root, under the sandbox when there is
//! one, with a clean environment (no secrets), a timeout that kills every process the
//! command started, and its output (stdout and stderr through one pipe, so in the order
//! written) streamed live and capped head + tail for the model.

use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kodel_core::protocol::SECRET_ENV;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc::UnboundedSender;

use super::{ToolOutput, Workspace};

const DEFAULT_TIMEOUT_SECS: u64 = 120;
const MAX_TIMEOUT_SECS: u64 = 600;
/// What the model sees of the output: head and tail, the middle cut.
const MAX_OUTPUT_BYTES: usize = 30 * 1024;
/// What people watching live see, at most, of one command's output.
const MAX_LIVE_BYTES: usize = 1024 * 1024;
/// How long to wait for the pipe to drain once the command has ended.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const DESCRIPTION: &str = "Run a shell command with `bash -c` in the workspace root and get its combined \
stdout and stderr (long output keeps its beginning and end) and exit code. Each call is a fresh shell: `cd` and \
variables do not carry over, and processes left in the background are killed when the command ends. Default \
timeout 120 s, at most 600. Commands may be sandboxed: only the workspace (and a private /tmp) is writable and the \
network may be off. Prefer read_file, edit_file, glob and grep for reading, editing and searching files.";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command, run with bash -c"},
            "timeout_secs": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_SECS,
                             "description": "Seconds before the command is killed (default 120, max 600)"}
        },
        "required": ["command"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    command: String,
    timeout_secs: Option<u64>,
}

pub async fn run(ws: &Workspace, input: Input, live: Option<&UnboundedSender<String>>) -> ToolOutput {
    if ws.container.is_none()
        && let Err(e) = ws.sandbox.ready()
    {
        return ToolOutput::err(e);
    }
    if input.command.trim().is_empty() {
        return ToolOutput::err("command is empty".into());
    }
    let timeout = input.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS).clamp(1, MAX_TIMEOUT_SECS);
    match execute(ws, &input.command, Duration::from_secs(timeout), live).await {
        Ok(out) => out,
        Err(e) => ToolOutput::err(format!("could not run the command: {e}")),
    }
}

/// The environment a command gets: nothing of the agent's own apart from PATH.
fn environment(ws: &Workspace) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
    let home = ws.home.as_ref().unwrap_or(&ws.root).to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("HOME".into(), home),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
    ];
    for (k, v) in &ws.env {
        if SECRET_ENV.contains(&k.as_str()) {
            continue;
        }
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// How a command ended.
enum Ended {
    TimedOut,
    Code(i64),
    Signal(i32),
    Unknown,
}

/// Runs `command` like the tool does (in the job's container, or under the sandbox;
/// clean environment; what it started killed at the end or the timeout); the output
/// ends with its exit code, and `error` says whether it failed.
pub async fn execute(
    ws: &Workspace,
    command: &str,
    timeout: Duration,
    live: Option<&UnboundedSender<String>>,
) -> std::io::Result<ToolOutput> {
    let Some(container) = &ws.container else { return execute_on_host(ws, command, timeout, live).await };
    // The image's PATH, not the host's.
    let env: Vec<(String, String)> = environment(ws).into_iter().filter(|(k, _)| k != "PATH").collect();
    let mut out = Collector::new(live);
    let ended = container.bash(command, &env, timeout, &mut |bytes| out.push(bytes)).await?;
    let ended = match ended {
        None => Ended::TimedOut,
        Some(code) => Ended::Code(code),
    };
    let mut result = finish(out, ended, timeout);
    if let Some(why) = container.failure() {
        result.output.push_str(&format!("\n{why}"));
        result.error = true;
    }
    Ok(result)
}

async fn execute_on_host(ws: &Workspace, command: &str, timeout: Duration, live: Option<&UnboundedSender<String>>) -> std::io::Result<ToolOutput> {
    let (reader, writer) = std::io::pipe()?;
    let env = environment(ws);
    let mut cmd = match ws.sandbox.bwrap_command(&ws.root, ws.network, &env, &ws.read_only) {
        Some(mut bwrap) => {
            bwrap.arg("bash");
            bwrap
        }
        None => {
            let mut bash = std::process::Command::new("bash");
            bash.env_clear().envs(env);
            bash
        }
    };
    cmd.arg("-c").arg(command);
    if let Some(cgroup) = &ws.cgroup {
        cmd = cgroup.wrap(&cmd);
    }
    cmd.current_dir(&ws.root)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        // Its own process group, so a timeout can kill everything it started.
        .process_group(0);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // Our copies of the pipe's write end go with the command, so EOF can come.
    drop(cmd);
    let pid = child.id();
    let _group = pid.map(KillGroup);
    let mut pipe = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

    let mut out = Collector::new(live);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut eof = false;
    let status: Option<ExitStatus> = loop {
        tokio::select! {
            read = pipe.read(&mut buf), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => out.push(&buf[..n]),
            },
            status = child.wait() => break Some(status?),
            () = &mut deadline => break None,
        }
    };
    // Whatever the command left running (or all of it, on timeout) goes now.
    if let Some(pid) = pid {
        kill_group(pid);
    }
    let status = match status {
        Some(status) => Some(status),
        None => {
            child.wait().await?;
            None
        }
    };
    if !eof {
        let drain = async {
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.push(&buf[..n]);
            }
        };
        let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    }

    let ended = match status {
        None => Ended::TimedOut,
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(i64::from(code)),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => Ended::Unknown,
        },
    };
    Ok(finish(out, ended, timeout))
}

/// The output as the model sees it, ending with how the command ended.
fn finish(out: Collector<'_>, ended: Ended, timeout: Duration) -> ToolOutput {
    let mut text = out.finish();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    match ended {
        Ended::TimedOut => {
            text.push_str(&format!(
                "command timed out after {} s and was killed, with every process it started; give a larger \
                 timeout_secs (at most {MAX_TIMEOUT_SECS}) or split the work into shorter commands",
                timeout.as_secs()
            ));
            ToolOutput::err(text)
        }
        Ended::Code(code) => {
            text.push_str(&format!("exit code: {code}"));
            ToolOutput { output: text, error: code != 0 }
        }
        Ended::Signal(sig) => {
            text.push_str(&format!("killed by signal {sig}"));
            ToolOutput::err(text)
        }
        Ended::Unknown => {
            text.push_str("exit status unknown");
            ToolOutput::err(text)
        }
    }
}

/// Kills a process group (the command and everything it started) when dropped, so a
/// cancelled tool call leaves nothing behind either.
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Keeps the first and last MAX_OUTPUT_BYTES / 2 of the output (memory stays bounded
/// however much a command prints) and forwards it live, whole UTF-8 characters only.
struct Collector<'a> {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: usize,
    live: Option<&'a UnboundedSender<String>>,
    live_sent: usize,
    /// The bytes of a UTF-8 character split between two reads.
    partial: Vec<u8>,
}

impl<'a> Collector<'a> {
    fn new(live: Option<&'a UnboundedSender<String>>) -> Self {
        Collector { head: Vec::new(), tail: Vec::new(), total: 0, live, live_sent: 0, partial: Vec::new() }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let half = MAX_OUTPUT_BYTES / 2;
        let to_head = bytes.len().min(half - self.head.len());
        self.head.extend_from_slice(&bytes[..to_head]);
        self.tail.extend_from_slice(&bytes[to_head..]);
        if self.tail.len() > half {
            self.tail.drain(..self.tail.len() - half);
        }
        self.send_live(bytes);
    }

    fn send_live(&mut self, bytes: &[u8]) {
        let Some(live) = self.live else { return };
        if self.live_sent >= MAX_LIVE_BYTES {
            return;
        }
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(_) => self.partial.len(),
            // An incomplete character at the end waits for the next read.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.partial.len(),
        };
        let chunk: Vec<u8> = self.partial.drain(..valid).collect();
        if chunk.is_empty() {
            return;
        }
        self.live_sent += chunk.len();
        let mut text = String::from_utf8_lossy(&chunk).into_owned();
        if self.live_sent >= MAX_LIVE_BYTES {
            text.push_str("\n[live output stops here; the command goes on]\n");
        }
        let _ = live.send(text);
    }

    /// The output as the model sees it.
    fn finish(self) -> String {
        if self.total == self.head.len() + self.tail.len() {
            let mut all = self.head;
            all.extend_from_slice(&self.tail);
            return String::from_utf8_lossy(&all).into_owned();
        }
        let cut = self.total - self.head.len() - self.tail.len();
        let head = trim_partial_end(&self.head);
        let tail = trim_partial_start(&self.tail);
        format!("{}\n[... {cut} bytes cut ...]\n{}", String::from_utf8_lossy(head), String::from_utf8_lossy(tail))
    }
}

/// Drops an incomplete UTF-8 character at the end of a cut.
fn trim_partial_end(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    }
}

/// Drops continuation bytes at the start of a cut.
fn trim_partial_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take(3).take_while(|b| (**b & 0xC0) == 0x80).count();
    &bytes[skip..]
}
