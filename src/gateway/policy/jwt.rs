//! JWT authentication (RFC 7519, JWS compact serialization of RFC 7515): a provider takes a
//! token from the request, verifies its signature with the provider's [`KeySet`], checks issuer,
//! audience and validity times, and copies claims to request headers for the service.
//!
//! The algorithm in a token's header is a claim of the attacker's until the signature is checked,
//! so it decides nothing alone: it must be one the provider allows, and the key must be of its
//! type (and name it, if the key names one). `none` and HMAC are never accepted, so no public key
//! can be used as an HMAC secret.
//!
//! Verified claims are cached until the token expires (or its keys change), in a cache of fixed
//! capacity that compares whole tokens: a token seen before costs a hash, a lookup and a
//! comparison, not a signature check. A token never appears in a log, an error or a header we write.

mod cache;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use super::jwks::{Algorithm, KeySet, UnknownAlgorithm};
use cache::VerifiedCache;

/// How many verified tokens a provider remembers unless told otherwise.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// How long the claims of a token without `exp` are reused before it is verified again.
pub const NO_EXPIRY_CACHE_TTL: Duration = Duration::from_secs(60);

/// The longest token read: real ones are below 2 KiB; anything bigger is refused before any
/// decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where a provider finds its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    AuthorizationBearer,
    /// A header whose value is the token (a leading `Bearer ` is accepted and dropped).
    Header(HeaderName),
    /// A cookie of this name.
    Cookie(String),
}

/// A provider as compiled from the policy resource.
#[derive(Debug, Clone)]
pub struct JwtProviderConfig {
    /// For logs and metrics.
    pub name: String,
    /// The `iss` a token must carry, compared exactly.
    pub issuer: String,
    /// One of these must be in the token's `aud`; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// The algorithms a token may be signed with.
    pub algorithms: Vec<Algorithm>,
    /// Leeway for `exp` and `nbf`, for clocks that disagree.
    pub clock_skew: Duration,
    pub token_from: TokenSource,
    /// Claim (a name, or a dotted path into nested objects such as `realm.role`) → request
    /// header set for the service.
    pub claims_to_headers: Vec<(String, HeaderName)>,
}

/// A provider that cannot be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    #[error("JWT provider {provider}: the issuer is empty")]
    EmptyIssuer { provider: String },
    #[error("JWT provider {provider}: no algorithm is allowed")]
    NoAlgorithm { provider: String },
    #[error("JWT provider {provider}: claimsToHeaders has an empty claim for header {header}")]
    EmptyClaim { provider: String, header: HeaderName },
    #[error("JWT provider {provider}: cookie name {name:?} is empty or not a cookie name")]
    BadCookieName { provider: String, name: String },
}

/// Why a request's token is refused. Messages name no part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm is none")]
    AlgNone,
    #[error("the token's algorithm is HMAC, never accepted with public keys")]
    Hmac,
    #[error("the token's algorithm is not supported")]
    UnsupportedAlgorithm,
    #[error("the token's algorithm {0} is not allowed")]
    AlgorithmNotAllowed(Algorithm),
    #[error("the token has critical header parameters, none of which is understood")]
    CriticalHeader,
    #[error("the token's key id is not in the key set")]
    UnknownKid,
    #[error("no key of the key set fits the token's algorithm")]
    NoFittingKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the provider's signing keys are not loaded")]
    KeysUnavailable,
}

impl JwtError {
    /// A short code for `x-microgate-reason` and the access log (never any part of the token).
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "jwt-malformed",
            JwtError::AlgNone => "jwt-alg-none",
            JwtError::Hmac => "jwt-alg-hmac",
            JwtError::UnsupportedAlgorithm => "jwt-alg-unsupported",
            JwtError::AlgorithmNotAllowed(_) => "jwt-alg-not-allowed",
            JwtError::CriticalHeader => "jwt-crit",
            JwtError::UnknownKid => "jwt-unknown-kid",
            JwtError::NoFittingKey => "jwt-no-fitting-key",
            JwtError::BadSignature => "jwt-bad-signature",
            JwtError::WrongIssuer => "jwt-wrong-issuer",
            JwtError::WrongAudience => "jwt-wrong-audience",
            JwtError::Expired => "jwt-expired",
            JwtError::NotYetValid => "jwt-not-yet-valid",
            JwtError::KeysUnavailable => "jwt-keys-unavailable",
        }
    }

    /// The failure is ours (no keys to verify with), not the token's: a 503 rather than a 401
    /// fits it.
    pub fn is_server_side(&self) -> bool {
        matches!(self, JwtError::KeysUnavailable)
    }

    /// The `error_description` of a challenge: fixed text, never from the request.
    fn description(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed token",
            JwtError::AlgNone | JwtError::Hmac | JwtError::UnsupportedAlgorithm => "unsupported algorithm",
            JwtError::AlgorithmNotAllowed(_) => "algorithm not allowed",
            JwtError::CriticalHeader => "unsupported critical header",
            JwtError::UnknownKid | JwtError::NoFittingKey => "unknown signing key",
            JwtError::BadSignature => "invalid signature",
            JwtError::WrongIssuer => "issuer not accepted",
            JwtError::WrongAudience => "audience not accepted",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::KeysUnavailable => "signing keys unavailable",
        }
    }
}

/// A verified token's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    payload: Map<String, Value>,
    expires: Option<SystemTime>,
    not_before: Option<SystemTime>,
    /// The claim headers of the provider that verified them, made once per token rather than
    /// once per request (`provider` names that provider).
    headers: Vec<(HeaderName, HeaderValue)>,
    provider: u64,
}

impl Claims {
    /// The claim named `path`: a top-level name first (names may hold dots, as URIs do), else a
    /// dotted path through nested objects (`realm.role`).
    pub fn get(&self, path: &str) -> Option<&Value> {
        claim_at(&self.payload, path)
    }

    /// Whether the claim at `path` holds `value`: equal to it as a string, an element of it as
    /// an array, or one of its words as a space-separated string (OAuth's `scope`).
    pub fn contains(&self, path: &str, value: &str) -> bool {
        match self.get(path) {
            Some(Value::String(s)) => s == value || s.split(' ').any(|word| word == value),
            Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(value)),
            _ => false,
        }
    }

    pub fn subject(&self) -> Option<&str> {
        self.payload.get("sub").and_then(Value::as_str)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The whole payload.
    pub fn payload(&self) -> &Map<String, Value> {
        &self.payload
    }
}

/// The JOSE header members read here; serde refuses a header with a member twice.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// One configured provider, ready for requests.
#[derive(Debug)]
pub struct JwtProvider {
    config: JwtProviderConfig,
    keys: Arc<KeySet>,
    cache: VerifiedCache,
    /// Signatures checked (cache misses that got that far).
    verifications: AtomicU64,
    /// `Bearer realm="…"`, the start of every challenge.
    realm: String,
    /// Tells this provider's claims from another's.
    id: u64,
}

impl JwtProvider {
    pub fn new(config: JwtProviderConfig, keys: Arc<KeySet>) -> Result<Self, JwtConfigError> {
        let provider = || config.name.clone();
        if config.issuer.is_empty() {
            return Err(JwtConfigError::EmptyIssuer { provider: provider() });
        }
        if config.algorithms.is_empty() {
            return Err(JwtConfigError::NoAlgorithm { provider: provider() });
        }
        if let Some((_, header)) = config
            .claims_to_headers
            .iter()
            .find(|(claim, _)| claim.is_empty())
        {
            return Err(JwtConfigError::EmptyClaim {
                provider: provider(),
                header: header.clone(),
            });
        }
        if let TokenSource::Cookie(name) = &config.token_from {
            let token_char = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
            if name.is_empty() || !name.bytes().all(token_char) {
                return Err(JwtConfigError::BadCookieName {
                    provider: provider(),
                    name: name.clone(),
                });
            }
        }
        let realm = format!("Bearer realm=\"{}\"", quoted_string_content(&config.name));
        Ok(JwtProvider {
            config,
            keys,
            cache: VerifiedCache::new(DEFAULT_CACHE_CAPACITY),
            verifications: AtomicU64::new(0),
            realm,
            id: {
                static NEXT_ID: AtomicU64 = AtomicU64::new(1);
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    /// The same provider remembering at most `capacity` verified tokens (0: none).
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = VerifiedCache::new(capacity);
        self
    }

    pub fn config(&self) -> &JwtProviderConfig {
        &self.config
    }

    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Signatures checked so far; a cached token adds none.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Verified tokens held in the cache now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// The verified claims of the request's token. `Ok(None)`: the request carries no token
    /// where this provider looks for one.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<Arc<Claims>>, JwtError> {
        let Some(token) = self.extract(headers)? else {
            return Ok(None);
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("longer than accepted"));
        }
        let generation = self.keys.generation();
        if let Some(claims) = self.cache.get(token, now, generation) {
            return Ok(Some(claims));
        }
        let claims = Arc::new(self.verify(token, now)?);
        let valid_until = match claims.expires {
            Some(expires) => expires.checked_add(self.config.clock_skew),
            None => now.checked_add(NO_EXPIRY_CACHE_TTL),
        };
        if let Some(valid_until) = valid_until {
            self.cache
                .insert(token, claims.clone(), now, valid_until, generation);
        }
        Ok(Some(claims))
    }

    /// Removes the client's own copies of the claim headers, then sets them from `claims`. A
    /// claim that is absent, or whose value cannot be a header value, leaves its header unset.
    pub fn set_claim_headers(&self, claims: &Claims, headers: &mut HeaderMap) {
        self.strip_claim_headers(headers);
        if claims.provider == self.id {
            for (name, value) in &claims.headers {
                headers.append(name.clone(), value.clone());
            }
        } else {
            for (name, value) in self.claim_headers(&claims.payload) {
                headers.append(name, value);
            }
        }
    }

    /// The claim headers for a payload: strings as they are, arrays of strings joined with
    /// commas, other values as JSON.
    fn claim_headers(&self, payload: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.config.claims_to_headers.len());
        for (claim, name) in &self.config.claims_to_headers {
            let Some(value) = claim_at(payload, claim) else {
                continue;
            };
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Array(items) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Null => continue,
                other => other.to_string(),
            };
            match HeaderValue::try_from(text) {
                Ok(value) => out.push((name.clone(), value)),
                Err(_) => {
                    tracing::debug!(provider = %self.config.name, claim = %claim, "claim not representable as a header value");
                }
            }
        }
        out
    }

    /// Removes every header that [`set_claim_headers`](Self::set_claim_headers) sets, so that a
    /// request without a verified token carries no client-made claims either.
    pub fn strip_claim_headers(&self, headers: &mut HeaderMap) {
        for (_, name) in &self.config.claims_to_headers {
            headers.remove(name);
        }
    }

    /// The `WWW-Authenticate` value for a 401 (RFC 6750 §3): the realm, and for a refused token
    /// `error="invalid_token"` with a fixed description.
    pub fn challenge(&self, error: Option<&JwtError>) -> HeaderValue {
        let text = match error {
            Some(error) if !error.is_server_side() => format!(
                "{}, error=\"invalid_token\", error_description=\"{}\"",
                self.realm,
                error.description()
            ),
            _ => self.realm.clone(),
        };
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The token in the request, where this provider looks for it.
    fn extract<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, JwtError> {
        match &self.config.token_from {
            TokenSource::AuthorizationBearer => {
                let mut found = None;
                for value in headers.get_all(header::AUTHORIZATION) {
                    let Some(token) = value.to_str().ok().and_then(bearer_token) else {
                        continue;
                    };
                    if found.replace(token).is_some() {
                        return Err(JwtError::Malformed("more than one bearer token"));
                    }
                }
                Ok(found)
            }
            TokenSource::Header(name) => {
                let mut values = headers.get_all(name).iter();
                let Some(value) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(JwtError::Malformed("more than one token header"));
                }
                let value = value
                    .to_str()
                    .map_err(|_| JwtError::Malformed("not visible ASCII"))?
                    .trim();
                Ok(Some(bearer_token(value).unwrap_or(value)).filter(|t| !t.is_empty()))
            }
            TokenSource::Cookie(name) => {
                for value in headers.get_all(header::COOKIE) {
                    let Ok(value) = value.to_str() else { continue };
                    for pair in value.split(';') {
                        if let Some((key, token)) = pair.trim().split_once('=')
                            && key == name
                        {
                            let token = token.trim_matches('"');
                            return Ok(Some(token).filter(|t| !t.is_empty()));
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    /// Full verification of a token not found in the cache.
    fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let header: JoseHeader = serde_json::from_slice(&decode(header_b64)?)
            .map_err(|_| JwtError::Malformed("the header is not a JOSE header"))?;
        let alg = match header.alg.as_str() {
            "none" => return Err(JwtError::AlgNone),
            hmac if hmac.starts_with("HS") => return Err(JwtError::Hmac),
            name => name
                .parse::<Algorithm>()
                .map_err(|_| JwtError::UnsupportedAlgorithm)?,
        };
        if !self.config.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed(alg));
        }
        // No extension is understood, so any critical one must be refused (RFC 7515 §4.1.11).
        if header.crit.is_some() {
            return Err(JwtError::CriticalHeader);
        }
        let signature = decode(signature_b64)?;
        let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];

        let keys = self.keys.load();
        if !keys.is_loaded() {
            self.keys.request_refetch();
            return Err(JwtError::KeysUnavailable);
        }
        let kid = header.kid.as_deref();
        let mut candidates = keys.candidates(alg, kid).peekable();
        if candidates.peek().is_none() {
            return Err(match kid {
                Some(kid) if !keys.has_kid(kid) => {
                    self.keys.request_refetch();
                    JwtError::UnknownKid
                }
                _ => JwtError::NoFittingKey,
            });
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        if !candidates.any(|key| key.verify(alg, signed, &signature)) {
            return Err(JwtError::BadSignature);
        }

        let payload: Map<String, Value> = serde_json::from_slice(&decode(payload_b64)?)
            .map_err(|_| JwtError::Malformed("the payload is not a JSON object"))?;
        let claims = Claims {
            expires: numeric_date(&payload, "exp")?,
            not_before: numeric_date(&payload, "nbf")?,
            headers: self.claim_headers(&payload),
            provider: self.id,
            payload,
        };
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, now: SystemTime) -> Result<(), JwtError> {
        if claims.issuer() != Some(self.config.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        if !self.config.audiences.is_empty() {
            let accepted = |aud: &Value| {
                aud.as_str()
                    .is_some_and(|a| self.config.audiences.iter().any(|x| x == a))
            };
            let ok = match claims.payload.get("aud") {
                Some(Value::Array(items)) => items.iter().any(accepted),
                Some(aud) => accepted(aud),
                None => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        let skew = self.config.clock_skew;
        if let Some(expires) = claims.expires
            && expires.checked_add(skew).is_some_and(|limit| now >= limit)
        {
            return Err(JwtError::Expired);
        }
        if let Some(not_before) = claims.not_before
            && now.checked_add(skew).is_some_and(|late| late < not_before)
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// The claim named `path` in `payload` (see [`Claims::get`]).
fn claim_at<'p>(payload: &'p Map<String, Value>, path: &str) -> Option<&'p Value> {
    if let Some(value) = payload.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = payload.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The token of an `Authorization` value with the `Bearer` scheme (any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn decode(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))
}

/// A NumericDate claim (seconds since the epoch, RFC 7519 §2), if present.
fn numeric_date(payload: &Map<String, Value>, claim: &'static str) -> Result<Option<SystemTime>, JwtError> {
    let Some(value) = payload.get(claim) else {
        return Ok(None);
    };
    let seconds = value
        .as_f64()
        .ok_or(JwtError::Malformed("a time claim is not a number"))?;
    if seconds <= 0.0 {
        return Ok(Some(UNIX_EPOCH));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .map(Some)
        .ok_or(JwtError::Malformed("a time claim is out of range"))
}

/// `text` made safe inside a quoted-string: quotes and backslashes escaped, controls dropped.
fn quoted_string_content(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_control() && c.is_ascii()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
