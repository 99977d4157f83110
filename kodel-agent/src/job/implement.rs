//! implement: the model changes the code; the agent commits what changed (a message
//! from the task), pushes the task's branch, and hands over the branch, the patch
//! against the default branch and, where the module has a forge, the pull request.

use std::time::Instant;

use kodel_core::jobs::{ArtifactKind, MAX_ARTIFACT_CONTENT, NewArtifact};
use kodel_core::protocol::{Assignment, cap_middle};
use serde_json::json;

use super::forge::{self, Change};
use super::git::cause;
use super::workspace::{Prepared, Repo, transient};
use super::{Outcome, first_messages, with_modules};
use crate::runner::{self, Failed, Reporter};

pub async fn run(a: &Assignment, p: &Prepared, rep: &mut Reporter) -> Result<Outcome, Failed> {
    let mut prompt = with_modules(a, p, runner::task_prompt(a));
    prompt.push_str("Change the files; the agent commits and pushes your work when you finish (do not commit or push yourself).\n");
    let (said, _) = runner::converse(a, &p.ws, rep, first_messages(a, prompt)).await?;
    let mut artifacts = Vec::new();
    let mut notes = Vec::new();
    let mut new_work = false;
    for repo in &p.repos {
        repo.check_work_tree(p.ws.root())?;
        match deliver(a, repo, &said, rep).await? {
            Delivered::Nothing => {}
            Delivered::Change { new_commit, mut items, note } => {
                new_work |= new_commit;
                if !new_commit {
                    notes.push(format!("{}: no new changes in this job; the branch holds earlier work", repo.module.name));
                }
                notes.extend(note);
                artifacts.append(&mut items);
            }
        }
    }
    // Nothing new (a first job that changed nothing, or a rework that did not touch
    // the code): say so rather than hand the same work over again.
    if !new_work {
        let said = said.trim();
        let said = if said.is_empty() { String::new() } else { format!(" The model said: {}", cap_middle(said, 2000)) };
        return Err((format!("the job made no changes to the repository, so there is nothing new to commit or review.{said}"), false));
    }
    let mut summary = said.trim().to_owned();
    for n in notes {
        summary.push_str(&format!("\n\n{n}"));
    }
    Ok(Outcome { summary, artifacts })
}

enum Delivered {
    /// The module has no change against its default branch.
    Nothing,
    Change { new_commit: bool, items: Vec<NewArtifact>, note: Option<String> },
}

/// Commits, pushes and describes one module's change.
async fn deliver(a: &Assignment, repo: &Repo, said: &str, rep: &mut Reporter) -> Result<Delivered, Failed> {
    let m = &repo.module;
    let add = repo.git(&["add", "--all"], false).await?;
    if !add.ok {
        return Err((format!("module {:?}: git add failed: {}", m.name, cause(&add.output)), false));
    }
    // Exit code 1: something is staged.
    let staged = !repo.git(&["diff", "--cached", "--quiet"], false).await?.ok;
    let mut new_commit = false;
    if staged {
        let message = commit_message(a, said);
        let started = Instant::now();
        let out = repo.git(&["-c", "user.name=Kodel", "-c", "user.email=agent@kodel.localhost", "commit", "--no-verify", "--quiet", "-m", &message], false).await?;
        rep.action("git", &format!("git commit -m {:?}", message.lines().next().unwrap_or_default()), &out.output, !out.ok, started);
        if !out.ok {
            return Err((format!("module {:?}: git commit failed: {}", m.name, cause(&out.output)), false));
        }
        new_commit = true;
    }
    let range = format!("origin/{}...HEAD", m.default_branch);
    let diff = repo.git(&["diff", "--no-color", "--no-ext-diff", "--no-textconv", &range], false).await?;
    if !diff.ok {
        return Err((format!("module {:?}: cannot diff against {}: {}", m.name, m.default_branch, cause(&diff.output)), false));
    }
    if diff.output.trim().is_empty() {
        return Ok(Delivered::Nothing);
    }
    let stat = repo.git(&["diff", "--shortstat", &range], false).await?.output.trim().to_owned();
    let commit = repo.git(&["rev-parse", "HEAD"], false).await?.output.trim().to_owned();
    // The model may have committed by itself: what counts is whether HEAD is new.
    let pushed_before = if repo.had_branch { Some(repo.git(&["rev-parse", &format!("refs/remotes/origin/{}", a.branch)], false).await?.output.trim().to_owned()) } else { None };
    let new_commit = new_commit || pushed_before.as_deref() != Some(commit.as_str());
    if new_commit {
        let started = Instant::now();
        let refspec = format!("HEAD:refs/heads/{}", a.branch);
        let out = repo.git(&["push", "origin", &refspec], true).await?;
        rep.action("git", &format!("git push origin {refspec}"), &out.output, !out.ok, started);
        if !out.ok {
            let why = cause(&out.output);
            let retry = transient(&why);
            return Err((format!("pushing {} to {} {}: {why}", a.branch, m.url, if retry { "failed" } else { "was refused" }), retry));
        }
    }
    let patch_title = format!("{}: {}", m.name, if stat.is_empty() { "patch".to_owned() } else { stat.clone() });
    let (patch, cut) = if diff.output.len() > MAX_ARTIFACT_CONTENT {
        (cap_middle(&diff.output, MAX_ARTIFACT_CONTENT - 100), true)
    } else {
        (diff.output.clone(), false)
    };
    let mut items = vec![
        NewArtifact {
            kind: ArtifactKind::Branch,
            title: Some(format!("{}: {}", m.name, a.branch)),
            content: Some(format!("{} at {commit}, pushed to {}", a.branch, m.url)),
            reference: Some(a.branch.clone()),
            data: Some(json!({ "module": m.name, "url": m.url, "branch": a.branch, "base": m.default_branch, "commit": commit })),
        },
        NewArtifact {
            kind: ArtifactKind::Patch,
            title: Some(if cut { format!("{patch_title} (cut to 5 MB)") } else { patch_title }),
            content: Some(patch),
            reference: Some(a.branch.clone()),
            data: Some(json!({ "module": m.name, "base": m.default_branch, "commit": commit, "stat": stat, "truncated": cut })),
        },
    ];
    let mut note = None;
    if let (Some(f), Some(token)) = (&m.forge, repo.remote.secret()) {
        let title = format!("{}: {}", a.task.key, a.task.title);
        let body = pr_body(a, said);
        let started = Instant::now();
        let change = Change { branch: &a.branch, base: &m.default_branch, title: &title, body: &body };
        let result = forge::open_or_update(f, token, &change).await;
        let (text, failed) = match &result {
            Ok(pr) => (format!("{} {} #{}: {}", if pr.updated { "updated" } else { "opened" }, f.kind.as_str(), pr.number, pr.url), false),
            Err(e) => (repo.remote.scrub(e), true),
        };
        rep.action("forge", &format!("open or update the {} pull request for {}", f.kind.as_str(), a.branch), &text, failed, started);
        match result {
            Ok(pr) => items.push(NewArtifact {
                kind: ArtifactKind::PullRequest,
                title: Some(format!("{}: pull request #{}", m.name, pr.number)),
                content: None,
                reference: Some(pr.url.clone()),
                data: Some(json!({ "module": m.name, "forge": f.kind.as_str(), "number": pr.number, "url": pr.url, "updated": pr.updated })),
            }),
            // The branch is pushed and the patch is here: the work is not lost, and
            // people are told the pull request is missing.
            Err(_) => note = Some(format!("{}: the pull request could not be opened: {text}", m.name)),
        }
    }
    Ok(Delivered::Change { new_commit, items, note })
}

/// `KEY-n: title`, then what the model said it did.
fn commit_message(a: &Assignment, said: &str) -> String {
    let mut msg = format!("{}: {}", a.task.key, a.task.title.trim());
    let said = said.trim();
    if !said.is_empty() {
        msg.push_str("\n\n");
        msg.push_str(&cap_middle(said, 4000));
    }
    msg.push_str(&format!("\n\nKodel-Job: {}", a.job.id));
    msg
}

fn pr_body(a: &Assignment, said: &str) -> String {
    let mut body = String::new();
    if !a.task.description.trim().is_empty() {
        body.push_str(a.task.description.trim());
        body.push_str("\n\n");
    }
    if !said.trim().is_empty() {
        body.push_str("## What the agent did\n\n");
        body.push_str(&cap_middle(said.trim(), 20_000));
        body.push_str("\n\n");
    }
    let task = match &a.task.url {
        Some(url) => format!("[{}]({url})", a.task.key),
        None => a.task.key.clone(),
    };
    body.push_str(&format!("_Opened by Kodel for task {task}; approve or reject it in Kodel (approving does not merge)._"));
    body
}
