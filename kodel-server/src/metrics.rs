//! What `/metrics` shows Prometheus. Server-wide figures only: no org, user or task
//! names in labels, so the page tells nothing of tenants. Set KODEL_METRICS_TOKEN to
//! require `Authorization: Bearer <it>` on a server the public can reach.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A request: the route as the router matched it (`/api/v1/orgs/{org}/tasks`, never a
/// tenant's name), its method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LlmLabels {
    pub provider: String,
    /// `ok`, `error`, `cancelled`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: String,
    /// `input`, `output` or `cached` (cached input is part of input).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `pending`, `running`, `paused`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `job.created`, `job.started`, `job.succeeded`, `job.failed`...
    pub event: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

pub struct Metrics {
    registry: Registry,
    /// SHA-256 of KODEL_METRICS_TOKEN: the page then needs it as a bearer token.
    token: Option<Vec<u8>>,
    /// Agent WebSocket frames that were not protocol messages.
    pub agent_bad_frames: Counter,
    agents_connected: Gauge,
    event_streams_open: Gauge,
    resident_memory: Gauge,
    /// Analytics outbox rows shipped to ClickHouse by this server.
    pub outbox_shipped: Counter,
    outbox_backlog: Gauge,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Histograms<RouteLabels>,
    pub llm_calls: Family<LlmLabels, Counter>,
    pub llm_tokens: Family<TokenLabels, Counter>,
    pub llm_cost: Family<ProviderLabels, Counter<f64, AtomicU64>>,
    /// Job changes this server committed.
    pub job_changes: Family<JobLabels, Counter>,
    /// How many task creations each group commit carried.
    pub create_batches: Histogram,
    jobs: Family<StateLabels, Gauge>,
}

/// Figures read when the page is asked for.
pub struct Now {
    pub agents_connected: usize,
    pub event_streams_open: u64,
    /// Analytics outbox rows not shipped yet (None: not read).
    pub outbox_backlog: Option<i64>,
    /// Jobs of every org by state (None: not read).
    pub jobs: Option<Vec<(String, i64)>>,
}

impl Metrics {
    pub fn new(token: Option<&str>) -> Self {
        let mut registry = Registry::with_prefix("kodel");
        let (agent_bad_frames, agents_connected, event_streams_open, resident_memory) =
            (Counter::default(), Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("agent_bad_frames", "Agent WebSocket frames that were not protocol messages", agent_bad_frames.clone());
        registry.register("agents_connected", "Agent WebSocket connections open", agents_connected.clone());
        registry.register("event_streams_open", "Server-sent event streams open", event_streams_open.clone());
        registry.register("resident_memory_bytes", "The server process's resident memory", resident_memory.clone());
        let (outbox_shipped, outbox_backlog) = (Counter::default(), Gauge::default());
        registry.register("analytics_outbox_shipped", "Analytics outbox rows this server shipped to ClickHouse", outbox_shipped.clone());
        registry.register("analytics_outbox_backlog", "Analytics outbox rows waiting to be shipped to ClickHouse", outbox_backlog.clone());
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration = Histograms::<RouteLabels>::new_with_constructor(latency as fn() -> Histogram);
        let llm_calls = Family::<LlmLabels, Counter>::default();
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        let llm_cost = Family::<ProviderLabels, Counter<f64, AtomicU64>>::default();
        let job_changes = Family::<JobLabels, Counter>::default();
        let create_batches = batch_sizes();
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Jobs of every org by state", jobs.clone());
        registry.register("http_requests", "HTTP requests answered, by route, method and status", http_requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request (to its headers), by route and method", http_duration.clone());
        registry.register("llm_calls", "LLM calls made through the proxy, by provider and outcome", llm_calls.clone());
        registry.register("llm_tokens", "LLM tokens, by provider and kind (cached input is part of input)", llm_tokens.clone());
        registry.register("llm_cost_dollars", "What LLM calls cost at the prices of the time, US dollars, by provider", llm_cost.clone());
        registry.register("job_changes", "Job changes committed by this server (created, started, succeeded, failed...)", job_changes.clone());
        registry.register("task_create_batch_size", "Task creations committed together by one group commit", create_batches.clone());
        let token = token.filter(|t| !t.is_empty()).map(crate::auth::tokens::hash_token);
        Self {
            registry,
            token,
            agent_bad_frames,
            agents_connected,
            event_streams_open,
            resident_memory,
            outbox_shipped,
            outbox_backlog,
            http_requests,
            http_duration,
            llm_calls,
            llm_tokens,
            llm_cost,
            job_changes,
            create_batches,
            jobs,
        }
    }

    /// Whether a request with this `Authorization` header may read the page.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(want) = &self.token else { return true };
        let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        // Hashes compared, so the time taken says nothing of the token.
        crate::auth::tokens::hash_token(given) == *want
    }

    /// An LLM call as metered.
    pub fn llm_call(&self, provider: &str, status: &str, usage: &kodel_core::llm::Usage, cost_micros: i64) {
        self.llm_calls.get_or_create(&LlmLabels { provider: provider.into(), status: status.into() }).inc();
        for (kind, n) in [("input", usage.input_tokens), ("output", usage.output_tokens), ("cached", usage.cached_tokens)] {
            self.llm_tokens.get_or_create(&TokenLabels { provider: provider.into(), kind: kind.into() }).inc_by(n);
        }
        self.llm_cost.get_or_create(&ProviderLabels { provider: provider.into() }).inc_by(cost_micros.max(0) as f64 / 1_000_000.0);
    }

    /// The page in the OpenMetrics text format.
    pub fn render(&self, now: Now) -> String {
        self.agents_connected.set(i64::try_from(now.agents_connected).unwrap_or(i64::MAX));
        self.event_streams_open.set(i64::try_from(now.event_streams_open).unwrap_or(i64::MAX));
        self.resident_memory.set(i64::try_from(resident_memory_bytes()).unwrap_or(i64::MAX));
        if let Some(n) = now.outbox_backlog {
            self.outbox_backlog.set(n);
        }
        for (state, n) in now.jobs.unwrap_or_default() {
            self.jobs.get_or_create(&StateLabels { state }).set(n);
        }
        let mut page = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut page, &self.registry);
        page
    }
}

/// The process's resident set, from /proc (0 where there is none).
pub fn resident_memory_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |n| n as u64)
}
