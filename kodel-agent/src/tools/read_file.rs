//! read_file: a text file's lines, numbered like `cat -n`, a window at a time, so the
//! model can quote exact text back to edit_file and page through long files.

use serde::Deserialize;
use serde_json::json;

use super::Workspace;

/// Files above this are refused: the model should grep or page them with bash.
const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_LIMIT: usize = 2000;
/// Longer lines are cut (minified code would otherwise flood the context).
const MAX_LINE_CHARS: usize = 2000;
/// The whole answer stays under this; the rest is one `offset` away.
const MAX_OUTPUT_BYTES: usize = 100 * 1024;

pub const DESCRIPTION: &str = "Read a text file in the workspace. Lines come numbered like `cat -n` (the number, a tab, \
the line). Reads up to 2000 lines from `offset` (1-based line number, default 1); use `offset` and `limit` to page \
through long files. Lines longer than 2000 characters are cut. Binary files and files above 10 MiB are refused. \
Paths are relative to the workspace root.";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File path, relative to the workspace root"},
            "offset": {"type": "integer", "minimum": 1, "description": "First line to read, 1-based (default 1)"},
            "limit": {"type": "integer", "minimum": 1, "description": "How many lines to read (default 2000)"}
        },
        "required": ["path"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    path: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

pub fn run(ws: &Workspace, input: Input) -> Result<String, String> {
    let offset = input.offset.unwrap_or(1);
    if offset == 0 {
        return Err("offset is 1-based: the first line is offset 1".into());
    }
    let limit = input.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return Err("limit must be at least 1".into());
    }
    let hint = "use grep to find what you need, or bash (sed -n '100,200p' FILE) to read part of it";
    let (_, bytes) = super::read_text(ws, &input.path, MAX_FILE_BYTES, hint)?;
    let text = String::from_utf8_lossy(&bytes);
    if text.is_empty() {
        return Ok(format!("{} is empty", input.path));
    }
    // A final newline ends the last line rather than starting an empty one.
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let total = body.split('\n').count();
    if offset > total {
        return Err(format!("offset {offset} is past the end of {} ({total} lines)", input.path));
    }

    let mut out = String::new();
    let mut next = offset;
    for (i, line) in body.split('\n').enumerate().skip(offset - 1).take(limit) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !out.is_empty() && out.len() + line.len().min(MAX_LINE_CHARS * 4) > MAX_OUTPUT_BYTES {
            break;
        }
        out.push_str(&format!("{:>6}\t", i + 1));
        push_line(&mut out, line);
        out.push('\n');
        next = i + 2;
    }
    if next <= total {
        out.push_str(&format!(
            "[{} more lines in {} ({total} in all); read on with offset={next}]\n",
            total - next + 1,
            input.path
        ));
    }
    Ok(out)
}

/// Appends a line, cut at MAX_LINE_CHARS characters.
fn push_line(out: &mut String, line: &str) {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        None => out.push_str(line),
        Some((cut, _)) => {
            out.push_str(&line[..cut]);
            out.push_str(&format!(" [... line cut: {} more characters]", line[cut..].chars().count()));
        }
    }
}
