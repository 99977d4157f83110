//! What an agent gets with a job: the task, the job template, the project's settings,
//! modules (with their credentials, opened here) and instance template, the task's
//! branch, and the system prompt.

use kodel_core::OrgSlug;
use kodel_core::forge::{ForgeKind, forge_for, task_branch};
use kodel_core::infra::{InstanceTemplate, RepoCredentials};
use kodel_core::protocol::{AssignedJob, AssignedModule, AssignedProject, AssignedTask, AssignedTemplate, Assignment};
use uuid::Uuid;

use crate::AppState;
use crate::db::scoped::begin_scoped;
use crate::engine::jobs::Claimed;
use crate::error::{ApiError, ApiResult};

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
    instance_template: Option<serde_json::Value>,
    used: i64,
    project_key: String,
    test_command: Option<String>,
    review_rules: Option<String>,
    /// The branch an earlier job of the task pushed, if any.
    branch: Option<String>,
    first_seq: i32,
    /// The agent's token still works (not revoked since the connection was checked).
    token_live: bool,
}

#[derive(sqlx::FromRow)]
struct ModuleRow {
    name: String,
    url: String,
    default_branch: String,
    path_prefix: String,
    credentials: Option<Vec<u8>>,
    forge: Option<String>,
    forge_api_url: Option<String>,
}

/// A job ready to send, with what the connection keeps of it.
pub struct Loaded {
    pub assignment: Assignment,
    pub project_id: Uuid,
    /// Tokens the job spent in earlier attempts.
    pub used: u64,
}

/// None when the job is no longer this agent's (cancelled or re-queued since the claim);
/// `unauthorized` when the agent's token died since its last check, so nothing of the
/// job (module credentials least of all) reaches it.
pub async fn load(state: &AppState, slug: &OrgSlug, job: &Claimed, agent: Uuid, token_id: Uuid) -> ApiResult<Option<Loaded>> {
    let mut db = begin_scoped(&state.pool, slug).await?;
    let sql = format!(
        "SELECT t.project_id, p.key || '-' || t.number AS key, t.title, t.description, t.labels, t.priority,
                jt.name AS template, jt.prompt, jt.model, jt.allowed_tools, jt.max_steps, jt.time_limit_secs, jt.budget_tokens,
                p.key AS project_key, p.test_command, p.review_rules,
                (SELECT a.reference FROM artifacts a WHERE a.task_id = t.id AND a.kind = 'branch' AND a.reference IS NOT NULL
                 ORDER BY a.created_at DESC, a.id DESC LIMIT 1) AS branch,
                coalesce((SELECT max(s.seq) + 1 FROM job_steps s WHERE s.job_id = j.id), 0) AS first_seq,
                (SELECT jsonb_build_object('id', i.id, 'name', i.name, 'base_image', i.base_image, 'packages', i.packages,
                        'setup_script', i.setup_script, 'env', i.env, 'network', i.network, 'cpu_limit', i.cpu_limit,
                        'memory_mb', i.memory_mb, 'max_processes', i.max_processes, 'dind', i.dind, 'labels', i.labels,
                        'created_at', i.created_at, 'updated_at', i.updated_at)
                 FROM instance_templates i WHERE i.id = p.instance_template_id) AS instance_template,
                coalesce((j.usage->>'input_tokens')::bigint, 0) + coalesce((j.usage->>'output_tokens')::bigint, 0) AS used,
                EXISTS (SELECT 1 FROM public.api_tokens k WHERE k.id = $3 AND {live}) AS token_live
         FROM ai_jobs j JOIN tasks t ON t.id = j.task_id JOIN projects p ON p.id = t.project_id
         JOIN ai_job_templates jt ON jt.id = j.template_id
         WHERE j.id = $1 AND j.state = 'running' AND j.lease_agent = $2",
        live = crate::routes::agent_tokens::LIVE
    );
    let row: Option<Row> = sqlx::query_as(&sql)
    .bind(job.id)
    .bind(agent)
    .bind(token_id)
    .fetch_optional(&mut *db)
    .await?;
    let Some(row) = row else {
        db.commit().await?;
        return Ok(None);
    };
    if !row.token_live {
        db.commit().await?;
        return Err(ApiError::unauthorized());
    }
    let module_rows: Vec<ModuleRow> = sqlx::query_as(
        "SELECT name, url, default_branch, path_prefix, credentials, forge, forge_api_url FROM modules WHERE project_id = $1 ORDER BY name",
    )
    .bind(row.project_id)
    .fetch_all(&mut *db)
    .await?;
    let earlier = if row.first_seq > 0 {
        // The newest steps are the ones told: more than these would not fit anyway.
        let mut steps: Vec<serde_json::Value> = sqlx::query_scalar("SELECT step FROM job_steps WHERE job_id = $1 ORDER BY seq DESC LIMIT 200")
            .bind(job.id)
            .fetch_all(&mut *db)
            .await?;
        steps.reverse();
        Some(earlier_steps(&steps))
    } else {
        None
    };
    db.commit().await?;
    let mut modules = Vec::with_capacity(module_rows.len());
    for m in module_rows {
        let credentials = match &m.credentials {
            Some(sealed) => {
                let plain = state.sealer.open(sealed).ok_or_else(|| ApiError::internal(format!("the credentials of module {:?} do not open with this server's key", m.name)))?;
                Some(serde_json::from_slice::<RepoCredentials>(&plain).map_err(ApiError::internal)?)
            }
            None => None,
        };
        // Pull requests need a token: a forge without credentials is left out.
        let forge = credentials.as_ref().and_then(|_| forge_for(&m.url, m.forge.as_deref().and_then(ForgeKind::parse), m.forge_api_url.as_deref()));
        modules.push(AssignedModule { name: m.name, url: m.url, default_branch: m.default_branch, path_prefix: m.path_prefix, credentials, forge });
    }
    let mut instance_template: Option<InstanceTemplate> = row.instance_template.map(serde_json::from_value).transpose().map_err(ApiError::internal)?;
    // Env values are sealed at rest; only the agent running the job sees them.
    if let Some(it) = &mut instance_template {
        for (name, value) in it.env.iter_mut() {
            *value = state.sealer.open_text(value).ok_or_else(|| ApiError::internal(format!("env {name} of instance template {:?} does not open with this server's key", it.name)))?;
        }
    }
    let assignment = Assignment {
        job: AssignedJob { id: job.id, kind: job.kind, attempt: job.attempts, first_seq: row.first_seq.max(0) as u32, earlier },
        branch: row.branch.unwrap_or_else(|| task_branch(&row.key, &row.title)),
        project: AssignedProject { key: row.project_key, test_command: row.test_command, review_rules: row.review_rules },
        task: AssignedTask {
            url: Some(format!("{}/o/{}/t/{}", state.web.public_url, slug.as_str(), row.key)),
            key: row.key,
            title: row.title,
            description: row.description,
            labels: row.labels,
            priority: row.priority,
        },
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

/// The most of earlier attempts' steps told to the model (the newest kept).
const EARLIER_BYTES: usize = 16 * 1024;
/// The most of one tool output told.
const EARLIER_OUTPUT: usize = 400;

/// Earlier steps in short: `- said: ...`, `- write_file {"path":..}: <output>`.
fn earlier_steps(steps: &[serde_json::Value]) -> String {
    let cut = |s: &str, n: usize| match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    };
    let lines: Vec<String> = steps
        .iter()
        .map(|s| match s["kind"].as_str() {
            Some("message") => format!("- said: {}", cut(s["text"].as_str().unwrap_or_default().trim(), EARLIER_OUTPUT)),
            _ => {
                let result = s["error"].as_str().map(|e| format!("error: {e}")).unwrap_or_else(|| s["output"].as_str().unwrap_or_default().to_owned());
                format!("- {} {}: {}", s["tool"].as_str().unwrap_or("tool"), cut(&s["input"].to_string(), EARLIER_OUTPUT), cut(result.trim(), EARLIER_OUTPUT))
            }
        })
        .collect();
    // The newest steps matter most: drop the oldest past the limit.
    let mut kept = Vec::new();
    let mut size = 0;
    for line in lines.iter().rev() {
        size += line.len() + 1;
        if size > EARLIER_BYTES {
            kept.push("- (earlier steps left out)".to_owned());
            break;
        }
        kept.push(line.clone());
    }
    kept.reverse();
    kept.join("\n")
}
