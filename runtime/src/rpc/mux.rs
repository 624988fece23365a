//! Multiplexed upstream connections for RPC protocols: many requests share one connection to
//! an endpoint, each under a request id of the connection's own, mapped back to its caller
//! when the response comes. A response for an id nobody waits for is dropped and counted; a
//! connection that closes fails exactly the requests in flight on it.
//!
//! A request's deadline is kept by its connection, not by a timer of its own: one task per
//! connection sleeps to the earliest deadline among its waiting requests and fails those that
//! passed it. Registering and cancelling a tokio timer for each request cost about a twentieth
//! of the request path (and, when the runtime slept with no timer set, a write to its eventfd
//! to move its wake-up earlier); the connection's task re-arms only when a request's deadline
//! comes before every other's, which under a steady timeout is once per timeout period.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::Codec;
use super::proxy::Role;
use crate::endpoints::Endpoint;
use crate::error::Error;
use crate::pool::ClientTls;

/// Frames queued for a connection's writer before senders wait.
const WRITE_QUEUE: usize = 1024;

/// Responses that arrived for ids nobody waited for (a caller that timed out, a confused
/// upstream), over every connection of the process.
pub static UNKNOWN_RESPONSES: AtomicU64 = AtomicU64::new(0);

/// [`UNKNOWN_RESPONSES`] in Prometheus's text format.
pub(crate) fn unknown_responses_metric() -> String {
    format!(
        "# HELP meshc_rpc_unknown_responses_total RPC responses from upstreams for request ids no caller waited for (dropped).\n\
         # TYPE meshc_rpc_unknown_responses_total counter\nmeshc_rpc_unknown_responses_total {}\n",
        UNKNOWN_RESPONSES.load(Ordering::Relaxed)
    )
}

/// A request waiting for its response, until its deadline.
struct Waiting<C: Codec> {
    answer: oneshot::Sender<C::Frame>,
    deadline: Instant,
}

/// A map keyed by request ids and endpoint addresses, without SipHash, which took four hashes
/// of every request's path. A request id may be the caller's own (a connection keeps the id a
/// request came with when it is free), so integers are hashed with a key the process draws at
/// random: ids a caller chose to collide do not collide here.
type QuickMap<K, V> = HashMap<K, V, BuildHasherDefault<QuickHasher>>;

/// Integers mixed with the process's random key by a folded multiply (the 128-bit product's
/// halves XORed, so that every bit of the id reaches the low bits the table indexes by, and
/// the top bits its control bytes take); bytes folded in by FNV-1a.
#[derive(Default)]
struct QuickHasher(u64);

/// The process's key for [`QuickHasher`], drawn once.
fn quick_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::BuildHasher as _;
        std::collections::hash_map::RandomState::new().hash_one(0x6d65_7368_u64) | 1
    })
}

impl Hasher for QuickHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value ^ quick_key()).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

/// One upstream connection shared by many requests.
pub(crate) struct Mux<C: Codec> {
    state: Arc<Mutex<State<C>>>,
    writer: mpsc::Sender<Bytes>,
    closed: Arc<AtomicBool>,
    /// Reads that brought bytes, for telling an idle connection from a busy one.
    reads: Arc<AtomicU64>,
    /// Stops the reader when the connection is given up while its peer says nothing.
    stop: Arc<Notify>,
    /// Wakes the connection's expiry task when its alarm moves earlier or the connection
    /// closes.
    alarm: Arc<Notify>,
    authority: Arc<str>,
}

struct State<C: Codec> {
    waiting: QuickMap<C::Id, Waiting<C>>,
    next: C::Id,
    closed: bool,
    /// When the expiry task looks for passed deadlines next: at or before the earliest
    /// deadline of the waiting requests (`None` while none waits).
    alarm: Option<Instant>,
}

impl<C: Codec> Mux<C> {
    /// Opens a connection to `endpoint` (TLS when `tls` says so) within `connect_timeout`,
    /// and starts its reader and writer.
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        max_frame: usize,
    ) -> Result<Mux<C>, Error> {
        let failed = || Error::UpstreamConnect(endpoint.authority().to_owned());
        let stream = match tokio::time::timeout(connect_timeout, crate::pool::open(endpoint, tls)).await {
            Ok(Ok(stream)) => stream,
            _ => return Err(failed()),
        };
        let (reader, writer) = tokio::io::split(stream);
        let state = Arc::new(Mutex::new(State::<C> { waiting: QuickMap::default(), next: C::FIRST_ID, closed: false, alarm: None }));
        let closed = Arc::new(AtomicBool::new(false));
        let (reads, stop, alarm) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (queue, frames) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_frames(frames, writer, closed.clone()));
        tokio::spawn(expire(state.clone(), alarm.clone()));
        let reading =
            Reading { state: state.clone(), closed: closed.clone(), reads: reads.clone(), stop: stop.clone(), alarm: alarm.clone() };
        tokio::spawn(read_responses::<C, _>(reader, reading, max_frame, queue.downgrade()));
        Ok(Mux { state, writer: queue, closed, reads, stop, alarm, authority: Arc::from(endpoint.authority()) })
    }

    /// Gives the connection up: the requests in flight on it fail, it takes no more, and it
    /// closes.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waiting.clear();
        }
        // The reader and the expiry task stop; the writer wakes to an empty frame, finds the
        // connection closed and shuts it down.
        self.stop.notify_one();
        self.alarm.notify_one();
        let _ = self.writer.try_send(Bytes::new());
    }

    /// Reads that brought bytes so far.
    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Whether the connection can take no more requests.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends the whole frame `raw` under a request id free on this connection and, when
    /// `expects_response`, waits for its response until `deadline`
    /// ([`Error::UpstreamTimeout`] then). The request keeps `preferred` (its caller's id)
    /// when no other request waits under it here, so that its frame goes as it came (a Bolt
    /// v2 frame's CRC32 is not recomputed) and so does its response: Java's SOFA and Dubbo
    /// clients number requests across all their connections, so an application's requests
    /// seldom share an id. Otherwise it gets the connection's next free id. Dropping the
    /// future forgets the request: its response, if it comes, is dropped as unknown.
    pub(crate) async fn call(
        &self,
        mut raw: BytesMut,
        expects_response: bool,
        preferred: Option<C::Id>,
        deadline: Instant,
    ) -> Result<Option<C::Frame>, Error> {
        let reset = || Error::UpstreamReset(self.authority.to_string());
        let (id, answer, earliest) = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(reset());
            }
            let id = match preferred {
                Some(id) if !state.waiting.contains_key(&id) => id,
                _ => {
                    // Skip ids still waiting (callers' own, or after a wrap a very slow
                    // request's).
                    let mut id = state.next;
                    while state.waiting.contains_key(&id) {
                        id = C::next_id(id);
                    }
                    state.next = C::next_id(id);
                    id
                }
            };
            let answer = expects_response.then(|| {
                let (answer, receiver) = oneshot::channel();
                state.waiting.insert(id, Waiting { answer, deadline });
                receiver
            });
            let earliest = answer.is_some() && state.alarm.is_none_or(|it| deadline < it);
            if earliest {
                state.alarm = Some(deadline);
            }
            (id, answer, earliest)
        };
        if earliest {
            self.alarm.notify_one();
        }
        let mut forget = Forget { state: &self.state, id: answer.is_some().then_some(id) };
        C::patch_id(&mut raw, id);
        match self.writer.try_send(raw.freeze()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(reset()),
            // The writer is behind: wait for room, within the deadline.
            Err(mpsc::error::TrySendError::Full(frame)) => match tokio::time::timeout_at(deadline, self.writer.send(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(reset()),
                Err(_) => return Err(Error::UpstreamTimeout),
            },
        }
        let Some(answer) = answer else { return Ok(None) };
        let response = answer.await;
        // Whoever dropped or answered the request took it off the waiting ones: the reader
        // with its response or when the connection closed, the expiry task at its deadline.
        forget.id = None;
        match response {
            Ok(response) => Ok(Some(response)),
            Err(_) if Instant::now() >= deadline => Err(Error::UpstreamTimeout),
            Err(_) => Err(reset()),
        }
    }
}

/// Fails the requests of a connection whose deadlines passed, sleeping in between to the
/// connection's alarm; ends when the connection closes.
async fn expire<C: Codec>(state: Arc<Mutex<State<C>>>, alarm: Arc<Notify>) {
    loop {
        let next = {
            let state = lock(&state);
            if state.closed {
                return;
            }
            state.alarm
        };
        match next {
            None => {
                alarm.notified().await;
                continue;
            }
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                // An earlier alarm, or the connection closed.
                () = alarm.notified() => continue,
            },
        }
        let now = Instant::now();
        let mut state = lock(&state);
        if state.alarm.is_some_and(|it| it <= now) {
            // Each request dropped here wakes its caller, which finds its deadline passed.
            state.waiting.retain(|_, it| it.deadline > now);
            state.alarm = state.waiting.values().map(|it| it.deadline).min();
        }
    }
}

/// Removes a request from the waiting ones when its caller gives up.
struct Forget<'a, C: Codec> {
    state: &'a Mutex<State<C>>,
    id: Option<C::Id>,
}

impl<C: Codec> Drop for Forget<'_, C> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(self.state).waiting.remove(&id);
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut frames: mpsc::Receiver<Bytes>, mut writer: W, closed: Arc<AtomicBool>) {
    let mut batch = Vec::new();
    // [`Mux::close`] sets `closed`, then queues an empty frame to wake this loop.
    while let Some(frame) = frames.recv().await {
        if closed.load(Ordering::Acquire) || write_batch(&mut frames, frame, &mut batch, &mut writer).await.is_err() {
            break;
        }
    }
    closed.store(true, Ordering::Release);
    let _ = writer.shutdown().await;
}

/// The most one write gathers of the frames waiting in a queue.
const BATCH_BYTES: usize = 256 * 1024;

/// Writes `first` and every frame already waiting behind it in one write: under load many
/// requests (or answers) wait at once, and one system call for all of them costs the kernel
/// (and the peer's wake-ups) much less than one each.
pub(crate) async fn write_batch<W: AsyncWrite + Unpin>(
    queue: &mut mpsc::Receiver<Bytes>,
    first: Bytes,
    batch: &mut Vec<u8>,
    writer: &mut W,
) -> std::io::Result<()> {
    // Under load the task that queued `first` woke this one at once, ahead of the tasks
    // about to queue more; yielding once lets them run (tokio wakes a yielded task only
    // when nothing else is ready), so their frames share this write.
    let second = match queue.try_recv() {
        Ok(second) => second,
        Err(_) => {
            tokio::task::yield_now().await;
            let Ok(second) = queue.try_recv() else { return writer.write_all(&first).await };
            second
        }
    };
    batch.clear();
    batch.extend_from_slice(&first);
    batch.extend_from_slice(&second);
    while batch.len() < BATCH_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        batch.extend_from_slice(&next);
    }
    let result = writer.write_all(batch).await;
    if batch.capacity() > BATCH_BYTES * 2 {
        *batch = Vec::new();
    }
    result
}

/// What a connection's reader shares with its [`Mux`].
struct Reading<C: Codec> {
    state: Arc<Mutex<State<C>>>,
    closed: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    stop: Arc<Notify>,
    alarm: Arc<Notify>,
}

/// Hands each response to the request waiting for it, and answers the upstream's heartbeats
/// (Dubbo providers send them on connections they find idle) through `heartbeats`, the
/// connection's writer while anything still holds it.
async fn read_responses<C: Codec, R: AsyncRead + Unpin>(
    mut reader: R,
    reading: Reading<C>,
    max_frame: usize,
    heartbeats: mpsc::WeakSender<Bytes>,
) {
    let Reading { state, closed, reads, stop, alarm } = reading;
    // Made once, so that it stays registered across reads.
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    'read: loop {
        loop {
            match C::decode(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    if !C::is_response(&frame) {
                        // A request from the upstream: only heartbeats get an answer, since a
                        // proxy that calls out serves nothing on this connection.
                        if C::role(&frame) == Role::Heartbeat
                            && let Some(writer) = heartbeats.upgrade()
                        {
                            let _ = writer.try_send(C::heartbeat_reply(&frame));
                        }
                        continue;
                    }
                    let waiting = lock(&state).waiting.remove(&C::id(&frame));
                    match waiting {
                        Some(waiting) => {
                            let _ = waiting.answer.send(frame);
                        }
                        None => {
                            UNKNOWN_RESPONSES.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'read,
            }
        }
        if closed.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            biased;
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            },
            () = &mut stopped => break,
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
    }
    closed.store(true, Ordering::Release);
    // Every request still waiting fails now: its sender drops.
    {
        let mut state = lock(&state);
        state.closed = true;
        state.waiting.clear();
    }
    alarm.notify_one();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|it| it.into_inner())
}

/// When a pool's idle connections send heartbeats, and when they give up on a silent peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keepalive {
    /// A connection that read nothing for this long sends a heartbeat.
    pub(crate) idle: Duration,
    /// How long a heartbeat's answer may take.
    pub(crate) timeout: Duration,
    /// Heartbeats unanswered in a row that close the connection.
    pub(crate) misses: u32,
}

impl Default for Keepalive {
    /// SOFA-RPC's 15 s heartbeat, and a peer given up after three missed (MOSN's keepalive
    /// closes after a run of timeouts too): a dead peer that sent no FIN (a powered-off host,
    /// a dropped NAT entry) costs requests about a minute at most, not until TCP gives up.
    fn default() -> Self {
        Keepalive { idle: Duration::from_secs(15), timeout: Duration::from_secs(5), misses: 3 }
    }
}

/// Sends a heartbeat on `mux` whenever it read nothing for `every.idle`, and closes it after
/// `every.misses` unanswered in a row; ends with the connection.
async fn keepalive<C: Codec>(mux: std::sync::Weak<Mux<C>>, every: Keepalive) {
    let mut seen = None;
    let mut missed = 0;
    loop {
        tokio::time::sleep(every.idle).await;
        let Some(mux) = mux.upgrade() else { return };
        if mux.is_closed() {
            return;
        }
        let reads = mux.reads();
        if seen.replace(reads) != Some(reads) {
            // Something arrived since the last look: the peer is alive.
            missed = 0;
            continue;
        }
        match mux.call(C::heartbeat_request().into(), true, None, Instant::now() + every.timeout).await {
            Ok(Some(_)) => missed = 0,
            _ => missed += 1,
        }
        if missed >= every.misses {
            mux.close();
            return;
        }
        // The answer is no sign of traffic.
        seen = Some(mux.reads());
    }
}

/// Each endpoint's shared connection, for one cluster.
pub(crate) struct MuxPool<C: Codec> {
    connections: Mutex<QuickMap<Arc<str>, Arc<Mux<C>>>>,
    /// One connect at a time per endpoint, so that a burst of first requests opens one
    /// connection, and an endpoint slow to answer holds up no other.
    connecting: Mutex<QuickMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    keepalive: Keepalive,
}

impl<C: Codec> Default for MuxPool<C> {
    fn default() -> Self {
        MuxPool::with_keepalive(Keepalive::default())
    }
}

impl<C: Codec> MuxPool<C> {
    pub(crate) fn with_keepalive(keepalive: Keepalive) -> MuxPool<C> {
        MuxPool { connections: Mutex::default(), connecting: Mutex::default(), keepalive }
    }

    /// The open connection to `endpoint`, or a new one.
    pub(crate) async fn get(
        &self,
        endpoint: &Endpoint,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        max_frame: usize,
    ) -> Result<Arc<Mux<C>>, Error> {
        if let Some(mux) = self.open(endpoint) {
            return Ok(mux);
        }
        // Boxed: connecting (TLS included) is a large future that every request's task
        // would otherwise carry, and copy when it is spawned.
        Box::pin(self.connect(endpoint, tls, connect_timeout, max_frame)).await
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        tls: Option<&ClientTls>,
        connect_timeout: Duration,
        max_frame: usize,
    ) -> Result<Arc<Mux<C>>, Error> {
        let one = lock(&self.connecting).entry(endpoint.shared_authority()).or_default().clone();
        let _one = one.lock().await;
        if let Some(mux) = self.open(endpoint) {
            return Ok(mux);
        }
        let mux = Arc::new(Mux::connect(endpoint, tls, connect_timeout, max_frame).await?);
        tokio::spawn(keepalive(Arc::downgrade(&mux), self.keepalive));
        lock(&self.connections).insert(endpoint.shared_authority(), mux.clone());
        Ok(mux)
    }

    fn open(&self, endpoint: &Endpoint) -> Option<Arc<Mux<C>>> {
        let mut connections = lock(&self.connections);
        match connections.get(endpoint.authority()) {
            Some(mux) if !mux.is_closed() => Some(mux.clone()),
            Some(_) => {
                connections.remove(endpoint.authority());
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Keepalive, Mux, MuxPool};
    use crate::endpoints::Endpoint;
    use crate::rpc::dubbo;
    use crate::rpc::proxy::Dubbo;

    #[test]
    fn ids_a_caller_chose_to_collide_spread_over_the_table() {
        use std::hash::BuildHasher as _;
        let hasher = std::hash::BuildHasherDefault::<super::QuickHasher>::default();
        // Ids that differ only in their high bits: the table indexes by the hash's low bits,
        // and takes its control byte from the top seven.
        for shift in [16, 32, 48] {
            let hashes: Vec<u64> = (0..4096u64).map(|it| hasher.hash_one(it << shift)).collect();
            let low: std::collections::BTreeSet<u64> = hashes.iter().map(|it| it & 0xfff).collect();
            let top: std::collections::BTreeSet<u64> = hashes.iter().map(|it| it >> 57).collect();
            assert!(low.len() > 2000, "ids << {shift} fill {} of 4096 low buckets", low.len());
            assert_eq!(top.len(), 128, "ids << {shift}");
        }
    }

    #[tokio::test]
    async fn an_upstream_heartbeat_is_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = Endpoint::at(listener.local_addr().expect("an address"));
        let mux = Mux::<Dubbo>::connect(&endpoint, None, Duration::from_secs(5), 1 << 20).await.expect("connect");
        let (mut upstream, _) = listener.accept().await.expect("accept");
        // A provider's heartbeat: a two-way event request with a null body, id 7.
        let flags = dubbo::FLAG_REQUEST | dubbo::FLAG_TWO_WAY | dubbo::FLAG_EVENT | dubbo::HESSIAN2;
        let mut heartbeat = vec![0xda, 0xbb, flags, 0];
        heartbeat.extend_from_slice(&7u64.to_be_bytes());
        heartbeat.extend_from_slice(&1u32.to_be_bytes());
        heartbeat.push(b'N');
        upstream.write_all(&heartbeat).await.expect("send the heartbeat");
        let mut answer = [0u8; dubbo::HEAD_LEN + 1];
        tokio::time::timeout(Duration::from_secs(5), upstream.read_exact(&mut answer)).await.expect("an answer in time").expect("read");
        let mut buf = bytes::BytesMut::from(&answer[..]);
        let frame = dubbo::decode(&mut buf, 1 << 20).expect("a frame").expect("whole");
        let head = frame.head();
        assert!(!head.is_request() && head.is_event(), "{head:?}");
        assert_eq!((head.request_id, head.status), (7, dubbo::status::OK));
        assert!(!mux.is_closed());
    }

    /// The peer's side of a multiplexed Dubbo connection.
    struct Upstream {
        stream: tokio::net::TcpStream,
        buf: bytes::BytesMut,
    }

    impl Upstream {
        /// A multiplexed connection to a local peer, and the peer's side of it.
        async fn connected() -> (Arc<Mux<Dubbo>>, Upstream) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let endpoint = Endpoint::at(listener.local_addr().expect("an address"));
            let mux = Mux::<Dubbo>::connect(&endpoint, None, Duration::from_secs(5), 1 << 20).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            (Arc::new(mux), Upstream { stream, buf: bytes::BytesMut::new() })
        }

        /// The head of the next request the connection brings.
        async fn next_head(&mut self) -> dubbo::Head {
            loop {
                if let Some(frame) = dubbo::decode(&mut self.buf, 1 << 20).expect("a frame") {
                    return *frame.head();
                }
                let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf)).await;
                assert!(read.expect("a frame in time").expect("read") > 0, "the connection stays open");
            }
        }

        /// Answers the request `head` heads.
        async fn answer(&mut self, head: &dubbo::Head) {
            self.stream.write_all(&dubbo::heartbeat_reply(head)).await.expect("answer");
        }
    }

    /// A heartbeat request on `mux`, numbered `preferred` by its caller, waiting at most
    /// `within` for its answer.
    fn call(
        mux: &Arc<Mux<Dubbo>>,
        preferred: Option<u64>,
        within: Duration,
    ) -> tokio::task::JoinHandle<Result<Option<dubbo::Frame>, crate::error::Error>> {
        let mux = mux.clone();
        let deadline = tokio::time::Instant::now() + within;
        let request = dubbo::heartbeat_request(preferred.unwrap_or(0));
        tokio::spawn(async move { mux.call(request.into(), true, preferred, deadline).await })
    }

    #[tokio::test]
    async fn an_id_still_waiting_is_skipped_when_the_numbering_comes_round() {
        let (mux, mut upstream) = Upstream::connected().await;
        let first = call(&mux, None, Duration::from_secs(60));
        let first_head = upstream.next_head().await;
        // The numbering comes round to the id the first call still waits under.
        super::lock(&mux.state).next = first_head.request_id;
        let second = call(&mux, None, Duration::from_secs(60));
        let second_head = upstream.next_head().await;
        assert_eq!(second_head.request_id, first_head.request_id + 1, "the waiting id is skipped");
        // Answered in the other order, each reaches its own caller.
        upstream.answer(&second_head).await;
        let answer = second.await.expect("no panic").expect("an answer").expect("a frame");
        assert_eq!(answer.head().request_id, second_head.request_id);
        assert!(!first.is_finished(), "the first call still waits");
        upstream.answer(&first_head).await;
        let answer = first.await.expect("no panic").expect("an answer").expect("a frame");
        assert_eq!(answer.head().request_id, first_head.request_id);
        assert!(super::lock(&mux.state).waiting.is_empty());
    }

    #[tokio::test]
    async fn a_request_keeps_its_callers_id_unless_another_waits_under_it() {
        let (mux, mut upstream) = Upstream::connected().await;
        // Two callers that both numbered their request 9 (two applications' connections).
        let first = call(&mux, Some(9), Duration::from_secs(60));
        let first_head = upstream.next_head().await;
        assert_eq!(first_head.request_id, 9, "a free id goes as the caller numbered it");
        let second = call(&mux, Some(9), Duration::from_secs(60));
        let second_head = upstream.next_head().await;
        assert_ne!(second_head.request_id, 9, "an id in use is not given twice");
        upstream.answer(&second_head).await;
        upstream.answer(&first_head).await;
        let first = first.await.expect("no panic").expect("an answer").expect("a frame");
        let second = second.await.expect("no panic").expect("an answer").expect("a frame");
        assert_eq!((first.head().request_id, second.head().request_id), (9, second_head.request_id));
    }

    #[tokio::test]
    async fn a_request_fails_at_its_own_deadline_while_a_later_one_still_waits() {
        let (mux, mut upstream) = Upstream::connected().await;
        // The later deadline first, so that the second call has to move the alarm earlier.
        let patient = call(&mux, None, Duration::from_secs(60));
        let hasty = call(&mux, None, Duration::from_millis(200));
        let mut heads = vec![upstream.next_head().await, upstream.next_head().await];
        let hasty = tokio::time::timeout(Duration::from_secs(30), hasty).await.expect("the earlier deadline is kept");
        assert!(matches!(hasty.expect("no panic"), Err(crate::error::Error::UpstreamTimeout)));
        assert!(!patient.is_finished(), "the later request still waits");
        let still: Vec<u64> = super::lock(&mux.state).waiting.keys().copied().collect();
        assert_eq!(still.len(), 1, "the timed-out request is no longer waited for");
        // Both answered now, the late one first: it is dropped, and the patient caller gets
        // its own.
        heads.sort_by_key(|it| it.request_id == still[0]);
        let unknown = super::UNKNOWN_RESPONSES.load(std::sync::atomic::Ordering::Relaxed);
        for head in &heads {
            upstream.answer(head).await;
        }
        let answer = patient.await.expect("no panic").expect("an answer").expect("a frame");
        assert_eq!(answer.head().request_id, still[0]);
        assert!(super::UNKNOWN_RESPONSES.load(std::sync::atomic::Ordering::Relaxed) > unknown);
        assert!(super::lock(&mux.state).waiting.is_empty());
    }

    /// The Dubbo frames `upstream` sends, until it closes or `limit` passes: `None` for a
    /// connection still open at the end.
    async fn frames_until_closed(upstream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<dubbo::Frame>> {
        let mut buf = bytes::BytesMut::new();
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Ok(Some(frame)) = dubbo::decode(&mut buf, 1 << 20) {
                frames.push(frame);
            }
            match tokio::time::timeout_at(deadline, upstream.read_buf(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(frames),
                Ok(Ok(_)) => {}
                Err(_) => return None,
            }
        }
    }

    /// A pool whose connections heartbeat after 100 ms idle and give up after two misses, its
    /// connection to a local peer, and the peer's side of it.
    async fn pooled() -> (MuxPool<Dubbo>, Arc<Mux<Dubbo>>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = Endpoint::at(listener.local_addr().expect("an address"));
        let quick = Keepalive { idle: Duration::from_millis(100), timeout: Duration::from_millis(100), misses: 2 };
        let pool = MuxPool::<Dubbo>::with_keepalive(quick);
        let mux = pool.get(&endpoint, None, Duration::from_secs(5), 1 << 20).await.expect("connect");
        let (upstream, _) = listener.accept().await.expect("accept");
        (pool, mux, upstream)
    }

    #[tokio::test]
    async fn an_idle_connection_whose_peer_answers_no_heartbeat_is_closed() {
        let (_pool, mux, mut upstream) = pooled().await;
        // The peer reads everything and answers nothing.
        let frames = frames_until_closed(&mut upstream, Duration::from_secs(5)).await.expect("the sidecar closes the connection");
        assert_eq!(frames.len(), 2, "one heartbeat per missed answer");
        for frame in &frames {
            let head = frame.head();
            assert!(head.is_request() && head.is_two_way() && head.is_event(), "{head:?}");
        }
        assert!(mux.is_closed());
    }

    #[tokio::test]
    async fn an_idle_connection_whose_peer_answers_heartbeats_stays_open() {
        let (pool, mux, mut upstream) = pooled().await;
        let answering = tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            let mut answered = 0;
            while upstream.read_buf(&mut buf).await.is_ok_and(|it| it > 0) {
                while let Ok(Some(frame)) = dubbo::decode(&mut buf, 1 << 20) {
                    let reply = dubbo::heartbeat_reply(frame.head());
                    upstream.write_all(&reply).await.expect("answer");
                    answered += 1;
                }
            }
            answered
        });
        // Ten idle periods: heartbeats every other one, all answered.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!mux.is_closed());
        drop(pool);
        drop(mux);
        let answered = tokio::time::timeout(Duration::from_secs(5), answering).await.expect("the connection closes").expect("join");
        assert!(answered >= 2, "{answered} heartbeats answered");
    }
}
