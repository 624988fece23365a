//! The RPC data path: a caller's connection is read frame by frame; heartbeats are answered
//! here, requests are routed by their keys through the compiled RPC tables and forwarded, as
//! calls the connection's own task polls while it reads on, over multiplexed upstream
//! connections; responses go back under the caller's request ids. Failures are answered in
//! each protocol's own terms.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::head::RpcHead;
use super::mux::MuxPool;
use super::{Codec, bolt, dubbo};
use crate::accesslog::{AccessLog, Entry};
use crate::endpoints::Endpoint;
use crate::error::Error;
use crate::metrics::{Reporter, RpcLabels};
use crate::pool::ClientTls;
use crate::proxy::{Downstream, InboundPort, Proxy, pick_weighted_destination};
use crate::spec::{Decision, Forward, RetryOn};

/// Answers queued for a caller's connection before the tasks that answer wait.
const ANSWER_QUEUE: usize = 256;

/// How long connecting to the local application may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request's timeout when neither its caller nor its route or cluster sets one: Envoy's
/// default route timeout, so that a silent upstream never holds a caller for good.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests in flight on one caller's connection at most: past this the connection is not
/// read until some are answered, so a caller that sends without reading cannot grow memory.
const MAX_CALLS_PER_CONNECTION: usize = 1024;

/// How often a connection looks at how long it has been idle, or has held a frame half read.
const WATCH: Duration = Duration::from_secs(15);

/// A connection that read nothing for this long with no call in flight closes: three times the
/// heartbeat interval of Dubbo's clients (60 s), as Dubbo's server closes one; Bolt's clients
/// send theirs every 15 s.
const IDLE_LOOKS: u32 = 12;

/// A frame must be read whole within this many looks (about a minute) of its start being read:
/// one that never ends would hold its buffer, up to the largest frame, for as long as its
/// sender likes.
const HALF_READ_LOOKS: u32 = 4;

/// SOFA Bolt, v1 and v2 on one connection.
pub(crate) struct Bolt;

impl Codec for Bolt {
    type Frame = bolt::Frame;
    type Id = u32;
    const FIRST_ID: u32 = 1;
    const NAME: &'static str = "bolt";
    const OK: u16 = bolt::status::SUCCESS;

    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<bolt::Frame>, super::FrameError> {
        bolt::decode(buf, max_frame)
    }

    fn id(frame: &bolt::Frame) -> u32 {
        frame.head().request_id
    }

    fn next_id(id: u32) -> u32 {
        id.wrapping_add(1)
    }

    fn patch_id(raw: &mut [u8], id: u32) {
        bolt::patch_request_id(raw, id);
    }

    fn is_response(frame: &bolt::Frame) -> bool {
        frame.head().kind == bolt::Kind::Response
    }

    fn role(frame: &bolt::Frame) -> Role {
        let head = frame.head();
        match (head.kind, head.is_heartbeat()) {
            (bolt::Kind::Response, _) => Role::Response,
            (bolt::Kind::Request, true) => Role::Heartbeat,
            (bolt::Kind::Oneway, true) => Role::Ignored,
            (bolt::Kind::Request, false) => Role::Call { oneway: false },
            (bolt::Kind::Oneway, false) => Role::Call { oneway: true },
        }
    }

    fn head(frame: &bolt::Frame, _attachments: bool) -> Result<Option<RpcHead<'_>>, super::FrameError> {
        RpcHead::bolt(frame).map(Some)
    }

    fn timeout(frame: &bolt::Frame) -> Option<Duration> {
        frame.head().timeout()
    }

    fn heartbeat_reply(frame: &bolt::Frame) -> Bytes {
        bolt::reply(frame.head(), bolt::status::SUCCESS)
    }

    fn heartbeat_request() -> Bytes {
        bolt::heartbeat_request(0)
    }

    fn failure(frame: &bolt::Frame, error: &Error) -> Bytes {
        bolt::reply(frame.head(), Bolt::failure_status(error))
    }

    fn failure_status(error: &Error) -> u16 {
        match error {
            Error::NoRoute | Error::NoCluster | Error::NoHealthyUpstream(_) => bolt::status::NO_PROCESSOR,
            Error::Overflow | Error::RateLimited => bolt::status::SERVER_THREADPOOL_BUSY,
            Error::UpstreamTimeout => bolt::status::TIMEOUT,
            Error::UpstreamConnect(_) | Error::UpstreamReset(_) | Error::UpstreamRefused(_) => bolt::status::CONNECTION_CLOSED,
            Error::UpstreamProtocol(_) | Error::BadRequest(_) => bolt::status::CODEC_EXCEPTION,
            Error::Denied => bolt::status::SERVER_EXCEPTION,
            Error::Internal(_) => bolt::status::ERROR,
        }
    }

    fn status(frame: &bolt::Frame) -> u16 {
        frame.head().status
    }

    fn server_error(frame: &bolt::Frame) -> bool {
        frame.head().status != bolt::status::SUCCESS
    }

    fn answer(mut frame: bolt::Frame, id: u32) -> Bytes {
        frame.set_request_id(id);
        frame.into_bytes()
    }

    fn bytes(frame: &bolt::Frame) -> &[u8] {
        frame.as_bytes()
    }
}

/// Dubbo 2.
pub(crate) struct Dubbo;

impl Codec for Dubbo {
    type Frame = dubbo::Frame;
    type Id = u64;
    const FIRST_ID: u64 = 1;
    const NAME: &'static str = "dubbo";
    const OK: u16 = dubbo::status::OK as u16;

    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<dubbo::Frame>, super::FrameError> {
        dubbo::decode(buf, max_frame)
    }

    fn id(frame: &dubbo::Frame) -> u64 {
        frame.head().request_id
    }

    fn next_id(id: u64) -> u64 {
        id.wrapping_add(1)
    }

    fn patch_id(raw: &mut [u8], id: u64) {
        dubbo::patch_request_id(raw, id);
    }

    fn is_response(frame: &dubbo::Frame) -> bool {
        !frame.head().is_request()
    }

    fn role(frame: &dubbo::Frame) -> Role {
        let head = frame.head();
        match (head.is_request(), head.is_event(), head.is_two_way()) {
            (false, _, _) => Role::Response,
            (true, true, true) => Role::Heartbeat,
            (true, true, false) => Role::Ignored,
            (true, false, two_way) => Role::Call { oneway: !two_way },
        }
    }

    fn head(frame: &dubbo::Frame, attachments: bool) -> Result<Option<RpcHead<'_>>, super::FrameError> {
        RpcHead::dubbo(frame, attachments)
    }

    fn timeout(_: &dubbo::Frame) -> Option<Duration> {
        None
    }

    fn heartbeat_reply(frame: &dubbo::Frame) -> Bytes {
        dubbo::heartbeat_reply(frame.head())
    }

    fn heartbeat_request() -> Bytes {
        dubbo::heartbeat_request(0)
    }

    fn failure(frame: &dubbo::Frame, error: &Error) -> Bytes {
        let status = Dubbo::failure_status(error) as u8;
        let message = match error {
            Error::UpstreamReset(endpoint) => format!("the provider's connection closed before it answered: {endpoint}"),
            Error::UpstreamConnect(endpoint) => format!("cannot connect to the provider: {endpoint}"),
            other => other.to_string(),
        };
        dubbo::error_reply(frame.head(), status, &message)
    }

    fn failure_status(error: &Error) -> u16 {
        u16::from(match error {
            Error::NoRoute | Error::NoCluster | Error::NoHealthyUpstream(_) => dubbo::status::SERVICE_NOT_FOUND,
            Error::Overflow | Error::RateLimited => dubbo::status::SERVER_THREADPOOL_EXHAUSTED,
            Error::UpstreamTimeout => dubbo::status::SERVER_TIMEOUT,
            Error::BadRequest(_) => dubbo::status::BAD_REQUEST,
            Error::UpstreamProtocol(_) => dubbo::status::BAD_RESPONSE,
            Error::Denied => dubbo::status::SERVICE_ERROR,
            Error::UpstreamConnect(_) | Error::UpstreamReset(_) | Error::UpstreamRefused(_) | Error::Internal(_) => {
                dubbo::status::SERVER_ERROR
            }
        })
    }

    fn status(frame: &dubbo::Frame) -> u16 {
        u16::from(frame.head().status)
    }

    fn server_error(frame: &dubbo::Frame) -> bool {
        frame.head().status != dubbo::status::OK
    }

    fn answer(mut frame: dubbo::Frame, id: u64) -> Bytes {
        frame.set_request_id(id);
        frame.into_bytes()
    }

    fn bytes(frame: &dubbo::Frame) -> &[u8] {
        frame.as_bytes()
    }
}

/// Where a request went, for its log line.
#[derive(Debug, Default)]
struct Trace {
    route: &'static str,
    cluster: &'static str,
    /// The endpoint of the last try.
    upstream: Option<Arc<str>>,
}

/// Logs why a connection was closed for bytes that are no frame, at most one line every
/// [`REFUSED_LOG_EVERY`] with a count of the others since, so that a peer sending garbage on
/// many connections cannot flood the log.
fn refused(workload: &str, protocol: &str, from: &str, err: &crate::rpc::FrameError) {
    static LAST: std::sync::Mutex<Option<(tokio::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let now = tokio::time::Instant::now();
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match last.as_mut() {
        Some((at, unlogged)) if now.duration_since(*at) < REFUSED_LOG_EVERY => *unlogged += 1,
        _ => {
            let unlogged = last.map_or(0, |it| it.1);
            let more = if unlogged > 0 { format!(" ({unlogged} more since the last such line)") } else { String::new() };
            crate::server::say(&format!("{workload}: {protocol}: closed a connection from {from}: {err}{more}"));
            *last = Some((now, 0));
        }
    }
}

/// At most one line in this long about connections closed for bytes that are no frame.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a frame asks of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A request to route; `oneway` gets no response.
    Call { oneway: bool },
    /// A heartbeat, answered here.
    Heartbeat,
    /// A response: callers do not send them.
    Response,
    /// Nothing to do (a one-way heartbeat).
    Ignored,
}

/// The RPC side of one sidecar for one protocol: the proxy's clusters, with one multiplexed
/// connection pool per cluster, and the connections to the local application.
pub(crate) struct RpcProxy<C: Codec> {
    proxy: Arc<Proxy>,
    pools: Vec<MuxPool<C>>,
    app: MuxPool<C>,
    max_frame: usize,
}

/// Which way a connection's requests go.
#[derive(Clone)]
pub(crate) enum Side {
    /// From the application, routed to clusters.
    Outbound,
    /// From a caller to the application's `port`, under the workload's policies.
    Inbound { port: Arc<InboundPort>, peer: Arc<Downstream> },
}

impl<C: Codec> RpcProxy<C> {
    /// The RPC side of `proxy`, refusing frames over `max_frame` bytes both ways.
    pub(crate) fn new(proxy: Arc<Proxy>, max_frame: usize) -> RpcProxy<C> {
        let pools = proxy.clusters.iter().map(|_| MuxPool::default()).collect();
        RpcProxy { proxy, pools, app: MuxPool::default(), max_frame }
    }

    /// Serves one connection, until its peer closes it or sends bytes that are no frame: the
    /// application's to the outbound listener of this protocol, or a caller's to an inbound
    /// port. Once `drain` turns true the connection closes as soon as no request is in flight
    /// on it and no frame is half read, so that its peer reconnects elsewhere while a drain's
    /// deadline is still ahead, as an HTTP/1.1 connection closes after its answer.
    ///
    /// The connection's calls run inside this task, as a set it polls beside its reads,
    /// rather than a task each: spawning one per request (an aligned allocation, the
    /// scheduler's bookkeeping, the future moved into it) cost about a sixth of the request
    /// path. So with several workers (`--concurrency`) one connection's calls stay on one
    /// worker, as Envoy keeps a connection on one worker thread, where spawned calls could be
    /// stolen by idle workers: one connection gets one core's worth of routing (about 300,000
    /// calls a second on the benchmark machine), far above what one client connection carries.
    pub(crate) async fn serve<S>(self: Arc<Self>, stream: S, side: Side, mut drain: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut reader, writer) = tokio::io::split(stream);
        let (answers, queue) = mpsc::channel::<Bytes>(ANSWER_QUEUE);
        let writing = tokio::spawn(write_answers(queue, writer));
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut calls = FuturesUnordered::new();
        // Answers the writer's queue had no room for. The calls go on meanwhile: a caller
        // that reads slowly must not stall calls that hold a connect lock, a circuit
        // breaker's slot or a least-request count that other connections wait on.
        let mut waiting = Waiting::default();
        let mut draining = *drain.borrow();
        // A connection opened during a drain (the outbound listeners still take the
        // application's late requests) is served until it has had an answer.
        let (late, mut served) = (draining, false);
        // Looks at the clock every WATCH rather than a timer reset per read: reads are counted,
        // and a look with none since the last one counts as idle.
        let mut watch = tokio::time::interval_at(tokio::time::Instant::now() + WATCH, WATCH);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut reads, mut reads_seen, mut idle_looks) = (0u64, 0u64, 0u32);
        // Frames read whole, so that a look tells a frame stuck half read from a stream of
        // frames that keep coming.
        let (mut frames, mut frames_seen, mut half_read_looks) = (0u64, 0u64, 0u32);
        'read: loop {
            // Past MAX_CALLS_PER_CONNECTION in flight or unwritten, frames wait in the buffer
            // and the connection is not read until calls end.
            while calls.len() + waiting.len() < MAX_CALLS_PER_CONNECTION {
                let frame = match C::decode(&mut buf, self.max_frame) {
                    Ok(Some(frame)) => {
                        frames += 1;
                        frame
                    }
                    Ok(None) => break,
                    // The framing is lost: nothing after this can be read.
                    Err(err) => {
                        let from = match &side {
                            Side::Outbound => "the application".to_owned(),
                            Side::Inbound { peer, .. } => peer.ip.to_string(),
                        };
                        refused(self.proxy.spec.workload, C::NAME, &from, &err);
                        break 'read;
                    }
                };
                match C::role(&frame) {
                    Role::Heartbeat => waiting.answer(&answers, C::heartbeat_reply(&frame)),
                    Role::Call { oneway } => {
                        served = true;
                        // A call that panics (a bug) loses its answer, not the connection.
                        calls.push(AssertUnwindSafe(self.call(frame, oneway, &side)).catch_unwind());
                    }
                    Role::Response | Role::Ignored => {}
                }
            }
            if waiting.writer_gone {
                break;
            }
            let room = calls.len() + waiting.len() < MAX_CALLS_PER_CONNECTION;
            let idle = calls.is_empty() && waiting.is_empty();
            let may_close = idle && buf.is_empty() && (served || !late);
            tokio::select! {
                Some(answer) = calls.next(), if !calls.is_empty() => {
                    if let Ok(Some(answer)) = answer {
                        waiting.answer(&answers, answer);
                    }
                }
                permit = answers.reserve(), if !waiting.is_empty() => waiting.send(permit),
                read = reader.read_buf(&mut buf), if room => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => reads += 1,
                },
                _ = drain.wait_for(|it| *it), if !draining => draining = true,
                () = std::future::ready(()), if draining && may_close => break,
                _ = watch.tick() => {
                    idle_looks = if reads == reads_seen && idle { idle_looks + 1 } else { 0 };
                    // A frame's start sits in the buffer while there is room to read the rest,
                    // and no frame was read whole since the last look.
                    half_read_looks = if !buf.is_empty() && room && frames == frames_seen { half_read_looks + 1 } else { 0 };
                    (reads_seen, frames_seen) = (reads, frames);
                    if idle_looks >= IDLE_LOOKS || half_read_looks >= HALF_READ_LOOKS {
                        break;
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
        }
        // Calls in flight still answer before the connection closes; with the writer gone
        // they still run to their end, so that each is counted and logged.
        while !calls.is_empty() || !waiting.is_empty() {
            tokio::select! {
                Some(answer) = calls.next(), if !calls.is_empty() => {
                    if let Ok(Some(answer)) = answer {
                        waiting.answer(&answers, answer);
                    }
                }
                permit = answers.reserve(), if !waiting.is_empty() => waiting.send(permit),
            }
        }
        drop(answers);
        let _ = writing.await;
    }

    /// Routes and forwards one request, counts it and logs it; the answer to write back, if
    /// any.
    async fn call(&self, frame: C::Frame, oneway: bool, side: &Side) -> Option<Bytes> {
        // The clock is read twice per request (here and for its duration), the wall clock only
        // for a log line: reading it was a few percent of the request path.
        let started = tokio::time::Instant::now();
        let logging = !matches!(self.proxy.spec.access_log, AccessLog::Off);
        let start_time = logging.then(std::time::SystemTime::now);
        let caller_id = C::id(&frame);
        let mut trace = Trace::default();
        let head = C::head(&frame, self.proxy.spec.rpc_attachments);
        let result = match (head.as_ref().map(Option::as_ref), side) {
            (Err(_), _) => Err(Error::BadRequest("undecodable request")),
            // A Dubbo body in a serialization other than hessian2: no keys to route by.
            (Ok(None), _) => Err(Error::BadRequest("the request's serialization is not hessian2: no keys to route by")),
            (Ok(Some(head)), Side::Outbound) => match (self.proxy.spec.route_rpc)(head) {
                Decision::Forward(forward) => {
                    trace.route = forward.route;
                    self.forward(forward, &frame, started, &mut trace).await
                }
                Decision::NoRoute | Decision::Answer(_) => Err(Error::NoRoute),
            },
            (Ok(Some(head)), Side::Inbound { port, peer }) => self.to_app(head, port, peer, &frame, started, &mut trace).await,
        };
        let (status, flags) = match &result {
            Ok(Some(response)) => (C::status(response), "-"),
            Ok(None) => (C::OK, "-"),
            Err(error) => (C::failure_status(error), error.flag()),
        };
        let head = head.ok().flatten();
        let (service, method) = head.as_ref().map_or(("unknown", "unknown"), |it| (it.interface(), it.method()));
        let elapsed = started.elapsed();
        let reporter = if matches!(side, Side::Outbound) { Reporter::Source } else { Reporter::Destination };
        let labels = RpcLabels { reporter, protocol: C::NAME, service, method, status, flags };
        self.proxy.metrics.record_rpc(labels, elapsed);
        if logging {
            let entry = Entry {
                start: start_time,
                method: method.to_owned(),
                protocol: C::NAME,
                authority: head.as_ref().map(|it| it.service().to_owned()).unwrap_or_default(),
                route: trace.route,
                cluster: trace.cluster,
                upstream_host: trace.upstream.map(|it| it.to_string()).unwrap_or_default(),
                ..Entry::default()
            };
            crate::accesslog::write(&self.proxy.spec.access_log, &entry, status, flags, elapsed);
        }
        match result {
            Ok(Some(response)) => Some(C::answer(response, caller_id)),
            Ok(None) => None,
            Err(error) => (!oneway).then(|| C::failure(&frame, &error)),
        }
    }

    /// Hands a caller's request to the application, when the workload's authorization
    /// policies (its `methods` are RPC methods here) and inbound rate limit let it through.
    async fn to_app(
        &self,
        head: &RpcHead<'_>,
        port: &InboundPort,
        peer: &Downstream,
        frame: &C::Frame,
        started: tokio::time::Instant,
        trace: &mut Trace,
    ) -> Result<Option<C::Frame>, Error> {
        if !self.proxy.authorize_rpc(head.method(), port, peer) {
            return Err(Error::Denied);
        }
        if self.proxy.spec.inbound_rate_limit.is_some_and(|it| !it.admit(peer.ip)) {
            return Err(Error::RateLimited);
        }
        trace.upstream = Some(port.app.shared_authority());
        let deadline = started + C::timeout(frame).unwrap_or(DEFAULT_TIMEOUT);
        self.try_once(&self.app, &port.app, None, APP_CONNECT_TIMEOUT, frame, deadline).await
    }

    /// Sends `frame` on `pool`'s connection to `endpoint` (made if there is none) and waits
    /// for its answer until `deadline`: a copy of its own, under the caller's request id or,
    /// when another request waits under that one there, patched with another. The connection
    /// keeps the deadline; a timer here is armed only while a connection is being made.
    async fn try_once(
        &self,
        pool: &MuxPool<C>,
        endpoint: &Endpoint,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        frame: &C::Frame,
        deadline: tokio::time::Instant,
    ) -> Result<Option<C::Frame>, Error> {
        let connecting = pool.get(endpoint, tls, connect_timeout, self.max_frame);
        let mux = tokio::time::timeout_at(deadline, connecting).await.unwrap_or(Err(Error::UpstreamTimeout))?;
        let expects_response = C::role(frame) == Role::Call { oneway: false };
        mux.call(BytesMut::from(C::bytes(frame)), expects_response, Some(C::id(frame)), deadline).await
    }

    /// Sends the request to the route's cluster, trying again as its retry policy allows
    /// (connect failures, and resets when it says `reset`), within the request's timeout:
    /// the shorter of the caller's own (Bolt's timeout field) and the route's (or else the
    /// cluster's), counted from `started`.
    async fn forward(
        &self,
        forward: &'static Forward<'static>,
        frame: &C::Frame,
        started: tokio::time::Instant,
        trace: &mut Trace,
    ) -> Result<Option<C::Frame>, Error> {
        let Some(destination) = forward.destinations.get(pick_weighted_destination(forward.destinations)) else {
            return Err(Error::NoRoute);
        };
        let index = destination.cluster as usize;
        let (Some(cluster), Some(pool)) = (self.proxy.clusters.get(index), self.pools.get(index)) else {
            return Err(Error::NoCluster);
        };
        trace.cluster = cluster.spec.name;
        let Some(_admitted) = cluster.admit_request() else { return Err(Error::Overflow) };
        forward.stats.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The caller waits no longer than its own timeout, and the route (or else the
        // cluster) caps it.
        let configured = forward.timeout_ms.or(cluster.spec.request_timeout_ms).map(Duration::from_millis);
        let deadline = started + C::timeout(frame).into_iter().chain(configured).min().unwrap_or(DEFAULT_TIMEOUT);
        let connect_timeout = Duration::from_millis(cluster.spec.connect_timeout_ms);
        let retries = &forward.retries;
        let mut attempt = 0;
        let mut _retrying = None;
        loop {
            let endpoint: Endpoint = cluster.pick().ok_or(Error::NoHealthyUpstream(cluster.spec.name))?;
            let _active = cluster.start_request(&endpoint);
            trace.upstream = Some(endpoint.shared_authority());
            // A try ends at the overall deadline, or sooner at its own.
            let per_try = retries.per_try_timeout_ms.map(|it| tokio::time::Instant::now() + Duration::from_millis(it));
            let try_deadline = per_try.map_or(deadline, |it| it.min(deadline));
            let result = self.try_once(pool, &endpoint, cluster.raw_tls.as_ref(), connect_timeout, frame, try_deadline).await;
            cluster.observe_outcome(&endpoint, result.as_ref().map(|it| it.as_ref().is_some_and(C::server_error)));
            // Only failures that Envoy's retry_on names for any protocol: a connection that
            // could not be made, and one lost (or a try timed out) before the response. A
            // response, whatever its status, is the service's answer and goes back as it is.
            let overall_expired = || tokio::time::Instant::now() >= deadline;
            let retriable = match &result {
                Err(Error::UpstreamConnect(_)) => {
                    retries.on & (RetryOn::CONNECT_FAILURE | RetryOn::RESET | RetryOn::GATEWAY_ERROR | RetryOn::FIVE_XX) != 0
                }
                Err(Error::UpstreamReset(_)) => retries.on & (RetryOn::RESET | RetryOn::GATEWAY_ERROR | RetryOn::FIVE_XX) != 0,
                Err(Error::UpstreamTimeout) => {
                    !overall_expired() && retries.on & (RetryOn::RESET | RetryOn::GATEWAY_ERROR | RetryOn::FIVE_XX) != 0
                }
                _ => false,
            };
            if !retriable || attempt >= retries.attempts {
                return result;
            }
            let Some(slot) = cluster.admit_retry() else { return result };
            _retrying = Some(slot);
            attempt += 1;
        }
    }
}

/// A connection's answers waiting for room in its writer's queue.
#[derive(Default)]
struct Waiting {
    answers: std::collections::VecDeque<Bytes>,
    /// The writer ended (its connection failed): answers go nowhere.
    writer_gone: bool,
}

impl Waiting {
    /// Hands `answer` to the writer, or keeps it, behind any kept before, until there is room.
    fn answer(&mut self, writer: &mpsc::Sender<Bytes>, answer: Bytes) {
        if self.writer_gone {
            return;
        }
        if !self.answers.is_empty() {
            self.answers.push_back(answer);
            return;
        }
        match writer.try_send(answer) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(answer)) => self.answers.push_back(answer),
            Err(mpsc::error::TrySendError::Closed(_)) => self.writer_gone = true,
        }
    }

    /// Sends the oldest kept answer through a slot of the writer's queue.
    fn send(&mut self, permit: Result<mpsc::Permit<'_, Bytes>, mpsc::error::SendError<()>>) {
        match permit {
            Ok(permit) => {
                if let Some(answer) = self.answers.pop_front() {
                    permit.send(answer);
                }
            }
            Err(_) => {
                self.writer_gone = true;
                self.answers.clear();
            }
        }
    }

    fn len(&self) -> usize {
        self.answers.len()
    }

    fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

async fn write_answers<W: AsyncWrite + Unpin>(mut queue: mpsc::Receiver<Bytes>, mut writer: W) {
    let mut batch = Vec::new();
    while let Some(answer) = queue.recv().await {
        if super::mux::write_batch(&mut queue, answer, &mut batch, &mut writer).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::{mpsc, watch};

    use super::{Dubbo, HALF_READ_LOOKS, IDLE_LOOKS, RpcProxy, Side, WATCH, Waiting};
    use crate::rpc::dubbo;

    /// A Dubbo frame's head: a two-way hessian2 request (a heartbeat with `event`) of `id`,
    /// announcing `len` body bytes.
    fn dubbo_head(id: u64, len: u32, event: bool) -> Vec<u8> {
        let flags = dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::HESSIAN2 | if event { dubbo::FLAG_EVENT } else { 0 };
        let mut head = vec![0xda, 0xbb, flags, 0];
        head.extend(id.to_be_bytes());
        head.extend(len.to_be_bytes());
        head
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_or_stuck_in_a_frame_closes_and_heartbeats_keep_one_open() {
        let rpc = Arc::new(RpcProxy::<Dubbo>::new(Arc::new(crate::xds::tests::sidecar()), 1 << 20));
        let (_drain, drain) = watch::channel(false);
        // Nothing read, nothing in flight: closed after the idle looks.
        let (_client, server) = tokio::io::duplex(1 << 16);
        let started = tokio::time::Instant::now();
        rpc.clone().serve(server, Side::Outbound, drain.clone()).await;
        let idle = started.elapsed();
        assert!(idle >= WATCH * IDLE_LOOKS && idle <= WATCH * (IDLE_LOOKS + 1), "{idle:?}");
        // The start of a frame whose rest never comes: closed after the half-read looks.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut partial = dubbo_head(1, 1000, false);
        partial.extend([0x05; 100]);
        client.write_all(&partial).await.expect("write");
        let started = tokio::time::Instant::now();
        rpc.clone().serve(server, Side::Outbound, drain.clone()).await;
        let stuck = started.elapsed();
        assert!(stuck >= WATCH * (HALF_READ_LOOKS - 1) && stuck <= WATCH * (HALF_READ_LOOKS + 1), "{stuck:?}");
        // Frames that keep coming keep it open too, though one is half read at every look:
        // each write ends one heartbeat and starts the next, between two looks.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(rpc.clone().serve(server, Side::Outbound, drain.clone()));
        let heartbeat = |id: u64| {
            let mut heartbeat = dubbo_head(id, 1, true);
            heartbeat.push(b'N');
            heartbeat
        };
        tokio::time::sleep(WATCH / 3).await;
        client.write_all(&heartbeat(0)[..8]).await.expect("write");
        for id in 0..(u64::from(HALF_READ_LOOKS) * 3) {
            tokio::time::sleep(WATCH).await;
            let mut bytes = heartbeat(id)[8..].to_vec();
            bytes.extend_from_slice(&heartbeat(id + 1)[..8]);
            client.write_all(&bytes).await.expect("write");
            let mut answer = [0; 17];
            client.read_exact(&mut answer).await.expect("the heartbeat's answer");
            assert!(!serving.is_finished(), "closed after {id} heartbeats, each half read at a look");
        }
        drop(client);
        serving.await.expect("served");
        // A heartbeat a minute (Dubbo's clients' interval) keeps a connection open.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(rpc.serve(server, Side::Outbound, drain));
        for id in 0..20u64 {
            let mut heartbeat = dubbo_head(id, 1, true);
            heartbeat.push(b'N');
            client.write_all(&heartbeat).await.expect("write");
            let mut answer = [0; 17];
            client.read_exact(&mut answer).await.expect("the heartbeat's answer");
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            assert!(!serving.is_finished(), "closed after {id} heartbeats");
        }
        drop(client);
        serving.await.expect("served");
    }

    #[tokio::test]
    async fn answers_wait_in_order_for_room_and_go_nowhere_once_the_writer_is_gone() {
        let (writer, mut queue) = mpsc::channel::<Bytes>(1);
        let mut waiting = Waiting::default();
        for answer in ["a", "b", "c"] {
            waiting.answer(&writer, Bytes::from(answer));
        }
        // The queue took one; the others wait, in order.
        assert_eq!(waiting.len(), 2);
        assert_eq!(queue.recv().await.as_deref(), Some(&b"a"[..]));
        waiting.send(writer.reserve().await);
        // An answer that comes while others wait goes behind them, even with room in the queue.
        waiting.answer(&writer, Bytes::from("d"));
        assert_eq!(queue.recv().await.as_deref(), Some(&b"b"[..]));
        for expected in ["c", "d"] {
            waiting.send(writer.reserve().await);
            assert_eq!(queue.recv().await.as_deref(), Some(expected.as_bytes()));
        }
        assert!(waiting.is_empty());
        // The writer ends: what waits is dropped and later answers are not kept.
        waiting.answer(&writer, Bytes::from("e"));
        waiting.answer(&writer, Bytes::from("f"));
        drop(queue);
        waiting.send(writer.reserve().await);
        assert!(waiting.writer_gone && waiting.is_empty());
        waiting.answer(&writer, Bytes::from("g"));
        assert!(waiting.is_empty());
    }
}
