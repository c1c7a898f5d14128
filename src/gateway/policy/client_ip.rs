//! Who the client is: the TCP peer, or, behind proxies a listener trusts, the address their
//! `X-Forwarded-For` names. `sourceIp` hashing and the access log use this address; what
//! reaches the endpoint in `X-Forwarded-For` follows from whether the peer is trusted.
//!
//! A listener without the setting costs nothing per request: the peer is the client and the
//! header is not looked at.

use std::{net::IpAddr, num::NonZeroU32, str::FromStr};

use http::HeaderMap;
use ipnet::IpNet;

use crate::api::gateway::XForwardedFor;
use crate::gateway::http::forwarding::X_FORWARDED_FOR;

/// The proxies a listener believes, parsed once per route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedProxies {
    /// Proxies by address: the peer must be one of them for `X-Forwarded-For` to be read.
    Cidrs(Vec<IpNet>),
    /// This many proxies stand in front of the gateway, the peer the last of them.
    Hops(NonZeroU32),
}

/// Why a listener's `xForwardedFor` cannot be served (the CRD's rules refuse these too).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustedProxiesError {
    #[error("trustedCIDRs entry {0:?} is not a CIDR such as 10.0.0.0/8")]
    NotACidr(String),
    #[error("xForwardedFor needs exactly one of numTrustedHops and trustedCIDRs")]
    NeitherOrBoth,
    #[error("numTrustedHops {0} is not a positive number")]
    BadHops(i32),
}

/// Who sent one request, as the listener's setting tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp {
    /// The client's address: `sourceIp` hashes it, the access log shows it.
    pub ip: IpAddr,
    /// Whether the peer is a trusted proxy: only then does the client's `X-Forwarded-For` go on
    /// to the endpoint (with the peer added); otherwise the endpoint gets the peer alone.
    pub peer_trusted: bool,
}

impl TrustedProxies {
    pub fn parse(spec: &XForwardedFor) -> Result<Self, TrustedProxiesError> {
        match (spec.num_trusted_hops, spec.trusted_cidrs.is_empty()) {
            (Some(hops), true) => u32::try_from(hops)
                .ok()
                .and_then(NonZeroU32::new)
                .map(Self::Hops)
                .ok_or(TrustedProxiesError::BadHops(hops)),
            (None, false) => spec
                .trusted_cidrs
                .iter()
                .map(|text| {
                    IpNet::from_str(text.trim())
                        // Host bits are ignored: 10.1.2.3/8 is 10.0.0.0/8.
                        .map(|net| net.trunc())
                        .map_err(|_| TrustedProxiesError::NotACidr(text.clone()))
                })
                .collect::<Result<_, _>>()
                .map(Self::Cidrs),
            _ => Err(TrustedProxiesError::NeitherOrBoth),
        }
    }

    fn trusts(cidrs: &[IpNet], ip: IpAddr) -> bool {
        cidrs.iter().any(|net| net.contains(&ip))
    }
}

/// The client of a request from `peer` with `headers`, on a listener that trusts `proxies`.
pub fn resolve(proxies: Option<&TrustedProxies>, peer: IpAddr, headers: &HeaderMap) -> ClientIp {
    // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    let untrusted = ClientIp {
        ip: peer,
        peer_trusted: false,
    };
    let trusted = |ip| ClientIp {
        ip,
        peer_trusted: true,
    };
    match proxies {
        None => untrusted,
        Some(TrustedProxies::Cidrs(cidrs)) => {
            if !TrustedProxies::trusts(cidrs, peer) {
                return untrusted;
            }
            // From the peer leftwards, every hop trusted so far: the first one that is not is
            // the client. An entry that is no address ends the walk at the hop that passed it on.
            let mut nearest = peer;
            for entry in entries_from_the_right(headers) {
                let Some(ip) = parse_entry(entry) else {
                    return trusted(nearest);
                };
                if !TrustedProxies::trusts(cidrs, ip) {
                    return trusted(ip);
                }
                nearest = ip;
            }
            trusted(nearest)
        }
        Some(TrustedProxies::Hops(hops)) => {
            let nth = entries_from_the_right(headers)
                .nth(hops.get() as usize - 1)
                .and_then(parse_entry);
            trusted(nth.unwrap_or(peer))
        }
    }
}

/// The entries of every `X-Forwarded-For` line, as one list read from its right end.
fn entries_from_the_right(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// An entry's address: a bare IP, or one with a port (`1.2.3.4:80`, `[2001:db8::1]:80`), as
/// some proxies write them.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let ip = IpAddr::from_str(text)
        .ok()
        .or_else(|| std::net::SocketAddr::from_str(text).ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&XForwardedFor {
            num_trusted_hops: None,
            trusted_cidrs: list.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid CIDRs")
    }

    fn hops(n: i32) -> TrustedProxies {
        TrustedProxies::parse(&XForwardedFor {
            num_trusted_hops: Some(n),
            trusted_cidrs: Vec::new(),
        })
        .expect("a valid hop count")
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&X_FORWARDED_FOR, line.parse().expect("a header value"));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP")
    }

    fn client(proxies: Option<&TrustedProxies>, peer: &str, lines: &[&str]) -> (String, bool) {
        let found = resolve(proxies, ip(peer), &headers(lines));
        (found.ip.to_string(), found.peer_trusted)
    }

    #[test]
    fn without_the_setting_the_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(
            client(None, "198.51.100.7", &["203.0.113.1"]),
            ("198.51.100.7".into(), false)
        );
    }

    #[test]
    fn trusted_cidrs_walk_from_the_peer_to_the_first_untrusted_address() {
        let proxies = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        let p = Some(&proxies);
        // An untrusted peer's header is not read at all.
        assert_eq!(
            client(p, "198.51.100.7", &["203.0.113.1"]),
            ("198.51.100.7".into(), false)
        );
        // A forged left part cannot win: the right-most untrusted address is the client.
        assert_eq!(
            client(p, "10.0.0.2", &["1.1.1.1, 203.0.113.9, 10.0.0.3"]),
            ("203.0.113.9".into(), true)
        );
        // Several header lines are one list; spaces and ports are tolerated.
        assert_eq!(
            client(p, "10.0.0.2", &["1.1.1.1", " 203.0.113.9:4711 ,10.0.0.3"]),
            ("203.0.113.9".into(), true)
        );
        assert_eq!(
            client(p, "2001:db8::1", &["[2001:db9::5]:80, 2001:db8::2"]),
            ("2001:db9::5".into(), true)
        );
        // All trusted: the left-most; none at all: the peer.
        assert_eq!(
            client(p, "10.0.0.2", &["10.9.9.9, 10.0.0.3"]),
            ("10.9.9.9".into(), true)
        );
        assert_eq!(client(p, "10.0.0.2", &[]), ("10.0.0.2".into(), true));
        // Garbage stops the walk at the trusted hop that passed it on.
        assert_eq!(
            client(p, "10.0.0.2", &["203.0.113.9, bogus, 10.0.0.3"]),
            ("10.0.0.3".into(), true)
        );
        assert_eq!(
            client(p, "10.0.0.2", &["203.0.113.9,"]),
            ("10.0.0.2".into(), true)
        );
        // An IPv4 peer of a dual-stack socket is matched as IPv4.
        assert_eq!(
            client(p, "::ffff:10.0.0.2", &["203.0.113.9"]),
            ("203.0.113.9".into(), true)
        );
    }

    #[test]
    fn a_hop_count_takes_the_nth_address_from_the_right() {
        let two = hops(2);
        let p = Some(&two);
        assert_eq!(
            client(p, "198.51.100.7", &["1.1.1.1, 203.0.113.9, 10.0.0.3"]),
            ("203.0.113.9".into(), true)
        );
        assert_eq!(
            client(p, "198.51.100.7", &["1.1.1.1, 203.0.113.9", "10.0.0.3"]),
            ("203.0.113.9".into(), true)
        );
        // Fewer entries than hops, or garbage there: the peer.
        assert_eq!(
            client(p, "198.51.100.7", &["10.0.0.3"]),
            ("198.51.100.7".into(), true)
        );
        assert_eq!(
            client(p, "198.51.100.7", &["x, 10.0.0.3"]),
            ("198.51.100.7".into(), true)
        );
        let one = hops(1);
        assert_eq!(
            client(Some(&one), "198.51.100.7", &["1.1.1.1, 203.0.113.9"]),
            ("203.0.113.9".into(), true)
        );
    }

    #[test]
    fn settings_are_parsed_once_and_bad_ones_refused() {
        assert_eq!(
            cidrs(&["10.1.2.3/8"]),
            TrustedProxies::Cidrs(vec!["10.0.0.0/8".parse().expect("net")])
        );
        let bad = |hops: Option<i32>, cidrs: &[&str]| {
            TrustedProxies::parse(&XForwardedFor {
                num_trusted_hops: hops,
                trusted_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(
            bad(None, &["10.0.0.1"]),
            Err(TrustedProxiesError::NotACidr("10.0.0.1".into()))
        );
        assert_eq!(
            bad(Some(1), &["10.0.0.0/8"]),
            Err(TrustedProxiesError::NeitherOrBoth)
        );
        assert_eq!(bad(None, &[]), Err(TrustedProxiesError::NeitherOrBoth));
        assert_eq!(bad(Some(0), &[]), Err(TrustedProxiesError::BadHops(0)));
    }
}
