//! microgate's memory allocator, mimalloc, and the one call into it that `GlobalAlloc` lacks.
//!
//! mimalloc hands freed pages back to the system (purges them) a while after they empty, and
//! only when it is called. A gateway worker that falls quiet after a burst (thousands of clients
//! served once, whose connections then wait parked) would keep the burst's memory resident for
//! as long as it stays quiet; [`release_freed_memory`] lets it give that memory back.
//!
//! This is the workspace's only crate with `unsafe` code: one foreign call that takes no
//! argument.

pub use mimalloc::MiMalloc;

/// Hands back to the system the memory this thread freed at least mimalloc's purge delay (1 s)
/// ago and has not used since, and readies what it freed since for the next call. Costs a walk
/// over this thread's heap: call it now and then, not per request.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointer and may be called on any thread at any time; where
    // mimalloc is not the global allocator (unit tests), it collects mimalloc's own empty heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(test)]
mod tests {
    use std::{
        alloc::{GlobalAlloc, Layout},
        time::Duration,
    };

    use super::*;

    /// This process's resident memory now, in bytes (Linux, 4 KiB pages).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: usize = statm
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    #[test]
    fn memory_freed_a_while_ago_is_handed_back_once_released() {
        const BLOCKS: usize = 16 * 1024;
        let layout = Layout::from_size_align(4096, 8).expect("a layout");
        let allocator = MiMalloc;
        let start = resident();
        // SAFETY: the layout is not zero-sized; each block is written within its size and freed
        // once, with the layout it was allocated with.
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|i| unsafe {
                let block = allocator.alloc(layout);
                assert!(!block.is_null(), "out of memory");
                block.write_bytes(i as u8, layout.size());
                block
            })
            .collect();
        let burst = resident();
        assert!(
            burst >= start + BLOCKS * layout.size(),
            "{burst} bytes resident after the burst"
        );
        for block in blocks {
            // SAFETY: as above.
            unsafe { allocator.dealloc(block, layout) };
        }
        // Freed, the burst's memory stays resident until released past mimalloc's purge delay.
        release_freed_memory();
        std::thread::sleep(Duration::from_millis(1500));
        release_freed_memory();
        let released = resident();
        assert!(
            released + BLOCKS * layout.size() / 2 <= burst,
            "{burst} bytes resident after the burst, {released} once released"
        );
    }
}
