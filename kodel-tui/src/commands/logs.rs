//! `kodel task logs KEY [-f] [--since N]`: a task's events and its agent's work as
//! plain text, one line an event (or NDJSON with --json), for terminals and pipes.
//!
//! The history comes page by page from `/history`; `-f` then follows the task's stream
//! (crate::follow) from the last event read, so nothing is missed or printed twice.
//! When the stream loses its place, the history after the last event printed is read
//! again; an event already printed (by its number in the task) is not printed again.

use std::io::Write;

use kodel_core::api::{Event, Page};
use kodel_core::events::TaskEvent;
use kodel_core::protocol::Step;

use super::Ctx;
use crate::exit::CliError;
use crate::output::short_id;
use crate::follow::{Follower, Update};

pub async fn run(ctx: &mut Ctx, task: &str, follow: bool, since: Option<i32>) -> Result<(), CliError> {
    let mut after = since.unwrap_or(0);
    let last_id = history(ctx, task, &mut after).await?;
    if !follow {
        return Ok(());
    }
    let mut stream = Follower::new(ctx.client.clone(), format!("{task}/events"), last_id);
    loop {
        match stream.next().await? {
            Update::Connected => {}
            Update::Event(ev) if ev.seq > after => {
                print_event(ctx.json, &ev)?;
                after = ev.seq;
            }
            Update::Event(_) => {}
            Update::Live(data) => print_live(ctx.json, &data)?,
            Update::Resync => {
                eprintln!("kodel: the event stream lost its place; reading the history after event {after} again");
                if let Some(id) = history(ctx, task, &mut after).await? {
                    stream.resume_after(id);
                }
            }
            Update::Lost { error, retry_in, .. } => eprintln!("kodel: {error}; reconnecting in {:.1} s", retry_in.as_secs_f32()),
        }
    }
}

/// Prints the task's events after number `after`, page by page, moving `after` on; the
/// id of the last one printed.
async fn history(ctx: &Ctx, task: &str, after: &mut i32) -> Result<Option<i64>, CliError> {
    let mut last_id = None;
    loop {
        let page: Page<Event> = ctx.client.get(&format!("{task}/history?after={after}&limit=500")).await?;
        for ev in &page.data {
            print_event(ctx.json, ev)?;
            *after = ev.seq;
            last_id = Some(ev.id);
        }
        if page.next_cursor.is_none() || page.data.is_empty() {
            return Ok(last_id);
        }
    }
}

/// One stored event: a line of text, or its JSON.
fn print_event(json: bool, ev: &Event) -> Result<(), CliError> {
    let line = if json {
        serde_json::to_string(ev).unwrap_or_default()
    } else {
        format!("{} {:<3} {:<15} {}", ev.created_at.format("%H:%M:%S"), ev.seq, ev.kind, summary(ev))
    };
    write_out(&format!("{line}\n"))
}

/// Live output (the model's words, a command's output) as it comes: the text itself.
fn print_live(json: bool, data: &str) -> Result<(), CliError> {
    if json {
        return write_out(&format!("{data}\n"));
    }
    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    match TaskEvent::from_parts(v["type"].as_str().unwrap_or_default(), v["payload"].clone()) {
        Some(TaskEvent::JobOutput(output)) => write_out(&output.text),
        _ => Ok(()),
    }
}

fn write_out(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the command quietly.
    if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
    Ok(())
}

/// An error on one line and whole (up to 2,000 characters): what to do about it often
/// comes after its first sentence, so it is never cut where people read it.
pub fn whole(s: &str) -> String {
    let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 2000 { format!("{}…", text.chars().take(2000).collect::<String>()) } else { text }
}

pub fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.to_owned() }
}

/// What an event says, in a few words.
pub fn summary(ev: &Event) -> String {
    let Some(typed) = ev.typed() else { return first_line(&ev.payload.to_string(), 160) };
    match typed {
        TaskEvent::TaskCreated(e) => e.title,
        TaskEvent::TaskMoved(m) => format!("{} -> {}", m.from, m.to),
        TaskEvent::CommentAdded(c) => first_line(&c.body, 100),
        TaskEvent::JobCreated(j) => format!("{} job {} ({})", j.kind, short_id(&j.job_id), j.template),
        TaskEvent::JobStarted(j) => format!("{} job {} on agent {}, attempt {}", j.kind, short_id(&j.job_id), short_id(&j.agent), j.attempt),
        TaskEvent::JobSucceeded(j) => format!("{} job {}: {}", j.kind, short_id(&j.job_id), first_line(&j.summary, 100)),
        TaskEvent::JobFailed(j) | TaskEvent::JobRequeued(j) => format!("{} job {}: {}", j.kind, short_id(&j.job_id), whole(&j.error)),
        TaskEvent::JobCancelled(j) => format!("{} job {}: {}", j.kind, short_id(&j.job_id), j.reason),
        TaskEvent::JobLlmCall(c) => {
            let ms = |v: Option<u64>| v.map_or("-".to_owned(), |n| format!("{n} ms"));
            let mut line = format!(
                "{} {}: {} in / {} out tokens, first token {}, total {}",
                c.model,
                c.status,
                c.input_tokens,
                c.output_tokens,
                ms(c.first_token_ms),
                ms(c.total_ms)
            );
            if let Some(e) = &c.error {
                line.push_str(&format!(" ({})", whole(e)));
            }
            line
        }
        TaskEvent::JobStep(s) => match s.step {
            Step::Message { text } => format!("said: {}", first_line(&text, 120)),
            Step::Tool { tool, input, output, error, duration_ms, .. } => {
                let input = first_line(&input.to_string(), 80);
                let output = first_line(&output, 80);
                let failed = if error { " [error]" } else { "" };
                format!("{tool} {input} -> {output} ({duration_ms} ms){failed}")
            }
        },
        TaskEvent::TaskUpdated(u) | TaskEvent::TaskArchived(u) | TaskEvent::TaskUnarchived(u) => changes(&u.changes),
        TaskEvent::ArtifactApproved(a) | TaskEvent::ArtifactRejected(a) => {
            let comment = a.comment.as_deref().map(|c| format!(": {}", first_line(c, 100))).unwrap_or_default();
            format!("{} of job {}{comment}", a.kind.as_str(), short_id(&a.job_id))
        }
        TaskEvent::RuleFired(r) => format!("rule {:?} on {}{}", r.rule, r.on, if r.dry_run { " (dry run)" } else { "" }),
        TaskEvent::RuleFailed(r) => format!("rule {:?}: {}", r.rule, whole(&r.error)),
        TaskEvent::RuleCascadeStopped(r) => format!("rule {:?} on {}: {}", r.rule, r.on, r.reason),
        TaskEvent::WebhookDelivered(w) => format!("{} answered {} (attempt {})", w.url, w.status, w.attempt),
        TaskEvent::WebhookFailed(w) => format!("{} (attempt {}): {}{}", w.url, w.attempt, whole(&w.error), if w.will_retry { "; will retry" } else { "" }),
        _ => first_line(&ev.payload.to_string(), 160),
    }
}

/// A task's changed fields in words: `priority: low -> high; labels: - -> bug, web`.
fn changes(changes: &std::collections::BTreeMap<String, kodel_core::events::Change>) -> String {
    use serde_json::Value;
    let shown = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => first_line(s, 40),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => first_line(&items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(", "), 60),
        other => first_line(&other.to_string(), 40),
    };
    changes
        .iter()
        .map(|(field, c)| match field.as_str() {
            // Long text: that it changed is what a line can say.
            "description" => "description changed".to_owned(),
            _ => format!("{field}: {} -> {}", shown(&c.from), shown(&c.to)),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, payload: serde_json::Value) -> Event {
        Event { id: 1, kind: kind.into(), task: "KOD-1".into(), seq: 1, actor: None, payload, created_at: chrono::DateTime::UNIX_EPOCH }
    }

    #[test]
    fn events_read_as_one_line_each() {
        let job = "01a2b3c4-0000-7000-8000-000000000001";
        let step = json!({"job_id": job, "seq": 3, "step": {"kind": "tool", "call_id": "c1", "tool": "bash", "input": {"command": "cargo test"},
                          "output": "\nrunning 3 tests\nok", "error": false, "duration_ms": 1200}});
        assert_eq!(summary(&ev("job.step", step)), r#"bash {"command":"cargo test"} -> running 3 tests (1200 ms)"#);
        let said = json!({"job_id": job, "seq": 4, "step": {"kind": "message", "text": "I will read the file.\nThen edit it."}});
        assert_eq!(summary(&ev("job.step", said)), "said: I will read the file.");
        assert_eq!(summary(&ev("task.moved", json!({"from": "Ready", "to": "In Progress"}))), "Ready -> In Progress");
        let long = "x".repeat(300);
        let comment = json!({"comment_id": job, "body": long});
        assert!(summary(&ev("comment.added", comment)).chars().count() <= 101);
        // Field changes read as words, not JSON.
        let updated = json!({"changes": {"priority": {"from": "low", "to": "high"}, "labels": {"from": [], "to": ["bug", "web"]},
                             "assignee": {"from": null, "to": "ada@example.com"}, "description": {"from": "a", "to": "b"}}});
        assert_eq!(summary(&ev("task.updated", updated)), "assignee: - -> ada@example.com; description changed; labels: - -> bug, web; priority: low -> high");
        // An event this version does not know still reads as its payload.
        assert_eq!(summary(&ev("task.teleported", json!({"to": "Mars"}))), r#"{"to":"Mars"}"#);
    }
}
