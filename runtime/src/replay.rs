//! A request body that can be sent again, for retries.
//!
//! The first try streams the downstream body to the upstream as it arrives and keeps a copy
//! of what passed, up to a cap. A retry replays the copy and then goes on reading the
//! downstream body where the earlier try stopped. Past the cap the copy is dropped and the
//! request can no longer be retried, so memory stays bounded whatever the client sends; a
//! streaming call (gRPC bidi, say) is never held back waiting for its end.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::proxy::{Body, BoxError};

/// How much of a request body a retry can replay (Envoy's default buffer limit is 1 MiB).
pub const REPLAY_CAP: usize = 1 << 20;

/// One try's view of a shared downstream body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// Which try this is; only the latest reads the downstream body.
    generation: u64,
    /// Chunks of the copy this try has sent.
    position: usize,
    /// Bytes this try has sent.
    sent: u64,
    trailers_sent: bool,
}

#[derive(Debug)]
struct Shared {
    /// The downstream body until it ends.
    source: Option<Body>,
    /// The copy of what was read, while within the cap.
    chunks: Vec<Bytes>,
    copied: usize,
    cap: usize,
    /// More than `cap` was read: no further try can be made.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// The downstream body ended.
    finished: bool,
    /// Bytes read from the downstream body so far.
    read: u64,
    /// The body's length, when the downstream said it in advance.
    length: Option<u64>,
    /// The latest try.
    generation: u64,
}

impl ReplayBody {
    /// The first try's body.
    pub fn new(source: Body, cap: usize) -> ReplayBody {
        let hint = source.size_hint();
        let length = hint.exact();
        let finished = source.is_end_stream();
        let shared = Shared {
            source: (!finished).then_some(source),
            chunks: Vec::new(),
            copied: 0,
            cap,
            overflowed: false,
            trailers: None,
            finished,
            read: 0,
            length,
            generation: 0,
        };
        ReplayBody { shared: Arc::new(Mutex::new(shared)), generation: 0, position: 0, sent: 0, trailers_sent: false }
    }

    /// The next try's body, or `None` when the body went past the cap and cannot be replayed.
    /// From now on the earlier tries' bodies end early.
    pub fn retry(&self) -> Option<ReplayBody> {
        let mut shared = self.lock();
        if shared.overflowed {
            return None;
        }
        shared.generation += 1;
        Some(ReplayBody { shared: self.shared.clone(), generation: shared.generation, position: 0, sent: 0, trailers_sent: false })
    }

    /// Whether any of the body has been read from the downstream, and so may have reached an
    /// upstream.
    pub fn started(&self) -> bool {
        let shared = self.lock();
        shared.read > 0 || shared.finished && shared.length.is_some_and(|it| it > 0)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave `Shared` inconsistent in a way that
        // matters more than failing the request; carry on with the data.
        self.shared.lock().unwrap_or_else(|it| it.into_inner())
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let shared_arc = this.shared.clone();
        let mut shared = shared_arc.lock().unwrap_or_else(|it| it.into_inner());
        // Replay what an earlier try read.
        if !shared.overflowed
            && let Some(chunk) = shared.chunks.get(this.position)
        {
            let chunk = chunk.clone();
            this.position += 1;
            this.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.finished {
            if !this.trailers_sent
                && let Some(trailers) = &shared.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
            }
            return Poll::Ready(None);
        }
        if this.generation != shared.generation {
            // A later try took over: this one is abandoned, and must not look complete to its
            // upstream (an error resets the stream instead of ending it).
            return Poll::Ready(Some(Err("the request was retried elsewhere".into())));
        }
        let Some(source) = shared.source.as_mut() else { return Poll::Ready(Some(Err("the request body broke off".into()))) };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.finished = true;
                shared.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                shared.source = None;
                shared.finished = true;
                shared.overflowed = true; // a broken body is never replayed
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        shared.read += chunk.len() as u64;
                        this.sent += chunk.len() as u64;
                        if !shared.overflowed {
                            if shared.copied + chunk.len() > shared.cap {
                                shared.overflowed = true;
                                shared.chunks = Vec::new();
                            } else {
                                shared.copied += chunk.len();
                                shared.chunks.push(chunk.clone());
                                this.position = shared.chunks.len();
                            }
                        }
                        Frame::data(chunk)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            shared.trailers = Some(trailers.clone());
                            this.trailers_sent = true;
                            Frame::trailers(trailers)
                        }
                        // Neither data nor trailers: nothing hyper's bodies produce; skip it.
                        Err(_) => {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        let replayed = shared.overflowed || self.position >= shared.chunks.len();
        if !replayed {
            return false;
        }
        if shared.finished {
            return shared.trailers.is_none() || self.trailers_sent;
        }
        self.generation == shared.generation && shared.source.as_ref().is_some_and(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.lock();
        match shared.length {
            Some(length) => SizeHint::with_exact(length.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::full;
    use http_body_util::BodyExt;

    /// A body of the given chunks, not knowing its length in advance.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|it| Ok(Frame::data(it))))
        }
    }

    fn streamed(chunks: &[&'static str]) -> Body {
        Chunks(chunks.iter().map(|it| Bytes::from_static(it.as_bytes())).collect()).boxed()
    }

    async fn text(body: ReplayBody) -> String {
        String::from_utf8(body.collect().await.expect("body").to_bytes().to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read_then_reads_on() {
        let first = ReplayBody::new(streamed(&["ab", "cd", "ef"]), 100);
        let mut first = Box::pin(first);
        // The first try reads two chunks and fails.
        let chunk = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx)).await.expect("frame").expect("ok");
        assert_eq!(chunk.into_data().expect("data"), "ab");
        assert!(first.started());
        let second = first.retry().expect("within the cap");
        drop(first);
        assert_eq!(text(second).await, "abcdef");
    }

    #[tokio::test]
    async fn an_abandoned_try_fails_instead_of_ending() {
        let first = ReplayBody::new(streamed(&["ab", "cd"]), 100);
        let mut first = Box::pin(first);
        let _ = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx)).await;
        let second = first.retry().expect("within the cap");
        // The first try's upstream must see a broken body, not a complete "ab".
        let next = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx)).await;
        assert!(matches!(next, Some(Err(_))), "{next:?}");
        assert_eq!(text(second).await, "abcd");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_cannot_be_retried_but_still_streams() {
        let first = ReplayBody::new(streamed(&["abc", "def", "ghi"]), 5);
        let retry_source = first.retry();
        assert!(retry_source.is_some(), "nothing read yet");
        let first = ReplayBody::new(streamed(&["abc", "def", "ghi"]), 5);
        let shared = first.shared.clone();
        assert_eq!(text(first).await, "abcdefghi");
        let probe = ReplayBody { shared, generation: 0, position: 0, sent: 0, trailers_sent: false };
        assert!(probe.retry().is_none());
    }

    #[tokio::test]
    async fn a_known_length_is_kept_and_an_empty_body_ends_at_once() {
        let body = ReplayBody::new(full(Bytes::from_static(b"hello")), 100);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(text(body).await, "hello");
        let empty = ReplayBody::new(crate::proxy::empty(), 100);
        assert!(empty.is_end_stream());
        assert!(!empty.started());
        let again = empty.retry().expect("replayable");
        assert!(again.is_end_stream());
    }
}
