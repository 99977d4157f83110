//! What an LLM call costs: a price per million tokens (input, output, cached input) for
//! each provider and model, built in for the well-known models and set per org in
//! `model_prices` (which wins). A call's cost is worked out once, when it is metered,
//! and stored with it in micro-dollars (millionths of a US dollar): one token at $1 per
//! million tokens is one micro-dollar, so sums are exact in both PostgreSQL and
//! ClickHouse.

use kodel_core::llm::Usage;
use serde::{Deserialize, Serialize};

use crate::db::OrgTx;
use crate::error::ApiResult;

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input tokens read from the provider's prompt cache.
    pub cached: f64,
}

impl Price {
    /// The cost in micro-dollars. `usage.cached_tokens` are part of `input_tokens`.
    pub fn cost_micros(&self, usage: &Usage) -> i64 {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        (fresh as f64 * self.input + cached as f64 * self.cached + usage.output_tokens as f64 * self.output).round() as i64
    }
}

const fn p(input: f64, output: f64, cached: f64) -> Price {
    Price { input, output, cached }
}

/// Built-in prices by model-name prefix (the longest prefix wins, so a dated name such
/// as `claude-sonnet-4-20250514` takes `claude-sonnet-4`'s price). Public list prices;
/// an org whose contract differs sets its own.
pub const BUILT_IN: &[(&str, &str, Price)] = &[
    ("openai", "gpt-5", p(1.25, 10.0, 0.125)),
    ("openai", "gpt-5-mini", p(0.25, 2.0, 0.025)),
    ("openai", "gpt-5-nano", p(0.05, 0.40, 0.005)),
    ("openai", "gpt-4.1", p(2.0, 8.0, 0.50)),
    ("openai", "gpt-4.1-mini", p(0.40, 1.60, 0.10)),
    ("openai", "gpt-4.1-nano", p(0.10, 0.40, 0.025)),
    ("openai", "gpt-4o", p(2.50, 10.0, 1.25)),
    ("openai", "gpt-4o-mini", p(0.15, 0.60, 0.075)),
    ("openai", "o3", p(2.0, 8.0, 0.50)),
    ("openai", "o4-mini", p(1.10, 4.40, 0.275)),
    ("anthropic", "claude-opus-4", p(15.0, 75.0, 1.50)),
    ("anthropic", "claude-opus-4-1", p(15.0, 75.0, 1.50)),
    ("anthropic", "claude-opus-4-5", p(5.0, 25.0, 0.50)),
    ("anthropic", "claude-sonnet-4", p(3.0, 15.0, 0.30)),
    ("anthropic", "claude-3-7-sonnet", p(3.0, 15.0, 0.30)),
    ("anthropic", "claude-3-5-sonnet", p(3.0, 15.0, 0.30)),
    ("anthropic", "claude-haiku-4-5", p(1.0, 5.0, 0.10)),
    ("anthropic", "claude-3-5-haiku", p(0.80, 4.0, 0.08)),
];

/// The built-in price of a model: for OpenRouter's `vendor/model` names, the vendor's
/// own price of `model`; a local Ollama model costs nothing.
pub fn built_in(provider: &str, model: &str) -> Option<Price> {
    if provider == "ollama" {
        return Some(p(0.0, 0.0, 0.0));
    }
    let (provider, model) = match (provider, model.split_once('/')) {
        ("openrouter", Some((vendor, name))) => (vendor, name),
        _ => (provider, model),
    };
    BUILT_IN
        .iter()
        .filter(|(p, prefix, _)| *p == provider && model.starts_with(prefix))
        .max_by_key(|(_, prefix, _)| prefix.len())
        .map(|(_, _, price)| *price)
}

/// The org's price of a model: its own (`model_prices`, by the longest name the model
/// starts with), else the built-in one. None
/// when neither knows the model: the call is stored with no cost and counted as
/// unpriced in reports.
pub async fn price(db: &mut OrgTx, provider: &str, model: &str) -> ApiResult<Option<Price>> {
    // The org's prices match like the built-in ones: the longest name the model starts with.
    let own: Option<(f64, f64, f64)> = sqlx::query_as(
        "SELECT input, output, cached FROM model_prices WHERE provider = $1 AND left($2, length(model)) = model ORDER BY length(model) DESC LIMIT 1",
    )
        .bind(provider)
        .bind(model)
        .fetch_optional(db.conn())
        .await?;
    Ok(own.map(|(input, output, cached)| Price { input, output, cached }).or_else(|| built_in(provider, model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins_and_openrouter_takes_the_vendors_price() {
        assert_eq!(built_in("openai", "gpt-4o-mini-2024-07-18"), Some(p(0.15, 0.60, 0.075)));
        assert_eq!(built_in("openai", "gpt-4o-2024-08-06"), Some(p(2.50, 10.0, 1.25)));
        assert_eq!(built_in("anthropic", "claude-opus-4-5-20251101"), Some(p(5.0, 25.0, 0.50)));
        assert_eq!(built_in("anthropic", "claude-opus-4-20250514"), Some(p(15.0, 75.0, 1.50)));
        assert_eq!(built_in("openrouter", "anthropic/claude-sonnet-4"), Some(p(3.0, 15.0, 0.30)));
        assert_eq!(built_in("ollama", "llama3.2"), Some(p(0.0, 0.0, 0.0)));
        assert_eq!(built_in("openai", "my-finetune"), None);
    }

    #[test]
    fn cached_input_is_charged_at_its_own_price() {
        let price = p(3.0, 15.0, 0.30);
        // 1,000 fresh input tokens at $3/M = 3,000 µ$; 1,000 cached at $0.30/M = 300 µ$;
        // 100 output at $15/M = 1,500 µ$.
        assert_eq!(price.cost_micros(&Usage { input_tokens: 2000, output_tokens: 100, cached_tokens: 1000 }), 4800);
        // More cached than input (a provider's odd report) is not a negative cost.
        assert_eq!(price.cost_micros(&Usage { input_tokens: 10, output_tokens: 0, cached_tokens: 50 }), 3);
    }
}
