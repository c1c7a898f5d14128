//! A rate limit as an AccessPolicy declares it: what a request's bucket is keyed by, and where
//! the buckets live (this process, or Redis for a limit every replica shares).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{
    Decision, GlobalRateLimit, Limit, LocalRateLimit, RATELIMIT, RATELIMIT_POLICY, advertised_quota,
    ceil_seconds, sf_string,
};

/// Distinct keys a local limit remembers at most: its memory stays bounded (about 10 MiB at
/// worst) however many distinct clients arrive; see [`LocalRateLimit`] for whom it forgets.
pub const LOCAL_MAX_KEYS: usize = 100_000;

/// Keys longer than this are hashed before they name a bucket in Redis.
const MAX_RAW_KEY: usize = 64;

/// What a request's bucket is keyed by.
#[derive(Debug)]
pub enum LimitKey {
    ClientIp,
    Header(http::HeaderName),
    /// A claim of the caller's token; a caller without it is keyed by its client IP.
    Claim(String),
}

#[derive(Debug)]
pub enum Buckets {
    Local(LocalRateLimit),
    Global(GlobalRateLimit),
}

/// One of a policy's rate limits.
#[derive(Debug)]
pub struct KeyedLimit {
    /// Names the limit in `RateLimit-Policy`.
    pub name: String,
    pub limit: Limit,
    pub key: LimitKey,
    pub buckets: Buckets,
    /// `RateLimit-Policy`'s value, the same for every answer: made once.
    policy_header: Option<HeaderValue>,
    /// The name as a structured-field string, the start of every `RateLimit` value.
    quoted_name: String,
}

/// What a request is, as limits key it.
pub struct Keys<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    /// The value of a claim of the caller's token, if it has a token and the claim.
    pub claim: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

impl KeyedLimit {
    pub fn new(name: String, limit: Limit, key: LimitKey, buckets: Buckets) -> Self {
        let quoted_name = sf_string(&name);
        let (quota, window) = advertised_quota(&limit);
        let policy_header = HeaderValue::try_from(format!("{quoted_name};q={quota};w={window}")).ok();
        Self {
            name,
            limit,
            key,
            buckets,
            policy_header,
            quoted_name,
        }
    }

    /// The answer's headers for `decision`: what [`Decision::headers`] gives, without formatting
    /// the parts that never change on every request.
    pub fn headers(&self, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(3);
        if let Some(policy) = &self.policy_header {
            headers.push((RATELIMIT_POLICY, policy.clone()));
        }
        let mut state = String::with_capacity(self.quoted_name.len() + 24);
        state.push_str(&self.quoted_name);
        state.push_str(";r=");
        push_decimal(&mut state, u64::from(decision.remaining));
        state.push_str(";t=");
        push_decimal(&mut state, ceil_seconds(decision.reset));
        if let Ok(value) = HeaderValue::try_from(state) {
            headers.push((RATELIMIT, value));
        }
        if let Some(wait) = decision.retry_after.filter(|_| !decision.allowed) {
            headers.push((http::header::RETRY_AFTER, HeaderValue::from(ceil_seconds(wait))));
        }
        headers
    }

    pub async fn check(&self, keys: &Keys<'_>) -> Decision {
        // A prefix per kind of key, so that a header's value cannot pose as an address.
        let key: Vec<u8> = match &self.key {
            LimitKey::ClientIp => ip_key(keys.client_ip),
            LimitKey::Header(name) => {
                let mut key = b"h:".to_vec();
                key.extend_from_slice(keys.headers.get(name).map(|v| v.as_bytes()).unwrap_or_default());
                key
            }
            LimitKey::Claim(name) => match (keys.claim)(name) {
                Some(value) => [b"c:", value.as_bytes()].concat(),
                None => ip_key(keys.client_ip),
            },
        };
        match &self.buckets {
            Buckets::Local(local) => local.check(&key),
            Buckets::Global(global) => global.check(&bounded(key)).await,
        }
    }
}

/// Appends `n` in decimal, without the formatting machinery (this runs for every answer).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

fn ip_key(ip: IpAddr) -> Vec<u8> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    format!("ip:{ip}").into_bytes()
}

/// A key as Redis stores it: as it is when short, its SHA-256 when long (a client must not
/// make the gateway store megabyte keys in Redis).
fn bounded(key: Vec<u8>) -> Vec<u8> {
    if key.len() <= MAX_RAW_KEY {
        return key;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &key);
    let mut hashed = b"sha256:".to_vec();
    for byte in digest.as_ref() {
        hashed.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(key: LimitKey) -> KeyedLimit {
        let limit = Limit {
            requests: 1,
            per: std::time::Duration::from_secs(60),
            burst: 1,
        };
        KeyedLimit::new(
            "l".into(),
            limit,
            key,
            Buckets::Local(LocalRateLimit::new(limit, 16)),
        )
    }

    #[test]
    fn the_headers_are_those_of_the_decision() {
        let limit = Limit {
            requests: 5,
            per: std::time::Duration::from_millis(500),
            burst: 7,
        };
        let keyed = KeyedLimit::new(
            "per \"user\"".into(),
            limit,
            LimitKey::ClientIp,
            Buckets::Local(LocalRateLimit::new(limit, 16)),
        );
        for decision in [
            Decision {
                allowed: true,
                limit: 7,
                remaining: 6,
                reset: std::time::Duration::from_millis(100),
                retry_after: None,
            },
            Decision {
                allowed: true,
                limit: 7,
                remaining: 1_234_567,
                reset: std::time::Duration::from_secs(90),
                retry_after: None,
            },
            Decision {
                allowed: false,
                limit: 7,
                remaining: 0,
                reset: std::time::Duration::from_millis(1500),
                retry_after: Some(std::time::Duration::from_millis(1500)),
            },
        ] {
            let expected: Vec<_> = decision.headers(&keyed.name, &keyed.limit).collect();
            assert_eq!(keyed.headers(&decision), expected);
        }
        let mut text = String::new();
        push_decimal(&mut text, 0);
        push_decimal(&mut text, u64::MAX);
        assert_eq!(text, format!("0{}", u64::MAX));
    }

    fn keys<'a>(
        ip: &str,
        headers: &'a HeaderMap,
        claim: &'a (dyn Fn(&str) -> Option<String> + Sync),
    ) -> Keys<'a> {
        Keys {
            client_ip: ip.parse().unwrap(),
            headers,
            claim,
        }
    }

    #[tokio::test]
    async fn keys_separate_clients_and_a_claim_falls_back_to_the_address() {
        let none = |_: &str| None;
        let empty = HeaderMap::new();
        let by_ip = local(LimitKey::ClientIp);
        assert!(by_ip.check(&keys("10.0.0.1", &empty, &none)).await.allowed);
        assert!(!by_ip.check(&keys("10.0.0.1", &empty, &none)).await.allowed);
        assert!(
            !by_ip.check(&keys("::ffff:10.0.0.1", &empty, &none)).await.allowed,
            "IPv4-mapped is the same client"
        );
        assert!(by_ip.check(&keys("10.0.0.2", &empty, &none)).await.allowed);

        let mut with_user = HeaderMap::new();
        with_user.insert("x-user", "ada".parse().unwrap());
        let by_header = local(LimitKey::Header(http::HeaderName::from_static("x-user")));
        assert!(
            by_header
                .check(&keys("10.0.0.1", &with_user, &none))
                .await
                .allowed
        );
        assert!(
            by_header.check(&keys("10.0.0.1", &empty, &none)).await.allowed,
            "no header is a key of its own"
        );
        assert!(
            !by_header
                .check(&keys("10.0.0.9", &with_user, &none))
                .await
                .allowed
        );

        let by_claim = local(LimitKey::Claim("sub".into()));
        let sub = |name: &str| (name == "sub").then(|| "ada".to_owned());
        assert!(by_claim.check(&keys("10.0.0.1", &empty, &sub)).await.allowed);
        assert!(
            !by_claim.check(&keys("10.0.0.2", &empty, &sub)).await.allowed,
            "one bucket per subject"
        );
        assert!(
            by_claim.check(&keys("10.0.0.1", &empty, &none)).await.allowed,
            "no claim: keyed by address"
        );
    }

    #[test]
    fn long_keys_are_hashed_for_redis() {
        assert_eq!(bounded(b"ip:10.0.0.1".to_vec()), b"ip:10.0.0.1");
        let long = bounded(vec![b'x'; 1000]);
        assert!(long.starts_with(b"sha256:") && long.len() == 7 + 64);
    }
}
