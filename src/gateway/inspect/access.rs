//! Who may read the registry and debug endpoints: clients on the Pod's own loopback (127.0.0.1,
//! ::1: the gateway's neighbours in the Pod, and `kubectl port-forward`, which arrives there),
//! and, when a token file is given, any client that presents its token as a bearer token.

use std::{net::IpAddr, path::Path};

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {path} is empty")]
    Empty { path: String },
}

/// The access rule of the registry and debug endpoints.
#[derive(Clone, Default)]
pub struct AdminAccess {
    /// Set: remote clients presenting it are admitted too.
    token: Option<Vec<u8>>,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminAccess {
    /// Loopback clients only.
    pub fn loopback_only() -> Self {
        Self::default()
    }

    /// Loopback clients, and remote ones with the token in `path` (surrounding whitespace is
    /// not part of it: a Secret written with a trailing newline works).
    pub fn with_token_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let token = text.trim_ascii();
        if token.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Self {
            token: Some(token.to_vec()),
        })
    }

    /// Whether a client at `peer` (unknown: refused) sending `headers` may read.
    pub fn admits(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        if peer.is_some_and(on_loopback) {
            return true;
        }
        let Some(token) = &self.token else {
            return false;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii);
        // In constant time, so that the answer's timing does not tell how much of a guess was
        // right (a wrong length is told at once, as in Go's subtle.ConstantTimeCompare).
        presented.is_some_and(|presented| bool::from(presented.ct_eq(token)))
    }

    /// Why a refused client was refused, for its answer.
    pub fn refusal(&self) -> &'static str {
        if self.token.is_some() {
            "forbidden: the registry and debug endpoints answer clients on the gateway's loopback, \
             or with the bearer token of --admin-token-file\n"
        } else {
            "forbidden: the registry and debug endpoints answer only clients on the gateway's \
             loopback (kubectl port-forward arrives there); --admin-token-file admits remote \
             clients with a bearer token\n"
        }
    }
}

/// 127.0.0.1 or ::1 (also as an IPv4-mapped address): the Pod's own loopback. Other addresses
/// of 127.0.0.0/8 are refused too, which costs nothing: no client elsewhere can come from them.
fn on_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == std::net::Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("a header value"),
        );
        headers
    }

    #[test]
    fn loopback_is_admitted_and_others_only_with_the_token() {
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let remote: IpAddr = "10.1.2.3".parse().expect("ip");
        let closed = AdminAccess::loopback_only();
        assert!(closed.admits(Some(local), &HeaderMap::new()));
        assert!(closed.admits(Some(mapped), &HeaderMap::new()));
        assert!(!closed.admits(Some(remote), &bearer("anything")));
        assert!(!closed.admits(None, &HeaderMap::new()));

        let file = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").expect("write the token");
        let open = AdminAccess::with_token_file(&file).expect("a token");
        let _ = std::fs::remove_file(&file);
        assert!(open.admits(Some(remote), &bearer("s3cret")));
        assert!(!open.admits(Some(remote), &bearer("s3cre")));
        assert!(!open.admits(Some(remote), &bearer("s3cret2")));
        assert!(!open.admits(Some(remote), &HeaderMap::new()));
        assert!(!format!("{open:?}").contains("s3cret"), "never logged");
    }

    #[test]
    fn an_empty_or_missing_token_file_is_an_error() {
        let file = std::env::temp_dir().join(format!("admin-token-empty-{}", std::process::id()));
        std::fs::write(&file, " \n").expect("write");
        assert!(matches!(
            AdminAccess::with_token_file(&file),
            Err(TokenFileError::Empty { .. })
        ));
        let _ = std::fs::remove_file(&file);
        assert!(matches!(
            AdminAccess::with_token_file(&file),
            Err(TokenFileError::Read { .. })
        ));
    }
}
