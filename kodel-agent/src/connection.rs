//! The agent's side of the WebSocket: connect (with backoff), say hello, run what the
//! server assigns, heartbeat, and keep what must arrive until it has.
//!
//! A dropped connection does not stop the job: its steps wait in the outbox, its LLM
//! call fails as retryable and is asked again, and after the reconnect the server says
//! which steps it already has (`resume.next_seq`). If the server no longer gives the
//! job to this agent, the job stops here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kodel_core::protocol::{
    AgentMessage, Assignment, CLOSE_INCOMPATIBLE, CLOSE_UNAUTHORIZED, MAX_FRAME_BYTES, PROTOCOL, ServerMessage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http};
use uuid::Uuid;

use crate::job::workspace::Workspaces;
use crate::job::{self, JobEnv};
use crate::runner::{Link, LlmFailure, Outgoing};
use crate::sandbox::Sandbox;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The server's base URL (http://, https://, ws:// or wss://).
    pub server: String,
    pub token: String,
    pub workdir: PathBuf,
    pub labels: Vec<String>,
    pub name: String,
    pub sandbox: Sandbox,
    /// How long a failed job's workspace is kept for inspection.
    pub keep_failed: Duration,
    /// The most disk the workspaces may take together, bytes.
    pub max_disk: u64,
    /// Keep every job's workspace (debugging).
    pub keep_workspaces: bool,
    /// Let modules be cloned from file:// URLs (repositories on the agent's host).
    pub allow_file_remotes: bool,
    /// Where jobs' resource limits are applied (cgroups), or why they cannot be.
    pub limits: crate::limits::Setup,
    /// The Docker Engine jobs with a base image run on, when one answered.
    pub engine: Option<crate::container::Engine>,
    /// What the agent cannot run (`container`, `dind`), and why: the server shows it.
    pub missing: std::collections::BTreeMap<String, String>,
}

/// Why the agent stopped for good (it does not reconnect after these).
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("the server refused this agent: {0}")]
    Refused(String),
    #[error("{0}")]
    Config(String),
}

/// The job this agent runs.
struct Job {
    id: Uuid,
    handle: JoinHandle<()>,
}

struct Agent {
    cfg: AgentConfig,
    agent_id: Option<Uuid>,
    job: Option<Job>,
    /// Reliable messages not yet known to be stored by the server.
    outbox: Vec<AgentMessage>,
    /// LLM calls waiting for their answer, by request id.
    pending: HashMap<String, Pending>,
    link_tx: mpsc::UnboundedSender<Outgoing>,
    env: JobEnv,
    /// Set when the agent is asked to stop.
    stopping: watch::Receiver<bool>,
}

struct Pending {
    reply: oneshot::Sender<Result<kodel_core::llm::LlmDone, LlmFailure>>,
}

/// The ws:// URL of the agent endpoint.
pub fn ws_url(server: &str) -> Result<String, Fatal> {
    let base = server.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(Fatal::Config(format!("--server {server:?} must start with http://, https://, ws:// or wss://")));
    };
    Ok(format!("{rest}/api/v1/agent/ws"))
}

/// Runs until `stop` resolves or the server refuses the agent. A job running at the stop
/// is given back to the queue at once (`task.error`, retryable).
pub async fn run(cfg: AgentConfig, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), Fatal> {
    let url = ws_url(&cfg.server)?;
    std::fs::create_dir_all(&cfg.workdir).map_err(|e| Fatal::Config(format!("cannot create the work dir {}: {e}", cfg.workdir.display())))?;
    let (stop_tx, mut stopping) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    let workspaces = Arc::new(Workspaces::open(&cfg.workdir, cfg.keep_failed, cfg.max_disk, cfg.keep_workspaces, cfg.allow_file_remotes).map_err(Fatal::Config)?);
    workspaces.prune().await;
    if let (Some(engine), Ok(dir)) = (&cfg.engine, std::fs::canonicalize(&cfg.workdir)) {
        engine.remove_leftovers(&dir).await;
    }
    let env = JobEnv { workspaces, sandbox: cfg.sandbox.clone(), toolchain_env: toolchain_env(), limits: cfg.limits.clone(), engine: cfg.engine.clone() };
    let mut agent = Agent { cfg, agent_id: None, job: None, outbox: Vec::new(), pending: HashMap::new(), link_tx, env, stopping: stopping.clone() };
    let mut backoff = Duration::from_millis(250);
    loop {
        if agent.session(&url, &mut link_rx).await? {
            backoff = Duration::from_millis(250);
        }
        if *stopping.borrow() {
            agent.stop_job();
            return Ok(());
        }
        // Every LLM call in flight is lost with the connection: its runner asks again.
        for (_, p) in agent.pending.drain() {
            let _ = p.reply.send(Err(LlmFailure { error: "the connection to the server was lost".into(), retryable: true }));
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 250);
        tracing::warn!("disconnected from the server; reconnecting in {:?}", backoff + jitter);
        tokio::select! {
            _ = stopping.changed() => {
                agent.stop_job();
                return Ok(());
            }
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Agent {
    /// One connection, from connect to close. Ok(true) if it got as far as the welcome.
    async fn session(&mut self, url: &str, link_rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Result<bool, Fatal> {
        let mut request = url.into_client_request().map_err(|e| Fatal::Config(format!("bad server URL {url}: {e}")))?;
        let auth = http::HeaderValue::from_str(&format!("Bearer {}", self.cfg.token)).map_err(|_| Fatal::Config("the agent token has characters a header cannot carry".into()))?;
        request.headers_mut().insert(http::header::AUTHORIZATION, auth);
        let config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES)).max_frame_size(Some(MAX_FRAME_BYTES));
        let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == http::StatusCode::UNAUTHORIZED => {
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                return Err(Fatal::Refused(format!("401 unauthorized: the agent token is unknown, revoked or expired {body}")));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the server at {url}");
                return Ok(false);
            }
        };
        let hello = AgentMessage::Hello {
            protocol: PROTOCOL,
            name: self.cfg.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.cfg.labels.clone(),
            capabilities: std::iter::once("tools:v1".to_owned()).chain(self.cfg.engine.iter().flat_map(|e| e.capabilities())).collect(),
            missing: self.cfg.missing.clone(),
            agent_id: self.agent_id,
            job: self.job.as_ref().map(|j| j.id),
            disk_bytes: Some(self.env.workspaces.disk()),
        };
        if send(&mut ws, &hello).await.is_err() {
            return Ok(false);
        }
        let welcome = match ws.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str::<ServerMessage>(&text).ok(),
            Some(Ok(Message::Close(Some(frame)))) => {
                refusal(frame.code.into(), &frame.reason)?;
                return Ok(false);
            }
            _ => None,
        };
        let Some(ServerMessage::Welcome { agent_id, heartbeat_secs, resume, .. }) = welcome else {
            tracing::warn!("the server did not welcome the agent; reconnecting");
            return Ok(false);
        };
        self.agent_id = Some(agent_id);
        match (&self.job, resume) {
            (Some(job), Some(r)) if r.job_id == job.id => {
                tracing::info!(job = %job.id, next_seq = r.next_seq, "reconnected; going on with the job");
                self.outbox.retain(|m| !matches!(m, AgentMessage::StepReport { seq, .. } if *seq < r.next_seq));
            }
            (Some(job), _) => {
                tracing::warn!(job = %job.id, "reconnected, but the job is no longer this agent's; stopping it");
                self.stop_job();
            }
            (None, _) => tracing::info!(agent = %agent_id, "connected; waiting for work"),
        }
        for msg in self.outbox.clone() {
            if send(&mut ws, &msg).await.is_err() {
                return Ok(true);
            }
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(heartbeat_secs.max(1) as u64));
        heartbeat.reset();
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerMessage>(&text) {
                        Ok(msg) => self.handle(msg),
                        Err(e) => tracing::warn!(error = %e, "a frame from the server was not understood; ignored"),
                    },
                    Some(Ok(Message::Close(frame))) => {
                        if let Some(frame) = frame {
                            refusal(frame.code.into(), &frame.reason)?;
                            tracing::info!(reason = %frame.reason, "the server closed the connection");
                        }
                        return Ok(true);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "connection error");
                        return Ok(true);
                    }
                    None => return Ok(true),
                },
                Some(out) = link_rx.recv() => {
                    let msg = match out {
                        Outgoing::Reliable(msg) => {
                            self.outbox.push(msg.clone());
                            msg
                        }
                        Outgoing::Live(msg) => msg,
                        Outgoing::Llm { request_id, message, reply } => {
                            self.pending.insert(request_id, Pending { reply });
                            message
                        }
                    };
                    if send(&mut ws, &msg).await.is_err() {
                        return Ok(true);
                    }
                }
                _ = self.stopping.changed() => {
                    self.give_back(&mut ws).await;
                    let _ = ws.close(None).await;
                    return Ok(true);
                }
                _ = heartbeat.tick() => {
                    let beat = AgentMessage::Heartbeat { job_id: self.job.as_ref().map(|j| j.id), disk_bytes: Some(self.env.workspaces.disk()) };
                    if send(&mut ws, &beat).await.is_err() {
                        return Ok(true);
                    }
                }
            }
        }
    }

    fn handle(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::Assigned(a) => self.start_job(*a),
            ServerMessage::LlmChunk { .. } => {}
            ServerMessage::LlmDone { request_id, done, .. } => {
                if let Some(p) = self.pending.remove(&request_id) {
                    let _ = p.reply.send(Ok(done));
                }
            }
            ServerMessage::LlmError { request_id, error, retryable, .. } => {
                if let Some(p) = self.pending.remove(&request_id) {
                    let _ = p.reply.send(Err(LlmFailure { error, retryable }));
                }
            }
            ServerMessage::Cancel { job_id, reason } => {
                if self.job.as_ref().is_some_and(|j| j.id == job_id) {
                    tracing::info!(job = %job_id, reason = %reason, "job cancelled");
                    self.stop_job();
                }
            }
            ServerMessage::Ack { job_id } => {
                tracing::info!(job = %job_id, "job finished");
                self.outbox.retain(|m| job_of(m) != Some(job_id));
                if self.job.as_ref().is_some_and(|j| j.id == job_id) {
                    self.job = None;
                }
            }
            ServerMessage::Error { code, message } => tracing::warn!(code = %code, "the server says: {message}"),
            ServerMessage::Welcome { .. } => {}
        }
    }

    fn start_job(&mut self, a: Assignment) {
        if self.job.is_some() {
            tracing::warn!(job = %a.job.id, "assigned a job while busy; ignored (the server re-queues it)");
            return;
        }
        let id = a.job.id;
        tracing::info!(job = %id, task = %a.task.key, template = %a.template.name, "job assigned");
        let link = Link { tx: self.link_tx.clone() };
        let handle = tokio::spawn(job::run(a, self.env.clone(), link));
        self.job = Some(Job { id, handle });
    }

    /// Stopping with a job: it goes back to the queue now rather than when its lease
    /// runs out. Waits briefly for the server to take it.
    async fn give_back(&mut self, ws: &mut Socket) {
        let Some(job) = self.job.take() else { return };
        job.handle.abort();
        let reason = format!("kodel-agent {:?} was stopped during the job; queued again", self.cfg.name);
        if send(ws, &AgentMessage::Release { job_id: job.id, reason }).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Text(text) = frame
                    && matches!(serde_json::from_str(&text), Ok(ServerMessage::Ack { job_id }) if job_id == job.id)
                {
                    tracing::info!(job = %job.id, "the job went back to the queue");
                    return;
                }
            }
        })
        .await;
    }

    fn stop_job(&mut self) {
        if let Some(job) = self.job.take() {
            job.handle.abort();
            self.outbox.retain(|m| job_of(m) != Some(job.id));
        }
    }
}

/// Where the agent's own toolchains live. Commands run with HOME set to the
/// workspace, so tools found through HOME (rustup, cargo) are pointed at the agent's.
fn toolchain_env() -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for (var, dir) in [("RUSTUP_HOME", ".rustup"), ("CARGO_HOME", ".cargo")] {
        let value = std::env::var(var).ok().or_else(|| {
            let d = home.as_ref()?.join(dir);
            d.is_dir().then(|| d.to_string_lossy().into_owned())
        });
        if let Some(v) = value {
            env.insert(var.to_owned(), v);
        }
    }
    for var in ["GOROOT", "GOPATH", "JAVA_HOME"] {
        if let Ok(v) = std::env::var(var) {
            env.insert(var.to_owned(), v);
        }
    }
    env
}

fn job_of(m: &AgentMessage) -> Option<Uuid> {
    match m {
        AgentMessage::StepReport { job_id, .. } | AgentMessage::Complete { job_id, .. } | AgentMessage::Error { job_id, .. } => Some(*job_id),
        _ => None,
    }
}

/// Close codes that mean "do not come back".
fn refusal(code: u16, reason: &str) -> Result<(), Fatal> {
    if code == CLOSE_INCOMPATIBLE || code == CLOSE_UNAUTHORIZED {
        return Err(Fatal::Refused(reason.to_owned()));
    }
    Ok(())
}

async fn send(ws: &mut Socket, msg: &AgentMessage) -> Result<(), ()> {
    let text = serde_json::to_string(msg).map_err(|_| ())?;
    ws.send(Message::Text(text.into())).await.map_err(|e| tracing::debug!(error = %e, "send failed"))
}
