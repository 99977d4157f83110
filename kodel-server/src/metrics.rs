//! What `/metrics` shows Prometheus. Server-wide figures only: no org, user or task
//! names in labels, so the page tells nothing of tenants. Set KODEL_METRICS_TOKEN to
//! require `Authorization: Bearer <it>` on a server the public can reach.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
}

/// Figures read when the page is asked for.
pub struct Now {
    pub agents_connected: usize,
    pub event_streams_open: u64,
    /// Analytics outbox rows not shipped yet (None: not read).
    pub outbox_backlog: Option<i64>,
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
        let token = token.filter(|t| !t.is_empty()).map(crate::auth::tokens::hash_token);
        Self { registry, token, agent_bad_frames, agents_connected, event_streams_open, resident_memory, outbox_shipped, outbox_backlog }
    }

    /// Whether a request with this `Authorization` header may read the page.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(want) = &self.token else { return true };
        let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        // Hashes compared, so the time taken says nothing of the token.
        crate::auth::tokens::hash_token(given) == *want
    }

    /// The page in the OpenMetrics text format.
    pub fn render(&self, now: Now) -> String {
        self.agents_connected.set(i64::try_from(now.agents_connected).unwrap_or(i64::MAX));
        self.event_streams_open.set(i64::try_from(now.event_streams_open).unwrap_or(i64::MAX));
        self.resident_memory.set(i64::try_from(resident_memory_bytes()).unwrap_or(i64::MAX));
        if let Some(n) = now.outbox_backlog {
            self.outbox_backlog.set(n);
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
