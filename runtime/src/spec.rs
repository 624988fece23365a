//! The compiled configuration a generated sidecar hands to the runtime: plain `static` data
//! and function pointers, with no parsing and no lookups by spec name on the request path.

use crate::head::RequestHead;
use crate::rpc::head::{RpcHead, RpcProtocol};

/// Everything the runtime needs to run one workload's sidecar.
#[derive(Debug)]
pub struct SidecarSpec {
    /// The workload's name.
    pub workload: &'static str,
    /// Its namespace.
    pub namespace: &'static str,
    /// The trust domain of SPIFFE identities.
    pub trust_domain: &'static str,
    /// Its own identity, `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principal: &'static str,
    /// Its listeners: `outbound`, `outbound-tcp-<service>-<port>` per TCP service port it calls, and `inbound-<port>` per application port.
    pub listeners: &'static [ListenerSpec],
    /// The upstream clusters its routes reach, indexed by [`WeightedCluster::cluster`].
    pub clusters: &'static [ClusterSpec],
    /// The compiled outbound route lookup.
    pub route_outbound: fn(&RequestHead<'_>) -> Decision<'static>,
    /// The compiled route lookup of RPC requests (Bolt and Dubbo), by interface.
    pub route_rpc: fn(&RpcHead<'_>) -> Decision<'static>,
    /// Whether some RPC route needs a Dubbo request's attachments (its group, or another
    /// attachment), which means skipping its arguments; otherwise they are never read.
    pub rpc_attachments: bool,
    /// The authorization policies of inbound requests.
    pub authz: &'static crate::authz::Policies,
    /// The local rate limit of every inbound request.
    pub inbound_rate_limit: Option<&'static crate::ratelimit::RateLimit>,
    /// How requests are logged.
    pub access_log: crate::accesslog::AccessLog,
    /// Whether a request without `x-request-id` gets one (outbound, and inbound on its way to
    /// the application).
    pub request_id: bool,
    /// The labels the workload adds to its request metrics.
    pub metric_labels: &'static [crate::metrics::MetricLabel],
    /// Whether requests the sidecar forwards get trace context (a new trace, or a span added
    /// to the caller's), both ways; off, trace headers pass untouched.
    pub tracing: bool,
    /// The compiled tables as JSON, for the admin endpoint's `/config_dump`.
    pub config_dump: &'static str,
    /// The counts of every forwarding route, for the admin endpoint's route metrics.
    pub routes: &'static [&'static RouteStats],
    /// Each compiled virtual host with the digest of its xDS form, which the xDS client
    /// compares with what Pilot serves: a host served unchanged stays compiled.
    pub virtual_hosts: &'static [VirtualHostSpec],
}

/// A compiled virtual host, as xDS names it.
#[derive(Debug)]
pub struct VirtualHostSpec {
    /// `<host>:<port>`.
    pub name: &'static str,
    /// SHA-256, in hex, of its canonical xDS bytes.
    pub digest: &'static str,
    /// The hosts (and `host:port`s) that select it.
    pub domains: &'static [&'static str],
}

/// The run-time counts of one forwarding route: a static per route, shared by its
/// alternatives, so that counting costs two atomic operations and no lookup.
#[derive(Debug)]
pub struct RouteStats {
    /// The route table's name.
    pub table: &'static str,
    /// The route's name.
    pub route: &'static str,
    /// Requests the route took.
    pub total: std::sync::atomic::AtomicU64,
    /// Requests the route took whose response has not ended.
    pub active: std::sync::atomic::AtomicU64,
}

impl RouteStats {
    /// Zero counts for route `route` of table `table`.
    pub const fn new(table: &'static str, route: &'static str) -> RouteStats {
        RouteStats { table, route, total: std::sync::atomic::AtomicU64::new(0), active: std::sync::atomic::AtomicU64::new(0) }
    }
}

/// A listener of the sidecar.
#[derive(Debug)]
pub struct ListenerSpec {
    /// `outbound` or `inbound-<port>`: the name `--listen NAME=ADDR` uses.
    pub name: &'static str,
    /// Where it listens unless `--listen` says otherwise.
    pub default_address: &'static str,
    /// What it does.
    pub kind: ListenerKind,
}

/// What a listener does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// Routes the application's outbound requests by host.
    Outbound,
    /// Forwards inbound requests to the local application.
    Inbound {
        /// The application's port on 127.0.0.1 (the sidecar's `--app` can send it elsewhere).
        app_port: u16,
        /// The protocol the application speaks there.
        protocol: Protocol,
        /// The names (short, `name.ns`, host) of the service served there, for telemetry.
        service_names: &'static [&'static str],
        /// What callers may use: plaintext, mutual TLS, or either.
        mtls: PeerMtls,
    },
    /// Routes the application's RPC requests of one protocol by their keys
    /// (`outbound-bolt`, `outbound-dubbo`).
    OutboundRpc {
        /// Bolt or Dubbo.
        protocol: RpcProtocol,
    },
    /// Routes the application's Bolt and Dubbo requests on one port, telling the protocols
    /// apart by each connection's first byte (`outbound-rpc`, a workload's `rpc_listener auto`).
    OutboundRpcSniffed {
        /// Whether the workload calls Bolt services.
        bolt: bool,
        /// Whether the workload calls Dubbo services.
        dubbo: bool,
    },
    /// Forwards the application's TCP connections to one TCP service port.
    OutboundTcp {
        /// The service's names (short, `name.ns`, host), for telemetry.
        service_names: &'static [&'static str],
        /// Where connections go; weights sum to 100.
        destinations: &'static [WeightedCluster],
    },
}

/// What an inbound port accepts (Istio's PeerAuthentication modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMtls {
    /// Plaintext only.
    Disable,
    /// Mutual TLS when the caller starts a handshake, plaintext otherwise.
    Permissive,
    /// Mutual TLS only: a plaintext caller's connection is closed.
    Strict,
}

/// How a cluster's connections are secured.
#[derive(Debug)]
pub enum UpstreamTls {
    /// Plaintext.
    Disable,
    /// TLS, the server's name checked against the mesh's roots.
    Simple {
        /// The name sent and checked; the service's host when `None`.
        sni: Option<&'static str>,
    },
    /// As `Simple`, presenting the workload's certificate.
    Mutual {
        /// The name sent and checked; the service's host when `None`.
        sni: Option<&'static str>,
    },
    /// Mutual TLS with SPIFFE identities (Istio's `ISTIO_MUTUAL`).
    IstioMutual {
        /// The SNI sent; the service's host when `None`.
        sni: Option<&'static str>,
        /// The identities the endpoints may prove; empty: any of the trust domain.
        principals: &'static [&'static str],
    },
}

/// The HTTP version used towards an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (gRPC, h2c).
    Http2,
    /// Whatever the downstream client spoke (Istio's sniffed protocol).
    Downstream,
    /// Plain TCP: bytes copied both ways, no HTTP (an inbound port's protocol only).
    Tcp,
    /// SOFA Bolt frames, routed and policed by their RPC keys (an inbound port's protocol only).
    Bolt,
    /// Dubbo 2 frames, likewise.
    Dubbo,
    /// Istio's `auto` on an inbound port: each connection's first byte tells Bolt (0x01, 0x02)
    /// and Dubbo (0xda) from HTTP, among the RPC protocols the workload uses; HTTP requests
    /// go on as the caller sent them.
    Sniffed {
        /// Whether Bolt connections are recognised.
        bolt: bool,
        /// Whether Dubbo connections are recognised.
        dubbo: bool,
    },
}

impl Protocol {
    /// Whether a request that came in as `downstream` goes upstream over HTTP/2.
    pub fn uses_http2(self, downstream: http::Version) -> bool {
        match self {
            Protocol::Http2 => true,
            Protocol::Http1 | Protocol::Tcp | Protocol::Bolt | Protocol::Dubbo => false,
            Protocol::Downstream | Protocol::Sniffed { .. } => downstream == http::Version::HTTP_2,
        }
    }
}

/// An upstream cluster: one port of one service, maybe narrowed to a subset.
#[derive(Debug)]
pub struct ClusterSpec {
    /// Istio's cluster name, `outbound|<port>|<subset>|<host>`.
    pub name: &'static str,
    /// The names an `--endpoints` file may use for the service (short, `name.ns`, FQDN).
    pub service_names: &'static [&'static str],
    /// The service port.
    pub port: u16,
    /// The labels an endpoint must carry to belong to the subset.
    pub subset_labels: &'static [(&'static str, &'static str)],
    /// The HTTP version towards the endpoints.
    pub protocol: Protocol,
    /// Connection timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Request timeout for routes that set none, milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// How an endpoint is chosen.
    pub load_balancer: Balancer,
    /// Slow start: an endpoint added, or healthy again after failing its checks, takes a
    /// share of traffic growing over this many milliseconds.
    pub warmup_ms: Option<u64>,
    /// Circuit-breaker thresholds.
    pub limits: Limits,
    /// Passive outlier detection, when enabled.
    pub outlier: Option<crate::outlier::OutlierSpec>,
    /// Active health checking, when enabled.
    pub health_check: Option<crate::health::HealthCheckSpec>,
    /// TLS towards the endpoints.
    pub tls: UpstreamTls,
    /// The endpoints the registry snapshot listed, which `--endpoints` (and later xDS) replace.
    pub endpoints: &'static [EndpointSeed],
}

impl ClusterSpec {
    /// Whether its connections are Istio's mutual TLS (SPIFFE identities on both sides).
    pub fn istio_mutual(&self) -> bool {
        matches!(self.tls, UpstreamTls::IstioMutual { .. })
    }
}

#[cfg(test)]
impl ClusterSpec {
    /// For tests: cluster `name` of service `service` on port 9080, plain HTTP/1.1, round
    /// robin, no limits, checks or TLS, and no endpoints of its own.
    pub(crate) const fn plain(name: &'static str, service_names: &'static [&'static str]) -> ClusterSpec {
        ClusterSpec {
            name,
            service_names,
            port: 9080,
            subset_labels: &[],
            protocol: Protocol::Http1,
            connect_timeout_ms: 1000,
            request_timeout_ms: None,
            load_balancer: Balancer::RoundRobin,
            warmup_ms: None,
            limits: Limits::NONE,
            outlier: None,
            health_check: None,
            tls: UpstreamTls::Disable,
            endpoints: &[],
        }
    }
}

/// A cluster's load-balancing algorithm.
#[derive(Debug)]
pub enum Balancer {
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Two random choices, the one with fewer requests in flight (Istio's default).
    LeastRequest,
    /// Consistent hashing on a request property, by a ring hash or Maglev: one key goes to one
    /// endpoint, and removing an endpoint moves few other keys.
    Hash(HashOn, HashTable),
}

/// How a consistent hash lays keys out over endpoints (Envoy's two algorithms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashTable {
    /// A ring of at least `min_size` points (Envoy's `minimum_ring_size`).
    Ring {
        /// The fewest points.
        min_size: u32,
    },
    /// Maglev's lookup table of `size` slots, a prime (Envoy's `table_size`).
    Maglev {
        /// The slots.
        size: u32,
    },
}

/// What a consistent hash is computed from.
#[derive(Debug)]
pub enum HashOn {
    /// A request header.
    Header(&'static str),
    /// A cookie; a request without it gets one made up when it has a lifetime (Envoy's
    /// `ttl`), which the response sets, so that the client's next requests stay.
    Cookie {
        /// The cookie's name.
        name: &'static str,
        /// The `Path` of a cookie made up.
        path: Option<&'static str>,
        /// The `Max-Age` of a cookie made up, in seconds; none is made without it.
        ttl_s: Option<u64>,
    },
    /// A query parameter.
    Query(&'static str),
    /// The downstream address.
    SourceIp,
}

/// A cluster's circuit-breaker thresholds (Envoy's `circuit_breakers`), `u32::MAX` when unset.
#[derive(Debug)]
pub struct Limits {
    /// Requests in flight at once.
    pub max_requests: u32,
    /// Retries in flight at once (unless a retry budget replaces it).
    pub max_retries: u32,
    /// HTTP/1.1 requests in flight at once, each holding one upstream connection; more wait.
    pub max_connections: u32,
    /// Requests waiting for a connection at once; past it, 503 with `UO`.
    pub max_pending_requests: u32,
    /// Retries in flight as a share of requests in flight.
    pub retry_budget: Option<RetryBudget>,
}

impl Limits {
    /// No thresholds.
    pub const NONE: Limits = Limits {
        max_requests: u32::MAX,
        max_retries: u32::MAX,
        max_connections: u32::MAX,
        max_pending_requests: u32::MAX,
        retry_budget: None,
    };

    /// How many retries may be in flight while `requests` requests are.
    pub fn retries_allowed(&self, requests: u32) -> u32 {
        match &self.retry_budget {
            Some(budget) => {
                let share = (u64::from(requests) * u64::from(budget.per_million) / 1_000_000) as u32;
                share.max(budget.min_concurrency)
            }
            None => self.max_retries,
        }
    }
}

/// Envoy's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    /// The share of requests in flight that may be retries, in millionths.
    pub per_million: u32,
    /// The retries allowed however few requests are in flight.
    pub min_concurrency: u32,
}

/// An endpoint as compiled from the registry snapshot.
#[derive(Debug)]
pub struct EndpointSeed {
    /// IP address or host name.
    pub address: &'static str,
    /// Port.
    pub port: u16,
    /// Load-balancing weight; 0 takes no new traffic.
    pub weight: u32,
    /// Whether the registry says it may take traffic.
    pub routable: bool,
    /// `region/zone/subzone`, as far as known.
    pub locality: &'static str,
}

/// The outcome of routing one request: compiled tables give `Decision<'static>`; a route
/// override borrows from the override table it came from.
#[derive(Clone, Copy, Debug)]
pub enum Decision<'a> {
    /// No route matches: 404.
    NoRoute,
    /// Forward to a cluster.
    Forward(&'a Forward<'a>),
    /// Answer without an upstream.
    Answer(&'a Answer<'a>),
}

/// A forwarding route (one match alternative of it, when rewrites depend on the match).
/// The route's name and counts are always `'static`: compiled, or interned for overrides so
/// that a route's counts survive an update.
#[derive(Debug)]
pub struct Forward<'a> {
    /// The route's name, for logs and errors.
    pub route: &'static str,
    /// The route's counts.
    pub stats: &'static RouteStats,
    /// The destinations; weights sum to 100.
    pub destinations: &'a [WeightedCluster],
    /// Overall timeout, milliseconds; `None` uses the cluster's default.
    pub timeout_ms: Option<u64>,
    /// Path rewrite.
    pub path_rewrite: PathRewrite<'a>,
    /// Replacement authority.
    pub authority_rewrite: Option<&'a str>,
    /// Header operations on the request.
    pub request_headers: HeaderOps<'a>,
    /// Header operations on the response.
    pub response_headers: HeaderOps<'a>,
    /// Retries.
    pub retries: Retries<'a>,
    /// Injected faults.
    pub fault: Fault,
    /// The route's local rate limit.
    pub rate_limit: Option<&'a crate::ratelimit::RateLimit>,
    /// Where copies of a share of the requests go.
    pub mirror: Option<Mirror>,
}

/// Request mirroring: copies sent and forgotten, their host suffixed with `-shadow`.
#[derive(Clone, Copy, Debug)]
pub struct Mirror {
    /// The cluster copies go to.
    pub cluster: u32,
    /// The share of requests copied, in millionths.
    pub per_million: u32,
}

/// Faults injected into a route's requests (Envoy's fault filter): the delay first, then the
/// abort, each for a share of requests.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// Delay `(milliseconds, share in millionths)`.
    pub delay: Option<(u64, u32)>,
    /// Abort `(answer, share in millionths)`.
    pub abort: Option<(Abort, u32)>,
}

impl Fault {
    /// No fault.
    pub const NONE: Fault = Fault { delay: None, abort: None };
}

/// How an injected abort answers.
#[derive(Clone, Copy, Debug)]
pub enum Abort {
    /// This HTTP status.
    Http(u16),
    /// This gRPC status, in a trailers-only answer.
    Grpc(u32),
}

/// When a forwarded request is tried again (Envoy's retry policy).
#[derive(Debug)]
pub struct Retries<'a> {
    /// Tries after the first; 0 disables retries.
    pub attempts: u32,
    /// Each try's timeout, milliseconds; `None`: only the route's overall timeout.
    pub per_try_timeout_ms: Option<u64>,
    /// The conditions, as [`RetryOn`] bits.
    pub on: u32,
    /// The statuses retried under [`RetryOn::RETRIABLE_STATUS_CODES`].
    pub statuses: &'a [u16],
    /// Whether a retry prefers an endpoint not tried yet.
    pub avoid_previous_hosts: bool,
    /// Whether a request of a non-idempotent method (POST, PATCH, gRPC calls) is tried again
    /// after its body was sent.
    pub any_method: bool,
}

impl Retries<'_> {
    /// No retries.
    pub const NONE: Retries<'static> =
        Retries { attempts: 0, per_try_timeout_ms: None, on: 0, statuses: &[], avoid_previous_hosts: false, any_method: false };
}

/// Retry conditions, Envoy's `retry_on` values, as bits of [`Retries::on`].
#[derive(Debug)]
pub struct RetryOn;

impl RetryOn {
    /// The bit of an Envoy `retry_on` name the sidecar can observe.
    pub fn from_name(name: &str) -> Option<u32> {
        Some(match name {
            "5xx" => RetryOn::FIVE_XX,
            "gateway-error" => RetryOn::GATEWAY_ERROR,
            "reset" => RetryOn::RESET,
            "reset-before-request" => RetryOn::RESET_BEFORE_REQUEST,
            "connect-failure" => RetryOn::CONNECT_FAILURE,
            "refused-stream" => RetryOn::REFUSED_STREAM,
            "retriable-4xx" => RetryOn::RETRIABLE_4XX,
            "retriable-status-codes" => RetryOn::RETRIABLE_STATUS_CODES,
            "cancelled" => RetryOn::CANCELLED,
            "deadline-exceeded" => RetryOn::DEADLINE_EXCEEDED,
            "internal" => RetryOn::INTERNAL,
            "resource-exhausted" => RetryOn::RESOURCE_EXHAUSTED,
            "unavailable" => RetryOn::UNAVAILABLE,
            _ => return None,
        })
    }

    /// Any 5xx answer, a reset, a failed connection or a try's timeout.
    pub const FIVE_XX: u32 = 1;
    /// 502, 503 and 504 answers, a reset, a failed connection or a try's timeout.
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    /// The upstream reset or closed the connection before answering, or a try timed out.
    pub const RESET: u32 = 1 << 2;
    /// A reset before any of the request was sent.
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 3;
    /// The connection could not be made.
    pub const CONNECT_FAILURE: u32 = 1 << 4;
    /// An HTTP/2 upstream refused the stream (nothing was processed).
    pub const REFUSED_STREAM: u32 = 1 << 5;
    /// 409.
    pub const RETRIABLE_4XX: u32 = 1 << 6;
    /// The statuses in [`Retries::statuses`].
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 7;
    /// gRPC CANCELLED (1) in the response headers.
    pub const CANCELLED: u32 = 1 << 8;
    /// gRPC DEADLINE_EXCEEDED (4).
    pub const DEADLINE_EXCEEDED: u32 = 1 << 9;
    /// gRPC INTERNAL (13).
    pub const INTERNAL: u32 = 1 << 10;
    /// gRPC RESOURCE_EXHAUSTED (8).
    pub const RESOURCE_EXHAUSTED: u32 = 1 << 11;
    /// gRPC UNAVAILABLE (14).
    pub const UNAVAILABLE: u32 = 1 << 12;
}

/// One destination of a forwarding route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    /// Index into [`SidecarSpec::clusters`].
    pub cluster: u32,
    /// Share in percent.
    pub weight: u32,
}

/// How a forwarded request's path changes.
#[derive(Clone, Copy, Debug)]
pub enum PathRewrite<'a> {
    /// Unchanged.
    None,
    /// The matched prefix is replaced.
    Prefix {
        /// The prefix the route matched.
        matched: &'a str,
        /// What replaces it.
        with: &'a str,
    },
    /// The whole path is replaced (a rewrite on an exact or regex match).
    Whole(&'a str),
}

/// Header operations, applied as Envoy applies them: removals, then replacements, then additions.
#[derive(Debug)]
pub struct HeaderOps<'a> {
    /// Replaced or inserted.
    pub set: &'a [(&'a str, &'a str)],
    /// Appended.
    pub add: &'a [(&'a str, &'a str)],
    /// Removed.
    pub remove: &'a [&'a str],
}

impl HeaderOps<'_> {
    /// No operations.
    pub const NONE: HeaderOps<'static> = HeaderOps { set: &[], add: &[], remove: &[] };
}

/// A local answer.
#[derive(Debug)]
pub enum Answer<'a> {
    /// A redirect.
    Redirect {
        /// New scheme.
        scheme: Option<&'a str>,
        /// New authority (host, maybe with port).
        authority: Option<&'a str>,
        /// New port.
        port: Option<u16>,
        /// New path.
        path: Option<&'a str>,
        /// 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// A direct response.
    Direct {
        /// Status code.
        status: u16,
        /// Body.
        body: &'a str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_budget_scales_with_the_requests_in_flight_above_its_floor() {
        let limits =
            Limits { retry_budget: Some(RetryBudget { per_million: 200_000, min_concurrency: 3 }), max_retries: 1, ..Limits::NONE };
        assert_eq!(limits.retries_allowed(0), 3);
        assert_eq!(limits.retries_allowed(10), 3);
        assert_eq!(limits.retries_allowed(100), 20);
        // Without a budget, max_retries stands.
        assert_eq!(Limits { max_retries: 1, ..Limits::NONE }.retries_allowed(100), 1);
    }
}
