//! review: the model reads the task branch's diff against the default branch, with the
//! project's review rules, and answers with a verdict and findings (file:line), which
//! become a review artifact: Markdown for people, the same as JSON in `data`.

use kodel_core::jobs::{ArtifactKind, NewArtifact};
use kodel_core::llm::{Message, Role};
use kodel_core::protocol::{Assignment, cap_middle};
use serde::{Deserialize, Serialize};

use super::git;
use super::workspace::Prepared;
use super::{Outcome, first_messages, with_modules};
use crate::runner::{self, Failed, Reporter};

/// The most diff the model is given in its first message (it can read the rest).
const MAX_DIFF_IN_PROMPT: usize = 200 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// approve or request_changes.
    pub verdict: String,
    pub summary: String,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub file: String,
    #[serde(default, deserialize_with = "line_number")]
    pub line: Option<u64>,
    /// blocker, major, minor or nit.
    #[serde(default = "default_severity")]
    pub severity: String,
    pub message: String,
}

/// A line as a number, or a text that starts with one ("12", "12-15", "L12").
fn line_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let digits: String = s.trim_start_matches(|c: char| !c.is_ascii_digit()).chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        }
        _ => None,
    })
}

fn default_severity() -> String {
    "minor".into()
}

const ANSWER_FORM: &str = r#"When you have reviewed the change, answer with only this JSON object (no other text):
{"verdict": "approve" or "request_changes",
 "summary": "two or three sentences on the change and its quality",
 "findings": [{"file": "path/in/repo", "line": 12, "severity": "blocker|major|minor|nit", "message": "what is wrong and what to do"}]}
Use "request_changes" when any finding is a blocker or major. Findings may be empty."#;

pub async fn run(a: &Assignment, p: &Prepared, rep: &mut Reporter) -> Result<Outcome, Failed> {
    let mut diff = String::new();
    for repo in p.repos.iter().filter(|r| r.had_branch) {
        let range = format!("origin/{}...HEAD", repo.module.default_branch);
        let out = repo.git(&["diff", "--no-color", "--no-ext-diff", "--no-textconv", &range], false).await?;
        if !out.ok {
            return Err((format!("module {:?}: cannot diff {} against {}: {}", repo.module.name, a.branch, repo.module.default_branch, git::cause(&out.output)), false));
        }
        if !out.output.trim().is_empty() {
            if p.repos.len() > 1 {
                diff.push_str(&format!("# module {} (directory {}/)\n", repo.module.name, repo.module.name));
            }
            diff.push_str(&out.output);
        }
    }
    if diff.trim().is_empty() {
        return Err((format!("branch {} has no changes against the default branch: there is nothing to review", a.branch), false));
    }
    let mut prompt = with_modules(a, p, runner::task_prompt(a));
    match a.project.review_rules.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(rules) => prompt.push_str(&format!("\n## The project's review rules\n\n{rules}\n")),
        None => prompt.push_str("\nThe project has no review rules of its own: review for correctness, tests, security and readability.\n"),
    }
    let shown = if diff.len() > MAX_DIFF_IN_PROMPT { cap_middle(&diff, MAX_DIFF_IN_PROMPT) } else { diff.clone() };
    prompt.push_str(&format!("\n## The change (git diff against the default branch)\n\n```diff\n{shown}\n```\n\n{ANSWER_FORM}\n"));
    let (answer, mut messages) = runner::converse(a, &p.ws, rep, first_messages(a, prompt)).await?;
    let review = match parse(&answer) {
        Ok(r) => r,
        Err(e) => {
            // One more chance to answer in the asked form.
            messages.push(Message::text(Role::User, format!("That answer could not be read: {e}. {ANSWER_FORM}")));
            let (again, _) = runner::converse(a, &p.ws, rep, messages).await?;
            parse(&again).map_err(|e| (format!("the model's review was not in the asked form ({e}); its answer was: {}", cap_middle(again.trim(), 2000)), false))?
        }
    };
    let verdict = if review.verdict == "approve" { "approve" } else { "changes requested" };
    let title = format!("Review: {verdict} ({} finding{})", review.findings.len(), if review.findings.len() == 1 { "" } else { "s" });
    let artifact = NewArtifact {
        kind: ArtifactKind::Review,
        title: Some(title),
        content: Some(markdown(&review)),
        reference: Some(a.branch.clone()),
        data: serde_json::to_value(&review).ok(),
    };
    Ok(Outcome { summary: review.summary.clone(), artifacts: vec![artifact] })
}

/// The review in the model's answer: a ```json fence's content, else the first JSON
/// object in the text that reads as a review.
pub fn parse(answer: &str) -> Result<Review, String> {
    let fenced = answer.split("```json").nth(1).and_then(|rest| rest.split("```").next());
    let mut last_err = "it holds no JSON object".to_owned();
    let candidates = fenced.into_iter().chain(answer.match_indices('{').map(|(i, _)| &answer[i..]));
    let mut found = None;
    for text in candidates {
        let Some(start) = text.find('{') else { continue };
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Review>();
        match stream.next() {
            Some(Ok(r)) => {
                found = Some(r);
                break;
            }
            Some(Err(e)) => last_err = format!("it is not the review JSON: {e}"),
            None => {}
        }
    }
    let mut review = found.ok_or(last_err)?;
    let verdict = review.verdict.trim().to_lowercase().replace([' ', '-'], "_");
    review.verdict = match verdict.as_str() {
        "approve" | "approved" | "accept" | "lgtm" => "approve".into(),
        "request_changes" | "changes_requested" | "reject" | "rejected" | "needs_changes" => "request_changes".into(),
        other => return Err(format!("verdict {other:?} is neither \"approve\" nor \"request_changes\"")),
    };
    review.findings.truncate(200);
    for f in &mut review.findings {
        f.severity = f.severity.trim().to_lowercase();
        if !matches!(f.severity.as_str(), "blocker" | "major" | "minor" | "nit") {
            f.severity = "minor".into();
        }
    }
    Ok(review)
}

fn markdown(r: &Review) -> String {
    let verdict = if r.verdict == "approve" { "approve" } else { "request changes" };
    let mut md = format!("**Verdict: {verdict}**\n\n{}\n", r.summary.trim());
    if !r.findings.is_empty() {
        md.push_str("\n## Findings\n\n");
        for f in &r.findings {
            let at = match f.line {
                Some(l) => format!("{}:{l}", f.file),
                None => f.file.clone(),
            };
            md.push_str(&format!("- `{at}` ({}): {}\n", f.severity, f.message.trim()));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_read_from_fenced_or_bare_json() {
        let fenced = "Here it is:\n```json\n{\"verdict\": \"Request changes\", \"summary\": \"s\", \"findings\": [{\"file\": \"a.py\", \"line\": 3, \"severity\": \"MAJOR\", \"message\": \"m\"}]}\n```";
        let r = parse(fenced).unwrap();
        assert_eq!(r.verdict, "request_changes");
        assert_eq!(r.findings[0].severity, "major");
        assert_eq!(r.findings[0].line, Some(3));
        assert!(parse("{\"verdict\": \"approve\", \"summary\": \"fine\"}").unwrap().findings.is_empty());
        assert!(parse("looks good to me").unwrap_err().contains("no JSON"));
        assert!(parse("{\"verdict\": \"maybe\", \"summary\": \"\"}").unwrap_err().contains("maybe"));
        let md = markdown(&r);
        assert!(md.contains("`a.py:3` (major): m"), "{md}");
        // Braces in prose before the JSON, a line as text, a verdict in other words.
        let prose = "The loop `for x in y { .. }` is fine. {\"verdict\": \"changes requested\", \"summary\": \"s\", \"findings\": [{\"file\": \"a.rs\", \"line\": \"12-15\", \"message\": \"m\"}]}";
        let r = parse(prose).unwrap();
        assert_eq!((r.verdict.as_str(), r.findings[0].line), ("request_changes", Some(12)));
    }
}
