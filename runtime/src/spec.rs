//! The compiled configuration a generated sidecar hands to the runtime: plain `static` data
//! and function pointers, with no parsing and no lookups by spec name on the request path.

use crate::head::RequestHead;

/// Everything the runtime needs to run one workload's sidecar.
#[derive(Debug)]
pub struct SidecarSpec {
    /// The workload's name.
    pub workload: &'static str,
    /// Its namespace.
    pub namespace: &'static str,
    /// Its listeners: `outbound` and one `inbound-<port>` per application port.
    pub listeners: &'static [ListenerSpec],
    /// The upstream clusters its routes reach, indexed by [`WeightedCluster::cluster`].
    pub clusters: &'static [ClusterSpec],
    /// The compiled outbound route lookup.
    pub route_outbound: fn(&RequestHead<'_>) -> Decision,
    /// The compiled tables as JSON, for the admin endpoint's `/config_dump`.
    pub config_dump: &'static str,
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
    /// The endpoints the registry snapshot listed, which `--endpoints` (and later xDS) replace.
    pub endpoints: &'static [EndpointSeed],
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
}

/// The outcome of routing one request.
#[derive(Clone, Copy, Debug)]
pub enum Decision {
    /// No route matches: 404.
    NoRoute,
    /// Forward to a cluster.
    Forward(&'static Forward),
    /// Answer without an upstream.
    Answer(&'static Answer),
}

/// A forwarding route (one match alternative of it, when rewrites depend on the match).
#[derive(Debug)]
pub struct Forward {
    /// The route's name, for logs and errors.
    pub route: &'static str,
    /// The destinations; weights sum to 100.
    pub destinations: &'static [WeightedCluster],
    /// Overall timeout, milliseconds; `None` uses the cluster's default.
    pub timeout_ms: Option<u64>,
    /// Path rewrite.
    pub path_rewrite: PathRewrite,
    /// Replacement authority.
    pub authority_rewrite: Option<&'static str>,
    /// Header operations on the request.
    pub request_headers: HeaderOps,
    /// Header operations on the response.
    pub response_headers: HeaderOps,
}

/// One destination of a forwarding route.
#[derive(Debug)]
pub struct WeightedCluster {
    /// Index into [`SidecarSpec::clusters`].
    pub cluster: u32,
    /// Share in percent.
    pub weight: u32,
}

/// How a forwarded request's path changes.
#[derive(Clone, Copy, Debug)]
pub enum PathRewrite {
    /// Unchanged.
    None,
    /// The matched prefix is replaced.
    Prefix {
        /// The prefix the route matched.
        matched: &'static str,
        /// What replaces it.
        with: &'static str,
    },
    /// The whole path is replaced (a rewrite on an exact or regex match).
    Whole(&'static str),
}

/// Header operations, applied in the order set, add, remove.
#[derive(Debug)]
pub struct HeaderOps {
    /// Replaced or inserted.
    pub set: &'static [(&'static str, &'static str)],
    /// Appended.
    pub add: &'static [(&'static str, &'static str)],
    /// Removed.
    pub remove: &'static [&'static str],
}

impl HeaderOps {
    /// No operations.
    pub const NONE: HeaderOps = HeaderOps { set: &[], add: &[], remove: &[] };
}

/// A local answer.
#[derive(Debug)]
pub enum Answer {
    /// A redirect.
    Redirect {
        /// New scheme.
        scheme: Option<&'static str>,
        /// New authority (host, maybe with port).
        authority: Option<&'static str>,
        /// New port.
        port: Option<u16>,
        /// New path.
        path: Option<&'static str>,
        /// 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// A direct response.
    Direct {
        /// Status code.
        status: u16,
        /// Body.
        body: &'static str,
    },
}
