//! The request path: route (compiled), pick a destination and an endpoint, forward, and
//! answer locally when there is nothing to forward to.

use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::endpoints::{ClusterEndpoints, Endpoint, EndpointSet};
use crate::error::Error;
use crate::head::RequestHead;
use crate::health::Health;
use crate::metrics::{Labels, MetricAttribute, Metrics, Reporter, Sample, Security};
use crate::outlier::{Observed, Outliers};
use crate::pool::{ClientTls, Http1Pool, Http2Pool};
use crate::replay::{REPLAY_CAP, ReplayBody};
use crate::spec::{
    Abort, Answer, Balancer, ClusterSpec, Decision, Fault, Forward, HashOn, HeaderOps, Mirror, PathRewrite, Protocol, Retries, RetryOn,
    RouteStats, SidecarSpec, UpstreamTls, WeightedCluster,
};
use crate::tls::{MeshTls, UpstreamCheck};
use crate::{accesslog, authz};

/// Why a body stopped early: the peer's error, a deadline, an abandoned try.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and response the proxy handles.
pub type Body = BoxBody<Bytes, BoxError>;

/// One cluster at run time.
#[derive(Debug)]
pub struct Cluster {
    /// Its compiled description.
    pub spec: &'static ClusterSpec,
    /// Its endpoints.
    pub endpoints: ClusterEndpoints,
    http1: Arc<Http1Pool>,
    /// TLS without ALPN (plain TCP, health probes), with the server name to send; `Some`
    /// when the cluster's connections are TLS.
    pub(crate) raw_tls: Option<ClientTls>,
    http2: Arc<Http2Pool>,
    /// Requests in flight per endpoint, for least-request balancing.
    active: std::sync::Mutex<std::collections::BTreeMap<String, Arc<AtomicU32>>>,
    /// Passive outlier detection's state.
    outliers: Outliers,
    /// Active health checking's state.
    pub health: Health,
    /// Requests in flight, for the circuit breaker.
    requests: Arc<AtomicU32>,
    /// Retries in flight, for the circuit breaker.
    retries: Arc<AtomicU32>,
    /// What became of tries that failed, counted as Envoy's cluster statistics.
    retry_stats: RetryStats,
    /// HTTP/1.1 connections busy with a request, at most `max_connections`; replaced whole
    /// when xDS changes the limit (slots taken from the old one stay held until released).
    connections: std::sync::RwLock<Arc<tokio::sync::Semaphore>>,
    /// Requests waiting for one of them, for the circuit breaker.
    pending: Arc<AtomicU32>,
    /// The load balancer, limits and outlier detection in force (compiled, or from xDS).
    pub tuning: crate::tuning::Tuning,
}

/// Envoy's retry counters of a cluster; each is touched only when a try failed.
#[derive(Debug, Default)]
struct RetryStats {
    /// Tries made again (`upstream_rq_retry`).
    retried: AtomicU64,
    /// Retries the retry circuit breaker held back (`upstream_rq_retry_overflow`).
    overflow: AtomicU64,
    /// Requests whose retries ran out on a failure worth another try
    /// (`upstream_rq_retry_limit_exceeded`).
    limit_exceeded: AtomicU64,
    /// Tries ended by the per-try timeout (`upstream_rq_per_try_timeout`).
    per_try_timeout: AtomicU64,
}

impl Cluster {
    /// The next endpoint in round-robin order that outlier detection has not ejected; with
    /// fewer usable than the panic threshold, the next one anyway (Envoy's panic mode), and
    /// none when none is usable and the threshold is 0.
    pub(crate) fn pick(&self) -> Option<Endpoint> {
        self.pick_for(None)
    }

    /// An endpoint by the cluster's load balancer; `key` is the request's hash key for
    /// consistent hashing. Endpoints that outlier detection ejected or health checks failed
    /// are passed over while others remain; with locality priorities, the nearest endpoints
    /// are preferred while enough of them are usable; during slow start, new endpoints weigh
    /// less.
    fn pick_for(&self, key: Option<u64>) -> Option<Endpoint> {
        let set = self.endpoints.read();
        let scope = self.priority_scope(&set);
        if let Some(weights) = self.warming_weights(scope) {
            let pick = || pick_weighted(scope, &weights, random_u64());
            let chosen = match self.tuning.balancer(self.spec) {
                Balancer::LeastRequest => {
                    let (a, b) = (pick()?, pick()?);
                    if self.active_requests(b) < self.active_requests(a) { b } else { a }
                }
                _ => pick()?,
            };
            if self.usable(chosen) {
                return Some(chosen.clone());
            }
        } else {
            match (self.tuning.balancer(self.spec), key) {
                // The key's endpoint, or when it is out the key's next-best one, so that its
                // requests stay together.
                (Balancer::Hash(_, table), Some(key)) => {
                    // In panic the key's own endpoint takes it, usable or not, as Envoy's
                    // table then holds every endpoint (counted only when it is not usable).
                    let panic = std::cell::OnceCell::new();
                    let eligible = |it: &Endpoint| self.usable(it) || *panic.get_or_init(|| self.panicking(scope, &set));
                    if let Some(chosen) = scope.pick_hashed_among(key, *table, eligible) {
                        return Some(chosen.clone());
                    }
                }
                (Balancer::Random | Balancer::Hash(..), _) => {
                    let chosen = scope.pick(random_u64())?;
                    if self.usable(chosen) {
                        return Some(chosen.clone());
                    }
                }
                (Balancer::LeastRequest, _) => {
                    let (a, b) = (scope.pick(random_u64())?, scope.pick(random_u64())?);
                    // Two draws of one endpoint (always, when there is one) need no counts.
                    let chosen = if !std::ptr::eq(a, b) && self.active_requests(b) < self.active_requests(a) { b } else { a };
                    if self.usable(chosen) {
                        return Some(chosen.clone());
                    }
                }
                (Balancer::RoundRobin, _) => {}
            }
        }
        self.pick_round_robin(scope, &set)
    }

    /// The endpoints to pick from: all of them, or, when the sidecar knows its locality and
    /// the cluster can tell failing endpoints (outlier detection or health checks, as Istio
    /// requires), one priority drawn by Envoy's priority load: each priority's health is its
    /// usable share of endpoints times the overprovisioning factor 1.4, capped at 100%, and
    /// the nearest priorities take load up to their health, the rest spilling further.
    fn priority_scope<'s>(&self, set: &'s EndpointSet) -> &'s EndpointSet {
        let tiers = set.tiers();
        if tiers.len() < 2 || (!self.tuning.outlier_detection() && self.spec.health_check.is_none()) {
            return set;
        }
        let health: Vec<u64> = tiers.iter().map(|tier| self.health(tier)).collect();
        let total: u64 = health.iter().sum();
        if total == 0 {
            return &tiers[0];
        }
        let mut left = 100u64;
        let loads: Vec<u64> = health
            .iter()
            .map(|it| {
                // Below 100% in all, Envoy scales every priority's health up to a whole.
                let load = if total < 100 { it * 100 / total } else { (*it).min(left) };
                left = left.saturating_sub(load);
                load
            })
            .collect();
        let mut point = u64::from(random_below(loads.iter().sum::<u64>().max(1) as u32));
        for (tier, load) in tiers.iter().zip(&loads) {
            if point < *load {
                return tier;
            }
            point -= load;
        }
        &tiers[0]
    }

    /// With slow start and an endpoint inside its window, every endpoint's weight scaled by
    /// its age (Envoy's formula with aggression 1 and a 10% floor: `max(0.1, age / window)`);
    /// `None` when no endpoint of `scope` is warming up.
    fn warming_weights(&self, scope: &EndpointSet) -> Option<Vec<f64>> {
        let window = Duration::from_millis(self.spec.warmup_ms?);
        let now = Instant::now();
        let recent = |since: Option<Instant>| since.is_some_and(|it| now.duration_since(it) < window);
        if !recent(scope.last_added()) && !recent(self.health.last_recovery()) {
            return None;
        }
        let weights = scope
            .all()
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                if !endpoint.takes_traffic() {
                    return 0.0;
                }
                let since = scope.added(index).max(self.health.recovered_at(endpoint.authority()));
                let factor = match since {
                    Some(since) if now.duration_since(since) < window => {
                        (now.duration_since(since).as_secs_f64() / window.as_secs_f64()).max(SLOW_START_FLOOR)
                    }
                    _ => 1.0,
                };
                f64::from(endpoint.weight) * factor
            })
            .collect();
        Some(weights)
    }

    /// Requests in flight to `endpoint`.
    fn active_requests(&self, endpoint: &Endpoint) -> u32 {
        let active = self.active.lock().unwrap_or_else(|it| it.into_inner());
        active.get(endpoint.authority()).map_or(0, |it| it.load(Ordering::Acquire))
    }

    /// One of the cluster's `max_requests`, held until the guard drops; `None` when the
    /// circuit breaker is open.
    pub(crate) fn admit_request(&self) -> Option<InFlight> {
        InFlight::take(&self.requests, self.tuning.max_requests())
    }

    /// One of the cluster's `max_retries`; `None` when they are all in flight.
    pub(crate) fn admit_retry(&self) -> Option<InFlight> {
        InFlight::take(&self.retries, self.tuning.max_retries())
    }

    /// Counts a try's outcome at `endpoint` for outlier detection, for protocols that are not
    /// HTTP: `Ok(true)` a server error, `Ok(false)` a success.
    pub(crate) fn observe_outcome(&self, endpoint: &Endpoint, outcome: Result<bool, &Error>) {
        let observed = match outcome {
            Ok(false) => Some(Observed::Success),
            Ok(true) => Some(Observed::ServerError),
            Err(error) => observed_error(error),
        };
        self.count_observed(endpoint, observed);
    }

    /// Counts a request to `endpoint` as in flight until the guard drops.
    pub(crate) fn start_request(&self, endpoint: &Endpoint) -> Option<InFlight> {
        if !matches!(self.tuning.balancer(self.spec), Balancer::LeastRequest) {
            return None;
        }
        let mut active = self.active.lock().unwrap_or_else(|it| it.into_inner());
        // Looked up before inserting, so that a known endpoint's request allocates no key.
        let count = match active.get(endpoint.authority()) {
            Some(count) => count.clone(),
            None => active.entry(endpoint.authority().to_owned()).or_default().clone(),
        };
        drop(active);
        InFlight::take(&count, u32::MAX)
    }

    fn pick_round_robin(&self, scope: &EndpointSet, set: &EndpointSet) -> Option<Endpoint> {
        let first = scope.pick(self.endpoints.ticket())?;
        if self.usable(first) || self.panicking(scope, set) {
            return Some(first.clone());
        }
        for _ in 1..scope.all().len() {
            let next = scope.pick(self.endpoints.ticket())?;
            if self.usable(next) {
                return Some(next.clone());
            }
        }
        // None usable, and the threshold (0) says not to panic: no healthy upstream.
        None
    }

    /// Envoy's panic mode: fewer of `scope`'s endpoints usable than the cluster's panic
    /// threshold, so that it balances over all of them, failing or not (counted only when a
    /// pick drew one that is not usable). A locality priority of `set` panics only while the
    /// priorities together fall short of a whole (each priority's usable share times 1.4,
    /// capped at 100 %, summed), as Envoy's does: otherwise the others take the rest.
    fn panicking(&self, scope: &EndpointSet, set: &EndpointSet) -> bool {
        let (total, usable) = self.counts(scope);
        if usable * 100 >= total * u64::from(self.tuning.panic_threshold()) {
            return false;
        }
        std::ptr::eq(scope, set) || set.tiers().iter().map(|tier| self.health(tier)).sum::<u64>() < 100
    }

    /// How many of `set`'s endpoints take traffic, and how many of those are usable.
    fn counts(&self, set: &EndpointSet) -> (u64, u64) {
        let (mut total, mut usable) = (0u64, 0u64);
        for endpoint in set.all().iter().filter(|it| it.takes_traffic()) {
            total += 1;
            usable += u64::from(self.usable(endpoint));
        }
        (total, usable)
    }

    /// A locality priority's health, as Envoy's priority load counts it: its usable share of
    /// endpoints times the overprovisioning factor 1.4, capped at 100 (%).
    fn health(&self, tier: &EndpointSet) -> u64 {
        let (total, usable) = self.counts(tier);
        (usable * 140).checked_div(total).unwrap_or(0).min(100)
    }

    /// Neither ejected by outlier detection nor failing its health checks.
    fn usable(&self, endpoint: &Endpoint) -> bool {
        let ejected = self.tuning.outlier_detection() && self.outliers.is_ejected(endpoint.authority());
        !(ejected || self.spec.health_check.is_some() && self.health.is_unhealthy(endpoint.authority()))
    }

    /// Counts a try's outcome at `endpoint` for outlier detection.
    pub(crate) fn observe(&self, endpoint: &Endpoint, result: &Result<Response<Body>, Error>) {
        let observed = match result {
            Ok(response) => match response.status().as_u16() {
                502..=504 => Some(Observed::GatewayError),
                500..=599 => Some(Observed::ServerError),
                _ => Some(Observed::Success),
            },
            Err(error) => observed_error(error),
        };
        self.count_observed(endpoint, observed);
    }

    fn count_observed(&self, endpoint: &Endpoint, observed: Option<Observed>) {
        let (Some(observed), Some(spec)) = (observed, self.tuning.outlier()) else { return };
        let count = self.endpoints.current().all().len();
        self.outliers.observe(&spec, endpoint.authority(), observed, count);
    }

    /// The semaphore of the connection limit in force.
    pub(crate) fn connection_limit(&self) -> Arc<tokio::sync::Semaphore> {
        self.connections.read().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// Puts settings from xDS in force, with a new connection limit when it changed.
    pub(crate) fn retune(&self, tuned: &crate::tuning::Tuned) {
        if let Some(limit) = self.tuning.set(tuned) {
            *self.connections.write().unwrap_or_else(|it| it.into_inner()) = connection_slots(limit);
        }
    }

    /// The cluster's run-time state; `Err` when its TLS mode needs certificates the sidecar
    /// was not given.
    fn new(spec: &'static ClusterSpec, endpoints: ClusterEndpoints, tls: Option<&Arc<MeshTls>>) -> Result<Cluster, String> {
        let connect_timeout = Duration::from_millis(spec.connect_timeout_ms);
        let host = spec.service_names.last().copied().unwrap_or(spec.name);
        let (check, sni) = match &spec.tls {
            UpstreamTls::Disable => (None, None),
            UpstreamTls::Simple { sni } => (Some(UpstreamCheck::Name), Some(sni.unwrap_or(host).to_owned())),
            UpstreamTls::Mutual { sni } => (Some(UpstreamCheck::NameWithClientCert), Some(sni.unwrap_or(host).to_owned())),
            // Istio's SNI for mesh traffic: `outbound_.<port>_.<subset>_.<host>`.
            UpstreamTls::IstioMutual { sni, principals } => {
                let subset = spec.name.split('|').nth(2).unwrap_or_default();
                let istio = format!("outbound_.{}_.{subset}_.{host}", spec.port);
                (Some(UpstreamCheck::Mesh(principals)), Some(sni.map_or(istio, str::to_owned)))
            }
        };
        let (http1, http2, raw_tls) = match (check, sni) {
            (Some(check), Some(sni)) => {
                let Some(tls) = tls else {
                    return Err(format!("cluster {} uses TLS: start the sidecar with --tls-cert, --tls-key and --tls-ca", spec.name));
                };
                let name = ServerName::try_from(sni.clone())
                    .or_else(|_| ServerName::try_from(host.to_owned()))
                    .map_err(|_| format!("cluster {}: `{sni}` is not a server name TLS can send", spec.name))?;
                // No ALPN for plain TCP and probes.
                let raw_config = tls.client_config(check, &[])?;
                let http1_config = tls.client_config(check, &[b"http/1.1"])?;
                let http2_config = tls.client_config(check, &[b"h2"])?;
                (
                    Http1Pool::new(connect_timeout, Some((http1_config, name.clone()))),
                    Http2Pool::with_tls(connect_timeout, http2_config, name.clone()),
                    Some((raw_config, name)),
                )
            }
            _ => (Http1Pool::new(connect_timeout, None), Http2Pool::new(connect_timeout), None),
        };
        Ok(Cluster {
            spec,
            endpoints,
            http1: Arc::new(http1),
            raw_tls,
            http2: Arc::new(http2),
            active: std::sync::Mutex::default(),
            outliers: Outliers::default(),
            health: Health::default(),
            requests: Arc::default(),
            retries: Arc::default(),
            retry_stats: RetryStats::default(),
            connections: std::sync::RwLock::new(connection_slots(spec.limits.max_connections)),
            pending: Arc::default(),
            tuning: crate::tuning::Tuning::new(spec),
        })
    }
}

/// A connection limit's slots.
fn connection_slots(limit: u32) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(usize::try_from(limit).unwrap_or(usize::MAX).min(tokio::sync::Semaphore::MAX_PERMITS)))
}

/// What outlier detection makes of a failed try: a gateway error when the upstream failed
/// it; nothing when the sidecar refused it itself.
fn observed_error(error: &Error) -> Option<Observed> {
    matches!(
        error,
        Error::UpstreamConnect(_)
            | Error::UpstreamReset(_)
            | Error::UpstreamRefused(_)
            | Error::UpstreamProtocol(_)
            | Error::UpstreamTimeout
    )
    .then_some(Observed::GatewayError)
}

/// One unit of a circuit breaker's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicU32>);

impl InFlight {
    /// A unit of `count`, unless it has reached `max`.
    pub(crate) fn take(count: &Arc<AtomicU32>, max: u32) -> Option<InFlight> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |it| (it < max).then_some(it + 1)).ok()?;
        Some(InFlight(count.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a request reaches an endpoint.
#[derive(Clone, Copy)]
enum Transport<'a> {
    /// HTTP/1.1.
    Http1(&'a Http1Pool),
    Http2(&'a Http2Pool),
}

/// The proxy of one sidecar: its spec and its clusters' live state.
#[derive(Debug)]
pub struct Proxy {
    /// The compiled configuration.
    pub spec: &'static SidecarSpec,
    /// The clusters, in the order of `spec.clusters`.
    pub clusters: Vec<Cluster>,
    /// Their indexes by name, for xDS resources that name them.
    cluster_indexes: std::collections::BTreeMap<&'static str, usize>,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// What the xDS client (`--xds`) applied and refused.
    pub xds: crate::xds::XdsStatus,
    /// Virtual hosts xDS serves differently from what was compiled.
    pub route_overrides: crate::overrides::RouteOverrides,
    /// Connections to the local application, HTTP/1.1 and HTTP/2.
    local_http1: Http1Pool,
    local_http2: Http2Pool,
}

/// Who sent a request, as the connection tells: the peer's address and, over mutual TLS,
/// the identity its certificate proved.
#[derive(Clone, Debug)]
pub struct Downstream {
    /// The peer's address.
    pub ip: IpAddr,
    /// The address the peer connected to.
    pub local: Option<IpAddr>,
    /// The peer's SPIFFE identity without the scheme (`cluster.local/ns/default/sa/web`).
    pub principal: Option<Arc<str>>,
    /// The server name the peer sent in its TLS handshake.
    pub sni: Option<Arc<str>>,
    /// The peer connected over TLS with a client certificate the workload's roots verified,
    /// whether or not it names a SPIFFE identity.
    pub mutual: bool,
}

impl Downstream {
    /// A plaintext peer.
    pub fn plain(ip: IpAddr, local: Option<IpAddr>) -> Downstream {
        Downstream { ip, local, principal: None, sni: None, mutual: false }
    }

    /// What mutual TLS proved of the peer, for the metrics.
    pub(crate) fn security(&self) -> Security {
        if self.mutual { Security::Mutual(self.principal.clone()) } else { Security::Plain }
    }
}

impl Proxy {
    /// The proxy for a spec, with each cluster's endpoints and the workload's certificates;
    /// `Err` says what is missing for a cluster that needs TLS.
    pub fn new(spec: &'static SidecarSpec, endpoints: Vec<ClusterEndpoints>, tls: Option<&Arc<MeshTls>>) -> Result<Proxy, String> {
        let clusters = spec
            .clusters
            .iter()
            .zip(endpoints)
            .map(|(spec, endpoints)| Cluster::new(spec, endpoints, tls))
            .collect::<Result<Vec<Cluster>, String>>()?;
        let cluster_indexes = spec.clusters.iter().enumerate().map(|(index, it)| (it.name, index)).collect();
        Ok(Proxy {
            spec,
            clusters,
            cluster_indexes,
            metrics: Arc::new(Metrics::default()),
            xds: crate::xds::XdsStatus::default(),
            route_overrides: crate::overrides::RouteOverrides::default(),
            local_http1: Http1Pool::new(Duration::from_secs(1), None),
            local_http2: Http2Pool::new(Duration::from_secs(1)),
        })
    }

    /// The cluster named `name`, or why an xDS resource naming it cannot apply.
    pub fn cluster_named(&self, name: &str) -> Result<&Cluster, String> {
        self.cluster_indexes
            .get(name)
            .map(|it| &self.clusters[*it])
            .ok_or_else(|| format!("cluster `{name}` is not compiled into this sidecar"))
    }

    /// Every endpoint of every cluster with its state, as Envoy's admin `/clusters` lists
    /// them: `<cluster>::<address>::<field>::<value>` lines.
    pub fn clusters_text(&self) -> String {
        let mut out = String::new();
        for cluster in &self.clusters {
            for endpoint in cluster.endpoints.current().all() {
                let (name, address) = (cluster.spec.name, endpoint.authority());
                let mut flags = Vec::new();
                if cluster.spec.health_check.is_some() && cluster.health.is_unhealthy(address) {
                    flags.push("/failed_active_hc");
                }
                if cluster.tuning.outlier_detection() && cluster.outliers.is_ejected(address) {
                    flags.push("/failed_outlier_check");
                }
                if !endpoint.routable {
                    flags.push("/failed_eds_health");
                }
                let flags = if flags.is_empty() { "healthy".to_owned() } else { flags.concat() };
                let _ = writeln!(out, "{name}::{address}::health_flags::{flags}");
                let _ = writeln!(out, "{name}::{address}::weight::{}", endpoint.weight);
                let _ = writeln!(out, "{name}::{address}::rq_active::{}", cluster.active_requests(endpoint));
            }
        }
        out
    }

    /// Envoy's cluster statistics, in Prometheus' text format: the gauges of membership
    /// (healthy and total endpoints) and of requests in flight, waiting for a connection and
    /// being retried, then the retry counters.
    pub fn cluster_stats(&self) -> String {
        type Read = fn(&Cluster) -> u64;
        let stats: [(&str, &str, Read); 9] = [
            ("envoy_cluster_membership_healthy", "gauge", |it| {
                it.endpoints.current().all().iter().filter(|endpoint| endpoint.routable && it.usable(endpoint)).count() as u64
            }),
            ("envoy_cluster_membership_total", "gauge", |it| it.endpoints.current().all().len() as u64),
            ("envoy_cluster_upstream_rq_active", "gauge", |it| u64::from(it.requests.load(Ordering::Acquire))),
            ("envoy_cluster_upstream_rq_pending_active", "gauge", |it| u64::from(it.pending.load(Ordering::Acquire))),
            ("envoy_cluster_upstream_rq_retry_active", "gauge", |it| u64::from(it.retries.load(Ordering::Acquire))),
            ("envoy_cluster_upstream_rq_retry", "counter", |it| it.retry_stats.retried.load(Ordering::Relaxed)),
            ("envoy_cluster_upstream_rq_retry_overflow", "counter", |it| it.retry_stats.overflow.load(Ordering::Relaxed)),
            ("envoy_cluster_upstream_rq_retry_limit_exceeded", "counter", |it| it.retry_stats.limit_exceeded.load(Ordering::Relaxed)),
            ("envoy_cluster_upstream_rq_per_try_timeout", "counter", |it| it.retry_stats.per_try_timeout.load(Ordering::Relaxed)),
        ];
        let mut out = String::new();
        for (name, kind, read) in stats {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for cluster in &self.clusters {
                let _ = writeln!(out, "{name}{{cluster_name=\"{}\"}} {}", cluster.spec.name, read(cluster));
            }
        }
        out
    }

    /// Each forwarding route's requests, in Prometheus' text format: those it took
    /// (`meshc_route_requests_total`) and those whose response has not ended
    /// (`meshc_route_requests_active`), by virtual host (the route table, `host:port` as
    /// Istio names it) and route name.
    pub fn route_metrics(&self) -> String {
        let mut out = String::new();
        for (name, kind, active) in [("meshc_route_requests_total", "counter", false), ("meshc_route_requests_active", "gauge", true)] {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for stats in self.spec.routes.iter().copied().chain(crate::overrides::interned_routes()) {
                let value = if active { &stats.active } else { &stats.total };
                let (table, route) = (crate::metrics::escape(stats.table), crate::metrics::escape(stats.route));
                let _ = writeln!(out, "{name}{{virtual_host=\"{table}\",route_name=\"{route}\"}} {}", value.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// Handles a request the application (at `peer`) sent out, and counts it.
    pub async fn outbound(&self, peer: IpAddr, mut request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let grpc = is_grpc(request.headers());
        let entry = self.log_entry(peer, &mut request);
        let labelled = self.metric_values(&request, Side::Outbound);
        let request_bytes = count_body(&mut request);
        let meter = Meter { reporter: Reporter::Source, service: None, grpc, started, security: Security::Plain, request_bytes };
        let unanswered = self.unanswered(meter.clone(), entry);
        // Boxed: the routing and forwarding future is several KiB, and each future that
        // holds it inline copies it as it is made and moved (a box is cheaper).
        let (response, served) = boxed(|| self.route_and_forward((request, peer, grpc))).await;
        let entry = unanswered.answered();
        self.metered(response, meter, entry, served, labelled)
    }

    /// The values of the workload's own metric labels, as far as the request tells; `None`
    /// for those its answer fills in (`response.code`, and outbound the service and port).
    fn metric_values(&self, request: &Request<Body>, side: Side<'_>) -> Option<Box<[Option<Box<str>>]>> {
        if self.spec.metric_labels.is_empty() {
            return None;
        }
        let principal = match side {
            Side::Outbound => Some(self.spec.principal),
            Side::Inbound(peer, _) => peer.principal.as_deref(),
        };
        let values = self.spec.metric_labels.iter().map(|label| {
            let value: Option<std::borrow::Cow<'_, str>> = match label.attribute {
                MetricAttribute::RequestHeader(name) => {
                    Some(request.headers().get(name).map_or("unknown".into(), |it| String::from_utf8_lossy(it.as_bytes())))
                }
                MetricAttribute::RequestPath => Some(request.uri().path_and_query().map_or("/", |it| it.as_str()).into()),
                MetricAttribute::RequestMethod => Some(request.method().as_str().into()),
                MetricAttribute::RequestHost => {
                    Some(authority_as_sent(request.uri(), request.headers()).unwrap_or_else(|| "unknown".into()).into())
                }
                MetricAttribute::RequestProtocol => Some(if request.version() == Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" }.into()),
                MetricAttribute::SourcePrincipal => Some(principal.map_or("unknown".into(), |it| format!("spiffe://{it}").into())),
                MetricAttribute::SourceNamespace => {
                    Some(principal.and_then(|it| it.split('/').skip_while(|part| *part != "ns").nth(1)).unwrap_or("unknown").into())
                }
                MetricAttribute::SourceWorkload => Some(match side {
                    Side::Outbound => self.spec.workload.into(),
                    // Istio learns it from the peer's metadata, which the sidecars do not exchange.
                    Side::Inbound(..) => "unknown".into(),
                }),
                MetricAttribute::DestinationService => match side {
                    Side::Outbound => None,
                    Side::Inbound(_, port) => Some(port.service_names.last().copied().unwrap_or("unknown").into()),
                },
                MetricAttribute::DestinationPort => match side {
                    Side::Outbound => None,
                    Side::Inbound(_, port) => Some(port.port.to_string().into()),
                },
                MetricAttribute::ResponseCode => None,
                // gRPC's `/package.Service/Method`.
                MetricAttribute::RpcService | MetricAttribute::RpcMethod => {
                    let path = request.uri().path().strip_prefix('/').and_then(|it| it.split_once('/'));
                    let part = path
                        .filter(|_| is_grpc(request.headers()))
                        .map(|(service, method)| if label.attribute == MetricAttribute::RpcService { service } else { method });
                    Some(part.unwrap_or("unknown").into())
                }
            };
            value.map(|it| it.into_owned().into_boxed_str())
        });
        Some(values.collect())
    }

    /// Gives the request an `x-request-id` when it has none (as Envoy does where a request
    /// enters the mesh), and, when the workload logs requests, what its log line will say.
    fn log_entry(&self, peer: IpAddr, request: &mut Request<Body>) -> Option<Box<accesslog::Entry>> {
        if self.spec.request_id && !request.headers().contains_key(crate::trace::REQUEST_ID) {
            crate::trace::add_request_id(request.headers_mut());
        }
        if matches!(self.spec.access_log, accesslog::AccessLog::Off) {
            return None;
        }
        let header = |name: &str| request.headers().get(name).and_then(|it| it.to_str().ok()).unwrap_or_default().to_owned();
        Some(Box::new(accesslog::Entry {
            start: Some(std::time::SystemTime::now()),
            method: request.method().to_string(),
            path: request.uri().path_and_query().map_or_else(|| request.uri().path().to_owned(), |it| it.as_str().to_owned()),
            protocol: if request.version() == Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" },
            authority: authority_as_sent(request.uri(), request.headers()).unwrap_or_default(),
            request_id: header(crate::trace::REQUEST_ID.as_str()),
            user_agent: header("user-agent"),
            traceparent: header("traceparent"),
            peer: Some(peer),
            request_headers: match self.spec.access_log {
                accesslog::AccessLog::Text(format) => accesslog::TextFormat::of(format).request_headers(request.headers()),
                _ => Vec::new(),
            },
            ..accesslog::Entry::default()
        }))
    }

    /// Counts a request the client abandons before its answer starts, as Envoy does: response
    /// code 0, flag `DC`.
    fn unanswered(&self, meter: Meter, entry: Option<Box<accesslog::Entry>>) -> Unanswered<'_> {
        let Meter { reporter, service, grpc, started, security, request_bytes } = meter;
        let labels = Labels { reporter, service, grpc, code: 0, grpc_status: None, flags: "DC", extra: None, security };
        let log = entry.map(|entry| (entry, &self.spec.access_log));
        let metrics = &*self.metrics;
        Unanswered(Some(Recording {
            metrics,
            labels,
            started,
            log,
            request_bytes,
            response_bytes: 0,
            counted: false,
            _held: Held::default(),
        }))
    }

    /// Counts a request once its response ends (or is dropped), with the destination service
    /// it was `served` by or `service`; what `served` holds is held until then.
    fn metered(
        &self,
        response: Response<Body>,
        meter: Meter,
        entry: Option<Box<accesslog::Entry>>,
        served: Served,
        labelled: Option<Box<[Option<Box<str>>]>>,
    ) -> Response<Body> {
        let Meter { reporter, service, grpc, started, security, request_bytes } = meter;
        let Served { routed, upstream_host, held } = served;
        // The metric label values the answer fills in, then the shared set of all of them.
        let extra = labelled.map(|values| {
            let code = response.status().as_u16();
            let filled = values.into_vec().into_iter().zip(self.spec.metric_labels).map(|(value, label)| {
                value.unwrap_or_else(|| {
                    let value = match label.attribute {
                        MetricAttribute::ResponseCode => code.to_string(),
                        MetricAttribute::DestinationService => {
                            routed.map(|it| it.service).or(service).and_then(|it| it.last()).copied().unwrap_or("unknown").to_owned()
                        }
                        // The cluster's name is `outbound|<port>|<subset>|<host>`.
                        MetricAttribute::DestinationPort => {
                            routed.and_then(|it| it.cluster.split('|').nth(1)).filter(|it| !it.is_empty()).unwrap_or("unknown").to_owned()
                        }
                        _ => "unknown".to_owned(),
                    };
                    value.into_boxed_str()
                })
            });
            self.metrics.extra(filled.collect())
        });
        let log = entry.map(|mut entry| {
            if let Some(routed) = routed {
                (entry.route, entry.cluster) = (routed.route, routed.cluster);
            }
            if let Some(host) = upstream_host {
                entry.upstream_host = host.to_string();
            }
            if let accesslog::AccessLog::Text(format) = self.spec.access_log {
                entry.response_headers = accesslog::TextFormat::of(format).response_headers(response.headers());
            }
            (entry, &self.spec.access_log)
        });
        let service = routed.map(|it| it.service).or(service);
        let flags = response.extensions().get::<ResponseFlag>().map_or("-", |it| it.0);
        let grpc_status = if grpc { grpc_status(response.headers()) } else { None };
        // Outbound, the cluster the request went to tells whether it was mutual TLS, if the
        // request reached a connection to it (Istio reads the connection's certificate).
        let security = match routed {
            Some(routed) if routed.mutual && reached_upstream(flags) => Security::Mutual(None),
            _ => security,
        };
        let labels = Labels { reporter, service, grpc, code: response.status().as_u16(), grpc_status, flags, extra, security };
        let metrics = self.metrics.clone();
        let recording = Recording { metrics, labels, started, log, request_bytes, response_bytes: 0, counted: false, _held: held };
        response.map(|inner| MeteredBody { inner, recording: Some(recording) }.boxed())
    }

    /// The response, and for a forwarding route its count of the request as active. The
    /// arguments come as one tuple so that they lie together at the future's start (see
    /// [`boxed`]).
    async fn route_and_forward(&self, (request, peer, grpc): (Request<Body>, IpAddr, bool)) -> (Response<Body>, Served) {
        if let Some(reply) = reject_malformed(&request, grpc) {
            return (reply, Served::default());
        }
        let (parts, body) = request.into_parts();
        // A host xDS overrides is decided by its override table, every other one by the
        // compiled tables; an override lends its route for this request.
        let overrides = self.route_overrides.current();
        let (views, forward, answer);
        let decision = {
            let head = RequestHead::new(&parts);
            match overrides.as_ref().and_then(|it| it.host(head.authority())) {
                None => (self.spec.route_outbound)(&head),
                Some(host) => match host.and_then(|it| it.select(&head)) {
                    None => Decision::NoRoute,
                    Some(route) => match &route.action {
                        crate::overrides::Action::Answer(owned) => {
                            answer = owned.view();
                            Decision::Answer(&answer)
                        }
                        crate::overrides::Action::Forward(owned) => {
                            views = owned.header_views();
                            forward = owned.view(route.stats, &views);
                            Decision::Forward(&forward)
                        }
                    },
                },
            }
        };
        match decision {
            Decision::NoRoute => (local_reply(Error::NoRoute, grpc), Served::default()),
            Decision::Answer(answer) => (answer_locally(answer, &parts), Served::default()),
            Decision::Forward(forward) => {
                let active = RouteActive::new(forward.stats);
                let (response, mut served) = self.forward(peer, forward, parts, body, grpc).await;
                served.held.route = Some(active);
                (response, served)
            }
        }
    }

    /// Sends a routed request on: the route's rate limit and faults, then a destination, its
    /// cluster's circuit breaker, and the upstream.
    async fn forward(
        &self,
        peer: IpAddr,
        forward: &Forward<'_>,
        parts: http::request::Parts,
        body: Body,
        grpc: bool,
    ) -> (Response<Body>, Served) {
        if forward.rate_limit.is_some_and(|it| !it.admit(peer)) {
            return (local_reply(Error::RateLimited, grpc), Served::default());
        }
        let delayed = match inject_fault(&forward.fault, grpc).await {
            Ok(delayed) => delayed,
            Err(reply) => return (reply, Served::default()),
        };
        let destination = &forward.destinations[pick_weighted_destination(forward.destinations)];
        let Some(cluster) = self.clusters.get(destination.cluster as usize) else {
            return (local_reply(Error::NoCluster, grpc), Served::default());
        };
        let timeout = request_timeout(forward.timeout_ms.or(cluster.spec.request_timeout_ms), &parts.headers, grpc);
        let body = match forward.mirror.as_ref().filter(|it| chance(it.per_million)) {
            Some(mirror) => self.mirror(mirror, forward, &parts, body),
            None => body,
        };
        let transport = if cluster.spec.protocol.uses_http2(parts.version) {
            Transport::Http2(&cluster.http2)
        } else {
            Transport::Http1(&cluster.http1)
        };
        let (key, mut set_cookie) = hash_key(cluster.tuning.balancer(cluster.spec), &parts, peer);
        let traits = Traits { grpc, upgrade: wants_upgrade(&parts), tracing: self.spec.tracing };
        let upstream = Upstream { cluster, transport, forward, key, traits };
        let mutual = cluster.spec.istio_mutual();
        let routed = Routed { service: cluster.spec.service_names, route: forward.route, cluster: cluster.spec.name, mutual };
        let mut served = Served { routed: Some(routed), ..Served::default() };
        // Only the access log names the endpoint that answered.
        let logged = !matches!(self.spec.access_log, accesslog::AccessLog::Off);
        // Flags the tries add to their outcome's own: retries spent (`URX`), or a retry past
        // the retry circuit breaker (`UO`).
        let mut retried = "-";
        // The circuit breaker: a request counts until its response ends.
        let mut response = match InFlight::take(&cluster.requests, cluster.tuning.max_requests()) {
            Some(in_flight) => match upstream.send(parts, body, timeout, logged.then_some(&mut served.upstream_host), &mut retried).await {
                Ok(mut response) => {
                    served.held.in_flight = Some(in_flight);
                    // A cookie made up goes out with an upstream's answer, not a local reply.
                    if let Some(cookie) = set_cookie.take() {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    response
                }
                Err(err) => local_reply(err, grpc),
            },
            None => local_reply(Error::Overflow, grpc),
        };
        add_flag(&mut response, retried);
        if delayed {
            add_flag(&mut response, "DI");
        }
        (response, served)
    }

    /// Sends a copy of the request to the mirror's cluster and forgets it, and gives back the
    /// body for the request itself. The copy is the request as the route sends it on (its
    /// path and authority rewrites and header operations applied, as Envoy shadows the
    /// request its router forwards), to the authority's `-shadow` host. The body streams on
    /// untouched while a copy of it is kept; the mirrored request leaves once the body has
    /// ended whole. A body of unknown size or larger than the replay cap is not mirrored, and
    /// neither is one that fails or that the upstream leaves unread.
    fn mirror(&self, mirror: &Mirror, forward: &Forward<'_>, parts: &http::request::Parts, body: Body) -> Body {
        let Some(cluster) = self.clusters.get(mirror.cluster as usize) else { return body };
        let known = hyper::body::Body::is_end_stream(&body)
            || hyper::body::Body::size_hint(&body).upper().is_some_and(|it| it <= REPLAY_CAP as u64);
        if !known {
            return body;
        }
        let Some(endpoint) = cluster.pick() else { return body };
        // Copies count against the mirror cluster's circuit breaker, and at most
        // MAX_MIRRORS_IN_FLIGHT run at once: past that, requests go unmirrored.
        let limit = cluster.tuning.max_requests().min(MAX_MIRRORS_IN_FLIGHT);
        let Some(in_flight) = InFlight::take(&cluster.requests, limit) else { return body };
        let mut copy = copy_head(parts);
        apply_header_ops(copy.headers_mut(), &forward.request_headers);
        let path = match forward.path_rewrite {
            PathRewrite::None => parts.uri.path_and_query().map_or("/", |it| it.as_str()).to_owned(),
            rewrite => rewritten_path(&parts.uri, rewrite),
        };
        let authority = forward.authority_rewrite.map(str::to_owned).or_else(|| authority_as_sent(&parts.uri, &parts.headers));
        // Envoy's shadow host: `web:80` becomes `web-shadow:80`.
        if let Some(shadow) = authority.map(|it| shadow_host(&it))
            && let Ok(value) = HeaderValue::from_str(&shadow)
            && let Ok(uri) = Uri::builder().path_and_query(path).build()
        {
            copy.headers_mut().insert(header::HOST, value);
            *copy.uri_mut() = uri;
        }
        let http2 = cluster.spec.protocol.uses_http2(parts.version);
        let (client, pool) = (cluster.http1.clone(), cluster.http2.clone());
        let timeout = cluster.spec.request_timeout_ms.map(Duration::from_millis).or(Some(MIRROR_TIMEOUT));
        let tracing = self.spec.tracing;
        let (whole, received) = tokio::sync::oneshot::channel();
        // Fire and forget: the copy's answer, or failure, never reaches the caller.
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let Ok(bytes) = received.await else { return };
            let copy = copy.map(|()| full(bytes));
            let transport = if http2 { Transport::Http2(&pool) } else { Transport::Http1(&client) };
            let traits = Traits::of(&copy, tracing);
            if let Ok(response) = forward_to(transport, copy, &endpoint, Limits::total(timeout), traits).await {
                let _ = response.into_body().collect().await;
            }
        });
        let mut tee = TeeBody { inner: body, copy: bytes::BytesMut::new(), whole: Some(whole) };
        // An empty body may never be polled.
        if hyper::body::Body::is_end_stream(&tee.inner) {
            tee.finish();
        }
        tee.boxed()
    }

    /// Handles a request from `peer` for the local application on `port`, and counts it.
    pub async fn inbound(&self, port: &InboundPort, peer: &Downstream, mut request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let grpc = is_grpc(request.headers());
        let service = Some(port.service_names).filter(|it| !it.is_empty());
        let entry = self.log_entry(peer.ip, &mut request);
        let labelled = self.metric_values(&request, Side::Inbound(peer, port));
        let request_bytes = count_body(&mut request);
        let meter = Meter { reporter: Reporter::Destination, service, grpc, started, security: peer.security(), request_bytes };
        let unanswered = self.unanswered(meter.clone(), entry);
        // Boxed, as the outbound path's: held inline, this future made every listener's
        // answer future (outbound ones too) as large as itself.
        let (response, served) = boxed(|| self.authorize_and_forward((port, peer, request))).await;
        let entry = unanswered.answered();
        self.metered(response, meter, entry, served, labelled)
    }

    /// Authorization first, then forwarding to the application.
    async fn authorize_and_forward(
        &self,
        (inbound, peer, request): (&InboundPort, &Downstream, Request<Body>),
    ) -> (Response<Body>, Served) {
        let (app, port, protocol) = (&inbound.app, inbound.port, inbound.protocol);
        let grpc = is_grpc(request.headers());
        if let Some(reply) = reject_malformed(&request, grpc) {
            return (reply, Served::default());
        }
        let (parts, body) = request.into_parts();
        // Policies see the path normalised, as Istio's default `BASE` normalisation gives it
        // to RBAC, so that `//admin` or `/x/../admin` cannot slip past a rule on `/admin`.
        let raw = RequestHead::new(&parts);
        let path = normalise_path(raw.path());
        let authority = raw.authority().to_owned();
        let head = RequestHead::from_parts(parts.method.as_str(), &authority, &path, parts.uri.query(), &parts.headers);
        if !self.authorize(Some(&head), port, peer) {
            return (local_reply(Error::Denied, grpc), Served::default());
        }
        if self.spec.inbound_rate_limit.is_some_and(|it| !it.admit(peer.ip)) {
            return (local_reply(Error::RateLimited, grpc), Served::default());
        }
        let transport =
            if protocol.uses_http2(parts.version) { Transport::Http2(&self.local_http2) } else { Transport::Http1(&self.local_http1) };
        let timeout = request_timeout(None, &parts.headers, grpc);
        let traits = Traits { grpc, upgrade: wants_upgrade(&parts), tracing: self.spec.tracing };
        let request = Request::from_parts(parts, body);
        match forward_to(transport, request, app, Limits::total(timeout), traits).await {
            Ok(response) => (response, Served { upstream_host: Some(app.shared_authority()), ..Served::default() }),
            Err(err) => (local_reply(err, grpc), Served::default()),
        }
    }
}

/// An inbound listener's destination: the application's address and port.
#[derive(Debug)]
pub struct InboundPort {
    /// Where the application listens.
    pub app: Endpoint,
    /// The application port (authorization's `ports`).
    pub port: u16,
    /// The HTTP version the application speaks.
    pub protocol: Protocol,
    /// The served service's names, for telemetry.
    pub service_names: &'static [&'static str],
}

/// What telemetry learns of a request as it is forwarded, beside its response (in the
/// response's extensions each would cost allocations): where it went, and what stays held
/// until the response ends.
#[derive(Debug, Default)]
struct Served {
    routed: Option<Routed>,
    /// The endpoint that answered, for the access log.
    upstream_host: Option<Arc<str>>,
    held: Held,
}

/// Where a routed response came from: the service (for telemetry), the route and the
/// cluster (for the access log).
#[derive(Clone, Copy, Debug)]
struct Routed {
    service: &'static [&'static str],
    route: &'static str,
    cluster: &'static str,
    /// The cluster's connections are Istio's mutual TLS.
    mutual: bool,
}

/// Counts of a request as active, held (not read) until its response ends: its route's, and
/// its place in the cluster's circuit breaker.
#[derive(Debug, Default)]
struct Held {
    route: Option<RouteActive>,
    in_flight: Option<InFlight>,
}

/// Envoy's response flag of a response the sidecar made or cut short.
#[derive(Clone, Copy, Debug)]
struct ResponseFlag(&'static str);

/// Which way a request goes, for its metric labels: out from the workload, or in to it from a
/// peer on one of its ports.
#[derive(Clone, Copy)]
enum Side<'a> {
    Outbound,
    Inbound(&'a Downstream, &'a InboundPort),
}

/// What a request is counted under: who reports it, the service when already known, whether
/// it is gRPC, when it started, (inbound) what mutual TLS proved of the caller, and the
/// count of its body's bytes read so far (none for a request without a body).
#[derive(Clone, Debug)]
struct Meter {
    reporter: Reporter,
    service: Option<&'static [&'static str]>,
    grpc: bool,
    started: Instant,
    security: Security,
    request_bytes: Option<Arc<AtomicU64>>,
}

/// A request a route took, counted as active until dropped.
#[derive(Debug)]
struct RouteActive(&'static RouteStats);

impl RouteActive {
    fn new(stats: &'static RouteStats) -> RouteActive {
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        RouteActive(stats)
    }
}

impl Drop for RouteActive {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request being counted: recorded when dropped. `metrics` is shared (`Arc`) when the
/// recording goes with a response body, and borrowed while the request has no answer yet.
struct Recording<M: std::ops::Deref<Target = Metrics> = Arc<Metrics>> {
    metrics: M,
    labels: Labels,
    started: Instant,
    /// Boxed: a request's future and its response body carry this, and an entry held inline
    /// (several hundred bytes, even when the log is off) is copied each time they move.
    log: Option<(Box<accesslog::Entry>, &'static accesslog::AccessLog)>,
    /// The request body's bytes read so far.
    request_bytes: Option<Arc<AtomicU64>>,
    /// The response body's bytes sent on so far (also the access log's `BYTES_SENT`).
    response_bytes: u64,
    /// Already counted, or not to be.
    counted: bool,
    _held: Held,
}

impl<M: std::ops::Deref<Target = Metrics>> Drop for Recording<M> {
    fn drop(&mut self) {
        if self.counted {
            return;
        }
        let elapsed = self.started.elapsed();
        if let Some((entry, format)) = &mut self.log {
            entry.bytes_sent = self.response_bytes;
            accesslog::write(format, entry, self.labels.code, self.labels.flags, elapsed);
        }
        // Moved out (the recording is done with them), not cloned.
        let labels = std::mem::replace(&mut self.labels, RECORDED);
        let request_bytes = self.request_bytes.as_ref().map_or(0, |it| it.load(Ordering::Acquire));
        self.metrics.record(labels, Sample { duration: elapsed, request_bytes, response_bytes: self.response_bytes });
    }
}

/// Has a request's body count the bytes read from it, for `istio_request_bytes`; `None` for a
/// request without a body, which is left as it is.
fn count_body(request: &mut Request<Body>) -> Option<Arc<AtomicU64>> {
    if hyper::body::Body::is_end_stream(request.body()) {
        return None;
    }
    let read = Arc::new(AtomicU64::new(0));
    let inner = std::mem::replace(request.body_mut(), empty());
    *request.body_mut() = CountedBody { inner, read: read.clone() }.boxed();
    Some(read)
}

/// A request body that counts the bytes read from it. Only the task that reads the body
/// writes the count, so an update is a load and a store.
struct CountedBody {
    inner: Body,
    read: Arc<AtomicU64>,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.read.store(self.read.load(Ordering::Relaxed) + data.len() as u64, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a response with Envoy's response `flags` came over a connection to the upstream:
/// not when no route, cluster or endpoint was found, the connection failed, a circuit breaker
/// or rate limit held the request back, a fault aborted it, or it was malformed.
fn reached_upstream(flags: &str) -> bool {
    !flags.split(',').any(|it| matches!(it, "NR" | "NC" | "UH" | "UF" | "UO" | "RL" | "FI" | "DPE"))
}

/// What a recording's labels are left as once recorded.
const RECORDED: Labels = Labels {
    reporter: Reporter::Source,
    service: None,
    grpc: false,
    code: 0,
    grpc_status: None,
    flags: "-",
    extra: None,
    security: Security::Plain,
};

impl Proxy {
    /// Whether a caller may open a TCP connection to an inbound port: the workload's
    /// policies applied to what a connection shows (peer, identity, port, SNI).
    pub fn authorize_connection(&self, port: &InboundPort, peer: &Downstream) -> bool {
        self.authorize(None, port.port, peer)
    }

    /// Whether a caller may make an RPC call of `method` on an inbound port.
    pub(crate) fn authorize_rpc(&self, method: &str, port: &InboundPort, peer: &Downstream) -> bool {
        self.authorize_with(None, Some(method), port.port, peer)
    }

    /// The workload's policies applied to a request (`head`) or a TCP connection (`None`)
    /// from `peer` to application port `port`.
    fn authorize(&self, head: Option<&RequestHead<'_>>, port: u16, peer: &Downstream) -> bool {
        self.authorize_with(head, None, port, peer)
    }

    fn authorize_with(&self, head: Option<&RequestHead<'_>>, rpc_method: Option<&str>, port: u16, peer: &Downstream) -> bool {
        let request = authz::Request {
            head,
            peer: Some(peer.ip),
            principal: peer.principal.as_deref(),
            port,
            local: peer.local,
            sni: peer.sni.as_deref(),
            rpc_method,
        };
        self.spec.authz.authorize(&request).allowed
    }
}

/// A request not answered yet: counted as abandoned if dropped before `answered`.
struct Unanswered<'a>(Option<Recording<&'a Metrics>>);

impl Unanswered<'_> {
    /// The answer is coming: no abandonment to count; gives the log entry back.
    fn answered(mut self) -> Option<Box<accesslog::Entry>> {
        let mut recording = self.0.take()?;
        let entry = recording.log.take().map(|it| it.0);
        recording.counted = true;
        entry
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

/// A response body that counts its request when it ends, taking `grpc-status` from its
/// trailers; dropped before its end (the client went away), it counts with Envoy's `DC`.
struct MeteredBody {
    inner: Body,
    recording: Option<Recording>,
}

impl hyper::body::Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(recording)) = (frame.trailers_ref(), self.recording.as_mut())
                    && let Some(status) = grpc_status(trailers)
                {
                    recording.labels.grpc_status = Some(status);
                }
                if let (Some(data), Some(recording)) = (frame.data_ref(), self.recording.as_mut()) {
                    recording.response_bytes += data.len() as u64;
                }
            }
            // The upstream broke off the answer (Envoy's `UPE`).
            Poll::Ready(Some(Err(_))) => {
                if let Some(recording) = self.recording.as_mut() {
                    recording.labels.flags = crate::error::join_flags(recording.labels.flags, "UPE");
                }
                self.recording = None;
            }
            Poll::Ready(None) => self.recording = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.as_mut()
            && !hyper::body::Body::is_end_stream(&self.inner)
        {
            recording.labels.flags = crate::error::join_flags(recording.labels.flags, "DC");
        }
    }
}

/// Where a routed request goes: a cluster, the client that reaches it, and the route.
struct Upstream<'a> {
    cluster: &'a Cluster,
    transport: Transport<'a>,
    forward: &'a Forward<'a>,
    /// The request's consistent-hash key, when the cluster hashes.
    key: Option<u64>,
    traits: Traits,
}

/// What a request is, found once and passed on to where it is forwarded.
#[derive(Clone, Copy, Debug)]
struct Traits {
    grpc: bool,
    /// It asks to switch protocols (`Upgrade`, and `Connection` naming it).
    upgrade: bool,
    /// Trace context is propagated (the workload's `tracing`).
    tracing: bool,
}

impl Traits {
    fn of(request: &Request<Body>, tracing: bool) -> Traits {
        Traits { grpc: is_grpc(request.headers()), upgrade: wants_upgrade_request(request), tracing }
    }
}

/// The most mirrored copies in flight to one cluster, whatever its breaker says.
const MAX_MIRRORS_IN_FLIGHT: u32 = 1024;

/// A path with `.` and `..` segments resolved (RFC 3986 §5.2.4) and repeated slashes merged.
fn normalise_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let trailing = path.len() > 1 && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."));
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// How long a mirrored copy may take when its cluster sets no request timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Envoy's shadow host: `-shadow` after the host name, before any port.
fn shadow_host(authority: &str) -> String {
    let host = without_port(authority);
    format!("{host}-shadow{}", &authority[host.len()..])
}

/// True for `per_million` millionths of the calls.
fn chance(per_million: u32) -> bool {
    per_million > 0 && random_below(1_000_000) < per_million
}

/// The first wait before a retry (Envoy's default base interval); each retry doubles it, up to
/// ten times, and the wait is drawn at random below it.
const RETRY_BASE: Duration = Duration::from_millis(25);

/// How many endpoints a retry looks at to find one it has not tried (Istio's 5).
const HOST_SELECTION_ATTEMPTS: usize = 5;

impl Upstream<'_> {
    /// One try of the prepared request at `endpoint`, within `limits`. Over HTTP/1.1 with
    /// `max_connections` set, the try first takes one of the cluster's connection slots, held
    /// until its response ends; when none is free it waits as a pending request (503 `UO`
    /// past `max_pending_requests` waiting, 504 when its deadline comes first). The try
    /// counts as in flight to its endpoint (for least-request balancing) until its response
    /// ends.
    async fn try_once(
        &self,
        parts: &http::request::Parts,
        body: Body,
        endpoint: &Endpoint,
        limits: Limits,
    ) -> Result<Response<Body>, Error> {
        let slot = self.connection_slot(limits.body).await?;
        let active = self.cluster.start_request(endpoint);
        let response = send_to(self.transport, parts, body, endpoint, limits.headers).await?;
        Ok(match (slot, active) {
            (None, None) => response,
            held => response.map(|body| Holding { inner: body, _held: held }.boxed()),
        })
    }

    async fn connection_slot(&self, deadline: Option<tokio::time::Instant>) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Error> {
        let tuning = &self.cluster.tuning;
        if tuning.max_connections() == u32::MAX || !matches!(self.transport, Transport::Http1(..)) {
            return Ok(None);
        }
        let connections = self.cluster.connection_limit();
        if let Ok(slot) = connections.clone().try_acquire_owned() {
            return Ok(Some(slot));
        }
        let Some(_waiting) = InFlight::take(&self.cluster.pending, tuning.max_pending_requests()) else { return Err(Error::Overflow) };
        let slot = match deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, connections.clone().acquire_owned()).await.map_err(|_| Error::UpstreamTimeout)?
            }
            None => connections.clone().acquire_owned().await,
        };
        slot.map(Some).map_err(|_| Error::Internal("the connection limit was closed"))
    }

    /// Sends the request, trying again as the route's retry policy allows, within the
    /// overall `timeout`. `answered_by`, when given (the access log wants it), is left naming
    /// the endpoint of the last try, answered or failed, as Envoy's `%UPSTREAM_HOST%` does;
    /// none when no endpoint was picked for it.
    async fn send(
        &self,
        parts: http::request::Parts,
        body: Body,
        timeout: Option<Duration>,
        answered_by: Option<&mut Option<Arc<str>>>,
        flags: &mut &'static str,
    ) -> Result<Response<Body>, Error> {
        let (parts, body, downstream_upgrade) = if self.traits.upgrade {
            let mut request = Request::from_parts(parts, body);
            let upgrade = hyper::upgrade::on(&mut request);
            let (parts, body) = request.into_parts();
            (parts, body, Some(upgrade))
        } else {
            (parts, body, None)
        };
        // The head is made once, and every try sends it as it is.
        let parts = prepare(self.transport, parts, Some(self.forward), self.traits)?;
        let deadline = timeout.map(|it| tokio::time::Instant::now() + it);
        let response = self.tries(&parts, body, timeout, deadline, answered_by, flags).await?;
        Ok(onward_response(response, downstream_upgrade, Some(self.forward), deadline))
    }

    /// The tries of a prepared request: the first, and as many more as the retry policy
    /// allows before the `deadline`. The last try's answer or failure stands; `flags` becomes
    /// `URX` when it would have been tried again but the tries are spent, `UO` when the retry
    /// circuit breaker held the retry back (as Envoy's router flags them).
    async fn tries(
        &self,
        parts: &http::request::Parts,
        body: Body,
        timeout: Option<Duration>,
        deadline: Option<tokio::time::Instant>,
        mut answered_by: Option<&mut Option<Arc<str>>>,
        flags: &mut &'static str,
    ) -> Result<Response<Body>, Error> {
        let retries = &self.forward.retries;
        let pick = || self.cluster.pick_for(self.key).ok_or(Error::NoHealthyUpstream(self.cluster.spec.name));
        if retries.attempts == 0 || self.traits.upgrade {
            let endpoint = pick()?;
            let limits = Limits { headers: timeout, body: deadline };
            let result = self.try_once(parts, body, &endpoint, limits).await;
            self.cluster.observe(&endpoint, &result);
            note_answered_by(&mut answered_by, Some(&endpoint));
            return result;
        }
        let idempotent = is_idempotent(&parts.method);
        // A body that has ended already (a GET's) needs no copy to be sent again.
        let replay = (!hyper::body::Body::is_end_stream(&body)).then(|| ReplayBody::new(body, REPLAY_CAP));
        let next_body = |replay: &Option<ReplayBody>| match replay {
            Some(replay) => replay.retry().map(BodyExt::boxed),
            None => Some(empty()),
        };
        // The endpoints tried, kept only when a retry should avoid them.
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut attempt = 0;
        let mut next = next_body(&replay);
        // The retry in flight, counted by the cluster's retry breaker.
        let mut _retrying: Option<InFlight> = None;
        loop {
            let Some(try_body) = next.take() else { return Err(Error::Internal("a retry without a body")) };
            note_answered_by(&mut answered_by, None);
            let mut endpoint = pick()?;
            if retries.avoid_previous_hosts {
                for _ in 1..HOST_SELECTION_ATTEMPTS {
                    if !tried.iter().any(|it| **it == *endpoint.authority()) {
                        break;
                    }
                    endpoint = pick()?;
                }
            }
            let remaining = match deadline {
                Some(deadline) => Some(deadline.checked_duration_since(tokio::time::Instant::now()).ok_or(Error::UpstreamTimeout)?),
                None => None,
            };
            let per_try = retries.per_try_timeout_ms.map(Duration::from_millis);
            // A try ends at its own timeout or at the request's, whichever is sooner; only
            // the first is worth another try.
            let (limit, per_try_bound) = match (per_try, remaining) {
                (Some(per_try), Some(remaining)) if per_try < remaining => (Some(per_try), true),
                (Some(per_try), None) => (Some(per_try), true),
                (_, remaining) => (remaining, false),
            };
            let limits = Limits { headers: limit, body: deadline };
            let result = self.try_once(parts, try_body, &endpoint, limits).await;
            self.cluster.observe(&endpoint, &result);
            note_answered_by(&mut answered_by, Some(&endpoint));
            let started = replay.as_ref().is_some_and(ReplayBody::started);
            let outcome = match &result {
                Ok(response) => TryOutcome::Answered(response.status(), grpc_status(response.headers())),
                Err(Error::UpstreamTimeout) if !per_try_bound => return result,
                // A try may also end at the request's deadline while it waits for a
                // connection: that is the request's timeout, not the try's, and ends it.
                Err(Error::UpstreamTimeout) if deadline.is_some_and(|it| tokio::time::Instant::now() >= it) => return result,
                Err(err) => {
                    if matches!(err, Error::UpstreamTimeout) {
                        self.cluster.retry_stats.per_try_timeout.fetch_add(1, Ordering::Relaxed);
                    }
                    TryOutcome::Failed(err)
                }
            };
            // A refused stream was never processed, whatever of its body went out.
            let refused = matches!(outcome, TryOutcome::Failed(Error::UpstreamRefused(_)));
            let body_safe = !started || idempotent || retries.any_method || refused;
            if !retriable(retries, &outcome, started) || !body_safe {
                return result;
            }
            if attempt >= retries.attempts {
                *flags = "URX";
                self.cluster.retry_stats.limit_exceeded.fetch_add(1, Ordering::Relaxed);
                return result;
            }
            // The circuit breaker on retries: past it, the last answer stands.
            let allowed = self.cluster.tuning.retries_allowed(self.cluster.requests.load(Ordering::Acquire));
            let Some(retry_slot) = InFlight::take(&self.cluster.retries, allowed) else {
                *flags = "UO";
                self.cluster.retry_stats.overflow.fetch_add(1, Ordering::Relaxed);
                return result;
            };
            _retrying = Some(retry_slot);
            // Past the replay copy's cap the body cannot be sent again.
            next = next_body(&replay);
            if next.is_none() {
                return result;
            }
            drop(result);
            if retries.avoid_previous_hosts {
                tried.push(endpoint.shared_authority());
            }
            attempt += 1;
            self.cluster.retry_stats.retried.fetch_add(1, Ordering::Relaxed);
            // Exponential backoff with full jitter, within the request's deadline.
            let ceiling = RETRY_BASE * (1u32 << (attempt - 1).min(10)).min(10);
            let wait = Duration::from_micros(u64::from(random_below(ceiling.as_micros().min(u128::from(u32::MAX)) as u32)));
            if deadline.is_some_and(|it| tokio::time::Instant::now() + wait >= it) {
                return Err(Error::UpstreamTimeout);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Envoy's fault filter: the delay, then the abort, each for its share of requests. Whether
/// the request was delayed (Envoy's `DI`), or the abort's answer (`FI`, and `DI` if delayed).
async fn inject_fault(fault: &Fault, grpc: bool) -> Result<bool, Response<Body>> {
    let mut delayed = false;
    if let Some((ms, share)) = fault.delay
        && chance(share)
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        delayed = true;
    }
    let Some((abort, share)) = fault.abort else { return Ok(delayed) };
    if !chance(share) {
        return Ok(delayed);
    }
    const MESSAGE: &str = "fault filter abort";
    let grpc_code = match abort {
        Abort::Grpc(code) => Some(code),
        Abort::Http(code) if grpc => Some(grpc_status_of_http(code)),
        Abort::Http(_) => None,
    };
    let mut response = match grpc_code {
        Some(code) => {
            let mut response = Response::new(empty());
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
            response
        }
        None => {
            let code = match abort {
                Abort::Http(code) => code,
                Abort::Grpc(_) => 500,
            };
            let mut response = Response::new(full(Bytes::from_static(MESSAGE.as_bytes())));
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
    };
    response.extensions_mut().insert(ResponseFlag(if delayed { "DI,FI" } else { "FI" }));
    Err(response)
}

/// The gRPC status for an HTTP status, as gRPC's HTTP-to-gRPC mapping gives it.
fn grpc_status_of_http(code: u16) -> u32 {
    match code {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The consistent-hash key of a request, when the cluster hashes and the request has the
/// property (a request without it is balanced at random).
fn hash_key(balancer: &Balancer, parts: &http::request::Parts, peer: IpAddr) -> (Option<u64>, Option<HeaderValue>) {
    let Balancer::Hash(on, _) = balancer else { return (None, None) };
    let head = RequestHead::new(parts);
    let value: Option<String> = match on {
        HashOn::Header(name) => head.header(name).map(|it| it.into_owned()),
        HashOn::Query(name) => head.query_param(name).map(str::to_owned),
        HashOn::Cookie { name, path, ttl_s } => match cookie_value(parts.headers.get_all(header::COOKIE), name) {
            Some(value) => Some(value.to_owned()),
            None => match ttl_s {
                // Envoy's generated cookie: a value of its own, hashed as the cookie will be
                // when the client sends it back, and set on the response.
                Some(ttl) => {
                    let value = format!("{:016x}", random_u64());
                    let mut cookie = format!("{name}=\"{value}\"");
                    // A ttl of 0 is a session cookie (Envoy's): no Max-Age.
                    if *ttl > 0 {
                        cookie.push_str(&format!("; Max-Age={ttl}"));
                    }
                    if let Some(path) = path {
                        cookie.push_str("; Path=");
                        cookie.push_str(path);
                    }
                    cookie.push_str("; HttpOnly");
                    let key = crate::table::key_hash(value.as_bytes());
                    return (Some(key), HeaderValue::from_str(&cookie).ok());
                }
                None => None,
            },
        },
        HashOn::SourceIp => Some(peer.to_string()),
    };
    (value.map(|it| crate::table::key_hash(it.as_bytes())), None)
}

/// The value of the cookie `name` among a request's `Cookie` fields, without the quotes a
/// value may be written in (RFC 6265's `cookie-value`); `None` when absent or empty.
fn cookie_value<'a>(fields: http::header::GetAll<'a, HeaderValue>, name: &str) -> Option<&'a str> {
    fields.iter().filter_map(|it| it.to_str().ok()).flat_map(|it| it.split(';')).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        let value = value.strip_prefix('"').and_then(|it| it.strip_suffix('"')).unwrap_or(value);
        (key == name && !value.is_empty()).then_some(value)
    })
}

/// What one try came to, as retry policies see it.
enum TryOutcome<'a> {
    /// The upstream answered: its status, and `grpc-status` when the answer is trailers-only.
    Answered(StatusCode, Option<u32>),
    Failed(&'a Error),
}

/// Whether `retries` calls for another try after `outcome`; `started` tells whether any of the
/// request's body was sent.
fn retriable(retries: &Retries<'_>, outcome: &TryOutcome<'_>, started: bool) -> bool {
    let on = |bits: u32| retries.on & bits != 0;
    match outcome {
        TryOutcome::Failed(Error::UpstreamConnect(_)) => on(RetryOn::CONNECT_FAILURE | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR),
        TryOutcome::Failed(Error::UpstreamReset(_) | Error::UpstreamProtocol(_)) => {
            on(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR) || !started && on(RetryOn::RESET_BEFORE_REQUEST)
        }
        // The server did not process the request: `refused-stream` retries it whatever was sent.
        TryOutcome::Failed(Error::UpstreamRefused(_)) => {
            on(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::REFUSED_STREAM)
                || !started && on(RetryOn::RESET_BEFORE_REQUEST)
        }
        // A try's own timeout (the request's ends the request without a retry).
        TryOutcome::Failed(Error::UpstreamTimeout) => on(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR),
        TryOutcome::Failed(_) => false,
        TryOutcome::Answered(status, grpc) => {
            let code = status.as_u16();
            on(RetryOn::FIVE_XX) && code >= 500
                || on(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&code)
                || on(RetryOn::RETRIABLE_4XX) && code == 409
                || on(RetryOn::RETRIABLE_STATUS_CODES) && retries.statuses.contains(&code)
                || match grpc {
                    Some(1) => on(RetryOn::CANCELLED),
                    Some(4) => on(RetryOn::DEADLINE_EXCEEDED),
                    Some(8) => on(RetryOn::RESOURCE_EXHAUSTED),
                    Some(13) => on(RetryOn::INTERNAL),
                    Some(14) => on(RetryOn::UNAVAILABLE),
                    _ => false,
                }
        }
    }
}

/// `grpc-status` among response headers (a trailers-only answer).
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// A request with the method, URI, version and headers of `parts`.
pub(crate) fn copy_head(parts: &http::request::Parts) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// Requests a sidecar must refuse before routing them.
fn reject_malformed(request: &Request<Body>, grpc: bool) -> Option<Response<Body>> {
    // HTTP/1.1 requires a Host header (RFC 9112 §3.2); HTTP/2 has `:authority`.
    let has_authority = request.uri().authority().is_some() || request.headers().contains_key(header::HOST);
    (!has_authority && request.version() == Version::HTTP_11).then(|| local_reply(Error::BadRequest("missing Host header"), grpc))
}

/// The request's authority as the client sent it: an absolute-form target's, else `Host`.
fn authority_as_sent(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    Onward::as_sent(uri, headers).map(|it| it.as_str().to_owned())
}

/// The authority a request goes on with, held as it came (shared, not copied) until it is
/// written into the upstream request.
enum Onward<'a> {
    /// The route's rewrite, or the endpoint's own when the request named none.
    Named(&'a str),
    /// An absolute-form target's.
    Target(http::uri::Authority),
    /// `Host`, which is text.
    Host(HeaderValue),
}

impl Onward<'_> {
    /// What the client sent: an absolute-form target's authority, else `Host` when it is text.
    fn as_sent(uri: &Uri, headers: &HeaderMap) -> Option<Onward<'static>> {
        match uri.authority() {
            Some(target) => Some(Onward::Target(target.clone())),
            None => headers.get(header::HOST).filter(|it| it.to_str().is_ok()).map(|it| Onward::Host(it.clone())),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Onward::Named(name) => name,
            Onward::Target(target) => target.as_str(),
            Onward::Host(value) => value.to_str().unwrap_or_default(),
        }
    }
}

/// Names `endpoint` as the one that answered (or none), where the access log asks for it.
fn note_answered_by(answered_by: &mut Option<&mut Option<Arc<str>>>, endpoint: Option<&Endpoint>) {
    if let Some(answered_by) = answered_by {
        **answered_by = endpoint.map(Endpoint::shared_authority);
    }
}

/// How long a try may take: until the response headers, and until the end of the body.
#[derive(Clone, Copy, Debug)]
struct Limits {
    headers: Option<Duration>,
    body: Option<tokio::time::Instant>,
}

impl Limits {
    /// One timeout for the whole exchange.
    fn total(timeout: Option<Duration>) -> Limits {
        Limits { headers: timeout, body: timeout.map(|it| tokio::time::Instant::now() + it) }
    }
}

/// Forwards a request to one endpoint, in one try, and streams the answer back.
async fn forward_to(
    transport: Transport<'_>,
    mut request: Request<Body>,
    endpoint: &Endpoint,
    limits: Limits,
    traits: Traits,
) -> Result<Response<Body>, Error> {
    let downstream_upgrade = traits.upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let parts = prepare(transport, parts, None, traits)?;
    let response = send_to(transport, &parts, body, endpoint, limits.headers).await?;
    Ok(onward_response(response, downstream_upgrade, None, limits.body))
}

/// The head of a request as its upstream gets it, made once however many tries the request
/// takes: the hop-by-hop fields gone, the trace context and the route's header operations
/// applied, and the authority and target in the transport's form. Without an authority (the
/// request named none, and the route rewrites none) each try sends its endpoint's.
fn prepare(
    transport: Transport<'_>,
    mut parts: http::request::Parts,
    forward: Option<&Forward<'_>>,
    traits: Traits,
) -> Result<http::request::Parts, Error> {
    let Traits { grpc, upgrade, tracing } = traits;
    // Unrewritten, the path and query are the request's own (shared, not copied).
    let path_and_query = match forward.map_or(PathRewrite::None, |it| it.path_rewrite) {
        PathRewrite::None => parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        rewrite => match http::uri::PathAndQuery::try_from(rewritten_path(&parts.uri, rewrite)) {
            Ok(path) => path,
            Err(_) => return Err(Error::BadRequest("the request path cannot be forwarded")),
        },
    };
    // The authority the upstream sees: the route's rewrite, else what the client sent (an
    // absolute-form target's authority before `Host`, as routing read it).
    let authority = match forward.and_then(|it| it.authority_rewrite) {
        Some(rewritten) => Some(Onward::Named(rewritten)),
        None => Onward::as_sent(&parts.uri, &parts.headers),
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if tracing {
        crate::trace::propagate(&mut parts.headers);
    }
    if let Some(forward) = forward {
        apply_header_ops(&mut parts.headers, &forward.request_headers);
    }
    // HTTP/1.1 sends the authority as `Host` and the target in origin form; HTTP/2 sends the
    // URI's authority as `:authority`.
    parts.uri = match transport {
        Transport::Http1(_) => {
            parts.version = Version::HTTP_11;
            // Left alone when it already is the one `Host` it should be.
            let kept = authority.as_ref().is_some_and(|authority| {
                let mut hosts = parts.headers.get_all(header::HOST).iter();
                hosts.next().is_some_and(|it| it.as_bytes() == authority.as_str().as_bytes()) && hosts.next().is_none()
            });
            if !kept {
                match authority {
                    Some(Onward::Host(value)) => {
                        parts.headers.insert(header::HOST, value);
                    }
                    Some(other) => {
                        parts.headers.insert(header::HOST, HeaderValue::from_str(other.as_str()).map_err(|_| unforwardable())?);
                    }
                    None => {
                        parts.headers.remove(header::HOST);
                    }
                }
            }
            Uri::from(path_and_query)
        }
        Transport::Http2(_) => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
            let authority = match authority {
                None => None,
                Some(Onward::Target(target)) => Some(target),
                Some(other) => Some(http::uri::Authority::try_from(other.as_str()).map_err(|_| unforwardable())?),
            };
            match authority {
                Some(authority) => http2_uri(authority, path_and_query)?,
                None => Uri::from(path_and_query),
            }
        }
    };
    if grpc {
        // The gRPC spec requires `te: trailers` towards the server.
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(parts)
}

/// The failure of a request whose authority cannot be sent on.
pub(crate) fn unforwardable() -> Error {
    Error::BadRequest("the request's authority cannot be forwarded")
}

/// The URI an HTTP/2 request carries: the scheme, `authority` and the path and query.
fn http2_uri(authority: http::uri::Authority, path_and_query: http::uri::PathAndQuery) -> Result<Uri, Error> {
    Uri::builder().scheme("http").authority(authority).path_and_query(path_and_query).build().map_err(|_| unforwardable())
}

/// Sends a prepared request to `endpoint`, and waits up to `limit` for its response head.
async fn send_to(
    transport: Transport<'_>,
    parts: &http::request::Parts,
    body: Body,
    endpoint: &Endpoint,
    limit: Option<Duration>,
) -> Result<Response<Body>, Error> {
    // Made where it is awaited, not held in a local that is then moved into the timeout: a
    // moved-from future still takes room in this one, and every caller's future copies it.
    let send = |body: Body| async move {
        match transport {
            Transport::Http1(pool) => pool.send(endpoint, parts, body).await,
            Transport::Http2(pool) => {
                // hyper's client takes the request whole: each try gets a copy of the head.
                let mut request = copy_head(parts).map(|()| body);
                if parts.uri.authority().is_none() {
                    let authority = http::uri::Authority::try_from(endpoint.authority()).map_err(|_| unforwardable())?;
                    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                    *request.uri_mut() = http2_uri(authority, path_and_query)?;
                }
                Ok(pool.send(endpoint, request).await?.map(|body| body.map_err(BoxError::from).boxed()))
            }
        }
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, send(body)).await.map_err(|_| Error::UpstreamTimeout)?,
        None => send(body).await,
    }
}

/// The upstream's answer as the client gets it: a switch of protocols joined to the client's
/// connection (`downstream_upgrade`), the hop-by-hop fields gone, the route's header
/// operations applied, and the body cut off at the `deadline`.
fn onward_response(
    mut response: Response<Body>,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    forward: Option<&Forward<'_>>,
    deadline: Option<tokio::time::Instant>,
) -> Response<Body> {
    if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) = (downstream_upgrade, response.status()) {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(downstream), Ok(upstream)) = (downstream.await, upstream.await) {
                let mut downstream = TokioIo::new(downstream);
                let mut upstream = TokioIo::new(upstream);
                // Either side closing ends the tunnel; an error there is the peers' business.
                let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    if let Some(forward) = forward {
        apply_header_ops(&mut parts.headers, &forward.response_headers);
    }
    // The deadline covers the whole answer, as Envoy's route timeout does: a body still
    // streaming at the deadline is cut off with an error (a reset), never ended cleanly.
    let body = match deadline {
        Some(deadline) => DeadlineBody { inner: body, sleep: Box::pin(tokio::time::sleep_until(deadline)) }.boxed(),
        None => body,
    };
    Response::from_parts(parts, body)
}

fn wants_upgrade_request(request: &Request<Body>) -> bool {
    let (version, headers) = (request.version(), request.headers());
    version == Version::HTTP_11 && upgrade_headers(headers)
}

fn wants_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11 && upgrade_headers(&parts.headers)
}

/// `Upgrade`, and `Connection` naming it.
fn upgrade_headers(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|it| it.to_str().is_ok_and(|it| it.to_ascii_lowercase().contains("upgrade")))
}

/// The path and query sent upstream.
fn rewritten_path(uri: &Uri, rewrite: PathRewrite<'_>) -> String {
    let path = uri.path();
    let query = uri.query().map(|it| format!("?{it}")).unwrap_or_default();
    match rewrite {
        PathRewrite::None => format!("{path}{query}"),
        PathRewrite::Prefix { matched, with } => match path.strip_prefix(matched) {
            Some(rest) => format!("{with}{rest}{query}"),
            None => format!("{path}{query}"),
        },
        PathRewrite::Whole(with) => format!("{with}{query}"),
    }
}

/// The hop-by-hop headers (RFC 9110 §7.6.1) and their kin that a proxy never forwards;
/// `Upgrade` last, as an upgrade keeps it and `Connection`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `token` (a `Connection` option, in any case) names a field of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(token: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|it| it.as_str().as_bytes().eq_ignore_ascii_case(token))
}

/// Where `name` is in [`HOP_BY_HOP`]: one match on the name's text, where comparing it with
/// each of the eight names cost more than the rest of the strip together.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "proxy-authenticate" => Some(3),
        "proxy-authorization" => Some(4),
        "te" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry few or none: one pass over the names finds which.
    let mut present = [false; 8];
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present[index] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Headers that `Connection` names are connection-specific too; the usual ones
    // (`keep-alive`, `upgrade`) are in the list already and need no name of their own.
    let kept = |name: &HeaderName| upgrade && (*name == header::CONNECTION || *name == header::UPGRADE);
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        // Byte by byte: a value with one byte that is not ASCII names its other fields still.
        for token in headers.get_all(header::CONNECTION).iter().flat_map(|it| it.as_bytes().split(|it| *it == b',')) {
            let token = token.trim_ascii();
            if token.is_empty() || is_hop_by_hop(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(name, present)| *present && !kept(name)) {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

/// Applies header operations as Envoy does: removals first, then replacements, then additions.
fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps<'_>) {
    for name in ops.remove {
        headers.remove(*name);
    }
    for (name, value) in ops.set {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    for (name, value) in ops.add {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|it| it.to_str().ok()).is_some_and(|it| it.starts_with("application/grpc"))
}

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The request's timeout: the route's (or cluster's), shortened by a gRPC request's
/// `grpc-timeout` (Istio caps the header at the route's timeout).
fn request_timeout(configured_ms: Option<u64>, headers: &HeaderMap, grpc: bool) -> Option<Duration> {
    let configured = configured_ms.filter(|it| *it > 0).map(Duration::from_millis);
    // Only a gRPC request's `grpc-timeout` counts, and 0 means no limit, as in Envoy.
    let grpc = Some(headers)
        .filter(|_| grpc)
        .and_then(|it| it.get(&GRPC_TIMEOUT))
        .and_then(|it| it.to_str().ok())
        .and_then(parse_grpc_timeout)
        .filter(|it| !it.is_zero());
    match (configured, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n), per the gRPC HTTP/2 spec.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|it| it.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |it| it.subsec_nanos());
    let here = &nanos as *const u32 as u64;
    (u64::from(nanos) ^ here.rotate_left(32)) | 1
}

/// Slow start's floor: an endpoint just added takes at least this share of its weight.
const SLOW_START_FLOOR: f64 = 0.1;

/// A weighted draw over `scope`'s endpoints with `weights` (parallel to them); `draw` is
/// uniform in `0..u64::MAX`.
fn pick_weighted<'s>(scope: &'s EndpointSet, weights: &[f64], draw: u64) -> Option<&'s Endpoint> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = draw as f64 / u64::MAX as f64 * total;
    for (endpoint, weight) in scope.all().iter().zip(weights) {
        if point < *weight {
            return Some(endpoint);
        }
        point -= weight;
    }
    scope.all().iter().zip(weights).rev().find(|(_, weight)| **weight > 0.0).map(|(endpoint, _)| endpoint)
}

/// A fast random 64-bit number (two of [`random_below`]'s).
pub(crate) fn random_u64() -> u64 {
    (u64::from(random_below(u32::MAX)) << 32) | u64::from(random_below(u32::MAX))
}

/// A fast random number in `0..bound`, for weighted destinations (xorshift: no security needed).
pub fn random_below(bound: u32) -> u32 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (((x >> 32) * u64::from(bound)) >> 32) as u32
    })
}

/// The index of a destination drawn by weight.
pub(crate) fn pick_weighted_destination(destinations: &[WeightedCluster]) -> usize {
    if destinations.len() == 1 {
        return 0;
    }
    let total: u32 = destinations.iter().map(|it| it.weight).sum();
    let mut point = random_below(total.max(1));
    for (index, destination) in destinations.iter().enumerate() {
        if point < destination.weight {
            return index;
        }
        point -= destination.weight;
    }
    destinations.len() - 1
}

/// An authority's host: `a.b:80` → `a.b`, `[::1]:80` → `[::1]`, `[::1]` → `[::1]`.
pub(crate) fn without_port(authority: &str) -> &str {
    let port_from = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].find(':').map(|it| bracket + it),
        None => authority.rfind(':'),
    };
    port_from.map_or(authority, |at| &authority[..at])
}

fn answer_locally(answer: &Answer<'_>, parts: &http::request::Parts) -> Response<Body> {
    match answer {
        Answer::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
            *response.status_mut() = status;
            response
        }
        Answer::Redirect { scheme, authority, port, path, status } => {
            let current_authority = RequestHead::new(parts).authority().to_owned();
            let host_port = match (port, authority) {
                (Some(port), _) => format!("{}:{port}", without_port(authority.unwrap_or(&current_authority))),
                (None, Some(authority)) => (*authority).to_owned(),
                (None, None) => current_authority,
            };
            let path = path.unwrap_or_else(|| parts.uri.path());
            let query = parts.uri.query().map(|it| format!("?{it}")).unwrap_or_default();
            let location = format!("{}://{host_port}{path}{query}", scheme.unwrap_or("http"));
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
    }
}

/// Adds Envoy's response `flag` (`-` adds none) to those a response already has.
fn add_flag(response: &mut Response<Body>, flag: &'static str) {
    if flag == "-" {
        return;
    }
    let flags = response.extensions().get::<ResponseFlag>().map_or("-", |it| it.0);
    response.extensions_mut().insert(ResponseFlag(crate::error::join_flags(flags, flag)));
}

/// A reply the sidecar makes itself; gRPC requests get a trailers-only gRPC status.
pub fn local_reply(error: Error, grpc: bool) -> Response<Body> {
    let status = error.status();
    let message = error.to_string();
    let mut response = if grpc {
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(error.grpc_status()));
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
        response
    } else {
        let mut response = Response::new(full(Bytes::from(message)));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    };
    response.extensions_mut().insert(ResponseFlag(error.flag()));
    response
}

/// A body that holds something (a circuit breaker's count) until it ends or is dropped.
struct Holding<T> {
    inner: Body,
    _held: T,
}

impl<T: Send + Sync + Unpin + 'static> hyper::body::Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that keeps a copy of what passes and hands the copy over once the body
/// has ended whole; a failed or abandoned body hands over nothing.
struct TeeBody {
    inner: Body,
    copy: bytes::BytesMut,
    whole: Option<tokio::sync::oneshot::Sender<Bytes>>,
}

impl hyper::body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if self.copy.len() + data.len() > REPLAY_CAP {
                        // Longer than its size said: not mirrored.
                        self.whole = None;
                        self.copy = bytes::BytesMut::new();
                    } else if self.whole.is_some() {
                        self.copy.extend_from_slice(data);
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.whole = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl TeeBody {
    fn finish(&mut self) {
        if let Some(whole) = self.whole.take() {
            let _ = whole.send(std::mem::take(&mut self.copy).freeze());
        }
    }
}

/// A response body cut off at a deadline.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Error::UpstreamTimeout.to_string().into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An empty body. `Empty` has no size, so boxing it allocates nothing.
pub fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never: Infallible| match never {}).boxed()
}

/// A body of bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never: Infallible| match never {}).boxed()
}

/// Whether a request method may be retried without side effects; kept here for retries.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// Boxes the future `make` makes, made where it will live. `Box::pin(future)` builds the whole
/// future on the stack and copies it over, kilobytes of it not yet set before its first poll
/// (4.5 KB per HTTP/1.1 request for the outbound path). Allocating first and then making the
/// future lets the compiler store only its arguments in the box, when they come first in its
/// layout: an async fn taking them as one tuple puts them there.
#[inline(always)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_shorten_the_routes_for_grpc_requests_only() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static("200m"));
        assert_eq!(request_timeout(Some(1000), &headers, is_grpc(&headers)), Some(Duration::from_secs(1)), "not a gRPC request");
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert_eq!(request_timeout(Some(1000), &headers, is_grpc(&headers)), Some(Duration::from_millis(200)));
        assert_eq!(request_timeout(None, &headers, is_grpc(&headers)), Some(Duration::from_millis(200)));
        headers.insert("grpc-timeout", HeaderValue::from_static("0S"));
        assert_eq!(request_timeout(Some(1000), &headers, is_grpc(&headers)), Some(Duration::from_secs(1)), "0 is no limit");
        assert_eq!(request_timeout(None, &headers, is_grpc(&headers)), None);
    }

    #[test]
    fn paths_are_normalised_for_policies() {
        assert_eq!(normalise_path("/admin"), "/admin");
        assert_eq!(normalise_path("//admin"), "/admin");
        assert_eq!(normalise_path("/./admin"), "/admin");
        assert_eq!(normalise_path("/x/../admin/"), "/admin/");
        assert_eq!(normalise_path("/../../admin"), "/admin");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("/a/b/.."), "/a/");
    }

    #[test]
    fn ports_come_off_names_and_bracketed_addresses() {
        assert_eq!(without_port("web:8080"), "web");
        assert_eq!(without_port("web"), "web");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }

    #[tokio::test]
    async fn a_response_body_still_streaming_at_the_deadline_is_cut_off() {
        struct Stalled;
        impl hyper::body::Body for Stalled {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Pending
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
        let body = DeadlineBody { inner: Stalled.boxed(), sleep: Box::pin(tokio::time::sleep_until(deadline)) };
        let result = body.collect().await;
        assert_eq!(result.err().map(|it| it.to_string()).as_deref(), Some("upstream request timeout"));
        // Before the deadline, the body passes through.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let body = DeadlineBody { inner: full(Bytes::from_static(b"ok")), sleep: Box::pin(tokio::time::sleep_until(deadline)) };
        assert_eq!(body.collect().await.expect("body").to_bytes(), "ok");
    }

    #[test]
    fn with_every_endpoint_ejected_the_panic_threshold_decides_between_503_and_all_of_them() {
        use crate::endpoints::{ClusterEndpoints, Endpoint};
        use crate::outlier::OutlierSpec;
        const fn detector(min_health_percent: u32) -> OutlierSpec {
            OutlierSpec {
                consecutive_5xx: 1,
                consecutive_gateway_errors: 1,
                base_ejection_time_ms: 60_000,
                max_ejection_percent: 100,
                min_health_percent,
            }
        }
        // Istio's default, 0: never panic; and a threshold above what is left usable.
        static ISTIO: ClusterSpec = ClusterSpec { outlier: Some(detector(0)), ..ClusterSpec::plain("istio", &["web"]) };
        static HALF: ClusterSpec = ClusterSpec { outlier: Some(detector(50)), ..ClusterSpec::plain("half", &["web"]) };
        for (spec, expected) in [(&ISTIO, None), (&HALF, Some(2))] {
            let endpoints = vec![Endpoint::new("10.0.0.1", 80, 1, true, ""), Endpoint::new("10.0.0.2", 80, 1, true, "")];
            let cluster = Cluster::new(spec, ClusterEndpoints::new(endpoints.clone(), ""), None).expect("a cluster");
            assert!(cluster.pick().is_some());
            // One of two ejected: 50 % usable, no panic at either threshold.
            cluster.count_observed(&endpoints[0], Some(Observed::GatewayError));
            for _ in 0..10 {
                assert_eq!(cluster.pick().map(|it| it.authority().to_owned()).as_deref(), Some("10.0.0.2:80"), "{}", spec.name);
            }
            cluster.count_observed(&endpoints[1], Some(Observed::GatewayError));
            let picked: std::collections::BTreeSet<String> =
                (0..20).filter_map(|_| cluster.pick()).map(|it| it.authority().to_owned()).collect();
            // None left: Istio's 0 answers 503 (no pick); at 50 % both take traffic again.
            assert_eq!(Some(picked.len()).filter(|it| *it > 0), expected, "{}: {picked:?}", spec.name);
        }
        // With locality priorities, the nearest one short of its share does not panic while
        // the next has room for the rest (Envoy's normalized total availability).
        let at = |index: usize, zone: &str| Endpoint::new(&format!("10.0.{zone}.{index}"), 80, 1, true, &format!("r/{zone}"));
        let endpoints: Vec<Endpoint> = (0..10).map(|it| at(it, "1")).chain((0..10).map(|it| at(it, "2"))).collect();
        let cluster = Cluster::new(&HALF, ClusterEndpoints::new(endpoints.clone(), "r/1"), None).expect("a cluster");
        for ejected in &endpoints[..7] {
            cluster.count_observed(ejected, Some(Observed::GatewayError));
        }
        let ejected: std::collections::BTreeSet<&str> = endpoints[..7].iter().map(|it| it.authority()).collect();
        for _ in 0..300 {
            let picked = cluster.pick().expect("an endpoint");
            assert!(!ejected.contains(picked.authority()), "{} is ejected", picked.authority());
        }
    }

    #[test]
    fn a_hash_cookie_is_read_quoted_or_not_and_made_up_with_a_lifetime() {
        let request = |cookie: Option<&str>| {
            let mut request = Request::get("/").header(header::HOST, "web");
            if let Some(cookie) = cookie {
                request = request.header(header::COOKIE, cookie);
            }
            request.body(()).expect("a request").into_parts().0
        };
        let peer = IpAddr::from([10, 0, 0, 1]);
        static STICKY: Balancer = Balancer::Hash(
            HashOn::Cookie { name: "session", path: Some("/"), ttl_s: Some(3600) },
            crate::spec::HashTable::Ring { min_size: 1024 },
        );
        static PLAIN: Balancer =
            Balancer::Hash(HashOn::Cookie { name: "session", path: None, ttl_s: None }, crate::spec::HashTable::Maglev { size: 65_537 });
        let hash = |value: &str| Some(crate::table::key_hash(value.as_bytes()));
        for cookie in ["session=abc", "a=1; session=\"abc\"", "session=; a=1;session=abc"] {
            assert_eq!(hash_key(&STICKY, &request(Some(cookie)), peer), (hash("abc"), None), "{cookie}");
        }
        // Without the cookie and without a lifetime: no key (the balancer picks at random).
        assert_eq!(hash_key(&PLAIN, &request(None), peer), (None, None));
        // With a lifetime: a value made up, set on the response, and hashed as it will be
        // when the client sends it back.
        let (key, set) = hash_key(&STICKY, &request(Some("other=1")), peer);
        let set = set.expect("a Set-Cookie");
        let set = set.to_str().expect("text");
        let value = set.strip_prefix("session=\"").and_then(|it| it.split_once('"')).map(|it| it.0).expect("a quoted value");
        assert_eq!(set, format!("session=\"{value}\"; Max-Age=3600; Path=/; HttpOnly"));
        assert_eq!(key, hash_key(&STICKY, &request(Some(&format!("session=\"{value}\""))), peer).0);
        // A ttl of 0: a session cookie, without Max-Age.
        static SESSION: Balancer =
            Balancer::Hash(HashOn::Cookie { name: "s", path: None, ttl_s: Some(0) }, crate::spec::HashTable::Ring { min_size: 1024 });
        let set = hash_key(&SESSION, &request(None), peer).1.expect("a Set-Cookie");
        let set = set.to_str().expect("text");
        assert!(set.starts_with("s=\"") && set.ends_with("\"; HttpOnly") && !set.contains("Max-Age"), "{set}");
    }

    #[test]
    fn header_operations_remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("old"));
        headers.insert("x-b", HeaderValue::from_static("caller"));
        let ops = HeaderOps { set: &[("x-a", "new")], add: &[("x-b", "mesh")], remove: &["x-a", "x-b"] };
        apply_header_ops(&mut headers, &ops);
        // Envoy removes first, so a header both removed and set ends up set.
        assert_eq!(headers.get_all("x-a").iter().collect::<Vec<_>>(), ["new"]);
        assert_eq!(headers.get_all("x-b").iter().collect::<Vec<_>>(), ["mesh"]);
    }

    #[tokio::test]
    async fn an_injected_abort_answers_in_the_callers_protocol() {
        let always = |abort| Fault { delay: None, abort: Some((abort, 1_000_000)) };
        let reply = inject_fault(&always(Abort::Http(503)), false).await.expect_err("aborted");
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.extensions().get::<ResponseFlag>().map(|it| it.0), Some("FI"));
        // A gRPC caller gets the HTTP status's gRPC code in a trailers-only answer.
        let reply = inject_fault(&always(Abort::Http(503)), true).await.expect_err("aborted");
        assert_eq!((reply.status(), grpc_status(reply.headers())), (StatusCode::OK, Some(14)));
        let reply = inject_fault(&always(Abort::Grpc(8)), true).await.expect_err("aborted");
        assert_eq!(grpc_status(reply.headers()), Some(8));
        let never = Fault { delay: None, abort: Some((Abort::Http(503), 0)) };
        assert_eq!(inject_fault(&never, false).await.ok(), Some(false));
        assert_eq!(inject_fault(&Fault::NONE, false).await.ok(), Some(false));
    }

    #[test]
    fn only_responses_over_an_upstream_connection_carry_the_callers_mtls_identity() {
        for flags in ["-", "DI", "UT", "UC", "URX", "UT,URX"] {
            assert!(reached_upstream(flags), "{flags}");
        }
        for flags in ["UF", "UF,URX", "UH", "UO", "NR", "NC", "RL", "FI", "DI,FI", "DPE"] {
            assert!(!reached_upstream(flags), "{flags}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_delay_is_flagged_di_and_with_an_abort_di_fi() {
        let delay = Fault { delay: Some((100, 1_000_000)), abort: None };
        assert_eq!(inject_fault(&delay, false).await.ok(), Some(true));
        let both = Fault { delay: Some((100, 1_000_000)), abort: Some((Abort::Http(503), 1_000_000)) };
        let reply = inject_fault(&both, false).await.expect_err("aborted");
        assert_eq!(reply.extensions().get::<ResponseFlag>().map(|it| it.0), Some("DI,FI"));
        let mut answered = Response::new(empty());
        add_flag(&mut answered, "-");
        assert!(answered.extensions().get::<ResponseFlag>().is_none());
        add_flag(&mut answered, "URX");
        add_flag(&mut answered, "DI");
        assert_eq!(answered.extensions().get::<ResponseFlag>().map(|it| it.0), Some("DI,URX"));
    }

    #[test]
    fn retry_conditions_follow_envoys_meanings() {
        let policy = |on: u32| Retries {
            attempts: 2,
            per_try_timeout_ms: None,
            on,
            statuses: &[503],
            avoid_previous_hosts: true,
            any_method: false,
        };
        let answered = |code: u16, grpc: Option<u32>| TryOutcome::Answered(StatusCode::from_u16(code).expect("status"), grpc);
        let reset = Error::UpstreamReset("10.0.0.1:80".to_owned());
        let refused = Error::UpstreamRefused("10.0.0.1:80".to_owned());
        // `refused-stream` is the server's REFUSED_STREAM, at any point; not any reset.
        assert!(retriable(&policy(RetryOn::REFUSED_STREAM), &TryOutcome::Failed(&refused), true));
        assert!(!retriable(&policy(RetryOn::REFUSED_STREAM), &TryOutcome::Failed(&reset), false));
        assert!(retriable(&policy(RetryOn::RESET), &TryOutcome::Failed(&refused), true));
        let connect = Error::UpstreamConnect("10.0.0.1:80".to_owned());
        assert!(retriable(&policy(RetryOn::FIVE_XX), &answered(500, None), true));
        assert!(retriable(&policy(RetryOn::FIVE_XX), &TryOutcome::Failed(&connect), false));
        assert!(!retriable(&policy(RetryOn::GATEWAY_ERROR), &answered(500, None), true));
        assert!(retriable(&policy(RetryOn::GATEWAY_ERROR), &answered(504, None), true));
        assert!(!retriable(&policy(RetryOn::CONNECT_FAILURE), &TryOutcome::Failed(&reset), false));
        assert!(retriable(&policy(RetryOn::RESET_BEFORE_REQUEST), &TryOutcome::Failed(&reset), false));
        assert!(!retriable(&policy(RetryOn::RESET_BEFORE_REQUEST), &TryOutcome::Failed(&reset), true));
        assert!(retriable(&policy(RetryOn::RETRIABLE_STATUS_CODES), &answered(503, None), true));
        assert!(!retriable(&policy(RetryOn::RETRIABLE_STATUS_CODES), &answered(502, None), true));
        assert!(retriable(&policy(RetryOn::RETRIABLE_4XX), &answered(409, None), true));
        assert!(retriable(&policy(RetryOn::UNAVAILABLE), &answered(200, Some(14)), true));
        assert!(!retriable(&policy(RetryOn::UNAVAILABLE), &answered(200, Some(13)), true));
        assert!(!retriable(&policy(0), &answered(503, None), true));
    }

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn paths_rewrite_by_prefix_or_whole() {
        let uri: Uri = "/api/v1/users?x=1".parse().unwrap();
        assert_eq!(rewritten_path(&uri, PathRewrite::Prefix { matched: "/api/v1/", with: "/v2/" }), "/v2/users?x=1");
        assert_eq!(rewritten_path(&uri, PathRewrite::Whole("/all")), "/all?x=1");
        assert_eq!(rewritten_path(&uri, PathRewrite::None), "/api/v1/users?x=1");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|it| it.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        // A byte that is not ASCII elsewhere in the value hides nothing.
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_bytes(b"x-private, caf\xe9").expect("obs-text is allowed"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty());
    }

    #[test]
    fn random_numbers_stay_below_the_bound_and_spread() {
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[random_below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|it| (700..1300).contains(it)), "{counts:?}");
    }
}
