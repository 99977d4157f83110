//! The TUI's network side: each effect runs in its own task and answers with messages
//! on the channel the event loop reads, so drawing never waits for the server. The org's
//! and the open task's event streams reconnect by themselves and resume after the last
//! event they saw (`last_event_id`), so nothing is missed and nothing comes twice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kodel_core::api::{Comment, Event, Org, Page, Project, Task};
use kodel_core::infra::Agent;
use kodel_core::jobs::{Artifact, Job};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::app::{Conn, Effect, Msg};
use crate::client::{Client, decode};
use crate::commands::org::enc;
use crate::exit::CliError;
use crate::sse::SseParser;

/// One client for every request: a refreshed token is seen by all of them.
pub type Api = Arc<Mutex<Client>>;

pub struct Net {
    api: Api,
    tx: UnboundedSender<Msg>,
    org: String,
    org_stream: Option<JoinHandle<()>>,
    task_stream: Option<JoinHandle<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in [self.org_stream.take(), self.task_stream.take()].into_iter().flatten() {
            h.abort();
        }
    }
}

async fn get<T: DeserializeOwned>(api: &Api, path: &str) -> Result<T, CliError> {
    api.lock().await.get(path).await
}

impl Net {
    pub fn new(api: Api, tx: UnboundedSender<Msg>, org: String) -> Net {
        Net { api, tx, org, org_stream: None, task_stream: None }
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
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let msg = match work.await {
                Ok(m) => m,
                Err(e) => Msg::Failed(match e.hint {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message,
                }),
            };
            let _ = tx.send(msg);
        });
    }

    pub fn run(&mut self, effect: Effect) {
        let api = self.api.clone();
        let base = self.base();
        match effect {
            Effect::LoadOrgs => self.spawn(async move { Ok(Msg::Orgs(get::<Page<Org>>(&api, "/api/v1/orgs").await?.data)) }),
            Effect::LoadProjects => self.spawn(async move { Ok(Msg::Projects(get::<Page<Project>>(&api, &format!("{base}/projects")).await?.data)) }),
            Effect::OpenProject(key) => self.spawn(async move {
                let project: Project = get(&api, &format!("{base}/projects/{}", enc(&key))).await?;
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
                Ok(Msg::Board { project, tasks, running })
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
                        let page: Result<Page<Event>, _> = get(&api, &format!("{base}/tasks/{}/history?after={after}&limit=500", enc(&key))).await;
                        let Ok(page) = page else { break };
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
                let comments = get::<Page<Comment>>(&api, &format!("{base}/tasks/{k}/comments")).await?.data;
                let jobs = get::<Page<Job>>(&api, &format!("{base}/jobs?task={k}")).await?.data;
                let artifacts = get::<Page<Artifact>>(&api, &format!("{base}/artifacts?task={k}")).await?.data;
                Ok(Msg::Detail { key, task, comments, jobs, artifacts })
            }),
            Effect::CloseTask => {
                if let Some(h) = self.task_stream.take() {
                    h.abort();
                }
            }
            Effect::Move { key, to } => self.spawn(async move {
                let t: Task = api.lock().await.post(&format!("{base}/tasks/{}/move", enc(&key)), json!({ "status": to })).await?;
                Ok(Msg::Task(t))
            }),
            Effect::Create { project, body } => self.spawn(async move {
                let t: Task = api.lock().await.post(&format!("{base}/projects/{}/tasks", enc(&project)), body).await?;
                Ok(Msg::Saved(t))
            }),
            Effect::Update { key, body } => self.spawn(async move {
                let t: Task = api.lock().await.patch(&format!("{base}/tasks/{}", enc(&key)), body).await?;
                Ok(Msg::Saved(t))
            }),
            Effect::Comment { key, body } => self.spawn(async move {
                let _: Comment = api.lock().await.post(&format!("{base}/tasks/{}/comments", enc(&key)), json!({ "body": body })).await?;
                Ok(Msg::Done(format!("commented on {key}")))
            }),
            Effect::Decide { id, approve, comment } => self.spawn(async move {
                let verb = if approve { "approve" } else { "reject" };
                let a: Artifact = api.lock().await.post(&format!("{base}/artifacts/{id}/{verb}"), json!({ "comment": comment })).await?;
                Ok(Msg::Done(format!("{} {}", if approve { "approved" } else { "rejected" }, a.title)))
            }),
            Effect::LoadAgents => self.spawn(async move { Ok(Msg::Agents(get::<Page<Agent>>(&api, &format!("{base}/agents")).await?.data)) }),
            Effect::LoadJobs => self.spawn(async move { Ok(Msg::Jobs(get::<Page<Job>>(&api, &format!("{base}/jobs?limit=200")).await?.data)) }),
            // Handled by the event loop (they touch the terminal or the settings file).
            Effect::Edit(_) | Effect::SaveSettings => {}
        }
    }
}

/// Follows an SSE stream until aborted: reconnects with backoff, resuming after the
/// last stored event. `task`: the task's stream (else the org's).
async fn follow(api: Api, path: String, mut last_id: Option<i64>, tx: UnboundedSender<Msg>, task: Option<String>) {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        let url = match last_id {
            Some(id) => format!("{path}?last_event_id={id}"),
            None => path.clone(),
        };
        let resp = {
            let mut client = api.lock().await;
            match client.raw(Method::GET, &url, None).await {
                // An expired access token: one authenticated request refreshes it.
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => match client.get::<Value>("/api/v1/me").await {
                    Ok(_) => client.raw(Method::GET, &url, None).await,
                    Err(e) => Err(e),
                },
                other => other,
            }
        };
        let error = match resp {
            Ok(r) if r.status().is_success() => {
                attempt = 0;
                backoff = Duration::from_millis(250);
                if task.is_none() {
                    let _ = tx.send(Msg::Conn(Conn::Live));
                    // With no event seen yet there is nothing to resume from: what
                    // changed while the stream was away is read again instead.
                    if last_id.is_none() {
                        let _ = tx.send(Msg::Resync);
                    }
                }
                let mut body = r.bytes_stream();
                let mut parser = SseParser::default();
                while let Some(Ok(chunk)) = body.next().await {
                    for ev in parser.push(&chunk) {
                        if ev.kind == "resync" {
                            let _ = tx.send(Msg::Resync);
                            continue;
                        }
                        match (ev.id, &task) {
                            (Some(id), _) => {
                                last_id = Some(id);
                                let Ok(event) = serde_json::from_str::<Event>(&ev.data) else { continue };
                                let _ = tx.send(match &task {
                                    Some(key) => Msg::TaskEvent { key: key.clone(), event },
                                    None => Msg::OrgEvent(event),
                                });
                            }
                            (None, Some(key)) => {
                                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                                let _ = tx.send(Msg::Live { key: key.clone(), payload: v["payload"].clone() });
                            }
                            (None, None) => {}
                        }
                    }
                }
                "the event stream ended".to_owned()
            }
            Ok(r) => match decode::<Value>(r).await {
                Err(e) => e.message,
                Ok(_) => "unexpected answer".to_owned(),
            },
            Err(e) => e.message,
        };
        attempt += 1;
        if task.is_none() {
            let _ = tx.send(Msg::Conn(Conn::Retrying { attempt, error }));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
