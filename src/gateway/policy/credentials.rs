//! Shared-secret credentials held in Secrets: API keys (one per client, sent in a header) and
//! basic authentication against an htpasswd file of bcrypt hashes.
//!
//! Keys are kept only as SHA-256 digests, looked up by digest and then compared in constant
//! time: what a caller learns from timing is at most something about a digest, never a key.
//! bcrypt is slow on purpose (tens of milliseconds per check), so a verified user and password
//! is remembered, by digest, in a small bounded cache; a wrong password is never cached.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::Engine;
use http::{HeaderMap, HeaderName, header};
use subtle::ConstantTimeEq;

type Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// The API keys of one Secret: each data entry is a client's key, named by its data key.
#[derive(Debug, Default)]
pub struct ApiKeySet {
    by_digest: HashMap<Digest, Arc<str>>,
}

impl ApiKeySet {
    /// From a Secret's data: `client name → key`. Empty keys are left out (they would let an
    /// empty header in).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let by_digest = entries
            .into_iter()
            .map(|(name, key)| (name, key.trim_ascii()))
            .filter(|(_, key)| !key.is_empty())
            .map(|(name, key)| (sha256(&[key]), Arc::from(name)))
            .collect();
        Self { by_digest }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The name of the client whose key `presented` is.
    pub fn client(&self, presented: &[u8]) -> Option<&Arc<str>> {
        let digest = sha256(&[presented]);
        let (stored, name) = self.by_digest.get_key_value(&digest)?;
        bool::from(stored.ct_eq(&digest)).then_some(name)
    }
}

/// An API key check: the header it is read from and the keys it may hold.
#[derive(Debug)]
pub struct ApiKeys {
    pub header: HeaderName,
    pub keys: ApiKeySet,
}

/// What a request's credentials come to.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// The request carries none of this kind.
    Absent,
    /// Valid: the client's name.
    Valid(Arc<str>),
    /// Present but wrong: a short reason for the access log (never the credential).
    Invalid(&'static str),
}

impl ApiKeys {
    pub fn check(&self, headers: &HeaderMap) -> Checked {
        let Some(value) = headers.get(&self.header) else {
            return Checked::Absent;
        };
        match self.keys.client(value.as_bytes().trim_ascii()) {
            Some(name) => Checked::Valid(name.clone()),
            None => Checked::Invalid("api-key-unknown"),
        }
    }
}

/// Verified user and password digests remembered, so that bcrypt runs once per credential.
const VERIFIED_CACHE: usize = 4096;

/// Basic authentication against an htpasswd file.
#[derive(Debug)]
pub struct BasicAuth {
    /// `Basic realm="…"`, ready to send.
    pub challenge: http::HeaderValue,
    users: HashMap<String, String>,
    verified: Mutex<HashMap<Digest, Arc<str>>>,
    verifying: tokio::sync::Semaphore,
}

/// bcrypt checks run at once, per htpasswd file.
const CONCURRENT_VERIFICATIONS: usize = 4;

/// Why an htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("line {line}: not `user:hash`")]
    Malformed { line: usize },
    #[error("line {line}: user {user}'s hash is not bcrypt ($2y$, $2b$ or $2a$); only bcrypt is accepted")]
    NotBcrypt { line: usize, user: String },
    #[error("the file names no user")]
    Empty,
}

impl BasicAuth {
    /// From an htpasswd file's text (`user:$2y$…` per line; `#` comments and blank lines
    /// skipped). Any hash that is not bcrypt refuses the whole file: MD5-crypt, SHA-1 and plain
    /// passwords are too weak to accept silently.
    pub fn new(htpasswd: &str, realm: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        for (index, line) in htpasswd.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let (user, hash) = line
                .split_once(':')
                .filter(|(user, hash)| !user.is_empty() && !hash.is_empty())
                .ok_or(HtpasswdError::Malformed { line: number })?;
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(HtpasswdError::NotBcrypt {
                    line: number,
                    user: user.to_owned(),
                });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        if users.is_empty() {
            return Err(HtpasswdError::Empty);
        }
        let challenge = http::HeaderValue::try_from(format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            .unwrap_or_else(|_| http::HeaderValue::from_static("Basic realm=\"microgate\""));
        Ok(Self {
            challenge,
            users,
            verified: Mutex::new(HashMap::new()),
            verifying: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
        })
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub async fn check(&self, headers: &HeaderMap) -> Checked {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, rest)| rest.trim())
        else {
            return Checked::Absent;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return Checked::Invalid("basic-malformed");
        };
        let Some((user, password)) = std::str::from_utf8(&decoded).ok().and_then(|s| s.split_once(':'))
        else {
            return Checked::Invalid("basic-malformed");
        };
        let Some(hash) = self.users.get(user) else {
            return Checked::Invalid("basic-unknown-user");
        };
        // The hash is part of the digest: a password changed in the Secret is checked afresh.
        let digest = sha256(&[
            user.as_bytes(),
            b"\0",
            password.as_bytes(),
            b"\0",
            hash.as_bytes(),
        ]);
        if let Some(name) = self.verified.lock().ok().and_then(|v| v.get(&digest).cloned()) {
            return Checked::Valid(name);
        }
        // Off the worker thread, and a few at a time: a flood of wrong passwords must neither
        // stall the worker's other connections nor take every blocking thread.
        let verified = match self.verifying.acquire().await {
            Ok(_permit) => {
                let (password, hash) = (password.to_owned(), hash.clone());
                tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                    .await
                    .unwrap_or(Ok(false))
            }
            Err(_) => Ok(false),
        };
        match verified {
            Ok(true) => {
                let name: Arc<str> = Arc::from(user);
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= VERIFIED_CACHE {
                        verified.clear();
                    }
                    verified.insert(digest, name.clone());
                }
                Checked::Valid(name)
            }
            Ok(false) | Err(_) => Checked::Invalid("basic-wrong-password"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::try_from(name).unwrap(), value.parse().unwrap());
        headers
    }

    #[test]
    fn api_keys_name_their_client_and_refuse_others() {
        let keys = ApiKeys {
            header: HeaderName::from_static("x-api-key"),
            keys: ApiKeySet::new([("billing", &b"k-123\n"[..]), ("empty", &b""[..])]),
        };
        assert_eq!(keys.keys.len(), 1, "an empty key is left out");
        assert_eq!(
            keys.check(&headers("x-api-key", "k-123")),
            Checked::Valid("billing".into())
        );
        assert_eq!(
            keys.check(&headers("x-api-key", "k-124")),
            Checked::Invalid("api-key-unknown")
        );
        assert_eq!(
            keys.check(&headers("x-api-key", "")),
            Checked::Invalid("api-key-unknown")
        );
        assert_eq!(keys.check(&HeaderMap::new()), Checked::Absent);
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers("authorization", &format!("Basic {encoded}"))
    }

    #[tokio::test]
    async fn basic_auth_checks_bcrypt_hashes_and_caches_only_successes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(&format!("# users\nalice:{hash}\n\n"), "shop").unwrap();
        assert_eq!(
            auth.check(&basic("alice", "s3cret")).await,
            Checked::Valid("alice".into())
        );
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert_eq!(
            auth.check(&basic("alice", "s3cret")).await,
            Checked::Valid("alice".into())
        );
        assert_eq!(
            auth.check(&basic("alice", "wrong")).await,
            Checked::Invalid("basic-wrong-password")
        );
        assert_eq!(
            auth.check(&basic("bob", "s3cret")).await,
            Checked::Invalid("basic-unknown-user")
        );
        assert_eq!(auth.verified.lock().unwrap().len(), 1, "failures are not cached");
        assert_eq!(
            auth.check(&headers("authorization", "Basic !!!")).await,
            Checked::Invalid("basic-malformed")
        );
        assert_eq!(
            auth.check(&headers("authorization", "Bearer x")).await,
            Checked::Absent
        );
        assert_eq!(auth.challenge, "Basic realm=\"shop\", charset=\"UTF-8\"");
    }

    #[test]
    fn htpasswd_files_with_weak_hashes_are_refused() {
        assert!(matches!(
            BasicAuth::new("alice:$apr1$abc$def", "r"),
            Err(HtpasswdError::NotBcrypt { line: 1, .. })
        ));
        assert!(matches!(
            BasicAuth::new("alice:plain", "r"),
            Err(HtpasswdError::NotBcrypt { .. })
        ));
        assert!(matches!(
            BasicAuth::new("nocolon", "r"),
            Err(HtpasswdError::Malformed { line: 1 })
        ));
        assert!(matches!(
            BasicAuth::new("# only a comment\n", "r"),
            Err(HtpasswdError::Empty)
        ));
    }
}
