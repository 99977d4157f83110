//! job list|show|start|cancel, and artifact list|show|approve|reject.

use kodel_core::api::Page;
use kodel_core::jobs::{Artifact, Job};
use serde_json::json;

use super::Ctx;
use super::org::enc;
use crate::cli::{ArtifactCmd, JobCmd};
use crate::exit::CliError;
use crate::output;

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v)))).collect();
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

pub async fn run(ctx: &mut Ctx, cmd: JobCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/jobs", enc(&ctx.org()?));
    let job: Job = match cmd {
        JobCmd::List { task, status } => {
            let page: Page<Job> = ctx.client.get(&format!("{base}{}", query(&[("task", &task), ("status", &status)]))).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|j| vec![j.id.to_string(), j.task.clone(), j.kind.to_string(), j.status.to_string(), j.attempts.to_string(), output::when(&j.created_at)])
                .collect();
            return output::table(&["ID", "TASK", "KIND", "STATUS", "ATTEMPTS", "CREATED"], &rows);
        }
        JobCmd::Show { id } => ctx.client.get(&format!("{base}/{}", enc(&id))).await?,
        JobCmd::Start { task, template } => ctx.client.post(&base, json!({ "task": task, "template": template })).await?,
        JobCmd::Cancel { id } => ctx.client.post(&format!("{base}/{}/cancel", enc(&id)), json!({})).await?,
        JobCmd::Resume { id } => ctx.client.post(&format!("{base}/{}/resume", enc(&id)), json!({})).await?,
    };
    if ctx.json {
        return output::json(&job);
    }
    println!("{}  {} {} on {}  ({} of {} attempts)", job.id, job.status, job.kind, job.task, job.attempts, job.max_attempts);
    if let Some(e) = &job.error {
        println!("error: {e}");
    }
    if let Some(s) = &job.summary {
        println!("{s}");
    }
    Ok(())
}

pub async fn artifact(ctx: &mut Ctx, cmd: ArtifactCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/artifacts", enc(&ctx.org()?));
    let a: Artifact = match cmd {
        ArtifactCmd::List { task, status } => {
            let page: Page<Artifact> = ctx.client.get(&format!("{base}{}", query(&[("task", &task), ("status", &status)]))).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|a| vec![a.id.to_string(), a.task.clone(), a.kind.to_string(), a.status.to_string(), a.title.clone()])
                .collect();
            return output::table(&["ID", "TASK", "KIND", "STATUS", "TITLE"], &rows);
        }
        ArtifactCmd::Show { id } => ctx.client.get(&format!("{base}/{}", enc(&id))).await?,
        ArtifactCmd::Approve { id, comment } => {
            let comment = output::text_arg(comment, false)?;
            ctx.client.post(&format!("{base}/{}/approve", enc(&id)), json!({ "comment": comment })).await?
        }
        ArtifactCmd::Reject { id, comment } => {
            let comment = output::text_arg(comment, false)?;
            ctx.client.post(&format!("{base}/{}/reject", enc(&id)), json!({ "comment": comment })).await?
        }
    };
    if ctx.json {
        return output::json(&a);
    }
    println!("{}  {} {} on {}: {}", a.id, a.status, a.kind, a.task, a.title);
    if let Some(r) = &a.reference {
        println!("ref: {r}");
    }
    if let Some(c) = &a.content {
        println!("\n{c}");
    }
    Ok(())
}
