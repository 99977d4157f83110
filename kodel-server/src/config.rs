//! Server configuration from flags and environment (names are part of the contract:
//! see README and ../shared/DESIGN.md section 11).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::llm::WireSettings;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kodel-server", version, about = "Kodel's headless server")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "KODEL_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,

    /// PostgreSQL URL. When absent the server runs its own cluster in the data dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the managed PostgreSQL cluster and other state live.
    #[arg(long, env = "KODEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Secret for signing access tokens (at least 32 bytes). When absent one is
    /// generated on first start and kept in the database.
    #[arg(long, env = "KODEL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "KODEL_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Most database connections this server opens. More than a few per core only adds
    /// contention (docs/benchmarks.md).
    #[arg(long, env = "KODEL_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// Longest wait for a database connection (seconds): while the database is away,
    /// requests answer 503 `database_unavailable` after this.
    #[arg(long, env = "KODEL_DB_TIMEOUT", default_value_t = 5.0)]
    pub db_timeout: f64,

    /// Key sealing stored secrets such as repository credentials: base64 of 32 bytes.
    /// When absent one is generated into `sealing.key` in the data dir.
    #[arg(long, env = "KODEL_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,

    /// The sealing key before a rotation: stored secrets still open with it, and the
    /// server seals them all again with KODEL_ENCRYPTION_KEY at start.
    #[arg(long, env = "KODEL_ENCRYPTION_KEY_PREVIOUS", hide_env_values = true)]
    pub encryption_key_previous: Option<String>,

    /// ClickHouse's HTTP address (`http://127.0.0.1:8123`). When set, LLM calls and job
    /// events are shipped there from the outbox and usage reports are read there.
    #[arg(long, env = "KODEL_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,

    #[arg(long, env = "KODEL_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,

    #[arg(long, env = "KODEL_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,

    /// The ClickHouse database (made if missing).
    #[arg(long, env = "KODEL_CLICKHOUSE_DATABASE", default_value = "kodel")]
    pub clickhouse_database: String,

    /// Days shipped analytics rows stay in PostgreSQL before they are deleted.
    #[arg(long, env = "KODEL_ANALYTICS_RETENTION_DAYS", default_value_t = 7.0)]
    pub analytics_retention_days: f64,

    /// The address people reach this server at (`https://kodel.example.com`): SSO's
    /// redirect comes back here, and when it is https the web view's cookie is Secure.
    /// Default: `http://` and the listen address.
    #[arg(long, env = "KODEL_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Single sign-on: the OpenID provider's issuer URL (discovery is read from
    /// `<issuer>/.well-known/openid-configuration`).
    #[arg(long, env = "KODEL_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    #[arg(long, env = "KODEL_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    #[arg(long, env = "KODEL_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,

    /// What the sign-in button calls the provider.
    #[arg(long, env = "KODEL_OIDC_NAME", default_value = "single sign-on")]
    pub oidc_name: String,

    /// Whether a first SSO sign-in with no account to link makes one (else it is refused).
    #[arg(long, env = "KODEL_OIDC_AUTO_CREATE", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub oidc_auto_create: bool,

    /// An ID token claim listing org slugs: at an identity's first SSO sign-in its user
    /// is made a member of those orgs (the ones that exist).
    #[arg(long, env = "KODEL_OIDC_ORG_CLAIM")]
    pub oidc_org_claim: Option<String>,

    /// When set, `/metrics` answers only requests with `Authorization: Bearer <it>`.
    #[arg(long, env = "KODEL_METRICS_TOKEN", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub metrics_token: Option<String>,

    /// How often the engine looks for expired job leases, due schedules and stale tasks
    /// (seconds).
    #[arg(long, env = "KODEL_ENGINE_TICK", default_value_t = 5.0)]
    pub engine_tick: f64,

    /// Org schemas kept ready ahead of time, so creating an org is a rename (0: none).
    #[arg(long, env = "KODEL_SPARE_SCHEMAS", default_value_t = 2)]
    pub spare_schemas: usize,

    /// First wait before a failed webhook is tried again (seconds); it doubles each time.
    #[arg(long, env = "KODEL_WEBHOOK_RETRY", default_value_t = 10.0)]
    pub webhook_retry: f64,

    /// How long an agent holds a job without a heartbeat before it is queued again
    /// (seconds). Agents heartbeat every third of it.
    #[arg(long, env = "KODEL_JOB_LEASE", default_value_t = 60.0)]
    pub job_lease: f64,

    /// Let orgs point LLM base URLs and webhooks at loopback and private addresses
    /// (a single-user install with a local Ollama). Off: such URLs are refused.
    #[arg(long, env = "KODEL_ALLOW_PRIVATE_URLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_urls: bool,

    #[command(flatten)]
    pub llm: LlmSettings,

    #[command(flatten)]
    pub limits: Limits,
}

/// What one client may hold or try: bounds on anonymous password work and on open
/// event streams (docs/security.md).
#[derive(Clone, Debug, clap::Args)]
pub struct Limits {
    /// Logins and registrations a minute from one client address.
    #[arg(long, env = "KODEL_LOGIN_PER_ADDRESS", default_value_t = 30)]
    pub login_per_address: u32,
    /// Failed logins to one account in 15 minutes before its logins are refused until
    /// the window ends.
    #[arg(long, env = "KODEL_LOGIN_PER_ACCOUNT", default_value_t = 10)]
    pub login_per_account: u32,
    /// Event streams (SSE) one user may hold open at once.
    #[arg(long, env = "KODEL_STREAMS_PER_USER", default_value_t = 64)]
    pub streams_per_user: u32,
    /// Event streams one org's members may hold open together.
    #[arg(long, env = "KODEL_STREAMS_PER_ORG", default_value_t = 2000)]
    pub streams_per_org: u32,
    /// Load balancers in front of the server (addresses or ranges, comma-separated):
    /// the login limits then count the client `X-Forwarded-For` names.
    #[arg(long, env = "KODEL_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

impl Default for Limits {
    fn default() -> Self {
        Self { login_per_address: 30, login_per_account: 10, streams_per_user: 64, streams_per_org: 2000, trusted_proxies: String::new() }
    }
}

/// The LLM providers the server may call, and how. Keys never leave the server.
#[derive(Clone, Default, clap::Args)]
pub struct LlmSettings {
    #[arg(long = "openai-api-key", env = "OPENAI_API_KEY", hide_env_values = true, hide = true)]
    pub openai_api_key: Option<String>,
    #[arg(long = "openai-base-url", env = "OPENAI_BASE_URL", hide = true)]
    pub openai_base_url: Option<String>,
    #[arg(long = "anthropic-api-key", env = "ANTHROPIC_API_KEY", hide_env_values = true, hide = true)]
    pub anthropic_api_key: Option<String>,
    #[arg(long = "anthropic-base-url", env = "ANTHROPIC_BASE_URL", hide = true)]
    pub anthropic_base_url: Option<String>,
    #[arg(long = "openrouter-api-key", env = "OPENROUTER_API_KEY", hide_env_values = true, hide = true)]
    pub openrouter_api_key: Option<String>,
    #[arg(long = "openrouter-base-url", env = "OPENROUTER_BASE_URL", hide = true)]
    pub openrouter_base_url: Option<String>,
    #[arg(long = "ollama-base-url", env = "OLLAMA_BASE_URL", hide = true)]
    pub ollama_base_url: Option<String>,
    /// How to speak to each provider where servers differ, e.g.
    /// `OPENAI_WIRE=stream=off,max_tokens_field=max_tokens,tool_choice=off` (README,
    /// "Local models"); an org's own provider settings apply over these.
    #[arg(long = "openai-wire", env = "OPENAI_WIRE", value_parser = wire, default_value = "", hide = true)]
    pub openai_wire: WireSettings,
    #[arg(long = "anthropic-wire", env = "ANTHROPIC_WIRE", value_parser = wire, default_value = "", hide = true)]
    pub anthropic_wire: WireSettings,
    #[arg(long = "openrouter-wire", env = "OPENROUTER_WIRE", value_parser = wire, default_value = "", hide = true)]
    pub openrouter_wire: WireSettings,
    #[arg(long = "ollama-wire", env = "OLLAMA_WIRE", value_parser = wire, default_value = "", hide = true)]
    pub ollama_wire: WireSettings,
    /// The model used when neither the request nor the job template names one, as
    /// `provider/model` (e.g. `openai/gpt-4.1-mini`).
    #[arg(long, env = "KODEL_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Replaces the built-in system prompt of agent jobs.
    #[arg(long, env = "SYSTEM_PROMPT", hide = true)]
    pub system_prompt: Option<String>,
    /// Most LLM calls one org may have in flight at once.
    #[arg(long, env = "KODEL_LLM_CONCURRENCY", default_value_t = 8)]
    pub llm_concurrency: usize,
    /// Longest wait between two pieces of a streamed answer (seconds).
    #[arg(long, env = "KODEL_LLM_TIMEOUT", default_value_t = 120.0)]
    pub llm_timeout: f64,
    /// Longest wait for an answer to begin (seconds): a server on a CPU reads a long
    /// prompt before its first token. Never shorter than KODEL_LLM_TIMEOUT.
    #[arg(long, env = "KODEL_LLM_FIRST_TOKEN_TIMEOUT", default_value_t = 600.0)]
    pub llm_first_token_timeout: f64,
}

fn wire(text: &str) -> Result<WireSettings, String> {
    WireSettings::parse(text)
}

// Keys must never reach a log line through `{:?}`.
impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("openai", &self.openai_api_key.is_some())
            .field("anthropic", &self.anthropic_api_key.is_some())
            .field("openrouter", &self.openrouter_api_key.is_some())
            .field("ollama_base_url", &self.ollama_base_url)
            .field("default_model", &self.default_model)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// ClickHouse, if `KODEL_CLICKHOUSE_URL` is set.
    pub fn clickhouse(&self) -> Option<crate::analytics::clickhouse::ClickHouseConfig> {
        Some(crate::analytics::clickhouse::ClickHouseConfig {
            url: self.clickhouse_url.clone().filter(|u| !u.is_empty())?,
            user: self.clickhouse_user.clone().filter(|u| !u.is_empty()),
            password: self.clickhouse_password.clone(),
            database: self.clickhouse_database.clone(),
        })
    }

    /// The address people reach this server at, without a trailing slash.
    pub fn public_url(&self) -> String {
        match self.public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// Single sign-on, if `KODEL_OIDC_ISSUER` is set (then the client id must be too).
    pub fn sso(&self) -> anyhow::Result<Option<crate::auth::oidc::SsoConfig>> {
        let Some(issuer) = self.oidc_issuer.clone().filter(|u| !u.trim().is_empty()) else { return Ok(None) };
        let client_id = self.oidc_client_id.clone().filter(|c| !c.trim().is_empty()).ok_or_else(|| anyhow::anyhow!("KODEL_OIDC_ISSUER is set but KODEL_OIDC_CLIENT_ID is not"))?;
        Ok(Some(crate::auth::oidc::SsoConfig {
            issuer: issuer.trim().to_owned(),
            client_id,
            client_secret: self.oidc_client_secret.clone().filter(|s| !s.is_empty()),
            display_name: self.oidc_name.clone(),
            auto_create: self.oidc_auto_create,
            org_claim: self.oidc_org_claim.clone().filter(|c| !c.trim().is_empty()),
            redirect_url: format!("{}/sso/callback", self.public_url()),
        }))
    }

    /// The data dir: the flag or env, else /var/lib/kodel for root (a cluster run as
    /// the postgres user must be able to reach it), else the user's data dir.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if nix::unistd::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/kodel"));
        }
        directories::ProjectDirs::from("dev", "kodel", "kodel")
            .map(|d| d.data_dir().to_path_buf())
            .ok_or_else(|| anyhow::anyhow!("cannot find a home directory; pass --data-dir"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn boolean_settings_take_the_usual_spellings() {
        for (value, want) in [("1", true), ("true", true), ("yes", true), ("on", true), ("0", false), ("false", false), ("no", false), ("off", false)] {
            // SAFETY: nextest runs each test in a process of its own.
            unsafe { std::env::set_var("KODEL_ALLOW_PRIVATE_URLS", value) };
            let config = super::Config::try_parse_from(["kodel-server"]).unwrap();
            assert_eq!(config.allow_private_urls, want, "KODEL_ALLOW_PRIVATE_URLS={value}");
        }
        unsafe { std::env::set_var("KODEL_ALLOW_PRIVATE_URLS", "maybe") };
        let Err(err) = super::Config::try_parse_from(["kodel-server"]) else { panic!("KODEL_ALLOW_PRIVATE_URLS=maybe was taken") };
        let err = err.to_string();
        assert!(err.contains("maybe"), "{err}");
        unsafe { std::env::remove_var("KODEL_ALLOW_PRIVATE_URLS") };
    }

    /// An empty token would leave `/metrics` open while its operator thinks it guarded.
    #[test]
    fn an_empty_metrics_token_is_refused() {
        // SAFETY: nextest runs each test in a process of its own.
        unsafe { std::env::set_var("KODEL_METRICS_TOKEN", "") };
        let Err(err) = super::Config::try_parse_from(["kodel-server"]) else { panic!("an empty KODEL_METRICS_TOKEN was taken") };
        assert!(err.to_string().contains("metrics-token"), "{err}");
        unsafe { std::env::set_var("KODEL_METRICS_TOKEN", "s3cret") };
        assert_eq!(super::Config::try_parse_from(["kodel-server"]).unwrap().metrics_token.as_deref(), Some("s3cret"));
        unsafe { std::env::remove_var("KODEL_METRICS_TOKEN") };
    }
}
