//! Tokens signed here with keys generated here (RSA by `openssl genpkey`, which the test
//! requirements install; EC and Ed25519 by ring), verified by providers over static and remote
//! key sets. The remote key sets are served by a real HTTP server on 127.0.0.1.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents},
};
use serde_json::{Value, json};

use super::*;
use crate::gateway::policy::jwks::KeySetState;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "orders";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    kid: String,
    pair: Pair,
}

/// A 2048-bit RSAPrivateKey (PKCS#1 DER, what `genpkey -outform DER` writes), made once.
fn rsa_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        let output = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl must be installed to generate the RSA test key (.ci/run installs it)");
        assert!(
            output.status.success(),
            "openssl genpkey failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    })
}

impl TestKey {
    fn rsa(kid: &str) -> TestKey {
        let pair = RsaKeyPair::from_der(rsa_der()).expect("openssl's RSAPrivateKey");
        TestKey {
            kid: kid.into(),
            pair: Pair::Rsa(pair),
        }
    }

    fn ec(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256 key");
        TestKey {
            kid: kid.into(),
            pair: Pair::Ec(pair),
        }
    }

    fn ed(kid: &str) -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
        TestKey {
            kid: kid.into(),
            pair: Pair::Ed(pair),
        }
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
            Pair::Ed(_) => "EdDSA",
        }
    }

    /// The public key as a JWK.
    fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(pair) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Pair::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Pair::Ed(pair) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    /// The bytes an attacker would try as an HMAC secret: the public key itself.
    fn public_bytes(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Rsa(pair) => pair.public().as_ref().to_vec(),
            Pair::Ec(pair) => pair.public_key().as_ref().to_vec(),
            Pair::Ed(pair) => pair.public_key().as_ref().to_vec(),
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .expect("RSA signature");
                out
            }
            Pair::Ec(pair) => pair
                .sign(&rng, message)
                .expect("ECDSA signature")
                .as_ref()
                .to_vec(),
            Pair::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }

    /// A token with this key's alg and kid over `claims`.
    fn token(&self, claims: &Value) -> String {
        self.token_with_header(&json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}), claims)
    }

    fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.sign(signed.as_bytes());
        format!("{signed}.{}", b64(&signature))
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Claims valid for an hour from now.
fn claims() -> Value {
    let now = unix(now());
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 3600,
           "scope": "orders:read orders:write", "realm": {"role": "admin"}, "groups": ["a", "b"]})
}

fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    if let (Some(map), Value::Object(changes)) = (claims.as_object_mut(), changes) {
        map.extend(changes);
    }
    claims
}

fn config() -> JwtProviderConfig {
    JwtProviderConfig {
        name: "example".into(),
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec![Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa],
        clock_skew: Duration::from_secs(30),
        token_from: TokenSource::AuthorizationBearer,
        claims_to_headers: vec![
            ("sub".into(), HeaderName::from_static("x-user")),
            ("realm.role".into(), HeaderName::from_static("x-role")),
            ("groups".into(), HeaderName::from_static("x-groups")),
        ],
    }
}

fn provider(keys: &[&TestKey]) -> JwtProvider {
    provider_with(config(), keys)
}

fn provider_with(config: JwtProviderConfig, keys: &[&TestKey]) -> JwtProvider {
    JwtProvider::new(config, KeySet::from_jwks_json(&jwks(keys)).expect("valid JWKS")).expect("valid config")
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).expect("token"),
    );
    headers
}

fn check(provider: &JwtProvider, token: &str) -> Result<Option<Arc<Claims>>, JwtError> {
    provider.authenticate(&bearer(token), now())
}

#[test]
fn valid_rsa_ec_and_ed25519_tokens_give_their_claims_and_set_the_claim_headers() {
    let keys = [TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d")];
    let provider = provider(&keys.iter().collect::<Vec<_>>());
    for key in &keys {
        let claims = check(&provider, &key.token(&claims()))
            .unwrap_or_else(|e| panic!("{} token refused: {e}", key.alg()))
            .expect("a token was sent");
        assert_eq!(claims.subject(), Some("alice"));
        assert!(claims.expires().is_some());

        let mut headers = bearer("x");
        headers.insert("x-user", HeaderValue::from_static("mallory"));
        headers.append("x-role", HeaderValue::from_static("root"));
        headers.append("x-role", HeaderValue::from_static("root2"));
        provider.set_claim_headers(&claims, &mut headers);
        let all = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-user"), ["alice"]);
        assert_eq!(all("x-role"), ["admin"]);
        assert_eq!(all("x-groups"), ["a,b"]);
    }
}

#[test]
fn ps256_and_es384_tokens_verify_when_allowed() {
    let rsa = TestKey::rsa("r");
    let rng = SystemRandom::new();
    let p384 = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(p384, &rng).expect("P-384 key");
    let ec384 = EcdsaKeyPair::from_pkcs8(p384, pkcs8.as_ref(), &rng).expect("P-384 key");
    let point = ec384.public_key().as_ref();
    let jwk384 = json!({"kty": "EC", "kid": "e384", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..97])});
    let keys = KeySet::from_jwks_json(&json!({"keys": [rsa.jwk(), jwk384]}).to_string()).expect("valid JWKS");
    let config = JwtProviderConfig {
        algorithms: vec![Algorithm::Ps256, Algorithm::Es384],
        ..config()
    };
    let provider = JwtProvider::new(config, keys).expect("config");

    let signed = |header: Value, sign: &dyn Fn(&[u8]) -> Vec<u8>| {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        format!("{signed}.{}", b64(&sign(signed.as_bytes())))
    };
    let pss = signed(json!({"alg": "PS256", "kid": "r"}), &|message| {
        let Pair::Rsa(pair) = &rsa.pair else {
            unreachable!("an RSA key")
        };
        let mut out = vec![0; pair.public().modulus_len()];
        pair.sign(&signature::RSA_PSS_SHA256, &rng, message, &mut out)
            .expect("PSS signature");
        out
    });
    assert!(check(&provider, &pss).is_ok_and(|c| c.is_some()));
    let es384 = signed(json!({"alg": "ES384", "kid": "e384"}), &|message| {
        ec384
            .sign(&rng, message)
            .expect("ECDSA signature")
            .as_ref()
            .to_vec()
    });
    assert!(check(&provider, &es384).is_ok_and(|c| c.is_some()));
    // The same RSA key with PKCS#1 v1.5 (RS256) is not in this provider's set.
    assert_eq!(
        check(&provider, &rsa.token(&claims())),
        Err(JwtError::AlgorithmNotAllowed(Algorithm::Rs256))
    );
}

#[test]
fn claim_headers_the_token_lacks_are_removed_not_kept_from_the_client() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let mut bare = claims();
    if let Some(map) = bare.as_object_mut() {
        map.remove("realm");
    }
    let claims = check(&provider, &key.token(&bare))
        .expect("valid")
        .expect("token");
    let mut headers = HeaderMap::new();
    headers.insert("x-role", HeaderValue::from_static("root"));
    provider.set_claim_headers(&claims, &mut headers);
    assert!(headers.get("x-role").is_none());
    assert_eq!(headers.get("x-user").map(|v| v.as_bytes()), Some(&b"alice"[..]));
}

#[test]
fn claim_headers_follow_the_provider_that_sets_them() {
    let key = TestKey::ec("e");
    let first = provider(&[&key]);
    let second = provider_with(
        JwtProviderConfig {
            claims_to_headers: vec![("scope".into(), HeaderName::from_static("x-scope"))],
            ..config()
        },
        &[&key],
    );
    let claims = check(&first, &key.token(&claims()))
        .expect("valid")
        .expect("token");
    let mut headers = HeaderMap::new();
    second.set_claim_headers(&claims, &mut headers);
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(
        headers.get("x-scope").map(|v| v.as_bytes()),
        Some(&b"orders:read orders:write"[..])
    );
}

#[test]
fn claims_are_found_by_name_and_dotted_path_and_tested_for_values() {
    let key = TestKey::ed("d");
    let provider = provider(&[&key]);
    let token = key.token(&claims_with(json!({"https://example.com/tenant": "t1"})));
    let claims = check(&provider, &token).expect("valid").expect("token");
    assert_eq!(claims.get("realm.role"), Some(&json!("admin")));
    assert_eq!(claims.get("https://example.com/tenant"), Some(&json!("t1")));
    assert_eq!(claims.get("realm.missing"), None);
    assert!(claims.contains("scope", "orders:write"));
    assert!(!claims.contains("scope", "orders"));
    assert!(claims.contains("groups", "b"));
    assert!(claims.contains("sub", "alice"));
    assert!(!claims.contains("sub", "bob"));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_outside_the_clock_skew() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let now = unix(now());
    let expired = key.token(&claims_with(json!({"exp": now - 31})));
    assert_eq!(check(&provider, &expired), Err(JwtError::Expired));
    let early = key.token(&claims_with(json!({"nbf": now + 60})));
    assert_eq!(check(&provider, &early), Err(JwtError::NotYetValid));

    let just_expired = key.token(&claims_with(json!({"exp": now - 10})));
    assert!(
        check(&provider, &just_expired).is_ok_and(|c| c.is_some()),
        "within 30 s skew"
    );
    let almost_valid = key.token(&claims_with(json!({"nbf": now + 10})));
    assert!(
        check(&provider, &almost_valid).is_ok_and(|c| c.is_some()),
        "within 30 s skew"
    );
}

#[test]
fn a_cached_token_is_refused_once_it_expires() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let start = now();
    let token = key.token(&claims_with(json!({"exp": unix(start) + 5})));
    assert!(provider.authenticate(&bearer(&token), start).is_ok());
    assert!(
        provider
            .authenticate(&bearer(&token), start + Duration::from_secs(20))
            .is_ok()
    );
    assert_eq!(
        provider.authenticate(&bearer(&token), start + Duration::from_secs(40)),
        Err(JwtError::Expired)
    );
}

#[test]
fn wrong_issuer_and_wrong_audience_are_refused() {
    let key = TestKey::rsa("r");
    let provider = provider(&[&key]);
    let token = key.token(&claims_with(json!({"iss": "https://evil.example"})));
    assert_eq!(check(&provider, &token), Err(JwtError::WrongIssuer));
    let token = key.token(&claims_with(json!({"aud": "payments"})));
    assert_eq!(check(&provider, &token), Err(JwtError::WrongAudience));
    let token = key.token(&claims_with(json!({"aud": ["payments", AUDIENCE]})));
    assert!(
        check(&provider, &token).is_ok_and(|c| c.is_some()),
        "one of several audiences"
    );
    let mut no_aud = claims();
    if let Some(map) = no_aud.as_object_mut() {
        map.remove("aud");
    }
    assert_eq!(
        check(&provider, &key.token(&no_aud)),
        Err(JwtError::WrongAudience)
    );

    let any_audience = provider_with(
        JwtProviderConfig {
            audiences: vec![],
            ..config()
        },
        &[&key],
    );
    assert!(check(&any_audience, &key.token(&no_aud)).is_ok_and(|c| c.is_some()));
}

#[test]
fn alg_none_is_refused() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let header = b64(json!({"alg": "none", "kid": "e"}).to_string().as_bytes());
    let payload = b64(claims().to_string().as_bytes());
    assert_eq!(
        check(&provider, &format!("{header}.{payload}.")),
        Err(JwtError::AlgNone)
    );
    // Signed or not, `none` decides before any key is looked at.
    let signed = key.token_with_header(&json!({"alg": "none", "kid": "e"}), &claims());
    assert_eq!(check(&provider, &signed), Err(JwtError::AlgNone));
}

#[test]
fn hs256_signed_with_the_public_key_as_secret_is_refused() {
    for key in [TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d")] {
        let provider = provider(&[&key]);
        for secret in [key.public_bytes(), key.jwk().to_string().into_bytes()] {
            let header = b64(json!({"alg": "HS256", "kid": key.kid}).to_string().as_bytes());
            let signed = format!("{header}.{}", b64(claims().to_string().as_bytes()));
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
                signed.as_bytes(),
            );
            let token = format!("{signed}.{}", b64(mac.as_ref()));
            assert_eq!(check(&provider, &token), Err(JwtError::Hmac));
        }
    }
}

#[test]
fn an_algorithm_outside_the_allowed_set_is_refused() {
    let key = TestKey::rsa("r");
    let es_only = provider_with(
        JwtProviderConfig {
            algorithms: vec![Algorithm::Es256],
            ..config()
        },
        &[&key],
    );
    assert_eq!(
        check(&es_only, &key.token(&claims())),
        Err(JwtError::AlgorithmNotAllowed(Algorithm::Rs256))
    );
    let unknown = key.token_with_header(&json!({"alg": "RS1", "kid": "r"}), &claims());
    assert_eq!(check(&es_only, &unknown), Err(JwtError::UnsupportedAlgorithm));
}

#[test]
fn the_key_must_fit_the_tokens_algorithm() {
    let rsa = TestKey::rsa("r");
    let ec = TestKey::ec("e");
    let provider = provider(&[&rsa, &ec]);
    // An ES256 header naming the RSA key: the key is not of the algorithm's type.
    let header = json!({"alg": "ES256", "kid": "r"});
    assert_eq!(
        check(&provider, &ec.token_with_header(&header, &claims())),
        Err(JwtError::NoFittingKey)
    );

    // A key that names its algorithm verifies no other.
    let mut jwk = rsa.jwk();
    jwk["alg"] = json!("RS384");
    let keys = KeySet::from_jwks_json(&json!({"keys": [jwk]}).to_string()).expect("valid JWKS");
    let pinned = JwtProvider::new(config(), keys).expect("valid config");
    assert_eq!(check(&pinned, &rsa.token(&claims())), Err(JwtError::NoFittingKey));
}

#[test]
fn an_unknown_kid_is_refused_and_a_token_without_kid_tries_the_fitting_keys() {
    let first = TestKey::ec("e1");
    let second = TestKey::ec("e2");
    let provider = provider(&[&first, &second]);
    let stranger = TestKey::ec("e3");
    assert_eq!(
        check(&provider, &stranger.token(&claims())),
        Err(JwtError::UnknownKid)
    );

    let token = second.token_with_header(&json!({"alg": "ES256"}), &claims());
    assert!(check(&provider, &token).is_ok_and(|c| c.is_some()));
    let token = stranger.token_with_header(&json!({"alg": "ES256"}), &claims());
    assert_eq!(check(&provider, &token), Err(JwtError::BadSignature));
}

#[test]
fn tampered_malformed_and_critical_tokens_are_refused() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let token = key.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = b64(claims_with(json!({"sub": "root"})).to_string().as_bytes());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(check(&provider, &forged), Err(JwtError::BadSignature));
    assert!(matches!(check(&provider, "a.b"), Err(JwtError::Malformed(_))));
    assert!(matches!(
        check(&provider, &format!("{token}.x.y")),
        Err(JwtError::Malformed(_))
    ));
    assert!(matches!(check(&provider, "%%%.a.b"), Err(JwtError::Malformed(_))));
    let crit = key.token_with_header(
        &json!({"alg": "ES256", "kid": "e", "crit": ["exp"], "exp": 1}),
        &claims(),
    );
    assert_eq!(check(&provider, &crit), Err(JwtError::CriticalHeader));
    let long = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert!(matches!(check(&provider, &long), Err(JwtError::Malformed(_))));
}

#[test]
fn tokens_are_taken_from_the_configured_place_only() {
    let key = TestKey::ed("d");
    let token = key.token(&claims());
    let bearer_provider = provider(&[&key]);
    let mut headers = HeaderMap::new();
    assert_eq!(bearer_provider.authenticate(&headers, now()), Ok(None));
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    assert_eq!(bearer_provider.authenticate(&headers, now()), Ok(None));
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("bearer  {token}")).expect("value"),
    );
    assert!(
        bearer_provider
            .authenticate(&headers, now())
            .is_ok_and(|c| c.is_some())
    );
    headers.append(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).expect("value"),
    );
    assert!(matches!(
        bearer_provider.authenticate(&headers, now()),
        Err(JwtError::Malformed(_))
    ));

    let header_provider = provider_with(
        JwtProviderConfig {
            token_from: TokenSource::Header(HeaderName::from_static("x-token")),
            ..config()
        },
        &[&key],
    );
    let mut headers = bearer(&token);
    assert_eq!(header_provider.authenticate(&headers, now()), Ok(None));
    headers.insert("x-token", HeaderValue::try_from(token.clone()).expect("value"));
    assert!(
        header_provider
            .authenticate(&headers, now())
            .is_ok_and(|c| c.is_some())
    );

    let cookie_provider = provider_with(
        JwtProviderConfig {
            token_from: TokenSource::Cookie("session".into()),
            ..config()
        },
        &[&key],
    );
    let mut headers = bearer(&token);
    assert_eq!(cookie_provider.authenticate(&headers, now()), Ok(None));
    headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; sessionx=1"));
    assert_eq!(cookie_provider.authenticate(&headers, now()), Ok(None));
    headers.append(
        header::COOKIE,
        HeaderValue::try_from(format!("a=b; session={token}; c=d")).expect("value"),
    );
    assert!(
        cookie_provider
            .authenticate(&headers, now())
            .is_ok_and(|c| c.is_some())
    );
}

#[test]
fn challenges_follow_rfc_6750_and_carry_no_part_of_the_token() {
    let key = TestKey::ec("e");
    let provider = provider_with(
        JwtProviderConfig {
            name: "shop \"api\"".into(),
            ..config()
        },
        &[&key],
    );
    assert_eq!(provider.challenge(None), "Bearer realm=\"shop \\\"api\\\"\"");
    assert_eq!(
        provider.challenge(Some(&JwtError::Expired)),
        "Bearer realm=\"shop \\\"api\\\"\", error=\"invalid_token\", error_description=\"token expired\""
    );
    assert_eq!(
        provider.challenge(Some(&JwtError::KeysUnavailable)),
        provider.challenge(None)
    );
}

#[test]
fn invalid_configurations_are_refused() {
    let keys = KeySet::not_loaded("none yet".into());
    let refuse = |config: JwtProviderConfig| JwtProvider::new(config, keys.clone()).err();
    assert!(matches!(
        refuse(JwtProviderConfig {
            issuer: String::new(),
            ..config()
        }),
        Some(JwtConfigError::EmptyIssuer { .. })
    ));
    assert!(matches!(
        refuse(JwtProviderConfig {
            algorithms: vec![],
            ..config()
        }),
        Some(JwtConfigError::NoAlgorithm { .. })
    ));
    assert!(matches!(
        refuse(JwtProviderConfig {
            token_from: TokenSource::Cookie("a;b".into()),
            ..config()
        }),
        Some(JwtConfigError::BadCookieName { .. })
    ));
    assert_eq!(
        "HS256".parse::<Algorithm>(),
        Err(UnknownAlgorithm("HS256".into()))
    );
    assert_eq!("none".parse::<Algorithm>(), Err(UnknownAlgorithm("none".into())));
    assert_eq!("EdDSA".parse::<Algorithm>(), Ok(Algorithm::EdDsa));
}

#[test]
fn a_provider_whose_keys_never_loaded_fails_closed() {
    let key = TestKey::ec("e");
    let provider =
        JwtProvider::new(config(), KeySet::not_loaded("Secret jwks not found".into())).expect("config");
    assert_eq!(
        check(&provider, &key.token(&claims())),
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(
        provider.keys().state(),
        KeySetState::NotLoaded {
            error: "Secret jwks not found".into()
        }
    );
    provider.keys().replace(&jwks(&[&key])).expect("valid JWKS");
    assert!(check(&provider, &key.token(&claims())).is_ok_and(|c| c.is_some()));
}

#[test]
fn the_same_token_twice_is_verified_once() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let token = key.token(&claims());
    let first = check(&provider, &token).expect("valid").expect("token");
    let second = check(&provider, &token).expect("valid").expect("token");
    assert_eq!(provider.verifications(), 1);
    assert!(Arc::ptr_eq(&first, &second));
    // A different token of the same claims is a different entry.
    let other = key.token(&claims_with(json!({"jti": "2"})));
    check(&provider, &other).expect("valid");
    assert_eq!(provider.verifications(), 2);
}

#[test]
fn the_cache_holds_no_more_than_its_capacity() {
    let key = TestKey::ed("d");
    let provider = provider(&[&key]).with_cache_capacity(32);
    for i in 0..200 {
        check(&provider, &key.token(&claims_with(json!({"jti": i})))).expect("valid");
        assert!(
            provider.cached_tokens() <= 32,
            "{} cached after {i}",
            provider.cached_tokens()
        );
    }
    assert_eq!(provider.verifications(), 200);
    assert!(
        provider.cached_tokens() > 16,
        "the cache is used: {}",
        provider.cached_tokens()
    );
}

#[test]
fn removing_a_key_ends_the_cached_tokens_it_signed() {
    let old = TestKey::ec("old");
    let new = TestKey::ec("new");
    let provider = provider(&[&old, &new]);
    let token = old.token(&claims());
    check(&provider, &token).expect("valid");
    check(&provider, &token).expect("valid");
    assert_eq!(provider.verifications(), 1);
    provider.keys().replace(&jwks(&[&new])).expect("valid JWKS");
    assert_eq!(check(&provider, &token), Err(JwtError::UnknownKid));
    assert!(provider.keys().replace("{\"keys\": 1}").is_err());
    match provider.keys().state() {
        KeySetState::Loaded {
            keys: 1,
            last_error: Some(_),
            ..
        } => {}
        other => panic!("the last good keys serve: {other:?}"),
    }
    assert!(check(&provider, &new.token(&claims())).is_ok_and(|c| c.is_some()));
}

// === remote key sets ===

/// A JWKS endpoint on 127.0.0.1 that counts its fetches and can be stopped.
struct JwksServer {
    url: http::Uri,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("address"))
            .parse()
            .expect("url");
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicU64::new(0));
        let (served, counted) = (body.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: stopping the server ends them too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                let service = hyper::service::service_fn(move |_request| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let text = served.lock().map(|b| b.clone()).unwrap_or_default();
                    async move {
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(text),
                        )))
                    }
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        JwksServer {
            url,
            body,
            fetches,
            task,
        }
    }

    fn serve(&self, text: String) {
        *self.body.lock().expect("not poisoned") = text;
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_remote_key_set_follows_rotation_refetches_at_most_once_per_interval_and_survives_its_url_going_down()
 {
    let first = TestKey::ec("k1");
    let second = TestKey::rsa("k2");
    let server = JwksServer::start(jwks(&[&first])).await;
    let min_refetch = Duration::from_secs(1);
    let (keys, refresher) = KeySet::remote(server.url.clone(), Duration::from_secs(3600), min_refetch);
    let refresher = tokio::spawn(refresher);
    // No cache: every check below is a real verification against the keys held now.
    let provider = JwtProvider::new(config(), keys.clone())
        .expect("config")
        .with_cache_capacity(0);

    eventually("the key set loads", || {
        matches!(keys.state(), KeySetState::Loaded { .. })
    })
    .await;
    assert_eq!(server.fetches(), 1);
    assert!(check(&provider, &first.token(&claims())).is_ok_and(|c| c.is_some()));

    // Tokens signed beforehand, so that the checks below take microseconds, well inside
    // min_refetch, however slow signing is on a loaded machine.
    let rotated = second.token(&claims());
    let forged = TestKey::ec("k3");
    let second_unknown = forged.token(&claims());
    let flood: Vec<String> = (0..1000)
        .map(|i| forged.token_with_header(&json!({"alg": "ES256", "kid": format!("forged-{i}")}), &claims()))
        .collect();

    // Rotation: the new kid is refused at once and asks for one refetch.
    server.serve(jwks(&[&first, &second]));
    let asked = Instant::now();
    assert_eq!(check(&provider, &rotated), Err(JwtError::UnknownKid));
    // A second unknown kid within min_refetch: refused, and no second fetch.
    for _ in 0..100 {
        assert_eq!(check(&provider, &second_unknown), Err(JwtError::UnknownKid));
    }
    assert!(
        asked.elapsed() < min_refetch,
        "the checks took {:?}",
        asked.elapsed()
    );
    eventually("the rotated set is fetched", || server.fetches() == 2).await;
    assert!(
        check(&provider, &rotated).is_ok_and(|c| c.is_some()),
        "the new kid verifies after one refetch"
    );
    tokio::time::sleep(min_refetch * 2).await;
    assert_eq!(
        server.fetches(),
        2,
        "the second unknown kid caused no fetch of its own"
    );

    // A flood of forged kids after the interval: exactly one more fetch.
    let start = Instant::now();
    for token in &flood {
        assert_eq!(check(&provider, token), Err(JwtError::UnknownKid));
    }
    let took = start.elapsed();
    assert!(took < min_refetch, "the flood took {took:?}");
    eventually("the flood's one refetch", || server.fetches() == 3).await;
    tokio::time::sleep(min_refetch * 2).await;
    assert_eq!(server.fetches(), 3, "1000 forged kids in {took:?} made one fetch");

    // The URL goes down: the next refetch fails and the last good keys keep serving.
    server.task.abort();
    let _ = server.task.await;
    assert_eq!(
        check(&provider, &forged.token(&claims())),
        Err(JwtError::UnknownKid)
    );
    eventually("the failed fetch is recorded", || {
        matches!(
            keys.state(),
            KeySetState::Loaded {
                keys: 2,
                last_error: Some(_),
                ..
            }
        )
    })
    .await;
    assert!(check(&provider, &first.token(&claims_with(json!({"jti": "a"})))).is_ok_and(|c| c.is_some()));
    assert!(check(&provider, &second.token(&claims_with(json!({"jti": "b"})))).is_ok_and(|c| c.is_some()));

    drop(provider);
    drop(keys);
    tokio::time::timeout(Duration::from_secs(5), refresher)
        .await
        .expect("the refresher ends once its key set is dropped")
        .expect("the refresher did not panic");
}

#[tokio::test]
async fn a_remote_key_set_that_never_loads_refuses_every_token() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url: http::Uri = format!("http://{}/jwks.json", listener.local_addr().expect("address"))
        .parse()
        .expect("url");
    drop(listener);
    let (keys, refresher) = KeySet::remote(url, Duration::from_secs(3600), Duration::from_millis(100));
    let refresher = tokio::spawn(refresher);
    let provider = JwtProvider::new(config(), keys.clone()).expect("config");
    eventually("the fetch fails", || {
        keys.fetches() >= 1
            && matches!(keys.state(), KeySetState::NotLoaded { ref error } if error.contains("fetching"))
    })
    .await;
    let key = TestKey::ec("e");
    assert_eq!(
        check(&provider, &key.token(&claims())),
        Err(JwtError::KeysUnavailable)
    );
    refresher.abort();
}

/// The cost of `authenticate` for an ES256 token: the first time (signature checked) and once
/// cached. Prints ns/op; run with `cargo test --release --lib jwt::tests::cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn cost_of_authenticate_es256_first_time_and_cached() {
    let key = TestKey::ec("e");
    let provider = provider(&[&key]);
    let rounds = 2000;
    let tokens: Vec<HeaderMap> = (0..rounds)
        .map(|i| bearer(&key.token(&claims_with(json!({"jti": i})))))
        .collect();
    let now = now();
    let start = Instant::now();
    for headers in &tokens {
        assert!(provider.authenticate(headers, now).is_ok());
    }
    let first = start.elapsed() / rounds;
    let headers = &tokens[0];
    let cached_rounds = 200_000;
    let start = Instant::now();
    for _ in 0..cached_rounds {
        assert!(provider.authenticate(std::hint::black_box(headers), now).is_ok());
    }
    let cached = start.elapsed() / cached_rounds;
    let claims = provider
        .authenticate(headers, now)
        .ok()
        .flatten()
        .expect("verified");
    let mut request = headers.clone();
    let start = Instant::now();
    for _ in 0..cached_rounds {
        provider.set_claim_headers(std::hint::black_box(&claims), &mut request);
    }
    let headers_cost = start.elapsed() / cached_rounds;
    println!("setting 3 claim headers: {} ns/op", headers_cost.as_nanos());
    let length = headers.get(header::AUTHORIZATION).map_or(0, |v| v.len());
    println!(
        "ES256 authenticate, {length}-byte header: first time {} ns/op, cached {} ns/op",
        first.as_nanos(),
        cached.as_nanos()
    );
}
