//! Fast thread-local randomness for picks, retry jitter and request ids: not for secrets.

use std::{
    cell::Cell,
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
};

/// A fast thread-local random number below `n` (xorshift; not for secrets).
pub fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        if n == 0 { 0 } else { (x % n as u64) as usize }
    })
}
