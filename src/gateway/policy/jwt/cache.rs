//! Verified tokens, remembered until they expire: a fixed number of entries in shards, each
//! behind its own lock, keyed by the SHA-256 digest of the whole token. A different token has a
//! different digest (finding two with one is a break of SHA-256), so a forged token can never be
//! answered with another token's claims.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use super::Claims;

/// The SHA-256 digest of a token.
pub(super) type Digest = [u8; 32];

pub(super) fn digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Shards bound lock contention between worker threads.
const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    claims: Arc<Claims>,
    /// Expiry plus clock skew: from then on the token is refused, so it is no longer a hit.
    valid_until: SystemTime,
    /// The key set's generation it was verified under.
    generation: u64,
}

#[derive(Debug)]
pub(super) struct VerifiedCache {
    shards: Box<[Mutex<HashMap<Digest, Entry>>]>,
    per_shard: usize,
}

impl VerifiedCache {
    /// A cache holding at most `capacity` tokens (0: nothing is cached).
    pub(super) fn new(capacity: usize) -> Self {
        let shards = SHARDS.min(capacity);
        VerifiedCache {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.checked_div(shards).unwrap_or(0),
        }
    }

    fn shard(&self, digest: &Digest) -> Option<&Mutex<HashMap<Digest, Entry>>> {
        let index = usize::from(digest[0]) % self.shards.len().max(1);
        self.shards.get(index)
    }

    /// The claims of a token verified before, still valid at `now`, under keys of `generation`.
    pub(super) fn get(&self, digest: &Digest, now: SystemTime, generation: u64) -> Option<Arc<Claims>> {
        let mut shard = self.shard(digest)?.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(digest)?;
        if now < entry.valid_until && entry.generation == generation {
            return Some(entry.claims.clone());
        }
        shard.remove(digest);
        None
    }

    pub(super) fn insert(
        &self,
        digest: Digest,
        claims: Arc<Claims>,
        now: SystemTime,
        valid_until: SystemTime,
        generation: u64,
    ) {
        let Some(shard) = self.shard(&digest) else { return };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            // Full: expired entries go first; if none has, one of the others (the map's order
            // is arbitrary, so which one is not for a client to choose).
            shard.retain(|_, entry| now < entry.valid_until && entry.generation == generation);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            digest,
            Entry {
                claims,
                valid_until,
                generation,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}
