//! HTTP/1.1 from clients, served inside the connection's own task.
//!
//! Behind hyper's server, every request head was parsed twice (by the guard, which refuses
//! what could smuggle a request, then by hyper), the proxy's future was boxed and polled by
//! hyper's dispatcher, and the response went out through hyper's encoder. Here the connection's
//! task parses each head once with `httparse` (the guard's rules are shared through
//! [`request_framing`]), awaits the proxy's answer in place, and writes the response head and a
//! body that is already whole in one write.
//!
//! What this server does not do itself it leaves to hyper, handing over the connection with
//! every byte read from it and not yet used: the HTTP/2 preface, HTTP/1.0, upgrades and
//! CONNECT, and `Expect` (hyper answers `100 Continue` when the body is first read). A hand-off
//! happens only between requests, when the last response has been written whole.
//!
//! A request body is read from the connection by whoever polls it (the proxy's upstream
//! exchange, in the same task): the connection is split, its read side moves into the body
//! and comes back once the body has ended, and the halves are joined again. Only then: each
//! use of a half takes a lock, which a request without a body does not pay. A response that
//! ends before its request body does closes the connection, as Envoy does.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, WriteHalf};
use tokio_util::io::poll_read_buf;

use super::{
    Decoded, Field, Incoming, allowed_in_trailers, connection_allows_reuse, decode, header_map, note_fields, put_content_length,
    put_digits, put_fields,
};
use crate::guard::{Framing, H2_PREFACE, MAX_HEAD_BYTES, MAX_HEADERS, READ_CHUNK, bad_request, request_framing};
use crate::proxy::{Body, BoxError};
use crate::server::poll_if_woken;

/// A response body part at least this large is written from where it lies rather than
/// copied behind the head.
const WRITE_DIRECTLY: usize = 8 * 1024;

/// How much a connection gathers before it writes, when a body comes in many parts.
const MAX_GATHERED: usize = 64 * 1024;

/// After a 400, what the client still sends is read and dropped, up to this much for this
/// long, so that the answer is not lost to a reset (closing a socket with unread bytes resets
/// it).
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// How a connection served here ended.
pub(crate) enum Ended<S> {
    /// It is closed, or closes when the stream is dropped.
    Closed,
    /// A request this server leaves to hyper: what was read from the stream and not yet used
    /// (that request's head first), and the stream.
    HandOff(Bytes, S),
}

/// Serves HTTP/1.1 requests on `io` with `answer` until the connection ends, a request needs
/// hyper, or `drain` turns true (an idle connection then closes; a busy one closes after its
/// current response). A head must arrive whole within `head_timeout` of when the connection
/// starts waiting for it.
pub(crate) async fn serve<S, A, F>(io: S, drain: tokio::sync::watch::Receiver<bool>, head_timeout: Duration, mut answer: A) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    // A connection accepted during a drain answers one request, then closes.
    let late = *drain.borrow();
    // The stream is split only while a request body is read from it: each use of a half
    // takes a lock.
    let mut conn = Some(Reader { io, buf: BytesMut::new() });
    let mut out = BytesMut::new();
    let mut fields = Vec::new();
    let mut first = true;
    // How much of the buffer the last parse of an unfinished head saw (see `parse`).
    let mut scanned = 0;
    let mut timer = pin!(tokio::time::sleep(head_timeout));
    // The wakers the timer and the drain were last polled with (see `poll_if_woken`).
    let (mut timer_waker, mut drain_waker) = (None, None);
    // One wait for the drain for the whole connection, rather than one per request (each
    // registers with the watch and leaves it again).
    let mut drained = pin!({
        let mut drain = drain.clone();
        async move {
            let _ = drain.wait_for(|draining| *draining).await;
        }
    });
    loop {
        let Some(reader) = conn.as_mut() else { return Ended::Closed };
        // The timer is moved on only when it fires before this deadline: re-arming it for
        // each request costs more than the rare early wake-up.
        let deadline = tokio::time::Instant::now() + head_timeout;
        let head = loop {
            match parse(&mut reader.buf, &mut fields, first, &mut scanned) {
                Parsed::Head(head) => break head,
                Parsed::HandOff => {
                    let Some(Reader { io, buf }) = conn.take() else { return Ended::Closed };
                    return Ended::HandOff(buf.freeze(), io);
                }
                Parsed::Bad(why) => {
                    refuse(reader, why).await;
                    return Ended::Closed;
                }
                Parsed::More => {}
            }
            let waited = poll_fn(|cx| {
                if let Poll::Ready(read) = reader.poll_fill(cx) {
                    return Poll::Ready(Waited::Read(matches!(read, Ok(1..))));
                }
                let elapsed = timer.is_elapsed();
                if poll_if_woken(timer.as_mut(), elapsed, &mut timer_waker, cx).is_ready() {
                    return Poll::Ready(Waited::Timer);
                }
                // Polled until it fires, after which the connection ends.
                if !late && poll_if_woken(drained.as_mut(), drain.has_changed().unwrap_or(true), &mut drain_waker, cx).is_ready() {
                    return Poll::Ready(Waited::Read(false));
                }
                Poll::Pending
            })
            .await;
            let filled = match waited {
                Waited::Read(filled) => filled,
                Waited::Timer if tokio::time::Instant::now() < deadline => {
                    timer.as_mut().reset(deadline);
                    // Registered anew when next polled.
                    timer_waker = None;
                    continue;
                }
                Waited::Timer => false,
            };
            if !filled {
                // Over TLS, the client learns that the server closed (close_notify).
                let _ = reader.io.shutdown().await;
                return Ended::Closed;
            }
        };
        first = false;
        scanned = 0;
        let Head { parts, framing, keep_alive } = head;
        let head_request = parts.method == Method::HEAD;
        // A body takes the stream's read side while it is read.
        let incoming = match framing {
            Framing::None => None,
            Framing::Length(len) => Some(Incoming::Length(len)),
            Framing::Chunked => Some(Incoming::Chunked(super::Chunk::Size)),
        };
        let (body, mut split) = match (incoming, conn.take_if(|_| incoming.is_some())) {
            (Some(incoming), Some(Reader { io, buf })) => {
                let (read, write) = tokio::io::split(io);
                let source = Source { conn: Reader { io: read, buf }, framing: incoming, failed: false, dropped: false };
                let shared = Arc::new(Shared(Mutex::new(Some(source))));
                (RequestBody(shared.clone()).boxed(), Some((shared, write)))
            }
            _ => (crate::proxy::empty(), None),
        };
        let response = answer(Request::from_parts(parts, body)).await;
        // An answer that comes before the request body's end closes the connection after it,
        // since the rest of the body cannot be told from a next request; unless the body is
        // let go of and its end is already read (a small POST refused by policy).
        let read_whole = split.as_ref().is_none_or(|(shared, _)| shared.settle());
        // The watch's value is read (under its lock) only once its version has moved: until
        // then, a version compared is enough, where `borrow` would lock for every request.
        let draining = late || (drain.has_changed().unwrap_or(true) && *drain.borrow());
        let keep_alive = keep_alive && read_whole && !draining;
        let mut writer = match (&mut split, conn.as_mut()) {
            (Some((_, write)), _) => Writer::Half(write),
            (None, Some(reader)) => Writer::Whole(&mut reader.io),
            (None, None) => return Ended::Closed,
        };
        let keep_alive = respond(&mut writer, &mut out, response, head_request, keep_alive).await;
        if let Some((shared, mut write)) = split {
            match shared.take_back() {
                Back::Whole(Reader { io: read, buf }) => conn = Some(Reader { io: read.unsplit(write), buf }),
                Back::Rest(mut rest) => {
                    // The client may still be sending the body: closing with its bytes unread
                    // would reset the connection, and the answer could be lost.
                    if write.shutdown().await.is_ok() {
                        linger(&mut rest).await;
                    }
                    return Ended::Closed;
                }
                Back::Gone => {
                    let _ = write.shutdown().await;
                    return Ended::Closed;
                }
            }
        }
        if !keep_alive {
            if let Some(reader) = conn.as_mut() {
                let _ = reader.io.shutdown().await;
            }
            return Ended::Closed;
        }
    }
}

/// Where a response is written: the whole stream, or its write half while a request body
/// reads from the other.
enum Writer<'a, S> {
    Whole(&'a mut S),
    Half(&'a mut WriteHalf<S>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Writer<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Writer::Whole(io) => Pin::new(&mut **io).poll_write(cx, data),
            Writer::Half(io) => Pin::new(&mut **io).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Whole(io) => Pin::new(&mut **io).poll_flush(cx),
            Writer::Half(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Writer::Whole(io) => Pin::new(&mut **io).poll_shutdown(cx),
            Writer::Half(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}

/// What ended a wait for more of a request head.
enum Waited {
    /// A read: whether it read anything (false at the end of the stream, on an error, or
    /// when a drain began).
    Read(bool),
    /// The head timer fired.
    Timer,
}

/// The connection (or its read side) and what was read from it and not yet used.
struct Reader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 8 {
            self.buf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Answers a malformed request with 400 and ends the connection, reading what the client
/// still sends for a while so that the answer is not lost to a reset.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Reader<S>, why: &str) {
    if conn.io.write_all(&bad_request(why)).await.is_ok() && conn.io.shutdown().await.is_ok() {
        linger(conn).await;
    }
}

/// Reads and drops what the client still sends, up to LINGER_BYTES for LINGER_TIME, after
/// the server's side of the connection was shut down.
async fn linger<R: AsyncRead + Unpin>(conn: &mut Reader<R>) {
    let drop_input = async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            conn.buf.clear();
            match poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(read @ 1..) => dropped += read,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drop_input).await;
}

/// A request head, taken off the buffer.
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    /// Whether the client lets the connection carry another request.
    keep_alive: bool,
}

// Returned once per head and matched at once: a box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// The head is not whole yet.
    More,
    /// Not for this server: the HTTP/2 preface, HTTP/1.0, an upgrade, CONNECT or `Expect`.
    HandOff,
    /// Malformed: answered with 400.
    Bad(&'static str),
}

#[cfg(test)]
thread_local! {
    /// How many times this thread ran httparse over a request head.
    static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Bytes an unfinished head may grow by before it is parsed again without a blank line.
const RECHECK_BYTES: usize = 1024;

/// Whether `bytes` hold the blank line that ends a head (`\n\n` or `\n\r\n`: httparse takes
/// bare LFs).
fn ends_a_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|it| it == b"\n\n") || bytes.windows(3).any(|it| it == b"\n\r\n")
}

/// Parses the request head at the start of `buf`, taking it off when it is whole and this
/// server serves it. `first`: whether this is the connection's first request, which may be the
/// HTTP/2 preface instead.
fn parse(buf: &mut BytesMut, fields: &mut Vec<Field>, first: bool, scanned: &mut usize) -> Parsed {
    if first {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            return if n == H2_PREFACE.len() { Parsed::HandOff } else { Parsed::More };
        }
    }
    // Empty lines before a request line are allowed (RFC 9112 §2.2).
    let blank = buf.iter().take_while(|it| matches!(it, b'\r' | b'\n')).count();
    buf.advance(blank);
    if buf.is_empty() {
        return Parsed::More;
    }
    // A head sent a few bytes at a time was parsed from its start on every read: quadratic
    // in its size (a 60 KB head sent a byte per read took 0.7 s). Once a parse has seen part
    // of it, the next waits for a line that may end it, or for another RECHECK_BYTES (so that
    // bytes that are no request are still refused soon).
    if *scanned > 0 && buf.len() < *scanned + RECHECK_BYTES && !ends_a_head(&buf[scanned.saturating_sub(3).min(buf.len())..]) {
        return if buf.len() <= MAX_HEAD_BYTES { Parsed::More } else { Parsed::Bad("the request head is too large") };
    }
    #[cfg(test)]
    PARSES.set(PARSES.get() + 1);
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {
            *scanned = buf.len();
            return Parsed::More;
        }
        Ok(_) => return Parsed::Bad("the request head is too large"),
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad("too many headers"),
        Err(_) => return Parsed::Bad("malformed request head"),
    };
    let (framing, upgrade) = match request_framing(&request) {
        Ok(it) => it,
        Err(why) => return Parsed::Bad(why),
    };
    if upgrade || request.version != Some(1) || request.headers.iter().any(|it| it.name.eq_ignore_ascii_case("expect")) {
        return Parsed::HandOff;
    }
    let Ok(method) = Method::from_bytes(request.method.unwrap_or_default().as_bytes()) else {
        return Parsed::Bad("malformed request head");
    };
    // The target, names and values share the head's bytes once they are frozen.
    let target = request.path.unwrap_or_default().as_bytes();
    let target_at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target_at..target_at + target.len();
    note_fields(buf.as_ptr(), request.headers, fields);
    let bytes = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(target)) else {
        return Parsed::Bad("invalid request target");
    };
    let Some((headers, framers)) = header_map(&bytes, fields, false) else { return Parsed::Bad("malformed request head") };
    let keep_alive = framers.allows_reuse(Version::HTTP_11);
    let mut parts = Request::new(()).into_parts().0;
    (parts.method, parts.uri, parts.version, parts.headers) = (method, uri, Version::HTTP_11, headers);
    Parsed::Head(Head { parts, framing, keep_alive })
}

/// A request body being read, and the connection it is read from.
struct Source<R> {
    conn: Reader<R>,
    framing: Incoming,
    failed: bool,
    /// Whether the body was let go of: nobody reads the rest.
    dropped: bool,
}

/// What the connection gets back from a request body.
enum Back<R> {
    /// The body was read whole: the connection may carry the next request.
    Whole(Reader<R>),
    /// The body was not read to its end, or failed.
    Rest(Reader<R>),
    /// The body's reader is gone.
    Gone,
}

/// What the body and the connection share: `None` once the connection took itself back.
struct Shared<R>(Mutex<Option<Source<R>>>);

impl<R> Shared<R> {
    /// Whether the body has been read to its end. A body let go of is first read on through
    /// what is already buffered, without waiting for more.
    fn settle(&self) -> bool {
        let mut source = self.0.lock().unwrap_or_else(|it| it.into_inner());
        let Some(source) = source.as_mut() else { return false };
        while source.dropped && !source.failed && source.framing != Incoming::Done {
            match decode(&mut source.conn.buf, &mut source.framing) {
                Ok(Decoded::Frame(_)) => {}
                Ok(Decoded::End | Decoded::More) => break,
                Err(_) => source.failed = true,
            }
        }
        source.framing == Incoming::Done && !source.failed
    }

    /// The connection's read side, taken back from the body (which then fails if read).
    fn take_back(&self) -> Back<R> {
        let mut source = self.0.lock().unwrap_or_else(|it| it.into_inner());
        match source.take() {
            Some(Source { conn, framing: Incoming::Done, failed: false, .. }) => Back::Whole(conn),
            Some(Source { conn, .. }) => Back::Rest(conn),
            None => Back::Gone,
        }
    }
}

/// What the request body needs of its shared state, without the stream's type.
trait BodyRead: Send + Sync {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn framing(&self) -> Incoming;
    /// The body is let go of.
    fn drop_body(&self);
}

impl<R: AsyncRead + Unpin + Send> BodyRead for Shared<R> {
    fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut source = self.0.lock().unwrap_or_else(|it| it.into_inner());
        let Some(source) = source.as_mut() else { return Poll::Ready(Some(Err("the client connection has closed".into()))) };
        if source.failed {
            return Poll::Ready(Some(Err("the request body failed".into())));
        }
        loop {
            let failed = match decode(&mut source.conn.buf, &mut source.framing) {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => match ready!(source.conn.poll_fill(cx)) {
                    Ok(1..) => continue,
                    _ => "the client closed the connection before the request body's end",
                },
                Err(why) => why,
            };
            source.failed = true;
            return Poll::Ready(Some(Err(failed.into())));
        }
    }

    fn framing(&self) -> Incoming {
        let source = self.0.lock().unwrap_or_else(|it| it.into_inner());
        source.as_ref().map_or(Incoming::Done, |it| it.framing)
    }

    fn drop_body(&self) {
        let mut source = self.0.lock().unwrap_or_else(|it| it.into_inner());
        if let Some(source) = source.as_mut() {
            source.dropped = true;
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.0.drop_body();
    }
}

/// A request body from the connection.
struct RequestBody(Arc<dyn BodyRead>);

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.framing() == Incoming::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.framing() {
            Incoming::Length(left) => SizeHint::with_exact(left),
            Incoming::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// How a response body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outgoing {
    /// Not at all: a response to HEAD, a 1xx, 204 or 304.
    None,
    /// `Content-Length`: this many bytes are still to go.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes `response`; `true` when the connection may carry another request after it.
async fn respond<W: AsyncWrite + Unpin>(
    write: &mut W,
    out: &mut BytesMut,
    response: Response<Body>,
    head_request: bool,
    keep_alive: bool,
) -> bool {
    let (mut parts, mut body) = response.into_parts();
    if parts.status.is_informational() {
        // An interim answer cannot end an exchange: the client would wait for the final one.
        parts.status = StatusCode::BAD_GATEWAY;
        parts.headers.clear();
        body = crate::proxy::empty();
    }
    let mut keep_alive = keep_alive && connection_allows_reuse(&parts.headers, Version::HTTP_11);
    let mut framing = encode_head(out, &parts, &body, head_request, keep_alive);
    if framing == Outgoing::None {
        // Nothing of the body goes out, so it is not waited for either.
        drop(body);
        return write_out(write, out).await.is_ok() && write.flush().await.is_ok() && keep_alive;
    }
    let mut ended = false;
    while !ended && !body.is_end_stream() {
        // A body that is not ready yet: what is gathered goes out first.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() && (write_out(write, out).await.is_err() || write.flush().await.is_err()) {
                    return false;
                }
                body.frame().await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            // The client sees the body end short: no last chunk, or fewer bytes than promised.
            Some(Err(_)) => {
                let _ = write_out(write, out).await;
                return false;
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Outgoing::Chunked) = (frame.into_trailers(), framing) {
                    out.put_slice(b"0\r\n");
                    put_fields(out, trailers.iter().filter(|(name, _)| allowed_in_trailers(name)));
                    out.put_slice(b"\r\n");
                    ended = true;
                }
                continue;
            }
        };
        let data = match &mut framing {
            Outgoing::None => continue,
            _ if data.is_empty() => continue,
            Outgoing::Length(left) => {
                // More than the head promised is cut off, and the connection closes after.
                let data = if data.len() as u64 > *left {
                    keep_alive = false;
                    data.slice(..*left as usize)
                } else {
                    data
                };
                *left -= data.len() as u64;
                data
            }
            Outgoing::Chunked => {
                put_digits::<16>(out, data.len() as u64);
                out.put_slice(b"\r\n");
                data
            }
        };
        if data.len() >= WRITE_DIRECTLY {
            if write_out(write, out).await.is_err() || write.write_all(&data).await.is_err() {
                return false;
            }
        } else {
            out.put_slice(&data);
        }
        if framing == Outgoing::Chunked {
            out.put_slice(b"\r\n");
        }
        if out.len() >= MAX_GATHERED && write_out(write, out).await.is_err() {
            return false;
        }
    }
    match framing {
        Outgoing::Chunked if !ended => out.put_slice(b"0\r\n\r\n"),
        // Fewer bytes than the head promised: the client sees the connection end.
        Outgoing::Length(1..) => keep_alive = false,
        _ => {}
    }
    write_out(write, out).await.is_ok() && write.flush().await.is_ok() && keep_alive
}

/// Writes what is gathered in `out`, and empties it.
async fn write_out<W: AsyncWrite + Unpin>(write: &mut W, out: &mut BytesMut) -> io::Result<()> {
    let written = write.write_all(out).await;
    out.clear();
    written
}

/// Puts the status line and the header fields in `out`, and says how the body goes: not at
/// all, by the body's exact size, else by the `Content-Length` the response carries, else
/// chunked.
fn encode_head(out: &mut BytesMut, parts: &http::response::Parts, body: &Body, head_request: bool, keep_alive: bool) -> Outgoing {
    let status = parts.status;
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or_default().as_bytes());
    out.put_slice(b"\r\n");
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    // Framing is this hop's to say: by the body's own size where it knows it, else by a valid
    // Content-Length the answer carries, else in chunks. Without a body, the fields say what
    // the answer says (a response to HEAD keeps the length a GET would have had, and a HEAD
    // answered by a chunked response has none: an empty body's size is not that length).
    let (framing, length) = if bodiless || head_request {
        (Outgoing::None, None)
    } else if let Some(len) = exact {
        (Outgoing::Length(len), Some(len))
    } else if let Some(len) = super::content_length(&parts.headers) {
        (Outgoing::Length(len), None)
    } else {
        (Outgoing::Chunked, None)
    };
    // A 204 has no length at all (RFC 9110 §8.6); a 304 and a response to HEAD keep the one
    // the answer gives.
    let keep_length = status != StatusCode::NO_CONTENT
        && (matches!(framing, Outgoing::None) || matches!(framing, Outgoing::Length(_)) && length.is_none());
    let mut has_date = false;
    put_fields(
        out,
        parts.headers.iter().filter(|(name, _)| {
            has_date |= **name == header::DATE;
            **name != header::TRANSFER_ENCODING
                && (keep_length || **name != header::CONTENT_LENGTH)
                && (keep_alive || **name != header::CONNECTION)
        }),
    );
    if let Some(len) = length {
        put_content_length(out, len);
    }
    if framing == Outgoing::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    framing
}

/// Today's date as an HTTP date, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    with_date(|date| out.put_slice(date.as_bytes()));
}

/// Today's date as a `Date` field's value (for HTTP/2 responses).
pub(crate) fn date() -> HeaderValue {
    with_date(HeaderValue::clone)
}

fn with_date<T>(f: impl FnOnce(&HeaderValue) -> T) -> T {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, HeaderValue)> = const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |it| it.as_secs());
    CACHED.with_borrow_mut(|(at, date)| {
        if *at != second {
            // An HTTP date is ASCII letters, digits, spaces, commas and colons: always a value.
            *date =
                HeaderValue::from_maybe_shared(Bytes::from(httpdate::fmt_http_date(now))).unwrap_or_else(|_| HeaderValue::from_static(""));
            *at = second;
        }
        f(date)
    })
}

#[cfg(test)]
mod tests;
