//! One job, start to end: ask the model, run the tools it calls, report each step,
//! until the model stops calling tools (done), or the step or time limit is reached.

use std::time::{Duration, Instant};

use kodel_core::llm::{LlmDone, LlmRequest, Message, Role, TextCalls, ToolCall, text_tool_calls};
use kodel_core::protocol::{AgentMessage, Assignment, Step};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::tools::{self, Workspace};

/// How the runner reaches the server; the connection keeps what must arrive until it
/// is delivered, across reconnects.
#[derive(Clone)]
pub struct Link {
    pub tx: mpsc::UnboundedSender<Outgoing>,
}

pub enum Outgoing {
    /// Must arrive (steps, the outcome): kept and sent again after a reconnect.
    Reliable(AgentMessage),
    /// Only useful now (live output): dropped while disconnected.
    Live(AgentMessage),
    /// An LLM call; the answer (or why there is none) comes back on `reply`.
    Llm { request_id: String, message: AgentMessage, reply: oneshot::Sender<Result<LlmDone, LlmFailure>> },
}

#[derive(Debug, Clone)]
pub struct LlmFailure {
    pub error: String,
    pub retryable: bool,
}

/// Live tool output is sent at most this often, in frames of at most this size.
const LIVE_WINDOW: Duration = Duration::from_millis(50);
const LIVE_MAX: usize = 16 * 1024;

/// How often a failed LLM call is tried again, and the longest wait between tries.
const LLM_ATTEMPTS: u32 = 6;
const LLM_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Link {
    fn reliable(&self, msg: AgentMessage) {
        let _ = self.tx.send(Outgoing::Reliable(msg));
    }

    async fn llm(&self, job_id: Uuid, request: &LlmRequest) -> Result<LlmDone, LlmFailure> {
        let mut wait = Duration::from_millis(500);
        let mut last = LlmFailure { error: "no attempt made".into(), retryable: false };
        for attempt in 1..=LLM_ATTEMPTS {
            let request_id = Uuid::now_v7().to_string();
            let (reply, answer) = oneshot::channel();
            let message = AgentMessage::LlmRequest { job_id, request_id: request_id.clone(), request: request.clone() };
            if self.tx.send(Outgoing::Llm { request_id, message, reply }).is_err() {
                return Err(LlmFailure { error: "the agent is shutting down".into(), retryable: true });
            }
            match answer.await {
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(f)) if f.retryable && attempt < LLM_ATTEMPTS => {
                    tracing::warn!(error = %f.error, attempt, "LLM call failed; trying again in {:?}", wait);
                    last = f;
                }
                Ok(Err(f)) => return Err(f),
                Err(_) => return Err(LlmFailure { error: "the agent is shutting down".into(), retryable: true }),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LLM_MAX_BACKOFF);
        }
        Err(last)
    }
}

/// Why a job stopped short: the message people see, and whether another attempt may
/// do better.
pub type Failed = (String, bool);

/// Numbers the job's steps and sends them, and the live output of the step in progress.
pub struct Reporter {
    link: Link,
    job_id: Uuid,
    seq: u32,
}

/// Live output of one step: send text on `tx`; `done()` waits for the last of it.
pub struct Live {
    pub tx: mpsc::UnboundedSender<String>,
    forward: tokio::task::JoinHandle<()>,
}

impl Live {
    pub async fn done(self) {
        drop(self.tx);
        let _ = self.forward.await;
    }
}

impl Reporter {
    pub fn new(link: Link, job_id: Uuid, first_seq: u32) -> Reporter {
        Reporter { link, job_id, seq: first_seq }
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn step(&mut self, step: Step) {
        self.link.reliable(AgentMessage::StepReport { job_id: self.job_id, seq: self.seq, step });
        self.seq += 1;
    }

    /// A step that is not a model's tool call (git, the setup script, the test command).
    pub fn action(&mut self, tool: &str, command: &str, output: &str, error: bool, started: Instant) {
        self.step(Step::Tool {
            call_id: format!("kodel-{}", self.seq),
            tool: tool.to_owned(),
            input: serde_json::json!({ "command": command }),
            output: output.to_owned(),
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }

    /// Forwards live output for the next step, gathered for a short window so a chatty
    /// command sends a few frames a second, not one per line.
    pub fn live(&self) -> Live {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let link = self.link.clone();
        let (job_id, seq) = (self.job_id, self.seq);
        let forward = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut text = first;
                let until = tokio::time::Instant::now() + LIVE_WINDOW;
                let mut open = true;
                while text.len() < LIVE_MAX {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(more)) => text.push_str(&more),
                        Ok(None) => {
                            open = false;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = link.tx.send(Outgoing::Live(AgentMessage::StepOutput { job_id, seq, text }));
                if !open {
                    break;
                }
            }
        });
        Live { tx, forward }
    }
}

/// The job's first message: what the task asks.
pub fn task_prompt(a: &Assignment) -> String {
    let mut p = format!("Task {}: {}\n", a.task.key, a.task.title);
    if !a.task.description.trim().is_empty() {
        p.push('\n');
        p.push_str(a.task.description.trim());
        p.push('\n');
    }
    if !a.task.labels.is_empty() {
        p.push_str(&format!("\nLabels: {}\n", a.task.labels.join(", ")));
    }
    if let Some(earlier) = a.job.earlier.as_deref().filter(|e| !e.trim().is_empty()) {
        p.push_str(
            "\nThis job was stopped before it finished (a budget ran out, or its agent was lost) and now goes on. \
             What was done before, step by step (files changed then may not be changed in this workspace: check \
             before you rely on them):\n",
        );
        p.push_str(earlier);
        p.push('\n');
    }
    p
}

/// Runs the job as a plain conversation in `workspace` and sends its outcome
/// (`task.complete` or `task.error`).
pub async fn run(assignment: Assignment, workspace: Workspace, link: Link) {
    let job_id = assignment.job.id;
    let limit = Duration::from_secs(assignment.template.time_limit_secs.max(1) as u64);
    let mut rep = Reporter::new(link.clone(), job_id, assignment.job.first_seq);
    let first = vec![Message::text(Role::System, assignment.system_prompt.clone()), Message::text(Role::User, task_prompt(&assignment))];
    let outcome = match tokio::time::timeout(limit, converse(&assignment, &workspace, &mut rep, first)).await {
        Ok(outcome) => outcome.map(|(summary, _)| summary),
        Err(_) => Err(time_limit(limit)),
    };
    let msg = match outcome {
        Ok(summary) => AgentMessage::Complete { job_id, summary, artifacts: Vec::new() },
        Err((error, retryable)) => AgentMessage::Error { job_id, error, retryable },
    };
    link.reliable(msg);
}

pub fn time_limit(limit: Duration) -> Failed {
    (format!("the job's time limit of {} s was reached", limit.as_secs()), false)
}

/// The loop: ask the model, run the tools it calls, report each step, until it stops
/// calling tools. Gives back its last words and the whole conversation.
pub async fn converse(a: &Assignment, ws: &Workspace, rep: &mut Reporter, mut messages: Vec<Message>) -> Result<(String, Vec<Message>), Failed> {
    let job_id = a.job.id;
    let specs = tools::specs(&a.template.allowed_tools);
    let max_steps = a.template.max_steps.max(1) as u32;
    for _ in 0..max_steps {
        let request = LlmRequest { messages: messages.clone(), tools: specs.clone(), ..Default::default() };
        // The proxy's message names the cause (unreachable, refused, timed out...).
        let done = rep.link.llm(job_id, &request).await.map_err(|f| (f.error, f.retryable))?;
        let mut message = done.message;
        if !message.content.trim().is_empty() {
            rep.step(Step::Message { text: message.content.clone() });
        }
        if message.tool_calls.is_empty() {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            match text_tool_calls(&message.content, &known) {
                TextCalls::None => {}
                TextCalls::Found(calls) => {
                    let n = calls.len();
                    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
                    rep.step(Step::Message {
                        text: format!(
                            "[kodel] The model wrote {} as text instead of calling the tool{}; running {} as {}.",
                            names.join(", "),
                            if n == 1 { "" } else { "s" },
                            if n == 1 { "it" } else { "them" },
                            if n == 1 { "a call" } else { "calls" },
                        ),
                    });
                    // The conversation goes on as if it had called them (ids unique
                    // across the conversation).
                    let turn = messages.len();
                    message.content.clear();
                    message.tool_calls = calls.into_iter().enumerate().map(|(i, c)| ToolCall { id: format!("text_call_{turn}_{i}"), ..c }).collect();
                }
                TextCalls::Unreadable(shown) => {
                    return Err((format!("the model answered in text instead of calling a tool, and the call it wrote could not be read: {shown:?}"), false));
                }
            }
        }
        let calls = message.tool_calls.clone();
        messages.push(message.clone());
        if calls.is_empty() {
            return Ok((message.content, messages));
        }
        for call in calls {
            let started = Instant::now();
            let live = rep.live();
            let out = if a.template.allowed_tools.iter().any(|t| t == &call.name) {
                tools::run(ws, &call.name, &call.arguments, Some(&live.tx)).await
            } else {
                tools::ToolOutput { output: format!("tool {:?} is not allowed for this job; use one of: {}", call.name, a.template.allowed_tools.join(", ")), error: true }
            };
            live.done().await;
            let input: Value = serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments.clone()));
            rep.step(Step::Tool {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                input,
                output: out.output.clone(),
                error: out.error,
                duration_ms: started.elapsed().as_millis() as u64,
            });
            messages.push(Message::tool_result(call.id, out.output));
            if let Some(why) = ws.failure() {
                return Err((why, false));
            }
        }
    }
    Err((format!("stopped after {max_steps} steps without finishing (the template's max_steps)"), false))
}
