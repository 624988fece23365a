//! HTTP/2 from clients, served on the h2 crate inside the connection's own task.
//!
//! hyper's HTTP/2 server spawned a task for every stream and ran the proxy's answer behind its
//! own service and body types: tokio allocated each stream's task and copied its future as the
//! task started and ended. Here the connection's task drives the h2 connection and polls the
//! answers of its streams itself (a `FuturesUnordered`): a stream costs two boxes (its answer,
//! and the future that sends it) and the set's node, and no task. All the streams of a
//! connection are served on one thread, as Envoy serves a connection on one worker.
//!
//! What a client sees is what hyper's server, as the sidecar configured it, showed it: the same
//! settings, a `Date` on every response, a `Content-Length` on a body of known size, no
//! connection-specific fields, an answer cancelled when the client resets its stream, a stream
//! reset with the upstream's code (or INTERNAL_ERROR) when its response body fails, a request
//! body ended cleanly by a reset with NO_ERROR, and a CONNECT that is answered but not
//! tunnelled (its stream's bytes are not read; nothing here tunnels over HTTP/2).

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::{Body, BoxError};
use crate::server::poll_if_woken;

/// The settings hyper's server uses, which the sidecar kept: windows of 1 MiB for the
/// connection and for each stream (the protocol's 64 KiB holds back a fast sender), 16 KiB
/// frames, 16 KiB of header list, 200 concurrent streams, 400 KiB buffered per stream.
const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_STREAMS: u32 = 200;
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the connection may reset for the client's errors before it closes (hyper's bound
/// against a client that provokes resets).
const MAX_ERROR_RESETS: usize = 1024;

/// Serves HTTP/2 on `io` (the client's preface still unread in it) with `answer` until the
/// connection ends. When `drain` turns true the connection says GOAWAY, finishes the streams
/// under way and closes; a connection accepted during a drain is served as it comes (a
/// GOAWAY before its first request would send a client that waits for SETTINGS back to
/// connect again and again), and the drain's end closes it.
pub(crate) async fn serve<S, A, F>(io: S, drain: tokio::sync::watch::Receiver<bool>, mut answer: A)
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let late = *drain.borrow();
    let mut drained = pin!({
        let mut drain = drain.clone();
        async move {
            let _ = drain.wait_for(|draining| *draining).await;
        }
    });
    // The waker the drain was last polled with (see `poll_if_woken`).
    let mut drain_waker = None;
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    // The preface is already read (that is how the connection came here), so the handshake
    // does not wait on the client; a drain that starts meanwhile is seen by the first poll
    // below, and the requests that came with the preface are answered.
    let Ok(mut connection) = handshake.await else { return };
    let mut streams = FuturesUnordered::new();
    let mut draining = late;
    let mut accepting = true;
    poll_fn(|cx| {
        if !draining && poll_if_woken(drained.as_mut(), drain.has_changed().unwrap_or(true), &mut drain_waker, cx).is_ready() {
            draining = true;
            connection.graceful_shutdown();
        }
        loop {
            // The answers first: what they queue goes out with the connection's poll below.
            while let Poll::Ready(Some(_)) = streams.poll_next_unpin(cx) {}
            if accepting {
                match connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, mut respond)))) => {
                        let connect = request.method() == Method::CONNECT;
                        if connect && declared_length(request.headers()).is_some_and(|it| it > 0) {
                            // A tunnel's request has no body (as hyper, which refused these too).
                            respond.send_reset(h2::Reason::INTERNAL_ERROR);
                            continue;
                        }
                        // Boxed where they live (see `proxy::boxed`): the answer's future is
                        // kilobytes, and the stream's hundreds of bytes that the set would
                        // copy into place several times over. A panic in an answer ends its
                        // stream alone (the dropped stream is reset), as it did when each
                        // stream was a task.
                        let request = request_of(request, connect);
                        let answering = crate::proxy::boxed(|| answer(request));
                        streams.push(crate::proxy::boxed(|| respond_caught((answering, respond, connect))));
                        continue;
                    }
                    // A connection error is the client's problem and ends only this connection.
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(()),
                    Poll::Ready(None) => accepting = false,
                    Poll::Pending => return Poll::Pending,
                }
            }
            // No stream comes any more; the connection still carries those under way.
            return connection.poll_closed(cx).map(|_| ());
        }
    })
    .await;
}

/// The request as the proxy takes it: its body the stream's DATA frames and trailers, except
/// for a CONNECT (`connect`), whose stream would be a tunnel, which is not served here: its
/// bytes are not read, as hyper did not read them into the request either.
fn request_of(request: Request<h2::RecvStream>, connect: bool) -> Request<Body> {
    let (parts, recv) = request.into_parts();
    let body = if connect || recv.is_end_stream() {
        crate::proxy::empty()
    } else {
        RequestBody { length: declared_length(&parts.headers), recv, data_ended: false }.boxed()
    };
    Request::from_parts(parts, body)
}

/// The `Content-Length` a head declares (h2 has checked that it is a number).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|it| it.to_str().ok()?.parse().ok())
}

/// Answers one stream as [`respond_with`] does, a panic in it caught: it ends that stream
/// alone (its dropped `SendResponse` resets it).
async fn respond_caught<F>(arguments: (Pin<Box<F>>, h2::server::SendResponse<Bytes>, bool))
where
    F: Future<Output = Response<Body>>,
{
    let _ = AssertUnwindSafe(respond_with(arguments)).catch_unwind().await;
}

/// Answers one stream: awaits the answer (dropped, with whatever it had under way, if the
/// client resets the stream first), then sends its head and streams its body.
async fn respond_with<F>((mut answer, mut respond, connect): (Pin<Box<F>>, h2::server::SendResponse<Bytes>, bool))
where
    F: Future<Output = Response<Body>>,
{
    let answered = poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(response) = answered else { return };
    let (mut parts, body) = response.into_parts();
    prepare_head(&mut parts.headers, &body, connect && parts.status.is_success());
    let end = body.is_end_stream();
    // An error here (the stream or the connection already gone) leaves nothing to send on.
    let Ok(send) = respond.send_response(Response::from_parts(parts, ()), end) else { return };
    if !end {
        send_body(body, send).await;
    }
}

/// The response head as HTTP/2 carries it: no connection-specific fields (h2 refuses them),
/// a `Date`, and a `Content-Length` when the body's length is known and the head has none,
/// except on the success of a CONNECT (`tunnel`), which has none at all (RFC 9110 §9.3.6).
fn prepare_head(headers: &mut HeaderMap, body: &Body, tunnel: bool) {
    crate::proxy::strip_hop_by_hop(headers, false);
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, crate::h1::server::date());
    }
    if tunnel {
        headers.remove(header::CONTENT_LENGTH);
    } else if !body.is_end_stream()
        && let Some(length) = body.size_hint().exact()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(header::CONTENT_LENGTH, length.into());
    }
}

/// Streams a response body onto its stream as the client's window allows. A chunk in hand
/// that is not the last claims one byte of the window and waits for it (h2 claims the rest as
/// it sends), so that no more of the body is read while the client cannot take it: a body
/// that has nothing to send claims none, since a client that sends WINDOW_UPDATE only once its
/// window is used up would otherwise stall its other streams for that byte (hyper's issue
/// 4003), and the end of the stream and trailers need no window at all. A body that fails
/// resets the stream with the error's HTTP/2 code, or INTERNAL_ERROR, so that the client
/// never takes a cut-off body for a whole one.
async fn send_body(mut body: Body, mut send: h2::SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            // Waiting for the body: a client that resets the stream ends the wait.
            match send.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // Errors from `send` below mean the stream or the connection is gone: nothing to do.
        match frame {
            None => return,
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    // The last chunk goes to h2 at once, which sends it as the windows allow:
                    // it is in memory already, and no more of the body is read behind it.
                    if !end && !data.is_empty() && !room(&mut send).await {
                        return;
                    }
                    if send.send_data(data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        let _ = send.send_trailers(trailers);
                        return;
                    }
                }
            },
            Some(Some(Err(error))) => {
                send.send_reset(crate::pool::h2_reason(&*error).unwrap_or(h2::Reason::INTERNAL_ERROR));
                return;
            }
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
        }
    }
}

/// Waits until the client's windows leave room on `send`; `false` when the stream was reset
/// or the connection is gone.
async fn room(send: &mut h2::SendStream<Bytes>) -> bool {
    send.reserve_capacity(1);
    poll_fn(|cx| {
        loop {
            if send.capacity() > 0 {
                return Poll::Ready(true);
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Poll::Ready(false),
            }
        }
    })
    .await
}

/// A request body: the stream's DATA frames, each one's bytes given back to the client's
/// flow-control window as the proxy takes it, then its trailers.
struct RequestBody {
    recv: h2::RecvStream,
    /// What is left of a declared `Content-Length` (h2 holds the stream to it).
    length: Option<u64>,
    data_ended: bool,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_ended {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(length) = &mut self.length {
                        *length = length.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR asks the sender to stop, having had its answer
                // (RFC 9113 §8.1): the body ends there, cleanly.
                Some(Err(error)) if error.reason() == Some(h2::Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => self.data_ended = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) if error.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
