//! task create|list|show|update|move|comment|comments|logs.

use kodel_core::TaskKey;
use kodel_core::api::{Comment, Page, Task};
use serde_json::{Map, Value, json};

use super::Ctx;
use super::org::enc;
use crate::cli::{TaskCmd, TaskCreate, TaskList, TaskUpdate};
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: TaskCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let org = enc(&ctx.org()?);
    match cmd {
        TaskCmd::Create(args) => create(ctx, &org, args).await,
        TaskCmd::List(args) => list(ctx, &org, args).await,
        TaskCmd::Show { key } => {
            let t: Task = ctx.client.get(&task_path(&org, &key)?).await?;
            if ctx.json { output::json(&t) } else { print_task(&t); Ok(()) }
        }
        TaskCmd::Update(args) => update(ctx, &org, args).await,
        TaskCmd::Move { key, status } => {
            let t: Task = ctx.client.post(&format!("{}/move", task_path(&org, &key)?), json!({ "status": status })).await?;
            if ctx.json { output::json(&t) } else { println!("{} {}", t.key, t.status); Ok(()) }
        }
        TaskCmd::Comment { key, body } => {
            let body = output::text_arg(body, true)?.ok_or_else(|| CliError::usage("no comment text").hint("pass it as an argument or on stdin"))?;
            let c: Comment = ctx.client.post(&format!("{}/comments", task_path(&org, &key)?), json!({ "body": body })).await?;
            if ctx.json { output::json(&c) } else { println!("{}", c.id); Ok(()) }
        }
        TaskCmd::Logs { key, follow, since } => super::logs::run(ctx, &task_path(&org, &key)?, follow, since).await,
        TaskCmd::Comments { key } => {
            let base = format!("{}/comments?limit=200", task_path(&org, &key)?);
            let mut all: Vec<Comment> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("{base}&cursor={}", enc(c)),
                    None => base.clone(),
                };
                let page: Page<Comment> = ctx.client.get(&path).await?;
                all.extend(page.data);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            if ctx.json {
                return output::json(&Page { data: all, next_cursor: None });
            }
            for c in &all {
                println!("{} {}\n{}\n", c.created_at.format("%Y-%m-%d %H:%M"), c.author, c.body);
            }
            Ok(())
        }
    }
}

/// Checks a task key locally so a typo fails fast with a clear message. Keys are
/// upper case; `demo-1` is taken as `DEMO-1`.
fn task_path(org: &str, key: &str) -> Result<String, CliError> {
    let key = TaskKey::parse(&key.trim().to_ascii_uppercase()).map_err(|e| CliError::usage(e.0))?;
    Ok(format!("/api/v1/orgs/{org}/tasks/{key}"))
}

async fn create(ctx: &mut Ctx, org: &str, args: TaskCreate) -> Result<(), CliError> {
    let project = ctx.project(args.project)?;
    let title = args.title.or(args.title_arg).unwrap_or_default();
    let description = output::text_arg(args.description, false)?;
    let mut body = Map::new();
    body.insert("title".into(), json!(title));
    insert_some(&mut body, "description", description.map(Value::from));
    insert_some(&mut body, "priority", args.priority.map(Value::from));
    if !args.labels.is_empty() {
        body.insert("labels".into(), json!(args.labels));
    }
    insert_some(&mut body, "assignee", assignee(ctx, args.assignee).await?.map(Value::from));
    insert_some(&mut body, "status", args.status.map(Value::from));
    let t: Task = ctx.client.post(&format!("/api/v1/orgs/{org}/projects/{}/tasks", enc(&project)), Value::Object(body)).await?;
    if ctx.json { output::json(&t) } else { println!("{}", t.key); Ok(()) }
}

fn insert_some(map: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        map.insert(key.to_owned(), v);
    }
}

async fn list(ctx: &mut Ctx, org: &str, args: TaskList) -> Result<(), CliError> {
    let project = ctx.project(args.project)?;
    let mut params: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (k, v) in [("status", args.status), ("assignee", args.assignee), ("label", args.label), ("q", args.search)] {
        if let Some(v) = v {
            params.push((k, v));
        }
    }
    if args.archived {
        params.push(("archived", "true".into()));
    }
    let mut cursor = args.cursor;
    let mut all: Vec<Task> = Vec::new();
    let next = loop {
        let mut q = params.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
        let page: Page<Task> = ctx.client.get(&format!("/api/v1/orgs/{org}/projects/{}/tasks?{}", enc(&project), query.join("&"))).await?;
        all.extend(page.data);
        match page.next_cursor {
            Some(c) if args.all => cursor = Some(c),
            other => break other,
        }
    };
    if ctx.json {
        return output::json(&Page { data: all, next_cursor: next });
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|t| vec![t.key.clone(), t.status.clone(), t.priority.as_str().to_owned(), t.assignee.clone().unwrap_or_else(|| "-".into()), t.title.clone()])
        .collect();
    output::table(&["KEY", "STATUS", "PRIORITY", "ASSIGNEE", "TITLE"], &rows)?;
    if let Some(c) = next {
        eprintln!("more: --cursor {c} (or --all)");
    }
    Ok(())
}

async fn update(ctx: &mut Ctx, org: &str, args: TaskUpdate) -> Result<(), CliError> {
    let path = task_path(org, &args.key)?;
    let version = match args.expect_version {
        Some(v) => v,
        None => ctx.client.get::<Task>(&path).await?.version,
    };
    let mut body = Map::new();
    body.insert("version".into(), json!(version));
    insert_some(&mut body, "title", args.title.map(Value::from));
    insert_some(&mut body, "description", output::text_arg(args.description, false)?.map(Value::from));
    insert_some(&mut body, "priority", args.priority.map(Value::from));
    if !args.labels.is_empty() || args.clear_labels {
        body.insert("labels".into(), json!(args.labels));
    }
    if args.unassign {
        body.insert("assignee".into(), Value::Null);
    }
    insert_some(&mut body, "assignee", assignee(ctx, args.assignee).await?.map(Value::from));
    if args.archive || args.unarchive {
        body.insert("archived".into(), json!(args.archive));
    }
    if body.len() == 1 {
        return Err(CliError::usage("nothing to change").hint("see `kodel task update --help`"));
    }
    let t: Task = ctx.client.patch(&path, Value::Object(body)).await?;
    if ctx.json { output::json(&t) } else { println!("{} v{}", t.key, t.version); Ok(()) }
}

fn print_task(t: &Task) {
    println!("{}  {}", t.key, t.title);
    println!("status:   {}", t.status);
    println!("priority: {}", t.priority.as_str());
    println!("assignee: {}", t.assignee.as_deref().unwrap_or("-"));
    if !t.labels.is_empty() {
        println!("labels:   {}", t.labels.join(", "));
    }
    if t.archived {
        println!("archived: yes");
    }
    println!("version:  {}  updated {}", t.version, t.updated_at.format("%Y-%m-%d %H:%M"));
    if !t.description.is_empty() {
        println!("\n{}", t.description);
    }
}

/// `--assignee me` is the logged-in user (as `task list --assignee me` is).
async fn assignee(ctx: &Ctx, given: Option<String>) -> Result<Option<String>, CliError> {
    match given {
        Some(me) if me.trim().eq_ignore_ascii_case("me") => {
            let user: Value = ctx.client.get("/api/v1/me").await?;
            Ok(user["email"].as_str().map(str::to_owned))
        }
        other => Ok(other),
    }
}
