//! Multiplexed upstream connections for RPC protocols: many requests share one connection to
//! an endpoint, each under a request id of the connection's own, mapped back to its caller
//! when the response comes. A response for an id nobody waits for is dropped and counted; a
//! connection that closes fails exactly the requests in flight on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

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

type Waiting<C> = oneshot::Sender<<C as Codec>::Frame>;

/// One upstream connection shared by many requests.
pub(crate) struct Mux<C: Codec> {
    state: Arc<Mutex<State<C>>>,
    writer: mpsc::Sender<Bytes>,
    closed: Arc<AtomicBool>,
    authority: Arc<str>,
}

struct State<C: Codec> {
    waiting: HashMap<C::Id, Waiting<C>>,
    next: C::Id,
    closed: bool,
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
        let state = Arc::new(Mutex::new(State::<C> { waiting: HashMap::new(), next: C::FIRST_ID, closed: false }));
        let closed = Arc::new(AtomicBool::new(false));
        let (queue, frames) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_frames(frames, writer, closed.clone()));
        tokio::spawn(read_responses::<C, _>(reader, state.clone(), closed.clone(), max_frame, queue.downgrade()));
        Ok(Mux { state, writer: queue, closed, authority: Arc::from(endpoint.authority()) })
    }

    /// Whether the connection can take no more requests.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends the whole frame `raw` under a request id of this connection's and, when
    /// `expects_response`, waits for its response. Dropping the future forgets the request:
    /// its response, if it comes, is dropped as unknown.
    pub(crate) async fn call(&self, mut raw: BytesMut, expects_response: bool) -> Result<Option<C::Frame>, Error> {
        let reset = || Error::UpstreamReset(self.authority.to_string());
        let (id, answer) = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(reset());
            }
            let mut id = state.next;
            // Skip ids still waiting (after a wrap, a very slow request may hold one).
            while state.waiting.contains_key(&id) {
                id = C::next_id(id);
            }
            state.next = C::next_id(id);
            let answer = if expects_response {
                let (sender, receiver) = oneshot::channel();
                state.waiting.insert(id, sender);
                Some(receiver)
            } else {
                None
            };
            (id, answer)
        };
        let mut forget = Forget { state: &self.state, id: answer.is_some().then_some(id) };
        C::patch_id(&mut raw, id);
        if self.writer.send(raw.freeze()).await.is_err() {
            return Err(reset());
        }
        let Some(answer) = answer else { return Ok(None) };
        let response = answer.await.map_err(|_| reset())?;
        // The reader took the request off the waiting ones when it handed the response over.
        forget.id = None;
        Ok(Some(response))
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

/// Hands each response to the request waiting for it, and answers the upstream's heartbeats
/// (Dubbo providers send them on connections they find idle) through `heartbeats`, the
/// connection's writer while anything still holds it.
async fn read_responses<C: Codec, R: AsyncRead + Unpin>(
    mut reader: R,
    state: Arc<Mutex<State<C>>>,
    closed: Arc<AtomicBool>,
    max_frame: usize,
    heartbeats: mpsc::WeakSender<Bytes>,
) {
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
                        Some(sender) => {
                            let _ = sender.send(frame);
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
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
    }
    closed.store(true, Ordering::Release);
    // Every request still waiting fails now: its sender drops.
    let mut state = lock(&state);
    state.closed = true;
    state.waiting.clear();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|it| it.into_inner())
}

/// Each endpoint's shared connection, for one cluster.
pub(crate) struct MuxPool<C: Codec> {
    connections: Mutex<HashMap<Arc<str>, Arc<Mux<C>>>>,
    /// One connect at a time per endpoint, so that a burst of first requests opens one
    /// connection, and an endpoint slow to answer holds up no other.
    connecting: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

impl<C: Codec> Default for MuxPool<C> {
    fn default() -> Self {
        MuxPool { connections: Mutex::default(), connecting: Mutex::default() }
    }
}

impl<C: Codec> MuxPool<C> {
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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Mux;
    use crate::endpoints::Endpoint;
    use crate::rpc::dubbo;
    use crate::rpc::proxy::Dubbo;

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
}
