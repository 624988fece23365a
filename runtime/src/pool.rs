//! Upstream connections.
//!
//! HTTP/1.1: idle keep-alive connections per endpoint, one request at a time on each, as
//! Envoy's HTTP/1.1 pool keeps them; a request drives its connection in its own task (see
//! h1.rs). Upgrades and CONNECT, which hand the connection over to a tunnel, go through
//! hyper's client on a connection of their own. HTTP/2: one multiplexed connection per
//! endpoint, on hyper's connection API. A proxy connects to the endpoint it picked and sends
//! the service's authority (`Host`, or `:authority`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::endpoints::Endpoint;
use crate::error::Error;
use crate::h1::{self, Connection, Failure};
use crate::proxy::{Body, BoxError};

/// How long an HTTP/1.1 connection may sit idle before it is closed (within `REAP_INTERVAL`)
/// rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most idle HTTP/1.1 connections kept per endpoint; past it, a finished connection closes.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How many reused connections a request that none of them took is tried on (the server had
/// closed them) before a new connection.
const UNSENT_RETRIES: usize = 3;

/// TLS on every connection of a pool: the client configuration and the name to send.
pub type ClientTls = (Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>);

/// Idle HTTP/1.1 connections, by endpoint.
pub struct Http1Pool {
    idle: IdleConnections,
    connect_timeout: Duration,
    tls: Option<ClientTls>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").field("connect_timeout", &self.connect_timeout).field("tls", &self.tls.is_some()).finish()
    }
}

/// Idle connections by endpoint authority, newest last, and whether a task is closing the
/// ones idle too long.
type IdleConnections = Arc<Mutex<IdleState>>;

#[derive(Default)]
struct IdleState {
    by_endpoint: BTreeMap<Arc<str>, Vec<Idle>>,
    reaping: bool,
}

/// How often idle connections are looked over for ones past the idle timeout.
const REAP_INTERVAL: Duration = Duration::from_secs(15);

/// Closes the pool's connections idle longer than the idle timeout, or closed by their
/// server, every `REAP_INTERVAL`, until none is idle or the pool is gone; the next
/// connection given back starts it again.
async fn reap(idle: std::sync::Weak<Mutex<IdleState>>) {
    loop {
        tokio::time::sleep(REAP_INTERVAL).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut state = lock(&idle);
        state.by_endpoint.retain(|_, list| {
            list.retain_mut(|it| it.since.elapsed() <= IDLE_TIMEOUT && it.conn.idle_and_open());
            !list.is_empty()
        });
        if state.by_endpoint.is_empty() {
            state.reaping = false;
            return;
        }
    }
}

struct Idle {
    conn: Connection,
    since: Instant,
    /// The endpoint the connection was opened to. It goes out of the pool with the connection
    /// and back in with it, so that a request takes no reference of its own to it.
    endpoint: Endpoint,
}

impl Http1Pool {
    /// An empty pool whose connections time out after `connect_timeout`, over TLS with `tls`
    /// (whose configuration should offer ALPN `http/1.1`) when given.
    pub fn new(connect_timeout: Duration, tls: Option<ClientTls>) -> Http1Pool {
        Http1Pool { idle: Arc::default(), connect_timeout, tls }
    }

    /// Sends the request of head `parts` (origin-form URI; without `Host`, the endpoint's
    /// authority is sent) and `body` to `endpoint`. The head is borrowed, so that a request
    /// tried again goes from the same one. The connection goes back to the pool when the
    /// response body has been read to its end.
    pub async fn send(&self, endpoint: &Endpoint, parts: &http::request::Parts, mut body: Body) -> Result<Response<Body>, Error> {
        let key = endpoint.authority();
        if parts.method == http::Method::CONNECT || parts.headers.contains_key(http::header::UPGRADE) {
            let mut request = crate::proxy::copy_head(parts).map(|()| body);
            // hyper's connection-level client sends the head as it is given.
            if !request.headers().contains_key(http::header::HOST) {
                let host = http::HeaderValue::from_str(endpoint.authority()).map_err(|_| crate::proxy::unforwardable())?;
                request.headers_mut().insert(http::header::HOST, host);
            }
            return Box::pin(self.send_switching(endpoint, request)).await;
        }
        for _ in 0..UNSENT_RETRIES {
            let Some((conn, opened_to)) = self.checkout(key) else { break };
            match h1::exchange(conn, parts, body, key, self.giving_back(opened_to)).await {
                Ok(response) => return Ok(response),
                // The connection closed before the request went out: another one.
                Err(Failure::Unsent(unsent)) => body = unsent,
                Err(failure) => return Err(failed(key, failure)),
            }
        }
        let conn = Connection::new(Box::pin(self.connect(endpoint)).await?);
        h1::exchange(conn, parts, body, key, self.giving_back(endpoint.clone())).await.map_err(|failure| failed(key, failure))
    }

    /// A request that switches protocols (an upgrade, or CONNECT) on a connection of its own,
    /// through hyper, whose upgrade hands the connection to the tunnel.
    async fn send_switching(&self, endpoint: &Endpoint, request: Request<Body>) -> Result<Response<Body>, Error> {
        let stream = self.connect(endpoint).await?;
        let reset = || Error::UpstreamReset(endpoint.authority().to_owned());
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| reset())?;
        // The connection runs until either side closes it, and may switch protocols.
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let response = sender.send_request(request).await.map_err(|_| reset())?;
        Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
    }

    /// An open idle connection to `key`, newest first, with the endpoint it was opened to;
    /// closed and stale ones are dropped.
    fn checkout(&self, key: &str) -> Option<(Connection, Endpoint)> {
        let mut idle = lock(&self.idle);
        let list = idle.by_endpoint.get_mut(key)?;
        let mut found = None;
        while let Some(mut it) = list.pop() {
            if it.since.elapsed() <= IDLE_TIMEOUT && it.conn.idle_and_open() {
                found = Some((it.conn, it.endpoint));
                break;
            }
        }
        if list.is_empty() {
            idle.by_endpoint.remove(key);
        }
        found
    }

    /// What puts a finished connection to `endpoint` back among the idle ones.
    fn giving_back(&self, endpoint: Endpoint) -> impl h1::Finish {
        let idle = self.idle.clone();
        move |conn| idle_again(&idle, endpoint, conn)
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<h1::Stream, Error> {
        within(self.connect_timeout, endpoint, open(endpoint, self.tls.as_ref())).await
    }
}

/// The error a failed HTTP/1.1 exchange with `key` answers with.
fn failed(key: &str, failure: Failure) -> Error {
    match failure {
        Failure::Unsent(_) | Failure::Reset => Error::UpstreamReset(key.to_owned()),
        Failure::Protocol(why) => Error::UpstreamProtocol(format!("{key}: {why}")),
        Failure::RequestBody => Error::BadRequest("the request body broke off or did not match its length"),
    }
}

/// A connection to `endpoint` (Nagle off), over TLS with `tls` when given. A TLS stream is
/// boxed: rustls's state is large, and connections move in and out of the pool.
pub(crate) async fn open(endpoint: &Endpoint, tls: Option<&ClientTls>) -> std::io::Result<h1::Stream> {
    let stream = TcpStream::connect((&*endpoint.address, endpoint.port)).await?;
    let _ = stream.set_nodelay(true);
    Ok(match tls {
        None => Either::Left(stream),
        Some((config, name)) => {
            Either::Right(Box::new(tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), stream).await?))
        }
    })
}

/// `connecting`, failed as a connect failure to `endpoint` when it fails or outlasts `limit`.
async fn within<T>(limit: Duration, endpoint: &Endpoint, connecting: impl Future<Output = std::io::Result<T>>) -> Result<T, Error> {
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connected)) => Ok(connected),
        _ => Err(Error::UpstreamConnect(endpoint.authority().to_owned())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|it| it.into_inner())
}

/// Puts a finished connection back among the idle ones, and starts reaping them if nothing
/// does.
fn idle_again(idle: &IdleConnections, endpoint: Endpoint, conn: Connection) {
    let mut state = lock(idle);
    // The authority is shared (a reference counted) only for a new entry.
    let list = match state.by_endpoint.get_mut(endpoint.authority()) {
        Some(list) => list,
        None => state.by_endpoint.entry(endpoint.shared_authority()).or_default(),
    };
    if list.len() < MAX_IDLE_PER_ENDPOINT {
        list.push(Idle { conn, since: Instant::now(), endpoint });
    }
    // Outside a runtime (a body dropped at shutdown) there is nothing to reap for.
    if !state.reaping
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        state.reaping = true;
        runtime.spawn(reap(Arc::downgrade(idle)));
    }
}

/// Live HTTP/2 connections, by endpoint.
#[derive(Debug)]
pub struct Http2Pool {
    connections: Mutex<BTreeMap<String, SendRequest<Body>>>,
    connect_timeout: Duration,
    /// TLS on every connection, with the name to send.
    tls: Option<ClientTls>,
}

impl Http2Pool {
    /// An empty pool whose connections time out after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Http2Pool {
        Http2Pool { connections: Mutex::new(BTreeMap::new()), connect_timeout, tls: None }
    }

    /// An empty pool whose connections are TLS with `config`, sending `name`.
    pub fn with_tls(
        connect_timeout: Duration,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Http2Pool {
        Http2Pool { connections: Mutex::new(BTreeMap::new()), connect_timeout, tls: Some((config, name)) }
    }

    /// Sends `request` (whose URI carries the authority to send) to `endpoint`.
    pub async fn send(&self, endpoint: &Endpoint, request: Request<Body>) -> Result<Response<Incoming>, Error> {
        let mut sender = self.sender(endpoint).await?;
        if sender.ready().await.is_err() {
            // The connection went away between checks: one fresh connection, then give up.
            self.forget(endpoint);
            sender = self.sender(endpoint).await?;
            sender.ready().await.map_err(|_| Error::UpstreamConnect(endpoint.authority().to_owned()))?;
        }
        sender.send_request(request).await.map_err(|err| {
            if refused_stream(&err) {
                Error::UpstreamRefused(endpoint.authority().to_owned())
            } else {
                Error::UpstreamReset(endpoint.authority().to_owned())
            }
        })
    }

    /// A sender on a live connection to `endpoint`, connecting when there is none.
    async fn sender(&self, endpoint: &Endpoint) -> Result<SendRequest<Body>, Error> {
        if let Some(sender) = self.lock().get(endpoint.authority()).filter(|it| !it.is_closed()) {
            return Ok(sender.clone());
        }
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is a large future that every
        // request's future would otherwise carry, and copy, for the rare request that connects.
        Box::pin(self.connect(endpoint)).await
    }

    /// A new connection to `endpoint`, kept for the requests after this one.
    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<Body>, Error> {
        let connected = async {
            let stream = open(endpoint, self.tls.as_ref()).await?;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
            // The connection runs until either side closes it; its error ends only its streams.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, std::io::Error>(sender)
        };
        let sender = within(self.connect_timeout, endpoint, connected).await?;
        self.lock().insert(endpoint.authority().to_owned(), sender.clone());
        Ok(sender)
    }

    fn forget(&self, endpoint: &Endpoint) {
        self.lock().remove(endpoint.authority());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SendRequest<Body>>> {
        self.connections.lock().unwrap_or_else(|it| it.into_inner())
    }
}

/// Whether an HTTP/2 request failed because the server reset its stream with REFUSED_STREAM
/// (RFC 9113 §8.7: the request was not processed).
fn refused_stream(err: &hyper::Error) -> bool {
    h2_reason(err) == Some(h2::Reason::REFUSED_STREAM)
}

/// The HTTP/2 error code of the first h2 error in `err`'s chain of causes, if there is one.
pub(crate) fn h2_reason(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut source = Some(err);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::empty;

    /// A server that answers every request on a connection with `answer`, counting the
    /// connections it accepts; it closes a connection after `per_connection` answers.
    async fn server(answer: &'static [u8], per_connection: usize) -> (Endpoint, Arc<AtomicUsize>) {
        let (endpoint, accepted, _) = server_counting_closes(answer, per_connection).await;
        (endpoint, accepted)
    }

    /// As `server`, also counting the connections the client closed.
    async fn server_counting_closes(answer: &'static [u8], per_connection: usize) -> (Endpoint, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = Endpoint::at(listener.local_addr().expect("address"));
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, closes) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closes = closes.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    for _ in 0..per_connection {
                        // Each test request is a body-less GET read whole by one read.
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => {
                                closes.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(_) => {}
                        }
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, accepted, closed)
    }

    /// `request` sent through `pool`, whose head it borrows.
    async fn send(pool: &Http1Pool, endpoint: &Endpoint, request: Request<Body>) -> Result<Response<Body>, Error> {
        let (parts, body) = request.into_parts();
        pool.send(endpoint, &parts, body).await
    }

    fn get() -> Request<Body> {
        Request::builder().uri("/").header(http::header::HOST, "test").body(empty()).expect("request")
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (endpoint, accepted) = server(OK, usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        for _ in 0..3 {
            let response = send(&pool, &endpoint, get()).await.expect("response");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (endpoint, accepted) = server(OK, 1).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        for _ in 0..3 {
            let response = send(&pool, &endpoint, get()).await.expect("response");
            response.into_body().collect().await.expect("body");
            // Let the close reach the pooled connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_takes_its_connection_along() {
        // The body is announced longer than it is: it never ends.
        let (endpoint, accepted) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial", usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        for _ in 0..2 {
            let response = send(&pool, &endpoint, get()).await.expect("response");
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"partial"));
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A request body that sends one chunk and then never ends.
    struct Endless(bool);

    impl hyper::body::Body for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_body_is_not_handed_out() {
        // The server answers as soon as it has read anything, before the body has ended.
        let (endpoint, accepted) = server(OK, usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        let upload = Request::builder()
            .method(http::Method::POST)
            .uri("/")
            .header(http::header::HOST, "test")
            .header(http::header::TRANSFER_ENCODING, "chunked")
            .body(Endless(false).boxed())
            .expect("request");
        let response = send(&pool, &endpoint, upload).await.expect("early answer");
        response.into_body().collect().await.expect("body");
        // The next request gets a connection of its own instead of waiting for that body.
        let next = tokio::time::timeout(Duration::from_secs(5), send(&pool, &endpoint, get())).await.expect("not stuck").expect("response");
        next.into_body().collect().await.expect("body");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_closed() {
        let (endpoint, _, closed) = server_counting_closes(OK, usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        let response = send(&pool, &endpoint, get()).await.expect("response");
        response.into_body().collect().await.expect("body");
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        // Time for a close to cross the socket, were there one.
        for _ in 0..20 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(closed.load(Ordering::SeqCst), 0, "closed before the idle timeout");
        // Closed within a reaper's interval past the timeout.
        tokio::time::sleep(REAP_INTERVAL + Duration::from_secs(2)).await;
        // The close crosses a real socket: give it up to 2 s of real time.
        for _ in 0..400 {
            if closed.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(closed.load(Ordering::SeqCst), 1, "still open after the idle timeout");
        assert!(lock(&pool.idle).by_endpoint.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_not_reused_though_not_yet_closed() {
        let (endpoint, accepted, _) = server_counting_closes(OK, usize::MAX).await;
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        let exchange = async || send(&pool, &endpoint, get()).await.expect("response").into_body().collect().await.expect("body");
        exchange().await;
        // Idle a second short of the timeout: reused.
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        exchange().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "not reused before the idle timeout");
        // Idle half a second past it, before the reaper's next look (it looks every 15 s from
        // the first give-back, and this one came 59 s after it): still pooled, not handed out.
        tokio::time::sleep(IDLE_TIMEOUT + Duration::from_millis(500)).await;
        assert_eq!(lock(&pool.idle).by_endpoint.values().map(Vec::len).sum::<usize>(), 1, "closed already");
        exchange().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reused past the idle timeout");
    }

    #[tokio::test]
    async fn an_upgrade_without_host_is_sent_with_the_endpoints_authority() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = Endpoint::at(listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => head.extend_from_slice(&buffer[..read]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            String::from_utf8_lossy(&head).to_lowercase()
        });
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        let upgrade = Request::builder()
            .uri("/ws")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::CONNECTION, "upgrade")
            .body(empty())
            .expect("request");
        let response = send(&pool, &endpoint, upgrade).await.expect("response");
        assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
        let head = server.await.expect("server");
        assert!(head.contains(&format!("host: {}\r\n", endpoint.authority())), "{head}");
    }

    #[tokio::test]
    async fn an_endpoint_nobody_listens_on_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = Endpoint::at(listener.local_addr().expect("address"));
        drop(listener);
        let pool = Http1Pool::new(Duration::from_secs(1), None);
        assert!(matches!(send(&pool, &endpoint, get()).await, Err(Error::UpstreamConnect(_))));
    }
}
