//! `kodel task logs KEY [-f] [--since N]`: a task's events and its agent's work as
//! plain text, one line an event (or NDJSON with --json), for terminals and pipes.
//!
//! The history comes page by page from `/history`; `-f` then follows the task's stream
//! (crate::follow) from the last event read, so nothing is missed or printed twice.
//! When the stream loses its place, the history after the last event printed is read
//! again; an event already printed (by its number in the task) is not printed again.

use std::io::Write;

use kodel_core::api::{Event, Page};
use serde_json::Value;

use super::Ctx;
use crate::exit::CliError;
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
        format!("{} {:<3} {:<15} {}", ev.created_at.format("%H:%M:%S"), ev.seq, ev.kind, summary(&ev.kind, &ev.payload))
    };
    write_out(&format!("{line}\n"))
}

/// Live output (the model's words, a command's output) as it comes: the text itself.
fn print_live(json: bool, data: &str) -> Result<(), CliError> {
    if json {
        return write_out(&format!("{data}\n"));
    }
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    match v["payload"]["text"].as_str() {
        Some(text) => write_out(text),
        None => Ok(()),
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

pub fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.to_owned() }
}

fn short_id(v: &Value) -> String {
    v.as_str().map(|s| s.chars().take(8).collect()).unwrap_or_default()
}

/// What an event says, in a few words.
pub fn summary(kind: &str, p: &Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
    match kind {
        "task.created" => s("title"),
        "task.moved" => format!("{} -> {}", s("from"), s("to")),
        "comment.added" => first_line(&s("body"), 100),
        "job.created" => format!("{} job {} ({})", s("kind"), short_id(&p["job_id"]), s("template")),
        "job.started" => format!("{} job {} on agent {}, attempt {}", s("kind"), short_id(&p["job_id"]), short_id(&p["agent"]), p["attempt"]),
        "job.succeeded" => format!("{} job {}: {}", s("kind"), short_id(&p["job_id"]), first_line(&s("summary"), 100)),
        "job.failed" | "job.requeued" => format!("{} job {}: {}", s("kind"), short_id(&p["job_id"]), first_line(&s("error"), 120)),
        "job.cancelled" => format!("{} job {}: {}", s("kind"), short_id(&p["job_id"]), s("reason")),
        "job.llm_call" => {
            let ms = |v: &Value| v.as_u64().map_or("-".to_owned(), |n| format!("{n} ms"));
            let mut line = format!(
                "{} {}: {} in / {} out tokens, first token {}, total {}",
                s("model"),
                s("status"),
                p["input_tokens"],
                p["output_tokens"],
                ms(&p["first_token_ms"]),
                ms(&p["total_ms"])
            );
            if let Some(e) = p["error"].as_str() {
                line.push_str(&format!(" ({})", first_line(e, 200)));
            }
            line
        }
        "job.step" => {
            let step = &p["step"];
            match step["kind"].as_str() {
                Some("message") => format!("said: {}", first_line(step["text"].as_str().unwrap_or(""), 120)),
                _ => {
                    let input = first_line(&step["input"].to_string(), 80);
                    let output = first_line(step["output"].as_str().unwrap_or(""), 80);
                    let failed = if step["error"].as_bool() == Some(true) { " [error]" } else { "" };
                    format!("{} {input} -> {output} ({} ms){failed}", step["tool"].as_str().unwrap_or("?"), step["duration_ms"])
                }
            }
        }
        _ => first_line(&p.to_string(), 160),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_as_one_line_each() {
        let step = json!({"job_id": "01a2", "seq": 3, "step": {"kind": "tool", "tool": "bash", "input": {"command": "cargo test"},
                          "output": "\nrunning 3 tests\nok", "error": false, "duration_ms": 1200}});
        assert_eq!(summary("job.step", &step), r#"bash {"command":"cargo test"} -> running 3 tests (1200 ms)"#);
        let said = json!({"step": {"kind": "message", "text": "I will read the file.\nThen edit it."}});
        assert_eq!(summary("job.step", &said), "said: I will read the file.");
        assert_eq!(summary("task.moved", &json!({"from": "Ready", "to": "In Progress"})), "Ready -> In Progress");
        let long = "x".repeat(300);
        assert!(summary("comment.added", &json!({"body": long})).chars().count() <= 101);
    }
}
