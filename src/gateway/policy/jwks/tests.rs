use serde_json::json;

use super::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A modulus of `bits` bits (the parse checks sizes, not arithmetic).
fn modulus(bits: usize) -> String {
    let mut n = vec![0xc5; bits / 8];
    n.insert(0, 0);
    b64(&n)
}

fn rsa(kid: &str, bits: usize) -> serde_json::Value {
    json!({"kty": "RSA", "kid": kid, "n": modulus(bits), "e": "AQAB"})
}

fn p256(kid: &str) -> serde_json::Value {
    json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])})
}

fn loaded_keys(set: &KeySet) -> usize {
    match set.state() {
        KeySetState::Loaded { keys, .. } => keys,
        other => panic!("not loaded: {other:?}"),
    }
}

#[test]
fn symmetric_encryption_small_and_hmac_keys_are_skipped() {
    let document = json!({"keys": [
        rsa("good-rsa", 2048),
        p256("good-ec"),
        {"kty": "OKP", "kid": "good-ed", "crv": "Ed25519", "x": b64(&[3; 32])},
        {"kty": "oct", "kid": "secret", "k": b64(b"hunter2")},
        {"kty": "RSA", "kid": "hmac-labelled", "alg": "HS256", "n": modulus(2048), "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": modulus(2048), "e": "AQAB"},
        {"kty": "RSA", "kid": "wrap", "key_ops": ["wrapKey"], "n": modulus(2048), "e": "AQAB"},
        rsa("small", 1024),
        {"kty": "EC", "kid": "short", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[2; 32])},
        {"kty": "EC", "kid": "mislabelled", "alg": "RS256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64(&[3; 32])},
        "not an object",
    ]});
    let set = KeySet::from_jwks_json(&document.to_string()).expect("three usable keys");
    assert_eq!(loaded_keys(&set), 3);
    let keys = set.load();
    let kids = |alg| {
        keys.candidates(alg, None)
            .filter_map(Jwk::kid)
            .collect::<Vec<_>>()
    };
    assert_eq!(kids(Algorithm::Rs256), ["good-rsa"]);
    assert_eq!(kids(Algorithm::Ps256), ["good-rsa"]);
    assert_eq!(kids(Algorithm::Es256), ["good-ec"]);
    assert!(kids(Algorithm::Es384).is_empty());
    assert_eq!(kids(Algorithm::EdDsa), ["good-ed"]);
}

#[test]
fn a_document_without_usable_keys_is_an_error_that_says_why() {
    let error = KeySet::from_jwks_json(&json!({"keys": [rsa("small", 1024)]}).to_string())
        .expect_err("no usable key");
    let text = error.to_string();
    assert!(
        text.contains("no usable signing key") && text.contains("small") && text.contains("1024"),
        "{text}"
    );
    assert!(matches!(KeySet::from_jwks_json("{}"), Err(JwksError::Json(_))));
    assert!(matches!(KeySet::from_jwks_json("[]"), Err(JwksError::Json(_))));
}

#[test]
fn a_failed_replace_keeps_the_last_good_keys_and_generation() {
    let set = KeySet::from_jwks_json(&json!({"keys": [p256("a")]}).to_string()).expect("valid");
    let generation = set.generation();
    assert!(set.replace("not json").is_err());
    assert_eq!(loaded_keys(&set), 1);
    assert_eq!(set.generation(), generation);
    assert!(matches!(
        set.state(),
        KeySetState::Loaded {
            last_error: Some(_),
            ..
        }
    ));

    // The same keys again change nothing cached; different keys do.
    set.replace(&json!({"keys": [p256("a")]}).to_string())
        .expect("valid");
    assert_eq!(set.generation(), generation);
    assert!(matches!(
        set.state(),
        KeySetState::Loaded { last_error: None, .. }
    ));
    set.replace(&json!({"keys": [p256("b")]}).to_string())
        .expect("valid");
    assert_ne!(set.generation(), generation);
}

#[test]
fn a_remote_url_must_be_http_or_https_with_a_host() {
    for url in ["ftp://example.com/jwks", "/jwks.json"] {
        let url: Uri = url.parse().expect("a URI");
        assert!(
            matches!(fetch_client(&url), Err(JwksError::BadUrl { .. })),
            "{url}"
        );
    }
}
