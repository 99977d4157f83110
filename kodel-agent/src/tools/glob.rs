//! glob: finds files by name pattern, newest first (what was touched last is usually
//! what matters), skipping what .gitignore ignores, as `git ls-files` would.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use globset::{GlobBuilder, GlobMatcher};
use ignore::{WalkBuilder, WalkState};
use serde::Deserialize;
use serde_json::json;

use super::Workspace;

const MAX_RESULTS: usize = 200;

pub const DESCRIPTION: &str = "Find files whose path matches a glob pattern, newest first (by modification time), \
at most 200. `**` matches any number of directories (`src/**/*.rs`); a pattern without `/` matches file names at \
any depth (`*.toml`). Files ignored by .gitignore and the .git directory are skipped. Paths in the answer are \
relative to the workspace root.";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "Glob pattern, e.g. **/*.rs or src/*.ts"},
            "path": {"type": "string", "description": "Directory to search in, relative to the workspace root (default: the root)"}
        },
        "required": ["pattern"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    pattern: String,
    path: Option<String>,
}

pub fn run(ws: &Workspace, input: Input) -> Result<String, String> {
    let dir = ws.resolve(input.path.as_deref().unwrap_or("."))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", input.path.as_deref().unwrap_or(".")));
    }
    let pattern = input.pattern.trim_start_matches("./");
    if pattern.is_empty() {
        return Err("pattern is empty; try **/* for every file".into());
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid glob pattern {pattern:?}: {e}"))?
        .compile_matcher();
    let by_name = !pattern.contains('/');

    let mut found = find(&dir, &glob, by_name);
    if found.is_empty() {
        return Ok(format!("no files match {pattern} in {}", ws.display(&dir)));
    }
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    for (path, _) in found.iter().take(MAX_RESULTS) {
        out.push_str(&ws.display(path));
        out.push('\n');
    }
    if found.len() > MAX_RESULTS {
        out.push_str(&format!(
            "[... {} more files not shown; narrow the pattern or the path]\n",
            found.len() - MAX_RESULTS
        ));
    }
    Ok(out)
}

/// Files under `dir` matching the glob, with their modification times.
fn find(dir: &Path, glob: &GlobMatcher, by_name: bool) -> Vec<(PathBuf, SystemTime)> {
    let found = Mutex::new(Vec::new());
    walker(dir).build_parallel().run(|| {
        Box::new(|entry| {
            let Ok(entry) = entry else { return WalkState::Continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            let path = entry.path();
            let matched = if by_name {
                path.file_name().is_some_and(|n| glob.is_match(n))
            } else {
                path.strip_prefix(dir).is_ok_and(|rel| glob.is_match(rel))
            };
            if matched {
                let mtime = entry.metadata().ok().and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                if let Ok(mut found) = found.lock() {
                    found.push((path.to_path_buf(), mtime));
                }
            }
            WalkState::Continue
        })
    });
    found.into_inner().unwrap_or_default()
}

/// The walk glob and grep share: .gitignore (even outside a git repository) and .ignore
/// files honoured, hidden files included (git tracks them), the .git directory skipped.
pub(super) fn walker(dir: &Path) -> WalkBuilder {
    let mut walk = WalkBuilder::new(dir);
    walk.hidden(false).require_git(false).filter_entry(|e| e.file_name() != ".git");
    walk
}
