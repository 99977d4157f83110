//! grep: regex search over the workspace with ripgrep's own crates (ignore for the
//! parallel, gitignore-aware walk; grep-regex and grep-searcher for the search), so it
//! runs about as fast as `rg`. Output is rg's `path:line:text`, sorted by path.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkMatch};
use ignore::WalkState;
use ignore::overrides::OverrideBuilder;
use serde::Deserialize;
use serde_json::json;

use super::Workspace;

const DEFAULT_MAX_RESULTS: usize = 500;
const MAX_MAX_RESULTS: usize = 100_000;
const MAX_CONTEXT: usize = 10;
/// Longer lines are cut (minified files would otherwise flood the answer).
const MAX_LINE_BYTES: usize = 500;
/// The answer is cut (at a line) beyond this.
const MAX_OUTPUT_BYTES: usize = 50 * 1024;

pub const DESCRIPTION: &str = "Search file contents with a regular expression (Rust regex syntax, like ripgrep). \
Prints matching lines as `path:line:text` (context lines as `path-line-text`, groups separated by `--`), sorted by \
path. Skips binary files, the .git directory and files ignored by .gitignore. `path` narrows the search to a file \
or directory, `glob` filters file names (e.g. `*.rs`, `src/**/*.ts`, `!*.min.js`). Stops after `max_results` \
matching lines (default 500).";

pub fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "Regular expression; escape ( [ { . * + ? | \\ for literal text"},
            "path": {"type": "string", "description": "File or directory to search, relative to the workspace root (default: the root)"},
            "glob": {"type": "string", "description": "Only search files matching this glob, e.g. *.rs"},
            "context": {"type": "integer", "minimum": 0, "maximum": MAX_CONTEXT, "description": "Lines of context before and after each match (default 0, max 10)"},
            "case_insensitive": {"type": "boolean", "description": "Ignore case (default false)"},
            "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_MAX_RESULTS, "description": "Stop after this many matching lines (default 500)"}
        },
        "required": ["pattern"]
    })
}

#[derive(Deserialize)]
pub struct Input {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
    context: Option<usize>,
    #[serde(default)]
    case_insensitive: bool,
    max_results: Option<usize>,
}

/// What the parallel walk gathers: one block of output lines per file with matches.
struct Found {
    files: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    matches: AtomicUsize,
    unreadable: AtomicUsize,
}

pub fn run(ws: &Workspace, input: Input) -> Result<String, String> {
    let path_arg = input.path.as_deref().unwrap_or(".");
    let target = ws.resolve(path_arg)?;
    if !target.exists() {
        return Err(format!("{path_arg} does not exist"));
    }
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(input.case_insensitive)
        .line_terminator(Some(b'\n'))
        .build(&input.pattern)
        .map_err(|e| {
            format!("invalid regex {:?}: {e}. Escape special characters (\\( \\[ \\{{ \\. \\*) to search for them literally", input.pattern)
        })?;
    let context = input.context.unwrap_or(0).min(MAX_CONTEXT);
    let max = input.max_results.unwrap_or(DEFAULT_MAX_RESULTS).clamp(1, MAX_MAX_RESULTS);
    let searcher = SearcherBuilder::new()
        .line_number(true)
        .before_context(context)
        .after_context(context)
        .binary_detection(BinaryDetection::quit(0))
        .build();

    let mut walk = super::glob::walker(&target);
    if let Some(glob) = &input.glob {
        let base = if target.is_dir() { target.as_path() } else { target.parent().unwrap_or(ws.root()) };
        let mut overrides = OverrideBuilder::new(base);
        overrides.add(glob).map_err(|e| format!("invalid glob {glob:?}: {e}"))?;
        walk.overrides(overrides.build().map_err(|e| format!("invalid glob {glob:?}: {e}"))?);
    }

    let found = Found { files: Mutex::new(Vec::new()), matches: AtomicUsize::new(0), unreadable: AtomicUsize::new(0) };
    walk.build_parallel().run(|| {
        // One searcher and matcher per thread, reused for every file it searches.
        let mut searcher = searcher.clone();
        let matcher = matcher.clone();
        let found = &found;
        let root = ws.root();
        Box::new(move |entry| {
            let Ok(entry) = entry else { return WalkState::Continue };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            search_file(&mut searcher, &matcher, root, entry.path(), found, max)
        })
    });

    let matches = found.matches.load(Ordering::Relaxed);
    let mut files = found.files.into_inner().unwrap_or_default();
    if files.is_empty() {
        return Ok(format!("no matches for {:?} in {path_arg}", input.pattern));
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (i, (_, block)) in files.iter().enumerate() {
        if context > 0 && i > 0 {
            out.extend_from_slice(b"--\n");
        }
        out.extend_from_slice(block);
    }
    let mut text = cap(out, matches);
    if matches >= max {
        text.push_str(&format!(
            "[stopped after max_results={max} matching lines; there may be more: narrow the pattern, path or glob, \
             or raise max_results]\n"
        ));
    }
    let unreadable = found.unreadable.load(Ordering::Relaxed);
    if unreadable > 0 {
        text.push_str(&format!("[{unreadable} files could not be read]\n"));
    }
    Ok(text)
}

/// Searches one file and files its output block.
fn search_file(
    searcher: &mut Searcher,
    matcher: &RegexMatcher,
    root: &Path,
    path: &Path,
    found: &Found,
    max: usize,
) -> WalkState {
    if found.matches.load(Ordering::Relaxed) >= max {
        return WalkState::Quit;
    }
    let name = path.strip_prefix(root).unwrap_or(path).as_os_str().as_bytes();
    let mut sink = FileSink { name, out: Vec::new(), binary: false, found, max };
    if searcher.search_path(matcher, path, &mut sink).is_err() {
        found.unreadable.fetch_add(1, Ordering::Relaxed);
        return WalkState::Continue;
    }
    if !sink.out.is_empty() && !sink.binary {
        let block = sink.out;
        if let Ok(mut files) = found.files.lock() {
            files.push((name.to_vec(), block));
        }
    }
    WalkState::Continue
}

/// Writes one file's matches and context lines rg-style into a buffer.
struct FileSink<'a> {
    name: &'a [u8],
    out: Vec<u8>,
    binary: bool,
    found: &'a Found,
    max: usize,
}

impl FileSink<'_> {
    fn line(&mut self, sep: u8, number: u64, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.out.extend_from_slice(self.name);
        self.out.push(sep);
        push_number(&mut self.out, number);
        self.out.push(sep);
        if line.len() > MAX_LINE_BYTES {
            // Cut before a UTF-8 continuation byte, not inside a character.
            let cut =
                (MAX_LINE_BYTES - 3..=MAX_LINE_BYTES).rev().find(|&i| line[i] & 0xC0 != 0x80).unwrap_or(MAX_LINE_BYTES);
            self.out.extend_from_slice(&line[..cut]);
            self.out.extend_from_slice(format!(" [... line cut: {} more bytes]", line.len() - cut).as_bytes());
        } else {
            self.out.extend_from_slice(line);
        }
        self.out.push(b'\n');
    }
}

impl Sink for FileSink<'_> {
    type Error = std::io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, Self::Error> {
        let first = mat.line_number().unwrap_or(0);
        let mut lines = 0;
        for (i, line) in mat.lines().enumerate() {
            self.line(b':', first + i as u64, line);
            lines += 1;
        }
        let total = self.found.matches.fetch_add(lines, Ordering::Relaxed) + lines;
        Ok(total < self.max)
    }

    fn context(&mut self, _: &Searcher, ctx: &SinkContext<'_>) -> Result<bool, Self::Error> {
        self.line(b'-', ctx.line_number().unwrap_or(0), ctx.bytes());
        Ok(true)
    }

    fn context_break(&mut self, _: &Searcher) -> Result<bool, Self::Error> {
        self.out.extend_from_slice(b"--\n");
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _: u64) -> Result<bool, Self::Error> {
        self.binary = true;
        Ok(false)
    }
}

/// Writes a decimal number without going through `format!`.
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Cuts the output at a line boundary below MAX_OUTPUT_BYTES, saying what was left out.
fn cap(out: Vec<u8>, matches: usize) -> String {
    if out.len() <= MAX_OUTPUT_BYTES {
        return String::from_utf8_lossy(&out).into_owned();
    }
    let end = out[..MAX_OUTPUT_BYTES].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let left = out[end..].iter().filter(|&&b| b == b'\n').count();
    let mut text = String::from_utf8_lossy(&out[..end]).into_owned();
    text.push_str(&format!(
        "[... output cut at {} KiB: {left} more lines not shown ({matches} matching lines in all); narrow the \
         pattern, path or glob]\n",
        MAX_OUTPUT_BYTES / 1024
    ));
    text
}
