//! The agent loop on its own, with a fake server on the other end of its link: where it
//! stops (the model is done, the step limit, the time limit) and what it reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kodel_agent::runner::{self, Link, LlmFailure, Outgoing};
use kodel_agent::sandbox::Sandbox;
use kodel_agent::tools::Workspace;
use kodel_core::llm::{FinishReason, LlmDone, Message, Role, ToolCall, Usage};
use kodel_core::protocol::{AgentMessage, AssignedJob, AssignedTask, AssignedTemplate, Assignment, Step};
use tokio::sync::mpsc;
use uuid::Uuid;

fn assignment(max_steps: i32, time_limit_secs: i32, tools: &[&str]) -> Assignment {
    Assignment {
        job: AssignedJob { id: Uuid::now_v7(), kind: kodel_core::jobs::JobKind::Implement, attempt: 1, first_seq: 0, earlier: None },
        task: AssignedTask { key: "KOD-1".into(), title: "Do it".into(), description: "All of it".into(), labels: vec![], priority: "none".into(), url: None },
        template: AssignedTemplate {
            name: "t".into(),
            prompt: String::new(),
            model: None,
            allowed_tools: tools.iter().map(|t| t.to_string()).collect(),
            max_steps,
            time_limit_secs,
            budget_tokens: None,
        },
        project: Default::default(),
        branch: String::new(),
        modules: vec![],
        instance_template: None,
        system_prompt: "You are a test.".into(),
    }
}

fn call(name: &str, args: &str) -> LlmDone {
    let calls = vec![ToolCall { id: format!("c-{}", Uuid::now_v7()), name: name.into(), arguments: args.into() }];
    LlmDone { message: Message { role: Role::Assistant, content: String::new(), tool_calls: calls, tool_call_id: None }, usage: Usage::default(), finish_reason: FinishReason::ToolCalls, model: "x/y".into() }
}

fn text(t: &str) -> LlmDone {
    LlmDone { message: Message::text(Role::Assistant, t), usage: Usage::default(), finish_reason: FinishReason::Stop, model: "x/y".into() }
}

/// Runs a job against scripted answers (`None`: never answer); returns what it reported
/// and the requests it made.
async fn run(a: Assignment, answers: Vec<Option<Result<LlmDone, LlmFailure>>>) -> (Vec<AgentMessage>, Vec<AgentMessage>) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::new(dir.path(), Sandbox::off()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = tokio::spawn(runner::run(a, ws, Link { tx }));
    let mut answers = answers.into_iter();
    let (mut reported, mut asked) = (Vec::new(), Vec::new());
    let mut parked = Vec::new();
    while let Some(out) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("the runner stalled") {
        match out {
            Outgoing::Reliable(m) => {
                let last = matches!(m, AgentMessage::Complete { .. } | AgentMessage::Error { .. });
                reported.push(m);
                if last {
                    break;
                }
            }
            Outgoing::Live(_) => {}
            Outgoing::Llm { message, reply, .. } => {
                asked.push(message);
                match answers.next().flatten() {
                    Some(answer) => {
                        let _ = reply.send(answer);
                    }
                    None => parked.push(reply),
                }
            }
        }
    }
    job.await.unwrap();
    (reported, asked)
}

#[tokio::test]
async fn the_job_ends_when_the_model_stops_calling_tools() {
    let (reported, asked) = run(
        assignment(10, 60, &["write_file"]),
        vec![Some(Ok(call("write_file", r#"{"path": "a.txt", "content": "x"}"#))), Some(Ok(text("All done.")))],
    )
    .await;
    assert_eq!(asked.len(), 2);
    let AgentMessage::LlmRequest { request, .. } = &asked[0] else { panic!() };
    assert_eq!(request.messages[0].role, Role::System);
    assert!(request.messages[1].content.contains("KOD-1: Do it") && request.messages[1].content.contains("All of it"));
    assert_eq!(request.tools.len(), 1, "only the template's tools are offered");
    let AgentMessage::LlmRequest { request, .. } = &asked[1] else { panic!() };
    assert_eq!(request.messages.last().unwrap().role, Role::Tool, "the tool's result goes back");
    assert!(matches!(&reported[0], AgentMessage::StepReport { seq: 0, step: Step::Tool { tool, error: false, .. }, .. } if tool == "write_file"));
    assert!(matches!(&reported[1], AgentMessage::StepReport { seq: 1, step: Step::Message { text }, .. } if text == "All done."));
    assert!(matches!(&reported[2], AgentMessage::Complete { summary, .. } if summary == "All done."));
}

#[tokio::test]
async fn the_step_limit_stops_a_model_that_never_finishes() {
    let answers = (0..5).map(|_| Some(Ok(call("bash", r#"{"command": "true"}"#)))).collect();
    let (reported, asked) = run(assignment(3, 60, &["bash"]), answers).await;
    assert_eq!(asked.len(), 3);
    match reported.last().unwrap() {
        AgentMessage::Error { error, retryable, .. } => {
            assert!(error.contains("3 steps"), "{error}");
            assert!(!retryable);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_time_limit_stops_a_job() {
    // The model never answers: the job's 1 s limit ends it.
    let (reported, _) = run(assignment(10, 1, &["bash"]), vec![None]).await;
    match reported.last().unwrap() {
        AgentMessage::Error { error, .. } => assert!(error.contains("time limit of 1 s"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tools_outside_the_template_and_bad_arguments_are_errors_the_model_sees() {
    let (reported, asked) = run(
        assignment(10, 60, &["read_file"]),
        vec![
            Some(Ok(call("bash", r#"{"command": "rm -rf /"}"#))),
            Some(Ok(call("read_file", "{not json"))),
            Some(Ok(text("I give up."))),
        ],
    )
    .await;
    let tool_steps: Vec<(String, bool, String)> = reported
        .iter()
        .filter_map(|m| match m {
            AgentMessage::StepReport { step: Step::Tool { tool, error, output, .. }, .. } => Some((tool.clone(), *error, output.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(tool_steps.len(), 2);
    assert!(tool_steps[0].1 && tool_steps[0].2.contains("not allowed"), "{tool_steps:?}");
    assert!(tool_steps[1].1, "{tool_steps:?}");
    let AgentMessage::LlmRequest { request, .. } = &asked[2] else { panic!() };
    assert!(request.messages.iter().filter(|m| m.role == Role::Tool).count() == 2);
}

#[tokio::test]
async fn a_model_that_cannot_be_reached_fails_the_job_with_the_reason() {
    let refused = LlmFailure { error: "provider openai is not configured".into(), retryable: false };
    let (reported, _) = run(assignment(10, 60, &["bash"]), vec![Some(Err(refused))]).await;
    match reported.last().unwrap() {
        AgentMessage::Error { error, retryable, .. } => {
            assert!(error.contains("not configured"), "{error}");
            assert!(!retryable);
        }
        other => panic!("{other:?}"),
    }
}
