//! Pull requests (GitHub) and merge requests (GitLab) for a pushed task branch, through
//! the forge's REST API: one per branch, opened the first time and updated after.

use std::time::Duration;

use kodel_core::forge::{Forge, ForgeKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What a pull request is, once opened or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
    /// false: it was opened now; true: it existed and was updated.
    pub updated: bool,
}

pub struct Change<'a> {
    pub branch: &'a str,
    pub base: &'a str,
    pub title: &'a str,
    pub body: &'a str,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("kodel-agent/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        // A redirect would carry the token (GitLab's PRIVATE-TOKEN) to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn call(forge: &Forge, token: &str, method: Method, url: &str, body: Option<Value>) -> Result<Value, String> {
    let mut req = client().request(method.clone(), url);
    req = match forge.kind {
        ForgeKind::Github => req.bearer_auth(token).header("Accept", "application/vnd.github+json").header("X-GitHub-Api-Version", "2022-11-28"),
        ForgeKind::Gitlab => req.header("PRIVATE-TOKEN", token),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| format!("{method} {url}: {}", without_url(&e)))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let said: String = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").map(|m| if let Some(s) = m.as_str() { s.to_owned() } else { m.to_string() }))
            .unwrap_or_else(|| text.chars().take(300).collect());
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (the module's token was refused)",
            StatusCode::FORBIDDEN => " (the module's token may lack the pull-request scope)",
            StatusCode::NOT_FOUND => " (wrong repository, or the token cannot see it)",
            _ => "",
        };
        return Err(format!("{method} {url} answered {status}: {said}{hint}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{method} {url}: the answer is not JSON: {e}"))
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

/// Opens the branch's pull request, or updates its title and description if one is open.
pub async fn open_or_update(forge: &Forge, token: &str, change: &Change<'_>) -> Result<PullRequest, String> {
    match forge.kind {
        ForgeKind::Github => github(forge, token, change).await,
        ForgeKind::Gitlab => gitlab(forge, token, change).await,
    }
}

async fn github(forge: &Forge, token: &str, c: &Change<'_>) -> Result<PullRequest, String> {
    let base = format!("{}/repos/{}/pulls", forge.api_url, forge.repo);
    let owner = forge.repo.split('/').next().unwrap_or_default();
    let list = format!("{base}?state=open&head={}&base={}", enc(&format!("{owner}:{}", c.branch)), enc(c.base));
    let open = call(forge, token, Method::GET, &list, None).await?;
    let existing = open.as_array().and_then(|a| a.first()).and_then(|pr| pr["number"].as_u64());
    let (pr, updated) = match existing {
        Some(n) => (call(forge, token, Method::PATCH, &format!("{base}/{n}"), Some(json!({ "title": c.title, "body": c.body }))).await?, true),
        None => (call(forge, token, Method::POST, &base, Some(json!({ "title": c.title, "head": c.branch, "base": c.base, "body": c.body }))).await?, false),
    };
    let number = pr["number"].as_u64().ok_or("the pull request in GitHub's answer has no number")?;
    let url = pr["html_url"].as_str().ok_or("the pull request in GitHub's answer has no html_url")?.to_owned();
    Ok(PullRequest { number, url, updated })
}

async fn gitlab(forge: &Forge, token: &str, c: &Change<'_>) -> Result<PullRequest, String> {
    let base = format!("{}/projects/{}/merge_requests", forge.api_url, enc(&forge.repo));
    let list = format!("{base}?state=opened&source_branch={}&target_branch={}", enc(c.branch), enc(c.base));
    let open = call(forge, token, Method::GET, &list, None).await?;
    let existing = open.as_array().and_then(|a| a.first()).and_then(|mr| mr["iid"].as_u64());
    let (mr, updated) = match existing {
        Some(iid) => (call(forge, token, Method::PUT, &format!("{base}/{iid}"), Some(json!({ "title": c.title, "description": c.body }))).await?, true),
        None => (
            call(
                forge,
                token,
                Method::POST,
                &base,
                Some(json!({ "source_branch": c.branch, "target_branch": c.base, "title": c.title, "description": c.body, "remove_source_branch": true })),
            )
            .await?,
            false,
        ),
    };
    let number = mr["iid"].as_u64().ok_or("the merge request in GitLab's answer has no iid")?;
    let url = mr["web_url"].as_str().ok_or("the merge request in GitLab's answer has no web_url")?.to_owned();
    Ok(PullRequest { number, url, updated })
}
