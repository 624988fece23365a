//! Why a request did not reach an upstream, classified by where it failed (as Pingora does),
//! with the HTTP status and gRPC status the sidecar answers with.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

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

/// Envoy's response flags in the order it writes them, comma-separated, when a request has
/// several (the order of its flags' bits).
const FLAG_ORDER: [&str; 25] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR",
    "RFCF", "NFCF", "DT", "UPE", "NC",
];

/// The response flags `a` and `b` together (each `-` for none, one flag, or flags joined as
/// Envoy joins them), in Envoy's order: `UF` and `URX` are `UF,URX`.
pub fn join_flags(a: &'static str, b: &'static str) -> &'static str {
    if a == "-" || a == b {
        return b;
    }
    if b == "-" {
        return a;
    }
    let bits = flag_bits(a) | flag_bits(b);
    // Each set of flags is written out once: there are a few dozen that can occur, so the
    // strings kept stay bounded, and the labels they key stay `&'static str`.
    static JOINED: Mutex<BTreeMap<u32, &'static str>> = Mutex::new(BTreeMap::new());
    let mut joined = JOINED.lock().unwrap_or_else(PoisonError::into_inner);
    joined.entry(bits).or_insert_with(|| {
        let names: Vec<&str> = FLAG_ORDER.iter().enumerate().filter(|(bit, _)| bits & (1 << bit) != 0).map(|(_, name)| *name).collect();
        Box::leak(names.join(",").into_boxed_str())
    })
}

fn flag_bits(flags: &str) -> u32 {
    flags.split(',').filter_map(|name| FLAG_ORDER.iter().position(|it| *it == name)).fold(0, |bits, bit| bits | 1 << bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_join_in_envoys_order_and_none_adds_nothing() {
        assert_eq!(join_flags("-", "URX"), "URX");
        assert_eq!(join_flags("UF", "-"), "UF");
        assert_eq!(join_flags("URX", "UF"), "UF,URX");
        assert_eq!(join_flags("UF", "URX"), "UF,URX");
        assert_eq!(join_flags(join_flags("DI", "UF"), "URX"), "UF,DI,URX");
        assert_eq!(join_flags("FI", "DI"), "DI,FI");
        assert_eq!(join_flags("UPE", "UO"), "UO,UPE");
        assert_eq!(join_flags("UO", "UO"), "UO");
        // The same set is the same string, whatever order it was joined in.
        assert!(std::ptr::eq(join_flags("DC", "URX"), join_flags("URX", "DC")));
    }

    #[test]
    fn every_error_flag_is_one_of_envoys() {
        let errors = [
            Error::BadRequest(""),
            Error::NoRoute,
            Error::Denied,
            Error::Overflow,
            Error::RateLimited,
            Error::NoCluster,
            Error::NoHealthyUpstream(""),
            Error::UpstreamConnect(String::new()),
            Error::UpstreamReset(String::new()),
            Error::UpstreamRefused(String::new()),
            Error::UpstreamProtocol(String::new()),
            Error::UpstreamTimeout,
            Error::Internal(""),
        ];
        for error in errors {
            let flag = error.flag();
            assert!(flag == "-" || FLAG_ORDER.contains(&flag), "{flag}");
        }
    }
}
