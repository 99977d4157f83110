//! The LLM proxy: agents and API clients ask in provider-neutral terms
//! (`kodel_core::llm`); the providers' wire formats live in `openai` and `anthropic`.
//!
//! A call: the model (`provider/model`) picks the provider; the org's own key is used
//! before the server's; the org's concurrency limit is checked; the stream is relayed
//! delta by delta; what the call cost is metered into `public.analytics_outbox` (in the
//! same transaction as the job's `job.llm_call` event when the call is a job's).

pub mod anthropic;
pub mod openai;
pub mod provider;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kodel_core::llm::{Assembler, Delta, FinishReason, LlmDone, LlmRequest, Message, Role, Usage};
use kodel_core::events::{LlmCall, TaskEvent};
use uuid::Uuid;

pub use provider::{CallOptions, LlmError, MaxTokensField, ProviderConfig, ProviderKind, StreamEvent, Wire, WireSettings};

use crate::config::LlmSettings;

impl LlmError {
    /// An error that asking again will not fix.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(message, None, false)
    }

    /// An error that may pass.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(message, None, true)
    }

    /// The call was not made: a budget is spent.
    pub fn over_budget(message: impl Into<String>) -> Self {
        Self { over_budget: true, ..Self::refused(message) }
    }
}

/// The built-in system prompt of agent jobs (`SYSTEM_PROMPT` replaces it; the job
/// template's prompt follows it).
pub const SYSTEM_PROMPT: &str = "You are a software engineer working on a task from the Kodel board, inside a \
checked-out workspace. Use the tools to read, search, edit and run code: read before you \
change, keep changes small and focused, run the project's tests when there are any. Paths \
are relative to the workspace root. When the work is done, reply with a short summary of \
what you changed and why, without calling a tool.";

/// How long an org's provider settings are kept in memory.
const ORG_SETTINGS_TTL: Duration = Duration::from_secs(30);

/// Each org's own provider settings, by (org, provider), with when they were read.
type OrgSettings = HashMap<(Uuid, &'static str), (Instant, Option<ProviderConfig>)>;

pub struct Proxy {
    http: reqwest::Client,
    env: HashMap<&'static str, ProviderConfig>,
    default_model: Option<String>,
    system_prompt: String,
    opts: CallOptions,
    per_org: usize,
    /// Calls in flight by org; an org with none has no entry.
    limits: Mutex<HashMap<Uuid, usize>>,
    org_settings: Mutex<OrgSettings>,
}

/// Who is calling: the org, and the job when an agent asks.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: Uuid,
    pub slug: kodel_core::OrgSlug,
    pub job: Option<JobRef>,
    /// The job template's model, used when the request names none.
    pub template_model: Option<String>,
    /// Set for calls through `/v1/chat/completions`.
    pub user: Option<Uuid>,
}

#[derive(Debug, Clone, Copy)]
pub struct JobRef {
    pub job_id: Uuid,
    pub task_id: Uuid,
}

/// One metered call, as written to the outbox.
#[derive(Debug, Clone)]
pub struct Metered {
    pub provider: &'static str,
    pub model: String,
    pub usage: Usage,
    /// No usage came from the provider; `usage` is an estimate.
    pub usage_estimated: bool,
    pub first_token_ms: Option<u64>,
    pub total_ms: u64,
    pub status: &'static str,
    pub error: Option<String>,
}

/// About four characters a token, the rule of thumb for English text and code.
fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

impl Proxy {
    pub fn new(settings: &LlmSettings, http: reqwest::Client) -> Self {
        let mut env = HashMap::new();
        // An empty base URL is the provider's own (`ProviderKind::default_base_url`).
        let mut add = |kind: ProviderKind, base: Option<&String>, key: Option<&String>, wire: WireSettings| {
            if key.is_some() || base.is_some() {
                env.insert(kind.name(), ProviderConfig { kind, base_url: base.cloned().unwrap_or_default(), api_key: key.cloned(), wire });
            }
        };
        add(ProviderKind::OpenAi, settings.openai_base_url.as_ref(), settings.openai_api_key.as_ref(), settings.openai_wire);
        add(ProviderKind::Anthropic, settings.anthropic_base_url.as_ref(), settings.anthropic_api_key.as_ref(), settings.anthropic_wire);
        add(ProviderKind::OpenRouter, settings.openrouter_base_url.as_ref(), settings.openrouter_api_key.as_ref(), settings.openrouter_wire);
        // Ollama needs no key: its base URL is what enables it.
        if let Some(base) = &settings.ollama_base_url {
            let base = base.trim_end_matches('/');
            let base_url = if base.ends_with("/v1") { base.to_owned() } else { format!("{base}/v1") };
            let cfg = ProviderConfig { kind: ProviderKind::Ollama, base_url, api_key: None, wire: settings.ollama_wire };
            env.insert(ProviderKind::Ollama.name(), cfg);
        }
        let timeout = Duration::from_secs_f64(settings.llm_timeout.clamp(0.1, 3600.0));
        // Never shorter than the wait between pieces.
        let first_token_timeout = Duration::from_secs_f64(settings.llm_first_token_timeout.clamp(0.1, 7200.0)).max(timeout);
        Self {
            http,
            env,
            default_model: settings.default_model.clone(),
            system_prompt: settings.system_prompt.clone().unwrap_or_else(|| SYSTEM_PROMPT.to_owned()),
            opts: CallOptions { first_token_timeout, timeout, max_retries: 3, max_retry_wait: Duration::from_secs(30) },
            per_org: settings.llm_concurrency.max(1),
            limits: Mutex::default(),
            org_settings: Mutex::default(),
        }
    }

    /// The system prompt of a job: the server's, then the template's.
    pub fn system_prompt(&self, template_prompt: &str) -> String {
        if template_prompt.trim().is_empty() {
            self.system_prompt.clone()
        } else {
            format!("{}\n\n{}", self.system_prompt, template_prompt.trim())
        }
    }

    /// Which provider and model a call goes to.
    fn route(&self, requested: Option<&str>, template: Option<&str>) -> Result<(ProviderKind, String), LlmError> {
        let model = requested.or(template).or(self.default_model.as_deref()).ok_or_else(|| {
            LlmError::refused("no model: name one as provider/model, or set KODEL_DEFAULT_MODEL on the server")
        })?;
        // A bare model name goes to the default model's provider.
        let default_provider = self.default_model.as_deref().and_then(|d| d.split_once('/')).map(|(p, _)| p);
        let (provider, name) = match model.split_once('/') {
            Some((p, n)) if !n.is_empty() && ProviderKind::parse(p).is_some() => (p, n),
            _ => match default_provider {
                Some(p) => (p, model),
                None => return Err(LlmError::refused(format!("model {model:?} must be provider/model, e.g. openai/gpt-4.1-mini"))),
            },
        };
        let kind = ProviderKind::parse(provider).ok_or_else(|| {
            LlmError::refused(format!("unknown provider {provider:?}: use openai, anthropic, openrouter or ollama"))
        })?;
        Ok((kind, name.to_owned()))
    }

    /// The org's own settings for a provider (cached briefly), else the server's. The
    /// org's wire settings apply over the server's.
    async fn provider(&self, state: &crate::AppState, caller: &Caller, kind: ProviderKind) -> Result<ProviderConfig, LlmError> {
        let key = (caller.org_id, kind.name());
        let cached = self.lock_settings().get(&key).filter(|(at, _)| at.elapsed() < ORG_SETTINGS_TTL).map(|(_, c)| c.clone());
        let own = match cached {
            Some(c) => c,
            None => {
                let own = org_provider(state, caller, kind).await.map_err(|e| LlmError::transient(format!("reading the org's provider settings: {}", e.message)))?;
                self.remember(key, Instant::now(), own.clone());
                own
            }
        };
        let env = self.env.get(kind.name());
        let own = match (own, env) {
            // Only wire settings of its own: the server's provider, spoken to its way.
            (Some(o), Some(e)) if o.base_url.trim().is_empty() && o.key().is_none() => Some(ProviderConfig { wire: o.wire.or(e.wire), ..e.clone() }),
            // Its own endpoint: its own settings, never the server's key.
            (Some(o), _) => Some(o),
            (None, _) => None,
        };
        own.or_else(|| env.cloned()).ok_or_else(|| {
            LlmError::refused(format!("provider {} is not configured on this server or for this org", kind.name()))
        })
    }

    /// Forgets an org's cached provider settings (after they change).
    pub fn forget_org(&self, org_id: Uuid) {
        self.lock_settings().retain(|(org, _), _| *org != org_id);
    }

    /// Caches an org's settings, dropping the entries that expired: an org that stopped
    /// calling costs nothing.
    fn remember(&self, key: (Uuid, &'static str), at: Instant, settings: Option<ProviderConfig>) {
        let mut cache = self.lock_settings();
        cache.retain(|_, (at, _)| at.elapsed() < ORG_SETTINGS_TTL);
        cache.insert(key, (at, settings));
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, OrgSettings> {
        self.org_settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot of the org's concurrency limit, or a retryable error when all are taken.
    fn slot(&self, org: Uuid) -> Result<Slot<'_>, LlmError> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let in_flight = limits.entry(org).or_insert(0);
        if *in_flight >= self.per_org {
            return Err(LlmError::new(format!("the org already has {} LLM calls in flight; try again shortly", self.per_org), Some(429), true));
        }
        *in_flight += 1;
        Ok(Slot { proxy: self, org })
    }

    /// Runs one call: `on_delta` sees each piece as it arrives; the result is the
    /// assembled answer. `cancelled` resolving stops the call (the caller went away or
    /// the job ended). Every call, failed, cancelled or not, is metered.
    pub async fn call(
        &self,
        state: &crate::AppState,
        caller: &Caller,
        system: &str,
        req: &LlmRequest,
        cancelled: impl std::future::Future<Output = ()>,
        mut on_delta: impl FnMut(&Delta),
    ) -> Result<LlmDone, LlmError> {
        req.validate().map_err(LlmError::refused)?;
        let (kind, model) = self.route(req.model.as_deref(), caller.template_model.as_deref())?;
        let _slot = self.slot(caller.org_id)?;
        let cfg = self.provider(state, caller, kind).await?;
        budget_left(state, caller).await?;
        let started = Instant::now();
        let mut meter = Metered {
            provider: kind.name(),
            model: model.clone(),
            usage: Usage::default(),
            usage_estimated: false,
            first_token_ms: None,
            total_ms: 0,
            status: "ok",
            error: None,
        };
        let streamed = async {
            let mut stream = provider::stream(&self.http, &cfg, &model, system, req, &self.opts).await?;
            let mut assembler = Assembler::default();
            let mut finish = FinishReason::Other;
            let mut reported = false;
            while let Some(ev) = stream.next().await {
                match ev? {
                    StreamEvent::Delta(d) => {
                        if meter.first_token_ms.is_none() {
                            meter.first_token_ms = Some(started.elapsed().as_millis() as u64);
                        }
                        assembler.push(&d);
                        on_delta(&d);
                    }
                    StreamEvent::Usage(u) => {
                        meter.usage = u;
                        reported = true;
                    }
                    StreamEvent::Finish(f) => finish = f,
                }
            }
            let message = assembler.finish();
            if !reported {
                // Not zero: a budget must still stop a job on a server that counts nothing.
                meter.usage = estimate(system, req, &message);
                meter.usage_estimated = true;
            }
            Ok::<_, LlmError>(LlmDone { message, usage: meter.usage, finish_reason: finish, model: format!("{}/{model}", kind.name()) })
        };
        let mut was_cancelled = false;
        let result = tokio::select! {
            r = streamed => r,
            _ = cancelled => {
                was_cancelled = true;
                Err(LlmError::refused("the call was cancelled"))
            }
        };
        if meter.first_token_ms.is_some() && !meter.usage_estimated && meter.usage == Usage::default() && result.is_err() {
            // Broke off mid-answer: what was asked still counts.
            meter.usage = Usage { input_tokens: estimate(system, req, &Message::text(Role::Assistant, "")).input_tokens, ..Usage::default() };
            meter.usage_estimated = true;
        }
        // Where the provider cannot be reached, say what to do about it first: the
        // places that show an error cut it short.
        let result = result.map_err(|mut e| {
            if e.status.is_none() && e.message.starts_with("could not reach") {
                let fix = match kind {
                    ProviderKind::Ollama => "Ollama does not answer: start it (`ollama serve`, then `ollama pull` the model), or set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY and KODEL_DEFAULT_MODEL on the server",
                    _ => "the provider does not answer: check its base URL and the network from the server",
                };
                e.message = format!("{fix} ({})", e.message);
            }
            e
        });
        meter.total_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = &result {
            meter.status = if was_cancelled { "cancelled" } else { "error" };
            meter.error = Some(e.message.chars().take(500).collect());
        }
        if let Err(e) = record(state, caller, &meter).await {
            // The answer is not thrown away for a metering failure, but it is loud.
            tracing::error!(error = %e.message, org = %caller.slug, "could not meter an LLM call");
        }
        result
    }
}

/// The usage of a call whose provider reported none, from the characters in and out.
fn estimate(system: &str, req: &LlmRequest, answer: &Message) -> Usage {
    let text = |m: &Message| m.content.len() + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>();
    let tools: usize = req.tools.iter().map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len()).sum();
    let input = system.len() + tools + req.messages.iter().map(text).sum::<usize>();
    Usage { input_tokens: estimate_tokens(input), output_tokens: estimate_tokens(text(answer)), cached_tokens: 0 }
}

/// Writes the call to the analytics outbox; a job's call also adds to the job's usage
/// and becomes a `job.llm_call` event, all in one transaction.
async fn record(state: &crate::AppState, caller: &Caller, m: &Metered) -> crate::error::ApiResult<()> {
    let mut db = crate::db::OrgTx::begin(&state.pool, caller.org_id, &caller.slug).await?;
    let cost = crate::analytics::outbox::llm_call(&mut db, caller, m).await?;
    state.metrics.llm_call(m.provider, m.status, &m.usage, cost);
    if let Some(job) = caller.job {
        crate::engine::jobs::add_usage(&mut db, job.job_id, &m.usage, cost).await?;
        // The task's event shows the call without the org-wide fields.
        let call = LlmCall {
            job_id: Some(job.job_id),
            provider: m.provider.to_owned(),
            model: format!("{}/{}", m.provider, m.model),
            input_tokens: m.usage.input_tokens,
            output_tokens: m.usage.output_tokens,
            cached_tokens: m.usage.cached_tokens,
            usage_estimated: m.usage_estimated,
            first_token_ms: m.first_token_ms,
            total_ms: Some(m.total_ms),
            status: m.status.to_owned(),
            error: m.error.clone(),
        };
        crate::events::record(&mut db, job.task_id, TaskEvent::JobLlmCall(call)).await?;
    }
    state.commit(db).await
}

/// Refuses a call that a spent budget of the org, or of the job's project or task,
/// does not allow.
async fn budget_left(state: &crate::AppState, caller: &Caller) -> Result<(), LlmError> {
    let schema = format!("{}.", caller.slug.quoted_schema());
    match crate::analytics::budgets::exceeded(&state.pool, &schema, caller.job.map(|j| j.task_id)).await {
        Ok(None) => Ok(()),
        Ok(Some(spent)) => Err(LlmError::over_budget(format!("{} is spent: raise it (kodel budget set) to go on", spent.describe()))),
        Err(e) => Err(LlmError::transient(format!("checking the budgets: {}", e.message))),
    }
}

/// base_url, the sealed key, wire.
type OrgProviderRow = (Option<String>, Option<Vec<u8>>, sqlx::types::Json<WireSettings>);

/// The org's own key, base URL and wire settings for a provider, if it set them.
async fn org_provider(state: &crate::AppState, caller: &Caller, kind: ProviderKind) -> crate::error::ApiResult<Option<ProviderConfig>> {
    let mut db = crate::db::scoped::begin_scoped(&state.pool, &caller.slug).await?;
    let row: Option<OrgProviderRow> =
        sqlx::query_as("SELECT base_url, api_key, wire FROM llm_providers WHERE provider = $1").bind(kind.name()).fetch_optional(&mut *db).await?;
    db.commit().await?;
    let Some((base, key, sqlx::types::Json(wire))) = row else { return Ok(None) };
    let api_key = match key {
        Some(sealed) => {
            let plain = state.sealer.open(&sealed).ok_or_else(|| crate::error::ApiError::internal("an org's provider key does not open with this server's key"))?;
            Some(String::from_utf8(plain).map_err(crate::error::ApiError::internal)?)
        }
        None => None,
    };
    Ok(Some(ProviderConfig { kind, base_url: base.unwrap_or_default(), api_key, wire }))
}

/// The HTTP client for providers: a bounded connect, no overall timeout (a long answer
/// streams for minutes; `CallOptions::timeout` bounds the silences instead).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().unwrap_or_default()
}

/// One call's place in its org's limit, given back when dropped.
struct Slot<'a> {
    proxy: &'a Proxy,
    org: Uuid,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut limits = self.proxy.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = limits.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                limits.remove(&self.org);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(settings: LlmSettings) -> Proxy {
        Proxy::new(&settings, client())
    }

    #[test]
    fn the_system_prompt_is_built_in_replaceable_and_extended_by_the_template() {
        let p = proxy(LlmSettings::default());
        assert_eq!(p.system_prompt(""), SYSTEM_PROMPT);
        assert_eq!(p.system_prompt("Review only."), format!("{SYSTEM_PROMPT}\n\nReview only."));
        let p = proxy(LlmSettings { system_prompt: Some("You are Kodel's house agent.".into()), ..Default::default() });
        assert_eq!(p.system_prompt("Review only."), "You are Kodel's house agent.\n\nReview only.");
    }

    #[test]
    fn models_pick_their_provider() {
        let p = proxy(LlmSettings { default_model: Some("anthropic/claude-x".into()), ..Default::default() });
        assert_eq!(p.route(None, None).unwrap(), (ProviderKind::Anthropic, "claude-x".into()));
        assert_eq!(p.route(Some("openai/gpt-4.1"), None).unwrap(), (ProviderKind::OpenAi, "gpt-4.1".into()));
        assert_eq!(p.route(None, Some("ollama/qwen2.5-coder")).unwrap(), (ProviderKind::Ollama, "qwen2.5-coder".into()));
        assert_eq!(p.route(Some("openrouter/meta/llama-3"), None).unwrap(), (ProviderKind::OpenRouter, "meta/llama-3".into()));
        // A bare name (or an unknown prefix) goes to the default model's provider.
        assert_eq!(p.route(Some("claude-y"), None).unwrap(), (ProviderKind::Anthropic, "claude-y".into()));
        let none = proxy(LlmSettings::default());
        assert!(none.route(None, None).unwrap_err().message.contains("KODEL_DEFAULT_MODEL"));
        assert!(none.route(Some("gpt-4"), None).unwrap_err().message.contains("provider/model"));
    }

    #[test]
    fn the_org_limit_counts_calls_in_flight() {
        let p = proxy(LlmSettings { llm_concurrency: 2, ..Default::default() });
        let org = Uuid::now_v7();
        let a = p.slot(org).unwrap();
        let _b = p.slot(org).unwrap();
        let Err(refused) = p.slot(org) else { panic!("a third call in flight is refused") };
        assert_eq!((refused.status, refused.retryable), (Some(429), true));
        assert!(p.slot(Uuid::now_v7()).is_ok(), "another org has its own slots");
        drop(a);
        assert!(p.slot(org).is_ok(), "a finished call frees its slot");
    }

    #[test]
    fn an_org_that_stopped_calling_is_forgotten() {
        let p = proxy(LlmSettings::default());
        let (busy, idle) = (Uuid::now_v7(), Uuid::now_v7());
        drop(p.slot(idle).unwrap());
        let _held = p.slot(busy).unwrap();
        assert_eq!(p.limits.lock().unwrap().keys().collect::<Vec<_>>(), vec![&busy], "only orgs with calls in flight are counted");
        let long_ago = Instant::now().checked_sub(ORG_SETTINGS_TTL * 2).unwrap();
        p.remember((idle, "openai"), long_ago, None);
        p.remember((busy, "openai"), Instant::now(), None);
        assert_eq!(p.lock_settings().keys().map(|(org, _)| *org).collect::<Vec<_>>(), vec![busy], "expired settings are dropped");
    }
}
