//! One job, start to end: a fresh workspace with the project's modules on the task's
//! branch, the work its kind asks for, the outcome sent to the server, the workspace
//! cleaned up.
//!
//! - implement: the model works; the agent commits, pushes the branch, attaches branch
//!   and patch artifacts, and opens or updates the pull request where there is a forge.
//! - review: the model reads the branch's diff against the project's review rules and
//!   answers with a verdict and findings: a review artifact.
//! - qa: the agent runs the project's test command; a test report artifact, with the
//!   model's summary of the failures when there are any.
//!
//! A project without modules gives its jobs an empty workspace and nothing is committed.
//!
//! A job whose instance template names a base image runs its commands in a container
//! built from it (`container`); the others under bubblewrap on the agent's host.

pub mod forge;
pub mod git;
mod implement;
mod qa;
mod review;
pub mod workspace;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kodel_core::jobs::NewArtifact;
use kodel_core::llm::{Message, Role};
use kodel_core::protocol::{AgentMessage, Assignment};

use crate::runner::{self, Failed, Link, Reporter};
use crate::sandbox::Sandbox;
use crate::tools::Workspace;
use workspace::{Branch, Prepared, Workspaces};

/// What every job of this agent shares.
#[derive(Clone)]
pub struct JobEnv {
    pub workspaces: Arc<Workspaces>,
    pub sandbox: Sandbox,
    /// The agent's toolchains (RUSTUP_HOME, CARGO_HOME...), for commands.
    pub toolchain_env: BTreeMap<String, String>,
    /// Where jobs' resource limits are applied, or why they cannot be.
    pub limits: crate::limits::Setup,
    /// The Docker Engine for jobs whose template names a base image.
    pub engine: Option<crate::container::Engine>,
}

/// What a finished job hands over.
pub struct Outcome {
    pub summary: String,
    pub artifacts: Vec<NewArtifact>,
}

/// Runs the job and sends its outcome (`task.complete` or `task.error`).
pub async fn run(a: Assignment, env: JobEnv, link: Link) {
    let job_id = a.job.id;
    let dir = env.workspaces.dir_for(&a);
    let limit = Duration::from_secs(a.template.time_limit_secs.max(1) as u64);
    let mut rep = Reporter::new(link.clone(), job_id, a.job.first_seq);
    let outcome = match tokio::time::timeout(limit, work(&a, &env, &dir, &mut rep)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(runner::time_limit(limit)),
    };
    let succeeded = outcome.is_ok();
    let msg = match outcome {
        Ok(o) => AgentMessage::Complete { job_id, summary: o.summary, artifacts: o.artifacts },
        Err((error, retryable)) => AgentMessage::Error { job_id, error, retryable },
    };
    // The outcome first: cleaning up a large workspace must not hold it back.
    let _ = link.tx.send(runner::Outgoing::Reliable(msg));
    env.workspaces.finish(&dir, succeeded).await;
}

async fn work(a: &Assignment, env: &JobEnv, dir: &std::path::Path, rep: &mut Reporter) -> Result<Outcome, Failed> {
    // The template's base image: the job runs in a container built from it.
    let image_of = a.instance_template.as_ref().filter(|t| t.base_image.is_some());
    let engine = match image_of {
        // Retryable: an agent with a Docker Engine may take it (the server gives such
        // jobs only to those; this one may run an older server's).
        Some(t) => Some(env.engine.as_ref().ok_or_else(|| {
            (format!("the instance template {:?} names a base image, and this agent has no Docker Engine to run it in (start one, or the agent with --runtime docker)", t.name), true)
        })?),
        None => {
            env.sandbox.ready().map_err(|e| (e, false))?;
            None
        }
    };
    if a.job.kind == kodel_core::jobs::JobKind::Qa && !a.modules.is_empty() && a.project.test_command.as_deref().is_none_or(|c| c.trim().is_empty()) {
        return Err((
            format!("project {} has no test command for QA jobs to run; set one: kodel project update {} --test-command 'make test'", a.project.key, a.project.key),
            false,
        ));
    }
    env.workspaces.prune().await;
    env.workspaces.begin(dir).map_err(|e| (e, false))?;
    let network = a.instance_template.as_ref().is_some_and(|t| t.network);
    let mut vars = env.toolchain_env.clone();
    vars.extend(a.instance_template.as_ref().map(|t| t.env.clone()).unwrap_or_default());
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Retryable: another agent may be able to apply the limits. A container has its
    // own (the Engine applies them).
    let cgroup = match engine {
        Some(_) => None,
        None => crate::limits::Cgroups::job(&env.limits, &name, a.instance_template.as_ref(), env.sandbox.is_active()).map_err(|e| (e, true))?,
    };
    let ws = Workspace::new(dir, env.sandbox.clone())
        .map_err(|e| (format!("cannot open the workspace {}: {e}", dir.display()), false))?
        .with_network(network)
        .with_env(vars)
        .with_cgroup(cgroup);
    let image = match (engine, image_of) {
        (Some(engine), Some(t)) => Some((engine, t, engine.image(t, rep).await?)),
        _ => None,
    };
    let prepared = if a.modules.is_empty() {
        Prepared { ws, repos: Vec::new() }
    } else {
        let branch = match a.job.kind.as_str() {
            "review" | "qa" => Branch::Existing,
            _ => Branch::Make,
        };
        workspace::prepare(a, dir, &env.workspaces, ws, branch, image.is_none(), rep).await?
    };
    let Some((engine, t, image)) = image else { return by_kind(a, &prepared, rep).await };
    let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
    let mounts = crate::container::JobMounts { name: &name, root: prepared.ws.root(), read_only: prepared.ws.read_only(), user };
    let container = Arc::new(engine.start(&image, &mounts, t).await?);
    let prepared = Prepared { ws: prepared.ws.with_container(Some(container.clone())), repos: prepared.repos };
    let outcome = by_kind(a, &prepared, rep).await;
    container.end(outcome.is_ok()).await;
    outcome
}

/// The work the job's kind asks for, in the prepared workspace.
async fn by_kind(a: &Assignment, prepared: &Prepared, rep: &mut Reporter) -> Result<Outcome, Failed> {
    if a.modules.is_empty() {
        let (summary, _) = runner::converse(a, &prepared.ws, rep, first_messages(a, runner::task_prompt(a))).await?;
        return Ok(Outcome { summary, artifacts: Vec::new() });
    }
    match a.job.kind.as_str() {
        "implement" => implement::run(a, prepared, rep).await,
        "review" => review::run(a, prepared, rep).await,
        "qa" => qa::run(a, prepared, rep).await,
        // A custom job works on the branch like implement, without committing.
        _ => {
            let (summary, _) = runner::converse(a, &prepared.ws, rep, first_messages(a, with_modules(a, prepared, runner::task_prompt(a)))).await?;
            Ok(Outcome { summary, artifacts: Vec::new() })
        }
    }
}

fn first_messages(a: &Assignment, user: String) -> Vec<Message> {
    vec![Message::text(Role::System, a.system_prompt.clone()), Message::text(Role::User, user)]
}

/// Tells the model where the modules are.
fn with_modules(a: &Assignment, p: &Prepared, mut prompt: String) -> String {
    prompt.push_str(&format!("\nThe workspace is checked out on branch {}.", a.branch));
    if p.repos.len() > 1 {
        prompt.push_str(" Each of the project's repositories is a directory of the workspace:\n");
        for r in &p.repos {
            prompt.push_str(&format!("- {}/ ({})\n", r.module.name, r.module.url));
        }
    } else {
        prompt.push('\n');
    }
    for r in p.repos.iter().filter(|r| !r.module.path_prefix.is_empty()) {
        prompt.push_str(&format!("In {}, the project's code is under {}/.\n", r.module.name, r.module.path_prefix));
    }
    prompt
}
