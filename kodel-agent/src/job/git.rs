//! git as the agent runs it (outside the sandbox, on the agent's own account):
//! credentials go to git through GIT_ASKPASS and the environment of the commands that
//! talk to the remote, never in a URL, a file or an argument; nothing prompts.
//!
//! A module's git directory lives in the agent's private directory, not in the
//! workspace (`clone --separate-git-dir`), and every command names it (`--git-dir`,
//! `--work-tree`): the model, which can write anywhere in the workspace, cannot change
//! the config, hooks, filters or links git reads, so it cannot make the agent run its
//! code or write through a link. Hooks, fsmonitor, credential helpers and signing are
//! off as well.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kodel_core::forge::ForgeKind;
use kodel_core::infra::RepoCredentials;
use kodel_core::protocol::AssignedModule;

/// The longest a git command may take (a clone of a large repository).
const GIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Answers git's username and password prompts from the environment of the one git
/// command that asked. It holds no secret itself.
const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' \"$KODEL_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$KODEL_GIT_PASSWORD\" ;;\nesac\n";

/// Writes the askpass helper into `dir` (private to the agent) and gives its path.
pub fn install_askpass(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("askpass.sh");
    let tmp = dir.join(format!("askpass.{}.tmp", std::process::id()));
    std::fs::write(&tmp, ASKPASS)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// What git needs to reach one module's remote.
#[derive(Clone)]
pub struct Remote {
    pub url: String,
    credentials: Option<(String, String)>,
    askpass: PathBuf,
    /// Whether file:// remotes may be used (`--allow-file-remotes`).
    allow_file: bool,
}

/// A module's checkout: its private git dir and its work tree in the workspace.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub git_dir: PathBuf,
    pub work_tree: PathBuf,
}

impl Remote {
    pub fn new(m: &AssignedModule, askpass: &Path, allow_file: bool) -> Remote {
        let credentials = m.credentials.as_ref().map(|c: &RepoCredentials| {
            let user = c.username.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| {
                match m.forge.as_ref().map(|f| f.kind) {
                    Some(ForgeKind::Gitlab) => "oauth2".into(),
                    _ => "x-access-token".into(),
                }
            });
            (user, c.secret.clone())
        });
        Remote { url: m.url.clone(), credentials, askpass: askpass.to_owned(), allow_file }
    }

    pub fn secret(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(_, s)| s.as_str())
    }

    /// Hides the secret wherever git repeated it (it should not, but a remote's
    /// message might).
    pub fn scrub(&self, text: &str) -> String {
        match self.secret() {
            Some(s) if s.len() >= 4 => text.replace(s, "***"),
            _ => text.to_owned(),
        }
    }
}

/// A git command's combined output, and whether it succeeded.
pub struct GitOutput {
    pub ok: bool,
    pub output: String,
}

/// Runs `git ARGS` in `dir`, on `repo` when given. `remote` is given only to commands
/// that talk to it: they alone see the credentials.
pub async fn git(dir: &Path, repo: Option<&Checkout>, args: &[&str], remote: Option<&Remote>) -> std::io::Result<GitOutput> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["-c", "credential.helper=", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "protocol.ext.allow=never"])
        .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]);
    if remote.is_some_and(|r| !r.allow_file) {
        cmd.args(["-c", "protocol.file.allow=never"]);
    }
    if let Some(r) = repo {
        cmd.arg(format!("--git-dir={}", r.git_dir.display())).arg(format!("--work-tree={}", r.work_tree.display()));
    }
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .env("LC_ALL", "C")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .env_remove("KODEL_GIT_USERNAME")
        .env_remove("KODEL_GIT_PASSWORD")
        .kill_on_drop(true);
    if let Some(Remote { credentials: Some((user, secret)), askpass, .. }) = remote {
        cmd.env("GIT_ASKPASS", askpass).env("KODEL_GIT_USERNAME", user).env("KODEL_GIT_PASSWORD", secret);
    }
    let out = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Ok(out) => out?,
        Err(_) => return Ok(GitOutput { ok: false, output: format!("git {} did not finish within {} minutes", args.first().unwrap_or(&""), GIT_TIMEOUT.as_secs() / 60) }),
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Some(r) = remote {
        text = r.scrub(&text);
    }
    Ok(GitOutput { ok: out.status.success(), output: text })
}

/// `git` for a job: not being able to run git at all fails the job.
pub async fn run(dir: &Path, repo: Option<&Checkout>, args: &[&str], remote: Option<&Remote>) -> Result<GitOutput, crate::runner::Failed> {
    git(dir, repo, args, remote).await.map_err(|e| (format!("cannot run git (is it installed?): {e}"), false))
}

/// The line of git's output that says what went wrong (`! [rejected]`, `fatal:`,
/// `error:`, or the last line), followed by what the remote said (`remote:` lines).
pub fn cause(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let pick = |prefix: &[&str]| lines.iter().find(|l| prefix.iter().any(|p| l.starts_with(p))).map(|l| l.to_string());
    let mut cause = pick(&["! [remote rejected]", "! [rejected]"])
        .or_else(|| pick(&["fatal:"]))
        .or_else(|| pick(&["error:"]))
        .or_else(|| lines.last().map(|l| l.to_string()))
        .unwrap_or_else(|| "git failed without saying why".into());
    let remote: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("remote:")).map(str::trim).filter(|l| !l.is_empty()).take(5).collect();
    if !remote.is_empty() {
        cause.push_str(&format!(" (the remote said: {})", remote.join(" / ")));
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_line_that_names_it() {
        let push = "remote: protected branch\nTo /tmp/x.git\n ! [remote rejected] HEAD -> kodel/A-1 (pre-receive hook declined)\nerror: failed to push some refs to '/tmp/x.git'\n";
        assert_eq!(cause(push), "! [remote rejected] HEAD -> kodel/A-1 (pre-receive hook declined) (the remote said: protected branch)");
        let clone = "Cloning into 'x'...\nfatal: repository '/nope' does not exist\n";
        assert_eq!(cause(clone), "fatal: repository '/nope' does not exist");
        assert_eq!(cause(""), "git failed without saying why");
    }
}
