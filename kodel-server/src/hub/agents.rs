//! The org's agent registry, and the one writer of `agents`: an agent enrolls when it
//! connects (or takes its old entry back), says it is busy or online, and is seen at
//! every heartbeat check.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::db::OrgTx;
use crate::error::ApiResult;

/// What an agent is doing, as the registry shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Online,
    Busy,
    Offline,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Busy => "busy",
            Self::Offline => "offline",
        }
    }
}

/// What an agent says of itself when it connects.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub name: String,
    pub version: String,
    /// Its own labels (never Kodel's reserved ones).
    pub labels: Vec<String>,
    /// `container`, `dind` (see `protocol::CAPABILITIES`).
    pub capabilities: Vec<String>,
    /// What it cannot run, and why.
    pub missing: BTreeMap<String, String>,
}

impl Offer {
    fn missing_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.missing).unwrap_or_default()
    }
}

/// Adds an agent to the org's registry, online.
pub async fn register(db: &mut OrgTx, token: Option<Uuid>, offer: &Offer) -> ApiResult<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO agents (id, name, labels, version, status, last_seen_at, token_id, capabilities, missing)
         VALUES ($1, $2, $3, $4, 'online', now(), $5, $6, $7)",
    )
    .bind(id)
    .bind(&offer.name)
    .bind(&offer.labels)
    .bind(&offer.version)
    .bind(token)
    .bind(&offer.capabilities)
    .bind(offer.missing_json())
    .execute(db.conn())
    .await?;
    Ok(id)
}

/// An agent that says hello: the entry it names (only with the token it first came
/// with), else the entry of the same token and name now offline (a restarted agent
/// takes its old entry back instead of adding one per start), else a new one. Returns
/// the agent's id and whether it was known.
pub async fn enroll(db: &mut OrgTx, token: Uuid, agent_id: Option<Uuid>, offer: &Offer) -> ApiResult<(Uuid, bool)> {
    let named: Option<Uuid> = match agent_id {
        Some(id) => sqlx::query_scalar(
            "UPDATE agents SET name = $3, labels = $4, version = $5, capabilities = $6, missing = $7, status = 'online', last_seen_at = now()
             WHERE id = $1 AND token_id = $2 RETURNING id",
        )
        .bind(id)
        .bind(token)
        .bind(&offer.name)
        .bind(&offer.labels)
        .bind(&offer.version)
        .bind(&offer.capabilities)
        .bind(offer.missing_json())
        .fetch_optional(db.conn())
        .await?,
        None => None,
    };
    if let Some(id) = named {
        return Ok((id, true));
    }
    let restarted: Option<Uuid> = sqlx::query_scalar(
        "UPDATE agents SET labels = $3, version = $4, capabilities = $5, missing = $6, status = 'online', last_seen_at = now()
         WHERE id = (SELECT id FROM agents WHERE token_id = $1 AND name = $2 AND status = 'offline'
                     ORDER BY last_seen_at DESC NULLS LAST LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(token)
    .bind(&offer.name)
    .bind(&offer.labels)
    .bind(&offer.version)
    .bind(&offer.capabilities)
    .bind(offer.missing_json())
    .fetch_optional(db.conn())
    .await?;
    match restarted {
        Some(id) => Ok((id, true)),
        None => Ok((register(db, Some(token), offer).await?, false)),
    }
}

/// The agent is online, busy with `job`, or offline.
pub async fn set_status(db: &mut OrgTx, agent: Uuid, status: Status, job: Option<Uuid>) -> ApiResult<()> {
    sqlx::query("UPDATE agents SET status = $2, current_job = $3, last_seen_at = now() WHERE id = $1")
        .bind(agent)
        .bind(status.as_str())
        .bind(job)
        .execute(db.conn())
        .await?;
    Ok(())
}

/// The agent was heard from (a heartbeat), with the disk its workspaces take.
pub async fn seen(db: &mut OrgTx, agent: Uuid, disk_bytes: Option<u64>) -> ApiResult<()> {
    sqlx::query("UPDATE agents SET last_seen_at = now(), disk_bytes = coalesce($2, disk_bytes) WHERE id = $1")
        .bind(agent)
        .bind(disk_bytes.map(|d| d.min(i64::MAX as u64) as i64))
        .execute(db.conn())
        .await?;
    Ok(())
}
