//! Who is asking: the client's network address, which keys the limits that a dropped cookie
//! must not reset.
//!
//! By default the client is the TCP peer. Behind a reverse proxy every peer is the proxy, so
//! a deployment may name a header the proxy sets (`X-Forwarded-For`, `X-Real-IP`) and the
//! proxies it trusts; the header is read only on connections from those proxies (anyone else
//! could write it), and in a list the rightmost address that is not a trusted proxy is the
//! client, because the proxies append and a client can only prepend. An IPv6 client is its
//! /64: one host is usually given a whole /64 and can pick any address in it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName};
use axum::middleware::Next;
use axum::response::Response;

/// A client as the limits key it: an IPv4 address, an IPv6 /64, or `unknown` (no peer address,
/// only in tests that drive the router without a socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub String);

impl ClientAddress {
    /// The key of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(v4.to_string()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(v4.to_string()),
                None => {
                    let s = v6.segments();
                    Self(format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
                }
            },
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A network, `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    /// `10.0.0.0/8`, `::1/128`, or a bare address (a network of one).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an IP address or network (like 10.0.0.0/8 or ::1)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl Network {
    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net) as u128, 32, self.prefix)
                    == masked(u32::from(ip) as u128, 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (width - prefix as u32)
    }
}

/// Where the client's address comes from.
#[derive(Debug, Clone, Default)]
pub struct ClientPolicy {
    /// The header a trusted proxy puts the client's address in; `None`: the TCP peer is the
    /// client.
    pub header: Option<HeaderName>,
    /// The proxies whose header is believed.
    pub trusted: Vec<Network>,
}

impl ClientPolicy {
    /// The client of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientAddress {
        let Some(peer) = peer else { return ClientAddress("unknown".into()) };
        let trusted = |ip: IpAddr| self.trusted.iter().any(|n| n.contains(ip));
        if let Some(name) = &self.header {
            if trusted(peer) {
                // Every value of the header, in order, as one list.
                let listed: Vec<IpAddr> = headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .filter_map(|a| parse_forwarded(a.trim()))
                    .collect();
                if let Some(client) =
                    listed.iter().rev().find(|ip| !trusted(**ip)).or(listed.first())
                {
                    return ClientAddress::of(*client);
                }
            }
        }
        ClientAddress::of(peer)
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:5678` or `::1`.
fn parse_forwarded(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).and_then(|t| t.parse().ok())
}

/// Middleware: puts the request's [`ClientAddress`] in its extensions.
pub async fn identify(
    axum::extract::State(app): axum::extract::State<crate::state::AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = app.config.clients.resolve(peer, request.headers());
    request.extensions_mut().insert(client);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn policy() -> ClientPolicy {
        ClientPolicy {
            header: Some(HeaderName::from_static("x-forwarded-for")),
            trusted: vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let h = headers("203.0.113.9");
        assert_eq!(
            policy().resolve(Some("127.0.0.1".parse().unwrap()), &h).as_str(),
            "203.0.113.9"
        );
        assert_eq!(
            policy().resolve(Some("198.51.100.1".parse().unwrap()), &h).as_str(),
            "198.51.100.1",
            "a stranger's header is ignored"
        );
        assert_eq!(
            ClientPolicy::default().resolve(Some("127.0.0.1".parse().unwrap()), &h).as_str(),
            "127.0.0.1",
            "no header configured: the peer"
        );
    }

    #[test]
    fn a_client_cannot_hide_behind_an_address_it_prepends() {
        // The client sent "X-Forwarded-For: 1.1.1.1"; the proxies appended the real address and
        // their own.
        let h = headers("1.1.1.1, 203.0.113.9, 10.1.2.3");
        assert_eq!(policy().resolve(Some("10.0.0.5".parse().unwrap()), &h).as_str(), "203.0.113.9");
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = ClientAddress::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientAddress::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "2001:db8:1:2::/64");
        assert_eq!(ClientAddress::of("::ffff:192.0.2.1".parse().unwrap()).as_str(), "192.0.2.1");
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "10.0.0.0/8".parse().unwrap();
        assert!(
            n.contains("10.200.0.1".parse().unwrap()) && !n.contains("11.0.0.1".parse().unwrap())
        );
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("::1".parse::<Network>().unwrap().contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().unwrap_err().contains("0 to 32"));
        assert!("proxy".parse::<Network>().is_err());
        assert_eq!(parse_forwarded("[2001:db8::1]:443"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_forwarded("192.0.2.1:8080"), Some("192.0.2.1".parse().unwrap()));
    }
}
