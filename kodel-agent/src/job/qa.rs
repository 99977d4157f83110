//! qa: runs the project's test command in the workspace (sandboxed like the model's
//! bash, output streamed live) and writes a test report: passed or failed, the counts
//! where the test runner prints them, the output's tail, and, when tests failed, the
//! model's summary of why.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use kodel_core::jobs::{ArtifactKind, NewArtifact};
use kodel_core::protocol::Assignment;
use regex::Regex;
use serde::Serialize;
use serde_json::json;

use super::workspace::{Prepared, tail};
use super::{Outcome, first_messages, with_modules};
use crate::runner::{self, Failed, Reporter};
use crate::tools::bash;

/// What the report keeps of the output.
const TAIL_BYTES: usize = 8 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

pub async fn run(a: &Assignment, p: &Prepared, rep: &mut Reporter) -> Result<Outcome, Failed> {
    let command = a.project.test_command.as_deref().map(str::trim).unwrap_or_default();
    let started = Instant::now();
    let live = rep.live();
    let limit = Duration::from_secs(a.template.time_limit_secs.max(1) as u64);
    let out = bash::execute(&p.ws, command, limit, Some(&live.tx)).await;
    live.done().await;
    let out = out.map_err(|e| (format!("cannot run the test command: {e}"), false))?;
    let duration_ms = started.elapsed().as_millis() as u64;
    rep.action("test", command, &out.output, out.error, started);
    if let Some(why) = p.ws.failure() {
        return Err((why, false));
    }
    let passed = !out.error;
    let exit_code = exit_code(&out.output);
    let counts = counts(&out.output);
    let output_tail = tail(&out.output, TAIL_BYTES).to_owned();
    let summary = if passed {
        match counts {
            Some(c) => format!("The tests pass: {} passed, {} skipped.", c.passed, c.skipped),
            None => "The tests pass.".to_owned(),
        }
    } else {
        let mut prompt = with_modules(a, p, runner::task_prompt(a));
        prompt.push_str(&format!(
            "\nThe project's test command `{command}` failed{}. The end of its output:\n\n```\n{output_tail}\n```\n\n\
             Find out why: read the failing tests and the code they test (do not change any file). Then answer with a \
             short summary for the developer: each failure, its likely cause, and where to fix it.\n",
            exit_code.map(|c| format!(" with exit code {c}")).unwrap_or_default()
        ));
        let (said, _) = runner::converse(a, &p.ws, rep, first_messages(a, prompt)).await?;
        said.trim().to_owned()
    };
    let title = match (passed, counts) {
        (true, Some(c)) => format!("Tests passed: {} passed", c.passed),
        (true, None) => "Tests passed".to_owned(),
        (false, Some(c)) => format!("Tests failed: {} failed, {} passed", c.failed, c.passed),
        (false, None) => "Tests failed".to_owned(),
    };
    let mut content = format!("**{title}**\n\n`{command}`");
    if let Some(code) = exit_code {
        content.push_str(&format!(" exited with {code}"));
    }
    content.push_str(&format!(" after {:.1} s.\n\n{summary}\n\n```\n{output_tail}\n```\n", duration_ms as f64 / 1000.0));
    let artifact = NewArtifact {
        kind: ArtifactKind::TestReport,
        title: Some(title),
        content: Some(content),
        reference: Some(a.branch.clone()),
        data: Some(json!({
            "passed": passed, "command": command, "exit_code": exit_code, "counts": counts,
            "duration_ms": duration_ms, "output_tail": output_tail, "summary": summary,
        })),
    };
    Ok(Outcome { summary, artifacts: vec![artifact] })
}

/// The exit code from the last line the command runner wrote.
fn exit_code(output: &str) -> Option<i32> {
    output.lines().last()?.strip_prefix("exit code: ")?.trim().parse().ok()
}

static CARGO: LazyLock<Regex> = LazyLock::new(|| re(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored"));
static PYTEST: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^=+ (.*\d+ (?:passed|failed|skipped|error|errors).*?) (?:in [\d.]+s.*)?=+\s*$"));
static UNITTEST_RAN: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^Ran (\d+) tests? in"));
static UNITTEST_FAILED: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^FAILED \(([^)]*)\)"));
static UNITTEST_OK_SKIPPED: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^OK \(skipped=(\d+)\)"));
static JEST: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^Tests:\s+(.*\d+ total)"));
static VITEST: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^\s*Tests\s+(.*\(\d+\))\s*$"));
static GO: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^\s*--- (PASS|FAIL|SKIP): "));
static NUM_WORD: LazyLock<Regex> = LazyLock::new(|| re(r"(\d+) (passed|failed|skipped|errors?|todo|pending)"));
static KEY_NUM: LazyLock<Regex> = LazyLock::new(|| re(r"(failures|errors|skipped|expected failures|unexpected successes)=(\d+)"));

fn re(s: &str) -> Regex {
    Regex::new(s).unwrap_or_else(|e| panic!("bad built-in pattern {s}: {e}"))
}

/// Test counts, where the runner prints them: cargo test, pytest, Python unittest,
/// Jest/Vitest and go test -v.
pub fn counts(output: &str) -> Option<Counts> {
    let cargo: Vec<_> = CARGO.captures_iter(output).collect();
    if !cargo.is_empty() {
        let mut c = Counts::default();
        for m in cargo {
            c.passed += m[1].parse::<u64>().unwrap_or(0);
            c.failed += m[2].parse::<u64>().unwrap_or(0);
            c.skipped += m[3].parse::<u64>().unwrap_or(0);
        }
        return Some(c);
    }
    if let Some(line) = PYTEST.captures_iter(output).last().or_else(|| JEST.captures_iter(output).last()).or_else(|| VITEST.captures_iter(output).last()) {
        let mut c = Counts::default();
        for m in NUM_WORD.captures_iter(&line[1]) {
            let n: u64 = m[1].parse().unwrap_or(0);
            match &m[2] {
                "passed" => c.passed += n,
                "failed" | "error" | "errors" => c.failed += n,
                _ => c.skipped += n,
            }
        }
        return Some(c);
    }
    if let Some(ran) = UNITTEST_RAN.captures_iter(output).last() {
        let total: u64 = ran[1].parse().unwrap_or(0);
        let mut c = Counts::default();
        if let Some(f) = UNITTEST_FAILED.captures_iter(output).last() {
            for m in KEY_NUM.captures_iter(&f[1]) {
                let n: u64 = m[2].parse().unwrap_or(0);
                match &m[1] {
                    "failures" | "errors" | "unexpected successes" => c.failed += n,
                    _ => c.skipped += n,
                }
            }
        } else if let Some(s) = UNITTEST_OK_SKIPPED.captures_iter(output).last() {
            c.skipped = s[1].parse().unwrap_or(0);
        }
        c.passed = total.saturating_sub(c.failed + c.skipped);
        return Some(c);
    }
    let go: Vec<_> = GO.captures_iter(output).collect();
    if !go.is_empty() {
        let mut c = Counts::default();
        for m in go {
            match &m[1] {
                "PASS" => c.passed += 1,
                "FAIL" => c.failed += 1,
                _ => c.skipped += 1,
            }
        }
        return Some(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(passed: u64, failed: u64, skipped: u64) -> Option<Counts> {
        Some(Counts { passed, failed, skipped })
    }

    #[test]
    fn counts_are_read_from_common_runners() {
        let cargo = "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured\n\nrunning 2 tests\ntest result: FAILED. 1 passed; 1 failed; 0 ignored;\n";
        assert_eq!(counts(cargo), c(4, 1, 1));
        let pytest = "....F\n=========================== short test summary info ============================\nFAILED t.py::x\n==================== 1 failed, 4 passed, 2 skipped in 0.12s ====================\n";
        assert_eq!(counts(pytest), c(4, 1, 2));
        let unittest_fail = "..F.\n----------------------------------------------------------------------\nRan 4 tests in 0.001s\n\nFAILED (failures=1)\nexit code: 1";
        assert_eq!(counts(unittest_fail), c(3, 1, 0));
        let unittest_ok = "Ran 5 tests in 0.010s\n\nOK (skipped=1)\n";
        assert_eq!(counts(unittest_ok), c(4, 0, 1));
        let jest = "Tests:       1 failed, 2 skipped, 10 passed, 13 total\n";
        assert_eq!(counts(jest), c(10, 1, 2));
        let go = "=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n--- FAIL: TestB (0.00s)\n    --- PASS: TestB/sub (0.00s)\nFAIL\n";
        assert_eq!(counts(go), c(2, 1, 0));
        let vitest = " Test Files  1 failed | 1 passed (2)\n      Tests  1 failed | 3 passed | 1 skipped (5)\n   Start at  10:00:00\n";
        assert_eq!(counts(vitest), c(3, 1, 1));
        assert_eq!(counts("all good\n"), None);
        assert_eq!(exit_code("x\nexit code: 3"), Some(3));
    }
}
