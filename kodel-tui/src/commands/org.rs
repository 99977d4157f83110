//! org create|list|use and org member add|list|set|remove.

use kodel_core::api::{Org, OrgMember, Page};
use serde_json::json;

use super::Ctx;
use crate::cli::{MemberCmd, OrgCmd};
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: OrgCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    match cmd {
        OrgCmd::Create { slug, name } => {
            let name = name.unwrap_or_else(|| slug.clone());
            let org: Org = ctx.client.post("/api/v1/orgs", json!({ "slug": slug, "name": name })).await?;
            if ctx.settings.org.is_none() {
                ctx.settings.org = Some(org.slug.clone());
                ctx.settings.save()?;
            }
            if ctx.json { output::json(&org) } else { println!("{}", org.slug); Ok(()) }
        }
        OrgCmd::List => {
            // Every page: a person in more orgs than one page holds sees them all.
            let mut page: Page<Org> = ctx.client.get("/api/v1/orgs").await?;
            while let Some(cursor) = page.next_cursor.take() {
                let next: Page<Org> = ctx.client.get(&format!("/api/v1/orgs?cursor={}", enc(&cursor))).await?;
                page.data.extend(next.data);
                page.next_cursor = next.next_cursor;
            }
            if ctx.json {
                return output::json(&page);
            }
            let current = ctx.org.clone();
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|o| {
                    let mark = if current.as_deref() == Some(o.slug.as_str()) { "*" } else { "" };
                    vec![format!("{}{mark}", o.slug), o.role.as_str().to_owned(), o.name.clone()]
                })
                .collect();
            output::table(&["SLUG", "ROLE", "NAME"], &rows)
        }
        OrgCmd::Use { slug } => {
            let org: Org = ctx.client.get(&format!("/api/v1/orgs/{}", enc(&slug))).await?;
            ctx.settings.org = Some(org.slug.clone());
            ctx.settings.project = None;
            ctx.settings.save()?;
            if ctx.json { output::json(&org) } else { eprintln!("Using org {}", org.slug); Ok(()) }
        }
        OrgCmd::Member(cmd) => member(ctx, cmd).await,
    }
}

async fn member(ctx: &mut Ctx, cmd: MemberCmd) -> Result<(), CliError> {
    let org = ctx.org()?;
    let base = format!("/api/v1/orgs/{}/members", enc(&org));
    match cmd {
        MemberCmd::Add { email, role } => {
            let m: OrgMember = ctx.client.post(&base, json!({ "email": email, "role": role })).await?;
            if ctx.json { output::json(&m) } else { println!("{} {}", m.email, m.role.as_str()); Ok(()) }
        }
        MemberCmd::List => {
            let page: Page<OrgMember> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page.data.iter().map(|m| vec![m.email.clone(), m.role.as_str().to_owned(), m.name.clone()]).collect();
            output::table(&["EMAIL", "ROLE", "NAME"], &rows)
        }
        MemberCmd::Set { email, role } => {
            let m: OrgMember = ctx.client.patch(&format!("{base}/{}", enc(&email)), json!({ "role": role })).await?;
            if ctx.json { output::json(&m) } else { println!("{} {}", m.email, m.role.as_str()); Ok(()) }
        }
        MemberCmd::Remove { email } => {
            let _: serde_json::Value = ctx.client.send(reqwest::Method::DELETE, &format!("{base}/{}", enc(&email)), None).await?;
            if ctx.json { output::json(&json!({ "removed": email })) } else { eprintln!("Removed {email}"); Ok(()) }
        }
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
