//! `Tenant`: the one place that scopes a request to an organization. It checks the
//! caller's membership and opens the request's `OrgTx` (a transaction scoped to the
//! org's schema, see `db::scoped`) in the same statement. Handlers never build a
//! search_path themselves; they commit through `Tenant::commit`, which lets the engine
//! react and hands what happened to the live feeds and the agents hub.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use kodel_core::api::OrgRole;
use kodel_core::{ErrorCode, OrgSlug};
use uuid::Uuid;

use crate::AppState;
use crate::auth::extract::{AuthUser, Credential};
use crate::auth::Auth;
use crate::db::OrgTx;
use crate::db::scoped::set_search_path;
use crate::error::{ApiError, ApiResult};

pub struct Tenant {
    pub auth: Auth,
    /// How the caller authenticated (streams re-check it while they run).
    pub credential: std::sync::Arc<Credential>,
    pub org: OrgCtx,
    pub db: OrgTx,
    pub state: AppState,
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

    /// Lets the engine react to what the request recorded, commits, and wakes whoever
    /// waits on news.
    pub async fn commit(self) -> ApiResult<()> {
        self.state.commit(self.db).await
    }

    /// As `commit`, reading the outcome (what rules made of a change) before the commit.
    pub async fn commit_with<T>(self, read: impl AsyncFnOnce(&mut OrgTx) -> ApiResult<T>) -> ApiResult<T> {
        self.state.commit_with(self.db, read).await
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
        // Who asks comes first: a request without a token is a 401 whatever its path.
        let credential = Credential::from_parts(parts, state)?;
        let slug = org_slug_from_path(&params)?;
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
                    {} AS search_path
             FROM caller c JOIN public.users u ON u.id = c.id
             LEFT JOIN public.orgs o ON o.slug = $3
             LEFT JOIN public.org_members m ON m.org_id = o.id AND m.user_id = u.id",
            cred.caller_sql(),
            set_search_path(4)
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
        let db = OrgTx::new(tx, org_id, slug.clone(), Some(auth.user.id));
        Ok(Tenant { auth, credential: std::sync::Arc::new(cred), org: OrgCtx { id: org_id, slug, role }, db, state: state.clone() })
    }
}
