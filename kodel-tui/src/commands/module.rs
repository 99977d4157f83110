//! module list|add|remove, instance-template list|show|create|delete, agent list,
//! agent token create|list|revoke, provider list|set|remove.

use kodel_core::api::{ApiToken, ApiTokenCreated, Page};
use kodel_core::infra::{Agent, InstanceTemplate, Module};
use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use super::org::enc;
use crate::cli::{AgentCmd, AgentTokenCmd, InstanceTemplateCmd, ModuleCmd, ProviderCmd};
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: ModuleCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/modules", enc(&ctx.org()?));
    match cmd {
        ModuleCmd::List { project } => {
            let project = ctx.project(project)?;
            let page: Page<Module> = ctx.client.get(&format!("{base}?project={}", enc(&project))).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|m| {
                    let forge = m.forge.map(|f| f.as_str().to_owned()).unwrap_or_else(|| "-".into());
                    vec![m.id.to_string(), m.name.clone(), m.default_branch.clone(), if m.has_credentials { "yes".into() } else { "no".into() }, forge, m.url.clone()]
                })
                .collect();
            output::table(&["ID", "NAME", "BRANCH", "CREDENTIALS", "FORGE", "URL"], &rows)
        }
        ModuleCmd::Add { name, url, project, branch, path_prefix, username, secret_stdin, forge, forge_api_url } => {
            let project = ctx.project(project)?;
            let credentials = if secret_stdin {
                let secret = output::text_arg(Some("-".into()), false)?.unwrap_or_default();
                Some(json!({ "username": username, "secret": secret.trim() }))
            } else if username.is_some() {
                return Err(CliError::usage("--username needs --secret-stdin").hint("pipe the token: echo $TOKEN | kodel module add ... --secret-stdin"));
            } else {
                None
            };
            let body = json!({ "project": project, "name": name, "url": url, "default_branch": branch, "path_prefix": path_prefix, "credentials": credentials,
                               "forge": forge, "forge_api_url": forge_api_url });
            let m: Module = ctx.client.post(&base, body).await?;
            if ctx.json { output::json(&m) } else { output::line(format!("{}", m.id)) }
        }
        ModuleCmd::Update { id, url, branch, path_prefix, username, secret_stdin, no_credentials, forge, forge_api_url } => {
            let mut body = serde_json::Map::new();
            for (k, v) in [("url", url), ("default_branch", branch), ("path_prefix", path_prefix), ("forge_api_url", forge_api_url)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            match forge.as_deref() {
                Some("auto") => {
                    body.insert("forge".into(), Value::Null);
                }
                Some(f) => {
                    body.insert("forge".into(), json!(f));
                }
                None => {}
            }
            if secret_stdin {
                let secret = output::text_arg(Some("-".into()), false)?.unwrap_or_default();
                body.insert("credentials".into(), json!({ "username": username, "secret": secret.trim() }));
            } else if no_credentials {
                body.insert("credentials".into(), Value::Null);
            } else if username.is_some() {
                return Err(CliError::usage("--username needs --secret-stdin"));
            }
            let m: Module = ctx.client.patch(&format!("{base}/{}", enc(&id)), Value::Object(body)).await?;
            if ctx.json { output::json(&m) } else { output::line(format!("{} {}", m.id, m.url)) }
        }
        ModuleCmd::Remove { id } => {
            let _: Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&id)), None).await?;
            if ctx.json { output::json(&json!({ "deleted": id })) } else { output::note(format!("Removed {id}")) }
        }
    }
}

pub async fn instance_template(ctx: &mut Ctx, cmd: InstanceTemplateCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/instance-templates", enc(&ctx.org()?));
    let it: InstanceTemplate = match cmd {
        InstanceTemplateCmd::List => {
            let page: Page<InstanceTemplate> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|t| vec![t.name.clone(), runs_in(t), if t.network { "yes".into() } else { "no".into() }, t.packages.join(",")])
                .collect();
            return output::table(&["NAME", "RUNS IN", "NETWORK", "PACKAGES"], &rows);
        }
        InstanceTemplateCmd::Show { name } => {
            let it: InstanceTemplate = ctx.client.get(&format!("{base}/{}", enc(&name))).await?;
            let agents: Page<Agent> = ctx.client.get(&format!("/api/v1/orgs/{}/agents", enc(&ctx.org()?))).await?;
            return show_instance_template(ctx, &it, &agents.data);
        }
        InstanceTemplateCmd::Create { file } => ctx.client.post(&base, checked_template(&file)?).await?,
        InstanceTemplateCmd::Update { name, file } => ctx.client.patch(&format!("{base}/{}", enc(&name)), checked_template(&file)?).await?,
        InstanceTemplateCmd::Delete { name } => {
            let _: Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&name)), None).await?;
            return if ctx.json { output::json(&json!({ "deleted": name })) } else { output::note(format!("Deleted {name}")) };
        }
    };
    if ctx.json { output::json(&it) } else { output::line(format!("{}  {}  network {}", it.name, runs_in(&it), it.network)) }
}

/// Where a template's jobs run: its image, or bubblewrap.
fn runs_in(t: &InstanceTemplate) -> String {
    match &t.base_image {
        Some(image) if t.dind => format!("{image} (container, dind)"),
        Some(image) => format!("{image} (container)"),
        None => "bubblewrap".into(),
    }
}

/// The JSON of a template to send, checked as the server checks it (exit 2 naming the
/// bad field).
fn checked_template(file: &str) -> Result<Value, CliError> {
    let body = output::json_file(file)?;
    let it: kodel_core::infra::InstanceTemplateIn = serde_json::from_value(body.clone()).map_err(|e| CliError::usage(format!("{file}: {e} (kodel instance-template create --help lists the fields)")))?;
    kodel_core::infra::validate_instance_template(&it).map_err(|e| CliError::usage(format!("{file}: {e}")))?;
    Ok(body)
}

/// A template and the agents that can run its jobs now (or why none can).
fn show_instance_template(ctx: &Ctx, it: &InstanceTemplate, agents: &[Agent]) -> Result<(), CliError> {
    let needs = it.required_labels();
    let able: Vec<&Agent> = agents.iter().filter(|a| kodel_core::protocol::labels_match(&needs, &kodel_core::protocol::claim_labels(&a.labels, &a.capabilities))).collect();
    if ctx.json {
        let mut v = serde_json::to_value(it).map_err(|e| CliError::usage(e.to_string()))?;
        v["agents"] = json!(able.iter().map(|a| json!({"id": a.id, "name": a.name, "status": a.status})).collect::<Vec<_>>());
        return output::json(&v);
    }
    let mut lines = vec![
        format!("{}  runs in {}", it.name, runs_in(it)),
        format!("network {}, cpu {}, memory {}, processes {}", if it.network { "yes" } else { "no" },
            it.cpu_limit.map(|c| format!("{c} cores")).unwrap_or_else(|| "-".into()),
            it.memory_mb.map(|m| format!("{m} MiB")).unwrap_or_else(|| "-".into()),
            it.max_processes.map(|m| m.to_string()).unwrap_or_else(|| "-".into())),
    ];
    if !it.packages.is_empty() {
        lines.push(format!("packages {}", it.packages.join(" ")));
    }
    if !it.labels.is_empty() {
        lines.push(format!("labels {}", it.labels.join(",")));
    }
    if !it.setup_script.trim().is_empty() {
        lines.push(format!("setup script: {} lines", it.setup_script.trim().lines().count()));
    }
    if able.is_empty() {
        lines.push("No agent can run its jobs now.".into());
        for a in agents {
            let mut why: Vec<String> = it.labels.iter().filter(|l| !a.labels.contains(l)).map(|l| format!("no label {l}")).collect();
            for (cap, needed) in [("container", it.base_image.is_some()), ("dind", it.dind)] {
                if needed && !a.capabilities.iter().any(|c| c == cap) {
                    why.push(a.missing.get(cap).cloned().unwrap_or_else(|| format!("cannot run a {cap} (an older agent?)")));
                }
            }
            lines.push(format!("  {} ({}): {}", a.name, a.status, why.join("; ")));
        }
        if agents.is_empty() {
            lines.push("  The org has no agents: kodel agent token create NAME, then start kodel-agent with it.".into());
        }
    } else {
        lines.push(format!("Agents that can run its jobs: {}", able.iter().map(|a| format!("{} ({})", a.name, a.status)).collect::<Vec<_>>().join(", ")));
    }
    output::line(lines.join("\n"))
}

pub async fn agent(ctx: &mut Ctx, cmd: AgentCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    if let AgentCmd::Token(t) = cmd {
        return agent_token(ctx, t).await;
    }
    let page: Page<Agent> = ctx.client.get(&format!("/api/v1/orgs/{}/agents", enc(&ctx.org()?))).await?;
    if ctx.json {
        return output::json(&page);
    }
    let rows: Vec<Vec<String>> = page
        .data
        .iter()
        .map(|a| {
            let job = match (&a.current_task, a.current_job) {
                (Some(task), Some(job)) if a.status == "busy" => format!("{task} ({})", output::short_id(&job)),
                _ => "-".into(),
            };
            let disk = a.disk_bytes.map(|b| bytes(b.max(0) as u64)).unwrap_or_else(|| "-".into());
            let runs = std::iter::once("bwrap").chain(a.capabilities.iter().map(String::as_str)).collect::<Vec<_>>().join(",");
            vec![a.id.to_string(), a.name.clone(), a.status.clone(), a.labels.join(","), runs, job, disk, a.last_seen_at.as_ref().map(output::when).unwrap_or_default()]
        })
        .collect();
    output::table(&["ID", "NAME", "STATUS", "LABELS", "RUNS", "JOB", "DISK", "LAST SEEN"], &rows)?;
    // What an agent cannot run, and why, below the table (the columns stay parseable).
    let notes: Vec<String> = page.data.iter().filter(|a| a.status != "offline").flat_map(|a| a.missing.iter().map(move |(cap, why)| format!("{} cannot run {}: {why}", a.name, what_cap(cap)))).collect();
    if !notes.is_empty() {
        output::note(notes.join("\n"))?;
    }
    Ok(())
}

fn what_cap(cap: &str) -> &str {
    match cap {
        "container" => "jobs in containers",
        "dind" => "docker-in-docker",
        other => other,
    }
}

/// 1.5 GiB, 320 MiB, 12 KiB.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 { format!("{v:.1} {}", UNITS[unit]) } else { format!("{v:.0} {}", UNITS[unit]) }
}

async fn agent_token(ctx: &mut Ctx, cmd: AgentTokenCmd) -> Result<(), CliError> {
    let base = format!("/api/v1/orgs/{}/agent-tokens", enc(&ctx.org()?));
    match cmd {
        AgentTokenCmd::Create { name, expires_at } => {
            let t: ApiTokenCreated = ctx.client.post(&base, serde_json::json!({ "name": name, "expires_at": expires_at })).await?;
            super::token::created(ctx, &t, "Start an agent with: kodel-agent --server URL --token TOKEN")
        }
        AgentTokenCmd::List => {
            let page: Page<ApiToken> = ctx.client.get(&base).await?;
            super::token::list(ctx, &page)
        }
        AgentTokenCmd::Revoke { id } => {
            let _: serde_json::Value = ctx.client.send(reqwest::Method::DELETE, &format!("{base}/{}", enc(&id)), None).await?;
            if ctx.json { output::json(&serde_json::json!({ "revoked": id })) } else { eprintln!("Revoked {id}"); Ok(()) }
        }
    }
}

pub async fn provider(ctx: &mut Ctx, cmd: ProviderCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/llm-providers", enc(&ctx.org()?));
    match cmd {
        ProviderCmd::List => {
            let page: Page<kodel_core::llm::ProviderSettings> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|p| {
                    let wire = p.wire.to_string();
                    vec![
                        p.provider.clone(),
                        if p.has_key { "set".into() } else { "-".into() },
                        p.base_url.clone().unwrap_or_else(|| "(default)".into()),
                        if wire.is_empty() { "(default)".into() } else { wire },
                    ]
                })
                .collect();
            if rows.is_empty() {
                return output::note("no provider is set for this org: jobs use the server's own (its OPENAI_API_KEY, ANTHROPIC_API_KEY, OPENROUTER_API_KEY or OLLAMA_BASE_URL)");
            }
            output::table(&["PROVIDER", "KEY", "BASE URL", "WIRE"], &rows)
        }
        ProviderCmd::Set { provider, key_stdin, base_url, wire } => {
            if !key_stdin && base_url.is_none() && wire.is_none() {
                return Err(CliError::usage("nothing to set")
                    .hint("echo $KEY | kodel provider set openai --key-stdin [--base-url URL] [--wire stream=off,tool_choice=on]"));
            }
            let api_key = if key_stdin { Some(output::text_arg(Some("-".into()), false)?.unwrap_or_default().trim().to_owned()) } else { None };
            let body = json!({ "api_key": api_key, "base_url": base_url, "wire": wire });
            let p: kodel_core::llm::ProviderSettings = ctx.client.send(Method::PUT, &format!("{base}/{}", enc(&provider)), Some(body)).await?;
            if ctx.json { output::json(&p) } else { output::line(format!("{} key {}", p.provider, if p.has_key { "set" } else { "not set" })) }
        }
        ProviderCmd::Remove { provider } => {
            let _: Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&provider)), None).await?;
            if ctx.json { output::json(&json!({ "removed": provider })) } else { eprintln!("Removed the org's {provider} settings"); Ok(()) }
        }
    }
}
