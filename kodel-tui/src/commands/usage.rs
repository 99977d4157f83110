//! usage, price list|set|unset, budget list|set|remove.

use kodel_core::api::Page;
use kodel_core::usage::{Budget, ModelPrice, UsageReport};
use reqwest::Method;
use serde_json::json;

use super::Ctx;
use super::org::enc;
use crate::cli::{BudgetCmd, PriceCmd, UsageArgs};
use crate::exit::CliError;
use crate::output;

pub async fn report(ctx: &mut Ctx, args: UsageArgs) -> Result<(), CliError> {
    ctx.require_login()?;
    let mut query = format!("group_by={}", enc(&args.by));
    for (name, value) in [("from", &args.from), ("to", &args.to)] {
        if let Some(v) = value {
            query.push_str(&format!("&{name}={}", enc(v)));
        }
    }
    let report: UsageReport = ctx.client.get(&format!("/api/v1/orgs/{}/usage?{query}", enc(&ctx.org()?))).await?;
    if ctx.json {
        return output::json(&report);
    }
    if report.data.is_empty() {
        return output::note(format!("no LLM calls from {} to {}", report.from.format("%Y-%m-%d %H:%M"), report.to.format("%Y-%m-%d %H:%M")));
    }
    let mut rows: Vec<Vec<String>> = report
        .data
        .iter()
        .map(|r| {
            vec![
                r.key.clone().unwrap_or_else(|| "(none)".into()),
                r.calls.to_string(),
                r.errors.to_string(),
                r.tokens_in.to_string(),
                r.tokens_out.to_string(),
                r.tokens_cached.to_string(),
                dollars(r.cost, r.unpriced_calls),
            ]
        })
        .collect();
    let sum = |f: fn(&kodel_core::usage::UsageRow) -> u64| report.data.iter().map(f).sum::<u64>().to_string();
    let cost: f64 = report.data.iter().map(|r| r.cost).sum();
    let unpriced: u64 = report.data.iter().map(|r| r.unpriced_calls).sum();
    rows.push(vec![
        "TOTAL".into(),
        sum(|r| r.calls),
        sum(|r| r.errors),
        sum(|r| r.tokens_in),
        sum(|r| r.tokens_out),
        sum(|r| r.tokens_cached),
        dollars(cost, unpriced),
    ]);
    output::table(&[&args.by.to_uppercase(), "CALLS", "ERRORS", "TOKENS IN", "TOKENS OUT", "CACHED", "COST"], &rows)?;
    if unpriced > 0 {
        output::note(format!("{unpriced} calls are of models with no known price (not in COST): set one with kodel price set"))?;
    }
    Ok(())
}

/// `$0.0123`, with a `+` when some calls had no price.
fn dollars(cost: f64, unpriced: u64) -> String {
    let text = crate::tui::usage::dollars(cost);
    if unpriced > 0 { format!("{text}+") } else { text }
}

pub async fn price(ctx: &mut Ctx, cmd: PriceCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/prices", enc(&ctx.org()?));
    match cmd {
        PriceCmd::List => {
            let page: Page<ModelPrice> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .data
                .iter()
                .map(|p| {
                    vec![
                        p.provider.clone(),
                        p.model.clone(),
                        p.input.to_string(),
                        p.output.to_string(),
                        p.cached.to_string(),
                        p.source.clone().unwrap_or_default().replace('_', "-"),
                    ]
                })
                .collect();
            output::table(&["PROVIDER", "MODEL", "INPUT $/M", "OUTPUT $/M", "CACHED $/M", "SOURCE"], &rows)
        }
        PriceCmd::Set { provider, model, input, output: out, cached } => {
            let body = json!({"provider": provider, "model": model, "input": input, "output": out, "cached": cached.unwrap_or(input)});
            let p: ModelPrice = ctx.client.send(Method::PUT, &base, Some(body)).await?;
            if ctx.json {
                output::json(&p)
            } else {
                output::line(format!("{}/{}: ${} in, ${} out, ${} cached per million tokens", p.provider, p.model, p.input, p.output, p.cached))
            }
        }
        PriceCmd::Unset { provider, model } => {
            let _: serde_json::Value =
                ctx.client.send(Method::DELETE, &format!("{base}?provider={}&model={}", enc(&provider), enc(&model)), None).await?;
            if ctx.json {
                output::json(&json!({"removed": {"provider": provider, "model": model}}))
            } else {
                output::line(format!("{provider}/{model}: the built-in price applies again"))
            }
        }
    }
}

pub async fn budget(ctx: &mut Ctx, cmd: BudgetCmd) -> Result<(), CliError> {
    ctx.require_login()?;
    let base = format!("/api/v1/orgs/{}/budgets", enc(&ctx.org()?));
    match cmd {
        BudgetCmd::List => {
            let page: Page<Budget> = ctx.client.get(&base).await?;
            if ctx.json {
                return output::json(&page);
            }
            if page.data.is_empty() {
                return output::note("no budget is set: kodel budget set --cost 100 sets one on the org");
            }
            let rows: Vec<Vec<String>> = page.data.iter().map(budget_row).collect();
            output::table(&["ID", "ON", "PERIOD", "COST", "TOKENS"], &rows)
        }
        BudgetCmd::Set { project, task, period, cost, tokens } => {
            let scope = if task.is_some() {
                "task"
            } else if project.is_some() {
                "project"
            } else {
                "org"
            };
            let body = json!({"scope": scope, "project": project, "task": task.map(|t| t.to_uppercase()), "period": period, "max_cost": cost, "max_tokens": tokens});
            let b: Budget = ctx.client.send(Method::PUT, &base, Some(body)).await?;
            if ctx.json {
                return output::json(&b);
            }
            let row = budget_row(&b);
            output::line(format!("{}: {} {}, {} ({})", row[1], row[3], row[2], row[4], b.id))
        }
        BudgetCmd::Remove { id } => {
            let _: serde_json::Value = ctx.client.send(Method::DELETE, &format!("{base}/{}", enc(&id)), None).await?;
            if ctx.json { output::json(&json!({"removed": id})) } else { output::line(format!("budget {id} removed")) }
        }
    }
}

/// id, what it is on, period, "spent of limit" for money and tokens.
fn budget_row(b: &Budget) -> Vec<String> {
    let on = match (&b.task, &b.project) {
        (Some(t), _) => format!("task {t}"),
        (_, Some(p)) => format!("project {p}"),
        _ => "org".into(),
    };
    let period = if b.period.as_str() == "month" { "this month" } else { "in total" };
    let cost = b.max_cost.map_or("-".into(), |m| format!("${:.2} of ${m:.2}", b.spent_cost));
    let tokens = b.max_tokens.map_or("-".into(), |m| format!("{} of {m}", b.spent_tokens));
    vec![b.id.to_string(), on, period.into(), cost, tokens]
}
