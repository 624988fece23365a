//! The sidecar process: flags, listeners, the admin endpoint, and the accept loops.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::endpoints::{self, ClusterEndpoints, Endpoint};
use crate::guard::{Guarded, UpgradeSignal};
use crate::proxy::{Body, Downstream, InboundPort, Proxy, full};
use crate::rpc::{self, head::RpcProtocol, proxy::RpcProxy, proxy::Side};
use crate::spec::{ListenerKind, PeerMtls, Protocol, SidecarSpec};
use crate::tls::{MeshTls, TlsFiles};

/// Writes a line to stderr, ignoring failures: a sidecar whose stderr was closed keeps
/// serving (`eprintln!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Writes a line to stderr, ignoring failures (for modules outside this one).
pub(crate) fn say(line: &str) {
    say!("{line}");
}

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default admin address: loopback only, as Envoy's admin should be.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    listen: Vec<(String, SocketAddr)>,
    /// How long a drain may take after SIGTERM.
    drain_time: std::time::Duration,
    /// Where inbound requests for an application port go, when not 127.0.0.1:<port>.
    app: Vec<(u16, SocketAddr)>,
    admin: SocketAddr,
    endpoints: Option<String>,
    tls: Option<TlsFiles>,
    /// `region/zone/subzone`, maybe empty.
    locality: String,
    /// The largest Bolt or Dubbo frame accepted, in bytes.
    max_rpc_frame: usize,
    /// Worker threads; `None` for the runtime's default (one per CPU, or
    /// `TOKIO_WORKER_THREADS`).
    concurrency: Option<usize>,
    /// Pilot's ADS address, for run-time overrides.
    xds: Option<String>,
}

fn command(spec: &SidecarSpec) -> clap::Command {
    let listeners: Vec<String> = spec.listeners.iter().map(|it| format!("{} (default {})", it.name, it.default_address)).collect();
    clap::Command::new(spec.workload)
        .about(format!("The meshc sidecar of workload `{}` (namespace `{}`)", spec.workload, spec.namespace))
        .after_help(format!("Listeners: {}", listeners.join(", ")))
        .arg(
            clap::Arg::new("listen")
                .long("listen")
                .value_name("NAME=ADDR")
                .action(clap::ArgAction::Append)
                .help("Listen on ADDR for listener NAME (outbound, inbound-<port>)"),
        )
        .arg(
            clap::Arg::new("app")
                .long("app")
                .value_name("PORT=ADDR")
                .action(clap::ArgAction::Append)
                .help("Send what listener inbound-<PORT> receives to ADDR instead of 127.0.0.1:<PORT>"),
        )
        .arg(
            clap::Arg::new("drain-time-s")
                .long("drain-time-s")
                .value_name("SECONDS")
                .default_value("5")
                .value_parser(clap::value_parser!(u64))
                .help("After SIGTERM or SIGINT, how long in-flight requests may take to finish"),
        )
        .arg(
            clap::Arg::new("concurrency")
                .long("concurrency")
                .value_name("N")
                .value_parser(clap::value_parser!(u16).range(1..))
                .help("Worker threads (Envoy's --concurrency); default: one per CPU, or TOKIO_WORKER_THREADS. With 1, every connection is served on one thread, without work stealing"),
        )
        .arg(
            clap::Arg::new("admin")
                .long("admin")
                .value_name("ADDR")
                .default_value(DEFAULT_ADMIN)
                .help("Serve the admin endpoints on ADDR: /ready, /config_dump, /stats/prometheus and /clusters"),
        )
        .arg(
            clap::Arg::new("locality")
                .long("locality")
                .value_name("REGION/ZONE/SUBZONE")
                .help("Where this sidecar runs: endpoints in the same region, zone and subzone are preferred while they are healthy (for clusters with outlier detection or health checks)"),
        )
        .arg(
            clap::Arg::new("max-rpc-frame-bytes")
                .long("max-rpc-frame-bytes")
                .value_name("BYTES")
                .default_value("16777216")
                .value_parser(clap::value_parser!(u32).range(64..))
                .help("The largest Bolt or Dubbo frame accepted; a connection that announces a larger one is closed"),
        )
        .arg(
            clap::Arg::new("xds")
                .long("xds")
                .value_name("HOST:PORT")
                .help("Take run-time overrides from meshc pilot's ADS at HOST:PORT: the endpoints of the compiled clusters (replacing those of --endpoints once they arrive), their settings, and the outbound routes; the sidecar serves its compiled state until they arrive and its last good state while Pilot is away"),
        )
        .arg(
            clap::Arg::new("endpoints")
                .long("endpoints")
                .value_name("FILE")
                .help("Replace every service's instances from the registry snapshots with those of a TOML file of [[endpoint]] tables (a service the file does not name has none)"),
        )
        .arg(
            clap::Arg::new("tls-cert")
                .long("tls-cert")
                .value_name("FILE")
                .requires_all(["tls-key", "tls-ca"])
                .help("The workload's certificate chain (PEM, with its spiffe:// identity), for mutual TLS; reloaded when it changes"),
        )
        .arg(
            clap::Arg::new("tls-key")
                .long("tls-key")
                .value_name("FILE")
                .requires_all(["tls-cert", "tls-ca"])
                .help("The certificate's private key (PEM)"),
        )
        .arg(
            clap::Arg::new("tls-ca")
                .long("tls-ca")
                .value_name("FILE")
                .requires_all(["tls-cert", "tls-key"])
                .help("The mesh's root certificates (PEM), which peers' certificates must chain to"),
        )
}

fn parse_options(spec: &SidecarSpec, args: Vec<String>) -> Result<Options, clap::Error> {
    let mut command = command(spec);
    let matches = command.try_get_matches_from_mut(args)?;
    let mut listen = Vec::new();
    for value in matches.get_many::<String>("listen").into_iter().flatten() {
        let Some((name, address)) = value.split_once('=') else {
            return Err(command.error(clap::error::ErrorKind::InvalidValue, format!("`--listen {value}` is not NAME=ADDR")));
        };
        if !spec.listeners.iter().any(|it| it.name == name) {
            let names: Vec<&str> = spec.listeners.iter().map(|it| it.name).collect();
            return Err(command.error(
                clap::error::ErrorKind::InvalidValue,
                format!("there is no listener `{name}`; the listeners are {}", names.join(", ")),
            ));
        }
        let Ok(address) = address.parse::<SocketAddr>() else {
            return Err(
                command.error(clap::error::ErrorKind::InvalidValue, format!("`{address}` is not an address such as 127.0.0.1:15001"))
            );
        };
        listen.push((name.to_owned(), address));
    }
    let mut app = Vec::new();
    for value in matches.get_many::<String>("app").into_iter().flatten() {
        let ports: Vec<u16> = spec
            .listeners
            .iter()
            .filter_map(|it| match it.kind {
                ListenerKind::Inbound { app_port, .. } => Some(app_port),
                ListenerKind::Outbound
                | ListenerKind::OutboundRpc { .. }
                | ListenerKind::OutboundRpcSniffed { .. }
                | ListenerKind::OutboundTcp { .. } => None,
            })
            .collect();
        let parsed =
            value.split_once('=').and_then(|(port, address)| Some((port.parse::<u16>().ok()?, address.parse::<SocketAddr>().ok()?)));
        let Some((port, address)) = parsed else {
            return Err(command
                .error(clap::error::ErrorKind::InvalidValue, format!("`--app {value}` is not PORT=ADDR, such as 9080=127.0.0.1:19080")));
        };
        if !ports.contains(&port) {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            let served = if ports.is_empty() { "none".to_owned() } else { ports.join(", ") };
            return Err(command.error(
                clap::error::ErrorKind::InvalidValue,
                format!("`--app {value}`: the workload serves no port {port}; the ports it serves are {served}"),
            ));
        }
        app.push((port, address));
    }
    let admin_text = matches.get_one::<String>("admin").map_or(DEFAULT_ADMIN, String::as_str);
    let Ok(admin) = admin_text.parse::<SocketAddr>() else {
        return Err(
            command.error(clap::error::ErrorKind::InvalidValue, format!("`{admin_text}` is not an address such as 127.0.0.1:15000"))
        );
    };
    let drain_time = std::time::Duration::from_secs(matches.get_one::<u64>("drain-time-s").copied().unwrap_or(5));
    let tls = match (matches.get_one::<String>("tls-cert"), matches.get_one::<String>("tls-key"), matches.get_one::<String>("tls-ca")) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert: cert.into(), key: key.into(), ca: ca.into() }),
        _ => None,
    };
    let locality = matches.get_one::<String>("locality").map(|it| it.trim_matches('/').to_owned()).unwrap_or_default();
    let max_rpc_frame = matches.get_one::<u32>("max-rpc-frame-bytes").map_or(crate::rpc::DEFAULT_MAX_FRAME, |it| *it as usize);
    let concurrency = matches.get_one::<u16>("concurrency").map(|it| usize::from(*it));
    let endpoints = matches.get_one::<String>("endpoints").cloned();
    let xds = matches.get_one::<String>("xds").cloned();
    Ok(Options { listen, drain_time, app, admin, endpoints, tls, locality, max_rpc_frame, concurrency, xds })
}

/// Runs the sidecar until SIGINT or SIGTERM. Exit codes: 0 after a signal, 1 when a listener
/// cannot start, 2 for a bad flag or endpoints file.
pub fn run(spec: &'static SidecarSpec) -> ExitCode {
    let options = match parse_options(spec, std::env::args().collect()) {
        Ok(options) => options,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let endpoints = match &options.endpoints {
        None => spec.clusters.iter().map(|it| ClusterEndpoints::seeded(it, &options.locality)).collect(),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(err) => {
                    say!("error: cannot read the endpoints file {path}: {err}");
                    return ExitCode::from(2);
                }
            };
            match endpoints::from_file(&text, spec.clusters) {
                Ok(lists) => lists.into_iter().map(|it| ClusterEndpoints::new(it, &options.locality)).collect(),
                Err(err) => {
                    say!("error: in the endpoints file {path}: {err}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let tls = match options.tls.clone().map(|files| MeshTls::load(files, spec.trust_domain)).transpose() {
        Ok(tls) => tls,
        Err(err) => {
            say!("error: cannot use the TLS files: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(identity) = tls.as_ref().and_then(|it| it.identity())
        && identity != spec.principal
    {
        say!("{}: warning: the certificate proves {identity}, not this workload's identity {}", spec.workload, spec.principal);
    }
    for listener in spec.listeners {
        if let ListenerKind::Inbound { mtls: PeerMtls::Strict, .. } = listener.kind
            && tls.is_none()
        {
            say!("error: listener {} accepts mutual TLS only: start the sidecar with --tls-cert, --tls-key and --tls-ca", listener.name);
            return ExitCode::from(2);
        }
    }
    let proxy = match Proxy::new(spec, endpoints, tls.as_ref()) {
        Ok(proxy) => Arc::new(proxy),
        Err(err) => {
            say!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(options.concurrency).build() {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("error: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(spec, options, proxy, tls))
}

/// The runtime for `concurrency` workers (else `TOKIO_WORKER_THREADS`, else one per CPU). One
/// worker runs on the current-thread scheduler, which does without the multi-thread one's
/// work stealing, shared queues and their synchronisation: with one CPU, bench/proxy/run
/// measured h2c through the sidecar at 58.9k rps on the multi-thread scheduler and 79.9k on
/// this one, and Dubbo (bench/rpc) went from 248k to 267k.
fn runtime(concurrency: Option<usize>) -> tokio::runtime::Builder {
    let from_env = || std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|it| it.trim().parse::<usize>().ok()).filter(|it| *it > 0);
    let mut builder = match concurrency.or_else(from_env) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder
}

async fn serve(spec: &'static SidecarSpec, options: Options, proxy: Arc<Proxy>, tls: Option<Arc<MeshTls>>) -> ExitCode {
    let acceptor = match &tls {
        Some(tls) => match tls.server_config() {
            Ok(config) => Some(tokio_rustls::TlsAcceptor::from(config)),
            Err(err) => {
                say!("error: cannot set up TLS: {err}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if let Some(tls) = tls {
        tokio::spawn(tls.watch(spec.workload));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let drain = Drain::new();
    if let Some(server) = options.xds.clone() {
        crate::xds::start(proxy.clone(), server);
    }
    // Active health checks, one task per checked cluster.
    for (index, cluster) in spec.clusters.iter().enumerate() {
        if let Some(check) = &cluster.health_check {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                if let Some(cluster) = proxy.clusters.get(index) {
                    crate::health::probe_forever(check, cluster.spec.name, &cluster.endpoints, &cluster.health, &cluster.raw_tls).await;
                }
            });
        }
    }
    let mut bound = Vec::new();
    for listener in spec.listeners {
        let address = match options.listen.iter().rev().find(|it| it.0 == listener.name) {
            Some((_, address)) => *address,
            None => match listener.default_address.parse() {
                Ok(address) => address,
                Err(_) => {
                    say!("error: listener {} has an invalid default address {}", listener.name, listener.default_address);
                    return ExitCode::from(1);
                }
            },
        };
        match TcpListener::bind(address).await {
            Ok(socket) => bound.push((listener, socket)),
            Err(err) => {
                say!("error: listener {} cannot listen on {address}: {err}", listener.name);
                return ExitCode::from(1);
            }
        }
    }
    let admin = match TcpListener::bind(options.admin).await {
        Ok(socket) => socket,
        Err(err) => {
            say!("error: the admin endpoint cannot listen on {}: {err}", options.admin);
            return ExitCode::from(1);
        }
    };
    for (listener, socket) in &bound {
        if let Ok(address) = socket.local_addr() {
            say!("{}: listener {} on {address}", spec.workload, listener.name);
        }
    }
    if let Ok(address) = admin.local_addr() {
        say!("{}: admin on {address}", spec.workload);
    }
    // One RPC proxy per protocol, with its own multiplexed connection pools, when a listener
    // needs it.
    let uses = |protocol: RpcProtocol| {
        bound.iter().any(|(it, _)| match it.kind {
            ListenerKind::OutboundRpc { protocol: used } => used == protocol,
            ListenerKind::OutboundRpcSniffed { bolt, dubbo } => match protocol {
                RpcProtocol::Bolt => bolt,
                RpcProtocol::Dubbo => dubbo,
            },
            ListenerKind::Inbound { protocol: Protocol::Bolt, .. } => protocol == RpcProtocol::Bolt,
            ListenerKind::Inbound { protocol: Protocol::Dubbo, .. } => protocol == RpcProtocol::Dubbo,
            ListenerKind::Inbound { protocol: Protocol::Sniffed { bolt, dubbo }, .. } => match protocol {
                RpcProtocol::Bolt => bolt,
                RpcProtocol::Dubbo => dubbo,
            },
            _ => false,
        })
    };
    let bolt = uses(RpcProtocol::Bolt).then(|| Arc::new(RpcProxy::<rpc::proxy::Bolt>::new(proxy.clone(), options.max_rpc_frame)));
    let dubbo = uses(RpcProtocol::Dubbo).then(|| Arc::new(RpcProxy::<rpc::proxy::Dubbo>::new(proxy.clone(), options.max_rpc_frame)));
    for (listener, socket) in bound {
        let proxy = proxy.clone();
        let serves = match listener.kind {
            ListenerKind::Outbound => Serves::Outbound,
            ListenerKind::OutboundRpc { protocol: RpcProtocol::Bolt } => match &bolt {
                Some(bolt) => Serves::Bolt(bolt.clone()),
                None => continue,
            },
            ListenerKind::OutboundRpc { protocol: RpcProtocol::Dubbo } => match &dubbo {
                Some(dubbo) => Serves::Dubbo(dubbo.clone()),
                None => continue,
            },
            ListenerKind::OutboundRpcSniffed { .. } => Serves::Rpc(bolt.clone(), dubbo.clone()),
            ListenerKind::OutboundTcp { service_names, destinations } => Serves::OutboundTcp(service_names, destinations),
            ListenerKind::Inbound { app_port, protocol, service_names, mtls } => {
                let app = match options.app.iter().rev().find(|it| it.0 == app_port) {
                    Some((_, address)) => Endpoint::at(*address),
                    None => Endpoint::at(SocketAddr::from(([127, 0, 0, 1], app_port))),
                };
                let tls = match mtls {
                    PeerMtls::Disable => Accepts::Plaintext,
                    PeerMtls::Permissive => acceptor.clone().map_or(Accepts::Plaintext, Accepts::Either),
                    PeerMtls::Strict => acceptor.clone().map_or(Accepts::Plaintext, Accepts::MutualTls),
                };
                let port = Arc::new(InboundPort { app, port: app_port, protocol, service_names });
                let rpc = match protocol {
                    Protocol::Bolt => Some(InboundRpc { bolt: bolt.clone(), dubbo: None, sniff: false }),
                    Protocol::Dubbo => Some(InboundRpc { bolt: None, dubbo: dubbo.clone(), sniff: false }),
                    Protocol::Sniffed { bolt: uses_bolt, dubbo: uses_dubbo } if uses_bolt || uses_dubbo => Some(InboundRpc {
                        bolt: bolt.clone().filter(|_| uses_bolt),
                        dubbo: dubbo.clone().filter(|_| uses_dubbo),
                        sniff: true,
                    }),
                    _ => None,
                };
                Serves::Inbound(port, tls, rpc)
            }
        };
        tokio::spawn(accept_loop(socket, proxy, serves, drain.clone()));
    }
    tokio::spawn(admin_loop(admin, proxy, ready.clone()));
    ready.store(true, Ordering::Release);
    wait_for_signal().await;
    // Drain: not ready any more, no new connections, every open one finishes the requests it
    // has (HTTP/1 closes after its current response, HTTP/2 sends GOAWAY), within the deadline.
    ready.store(false, Ordering::Release);
    say!("{}: draining for up to {:?}", spec.workload, options.drain_time);
    let finished = drain.start(options.drain_time).await;
    if finished {
        say!("{}: drained", spec.workload);
    } else {
        say!("{}: drain time over with connections still open", spec.workload);
    }
    ExitCode::SUCCESS
}

/// The state of a drain: a signal every connection and accept loop watches, and a count of
/// open connections.
#[derive(Clone, Debug)]
struct Drain {
    started: tokio::sync::watch::Sender<bool>,
    open: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Drain {
    fn new() -> Drain {
        Drain { started: tokio::sync::watch::channel(false).0, open: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    /// Whether the drain has started, watched.
    fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.started.subscribe()
    }

    /// Resolves when the drain starts.
    async fn signalled(&self) {
        let mut receiver = self.started.subscribe();
        let _ = receiver.wait_for(|started| *started).await;
    }

    /// Starts the drain and waits until no connection is open or `limit` passes; `true` when
    /// every connection finished.
    async fn start(&self, limit: std::time::Duration) -> bool {
        self.started.send_replace(true);
        let mut open = self.open.subscribe();
        tokio::time::timeout(limit, open.wait_for(|count| *count == 0)).await.is_ok()
    }
}

/// Polls `wait` (a timer, or a wait for the drain) from inside a connection's own poll
/// function, only when `may_be_ready` (its state, read without a lock) or the task's waker
/// changed since `waker` recorded it. Once polled, such a wait keeps the task's waker, and
/// polling it again takes a lock; a connection's task is woken mostly by its sockets, so most
/// wake-ups need not poll it. Set `waker` to `None` to have it polled next time (after a reset).
pub(crate) fn poll_if_woken<F: Future>(
    wait: Pin<&mut F>,
    may_be_ready: bool,
    waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    if !may_be_ready && waker.as_ref().is_some_and(|it| it.will_wake(cx.waker())) {
        return Poll::Pending;
    }
    *waker = Some(cx.waker().clone());
    wait.poll(cx)
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<tokio::sync::watch::Sender<usize>>);

impl OpenConnection {
    fn new(drain: &Drain) -> OpenConnection {
        drain.open.send_modify(|it| *it += 1);
        OpenConnection(drain.open.clone())
    }
}

/// A connection's stream that keeps it counted as open until the stream is dropped.
struct Counted<S> {
    inner: S,
    _open: OpenConnection,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|it| *it = it.saturating_sub(1));
    }
}

/// A stream whose first bytes were already read: it reads them again, then the rest.
struct Prefixed<S> {
    read: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(read: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { read, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.read.is_empty() && buf.remaining() > 0 {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What one listener does, with its run-time settings resolved.
#[derive(Clone)]
enum Serves {
    Outbound,
    Bolt(Arc<RpcProxy<rpc::proxy::Bolt>>),
    Dubbo(Arc<RpcProxy<rpc::proxy::Dubbo>>),
    /// Bolt or Dubbo, as each connection's first byte says.
    Rpc(Option<Arc<RpcProxy<rpc::proxy::Bolt>>>, Option<Arc<RpcProxy<rpc::proxy::Dubbo>>>),
    /// A TCP service's names and destinations.
    OutboundTcp(&'static [&'static str], &'static [crate::spec::WeightedCluster]),
    Inbound(Arc<InboundPort>, Accepts, Option<InboundRpc>),
}

/// The RPC proxies an inbound Bolt, Dubbo or sniffed port hands its connections to.
#[derive(Clone)]
struct InboundRpc {
    bolt: Option<Arc<RpcProxy<rpc::proxy::Bolt>>>,
    dubbo: Option<Arc<RpcProxy<rpc::proxy::Dubbo>>>,
    /// Whether each connection's first byte chooses between them and HTTP.
    sniff: bool,
}

/// What an inbound listener accepts.
#[derive(Clone)]
enum Accepts {
    Plaintext,
    /// Mutual TLS when the first byte starts a TLS handshake, plaintext otherwise.
    Either(tokio_rustls::TlsAcceptor),
    /// Mutual TLS only.
    MutualTls(tokio_rustls::TlsAcceptor),
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

async fn accept_loop(socket: TcpListener, proxy: Arc<Proxy>, serves: Serves, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            // Draining: inbound listeners stop accepting (dropping the socket refuses new
            // connections); the outbound one goes on, since the application may still be
            // finishing its own work and calling out, as Envoy keeps its listeners while it drains.
            () = drain.signalled(), if matches!(serves, Serves::Inbound(..)) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of file descriptors and similar: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let serves = serves.clone();
        let drain = drain.clone();
        // Counted before the task starts, so a drain that begins now waits for it.
        let open = OpenConnection::new(&drain);
        tokio::spawn(async move {
            let local = stream.local_addr().ok().map(|it| it.ip());
            let plain = Downstream::plain(peer.ip(), local);
            let acceptor = match &serves {
                Serves::Outbound
                | Serves::Bolt(_)
                | Serves::Dubbo(_)
                | Serves::Rpc(..)
                | Serves::OutboundTcp(..)
                | Serves::Inbound(_, Accepts::Plaintext, _) => None,
                Serves::Inbound(_, Accepts::Either(acceptor), _) => Some((acceptor.clone(), false)),
                Serves::Inbound(_, Accepts::MutualTls(acceptor), _) => Some((acceptor.clone(), true)),
            };
            let Some((acceptor, strict)) = acceptor else {
                return serve_connection(stream, open, plain, proxy, serves, drain).await;
            };
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(1)) => {}
                _ => return,
            }
            if first[0] != TLS_HANDSHAKE {
                // Strict: a plaintext caller's connection is closed unanswered, as Envoy's
                // listener without a plaintext filter chain does.
                if !strict {
                    serve_connection(stream, open, plain, proxy, serves, drain).await;
                }
                return;
            }
            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await else { return };
            let (_, connection) = stream.get_ref();
            let certificate = connection.peer_certificates().and_then(|it| it.first());
            let principal = certificate.and_then(crate::tls::spiffe_identity);
            let sni = connection.server_name().map(Arc::from);
            let mutual = certificate.is_some();
            let downstream = Downstream { principal: principal.map(Arc::from), sni, mutual, ..plain };
            serve_connection(stream, open, downstream, proxy, serves, drain).await;
        });
    }
}

/// Serves one accepted connection, counted as open (`open`) until it ends: TCP relayed as it
/// is, or HTTP.
async fn serve_connection<S>(stream: S, open: OpenConnection, downstream: Downstream, proxy: Arc<Proxy>, serves: Serves, drain: Drain)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The count goes with the stream: an upgraded connection (a WebSocket) outlives its HTTP
    // connection, relayed by a task of its own, and a drain waits for it too.
    let stream = Counted { inner: stream, _open: open };
    match &serves {
        Serves::OutboundTcp(service, destinations) => crate::tcp::outbound(&proxy, stream, service, destinations).await,
        Serves::Bolt(rpc) => rpc.clone().serve(stream, Side::Outbound, drain.watch()).await,
        Serves::Dubbo(rpc) => rpc.clone().serve(stream, Side::Outbound, drain.watch()).await,
        Serves::Rpc(bolt, dubbo) => {
            // The first byte: Bolt's protocol code or Dubbo's magic; read, then replayed.
            // Anything else closes the connection, as bytes that are no frame do. A client's
            // pool may open a connection long before its first call, so the wait has no
            // deadline but a drain's.
            let mut stream = stream;
            let mut first = [0u8; 1];
            let read = tokio::select! {
                read = tokio::io::AsyncReadExt::read(&mut stream, &mut first) => read,
                () = drain.signalled() => return,
            };
            let Ok(1) = read else { return };
            let stream = Prefixed::new(Bytes::copy_from_slice(&first), stream);
            match (rpc_protocol_of(first[0]), bolt, dubbo) {
                (Some(RpcProtocol::Bolt), Some(bolt), _) => bolt.clone().serve(stream, Side::Outbound, drain.watch()).await,
                (Some(RpcProtocol::Dubbo), _, Some(dubbo)) => dubbo.clone().serve(stream, Side::Outbound, drain.watch()).await,
                _ => {}
            }
        }
        Serves::Inbound(port, _, Some(rpc)) if !rpc.sniff => {
            let side = Side::Inbound { port: port.clone(), peer: Arc::new(downstream) };
            match (&rpc.bolt, &rpc.dubbo) {
                (Some(bolt), _) => bolt.clone().serve(stream, side, drain.watch()).await,
                (_, Some(dubbo)) => dubbo.clone().serve(stream, side, drain.watch()).await,
                (None, None) => {}
            }
        }
        Serves::Inbound(port, _, Some(rpc)) => {
            // The first byte: Bolt's protocol code, Dubbo's magic, or HTTP (a method's first
            // letter, or the HTTP/2 preface's `P`). It is read, then replayed.
            let mut stream = stream;
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(HEADER_READ_TIMEOUT, tokio::io::AsyncReadExt::read(&mut stream, &mut first)).await;
            let Ok(Ok(1)) = read else { return };
            let stream = Prefixed::new(Bytes::copy_from_slice(&first), stream);
            let side = || Side::Inbound { port: port.clone(), peer: Arc::new(downstream.clone()) };
            match (rpc_protocol_of(first[0]), &rpc.bolt, &rpc.dubbo) {
                (Some(RpcProtocol::Bolt), Some(bolt), _) => bolt.clone().serve(stream, side(), drain.watch()).await,
                (Some(RpcProtocol::Dubbo), _, Some(dubbo)) => dubbo.clone().serve(stream, side(), drain.watch()).await,
                _ => serve_http(stream, downstream, proxy, serves.clone(), drain).await,
            }
        }
        Serves::Inbound(port, _, None) if port.protocol == crate::spec::Protocol::Tcp => {
            if proxy.authorize_connection(port, &downstream) {
                crate::tcp::inbound(&proxy, stream, &port.app, port.service_names, &downstream).await;
            } else {
                crate::tcp::denied(&proxy, port.service_names, &downstream);
            }
        }
        _ => serve_http(stream, downstream, proxy, serves, drain).await,
    }
}

/// The RPC protocol whose frames start with byte `first`: Bolt's protocol code or the first
/// byte of Dubbo's magic.
fn rpc_protocol_of(first: u8) -> Option<RpcProtocol> {
    match first {
        rpc::bolt::V1 | rpc::bolt::V2 => Some(RpcProtocol::Bolt),
        it if it == rpc::dubbo::MAGIC[0] => Some(RpcProtocol::Dubbo),
        _ => None,
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection until it ends or a drain closes it.
/// HTTP/1.1 is served by [`h1::server`](crate::h1::server), HTTP/2 (the connection began with
/// its preface) by [`http2`](crate::http2), and hyper takes the connection over for what the
/// first leaves to it (HTTP/1.0, upgrades, CONNECT, `Expect`).
async fn serve_http<S>(stream: S, downstream: Downstream, proxy: Arc<Proxy>, serves: Serves, drain: Drain)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let downstream = Arc::new(downstream);
    let answer = |request| answer(&proxy, &serves, &downstream, request);
    let served = crate::h1::server::serve(stream, drain.watch(), HEADER_READ_TIMEOUT, answer).await;
    let crate::h1::server::Ended::HandOff(read, stream) = served else { return };
    // One instance of each of hyper's servers for every kind of stream.
    let h2 = read.starts_with(crate::guard::H2_PREFACE);
    let stream: Box<dyn Io> = Box::new(Prefixed::new(read, stream));
    if h2 {
        crate::http2::serve(stream, drain.watch(), answer).await;
    } else {
        serve_with_hyper(stream, downstream, proxy, serves, drain).await;
    }
}

/// A connection's stream, whatever it is.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for S {}

/// The answer to a request on a listener that serves `serves`.
async fn answer(proxy: &Proxy, serves: &Serves, downstream: &Downstream, request: Request<Body>) -> Response<Body> {
    match serves {
        Serves::Inbound(port, _, _) => proxy.inbound(port, downstream, request).await,
        Serves::Outbound | Serves::Bolt(_) | Serves::Dubbo(_) | Serves::Rpc(..) | Serves::OutboundTcp(..) => {
            proxy.outbound(downstream.ip, request).await
        }
    }
}

/// Serves a connection with hyper, HTTP/1 requests checked by the guard first.
async fn serve_with_hyper(stream: Box<dyn Io>, downstream: Arc<Downstream>, proxy: Arc<Proxy>, serves: Serves, drain: Drain) {
    // A connection accepted during a drain (only the outbound listener takes them) answers
    // one request and closes, rather than waiting for the drain to close it.
    let late = *drain.started.borrow();
    let signal = UpgradeSignal::default();
    let guarded = Guarded::new(stream, signal.clone());
    let service = service_fn(move |request: Request<Incoming>| {
        let request =
            request.map(|body| http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(body, crate::proxy::BoxError::from)));
        let proxy = proxy.clone();
        let serves = serves.clone();
        let signal = signal.clone();
        let downstream = downstream.clone();
        async move {
            let awaited = request.version() < Version::HTTP_2 && UpgradeSignal::awaited(request.method(), request.headers());
            let connect = request.method() == Method::CONNECT;
            // Boxed: hyper runs each HTTP/2 stream as a task of its own, and tokio copies a task's
            // whole future as it starts and ends it; the answer's future is large.
            let mut response = Box::pin(answer(&proxy, &serves, &downstream, request)).await;
            if awaited {
                let status = response.status();
                let upgraded = status == StatusCode::SWITCHING_PROTOCOLS || connect && status.is_success();
                signal.answer(upgraded);
                if !upgraded {
                    // hyper keeps a declined upgrade pending until the connection ends,
                    // and then drops the connection without shutting it down; closing
                    // after this answer keeps the state of the connection simple.
                    response.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                }
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // `half_close`: after the guard ends the stream at a bad request, the answers to
    // the requests before it still go out, then the 400. The header timeout is
    // Envoy's `request_headers_timeout`-like bound on a client that never finishes.
    builder.http1().half_close(true).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(!late);
    builder.http2().timer(TokioTimer::new());
    // A connection error is the client's problem and ends only that connection.
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(guarded), service);
    tokio::pin!(connection);
    if late {
        let _ = connection.await;
        return;
    }
    tokio::select! {
        _ = connection.as_mut() => return,
        () = drain.signalled() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

async fn admin_loop(socket: TcpListener, proxy: Arc<Proxy>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            // Out of file descriptors and similar: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let proxy = proxy.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = admin(&proxy, ready.load(Ordering::Acquire), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn admin(proxy: &Proxy, ready: bool, path: &str) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/ready" if ready => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n".to_owned()),
        "/config_dump" => (StatusCode::OK, "application/json", config_dump(proxy)),
        "/stats/prometheus" => {
            let own =
                crate::metrics::Own { workload: proxy.spec.workload, namespace: proxy.spec.namespace, principal: proxy.spec.principal };
            let mut text = proxy.metrics.render(&own, proxy.spec.metric_labels);
            text.push_str(&proxy.cluster_stats());
            text.push_str(&proxy.route_metrics());
            text.push_str(&rpc::mux::unknown_responses_metric());
            text.push_str(&proxy.xds.metrics());
            (StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/clusters" => (StatusCode::OK, "text/plain", proxy.clusters_text()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found: try /ready, /config_dump, /clusters or /stats/prometheus\n".to_owned()),
    };
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// The compiled tables, each cluster's current endpoints, and each virtual host's source
/// (compiled, or overridden by xDS) side by side.
fn config_dump(proxy: &Proxy) -> String {
    let compiled: serde_json::Value = serde_json::from_str(proxy.spec.config_dump).unwrap_or(serde_json::Value::Null);
    let clusters: Vec<serde_json::Value> = proxy
        .clusters
        .iter()
        .map(|cluster| {
            let endpoints: Vec<serde_json::Value> = cluster
                .endpoints
                .current()
                .all()
                .iter()
                .map(|it| serde_json::json!({"address": it.authority(), "weight": it.weight, "routable": it.routable}))
                .collect();
            let source = if proxy.xds.overrides(cluster.spec.name) { "xds" } else { "compiled" };
            serde_json::json!({"name": cluster.spec.name, "source": source, "endpoints": endpoints, "settings": cluster.tuning.dump(cluster.spec)})
        })
        .collect();
    let dump = serde_json::json!({
        "workload": proxy.spec.workload,
        "namespace": proxy.spec.namespace,
        "compiled": compiled,
        "endpoints": clusters,
        "virtual_hosts": proxy.route_overrides.dump(proxy.spec.virtual_hosts),
        "xds": proxy.xds.dump(),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n"
}
