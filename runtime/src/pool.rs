//! HTTP/2 upstream connections: one multiplexed connection per endpoint, as Envoy keeps them.
//!
//! hyper's pooled client takes the address it connects to from the request's URI, and HTTP/2
//! takes `:authority` from the same URI; a proxy needs them apart (connect to the endpoint,
//! send the service's authority). So HTTP/2 requests go over connections made here with
//! hyper's connection-level API; HTTP/1.1 keeps hyper's pooled client, which sends `Host`
//! as given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::endpoints::Endpoint;
use crate::error::Error;
use crate::proxy::Body;

/// Live HTTP/2 connections, by endpoint.
#[derive(Debug)]
pub struct Http2Pool {
    connections: Mutex<BTreeMap<String, SendRequest<Body>>>,
    connect_timeout: Duration,
    /// TLS on every connection, with the name to send.
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
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
        let key = endpoint.authority().to_owned();
        if let Some(sender) = self.lock().get(&key).filter(|it| !it.is_closed()) {
            return Ok(sender.clone());
        }
        let failed = |_| Error::UpstreamConnect(key.clone());
        let connected = async {
            let stream = TcpStream::connect((endpoint.address.as_str(), endpoint.port)).await?;
            let _ = stream.set_nodelay(true);
            let builder = {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder.timer(TokioTimer::new());
                builder
            };
            // The connection runs until either side closes it; its error ends only its streams.
            let sender = match &self.tls {
                None => {
                    let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    sender
                }
                Some((config, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), stream).await?;
                    let (sender, connection) = builder.handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    sender
                }
            };
            Ok::<_, std::io::Error>(sender)
        };
        let sender = tokio::time::timeout(self.connect_timeout, connected)
            .await
            .map_err(|_| Error::UpstreamConnect(key.clone()))?
            .map_err(failed)?;
        self.lock().insert(key, sender.clone());
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
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = current.source();
    }
    false
}
