//! `Tenant`: the one place that scopes a request to an organization. It checks the
//! caller's membership and opens a transaction whose first statement is
//! `set_config('search_path', '"org_{slug}", public', true)` (the function form of
//! `SET LOCAL`), so the setting dies with the transaction and never leaks to the next
//! user of a pooled connection. Handlers never build a search_path themselves.
//!
//! `OrgTx` is that scoped transaction on its own, for work no request carries (the job
//! queue, timed rules, webhooks). It remembers the events written through it, and its
//! commit first lets the engine react to them (bindings, rules) in the same transaction.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use kodel_core::api::OrgRole;
use kodel_core::{ErrorCode, OrgSlug};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::AppState;
use crate::auth::extract::{AuthUser, Credential};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};

pub struct Tenant {
    pub auth: Auth,
    /// How the caller authenticated (streams re-check it while they run).
    pub credential: std::sync::Arc<Credential>,
    pub org: OrgCtx,
    pub db: OrgTx,
}

impl std::ops::Deref for Tenant {
    type Target = OrgTx;
    fn deref(&self) -> &OrgTx {
        &self.db
    }
}

impl std::ops::DerefMut for Tenant {
    fn deref_mut(&mut self) -> &mut OrgTx {
        &mut self.db
    }
}

/// An event written in this transaction that the engine has not reacted to yet.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub task_id: Uuid,
    pub seq: i32,
    pub kind: String,
    pub payload: serde_json::Value,
    /// How many rule firings led to it (0 = a person's or an agent's change).
    pub depth: u32,
    /// The rules that fired on the way to it, so none fires twice in one cascade.
    pub chain: Vec<Uuid>,
}

/// A transaction scoped to one org's schema, with who acts and what was recorded.
pub struct OrgTx {
    tx: Transaction<'static, Postgres>,
    pub state: AppState,
    pub org_id: Uuid,
    pub slug: OrgSlug,
    /// The user acting; None for the engine itself (rules, leases, schedules).
    pub actor: Option<Uuid>,
    /// Events written in this transaction (the engine has reacted to the first
    /// `reacted`; the commit tells the agents hub of all of them).
    pub recorded: Vec<Recorded>,
    /// How many of `recorded` the engine has reacted to.
    pub reacted: usize,
    /// Depth and chain given to events recorded now (set while a rule acts).
    pub depth: u32,
    pub chain: Vec<Uuid>,
    /// Set when an event was written, so commit wakes the event streams.
    pub(crate) wrote_events: bool,
    /// Set when webhook calls were queued, so commit wakes their sender.
    pub(crate) queued_webhooks: bool,
}

impl OrgTx {
    /// A transaction scoped to `slug`'s schema, for the engine's own work.
    pub async fn begin(state: &AppState, org_id: Uuid, slug: &OrgSlug) -> ApiResult<Self> {
        let mut tx = crate::db::begin(&state.pool).await?;
        sqlx::query("SELECT set_config('search_path', $1, true)").bind(slug.search_path()).execute(&mut *tx).await?;
        Ok(Self::new(tx, state, org_id, slug.clone(), None))
    }

    pub(crate) fn new(tx: Transaction<'static, Postgres>, state: &AppState, org_id: Uuid, slug: OrgSlug, actor: Option<Uuid>) -> Self {
        Self {
            tx,
            state: state.clone(),
            org_id,
            slug,
            actor,
            recorded: Vec::new(),
            reacted: 0,
            depth: 0,
            chain: Vec::new(),
            wrote_events: false,
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

    /// Notes an event written by hand-made SQL (record() notes its own).
    pub fn note_event(&mut self, task_id: Uuid, seq: i32, kind: &str, payload: serde_json::Value) {
        self.wrote_events = true;
        let (depth, chain) = (self.depth, self.chain.clone());
        self.recorded.push(Recorded { task_id, seq, kind: kind.to_owned(), payload, depth, chain });
    }

    /// Lets the engine react to what was recorded, commits, then wakes the org's event
    /// streams and the webhook sender if there is news for them.
    pub async fn commit(mut self) -> ApiResult<()> {
        crate::engine::react(&mut self).await?;
        self.tx.commit().await?;
        if self.wrote_events {
            self.state.events.changed(&self.slug);
            self.state.hub.after_commit(&self.slug, &self.recorded);
        }
        if self.queued_webhooks {
            self.state.background.webhooks_due(&self.slug, self.org_id);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct OrgCtx {
    pub id: Uuid,
    pub slug: OrgSlug,
    pub role: OrgRole,
}

impl Tenant {
    pub fn user_id(&self) -> Uuid {
        self.auth.user.id
    }

    pub fn require_org_role(&self, min: OrgRole, what: &str) -> ApiResult<()> {
        if self.org.role >= min { Ok(()) } else { Err(ApiError::forbidden(what)) }
    }

    /// Reacts to the recorded events, commits and wakes whoever waits on news.
    pub async fn commit(self) -> ApiResult<()> {
        self.db.commit().await
    }
}

/// Validates the `{org}` path segment before any SQL sees it.
pub fn org_slug_from_path(params: &RawPathParams) -> ApiResult<OrgSlug> {
    let raw = params
        .iter()
        .find(|(k, _)| *k == "org")
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no org in path"))?;
    OrgSlug::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidSlug, e.0))
}

#[derive(sqlx::FromRow)]
struct ScopeRow {
    user_id: Uuid,
    email: String,
    name: String,
    org_id: Option<Uuid>,
    role: Option<String>,
    schema_version: Option<i32>,
    migration_error: Option<String>,
}

/// A request's org slug and bearer credential, checked as far as they can be without
/// the database; `Tenant::open` does the rest.
pub struct Caller {
    pub slug: OrgSlug,
    pub credential: Credential,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(ErrorCode::NotFound, "no org in path"))?;
        let slug = org_slug_from_path(&params)?;
        let credential = Credential::from_parts(parts, state)?;
        Ok(Caller { slug, credential })
    }
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Caller { slug, credential } = Caller::from_request_parts(parts, state).await?;
        let tenant = Tenant::open(state, slug, credential).await?;
        parts.extensions.insert(tenant.auth.clone());
        Ok(tenant)
    }
}

impl Tenant {
    /// Checks the caller and their membership of `slug`'s org, and opens the
    /// transaction scoped to its schema.
    pub async fn open(state: &AppState, slug: OrgSlug, cred: Credential) -> ApiResult<Tenant> {
        // One statement checks the caller, their membership and the org's schema, and
        // scopes the transaction to it.
        let sql = format!(
            "WITH {}
             SELECT u.id AS user_id, u.email, u.name, o.id AS org_id, m.role, o.schema_version, o.migration_error,
                    set_config('search_path', $4, true) AS search_path
             FROM caller c JOIN public.users u ON u.id = c.id
             LEFT JOIN public.orgs o ON o.slug = $3
             LEFT JOIN public.org_members m ON m.org_id = o.id AND m.user_id = u.id",
            cred.caller_sql()
        );
        let mut tx = crate::db::begin(&state.pool).await?;
        let row = cred
            .bind(sqlx::query_as::<_, ScopeRow>(&sql))
            .bind(slug.as_str())
            .bind(slug.search_path())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let user = AuthUser { id: row.user_id, email: row.email, name: row.name };
        tracing::Span::current().record("user", tracing::field::display(user.id));
        cred.touch(state);
        // Not a member and no such org look the same from outside.
        let (Some(org_id), Some(role)) = (row.org_id, row.role.as_deref()) else {
            return Err(ApiError::new(ErrorCode::OrgNotFound, format!("org {slug} not found")));
        };
        tracing::Span::current().record("org", slug.as_str());
        // A newer server may have migrated further; an older schema is not served.
        if row.migration_error.is_some() || row.schema_version.is_none_or(|v| v < crate::db::migrate::tenant_version()) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("org {slug} is unavailable: its database schema is not up to date (see the server log)"),
            ));
        }
        let role = OrgRole::parse(role).ok_or_else(|| ApiError::internal("bad org role in database"))?;
        let auth = Auth { user, session: cred.session() };
        let db = OrgTx::new(tx, state, org_id, slug.clone(), Some(auth.user.id));
        Ok(Tenant { auth, credential: std::sync::Arc::new(cred), org: OrgCtx { id: org_id, slug, role }, db })
    }
}
