//! The data plane's threads: one single-threaded runtime per worker.
//!
//! Each worker accepts on a socket of its own for every port (`SO_REUSEPORT`: the kernel spreads
//! new connections over them), and a connection, every request on it and the endpoint
//! connections those requests use stay on that worker: no work stealing and no wake-ups across
//! threads, as in nginx's or HAProxy's workers. The Kubernetes watches and the admin endpoints
//! run on the process's main runtime.

use std::{
    cell::Cell,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};

use super::buffers::{self, BufferCounts};

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The most workers started at once in this process (1 until some are): per-worker state made
/// later has a slot for each.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The worker this thread is (0 on any other thread).
pub fn current() -> usize {
    WORKER.get().unwrap_or(0)
}

/// How many workers there are: per-worker state is made this many times.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The running workers; dropping this stops them.
pub struct Workers {
    handles: Vec<Handle>,
    stop: Vec<oneshot::Sender<()>>,
    buffers: Vec<Arc<BufferCounts>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let count = count.max(1);
        COUNT.fetch_max(count, Ordering::Relaxed);
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        let mut buffer_counts = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop_sender, stopped) = oneshot::channel::<()>();
            stop.push(stop_sender);
            let counts = Arc::new(BufferCounts::default());
            buffer_counts.push(counts.clone());
            thread::Builder::new()
                .name(format!("microgate-worker-{index}"))
                .spawn(move || {
                    WORKER.set(Some(index));
                    buffers::count_on_this_thread(counts);
                    // Runs the tasks spawned onto it until told to stop; the rest are dropped.
                    runtime.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            () = release_freed_memory() => {}
                        }
                    });
                })?;
        }
        Ok(Self {
            handles,
            stop,
            buffers: buffer_counts,
        })
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Each worker's client connection buffers (see [`buffers`]).
    pub fn buffer_counts(&self) -> impl Iterator<Item = Arc<BufferCounts>> + '_ {
        self.buffers.iter().cloned()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// How often a worker hands the memory it freed back to the system.
const RELEASE_EVERY: Duration = Duration::from_secs(1);

/// Hands the memory this worker freed back to the system, now and then, for ever. The allocator
/// does so by itself only while it is called: a worker that falls quiet after a burst (thousands
/// of clients served once, whose connections then wait parked without a task) would keep the
/// burst's memory for as long as it stays quiet.
async fn release_freed_memory() {
    let mut every = tokio::time::interval(RELEASE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        microgate_allocator::release_freed_memory();
    }
}

/// The number of workers to run when none is asked for: the CPUs this process may use.
pub fn default_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_index_and_other_threads_are_worker_zero() {
        let workers = Workers::start(2).expect("start workers");
        assert_eq!(current(), 0);
        assert!(count() >= 2);
        let count = workers.handles().len();
        let mut seen = Vec::new();
        for handle in workers.handles() {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                let _ = tx.send(current());
            });
            seen.push(rx.recv().expect("the worker answers"));
        }
        assert_eq!(seen, (0..count).collect::<Vec<_>>());
    }
}
