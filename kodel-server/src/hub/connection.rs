//! One agent's WebSocket connection: the hello, then a loop that relays frames both
//! ways. The agent's job, its LLM calls, its steps and its outcome all pass here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use kodel_core::OrgSlug;
use kodel_core::llm::Delta;
use kodel_core::protocol::{
    AgentMessage, CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED, CLOSE_INCOMPATIBLE, CLOSE_PROTOCOL_ERROR, MAX_STEP_OUTPUT, MIN_PROTOCOL, PROTOCOL, Resume,
    ServerMessage, Step, cap_middle,
};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Control;
use crate::AppState;
use crate::engine::{jobs, queue};
use crate::error::{ApiError, ApiResult};
use crate::events::LiveEvent;
use crate::llm::{Caller, JobRef};
use crate::tenant::OrgTx;

/// Bounds on what one step may store.
const MAX_SEQ: u32 = 1_000_000;
const MAX_STEP_BYTES: usize = 256 * 1024;

/// Close code for "the server failed; reconnect" (RFC 6455 internal error).
const CLOSE_SERVER_ERROR: u16 = 1011;

/// Close code for a connection replaced by a newer one of the same agent.
const CLOSE_REPLACED: u16 = 4003;

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Live output is gathered this long before it is shown to people.
const LIVE_WINDOW: Duration = Duration::from_millis(50);

/// The org and enrollment token an agent connected with.
#[derive(Debug, Clone)]
pub struct AgentToken {
    pub org_id: Uuid,
    pub slug: OrgSlug,
    pub token_id: Uuid,
}

/// The job a connection's agent is running.
#[derive(Debug, Clone)]
struct Running {
    id: Uuid,
    task_id: Uuid,
    task_key: String,
    project_id: Uuid,
    template_model: Option<String>,
    /// The template's token budget, and what the job has spent (kept here: one
    /// connection runs the job, so no query is needed before each call).
    budget: Option<i64>,
    used: Arc<AtomicU64>,
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

/// What a NUL character in an agent's text becomes: PostgreSQL stores no NUL in text or
/// jsonb, and a step refused for one would leave a hole in the task's story (a tool's
/// output of a binary file, `find -print0`).
const NUL_SHOWN_AS: char = '\u{2400}';

/// An agent's frame, with every NUL in its strings shown as `NUL_SHOWN_AS`.
fn parse_frame(text: &str) -> serde_json::Result<AgentMessage> {
    // JSON text holds a NUL only escaped; most frames have none.
    if !text.contains("\\u0000") {
        return serde_json::from_str(text);
    }
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    show_nul(&mut value);
    serde_json::from_value(value)
}

fn show_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', &NUL_SHOWN_AS.to_string()),
        Value::Array(items) => items.iter_mut().for_each(show_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                map.extend(entries.into_iter().map(|(k, v)| (k.replace('\0', &NUL_SHOWN_AS.to_string()), v)));
            }
            map.values_mut().for_each(show_nul);
        }
        _ => {}
    }
}

pub async fn serve(state: AppState, mut ws: WebSocket, token: AgentToken) {
    let _counted = state.hub.connected();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => parse_frame(&text),
        _ => {
            close(&mut ws, CLOSE_PROTOCOL_ERROR, "expected agent.hello as the first frame").await;
            return;
        }
    };
    let Ok(AgentMessage::Hello { protocol, name, version, labels, agent_id, job, disk_bytes, .. }) = hello else {
        close(&mut ws, CLOSE_PROTOCOL_ERROR, "expected agent.hello as the first frame").await;
        return;
    };
    if !(MIN_PROTOCOL..=PROTOCOL).contains(&protocol) {
        let reason = format!("agent protocol {protocol} is not supported: this server speaks {MIN_PROTOCOL} to {PROTOCOL}; install a matching kodel-agent");
        close(&mut ws, CLOSE_INCOMPATIBLE, &reason).await;
        return;
    }
    let name: String = name.chars().take(100).collect();
    let labels: Vec<String> = labels.into_iter().take(32).map(|l| l.chars().take(64).collect()).collect();
    let version: String = version.chars().take(50).collect();
    let (agent_id, resume, running) = match enroll(&state, &token, agent_id, job, &name, &labels, &version).await {
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
    tracing::info!(org = %conn.token.slug, agent = %agent_id, name = %name, resumed = resume.is_some(), "agent connected");
    match &conn.job {
        Some(job) => state.hub.running(job.id, conn.ctl.clone()),
        None => conn.become_idle(),
    }

    let heartbeat = state.hub.heartbeat();
    let mut watchdog = tokio::time::interval(heartbeat);
    watchdog.reset();
    let mut shutdown = state.hub.on_shutdown();
    loop {
        tokio::select! {
            frame = ws.recv() => {
                let Some(Ok(frame)) = frame else { break };
                match frame {
                    Message::Text(text) => match parse_frame(&text) {
                        Ok(msg) => conn.handle(msg).await,
                        Err(e) => {
                            // The parser's message may quote the frame: keep the log short.
                            let e: String = e.to_string().chars().take(200).collect();
                            tracing::warn!(org = %conn.token.slug, agent = %agent_id, error = %e, "malformed agent frame");
                            conn.error("bad_frame", format!("the frame is not a protocol message: {e}"));
                        }
                    },
                    Message::Binary(_) => conn.error("bad_frame", "binary frames are not part of the protocol; send JSON text".into()),
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
    conn.gone(&mut ctl_rx).await;
}

async fn send(ws: &mut WebSocket, msg: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).map_err(axum::Error::new)?;
    ws.send(Message::Text(Utf8Bytes::from(text))).await
}

async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let reason: String = reason.chars().take(120).collect();
    let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))).await;
}

/// A job an agent asks to go on with, as it stands.
#[derive(sqlx::FromRow)]
struct HeldJob {
    task_id: Uuid,
    task_key: String,
    project_id: Uuid,
    model: Option<String>,
    next_seq: i32,
    budget_tokens: Option<i64>,
    used: i64,
}

/// Registers the agent (or takes back its registration on a reconnect) and, when it
/// asks to go on with a job it still holds, renews that job's lease.
async fn enroll(
    state: &AppState,
    token: &AgentToken,
    agent_id: Option<Uuid>,
    job: Option<Uuid>,
    name: &str,
    labels: &[String],
    version: &str,
) -> ApiResult<(Uuid, Option<Resume>, Option<Running>)> {
    let mut db = OrgTx::begin(state, token.org_id, &token.slug).await?;
    // The same agent only with the token it first came with.
    let known: Option<Uuid> = match agent_id {
        Some(id) => sqlx::query_scalar(
            "UPDATE agents SET name = $3, labels = $4, version = $5, status = 'online', last_seen_at = now()
             WHERE id = $1 AND token_id = $2 RETURNING id",
        )
        .bind(id)
        .bind(token.token_id)
        .bind(name)
        .bind(labels)
        .bind(version)
        .fetch_optional(db.conn())
        .await?,
        None => None,
    };
    // A restarted agent (same token, same name, now offline) takes its old entry back
    // instead of adding one per start.
    let known = match known {
        Some(id) => Some(id),
        None => sqlx::query_scalar(
            "UPDATE agents SET labels = $3, version = $4, status = 'online', last_seen_at = now()
             WHERE id = (SELECT id FROM agents WHERE token_id = $1 AND name = $2 AND status = 'offline'
                         ORDER BY last_seen_at DESC NULLS LAST LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(token.token_id)
        .bind(name)
        .bind(labels)
        .bind(version)
        .fetch_optional(db.conn())
        .await?,
    };
    let agent_id = match known {
        Some(id) => id,
        None => {
            let id = queue::register_agent(&mut db, name, labels, version).await?;
            sqlx::query("UPDATE agents SET token_id = $2 WHERE id = $1").bind(id).bind(token.token_id).execute(db.conn()).await?;
            id
        }
    };
    let mut resume = None;
    let mut running = None;
    if let (Some(job), Some(_)) = (job, known) {
        let held: Option<HeldJob> = sqlx::query_as(
            "UPDATE ai_jobs j SET lease_expires_at = now() + make_interval(secs => $3)
             FROM tasks t, projects p, ai_job_templates jt
             WHERE j.id = $1 AND j.lease_agent = $2 AND j.state = 'running' AND t.id = j.task_id AND p.id = t.project_id
               AND jt.id = j.template_id
             RETURNING j.task_id, p.key || '-' || t.number AS task_key, t.project_id, jt.model,
                       -- The first seq the server lacks (a step lost in a failed write is sent again).
                       (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM job_steps WHERE job_id = j.id AND seq = 0) THEN 0
                               ELSE (SELECT min(a.seq) + 1 FROM job_steps a WHERE a.job_id = j.id AND NOT EXISTS
                                        (SELECT 1 FROM job_steps b WHERE b.job_id = a.job_id AND b.seq = a.seq + 1)) END) AS next_seq, jt.budget_tokens,
                       coalesce((j.usage->>'input_tokens')::bigint, 0) + coalesce((j.usage->>'output_tokens')::bigint, 0) AS used",
        )
        .bind(job)
        .bind(agent_id)
        .bind(state.hub.lease().as_secs_f64())
        .fetch_optional(db.conn())
        .await?;
        if let Some(h) = held {
            sqlx::query("UPDATE agents SET status = 'busy', current_job = $2 WHERE id = $1").bind(agent_id).bind(job).execute(db.conn()).await?;
            resume = Some(Resume { job_id: job, next_seq: h.next_seq.max(0) as u32 });
            running = Some(Running {
                id: job,
                task_id: h.task_id,
                task_key: h.task_key,
                project_id: h.project_id,
                template_model: h.model,
                budget: h.budget_tokens,
                used: Arc::new(AtomicU64::new(h.used.max(0) as u64)),
            });
        }
    }
    db.commit().await?;
    Ok((agent_id, resume, running))
}

/// Gives a claimed job back at once (its agent vanished before it got it): pending
/// again, and the attempt it never had is not counted.
pub async fn release(state: &AppState, org_id: Uuid, slug: &OrgSlug, agent: Uuid, job: Uuid) {
    release_for(state, org_id, slug, agent, job, "the agent disconnected before the job reached it; queued again").await;
}

/// Puts a job its agent holds back in the queue, giving back its attempt.
async fn release_for(state: &AppState, org_id: Uuid, slug: &OrgSlug, agent: Uuid, job: Uuid, error: &str) {
    let result = async {
        let mut db = OrgTx::begin(state, org_id, slug).await?;
        let task: Option<(Uuid, String)> = sqlx::query_as(
            "UPDATE ai_jobs SET state = 'pending', attempts = greatest(attempts - 1, 0), lease_agent = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_agent = $2 AND state = 'running' RETURNING task_id, kind",
        )
        .bind(job)
        .bind(agent)
        .fetch_optional(db.conn())
        .await?;
        if let Some((task, kind)) = task {
            crate::events::record(&mut db, task, "job.requeued", json!({ "job_id": job, "kind": kind, "error": error })).await?;
        }
        db.commit().await
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
                    Some(job) => self.llm(job, request_id, request),
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
                    self.live(&job, json!({ "job_id": job.id, "seq": seq, "source": "tool", "text": text }));
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
                    self.set_status("online", None).await;
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
        let result: ApiResult<(Option<bool>, bool)> = async {
            let mut db = OrgTx::begin(&self.state, self.token.org_id, &self.token.slug).await?;
            let sql = format!(
                "WITH seen AS (UPDATE agents SET last_seen_at = now(), disk_bytes = coalesce($6, disk_bytes) WHERE id = $3 AND $5),
                      held AS (UPDATE ai_jobs SET lease_expires_at = CASE WHEN $5 THEN now() + make_interval(secs => $4) ELSE lease_expires_at END
                               WHERE id = $2 AND lease_agent = $3 AND state = 'running' RETURNING id)
                 SELECT (SELECT {} FROM public.api_tokens k WHERE k.id = $1),
                        EXISTS (SELECT 1 FROM held)",
                crate::routes::agent_tokens::LIVE
            );
            let row: (Option<bool>, bool) = sqlx::query_as(&sql)
            .bind(self.token.token_id)
            .bind(self.job.as_ref().map(|j| j.id))
            .bind(self.agent_id)
            .bind(self.state.hub.lease().as_secs_f64())
            .bind(renew)
            .bind(self.disk_bytes.map(|d| d.min(i64::MAX as u64) as i64))
            .fetch_one(db.conn())
            .await?;
            db.commit().await?;
            Ok(row)
        }
        .await;
        let (token_live, holds_job) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(agent = %self.agent_id, error = %e.message, "could not check the agent's token and lease");
                return;
            }
        };
        if token_live != Some(true) {
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
            self.set_status("online", None).await;
            self.become_idle();
        }
    }

    fn stop_llm(&mut self) {
        if let Some((_, stop)) = self.llm_call.take() {
            stop.notify_one();
        }
    }

    /// Runs an LLM call for the job in the background, relaying it as it streams.
    fn llm(&mut self, job: Running, request_id: String, request: kodel_core::llm::LlmRequest) {
        if self.llm_call.as_ref().is_some_and(|(c, _)| !c.is_finished()) {
            let error = "one LLM call at a time per agent: wait for the answer to the last one".to_owned();
            let _ = self.out.send(ServerMessage::LlmError { job_id: job.id, request_id, error, retryable: true });
            return;
        }
        let state = self.state.clone();
        let out = self.out.clone();
        let caller = Caller {
            org_id: self.token.org_id,
            slug: self.token.slug.clone(),
            job: Some(JobRef { job_id: job.id, task_id: job.task_id }),
            template_model: job.template_model.clone(),
            user: None,
        };
        let (system, request) = split_system(request);
        if let Some(budget) = job.budget
            && job.used.load(Ordering::Relaxed) >= budget.max(0) as u64
        {
            let error = format!("the job's token budget of {budget} is spent ({} used)", job.used.load(Ordering::Relaxed));
            let _ = out.send(ServerMessage::LlmError { job_id: job.id, request_id, error, retryable: false });
            return;
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let mut live = Coalescer::new(&state, &caller.slug, &job);
            let result = state
                .llm
                .call(&state, &caller, &system, &request, stopped.notified(), |delta| {
                    if let Delta::Text { text } = delta {
                        live.push(text);
                    }
                    let _ = out.send(ServerMessage::LlmChunk { job_id: job.id, request_id: request_id.clone(), delta: delta.clone() });
                })
                .await;
            live.flush();
            let msg = match result {
                Ok(done) => {
                    job.used.fetch_add(done.usage.total(), Ordering::Relaxed);
                    ServerMessage::LlmDone { job_id: job.id, request_id, done }
                }
                Err(e) => ServerMessage::LlmError { job_id: job.id, request_id, error: e.message, retryable: e.retryable },
            };
            let _ = out.send(msg);
        });
        self.llm_call = Some((handle, stop));
    }

    async fn step(&mut self, job: Running, seq: u32, step: Step) -> ApiResult<()> {
        if seq > MAX_SEQ {
            return Err(ApiError::invalid(format!("step seq {seq} is above {MAX_SEQ}")));
        }
        let step = match step {
            Step::Tool { call_id, tool, input, output, error, duration_ms } => {
                Step::Tool { call_id, tool, input, output: cap_middle(&output, MAX_STEP_OUTPUT), error, duration_ms }
            }
            Step::Message { text } => Step::Message { text: cap_middle(&text, MAX_STEP_OUTPUT) },
        };
        let mut body = serde_json::to_value(&step).map_err(ApiError::internal)?;
        let size = body.to_string().len();
        if size > MAX_STEP_BYTES {
            // Only the tool's input can still be this large: keep its size, not its text.
            body["input"] = json!(format!("[input of {size} bytes cut]"));
            for field in ["tool", "call_id"] {
                if let Some(v) = body[field].as_str() {
                    body[field] = json!(v.chars().take(200).collect::<String>());
                }
            }
        }
        let mut db = OrgTx::begin(&self.state, self.token.org_id, &self.token.slug).await?;
        let stored = sqlx::query(
            "INSERT INTO job_steps (job_id, seq, task_id, step)
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM ai_jobs WHERE id = $1 AND lease_agent = $5 AND state = 'running')
             ON CONFLICT (job_id, seq) DO NOTHING",
        )
        .bind(job.id)
        .bind(seq as i32)
        .bind(job.task_id)
        .bind(&body)
        .bind(self.agent_id)
        .execute(db.conn())
        .await?;
        if stored.rows_affected() == 1 {
            crate::events::record(&mut db, job.task_id, "job.step", json!({ "job_id": job.id, "seq": seq, "step": body })).await?;
        }
        db.commit().await
    }

    async fn finish(&mut self, job: Running, outcome: Result<(String, Vec<kodel_core::jobs::NewArtifact>), (String, bool)>) -> ApiResult<()> {
        let mut db = OrgTx::begin(&self.state, self.token.org_id, &self.token.slug).await?;
        match &outcome {
            Ok((summary, artifacts)) => {
                let summary: String = summary.chars().take(10_000).collect();
                jobs::complete(&mut db, job.id, self.agent_id, &summary, artifacts, None).await?;
            }
            Err((error, retryable)) => jobs::fail(&mut db, job.id, self.agent_id, error, *retryable).await?,
        }
        sqlx::query("UPDATE agents SET status = 'online', current_job = NULL, last_seen_at = now() WHERE id = $1").bind(self.agent_id).execute(db.conn()).await?;
        db.commit().await?;
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
                match super::assign::load(&self.state, self.token.org_id, &self.token.slug, &claimed, self.agent_id, self.token.token_id).await {
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
                        self.set_status("busy", Some(claimed.id)).await;
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
                            let mut db = OrgTx::begin(&self.state, self.token.org_id, &self.token.slug).await?;
                            jobs::fail(&mut db, claimed.id, self.agent_id, "the server could not prepare the job for its agent (see the server log)", true).await?;
                            db.commit().await
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
                self.set_status("online", None).await;
                self.become_idle();
                Some(ServerMessage::Cancel { job_id, reason })
            }
        }
    }

    async fn set_status(&self, status: &str, job: Option<Uuid>) {
        let result = async {
            let mut db = OrgTx::begin(&self.state, self.token.org_id, &self.token.slug).await?;
            sqlx::query("UPDATE agents SET status = $2, current_job = $3, last_seen_at = now() WHERE id = $1")
                .bind(self.agent_id)
                .bind(status)
                .bind(job)
                .execute(db.conn())
                .await?;
            db.commit().await
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
            self.set_status("offline", self.job.as_ref().map(|j| j.id)).await;
        }
        tracing::info!(org = %self.token.slug, agent = %self.agent_id, "agent disconnected");
    }

    fn live(&self, job: &Running, payload: serde_json::Value) {
        self.state.events.live(&self.token.slug, LiveEvent::new(job.task_id, job.project_id, &job.task_key, "job.output", payload));
    }
}

/// System messages at the head of an agent's conversation become the system prompt
/// (the server's prompt is already in the assignment the agent got).
fn split_system(mut request: kodel_core::llm::LlmRequest) -> (String, kodel_core::llm::LlmRequest) {
    let mut system = Vec::new();
    while request.messages.first().is_some_and(|m| m.role == kodel_core::llm::Role::System) {
        system.push(request.messages.remove(0).content);
    }
    (system.join("\n\n"), request)
}

/// Gathers the model's text for people watching the task, a window at a time.
struct Coalescer<'a> {
    state: &'a AppState,
    slug: &'a OrgSlug,
    job: &'a Running,
    text: String,
    since: Instant,
}

impl<'a> Coalescer<'a> {
    fn new(state: &'a AppState, slug: &'a OrgSlug, job: &'a Running) -> Self {
        Self { state, slug, job, text: String::new(), since: Instant::now() }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
        if self.since.elapsed() >= LIVE_WINDOW || self.text.len() >= 4096 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.text.is_empty() {
            let payload = json!({ "job_id": self.job.id, "source": "model", "text": std::mem::take(&mut self.text) });
            self.state.events.live(self.slug, LiveEvent::new(self.job.task_id, self.job.project_id, &self.job.task_key, "job.output", payload));
        }
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_in_an_agents_text_are_shown_not_refused() {
        let frame = r#"{"type":"step.report","job_id":"00000000-0000-0000-0000-000000000001","seq":0,"step":{"kind":"tool","call_id":"c","tool":"bash","input":{"k\u0000":"x"},"output":"a\u0000b","error":false,"duration_ms":1}}"#;
        let AgentMessage::StepReport { step, .. } = parse_frame(frame).unwrap() else { panic!("a step") };
        let json = serde_json::to_string(&step).unwrap();
        assert!(!json.contains("\\u0000") && json.contains("a\u{2400}b") && json.contains("k\u{2400}"), "{json}");
        // Frames without a NUL are parsed as they are.
        assert!(parse_frame(r#"{"type":"heartbeat"}"#).is_ok());
    }
}
