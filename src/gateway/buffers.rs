//! The buffers client connections read requests into and write responses from, lent by the
//! worker's pool only while bytes are in flight.
//!
//! An idle keep-alive connection holds none: it waits for readiness with no buffer and takes one
//! only when the client's bytes can be read (as nginx frees an idle connection's buffers). The
//! pool keeps a bounded number of free buffers per worker, so a busy worker reuses the same few
//! and a hundred thousand idle connections cost no buffer memory.

use std::{
    cell::RefCell,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a read buffer holds when it is lent: one read of a request's head, usually all of it.
pub const READ_BUFFER: usize = 8 * 1024;
/// What a write buffer holds when it is lent: a response's head and its first body bytes.
pub const WRITE_BUFFER: usize = 8 * 1024;
/// Free buffers of each kind a worker keeps for reuse; more are freed.
const KEPT: usize = 64;
/// A buffer grown past this (a large head, a batch of body) is freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 16 * 1024;

/// One worker's buffers, as the metrics read them. Only the worker's thread writes them.
#[derive(Debug, Default)]
pub struct BufferCounts {
    lent: AtomicUsize,
    pooled: AtomicUsize,
}

impl BufferCounts {
    /// Buffers held by connections now: ones with bytes in flight.
    pub fn lent(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }

    /// Free buffers kept for reuse.
    pub fn pooled(&self) -> usize {
        self.pooled.load(Ordering::Relaxed)
    }

    // One writer (the pool's thread): a plain load and store, no locked instruction per request.
    fn add(counter: &AtomicUsize, delta: isize) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add_signed(delta),
            Ordering::Relaxed,
        );
    }
}

#[derive(Default)]
struct Pool {
    reads: Vec<BytesMut>,
    writes: Vec<Vec<u8>>,
    counts: Arc<BufferCounts>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// Counts this thread's buffers in `counts` from now on (a worker, at its start).
pub fn count_on_this_thread(counts: Arc<BufferCounts>) {
    POOL.with_borrow_mut(|pool| {
        BufferCounts::add(&counts.lent, pool.counts.lent() as isize);
        BufferCounts::add(&counts.pooled, pool.counts.pooled() as isize);
        pool.counts = counts;
    });
}

/// A read buffer lent by this thread's pool; dropping it gives it back.
#[derive(Debug)]
pub struct ReadBuffer(BytesMut);

impl ReadBuffer {
    /// A buffer with room for [`READ_BUFFER`] bytes.
    pub fn take() -> Self {
        POOL.with_borrow_mut(|pool| {
            BufferCounts::add(&pool.counts.lent, 1);
            match pool.reads.pop() {
                Some(buf) => {
                    BufferCounts::add(&pool.counts.pooled, -1);
                    Self(buf)
                }
                None => Self(BytesMut::with_capacity(READ_BUFFER)),
            }
        })
    }

    pub fn bytes(&mut self) -> &mut BytesMut {
        &mut self.0
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes, no longer lent (the pool gets nothing back).
    pub fn into_inner(mut self) -> BytesMut {
        std::mem::take(&mut self.0)
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        POOL.with_borrow_mut(|pool| {
            BufferCounts::add(&pool.counts.lent, -1);
            // Nothing to give back (taken whole by `into_inner`), or bytes a request still needs.
            if buf.capacity() == 0 || !buf.is_empty() || pool.reads.len() >= KEPT {
                return;
            }
            // Parts of the storage may still be shared with a request's head: the storage comes
            // back whole only once it is this buffer's alone, else a new one is made.
            buf.reserve(READ_BUFFER);
            if buf.capacity() <= MAX_KEPT_CAPACITY {
                BufferCounts::add(&pool.counts.pooled, 1);
                pool.reads.push(buf);
            }
        });
    }
}

/// A write buffer lent by this thread's pool; dropping it gives it back.
#[derive(Debug)]
pub struct WriteBuffer(Vec<u8>);

impl WriteBuffer {
    /// An empty buffer with room for [`WRITE_BUFFER`] bytes.
    pub fn take() -> Self {
        POOL.with_borrow_mut(|pool| {
            BufferCounts::add(&pool.counts.lent, 1);
            match pool.writes.pop() {
                Some(buf) => {
                    BufferCounts::add(&pool.counts.pooled, -1);
                    Self(buf)
                }
                None => Self(Vec::with_capacity(WRITE_BUFFER)),
            }
        })
    }

    pub fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for WriteBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        POOL.with_borrow_mut(|pool| {
            BufferCounts::add(&pool.counts.lent, -1);
            if pool.writes.len() < KEPT && buf.capacity() <= MAX_KEPT_CAPACITY {
                buf.clear();
                BufferCounts::add(&pool.counts.pooled, 1);
                pool.writes.push(buf);
            }
        });
    }
}

/// Waits for `stream` to have bytes and reads them into a buffer lent for that read: while the
/// stream has nothing, the buffer goes back to the pool between polls, so a connection waiting
/// here (an idle keep-alive one) holds no buffer.
pub async fn read_when_ready<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(ReadBuffer, usize)> {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut lent = ReadBuffer::take();
        // The read future only wraps a `poll_read`: made and polled once per wake-up, it leaves
        // nothing behind when the stream has nothing yet (the stream keeps the waker).
        let polled = pin!(stream.read_buf(lent.bytes())).poll(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => Poll::Ready(result.map(|n| (lent, n))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Arc<BufferCounts> {
        let counts = Arc::new(BufferCounts::default());
        count_on_this_thread(counts.clone());
        counts
    }

    #[test]
    fn lent_buffers_are_counted_until_given_back_and_then_reused() {
        let counts = counts();
        let mut read = ReadBuffer::take();
        let first = read.bytes().as_ptr();
        let write = WriteBuffer::take();
        assert_eq!((counts.lent(), counts.pooled()), (2, 0));
        drop(read);
        drop(write);
        assert_eq!((counts.lent(), counts.pooled()), (0, 2));
        let mut again = ReadBuffer::take();
        assert_eq!(again.bytes().as_ptr(), first, "the same storage, not a new one");
        assert!(again.bytes().capacity() >= READ_BUFFER);
        assert_eq!((counts.lent(), counts.pooled()), (1, 1));
    }

    #[test]
    fn a_buffer_whose_head_is_still_in_use_comes_back_as_new_storage() {
        let counts = counts();
        let mut read = ReadBuffer::take();
        read.bytes().extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = read.bytes().split().freeze();
        drop(read);
        assert_eq!((counts.lent(), counts.pooled()), (0, 1));
        let mut again = ReadBuffer::take();
        assert!(again.bytes().capacity() >= READ_BUFFER);
        assert_ne!(again.bytes().as_ptr(), head.as_ptr());
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn buffers_with_bytes_or_grown_large_are_not_kept() {
        let counts = counts();
        let mut read = ReadBuffer::take();
        read.bytes().extend_from_slice(b"left over");
        drop(read);
        let mut write = WriteBuffer::take();
        write.bytes().resize(4 * MAX_KEPT_CAPACITY, 0);
        drop(write);
        assert_eq!((counts.lent(), counts.pooled()), (0, 0));
        let kept: Vec<_> = (0..KEPT + 5).map(|_| WriteBuffer::take()).collect();
        drop(kept);
        assert_eq!(counts.pooled(), KEPT);
    }

    #[tokio::test]
    async fn a_reader_waiting_for_bytes_holds_no_buffer() {
        let counts = counts();
        let (mut client, mut server) = tokio::io::duplex(64);
        let reading = tokio::spawn(async move {
            let (mut buf, n) = read_when_ready(&mut server).await.expect("read");
            (buf.bytes().split().freeze(), n)
        });
        // The spawned reader runs on this thread (a current-thread runtime): let it wait.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(counts.lent(), 0, "nothing lent while nothing came");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"hello")
            .await
            .expect("write");
        let (bytes, n) = reading.await.expect("the reader ends");
        assert_eq!((&bytes[..], n), (&b"hello"[..], 5));
        assert_eq!(counts.lent(), 0);
    }
}
