//! A task's story as the detail view shows it: its events, what the agent said (live as
//! it arrives, then as stored), each tool call with its input and output. Bounded: the
//! oldest entries go first, and the history is on the server to read again.

use std::collections::VecDeque;

use kodel_core::api::Event;
use kodel_core::events::{JobOutput, JobStep, OutputSource, TaskEvent};
use kodel_core::protocol::Step;
use serde_json::Value;

use crate::commands::logs::{first_line, summary};

/// Entries kept; older ones are dropped (the server has them).
pub const MAX_ENTRIES: usize = 2_000;
/// Bytes of text kept per entry (live output beyond this is cut).
pub const MAX_ENTRY_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A task event in a few words (moved, job started, an LLM call...).
    Event { time: String, kind: String, text: String, error: bool },
    /// What the model said; `live` while it is still coming.
    Said { job: String, text: String, live: bool },
    /// A tool call: its input in one line, its output (folded unless opened).
    Tool { job: String, seq: u64, tool: String, input: String, output: String, error: bool, live: bool, open: bool, ms: Option<u64> },
}

impl Entry {
    pub fn is_error(&self) -> bool {
        matches!(self, Entry::Event { error: true, .. } | Entry::Tool { error: true, .. })
    }

    /// The entry's text, for search.
    pub fn text(&self) -> String {
        match self {
            Entry::Event { kind, text, .. } => format!("{kind} {text}"),
            Entry::Said { text, .. } => text.clone(),
            Entry::Tool { tool, input, output, .. } => format!("{tool} {input}\n{output}"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Stream {
    pub entries: VecDeque<Entry>,
    /// The newest stored event read: the stream resumes after it.
    pub last_id: Option<i64>,
    pub last_seq: i32,
    /// Entries dropped off the front since the view opened.
    pub dropped: usize,
}

fn cap(text: &mut String) {
    if text.len() > MAX_ENTRY_TEXT {
        let mut cut = text.len() - MAX_ENTRY_TEXT;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.replace_range(..cut, "[... earlier output cut ...]\n");
    }
}

impl Stream {
    fn push(&mut self, e: Entry) {
        self.entries.push_back(e);
        while self.entries.len() > MAX_ENTRIES {
            self.entries.pop_front();
            self.dropped += 1;
        }
    }

    /// A stored event (from the history or the stream). Events already seen are skipped.
    pub fn event(&mut self, ev: &Event) {
        if self.last_id.is_some_and(|id| ev.id <= id) {
            return;
        }
        self.last_id = Some(ev.id);
        self.last_seq = self.last_seq.max(ev.seq);
        let typed = ev.typed();
        if let Some(TaskEvent::JobStep(s)) = &typed {
            self.step(s);
            return;
        }
        let error = match &typed {
            Some(TaskEvent::JobFailed(_) | TaskEvent::RuleFailed(_)) => true,
            Some(TaskEvent::JobLlmCall(call)) => call.status != "ok",
            _ => false,
        };
        self.push(Entry::Event { time: ev.created_at.format("%H:%M:%S").to_string(), kind: ev.kind.clone(), text: summary(ev), error });
    }

    /// A stored step: it replaces what streamed live of it.
    fn step(&mut self, s: &JobStep) {
        let job = s.job_id.to_string();
        let seq = u64::from(s.seq);
        match &s.step {
            Step::Message { text } => {
                let text = text.clone();
                if let Some(i) = self.entries.iter().rposition(|e| matches!(e, Entry::Said { job: j, live: true, .. } if *j == job)) {
                    self.entries[i] = Entry::Said { job, text, live: false };
                } else {
                    self.push(Entry::Said { job, text, live: false });
                }
            }
            Step::Tool { tool, input, output, error, duration_ms, .. } => {
                let mut output = output.clone();
                cap(&mut output);
                let entry = Entry::Tool {
                    job: job.clone(),
                    seq,
                    tool: tool.clone(),
                    input: tool_input(input),
                    output,
                    error: *error,
                    live: false,
                    open: false,
                    ms: Some(*duration_ms),
                };
                match self.entries.iter().rposition(|e| matches!(e, Entry::Tool { job: j, seq: s, live: true, .. } if *j == job && *s == seq)) {
                    Some(i) => {
                        let open = matches!(self.entries[i], Entry::Tool { open: true, .. });
                        self.entries[i] = entry;
                        if let Entry::Tool { open: o, .. } = &mut self.entries[i] {
                            *o = open;
                        }
                    }
                    None => self.push(entry),
                }
            }
        }
    }

    /// Live agent output (`job.output`): the model's words or a running tool's output.
    pub fn live(&mut self, out: &JobOutput) {
        let job = out.job_id.to_string();
        let text = out.text.as_str();
        match out.source {
            OutputSource::Model => {
                if let Some(Entry::Said { job: j, text: t, live: true }) = self.entries.back_mut()
                    && *j == job
                {
                    t.push_str(text);
                    cap(t);
                    return;
                }
                let mut text = text.to_owned();
                cap(&mut text);
                self.push(Entry::Said { job, text, live: true });
            }
            OutputSource::Tool => {
                let seq = u64::from(out.seq.unwrap_or(0));
                if let Some(Entry::Tool { output, .. }) = self.entries.iter_mut().rev().find(|e| matches!(e, Entry::Tool { job: j, seq: s, live: true, .. } if *j == job && *s == seq)) {
                    output.push_str(text);
                    cap(output);
                    return;
                }
                let mut output = text.to_owned();
                cap(&mut output);
                self.push(Entry::Tool { job, seq, tool: "output".into(), input: String::new(), output, error: false, live: true, open: true, ms: None });
            }
        }
    }

    /// Opens or folds a tool call's output.
    pub fn toggle(&mut self, i: usize) {
        if let Some(Entry::Tool { open, .. }) = self.entries.get_mut(i) {
            *open = !*open;
        }
    }
}

/// A tool's input as one line: the command, the path, or the JSON.
fn tool_input(input: &Value) -> String {
    for key in ["command", "path", "pattern"] {
        if let Some(v) = input[key].as_str() {
            return first_line(v, 200);
        }
    }
    first_line(&input.to_string(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(id: i64, kind: &str, payload: Value) -> Event {
        Event { id, kind: kind.into(), task: "KOD-1".into(), seq: id as i32, actor: None, payload, created_at: chrono::DateTime::UNIX_EPOCH }
    }

    /// The job of these tests.
    const J: &str = "0193a4c0-0000-7000-8000-000000000001";

    fn live(p: Value) -> JobOutput {
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn live_text_and_output_are_replaced_by_the_stored_steps() {
        let mut s = Stream::default();
        s.live(&live(json!({"job_id": J, "source": "model", "text": "I will "})));
        s.live(&live(json!({"job_id": J, "source": "model", "text": "run it."})));
        assert_eq!(s.entries.len(), 1);
        s.event(&ev(1, "job.step", json!({"job_id": J, "seq": 0, "step": {"kind": "message", "text": "I will run it."}})));
        assert_eq!(s.entries[0], Entry::Said { job: J.into(), text: "I will run it.".into(), live: false });
        s.live(&live(json!({"job_id": J, "seq": 1, "source": "tool", "text": "line 1\n"})));
        s.live(&live(json!({"job_id": J, "seq": 1, "source": "tool", "text": "line 2\n"})));
        assert!(matches!(&s.entries[1], Entry::Tool { output, live: true, .. } if output == "line 1\nline 2\n"));
        s.event(&ev(2, "job.step", json!({"job_id": J, "seq": 1, "step": {"kind": "tool", "call_id": "c1", "tool": "bash", "input": {"command": "make"}, "output": "line 1\nline 2\nexit code: 0", "error": false, "duration_ms": 5}})));
        assert_eq!(s.entries.len(), 2);
        assert!(matches!(&s.entries[1], Entry::Tool { tool, input, live: false, open: true, .. } if tool == "bash" && input == "make"));
        // A repeat (after a reconnect) is not shown twice.
        s.event(&ev(2, "job.step", json!({})));
        assert_eq!(s.entries.len(), 2);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut s = Stream::default();
        for i in 0..(MAX_ENTRIES as i64 + 50) {
            s.event(&ev(i + 1, "comment.added", json!({"body": "hi"})));
        }
        assert_eq!(s.entries.len(), MAX_ENTRIES);
        assert_eq!(s.dropped, 50);
        s.live(&live(json!({"job_id": J, "seq": 9, "source": "tool", "text": "x".repeat(MAX_ENTRY_TEXT * 3)})));
        s.live(&live(json!({"job_id": J, "seq": 9, "source": "tool", "text": "tail"})));
        let Entry::Tool { output, .. } = s.entries.back().unwrap() else { panic!() };
        assert!(output.len() <= MAX_ENTRY_TEXT + 40 && output.ends_with("tail"));
    }
}
