//! rule list|show|create|enable|disable|delete.

use kodel_core::api::Page;
use kodel_core::rules::Rule;
use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use super::org::enc;
use crate::cli::RuleCmd;
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: RuleCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/rules", enc(&ctx.org()?));
    let rule: Rule = match cmd {
        RuleCmd::List { project } => {
            let path = match project.or_else(|| ctx.settings.project.clone()) {
                Some(p) => format!("{base}?project={}", enc(&p)),
                None => base,
            };
            let page: Page<Rule> = ctx.client.get(&path).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|r| {
                    let state = if !r.enabled { "disabled" } else if r.dry_run { "dry-run" } else { "enabled" };
                    vec![r.id.to_string(), r.project.clone().unwrap_or_else(|| "(org)".into()), state.into(), r.spec.trigger.kind().into(), r.name.clone()]
                })
                .collect();
            return output::table(&["ID", "PROJECT", "STATE", "TRIGGER", "NAME"], &rows);
        }
        RuleCmd::Show { id } => ctx.client.get(&format!("{base}/{}", enc(&id))).await?,
        RuleCmd::Create { file, project, org_wide, dry_run } => {
            let mut body = output::json_file(&file)?;
            let Some(obj) = body.as_object_mut() else { return Err(CliError::usage("the rule must be a JSON object")) };
            if org_wide {
                obj.remove("project");
            } else if let Some(p) = project.or_else(|| ctx.settings.project.clone()).filter(|_| !obj.contains_key("project")) {
                obj.insert("project".into(), json!(p));
            }
            if dry_run {
                obj.insert("dry_run".into(), json!(true));
            }
            ctx.client.post(&base, body).await?
        }
        RuleCmd::Update { id, file } => ctx.client.patch(&format!("{base}/{}", enc(&id)), output::json_file(&file)?).await?,
        RuleCmd::Enable { id } => ctx.client.patch(&format!("{base}/{}", enc(&id)), json!({ "enabled": true })).await?,
        RuleCmd::Disable { id } => ctx.client.patch(&format!("{base}/{}", enc(&id)), json!({ "enabled": false })).await?,
        RuleCmd::Delete { id } => {
            let _: Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&id)), None).await?;
            return if ctx.json { output::json(&json!({ "deleted": id })) } else { output::note(format!("Deleted {id}")) };
        }
    };
    if ctx.json { output::json(&rule) } else { output::line(format!("{}  {}  {}", rule.id, if rule.enabled { "enabled" } else { "disabled" }, rule.name)) }
}
