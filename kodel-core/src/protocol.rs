//! The agent <-> server protocol: JSON text frames on `/api/v1/agent/ws`, one serde enum
//! per direction, tagged by `type`. See docs/agents.md for the life of a connection.
//!
//! Compatibility: an agent says its `protocol` in `agent.hello`; the server accepts
//! `MIN_PROTOCOL..=PROTOCOL` and refuses anything else with a close frame whose reason
//! the agent prints (`CLOSE_INCOMPATIBLE`).



use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::forge::Forge;
use crate::infra::{InstanceTemplate, RepoCredentials};
use crate::jobs::NewArtifact;
use crate::llm::{Delta, LlmDone, LlmRequest};

/// The protocol this build speaks, and the oldest the server still accepts.
pub const PROTOCOL: u32 = 1;
pub const MIN_PROTOCOL: u32 = 1;

/// The largest frame either side accepts (an `llm.request` carries the conversation).
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// The largest persisted tool output (head and tail are kept, the middle is cut).
pub const MAX_STEP_OUTPUT: usize = 64 * 1024;

/// Close codes (4000-4999 are the application's own).
pub const CLOSE_INCOMPATIBLE: u16 = 4000;
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 4002;
/// The server is going away (shutdown or restart): reconnect.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Agent -> server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AgentMessage {
    /// The first frame. `agent_id` and `job` are set on a reconnect: the agent asks to
    /// be the same agent and to go on with the job it was running.
    #[serde(rename = "agent.hello")]
    Hello {
        protocol: u32,
        name: String,
        version: String,
        #[serde(default)]
        labels: Vec<String>,
        /// What it can do (`tools:v1`; `container` and `dind`: see [`CAPABILITIES`]).
        #[serde(default)]
        capabilities: Vec<String>,
        /// The capabilities of [`CAPABILITIES`] it lacks, and why (shown in `kodel agent list`).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        missing: std::collections::BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<Uuid>,
        /// Disk the agent's workspaces take, bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_bytes: Option<u64>,
    },
    /// Keeps the connection and the lease of the running job alive.
    #[serde(rename = "heartbeat")]
    Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_bytes: Option<u64>,
    },
    #[serde(rename = "llm.request")]
    LlmRequest {
        job_id: Uuid,
        request_id: String,
        #[serde(flatten)]
        request: LlmRequest,
    },
    /// A finished step, persisted once per (job, seq): a re-sent step is ignored.
    #[serde(rename = "step.report")]
    StepReport { job_id: Uuid, seq: u32, step: Step },
    /// Live output of the step in progress (not persisted, coalesced for viewers).
    #[serde(rename = "step.output")]
    StepOutput { job_id: Uuid, seq: u32, text: String },
    #[serde(rename = "task.complete")]
    Complete {
        job_id: Uuid,
        summary: String,
        #[serde(default)]
        artifacts: Vec<NewArtifact>,
    },
    #[serde(rename = "task.error")]
    Error { job_id: Uuid, error: String, retryable: bool },
    /// The agent gives the job back unfinished (it is stopping): queued again at once,
    /// and the attempt does not count against the job.
    #[serde(rename = "task.release")]
    Release { job_id: Uuid, reason: String },
}

/// Server -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// `resume` is set when the agent asked to go on with a job it still holds: it
    /// re-sends the steps from `next_seq` on (earlier ones are stored).
    #[serde(rename = "agent.welcome")]
    Welcome {
        agent_id: Uuid,
        protocol: u32,
        heartbeat_secs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    #[serde(rename = "task.assigned")]
    Assigned(Box<Assignment>),
    /// The job's outcome (`task.complete` / `task.error`) is stored: the agent is idle.
    #[serde(rename = "task.ack")]
    Ack { job_id: Uuid },
    #[serde(rename = "llm.response.chunk")]
    LlmChunk { job_id: Uuid, request_id: String, delta: Delta },
    #[serde(rename = "llm.response.done")]
    LlmDone {
        job_id: Uuid,
        request_id: String,
        #[serde(flatten)]
        done: LlmDone,
    },
    #[serde(rename = "llm.response.error")]
    LlmError { job_id: Uuid, request_id: String, error: String, retryable: bool },
    /// Stop the job now (cancelled by a person, a rule, or the task moved on).
    #[serde(rename = "task.cancel")]
    Cancel { job_id: Uuid, reason: String },
    /// A frame the server could not take; the connection stays open.
    #[serde(rename = "error")]
    Error { code: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub job_id: Uuid,
    pub next_seq: u32,
}

/// Everything an agent needs to run a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: AssignedJob,
    pub task: AssignedTask,
    pub template: AssignedTemplate,
    #[serde(default)]
    pub project: AssignedProject,
    /// The branch the task's work lives on (`kodel/<KEY>-<slug>`), the same for every
    /// job of the task.
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub modules: Vec<AssignedModule>,
    #[serde(default)]
    pub instance_template: Option<InstanceTemplate>,
    /// The built-in (or SYSTEM_PROMPT) system prompt, followed by the template's prompt.
    pub system_prompt: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedJob {
    pub id: Uuid,
    pub kind: crate::jobs::JobKind,
    pub attempt: i32,
    /// The seq of this attempt's first step (earlier attempts' steps come before it).
    #[serde(default)]
    pub first_seq: u32,
    /// What earlier attempts did, step by step in short, when the job goes on after a
    /// pause (a budget ran out) or a lost agent: the model is told, so it goes on
    /// rather than starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignedProject {
    pub key: String,
    /// What a QA job runs.
    #[serde(default)]
    pub test_command: Option<String>,
    /// What a review job checks the change against.
    #[serde(default)]
    pub review_rules: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedTask {
    pub key: String,
    pub title: String,
    pub description: String,
    pub labels: Vec<String>,
    pub priority: String,
    /// The task's page in the web view (a pull request links to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedTemplate {
    pub name: String,
    pub prompt: String,
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub max_steps: i32,
    pub time_limit_secs: i32,
    /// Tokens (in + out) the job may spend; the proxy refuses calls beyond it.
    #[serde(default)]
    pub budget_tokens: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedModule {
    pub name: String,
    pub url: String,
    pub default_branch: String,
    pub path_prefix: String,
    /// For cloning and pushing over HTTP(S), and the forge's API. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RepoCredentials>,
    /// Where pull requests go (needs `credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<Forge>,
}

/// One step of a job, as the agent reports it and the task's events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// What the model said between tool calls.
    Message { text: String },
    /// A tool run: its input, its (capped) output, whether it failed.
    Tool {
        call_id: String,
        tool: String,
        input: serde_json::Value,
        output: String,
        #[serde(default)]
        error: bool,
        duration_ms: u64,
    },
}

/// Environment variables an agent must never pass to the commands it runs.
pub const SECRET_ENV: [&str; 6] =
    ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY", "KODEL_AGENT_TOKEN", "KODEL_TOKEN", "KODEL_JWT_SECRET"];

/// Cuts a text to at most `max` bytes, keeping its head and tail and saying how much
/// of the middle went.
pub fn cap_middle(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let half = max / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}\n[... {} bytes cut ...]\n{}", &text[..head], tail - head, &text[tail..])
}

/// Labels an agent offers must include all the labels a job asks for.
pub fn labels_match(job: &[String], agent: &[String]) -> bool {
    job.iter().all(|l| agent.contains(l))
}

/// Capabilities that decide which jobs an agent may take, with the label a job that
/// needs one carries: `container` (a Docker Engine runs jobs whose instance template
/// names a base image) and `dind` (docker-in-docker).
pub const CAPABILITIES: [(&str, &str); 2] = [("container", crate::infra::CONTAINER_LABEL), ("dind", crate::infra::DIND_LABEL)];

/// The labels an agent claims jobs with: its own (without Kodel's reserved ones, which
/// an agent cannot give itself) and one per capability it has.
pub fn claim_labels(labels: &[String], capabilities: &[String]) -> Vec<String> {
    let mut out: Vec<String> = labels.iter().filter(|l| !l.starts_with(crate::infra::RESERVED_LABEL_PREFIX)).cloned().collect();
    for (cap, label) in CAPABILITIES {
        if capabilities.iter().any(|c| c == cap) {
            out.push(label.to_owned());
        }
    }
    out
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Message, Role};

    #[test]
    fn frames_are_tagged_with_dot_names() {
        let hello = AgentMessage::Hello {
            protocol: PROTOCOL,
            name: "box".into(),
            version: "0.1.0".into(),
            labels: vec!["rust".into()],
            capabilities: vec![],
            missing: Default::default(),
            agent_id: None,
            job: None,
            disk_bytes: None,
        };
        let v = serde_json::to_value(&hello).unwrap();
        assert_eq!(v["type"], "agent.hello");
        let back: AgentMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, hello);

        let req = AgentMessage::LlmRequest {
            job_id: Uuid::nil(),
            request_id: "r1".into(),
            request: LlmRequest {
                messages: vec![Message::text(Role::User, "hi")],
                ..Default::default()
            },
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["type"], "llm.request");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(serde_json::from_value::<AgentMessage>(v).unwrap(), req);
    }

    #[test]
    fn unknown_frames_are_errors_not_panics() {
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"agent.dance"}"#).is_err());
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"heartbeat","job_id":7}"#).is_err());
        assert!(serde_json::from_str::<AgentMessage>("not json").is_err());
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let text = format!("{}{}", "a".repeat(1000), "é".repeat(1000));
        let cut = cap_middle(&text, 100);
        assert!(cut.len() < 200);
        assert!(cut.starts_with("aaa") && cut.ends_with("é"));
        assert!(cut.contains("bytes cut"));
        assert_eq!(cap_middle("short", 100), "short");
    }
}
