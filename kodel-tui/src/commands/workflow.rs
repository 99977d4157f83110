//! workflow list|show|create|edit.

use kodel_core::api::{Page, Workflow};
use reqwest::Method;
use serde_json::json;

use super::Ctx;
use super::org::enc;
use crate::cli::WorkflowCmd;
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: WorkflowCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/workflows", enc(&ctx.org()?));
    let wf: Workflow = match cmd {
        WorkflowCmd::List => {
            let page: Page<Workflow> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|w| {
                    let names: Vec<&str> = w.statuses.iter().map(|s| s.name.as_str()).collect();
                    vec![w.id.to_string(), w.name.clone(), names.join(" > ")]
                })
                .collect();
            return output::table(&["ID", "NAME", "STATUSES"], &rows);
        }
        WorkflowCmd::Show { workflow } => ctx.client.get(&format!("{base}/{}", enc(&workflow))).await?,
        WorkflowCmd::Create { file: Some(file), .. } => ctx.client.post(&base, output::json_file(&file)?).await?,
        WorkflowCmd::Create { name, from_template, .. } => {
            ctx.client.post(&base, json!({ "name": name, "from_template": from_template })).await?
        }
        WorkflowCmd::Edit { workflow, file } => {
            ctx.client.send(Method::PUT, &format!("{base}/{}", enc(&workflow)), Some(output::json_file(&file)?)).await?
        }
    };
    if ctx.json {
        return output::json(&wf);
    }
    print_workflow(&wf);
    Ok(())
}

pub fn print_workflow(wf: &Workflow) {
    println!("{}  {}", wf.name, wf.id);
    for s in &wf.statuses {
        let bound = s
            .binding
            .as_ref()
            .map(|b| {
                let mut t = format!("  [job: {}", b.template);
                if let Some(n) = &b.next {
                    t.push_str(&format!(", approve -> {n}"));
                }
                if let Some(r) = &b.back {
                    t.push_str(&format!(", reject -> {r}"));
                }
                t + "]"
            })
            .unwrap_or_default();
        println!("  {:<14} {:<10} -> {}{bound}", s.name, s.category.as_str(), s.next.join(", "));
    }
}
