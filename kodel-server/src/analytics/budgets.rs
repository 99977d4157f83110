//! Budgets: limits on what LLM calls may spend, in money and/or tokens, per calendar
//! month (UTC) or in total, on the org, a project or a task. What was spent is kept in
//! `spend` (one writer: `add_spend`, in the transaction that meters a call). The proxy
//! asks `exceeded` before it forwards a call; a call that takes a budget past 80 % of
//! its limit marks it warned for the period (`crossed_warning`), and the caller records
//! `budget.warning` on the task.

use kodel_core::usage::{Budget, BudgetPeriod, BudgetScope};
use uuid::Uuid;

use crate::db::OrgTx;
use crate::error::ApiResult;

/// Where a budget stands in its current period.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Standing {
    pub id: Uuid,
    pub scope: String,
    pub period: String,
    pub max_cost_micros: Option<i64>,
    pub max_tokens: Option<i64>,
    pub cost_micros: i64,
    pub tokens: i64,
    /// `2026-12` or `total`.
    pub current: String,
}

impl Standing {
    /// The larger of the spent fractions of money and tokens.
    pub fn used(&self) -> f64 {
        let part = |spent: i64, max: Option<i64>| max.map_or(0.0, |m| if m <= 0 { f64::INFINITY } else { spent as f64 / m as f64 });
        part(self.cost_micros, self.max_cost_micros).max(part(self.tokens, self.max_tokens))
    }

    pub fn spent(&self) -> bool {
        self.used() >= 1.0
    }

    /// `the project's budget of $10.00 a month ($10.02 spent)`.
    pub fn describe(&self) -> String {
        let when = if self.period == "month" { " a month" } else { " in total" };
        let mut limits = Vec::new();
        if let Some(m) = self.max_cost_micros {
            limits.push(format!("{} ({} spent)", dollars(m), dollars(self.cost_micros)));
        }
        if let Some(t) = self.max_tokens {
            limits.push(format!("{t} tokens ({} used)", self.tokens));
        }
        format!("the {}'s budget of {}{when}", self.scope, limits.join(" and "))
    }
}

pub fn dollars(micros: i64) -> String {
    format!("${:.2}", micros as f64 / 1_000_000.0)
}

/// SQL: the budgets that apply to a call on task `$1` (null: a call outside any task)
/// (the org's; the task's project's and the task's own), with their spend in their
/// current period. `schema` qualifies the tables (`"org_x".`) for a statement run
/// outside the org's scope, or is empty.
fn standing(schema: &str) -> String {
    format!(
        "WITH call AS (SELECT (SELECT project_id FROM {schema}tasks WHERE id = $1) AS project)
         SELECT b.id, b.scope, b.period, b.max_cost_micros, b.max_tokens,
                coalesce(s.cost_micros, 0) AS cost_micros, coalesce(s.tokens, 0) AS tokens, cur.period AS current
         FROM call, {schema}budgets b
         CROSS JOIN LATERAL (SELECT CASE b.period WHEN 'month' THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') ELSE 'total' END AS period) cur
         LEFT JOIN {schema}spend s ON s.scope = b.scope AND s.period = cur.period
              AND s.scope_id = coalesce(b.task_id, b.project_id, '00000000-0000-0000-0000-000000000000')
         WHERE b.scope = 'org' OR (b.scope = 'project' AND b.project_id = call.project) OR (b.scope = 'task' AND b.task_id = $1)"
    )
}

/// The first budget a call on `task` (None: a gateway call) may not go past, if any
/// is spent. One statement: the proxy asks it before every call, outside any
/// transaction (`schema` naming the org's), and a resume inside the org's (`""`).
pub async fn exceeded<'e>(conn: impl sqlx::PgExecutor<'e>, schema: &str, task: Option<Uuid>) -> ApiResult<Option<Standing>> {
    let all: Vec<Standing> = sqlx::query_as(&standing(schema)).bind(task).fetch_all(conn).await?;
    Ok(all.into_iter().find(Standing::spent))
}

/// Adds a call to the org's, its project's and its task's spend, this month and in
/// total.
pub async fn add_spend(db: &mut OrgTx, project: Option<Uuid>, task: Option<Uuid>, cost_micros: i64, tokens: i64) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO spend (scope, scope_id, period, cost_micros, tokens)
         SELECT s.scope, s.id, p.period, $3, $4
         FROM (VALUES ('org', '00000000-0000-0000-0000-000000000000'::uuid), ('project', $1::uuid), ('task', $2::uuid)) s(scope, id)
         CROSS JOIN (VALUES (to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')), ('total')) p(period)
         WHERE s.id IS NOT NULL
         ON CONFLICT (scope, scope_id, period)
         DO UPDATE SET cost_micros = spend.cost_micros + EXCLUDED.cost_micros, tokens = spend.tokens + EXCLUDED.tokens",
    )
    .bind(project)
    .bind(task)
    .bind(cost_micros)
    .bind(tokens)
    .execute(db.conn())
    .await?;
    Ok(())
}

/// The budgets that apply to a call on `task` and that it took to 80 % or more of
/// their limit for the first time this period, marked warned.
pub async fn crossed_warning(db: &mut OrgTx, task: Option<Uuid>) -> ApiResult<Vec<Standing>> {
    let all: Vec<Standing> = sqlx::query_as(&format!(
        "WITH st AS ({}) SELECT st.* FROM st JOIN budgets b ON b.id = st.id WHERE b.warned IS DISTINCT FROM st.current",
        standing("")
    ))
    .bind(task)
    .fetch_all(db.conn())
    .await?;
    let crossed: Vec<Standing> = all.into_iter().filter(|s| s.used() >= 0.8).collect();
    for s in &crossed {
        sqlx::query("UPDATE budgets SET warned = $2 WHERE id = $1").bind(s.id).bind(&s.current).execute(db.conn()).await?;
    }
    Ok(crossed)
}

#[derive(sqlx::FromRow)]
pub struct BudgetRow {
    pub id: Uuid,
    #[sqlx(try_from = "String")]
    pub scope: BudgetScope,
    pub project: Option<String>,
    pub task: Option<String>,
    #[sqlx(try_from = "String")]
    pub period: BudgetPeriod,
    pub max_cost_micros: Option<i64>,
    pub max_tokens: Option<i64>,
    pub cost_micros: i64,
    pub tokens: i64,
}

/// Every budget of the org with its spend this period, for `GET /budgets`.
pub const LIST: &str = "
    SELECT b.id, b.scope, p.key AS project, tp.key || '-' || t.number AS task, b.period, b.max_cost_micros, b.max_tokens,
           coalesce(s.cost_micros, 0) AS cost_micros, coalesce(s.tokens, 0) AS tokens
    FROM budgets b
    LEFT JOIN projects p ON p.id = b.project_id
    LEFT JOIN tasks t ON t.id = b.task_id LEFT JOIN projects tp ON tp.id = t.project_id
    LEFT JOIN spend s ON s.scope = b.scope AND s.scope_id = coalesce(b.task_id, b.project_id, '00000000-0000-0000-0000-000000000000')
         AND s.period = CASE b.period WHEN 'month' THEN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') ELSE 'total' END
    ORDER BY b.scope, p.key, tp.key, t.number, b.period";

impl From<BudgetRow> for Budget {
    fn from(r: BudgetRow) -> Self {
        Budget {
            id: r.id,
            scope: r.scope,
            project: r.project,
            task: r.task,
            period: r.period,
            max_cost: r.max_cost_micros.map(|m| m as f64 / 1_000_000.0),
            max_tokens: r.max_tokens,
            spent_cost: r.cost_micros as f64 / 1_000_000.0,
            spent_tokens: r.tokens,
        }
    }
}
