//! Job workspaces: a fresh directory per job under the agent's work dir, with the
//! project's modules cloned onto the task's branch and the instance template's setup
//! script run; removed when the job succeeds, kept for a while when it fails (for
//! people to look at), and bounded in the disk they take together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kodel_core::protocol::{AssignedModule, Assignment};

use super::git::{self, Remote};
use crate::runner::{Failed, Reporter};
use crate::tools::{self, Workspace};

/// The file that marks a kept workspace, and says since when.
const KEPT_MARK: &str = ".kodel-kept";
/// The agent's own files in the work dir (the askpass helper, saved git configs).
pub const PRIVATE_DIR: &str = ".kodel-agent";

/// Where workspaces live and how long and how much of them is kept.
pub struct Workspaces {
    root: PathBuf,
    /// How long a failed job's workspace is kept.
    pub keep_failed: Duration,
    /// The most disk all workspaces may take; kept ones go, oldest first, to stay under.
    pub max_disk: u64,
    /// Keep every workspace, also of jobs that succeeded (to debug the agent).
    pub keep_all: bool,
    disk: Arc<AtomicU64>,
}

/// A module checked out in a job's workspace.
pub struct Repo {
    pub module: AssignedModule,
    pub dir: PathBuf,
    pub remote: Remote,
    /// Whether the task's branch was on the remote already (made by an earlier job).
    pub had_branch: bool,
    /// The module's .git/config as cloned, put back before the agent runs git again.
    saved_config: PathBuf,
}

pub struct Prepared {
    pub ws: Workspace,
    pub repos: Vec<Repo>,
}

impl Workspaces {
    pub fn new(root: &Path, keep_failed: Duration, max_disk: u64, keep_all: bool) -> Workspaces {
        Workspaces { root: root.to_owned(), keep_failed, max_disk, keep_all, disk: Arc::new(AtomicU64::new(0)) }
    }

    /// Bytes the workspaces took when last measured.
    pub fn disk(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    pub fn private(&self) -> PathBuf {
        self.root.join(PRIVATE_DIR)
    }

    /// `<work dir>/<TASK-KEY>-<kind>-<job id prefix>`: one per job, found by its task.
    pub fn dir_for(&self, a: &Assignment) -> PathBuf {
        let id = a.job.id.simple().to_string();
        let key: String = a.task.key.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let kind: String = a.job.kind.chars().filter(char::is_ascii_alphanumeric).collect();
        self.root.join(format!("{key}-{kind}-{}", &id[id.len() - 8..]))
    }

    /// After a job: its workspace goes (success) or is kept (failure); then kept ones
    /// past their time or over the disk bound go, and the disk is measured again.
    pub async fn finish(&self, dir: &Path, succeeded: bool) {
        if succeeded && !self.keep_all {
            remove(dir).await;
        } else if dir.exists() {
            let _ = std::fs::write(dir.join(KEPT_MARK), "kept by kodel-agent for inspection\n");
            if !succeeded {
                tracing::info!(workspace = %dir.display(), hours = self.keep_failed.as_secs() / 3600, "the failed job's workspace is kept");
            }
        }
        self.prune().await;
    }

    /// Removes kept workspaces that are too old, then the oldest while over the bound.
    /// Only called between jobs: nothing here is in use.
    pub async fn prune(&self) {
        let root = self.root.clone();
        let (keep_failed, max_disk) = (self.keep_failed, self.max_disk);
        let total = tokio::task::spawn_blocking(move || {
            let mut kept: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
            let Ok(entries) = std::fs::read_dir(&root) else { return 0 };
            for e in entries.flatten() {
                let path = e.path();
                if !is_workspace(&e.file_name().to_string_lossy()) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let since = std::fs::metadata(path.join(KEPT_MARK)).or_else(|_| std::fs::metadata(&path)).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                if since.elapsed().unwrap_or_default() > keep_failed {
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
                kept.push((since, path.clone(), du(&path)));
            }
            kept.sort();
            let mut total: u64 = kept.iter().map(|k| k.2).sum();
            for (_, path, size) in kept {
                if total <= max_disk {
                    break;
                }
                tracing::info!(workspace = %path.display(), "removing a kept workspace: the workspaces are over the disk bound");
                let _ = std::fs::remove_dir_all(&path);
                total -= size;
            }
            total
        })
        .await
        .unwrap_or(0);
        self.disk.store(total, Ordering::Relaxed);
    }

    /// Measures the disk the workspaces take now (during a job too).
    pub async fn measure(&self) {
        let root = self.root.clone();
        let total = tokio::task::spawn_blocking(move || du(&root)).await.unwrap_or(0);
        self.disk.store(total, Ordering::Relaxed);
    }
}

/// A job workspace's name ends with `-` and 8 hex digits (`dir_for`); anything else in
/// the work dir is left alone.
fn is_workspace(name: &str) -> bool {
    name.len() > 9 && name.as_bytes()[name.len() - 9] == b'-' && name[name.len() - 8..].bytes().all(|b| b.is_ascii_hexdigit())
}

async fn remove(dir: &Path) {
    let dir = dir.to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// Disk blocks under `path` (files are not followed through symlinks).
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            total += du(&e.path());
        }
    }
    total
}

/// What a job kind needs of the task's branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// Check it out, making it from the default branch if it is not there yet.
    Make,
    /// Check it out where it is; it must be on at least one module.
    Existing,
}

/// Makes the job's workspace: clones each module (into the workspace itself when there
/// is one, else into a directory per module), checks out the task's branch, runs the
/// setup script. Every git command and the script are steps of the job.
pub async fn prepare(a: &Assignment, dir: &Path, workspaces: &Workspaces, ws: Workspace, branch: Branch, rep: &mut Reporter) -> Result<Prepared, Failed> {
    let askpass = git::install_askpass(&workspaces.private()).map_err(|e| (format!("cannot write the git helper in {}: {e}", workspaces.private().display()), false))?;
    let saved = workspaces.private().join(a.job.id.to_string());
    std::fs::create_dir_all(&saved).map_err(|e| (format!("cannot create {}: {e}", saved.display()), false))?;
    let mut repos = Vec::new();
    for m in &a.modules {
        let target = if a.modules.len() == 1 { dir.to_owned() } else { dir.join(&m.name) };
        let remote = Remote::new(m, &askpass);
        let started = Instant::now();
        let target_arg = target.to_string_lossy().into_owned();
        let out = git::git(dir, &["clone", "--no-recurse-submodules", "--", &m.url, &target_arg], Some(&remote))
            .await
            .map_err(|e| (format!("cannot run git (is it installed?): {e}"), false))?;
        rep.action("git", &format!("git clone {} {}", m.url, m.name), &out.output, !out.ok, started);
        if !out.ok {
            // A remote that cannot be reached may come back; one that is not there will not.
            let cause = git::cause(&out.output);
            let missing = ["not found", "does not exist", "does not appear to be a git repository", "Authentication failed", "could not read Username"].iter().any(|m| cause.contains(m));
            return Err((format!("cannot clone module {:?} from {}: {cause}", m.name, m.url), !missing));
        }
        let had_branch = git::git(&target, &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/origin/{}", a.branch)], None).await.is_ok_and(|o| o.ok);
        let start_point = if had_branch {
            format!("origin/{}", a.branch)
        } else if branch == Branch::Make {
            let base = format!("origin/{}", m.default_branch);
            let exists = git::git(&target, &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/{base}")], None).await.is_ok_and(|o| o.ok);
            if !exists {
                return Err((format!("module {:?} has no branch {:?} (its default branch) at {}", m.name, m.default_branch, m.url), false));
            }
            base
        } else {
            // Review and QA look at the modules the task changed; the others stay on
            // their default branch.
            repos.push(Repo { module: m.clone(), dir: target, remote, had_branch, saved_config: saved.join(format!("{}.config", m.name)) });
            continue;
        };
        let started = Instant::now();
        let out = git::git(&target, &["checkout", "-B", &a.branch, &start_point], None).await.map_err(|e| (format!("cannot run git: {e}"), false))?;
        rep.action("git", &format!("git checkout -B {} {start_point}", a.branch), &out.output, !out.ok, started);
        if !out.ok {
            return Err((format!("cannot check out {} in module {:?}: {}", a.branch, m.name, git::cause(&out.output)), false));
        }
        let saved_config = saved.join(format!("{}.config", m.name));
        std::fs::copy(target.join(".git/config"), &saved_config).map_err(|e| (format!("cannot keep module {:?}'s git config: {e}", m.name), false))?;
        repos.push(Repo { module: m.clone(), dir: target, remote, had_branch, saved_config });
    }
    if branch == Branch::Existing && !a.modules.is_empty() && !repos.iter().any(|r| r.had_branch) {
        return Err((format!("the task's branch {} is on no module's remote: there is nothing to look at yet (an implement job pushes it)", a.branch), false));
    }
    let ws = Workspace::new(dir, ws.sandbox().clone()).map(|w| w.with_network(ws.network()).with_env(ws.env().clone())).map_err(|e| (format!("cannot open the workspace {}: {e}", dir.display()), false))?;
    if let Some(script) = a.instance_template.as_ref().map(|t| t.setup_script.trim()).filter(|s| !s.is_empty()) {
        setup(a, &ws, script, rep).await?;
    }
    workspaces.measure().await;
    Ok(Prepared { ws, repos })
}

/// Runs the instance template's setup script (with the network: it is the admins'
/// script, not the model's), its output streamed as a step.
async fn setup(a: &Assignment, ws: &Workspace, script: &str, rep: &mut Reporter) -> Result<(), Failed> {
    let started = Instant::now();
    let live = rep.live();
    let limit = Duration::from_secs(a.template.time_limit_secs.max(1) as u64);
    let out = tools::bash::execute(&ws.clone().with_network(true), script, limit, Some(&live.tx)).await;
    live.done().await;
    let out = out.map_err(|e| (format!("cannot run the setup script: {e}"), false))?;
    rep.action("setup", "the instance template's setup script", &out.output, out.error, started);
    if out.error {
        let tail = tail(&out.output, 2000);
        return Err((format!("the setup script failed:\n{tail}"), false));
    }
    Ok(())
}

/// The last `max` bytes of a text, from a line start where it can.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    match cut.find('\n') {
        Some(i) if i + 1 < cut.len() => &cut[i + 1..],
        _ => cut,
    }
}

impl Repo {
    /// Before the agent runs git in a workspace the model has worked in: `.git` must be
    /// the directory the clone made, and its config the one the clone wrote (a config
    /// the model changed could name hooks, filters or helpers git would run).
    pub fn restore_config(&self) -> Result<(), Failed> {
        let git_dir = self.dir.join(".git");
        let meta = std::fs::symlink_metadata(&git_dir).map_err(|e| (format!("module {:?}: .git is gone: {e}", self.module.name), false))?;
        if !meta.is_dir() {
            return Err((format!("module {:?}: .git was replaced during the job; the change cannot be committed safely", self.module.name), false));
        }
        let config = git_dir.join("config");
        let _ = std::fs::remove_file(&config);
        std::fs::copy(&self.saved_config, &config).map_err(|e| (format!("module {:?}: cannot restore .git/config: {e}", self.module.name), false))?;
        Ok(())
    }
}

/// Forgets the job's saved git configs.
pub fn forget(workspaces: &Workspaces, a: &Assignment) {
    let _ = std::fs::remove_dir_all(workspaces.private().join(a.job.id.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(root: &Path, name: &str, bytes: usize, age: Duration) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), vec![7u8; bytes]).unwrap();
        let mark = std::fs::File::create(dir.join(KEPT_MARK)).unwrap();
        mark.set_modified(SystemTime::now() - age).unwrap();
        dir
    }

    #[tokio::test]
    async fn kept_workspaces_go_when_too_old_or_over_the_disk_bound() {
        let root = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let expired = kept(root.path(), "KOD-1-implement-0000000a", 1000, 30 * hour);
        let oldest = kept(root.path(), "KOD-2-implement-0000000b", 300_000, 3 * hour);
        let newer = kept(root.path(), "KOD-3-qa-0000000c", 300_000, hour);
        let other = root.path().join("notes");
        std::fs::create_dir_all(&other).unwrap();
        // Room for one of the two: the oldest goes.
        let w = Workspaces::new(root.path(), 24 * hour, 500_000, false);
        w.prune().await;
        assert!(!expired.exists(), "past keep_failed");
        assert!(!oldest.exists(), "the oldest goes first when over the bound");
        assert!(newer.exists());
        assert!(other.exists(), "what is not a workspace is left alone");
        assert!(w.disk() >= 300_000 && w.disk() < 500_000, "{}", w.disk());
        // A succeeded job's workspace is removed; a failed one is marked and kept.
        let dir = root.path().join("KOD-4-implement-0000000d");
        std::fs::create_dir_all(&dir).unwrap();
        w.finish(&dir, true).await;
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        w.finish(&dir, false).await;
        assert!(dir.join(KEPT_MARK).exists());
    }

    #[test]
    fn tails_start_at_a_line() {
        assert_eq!(tail("one\ntwo\nthree\n", 9), "three\n");
        assert_eq!(tail("short", 100), "short");
    }
}
