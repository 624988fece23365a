//! The HTTP/1 request guard: every request head on a connection is checked before the HTTP
//! stack sees a byte of it, and a malformed one is answered with 400 and the connection closed.
//!
//! hyper accepts some requests Envoy refuses: with both `Content-Length` and
//! `Transfer-Encoding` it silently drops the length (RFC 9112 allows either), and an oversized
//! head gets 431. A sidecar in front of other people's servers refuses both, as Envoy does,
//! because they are how request smuggling starts. The guard parses heads with `httparse` and
//! follows message framing (lengths, chunks read by `h1::chunk_size`, trailers) only
//! to know where the next head starts; it forwards the bytes unchanged.
//!
//! HTTP/2 connections (the h2c preface) and upgraded connections pass through untouched. A
//! request that asks for an upgrade (or a CONNECT) holds back the bytes after it until the
//! server says, through the connection's [`UpgradeSignal`], whether it switched protocols:
//! only then does the rest of the connection pass unchecked.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head accepted, as Envoy's default `max_request_headers_kb` (60 KiB).
pub const MAX_HEAD_BYTES: usize = 60 * 1024;
/// Most headers in a request head (Envoy's default `max_headers_count`).
pub const MAX_HEADERS: usize = 100;

/// How much room each read from the connection asks for.
pub(crate) const READ_CHUNK: usize = 8192;

pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing read yet: HTTP/1 or the HTTP/2 preface?
    Start,
    /// Waiting for a complete request head.
    Head,
    /// A body of known length: bytes left.
    Fixed(u64),
    /// A chunked body: waiting for a chunk-size line.
    ChunkSize,
    /// Chunk data and its CRLF: bytes left.
    ChunkData(u64),
    /// After the last chunk: trailers and the final CRLF.
    Trailers,
    /// After an upgrade or CONNECT request: waiting for the server's answer.
    AwaitUpgrade,
    /// Not HTTP/1 framing any more (HTTP/2, an upgrade, CONNECT): bytes flow unchecked.
    Passthrough,
    /// A malformed request: nothing more is read.
    Rejected,
}

/// A connection whose HTTP/1 request heads are checked before the server reads them.
#[derive(Debug)]
pub struct Guarded<T> {
    inner: T,
    state: State,
    /// Bytes read and not yet handed to the server: the first `checked` of them are checked
    /// and ready for it, the rest wait for the framing to say what they are. One buffer, so
    /// that a keep-alive connection reads every request into the same memory.
    buf: BytesMut,
    checked: usize,
    /// The 400 answer still to write, once the server shuts the connection down.
    reply: Option<BytesMut>,
    inner_eof: bool,
    /// The request being read asks for an upgrade: once its body is through, wait.
    upgrade_requested: bool,
    signal: UpgradeSignal,
}

/// How the server tells a connection's guard whether a request that asked for an upgrade
/// (or a CONNECT) switched protocols.
#[derive(Clone, Debug, Default)]
pub struct UpgradeSignal(Arc<Mutex<Signal>>);

#[derive(Debug, Default)]
struct Signal {
    answer: Option<bool>,
    waker: Option<Waker>,
}

impl UpgradeSignal {
    /// Whether the request `version`, `method` and `headers` make the guard wait for
    /// [`UpgradeSignal::answer`]: the guard's own test, so the two never disagree.
    pub fn awaited(method: &http::Method, headers: &http::HeaderMap) -> bool {
        method == http::Method::CONNECT || headers.contains_key(http::header::UPGRADE)
    }

    /// The server's answer to the request: `true` when the connection now carries another
    /// protocol.
    pub fn answer(&self, upgraded: bool) {
        let mut signal = self.0.lock().unwrap_or_else(|it| it.into_inner());
        signal.answer = Some(upgraded);
        if let Some(waker) = signal.waker.take() {
            waker.wake();
        }
    }

    /// Takes the answer, or registers to be woken by it.
    fn poll_answer(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut signal = self.0.lock().unwrap_or_else(|it| it.into_inner());
        match signal.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                signal.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Guarded<T> {
    /// Guards a connection; the server answers upgrade requests through `signal`.
    pub fn new(inner: T, signal: UpgradeSignal) -> Guarded<T> {
        Guarded {
            inner,
            state: State::Start,
            buf: BytesMut::new(),
            checked: 0,
            reply: None,
            inner_eof: false,
            upgrade_requested: false,
            signal,
        }
    }

    /// The bytes read but not yet checked.
    fn raw(&self) -> &[u8] {
        &self.buf[self.checked..]
    }

    /// Checks as many read bytes as the framing allows.
    fn advance(&mut self) {
        loop {
            let before = (self.state, self.raw().len());
            match self.state {
                State::Start => {
                    let n = self.raw().len().min(H2_PREFACE.len());
                    if self.raw()[..n] != H2_PREFACE[..n] {
                        self.state = State::Head;
                    } else if n == H2_PREFACE.len() {
                        self.state = State::Passthrough;
                    } else {
                        return;
                    }
                }
                State::Head if self.upgrade_requested => {
                    self.upgrade_requested = false;
                    self.state = State::AwaitUpgrade;
                    return;
                }
                State::Head => self.head(),
                State::Fixed(left) => {
                    let n = left.min(self.raw().len() as u64) as usize;
                    self.release(n);
                    self.state = if left == n as u64 { State::Head } else { State::Fixed(left - n as u64) };
                }
                State::ChunkSize => match crate::h1::chunk_size(self.raw()) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        self.release(used);
                        self.state = State::Trailers;
                    }
                    // The data and the CRLF after it.
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.release(used);
                        self.state = State::ChunkData(size.saturating_add(2));
                    }
                    Ok(httparse::Status::Partial) if self.raw().len() > 1024 => self.reject("a chunk-size line is too long"),
                    Ok(httparse::Status::Partial) => return,
                    Err(_) => self.reject("malformed chunk size"),
                },
                State::ChunkData(left) => {
                    let n = left.min(self.raw().len() as u64) as usize;
                    self.release(n);
                    self.state = if left == n as u64 { State::ChunkSize } else { State::ChunkData(left - n as u64) };
                }
                State::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(self.raw(), &mut headers) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            self.release(used);
                            self.state = State::Head;
                        }
                        Ok(httparse::Status::Partial) if self.raw().len() > MAX_HEAD_BYTES => self.reject("the trailers are too large"),
                        Ok(httparse::Status::Partial) => return,
                        Err(_) => self.reject("malformed trailers"),
                    }
                }
                State::Passthrough => {
                    let n = self.raw().len();
                    self.release(n);
                    return;
                }
                State::AwaitUpgrade | State::Rejected => return,
            }
            if (self.state, self.raw().len()) == before || self.raw().is_empty() && !matches!(self.state, State::Start) {
                return;
            }
        }
    }

    /// Checks a complete head, if there is one.
    fn head(&mut self) {
        // Empty lines before a request line are allowed (RFC 9112 §2.2).
        let blank = self.raw().iter().take_while(|it| **it == b'\r' || **it == b'\n').count();
        self.release(blank);
        if self.raw().is_empty() {
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let (used, next) = match request.parse(self.raw()) {
            Ok(httparse::Status::Partial) if self.raw().len() > MAX_HEAD_BYTES => return self.reject("the request head is too large"),
            Ok(httparse::Status::Partial) => return,
            Err(httparse::Error::TooManyHeaders) => return self.reject("too many headers"),
            Err(_) => return self.reject("malformed request head"),
            Ok(httparse::Status::Complete(used)) if used > MAX_HEAD_BYTES => return self.reject("the request head is too large"),
            Ok(httparse::Status::Complete(used)) => match framing(&request) {
                Ok(next) => (used, next),
                Err(why) => return self.reject(why),
            },
        };
        self.release(used);
        (self.state, self.upgrade_requested) = next;
    }

    fn release(&mut self, n: usize) {
        self.checked += n;
    }

    fn reject(&mut self, why: &str) {
        self.state = State::Rejected;
        self.buf.truncate(self.checked);
        self.reply = Some(bad_request(why));
    }
}

/// Why a request whose `Transfer-Encoding` is anything but one `chunked` is refused, with
/// 501 as Envoy and nginx refuse it: the proxy implements no other coding, and passing one on
/// after taking the chunks off would hand the upstream bytes framed as nobody sent them.
pub(crate) const UNSUPPORTED_CODING: &str = "a Transfer-Encoding other than chunked";

/// The whole answer to a malformed request (400, or 501 for [`UNSUPPORTED_CODING`]), after
/// which the connection closes.
pub(crate) fn bad_request(why: &str) -> BytesMut {
    let (status, body) = if why == UNSUPPORTED_CODING {
        ("501 Not Implemented", format!("not implemented: {why}"))
    } else {
        ("400 Bad Request", format!("bad request: {why}"))
    };
    let reply =
        format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    BytesMut::from(reply.as_bytes())
}

/// How a request's body is framed (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// How the body after a valid request head is framed, and whether the request asks for an
/// upgrade (after which the connection may become a tunnel), or why it is not valid: the rules
/// against request smuggling that Envoy applies, shared by the guard and the HTTP/1 server.
pub(crate) fn request_framing(request: &httparse::Request<'_, '_>) -> Result<(Framing, bool), &'static str> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upgrade = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            // 1*DIGIT (RFC 9110 §8.6): no sign, no list, no space but the field's own.
            let digits = header.value.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let value = std::str::from_utf8(digits).ok().and_then(|it| it.parse::<u64>().ok()).ok_or("invalid Content-Length")?;
            if length.is_some_and(|it| it != value) {
                return Err("conflicting Content-Length headers");
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // One field of `chunked` alone: a second `chunked` would frame the body twice.
            if transfer_encoding || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(UNSUPPORTED_CODING);
            }
            transfer_encoding = true;
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if transfer_encoding && length.is_some() {
        return Err("Content-Length together with Transfer-Encoding");
    }
    if transfer_encoding && request.version == Some(0) {
        return Err("Transfer-Encoding in an HTTP/1.0 request");
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok((framing, request.method == Some("CONNECT") || upgrade))
}

/// What the guard expects after a valid request head.
fn framing(request: &httparse::Request<'_, '_>) -> Result<(State, bool), &'static str> {
    let (framing, upgrade) = request_framing(request)?;
    let next = match framing {
        Framing::None => State::Head,
        Framing::Length(n) => State::Fixed(n),
        Framing::Chunked => State::ChunkSize,
    };
    Ok((next, upgrade))
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked > 0 {
                let n = this.checked.min(buf.remaining());
                buf.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::AwaitUpgrade {
                // Until the server answers the upgrade request, nothing after it is released.
                if ready!(this.signal.poll_answer(cx)) {
                    this.state = State::Passthrough;
                } else {
                    this.state = State::Head;
                }
                this.advance();
                continue;
            }
            // A rejected request, or the end of the stream: the server sees the end.
            if this.state == State::Rejected || this.inner_eof {
                return Poll::Ready(Ok(()));
            }
            // Read straight into the buffer's spare room: no zeroed chunk to copy from. Once
            // the server has taken every byte, the room is the same memory again.
            this.buf.reserve(READ_CHUNK);
            let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf))?;
            if read == 0 {
                this.inner_eof = true;
                // Whatever is left unchecked is an incomplete head or body; the server sees the end.
                if this.state == State::Passthrough {
                    this.checked = this.buf.len();
                }
                continue;
            }
            this.advance();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// The server closes the connection once it has answered everything before the bad
    /// request; the 400 goes out then, after those answers.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while let Some(reply) = this.reply.as_mut() {
            if reply.is_empty() {
                this.reply = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, reply))?;
            if n == 0 {
                this.reply = None;
                break;
            }
            reply.advance(n);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What the server behind the guard reads, and what the client receives.
    async fn run(input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(input).await.unwrap();
        client_write.shutdown().await.unwrap();
        let mut guarded = Guarded::new(server, UpgradeSignal::default());
        let mut seen = Vec::new();
        guarded.read_to_end(&mut seen).await.unwrap();
        guarded.shutdown().await.unwrap();
        drop(guarded);
        let mut reply = Vec::new();
        client_read.read_to_end(&mut reply).await.unwrap();
        (seen, reply)
    }

    #[tokio::test]
    async fn valid_requests_pass_unchanged_across_keep_alive() {
        let input = b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhelloPOST /y HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nGET /z HTTP/1.1\r\nhost: a\r\n\r\n";
        let (seen, reply) = run(input).await;
        assert_eq!(seen, input);
        assert!(reply.is_empty());
    }

    #[tokio::test]
    async fn content_length_with_transfer_encoding_is_refused_before_the_server_sees_it() {
        let input = b"GET / HTTP/1.1\r\nhost: a\r\n\r\nPOST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let (seen, reply) = run(input).await;
        assert_eq!(seen, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n");
        let reply = String::from_utf8(reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
        assert!(reply.ends_with("Content-Length together with Transfer-Encoding"), "{reply}");
    }

    #[tokio::test]
    async fn oversized_heads_and_bad_headers_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nhost: a\r\nx-big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        big.extend_from_slice(b"\r\n\r\n");
        let (seen, reply) = run(&big).await;
        assert!(seen.is_empty());
        assert!(String::from_utf8_lossy(&reply).contains("too large"));
        let (seen, reply) = run(b"GET / HTTP/1.1\r\nhost: a\r\nbad header: x\r\n\r\n").await;
        assert!(seen.is_empty());
        assert!(String::from_utf8_lossy(&reply).contains("malformed request head"));
        for coding in ["gzip", "gzip, chunked", "identity, chunked", "chunked, chunked", "chunked\r\ntransfer-encoding: chunked"] {
            let input = format!("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: {coding}\r\n\r\n4\r\nabcd\r\n0\r\n\r\n");
            let (seen, reply) = run(input.as_bytes()).await;
            assert!(seen.is_empty(), "{coding}");
            assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{coding}");
        }
    }

    /// What the server reads when it answers the one upgrade request with `upgraded`.
    async fn run_upgrade(input: &'static [u8], upgraded: bool) -> (Vec<u8>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(input).await.unwrap();
        client_write.shutdown().await.unwrap();
        let signal = UpgradeSignal::default();
        let answer = signal.clone();
        let mut guarded = Guarded::new(server, signal);
        // The server answers a moment later, as a proxy does after asking its upstream.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            answer.answer(upgraded);
        });
        let mut seen = Vec::new();
        guarded.read_to_end(&mut seen).await.unwrap();
        guarded.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_read.read_to_end(&mut reply).await.unwrap();
        (seen, reply)
    }

    #[tokio::test]
    async fn a_declined_upgrade_leaves_the_connection_guarded() {
        let input: &[u8] = b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nPOST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let (seen, reply) = run_upgrade(input, false).await;
        assert_eq!(seen, b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
        assert!(String::from_utf8_lossy(&reply).contains("Content-Length together with Transfer-Encoding"));
    }

    #[tokio::test]
    async fn an_accepted_upgrade_passes_the_tunnel_through() {
        let input: &[u8] = b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x05hello not HTTP at all";
        let (seen, reply) = run_upgrade(input, true).await;
        assert_eq!(seen, input);
        assert!(reply.is_empty());
    }

    #[tokio::test]
    async fn the_http2_preface_passes_through() {
        let mut input = H2_PREFACE.to_vec();
        input.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00 and anything else");
        let (seen, reply) = run(&input).await;
        assert_eq!(seen, input);
        assert!(reply.is_empty());
    }

    #[tokio::test]
    async fn bodies_arriving_one_byte_at_a_time_are_followed() {
        let input = b"POST /y HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let (client, server) = tokio::io::duplex(1);
        let (_, mut client_write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            for byte in input {
                client_write.write_all(&[*byte]).await.unwrap();
            }
            client_write.shutdown().await.unwrap();
        });
        let mut guarded = Guarded::new(server, UpgradeSignal::default());
        let mut seen = Vec::new();
        guarded.read_to_end(&mut seen).await.unwrap();
        writer.await.unwrap();
        let second = input.windows(5).position(|it| it == b"GET /").unwrap();
        assert_eq!(seen, &input[..second]);
        assert_eq!(guarded.state, State::Rejected);
    }
}
