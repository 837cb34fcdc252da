//! What a front-end hands back for a request: an answer now, or a future
//! that yields it; the connection writes them in request order.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A response as the connection writes it.
#[derive(Debug)]
pub(crate) enum Response {
    /// Produce with acks=0: nothing goes back.
    None,
    Frame(Bytes),
    /// A frame whose payload is written from these buffers (vectored, no
    /// copy): the fetch path.
    Vectored {
        head: Bytes,
        payload: Vec<Bytes>,
    },
    /// Write this (if anything), then close: the stream is unusable.
    Close(Option<Bytes>),
}

impl Response {
    /// The bytes the response holds until it is written.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Response::None | Response::Close(None) => 0,
            Response::Frame(frame) | Response::Close(Some(frame)) => frame.len(),
            Response::Vectored { head, payload } => head.len() + payload.iter().map(Bytes::len).sum::<usize>(),
        }
    }
}

pub(crate) type Later = Pin<Box<dyn Future<Output = Response>>>;

pub(crate) enum Reply {
    Now(Response),
    Later(Later),
}
