//! Outbound URLs that orgs choose (their LLM provider's base URL, rule webhooks) must
//! not reach the server's own network: loopback, private, link-local (cloud metadata)
//! and other non-public addresses are refused unless `KODEL_ALLOW_PRIVATE_URLS` is set
//! (a single-user install talking to a local Ollama, the tests).
//!
//! Checked when the URL is saved, by resolving its host. Known gap: a name that later
//! resolves elsewhere (DNS rebinding) is not checked again at send time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ok if the URL's host resolves only to public addresses.
pub async fn check_public(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("{url:?} is not a URL"))?;
    let host = parsed.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if let Some(ip) = addrs.iter().find(|ip| !is_public(**ip)) {
        return Err(format!(
            "{host} resolves to {ip}, a private or local address; the server refuses those (KODEL_ALLOW_PRIVATE_URLS=true allows them)"
        ));
    }
    Ok(())
}

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_and_local_addresses_are_refused() {
        for url in [
            "http://127.0.0.1:11434/v1",
            "http://localhost/v1",
            "http://10.1.2.3/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
        ] {
            assert!(check_public(url, false).await.is_err(), "{url} should be refused");
            assert!(check_public(url, true).await.is_ok(), "{url} is allowed when private URLs are");
        }
        assert!(check_public("https://93.184.215.14/v1", false).await.is_ok());
        assert!(check_public("https://[2606:4700::1111]/", false).await.is_ok());
    }
}
