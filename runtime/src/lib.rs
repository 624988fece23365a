//! meshc-runtime: the part of every sidecar that does not depend on the mesh spec.
//!
//! Generated crates reach it only through the hidden [`__codegen`] module, which is the
//! whole contract between codegen and the runtime. This crate knows nothing about specs,
//! registries or the IR: it receives compiled tables as `static` data and function pointers.

pub mod accesslog;
pub mod authz;
mod consistent;
pub mod endpoints;
pub mod error;
pub mod guard;
pub(crate) mod h1;
pub mod head;
pub mod health;
mod http2;
pub mod interp;
pub mod metrics;
pub mod outlier;
pub mod overrides;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod replay;
pub mod rpc;
mod server;
pub mod spec;
mod sys;
pub mod table;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod tuning;
pub mod xds;

/// Every sidecar allocates with mimalloc: a request's futures and buffers come and go in
/// chunks of a few KB, which its per-thread free lists serve in a fraction of the instructions
/// glibc's allocator spends on chunks over 1 KB. Transparent huge pages are off for the
/// process (`no_thp`), which keeps an idle sidecar's resident memory where glibc's left it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The only face of the runtime that generated code sees. Every path a generated crate uses
/// is here, so the contract is one greppable list (codegen/src/emit/rust.rs writes against it).
#[doc(hidden)]
pub mod __codegen {
    pub use crate::accesslog::AccessLog;
    pub use crate::authz::{Cidr, Condition, Key as AuthzKey, Operation, Pat, Policies, Policy, Rule, Source};
    pub use crate::head::RequestHead;
    pub use crate::health::HealthCheckSpec;
    pub use crate::metrics::{MetricAttribute, MetricLabel};
    pub use crate::outlier::OutlierSpec;
    pub use crate::ratelimit::RateLimit;
    pub use crate::rpc::head::{RpcHead, RpcProtocol};
    pub use crate::server::run;
    pub use crate::spec::{
        Abort, Answer, Balancer, ClusterSpec, Decision, EndpointSeed, Fault, Forward, HashOn, HashTable, HeaderOps, Limits, ListenerKind,
        ListenerSpec, Mirror, PathRewrite, PeerMtls, Protocol, Retries, RetryBudget, RetryOn, RouteStats, SidecarSpec, UpstreamTls,
        VirtualHostSpec, WeightedCluster,
    };
    pub use crate::table::{Alternative, Cond, IndexedTable, PathEntry, Presence, Str, StrIndex};

    /// A regex compiled on first use. Patterns come from meshc already translated from RE2 and
    /// anchored, so they are valid; an invalid one never matches rather than failing a request.
    #[derive(Debug)]
    pub struct Regex {
        pattern: &'static str,
        compiled: std::sync::OnceLock<Option<regex::Regex>>,
    }

    impl Regex {
        /// A regex for `pattern`.
        pub const fn new(pattern: &'static str) -> Regex {
            Regex { pattern, compiled: std::sync::OnceLock::new() }
        }

        /// Whether the whole of `value` matches (the pattern carries its anchors).
        pub fn is_match(&self, value: &str) -> bool {
            self.compiled.get_or_init(|| regex::Regex::new(self.pattern).ok()).as_ref().is_some_and(|it| it.is_match(value))
        }
    }
}
