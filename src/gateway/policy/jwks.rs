//! JSON Web Key Sets (RFC 7517): the public keys that JWT providers verify signatures with, and
//! the signature algorithms (RFC 7518) those keys may be used for.
//!
//! A key set comes from a JWKS document held in a Secret or ConfigMap ([`KeySet::from_jwks_json`],
//! reloaded with [`KeySet::replace`]) or fetched from a URL by a background task
//! ([`KeySet::remote`]). The request path reads the current keys without a lock; a whole new set
//! is swapped in when one arrives, and a set that fails to load or fetch leaves the last good one
//! serving.
//!
//! Only asymmetric signing keys are kept: RSA (2048 bits and more), EC P-256 / P-384 and Ed25519.
//! A symmetric (`oct`) key, a key for encryption, or a key whose `alg` is HMAC or `none` is
//! skipped, so a public key can never become an HMAC secret.
//!
//! Signatures are checked with `ring`, the crypto library rustls already uses here: no second
//! crypto library in the binary.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// How long one fetch of a remote JWKS may take, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JWKS document accepted: real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The shortest spacing of fetches of one URL, whatever `min_refetch` says: a failing URL is
/// never tried in a tight loop.
pub const MIN_FETCH_SPACING: Duration = Duration::from_millis(100);

/// The smallest RSA modulus accepted, in bits (RFC 7518 §3.3 asks for 2048 at least).
const MIN_RSA_BITS: usize = 2048;

/// A JWS signature algorithm a provider may allow. HMAC (`HS*`) and `none` have no variant: a
/// verifier with public keys must never accept them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The name in a JOSE header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `alg` that is not one of [`Algorithm`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "algorithm {0:?} is not accepted: one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, \
     EdDSA (HMAC and none never are)"
)]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Names are case-sensitive, as in JOSE headers.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| UnknownAlgorithm(name.to_string()))
    }
}

/// Why a JWKS could not be loaded or fetched. The previous keys, if any, keep serving.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a \"keys\" array: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the JWKS has no usable signing key ({skipped} skipped: {reasons})")]
    NoUsableKey { skipped: usize, reasons: String },
    #[error("the JWKS URL {url} has no host or an unsupported scheme (http and https are)")]
    BadUrl { url: String },
    #[error("no TLS root certificates could be loaded for {url}: {source}")]
    Roots {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
    #[error("fetching {url}: answered {status}")]
    Status { url: String, status: http::StatusCode },
    #[error("fetching {url}: no complete answer within {FETCH_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("fetching {url}: reading the body: {source}")]
    Body {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the JWKS is not UTF-8")]
    NotUtf8,
}

/// What a key set holds now, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetState {
    /// Keys are serving. `last_error`: the latest reload or fetch failed (the keys are the last
    /// good ones, loaded `at`).
    Loaded {
        keys: usize,
        at: SystemTime,
        last_error: Option<String>,
    },
    /// No key set ever loaded: every token is refused.
    NotLoaded { error: String },
}

/// One usable public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Jwk {
    kid: Option<String>,
    /// The JWK's own `alg`: when present, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    material: KeyMaterial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed points (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Jwk {
    pub(super) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key may verify a signature made with `alg`: the key's type and curve fit the
    /// algorithm, and the key names no other.
    pub(super) fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        matches!(
            (alg, &self.material),
            (
                Algorithm::Rs256
                    | Algorithm::Rs384
                    | Algorithm::Rs512
                    | Algorithm::Ps256
                    | Algorithm::Ps384
                    | Algorithm::Ps512,
                KeyMaterial::Rsa { .. }
            ) | (Algorithm::Es256, KeyMaterial::P256(_))
                | (Algorithm::Es384, KeyMaterial::P384(_))
                | (Algorithm::EdDsa, KeyMaterial::Ed25519(_))
        )
    }

    /// Whether `signature` is this key's signature of `message` with `alg`. False for a key that
    /// does not [fit](Self::fits) the algorithm.
    pub(super) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        let rsa = |params: &signature::RsaParameters| match &self.material {
            KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            _ => false,
        };
        let point = |algorithm: &'static dyn signature::VerificationAlgorithm, key: &[u8]| {
            UnparsedPublicKey::new(algorithm, key)
                .verify(message, signature)
                .is_ok()
        };
        match (alg, &self.material) {
            (Algorithm::Rs256, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            (Algorithm::Rs384, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            (Algorithm::Rs512, _) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            (Algorithm::Ps256, _) => rsa(&signature::RSA_PSS_2048_8192_SHA256),
            (Algorithm::Ps384, _) => rsa(&signature::RSA_PSS_2048_8192_SHA384),
            (Algorithm::Ps512, _) => rsa(&signature::RSA_PSS_2048_8192_SHA512),
            (Algorithm::Es256, KeyMaterial::P256(p)) => point(&signature::ECDSA_P256_SHA256_FIXED, p),
            (Algorithm::Es384, KeyMaterial::P384(p)) => point(&signature::ECDSA_P384_SHA384_FIXED, p),
            (Algorithm::EdDsa, KeyMaterial::Ed25519(x)) => point(&signature::ED25519, x),
            _ => false,
        }
    }
}

/// The members of a JWK that matter here (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct JwkMembers {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

fn base64url(field: &'static str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("no \"{field}\""))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("\"{field}\" is not base64url"))
}

fn strip_leading_zeros(bytes: Vec<u8>) -> Vec<u8> {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

impl JwkMembers {
    /// The usable key, or why this JWK is skipped.
    fn into_key(self) -> Result<Jwk, String> {
        if self.public_key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signing key (use)".into());
        }
        if self
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return Err("not a verification key (key_ops)".into());
        }
        let alg = match self.alg.as_deref() {
            None => None,
            Some(name) => Some(name.parse::<Algorithm>().map_err(|_| format!("alg {name:?}"))?),
        };
        let material = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                let n = strip_leading_zeros(base64url("n", self.n.as_deref())?);
                let e = strip_leading_zeros(base64url("e", self.e.as_deref())?);
                let bits = n
                    .first()
                    .map_or(0, |top| (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize));
                if bits < MIN_RSA_BITS {
                    return Err(format!("RSA modulus of {bits} bits"));
                }
                if e.is_empty() {
                    return Err("RSA exponent is zero".into());
                }
                KeyMaterial::Rsa { n, e }
            }
            ("EC", Some(curve @ ("P-256" | "P-384"))) => {
                let size = if curve == "P-256" { 32 } else { 48 };
                let x = base64url("x", self.x.as_deref())?;
                let y = base64url("y", self.y.as_deref())?;
                if x.len() != size || y.len() != size {
                    return Err(format!("{curve} coordinates of the wrong length"));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if size == 32 {
                    KeyMaterial::P256(point)
                } else {
                    KeyMaterial::P384(point)
                }
            }
            ("OKP", Some("Ed25519")) => {
                let x = base64url("x", self.x.as_deref())?;
                if x.len() != signature::ED25519_PUBLIC_KEY_LEN {
                    return Err("Ed25519 key of the wrong length".into());
                }
                KeyMaterial::Ed25519(x)
            }
            (kty, crv) => return Err(format!("key type {kty:?} curve {crv:?}")),
        };
        let key = Jwk {
            kid: self.kid,
            alg,
            material,
        };
        if let Some(alg) = alg
            && !key.fits(alg)
        {
            return Err(format!("alg {alg} does not fit the key type"));
        }
        Ok(key)
    }
}

/// The usable keys of a JWKS document; an error when it has none.
fn parse_jwks(text: &str) -> Result<Vec<Jwk>, JwksError> {
    let document: JwksDocument = serde_json::from_str(text).map_err(JwksError::Json)?;
    let mut keys = Vec::with_capacity(document.keys.len());
    let mut skipped = Vec::new();
    for value in document.keys {
        let parsed = serde_json::from_value::<JwkMembers>(value)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(|members| {
                let kid = members.kid.clone();
                members.into_key().map_err(|reason| match kid {
                    Some(kid) => format!("kid {kid:?}: {reason}"),
                    None => reason,
                })
            });
        match parsed {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(reason),
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey {
            skipped: skipped.len(),
            reasons: skipped.join("; "),
        });
    }
    if !skipped.is_empty() {
        tracing::debug!(usable = keys.len(), skipped = ?skipped, "JWKS keys skipped");
    }
    Ok(keys)
}

/// The keys in force, swapped whole.
#[derive(Debug)]
pub(super) struct Keys {
    keys: Vec<Jwk>,
    loaded_at: Option<SystemTime>,
    error: Option<String>,
}

impl Keys {
    /// The keys that may verify a token signed with `alg` naming `kid` (every fitting key when
    /// the token names none).
    pub(super) fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> impl Iterator<Item = &Jwk> {
        self.keys
            .iter()
            .filter(move |key| kid.is_none_or(|kid| key.kid() == Some(kid)) && key.fits(alg))
    }

    /// Whether any key carries `kid`, whatever its algorithm.
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid() == Some(kid))
    }

    pub(super) fn is_loaded(&self) -> bool {
        self.loaded_at.is_some()
    }
}

/// Refetches asked for by the request path (an unknown `kid`), spaced by `min_refetch`.
#[derive(Debug)]
struct Refetch {
    notify: Arc<tokio::sync::Notify>,
    min_refetch: Duration,
    base: Instant,
    /// Milliseconds after `base` of the last request let through, plus one (0: none yet).
    last_request: AtomicU64,
    /// Fetches made, successful or not.
    fetches: AtomicU64,
}

/// A provider's current public keys.
#[derive(Debug)]
pub struct KeySet {
    current: ArcSwap<Keys>,
    /// Bumped whenever the keys change, so that tokens verified with keys since removed are
    /// verified again rather than served from a cache.
    generation: AtomicU64,
    refetch: Option<Refetch>,
}

impl KeySet {
    fn with(keys: Keys, refetch: Option<Refetch>) -> KeySet {
        KeySet {
            current: ArcSwap::from_pointee(keys),
            generation: AtomicU64::new(0),
            refetch,
        }
    }

    /// The keys of a JWKS document (from a Secret or ConfigMap).
    pub fn from_jwks_json(text: &str) -> Result<Arc<KeySet>, JwksError> {
        let keys = parse_jwks(text)?;
        Ok(Arc::new(KeySet::with(
            Keys {
                keys,
                loaded_at: Some(SystemTime::now()),
                error: None,
            },
            None,
        )))
    }

    /// A key set with no keys yet (its Secret is missing, say): tokens are refused until a
    /// [`replace`](Self::replace) succeeds.
    pub fn not_loaded(error: String) -> Arc<KeySet> {
        Arc::new(KeySet::with(
            Keys {
                keys: Vec::new(),
                loaded_at: None,
                error: Some(error),
            },
            None,
        ))
    }

    /// Loads a new version of the JWKS document. On error the previous keys keep serving and
    /// the error shows in [`state`](Self::state).
    pub fn replace(&self, text: &str) -> Result<(), JwksError> {
        match parse_jwks(text) {
            Ok(keys) => {
                self.install(keys);
                Ok(())
            }
            Err(error) => {
                self.record_error(error.to_string());
                Err(error)
            }
        }
    }

    /// A key set fetched from `url` and refreshed every `refresh`, and the task that does it (to
    /// be spawned; it ends when the key set is dropped). Until the first fetch succeeds the set
    /// is not loaded. An unknown `kid` asks for a fetch before the next refresh, at most one per
    /// `min_refetch`; the request that carried it is refused, not kept waiting.
    pub fn remote(
        url: Uri,
        refresh: Duration,
        min_refetch: Duration,
    ) -> (Arc<KeySet>, impl Future<Output = ()> + Send + 'static) {
        let min_refetch = min_refetch.max(MIN_FETCH_SPACING);
        let refetch = Refetch {
            notify: Arc::new(tokio::sync::Notify::new()),
            min_refetch,
            base: Instant::now(),
            last_request: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        };
        let keys = Keys {
            keys: Vec::new(),
            loaded_at: None,
            error: Some(format!("{url} not fetched yet")),
        };
        let set = Arc::new(KeySet::with(keys, Some(refetch)));
        let task = refresh_remote(Arc::downgrade(&set), url, refresh.max(min_refetch), min_refetch);
        (set, task)
    }

    /// What the set holds now.
    pub fn state(&self) -> KeySetState {
        let keys = self.current.load();
        match keys.loaded_at {
            Some(at) => KeySetState::Loaded {
                keys: keys.keys.len(),
                at,
                last_error: keys.error.clone(),
            },
            None => KeySetState::NotLoaded {
                error: keys.error.clone().unwrap_or_default(),
            },
        }
    }

    /// How many times a remote set was fetched (0 for a set from a document).
    pub fn fetches(&self) -> u64 {
        self.refetch
            .as_ref()
            .map_or(0, |r| r.fetches.load(Ordering::Relaxed))
    }

    pub(super) fn load(&self) -> arc_swap::Guard<Arc<Keys>> {
        self.current.load()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks the refresher for a fetch soon (a token named a `kid` the set lacks). Requests
    /// closer together than `min_refetch` are dropped here, so a flood of forged `kid`s costs
    /// one atomic load each.
    pub(super) fn request_refetch(&self) {
        let Some(refetch) = &self.refetch else { return };
        let now = refetch.base.elapsed().as_millis() as u64 + 1;
        let last = refetch.last_request.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < refetch.min_refetch.as_millis() as u64 {
            return;
        }
        if refetch
            .last_request
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            refetch.notify.notify_one();
        }
    }

    fn install(&self, keys: Vec<Jwk>) {
        let current = self.current.load();
        let changed = current.keys != keys;
        self.current.store(Arc::new(Keys {
            keys,
            loaded_at: Some(SystemTime::now()),
            error: None,
        }));
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn record_error(&self, error: String) {
        let current = self.current.load_full();
        self.current.store(Arc::new(Keys {
            keys: current.keys.clone(),
            loaded_at: current.loaded_at,
            error: Some(error),
        }));
    }
}

type FetchClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A client for `url`: https verified against the system's root certificates (plain http needs
/// none).
fn fetch_client(url: &Uri) -> Result<FetchClient, JwksError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match url.scheme_str() {
        Some("https") => builder
            .with_provider_and_native_roots(crate::gateway::tls::provider())
            .map_err(|source| JwksError::Roots {
                url: url.to_string(),
                source,
            })?,
        Some("http") => builder.with_tls_config(
            rustls::ClientConfig::builder_with_provider(crate::gateway::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| JwksError::Roots {
                    url: url.to_string(),
                    source: std::io::Error::other(e),
                })?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
        _ => return Err(JwksError::BadUrl { url: url.to_string() }),
    };
    if url.host().is_none() {
        return Err(JwksError::BadUrl { url: url.to_string() });
    }
    let connector = builder.https_or_http().enable_http1().build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

async fn fetch(client: &FetchClient, url: &Uri) -> Result<String, JwksError> {
    let request = http::Request::get(url.clone())
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .body(Empty::new())
        .map_err(|_| JwksError::BadUrl { url: url.to_string() })?;
    let work = async {
        let response = client.request(request).await.map_err(|source| JwksError::Fetch {
            url: url.to_string(),
            source: Box::new(source),
        })?;
        if response.status() != http::StatusCode::OK {
            return Err(JwksError::Status {
                url: url.to_string(),
                status: response.status(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|source| JwksError::Body {
                url: url.to_string(),
                source,
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| JwksError::NotUtf8)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| JwksError::Timeout { url: url.to_string() })?
}

/// Fetches `url` now, then every `refresh`, and soon after a refetch request (no sooner than
/// `min_refetch` after the previous fetch). A failed fetch is tried again after `min_refetch`.
async fn refresh_remote(set: Weak<KeySet>, url: Uri, refresh: Duration, min_refetch: Duration) {
    let client = match fetch_client(&url) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%url, %error, "JWKS cannot be fetched");
            if let Some(set) = set.upgrade() {
                set.record_error(error.to_string());
            }
            return;
        }
    };
    let Some(notify) = set
        .upgrade()
        .and_then(|s| s.refetch.as_ref().map(|r| r.notify.clone()))
    else {
        return;
    };
    let mut last_fetch: Option<tokio::time::Instant> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        // Sleeping until the next scheduled fetch or a refetch request does not hold the key
        // set alive: dropped meanwhile, it ends this task at the next turn.
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = notify.notified() => {
                if let Some(last) = last_fetch {
                    tokio::time::sleep_until(last + min_refetch).await;
                }
            }
        }
        let Some(current) = set.upgrade() else { return };
        last_fetch = Some(tokio::time::Instant::now());
        if let Some(refetch) = &current.refetch {
            refetch.fetches.fetch_add(1, Ordering::Relaxed);
        }
        let result = fetch(&client, &url).await.and_then(|text| parse_jwks(&text));
        match result {
            Ok(keys) => {
                tracing::debug!(%url, keys = keys.len(), "JWKS fetched");
                current.install(keys);
                next = tokio::time::Instant::now() + refresh;
            }
            Err(error) => {
                tracing::warn!(%url, %error, "JWKS fetch failed; the last good keys keep serving");
                current.record_error(error.to_string());
                next = tokio::time::Instant::now() + min_refetch.min(refresh);
            }
        }
    }
}

#[cfg(test)]
mod tests;
