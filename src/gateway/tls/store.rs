//! The certificates of the Secrets HTTPS listeners name, each kept at its last good version.
//!
//! A Secret is parsed again only when its resourceVersion changes. A change that breaks it
//! (bad PEM, a key that is not the certificate's, expiry) or its deletion leaves the last good
//! certificate in service and records the problem, which the listener's status then reports.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use rustls::sign::CertifiedKey;

use super::{
    certificate::{self, CertificateError},
    validity::read_validity,
};

/// A Secret by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Default)]
struct Entry {
    /// The resourceVersion last parsed (`None`: the Secret was missing).
    parsed: Option<String>,
    last_good: Option<Arc<CertifiedKey>>,
    problem: Option<CertificateError>,
}

#[derive(Debug, Default)]
pub struct CertificateStore {
    entries: HashMap<SecretKey, Entry>,
}

impl CertificateStore {
    /// Brings the `wanted` Secrets' entries up to date from `lookup` (the watched Secrets) at
    /// `now`, and forgets the Secrets no longer wanted.
    pub fn refresh(
        &mut self,
        wanted: impl IntoIterator<Item = SecretKey>,
        lookup: impl Fn(&SecretKey) -> Option<Arc<Secret>>,
        now: SystemTime,
    ) {
        let provider = super::provider();
        let mut kept = HashMap::with_capacity(self.entries.len());
        for key in wanted {
            if kept.contains_key(&key) {
                continue;
            }
            let mut entry = self.entries.remove(&key).unwrap_or_default();
            match lookup(&key) {
                None => {
                    entry.parsed = None;
                    entry.problem = Some(CertificateError::NotFound);
                }
                Some(secret) => {
                    let version = secret.resource_version();
                    if entry.parsed.is_none() || entry.parsed != version {
                        entry.parsed = version;
                        match certificate::from_secret(&secret, &provider, now) {
                            Ok(certified) => {
                                entry.last_good = Some(certified);
                                entry.problem = None;
                            }
                            Err(problem) => {
                                tracing::warn!(secret = %key.name, namespace = %key.namespace, %problem,
                                    "certificate Secret not usable; the last good certificate stays in service");
                                entry.problem = Some(problem);
                            }
                        }
                    } else if entry.problem.is_none()
                        && let Some(expired) = expiry(entry.last_good.as_deref(), now)
                    {
                        // Unchanged, but its certificate has run out since it was parsed.
                        entry.problem = Some(expired);
                    }
                }
            }
            kept.insert(key, entry);
        }
        self.entries = kept;
    }

    /// The certificate to serve for `key`: the last good one, if there ever was one.
    pub fn certificate(&self, key: &SecretKey) -> Option<Arc<CertifiedKey>> {
        self.entries.get(key).and_then(|e| e.last_good.clone())
    }

    /// What is wrong with the Secret `key` now, if anything.
    pub fn problem(&self, key: &SecretKey) -> Option<&CertificateError> {
        self.entries.get(key).and_then(|e| e.problem.as_ref())
    }
}

fn expiry(certified: Option<&CertifiedKey>, now: SystemTime) -> Option<CertificateError> {
    let leaf = certified?.cert.first()?;
    let validity = read_validity(leaf).ok()?;
    (now > validity.not_after).then(|| CertificateError::Expired(httpdate::fmt_http_date(validity.not_after)))
}
