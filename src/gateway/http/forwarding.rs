//! What a message's headers become as the gateway passes it on: hop-by-hop headers (RFC 9110
//! §7.6.1) stay behind, and a request gains the forwarding headers (`X-Forwarded-For`, `-Proto`,
//! `-Host`, a `Host` if it had none, an `X-Request-Id` if it had none).
//!
//! For HTTP/1.1 the additions are written straight into the request head and the client's
//! headers are filtered as they are written, so the header map is neither grown nor copied per
//! attempt; for HTTP/2 they go into the map ([`Forwarding::apply`]).

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::client::Client;
use crate::gateway::random::random_below;

// Statics, not consts: a const would be built and dropped at every use.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static HOST: HeaderName = header::HOST;

/// Headers that belong to one hop, never forwarded.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    // Half of an h2c upgrade (RFC 7540 3.2.1): forwarded, it would let a client speak HTTP/2 to
    // the endpoint past the gateway's routes.
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str().as_bytes())
}

/// [`is_hop_by_hop`] on a name as it came off the wire (any case). Asked for every header of
/// every message: the length rules out most names before a byte is compared.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let is = |hop: &[u8]| name.eq_ignore_ascii_case(hop);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        // Content-Length has the same length: its first letter tells them apart at once.
        14 => name[0] | 0x20 == b'h' && is(b"http2-settings"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Whether `name` is one the gateway replaces with its own value.
fn is_replaced(name: &[u8]) -> bool {
    name.len() >= 15
        && name.starts_with(b"x-forwarded-")
        && matches!(&name[12..], b"for" | b"proto" | b"host")
}

/// Whether `name` is one the `Connection` header values in `connection` list (hop-by-hop too).
pub fn is_connection_listed<'v>(name: &str, connection: impl IntoIterator<Item = &'v [u8]>) -> bool {
    connection.into_iter().any(|value| {
        value
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// Whether a `Connection` header value names a header beyond the hop-by-hop ones (its usual
/// `keep-alive` or `close` does not): only then must each header be checked against it.
pub fn names_other_headers(connection: &[u8]) -> bool {
    connection.split(|b| *b == b',').any(|token| {
        let token = token.trim_ascii();
        !token.is_empty() && !token.eq_ignore_ascii_case(b"close") && !is_hop_by_hop_name(token)
    })
}

/// Removes the hop-by-hop headers, and those the `Connection` header names, from `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there is none: one pass over the names finds that out without a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .chain(named.iter().filter(|name| **name != HOST))
    {
        headers.remove(name);
    }
}

/// The forwarding headers of one request, worked out once for all its attempts.
pub struct Forwarding {
    forwarded_for: Option<HeaderValue>,
    /// `http` or `https`: how the client reached the gateway.
    forwarded_proto: &'static str,
    forwarded_host: Option<HeaderValue>,
    /// A `Host` for a request that came without one (an HTTP/2 client sends `:authority`).
    host: Option<HeaderValue>,
    /// A new request id, for a request that came without one.
    request_id: Option<[u8; 32]>,
    /// Whether the client's `Connection` header names more headers than the hop-by-hop ones.
    connection_names_more: bool,
}

impl Forwarding {
    /// `host`: the request's host, from its URI or its `Host` header. The client's
    /// `X-Forwarded-For` is not believed: the endpoint gets the peer's address alone.
    pub fn new(headers: &HeaderMap, client: &Client, host: Option<&str>) -> Self {
        Self::for_peer(headers, client, host, false)
    }

    /// [`Forwarding::new`], where a `trusted_peer` (a proxy the listener trusts) has its
    /// `X-Forwarded-For` passed on, its own address added at the end.
    pub fn for_peer(headers: &HeaderMap, client: &Client, host: Option<&str>, trusted_peer: bool) -> Self {
        let forwarded_for = if trusted_peer && headers.contains_key(&X_FORWARDED_FOR) {
            let mut list = Vec::with_capacity(64);
            for value in headers.get_all(&X_FORWARDED_FOR) {
                list.extend_from_slice(value.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(client.addr.ip().to_string().as_bytes());
            HeaderValue::from_bytes(&list).ok()
        } else {
            client.forwarded_for.clone()
        };
        // The client's own Host value is shared, not copied.
        let (host, forwarded_host) = match headers.get(header::HOST) {
            Some(value) => (None, Some(value.clone())),
            None => {
                let value = host.and_then(|h| HeaderValue::try_from(h).ok());
                (value.clone(), value)
            }
        };
        Self {
            forwarded_for,
            forwarded_proto: client.scheme(),
            forwarded_host,
            host,
            request_id: (!headers.contains_key(&X_REQUEST_ID)).then(request_id),
            connection_names_more: headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|value| names_other_headers(value.as_bytes())),
        }
    }

    /// Whether the client's header `name` goes to the endpoint as it is: not hop-by-hop, not
    /// one this replaces. `headers`: the client's.
    pub fn passes(&self, name: &HeaderName, headers: &HeaderMap) -> bool {
        let bytes = name.as_str().as_bytes();
        !(is_hop_by_hop_name(bytes)
            || is_replaced(bytes)
            // Host stays whatever Connection says: without it the request would be invalid.
            || (self.connection_names_more
                && name != HOST
                && is_connection_listed(
                    name.as_str(),
                    headers
                        .get_all(header::CONNECTION)
                        .iter()
                        .map(HeaderValue::as_bytes),
                )))
    }

    /// Whether the request goes without a Host unless the endpoint's own address is given as
    /// one (an HTTP/1.0 client that named no host).
    pub fn lacks_host(&self, headers: &HeaderMap) -> bool {
        self.host.is_none() && !headers.contains_key(header::HOST)
    }

    /// The headers this adds, as name and value.
    pub fn added(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        [
            self.host.as_ref().map(|v| (&HOST, v.as_bytes())),
            self.forwarded_for
                .as_ref()
                .map(|v| (&X_FORWARDED_FOR, v.as_bytes())),
            Some((&X_FORWARDED_PROTO, self.forwarded_proto.as_bytes())),
            self.forwarded_host
                .as_ref()
                .map(|v| (&X_FORWARDED_HOST, v.as_bytes())),
            self.request_id.as_ref().map(|id| (&X_REQUEST_ID, &id[..])),
        ]
        .into_iter()
        .flatten()
    }

    /// Makes `headers` (the client's) the endpoint's.
    pub fn apply(&self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers);
        for (name, value) in self.added() {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// 128 random bits in hex.
fn request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let halves = [random_below(usize::MAX) as u64, random_below(usize::MAX) as u64];
    for (i, digit) in id.iter_mut().enumerate() {
        let half = halves[i / 16];
        *digit = HEX[((half >> (4 * (i % 16))) & 0xf) as usize];
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, x-secret".parse().expect("value"));
        headers.insert("x-secret", "1".parse().expect("value"));
        headers.insert("keep-alive", "timeout=5".parse().expect("value"));
        headers.insert("x-forwarded-for", "10.0.0.1".parse().expect("value"));
        headers.insert("x-forwarded-proto", "https".parse().expect("value"));
        headers.insert("x-kept", "yes".parse().expect("value"));
        headers.insert(header::HOST, "shop.example.com".parse().expect("value"));
        headers
    }

    #[test]
    fn hop_by_hop_headers_go_and_forwarding_headers_come() {
        let headers = client_headers();
        let client = Client::new(
            "0.0.0.0:8080".parse().expect("addr"),
            "127.0.0.9:5000".parse().expect("addr"),
        );
        let forwarding = Forwarding::new(&headers, &client, Some("shop.example.com"));
        let mut out = headers.clone();
        forwarding.apply(&mut out);
        assert!(
            !out.contains_key(header::CONNECTION)
                && !out.contains_key("x-secret")
                && !out.contains_key("keep-alive")
        );
        // The client's own list is dropped: only a trusted peer's goes on.
        assert_eq!(out["x-forwarded-for"], "127.0.0.9");
        let mut from_proxy = headers.clone();
        from_proxy.append("x-forwarded-for", "10.0.0.2".parse().expect("value"));
        let mut passed = from_proxy.clone();
        Forwarding::for_peer(&from_proxy, &client, None, true).apply(&mut passed);
        assert_eq!(passed["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.9");
        assert_eq!(passed.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(out["x-forwarded-host"], "shop.example.com");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-kept"], "yes");
        assert_eq!(out[header::HOST], "shop.example.com");
        let id = out["x-request-id"].to_str().expect("ascii");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_ne!(request_id(), request_id());

        // Filtering while writing (HTTP/1.1) gives the same headers as applying to the map.
        let mut written: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| forwarding.passes(name, &headers))
            .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned()))
            .chain(
                forwarding
                    .added()
                    .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).expect("ascii"))),
            )
            .collect();
        let mut applied: Vec<(String, String)> = out
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        written.sort();
        applied.sort();
        assert_eq!(written, applied);
    }

    #[test]
    fn a_request_without_host_gets_one_and_keeps_its_request_id() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, "abc".parse().expect("value"));
        let client = Client::new(
            "0.0.0.0:8080".parse().expect("addr"),
            "127.0.0.9:5000".parse().expect("addr"),
        );
        let forwarding = Forwarding::new(&headers, &client, Some("shop"));
        forwarding.apply(&mut headers);
        assert_eq!(headers[header::HOST], "shop");
        assert_eq!(headers["x-forwarded-host"], "shop");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.9");
        assert_eq!(headers[&X_REQUEST_ID], "abc");
    }

    #[test]
    fn headers_without_hop_by_hop_ones_are_left_alone_and_upgrade_goes() {
        let mut headers = HeaderMap::new();
        headers.insert("x-kept", "yes".parse().expect("value"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        headers.insert(header::UPGRADE, "websocket".parse().expect("value"));
        strip_hop_by_hop(&mut headers);
        assert!(!headers.contains_key(header::UPGRADE) && headers.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_names_are_known_in_any_case() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
            assert!(
                is_hop_by_hop_name(name.as_str().to_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in [
            "host",
            "content-length",
            "x-te",
            "upgrades",
            "connections",
            "keep-alivE2",
        ] {
            assert!(!is_hop_by_hop_name(name.as_bytes()), "{name}");
        }
        assert!(is_replaced(b"x-forwarded-for") && is_replaced(b"x-forwarded-host"));
        assert!(!is_replaced(b"x-forwarded-port") && !is_replaced(b"x-forwarded"));
    }

    #[test]
    fn connection_lists_name_headers_case_blind() {
        let values: [&[u8]; 2] = [b"keep-alive", b" X-Secret , close"];
        assert!(is_connection_listed("x-secret", values));
        assert!(!is_connection_listed("x-kept", values));
        assert!(names_other_headers(b"keep-alive, X-Secret"));
        assert!(!names_other_headers(b"Keep-Alive, close, TE"));
    }
}
