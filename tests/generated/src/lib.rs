//! Generated sidecar crates compiled as modules against the current runtime: every golden
//! crate, the route-table meshes of the benchmark, and random meshes (see `build.rs`).
//!
//! If codegen and the runtime's `__codegen` contract drift apart, this crate stops compiling.
//! The agreement test and the route lookup benchmark call the compiled lookups directly, next
//! to the runtime's interpreted matcher built here from the same IR.

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]
#![allow(missing_docs, non_snake_case)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use meshc::source::{DiskFs, MemFs};
use meshc_codegen::ir::{self, Mesh, PresenceMatch, RouteTableKind, StringMatch, StringMatchKind};
use meshc_runtime::__codegen as rt;
use meshc_runtime::interp;

/// Where a sidecar's mesh comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// `golden/ok/<case>`, compiled from the example of that name or the case's `spec/`.
    Golden(&'static str),
    /// `meshc::synth::route_table(routes)`.
    Table(usize),
    /// `meshc::synth::random(seed)`.
    Random(u64),
}

/// One compiled sidecar's routing.
#[derive(Debug)]
pub struct Sidecar {
    /// Its mesh.
    pub origin: Origin,
    /// The workload.
    pub workload: &'static str,
    /// Its compiled outbound route lookup.
    pub route_outbound: fn(&rt::RequestHead<'_>) -> rt::Decision<'static>,
    /// Its compiled RPC route lookup.
    pub route_rpc: fn(&rt::RpcHead<'_>) -> rt::Decision<'static>,
    /// Its clusters, which route destinations index.
    pub clusters: &'static [rt::ClusterSpec],
    /// Its compiled authorization policies.
    pub authz: &'static rt::Policies,
    /// Its forwarding routes' counts.
    pub routes: &'static [&'static rt::RouteStats],
    /// Its virtual hosts with the digests of their xDS form.
    pub virtual_hosts: &'static [rt::VirtualHostSpec],
}

include!(concat!(env!("OUT_DIR"), "/sidecars.rs"));

/// The IR of a sidecar's mesh, compiled once per origin.
pub fn mesh(origin: Origin) -> &'static Mesh {
    static MESHES: OnceLock<Mutex<BTreeMap<Origin, &'static Mesh>>> = OnceLock::new();
    let mut meshes = MESHES.get_or_init(Default::default).lock().unwrap_or_else(|it| it.into_inner());
    meshes.entry(origin).or_insert_with(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let compilation = match origin {
            Origin::Golden(case) => {
                let example = root.join("examples").join(case);
                let dir = if example.is_dir() { example } else { root.join("golden/ok").join(case).join("spec") };
                meshc::compile(&DiskFs::new(&dir))
            }
            Origin::Table(routes) => meshc::compile(&meshc::synth::route_table(routes)),
            Origin::Random(seed) => meshc::compile(&meshc::synth::random(seed)),
        };
        if compilation.has_errors() {
            panic!("{origin:?} does not compile:\n{}", compilation.render_plain());
        }
        Box::leak(Box::new(compilation.ir.expect("an IR when there are no errors")))
    })
}

/// A route-table mesh as files, for tests that want to look at it.
pub fn table_mesh(routes: usize) -> MemFs {
    meshc::synth::route_table(routes)
}

/// The runtime's interpreted matcher over a workload's outbound routes, built from the IR
/// as the compiled crate was: the same tables, reached by the same hosts.
pub fn interpreted_router(mesh: &Mesh, workload: &ir::Workload) -> interp::Router {
    let mut router = interp::Router::new();
    for table in workload.outbound.iter().map(|id| &mesh.route_tables[id.index()]) {
        let RouteTableKind::Http { service, domains, local_domains, .. } = &table.kind else { continue };
        let same_namespace = mesh.services[service.index()].namespace == workload.namespace;
        let hosts = domains.iter().chain(local_domains.iter().filter(|_| same_namespace)).cloned();
        let routes = table.routes.iter().map(|route| interpreted_route(mesh, route)).collect();
        router.add_table(hosts, routes);
    }
    router
}

fn interpreted_route(mesh: &Mesh, route: &ir::Route) -> interp::Route {
    let matches = route.matches.iter().map(conditions).collect();
    let action = match &route.action {
        ir::Action::Forward { destinations, .. } => interp::Action::Forward {
            destinations: destinations.iter().map(|it| (mesh.clusters[it.cluster.index()].name.clone(), it.weight)).collect(),
            timeout_ms: route.timeout_ms,
        },
        ir::Action::Redirect { status, .. } | ir::Action::DirectResponse { status, .. } => interp::Action::Answer { status: *status },
    };
    interp::Route { name: route.name.clone(), matches, action }
}

fn conditions(m: &ir::Match) -> Vec<interp::Condition> {
    let mut out = Vec::new();
    if let Some(it) = &m.authority {
        out.push(interp::Condition::Authority(string(it)));
    }
    if let Some(it) = &m.path {
        out.push(interp::Condition::Path(string(it)));
    }
    if let Some(it) = &m.method {
        out.push(interp::Condition::Method(string(it)));
    }
    for header in &m.headers {
        out.push(interp::Condition::Header(header.name.clone(), presence(&header.kind)));
    }
    for parameter in &m.query {
        out.push(interp::Condition::Query(parameter.name.clone(), presence(&parameter.kind)));
    }
    out
}

fn presence(kind: &PresenceMatch) -> interp::PresenceMatch {
    match kind {
        PresenceMatch::Value(it) => interp::PresenceMatch::Value(string(it)),
        PresenceMatch::Present => interp::PresenceMatch::Present,
        PresenceMatch::Absent => interp::PresenceMatch::Absent,
    }
}

fn string(condition: &StringMatch) -> interp::StrMatch {
    match condition.kind {
        StringMatchKind::Exact => interp::StrMatch::Exact(condition.value.clone()),
        StringMatchKind::Prefix => interp::StrMatch::Prefix(condition.value.clone()),
        StringMatchKind::Regex => {
            let pattern = meshc_codegen::re2::to_rust(&condition.value).expect("the compiler accepted the pattern");
            interp::StrMatch::Regex(interp::Regex::new(regex_automata::meta::Regex::new(&pattern).expect("a translated pattern compiles")))
        }
    }
}

/// What a route lookup decided, in terms every matcher can express.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 404: no table or no route.
    NoRoute,
    /// Forwarded by a route to clusters with weights (`None` for a cluster the workload lacks).
    Forward(String, Vec<(Option<String>, u32)>),
    /// Answered locally with a status.
    Answer(u16),
}

impl Sidecar {
    /// The compiled lookup's outcome.
    pub fn compiled(&self, head: &rt::RequestHead<'_>) -> Outcome {
        self.outcome((self.route_outbound)(head))
    }

    /// The compiled RPC lookup's outcome.
    pub fn compiled_rpc(&self, head: &rt::RpcHead<'_>) -> Outcome {
        self.outcome((self.route_rpc)(head))
    }

    fn outcome(&self, decision: rt::Decision<'_>) -> Outcome {
        match decision {
            rt::Decision::NoRoute => Outcome::NoRoute,
            rt::Decision::Forward(forward) => Outcome::Forward(
                forward.route.to_owned(),
                forward
                    .destinations
                    .iter()
                    .map(|it| (self.clusters.get(it.cluster as usize).map(|c| c.name.to_owned()), it.weight))
                    .collect(),
            ),
            rt::Decision::Answer(rt::Answer::Direct { status, .. } | rt::Answer::Redirect { status, .. }) => Outcome::Answer(*status),
        }
    }

    /// The outcome of a route override table (an xDS route configuration the sidecar took).
    pub fn overridden(&self, table: &meshc_runtime::overrides::OverrideTable, head: &rt::RequestHead<'_>) -> Option<Outcome> {
        use meshc_runtime::overrides::Action;
        let host = table.host(head.authority())?;
        Some(match host.and_then(|it| it.select(head)) {
            None => Outcome::NoRoute,
            Some(route) => match &route.action {
                Action::Answer(answer) => self.outcome(rt::Decision::Answer(&answer.view())),
                Action::Forward(owned) => {
                    let views = owned.header_views();
                    self.outcome(rt::Decision::Forward(&owned.view(route.stats, &views)))
                }
            },
        })
    }

    /// What the compiled route a request takes does to it besides choosing destinations
    /// (`None` for no forwarding route), to compare with an override's [`Sidecar::overridden_policy`].
    pub fn compiled_policy(&self, head: &rt::RequestHead<'_>) -> Option<String> {
        match (self.route_outbound)(head) {
            rt::Decision::Forward(forward) => Some(policy(forward, self.clusters)),
            _ => None,
        }
    }

    /// [`Sidecar::compiled_policy`] of the route an override table chooses.
    pub fn overridden_policy(&self, table: &meshc_runtime::overrides::OverrideTable, head: &rt::RequestHead<'_>) -> Option<String> {
        use meshc_runtime::overrides::Action;
        let route = table.host(head.authority())??.select(head)?;
        let Action::Forward(owned) = &route.action else { return None };
        let views = owned.header_views();
        Some(policy(&owned.view(route.stats, &views), &[]))
    }

    /// The interpreted matcher's outcome, with the workload's clusters for scope.
    pub fn interpreted(&self, router: &interp::Router, head: &rt::RequestHead<'_>) -> Outcome {
        let Some((_, route)) = router.select(head) else { return Outcome::NoRoute };
        match &route.action {
            interp::Action::Forward { destinations, .. } => Outcome::Forward(
                route.name.clone(),
                destinations
                    .iter()
                    .map(|(name, weight)| (self.clusters.iter().any(|it| it.name == name.as_str()).then(|| name.clone()), *weight))
                    .collect(),
            ),
            interp::Action::Answer { status } => Outcome::Answer(*status),
        }
    }
}

/// A forwarding route's timeouts, retries, faults, rate limit, mirror, rewrites and header
/// operations, as text. The timeout is the one in force: a compiled route without one takes
/// its first destination's cluster's (Pilot writes that into the route), and none is 0.
fn policy(forward: &rt::Forward<'_>, clusters: &[rt::ClusterSpec]) -> String {
    let first = forward.destinations.first().and_then(|it| clusters.get(it.cluster as usize));
    let timeout_ms = forward.timeout_ms.or(first.and_then(|it| it.request_timeout_ms)).unwrap_or(0);
    let rt::Retries { attempts, per_try_timeout_ms, on, statuses, avoid_previous_hosts, any_method } = forward.retries;
    format!(
        "timeout {timeout_ms}, retries {attempts} {per_try_timeout_ms:?} {on:#x} {statuses:?} {avoid_previous_hosts} {any_method}, fault {:?}, rate limit {:?}, \
         mirror {:?}, rewrite {:?} {:?}, request headers {:?}, response headers {:?}",
        forward.fault,
        forward.rate_limit.map(|it| it.settings()),
        forward.mirror,
        forward.path_rewrite,
        forward.authority_rewrite,
        forward.request_headers,
        forward.response_headers,
    )
}
