//! The grep tool against ripgrep on the same tree and regexes:
//! `cargo bench -p kodel-agent --bench grep`.
//!
//! Builds a deterministic tree of 20,000 text files (~200 MB, with a .gitignore'd
//! directory both must skip) in a temp dir, or searches `KODEL_BENCH_TREE` when set.
//! Each round runs the tool and `rg -n` (output read from a pipe) alternately after a
//! warm-up; both do the whole search (max_results is above the match count) and both
//! produce every matching line, the tool as its output string before the size cap.
//! Prints the median times and the ratio tool / rg.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kodel_agent::sandbox::Sandbox;
use kodel_agent::tools::{self, Workspace};

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 100;
const LINES_PER_FILE: usize = 200;
const ROUNDS: usize = 9;

/// (label, regex, case-insensitive).
const PATTERNS: [(&str, &str, bool); 4] = [
    ("rare, literal prefix", "needle_[0-9]+", false),
    ("regex", r"fn [a-z]+_handler\(", false),
    ("character classes", r"Error[A-Z][a-z]+Kind", false),
    ("alternation, case-insensitive", r"todo|fixme", true),
];

fn main() {
    let rg = std::env::var("RG").unwrap_or_else(|_| "rg".into());
    let (_keep, root) = match std::env::var_os("KODEL_BENCH_TREE") {
        Some(tree) => (None, PathBuf::from(tree)),
        None => {
            let dir = tempfile::tempdir().unwrap();
            let started = Instant::now();
            generate(dir.path());
            eprintln!("generated the tree in {:.1} s", started.elapsed().as_secs_f64());
            let root = dir.path().to_path_buf();
            (Some(dir), root)
        }
    };
    let (files, bytes) = tree_size(&root);
    println!("tree: {} ({files} files, {:.0} MB)", root.display(), bytes as f64 / 1e6);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cores: {threads}; rg: {}", version(&rg));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = Workspace::new(&root, Sandbox::off()).unwrap();
    println!("| pattern | matches | tool median | rg median | tool / rg |");
    println!("|---|---|---|---|---|");
    for (label, pattern, ci) in PATTERNS {
        let tool = || {
            let args = serde_json::json!({"pattern": pattern, "case_insensitive": ci, "max_results": 100_000});
            let args = args.to_string();
            let out = rt.block_on(tools::run(&ws, "grep", &args, None));
            assert!(!out.error, "{}", out.output);
            tool_count(&out.output)
        };
        let rg_run = || rg_count(&rg, &root, pattern, ci);
        // Warm-up (page cache, and a check that both see the same matches).
        let (a, b) = (tool(), rg_run());
        assert_eq!(a, b, "tool and rg disagree on {pattern:?}: {a} vs {b} lines");
        let mut tool_times = Vec::new();
        let mut rg_times = Vec::new();
        for _ in 0..ROUNDS {
            tool_times.push(time(tool));
            rg_times.push(time(rg_run));
        }
        let (t, r) = (median(tool_times), median(rg_times));
        println!(
            "| `{pattern}` ({label}) | {a} | {:.1} ms | {:.1} ms | {:.2} |",
            ms(t),
            ms(r),
            t.as_secs_f64() / r.as_secs_f64()
        );
    }
}

fn time<T>(f: impl FnOnce() -> T) -> Duration {
    let started = Instant::now();
    std::hint::black_box(f());
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Matching lines in the tool's answer (from its cut note when the answer was cut).
fn tool_count(output: &str) -> usize {
    if output.starts_with("no matches") {
        return 0;
    }
    if let Some(note) = output.lines().rev().find(|l| l.contains("matching lines in all")) {
        let n = note.split('(').nth(1).and_then(|s| s.split(' ').next()).unwrap();
        return n.parse().unwrap();
    }
    output.lines().filter(|l| !l.starts_with('[')).count()
}

/// rg with the tool's settings (line numbers, file names, hidden files, .gitignore even
/// outside git), its whole output read from a pipe; returns the line count.
fn rg_count(rg: &str, root: &Path, pattern: &str, case_insensitive: bool) -> usize {
    let out = Command::new(rg)
        .args(["-n", "--no-heading", "--with-filename", "--color", "never", "--hidden", "--no-require-git"])
        .args(if case_insensitive { &["-i"][..] } else { &[] })
        .args(["-g", "!.git", "--", pattern])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success() || out.status.code() == Some(1), "rg failed: {out:?}");
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn version(rg: &str) -> String {
    Command::new(rg)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
        .unwrap_or_else(|e| format!("not found ({e})"))
}

fn tree_size(root: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in ignore::WalkBuilder::new(root).hidden(false).require_git(false).build().flatten() {
        if entry.file_type().is_some_and(|t| t.is_file()) {
            files += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}

/// A source-like tree: words from a fixed vocabulary, a few planted patterns, and a
/// .gitignore'd `target/` that both tools must skip.
fn generate(root: &Path) {
    const WORDS: [&str; 32] = [
        "let", "value", "self", "return", "match", "Some", "None", "config", "request", "response", "buffer", "index",
        "count", "result", "error", "string", "into", "from", "iter", "map", "collect", "parse", "write", "read",
        "state", "handle", "event", "task", "user", "token", "path", "data",
    ];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("target/ignored.txt"), "needle_1 fn x_handler(\n".repeat(1000)).unwrap();
    let mut text = String::with_capacity(16 * 1024);
    for d in 0..DIRS {
        let dir = root.join(format!("module_{d:03}/src"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            text.clear();
            for _ in 0..LINES_PER_FILE {
                let r = next();
                match r % 1000 {
                    0 => text.push_str(&format!("    // needle_{} ", r % 100)),
                    1..=2 => text.push_str("pub fn request_handler(state: State) -> Result {"),
                    3 => text.push_str("    return Err(ErrorParseKind::Invalid);"),
                    4 => text.push_str("    // TODO: "),
                    5 => text.push_str("    // Fixme "),
                    _ => text.push_str("    "),
                }
                let words = 4 + (r >> 10) % 8;
                for i in 0..words {
                    let w = WORDS[((r >> (16 + i * 5)) % 32) as usize];
                    text.push_str(w);
                    text.push(if i % 3 == 2 { '.' } else { ' ' });
                }
                text.push_str(&format!("{};\n", (r >> 40) % 10_000));
            }
            let mut file = std::fs::File::create(dir.join(format!("file_{f:03}.rs"))).unwrap();
            file.write_all(text.as_bytes()).unwrap();
        }
    }
}
