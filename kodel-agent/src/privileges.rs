//! Never root: an agent started as root drops to an unprivileged user (`--user NAME`)
//! before it does anything else, so the model's commands, its git and its file tools
//! all run with that user's rights. Under bubblewrap as root the sandbox would keep
//! nearly every capability (unmount /proc, enter the server's network namespace,
//! remount / writable); run as another user it starts with none and has no mapping to
//! root at all.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

/// The unprivileged account an agent started as root becomes.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// The account's home, when it has one on this machine.
    pub home: Option<PathBuf>,
}

/// Looks `name` up and refuses root (or any account with uid 0).
pub fn resolve(name: &str) -> Result<RunAs, String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("there is no user {name:?} on this machine (create one: useradd --system {name})"))?;
    if user.uid.is_root() {
        return Err(format!("--user {name} is root; name an unprivileged user"));
    }
    let home = Some(user.dir).filter(|d| d.is_dir() && d.parent().is_some());
    Ok(RunAs { name: user.name, uid: user.uid, gid: user.gid, home })
}

/// Gives `workdir` to the user and checks the user can reach it, then becomes the
/// user for good: no supplementary groups but `groups`, real, effective and saved ids
/// all theirs.
/// Call it before any thread starts.
///
/// The work dir is taken over only when that is safe: made here (its parent must
/// exist), or an empty directory of root's. One that already is the user's is used as
/// it is; anything else (another owner, files left by a start as root, a link, a
/// directory anyone may write to such as /tmp) is refused with what to do. Nothing is
/// ever changed recursively, so nothing the user could swap for a link is followed.
pub fn become_user(run: &RunAs, workdir: &Path, groups: &[nix::unistd::Gid]) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fix = format!("choose a --workdir of its own for the agent (e.g. /var/lib/kodel-agent), or give this one to it: chown -R {} {}", run.name, workdir.display());
    let meta = match std::fs::symlink_metadata(workdir) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot look at the work dir {}: {e}", workdir.display())),
    };
    match meta {
        None => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(workdir)
                .map_err(|e| format!("cannot create the work dir {} (its parent must exist): {e}", workdir.display()))?;
            std::os::unix::fs::lchown(workdir, Some(run.uid.as_raw()), Some(run.gid.as_raw()))
                .map_err(|e| format!("cannot give {} to {}: {e}", workdir.display(), run.name))?;
        }
        Some(meta) if !meta.file_type().is_dir() => return Err(format!("the work dir {} is not a directory (a link?); {fix}", workdir.display())),
        Some(meta) if meta.permissions().mode() & 0o1002 != 0 => {
            return Err(format!("the work dir {} may be written by anyone; {fix}", workdir.display()));
        }
        Some(meta) if meta.uid() == run.uid.as_raw() => {}
        Some(meta) if meta.uid() == 0 && std::fs::read_dir(workdir).map(|mut d| d.next().is_none()).unwrap_or(false) => {
            std::os::unix::fs::lchown(workdir, Some(run.uid.as_raw()), Some(run.gid.as_raw()))
                .map_err(|e| format!("cannot give {} to {}: {e}", workdir.display(), run.name))?;
        }
        Some(_) => return Err(format!("the work dir {} belongs to someone else, or holds files of an earlier start; {fix}", workdir.display())),
    }
    let abs = std::fs::canonicalize(workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    for dir in abs.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let enterable = meta.uid() == run.uid.as_raw() || meta.mode() & 0o001 != 0 || (meta.gid() == run.gid.as_raw() && meta.mode() & 0o010 != 0);
        if !enterable {
            return Err(format!(
                "the agent runs as {}, who cannot enter {} on the way to the work dir: choose a --workdir it can reach (or chmod o+x {})",
                run.name,
                dir.display(),
                dir.display()
            ));
        }
    }
    let all: Vec<nix::unistd::Gid> = std::iter::once(run.gid).chain(groups.iter().copied()).collect();
    nix::unistd::setgroups(&all).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
    nix::unistd::setgid(run.gid).map_err(|e| format!("cannot become group {}: {e}", run.gid))?;
    nix::unistd::setuid(run.uid).map_err(|e| format!("cannot become user {}: {e}", run.name))?;
    // There is no way back.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::geteuid().is_root() {
        return Err("still able to become root after dropping privileges; refusing to run".into());
    }
    Ok(())
}
