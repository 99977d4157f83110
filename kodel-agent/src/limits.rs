//! A job's resource limits (an instance template's `memory_mb`, `cpu_limit` and
//! `max_processes`), applied with cgroups to every command the job runs (the model's
//! bash, the setup script, the test command), with or without bubblewrap. A job's
//! processes all die with it, double-forked ones too.
//!
//! The agent needs a cgroup it may manage to make one per job. Started as root, before
//! it becomes `--user`, it makes `kodel-agent-<user>` (cgroup v2: at the top of the
//! hierarchy, with itself moved into its `agent/` leaf; v1: beside itself in the
//! memory, cpu and pids hierarchies) and gives it to the user. Otherwise it uses its
//! own cgroup when that was delegated to it (systemd `Delegate=yes`). Limits hold only
//! under bubblewrap, where `/sys` is read-only: without it the job's commands, running
//! as the agent's user, could raise them. An agent that cannot apply a template's
//! limits refuses its jobs and says why (retryable, so an agent that can may take
//! them): a limit is never silently left unapplied.

use std::path::{Path, PathBuf};
use std::process::Command;

use kodel_core::infra::InstanceTemplate;
use nix::unistd::{Gid, Uid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Pids,
}

const CONTROLLERS: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// The cgroups the agent makes its jobs' cgroups in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// cgroup v2: one directory for every controller.
    v2: bool,
    /// Per controller it can use, the agent's directory (v2: the same one).
    dirs: Vec<(Controller, PathBuf)>,
    /// The controllers it cannot use, and why.
    missing: Vec<(Controller, String)>,
}

/// Where limits can be applied, or why not.
pub type Setup = Result<Cgroups, String>;

impl Cgroups {
    /// Makes the agent's cgroups and, when `owner` is given (started as root), gives
    /// them to that user. Err says why limits cannot be applied.
    pub fn setup(owner: Option<(Uid, Gid)>, name: &str) -> Setup {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mine = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let dir_name = format!("kodel-agent-{name}");
        if let Some((root, base)) = v2_base(&mounts, &mine) {
            return setup_v2(&root, &base, &dir_name, owner);
        }
        let (mut dirs, mut missing) = (Vec::new(), Vec::new());
        for c in CONTROLLERS {
            let made = v1_base(&mounts, &mine, c.name())
                .ok_or_else(|| format!("no cgroup hierarchy has the {} controller", c.name()))
                .and_then(|base| {
                    let dir = base.join(&dir_name);
                    make_dir(&dir)?;
                    if let Some((uid, gid)) = owner {
                        give(&dir, &[], uid, gid)?;
                    }
                    Ok(dir)
                });
            match made {
                Ok(dir) => dirs.push((c, dir)),
                Err(why) => missing.push((c, why)),
            }
        }
        if dirs.is_empty() {
            return Err(missing.into_iter().map(|(_, why)| why).collect::<Vec<_>>().join("; "));
        }
        Ok(Cgroups { v2: false, dirs, missing })
    }

    /// A cgroup for one job with the template's limits; None when it sets none.
    /// `sandboxed`: the job's commands run under bubblewrap (else they could lift the
    /// limits, so none are promised).
    pub fn job(setup: &Setup, job: &str, template: Option<&InstanceTemplate>, sandboxed: bool) -> Result<Option<JobCgroup>, String> {
        let Some(t) = template else { return Ok(None) };
        let asked: Vec<(Controller, &str)> =
            [(Controller::Memory, "memory_mb", t.memory_mb.is_some()), (Controller::Cpu, "cpu_limit", t.cpu_limit.is_some()), (Controller::Pids, "max_processes", t.max_processes.is_some())]
                .into_iter()
                .filter_map(|(c, n, set)| set.then_some((c, n)))
                .collect();
        if asked.is_empty() {
            return Ok(None);
        }
        let refuse = |why: &str| {
            let names: Vec<&str> = asked.iter().map(|(_, n)| *n).collect();
            format!(
                "the instance template {:?} sets {}, which this agent cannot apply: {why}. Start the agent as root with --user NAME \
                 (it then makes cgroups of its own), run it in a cgroup delegated to it, or remove the limits from the template",
                t.name,
                names.join(" and ")
            )
        };
        if !sandboxed {
            return Err(refuse("its commands do not run under bubblewrap, so they could lift them"));
        }
        let cgroups = setup.as_ref().map_err(|why| refuse(why))?;
        if let Some((_, why)) = cgroups.missing.iter().find(|(c, _)| asked.iter().any(|(a, _)| a == c)) {
            return Err(refuse(why));
        }
        let mut made = JobCgroup { dirs: Vec::new() };
        for (c, base) in cgroups.dirs.iter().filter(|(c, _)| asked.iter().any(|(a, _)| a == c)) {
            let dir = base.join(format!("job-{job}"));
            if !made.dirs.contains(&dir) {
                make_dir(&dir)?;
                made.dirs.push(dir.clone());
            }
            let v2 = cgroups.v2;
            let set = |file: &str, value: String| std::fs::write(dir.join(file), &value).map_err(|e| format!("cannot set {file} to {value} in {}: {e}", dir.display()));
            match c {
                Controller::Memory => {
                    if let Some(mb) = t.memory_mb {
                        let bytes = (mb.max(1) as u64) << 20;
                        if v2 {
                            set("memory.max", bytes.to_string())?;
                            // No swap beyond the limit (absent without swap accounting).
                            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                        } else {
                            set("memory.limit_in_bytes", bytes.to_string())?;
                            // With swap accounting: memory and swap together (set after).
                            let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
                        }
                    }
                }
                Controller::Cpu => {
                    if let Some(cores) = t.cpu_limit {
                        let period = 100_000u64;
                        let quota = ((cores as f64) * period as f64).round().max(1000.0) as u64;
                        if v2 {
                            set("cpu.max", format!("{quota} {period}"))?;
                        } else {
                            set("cpu.cfs_period_us", period.to_string())?;
                            set("cpu.cfs_quota_us", quota.to_string())?;
                        }
                    }
                }
                Controller::Pids => {
                    if let Some(n) = t.max_processes {
                        set("pids.max", n.max(1).to_string())?;
                    }
                }
            }
        }
        Ok(Some(made))
    }
}

/// One job's cgroups: commands are started in them; dropping it kills what is left in
/// them and removes them.
#[derive(Debug)]
pub struct JobCgroup {
    dirs: Vec<PathBuf>,
}

/// Moves the shell into each cgroup.procs given (children inherit the cgroups), then
/// runs the command; nothing runs if a move fails.
const ENTER: &str = r#"n="$1"; shift; while [ "$n" -gt 0 ]; do echo "$$" > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@""#;

impl JobCgroup {
    /// `cmd` (its program, arguments and environment) started inside the job's
    /// cgroups. Call it before setting the directory, stdio and process group.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(ENTER).arg("sh").arg(self.dirs.len().to_string());
        sh.args(self.dirs.iter().map(|d| d.join("cgroup.procs")));
        sh.arg(cmd.get_program()).args(cmd.get_args());
        sh.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                sh.env(k, v);
            }
        }
        sh
    }
}

impl Drop for JobCgroup {
    /// Kills what the job left and removes its cgroups, on a thread of its own: the
    /// kernel may take a moment to empty a cgroup, and the agent's loop must not wait.
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        let cleanup = move || {
            for dir in dirs.iter().rev() {
                // cgroup v2 kills a whole cgroup in one write (Linux 5.14+).
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                for _ in 0..50 {
                    let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                    if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        if std::thread::Builder::new().name("kodel-cgroup-cleanup".into()).spawn(cleanup).is_err() {
            tracing::warn!("cannot start a thread to remove a job's cgroups; they stay");
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot make the cgroup {}: {e}", dir.display())),
    }
}

/// Gives a cgroup directory (and the given files in it) to the user.
fn give(dir: &Path, files: &[&str], uid: Uid, gid: Gid) -> Result<(), String> {
    for path in std::iter::once(dir.to_path_buf()).chain(files.iter().map(|f| dir.join(f))) {
        std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(|e| format!("cannot give {} to the agent's user: {e}", path.display()))?;
    }
    Ok(())
}

/// mountinfo lines: (mount root, mount point, fs type, super options).
fn mounts(mountinfo: &str) -> impl Iterator<Item = (&str, &str, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut l = left.split(' ');
        let (root, point) = (l.nth(3)?, l.next()?);
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
        Some((root, point, fstype, options))
    })
}

/// The directory of this process's cgroup in the v1 hierarchy of `controller`.
fn v1_base(mountinfo: &str, cgroup: &str, controller: &str) -> Option<PathBuf> {
    let (root, point, _, _) = mounts(mountinfo).find(|(_, _, t, o)| *t == "cgroup" && o.split(',').any(|x| x == controller))?;
    let path = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        names.split(',').any(|n| n == controller).then_some(path)
    })?;
    Some(under(point, root, path))
}

/// The v2 hierarchy's top and this process's cgroup in it, when v2 has any of the
/// controllers (a hybrid machine's v2 has none: its v1 hierarchies are used).
fn v2_base(mountinfo: &str, cgroup: &str) -> Option<(PathBuf, PathBuf)> {
    let (root, point, _, _) = mounts(mountinfo).find(|(_, _, t, _)| *t == "cgroup2")?;
    let controllers = std::fs::read_to_string(Path::new(point).join("cgroup.controllers")).ok()?;
    if !CONTROLLERS.iter().any(|c| controllers.split_whitespace().any(|x| x == c.name())) {
        return None;
    }
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some((PathBuf::from(point), under(point, root, path)))
}

fn under(point: &str, root: &str, path: &str) -> PathBuf {
    let rel = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
    Path::new(point).join(rel)
}

/// cgroup v2: `kodel-agent-<user>/` holds `agent/` (this process, moved there, so the
/// cgroups that hand controllers down hold no process) and the jobs. As root it is made
/// at the top of the hierarchy (which may hold processes and still hand controllers
/// down); otherwise in this process's own cgroup, which must be delegated to it.
fn setup_v2(root: &Path, mine: &Path, dir_name: &str, owner: Option<(Uid, Gid)>) -> Setup {
    let parent = if owner.is_some() { root } else { mine };
    let top = parent.join(dir_name);
    let leaf = top.join("agent");
    make_dir(&top)?;
    make_dir(&leaf)?;
    std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
        .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
    // One controller at a time: a missing one does not take the others with it.
    for dir in [parent, top.as_path()] {
        for c in CONTROLLERS {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{}", c.name()));
        }
    }
    let enabled = std::fs::read_to_string(top.join("cgroup.subtree_control")).unwrap_or_default();
    let (mut dirs, mut missing) = (Vec::new(), Vec::new());
    for c in CONTROLLERS {
        if enabled.split_whitespace().any(|x| x == c.name()) {
            dirs.push((c, top.clone()));
        } else {
            missing.push((c, format!("the {} controller is not available in {} (systemd units need Delegate=yes)", c.name(), parent.display())));
        }
    }
    if let Some((uid, gid)) = owner {
        give(&top, &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"], uid, gid)?;
        give(&leaf, &["cgroup.procs", "cgroup.threads"], uid, gid)?;
    }
    if dirs.is_empty() {
        return Err(missing.into_iter().map(|(_, why)| why).collect::<Vec<_>>().join("; "));
    }
    Ok(Cgroups { v2: true, dirs, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids";
    const CGROUP: &str = "8:pids:/
4:memory:/process_api/b664
1:cpu,cpuacct:/svc
0::/";

    #[test]
    fn v1_directories_follow_mounts_and_this_process_s_cgroups() {
        assert_eq!(v1_base(MOUNTINFO, CGROUP, "memory").unwrap(), Path::new("/sys/fs/cgroup/memory/process_api/b664"));
        assert_eq!(v1_base(MOUNTINFO, CGROUP, "cpu").unwrap(), Path::new("/sys/fs/cgroup/cpu,cpuacct/svc"));
        assert_eq!(v1_base(MOUNTINFO, CGROUP, "pids").unwrap(), Path::new("/sys/fs/cgroup/pids"));
        assert!(v1_base(MOUNTINFO, CGROUP, "blkio").is_none());
    }

    #[test]
    fn a_template_with_limits_is_refused_where_they_cannot_be_applied() {
        let t: InstanceTemplate = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "name": "small", "base_image": "debian:12", "packages": [],
            "setup_script": "", "env": {}, "network": false, "cpu_limit": null, "memory_mb": 64, "max_processes": 40,
            "dind": false, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let none: Setup = Err("no delegated cgroup".into());
        let err = Cgroups::job(&none, "KOD-1", Some(&t), true).unwrap_err();
        assert!(err.contains("memory_mb and max_processes") && err.contains("no delegated cgroup") && err.contains("--user"), "{err}");
        // Without bubblewrap the commands could raise their own limits: none promised.
        let some: Setup = Ok(Cgroups { v2: false, dirs: vec![(Controller::Memory, PathBuf::from("/nonexistent"))], missing: vec![(Controller::Pids, "no pids".into())] });
        let err = Cgroups::job(&some, "KOD-1", Some(&t), false).unwrap_err();
        assert!(err.contains("bubblewrap"), "{err}");
        // A controller the template needs and the agent lacks is named.
        let err = Cgroups::job(&some, "KOD-1", Some(&t), true).unwrap_err();
        assert!(err.contains("no pids"), "{err}");
        let no_limits = InstanceTemplate { memory_mb: None, max_processes: None, ..t };
        assert!(Cgroups::job(&none, "KOD-1", Some(&no_limits), false).unwrap().is_none(), "no limit, nothing to refuse");
        assert!(Cgroups::job(&none, "KOD-1", None, true).unwrap().is_none());
    }
}
