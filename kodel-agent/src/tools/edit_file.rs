//! edit_file: replaces an exact piece of text. Requiring a unique match (unless
//! `replace_all`) makes the model say precisely where it edits, and CRLF files keep
//! their line endings when the model writes plain `\n`.

use serde::Deserialize;
use serde_json::json;

use super::Workspace;

const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

pub const DESCRIPTION: &str = "Replace text in an existing file. `old_string` must match the file exactly \
(whitespace and indentation included) and only once, unless `replace_all` is true; include enough surrounding \
lines to make it unique. Read the file first to copy the exact text. Use write_file to create new files.";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File path, relative to the workspace root"},
            "old_string": {"type": "string", "description": "The exact text to replace"},
            "new_string": {"type": "string", "description": "The text to put in its place"},
            "replace_all": {"type": "boolean", "description": "Replace every occurrence (default false)"}
        },
        "required": ["path", "old_string", "new_string"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

pub fn run(ws: &Workspace, input: Input) -> Result<String, String> {
    let name = &input.path;
    if input.old_string.is_empty() {
        return Err("old_string is empty; give the exact text to replace (use write_file to create a file)".into());
    }
    if input.old_string == input.new_string {
        return Err("old_string and new_string are the same; there is nothing to change".into());
    }
    let hint = "edit it with bash (sed) instead";
    let (path, bytes) = super::read_text(ws, name, MAX_FILE_BYTES, hint).map_err(|e| {
        if e.starts_with("file not found") { format!("{e}; use write_file to create a new file") } else { e }
    })?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not valid UTF-8 text; edit it with bash"))?;

    // In a CRLF file, match with CRLF endings first; a file that mixes both may still
    // hold the text with the model's own endings.
    let mut old = input.old_string.clone();
    let mut new = input.new_string.clone();
    let mut count = 0;
    if text.contains("\r\n") {
        (old, new) = (to_crlf(&input.old_string), to_crlf(&input.new_string));
        count = text.matches(old.as_str()).count();
        if count == 0 {
            (old, new) = (input.old_string.clone(), input.new_string.clone());
        }
    }
    if count == 0 {
        count = text.matches(old.as_str()).count();
    }
    if count == 0 {
        return Err(format!(
            "old_string was not found in {name}. It must match the file exactly, including whitespace and \
             indentation; read the file again and copy the text from it"
        ));
    }
    if count > 1 && !input.replace_all {
        return Err(format!(
            "old_string occurs {count} times in {name}; add surrounding lines to old_string so that it matches \
             exactly once, or set replace_all to true to replace all {count}"
        ));
    }
    let first_line = text.find(old.as_str()).map_or(1, |at| text[..at].matches('\n').count() + 1);
    let edited =
        if input.replace_all { text.replace(old.as_str(), &new) } else { text.replacen(old.as_str(), &new, 1) };
    std::fs::write(&path, edited).map_err(|e| format!("cannot write {name}: {e}"))?;
    let what = if count == 1 { "1 occurrence".to_owned() } else { format!("{count} occurrences") };
    Ok(format!("edited {}: replaced {what} (first at line {first_line})", ws.display(&path)))
}

/// Makes every line ending CRLF (the text may mix both).
fn to_crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}
