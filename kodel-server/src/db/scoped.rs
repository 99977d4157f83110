//! `OrgTx`: a transaction scoped to one organization's schema, and the one function
//! that scopes a transaction (`set_config('search_path', ..., true)`, the function
//! form of `SET LOCAL`, so the setting dies with the transaction and never leaks to
//! the next user of a pooled connection).
//!
//! An `OrgTx` knows who acts and keeps a journal of the task events written through it
//! (`events::record` adds to it). It knows nothing of what reacts to them: the engine
//! commits it (`engine::commit`), and the server hands what was committed to the live
//! feeds and the agents hub (`AppState::commit`).

use kodel_core::OrgSlug;
use kodel_core::events::TaskEvent;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::ApiResult;

/// The SQL expression that scopes the running transaction to the schema named by
/// parameter `$param` (bind `OrgSlug::search_path()`), for statements that do it along
/// with other work in one round trip. Every scoped transaction goes through this.
pub fn set_search_path(param: u8) -> String {
    format!("set_config('search_path', ${param}, true)")
}

/// Scopes an open transaction to `search_path` (`"org_x", public`).
pub async fn scope(conn: &mut PgConnection, search_path: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SELECT {}", set_search_path(1))).bind(search_path).execute(conn).await?;
    Ok(())
}

/// A transaction scoped to `slug`'s schema, with nothing else (readers).
pub async fn begin_scoped(pool: &PgPool, slug: &OrgSlug) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    scope(&mut tx, &slug.search_path()).await?;
    Ok(tx)
}

/// Why an event was written: by a person or an agent (depth 0), or by rules firing
/// (the depth of the cascade and the rules on the way, so none fires twice).
#[derive(Debug, Clone, Default)]
pub struct Cause {
    pub depth: u32,
    pub chain: Vec<Uuid>,
}

/// A task event written in this transaction.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub task_id: Uuid,
    pub seq: i32,
    pub event: TaskEvent,
    pub cause: Cause,
}

/// A transaction scoped to one org's schema, with who acts and what it recorded.
pub struct OrgTx {
    tx: Transaction<'static, Postgres>,
    pub org_id: Uuid,
    pub slug: OrgSlug,
    /// The user acting; None for the engine itself (rules, leases, schedules).
    pub actor: Option<Uuid>,
    /// The cause given to events recorded now (set while a rule acts).
    pub cause: Cause,
    /// Task events written in this transaction, in order.
    pub recorded: Vec<Recorded>,
    /// How many of `recorded` the engine has reacted to.
    pub reacted: usize,
    /// Set when an event was written that the engine need not see (a creation nothing
    /// reacts to): commit still wakes the event streams.
    pub wrote_unrecorded: bool,
    /// Set when webhook calls were queued, so the commit wakes their sender.
    pub queued_webhooks: bool,
}

impl OrgTx {
    /// A transaction scoped to `slug`'s schema, for work no request carries.
    pub async fn begin(pool: &PgPool, org_id: Uuid, slug: &OrgSlug) -> ApiResult<Self> {
        let tx = begin_scoped(pool, slug).await?;
        Ok(Self::new(tx, org_id, slug.clone(), None))
    }

    /// Wraps a transaction already scoped to `slug` (see `set_search_path`).
    pub fn new(tx: Transaction<'static, Postgres>, org_id: Uuid, slug: OrgSlug, actor: Option<Uuid>) -> Self {
        Self {
            tx,
            org_id,
            slug,
            actor,
            cause: Cause::default(),
            recorded: Vec::new(),
            reacted: 0,
            wrote_unrecorded: false,
            queued_webhooks: false,
        }
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// A member of this org, by email (any case).
    pub async fn member_by_email(&mut self, email: &str) -> ApiResult<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT u.id FROM public.users u JOIN public.org_members m ON m.user_id = u.id AND m.org_id = $2
             WHERE lower(u.email) = lower($1)",
        )
        .bind(email.trim())
        .bind(self.org_id)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    /// Commits, and gives back what was recorded. Only the engine calls this
    /// (`engine::commit`), after reacting.
    pub(crate) async fn commit_journal(self) -> ApiResult<Journal> {
        self.tx.commit().await?;
        Ok(Journal {
            org_id: self.org_id,
            slug: self.slug,
            events: self.recorded,
            wrote_unrecorded: self.wrote_unrecorded,
            queued_webhooks: self.queued_webhooks,
        })
    }
}

/// What a committed transaction recorded.
#[derive(Debug)]
pub struct Journal {
    pub org_id: Uuid,
    pub slug: OrgSlug,
    pub events: Vec<Recorded>,
    pub wrote_unrecorded: bool,
    pub queued_webhooks: bool,
}

impl Journal {
    /// Whether event streams have news.
    pub fn wrote_events(&self) -> bool {
        self.wrote_unrecorded || !self.events.is_empty()
    }
}
