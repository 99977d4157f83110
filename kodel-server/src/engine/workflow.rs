//! Workflows in the database: built-in templates copied into an org, custom workflows
//! defined and edited safely, and the one function that moves a task (used by the API,
//! rules and artifact decisions alike).

use std::collections::HashMap;

use kodel_core::api::{Binding, Status, Workflow, WorkflowDef};
use kodel_core::workflow::{StatusCategory, WorkflowTemplate, check_transition, every_move, validate_definition};
use kodel_core::ErrorCode;
use kodel_core::events::{TaskEvent, TaskMoved};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::jobs::{ensure_builtin_templates, template_id_by_name};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::db::OrgTx;

/// The org's copy of a built-in workflow, made on first use.
pub async fn ensure_template(conn: &mut PgConnection, tpl: &WorkflowTemplate) -> ApiResult<Uuid> {
    let made: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO workflows (id, name, template) VALUES ($1, $2, $3) ON CONFLICT (template) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(tpl.name)
    .bind(tpl.slug)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(wf) = made else {
        return Ok(sqlx::query_scalar("SELECT id FROM workflows WHERE template = $1").bind(tpl.slug).fetch_one(&mut *conn).await?);
    };
    ensure_builtin_templates(conn).await?;
    let def = from_template(tpl, tpl.name);
    write_definition(conn, wf, &def, &HashMap::new()).await?;
    Ok(wf)
}

/// A built-in template as a definition (bindings to the built-in job templates).
pub fn from_template(tpl: &WorkflowTemplate, name: &str) -> WorkflowDef {
    WorkflowDef {
        name: name.to_owned(),
        statuses: tpl
            .statuses
            .iter()
            .map(|s| kodel_core::api::StatusDefIn {
                name: s.name.to_owned(),
                category: s.category,
                was: None,
                binding: tpl.bindings.iter().find(|b| b.status == s.name).and_then(|b| {
                    Some(Binding {
                        template: kodel_core::jobs::builtin_template(b.kind)?.name.to_owned(),
                        next: Some(b.next.to_owned()),
                        back: Some(b.back.to_owned()),
                    })
                }),
            })
            .collect(),
        transitions: tpl.transitions.map(|t| t.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()),
        moves: Default::default(),
    }
}

/// A new custom workflow from a definition.
pub async fn create(conn: &mut PgConnection, def: &WorkflowDef) -> ApiResult<Uuid> {
    check(conn, def).await?;
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO workflows (id, name) VALUES ($1, $2)").bind(id).bind(def.name.trim()).execute(&mut *conn).await?;
    write_definition(conn, id, def, &HashMap::new()).await?;
    Ok(id)
}

/// Checks a definition: names, transitions, bindings (templates exist; approving and
/// rejecting lead to statuses the workflow lets the task move to).
async fn check(conn: &mut PgConnection, def: &WorkflowDef) -> ApiResult<()> {
    let name = def.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name must be 1 to 200 characters"));
    }
    let names: Vec<&str> = def.statuses.iter().map(|s| s.name.as_str()).collect();
    let pairs: Vec<(&str, &str)> = def.transitions.iter().flatten().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    validate_definition(&names, &pairs).map_err(ApiError::invalid)?;
    if def.statuses.len() > 50 || pairs.len() > 2500 {
        return Err(ApiError::invalid("at most 50 statuses"));
    }
    ensure_builtin_templates(conn).await?;
    for s in &def.statuses {
        let Some(b) = &s.binding else { continue };
        if template_id_by_name(conn, &b.template).await?.is_none() {
            return Err(ApiError::invalid(format!("binding of {:?}: no job template {:?}", s.name, b.template)));
        }
        for target in [&b.next, &b.back].into_iter().flatten() {
            if !names.iter().any(|n| n.trim().eq_ignore_ascii_case(target.trim())) {
                return Err(ApiError::invalid(format!("binding of {:?}: no status {target:?}", s.name)));
            }
            if def.transitions.is_some()
                && !pairs.iter().any(|(a, b)| a.trim().eq_ignore_ascii_case(s.name.trim()) && b.trim().eq_ignore_ascii_case(target.trim()))
            {
                return Err(ApiError::invalid(format!(
                    "binding of {:?}: the workflow must allow moving from {:?} to {target:?}",
                    s.name, s.name
                )));
            }
        }
    }
    Ok(())
}

/// Replaces a workflow's statuses (keeping those in `keep`, by id), transitions and
/// bindings with the definition's.
async fn write_definition(conn: &mut PgConnection, wf: Uuid, def: &WorkflowDef, keep: &HashMap<String, Uuid>) -> ApiResult<()> {
    // Kept statuses step aside first, so renames and swaps never collide.
    sqlx::query("UPDATE statuses SET name = id::text WHERE workflow_id = $1").bind(wf).execute(&mut *conn).await?;
    let mut ids: HashMap<String, Uuid> = HashMap::new();
    for (i, s) in def.statuses.iter().enumerate() {
        let name = s.name.trim();
        let key = s.was.as_deref().unwrap_or(name).trim().to_lowercase();
        let id = match keep.get(&key) {
            Some(id) => {
                sqlx::query("UPDATE statuses SET name = $2, category = $3, position = $4 WHERE id = $1")
                    .bind(id)
                    .bind(name)
                    .bind(s.category.as_str())
                    .bind(i as i32)
                    .execute(&mut *conn)
                    .await?;
                *id
            }
            None => {
                let id = Uuid::now_v7();
                sqlx::query("INSERT INTO statuses (id, workflow_id, name, category, position) VALUES ($1, $2, $3, $4, $5)")
                    .bind(id)
                    .bind(wf)
                    .bind(name)
                    .bind(s.category.as_str())
                    .bind(i as i32)
                    .execute(&mut *conn)
                    .await?;
                id
            }
        };
        ids.insert(name.to_lowercase(), id);
    }
    let id_of = |n: &str| ids.get(&n.trim().to_lowercase()).copied().ok_or_else(|| ApiError::invalid(format!("no status {n:?}")));
    sqlx::query("DELETE FROM transitions WHERE workflow_id = $1").bind(wf).execute(&mut *conn).await?;
    let names: Vec<&str> = def.statuses.iter().map(|s| s.name.as_str()).collect();
    let pairs: Vec<(&str, &str)> = match &def.transitions {
        Some(t) => t.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect(),
        None => every_move(&names),
    };
    let (from, to): (Vec<Uuid>, Vec<Uuid>) =
        pairs.iter().map(|(a, b)| Ok((id_of(a)?, id_of(b)?))).collect::<ApiResult<Vec<_>>>()?.into_iter().unzip();
    sqlx::query(
        "INSERT INTO transitions (workflow_id, from_status, to_status)
         SELECT $1, f, t FROM unnest($2::uuid[], $3::uuid[]) AS x (f, t) ON CONFLICT DO NOTHING",
    )
    .bind(wf)
    .bind(&from)
    .bind(&to)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM bindings WHERE workflow_id = $1").bind(wf).execute(&mut *conn).await?;
    for s in &def.statuses {
        let Some(b) = &s.binding else { continue };
        let template = template_id_by_name(conn, &b.template)
            .await?
            .ok_or_else(|| ApiError::invalid(format!("no job template {:?}", b.template)))?;
        sqlx::query(
            "INSERT INTO bindings (status_id, workflow_id, template_id, next_status_id, return_status_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_of(&s.name)?)
        .bind(wf)
        .bind(template)
        .bind(b.next.as_deref().map(id_of).transpose()?)
        .bind(b.back.as_deref().map(id_of).transpose()?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Replaces a workflow's definition. A status that still holds tasks may only go away
/// if `def.moves` says where its tasks go; each task moved that way gets an event.
pub async fn edit(db: &mut OrgTx, wf: Uuid, def: &WorkflowDef) -> ApiResult<()> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM workflows WHERE id = $1 FOR UPDATE").bind(wf).fetch_optional(db.conn()).await?;
    found.ok_or_else(|| ApiError::new(ErrorCode::WorkflowNotFound, "no such workflow"))?;
    check(db.conn(), def).await?;
    let current: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, name FROM statuses WHERE workflow_id = $1").bind(wf).fetch_all(db.conn()).await?;
    let by_name: HashMap<String, Uuid> = current.iter().map(|(id, n)| (n.to_lowercase(), *id)).collect();
    let mut keep = HashMap::new();
    for s in &def.statuses {
        let key = s.was.as_deref().unwrap_or(&s.name).trim().to_lowercase();
        match by_name.get(&key) {
            Some(id) => {
                keep.insert(key, *id);
            }
            None if s.was.is_some() => {
                return Err(ApiError::invalid(format!("status {:?} (was {:?}) is not in this workflow", s.name, s.was)));
            }
            None => {}
        }
    }
    let new_name = |n: &str| def.statuses.iter().find(|s| s.name.trim().eq_ignore_ascii_case(n.trim())).map(|s| s.name.trim().to_owned());
    let removed: Vec<&(Uuid, String)> = current.iter().filter(|(id, _)| !keep.values().any(|k| k == id)).collect();
    let mut relocate = Vec::new();
    for (id, name) in &removed {
        let tasks: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tasks WHERE status_id = $1 ORDER BY id FOR UPDATE")
            .bind(id)
            .fetch_all(db.conn())
            .await?;
        if tasks.is_empty() {
            continue;
        }
        let target = def
            .moves
            .iter()
            .find(|(from, _)| from.trim().eq_ignore_ascii_case(name))
            .map(|(_, to)| to)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::StatusNotEmpty, format!("status {name:?} still holds {} task(s): say where they go with \"moves\": {{\"{name}\": \"<status>\"}}", tasks.len()))
                    .with_details(json!({ "status": name, "tasks": tasks.len() }))
            })?;
        let target = new_name(target).ok_or_else(|| ApiError::invalid(format!("moves: {name:?} -> {target:?}: no such status in the new definition")))?;
        relocate.push((name.clone(), target, tasks));
    }
    write_definition(db.conn(), wf, def, &keep).await?;
    for (from, to, tasks) in relocate {
        sqlx::query(
            "UPDATE tasks SET status_id = (SELECT id FROM statuses WHERE workflow_id = $2 AND name = $3),
                    version = version + 1, updated_at = now() WHERE id = ANY ($1)",
        )
        .bind(&tasks)
        .bind(wf)
        .bind(&to)
        .execute(db.conn())
        .await?;
        for task in tasks {
            let moved = TaskMoved { from: from.clone(), to: to.clone(), reason: Some("workflow edited".into()), rule_id: None, artifact_id: None };
            events::record(db, task, TaskEvent::TaskMoved(moved)).await?;
        }
    }
    let gone: Vec<Uuid> = removed.iter().map(|(id, _)| *id).collect();
    sqlx::query("DELETE FROM statuses WHERE id = ANY ($1)").bind(&gone).execute(db.conn()).await?;
    sqlx::query("UPDATE workflows SET name = $2 WHERE id = $1").bind(wf).bind(def.name.trim()).execute(db.conn()).await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    id: Uuid,
    name: String,
    category: String,
    position: i32,
    template: Option<String>,
    next: Option<String>,
    back: Option<String>,
}

pub async fn load(conn: &mut PgConnection, id: Uuid) -> ApiResult<Workflow> {
    let (name, template): (String, Option<String>) =
        sqlx::query_as("SELECT name, template FROM workflows WHERE id = $1").bind(id).fetch_one(&mut *conn).await?;
    let statuses: Vec<StatusRow> = sqlx::query_as(
        "SELECT s.id, s.name, s.category, s.position, jt.name AS template, n.name AS next, r.name AS back
         FROM statuses s
         LEFT JOIN bindings b ON b.status_id = s.id
         LEFT JOIN ai_job_templates jt ON jt.id = b.template_id
         LEFT JOIN statuses n ON n.id = b.next_status_id
         LEFT JOIN statuses r ON r.id = b.return_status_id
         WHERE s.workflow_id = $1 ORDER BY s.position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let pairs: Vec<(Uuid, Uuid)> = sqlx::query_as("SELECT from_status, to_status FROM transitions WHERE workflow_id = $1")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let statuses = statuses
        .iter()
        .map(|s| Status {
            name: s.name.clone(),
            category: StatusCategory::parse(&s.category).unwrap_or(StatusCategory::Unstarted),
            position: s.position,
            next: statuses.iter().filter(|o| pairs.contains(&(s.id, o.id))).map(|o| o.name.clone()).collect(),
            binding: s.template.as_ref().map(|t| Binding { template: t.clone(), next: s.next.clone(), back: s.back.clone() }),
        })
        .collect();
    Ok(Workflow { id, name, template, statuses })
}

/// The result of a move: where the task was and where it is.
pub struct Moved {
    pub from: String,
    pub to: String,
}

/// Why a task moved, when it was not a person's plain move.
#[derive(Debug, Clone, Default)]
pub struct MoveCause {
    pub reason: Option<String>,
    pub rule_id: Option<Uuid>,
    pub artifact_id: Option<Uuid>,
}

/// Moves a task to the status named `to` (any case) if its workflow allows it, bumping
/// its version and recording `task.moved` with its cause.
pub async fn move_task(db: &mut OrgTx, task: Uuid, to: &str, why: MoveCause) -> ApiResult<Moved> {
    // One statement: the task (locked), where it is, the target, and the allowed moves.
    let (from, target_id, target_name, allowed): (String, Option<Uuid>, Option<String>, Vec<String>) = sqlx::query_as(
        "SELECT f.name,
                (SELECT id FROM statuses WHERE workflow_id = p.workflow_id AND lower(name) = lower($2)),
                (SELECT name FROM statuses WHERE workflow_id = p.workflow_id AND lower(name) = lower($2)),
                ARRAY(SELECT s.name FROM transitions tr JOIN statuses s ON s.id = tr.to_status
                      WHERE tr.from_status = t.status_id ORDER BY s.position)
         FROM tasks t JOIN projects p ON p.id = t.project_id JOIN statuses f ON f.id = t.status_id
         WHERE t.id = $1 FOR UPDATE OF t",
    )
    .bind(task)
    .bind(to.trim())
    .fetch_one(db.conn())
    .await?;
    let target = target_id.zip(target_name);
    let pairs: Vec<(&str, &str)> = allowed.iter().map(|a| (from.as_str(), a.as_str())).collect();
    let to_name = target.as_ref().map_or(to.trim(), |(_, n)| n.as_str());
    if let Err(refused) = check_transition(pairs, &from, to_name) {
        let (code, message) = match target {
            Some(_) => (ErrorCode::TransitionNotAllowed, refused.to_string()),
            None => (ErrorCode::InvalidRequest, format!("no status {to_name:?} in this workflow; allowed: {}", refused.allowed.join(", "))),
        };
        return Err(ApiError::new(code, message).with_details(json!({ "from": from, "allowed": refused.allowed })));
    }
    let Some((status_id, to)) = target else { return Err(ApiError::internal("transition to unknown status")) };
    sqlx::query("UPDATE tasks SET status_id = $2, version = version + 1, updated_at = now() WHERE id = $1")
        .bind(task)
        .bind(status_id)
        .execute(db.conn())
        .await?;
    let MoveCause { reason, rule_id, artifact_id } = why;
    let moved = TaskMoved { from: from.clone(), to: to.clone(), reason, rule_id, artifact_id };
    events::record(db, task, TaskEvent::TaskMoved(moved)).await?;
    Ok(Moved { from, to })
}
