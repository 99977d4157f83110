//! write_file: creates or overwrites a whole file (parent directories included). For
//! changes to part of an existing file, edit_file is safer and cheaper.

use serde::Deserialize;
use serde_json::json;

use super::Workspace;

/// A bound on one write, so a runaway model cannot fill the disk in one call.
const MAX_CONTENT_BYTES: usize = 10 * 1024 * 1024;

pub const DESCRIPTION: &str = "Create a file or overwrite it entirely with `content`; parent directories are created \
as needed. Prefer edit_file to change part of an existing file. Paths are relative to the workspace root.";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File path, relative to the workspace root"},
            "content": {"type": "string", "description": "The complete new content of the file"}
        },
        "required": ["path", "content"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    path: String,
    content: String,
}

pub fn run(ws: &Workspace, input: Input) -> Result<String, String> {
    if input.content.len() > MAX_CONTENT_BYTES {
        return Err(format!(
            "content is {} bytes, above the {} MiB limit for one write",
            input.content.len(),
            MAX_CONTENT_BYTES / (1024 * 1024)
        ));
    }
    let path = ws.resolve(&input.path)?;
    if path.is_dir() {
        return Err(format!("{} is a directory; give a file path", input.path));
    }
    // Writing to a FIFO with no reader would block forever.
    if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
        return Err(format!("{} is not a regular file (a pipe, socket or device)", input.path));
    }
    let existed = path.exists();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create the directories for {}: {e}", input.path))?;
    }
    std::fs::write(&path, input.content.as_bytes()).map_err(|e| format!("cannot write {}: {e}", input.path))?;
    let verb = if existed { "overwrote" } else { "created" };
    Ok(format!("{verb} {} ({} bytes written)", ws.display(&path), input.content.len()))
}
