//! HTTP/1.1 towards upstreams, driven inside the task of the request that uses the
//! connection.
//!
//! hyper's client connection runs in a task of its own: every request crossed to it over a
//! channel, its response came back over a oneshot and its body over another channel, and each
//! crossing woke a task. Here the request's own future writes the head and the body, reads the
//! response head, and the response body reads the rest straight from the socket. `httparse`
//! parses the heads and the chunk sizes; the framing follows RFC 9112 §6: a response to HEAD,
//! a 1xx, 204 or 304 has no body, `Transfer-Encoding` (chunked last) wins over
//! `Content-Length`, and a response with neither ends when the server closes.
//!
//! A connection goes back to its pool only when both messages ended cleanly, the response let
//! the connection live, and nothing is left over in its buffer. A response that ends before
//! its request body was all sent closes the connection, as Envoy's HTTP/1.1 pool does.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::io::poll_read_buf;

use crate::proxy::{Body, BoxError};

pub(crate) mod server;

/// A response head larger than this is refused (Envoy's default limit is 60 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in a response head (hyper's default).
const MAX_HEADERS: usize = 100;

/// A chunk-size line longer than this is refused (it can carry extensions, nothing else).
const MAX_CHUNK_LINE: usize = 4096;

/// How much room a connection's reads ask for at first: most responses through a sidecar are
/// small, and every connection keeps its buffer.
const FIRST_READ: usize = 4 * 1024;

/// How much room a read asks for at most; a read that fills its room doubles the next one's.
const MAX_READ: usize = 64 * 1024;

/// A connection to an upstream: plain TCP or TLS.
pub(crate) type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// An open connection and what was read from it but not yet used.
pub(crate) struct Connection {
    io: Stream,
    read: BytesMut,
    /// Where each field of the last response head lies in `read` (kept for its room).
    fields: Vec<Field>,
    /// How much room the next read asks for.
    read_size: usize,
    /// Whether it carried a request before (a server may close such a one at any moment).
    reused: bool,
}

impl Connection {
    pub(crate) fn new(io: Stream) -> Connection {
        Connection { io, read: BytesMut::new(), fields: Vec::new(), read_size: FIRST_READ, reused: false }
    }

    /// Whether an idle connection is still usable: the server has neither closed it nor sent
    /// anything unasked. Costs no system call unless the socket became readable.
    pub(crate) fn idle_and_open(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        match &mut self.io {
            // Without a waker: polling a read that is not ready would register one, under a
            // lock.
            Either::Left(tcp) => matches!(tcp.try_read(&mut [0; 1]), Err(err) if err.kind() == io::ErrorKind::WouldBlock),
            Either::Right(_) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                self.read.reserve(1);
                matches!(poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.read), Poll::Pending)
            }
        }
    }

    /// Readies a connection whose exchange ended cleanly for the next one: reads start small
    /// again, and a buffer grown for a large response is let go.
    fn recycle(&mut self) {
        self.reused = true;
        self.read_size = FIRST_READ;
        if self.read.capacity() > 2 * FIRST_READ {
            self.read = BytesMut::new();
        }
    }

    /// Reads more into the buffer; `Ok(0)` when the server closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.read_size / 4 {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        let read = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read))?;
        if read == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(read))
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing of the request reached the server: it may go on another connection as it is,
    /// with this body.
    Unsent(Body),
    /// The connection closed or failed before a whole response head arrived.
    Reset,
    /// The response is not HTTP/1.1 as the RFC frames it.
    Protocol(&'static str),
    /// The request body failed, or did not match its length, before a response came.
    RequestBody,
}

/// What to do with a connection whose response has ended: keep it for another request. A
/// type parameter rather than a boxed closure: no allocation per request.
pub(crate) trait Finish: FnOnce(Connection) + Send + Sync + Unpin + 'static {}

impl<F: FnOnce(Connection) + Send + Sync + Unpin + 'static> Finish for F {}

/// Sends the request of head `parts` (origin-form target; without `Host`, `host` is sent)
/// and `body` on `conn`, and reads the response head. The head is borrowed: a request tried
/// again is sent from the same one. The response body reads the rest from the connection,
/// and hands the connection to `done` once both messages ended and the connection may carry
/// another request.
pub(crate) async fn exchange(
    mut conn: Connection,
    parts: &http::request::Parts,
    body: Body,
    host: &str,
    done: impl Finish,
) -> Result<Response<Body>, Failure> {
    let (head, outgoing) = encode_head(parts, &body, host);
    let head_only = matches!(outgoing, Outgoing::Empty);
    let mut sending = Sending { head, body: Some(body), framing: outgoing, queue: VecDeque::new(), wrote: false, ended: head_only };
    let (mut sent, mut send_failed) = (false, false);
    let polled = poll_fn(|cx| {
        if !sent {
            match sending.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => sent = true,
                // The server went away before it got a byte: the request is whole still.
                Poll::Ready(Err(SendError::Io)) if !sending.wrote => return Poll::Ready(Err(None)),
                // It may have answered before it stopped reading (a 413, say): read on.
                Poll::Ready(Err(SendError::Io)) => (sent, send_failed) = (true, true),
                // The server holds part of a request that cannot be finished: give up on it
                // and on the connection, rather than wait for an answer that cannot come.
                Poll::Ready(Err(SendError::Body)) => return Poll::Ready(Err(Some(Failure::RequestBody))),
                Poll::Pending => {}
            }
        }
        poll_head(&mut conn, parts.method == Method::HEAD, cx).map_err(Some)
    })
    .await;
    let head = match polled {
        Ok(head) => Some(head),
        Err(None) => None,
        // A reused connection closed as the request went out, most likely by a server that
        // had timed it out. A safe request may be repeated (RFC 9110 §9.2.2), and without a
        // body it is whole still.
        Err(Some(Failure::Reset)) if conn.reused && head_only && conn.read.is_empty() && safe(&parts.method) => None,
        Err(Some(failure)) => return Err(failure),
    };
    let Some(head) = head else {
        return Err(Failure::Unsent(sending.body.take().unwrap_or_else(crate::proxy::empty)));
    };
    let Head { status, version, headers, framing, keep_alive } = head;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    let sending = (!sent).then_some(sending);
    let reusable = keep_alive && !send_failed && !matches!(framing, Incoming::UntilClose);
    // The usual small answer is in the buffer whole: no reading body needed.
    if sending.is_none() {
        let whole = match framing {
            Incoming::Done => Some(None),
            Incoming::Length(len) if conn.read.len() as u64 >= len => Some(Some(conn.read.split_to(len as usize).freeze())),
            _ => None,
        };
        if let Some(data) = whole {
            if reusable && conn.read.is_empty() {
                conn.recycle();
                done(conn);
            }
            return Ok(response.map(|()| data.map_or_else(crate::proxy::empty, crate::proxy::full)));
        }
    }
    let body = Reading { conn: Some(conn), framing, sending, reusable, done: Some(done) };
    Ok(response.map(|()| http_body_util::BodyExt::boxed(body)))
}

/// Methods RFC 9110 §9.2.1 calls safe: read-only, so that repeating one harms nothing.
fn safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// How the request body goes out.
#[derive(Clone, Copy, Debug)]
enum Outgoing {
    /// No body.
    Empty,
    /// `Content-Length`: this many bytes are still to go.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The request head, and how its body is framed. An exact size (the body's, else a
/// `Content-Length` the request carried) goes as `Content-Length`; an unknown one is chunked.
/// A head without `Host` gets `host`.
fn encode_head(parts: &http::request::Parts, body: &Body, host: &str) -> (BytesMut, Outgoing) {
    let declared = || parts.headers.get(header::CONTENT_LENGTH).and_then(|it| it.to_str().ok()?.trim().parse::<u64>().ok());
    let outgoing = if body.is_end_stream() {
        Outgoing::Empty
    } else if let Some(len) = body.size_hint().exact().or_else(declared) {
        Outgoing::Length(len)
    } else {
        Outgoing::Chunked
    };
    let mut head = BytesMut::with_capacity(256);
    head.put_slice(parts.method.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(parts.uri.path_and_query().map_or("/", |it| it.as_str()).as_bytes());
    head.put_slice(b" HTTP/1.1\r\n");
    // Framing is this hop's to say.
    let (mut has_host, mut has_length) = (false, false);
    put_fields(
        &mut head,
        parts.headers.iter().filter(|(name, _)| {
            let length = **name == header::CONTENT_LENGTH;
            has_host |= **name == header::HOST;
            has_length |= length;
            !length && **name != header::TRANSFER_ENCODING
        }),
    );
    if !has_host {
        head.put_slice(b"host: ");
        head.put_slice(host.as_bytes());
        head.put_slice(b"\r\n");
    }
    match outgoing {
        Outgoing::Empty if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) || has_length && declared().is_some() => {
            head.put_slice(b"content-length: 0\r\n");
        }
        Outgoing::Empty => {}
        Outgoing::Length(len) => put_content_length(&mut head, len),
        Outgoing::Chunked => head.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.put_slice(b"\r\n");
    (head, outgoing)
}

/// Writes a `Content-Length` field of `len`.
pub(crate) fn put_content_length(out: &mut BytesMut, len: u64) {
    out.put_slice(b"content-length: ");
    put_digits::<10>(out, len);
    out.put_slice(b"\r\n");
}

/// Writes `n` in base `BASE` (10 for lengths, 16 for chunk sizes, in lower case), without
/// the formatting machinery, which a profile of every response found costing more than the
/// rest of the head's encoding.
pub(crate) fn put_digits<const BASE: u64>(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % BASE) as usize];
        n /= BASE;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// Writes `name: value` lines.
pub(crate) fn put_fields<'a>(out: &mut BytesMut, fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) {
    for (name, value) in fields {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

/// Why sending a request stopped.
#[derive(Debug)]
enum SendError {
    /// Writing failed: the server may still have answered.
    Io,
    /// The request body failed, or broke its length: the request cannot be completed.
    Body,
}

/// The request going out: queued pieces first, then the body's frames, framed.
struct Sending {
    /// The head, written from its buffer as it is (freezing it would cost an allocation).
    head: BytesMut,
    body: Option<Body>,
    framing: Outgoing,
    queue: VecDeque<Bytes>,
    /// Whether any byte went out.
    wrote: bool,
    /// Whether everything is queued: the body ended (or there is none).
    ended: bool,
}

impl Sending {
    fn poll(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(poll_write_all(io, cx, &mut self.head, &mut self.wrote))?;
        loop {
            while let Some(front) = self.queue.front_mut() {
                ready!(poll_write_all(io, cx, front, &mut self.wrote))?;
                self.queue.pop_front();
            }
            if self.ended {
                return Pin::new(&mut *io).poll_flush(cx).map_err(|_| SendError::Io);
            }
            let Some(body) = self.body.as_mut() else { return Poll::Ready(Ok(())) };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // What was written may sit in TLS's buffer until flushed.
                    if let Poll::Ready(Err(_)) = Pin::new(&mut *io).poll_flush(cx) {
                        return Poll::Ready(Err(SendError::Io));
                    }
                    return Poll::Pending;
                }
            };
            match frame {
                None => {
                    match self.framing {
                        Outgoing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                        Outgoing::Length(0) | Outgoing::Empty => {}
                        Outgoing::Length(_) => return Poll::Ready(Err(SendError::Body)),
                    }
                    self.ended = true;
                }
                Some(Err(_)) => return Poll::Ready(Err(SendError::Body)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match &mut self.framing {
                        Outgoing::Chunked => {
                            let mut line = BytesMut::with_capacity(18);
                            put_digits::<16>(&mut line, data.len() as u64);
                            line.put_slice(b"\r\n");
                            self.queue.extend([line.freeze(), data, Bytes::from_static(b"\r\n")]);
                        }
                        Outgoing::Length(left) if data.len() as u64 <= *left => {
                            *left -= data.len() as u64;
                            self.queue.push_back(data);
                        }
                        Outgoing::Length(_) | Outgoing::Empty => {
                            return Poll::Ready(Err(SendError::Body));
                        }
                    },
                    Err(frame) => {
                        // Trailers end the body; only chunked framing can carry them.
                        if let (Ok(trailers), Outgoing::Chunked) = (frame.into_trailers(), self.framing) {
                            let mut last = BytesMut::from(&b"0\r\n"[..]);
                            put_fields(&mut last, trailers.iter().filter(|(name, _)| allowed_in_trailers(name)));
                            last.put_slice(b"\r\n");
                            self.queue.push_back(last.freeze());
                            self.ended = true;
                        }
                    }
                },
            }
        }
    }
}

/// Writes all of `buf`, noting in `wrote` that a byte went out.
fn poll_write_all(io: &mut Stream, cx: &mut Context<'_>, buf: &mut impl Buf, wrote: &mut bool) -> Poll<Result<(), SendError>> {
    while buf.has_remaining() {
        let written = ready!(Pin::new(&mut *io).poll_write(cx, buf.chunk())).map_err(|_| SendError::Io)?;
        if written == 0 {
            return Poll::Ready(Err(SendError::Io));
        }
        *wrote = true;
        buf.advance(written);
    }
    Poll::Ready(Ok(()))
}

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunks, at this point of one.
    Chunked(Chunk),
    /// Everything until the server closes.
    UntilClose,
    /// Ended.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This much of the chunk's data is still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section (maybe empty) after the last chunk is next.
    Trailers,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Incoming,
    keep_alive: bool,
}

/// Reads until a final response head is in: interim (1xx) ones are skipped.
fn poll_head(conn: &mut Connection, head_request: bool, cx: &mut Context<'_>) -> Poll<Result<Head, Failure>> {
    loop {
        if !conn.read.is_empty() {
            match parse_head(&mut conn.read, &mut conn.fields, head_request).map_err(Failure::Protocol)? {
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Poll::Ready(Ok(head)),
                None if conn.read.len() >= MAX_HEAD => return Poll::Ready(Err(Failure::Protocol("the response head is too large"))),
                None => {}
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Err(Failure::Reset)),
            Ok(_) => {}
        }
    }
}

/// A header field's name and value, as offsets into the head.
pub(crate) type Field = (u32, u32, u32, u32);

/// Notes where each parsed field lies in the head that starts at `base` (at most a few tens
/// of KiB long), so that names and values can share the head's bytes once they are frozen.
pub(crate) fn note_fields(base: *const u8, parsed: &[httparse::Header<'_>], fields: &mut Vec<Field>) {
    let offset = |it: &[u8]| (it.as_ptr() as usize - base as usize) as u32;
    fields.clear();
    fields.extend(parsed.iter().map(|it| {
        let (name, value) = (offset(it.name.as_bytes()), offset(it.value));
        (name, name + it.name.len() as u32, value, value + it.value.len() as u32)
    }));
}

/// Which of the fields that frame a message a head carries, noted while its map is built
/// rather than looked up after (each lookup hashes the name again), and what its
/// `Connection` fields say.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Framers {
    pub(crate) transfer_encoding: bool,
    pub(crate) content_length: bool,
    /// A `Connection` field lists `close`.
    close: bool,
    /// A `Connection` field lists `keep-alive`.
    keep_alive: bool,
    /// A `Connection` field lists a token other than those two and the hop-by-hop field
    /// names: a field the message's next hop must not see.
    names_others: bool,
}

impl Framers {
    /// Whether the connection may carry another message: HTTP/1.1 unless `close` is listed,
    /// HTTP/1.0 only when `keep-alive` is.
    pub(crate) fn allows_reuse(&self, version: Version) -> bool {
        if version == Version::HTTP_11 { !self.close } else { self.keep_alive }
    }

    /// Reads one `Connection` value's tokens (ASCII, looked at as bytes).
    fn note_connection(&mut self, value: &[u8]) {
        for token in value.split(|it| *it == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() && !crate::proxy::is_hop_by_hop(token) {
                self.names_others = true;
            }
        }
    }
}

/// The header map of a frozen `head`, its values sharing the head's bytes; `None` when a name
/// or a value is not valid. With `drop_connection`, `Connection` fields that list only
/// connection options and hop-by-hop field names are read into the [`Framers`] and left out
/// of the map: a proxy would remove them anyway, and building the map's entry and then
/// removing it was a tenth of the work of forwarding a response. Fields that name others stay,
/// so that what they name is removed.
pub(crate) fn header_map(head: &Bytes, fields: &[Field], drop_connection: bool) -> Option<(HeaderMap, Framers)> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut framers = Framers::default();
    // The `Connection` fields left out, as where their values lie in `head`: a value is made
    // (a reference to `head` taken) only if it goes in after all.
    let mut dropped: smallvec::SmallVec<[std::ops::Range<usize>; 1]> = smallvec::SmallVec::new();
    for &(name, name_end, value, value_end) in fields {
        let name = HeaderName::from_bytes(&head[name as usize..name_end as usize]).ok()?;
        let range = value as usize..value_end as usize;
        if drop_connection && name == header::CONNECTION {
            // What `HeaderValue` would refuse, checked without making one.
            if !head[range.clone()].iter().all(|&it| it == b'\t' || (it >= b' ' && it != 0x7f)) {
                return None;
            }
            framers.note_connection(&head[range.clone()]);
            dropped.push(range);
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(range)).ok()?;
        if name == header::CONNECTION {
            framers.note_connection(value.as_bytes());
        }
        framers.transfer_encoding |= name == header::TRANSFER_ENCODING;
        framers.content_length |= name == header::CONTENT_LENGTH;
        headers.append(name, value);
    }
    // `close` is an option and also a field name (RFC 9110 §7.6.1): a field of that name keeps
    // the `Connection` fields in, for the proxy's strip to remove it with them.
    if framers.close && !dropped.is_empty() && headers.contains_key("close") {
        framers.names_others = true;
    }
    if framers.names_others {
        for range in dropped {
            headers.append(header::CONNECTION, HeaderValue::from_maybe_shared(head.slice(range)).ok()?);
        }
    }
    Some((headers, framers))
}

/// Parses a response head at the start of `read`, taking it off when it is complete.
fn parse_head(read: &mut BytesMut, fields: &mut Vec<Field>, head_request: bool) -> Result<Option<Head>, &'static str> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, read, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("the response has too many header fields"),
        Err(_) => return Err("the response head is malformed"),
    };
    let status = parsed.code.and_then(|it| StatusCode::from_u16(it).ok()).ok_or("the response status is invalid")?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    note_fields(read.as_ptr(), parsed.headers, fields);
    let bytes = read.split_to(len).freeze();
    let (mut headers, framers) = header_map(&bytes, fields, true).ok_or("a response header is invalid")?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("the server switched protocols unasked");
        }
        return Ok(Some(Head { status, version, headers, framing: Incoming::Done, keep_alive: true }));
    }
    let mut keep_alive = framers.allows_reuse(version);
    let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Incoming::Done
    } else if framers.transfer_encoding {
        // Sent with a length as well, it is a message to distrust: not reused after.
        if framers.content_length && headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if version != Version::HTTP_11 {
            // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): the framing is faulty.
            return Err("an HTTP/1.0 response has Transfer-Encoding");
        }
        // `chunked` alone, as Envoy takes it: the sidecar frames what it sends on itself, so a
        // response in another coding would reach the client without it.
        if !chunked_alone(&headers) {
            return Err("the response's Transfer-Encoding is not chunked alone");
        }
        Incoming::Chunked(Chunk::Size)
    } else if framers.content_length {
        Incoming::Length(content_length(&headers).ok_or("the response's Content-Length is invalid")?)
    } else {
        Incoming::UntilClose
    };
    let framing = if framing == Incoming::Length(0) { Incoming::Done } else { framing };
    Ok(Some(Head { status, version, headers, framing, keep_alive }))
}

/// [`Framers::allows_reuse`] of a header map's `Connection` fields.
pub(crate) fn connection_allows_reuse(headers: &HeaderMap, version: Version) -> bool {
    let mut framers = Framers::default();
    for value in headers.get_all(header::CONNECTION) {
        framers.note_connection(value.as_bytes());
    }
    framers.allows_reuse(version)
}

/// Whether the transfer coding is one `chunked`, in one field.
fn chunked_alone(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    codings.next().is_some_and(|it| it.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")) && codings.next().is_none()
}

/// The one length every `Content-Length` field (and each item of a list in one) agrees on.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    // The usual one field of at most 19 digits (any such number fits in a u64).
    if let (Some(only), None) = (values.next(), values.next())
        && (1..=19).contains(&only.len())
        && only.as_bytes().iter().all(u8::is_ascii_digit)
    {
        return Some(only.as_bytes().iter().fold(0, |len, it| len * 10 + u64::from(it - b'0')));
    }
    let mut agreed = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.to_str().ok()?.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|it| it.is_ascii_digit()) {
                return None;
            }
            let len = item.parse::<u64>().ok()?;
            if agreed.is_some_and(|it| it != len) {
                return None;
            }
            agreed = Some(len);
        }
    }
    agreed
}

/// A response body read from its connection as it is polled. It also sends what is left of
/// the request body, for a response that came early.
struct Reading<F> {
    conn: Option<Connection>,
    framing: Incoming,
    sending: Option<Sending>,
    reusable: bool,
    done: Option<F>,
}

impl<F: Finish> Reading<F> {
    /// The body ended: the connection goes back if it can carry another request.
    fn end(&mut self) {
        self.framing = Incoming::Done;
        let (Some(mut conn), Some(done)) = (self.conn.take(), self.done.take()) else { return };
        if self.reusable && self.sending.is_none() && conn.read.is_empty() {
            conn.recycle();
            done(conn);
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Incoming::Done;
        self.conn = None;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl<F: Finish> hyper::body::Body for Reading<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // An early response: the request body keeps going out while the response comes in.
        if let (Some(sending), Some(conn)) = (this.sending.as_mut(), this.conn.as_mut()) {
            match sending.poll(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.sending = None,
                Poll::Ready(Err(_)) => {
                    this.sending = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            if this.framing == Incoming::UntilClose {
                if conn.read.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(1..) => {}
                        Ok(0) => {
                            this.end();
                            return Poll::Ready(None);
                        }
                        Err(_) => return this.fail("the upstream connection failed during the response body"),
                    }
                }
                let data = conn.read.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match decode(&mut conn.read, &mut this.framing) {
                Ok(Decoded::Frame(frame)) => {
                    if this.framing == Incoming::Done {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(1..) => {}
                    _ if matches!(this.framing, Incoming::Chunked(_)) => {
                        return this.fail("the upstream closed the connection inside a chunked response body");
                    }
                    _ => return this.fail("the upstream closed the connection before the response body's end"),
                },
                Err(why) => return this.fail(why),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Incoming::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Incoming::Length(left) => SizeHint::with_exact(left),
            Incoming::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What the next step of reading a body out of a buffer gave.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Data, or the trailers that end a chunked body.
    Frame(Frame<Bytes>),
    /// The body has ended, with no more frames.
    End,
    /// More must be read first.
    More,
}

/// Takes the next piece of a body framed by `framing` off the front of `read`, and moves
/// `framing` on; shared by response bodies (from upstreams) and request bodies (from clients).
/// `UntilClose` is the caller's: only the end of the connection ends such a body.
pub(crate) fn decode(read: &mut BytesMut, framing: &mut Incoming) -> Result<Decoded, &'static str> {
    loop {
        match *framing {
            Incoming::Done | Incoming::UntilClose => return Ok(Decoded::End),
            Incoming::Length(_) | Incoming::Chunked(Chunk::Data(_)) if read.is_empty() => return Ok(Decoded::More),
            Incoming::Length(left) => {
                let take = (read.len() as u64).min(left) as usize;
                let data = read.split_to(take).freeze();
                *framing = if left == take as u64 { Incoming::Done } else { Incoming::Length(left - take as u64) };
                return Ok(Decoded::Frame(Frame::data(data)));
            }
            Incoming::Chunked(Chunk::Size) => match chunk_size(read) {
                Ok(httparse::Status::Complete((used, size))) => {
                    read.advance(used);
                    *framing = Incoming::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                Ok(httparse::Status::Partial) if read.len() < MAX_CHUNK_LINE => return Ok(Decoded::More),
                _ => return Err("an invalid chunk size"),
            },
            Incoming::Chunked(Chunk::Data(left)) => {
                let take = (read.len() as u64).min(left) as usize;
                let data = read.split_to(take).freeze();
                let left = left - take as u64;
                *framing = Incoming::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                return Ok(Decoded::Frame(Frame::data(data)));
            }
            Incoming::Chunked(Chunk::DataEnd) if read.len() < 2 => return Ok(Decoded::More),
            Incoming::Chunked(Chunk::DataEnd) => {
                if &read[..2] != b"\r\n" {
                    return Err("a chunk that does not end with CRLF");
                }
                read.advance(2);
                *framing = Incoming::Chunked(Chunk::Size);
            }
            Incoming::Chunked(Chunk::Trailers) => match parse_trailers(read)? {
                Some(trailers) => {
                    *framing = Incoming::Done;
                    if trailers.is_empty() {
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::Frame(Frame::trailers(trailers)));
                }
                None if read.len() < MAX_HEAD => return Ok(Decoded::More),
                None => return Err("the trailers are too large"),
            },
        }
    }
}

/// A chunk-size line (RFC 9112 §7.1): httparse reads the size and skips extensions once the
/// line is known to start with a hex digit and to hold no control bytes but HTAB before its
/// CRLF. httparse alone takes a line without digits as the last chunk, and a bare LF inside an
/// extension; either would end a body where the server did not.
pub(crate) fn chunk_size(buf: &[u8]) -> Result<httparse::Status<(usize, u64)>, ()> {
    let Some(first) = buf.first() else { return Ok(httparse::Status::Partial) };
    if !first.is_ascii_hexdigit() {
        return Err(());
    }
    let end = buf.iter().position(|it| *it == b'\r' || *it == b'\n' || (it.is_ascii_control() && *it != b'\t'));
    match end {
        None => Ok(httparse::Status::Partial),
        Some(end) if buf[end] != b'\r' => Err(()),
        Some(end) if end + 1 >= buf.len() => Ok(httparse::Status::Partial),
        Some(end) if buf[end + 1] != b'\n' => Err(()),
        Some(_) => httparse::parse_chunk_size(buf).map_err(|_| ()),
    }
}

/// Fields a trailer section may not carry (RFC 9110 §6.5.1): framing, routing, connection
/// control and credentials belong to the head, where policy saw them.
pub(crate) fn allowed_in_trailers(name: &HeaderName) -> bool {
    const BANNED: [HeaderName; 13] = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::WWW_AUTHENTICATE,
        header::SET_COOKIE,
        header::COOKIE,
    ];
    !BANNED.contains(name) && name.as_str() != "keep-alive"
}

/// The trailer section after the last chunk, taken off `read` when complete.
fn parse_trailers(read: &mut BytesMut) -> Result<Option<HeaderMap>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(read, &mut slots) {
        Ok(httparse::Status::Complete((len, fields))) => {
            // httparse ends a line at a bare LF; so would `0\r\n\n` end the body here where
            // a server that wants CRLF reads the next bytes as a trailer line.
            if read[..len].iter().enumerate().any(|(at, it)| *it == b'\n' && (at == 0 || read[at - 1] != b'\r')) {
                return Err("a bare LF in the trailers");
            }
            let mut trailers = HeaderMap::new();
            for field in fields.iter() {
                let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| "a trailer name is invalid")?;
                let value = HeaderValue::from_bytes(field.value).map_err(|_| "a trailer value is invalid")?;
                if allowed_in_trailers(&name) {
                    trailers.append(name, value);
                }
            }
            read.advance(len);
            Ok(Some(trailers))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("malformed trailers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Request;

    fn head_of(raw: &[u8], head_request: bool) -> Result<Option<Head>, &'static str> {
        parse_head(&mut BytesMut::from(raw), &mut Vec::new(), head_request)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &[u8]| head_of(raw, false).expect("valid").expect("complete").framing;
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Incoming::Length(5));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"), Incoming::Length(5));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"), Incoming::Chunked(Chunk::Size));
        // Another coding would reach the client without its name, the sidecar framing the body
        // anew: refused (502), as Envoy refuses it.
        for coding in ["gzip", "gzip, chunked", "chunked, chunked", "chunked\r\ntransfer-encoding: chunked"] {
            let raw = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {coding}\r\n\r\n");
            assert!(head_of(raw.as_bytes(), false).is_err(), "{coding}");
        }
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked \r\n\r\n"), Incoming::Chunked(Chunk::Size));
        assert!(head_of(b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false).is_err(), "HTTP/1.0 has no codings");
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), Incoming::UntilClose);
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"), Incoming::Done);
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\n\r\n"), Incoming::Done);
        let head = head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).expect("valid").expect("complete");
        assert_eq!(head.framing, Incoming::Done, "a response to HEAD has no body");
        assert!(head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", false).is_err());
        assert!(head_of(b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", false).is_err());
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 0012\r\n\r\n"), Incoming::Length(12));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"), Incoming::Length(5));
        assert!(head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", false).is_err());
        let largest = b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n";
        assert_eq!(framing(largest), Incoming::Length(u64::MAX));
        assert!(head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n", false).is_err(), "past u64");
        assert!(matches!(head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", false), Ok(None)));
        assert!(head_of(b"HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
    }

    #[test]
    fn lengths_and_chunk_sizes_are_written_as_their_digits() {
        let written = |n: u64, hex: bool| {
            let mut out = BytesMut::new();
            if hex {
                put_digits::<16>(&mut out, n)
            } else {
                put_digits::<10>(&mut out, n)
            }
            String::from_utf8(out.to_vec()).expect("ASCII")
        };
        for n in [0, 1, 9, 10, 255, 4096, 1_000_000_007, u64::MAX] {
            assert_eq!(written(n, false), n.to_string());
            assert_eq!(written(n, true), format!("{n:x}"));
        }
        let mut out = BytesMut::new();
        put_content_length(&mut out, 42);
        assert_eq!(&out[..], b"content-length: 42\r\n");
    }

    #[test]
    fn connection_tokens_decide_reuse_in_any_case_and_place() {
        let reused = |values: &[&str], version: Version| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::CONNECTION, HeaderValue::from_str(value).expect("valid"));
            }
            connection_allows_reuse(&headers, version)
        };
        assert!(reused(&[], Version::HTTP_11));
        assert!(reused(&["keep-alive"], Version::HTTP_11));
        assert!(!reused(&["close"], Version::HTTP_11));
        assert!(!reused(&["Keep-Alive, CLOSE"], Version::HTTP_11));
        assert!(!reused(&["upgrade", " close "], Version::HTTP_11));
        assert!(reused(&["closed, x-close"], Version::HTTP_11), "only the whole token counts");
        assert!(!reused(&[], Version::HTTP_10));
        assert!(reused(&["te,keep-alive"], Version::HTTP_10));
    }

    #[test]
    fn chunk_size_lines_need_a_digit_and_no_control_bytes() {
        use httparse::Status::{Complete, Partial};
        assert_eq!(chunk_size(b"1f;name=value\r\nrest"), Ok(Complete((15, 31))));
        assert_eq!(chunk_size(b"0\r\n"), Ok(Complete((3, 0))));
        assert_eq!(chunk_size(b"1f;na"), Ok(Partial));
        assert_eq!(chunk_size(b"1f\r"), Ok(Partial));
        assert_eq!(chunk_size(b""), Ok(Partial));
        assert!(chunk_size(b"\r\n\r\n").is_err(), "no digit is not the last chunk");
        assert!(chunk_size(b";x\r\n").is_err());
        assert!(chunk_size(b"1;a\nb\r\n").is_err(), "a bare LF in an extension");
        assert!(chunk_size(b"1;a\x00\r\n").is_err());
        assert!(chunk_size(b"1\r\r\n").is_err());
        assert!(chunk_size(b"zz\r\n").is_err());
    }

    #[test]
    fn reuse_follows_the_connection_header_and_the_version() {
        let keep = |raw: &[u8]| head_of(raw, false).expect("valid").expect("complete").keep_alive;
        assert!(keep(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(keep(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"));
        assert!(!keep(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"), "both lengths: not reused");
    }

    #[test]
    fn header_values_share_the_read_buffer_and_the_head_is_taken_off() {
        let mut read = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: test\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nokHTTP"[..]);
        let head = parse_head(&mut read, &mut Vec::new(), false).expect("valid").expect("complete");
        assert_eq!(head.headers["server"], "test");
        assert_eq!(head.headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(&read[..], b"okHTTP");
    }

    /// A body of unknown length.
    struct Unsized;

    impl hyper::body::Body for Unsized {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(None)
        }
    }

    #[test]
    fn requests_are_framed_by_their_body() {
        let request = |method: Method, body: Body, length: Option<&str>| {
            let mut builder = Request::builder().method(method).uri("http://ignored/a?b=1").header(header::HOST, "svc");
            if let Some(length) = length {
                builder = builder.header(header::CONTENT_LENGTH, length);
            }
            let (parts, body) = builder.body(body).expect("request").into_parts();
            let (head, outgoing) = encode_head(&parts, &body, "unused");
            (String::from_utf8(head.to_vec()).expect("text"), outgoing)
        };
        let (head, outgoing) = request(Method::GET, crate::proxy::empty(), None);
        assert_eq!(head, "GET /a?b=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
        assert!(matches!(outgoing, Outgoing::Empty));
        let (head, _) = request(Method::POST, crate::proxy::empty(), None);
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
        let (head, outgoing) = request(Method::POST, crate::proxy::full(Bytes::from_static(b"abc")), Some("3"));
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(matches!(outgoing, Outgoing::Length(3)));
        let (head, outgoing) = request(Method::POST, http_body_util::BodyExt::boxed(Unsized), None);
        assert!(head.ends_with("transfer-encoding: chunked\r\n\r\n"), "{head}");
        assert!(matches!(outgoing, Outgoing::Chunked));
        let (head, outgoing) = request(Method::POST, http_body_util::BodyExt::boxed(Unsized), Some("5"));
        assert!(head.ends_with("content-length: 5\r\n\r\n"), "a declared length frames a body of unknown size: {head}");
        assert!(matches!(outgoing, Outgoing::Length(5)));
        let (head, _) = request(Method::GET, crate::proxy::empty(), Some("0"));
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "a GET that declared its empty body keeps saying so: {head}");
        let (head, _) = request(Method::GET, crate::proxy::empty(), Some("zero"));
        assert!(!head.contains("content-length"), "an invalid length is not passed on: {head}");
        let mut parts = Request::builder().uri("/").body(()).expect("request").into_parts().0;
        parts.headers.append(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        parts.headers.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        let (head, _) = encode_head(&parts, &crate::proxy::empty(), "svc");
        let head = String::from_utf8(head.to_vec()).expect("text");
        assert_eq!(head, "GET / HTTP/1.1\r\naccept: */*\r\nhost: svc\r\ncontent-length: 0\r\n\r\n", "the fields after a length go too");
    }

    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that reads one request (framed by its length or chunks) and writes `answer`,
    /// then closes; it hands back what it read.
    async fn one_exchange(answer: &'static [u8]) -> (Connection, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let body = &text[end + 4..];
                    let length = text.lines().find_map(|it| it.strip_prefix("content-length: ")?.trim().parse::<usize>().ok());
                    let whole = if text.contains("transfer-encoding: chunked") {
                        body.ends_with("0\r\n\r\n")
                    } else {
                        body.len() >= length.unwrap_or(0)
                    };
                    if whole {
                        break;
                    }
                }
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => got.extend_from_slice(&buffer[..read]),
                }
            }
            let _ = stream.write_all(answer).await;
            got
        });
        let stream = TcpStream::connect(address).await.expect("connect");
        (Connection::new(Either::Left(stream)), server)
    }

    /// A `Finish` that keeps the connection it is given, to show it was given back.
    fn keeper() -> (impl Finish, Arc<Mutex<Option<Connection>>>) {
        let kept = Arc::new(Mutex::new(None));
        let slot = kept.clone();
        (move |conn| *slot.lock().expect("lock") = Some(conn), kept)
    }

    /// `request` exchanged on `conn`, with `fallback` as the host for a head without one.
    async fn sent(conn: Connection, request: Request<Body>, done: impl Finish) -> Result<Response<Body>, Failure> {
        let (parts, body) = request.into_parts();
        exchange(conn, &parts, body, "fallback", done).await
    }

    #[tokio::test]
    async fn a_head_without_host_is_sent_with_the_fallback_one() {
        let (conn, server) = one_exchange(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let (done, _kept) = keeper();
        let request = Request::builder().uri("/x").body(crate::proxy::empty()).expect("request");
        sent(conn, request, done).await.expect("response");
        assert_eq!(server.await.expect("server"), b"GET /x HTTP/1.1\r\nhost: fallback\r\n\r\n");
    }

    fn get(method: Method, body: Body) -> Request<Body> {
        Request::builder().method(method).uri("/x").header(header::HOST, "svc").body(body).expect("request")
    }

    #[tokio::test]
    async fn connection_options_are_read_and_left_out_of_the_response_unless_they_name_a_field() {
        // Options only: read (the connection is kept) and not in the map.
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok").await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        assert!(!response.headers().contains_key(header::CONNECTION));
        assert_eq!(response.headers()["x-a"], "1");
        assert!(kept.lock().expect("lock").is_some(), "kept alive");
        // `close` among them: the connection is not reused.
        let (conn, _server) =
            one_exchange(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nConnection: te, CLOSE\r\ncontent-length: 2\r\n\r\nok").await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        assert!(!response.headers().contains_key(header::CONNECTION));
        assert!(kept.lock().expect("lock").is_none(), "closed");
        // A field named: every Connection field stays, for the proxy to remove it and what it names.
        let (conn, _server) = one_exchange(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nx-secret: 1\r\nConnection: x-secret\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let (done, kept) = keeper();
        let mut response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        let listed: Vec<_> = response.headers().get_all(header::CONNECTION).iter().collect();
        assert_eq!(listed, ["keep-alive", "x-secret"]);
        assert!(kept.lock().expect("lock").is_some(), "kept alive");
        crate::proxy::strip_hop_by_hop(response.headers_mut(), false);
        assert!(!response.headers().contains_key("x-secret") && !response.headers().contains_key(header::CONNECTION));
        // `close` is a field name too.
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\nclose: secret\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok").await;
        let (done, kept) = keeper();
        let mut response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        assert!(kept.lock().expect("lock").is_none(), "closed");
        crate::proxy::strip_hop_by_hop(response.headers_mut(), false);
        assert!(!response.headers().contains_key("close"), "the field `close` names goes");
    }

    #[tokio::test]
    async fn a_chunked_response_streams_with_its_trailers_and_frees_the_connection() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\ncontent-length: 9\r\n\r\n";
        let (conn, server) = one_exchange(answer).await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "the interim 100 is skipped");
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(!trailers.contains_key("content-length"), "framing fields are not trailers");
        assert_eq!(&collected.to_bytes()[..], b"hello world");
        assert!(kept.lock().expect("lock").is_some(), "given back once both messages ended");
        assert_eq!(server.await.expect("server"), b"GET /x HTTP/1.1\r\nhost: svc\r\n\r\n");
    }

    #[tokio::test]
    async fn a_streamed_request_body_goes_out_chunked() {
        let (conn, server) = one_exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let (done, kept) = keeper();
        let chunks = http_body_util::StreamBody::new(tokio_stream_of(&[b"ab", b"cde"]));
        let response = sent(conn, get(Method::POST, chunks.boxed()), done).await.expect("response");
        assert_eq!(&response.into_body().collect().await.expect("body").to_bytes()[..], b"ok");
        assert!(kept.lock().expect("lock").is_some());
        let sent = String::from_utf8(server.await.expect("server")).expect("text");
        assert!(sent.ends_with("transfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{sent}");
    }

    /// Data frames as a stream whose length is unknown.
    fn tokio_stream_of(
        chunks: &'static [&'static [u8]],
    ) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static {
        struct Frames(std::slice::Iter<'static, &'static [u8]>);
        impl futures_core::Stream for Frames {
            type Item = Result<Frame<Bytes>, BoxError>;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                Poll::Ready(self.0.next().map(|it| Ok(Frame::data(Bytes::from_static(it)))))
            }
        }
        Frames(chunks.iter())
    }

    #[tokio::test]
    async fn a_response_ended_by_close_is_read_whole_and_its_connection_not_kept() {
        let (conn, server) = one_exchange(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("response");
        server.await.expect("server");
        assert_eq!(&response.into_body().collect().await.expect("body").to_bytes()[..], b"until the end");
        assert!(kept.lock().expect("lock").is_none());
    }

    #[tokio::test]
    async fn a_response_to_head_has_no_body_whatever_its_length_says() {
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n").await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::HEAD, crate::proxy::empty()), done).await.expect("response");
        assert_eq!(response.headers()["content-length"], "100");
        assert!(response.body().is_end_stream());
        assert!(kept.lock().expect("lock").is_some());
    }

    #[tokio::test]
    async fn broken_responses_are_protocol_errors_and_a_short_body_is_an_error() {
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx").await;
        let (done, _) = keeper();
        assert!(matches!(sent(conn, get(Method::GET, crate::proxy::empty()), done).await, Err(Failure::Protocol(_))));
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
        let (done, _) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("head");
        assert!(response.into_body().collect().await.is_err(), "an invalid chunk size fails the body");
        let (conn, server) = one_exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
        let (done, kept) = keeper();
        let response = sent(conn, get(Method::GET, crate::proxy::empty()), done).await.expect("head");
        server.await.expect("server");
        assert!(response.into_body().collect().await.is_err(), "a body cut short is an error, not an end");
        assert!(kept.lock().expect("lock").is_none());
        let (conn, _server) = one_exchange(b"").await;
        let (done, _) = keeper();
        assert!(matches!(sent(conn, get(Method::GET, crate::proxy::empty()), done).await, Err(Failure::Reset)));
    }

    /// A request body that sends one chunk, then fails.
    struct Broken(bool);

    impl hyper::body::Body for Broken {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(Some(Err("the client went away".into())));
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
        }
    }

    #[tokio::test]
    async fn a_request_body_that_fails_ends_the_exchange_instead_of_waiting_for_an_answer() {
        // The server waits for the whole body, which never comes, and so never answers.
        let (conn, _server) = one_exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let (done, kept) = keeper();
        let exchanged = tokio::time::timeout(std::time::Duration::from_secs(5), sent(conn, get(Method::POST, Broken(false).boxed()), done));
        assert!(matches!(exchanged.await.expect("not stuck"), Err(Failure::RequestBody)));
        assert!(kept.lock().expect("lock").is_none(), "a half-sent request's connection is not reused");
    }
}
