//! Pilot's admin endpoint, in the spirit of istiod's /debug pages and `istioctl
//! proxy-status`:
//! - `/status`: the generation served and the last compile (its diagnostics when it failed);
//! - `/clients`: every connected stream, per type: what it subscribed to, the version sent
//!   and ACKed, its NACKs with the last error, and SYNCED, STALE or NACKED;
//! - `/stats/prometheus`: counters of responses, NACKs and connected clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::Pilot;

/// Serves the admin endpoint on `listener` for ever.
pub async fn serve(pilot: Arc<Pilot>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let pilot = pilot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = answer(&pilot, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer(pilot: &Pilot, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/status" => {
            let status = pilot.lock_status().clone();
            let config = pilot.config();
            let workloads: Vec<&str> = config.mesh.workloads.iter().map(|it| it.name.as_str()).collect();
            let body = serde_json::json!({ "mesh": config.mesh.name, "workloads": workloads, "compile": status });
            (StatusCode::OK, "application/json", pretty(&body))
        }
        "/clients" => {
            let clients: Vec<super::ClientStatus> = pilot.lock_clients().values().cloned().collect();
            (StatusCode::OK, "application/json", pretty(&clients))
        }
        "/stats/prometheus" => {
            let clients = pilot.lock_clients().len();
            let text = format!(
                "# TYPE meshc_pilot_xds_pushes_total counter\nmeshc_pilot_xds_pushes_total {}\n\
                 # TYPE meshc_pilot_xds_nacks_total counter\nmeshc_pilot_xds_nacks_total {}\n\
                 # TYPE meshc_pilot_xds_clients gauge\nmeshc_pilot_xds_clients {clients}\n\
                 # TYPE meshc_pilot_generation gauge\nmeshc_pilot_generation {}\n",
                pilot.pushes.load(Ordering::Relaxed),
                pilot.nacks.load(Ordering::Relaxed),
                pilot.config().generation,
            );
            (StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /status, /clients or /stats/prometheus\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn pretty(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
