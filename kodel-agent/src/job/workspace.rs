//! Job workspaces: a fresh directory per job attempt under the agent's work dir, with
//! the project's modules cloned onto the task's branch and the instance template's
//! setup script run; removed when the job succeeds, kept for a while when it fails (for
//! people to look at), and bounded in the disk they take together.
//!
//! The agent's own files live in `<work dir>/.kodel-agent/`, out of the model's reach
//! (the sandbox hides them): the askpass helper, the modules' git dirs (`git/<ws>/`),
//! and a record of each workspace (`ws/<ws>`: running or kept, and since when), so only
//! directories the agent made are ever removed. A lock keeps a second agent off the
//! same work dir.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kodel_core::protocol::{AssignedModule, Assignment};

use super::git::{self, Checkout, Remote};
use crate::runner::{Failed, Reporter};
use crate::tools::{self, Workspace};

/// The agent's own files in the work dir.
pub const PRIVATE_DIR: &str = ".kodel-agent";
/// HOME for the job's commands, inside the workspace (and never committed).
pub const HOME_DIR: &str = ".kodel-home";

/// Where workspaces live and how long and how much of them is kept.
pub struct Workspaces {
    root: PathBuf,
    /// How long a failed job's workspace is kept.
    pub keep_failed: Duration,
    /// The most disk all workspaces may take; kept ones go, oldest first, to stay under.
    pub max_disk: u64,
    /// Keep every workspace, also of jobs that succeeded (to debug the agent).
    pub keep_all: bool,
    /// Whether modules may be cloned from file:// URLs (repositories on this host).
    pub allow_file_remotes: bool,
    disk: Arc<AtomicU64>,
    /// Workspaces of jobs running now: never pruned.
    active: Mutex<HashSet<String>>,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// A module checked out in a job's workspace.
pub struct Repo {
    pub module: AssignedModule,
    pub checkout: Checkout,
    pub remote: Remote,
    /// Whether the task's branch was on the remote already (made by an earlier job).
    pub had_branch: bool,
}

pub struct Prepared {
    pub ws: Workspace,
    pub repos: Vec<Repo>,
}

/// A module name fit to be a directory: letters, digits, '.', '_' and '-', not
/// starting with a dot.
pub fn valid_module_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 100 && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl Workspaces {
    /// Takes the work dir for this agent (Err if another agent holds it).
    pub fn open(root: &Path, keep_failed: Duration, max_disk: u64, keep_all: bool, allow_file_remotes: bool) -> Result<Workspaces, String> {
        let private = root.join(PRIVATE_DIR);
        for d in [private.join("ws"), private.join("git")] {
            std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(private.join("lock")).map_err(|e| format!("cannot open {}: {e}", private.join("lock").display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| format!("another kodel-agent is using the work dir {}; give this one its own --workdir", root.display()))?;
        Ok(Workspaces { _lock: Some(lock), ..Workspaces::unlocked(root, keep_failed, max_disk, keep_all, allow_file_remotes) })
    }

    fn unlocked(root: &Path, keep_failed: Duration, max_disk: u64, keep_all: bool, allow_file_remotes: bool) -> Workspaces {
        Workspaces {
            root: root.to_owned(),
            keep_failed,
            max_disk,
            keep_all,
            allow_file_remotes,
            disk: Arc::new(AtomicU64::new(0)),
            active: Mutex::new(HashSet::new()),
            _lock: None,
        }
    }

    /// Bytes the workspaces took when last measured.
    pub fn disk(&self) -> u64 {
        self.disk.load(Ordering::Relaxed)
    }

    pub fn private(&self) -> PathBuf {
        self.root.join(PRIVATE_DIR)
    }

    /// `<work dir>/<TASK-KEY>-<kind>-<job id prefix>-<attempt>`: one per job attempt,
    /// found by its task.
    pub fn dir_for(&self, a: &Assignment) -> PathBuf {
        let id = a.job.id.simple().to_string();
        let key: String = a.task.key.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        self.root.join(format!("{key}-{}-{}-{}", a.job.kind, &id[id.len() - 8..], a.job.attempt.max(0)))
    }

    fn record(&self, name: &str) -> PathBuf {
        self.private().join("ws").join(name)
    }

    fn git_dirs(&self, name: &str) -> PathBuf {
        self.private().join("git").join(name)
    }

    /// A new workspace for a job: recorded as running before anything is written.
    pub fn begin(&self, dir: &Path) -> Result<(), String> {
        let name = file_name(dir);
        self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        std::fs::write(self.record(&name), "running\n").map_err(|e| format!("cannot record the workspace: {e}"))?;
        remove_all(dir, &self.git_dirs(&name));
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the workspace {}: {e}", dir.display()))
    }

    /// After a job: its workspace goes (success) or is kept (failure); then kept ones
    /// past their time or over the disk bound go, and the disk is measured again.
    pub async fn finish(&self, dir: &Path, succeeded: bool) {
        let name = file_name(dir);
        if succeeded && !self.keep_all {
            let (dir, git, record) = (dir.to_owned(), self.git_dirs(&name), self.record(&name));
            let _ = tokio::task::spawn_blocking(move || {
                remove_all(&dir, &git);
                let _ = std::fs::remove_file(record);
            })
            .await;
        } else {
            let _ = std::fs::write(self.record(&name), "kept\n");
            if !succeeded {
                tracing::info!(workspace = %dir.display(), hours = self.keep_failed.as_secs() / 3600, "the failed job's workspace is kept");
            }
        }
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        self.prune().await;
    }

    /// Removes kept workspaces that are too old, then the oldest while over the bound.
    /// A workspace recorded as running by no job here (the agent was stopped, the job
    /// cancelled) counts as kept since its record was last written.
    pub async fn prune(&self) {
        let root = self.root.clone();
        let private = self.private();
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (keep_failed, max_disk) = (self.keep_failed, self.max_disk);
        let total = tokio::task::spawn_blocking(move || {
            let mut kept: Vec<(SystemTime, String, u64)> = Vec::new();
            let Ok(records) = std::fs::read_dir(private.join("ws")) else { return 0 };
            for e in records.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if active.contains(&name) {
                    continue;
                }
                let (dir, git) = (root.join(&name), private.join("git").join(&name));
                let since = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                if since.elapsed().unwrap_or_default() > keep_failed || !dir.exists() {
                    remove_all(&dir, &git);
                    let _ = std::fs::remove_file(e.path());
                    continue;
                }
                kept.push((since, name, du(&dir) + du(&git)));
            }
            kept.sort();
            let mut total: u64 = kept.iter().map(|k| k.2).sum();
            for (_, name, size) in kept {
                if total <= max_disk {
                    break;
                }
                tracing::info!(workspace = %name, "removing a kept workspace: the workspaces are over the disk bound");
                remove_all(&root.join(&name), &private.join("git").join(&name));
                let _ = std::fs::remove_file(private.join("ws").join(&name));
                total -= size;
            }
            du(&root)
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

fn file_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn remove_all(dir: &Path, git: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(git);
}

/// Disk blocks under `path` (links are not followed).
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

/// Whether a failed clone or push may work when tried again (the network, a server
/// error), as opposed to a wrong URL, a refused login or a missing repository.
pub fn transient(cause: &str) -> bool {
    let c = cause.to_lowercase();
    let permanent = ["not found", "does not exist", "does not appear to be a git repository", "authentication failed", "could not read username", "permission denied", "host key verification failed", "not allowed", "rejected", "denied"];
    !permanent.iter().any(|p| c.contains(p))
}

/// Makes the job's workspace: clones each module (into the workspace itself when there
/// is one, else into a directory per module), checks out the task's branch, runs the
/// setup script (`setup`: not for a job in a container, whose image ran it). The
/// clones, checkouts and the script are steps of the job.
pub async fn prepare(a: &Assignment, dir: &Path, workspaces: &Workspaces, ws: Workspace, branch: Branch, setup_here: bool, rep: &mut Reporter) -> Result<Prepared, Failed> {
    let askpass = git::install_askpass(&workspaces.private()).map_err(|e| (format!("cannot write the git helper in {}: {e}", workspaces.private().display()), false))?;
    let git_dirs = workspaces.git_dirs(&file_name(dir));
    std::fs::create_dir_all(&git_dirs).map_err(|e| (format!("cannot create {}: {e}", git_dirs.display()), false))?;
    let mut repos = Vec::new();
    for m in &a.modules {
        if !valid_module_name(&m.name) {
            return Err((format!("module name {:?} cannot be a directory name; rename the module (letters, digits, '.', '_', '-')", m.name), false));
        }
        let work_tree = if a.modules.len() == 1 { dir.to_owned() } else { dir.join(&m.name) };
        let checkout = Checkout { git_dir: git_dirs.join(format!("{}.git", m.name)), work_tree };
        let remote = Remote::new(m, &askpass, workspaces.allow_file_remotes);
        let started = Instant::now();
        let sep = format!("--separate-git-dir={}", checkout.git_dir.display());
        let target = checkout.work_tree.to_string_lossy().into_owned();
        let out = git::run(dir, None, &["clone", "--no-recurse-submodules", &sep, "--", &m.url, &target], Some(&remote)).await?;
        rep.action("git", &format!("git clone {} {}", m.url, m.name), &out.output, !out.ok, started);
        if !out.ok {
            let cause = git::cause(&out.output);
            let hint = if cause.contains("transport 'file' not allowed") { " (file:// remotes are off for this agent: start it with --allow-file-remotes)" } else { "" };
            return Err((format!("cannot clone module {:?} from {}: {cause}{hint}", m.name, m.url), transient(&cause)));
        }
        // The commands' HOME is in the workspace; it is never part of the change.
        let exclude = checkout.git_dir.join("info");
        let _ = std::fs::create_dir_all(&exclude);
        let _ = std::fs::write(exclude.join("exclude"), format!("/{HOME_DIR}/\n"));
        let ok = |o: &git::GitOutput| o.ok;
        let had_branch = git::run(dir, Some(&checkout), &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/origin/{}", a.branch)], None).await.is_ok_and(|o| ok(&o));
        let base = format!("origin/{}", m.default_branch);
        let has_base = git::run(dir, Some(&checkout), &["rev-parse", "--verify", "--quiet", &format!("refs/remotes/{base}")], None).await.is_ok_and(|o| ok(&o));
        let (local, start_point) = if had_branch {
            (a.branch.clone(), format!("origin/{}", a.branch))
        } else if branch == Branch::Make {
            if !has_base {
                return Err((format!("module {:?} has no branch {:?} (its default branch) at {}", m.name, m.default_branch, m.url), false));
            }
            (a.branch.clone(), base)
        } else {
            // Review and QA look at the modules the task changed; the others are on
            // their default branch.
            (m.default_branch.clone(), base)
        };
        let started = Instant::now();
        let out = git::run(dir, Some(&checkout), &["checkout", "-B", &local, &start_point], None).await?;
        rep.action("git", &format!("git checkout -B {local} {start_point}"), &out.output, !out.ok, started);
        if !out.ok && (had_branch || branch == Branch::Make) {
            return Err((format!("cannot check out {} in module {:?}: {}", a.branch, m.name, git::cause(&out.output)), false));
        }
        repos.push(Repo { module: m.clone(), checkout, remote, had_branch });
    }
    if branch == Branch::Existing && !a.modules.is_empty() && !repos.iter().any(|r| r.had_branch) {
        return Err((format!("the task's branch {} is on no module's remote: there is nothing to look at yet (an implement job pushes it)", a.branch), false));
    }
    std::fs::create_dir_all(dir.join(HOME_DIR)).map_err(|e| (format!("cannot create {}: {e}", dir.join(HOME_DIR).display()), false))?;
    let read_only = repos.iter().map(|r| r.checkout.git_dir.clone()).collect();
    let ws = ws.with_home(dir.join(HOME_DIR)).with_read_only(read_only);
    if let Some(script) = a.instance_template.as_ref().map(|t| t.setup_script.trim()).filter(|s| !s.is_empty() && setup_here) {
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
    /// git on this module's checkout; `remote`: the command talks to the remote (and
    /// only then gets the credentials).
    pub async fn git(&self, args: &[&str], remote: bool) -> Result<git::GitOutput, Failed> {
        git::run(&self.checkout.work_tree, Some(&self.checkout), args, remote.then_some(&self.remote)).await
    }

    /// Before the agent runs git on a work tree the model has worked in: it must still
    /// be the directory the clone made, not a link to somewhere else on the host.
    pub fn check_work_tree(&self, dir: &Path) -> Result<(), Failed> {
        let wt = &self.checkout.work_tree;
        let real = std::fs::symlink_metadata(wt).map(|m| m.is_dir()).unwrap_or(false);
        let inside = wt.canonicalize().ok().zip(dir.canonicalize().ok()).is_some_and(|(w, d)| w.starts_with(&d));
        if !real || !inside {
            return Err((format!("module {:?}: its directory was replaced during the job; the change cannot be committed safely", self.module.name), false));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace recorded as kept `age` ago, holding `bytes`.
    fn kept(w: &Workspaces, name: &str, bytes: usize, age: Duration) -> PathBuf {
        let dir = w.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), vec![7u8; bytes]).unwrap();
        let record = std::fs::File::create(w.record(name)).unwrap();
        record.set_modified(SystemTime::now() - age).unwrap();
        dir
    }

    #[tokio::test]
    async fn kept_workspaces_go_when_too_old_or_over_the_disk_bound() {
        let root = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let w = Workspaces::open(root.path(), 24 * hour, 500_000, false, false).unwrap();
        let expired = kept(&w, "KOD-1-implement-0000000a-1", 1000, 30 * hour);
        let oldest = kept(&w, "KOD-2-implement-0000000b-1", 300_000, 3 * hour);
        let newer = kept(&w, "KOD-3-qa-0000000c-1", 300_000, hour);
        // Not made by the agent: never touched, whatever its name or age.
        let other = root.path().join("backup-20240101");
        std::fs::create_dir_all(&other).unwrap();
        w.prune().await;
        assert!(!expired.exists(), "past keep_failed");
        assert!(!oldest.exists(), "the oldest goes first when over the bound");
        assert!(newer.exists());
        assert!(other.exists(), "what the agent did not make is left alone");
        // A succeeded job's workspace is removed; a failed one is kept.
        let dir = root.path().join("KOD-4-implement-0000000d-1");
        w.begin(&dir).unwrap();
        w.finish(&dir, true).await;
        assert!(!dir.exists() && !w.record("KOD-4-implement-0000000d-1").exists());
        w.begin(&dir).unwrap();
        w.finish(&dir, false).await;
        assert!(dir.exists());
        assert_eq!(std::fs::read_to_string(w.record("KOD-4-implement-0000000d-1")).unwrap(), "kept\n");
        assert!(w.disk() >= 300_000, "{}", w.disk());
    }

    #[test]
    fn one_agent_per_work_dir() {
        let root = tempfile::tempdir().unwrap();
        let _first = Workspaces::open(root.path(), Duration::ZERO, 1, false, false).unwrap();
        let second = Workspaces::open(root.path(), Duration::ZERO, 1, false, false).err().unwrap();
        assert!(second.contains("another kodel-agent"), "{second}");
    }

    #[test]
    fn module_names_are_single_path_components() {
        for ok in ["api", "web-app", "lib_2", "a.b"] {
            assert!(valid_module_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "/etc", "a/b", ".hidden", "x y"] {
            assert!(!valid_module_name(bad), "{bad}");
        }
    }

    #[test]
    fn tails_start_at_a_line() {
        assert_eq!(tail("one\ntwo\nthree\n", 9), "three\n");
        assert_eq!(tail("short", 100), "short");
    }
}
