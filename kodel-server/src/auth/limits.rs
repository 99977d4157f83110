//! Limits on password work, the one thing an anonymous client can make expensive:
//! each argon2 hash takes ~19 MiB and tens of milliseconds of a core.
//!
//! - Hashes run on a few threads of their own (one per core, at most four), each
//!   reusing its own memory; up to `HASH_QUEUE` wait their turn, for at most
//!   `HASH_WAIT`, and more get 503 at once. Memory stays bounded however many logins
//!   arrive together (on tokio's blocking pool every new thread kept its own 19 MiB).
//! - Per client address: at most `per_address` logins and registrations a minute.
//! - Per account and address (the email asked for, known or not, so the answer tells
//!   nothing): after `per_account` failed logins to it from one address in 15 minutes,
//!   that address's logins to it are refused until the window ends; a good password
//!   clears the count. Counted per address too, so nobody can lock an account's owner
//!   out from elsewhere; guessing from many addresses meets each address's own limit.
//!
//! - Per user: at most `LOOKUPS_PER_HOUR` emails named that have no account (adding an
//!   org member by email must say when nobody has registered it, which would
//!   otherwise let anyone with an org test emails by the thousand).
//!
//! Counts live in this server's memory (bounded: old windows are dropped first), so
//! behind several replicas each replica counts on its own. Behind a load balancer, name
//! it in `KODEL_TRUSTED_PROXIES`: the client is then the last address of
//! `X-Forwarded-For` that is not a trusted proxy (a client cannot forge its way out of
//! its own limit, since it can only add addresses before the proxy's).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};


use crate::error::{ApiError, ApiResult};

const ADDRESS_WINDOW: Duration = Duration::from_secs(60);
const ACCOUNT_WINDOW: Duration = Duration::from_secs(15 * 60);
const HASH_WAIT: Duration = Duration::from_secs(10);
const HASH_QUEUE: usize = 64;
const LOOKUP_WINDOW: Duration = Duration::from_secs(3600);
pub const LOOKUPS_PER_HOUR: u32 = 20;
/// Windows kept at most, per kind.
const MAX_KEYS: usize = 100_000;

type HashJob = Box<dyn FnOnce() + Send>;

pub struct LoginLimits {
    hashing: std::sync::mpsc::SyncSender<HashJob>,
    trusted_proxies: Vec<Cidr>,
    per_address: u32,
    per_account: u32,
    addresses: Mutex<Windows>,
    accounts: Mutex<Windows>,
    lookups: Mutex<Windows>,
}

#[derive(Default)]
struct Windows(HashMap<String, (u32, Instant)>);

impl Windows {
    /// Counts one more for `key` in a window of `len`; Err(seconds to wait) past `max`.
    fn hit(&mut self, key: &str, len: Duration, max: u32) -> Result<(), u64> {
        let now = Instant::now();
        if self.0.len() >= MAX_KEYS && !self.0.contains_key(key) {
            self.0.retain(|_, (_, start)| now.duration_since(*start) < len);
            if self.0.len() >= MAX_KEYS {
                // Still full of live windows: forget the oldest half.
                let mut starts: Vec<Instant> = self.0.values().map(|(_, s)| *s).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                self.0.retain(|_, (_, start)| *start > cut);
            }
        }
        let entry = self.0.entry(key.to_owned()).or_insert((0, now));
        if now.duration_since(entry.1) >= len {
            *entry = (0, now);
        }
        if entry.0 >= max {
            return Err(len.saturating_sub(now.duration_since(entry.1)).as_secs().max(1));
        }
        entry.0 += 1;
        Ok(())
    }

    fn full(&self, key: &str, len: Duration, max: u32) -> Option<u64> {
        let (count, start) = self.0.get(key)?;
        let age = start.elapsed();
        (age < len && *count >= max).then(|| len.saturating_sub(age).as_secs().max(1))
    }

    fn clear(&mut self, key: &str) {
        self.0.remove(key);
    }
}

/// Who a request comes from, as the limits count it (see `LoginLimits::client`).
pub struct ClientAddr(pub Option<IpAddr>);

impl axum::extract::FromRequestParts<crate::AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &crate::AppState) -> Result<Self, Self::Rejection> {
        // Set by `serve::serve` on every request it serves.
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(ClientAddr(state.logins.client(peer, &parts.headers)))
    }
}

/// An address range: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpAddr, u8);

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = match s.trim().split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        // An IPv4-mapped range (::ffff:10.0.0.0/104) is the IPv4 range, as peers are.
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && bits >= 96 => Ok(Cidr(ip.to_canonical(), bits - 96)),
            _ => Ok(Cidr(ip, bits)),
        }
    }

    /// Comma-separated ranges (empty: none).
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Cidr::parse).collect()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.0, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.1)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.1)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `X-Forwarded-For` hop's address: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip())).or_else(|| hop.trim_start_matches('[').trim_end_matches(']').parse().ok())
}

/// A client address as counted: IPv6 by its /64 (one host usually holds a whole one).
fn address_key(client: Option<IpAddr>) -> String {
    match client {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(ip) => ip.to_canonical().to_string(),
        None => "unknown".to_owned(),
    }
}

impl LoginLimits {
    pub fn new(per_address: u32, per_account: u32, trusted_proxies: Vec<Cidr>) -> Self {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(HASH_QUEUE);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("kodel-passwords-{i}")).spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { hashing: tx, trusted_proxies, per_address, per_account, addresses: Mutex::default(), accounts: Mutex::default(), lookups: Mutex::default() }
    }

    /// Who a request comes from: its peer, or behind trusted proxies the last address
    /// of `X-Forwarded-For` that is not one of them.
    pub fn client(&self, peer: Option<SocketAddr>, headers: &axum::http::HeaderMap) -> Option<IpAddr> {
        let mut client = peer?.ip().to_canonical();
        if !self.trusted_proxies.iter().any(|c| c.contains(client)) {
            return Some(client);
        }
        let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            let Some(ip) = hop_address(hop) else { break };
            client = ip.to_canonical();
            if !self.trusted_proxies.iter().any(|c| c.contains(client)) {
                break;
            }
        }
        Some(client)
    }

    /// One login or registration from `client`; for a login, `account` is the email.
    pub fn attempt(&self, client: Option<IpAddr>, account: Option<&str>) -> ApiResult<()> {
        let addr = address_key(client);
        if let Some(wait) = account.and_then(|a| lock(&self.accounts).full(&format!("{a} {addr}"), ACCOUNT_WINDOW, self.per_account)) {
            tracing::warn!(client = %addr, "login refused: too many failed logins for this account");
            return Err(ApiError::too_many(format!("too many failed logins for this account; try again in {wait} s"), wait));
        }
        lock(&self.addresses).hit(&addr, ADDRESS_WINDOW, self.per_address).map_err(|wait| {
            tracing::warn!(client = %addr, "login refused: too many attempts from this address");
            ApiError::too_many(format!("too many login attempts from your address; try again in {wait} s"), wait)
        })
    }

    /// A failed login to `account` counts towards its limit.
    pub fn failed(&self, client: Option<IpAddr>, account: &str) {
        let addr = address_key(client);
        let _ = lock(&self.accounts).hit(&format!("{account} {addr}"), ACCOUNT_WINDOW, u32::MAX);
        tracing::warn!(client = %addr, account, "login failed: wrong email or password");
    }

    /// `user` named an email that has no account: Err once they have done so
    /// `LOOKUPS_PER_HOUR` times this hour.
    pub fn unknown_email(&self, user: uuid::Uuid) -> ApiResult<()> {
        lock(&self.lookups).hit(&user.to_string(), LOOKUP_WINDOW, LOOKUPS_PER_HOUR).map_err(|wait| {
            tracing::warn!(%user, "refused: too many emails without an account looked up");
            ApiError::too_many(format!("you named {LOOKUPS_PER_HOUR} emails without an account this hour; try again in {wait} s"), wait)
        })
    }

    /// A good password clears the failures to the account from that address.
    pub fn succeeded(&self, client: Option<IpAddr>, account: &str) {
        lock(&self.accounts).clear(&format!("{account} {}", address_key(client)));
    }

    /// Hashes a new password on the password threads.
    pub async fn hash(&self, password: String) -> ApiResult<String> {
        self.on_password_thread(move || super::password::hash(&password)).await?
    }

    /// Checks a password against a stored hash (none: same work, false).
    pub async fn verify(&self, password: String, hash: Option<String>) -> ApiResult<bool> {
        self.on_password_thread(move || super::password::verify(&password, hash.as_deref())).await?
    }

    async fn on_password_thread<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let busy = || ApiError::new(kodel_core::ErrorCode::Unavailable, "the server is busy checking passwords; try again");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            // Nobody waits any more: skip the work.
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        self.hashing.try_send(job).map_err(|_| busy())?;
        match tokio::time::timeout(HASH_WAIT, rx).await {
            Ok(Ok(done)) => Ok(done),
            _ => Err(busy()),
        }
    }
}

fn lock(m: &Mutex<Windows>) -> std::sync::MutexGuard<'_, Windows> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_refuse_and_bound_their_size() {
        let mut w = Windows::default();
        for _ in 0..3 {
            assert!(w.hit("a", Duration::from_secs(60), 3).is_ok());
        }
        let wait = w.hit("a", Duration::from_secs(60), 3).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(w.hit("b", Duration::from_secs(60), 3).is_ok(), "other keys are counted apart");
        w.clear("a");
        assert!(w.hit("a", Duration::from_secs(60), 3).is_ok());
        for i in 0..MAX_KEYS + 10 {
            let _ = w.hit(&i.to_string(), Duration::from_secs(60), 3);
        }
        assert!(w.0.len() <= MAX_KEYS, "{}", w.0.len());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_key(Some(a)), address_key(Some(b)));
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(Some(v4)), "10.0.0.1");
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_last_untrusted_hop() {
        let limits = LoginLimits::new(1, 1, Cidr::parse_list("10.0.0.0/8, ::1").unwrap());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7:51234, 10.1.2.3".parse().unwrap());
        let via_proxy: SocketAddr = "10.9.9.9:443".parse().unwrap();
        // 6.6.6.6 was written by the client itself; the proxy saw 203.0.113.7.
        assert_eq!(limits.client(Some(via_proxy), &headers), Some("203.0.113.7".parse().unwrap()));
        let direct: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(limits.client(Some(direct), &headers), Some("198.51.100.1".parse().unwrap()), "only trusted peers are believed");
        assert!(Cidr::parse("10.0.0.0/33").is_err() && Cidr::parse("nonsense").is_err());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::ffff:10.0.0.0/104").unwrap().contains("10.2.3.4".parse().unwrap()), "mapped ranges match plain peers");
        assert_eq!(hop_address("[2001:db8::1]:443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(hop_address("unknown"), None);
    }
}
