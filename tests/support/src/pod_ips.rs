//! Pod IP allocation for the fake kubelet.
//!
//! Pod IPs come from one IPv4 range, `127.0.0.0/8` unless `MICROGATE_POD_CIDR` says otherwise.
//! A non-loopback range (the `10.200.0.0/16` of the private network namespace) is only accepted
//! when `MICROGATE_NETNS=1` says the process runs inside a network namespace of its own: those
//! addresses must never be bound in the host's namespace.
//!
//! The last /24 of a range larger than one /24 is never handed out ([`PodIpPool::reserved`]): in
//! the private network namespace (`10.200.255.0/24`) it is left for addresses that are not
//! Pods', such as the Gateways' own addresses in the Gateway API conformance run.
//!
//! Addresses are handed out in increasing order and never reused within a process, so an address
//! that a test saw die keeps refusing connections. Each process starts in its own /24 (derived
//! from its pid), and the kubelet skips any address whose port is already bound, so two processes
//! sharing the range do not collide.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

/// The environment variable that names the pod IP range, e.g. `127.0.0.0/8`.
pub const POD_CIDR_ENV: &str = "MICROGATE_POD_CIDR";
/// Set to `1` by the network-namespace wrapper; allows a non-loopback range.
pub const NETNS_ENV: &str = "MICROGATE_NETNS";

#[derive(Clone, Debug, thiserror::Error)]
pub enum PodIpError {
    #[error("{POD_CIDR_ENV}={0:?} is not an IPv4 CIDR like 127.0.0.0/8")]
    Malformed(String),
    #[error("{POD_CIDR_ENV}={0} must be a /8 to /24 range")]
    Size(String),
    #[error(
        "{POD_CIDR_ENV}={0} is not loopback; only a private network namespace ({NETNS_ENV}=1) may use it"
    )]
    NotLoopback(String),
    #[error("the pod IP range {0} is exhausted")]
    Exhausted(String),
}

/// A range of pod IPs, handed out one by one.
#[derive(Debug)]
pub struct PodIpPool {
    cidr: String,
    network: u32,
    size: u32,
    next: AtomicU32,
}

impl PodIpPool {
    /// The range from `MICROGATE_POD_CIDR`, checked for safety, starting at this process's block.
    pub fn from_env() -> Result<Self, PodIpError> {
        let cidr = std::env::var(POD_CIDR_ENV).unwrap_or_else(|_| "127.0.0.0/8".to_owned());
        let in_netns = std::env::var(NETNS_ENV).is_ok_and(|v| v == "1");
        Self::new(&cidr, in_netns, std::process::id())
    }

    pub fn new(cidr: &str, in_private_netns: bool, seed: u32) -> Result<Self, PodIpError> {
        let malformed = || PodIpError::Malformed(cidr.to_owned());
        let (addr, prefix) = cidr.split_once('/').ok_or_else(malformed)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
        let prefix: u32 = prefix.parse().map_err(|_| malformed())?;
        if !(8..=24).contains(&prefix) {
            return Err(PodIpError::Size(cidr.to_owned()));
        }
        if !addr.is_loopback() && !in_private_netns {
            return Err(PodIpError::NotLoopback(cidr.to_owned()));
        }
        let size = 1u32 << (32 - prefix);
        let network = u32::from(addr) & !(size - 1);
        // Block 0 holds the well-known addresses (127.0.0.1, the namespace's 10.200.0.1) and the
        // last block is reserved; each process starts in another /24 so concurrent kubelets
        // rarely meet.
        let blocks = size / 256;
        let start = if blocks > 2 {
            (1 + seed % (blocks - 2)) * 256
        } else {
            0
        };
        Ok(Self {
            cidr: cidr.to_owned(),
            network,
            size,
            next: AtomicU32::new(start),
        })
    }

    /// The next unused address; skips network, broadcast-like (.0, .255) and `.1` addresses.
    pub fn allocate(&self) -> Result<Ipv4Addr, PodIpError> {
        loop {
            let offset = self.next.fetch_add(1, Ordering::Relaxed);
            if offset >= self.pod_size() {
                return Err(PodIpError::Exhausted(self.cidr.clone()));
            }
            if matches!(offset % 256, 0 | 1 | 255) {
                continue;
            }
            return Ok(Ipv4Addr::from(self.network + offset));
        }
    }

    /// Whether `ip` is a Pod address of this range (a pod's IP from an earlier run may be reused).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.network) < self.pod_size()
    }

    /// The /24 at the end of the range that is never given to a Pod (none in a single /24).
    pub fn reserved(&self) -> Option<(Ipv4Addr, u8)> {
        (self.size > 256).then(|| (Ipv4Addr::from(self.network + self.size - 256), 24))
    }

    /// How many addresses from the start of the range may go to Pods.
    fn pod_size(&self) -> u32 {
        if self.size > 256 {
            self.size - 256
        } else {
            self.size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_range_allocates_distinct_addresses_in_this_process_block() {
        let pool = PodIpPool::new("127.0.0.0/8", false, 41).expect("valid range");
        let first = pool.allocate().expect("address");
        let second = pool.allocate().expect("address");
        assert_eq!(first, Ipv4Addr::new(127, 0, 42, 2));
        assert_eq!(second, Ipv4Addr::new(127, 0, 42, 3));
        assert!(pool.contains(first));
        assert!(!pool.contains(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn allocation_skips_zero_one_and_broadcast_octets() {
        let pool = PodIpPool::new("127.0.0.0/24", false, 0).expect("valid range");
        let all: Vec<_> = std::iter::from_fn(|| pool.allocate().ok()).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all.first(), Some(&Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(127, 0, 0, 254)));
        assert!(matches!(pool.allocate(), Err(PodIpError::Exhausted(_))));
    }

    #[test]
    fn the_last_block_of_a_range_is_never_handed_out() {
        let pool = PodIpPool::new("10.200.0.0/16", true, 253).expect("valid range");
        assert_eq!(pool.reserved(), Some((Ipv4Addr::new(10, 200, 255, 0), 24)));
        // Seed 253 starts in the last block a Pod may use; the reserved one follows it.
        assert_eq!(pool.allocate().expect("address"), Ipv4Addr::new(10, 200, 254, 2));
        let rest: Vec<_> = std::iter::from_fn(|| pool.allocate().ok()).collect();
        assert_eq!(rest.last(), Some(&Ipv4Addr::new(10, 200, 254, 254)));
        assert!(!pool.contains(Ipv4Addr::new(10, 200, 255, 7)));
        let small = PodIpPool::new("127.0.0.0/24", false, 0).expect("valid range");
        assert_eq!(small.reserved(), None);
    }

    #[test]
    fn private_range_is_refused_outside_a_network_namespace() {
        assert!(matches!(
            PodIpPool::new("10.200.0.0/16", false, 0),
            Err(PodIpError::NotLoopback(_))
        ));
        let pool = PodIpPool::new("10.200.0.0/16", true, 0).expect("allowed in a netns");
        assert_eq!(pool.allocate().expect("address"), Ipv4Addr::new(10, 200, 1, 2));
    }

    #[test]
    fn malformed_and_oversized_ranges_are_rejected() {
        assert!(matches!(
            PodIpPool::new("127.0.0.0", false, 0),
            Err(PodIpError::Malformed(_))
        ));
        assert!(matches!(
            PodIpPool::new("127.0.0.0/x", false, 0),
            Err(PodIpError::Malformed(_))
        ));
        assert!(matches!(
            PodIpPool::new("127.0.0.0/4", false, 0),
            Err(PodIpError::Size(_))
        ));
        assert!(matches!(
            PodIpPool::new("127.0.0.0/30", false, 0),
            Err(PodIpError::Size(_))
        ));
    }
}
