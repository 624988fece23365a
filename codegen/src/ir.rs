//! The IR: one mesh, fully resolved, the contract between the compiler and every emitter.
//!
//! The compiler's `lower` stage is the only producer; the Rust emitter, the xDS emitter
//! and `meshc explain` are its consumers.
//! Invariants that consumers may rely on:
//! - every name is resolved: short names are expanded, defaults are filled in, and
//!   subsets are resolved to the instances they select;
//! - ids are dense indices into the matching vector of [`Mesh`] (`services[id.0]` has `id`);
//! - every list is sorted (by name, host or key) unless its order is meaningful, and the
//!   few ordered lists (routes, route matches, header operations) say so;
//! - nothing depends on the order of the input files or on the machine that compiled it:
//!   there are no timestamps, no absolute paths and no meshc version.
//!
//! The IR carries no spans; provenance is by name (a route's name and its file).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the IR's shape, bumped when a consumer would need to change.
pub const IR_VERSION: u32 = 1;

/// A whole mesh after checking and lowering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mesh {
    /// [`IR_VERSION`] at the time this IR was produced.
    pub ir_version: u32,
    /// The mesh name from `mesh.toml`.
    pub name: String,
    /// The namespace that short names resolve in.
    pub namespace: String,
    /// The DNS suffix of service hosts, `svc.cluster.local` by default.
    pub cluster_domain: String,
    /// The trust domain of workload identities, `cluster.local` by default.
    pub trust_domain: String,
    /// The spec files that were compiled, sorted by path.
    pub specs: Vec<SpecFile>,
    /// The registry snapshots that were merged, sorted by name.
    pub registries: Vec<Registry>,
    /// Every service, sorted by host.
    pub services: Vec<Service>,
    /// Every instance of every service, sorted by service, service port, address and port.
    pub instances: Vec<Instance>,
    /// Every upstream cluster (service, port, subset), sorted by name.
    pub clusters: Vec<Cluster>,
    /// Every route table, sorted by name.
    pub route_tables: Vec<RouteTable>,
    /// Every workload, sorted by name.
    pub workloads: Vec<Workload>,
    /// Every authorization policy, sorted by name.
    pub authz_policies: Vec<AuthzPolicy>,
    /// The mesh-wide telemetry settings; each workload carries its resolved copy.
    pub telemetry: Telemetry,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The index of this id in its vector of [`Mesh`].
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id_type!(
    /// Index into [`Mesh::services`].
    ServiceId
);
id_type!(
    /// Index into [`Mesh::instances`].
    InstanceId
);
id_type!(
    /// Index into [`Mesh::clusters`].
    ClusterId
);
id_type!(
    /// Index into [`Mesh::route_tables`].
    RouteTableId
);
id_type!(
    /// Index into [`Mesh::workloads`].
    WorkloadId
);
id_type!(
    /// Index into [`Mesh::authz_policies`].
    AuthzPolicyId
);

/// A spec file that contributed to the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecFile {
    /// Path relative to the mesh directory, with `/` separators.
    pub path: String,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
}

/// A registry snapshot that contributed services and instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// The registry's name from `mesh.toml`; instances name it as their origin.
    pub name: String,
    /// The snapshot format.
    pub kind: RegistryKind,
    /// Path of the snapshot relative to the mesh directory.
    pub path: String,
    /// Merge precedence: when two registries list the same instance, the higher wins.
    pub priority: i64,
    /// SHA-256 of the snapshot's bytes, so a build names exactly the state it compiled.
    pub sha256: String,
    /// The registry's own version of the snapshot when it records one
    /// (SOFARegistry `version`, Kubernetes `resourceVersion`, Consul `ModifyIndex`).
    pub version: Option<String>,
}

/// The formats of registry snapshots meshc reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryKind {
    /// meshc's own TOML format.
    Native,
    /// SOFARegistry push objects (JSON).
    SofaRegistry,
    /// A dump of SOFARPC's ZooKeeper znodes.
    SofaRpcZookeeper,
    /// A dump of Dubbo 2's ZooKeeper znodes.
    DubboZookeeper,
    /// Nacos `/nacos/v1/ns/instance/list` responses (JSON).
    Nacos,
    /// Consul `/v1/health/service/<name>` responses (JSON).
    Consul,
    /// Kubernetes EndpointSlice, Pod and Service objects (YAML or JSON).
    Kubernetes,
}

impl RegistryKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [RegistryKind; 7] = [
        RegistryKind::Native,
        RegistryKind::SofaRegistry,
        RegistryKind::SofaRpcZookeeper,
        RegistryKind::DubboZookeeper,
        RegistryKind::Nacos,
        RegistryKind::Consul,
        RegistryKind::Kubernetes,
    ];

    /// The name used in `mesh.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Native => "native",
            RegistryKind::SofaRegistry => "sofa-registry",
            RegistryKind::SofaRpcZookeeper => "sofa-rpc-zookeeper",
            RegistryKind::DubboZookeeper => "dubbo-zookeeper",
            RegistryKind::Nacos => "nacos",
            RegistryKind::Consul => "consul",
            RegistryKind::Kubernetes => "kubernetes",
        }
    }
}

/// An application protocol, as declared by a spec or a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 when the client speaks it).
    Http,
    /// HTTP/2, prior knowledge or h2c.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// SOFA Bolt v1 or v2.
    Bolt,
    /// Dubbo 2.
    Dubbo,
    /// Opaque TCP.
    Tcp,
    /// Not declared: the sidecar sniffs the first bytes.
    Auto,
}

impl Protocol {
    /// Every protocol, in the order the documentation lists them.
    pub const ALL: [Protocol; 7] =
        [Protocol::Http, Protocol::Http2, Protocol::Grpc, Protocol::Bolt, Protocol::Dubbo, Protocol::Tcp, Protocol::Auto];

    /// The protocol's name in specs and registries.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Bolt => "bolt",
            Protocol::Dubbo => "dubbo",
            Protocol::Tcp => "tcp",
            Protocol::Auto => "auto",
        }
    }

    /// Whether requests on this protocol are HTTP requests (routed by host, path, headers).
    /// `auto` counts as HTTP: Istio sniffs it and routes HTTP when it finds HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Auto)
    }

    /// Whether this is an RPC protocol routed by interface, version, group and method.
    pub fn is_rpc(self) -> bool {
        matches!(self, Protocol::Bolt | Protocol::Dubbo)
    }
}

/// A service: a name that clients call and the instances that serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// This service's index.
    pub id: ServiceId,
    /// The registry name: a Kubernetes-style name (`reviews`) or an RPC key
    /// (`com.ex.OrderFacade:1.0`, `gray/com.ex.DemoService:1.0.0`).
    pub name: String,
    /// The namespace the service lives in.
    pub namespace: String,
    /// The fully qualified host (`reviews.default.svc.cluster.local`); for RPC services, the key.
    pub host: String,
    /// The protocol of every port when they agree, otherwise `auto`.
    pub protocol: Protocol,
    /// The service ports, sorted by number; never empty.
    pub ports: Vec<ServicePort>,
    /// The RPC identity, for Bolt and Dubbo services.
    pub rpc: Option<RpcKey>,
    /// The methods the registry lists for this service (Dubbo `methods=`), sorted; `None` when unknown.
    pub methods: Option<Vec<String>>,
    /// The registries that list this service, sorted.
    pub registries: Vec<String>,
    /// The spec file that declares this service, if any.
    pub declared_in: Option<String>,
    /// Every instance of the service, sorted like [`Mesh::instances`].
    pub instances: Vec<InstanceId>,
    /// The declared subsets, sorted by name.
    pub subsets: Vec<Subset>,
    /// The service-level traffic policy, with defaults filled in.
    pub policy: TrafficPolicy,
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port number clients address.
    pub number: u16,
    /// The port's name (from the registry or the spec); empty when neither names it.
    pub name: String,
    /// The port's protocol after spec and registry are reconciled.
    pub protocol: Protocol,
    /// The port the workload's application listens on (Kubernetes `targetPort`).
    pub target_port: u16,
}

/// The RPC identity of a Bolt or Dubbo service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RpcKey {
    /// The interface (`com.ex.OrderFacade`).
    pub interface: String,
    /// The version, when the service has one.
    pub version: Option<String>,
    /// The Dubbo group, when the service has one.
    pub group: Option<String>,
    /// The SOFA `uniqueId`, when the service has one.
    pub unique_id: Option<String>,
}

/// A named subset of a service's instances, selected by labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subset {
    /// The subset's name.
    pub name: String,
    /// The labels an instance must carry (all of them) to belong to the subset.
    pub labels: BTreeMap<String, String>,
    /// The instances the labels select.
    pub instances: Vec<InstanceId>,
    /// The subset's traffic policy: the service's, overridden field by field by the subset's.
    pub policy: TrafficPolicy,
}

/// One network endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// This instance's index.
    pub id: InstanceId,
    /// The service it serves.
    pub service: ServiceId,
    /// The IP address or host name.
    pub address: String,
    /// The port the instance listens on.
    pub port: u16,
    /// The service port this instance serves (see [`ServicePort::number`]).
    pub service_port: u16,
    /// Load-balancing weight; 100 is a registry's default weight, and 0 means no new traffic.
    pub weight: u32,
    /// The instance's labels, from the registry (Pod labels, URL parameters, metadata).
    pub labels: BTreeMap<String, String>,
    /// Where the instance runs.
    pub locality: Locality,
    /// The registry's view of the instance's health.
    pub health: Health,
    /// The registry that listed it (the winner when several did).
    pub origin: String,
    /// Other registries that listed the same address and port, sorted.
    pub also_in: Vec<String>,
}

/// Where an instance runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Locality {
    /// Region (Consul datacenter, a native `locality`'s first part).
    pub region: Option<String>,
    /// Zone (Kubernetes `zone`, SOFARegistry zone, Nacos cluster).
    pub zone: Option<String>,
    /// Sub-zone.
    pub subzone: Option<String>,
}

impl Locality {
    /// `region/zone/subzone`, empty parts for unknown ones and trailing ones left out
    /// (`us-east-1/us-east-1b`, `/zone-a`, or empty when nothing is known): the form
    /// sidecars compare with their own `--locality`.
    pub fn path(&self) -> String {
        let parts = [&self.region, &self.zone, &self.subzone].map(|it| it.as_deref().unwrap_or(""));
        let used = parts.iter().rposition(|it| !it.is_empty()).map_or(0, |it| it + 1);
        parts[..used].join("/")
    }
}

/// A registry's view of an instance's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Ready for traffic.
    Healthy,
    /// The registry does not say; treated as healthy, as Envoy treats `UNKNOWN`.
    Unknown,
    /// Shutting down or administratively disabled: no new requests.
    Draining,
    /// Failing its checks: no traffic.
    Unhealthy,
}

impl Health {
    /// Whether a load balancer may send new requests to an instance in this state.
    pub fn routable(self) -> bool {
        matches!(self, Health::Healthy | Health::Unknown)
    }
}

/// How requests to a cluster are balanced, limited and protected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// The load-balancing algorithm.
    pub load_balancer: LoadBalancer,
    /// Timeout for establishing an upstream connection, in milliseconds (Istio's default: 10 s).
    pub connect_timeout_ms: u64,
    /// Default request timeout for routes to this cluster that set none; `None` means no timeout.
    pub request_timeout_ms: Option<u64>,
    /// Slow start (Istio's `warmupDurationSecs`): an endpoint new to the cluster, or back from
    /// failed health checks or an ejection, takes a share of traffic growing over this many
    /// milliseconds; round robin and least request only.
    pub warmup_ms: Option<u64>,
    /// Connection-pool limits (circuit breakers).
    pub limits: ConnectionLimits,
    /// Passive outlier detection, if enabled.
    pub outlier_detection: Option<OutlierDetection>,
    /// Active health checking, if enabled.
    pub health_check: Option<HealthCheck>,
    /// TLS towards the upstream.
    pub tls: Tls,
}

/// A load-balancing algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LoadBalancer {
    /// Round robin over routable endpoints, by weight.
    RoundRobin,
    /// Uniformly random choice, by weight.
    Random,
    /// Power of two choices, preferring fewer active requests (Istio's default).
    LeastRequest,
    /// Consistent hashing on a ring.
    RingHash {
        /// What the hash is computed from.
        hash: HashOn,
        /// Minimum number of ring entries.
        min_ring_size: u64,
    },
    /// Maglev consistent hashing.
    Maglev {
        /// What the hash is computed from.
        hash: HashOn,
        /// The lookup table size (a prime).
        table_size: u64,
    },
}

/// The request property a consistent hash uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HashOn {
    /// A request header, by lower-case name.
    Header {
        /// The header name.
        name: String,
    },
    /// An HTTP cookie; generated with `ttl_ms` when absent and a TTL is set.
    Cookie {
        /// The cookie name.
        name: String,
        /// The cookie path when one is generated.
        path: Option<String>,
        /// The lifetime of a generated cookie, in milliseconds.
        ttl_ms: Option<u64>,
    },
    /// The downstream source IP address.
    SourceIp,
    /// A query parameter.
    QueryParameter {
        /// The parameter name.
        name: String,
    },
}

/// Connection-pool limits; `None` means unlimited (Istio's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionLimits {
    /// Maximum upstream connections.
    pub max_connections: Option<u32>,
    /// Maximum requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Maximum concurrent requests.
    pub max_requests: Option<u32>,
    /// Maximum concurrent retries.
    pub max_retries: Option<u32>,
    /// Maximum requests on one connection before it is closed.
    pub max_requests_per_connection: Option<u32>,
    /// Envoy's retry budget: retries in flight may be this share of the requests in flight
    /// (in millionths), and at least `min_retry_concurrency`; when set, it replaces
    /// `max_retries`.
    pub retry_budget: Option<PerMillion>,
    /// The retries a retry budget always allows (Envoy's default: 3).
    pub min_retry_concurrency: Option<u32>,
}

/// Passive outlier detection (Istio `outlierDetection`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses before ejection; `None` disables this detector.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway errors (502, 503, 504, connection failures) before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// Time between ejection sweeps, in milliseconds.
    pub interval_ms: u64,
    /// Base ejection time, multiplied by the number of ejections, in milliseconds.
    pub base_ejection_time_ms: u64,
    /// Maximum share of endpoints that may be ejected, in percent.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejection stops, in percent.
    pub min_health_percent: u32,
}

/// Active health checking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What a probe does.
    pub probe: HealthProbe,
    /// Time between probes, in milliseconds.
    pub interval_ms: u64,
    /// Probe timeout, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive successes before an endpoint is healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures before an endpoint is unhealthy.
    pub unhealthy_threshold: u32,
}

/// The kind of active health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum HealthProbe {
    /// An HTTP GET of `path`; a 200 answer is healthy (Envoy's default expected status).
    Http {
        /// The path to request.
        path: String,
    },
    /// A TCP connect.
    Tcp,
}

/// TLS towards an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// The TLS mode.
    pub mode: TlsMode,
    /// The SNI to send, when set.
    pub sni: Option<String>,
}

/// Istio's `ClientTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plaintext.
    Disable,
    /// TLS, server certificate verified.
    Simple,
    /// TLS with a client certificate.
    Mutual,
    /// Mutual TLS with mesh-issued SPIFFE certificates.
    IstioMutual,
}

/// An upstream cluster: one port of one service, optionally narrowed to a subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// This cluster's index.
    pub id: ClusterId,
    /// Istio's name: `outbound|<port>|<subset>|<host>`.
    pub name: String,
    /// The service.
    pub service: ServiceId,
    /// The service port.
    pub port: u16,
    /// The subset name, when narrowed.
    pub subset: Option<String>,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The instances serving this port and matching the subset (routable or not).
    pub endpoints: Vec<InstanceId>,
    /// The effective traffic policy (subset over service).
    pub policy: TrafficPolicy,
    /// With `istio_mutual`, the identities the endpoints may prove (the principals of the
    /// workloads serving the service, sorted); empty: any identity of the trust domain.
    pub peer_principals: Vec<String>,
}

/// The ordered routes for one host and port (HTTP), one service port (TCP) or one RPC interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// This table's index.
    pub id: RouteTableId,
    /// `<host>:<port>` for HTTP and TCP tables, `<protocol>:<interface>` for RPC tables.
    pub name: String,
    /// What the table is keyed by.
    pub kind: RouteTableKind,
    /// The routes, in spec order: the first that matches wins.
    pub routes: Vec<Route>,
    /// The spec file whose `routes` block produced the table; `None` for a default table.
    pub declared_in: Option<String>,
}

/// What a route table is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouteTableKind {
    /// HTTP requests whose Host (or `:authority`) is one of the domains.
    Http {
        /// The service the host names.
        service: ServiceId,
        /// The service port.
        port: u16,
        /// Host forms that select this table from any namespace, sorted.
        domains: Vec<String>,
        /// Short forms (`reviews`, `reviews:9080`) that select it only for workloads in the
        /// service's namespace, sorted.
        local_domains: Vec<String>,
    },
    /// TCP connections to a service port.
    Tcp {
        /// The service.
        service: ServiceId,
        /// The service port.
        port: u16,
    },
    /// RPC requests for one interface, every version and group.
    Rpc {
        /// Bolt or Dubbo.
        protocol: Protocol,
        /// The interface.
        interface: String,
        /// The services that implement the interface, sorted.
        services: Vec<ServiceId>,
    },
}

/// One route: the alternatives that select it and what it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The route's name (`default` for a generated default route).
    pub name: String,
    /// Alternatives, ORed, in spec order; an empty list matches every request.
    pub matches: Vec<Match>,
    /// What happens to a matching request.
    pub action: Action,
    /// Overall request timeout, in milliseconds; `None` means the cluster's, or none.
    pub timeout_ms: Option<u64>,
    /// Retry policy, with Istio's implicit default filled in for HTTP routes.
    pub retries: RetryPolicy,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Request mirroring.
    pub mirror: Option<Mirror>,
    /// Header operations on the request, applied before it is forwarded.
    pub request_headers: HeaderOps,
    /// Header operations on the response.
    pub response_headers: HeaderOps,
    /// A local rate limit for requests taking this route.
    pub rate_limit: Option<RateLimit>,
}

/// One alternative: every present condition must hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// HTTP Host / `:authority`, port included when the client sent one.
    pub authority: Option<StringMatch>,
    /// HTTP path, without the query string.
    pub path: Option<StringMatch>,
    /// The HTTP method, or the RPC method for RPC tables.
    pub method: Option<StringMatch>,
    /// Request headers (HTTP), Bolt header keys or Dubbo attachments, all of which must hold.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters, all of which must hold.
    pub query: Vec<QueryMatch>,
    /// RPC: the Bolt service name (`interface:version[:uniqueId]`) or the Dubbo interface.
    pub service: Option<StringMatch>,
    /// RPC: the service version.
    pub version: Option<StringMatch>,
    /// RPC: the Dubbo group.
    pub group: Option<StringMatch>,
    /// The service port the request was sent to. Lowering keeps an alternative only in the
    /// route tables of its port, so within a table this is either absent or the table's port.
    pub port: Option<u16>,
}

impl Match {
    /// Whether this alternative has no condition and so matches every request.
    pub fn is_catch_all(&self) -> bool {
        *self == Match::default()
    }
}

/// A string condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StringMatch {
    /// How the value is compared.
    pub kind: StringMatchKind,
    /// The value; for `regex`, RE2 syntax that must match the whole input.
    pub value: String,
}

/// How a [`StringMatch`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatchKind {
    /// Equal.
    Exact,
    /// Starts with.
    Prefix,
    /// Full match of an RE2 regular expression.
    Regex,
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// The header name, lower-case.
    pub name: String,
    /// The condition on its value.
    pub kind: PresenceMatch,
}

/// A query-parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueryMatch {
    /// The parameter name.
    pub name: String,
    /// The condition on its value.
    pub kind: PresenceMatch,
}

/// A condition on a value that may be absent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "match")]
pub enum PresenceMatch {
    /// Present, with a value that matches.
    Value(StringMatch),
    /// Present, any value.
    Present,
    /// Absent.
    Absent,
}

/// What a route does with a matching request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Forward to one of several clusters, by weight.
    Forward {
        /// The destinations; weights sum to 100.
        destinations: Vec<WeightedCluster>,
        /// Rewrites applied before forwarding.
        rewrite: Option<Rewrite>,
    },
    /// Answer with a redirect.
    Redirect {
        /// The new scheme, if changed.
        scheme: Option<String>,
        /// The new authority, if changed.
        authority: Option<String>,
        /// The new port, if changed.
        port: Option<u16>,
        /// The new path, if changed.
        path: Option<String>,
        /// The status code: 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// Answer directly.
    DirectResponse {
        /// The status code.
        status: u16,
        /// The body, if any.
        body: Option<String>,
    },
}

/// One destination of a forwarding route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedCluster {
    /// The cluster.
    pub cluster: ClusterId,
    /// The share of requests, in percent; the weights of a route sum to 100.
    pub weight: u32,
}

/// Rewrites applied to a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for an exact match).
    pub prefix: Option<String>,
    /// Replaces the Host / `:authority`.
    pub authority: Option<String>,
}

/// How a failed request is retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 disables retries.
    pub attempts: u32,
    /// Timeout of each try, in milliseconds; `None` means the route timeout.
    pub per_try_timeout_ms: Option<u64>,
    /// Envoy retry-on conditions (`5xx`, `gateway-error`, `connect-failure`, ...), sorted.
    pub retry_on: Vec<String>,
    /// Status codes retried under `retriable-status-codes`, sorted.
    pub retriable_status_codes: Vec<u16>,
    /// Whether a retry avoids the hosts already tried (Envoy's `previous_hosts` predicate,
    /// which Istio sets on every retry policy).
    pub avoid_previous_hosts: bool,
    /// Whether requests of any method are retried after their body was sent (POST, PATCH,
    /// gRPC calls); otherwise only idempotent methods are, or a try that failed before it
    /// sent any of its body.
    pub any_method: bool,
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            per_try_timeout_ms: None,
            retry_on: Vec::new(),
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            any_method: false,
        }
    }
}

/// A fraction, in millionths (`1_000_000` is 100%).
pub type PerMillion = u32;

/// Fault injection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Delay a share of requests.
    pub delay: Option<FaultDelay>,
    /// Abort a share of requests.
    pub abort: Option<FaultAbort>,
}

/// A fixed delay injected before forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultDelay {
    /// The delay, in milliseconds.
    pub delay_ms: u64,
    /// The share of requests delayed.
    pub per_million: PerMillion,
}

/// An injected error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// The share of requests aborted.
    pub per_million: PerMillion,
}

/// The status an aborted request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "code")]
pub enum AbortStatus {
    /// An HTTP status code.
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
}

/// Request mirroring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// Where copies go; their Host gets a `-shadow` suffix.
    pub cluster: ClusterId,
    /// The share of requests mirrored.
    pub per_million: PerMillion,
}

/// Header operations, applied as Envoy applies them: removals, then replacements, then additions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderOps {
    /// Headers replaced (or added when absent), in spec order.
    pub set: Vec<(String, String)>,
    /// Headers appended, in spec order.
    pub add: Vec<(String, String)>,
    /// Headers removed, in spec order.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A local token-bucket rate limit (Envoy `local_ratelimit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Bucket capacity (the burst).
    pub max_tokens: u32,
    /// Tokens added every `fill_interval_ms`.
    pub tokens_per_fill: u32,
    /// The refill period, in milliseconds.
    pub fill_interval_ms: u64,
    /// One bucket per source IP address instead of one shared bucket.
    pub per_source: bool,
}

/// The unit `meshc build` specialises a sidecar for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// This workload's index.
    pub id: WorkloadId,
    /// The workload's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its identity as authorization rules see it: `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principal: String,
    /// The ports it serves, sorted by port.
    pub inbound: Vec<InboundPort>,
    /// The route tables it may use, sorted by id.
    pub outbound: Vec<RouteTableId>,
    /// The clusters those route tables reach, sorted by id.
    pub clusters: Vec<ClusterId>,
    /// The authorization policies that apply to its inbound traffic, sorted by id.
    pub authz: Vec<AuthzPolicyId>,
    /// A local rate limit on all its inbound requests.
    pub rate_limit: Option<RateLimit>,
    /// Its telemetry settings (the mesh's, overridden by the workload's).
    pub telemetry: Telemetry,
    /// Where its application sends Bolt and Dubbo requests.
    pub rpc_listener: RpcListener,
    /// The spec file that declares it; `None` for the implicit `default` workload.
    pub declared_in: Option<String>,
}

/// Where a workload's application sends its Bolt and Dubbo requests (a contract on listener
/// names, like every listener).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcListener {
    /// `outbound-bolt` and `outbound-dubbo`: one listener per RPC protocol the workload calls.
    #[default]
    PerProtocol,
    /// `outbound-rpc`: one listener that tells Bolt from Dubbo by a connection's first byte.
    Auto,
}

/// One port a workload serves, keyed as Istio keys inbound listeners: by the port the
/// application listens on (the services' target port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundPort {
    /// The application's port (the listener is named `inbound-<port>`).
    pub port: u16,
    /// The protocol of the port.
    pub protocol: Protocol,
    /// The services served on this port, sorted.
    pub services: Vec<ServiceId>,
    /// The service ports that reach this port, sorted.
    pub service_ports: Vec<u16>,
    /// What the port accepts from callers.
    pub mtls: PeerMtls,
}

/// What an inbound port accepts, as Istio's PeerAuthentication modes say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMtls {
    /// Plaintext only.
    Disable,
    /// Mutual TLS or plaintext (Istio's default).
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
}

/// An authorization policy with Istio's semantics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzPolicy {
    /// This policy's index.
    pub id: AuthzPolicyId,
    /// The policy's name.
    pub name: String,
    /// What a matching rule does.
    pub action: AuthzAction,
    /// The workloads it applies to, sorted.
    pub workloads: Vec<WorkloadId>,
    /// The rules, ORed; an ALLOW policy with none denies every request.
    pub rules: Vec<AuthzRule>,
    /// The spec file that declares it.
    pub declared_in: String,
}

/// Istio's AuthorizationPolicy actions (CUSTOM is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    /// Allow matching requests; once any ALLOW policy applies, others are denied.
    Allow,
    /// Deny matching requests; evaluated before ALLOW.
    Deny,
    /// Log matching requests; does not affect the verdict.
    Audit,
}

/// One rule: `from` AND `to` AND every `when`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzRule {
    /// Sources, ORed; empty matches any source.
    pub from: Vec<AuthzSource>,
    /// Operations, ORed; empty matches any operation.
    pub to: Vec<AuthzOperation>,
    /// Conditions, ANDed.
    pub when: Vec<AuthzCondition>,
}

/// A source: every non-empty field must hold (values within a field are ORed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzSource {
    /// Peer identities (`cluster.local/ns/default/sa/reviews`).
    pub principals: Vec<Pattern>,
    /// Peer identities that must not match.
    pub not_principals: Vec<Pattern>,
    /// Peer namespaces.
    pub namespaces: Vec<Pattern>,
    /// Peer namespaces that must not match.
    pub not_namespaces: Vec<Pattern>,
    /// Peer address ranges.
    pub ip_blocks: Vec<IpBlock>,
    /// Peer address ranges that must not match.
    pub not_ip_blocks: Vec<IpBlock>,
    /// Original client address ranges (`X-Forwarded-For` or the proxy protocol; the peer
    /// address when neither is present).
    pub remote_ip_blocks: Vec<IpBlock>,
    /// Original client address ranges that must not match.
    pub not_remote_ip_blocks: Vec<IpBlock>,
}

/// An operation: every non-empty field must hold (values within a field are ORed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzOperation {
    /// Hosts, case-insensitive.
    pub hosts: Vec<Pattern>,
    /// Hosts that must not match.
    pub not_hosts: Vec<Pattern>,
    /// HTTP methods, or RPC methods on Bolt and Dubbo ports.
    pub methods: Vec<Pattern>,
    /// Methods that must not match.
    pub not_methods: Vec<Pattern>,
    /// HTTP paths.
    pub paths: Vec<Pattern>,
    /// Paths that must not match.
    pub not_paths: Vec<Pattern>,
    /// Destination ports: the port the serving application listens on (the target port).
    pub ports: Vec<u16>,
    /// Destination ports that must not match.
    pub not_ports: Vec<u16>,
}

/// A `when` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzCondition {
    /// The attribute tested.
    pub key: ConditionKey,
    /// The attribute must match one of these (when non-empty).
    pub values: Vec<Pattern>,
    /// The attribute must match none of these.
    pub not_values: Vec<Pattern>,
}

/// The attributes a `when` condition can test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum ConditionKey {
    /// `request.headers[<name>]`, lower-case.
    RequestHeader(String),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    ConnectionSni,
}

/// Istio's string pattern: exact, `prefix*`, `*suffix` or `*`; paths may also be templates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Pattern {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Anything, present.
    Any,
    /// A path template of `/`-separated segments, where `{*}` is one segment and `{**}`
    /// (last only) is any remainder.
    Template(Vec<String>),
}

/// An address range in CIDR form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpBlock {
    /// The network address, canonical (host bits cleared).
    pub address: std::net::IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl IpBlock {
    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address, clearing the host bits as Envoy
    /// does; the error says what is wrong.
    pub fn parse(text: &str) -> Result<IpBlock, String> {
        use std::net::IpAddr;
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("`{address}` is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(prefix) => {
                prefix.parse::<u8>().ok().filter(|it| *it <= max).ok_or_else(|| format!("the prefix length must be 0 to {max}"))?
            }
            None => max,
        };
        let address = match address {
            IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) & u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)).into()),
            IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) & u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0)).into()),
        };
        Ok(IpBlock { address, prefix_len })
    }

    /// The block's mask, IPv4 in the low 32 bits.
    pub fn mask(&self) -> u128 {
        match self.address {
            std::net::IpAddr::V4(_) => u128::from(u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0)),
            std::net::IpAddr::V6(_) => u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0),
        }
    }
}

/// Access logging, metric labels, request ids and trace context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Whether requests are logged.
    pub access_log: bool,
    /// How each log line is written.
    pub access_log_format: AccessLogFormat,
    /// Extra labels on every request metric, sorted by name.
    pub metric_labels: Vec<MetricLabel>,
    /// Whether the sidecar gives a request without `x-request-id` one, outbound and inbound
    /// (Envoy's `generate_request_id`).
    pub request_id: bool,
    /// Whether the sidecar starts a trace for a request without trace context and adds its
    /// span to one that has it, outbound and inbound; off, trace headers pass untouched.
    pub tracing: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { access_log: true, access_log_format: AccessLogFormat::Json, metric_labels: Vec::new(), request_id: true, tracing: true }
    }
}

/// The format of an access-log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "format")]
pub enum AccessLogFormat {
    /// One JSON object per line with the standard fields.
    Json,
    /// A text line from an Envoy-style format string (`%REQ(:PATH)%`).
    Text(String),
}

/// The request attributes a metric label may take besides `request.headers[<name>]`, with the
/// runtime's `MetricAttribute` each becomes: the checker's list and the emitter's, in one place.
pub const METRIC_ATTRIBUTES: [(&str, &str); 12] = [
    ("request.path", "RequestPath"),
    ("request.method", "RequestMethod"),
    ("request.host", "RequestHost"),
    ("request.protocol", "RequestProtocol"),
    ("response.code", "ResponseCode"),
    ("source.principal", "SourcePrincipal"),
    ("source.namespace", "SourceNamespace"),
    ("source.workload", "SourceWorkload"),
    ("destination.service", "DestinationService"),
    ("destination.port", "DestinationPort"),
    ("rpc.service", "RpcService"),
    ("rpc.method", "RpcMethod"),
];

/// An extra label on request metrics.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricLabel {
    /// The label name.
    pub name: String,
    /// The request attribute it takes its value from (`request.headers[x-user]`, `request.path`).
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_block_contains_respects_the_prefix() {
        let block = IpBlock { address: "10.1.0.0".parse().unwrap(), prefix_len: 16 };
        assert!(block.contains("10.1.255.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(!block.contains("::1".parse().unwrap()));
        let all = IpBlock { address: "0.0.0.0".parse().unwrap(), prefix_len: 0 };
        assert!(all.contains("192.168.1.1".parse().unwrap()));
        let one = IpBlock { address: "fd00::1".parse().unwrap(), prefix_len: 128 };
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
    }

    #[test]
    fn ids_serialise_as_bare_numbers() {
        let json = serde_json::to_string(&WeightedCluster { cluster: ClusterId(3), weight: 90 }).unwrap();
        assert_eq!(json, r#"{"cluster":3,"weight":90}"#);
    }
}
