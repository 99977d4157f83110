//! The TUI's network side: each effect runs in its own task and answers with messages
//! on the channel the event loop reads, so drawing never waits for the server. The org's
//! and the open task's event streams are followed with crate::follow: they reconnect by
//! themselves and resume after the last event they saw, so nothing is missed and
//! nothing comes twice.

use kodel_core::events::TaskEvent;
use std::time::Duration;

use kodel_core::api::{Comment, Event, Org, Page, Project, Task};
use kodel_core::infra::Agent;
use kodel_core::jobs::{Artifact, Job};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::app::{Conn, Effect, Msg};
use crate::client::Client;
use crate::commands::org::enc;
use crate::exit::CliError;
use crate::follow::{Follower, Update};

type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Net {
    /// Every request and stream has a clone: a token one of them refreshed is every one's.
    api: Client,
    tx: UnboundedSender<Msg>,
    org: String,
    org_stream: Option<JoinHandle<()>>,
    task_stream: Option<JoinHandle<()>>,
    /// Changes (moves, edits, comments, decisions) go one after another, in the order
    /// they were made: `>` pressed twice is two moves, the second after the first.
    writes: UnboundedSender<Work>,
    writer: JoinHandle<()>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in [self.org_stream.take(), self.task_stream.take()].into_iter().flatten() {
            h.abort();
        }
        self.writer.abort();
    }
}

/// How long a request may take before it is given up (streams excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn send<T: DeserializeOwned>(api: &Client, method: Method, path: &str, body: Option<Value>) -> Result<T, CliError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, api.send(method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(CliError::new(crate::exit::UNAVAILABLE, format!("the server did not answer within {} s", REQUEST_TIMEOUT.as_secs()))),
    }
}

async fn get<T: DeserializeOwned>(api: &Client, path: &str) -> Result<T, CliError> {
    send(api, Method::GET, path, None).await
}

async fn post<T: DeserializeOwned>(api: &Client, path: &str, body: Value) -> Result<T, CliError> {
    send(api, Method::POST, path, Some(body)).await
}

impl Net {
    pub fn new(api: Client, tx: UnboundedSender<Msg>, org: String) -> Net {
        let (writes, mut queue) = tokio::sync::mpsc::unbounded_channel::<Work>();
        let writer = tokio::spawn(async move {
            while let Some(work) = queue.recv().await {
                work.await;
            }
        });
        Net { api, tx, org, org_stream: None, task_stream: None, writes, writer }
    }

    pub fn set_org(&mut self, org: &str) {
        self.org = org.to_owned();
    }

    fn base(&self) -> String {
        format!("/api/v1/orgs/{}", enc(&self.org))
    }

    /// Runs `work` in a task; its error becomes a `Failed` message.
    fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = Result<Msg, CliError>> + Send + 'static,
    {
        tokio::spawn(answer(self.tx.clone(), work));
    }

    /// Queues a change behind the earlier ones.
    fn write<F>(&self, work: F)
    where
        F: std::future::Future<Output = Result<Msg, CliError>> + Send + 'static,
    {
        let _ = self.writes.send(Box::pin(answer(self.tx.clone(), work)));
    }

    pub fn run(&mut self, effect: Effect) {
        let api = self.api.clone();
        let base = self.base();
        let org = self.org.clone();
        match effect {
            Effect::LoadOrgs => self.spawn(async move { Ok(Msg::Orgs(get::<Page<Org>>(&api, "/api/v1/orgs").await?.data)) }),
            Effect::LoadProjects => self.spawn(async move { Ok(Msg::Projects { org, projects: get::<Page<Project>>(&api, &format!("{base}/projects")).await?.data }) }),
            Effect::OpenProject(key) => self.spawn(async move {
                let project: Project = match get(&api, &format!("{base}/projects/{}", enc(&key))).await {
                    Ok(p) => p,
                    // A remembered project that is gone (or of another org): the list,
                    // from which the first one opens.
                    Err(e) if e.code == crate::exit::NOT_FOUND => {
                        return Ok(Msg::Projects { org, projects: get::<Page<Project>>(&api, &format!("{base}/projects")).await?.data });
                    }
                    Err(e) => return Err(e),
                };
                let mut tasks = Vec::new();
                let mut cursor: Option<String> = None;
                // Every task of the project, a page at a time (bounded: 20 pages).
                for _ in 0..20 {
                    let mut path = format!("{base}/projects/{}/tasks?limit=200", enc(&key));
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={}", enc(c)));
                    }
                    let page: Page<Task> = get(&api, &path).await?;
                    tasks.extend(page.data);
                    cursor = page.next_cursor;
                    if cursor.is_none() {
                        break;
                    }
                }
                let mut running: Vec<Job> = get::<Page<Job>>(&api, &format!("{base}/jobs?status=running")).await?.data;
                running.extend(get::<Page<Job>>(&api, &format!("{base}/jobs?status=pending")).await?.data);
                Ok(Msg::Board { org, project, tasks, running })
            }),
            Effect::FollowOrg => {
                if let Some(h) = self.org_stream.take() {
                    h.abort();
                }
                let tx = self.tx.clone();
                self.org_stream = Some(tokio::spawn(follow(api, format!("{base}/events"), None, tx, None)));
            }
            Effect::RefreshTask(key) => self.spawn(async move { Ok(Msg::Task(get(&api, &format!("{base}/tasks/{}", enc(&key))).await?)) }),
            Effect::OpenTask(key) => {
                self.run(Effect::ReloadDetail(key.clone()));
                if let Some(h) = self.task_stream.take() {
                    h.abort();
                }
                let tx = self.tx.clone();
                self.task_stream = Some(tokio::spawn(async move {
                    // The history first, page by page, then the stream from where it ended.
                    let mut after = 0;
                    let mut last_id = None;
                    loop {
                        let page: Page<Event> = match get(&api, &format!("{base}/tasks/{}/history?after={after}&limit=500", enc(&key))).await {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = tx.send(Msg::Failed(format!("the task's history could not be read: {}", e.message)));
                                break;
                            }
                        };
                        if let Some(last) = page.data.last() {
                            after = last.seq;
                            last_id = Some(last.id);
                        }
                        let more = page.next_cursor.is_some() && !page.data.is_empty();
                        let _ = tx.send(Msg::History { key: key.clone(), events: page.data });
                        if !more {
                            break;
                        }
                    }
                    follow(api, format!("{base}/tasks/{}/events", enc(&key)), last_id, tx, Some(key)).await;
                }));
            }
            Effect::ReloadDetail(key) => self.spawn(async move {
                let k = enc(&key);
                let task: Task = get(&api, &format!("{base}/tasks/{k}")).await?;
                // Every comment, a page at a time (bounded: the newest 1,000).
                let mut comments: Vec<Comment> = Vec::new();
                let mut cursor = String::new();
                for _ in 0..5 {
                    let page: Page<Comment> = get(&api, &format!("{base}/tasks/{k}/comments?limit=200&cursor={}", enc(&cursor))).await?;
                    comments.extend(page.data);
                    match page.next_cursor {
                        Some(c) => cursor = c,
                        None => break,
                    }
                }
                let jobs = get::<Page<Job>>(&api, &format!("{base}/jobs?task={k}")).await?.data;
                let artifacts = get::<Page<Artifact>>(&api, &format!("{base}/artifacts?task={k}")).await?.data;
                Ok(Msg::Detail { key, task, comments, jobs, artifacts })
            }),
            Effect::CloseTask => {
                if let Some(h) = self.task_stream.take() {
                    h.abort();
                }
            }
            Effect::Move { key, to } => {
                let tx = self.tx.clone();
                self.write(async move {
                    match post::<Task>(&api, &format!("{base}/tasks/{}/move", enc(&key)), json!({ "status": to })).await {
                        Ok(t) => Ok(Msg::Moved(t)),
                        Err(e) => {
                            // Shown moved already: put it back where the server has it.
                            let task = get::<Task>(&api, &format!("{base}/tasks/{}", enc(&key))).await.ok();
                            let _ = tx.send(Msg::MoveUndone { key, task });
                            Err(e)
                        }
                    }
                })
            }
            Effect::Create { project, body } => self.write(async move {
                let t: Task = post(&api, &format!("{base}/projects/{}/tasks", enc(&project)), body).await?;
                Ok(Msg::Saved(t))
            }),
            Effect::Update { key, body } => self.write(async move {
                let t: Task = send(&api, Method::PATCH, &format!("{base}/tasks/{}", enc(&key)), Some(body)).await?;
                Ok(Msg::Saved(t))
            }),
            Effect::Comment { key, body } => self.write(async move {
                let _: Comment = post(&api, &format!("{base}/tasks/{}/comments", enc(&key)), json!({ "body": body })).await?;
                Ok(Msg::Done(format!("commented on {key}")))
            }),
            Effect::Decide { id, approve, comment } => self.write(async move {
                let verb = if approve { "approve" } else { "reject" };
                let a: Artifact = post(&api, &format!("{base}/artifacts/{id}/{verb}"), json!({ "comment": comment })).await?;
                Ok(Msg::Done(format!("{} {}", if approve { "approved" } else { "rejected" }, a.title)))
            }),
            Effect::LoadAgents => self.spawn(async move { Ok(Msg::Agents(get::<Page<Agent>>(&api, &format!("{base}/agents")).await?.data)) }),
            Effect::LoadTemplates => self.spawn(async move {
                let page: Page<kodel_core::jobs::JobTemplate> = get(&api, &format!("{base}/job-templates")).await?;
                Ok(Msg::Templates(page.data.into_iter().map(|t| (t.name, t.kind.to_string())).collect()))
            }),
            Effect::StartJob { key, template } => self.write(async move {
                let job: Job = post(&api, &format!("{base}/jobs"), json!({ "task": key, "template": template })).await?;
                Ok(Msg::Done(format!("started a {} job on {key}", job.kind)))
            }),
            Effect::LoadJobs => self.spawn(async move { Ok(Msg::Jobs(get::<Page<Job>>(&api, &format!("{base}/jobs?limit=200")).await?.data)) }),
            Effect::LoadUsage => self.spawn(async move {
                let by_day = get(&api, &format!("{base}/usage?group_by=day")).await?;
                let by_model = get(&api, &format!("{base}/usage?group_by=model")).await?;
                Ok(Msg::Usage { by_day: Box::new(by_day), by_model: Box::new(by_model) })
            }),
            // Handled by the event loop (they touch the terminal or the settings file).
            Effect::Edit(_) | Effect::SaveSettings => {}
        }
    }
}

/// Sends what `work` gave, or its error as a `Failed` message.
async fn answer<F>(tx: UnboundedSender<Msg>, work: F)
where
    F: std::future::Future<Output = Result<Msg, CliError>>,
{
    let msg = match work.await {
        Ok(m) => m,
        Err(e) => Msg::Failed(match e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message,
        }),
    };
    let _ = tx.send(msg);
}

/// Follows a stream until aborted: the org's, or with `task` that task's.
async fn follow(api: Client, path: String, last_id: Option<i64>, tx: UnboundedSender<Msg>, task: Option<String>) {
    let mut stream = Follower::new(api, path, last_id);
    loop {
        let msg = match (stream.next().await, &task) {
            (Ok(Update::Connected), None) => Msg::Conn(Conn::Live),
            (Ok(Update::Event(event)), None) => Msg::OrgEvent(event),
            (Ok(Update::Event(event)), Some(key)) => Msg::TaskEvent { key: key.clone(), event },
            (Ok(Update::Live(data)), Some(key)) => {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                match TaskEvent::from_parts(v["type"].as_str().unwrap_or_default(), v["payload"].clone()) {
                    Some(TaskEvent::JobOutput(output)) => Msg::Live { key: key.clone(), output },
                    // Output this version does not know: nothing to show.
                    _ => continue,
                }
            }
            (Ok(Update::Resync), None) => Msg::Resync,
            (Ok(Update::Resync), Some(key)) => Msg::TaskResync(key.clone()),
            (Ok(Update::Lost { attempt, error, .. }), None) => Msg::Conn(Conn::Retrying { attempt, error }),
            // The org's stream is the connection the header shows: it keeps trying.
            (Err(e), None) => Msg::Conn(Conn::Retrying { attempt: stream.attempt(), error: e.message }),
            // A task's stream refused (the task is gone, or no longer visible) ends.
            (Err(e), Some(_)) => {
                let _ = tx.send(Msg::Failed(format!("the task's events cannot be followed: {}", e.message)));
                return;
            }
            (Ok(Update::Connected | Update::Live(_) | Update::Lost { .. }), _) => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}
