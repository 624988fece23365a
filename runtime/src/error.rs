//! Why a request did not reach an upstream, classified by where it failed (as Pingora does),
//! with the HTTP status and gRPC status the sidecar answers with.

use std::fmt;

use http::StatusCode;

/// A failure the sidecar answers for itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Downstream: the request is malformed.
    BadRequest(&'static str),
    /// Routing: no route matches (Envoy's `NR`).
    NoRoute,
    /// Policy: an authorization policy denies the request (Envoy's RBAC, 403 /
    /// PERMISSION_DENIED).
    Denied,
    /// Upstream: a circuit breaker is open: too many requests in flight to the cluster (Envoy's
    /// `UO`).
    Overflow,
    /// Policy: a local rate limit refuses the request (429 / RESOURCE_EXHAUSTED).
    RateLimited,
    /// Routing: the route's destination is a service the workload may not call, so the
    /// sidecar has no cluster for it (Envoy's `NC`).
    NoCluster,
    /// Upstream: the cluster has no routable endpoint (Envoy's `UH`).
    NoHealthyUpstream(&'static str),
    /// Upstream: the connection failed (Envoy's `UF`); retryable.
    UpstreamConnect(String),
    /// Upstream: the connection closed before a response (Envoy's `UC`); retryable.
    UpstreamReset(String),
    /// Upstream: the HTTP/2 server refused the stream (REFUSED_STREAM) before processing it,
    /// so that any request may be sent again; otherwise as [`Error::UpstreamReset`].
    UpstreamRefused(String),
    /// Upstream: the response broke HTTP/1.1's rules (a malformed head, a bad length, a
    /// broken chunk), `endpoint: why` (Envoy's `UPE`, answered with 502); otherwise as
    /// [`Error::UpstreamReset`].
    UpstreamProtocol(String),
    /// Upstream: no response within the timeout (Envoy's `UT`).
    UpstreamTimeout,
    /// Internal: a broken invariant of the compiled configuration.
    Internal(&'static str),
}

impl Error {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NoRoute => StatusCode::NOT_FOUND,
            Error::Denied => StatusCode::FORBIDDEN,
            Error::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Error::NoCluster
            | Error::NoHealthyUpstream(_)
            | Error::UpstreamConnect(_)
            | Error::UpstreamReset(_)
            | Error::UpstreamRefused(_)
            | Error::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status answered to a gRPC request.
    pub fn grpc_status(&self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::Internal(_) => 13,
            Error::NoRoute => 12,
            Error::Denied => 7,
            Error::RateLimited => 8,
            Error::NoCluster
            | Error::NoHealthyUpstream(_)
            | Error::UpstreamConnect(_)
            | Error::UpstreamReset(_)
            | Error::UpstreamRefused(_)
            | Error::UpstreamProtocol(_)
            | Error::Overflow => 14,
            Error::UpstreamTimeout => 4,
        }
    }

    /// Envoy's response flag for the access log and metrics.
    pub fn flag(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "DPE",
            Error::NoRoute => "NR",
            Error::NoCluster => "NC",
            Error::NoHealthyUpstream(_) => "UH",
            Error::UpstreamConnect(_) => "UF",
            Error::UpstreamReset(_) | Error::UpstreamRefused(_) => "UC",
            Error::UpstreamProtocol(_) => "UPE",
            Error::UpstreamTimeout => "UT",
            Error::RateLimited => "RL",
            Error::Overflow => "UO",
            Error::Denied | Error::Internal(_) => "-",
        }
    }

    /// Whether another try could succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::UpstreamConnect(_)
                | Error::UpstreamReset(_)
                | Error::UpstreamRefused(_)
                | Error::UpstreamProtocol(_)
                | Error::NoHealthyUpstream(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(why) => write!(f, "bad request: {why}"),
            Error::NoRoute => f.write_str("no route"),
            Error::Denied => f.write_str("RBAC: access denied"),
            Error::RateLimited => f.write_str("local_rate_limited"),
            Error::NoCluster => f.write_str("no cluster: the route's destination is not among the services this workload may call"),
            Error::NoHealthyUpstream(cluster) => write!(f, "no healthy upstream in {cluster}"),
            Error::UpstreamConnect(endpoint) => write!(f, "upstream connect error: {endpoint}"),
            Error::UpstreamReset(endpoint) => write!(f, "upstream reset before response headers: {endpoint}"),
            Error::UpstreamRefused(endpoint) => write!(f, "upstream refused the stream: {endpoint}"),
            Error::UpstreamProtocol(why) => write!(f, "upstream protocol error: {why}"),
            Error::UpstreamTimeout => f.write_str("upstream request timeout"),
            Error::Overflow => f.write_str("upstream connect error or disconnect/reset before headers. reset reason: overflow"),
            Error::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}
