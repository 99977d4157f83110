//! Confines tool paths to the workspace. A path is resolved the way the kernel would
//! (symlinks followed, `..` applied to the resolved parent), including through
//! symlinks whose target does not exist yet, and must end up inside the root.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one path may go through (the kernel's limit is 40 too).
const MAX_LINKS: usize = 40;

/// Resolves `input` (relative to `root`, or absolute) to a path without symlinks that
/// lies inside `root`, which must already be canonical. Errors are tool messages.
pub fn resolve(root: &Path, input: &str) -> Result<PathBuf, String> {
    if input.is_empty() {
        return Err("path is empty; give a path relative to the workspace root".into());
    }
    if input.contains('\0') {
        return Err(format!("path {input:?} contains a NUL byte"));
    }
    let mut links = 0;
    let full = root.join(input);
    let resolved = walk(Path::new("/"), &full, &mut links)
        .map_err(|()| format!("path {input} goes through more than {MAX_LINKS} symlinks (a symlink loop?)"))?;
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(format!(
            "path {input} is outside the workspace (it resolves to {}); tools only work inside {}",
            resolved.display(),
            root.display()
        ))
    }
}

/// Shows a path inside the workspace relative to its root ("." for the root itself).
pub fn display(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

/// Applies `path`'s components one by one to `base` (a path without symlinks).
fn walk(base: &Path, path: &Path, links: &mut usize) -> Result<PathBuf, ()> {
    let mut cur = base.to_path_buf();
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => cur = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => cur = step(&cur, name, links)?,
        }
    }
    Ok(cur)
}

/// Adds one name to `cur`, following it if it is a symlink.
fn step(cur: &Path, name: &OsStr, links: &mut usize) -> Result<PathBuf, ()> {
    let next = cur.join(name);
    let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        // An existing file or directory, or a name that does not exist (yet).
        return Ok(next);
    }
    *links += 1;
    if *links > MAX_LINKS {
        return Err(());
    }
    match std::fs::read_link(&next) {
        // A relative target is relative to the directory holding the link.
        Ok(target) => walk(cur, &target, links),
        Err(_) => Ok(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_inside_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        assert_eq!(resolve(&root, "a/../b").unwrap(), root.join("b"));
        assert_eq!(resolve(&root, "./a/./x/y").unwrap(), root.join("a/x/y"));
        assert!(resolve(&root, "a/../../x").unwrap_err().contains("outside the workspace"));
    }

    #[test]
    fn dangling_symlink_to_outside_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("/nonexistent-kodel/new.txt", root.join("link")).unwrap();
        assert!(resolve(&root, "link").unwrap_err().contains("outside the workspace"));
        std::os::unix::fs::symlink("inside/new.txt", root.join("ok")).unwrap();
        assert_eq!(resolve(&root, "ok").unwrap(), root.join("inside/new.txt"));
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("b", root.join("a")).unwrap();
        std::os::unix::fs::symlink("a", root.join("b")).unwrap();
        assert!(resolve(&root, "a").unwrap_err().contains("symlinks"));
    }
}
