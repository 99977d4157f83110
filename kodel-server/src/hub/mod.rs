//! The agents hub: every connected agent worker, the jobs they run, and the dispatch of
//! queued jobs to idle agents.
//!
//! Each org with an idle agent here has a dispatcher task. It wakes when a job is queued
//! (a commit that recorded `job.created` or `job.requeued`, here or on another replica),
//! when an agent becomes idle, and every 30 s as a last resort. It claims jobs with
//! `FOR UPDATE SKIP LOCKED` for idle agents, one claim per distinct label set, so a
//! thousand idle agents cost one query per wake, not a thousand. When no agent of the
//! org waits here any more, the dispatcher ends and the org is forgotten; the next
//! agent to wait starts another.

pub mod agents;
pub mod assign;
pub mod connection;
mod frames;
mod relay;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kodel_core::OrgSlug;
use kodel_core::events::TaskEvent;
use tokio::sync::{Notify, mpsc, watch};
use uuid::Uuid;

use crate::replicas::Signal;
use crate::AppState;
use crate::db::scoped::Recorded;
use crate::engine::jobs::Claimed;
use crate::engine::queue;

/// How often a dispatcher looks for work it was not told about. Every commit that
/// makes a job claimable wakes the dispatchers of its org on every replica (here
/// directly, elsewhere by a `work` signal), and a replica whose LISTEN connection
/// dropped wakes all of its own (`wake_all`): the poll is a last resort, so it is
/// slow, and a thousand orgs with agents waiting cost little between jobs.
const POLL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    orgs: Mutex<HashMap<String, Arc<OrgAgents>>>,
    /// The connection running each job here, to tell it of a cancel.
    running: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Control>>>,
    /// Each connected agent's current connection (a connection is known by its channel).
    agents: Mutex<HashMap<Uuid, mpsc::UnboundedSender<Control>>>,
    shutdown: watch::Sender<bool>,
    lease: Duration,
    connections: watch::Sender<usize>,
}

/// What the hub tells a connection.
#[derive(Debug)]
pub enum Control {
    Assign(Claimed),
    Cancel { job_id: Uuid, reason: String },
    /// A newer connection of the same agent took over: this one closes.
    Replaced,
}

struct OrgAgents {
    wake: Notify,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    agent_id: Uuid,
    labels: Vec<String>,
    tx: mpsc::UnboundedSender<Control>,
}

impl Hub {
    pub fn new(lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                orgs: Mutex::default(),
                running: Mutex::default(),
                agents: Mutex::default(),
                shutdown: watch::channel(false).0,
                lease,
                connections: watch::channel(0).0,
            }),
        }
    }

    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// How often agents heartbeat: a third of the lease, so two may be lost.
    pub fn heartbeat(&self) -> Duration {
        (self.inner.lease / 3).max(Duration::from_millis(100))
    }

    /// An agent waits for work; `tx` gets `Control::Assign` when a job is claimed for it.
    pub fn idle(&self, state: &AppState, org_id: Uuid, slug: &OrgSlug, agent_id: Uuid, labels: Vec<String>, tx: mpsc::UnboundedSender<Control>) {
        // Under the orgs lock, so a dispatcher cannot end between finding the org and
        // queueing the agent (see `forget_if_unused`).
        let mut orgs = self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let org = orgs.entry(slug.as_str().to_owned()).or_insert_with(|| {
            let org = Arc::new(OrgAgents { wake: Notify::new(), idle: Mutex::default() });
            tokio::spawn(dispatch(state.clone(), org_id, slug.clone(), org.clone()));
            org
        });
        org.idle.lock().unwrap_or_else(|p| p.into_inner()).push_back(Idle { agent_id, labels, tx });
        org.wake.notify_one();
    }

    /// Forgets the org when no agent waits in it: true if its dispatcher should end.
    fn forget_if_unused(&self, slug: &OrgSlug, org: &Arc<OrgAgents>) -> bool {
        let mut orgs = self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let mut idle = org.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|i| !i.tx.is_closed());
        if !idle.is_empty() {
            return false;
        }
        if orgs.get(slug.as_str()).is_some_and(|o| Arc::ptr_eq(o, org)) {
            orgs.remove(slug.as_str());
        }
        true
    }

    /// Orgs with a dispatcher here now.
    pub fn dispatching(&self) -> usize {
        self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A connection stops waiting (it closed). Only its own entry goes: a newer
    /// connection of the same agent keeps its place.
    pub fn not_idle(&self, slug: &OrgSlug, conn: &mpsc::UnboundedSender<Control>) {
        let org = self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner()).get(slug.as_str()).cloned();
        if let Some(org) = org {
            org.idle.lock().unwrap_or_else(|p| p.into_inner()).retain(|i| !i.tx.same_channel(conn));
        }
    }

    /// An agent's connection is now this one; an older one is told to close.
    pub fn attach(&self, agent_id: Uuid, conn: mpsc::UnboundedSender<Control>) {
        let old = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner()).insert(agent_id, conn);
        if let Some(old) = old {
            let _ = old.send(Control::Replaced);
        }
    }

    /// A connection closed; true if it was still the agent's current one.
    pub fn detach(&self, agent_id: Uuid, conn: &mpsc::UnboundedSender<Control>) -> bool {
        let mut agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        if agents.get(&agent_id).is_some_and(|c| c.same_channel(conn)) {
            agents.remove(&agent_id);
            return true;
        }
        false
    }

    /// Jobs were queued in the org.
    pub fn work(&self, slug: &OrgSlug) {
        let org = self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner()).get(slug.as_str()).cloned();
        if let Some(org) = org {
            org.wake.notify_one();
        }
    }

    /// Signals from other replicas may have been lost: every dispatcher here looks.
    pub fn wake_all(&self) {
        for org in self.inner.orgs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            org.wake.notify_one();
        }
    }

    pub fn running(&self, job: Uuid, tx: mpsc::UnboundedSender<Control>) {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).insert(job, tx);
    }

    /// The job no longer runs on this connection (another may have taken it over).
    pub fn finished(&self, job: Uuid, conn: &mpsc::UnboundedSender<Control>) {
        let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&job).is_some_and(|c| c.same_channel(conn)) {
            running.remove(&job);
        }
    }

    /// A job was cancelled: its agent, if connected here, is told at once (agents on
    /// other replicas learn it at their next heartbeat, when the lease is gone).
    pub fn cancelled(&self, job_id: Uuid, reason: &str) {
        let tx = self.inner.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);
        if let Some(tx) = tx {
            let _ = tx.send(Control::Cancel { job_id, reason: reason.to_owned() });
        }
    }

    /// Tells every connection the server is going away; they close with a reason that
    /// makes agents reconnect.
    pub fn shut_down(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    pub fn on_shutdown(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Counts a connection while the guard lives.
    pub fn connected(&self) -> ConnectionGuard {
        self.inner.connections.send_modify(|n| *n += 1);
        ConnectionGuard(self.clone())
    }

    /// Agent connections open now.
    pub fn connection_count(&self) -> usize {
        *self.inner.connections.borrow()
    }

    /// Waits (at most `limit`) until every agent connection has closed.
    pub async fn drained(&self, limit: Duration) {
        let mut rx = self.inner.connections.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// After a commit: wakes dispatchers for queued jobs and tells agents of cancels.
    /// Gives back the same for the other replicas (`replicas::Signal`).
    pub fn after_commit(&self, slug: &OrgSlug, recorded: &[Recorded]) -> Vec<Signal> {
        let mut signals = Vec::new();
        let mut cancel = |job: Uuid, reason: String| {
            self.cancelled(job, &reason);
            signals.push(Signal::Cancel { job, reason });
        };
        let mut work = false;
        for ev in recorded {
            match &ev.event {
                TaskEvent::JobCreated(_) | TaskEvent::JobRequeued(_) | TaskEvent::JobResumed(_) => work = true,
                TaskEvent::JobCancelled(c) => cancel(c.job_id, c.reason.clone()),
                TaskEvent::JobPaused(p) => cancel(p.job_id, format!("paused: {}", p.reason)),
                _ => {}
            }
        }
        if work {
            self.work(slug);
            signals.push(Signal::Work { org: slug.as_str().to_owned() });
        }
        signals
    }
}

pub struct ConnectionGuard(Hub);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.connections.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One org's dispatcher: claims jobs for idle agents until either runs out.
async fn dispatch(state: AppState, org_id: Uuid, slug: OrgSlug, org: Arc<OrgAgents>) {
    let mut shutdown = state.hub.on_shutdown();
    loop {
        tokio::select! {
            _ = org.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = dispatch_round(&state, org_id, &slug, &org).await {
            tracing::warn!(org = %slug, error = %e.message, "dispatching jobs failed; trying again shortly");
        }
        if state.hub.forget_if_unused(&slug, &org) {
            return;
        }
    }
}

async fn dispatch_round(state: &AppState, org_id: Uuid, slug: &OrgSlug, org: &OrgAgents) -> crate::error::ApiResult<()> {
    // Label sets tried this round that found nothing: the others with the same set
    // would find nothing either.
    let mut dry: Vec<Vec<String>> = Vec::new();
    loop {
        let next = {
            let mut idle = org.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|i| !i.tx.is_closed());
            let at = idle.iter().position(|i| !dry.contains(&i.labels));
            at.and_then(|at| idle.remove(at))
        };
        let Some(agent) = next else { return Ok(()) };
        match queue::claim(state, slug, agent.agent_id, &agent.labels, state.hub.lease()).await {
            Ok(Some(job)) => {
                if let Err(tokio::sync::mpsc::error::SendError(Control::Assign(job))) = agent.tx.send(Control::Assign(job)) {
                    // Gone between the claim and now: the job goes back at once.
                    connection::release(state, org_id, slug, agent.agent_id, job.id).await;
                }
            }
            Ok(None) => {
                dry.push(agent.labels.clone());
                org.idle.lock().unwrap_or_else(|p| p.into_inner()).push_front(agent);
            }
            Err(e) => {
                org.idle.lock().unwrap_or_else(|p| p.into_inner()).push_front(agent);
                return Err(e);
            }
        }
    }
}
