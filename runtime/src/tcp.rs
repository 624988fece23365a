//! Plain TCP through the sidecar, for service ports whose protocol is `tcp`: the bytes are
//! copied both ways untouched. Outbound, each connection goes to one endpoint of a cluster
//! drawn by the route's weights, picked by the cluster's load balancer, under its connection
//! limit and connect timeout, over TLS when the cluster says so; inbound, each connection goes
//! to the application's port. Istio's `istio_tcp_*` metrics count connections and bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::endpoints::Endpoint;
use crate::error::Error;
use crate::metrics::{Reporter, Security, TcpLabels};
use crate::proxy::{Downstream, Proxy, pick_weighted_destination};
use crate::spec::WeightedCluster;

/// Forwards one connection the application opened to a TCP service.
pub async fn outbound<S>(proxy: &Proxy, downstream: S, service: &'static [&'static str], destinations: &'static [WeightedCluster])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = &proxy.metrics;
    let cluster = destinations.get(pick_weighted_destination(destinations)).and_then(|it| proxy.clusters.get(it.cluster as usize));
    let mutual = cluster.is_some_and(|it| it.spec.istio_mutual());
    let labels = |flags| TcpLabels {
        reporter: Reporter::Source,
        service,
        flags,
        security: if mutual { Security::Mutual(None) } else { Security::Plain },
    };
    metrics.tcp_opened(labels("-"));
    let Some(cluster) = cluster else {
        metrics.tcp_closed(labels("NR"), 0, 0);
        return;
    };
    let Some(endpoint) = cluster.pick() else {
        metrics.tcp_closed(labels("UH"), 0, 0);
        return;
    };
    // The connection limit: each proxied connection holds one slot while it is open.
    let _slot = if cluster.tuning.max_connections() == u32::MAX {
        None
    } else {
        match cluster.connection_limit().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                metrics.tcp_closed(labels("UO"), 0, 0);
                return;
            }
        }
    };
    let connect_timeout = Duration::from_millis(cluster.spec.connect_timeout_ms);
    let upstream = match connect(&endpoint, connect_timeout).await {
        Ok(upstream) => upstream,
        Err(err) => {
            cluster.observe(&endpoint, &Err(err));
            metrics.tcp_closed(labels("UF"), 0, 0);
            return;
        }
    };
    let (sent, received) = match &cluster.raw_tls {
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match tokio::time::timeout(connect_timeout, connector.connect(name.clone(), upstream)).await {
                Ok(Ok(upstream)) => relay(downstream, upstream).await,
                _ => {
                    cluster.observe(&endpoint, &Err(Error::UpstreamConnect(endpoint.authority().to_owned())));
                    metrics.tcp_closed(labels("UF"), 0, 0);
                    return;
                }
            }
        }
        None => relay(downstream, upstream).await,
    };
    metrics.tcp_closed(labels("-"), sent, received);
}

/// Forwards one connection a caller opened to the application's TCP port at `app`.
pub async fn inbound<S>(proxy: &Proxy, downstream: S, app: &Endpoint, service: &'static [&'static str], peer: &Downstream)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let labels = |flags| TcpLabels { reporter: Reporter::Destination, service, flags, security: peer.security() };
    proxy.metrics.tcp_opened(labels("-"));
    match connect(app, Duration::from_secs(1)).await {
        Ok(upstream) => {
            let (sent, received) = relay(downstream, upstream).await;
            proxy.metrics.tcp_closed(labels("-"), sent, received);
        }
        Err(_) => proxy.metrics.tcp_closed(labels("UF"), 0, 0),
    }
}

/// Counts a connection refused by authorization.
pub fn denied(proxy: &Proxy, service: &'static [&'static str], peer: &Downstream) {
    let labels = || TcpLabels { reporter: Reporter::Destination, service, flags: "RBAC", security: peer.security() };
    proxy.metrics.tcp_opened(labels());
    proxy.metrics.tcp_closed(labels(), 0, 0);
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, Error> {
    let connecting = TcpStream::connect((&*endpoint.address, endpoint.port));
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        _ => Err(Error::UpstreamConnect(endpoint.authority().to_owned())),
    }
}

/// Copies both ways until both sides are done (or one fails), and gives the bytes sent to the
/// downstream side and received from it, counted as they pass, so that a connection that
/// ends in an error still reports what it carried.
async fn relay<D, U>(downstream: D, mut upstream: U) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let counts = Arc::new(Counts::default());
    let mut downstream = Counted { inner: downstream, counts: counts.clone() };
    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    (counts.written.load(Ordering::Relaxed), counts.read.load(Ordering::Relaxed))
}

#[derive(Debug, Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

/// A stream that counts the bytes read from it and written to it.
struct Counted<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.counts.written.fetch_add(*written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_relay_counts_the_bytes_each_way() {
        let (client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, server) = tokio::io::duplex(64);
        let relaying = tokio::spawn(relay(proxy_down, proxy_up));
        let (mut client, mut server) = (client, server);
        client.write_all(b"hello there").await.unwrap();
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"hi").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        drop(client);
        assert_eq!(back, b"hi");
        // Sent to the caller 2 bytes, received from it 11.
        assert_eq!(relaying.await.unwrap(), (2, 11));
    }
}
