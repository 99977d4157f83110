//! project create|list|show|use|add-member.

use kodel_core::api::{Page, Project, ProjectMember};
use serde_json::json;

use super::Ctx;
use super::org::enc;
use crate::cli::ProjectCmd;
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: ProjectCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let org = ctx.org()?;
    let base = format!("/api/v1/orgs/{}/projects", enc(&org));
    match cmd {
        ProjectCmd::Create { key, name, description, workflow } => {
            let description = output::text_arg(description, false)?;
            let p: Project = ctx.client.post(&base, json!({ "key": key, "name": name, "description": description, "workflow": workflow })).await?;
            if ctx.settings.project.is_none() {
                ctx.settings.project = Some(p.key.clone());
                ctx.settings.save()?;
            }
            if ctx.json { output::json(&p) } else { println!("{}", p.key); Ok(()) }
        }
        ProjectCmd::Update { key, name, description, instance_template, test_command, review_rules } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(d) = output::text_arg(description, false)? {
                body.insert("description".into(), json!(d));
            }
            for (field, value) in [("test_command", test_command), ("review_rules", review_rules)] {
                match value.as_deref() {
                    Some("none") => {
                        body.insert(field.into(), serde_json::Value::Null);
                    }
                    Some(_) => {
                        body.insert(field.into(), json!(output::text_arg(value, false)?));
                    }
                    None => {}
                }
            }
            match instance_template.as_deref() {
                Some("none") => {
                    body.insert("instance_template".into(), serde_json::Value::Null);
                }
                Some(it) => {
                    body.insert("instance_template".into(), json!(it));
                }
                None => {}
            }
            if body.is_empty() {
                return Err(CliError::usage("nothing to change").hint("give --name, --description or --instance-template"));
            }
            let p: Project = ctx.client.patch(&format!("{base}/{}", enc(&key)), serde_json::Value::Object(body)).await?;
            if ctx.json { output::json(&p) } else { output::line(&p.key) }
        }
        ProjectCmd::List => {
            let page: Page<Project> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|p| vec![p.key.clone(), p.role.as_str().to_owned(), p.workflow.name.clone(), p.name.clone()])
                .collect();
            output::table(&["KEY", "ROLE", "WORKFLOW", "NAME"], &rows)
        }
        ProjectCmd::Show { key } => {
            let p: Project = ctx.client.get(&format!("{base}/{}", enc(&key))).await?;
            if ctx.json {
                return output::json(&p);
            }
            println!("{}  {}", p.key, p.name);
            if !p.description.is_empty() {
                println!("\n{}\n", p.description);
            }
            print!("workflow: ");
            super::workflow::print_workflow(&p.workflow);
            if let Some(c) = &p.test_command {
                println!("test command: {c}");
            }
            if let Some(r) = &p.review_rules {
                println!("review rules:\n{r}");
            }
            if let Some(it) = &p.instance_template {
                println!("instance template: {it}");
            }
            println!("your role: {}", p.role.as_str());
            Ok(())
        }
        ProjectCmd::Use { key } => {
            let p: Project = ctx.client.get(&format!("{base}/{}", enc(&key))).await?;
            ctx.settings.project = Some(p.key.clone());
            ctx.settings.save()?;
            if ctx.json { output::json(&p) } else { eprintln!("Using project {}", p.key); Ok(()) }
        }
        ProjectCmd::AddMember { key, email, role } => {
            let m: ProjectMember = ctx.client.post(&format!("{base}/{}/members", enc(&key)), json!({ "email": email, "role": role })).await?;
            if ctx.json { output::json(&m) } else { println!("{} {}", m.email, m.role.as_str()); Ok(()) }
        }
    }
}
