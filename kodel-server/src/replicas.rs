//! What replicas tell each other, through PostgreSQL (`NOTIFY kodel_replicas`): no
//! cluster protocol of Kodel's own. Three signals, each small and best effort (what
//! must not be lost is in the database; after a lost LISTEN connection a replica looks
//! for work at once, and its dispatchers poll every 30 s):
//!
//! - `work`: jobs were queued in an org, so idle agents connected here may claim them
//!   now (not at the dispatcher's next poll);
//! - `cancel`: a job was cancelled or paused, so the replica holding its agent's
//!   connection tells the agent at once (not at its next heartbeat);
//! - `live`: an agent's live output (model text, tool output), so people following the
//!   task through any replica see it. NOTIFY payloads are at most 8000 bytes: larger
//!   output goes in several pieces, in order (one sender per replica).
//!
//! Stored events need none of this: they reach every replica through
//! `events::feed` (`NOTIFY kodel_events` and the database).

use std::time::Duration;

use kodel_core::OrgSlug;
use kodel_core::events::{JobOutput, TaskEvent};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::AppState;
use crate::events::LiveEvent;

const CHANNEL: &str = "kodel_replicas";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes and more.
const MAX_PAYLOAD: usize = 7900;
/// Live output is cut into pieces of at most this many bytes of text first.
const PIECE: usize = 3000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    Work { org: String },
    Cancel { job: Uuid, reason: String },
    Live { org: String, task: Uuid, project: Uuid, task_key: String, output: JobOutput },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The replica that sent it (it does not act on its own signals).
    from: Uuid,
    #[serde(flatten)]
    signal: Signal,
}

/// This replica's sending side.
#[derive(Clone)]
pub struct Replicas {
    id: Uuid,
    tx: mpsc::UnboundedSender<String>,
}

impl Replicas {
    pub fn new(pool: PgPool) -> Replicas {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_all(pool, rx));
        Replicas { id: Uuid::now_v7(), tx }
    }

    /// Tells the other replicas (best effort: a signal too large to send is dropped).
    pub fn send(&self, signal: Signal) {
        let Ok(payload) = serde_json::to_string(&Envelope { from: self.id, signal }) else { return };
        if payload.len() > MAX_PAYLOAD {
            tracing::debug!(bytes = payload.len(), "a signal for other replicas is too large; dropped");
            return;
        }
        let _ = self.tx.send(payload);
    }

    /// Live output for the task's followers here and on every other replica.
    pub fn live(&self, state: &AppState, slug: &OrgSlug, task: Uuid, project: Uuid, task_key: &str, output: JobOutput) {
        for piece in pieces(&output.text, PIECE) {
            let part = JobOutput { text: piece.to_owned(), ..output.clone() };
            let signal = Signal::Live { org: slug.as_str().to_owned(), task, project, task_key: task_key.to_owned(), output: part };
            // Text that escapes to much more than it is (control characters) goes in
            // smaller pieces still.
            match serde_json::to_string(&Envelope { from: self.id, signal: signal.clone() }) {
                Ok(p) if p.len() > MAX_PAYLOAD => {
                    if let Signal::Live { output, .. } = signal {
                        for small in pieces(&output.text, PIECE / 8) {
                            self.send(Signal::Live { org: slug.as_str().to_owned(), task, project, task_key: task_key.to_owned(), output: JobOutput { text: small.to_owned(), ..output.clone() } });
                        }
                    }
                }
                _ => self.send(signal),
            }
        }
        state.events.live(slug, LiveEvent::new(task, project, task_key, TaskEvent::JobOutput(output)));
    }
}

/// `text` in pieces of at most `max` bytes, cut between characters.
fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// Sends this replica's signals in order.
async fn send_all(pool: PgPool, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(payload) = rx.recv().await {
        if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(&pool).await {
            tracing::debug!(error = %err, "pg_notify to other replicas failed");
        }
    }
}

/// Acts on other replicas' signals, for as long as the server runs.
pub async fn listen(state: AppState) {
    let me = state.replicas.id;
    while !state.pool.is_closed() {
        let mut listener = match PgListener::connect_with(&state.pool).await {
            Ok(l) => l,
            Err(_) if state.pool.is_closed() => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot LISTEN for other replicas' signals; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Work signals sent while no connection listened are lost: look for work now.
        state.hub.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match serde_json::from_str::<Envelope>(n.payload()) {
                    Ok(env) if env.from != me => act(&state, env.signal),
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "a signal from another replica could not be read"),
                },
                // The connection was lost and taken up again: signals sent meanwhile
                // are lost. Dispatchers look for work now; agents learn of cancels at
                // their next heartbeat.
                Ok(None) => state.hub.wake_all(),
                Err(_) if state.pool.is_closed() => return,
                Err(err) => {
                    tracing::warn!(error = %err, "LISTEN connection for replicas' signals lost; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn act(state: &AppState, signal: Signal) {
    match signal {
        Signal::Work { org } => {
            if let Ok(slug) = OrgSlug::parse(&org) {
                state.hub.work(&slug);
            }
        }
        Signal::Cancel { job, reason } => state.hub.cancelled(job, &reason),
        Signal::Live { org, task, project, task_key, output } => {
            if let Ok(slug) = OrgSlug::parse(&org) {
                state.events.live(&slug, LiveEvent::new(task, project, &task_key, TaskEvent::JobOutput(output)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_between_characters() {
        let text = "héllo wörld ".repeat(500);
        let parts = pieces(&text, 100);
        assert!(parts.iter().all(|p| p.len() <= 100));
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("", 10), [""]);
    }
}
