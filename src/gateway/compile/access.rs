//! AccessPolicies into [`AccessControl`]s, with the Secrets and ConfigMaps they name.
//!
//! A policy is compiled again only when it or an object it reads changes (its generation, the
//! resource versions of its Secrets and ConfigMaps): route tables are rebuilt on every endpoint change, and a
//! recompiled policy would lose its caches (verified passwords and tokens) and its buckets.
//! A policy that cannot be enforced compiles into one that refuses every request, and says why
//! in its status.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Resource, ResourceExt};

use super::super::{
    http::path_match::{PathMatcher, method_of},
    policy::{
        access::{AccessControl, Authenticator},
        authorize::{Authorizer, Rule},
        cors::Cors,
        credentials::{ApiKeySet, ApiKeys, BasicAuth},
        jwks::{Algorithm, KeySet},
        jwt::{JwtProvider, JwtProviderConfig, TokenSource},
        rate_limit::{
            Buckets, GlobalRateLimit, KeyedLimit, Limit, LimitKey, LocalRateLimit, RedisLimiter,
            WhenUnreachable, keyed::LOCAL_MAX_KEYS,
        },
    },
};
use crate::api::access_policy::{
    AccessPolicy, AccessPolicySpec, ApiKeys as ApiKeysSpec, AuthorizationAction, BasicAuth as BasicAuthSpec,
    JwtAlgorithm, JwtProvider as JwtProviderSpec, RateLimit as RateLimitSpec, RateLimitKey, RateLimitScope,
    TokenFrom, WhenUnreachable as WhenUnreachableSpec,
};

/// How a compile reads the objects policies name, by namespace and name.
pub struct Lookups<'a> {
    pub secret: &'a dyn Fn(&str, &str) -> Option<Arc<Secret>>,
    pub config_map: &'a dyn Fn(&str, &str) -> Option<Arc<ConfigMap>>,
}

/// A policy by namespace and name.
pub type PolicyKey = (String, String);

/// What the gateway made of one AccessPolicy.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub control: Arc<AccessControl>,
    pub spec: AccessPolicySpec,
    pub generation: Option<i64>,
    /// What it was compiled from: its uid and generation, and the versions of what it read.
    fingerprint: Vec<Option<String>>,
}

impl CompiledPolicy {
    /// The CORS policy for a route that names this policy.
    pub fn cors(&self) -> Option<Cors> {
        self.spec.cors.as_ref().map(|c| {
            Cors::new(
                &c.allow_origins,
                c.allow_credentials.unwrap_or(false),
                &c.allow_methods,
                &c.allow_headers,
                &c.expose_headers,
                Some(c.max_age),
            )
        })
    }
}

/// Every AccessPolicy the gateway can see, compiled; kept across route tables.
#[derive(Debug, Default)]
pub struct AccessPolicies {
    compiled: HashMap<PolicyKey, CompiledPolicy>,
    /// Where `Global` rate limits keep their buckets; without it they cannot be enforced.
    redis: Option<Arc<RedisLimiter>>,
}

impl AccessPolicies {
    /// Policies whose `Global` rate limits keep their buckets in `redis`.
    pub fn new(redis: Option<Arc<RedisLimiter>>) -> Self {
        Self {
            compiled: HashMap::new(),
            redis,
        }
    }

    /// Compiles what changed of `policies`, reading what they name through `lookups`.
    pub fn refresh(&mut self, policies: &[Arc<AccessPolicy>], lookups: &Lookups<'_>) {
        let mut compiled = HashMap::with_capacity(policies.len());
        for policy in policies {
            let namespace = policy.namespace().unwrap_or_default();
            let key = (namespace.clone(), policy.name_any());
            let mut fingerprint = vec![policy.uid(), policy.meta().generation.map(|g| g.to_string())];
            fingerprint.extend(
                secrets_read(&policy.spec)
                    .iter()
                    .map(|name| (lookups.secret)(&namespace, name).and_then(|s| s.resource_version())),
            );
            fingerprint.extend(
                config_maps_read(&policy.spec)
                    .iter()
                    .map(|name| (lookups.config_map)(&namespace, name).and_then(|c| c.resource_version())),
            );
            let entry = match self.compiled.remove(&key) {
                Some(entry) if entry.fingerprint == fingerprint => entry,
                _ => {
                    let id: Arc<str> = format!("{}/{}", key.0, key.1).into();
                    let control = compile(&id, &namespace, &policy.spec, lookups, self.redis.as_ref()).unwrap_or_else(|why| {
                        tracing::warn!(policy = %id, %why, "access policy cannot be enforced: routes naming it refuse every request");
                        AccessControl::refusing(id.clone(), why)
                    });
                    CompiledPolicy {
                        control: Arc::new(control),
                        spec: policy.spec.clone(),
                        generation: policy.meta().generation,
                        fingerprint,
                    }
                }
            };
            compiled.insert(key, entry);
        }
        self.compiled = compiled;
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&CompiledPolicy> {
        self.compiled.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PolicyKey, &CompiledPolicy)> {
        self.compiled.iter()
    }
}

/// The Secrets a policy reads, by name (in its namespace).
fn secrets_read(spec: &AccessPolicySpec) -> Vec<&str> {
    let Some(authentication) = &spec.authentication else {
        return Vec::new();
    };
    let api_keys = authentication.api_keys.iter().map(|k| k.secret_ref.name.as_str());
    let basic = authentication
        .basic_auth
        .iter()
        .map(|b| b.secret_ref.name.as_str());
    let jwks = authentication
        .jwt
        .iter()
        .filter_map(|p| p.jwks.secret_ref.as_ref())
        .map(|r| r.name.as_str());
    api_keys.chain(basic).chain(jwks).collect()
}

/// The ConfigMaps a policy reads, by name (in its namespace).
fn config_maps_read(spec: &AccessPolicySpec) -> Vec<&str> {
    spec.authentication
        .iter()
        .flat_map(|a| &a.jwt)
        .filter_map(|p| p.jwks.config_map_ref.as_ref())
        .map(|r| r.name.as_str())
        .collect()
}

/// One policy, or why it cannot be enforced.
fn compile(
    id: &str,
    namespace: &str,
    spec: &AccessPolicySpec,
    lookups: &Lookups<'_>,
    redis: Option<&Arc<RedisLimiter>>,
) -> Result<AccessControl, String> {
    let secret = lookups.secret;
    let mut authentication = Vec::new();
    if let Some(spec) = &spec.authentication {
        for provider in &spec.jwt {
            authentication.push(Authenticator::Jwt(jwt_provider(namespace, provider, lookups)?));
        }
        if let Some(keys) = &spec.api_keys {
            authentication.push(Authenticator::ApiKeys(api_keys(namespace, keys, secret)?));
        }
        if let Some(basic) = &spec.basic_auth {
            authentication.push(Authenticator::Basic(basic_auth(namespace, basic, secret)?));
        }
    }
    let authorization = spec.authorization.as_ref().map(authorizer).transpose()?;
    let limits = spec
        .rate_limits
        .iter()
        .map(|limit| rate_limit(id, limit, redis))
        .collect::<Result<_, _>>()?;
    Ok(AccessControl {
        id: id.into(),
        unenforceable: None,
        authentication,
        authorization,
        limits,
    })
}

/// How long a `Global` limit waits for Redis before its `whenUnreachable` decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

fn rate_limit(
    policy: &str,
    spec: &RateLimitSpec,
    redis: Option<&Arc<RedisLimiter>>,
) -> Result<KeyedLimit, String> {
    let count = |n: i64| u32::try_from(n.clamp(1, i64::from(u32::MAX))).unwrap_or(u32::MAX);
    let limit = Limit {
        requests: count(spec.requests),
        per: spec.per.get(),
        burst: count(spec.burst.unwrap_or(spec.requests)),
    };
    let key = match &spec.key {
        Some(RateLimitKey {
            header: Some(header), ..
        }) => LimitKey::Header(http::HeaderName::try_from(header.as_str()).map_err(|_| {
            format!(
                "rateLimits {}: key.header {header:?} is not a header name",
                spec.name
            )
        })?),
        Some(RateLimitKey {
            claim: Some(claim), ..
        }) => LimitKey::Claim(claim.clone()),
        _ => LimitKey::ClientIp,
    };
    let buckets = match spec.scope {
        RateLimitScope::Local => Buckets::Local(LocalRateLimit::new(limit, LOCAL_MAX_KEYS)),
        RateLimitScope::Global => {
            let redis = redis.ok_or_else(|| {
                format!(
                    "rate limit {} is Global, and the gateway has no Redis to keep it in (--redis-url)",
                    spec.name
                )
            })?;
            let when_unreachable = match spec.when_unreachable {
                WhenUnreachableSpec::Allow => WhenUnreachable::Allow,
                WhenUnreachableSpec::Deny => WhenUnreachable::Deny,
            };
            // The policy's uid is not in the key: replicas must agree on it, and a policy
            // deleted and created again under its name is the same limit to its users.
            let prefix = format!("microgate:{policy}/{}:", spec.name);
            Buckets::Global(GlobalRateLimit::new(
                redis.clone(),
                prefix,
                limit,
                when_unreachable,
                REDIS_TIMEOUT,
            ))
        }
    };
    Ok(KeyedLimit::new(spec.name.clone(), limit, key, buckets))
}

fn jwt_provider(
    namespace: &str,
    spec: &JwtProviderSpec,
    lookups: &Lookups<'_>,
) -> Result<JwtProvider, String> {
    let context = |what: String| format!("jwt provider {}: {what}", spec.name);
    let keys = match (
        &spec.jwks.secret_ref,
        &spec.jwks.config_map_ref,
        &spec.jwks.remote,
    ) {
        (Some(reference), _, _) => {
            let found = secret_data(namespace, &reference.name, lookups.secret).map_err(context)?;
            let data = found
                .data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .ok_or_else(|| {
                    context(format!(
                        "Secret {namespace}/{} has no key {}",
                        reference.name, reference.key
                    ))
                })?;
            key_set(&String::from_utf8_lossy(&data.0)).map_err(context)?
        }
        (None, Some(reference), _) => {
            let found = (lookups.config_map)(namespace, &reference.name)
                .ok_or_else(|| context(format!("ConfigMap {namespace}/{} does not exist", reference.name)))?;
            let text = found
                .data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .ok_or_else(|| {
                    context(format!(
                        "ConfigMap {namespace}/{} has no key {}",
                        reference.name, reference.key
                    ))
                })?;
            key_set(text).map_err(context)?
        }
        (None, None, Some(remote)) => {
            let url = http::Uri::try_from(remote.url.as_str())
                .map_err(|_| context(format!("jwks.remote.url {:?} is not a URL", remote.url)))?;
            let (keys, refresh) = KeySet::remote(
                url,
                remote.refresh_interval.get(),
                remote.min_refetch_interval.get(),
            );
            // The task ends by itself once the key set is dropped (the policy changed or went).
            tokio::spawn(refresh);
            keys
        }
        (None, None, None) => return Err(context("jwks names no key set".to_owned())),
    };
    let token_from = match &spec.token_from {
        Some(TokenFrom {
            header: Some(name), ..
        }) => TokenSource::Header(
            http::HeaderName::try_from(name.as_str())
                .map_err(|_| context(format!("tokenFrom.header {name:?} is not a header name")))?,
        ),
        Some(TokenFrom {
            cookie: Some(name), ..
        }) => TokenSource::Cookie(name.clone()),
        _ => TokenSource::AuthorizationBearer,
    };
    let claims_to_headers = spec
        .claims_to_headers
        .iter()
        .map(|c| {
            http::HeaderName::try_from(c.header.as_str())
                .map(|header| (c.claim.clone(), header))
                .map_err(|_| context(format!("claimsToHeaders: {:?} is not a header name", c.header)))
        })
        .collect::<Result<_, _>>()?;
    let config = JwtProviderConfig {
        name: spec.name.clone(),
        issuer: spec.issuer.clone(),
        audiences: spec.audiences.clone(),
        algorithms: spec.algorithms.iter().map(|a| algorithm(*a)).collect(),
        clock_skew: spec.clock_skew.get(),
        token_from,
        claims_to_headers,
    };
    JwtProvider::new(config, keys).map_err(|e| e.to_string())
}

/// A key set from a JWKS document held in a Secret or ConfigMap.
fn key_set(text: &str) -> Result<Arc<KeySet>, String> {
    KeySet::from_jwks_json(text).map_err(|e| format!("the key set is not usable: {e}"))
}

fn algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::RS256 => Algorithm::Rs256,
        JwtAlgorithm::RS384 => Algorithm::Rs384,
        JwtAlgorithm::RS512 => Algorithm::Rs512,
        JwtAlgorithm::PS256 => Algorithm::Ps256,
        JwtAlgorithm::ES256 => Algorithm::Es256,
        JwtAlgorithm::ES384 => Algorithm::Es384,
        JwtAlgorithm::EdDSA => Algorithm::EdDsa,
    }
}

/// The data of Secret `name`, or why it cannot be read.
fn secret_data(
    namespace: &str,
    name: &str,
    secret: &dyn Fn(&str, &str) -> Option<Arc<Secret>>,
) -> Result<Arc<Secret>, String> {
    secret(namespace, name).ok_or_else(|| format!("Secret {namespace}/{name} does not exist"))
}

fn api_keys(
    namespace: &str,
    spec: &ApiKeysSpec,
    secret: &dyn Fn(&str, &str) -> Option<Arc<Secret>>,
) -> Result<ApiKeys, String> {
    let name = &spec.secret_ref.name;
    let found = secret_data(namespace, name, secret)?;
    let data = found.data.iter().flatten();
    let keys = ApiKeySet::new(data.map(|(client, key)| (client.as_str(), key.0.as_slice())));
    if keys.is_empty() {
        return Err(format!(
            "Secret {namespace}/{name} holds no API key (each data entry is one client's key)"
        ));
    }
    let header = http::HeaderName::try_from(spec.header.as_str())
        .map_err(|_| format!("apiKeys.header {:?} is not a header name", spec.header))?;
    Ok(ApiKeys { header, keys })
}

fn basic_auth(
    namespace: &str,
    spec: &BasicAuthSpec,
    secret: &dyn Fn(&str, &str) -> Option<Arc<Secret>>,
) -> Result<BasicAuth, String> {
    let name = &spec.secret_ref.name;
    let found = secret_data(namespace, name, secret)?;
    let file = found
        .data
        .as_ref()
        .and_then(|d| d.get(&spec.key))
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {}", spec.key))?;
    let text = std::str::from_utf8(&file.0)
        .map_err(|_| format!("Secret {namespace}/{name} key {} is not text", spec.key))?;
    BasicAuth::new(text, &spec.realm).map_err(|e| format!("Secret {namespace}/{name} key {}: {e}", spec.key))
}

fn authorizer(spec: &crate::api::access_policy::Authorization) -> Result<Authorizer, String> {
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let client_cidrs = rule
                .client_cidrs
                .iter()
                .map(|c| {
                    parse_cidr(c).ok_or_else(|| format!("authorization.rules[{index}]: {c:?} is not a CIDR"))
                })
                .collect::<Result<_, _>>()?;
            let paths = rule
                .paths
                .iter()
                .map(|p| {
                    PathMatcher::compile(p.kind, &p.value)
                        .map_err(|e| format!("authorization.rules[{index}].paths: {e}"))
                })
                .collect::<Result<_, _>>()?;
            Ok(Rule {
                name: rule
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rule-{index}"))
                    .into(),
                allow: rule.action == AuthorizationAction::Allow,
                client_cidrs,
                methods: rule.methods.iter().copied().map(method_of).collect(),
                paths,
                claims: rule
                    .claims
                    .iter()
                    .map(|c| (c.name.clone(), c.values.clone()))
                    .collect(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Authorizer {
        rules,
        default_allow: spec.default_action == AuthorizationAction::Allow,
    })
}

/// A CIDR, or a lone address as its own /32 or /128.
fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}
