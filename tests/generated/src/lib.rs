//! Every golden generated sidecar crate, compiled as a module against the current runtime.
//!
//! If codegen and the runtime's `__codegen` contract drift apart, this crate stops compiling.
//! The tests next to it call the compiled route lookups directly.

#![allow(missing_docs, non_snake_case)]

use meshc_runtime::__codegen as rt;

/// One golden sidecar's compiled routing.
#[derive(Debug)]
pub struct Sidecar {
    /// The golden case (`golden/ok/<case>`).
    pub case: &'static str,
    /// The workload.
    pub workload: &'static str,
    /// Its compiled outbound route lookup.
    pub route_outbound: fn(&rt::RequestHead<'_>) -> rt::Decision,
    /// Its clusters, which route destinations index.
    pub clusters: &'static [rt::ClusterSpec],
}

include!(concat!(env!("OUT_DIR"), "/golden.rs"));
