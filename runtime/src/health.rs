//! Active health checking (Envoy's `health_checks`): every interval each endpoint of a
//! cluster is probed (an HTTP GET of a path answered 200, Envoy's default expected status, or
//! a TCP connect) within a timeout; `unhealthy_threshold` failures in a row mark it unhealthy,
//! `healthy_threshold` successes in a row healthy again. Endpoints start healthy. Picks skip unhealthy endpoints. Probes of a
//! TLS cluster go over TLS, as its requests do.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::endpoints::{ClusterEndpoints, Endpoint};

/// A cluster's probe settings.
#[derive(Debug)]
pub struct HealthCheckSpec {
    /// An HTTP path to GET, or `None` for a TCP connect.
    pub http_path: Option<&'static str>,
    /// Time between probes, milliseconds.
    pub interval_ms: u64,
    /// A probe's timeout, milliseconds.
    pub timeout_ms: u64,
    /// Successes in a row that make an endpoint healthy again.
    pub healthy_threshold: u32,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Default)]
struct State {
    unhealthy: bool,
    successes: u32,
    failures: u32,
    /// When it last turned healthy again.
    recovered: Option<Instant>,
}

/// The health of a cluster's endpoints, by address.
#[derive(Debug, Default)]
pub struct Health {
    endpoints: Mutex<BTreeMap<String, State>>,
    /// When any endpoint last turned healthy again.
    last_recovery: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether probes marked `endpoint` unhealthy.
    pub fn is_unhealthy(&self, endpoint: &str) -> bool {
        self.lock().get(endpoint).is_some_and(|it| it.unhealthy)
    }

    /// When `endpoint` last turned healthy again (slow start begins then, as in Envoy).
    pub fn recovered_at(&self, endpoint: &str) -> Option<Instant> {
        self.lock().get(endpoint).and_then(|it| it.recovered)
    }

    /// When any endpoint last turned healthy again.
    pub fn last_recovery(&self) -> Option<Instant> {
        *self.last_recovery.lock().unwrap_or_else(|it| it.into_inner())
    }

    /// Counts one probe's result; `Some(healthy)` when the endpoint changed state.
    pub fn record(&self, spec: &HealthCheckSpec, endpoint: &str, passed: bool) -> Option<bool> {
        let mut endpoints = self.lock();
        let state = endpoints.entry(endpoint.to_owned()).or_default();
        if passed {
            state.failures = 0;
            state.successes = state.successes.saturating_add(1);
            if state.unhealthy && state.successes >= spec.healthy_threshold.max(1) {
                state.unhealthy = false;
                let now = Instant::now();
                state.recovered = Some(now);
                *self.last_recovery.lock().unwrap_or_else(|it| it.into_inner()) = Some(now);
                return Some(true);
            }
        } else {
            state.successes = 0;
            state.failures = state.failures.saturating_add(1);
            if !state.unhealthy && state.failures >= spec.unhealthy_threshold.max(1) {
                state.unhealthy = true;
                return Some(false);
            }
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, State>> {
        self.endpoints.lock().unwrap_or_else(|it| it.into_inner())
    }
}

/// TLS for probes of a cluster whose endpoints expect it: the configuration and the server
/// name to send (the cluster's own, as Envoy's health checks use the cluster's transport).
pub type ProbeTls = Option<crate::pool::ClientTls>;

/// Probes a cluster's endpoints forever, all of them at once every interval, recording into
/// `health`.
pub async fn probe_forever(
    spec: &'static HealthCheckSpec,
    cluster: &'static str,
    endpoints: &ClusterEndpoints,
    health: &Health,
    tls: &ProbeTls,
) {
    let interval = Duration::from_millis(spec.interval_ms.max(10));
    loop {
        let mut probes = tokio::task::JoinSet::new();
        // The set is held only while the probes start: a round and its pause would otherwise
        // keep a replaced set alive, to be dropped whole on a request thread.
        for endpoint in endpoints.current().all().iter().cloned() {
            let tls = tls.clone();
            probes.spawn(async move {
                let passed = probe(spec, &endpoint, &tls).await;
                (endpoint, passed)
            });
        }
        while let Some(Ok((endpoint, passed))) = probes.join_next().await {
            if let Some(healthy) = health.record(spec, endpoint.authority(), passed) {
                use std::io::Write as _;
                let word = if healthy { "healthy again" } else { "unhealthy" };
                let _ = writeln!(std::io::stderr(), "health check: {} in {cluster} is {word}", endpoint.authority());
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One probe of one endpoint.
async fn probe(spec: &HealthCheckSpec, endpoint: &Endpoint, tls: &ProbeTls) -> bool {
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let attempt = async {
        let stream = crate::pool::open(endpoint, tls.as_ref()).await.ok()?;
        http_probe(spec, endpoint, stream).await
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten().unwrap_or(false)
}

/// The HTTP GET of a probe over an open connection; `Some(true)` for a TCP probe, which
/// passed once the connection (and its TLS handshake) did.
async fn http_probe<S>(spec: &HealthCheckSpec, endpoint: &Endpoint, stream: S) -> Option<bool>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(path) = spec.http_path else { return Some(true) };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, endpoint.authority())
        .header(http::header::USER_AGENT, "meshc-health-check")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    // Envoy's default `expected_statuses`: 200 alone, so a 204 or a 206 fails as it would
    // for an Envoy that Pilot configures from the same spec.
    let healthy = response.status() == http::StatusCode::OK;
    let _ = response.into_body().collect().await;
    Some(healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: HealthCheckSpec =
        HealthCheckSpec { http_path: Some("/healthz"), interval_ms: 10, timeout_ms: 10, healthy_threshold: 2, unhealthy_threshold: 3 };

    #[test]
    fn thresholds_decide_when_an_endpoint_changes_state() {
        let health = Health::default();
        assert_eq!(health.record(&SPEC, "a", false), None);
        assert_eq!(health.record(&SPEC, "a", false), None);
        assert!(!health.is_unhealthy("a"));
        assert_eq!(health.record(&SPEC, "a", false), Some(false));
        assert!(health.is_unhealthy("a"));
        assert_eq!(health.record(&SPEC, "a", true), None);
        assert_eq!(health.record(&SPEC, "a", true), Some(true));
        assert!(!health.is_unhealthy("a"));
    }

    /// What an HTTP probe makes of an answer with `status`.
    async fn probe_answered(status: &str) -> Option<bool> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client, mut server) = tokio::io::duplex(4096);
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                if server.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = server.write_all(answer.as_bytes()).await;
            // Held open until the probe has read the answer.
            let _ = server.read(&mut [0]).await;
        });
        http_probe(&SPEC, &Endpoint::new("10.0.0.1", 8080, 1, true, ""), client).await
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_200_alone_as_envoys_default_expected_status() {
        assert_eq!(probe_answered("200 OK").await, Some(true));
        for status in ["204 No Content", "206 Partial Content", "301 Moved Permanently", "503 Service Unavailable"] {
            assert_eq!(probe_answered(status).await, Some(false), "{status}");
        }
    }
}
