//! One agent's WebSocket connection, a protocol adapter: the hello (enrolment in the
//! registry, `hub::agents`), then a loop that turns the agent's frames into calls of
//! the engine (`engine::jobs`: steps, outcome, release, lease renewal) and of the LLM
//! relay (`hub::relay`), and the hub's controls (assign, cancel, replaced) into frames.
//! Parsing and bounding what an agent sends is `hub::frames`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use kodel_core::OrgSlug;
use kodel_core::events::{JobOutput, OutputSource};
use kodel_core::protocol::{
    AgentMessage, CLOSE_GOING_AWAY, CLOSE_INCOMPATIBLE, CLOSE_PROTOCOL_ERROR, CLOSE_UNAUTHORIZED, MIN_PROTOCOL, PROTOCOL, Resume, ServerMessage,
    Step, cap_middle,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Control;
use super::agents::{self, Status};
use super::frames::{bounded, close, close_for, log_bad_frame, parse_frame, send};
use super::relay;
use crate::AppState;
use crate::db::OrgTx;
use crate::engine::jobs;
use crate::error::{ApiError, ApiResult};

/// The highest step number an agent may report.
const MAX_SEQ: u32 = 1_000_000;

/// Close code for "the server failed; reconnect" (RFC 6455 internal error).
const CLOSE_SERVER_ERROR: u16 = 1011;

/// Close code for a connection replaced by a newer one of the same agent.
const CLOSE_REPLACED: u16 = 4003;

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The org and enrollment token an agent connected with.
#[derive(Debug, Clone)]
pub struct AgentToken {
    pub org_id: Uuid,
    pub slug: OrgSlug,
    pub token_id: Uuid,
}

/// The job a connection's agent is running.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub id: Uuid,
    pub task_id: Uuid,
    pub task_key: String,
    pub project_id: Uuid,
    pub template_model: Option<String>,
    /// The template's token budget, and what the job has spent (kept here: one
    /// connection runs the job, so no query is needed before each call).
    pub budget: Option<i64>,
    pub used: Arc<AtomicU64>,
}

struct Conn {
    state: AppState,
    token: AgentToken,
    agent_id: Uuid,
    labels: Vec<String>,
    job: Option<Running>,
    out: mpsc::UnboundedSender<ServerMessage>,
    ctl: mpsc::UnboundedSender<Control>,
    /// Why the connection must end now (token revoked, a write failed, replaced by a
    /// newer connection of the same agent), with the close code.
    ending: Option<(u16, &'static str)>,
    /// When the agent's last heartbeat came (only heartbeats prove it is alive), and
    /// whether one came since the last check.
    last_beat: Instant,
    beat_since_check: bool,
    /// Disk the agent's workspaces take, as it last said.
    disk_bytes: Option<u64>,
    /// The LLM call in flight (one at a time), and how to stop it when the job ends
    /// here (it is still metered).
    llm_call: Option<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)>,
}

pub async fn serve(state: AppState, mut ws: WebSocket, token: AgentToken) {
    let _counted = state.hub.connected();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => parse_frame(&text),
        Ok(Some(Err(e))) => {
            if let Some((code, reason)) = close_for(e) {
                close(&mut ws, code, &reason).await;
            }
            return;
        }
        _ => {
            close(&mut ws, CLOSE_PROTOCOL_ERROR, "expected agent.hello as the first frame").await;
            return;
        }
    };
    let Ok(AgentMessage::Hello { protocol, name, version, labels, capabilities, missing, agent_id, job, disk_bytes }) = hello else {
        close(&mut ws, CLOSE_PROTOCOL_ERROR, "expected agent.hello as the first frame").await;
        return;
    };
    if !(MIN_PROTOCOL..=PROTOCOL).contains(&protocol) {
        let reason = format!("agent protocol {protocol} is not supported: this server speaks {MIN_PROTOCOL} to {PROTOCOL}; install a matching kodel-agent");
        close(&mut ws, CLOSE_INCOMPATIBLE, &reason).await;
        return;
    }
    let offer = offer(name, version, labels, capabilities, missing);
    // The labels it claims jobs with: its own and one per capability that decides
    // which jobs it may take (a container, docker-in-docker).
    let labels = kodel_core::protocol::claim_labels(&offer.labels, &offer.capabilities);
    let (agent_id, resume, running) = match enroll(&state, &token, agent_id, job, &offer).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(org = %token.slug, error = %e.message, "agent enrollment failed");
            close(&mut ws, CLOSE_PROTOCOL_ERROR, "the server could not register this agent; try again").await;
            return;
        }
    };
    let (out, mut out_rx) = mpsc::unbounded_channel();
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        state: state.clone(),
        token,
        agent_id,
        labels,
        job: running,
        out,
        ctl,
        ending: None,
        last_beat: Instant::now(),
        beat_since_check: false,
        disk_bytes,
        llm_call: None,
    };
    // A newer connection of the same agent replaces an older one (a half-open socket
    // left by a network change), which closes.
    state.hub.attach(agent_id, conn.ctl.clone());
    let welcome = ServerMessage::Welcome { agent_id, protocol: PROTOCOL, heartbeat_secs: state.hub.heartbeat().as_secs().max(1) as u32, resume };
    if send(&mut ws, &welcome).await.is_err() {
        conn.gone(&mut ctl_rx).await;
        return;
    }
    tracing::info!(org = %conn.token.slug, agent = %agent_id, name = %offer.name, capabilities = ?offer.capabilities, resumed = resume.is_some(), "agent connected");
    match &conn.job {
        Some(job) => state.hub.running(job.id, conn.ctl.clone()),
        None => conn.become_idle(),
    }

    let heartbeat = state.hub.heartbeat();
    let mut watchdog = tokio::time::interval(heartbeat);
    watchdog.reset();
    let mut shutdown = state.hub.on_shutdown();
    let mut bad_frames = 0u64;
    loop {
        tokio::select! {
            frame = ws.recv() => {
                let frame = match frame {
                    None => break,
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        // Too large, or not WebSocket: say why before hanging up.
                        let error = e.to_string();
                        if let Some((code, reason)) = close_for(e) {
                            tracing::warn!(org = %conn.token.slug, agent = %agent_id, code, error = %error, "closing an agent connection that broke the protocol");
                            close(&mut ws, code, &reason).await;
                        }
                        break;
                    }
                };
                match frame {
                    Message::Text(text) => match parse_frame(&text) {
                        Ok(msg) => conn.handle(msg).await,
                        Err(e) => {
                            // The parser's message may quote the frame: keep the log short.
                            let e: String = e.to_string().chars().take(200).collect();
                            bad_frames += 1;
                            state.metrics.agent_bad_frames.inc();
                            if log_bad_frame(bad_frames) {
                                tracing::warn!(org = %conn.token.slug, agent = %agent_id, error = %e, count = bad_frames, "malformed agent frame");
                            }
                            conn.error("bad_frame", format!("the frame is not a protocol message: {e}"));
                        }
                    },
                    Message::Binary(_) => {
                        state.metrics.agent_bad_frames.inc();
                        conn.error("bad_frame", "binary frames are not part of the protocol; send JSON text".into());
                    }
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            Some(msg) = out_rx.recv() => {
                if send(&mut ws, &msg).await.is_err() {
                    break;
                }
            }
            Some(ctl) = ctl_rx.recv() => {
                if let Some(msg) = conn.control(ctl).await
                    && send(&mut ws, &msg).await.is_err()
                {
                    break;
                }
            }
            _ = watchdog.tick() => {
                if conn.last_beat.elapsed() > heartbeat * 3 {
                    conn.ending = Some((CLOSE_PROTOCOL_ERROR, "no heartbeat; reconnect"));
                } else {
                    conn.check().await;
                }
            }
            _ = shutdown.changed() => {
                close(&mut ws, CLOSE_GOING_AWAY, "server shutting down; reconnect").await;
                break;
            }
        }
        if let Some((code, reason)) = conn.ending {
            // What the agent was sent before this still goes first.
            while let Ok(msg) = out_rx.try_recv() {
                let _ = send(&mut ws, &msg).await;
            }
            close(&mut ws, code, reason).await;
            break;
        }
    }
    if bad_frames > 0 {
        tracing::info!(org = %conn.token.slug, agent = %agent_id, bad_frames, "agent disconnected after malformed frames");
    }
    conn.gone(&mut ctl_rx).await;
}

/// Registers the agent (or takes back its registration on a reconnect) and, when it
/// asks to go on with a job it still holds, renews that job's lease.
/// What the hello says, bounded: names, labels and reasons are cut to size, labels
/// that are Kodel's own dropped, capabilities kept only when known.
fn offer(name: String, version: String, labels: Vec<String>, capabilities: Vec<String>, missing: std::collections::BTreeMap<String, String>) -> agents::Offer {
    let known = |c: &str| kodel_core::protocol::CAPABILITIES.iter().any(|(k, _)| *k == c);
    agents::Offer {
        name: name.chars().take(100).collect(),
        version: version.chars().take(50).collect(),
        labels: labels
            .into_iter()
            .filter(|l| !l.starts_with(kodel_core::infra::RESERVED_LABEL_PREFIX))
            .take(32)
            .map(|l| l.chars().take(64).collect())
            .collect(),
        capabilities: capabilities.into_iter().filter(|c| known(c)).collect(),
        missing: missing.into_iter().filter(|(c, _)| known(c)).map(|(c, why)| (c, why.chars().take(500).collect())).collect(),
    }
}

async fn enroll(
    state: &AppState,
    token: &AgentToken,
    agent_id: Option<Uuid>,
    job: Option<Uuid>,
    offer: &agents::Offer,
) -> ApiResult<(Uuid, Option<Resume>, Option<Running>)> {
    let mut db = OrgTx::begin(&state.pool, token.org_id, &token.slug).await?;
    let (agent_id, known) = agents::enroll(&mut db, token.token_id, agent_id, offer).await?;
    let mut resume = None;
    let mut running = None;
    if let Some(job) = job.filter(|_| known)
        && let Some(held) = jobs::resume(&mut db, job, agent_id, state.hub.lease()).await?
    {
        agents::set_status(&mut db, agent_id, Status::Busy, Some(job)).await?;
        resume = Some(Resume { job_id: job, next_seq: held.next_seq.max(0) as u32 });
        running = Some(Running {
            id: job,
            task_id: held.task_id,
            task_key: held.task_key,
            project_id: held.project_id,
            template_model: held.model,
            budget: held.budget_tokens,
            used: Arc::new(AtomicU64::new(held.used.max(0) as u64)),
        });
    }
    state.commit(db).await?;
    Ok((agent_id, resume, running))
}

/// Gives a claimed job back at once (its agent vanished before it got it): pending
/// again, and the attempt it never had is not counted.
pub async fn release(state: &AppState, org_id: Uuid, slug: &OrgSlug, agent: Uuid, job: Uuid) {
    release_for(state, org_id, slug, agent, job, "the agent disconnected before the job reached it; queued again").await;
}

/// Puts a job its agent holds back in the queue, giving back its attempt.
async fn release_for(state: &AppState, org_id: Uuid, slug: &OrgSlug, agent: Uuid, job: Uuid, why: &str) {
    let result = async {
        let mut db = OrgTx::begin(&state.pool, org_id, slug).await?;
        jobs::release(&mut db, job, agent, why).await?;
        state.commit(db).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(org = %slug, job = %job, error = %e.message, "could not release a job; it is queued again when its lease expires");
    }
}

impl Conn {
    fn error(&self, code: &str, message: String) {
        let _ = self.out.send(ServerMessage::Error { code: code.to_owned(), message });
    }

    fn become_idle(&mut self) {
        self.job = None;
        self.state.hub.idle(&self.state, self.token.org_id, &self.token.slug, self.agent_id, self.labels.clone(), self.ctl.clone());
    }

    /// The job a frame names, if it is the one this agent runs.
    fn current(&self, job_id: Uuid) -> Option<Running> {
        self.job.clone().filter(|j| j.id == job_id)
    }

    fn not_yours(&self, job_id: Uuid) {
        self.error("lease_lost", format!("job {job_id} is not running on this agent (cancelled, finished or re-queued)"));
    }

    async fn handle(&mut self, msg: AgentMessage) {
        let result = match msg {
            AgentMessage::Hello { .. } => {
                self.error("bad_frame", "agent.hello is only the first frame".into());
                Ok(())
            }
            // Counted here, written by the next check: one statement an interval.
            AgentMessage::Heartbeat { disk_bytes, .. } => {
                self.last_beat = Instant::now();
                self.beat_since_check = true;
                self.disk_bytes = disk_bytes.or(self.disk_bytes);
                Ok(())
            }
            AgentMessage::LlmRequest { job_id, request_id, request } => {
                match self.current(job_id) {
                    Some(job) => {
                        if self.llm_call.as_ref().is_some_and(|(c, _)| !c.is_finished()) {
                            let error = "one LLM call at a time per agent: wait for the answer to the last one".to_owned();
                            let _ = self.out.send(ServerMessage::LlmError { job_id: job.id, request_id, error, retryable: true });
                        } else {
                            self.llm_call = relay::call(&self.state, &self.token, self.agent_id, &self.out, job, request_id, request);
                        }
                    }
                    None => {
                        let _ = self.out.send(ServerMessage::LlmError { job_id, request_id, error: "the job is no longer running on this agent".into(), retryable: false });
                    }
                }
                Ok(())
            }
            AgentMessage::StepReport { job_id, seq, step } => match self.current(job_id) {
                Some(job) => self.step(job, seq, step).await,
                None => {
                    self.not_yours(job_id);
                    Ok(())
                }
            },
            AgentMessage::StepOutput { job_id, seq, text } => {
                if let Some(job) = self.current(job_id) {
                    let text = cap_middle(&text, 16 * 1024);
                    self.live(&job, JobOutput { job_id: job.id, seq: Some(seq), source: OutputSource::Tool, text });
                }
                Ok(())
            }
            AgentMessage::Complete { job_id, summary, artifacts } => match self.current(job_id) {
                Some(job) => self.finish(job, Ok((summary, artifacts))).await,
                None => {
                    self.not_yours(job_id);
                    Ok(())
                }
            },
            AgentMessage::Release { job_id, reason } => match self.current(job_id) {
                Some(job) => {
                    let reason: String = reason.chars().take(500).collect();
                    self.stop_llm();
                    release_for(&self.state, self.token.org_id, &self.token.slug, self.agent_id, job.id, &reason).await;
                    self.state.hub.finished(job.id, &self.ctl);
                    let _ = self.out.send(ServerMessage::Ack { job_id: job.id });
                    self.set_status(Status::Online, None).await;
                    // The agent is stopping: this connection gets no more work (made
                    // idle, it was handed the job it had just given back).
                    Ok(())
                }
                None => {
                    self.not_yours(job_id);
                    Ok(())
                }
            },
            AgentMessage::Error { job_id, error, retryable } => match self.current(job_id) {
                Some(job) => self.finish(job, Err((error, retryable))).await,
                None => {
                    self.not_yours(job_id);
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            self.error(e.code.as_str(), e.message.clone());
            // Something the agent needs stored was not (a database hiccup): closing makes
            // it reconnect and send again what the server lacks.
            if matches!(e.code, kodel_core::ErrorCode::Internal | kodel_core::ErrorCode::Unavailable) {
                tracing::warn!(agent = %self.agent_id, error = %e.message, "could not store an agent's report; asking it to reconnect");
                self.ending = Some((CLOSE_SERVER_ERROR, "the server could not store a report; reconnect"));
            }
        }
    }

    /// Every heartbeat interval, whatever the agent sends, one statement: the agent's
    /// heartbeats since the last check renew its job's lease and its last-seen time; is
    /// its token still good, and does it still hold its job (a cancel through another
    /// replica, an expired lease)?
    async fn check(&mut self) {
        let renew = std::mem::take(&mut self.beat_since_check);
        let result: ApiResult<(bool, bool)> = async {
            let mut db = OrgTx::begin(&self.state.pool, self.token.org_id, &self.token.slug).await?;
            if renew {
                agents::seen(&mut db, self.agent_id, self.disk_bytes).await?;
            }
            let holds = match &self.job {
                Some(job) if renew => jobs::renew(&mut db, job.id, self.agent_id, self.state.hub.lease()).await?,
                Some(job) => jobs::held(&mut db, job.id, self.agent_id).await?,
                None => false,
            };
            let live = crate::routes::agent_tokens::live(&mut db, self.token.token_id).await?;
            self.state.commit(db).await?;
            Ok((live, holds))
        }
        .await;
        let (token_live, holds_job) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(agent = %self.agent_id, error = %e.message, "could not check the agent's token and lease");
                return;
            }
        };
        if !token_live {
            self.ending = Some((CLOSE_UNAUTHORIZED, "the agent token was revoked or has expired"));
            return;
        }
        if let Some(job) = self.job.clone()
            && !holds_job
        {
            // Cancelled through another replica, or re-queued: the agent stops.
            self.stop_llm();
            self.state.hub.finished(job.id, &self.ctl);
            let _ = self.out.send(ServerMessage::Cancel { job_id: job.id, reason: "the job's lease is gone (cancelled or re-queued)".into() });
            self.set_status(Status::Online, None).await;
            self.become_idle();
        }
    }

    fn stop_llm(&mut self) {
        if let Some((_, stop)) = self.llm_call.take() {
            stop.notify_one();
        }
    }

    async fn step(&mut self, job: Running, seq: u32, step: Step) -> ApiResult<()> {
        if seq > MAX_SEQ {
            return Err(ApiError::invalid(format!("step seq {seq} is above {MAX_SEQ}")));
        }
        let mut db = OrgTx::begin(&self.state.pool, self.token.org_id, &self.token.slug).await?;
        jobs::record_step(&mut db, job.id, job.task_id, self.agent_id, seq, bounded(step)).await?;
        self.state.commit(db).await?;
        Ok(())
    }

    async fn finish(&mut self, job: Running, outcome: Result<(String, Vec<kodel_core::jobs::NewArtifact>), (String, bool)>) -> ApiResult<()> {
        let mut db = OrgTx::begin(&self.state.pool, self.token.org_id, &self.token.slug).await?;
        match &outcome {
            Ok((summary, artifacts)) => {
                let summary: String = summary.chars().take(10_000).collect();
                jobs::complete(&mut db, job.id, self.agent_id, &summary, artifacts, None).await?;
            }
            Err((error, retryable)) => jobs::fail(&mut db, job.id, self.agent_id, error, *retryable).await?,
        }
        agents::set_status(&mut db, self.agent_id, Status::Online, None).await?;
        self.state.commit(db).await?;
        self.stop_llm();
        self.state.hub.finished(job.id, &self.ctl);
        let _ = self.out.send(ServerMessage::Ack { job_id: job.id });
        self.become_idle();
        Ok(())
    }

    async fn control(&mut self, ctl: Control) -> Option<ServerMessage> {
        match ctl {
            Control::Assign(claimed) => {
                if self.job.is_some() {
                    release(&self.state, self.token.org_id, &self.token.slug, self.agent_id, claimed.id).await;
                    return None;
                }
                // Registered first, so a cancel from now on finds this connection.
                self.state.hub.running(claimed.id, self.ctl.clone());
                match super::assign::load(&self.state, &self.token.slug, &claimed, self.agent_id, self.token.token_id).await {
                    Ok(None) => {
                        // Cancelled (or re-queued) between the claim and now.
                        self.state.hub.finished(claimed.id, &self.ctl);
                        self.become_idle();
                        None
                    }
                    Ok(Some(loaded)) => {
                        let assignment = loaded.assignment;
                        self.job = Some(Running {
                            id: claimed.id,
                            task_id: claimed.task_id,
                            task_key: assignment.task.key.clone(),
                            project_id: loaded.project_id,
                            template_model: assignment.template.model.clone(),
                            budget: assignment.template.budget_tokens,
                            used: Arc::new(AtomicU64::new(loaded.used)),
                        });
                        self.set_status(Status::Busy, Some(claimed.id)).await;
                        Some(ServerMessage::Assigned(Box::new(assignment)))
                    }
                    Err(e) if e.code == kodel_core::ErrorCode::Unauthorized => {
                        self.state.hub.finished(claimed.id, &self.ctl);
                        release(&self.state, self.token.org_id, &self.token.slug, self.agent_id, claimed.id).await;
                        self.ending = Some((CLOSE_UNAUTHORIZED, "the agent token was revoked or has expired"));
                        None
                    }
                    Err(e) => {
                        // A secret that does not open, a database error: the attempt
                        // counts (given back, the job would be claimed and fail again
                        // forever), and after the last one the job fails saying why.
                        self.state.hub.finished(claimed.id, &self.ctl);
                        tracing::warn!(org = %self.token.slug, job = %claimed.id, error = %e.message, "could not prepare a job for its agent");
                        let failed = async {
                            let mut db = OrgTx::begin(&self.state.pool, self.token.org_id, &self.token.slug).await?;
                            jobs::fail(&mut db, claimed.id, self.agent_id, "the server could not prepare the job for its agent (see the server log)", true).await?;
                            self.state.commit(db).await
                        }
                        .await;
                        if let Err(f) = failed {
                            tracing::warn!(job = %claimed.id, error = %f.message, "could not record the failure; the job's lease will expire");
                        }
                        self.become_idle();
                        None
                    }
                }
            }
            Control::Replaced => {
                self.ending = Some((CLOSE_REPLACED, "this agent connected again; closing the older connection"));
                None
            }
            Control::Cancel { job_id, reason } => {
                self.current(job_id)?;
                self.stop_llm();
                self.set_status(Status::Online, None).await;
                self.become_idle();
                Some(ServerMessage::Cancel { job_id, reason })
            }
        }
    }

    async fn set_status(&self, status: Status, job: Option<Uuid>) {
        let result = async {
            let mut db = OrgTx::begin(&self.state.pool, self.token.org_id, &self.token.slug).await?;
            agents::set_status(&mut db, self.agent_id, status, job).await?;
            self.state.commit(db).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(agent = %self.agent_id, error = %e.message, "could not update the agent's status");
        }
    }

    /// The connection ended: the agent is offline (unless a newer connection of it took
    /// over); a job it runs keeps its lease, so the agent can come back and go on.
    async fn gone(&mut self, ctl_rx: &mut mpsc::UnboundedReceiver<Control>) {
        self.stop_llm();
        self.state.hub.not_idle(&self.token.slug, &self.ctl);
        if let Some(job) = &self.job {
            self.state.hub.finished(job.id, &self.ctl);
        }
        // A job claimed for this connection as it closed goes back to the queue now.
        ctl_rx.close();
        while let Ok(ctl) = ctl_rx.try_recv() {
            if let Control::Assign(claimed) = ctl {
                self.state.hub.finished(claimed.id, &self.ctl);
                release(&self.state, self.token.org_id, &self.token.slug, self.agent_id, claimed.id).await;
            }
        }
        if self.state.hub.detach(self.agent_id, &self.ctl) {
            self.set_status(Status::Offline, self.job.as_ref().map(|j| j.id)).await;
        }
        tracing::info!(org = %self.token.slug, agent = %self.agent_id, "agent disconnected");
    }

    fn live(&self, job: &Running, output: JobOutput) {
        self.state.replicas.live(&self.state, &self.token.slug, job.task_id, job.project_id, &job.task_key, output);
    }
}


