//! What an agent gets with a job: the task, the job template, the project's modules and
//! instance template, and the system prompt. Read in one statement.

use kodel_core::OrgSlug;
use kodel_core::infra::InstanceTemplate;
use kodel_core::protocol::{AssignedJob, AssignedModule, AssignedTask, AssignedTemplate, Assignment};
use uuid::Uuid;

use crate::AppState;
use crate::engine::queue::Claimed;
use crate::error::{ApiError, ApiResult};
use crate::tenant::OrgTx;

#[derive(sqlx::FromRow)]
struct Row {
    project_id: Uuid,
    key: String,
    title: String,
    description: String,
    labels: Vec<String>,
    priority: String,
    template: String,
    prompt: String,
    model: Option<String>,
    allowed_tools: Vec<String>,
    max_steps: i32,
    time_limit_secs: i32,
    budget_tokens: Option<i64>,
    modules: serde_json::Value,
    instance_template: Option<serde_json::Value>,
    used: i64,
}

/// A job ready to send, with what the connection keeps of it.
pub struct Loaded {
    pub assignment: Assignment,
    pub project_id: Uuid,
    /// Tokens the job spent in earlier attempts.
    pub used: u64,
}

/// None when the job is no longer this agent's (cancelled or re-queued since the claim).
pub async fn load(state: &AppState, org_id: Uuid, slug: &OrgSlug, job: &Claimed, agent: Uuid) -> ApiResult<Option<Loaded>> {
    let mut db = OrgTx::begin(state, org_id, slug).await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.project_id, p.key || '-' || t.number AS key, t.title, t.description, t.labels, t.priority,
                jt.name AS template, jt.prompt, jt.model, jt.allowed_tools, jt.max_steps, jt.time_limit_secs, jt.budget_tokens,
                coalesce((SELECT jsonb_agg(jsonb_build_object('name', m.name, 'url', m.url,
                                 'default_branch', m.default_branch, 'path_prefix', m.path_prefix) ORDER BY m.name)
                          FROM modules m WHERE m.project_id = t.project_id), '[]') AS modules,
                (SELECT jsonb_build_object('id', i.id, 'name', i.name, 'base_image', i.base_image, 'packages', i.packages,
                        'setup_script', i.setup_script, 'env', i.env, 'network', i.network, 'cpu_limit', i.cpu_limit,
                        'memory_mb', i.memory_mb, 'dind', i.dind, 'labels', i.labels,
                        'created_at', i.created_at, 'updated_at', i.updated_at)
                 FROM instance_templates i WHERE i.id = p.instance_template_id) AS instance_template,
                coalesce((j.usage->>'input_tokens')::bigint, 0) + coalesce((j.usage->>'output_tokens')::bigint, 0) AS used
         FROM ai_jobs j JOIN tasks t ON t.id = j.task_id JOIN projects p ON p.id = t.project_id
         JOIN ai_job_templates jt ON jt.id = j.template_id
         WHERE j.id = $1 AND j.state = 'running' AND j.lease_agent = $2",
    )
    .bind(job.id)
    .bind(agent)
    .fetch_optional(db.conn())
    .await?;
    db.commit().await?;
    let Some(row) = row else { return Ok(None) };
    let modules: Vec<AssignedModule> = serde_json::from_value(row.modules).map_err(ApiError::internal)?;
    let instance_template: Option<InstanceTemplate> = row.instance_template.map(serde_json::from_value).transpose().map_err(ApiError::internal)?;
    let assignment = Assignment {
        job: AssignedJob { id: job.id, kind: job.kind.clone(), attempt: job.attempts },
        task: AssignedTask { key: row.key, title: row.title, description: row.description, labels: row.labels, priority: row.priority },
        system_prompt: state.llm.system_prompt(&row.prompt),
        template: AssignedTemplate {
            name: row.template,
            prompt: row.prompt,
            model: row.model,
            allowed_tools: row.allowed_tools,
            max_steps: row.max_steps,
            time_limit_secs: row.time_limit_secs,
            budget_tokens: row.budget_tokens,
        },
        modules,
        instance_template,
    };
    Ok(Some(Loaded { assignment, project_id: row.project_id, used: row.used.max(0) as u64 }))
}
