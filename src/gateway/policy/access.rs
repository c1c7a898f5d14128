//! One AccessPolicy, compiled: the checks a request passes, in order, before a route forwards it.
//!
//! 1. authentication: the first method whose credential the request carries decides (a
//!    present but invalid credential is a 401, not a reason to try the next); none present is
//!    a 401 that challenges for each method;
//! 2. authorization: the first rule that holds decides (403);
//! 3. rate limits: every limit must have a token for the request (429).
//!
//! A policy that cannot be enforced (a Secret missing, keys that never loaded) refuses every
//! request: a route never falls open because its policy broke.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use prometheus_client::metrics::counter::Counter;

use crate::gateway::metrics::GatewayMetrics;

use super::{
    authorize::{self, Authorizer, Subject},
    credentials::{ApiKeys, BasicAuth, Checked},
    jwks::KeySetState,
    jwt::{Claims, JwtProvider},
    rate_limit::{Decision, KeyedLimit, keyed::Keys},
};

/// The header that tells the service which client (API key name or basic-auth user) called.
/// A client's own copy is always removed.
pub static CLIENT_HEADER: HeaderName = HeaderName::from_static("x-microgate-client");

/// One way of proving who the caller is.
#[derive(Debug)]
pub enum Authenticator {
    Jwt(JwtProvider),
    ApiKeys(ApiKeys),
    Basic(BasicAuth),
}

/// Who a request proved it is.
struct Identity {
    /// The API key's or basic-auth user's name, or the token's subject.
    caller: Arc<str>,
    /// The verified token's claims, when a JWT proved it.
    claims: Option<Arc<Claims>>,
}

/// What one method makes of a request's credentials.
enum Attempt {
    Absent,
    Valid(Identity),
    /// Present but wrong: why, and the method's own challenge saying so (a JWT's, RFC 6750).
    Invalid(&'static str, Option<HeaderValue>),
    /// The method cannot check anything now (a key set that never loaded).
    Unavailable(&'static str),
}

impl authorize::Claims for Claims {
    fn contains(&self, name: &str, value: &str) -> bool {
        Claims::contains(self, name, value)
    }
}

impl Authenticator {
    /// The `WWW-Authenticate` challenge a 401 carries for this method.
    fn challenge(&self) -> HeaderValue {
        match self {
            Authenticator::Jwt(provider) => provider.challenge(None),
            Authenticator::ApiKeys(keys) => {
                HeaderValue::try_from(format!("ApiKey header=\"{}\"", keys.header))
                    .unwrap_or_else(|_| HeaderValue::from_static("ApiKey"))
            }
            Authenticator::Basic(basic) => basic.challenge.clone(),
        }
    }

    async fn check(&self, headers: &HeaderMap) -> Attempt {
        let checked = match self {
            Authenticator::Jwt(provider) => {
                return match provider.authenticate(headers, SystemTime::now()) {
                    Ok(None) => Attempt::Absent,
                    Ok(Some(claims)) => {
                        let caller = claims.subject().unwrap_or(&provider.config().name).into();
                        Attempt::Valid(Identity {
                            caller,
                            claims: Some(claims),
                        })
                    }
                    Err(error) if error.is_server_side() => Attempt::Unavailable(error.reason()),
                    Err(error) => Attempt::Invalid(error.reason(), Some(provider.challenge(Some(&error)))),
                };
            }
            Authenticator::ApiKeys(keys) => keys.check(headers),
            Authenticator::Basic(basic) => basic.check(headers).await,
        };
        match checked {
            Checked::Absent => Attempt::Absent,
            Checked::Valid(caller) => Attempt::Valid(Identity { caller, claims: None }),
            Checked::Invalid(why) => Attempt::Invalid(why, None),
        }
    }
}

/// How a check ended, as metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Unauthenticated,
    Forbidden,
    Limited,
    /// The policy could not be enforced; the request was refused.
    Unenforceable,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::Limited,
        Outcome::Unenforceable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::Limited => "limited",
            Outcome::Unenforceable => "unenforceable",
        }
    }
}

/// One route's access decisions, counted by outcome (in the order of [`Outcome::ALL`]).
#[derive(Clone, Debug)]
pub struct AccessMetrics([Counter; 5]);

impl AccessMetrics {
    /// The counters of `route` (one with an access policy), resolved once per table.
    pub fn new(metrics: &GatewayMetrics, route: &str) -> Self {
        Self(Outcome::ALL.map(|outcome| metrics.access_decisions(route, outcome.label())))
    }

    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].inc();
    }
}

/// A refused request: the answer's status, its reason code, and its extra headers.
#[derive(Debug)]
pub struct Denial {
    pub outcome: Outcome,
    pub status: StatusCode,
    /// A short code for `x-microgate-reason` and the access log (never a credential).
    pub code: &'static str,
    /// A line for the client.
    pub message: String,
    /// What the access log says of it (e.g. the rule that denied).
    pub detail: Option<Arc<str>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A request let through.
#[derive(Debug, Default)]
pub struct Granted {
    /// Who called (the API key's name, the basic-auth user, or the token's subject), for the
    /// access log.
    pub caller: Option<Arc<str>>,
    /// Headers the answer carries (the rate limits' state).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// A compiled AccessPolicy.
#[derive(Debug)]
pub struct AccessControl {
    /// `namespace/name`.
    pub id: Arc<str>,
    /// Set: why the policy cannot be enforced; every request is refused with 500.
    pub unenforceable: Option<String>,
    pub authentication: Vec<Authenticator>,
    pub authorization: Option<Authorizer>,
    pub limits: Vec<KeyedLimit>,
}

impl AccessControl {
    /// A policy that refuses every request, saying `why`.
    pub fn refusing(id: Arc<str>, why: String) -> Self {
        Self {
            id,
            unenforceable: Some(why),
            authentication: Vec::new(),
            authorization: None,
            limits: Vec::new(),
        }
    }

    /// What keeps the policy from being enforced now besides [`Self::unenforceable`]: JWT
    /// providers whose key sets have not loaded (their tokens are refused with 503 meanwhile).
    pub fn problems(&self) -> Vec<String> {
        self.authentication
            .iter()
            .filter_map(|method| match method {
                Authenticator::Jwt(provider) => match provider.keys().state() {
                    KeySetState::NotLoaded { error } => Some(format!(
                        "jwt provider {}: its key set has not loaded ({error})",
                        provider.config().name
                    )),
                    KeySetState::Loaded { .. } => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Checks a request; on success, `headers` have the client's copies of the headers the
    /// gateway vouches for removed, and the gateway's set.
    pub async fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &mut HeaderMap,
        client_ip: IpAddr,
    ) -> Result<Granted, Denial> {
        if self.unenforceable.is_some() {
            return Err(Denial {
                outcome: Outcome::Unenforceable,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "access-policy-unenforceable",
                message: format!("the route's access policy {} cannot be enforced", self.id),
                detail: None,
                headers: Vec::new(),
            });
        }
        let mut granted = Granted::default();
        let mut claims = None;
        if !self.authentication.is_empty() {
            // Only the gateway speaks for the caller: the client's own copies go.
            headers.remove(&CLIENT_HEADER);
            for method in &self.authentication {
                if let Authenticator::Jwt(provider) = method {
                    provider.strip_claim_headers(headers);
                }
            }
            let (identity, provider) = self.authenticate(headers).await?;
            if let (Some(provider), Some(verified)) = (provider, &identity.claims) {
                provider.set_claim_headers(verified, headers);
            }
            if let Ok(value) = HeaderValue::from_str(&identity.caller) {
                headers.insert(CLIENT_HEADER.clone(), value);
            }
            granted.caller = Some(identity.caller);
            claims = identity.claims;
        }
        if let Some(authorizer) = &self.authorization {
            let decision = authorizer.decide(&Subject {
                client_ip,
                method,
                path,
                claims: claims.as_deref().map(|c| c as &dyn authorize::Claims),
            });
            if !decision.allow {
                return Err(Denial {
                    outcome: Outcome::Forbidden,
                    status: StatusCode::FORBIDDEN,
                    code: "forbidden",
                    message: "the access policy does not allow this request".to_owned(),
                    detail: Some(decision.rule.unwrap_or_else(|| Arc::from("default"))),
                    headers: Vec::new(),
                });
            }
        }
        if !self.limits.is_empty() {
            let claim = |name: &str| {
                claims.as_ref()?.get(name).map(|value| match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            };
            let keys = Keys {
                client_ip,
                headers,
                claim: &claim,
            };
            granted.response_headers = self.limit(&keys).await?;
        }
        Ok(granted)
    }

    /// Takes a token from each limit's bucket: the headers of the tightest limit, or the 429 of
    /// the first that refuses.
    async fn limit(&self, keys: &Keys<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Denial> {
        let mut tightest: Option<(&KeyedLimit, Decision)> = None;
        for limit in &self.limits {
            let decision = limit.check(keys).await;
            if !decision.allowed {
                return Err(Denial {
                    outcome: Outcome::Limited,
                    status: StatusCode::TOO_MANY_REQUESTS,
                    code: "rate-limited",
                    message: format!("rate limit {} reached; retry later", limit.name),
                    detail: Some(limit.name.as_str().into()),
                    headers: limit.headers(&decision),
                });
            }
            if tightest.is_none_or(|(_, t)| decision.remaining < t.remaining) {
                tightest = Some((limit, decision));
            }
        }
        Ok(tightest
            .map(|(limit, decision)| limit.headers(&decision))
            .unwrap_or_default())
    }

    /// The first method whose credential the request carries decides; with a JWT, also the
    /// provider that verified it.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<(Identity, Option<&JwtProvider>), Denial> {
        for method in &self.authentication {
            match method.check(headers).await {
                Attempt::Absent => continue,
                Attempt::Valid(identity) => {
                    let provider = match method {
                        Authenticator::Jwt(provider) => Some(provider),
                        _ => None,
                    };
                    return Ok((identity, provider));
                }
                Attempt::Invalid(why, challenge) => {
                    let mut denial = self.unauthenticated(why, "the request's credentials are not valid");
                    if let Some(challenge) = challenge {
                        denial.headers = vec![(header::WWW_AUTHENTICATE, challenge)];
                    }
                    return Err(denial);
                }
                Attempt::Unavailable(why) => {
                    return Err(Denial {
                        outcome: Outcome::Unenforceable,
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        code: why,
                        message: "the gateway cannot check this request's token now".to_owned(),
                        detail: None,
                        headers: vec![(header::WWW_AUTHENTICATE, method.challenge())],
                    });
                }
            }
        }
        Err(self.unauthenticated("credentials-missing", "the request carries no credentials"))
    }

    fn unauthenticated(&self, code: &'static str, message: &str) -> Denial {
        Denial {
            outcome: Outcome::Unauthenticated,
            status: StatusCode::UNAUTHORIZED,
            code,
            message: message.to_owned(),
            detail: None,
            headers: self
                .authentication
                .iter()
                .map(|method| (header::WWW_AUTHENTICATE, method.challenge()))
                .collect(),
        }
    }
}
