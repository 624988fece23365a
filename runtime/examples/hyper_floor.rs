//! The library floor of the proxy benchmark (bench/proxy, peer `hyper-floor`): hyper's server,
//! set up as the sidecar sets up its listeners (hyper-util's auto builder for HTTP/1.1 and h2c,
//! Nagle off, one tokio worker), answering every request itself with a fixed body.
//!
//! It proxies nothing, so its throughput bounds from above what any proxy whose downstream side
//! is hyper can reach on the same CPU: the sidecar spends at least this much per request before
//! it does any work of its own. Not part of the sidecar.
//!
//!     cargo run --release -p meshc-runtime --example hyper_floor -- 127.0.0.1:18090 64

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let size: usize = args.next().and_then(|it| it.parse().ok()).unwrap_or(64);
    // The upstream's body: `size` bytes ending in a newline.
    let body = Bytes::from(if size == 0 { Vec::new() } else { [vec![b'x'; size - 1], vec![b'\n']].concat() });
    // One worker (TOKIO_WORKER_THREADS=1, as the harness starts it) on the current-thread
    // scheduler, as the sidecar runs with --concurrency 1.
    let one = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|it| it.trim() == "1");
    let mut builder = if one { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hyper_floor: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&address).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("hyper_floor: cannot listen on {address}: {err}");
                return std::process::ExitCode::FAILURE;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new());
                builder.http2().timer(TokioTimer::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
