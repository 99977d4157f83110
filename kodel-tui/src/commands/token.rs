//! token create|list|revoke.

use kodel_core::api::{ApiToken, ApiTokenCreated, Page};
use serde_json::json;

use super::Ctx;
use super::org::enc;
use crate::cli::TokenCmd;
use crate::exit::CliError;
use crate::output;

pub async fn run(ctx: &mut Ctx, cmd: TokenCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    match cmd {
        TokenCmd::Create { name, expires_at } => {
            let t: ApiTokenCreated = ctx.client.post("/api/v1/tokens", json!({ "name": name, "expires_at": expires_at })).await?;
            created(ctx, &t, "Use it as KODEL_TOKEN or with `kodel login --token`.")
        }
        TokenCmd::List => {
            let page: Page<ApiToken> = ctx.client.get("/api/v1/tokens").await?;
            list(ctx, &page)
        }
        TokenCmd::Revoke { id } => {
            let _: serde_json::Value = ctx.client.send(reqwest::Method::DELETE, &format!("/api/v1/tokens/{}", enc(&id)), None).await?;
            if ctx.json { output::json(&json!({ "revoked": id })) } else { eprintln!("Revoked {id}"); Ok(()) }
        }
    }
}

/// A new token: alone on stdout (for scripts), the advice on stderr.
pub fn created(ctx: &Ctx, t: &ApiTokenCreated, advice: &str) -> Result<(), CliError> {
    if ctx.json {
        return output::json(t);
    }
    println!("{}", t.token);
    eprintln!("This token is shown once. {advice}");
    Ok(())
}

/// Tokens as a table (personal and agent tokens alike).
pub fn list(ctx: &Ctx, page: &Page<ApiToken>) -> Result<(), CliError> {
    if ctx.json {
        return output::json(page);
    }
    let rows: Vec<Vec<String>> = page
        .data
        .iter()
        .map(|t| {
            let exp = t.expires_at.map(|e| e.to_rfc3339()).unwrap_or_else(|| "never".into());
            let used = t.last_used_at.as_ref().map(output::when).unwrap_or_else(|| "never".into());
            vec![t.id.to_string(), format!("{}…", t.prefix), exp, used, t.name.clone()]
        })
        .collect();
    output::table(&["ID", "PREFIX", "EXPIRES", "LAST USED", "NAME"], &rows)
}
