//! An org's LLM usage and cost (`GET /orgs/{org}/usage`), and the prices costs are
//! worked out with (`/orgs/{org}/prices`). Any member reads them; org admins set
//! prices.

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use kodel_core::api::{OrgRole, Page};
use kodel_core::usage::{ModelPrice, UsageGroup, UsageReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{Errors, code, path};
use crate::AppState;
use crate::analytics::usage::{self, Range};
use crate::analytics::prices;
use crate::error::{ApiError, ApiResult};
use crate::json::{ApiJson, ApiQuery};
use crate::llm::ProviderKind;
use crate::tenant::Tenant;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(report)).routes(routes!(list_prices, set_price, remove_price))
}

/// The longest range a report covers.
const MAX_DAYS: i64 = 366 * 5;

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Start (inclusive): RFC 3339 or a date (`2026-12-01`, midnight UTC). Default: 30
    /// days before `to`.
    from: Option<String>,
    /// End (exclusive): RFC 3339 or a date. Default: now.
    to: Option<String>,
    /// `day` (default), `project`, `task`, `model`, `user` or `agent`.
    group_by: Option<String>,
}

fn instant(field: &str, raw: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(ApiError::invalid(format!("{field} {raw:?} is not a date (2026-12-01) or an RFC 3339 time (2026-12-01T09:00:00Z)")))
}

/// Whole seconds, as ClickHouse keeps them.
fn whole(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/usage", tag = "usage",
    summary = "The org's LLM calls, tokens and cost over a range, grouped (any member)",
    description = "Read from ClickHouse when the server has one (`source: clickhouse`), else from PostgreSQL. \
                   Costs are in US dollars at the prices of `/prices` when each call was made.",
    params(path::Org, UsageQuery),
    responses((status = OK, description = "the report", body = UsageReport), Errors<(code::InvalidRequest, code::AnalyticsUnavailable)>),
    security(("bearer" = []))
)]
async fn report(mut t: Tenant, ApiQuery(q): ApiQuery<UsageQuery>) -> ApiResult<Json<UsageReport>> {
    let group = match q.group_by.as_deref() {
        None => UsageGroup::Day,
        Some(raw) => UsageGroup::parse(raw)
            .ok_or_else(|| ApiError::invalid(format!("group_by {raw:?} is not one of day, project, task, model, user, agent")))?,
    };
    // Now, rounded up to the next second, so the calls of this very second count.
    let to = match q.to.as_deref() {
        Some(raw) => whole(instant("to", raw)?),
        None => whole(Utc::now()) + Duration::seconds(1),
    };
    let from = whole(q.from.as_deref().map(|r| instant("from", r)).transpose()?.unwrap_or(to - Duration::days(30)));
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    // ClickHouse's DateTime holds 1970 to 2106.
    let (first, last) = (DateTime::from_timestamp(0, 0).unwrap_or_default(), DateTime::from_timestamp(u32::MAX as i64, 0).unwrap_or_default());
    if from < first || to > last {
        return Err(ApiError::invalid("from and to must be between 1970 and 2106"));
    }
    if to - from > Duration::days(MAX_DAYS) {
        return Err(ApiError::invalid(format!("a report covers at most {MAX_DAYS} days")));
    }
    let range = Range { from, to };
    let state = t.state.clone();
    let (sums, source) = match state.analytics.clickhouse().await {
        Some(Ok(ch)) => match usage::from_clickhouse(&ch, t.org.id, range, group).await {
            Ok(sums) => (sums, "clickhouse"),
            Err(e) => {
                state.analytics.failed().await;
                return Err(usage::unavailable(&e));
            }
        },
        Some(Err(e)) => return Err(usage::unavailable(&e)),
        None => (usage::from_postgres(&state.pool, t.org.id, range, group).await?, "postgres"),
    };
    let data = usage::named(&mut t, group, sums).await?;
    t.commit().await?;
    Ok(Json(UsageReport { from, to, group_by: group, source: source.into(), data }))
}

#[utoipa::path(
    get, path = "/api/v1/orgs/{org}/prices", tag = "usage",
    summary = "The model prices costs are worked out with: the org's own, then the built-in ones (any member)",
    params(path::Org),
    responses((status = OK, description = "prices, US dollars per million tokens", body = Page<ModelPrice>)),
    security(("bearer" = []))
)]
async fn list_prices(mut t: Tenant) -> ApiResult<Json<Page<ModelPrice>>> {
    let own: Vec<(String, String, f64, f64, f64)> =
        sqlx::query_as("SELECT provider, model, input, output, cached FROM model_prices ORDER BY provider, model").fetch_all(t.conn()).await?;
    t.commit().await?;
    let price = |provider: &str, model: &str, p: prices::Price, source: &str| ModelPrice {
        provider: provider.into(),
        model: model.into(),
        input: p.input,
        output: p.output,
        cached: p.cached,
        source: Some(source.into()),
    };
    let mut data: Vec<ModelPrice> =
        own.into_iter().map(|(pr, m, input, output, cached)| price(&pr, &m, prices::Price { input, output, cached }, "org")).collect();
    data.extend(prices::BUILT_IN.iter().map(|(pr, m, p)| price(pr, m, *p, "built_in")));
    Ok(Json(Page { data, next_cursor: None }))
}

const WHAT: &str = "setting model prices (org admins and owners)";
const MAX_PRICE: f64 = 10_000.0;

#[utoipa::path(
    put, path = "/api/v1/orgs/{org}/prices", tag = "usage",
    summary = "Set the org's price of a model (org admins); calls made from now on are costed with it",
    params(path::Org),
    request_body = ModelPrice,
    responses((status = OK, description = "the price", body = ModelPrice), Errors<(code::Forbidden,)>),
    security(("bearer" = []))
)]
async fn set_price(mut t: Tenant, ApiJson(req): ApiJson<ModelPrice>) -> ApiResult<Json<ModelPrice>> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    ProviderKind::parse(&req.provider)
        .ok_or_else(|| ApiError::invalid(format!("provider {:?} is not one of openai, anthropic, openrouter, ollama", req.provider)))?;
    let model = crate::error::require_text("model", &req.model, 200)?;
    for (field, v) in [("input", req.input), ("output", req.output), ("cached", req.cached)] {
        if !(v.is_finite() && (0.0..=MAX_PRICE).contains(&v)) {
            return Err(ApiError::invalid(format!("{field} must be a price from 0 to {MAX_PRICE} dollars per million tokens")));
        }
    }
    sqlx::query(
        "INSERT INTO model_prices (provider, model, input, output, cached) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (provider, model) DO UPDATE SET input = $3, output = $4, cached = $5, updated_at = now()",
    )
    .bind(&req.provider)
    .bind(&model)
    .bind(req.input)
    .bind(req.output)
    .bind(req.cached)
    .execute(t.conn())
    .await?;
    t.commit().await?;
    Ok(Json(ModelPrice { model, source: Some("org".into()), ..req }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PriceKey {
    provider: String,
    model: String,
}

#[utoipa::path(
    delete, path = "/api/v1/orgs/{org}/prices", tag = "usage",
    summary = "Remove the org's price of a model (org admins): the built-in one applies again",
    params(path::Org, PriceKey),
    responses((status = NO_CONTENT, description = "removed"), Errors<(code::InvalidRequest, code::Forbidden, code::NotFound)>),
    security(("bearer" = []))
)]
async fn remove_price(mut t: Tenant, ApiQuery(key): ApiQuery<PriceKey>) -> ApiResult<StatusCode> {
    t.require_org_role(OrgRole::Admin, WHAT)?;
    let gone = sqlx::query("DELETE FROM model_prices WHERE provider = $1 AND model = $2")
        .bind(&key.provider)
        .bind(&key.model)
        .execute(t.conn())
        .await?
        .rows_affected();
    t.commit().await?;
    if gone == 0 {
        return Err(ApiError::new(kodel_core::ErrorCode::NotFound, format!("the org sets no price for {}/{}", key.provider, key.model)));
    }
    Ok(StatusCode::NO_CONTENT)
}
