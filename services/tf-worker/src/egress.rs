//! Which addresses outbound calls may reach. A host that is not operator-approved is resolved
//! once, by [`PublicOnly`], and the connection goes to exactly the addresses that resolution
//! checked: checking one resolution and letting the HTTP client make another would let a DNS
//! server answer "public" to the check and "internal" to the connection (DNS rebinding).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Resolves a host name to addresses; the system resolver in production, a scripted one in
/// tests (a rebinding DNS server cannot be run on this machine without root networking).
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// Refused addresses, with the range that refuses them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} resolves to the internal address {ip} ({range})")]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub range: &'static str,
}

/// Resolves `host` and refuses it when any address is internal.
pub async fn resolve_public(lookup: &dyn Lookup, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let addrs = lookup.lookup(host.to_string()).await.map_err(|e| ResolveError::Lookup(host.to_string(), e.to_string()))?;
    if addrs.is_empty() {
        return Err(ResolveError::Lookup(host.to_string(), "no addresses".into()));
    }
    for ip in &addrs {
        if let Some(range) = internal_range(ip) {
            return Err(ResolveError::Refused(Refused { host: host.to_string(), ip: *ip, range }));
        }
    }
    Ok(addrs)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {0}: {1}")]
    Lookup(String, String),
    #[error(transparent)]
    Refused(Refused),
}

/// reqwest's resolver for calls to hosts that are not operator-approved: it connects only to
/// addresses [`resolve_public`] passed.
pub struct PublicOnly(pub Arc<dyn Lookup>);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.0.clone();
        Box::pin(async move {
            let addrs = resolve_public(lookup.as_ref(), name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The range an internal address is in: loopback, private, link-local (cloud metadata), shared,
/// reserved and documentation ranges, and the IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4, Teredo), judged by the address they carry or refused whole.
pub fn internal_range(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(*v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4).map(|_| "IPv4-mapped internal address");
            }
            let checks: [(bool, &'static str); 10] = [
                (v6.is_loopback(), "loopback"),
                (v6.is_unspecified(), "unspecified"),
                (v6.is_multicast(), "multicast"),
                ((s[0] & 0xfe00) == 0xfc00, "unique local fc00::/7"),
                ((s[0] & 0xffc0) == 0xfe80, "link-local fe80::/10"),
                ((s[0] & 0xffc0) == 0xfec0, "site-local fec0::/10"),
                // ::a.b.c.d (deprecated IPv4-compatible) and the rest of ::/96.
                (s[..6] == [0; 6], "IPv4-compatible ::/96"),
                (s[0] == 0x64 && s[1] == 0xff9b, "NAT64 64:ff9b::/96, 64:ff9b:1::/48"),
                (s[0] == 0x2002, "6to4 2002::/16"),
                (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8), "Teredo 2001::/32 or documentation 2001:db8::/32"),
            ];
            checks.iter().find(|(hit, _)| *hit).map(|(_, range)| *range)
        }
    }
}

fn internal_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    let checks: [(bool, &'static str); 13] = [
        (v4.is_loopback(), "loopback 127.0.0.0/8"),
        (v4.is_private(), "private 10/8, 172.16/12, 192.168/16"),
        (v4.is_link_local(), "link-local 169.254.0.0/16"),
        (o[0] == 0, "this network 0.0.0.0/8"),
        (v4.is_broadcast(), "broadcast"),
        (v4.is_multicast(), "multicast 224.0.0.0/4"),
        (o[0] == 100 && (64..128).contains(&o[1]), "shared 100.64.0.0/10"),
        (o[0] == 192 && o[1] == 0 && o[2] == 0, "IETF protocol assignments 192.0.0.0/24"),
        (o[0] == 192 && o[1] == 0 && o[2] == 2, "documentation 192.0.2.0/24"),
        (o[0] == 198 && (o[1] & 0xfe) == 18, "benchmarking 198.18.0.0/15"),
        (o[0] == 198 && o[1] == 51 && o[2] == 100, "documentation 198.51.100.0/24"),
        (o[0] == 203 && o[1] == 0 && o[2] == 113, "documentation 203.0.113.0/24"),
        (o[0] >= 240, "reserved 240.0.0.0/4"),
    ];
    checks.iter().find(|(hit, _)| *hit).map(|(_, range)| *range)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(internal_range(&ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "198.20.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "2a00:1450::1"] {
            assert_eq!(internal_range(&ip.parse().unwrap()), None, "{ip}");
        }
    }
}
