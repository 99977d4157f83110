//! The org's agent registry, and the one writer of `agents`: an agent enrolls when it
//! connects (or takes its old entry back), says it is busy or online, and is seen at
//! every heartbeat check.

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

/// Adds an agent to the org's registry, online.
pub async fn register(db: &mut OrgTx, token: Option<Uuid>, name: &str, labels: &[String], version: &str) -> ApiResult<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO agents (id, name, labels, version, status, last_seen_at, token_id) VALUES ($1, $2, $3, $4, 'online', now(), $5)",
    )
    .bind(id)
    .bind(name)
    .bind(labels)
    .bind(version)
    .bind(token)
    .execute(db.conn())
    .await?;
    Ok(id)
}

/// An agent that says hello: the entry it names (only with the token it first came
/// with), else the entry of the same token and name now offline (a restarted agent
/// takes its old entry back instead of adding one per start), else a new one. Returns
/// the agent's id and whether it was known.
pub async fn enroll(db: &mut OrgTx, token: Uuid, agent_id: Option<Uuid>, name: &str, labels: &[String], version: &str) -> ApiResult<(Uuid, bool)> {
    let named: Option<Uuid> = match agent_id {
        Some(id) => sqlx::query_scalar(
            "UPDATE agents SET name = $3, labels = $4, version = $5, status = 'online', last_seen_at = now()
             WHERE id = $1 AND token_id = $2 RETURNING id",
        )
        .bind(id)
        .bind(token)
        .bind(name)
        .bind(labels)
        .bind(version)
        .fetch_optional(db.conn())
        .await?,
        None => None,
    };
    if let Some(id) = named {
        return Ok((id, true));
    }
    let restarted: Option<Uuid> = sqlx::query_scalar(
        "UPDATE agents SET labels = $3, version = $4, status = 'online', last_seen_at = now()
         WHERE id = (SELECT id FROM agents WHERE token_id = $1 AND name = $2 AND status = 'offline'
                     ORDER BY last_seen_at DESC NULLS LAST LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(token)
    .bind(name)
    .bind(labels)
    .bind(version)
    .fetch_optional(db.conn())
    .await?;
    match restarted {
        Some(id) => Ok((id, true)),
        None => Ok((register(db, Some(token), name, labels, version).await?, false)),
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
