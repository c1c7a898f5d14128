//! The bodies the gateway sends: concrete types rather than boxed ones, so that the common
//! request (a small or empty body) and the common answer (an endpoint's body passed through)
//! cost no allocation of their own.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{Either, combinators::BoxBody};
use hyper::body::{Body, Frame, SizeHint};

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body streamed from the client, too large to keep for a retry. (Its error is a concrete
/// type: a boxed one would not satisfy the HTTP/2 client's bounds.)
pub type Streamed = BoxBody<Bytes, std::io::Error>;

/// A body held whole in memory, sent as one frame (`None`: empty, or already sent).
pub struct Whole(Option<Bytes>);

impl Whole {
    pub fn new(bytes: Bytes) -> Self {
        Self((!bytes.is_empty()).then_some(bytes))
    }

    pub fn empty() -> Self {
        Self(None)
    }

    /// What it holds, shared (empty once sent).
    pub fn bytes(&self) -> Bytes {
        self.0.clone().unwrap_or_default()
    }
}

impl Body for Whole {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// A request body as an endpoint gets it: kept whole, or streamed from the client.
pub type OutgoingBody = Either<Whole, Streamed>;
