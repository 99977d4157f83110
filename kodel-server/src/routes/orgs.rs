//! Organizations and their members. Creating an org provisions its schema.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use kodel_core::api::{AddOrgMember, CreateOrg, MAX_NAME, Org, OrgMember, OrgRole, Page, UpdateRole};
use kodel_core::{ErrorCode, OrgSlug};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::auth::Auth;
use crate::db::migrate;
use crate::error::{ApiError, ApiResult, is_unique_violation, require_text};
use crate::json::{ApiJson, ApiQuery};
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(list_members, add_member))
        .routes(routes!(show_member, update_member, remove_member))
}

#[derive(sqlx::FromRow)]
struct OrgRow {
    id: Uuid,
    slug: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl OrgRow {
    fn into_api(self) -> Org {
        Org { id: self.id, slug: self.slug, name: self.name, role: OrgRole::parse(&self.role).unwrap_or(OrgRole::Member), created_at: self.created_at }
    }
}

const ORGS_PAGE: i64 = 200;
const ORGS_MAX_PAGE: i64 = 1000;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// The `next_cursor` of the page before.
    pub(crate) cursor: Option<String>,
    /// At most this many (default 200, at most 1000).
    pub(crate) limit: Option<i64>,
}

#[utoipa::path(
    get, path = "/api/v1/orgs", tag = "orgs",
    summary = "Orgs the caller belongs to, by slug (cursor, limit <= 1000)",
    params(ListQuery),
    responses((status = OK, description = "a page of orgs", body = Page<Org>), Errors<(code::InvalidCursor, code::InvalidRequest)>),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(state): State<AppState>, auth: Auth, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Page<Org>>> {
    let limit = q.limit.unwrap_or(ORGS_PAGE);
    if !(1..=ORGS_MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {ORGS_MAX_PAGE}")));
    }
    // The cursor is the last slug of the page before.
    let after = match q.cursor.as_deref() {
        None | Some("") => String::new(),
        Some(c) => OrgSlug::parse(c).map_err(|_| ApiError::new(ErrorCode::InvalidCursor, "cursor is not one this server gave out"))?.as_str().to_owned(),
    };
    let mut rows = sqlx::query_as::<_, OrgRow>(
        "SELECT o.id, o.slug, o.name, m.role, o.created_at FROM orgs o
         JOIN org_members m ON m.org_id = o.id WHERE m.user_id = $1 AND o.slug > $2 ORDER BY o.slug LIMIT $3",
    )
    .bind(auth.user.id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more.then(|| rows.last().map(|r| r.slug.clone())).flatten();
    Ok(Json(Page { data: rows.into_iter().map(OrgRow::into_api).collect(), next_cursor }))
}

#[utoipa::path(
    post, path = "/api/v1/orgs", tag = "orgs",
    summary = "Create an org (and its schema); the caller becomes owner",
    request_body = CreateOrg,
    responses((status = CREATED, description = "org", body = Org), Errors<(code::InvalidSlug, code::OrgExists)>),
    security(("bearer" = []))
)]
async fn create(State(state): State<AppState>, auth: Auth, ApiJson(req): ApiJson<CreateOrg>) -> ApiResult<(StatusCode, Json<Org>)> {
    let slug = OrgSlug::parse(&req.slug).map_err(|e| ApiError::new(ErrorCode::InvalidSlug, e.0))?;
    let name = require_text("name", &req.name, MAX_NAME)?;
    let started = std::time::Instant::now();
    let mut tx = crate::db::begin(&state.pool).await?;
    let row = sqlx::query_as::<_, OrgRow>(
        "INSERT INTO orgs (id, slug, name, created_by) VALUES ($1, $2, $3, $4)
         RETURNING id, slug, name, 'owner' AS role, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(slug.as_str())
    .bind(&name)
    .bind(auth.user.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            ApiError::new(ErrorCode::OrgExists, format!("org {slug} already exists"))
        } else {
            e.into()
        }
    })?;
    sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, 'owner')")
        .bind(row.id)
        .bind(auth.user.id)
        .execute(&mut *tx)
        .await?;
    // A schema made ahead of time if one is ready, else built now.
    if !migrate::take_spare(&mut tx, &slug).await? {
        migrate::migrate_tenant(&mut tx, &slug).await?;
    }
    tx.commit().await?;
    state.spares.notify_one();
    tracing::info!(org = %slug, ms = started.elapsed().as_millis() as u64, "org created");
    Ok((StatusCode::CREATED, Json(row.into_api())))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}", tag = "orgs",
    summary = "One org",
    params(path::Org),
    responses((status = OK, description = "org", body = Org)),
    security(("bearer" = []))
)]
async fn show(mut t: Tenant) -> ApiResult<Json<Org>> {
    let row = sqlx::query_as::<_, OrgRow>("SELECT id, slug, name, $2 AS role, created_at FROM orgs WHERE id = $1")
        .bind(t.org.id)
        .bind(t.org.role.as_str())
        .fetch_one(t.conn())
        .await?;
    t.commit().await?;
    Ok(Json(row.into_api()))
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: Uuid,
    email: String,
    name: String,
    role: String,
    joined_at: DateTime<Utc>,
}

impl MemberRow {
    fn into_api(self) -> OrgMember {
        OrgMember { user_id: self.user_id, email: self.email, name: self.name, role: OrgRole::parse(&self.role).unwrap_or(OrgRole::Member), joined_at: self.joined_at }
    }
}

const MEMBER_SELECT: &str = "SELECT u.id AS user_id, u.email, u.name, m.role, m.created_at AS joined_at
     FROM org_members m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1";

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/members", tag = "orgs",
    summary = "Org members",
    params(path::Org),
    responses((status = OK, description = "members", body = Page<OrgMember>)),
    security(("bearer" = []))
)]
async fn list_members(mut t: Tenant) -> ApiResult<Json<Page<OrgMember>>> {
    let rows = sqlx::query_as::<_, MemberRow>(&format!("{MEMBER_SELECT} ORDER BY u.email"))
        .bind(t.org.id)
        .fetch_all(t.conn())
        .await?;
    t.commit().await?;
    Ok(Json(Page { data: rows.into_iter().map(MemberRow::into_api).collect(), next_cursor: None }))
}

/// A member named in a path: by user id or email.
async fn find_member(t: &mut Tenant, who: &str) -> ApiResult<MemberRow> {
    let org = t.org.id;
    let row = match Uuid::parse_str(who) {
        Ok(id) => sqlx::query_as::<_, MemberRow>(&format!("{MEMBER_SELECT} AND u.id = $2")).bind(org).bind(id).fetch_optional(t.conn()).await?,
        Err(_) => sqlx::query_as::<_, MemberRow>(&format!("{MEMBER_SELECT} AND lower(u.email) = lower($2)")).bind(org).bind(who).fetch_optional(t.conn()).await?,
    };
    row.ok_or_else(|| ApiError::new(ErrorCode::MemberNotFound, format!("{who} is not a member of {}", t.org.slug)))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/members/{member}", tag = "orgs",
    summary = "One member, by user id or email",
    params(path::Member),
    responses((status = OK, description = "member", body = OrgMember), Errors<(code::MemberNotFound,)>),
    security(("bearer" = []))
)]
async fn show_member(mut t: Tenant, Path((_, who)): Path<(String, String)>) -> ApiResult<Json<OrgMember>> {
    let m = find_member(&mut t, &who).await?;
    t.commit().await?;
    Ok(Json(m.into_api()))
}

#[utoipa::path(
    post, path = "/api/v1/orgs/{org}/members", tag = "orgs",
    summary = "Add a registered user (admin+; owners only by owners)",
    params(path::Org),
    request_body = AddOrgMember,
    responses((status = CREATED, description = "member", body = OrgMember), Errors<(code::Forbidden, code::UserNotFound, code::MemberExists, code::TooManyRequests)>),
    security(("bearer" = []))
)]
async fn add_member(mut t: Tenant, ApiJson(req): ApiJson<AddOrgMember>) -> ApiResult<(StatusCode, Json<OrgMember>)> {
    t.require_org_role(OrgRole::Admin, "adding members")?;
    if req.role == OrgRole::Owner {
        t.require_org_role(OrgRole::Owner, "making owners")?;
    }
    let user: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(req.email.trim())
        .fetch_optional(t.conn())
        .await?;
    let Some(user) = user else {
        t.state.logins.unknown_email(t.user_id())?;
        return Err(ApiError::new(ErrorCode::UserNotFound, format!("no user with email {}; they must register first", req.email.trim())));
    };
    let org = t.org.id;
    let inserted = sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(org)
        .bind(user)
        .bind(req.role.as_str())
        .execute(t.conn())
        .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::new(ErrorCode::MemberExists, format!("{} is already a member", req.email.trim())));
    }
    let m = find_member(&mut t, &user.to_string()).await?;
    t.commit().await?;
    Ok((StatusCode::CREATED, Json(m.into_api())))
}

async fn owner_count(t: &mut Tenant) -> ApiResult<i64> {
    let org = t.org.id;
    // Locks the owners' rows, so two owners demoting each other cannot both pass.
    Ok(sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM org_members WHERE org_id = $1 AND role = 'owner' FOR UPDATE) o")
        .bind(org)
        .fetch_one(t.conn())
        .await?)
}

#[utoipa::path(
    patch, path = "/api/v1/orgs/{org}/members/{member}", tag = "orgs",
    summary = "Change a member's role",
    params(path::Member),
    request_body = UpdateRole<OrgRole>,
    responses((status = OK, description = "member", body = OrgMember), Errors<(code::Forbidden, code::MemberNotFound, code::LastOwner)>),
    security(("bearer" = []))
)]
async fn update_member(mut t: Tenant, Path((_, who)): Path<(String, String)>, ApiJson(req): ApiJson<UpdateRole<OrgRole>>) -> ApiResult<Json<OrgMember>> {
    t.require_org_role(OrgRole::Admin, "changing roles")?;
    let m = find_member(&mut t, &who).await?;
    let current = OrgRole::parse(&m.role).unwrap_or(OrgRole::Member);
    if current == OrgRole::Owner || req.role == OrgRole::Owner {
        t.require_org_role(OrgRole::Owner, "changing owners")?;
    }
    if current == OrgRole::Owner && req.role != OrgRole::Owner && owner_count(&mut t).await? <= 1 {
        return Err(ApiError::new(ErrorCode::LastOwner, "an org needs at least one owner; make someone else owner first"));
    }
    let org = t.org.id;
    sqlx::query("UPDATE org_members SET role = $3 WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(m.user_id)
        .bind(req.role.as_str())
        .execute(t.conn())
        .await?;
    if req.role < OrgRole::Admin {
        let revoked = super::agent_tokens::revoke_made_by(t.conn(), org, m.user_id).await?;
        if revoked > 0 {
            tracing::info!(org = %t.org.slug, user = %m.user_id, revoked, "agent tokens revoked: their maker is no longer an admin");
        }
    }
    let m = find_member(&mut t, &m.user_id.to_string()).await?;
    t.commit().await?;
    Ok(Json(m.into_api()))
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/members/{member}", tag = "orgs",
    summary = "Remove a member (or leave); the last owner cannot go",
    params(path::Member),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::Forbidden, code::MemberNotFound, code::LastOwner)>),
    security(("bearer" = []))
)]
async fn remove_member(mut t: Tenant, Path((_, who)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let m = find_member(&mut t, &who).await?;
    let leaving_self = m.user_id == t.user_id();
    if !leaving_self {
        t.require_org_role(OrgRole::Admin, "removing members")?;
    }
    let role = OrgRole::parse(&m.role).unwrap_or(OrgRole::Member);
    if role == OrgRole::Owner {
        if !leaving_self {
            t.require_org_role(OrgRole::Owner, "removing owners")?;
        }
        if owner_count(&mut t).await? <= 1 {
            return Err(ApiError::new(ErrorCode::LastOwner, "an org needs at least one owner; make someone else owner first"));
        }
    }
    let org = t.org.id;
    sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2").bind(org).bind(m.user_id).execute(t.conn()).await?;
    // Project roles in this org go with the membership, and so do the agent tokens
    // the member made (they act with their maker's authority).
    sqlx::query("DELETE FROM project_members WHERE user_id = $1").bind(m.user_id).execute(t.conn()).await?;
    let revoked = super::agent_tokens::revoke_made_by(t.conn(), org, m.user_id).await?;
    if revoked > 0 {
        tracing::info!(org = %t.org.slug, user = %m.user_id, revoked, "agent tokens revoked: their maker left the org");
    }
    t.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
