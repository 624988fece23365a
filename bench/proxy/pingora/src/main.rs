//! The proxy benchmark's Pingora peer. Pingora is a framework, not a program: this is the
//! smallest proxy on it that does the job every other peer does in the benchmark. It listens
//! on one port for HTTP/1.1 and h2c (prior knowledge), sends requests for Host `bench` to
//! the upstream over HTTP/1.1 keep-alive and answers 404 for any other host; one worker
//! thread, no access log, and the sidecar's allocator (mimalloc).
//!
//!     bench-pingora LISTEN UPSTREAM     # e.g. 127.0.0.1:18000 127.0.0.1:18100

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bench {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bench {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        // HTTP/1.1 names the host in `Host`, HTTP/2 in `:authority`.
        let header = session.req_header();
        let host = header.headers.get("host").map(|it| it.as_bytes()).or_else(|| header.uri.host().map(str::as_bytes));
        if host.is_some_and(is_bench) {
            return Ok(false);
        }
        session.respond_error(404).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Whether a host names the route's host, `bench`, as nginx and Envoy match one: in any case,
/// with or without a port.
fn is_bench(host: &[u8]) -> bool {
    let name = match host.iter().rposition(|it| *it == b':') {
        Some(colon) if host[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    };
    name.eq_ignore_ascii_case(b"bench")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bench-pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse::<SocketAddr>() else {
        eprintln!("bench-pingora: UPSTREAM is an IP address and port, not {upstream:?}");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        // The harness stops every peer with SIGTERM, and waits 2 s before it kills one.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bench { upstream });
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    proxy.app_logic_mut().expect("a new proxy service has its logic").server_options = Some(options);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
