//! Automation rules at work: after a change, the rules its events can fire are loaded
//! (by trigger kind, so a project with many rules pays only for the relevant ones),
//! their conditions checked, and their actions run in the same transaction. Firings,
//! failures and stopped cascades are events on the task. Webhooks are queued here and
//! sent after commit (engine::webhooks), so a slow or failing endpoint never holds up
//! the change. Time-based rules (schedule, stale) run from the background loop.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use kodel_core::ErrorCode;
use kodel_core::events::{Change, CommentAdded, RuleCascadeStopped, RuleFailed, RuleFired, TaskEvent, TaskUpdated};
use kodel_core::api::{MAX_LABELS, Priority};
use kodel_core::rules::{Action, MAX_CASCADE_DEPTH, RuleSpec, TaskFacts, Trigger, conditions_hold};
use regex::Regex;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::scoped::Cause;
use crate::engine::workflow::MoveCause;
use crate::engine::{jobs, workflow};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::db::OrgTx;
use crate::db::scoped::Recorded;

/// Compiled patterns, shared by every rule that uses them. Bounded: cleared when full.
static PATTERNS: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Default::default);
const MAX_CACHED_PATTERNS: usize = 2000;
/// Patterns compile to at most this much memory, so a rule cannot exhaust the server.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

pub fn compile(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern).size_limit(PATTERN_SIZE_LIMIT).build().map_err(|e| e.to_string())
}

fn pattern_matches(pattern: &str, text: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= MAX_CACHED_PATTERNS && !cache.contains_key(pattern) {
        cache.clear();
    }
    let re = cache.entry(pattern.to_owned()).or_insert_with(|| compile(pattern).ok());
    re.as_ref().is_some_and(|re| re.is_match(text))
}

pub fn check_cron(expr: &str) -> Result<(), String> {
    croner::Cron::new(expr).parse().map(|_| ()).map_err(|e| e.to_string())
}

/// Checks a rule's spec (cron syntax, patterns, sizes) before it is stored.
/// Webhook destinations must be public addresses (net.rs) unless the server allows
/// private ones.
pub async fn check_webhooks(spec: &RuleSpec, allow_private: bool) -> ApiResult<()> {
    for action in &spec.actions {
        if let kodel_core::rules::Action::Webhook(hook) = action {
            crate::net::check_public(&hook.url, allow_private).await.map_err(|e| ApiError::invalid(format!("webhook: {e}")))?;
        }
    }
    Ok(())
}

pub fn validate(spec: &RuleSpec) -> ApiResult<()> {
    kodel_core::rules::validate(spec, &check_cron, &|p| compile(p).map(|_| ())).map_err(ApiError::invalid)
}

struct LoadedRule {
    id: Uuid,
    name: String,
    dry_run: bool,
    spec: RuleSpec,
}

#[derive(sqlx::FromRow)]
pub struct FactsRow {
    status: String,
    labels: Vec<String>,
    priority: String,
    assignee: Option<String>,
    title: String,
    description: String,
}

impl FactsRow {
    fn facts(&self) -> TaskFacts<'_> {
        TaskFacts {
            status: &self.status,
            labels: &self.labels,
            priority: Priority::parse(&self.priority).unwrap_or_default(),
            assignee: self.assignee.as_deref(),
            title: &self.title,
            description: &self.description,
        }
    }
}

/// The columns of `FactsRow`, over `FACTS_FROM`.
pub(crate) const FACTS_COLUMNS: &str = "s.name AS status, t.labels, t.priority, u.email AS assignee, t.title, t.description";
pub(crate) const FACTS_FROM: &str =
    "tasks t JOIN statuses s ON s.id = t.status_id LEFT JOIN public.users u ON u.id = t.assignee_id";

async fn facts(db: &mut OrgTx, task: Uuid) -> ApiResult<FactsRow> {
    Ok(sqlx::query_as(&format!("SELECT {FACTS_COLUMNS} FROM {FACTS_FROM} WHERE t.id = $1"))
    .bind(task)
    .fetch_one(db.conn())
    .await?)
}

/// A stored rule as the event query returns it (JSON, parsed straight into the spec).
#[derive(serde::Deserialize)]
struct RuleJson {
    id: Uuid,
    name: String,
    dry_run: bool,
    spec: Box<serde_json::value::RawValue>,
}

/// Runs the rules that can fire on an event, given the task's facts and the candidate
/// rules (JSON) that `engine::context` read with them; `Trigger::fires_on` decides.
pub async fn run(db: &mut OrgTx, ev: &Recorded, facts_now: FactsRow, rules: &str) -> ApiResult<()> {
    let rules: Vec<RuleJson> = serde_json::from_str(rules).map_err(ApiError::internal)?;
    let mut task = facts_now;
    for r in rules {
        let spec: RuleSpec = match serde_json::from_str(r.spec.get()) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(rule = %r.id, error = %e, "stored rule does not parse; skipped");
                continue;
            }
        };
        let rule = LoadedRule { id: r.id, name: r.name, dry_run: r.dry_run, spec };
        if !rule.spec.trigger.fires_on(&ev.event) {
            continue;
        }
        if !conditions_hold(rule.spec.how, &rule.spec.conditions, &task.facts(), &pattern_matches) {
            continue;
        }
        let on = ev.event.kind().as_str();
        if ev.cause.chain.contains(&rule.id) || ev.cause.depth >= MAX_CASCADE_DEPTH {
            let reason = if ev.cause.depth >= MAX_CASCADE_DEPTH {
                format!("the cascade reached its depth limit of {MAX_CASCADE_DEPTH}")
            } else {
                "the rule already fired in this cascade".to_owned()
            };
            let stopped = RuleCascadeStopped { rule_id: rule.id, rule: rule.name.clone(), on: on.to_owned(), reason };
            events::record(db, ev.task_id, TaskEvent::RuleCascadeStopped(stopped)).await?;
            continue;
        }
        let mut chain = ev.cause.chain.clone();
        chain.push(rule.id);
        let cause = Cause { depth: ev.cause.depth + 1, chain };
        fire(db, &rule, ev.task_id, on, cause, Some(ev.event.payload())).await?;
        task = facts(db, ev.task_id).await?;
    }
    Ok(())
}

/// Fires one rule on one task: records the firing, then runs each action (a failing
/// action is recorded and the next one still runs). Events the actions write carry
/// `cause` (the depth and the rules on the way) so cascades stay bounded.
async fn fire(db: &mut OrgTx, rule: &LoadedRule, task: Uuid, on: &str, cause: Cause, payload: Option<Value>) -> ApiResult<()> {
    let fired = RuleFired {
        rule_id: rule.id,
        rule: rule.name.clone(),
        on: on.to_owned(),
        dry_run: rule.dry_run,
        actions: serde_json::to_value(&rule.spec.actions).map_err(ApiError::internal)?,
        cause: payload,
    };
    events::record(db, task, TaskEvent::RuleFired(fired)).await?;
    if rule.dry_run {
        return Ok(());
    }
    let saved = (std::mem::replace(&mut db.cause, cause), db.actor.take());
    let mut result = Ok(());
    for action in &rule.spec.actions {
        match act(db, rule, task, action).await {
            Ok(()) => {}
            Err(e) if e.code != ErrorCode::Internal && e.code != ErrorCode::Unavailable => {
                let action = serde_json::to_value(action).map_err(ApiError::internal)?;
                let failed = RuleFailed { rule_id: rule.id, rule: rule.name.clone(), action, error: e.message };
                if let Err(e) = events::record(db, task, TaskEvent::RuleFailed(failed)).await {
                    result = Err(e);
                    break;
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    (db.cause, db.actor) = saved;
    result
}

/// One action on one task. Domain errors (a move the workflow refuses, an unknown
/// template) come back as errors for `fire` to record.
async fn act(db: &mut OrgTx, rule: &LoadedRule, task: Uuid, action: &Action) -> ApiResult<()> {
    match action {
        Action::Move(to) => {
            workflow::move_task(db, task, to, MoveCause { rule_id: Some(rule.id), ..Default::default() }).await?;
        }
        Action::Assign(who) => {
            let id = match who.as_deref() {
                Some(email) => {
                    Some(db.member_by_email(email).await?.ok_or_else(|| ApiError::invalid(format!("{email} is not a member of this org")))?)
                }
                None => None,
            };
            let before: Option<(Option<String>,)> = sqlx::query_as(
                "WITH old AS (SELECT t.id, u.email FROM tasks t LEFT JOIN public.users u ON u.id = t.assignee_id WHERE t.id = $1 FOR UPDATE OF t)
                 UPDATE tasks t SET assignee_id = $2, version = version + 1, updated_at = now() FROM old
                 WHERE t.id = old.id AND t.assignee_id IS DISTINCT FROM $2 RETURNING old.email",
            )
            .bind(task)
            .bind(id)
            .fetch_optional(db.conn())
            .await?;
            if let Some((from,)) = before {
                let to = who.as_deref().map(|w| w.trim().to_lowercase());
                changed(db, task, "assignee", json!(from), json!(to), rule.id).await?;
            }
        }
        Action::AddLabel(label) | Action::RemoveLabel(label) => {
            let label = label.trim();
            let (from,): (Vec<String>,) = sqlx::query_as("SELECT labels FROM tasks WHERE id = $1 FOR UPDATE").bind(task).fetch_one(db.conn()).await?;
            let mut to = from.clone();
            if matches!(action, Action::AddLabel(_)) {
                if !to.iter().any(|l| l == label) {
                    if to.len() >= MAX_LABELS {
                        return Err(ApiError::invalid(format!("the task already has {MAX_LABELS} labels")));
                    }
                    to.push(label.to_owned());
                }
            } else {
                to.retain(|l| l != label);
            }
            if to != from {
                sqlx::query("UPDATE tasks SET labels = $2, version = version + 1, updated_at = now() WHERE id = $1")
                    .bind(task)
                    .bind(&to)
                    .execute(db.conn())
                    .await?;
                changed(db, task, "labels", json!(from), json!(to), rule.id).await?;
            }
        }
        Action::SetPriority(p) => {
            let from: Option<String> = sqlx::query_scalar(
                "WITH old AS (SELECT id, priority FROM tasks WHERE id = $1 FOR UPDATE)
                 UPDATE tasks t SET priority = $2, version = version + 1, updated_at = now() FROM old
                 WHERE t.id = old.id AND t.priority <> $2 RETURNING old.priority",
            )
            .bind(task)
            .bind(p.as_str())
            .fetch_optional(db.conn())
            .await?;
            if let Some(from) = from {
                changed(db, task, "priority", json!(from), json!(p), rule.id).await?;
            }
        }
        Action::Comment(body) => {
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO comments (id, task_id, author_id, body) VALUES ($1, $2, NULL, $3)")
                .bind(id)
                .bind(task)
                .bind(body.trim())
                .execute(db.conn())
                .await?;
            let added = CommentAdded { comment_id: id, body: body.trim().to_owned(), rule_id: Some(rule.id) };
            events::record(db, task, TaskEvent::CommentAdded(added)).await?;
        }
        Action::StartJob(template) => {
            let id = jobs::template_id_by_name(db.conn(), template)
                .await?
                .ok_or_else(|| ApiError::new(ErrorCode::TemplateNotFound, format!("no job template {template:?}")))?;
            jobs::start_now(db, task, id).await?;
        }
        Action::Webhook(hook) => {
            let payload = json!({ "rule": { "id": rule.id, "name": rule.name }, "org": db.slug.as_str(), "task": task_json(db, task).await? });
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, rule_id, task_id, url, payload, max_attempts) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(Uuid::now_v7())
            .bind(rule.id)
            .bind(task)
            .bind(&hook.url)
            .bind(payload)
            .bind(hook.max_attempts as i32)
            .execute(db.conn())
            .await?;
            db.queued_webhooks = true;
        }
    }
    Ok(())
}

async fn changed(db: &mut OrgTx, task: Uuid, field: &str, from: Value, to: Value, rule: Uuid) -> ApiResult<()> {
    let changes = [(field.to_owned(), Change { from, to })].into();
    events::record(db, task, TaskEvent::TaskUpdated(TaskUpdated { changes, rule_id: Some(rule) })).await?;
    Ok(())
}

async fn task_json(db: &mut OrgTx, task: Uuid) -> ApiResult<Value> {
    let row: (String, String, String, Vec<String>, String, Option<String>) = sqlx::query_as(
        "SELECT p.key || '-' || t.number, t.title, s.name, t.labels, t.priority, u.email FROM tasks t
         JOIN projects p ON p.id = t.project_id JOIN statuses s ON s.id = t.status_id
         LEFT JOIN public.users u ON u.id = t.assignee_id WHERE t.id = $1",
    )
    .bind(task)
    .fetch_one(db.conn())
    .await?;
    Ok(json!({ "key": row.0, "title": row.1, "status": row.2, "labels": row.3, "priority": row.4, "assignee": row.5 }))
}

#[derive(sqlx::FromRow)]
struct TimedRow {
    id: Uuid,
    name: String,
    dry_run: bool,
    spec: Value,
    project_id: Option<Uuid>,
    /// The last run of a schedule (or the rule's creation).
    since: DateTime<Utc>,
}

/// Schedule and stale rules of one org: a schedule whose next slot has come runs on
/// every task that meets its conditions; a stale rule runs once per quiet spell of a
/// task. Returns how many firings happened.
pub async fn run_timed(db: &mut OrgTx, now: DateTime<Utc>) -> ApiResult<usize> {
    let rows: Vec<TimedRow> = sqlx::query_as(
        "SELECT id, name, dry_run, spec, project_id, coalesce(last_run_at, created_at) AS since FROM automation_rules
         WHERE enabled AND trigger_kind IN ('schedule', 'stale') ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(db.conn())
    .await?;
    let mut fired = 0;
    for TimedRow { id, name, dry_run, spec, project_id: project, since } in rows {
        let Ok(spec) = serde_json::from_value::<RuleSpec>(spec) else { continue };
        let rule = LoadedRule { id, name, dry_run, spec };
        let tasks: Vec<Uuid> = match &rule.spec.trigger {
            Trigger::Schedule { cron } => {
                let Ok(cron) = croner::Cron::new(cron).parse() else { continue };
                let due = cron.find_next_occurrence(&since, false).is_ok_and(|next| next <= now);
                if !due {
                    continue;
                }
                sqlx::query("UPDATE automation_rules SET last_run_at = $2 WHERE id = $1").bind(id).bind(now).execute(db.conn()).await?;
                sqlx::query_scalar("SELECT id FROM tasks WHERE archived_at IS NULL AND ($1::uuid IS NULL OR project_id = $1) ORDER BY id LIMIT 1000")
                    .bind(project)
                    .fetch_all(db.conn())
                    .await?
            }
            Trigger::Stale { hours } => {
                sqlx::query_scalar(
                    "SELECT t.id FROM tasks t
                     WHERE t.archived_at IS NULL AND ($1::uuid IS NULL OR t.project_id = $1)
                       AND t.updated_at < $2 - make_interval(hours => $3)
                       AND NOT EXISTS (SELECT 1 FROM rule_marks m WHERE m.rule_id = $4 AND m.task_id = t.id AND m.mark = t.version::text)
                     ORDER BY t.updated_at LIMIT 1000",
                )
                .bind(project)
                .bind(now)
                .bind(*hours as i32)
                .bind(id)
                .fetch_all(db.conn())
                .await?
            }
            _ => continue,
        };
        for task in tasks {
            let f = facts(db, task).await?;
            if !conditions_hold(rule.spec.how, &rule.spec.conditions, &f.facts(), &pattern_matches) {
                continue;
            }
            if let Trigger::Stale { .. } = rule.spec.trigger {
                sqlx::query("INSERT INTO rule_marks (rule_id, task_id, mark) SELECT $1, id, version::text FROM tasks WHERE id = $2 ON CONFLICT DO NOTHING")
                    .bind(id)
                    .bind(task)
                    .execute(db.conn())
                    .await?;
            }
            fire(db, &rule, task, rule.spec.trigger.kind(), Cause { depth: 1, chain: vec![rule.id] }, None).await?;
            fired += 1;
        }
    }
    Ok(fired)
}
