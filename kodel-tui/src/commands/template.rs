//! template list|show|create|update|delete: AI job templates.

use kodel_core::api::Page;
use kodel_core::jobs::JobTemplate;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::Ctx;
use super::org::enc;
use crate::cli::{TemplateArgs, TemplateCmd};
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: TemplateCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/job-templates", enc(&ctx.org()?));
    let t: JobTemplate = match cmd {
        TemplateCmd::List => {
            let page: Page<JobTemplate> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|t| vec![t.name.clone(), t.kind.to_string(), t.model.clone().unwrap_or_else(|| "default".into()), t.max_steps.to_string(), t.allowed_tools.join(",")])
                .collect();
            return output::table(&["NAME", "KIND", "MODEL", "STEPS", "TOOLS"], &rows);
        }
        TemplateCmd::Show { name } => ctx.client.get(&format!("{base}/{}", enc(&name))).await?,
        TemplateCmd::Create(args) => {
            let kind = args.kind.clone().ok_or_else(|| CliError::usage("--kind is required").hint("implement, review, qa or custom"))?;
            let mut body = fields(args)?;
            body.insert("kind".into(), json!(kind));
            ctx.client.post(&base, Value::Object(body)).await?
        }
        TemplateCmd::Update(args) => {
            if args.kind.is_some() {
                return Err(CliError::usage("a template's kind cannot change"));
            }
            let name = args.name.clone();
            let mut body = fields(args)?;
            body.remove("name");
            ctx.client.patch(&format!("{base}/{}", enc(&name)), Value::Object(body)).await?
        }
        TemplateCmd::Delete { name } => {
            let _: Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&name)), None).await?;
            return if ctx.json { output::json(&json!({ "deleted": name })) } else { output::note(format!("Deleted {name}")) };
        }
    };
    if ctx.json {
        return output::json(&t);
    }
    println!("{} ({})  model {}  {} steps  {} s  tools {}", t.name, t.kind, t.model.as_deref().unwrap_or("default"), t.max_steps, t.time_limit_secs, t.allowed_tools.join(","));
    println!("\n{}", t.prompt);
    Ok(())
}

fn fields(args: TemplateArgs) -> Result<Map<String, Value>, CliError> {
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    if let Some(p) = output::text_arg(args.prompt, false)? {
        body.insert("prompt".into(), json!(p));
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("model", args.model.map(Value::from));
    put("allowed_tools", args.tools.map(|t| json!(t)));
    put("max_steps", args.max_steps.map(Value::from));
    put("time_limit_secs", args.time_limit.map(Value::from));
    put("budget_tokens", args.budget_tokens.map(Value::from));
    Ok(body)
}
