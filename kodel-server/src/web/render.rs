//! Pieces of pages that are also sent alone as fragments (a card, a job's steps), and
//! the board's filter. Every value goes through maud's escaping: task text, comments and
//! agent output are hostile input.

use kodel_core::api::Task;
use kodel_core::jobs::{Artifact, ArtifactKind};
use maud::{Markup, html};
use serde_json::Value;

/// The board's filter: words (in the title or description), `#label`, `@assignee`
/// (the email's name part, an email, `@me` or `@none`). Every part must match.
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    words: Vec<String>,
    labels: Vec<String>,
    assignees: Vec<String>,
}

impl Filter {
    pub fn parse(q: &str) -> Filter {
        let mut f = Filter::default();
        for part in q.split_whitespace().take(20) {
            let part = part.to_lowercase();
            if let Some(label) = part.strip_prefix('#').filter(|l| !l.is_empty()) {
                f.labels.push(label.to_owned());
            } else if let Some(who) = part.strip_prefix('@').filter(|w| !w.is_empty()) {
                f.assignees.push(who.to_owned());
            } else {
                f.words.push(part);
            }
        }
        f
    }

    pub fn matches(&self, task: &Task, me: &str) -> bool {
        let text = format!("{}\n{}", task.title, task.description).to_lowercase();
        let assignee = task.assignee.as_deref().map(str::to_lowercase);
        self.words.iter().all(|w| text.contains(w.as_str()))
            && self.labels.iter().all(|l| task.labels.iter().any(|t| t.eq_ignore_ascii_case(l)))
            && self.assignees.iter().all(|who| match (who.as_str(), assignee.as_deref()) {
                ("none", a) => a.is_none(),
                ("me", a) => a.is_some_and(|a| a.eq_ignore_ascii_case(me)),
                (who, Some(a)) => a == who || a.split('@').next() == Some(who),
                (_, None) => false,
            })
    }
}

/// One card of the board.
pub fn card(org: &str, task: &Task, running: bool) -> Markup {
    html! {
        li.card id={ "card-" (task.key) } data-key=(task.key) data-n=(task.number) data-status=(task.status) {
            a href={ "/o/" (org) "/t/" (task.key) } {
                span.key { (task.key) }
                @if running { span.run title="an agent is working on it" { "● running" } }
                span.title { (task.title) }
            }
            span.meta {
                @if let Some(a) = &task.assignee { span.who { "@" (a.split('@').next().unwrap_or(a)) } }
                @for l in &task.labels { span.lbl { "#" (l) } }
            }
            button.mv type="button" data-move=(task.key) aria-label={ "Move " (task.key) } { "Move" }
        }
    }
}

/// One step of a job: what the model said, or a tool run with its input and (folded)
/// output; a failed tool run is marked.
pub fn step(seq: i32, step: &Value) -> Markup {
    let text = |k: &str| step.get(k).and_then(Value::as_str).unwrap_or("");
    html! {
        @match text("kind") {
            "message" => li.step.msg data-seq=(seq) { p { (text("text")) } },
            "tool" => {
                @let failed = step.get("error").and_then(Value::as_bool).unwrap_or(false);
                li.step.tool.err[failed] data-seq=(seq) {
                    details {
                        summary {
                            span.tool-name { (text("tool")) }
                            " " code { (summary(step.get("input"))) }
                            @if failed { " " span.badge.bad { "failed" } }
                            " " span.dim { (step.get("duration_ms").and_then(Value::as_u64).unwrap_or(0)) " ms" }
                        }
                        h4 { "Input" }
                        pre { (serde_json::to_string_pretty(step.get("input").unwrap_or(&Value::Null)).unwrap_or_default()) }
                        h4 { "Output" }
                        pre { (text("output")) }
                    }
                }
            },
            _ => li.step data-seq=(seq) { pre { (step.to_string()) } },
        }
    }
}

/// A tool call's input in one short line: its path, command or pattern.
fn summary(input: Option<&Value>) -> String {
    let Some(input) = input else { return String::new() };
    let line = ["command", "path", "pattern"]
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
        .map_or_else(|| input.to_string(), str::to_owned);
    let line = line.lines().next().unwrap_or("").to_owned();
    if line.chars().count() > 100 { format!("{}…", line.chars().take(100).collect::<String>()) } else { line }
}

/// A patch, line by line: added lines, removed lines and hunk headers told apart.
pub fn diff(patch: &str) -> Markup {
    html! {
        pre.diff {
            @for line in patch.lines() {
                @let class = if line.starts_with("+++") || line.starts_with("---") || line.starts_with("diff ") { "file" }
                    else if line.starts_with('+') { "add" }
                    else if line.starts_with('-') { "del" }
                    else if line.starts_with("@@") { "hunk" }
                    else { "ctx" };
                span class=(class) { (line) } "\n"
            }
        }
    }
}

/// The severities a review's finding may have (anything else the model wrote shows as a
/// note: it picks no style of its own).
const SEVERITIES: [&str; 4] = ["blocker", "major", "minor", "nit"];

/// What an artifact holds, shown for its kind.
pub fn artifact_body(a: &Artifact) -> Markup {
    let content = a.content.as_deref().unwrap_or("");
    html! {
        @match a.kind {
            ArtifactKind::Patch => (diff(content)),
            ArtifactKind::Review => {
                @let data = a.data.clone().unwrap_or(Value::Null);
                @if let Some(verdict) = data.get("verdict").and_then(Value::as_str) {
                    p { "Verdict: " strong { (verdict.replace('_', " ")) } }
                }
                @if let Some(findings) = data.get("findings").and_then(Value::as_array).filter(|f| !f.is_empty()) {
                    ul.findings {
                        @for f in findings {
                            li {
                                @let severity = f.get("severity").and_then(Value::as_str).filter(|s| SEVERITIES.contains(s)).unwrap_or("note");
                                span class={ "sev " (severity) } { (severity) }
                                " " code { (f.get("file").and_then(Value::as_str).unwrap_or("")) @if let Some(l) = f.get("line").and_then(Value::as_u64) { ":" (l) } }
                                " " (f.get("message").and_then(Value::as_str).unwrap_or(""))
                            }
                        }
                    }
                }
                pre.text { (content) }
            },
            ArtifactKind::TestReport => {
                @let data = a.data.clone().unwrap_or(Value::Null);
                @if let Some(passed) = data.get("passed").and_then(Value::as_bool) {
                    p { @if passed { span.badge.good { "tests passed" } } @else { span.badge.bad { "tests failed" } }
                        @if let Some(c) = data.get("command").and_then(Value::as_str) { " " code { (c) } }
                        @if let Some(counts) = data.get("counts") { " " span.dim { (counts.to_string()) } } }
                }
                pre.text { (content) }
            },
            _ => {
                @if let Some(r) = &a.reference { p { code { (r) } } }
                @if !content.is_empty() { pre.text { (content) } }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(title: &str, labels: &[&str], assignee: Option<&str>) -> Task {
        serde_json::from_value(serde_json::json!({
            "key": "KOD-1", "project": "KOD", "number": 1, "title": title, "description": "", "status": "Todo",
            "priority": "none", "labels": labels, "assignee": assignee, "version": 1, "archived": false,
            "created_by": null, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn the_filter_takes_words_labels_and_assignees() {
        let t = task("Fix the Login page", &["bug", "web"], Some("alice@example.com"));
        assert!(Filter::parse("login #bug @alice").matches(&t, "bob@example.com"));
        assert!(Filter::parse("").matches(&t, "x"));
        assert!(Filter::parse("@me").matches(&t, "alice@example.com"));
        assert!(!Filter::parse("@me").matches(&t, "bob@example.com"));
        assert!(!Filter::parse("#docs").matches(&t, "x"));
        assert!(!Filter::parse("logout").matches(&t, "x"));
        assert!(!Filter::parse("@none").matches(&t, "x"));
        assert!(Filter::parse("@none").matches(&task("x", &[], None), "x"));
    }

    fn artifact(kind: &str, content: &str, data: serde_json::Value) -> Artifact {
        serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::nil(), "job": uuid::Uuid::nil(), "task": "KOD-1", "kind": kind, "title": "t", "content": content,
            "reference": null, "data": data, "status": "pending", "decided_by": null, "decided_at": null, "comment": null,
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn artifacts_show_for_their_kind() {
        let patch = artifact_body(&artifact("patch", "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+<new>\n", serde_json::Value::Null)).into_string();
        assert!(patch.contains(r#"<span class="del">-old</span>"#) && patch.contains(r#"<span class="add">+&lt;new&gt;</span>"#), "{patch}");
        assert!(patch.contains(r#"<span class="hunk">@@ -1 +1 @@</span>"#));
        let report = artifact_body(&artifact("test_report", "2 passed", serde_json::json!({"passed": false, "command": "cargo test", "counts": {"failed": 1}}))).into_string();
        assert!(report.contains("tests failed") && report.contains("cargo test"), "{report}");
        let review = artifact_body(&artifact("review", "", serde_json::json!({"verdict": "request_changes", "findings": [{"file": "a.rs", "line": 3, "severity": "blocker", "message": "m"}]}))).into_string();
        assert!(review.contains("request changes") && review.contains(r#"class="sev blocker""#) && review.contains("a.rs:3"), "{review}");
    }

    #[test]
    fn hostile_text_is_escaped() {
        let t = task("<script>alert(1)</script>\"><img src=x onerror=alert(2)>", &["<b>"], Some("<i>@x"));
        let html = card("acme", &t, true).into_string();
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<b>") && !html.contains("<i>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        let s = step(1, &serde_json::json!({"kind": "tool", "tool": "bash", "input": {"command": "<script>"}, "output": "</pre><script>x</script>", "error": true, "duration_ms": 3}));
        assert!(!s.into_string().contains("<script>"));
    }
}
