//! The check stage: resolves every name of the spec against the merged registries, checks
//! routes and policies, and produces a `CheckedMesh` that lowering cannot reject.
//!
//! Every check runs even after others failed, so one run reports every problem;
//! a check that would only repeat an earlier error (an unknown service's subset) stays quiet.

mod policy;
mod routes;
mod services;
mod shadow;

pub use policy::{parse_cidr, parse_pattern};
pub use routes::istio_retries;

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir;
use meshc_codegen::ir::{PerMillion, Protocol};

use crate::diag::{Code, Diagnostic};
use crate::manifest::Manifest;
use crate::registry::merge::{Catalog, CatalogService};
use crate::source::{SourceMap, Span};
use crate::syntax::ast;

/// A service's identity: (namespace, name).
pub type SvcKey = (String, String);

/// The checked mesh: every name resolved, every value valid.
#[derive(Debug)]
pub struct CheckedMesh<'a> {
    /// Every registry service, with the spec's declarations applied.
    pub services: BTreeMap<SvcKey, CheckedService<'a>>,
    /// Spec `routes` blocks, resolved.
    pub route_blocks: Vec<RouteBlock>,
    /// Declared workloads, by name.
    pub workloads: BTreeMap<String, CheckedWorkload>,
    /// Authorization policies, by name.
    pub policies: BTreeMap<String, CheckedPolicy>,
    /// Mesh-wide telemetry.
    pub telemetry: ir::Telemetry,
}

/// A service with its ports' protocols reconciled and its subsets and policies resolved.
#[derive(Debug)]
pub struct CheckedService<'a> {
    /// The merged registry service.
    pub catalog: &'a CatalogService,
    /// Ports, sorted by number.
    pub ports: Vec<ir::ServicePort>,
    /// The common protocol of the ports, or `auto`.
    pub protocol: Protocol,
    /// Subsets, sorted by name.
    pub subsets: Vec<CheckedSubset>,
    /// The service-level policy, defaults filled in.
    pub policy: ir::TrafficPolicy,
    /// The spec file that declares it.
    pub declared_in: Option<String>,
}

impl CheckedService<'_> {
    /// Whether every port speaks an RPC protocol.
    pub fn is_rpc(&self) -> bool {
        self.catalog.rpc.is_some() && self.ports.iter().all(|it| it.protocol.is_rpc())
    }

    /// The RPC protocol of an RPC service.
    pub fn rpc_protocol(&self) -> Option<Protocol> {
        self.is_rpc().then(|| self.ports[0].protocol)
    }
}

/// A resolved subset.
#[derive(Debug)]
pub struct CheckedSubset {
    /// Name.
    pub name: String,
    /// Labels it selects.
    pub labels: BTreeMap<String, String>,
    /// Its policy (the service's, overridden).
    pub policy: ir::TrafficPolicy,
}

/// A resolved `routes` block.
#[derive(Debug)]
pub struct RouteBlock {
    /// What it routes.
    pub target: RouteTarget,
    /// Its file.
    pub file: String,
    /// The routes, in order.
    pub routes: Vec<CheckedRoute>,
}

/// What a `routes` block routes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteTarget {
    /// A host: every HTTP (or, for a TCP-only service, TCP) port of the service.
    Service(SvcKey),
    /// An RPC interface, every version and group.
    Interface(String),
}

/// A resolved route.
#[derive(Clone, Debug)]
pub struct CheckedRoute {
    /// Name.
    pub name: String,
    /// Alternatives, ORed.
    pub matches: Vec<ir::Match>,
    /// What it does.
    pub action: CheckedAction,
    /// Timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Explicit retries.
    pub retries: Option<ir::RetryPolicy>,
    /// Fault injection.
    pub fault: Option<ir::Fault>,
    /// Mirror destination and share.
    pub mirror: Option<(Dest, PerMillion)>,
    /// Request header operations.
    pub request_headers: ir::HeaderOps,
    /// Response header operations.
    pub response_headers: ir::HeaderOps,
    /// Rate limit.
    pub rate_limit: Option<ir::RateLimit>,
}

/// A resolved destination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dest {
    /// The service.
    pub service: SvcKey,
    /// The service port.
    pub port: u16,
    /// The subset.
    pub subset: Option<String>,
}

/// A resolved route action.
#[derive(Clone, Debug)]
pub enum CheckedAction {
    /// Forward, weights normalised to 100.
    Forward {
        /// Destinations and weights.
        destinations: Vec<(Dest, u32)>,
        /// Rewrites.
        rewrite: Option<ir::Rewrite>,
    },
    /// Redirect or direct response, already in IR form.
    Answer(ir::Action),
}

/// A resolved workload.
#[derive(Clone, Debug)]
pub struct CheckedWorkload {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Served services.
    pub serves: Vec<SvcKey>,
    /// Callable services; `None` means all.
    pub calls: Option<BTreeSet<SvcKey>>,
    /// Inbound rate limit.
    pub rate_limit: Option<ir::RateLimit>,
    /// Telemetry (mesh-wide, overridden).
    pub telemetry: ir::Telemetry,
    /// What its ports accept, unless `port_mtls` says otherwise.
    pub mtls: ir::PeerMtls,
    /// Per-port modes.
    pub port_mtls: BTreeMap<u16, ir::PeerMtls>,
    /// Where the application sends Bolt and Dubbo.
    pub rpc_listener: ir::RpcListener,
    /// Declaring file; `None` for the implicit `default` workload.
    pub declared_in: Option<String>,
}

/// A resolved authorization policy.
#[derive(Clone, Debug)]
pub struct CheckedPolicy {
    /// Action.
    pub action: ir::AuthzAction,
    /// Target workloads; `None` means every workload.
    pub workloads: Option<Vec<String>>,
    /// Rules.
    pub rules: Vec<ir::AuthzRule>,
    /// Declaring file.
    pub declared_in: String,
}

/// Checks the spec against the catalog. Returns the checked mesh unless there were errors.
pub fn check<'a>(
    manifest: &'a Manifest,
    sources: &'a SourceMap,
    files: &[ast::File],
    catalog: &'a Catalog,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<CheckedMesh<'a>> {
    let errors_before = diagnostics.iter().filter(|it| it.is_error()).count();
    let mut cx = Checker {
        manifest,
        sources,
        catalog,
        resolver: Resolver::new(manifest, catalog),
        diagnostics,
        subset_uses: BTreeMap::new(),
        subset_port_uses: BTreeMap::new(),
        dest_spans: Vec::new(),
    };

    let items = Items::collect(files);
    let services = cx.services(&items.services);
    let telemetry = cx.mesh_telemetry(&items.telemetry);
    let workloads = cx.workloads(&items.workloads, &telemetry, &services);
    let route_blocks = cx.route_blocks(&items.routes, &services);
    cx.report_empty_subsets(&items.services, &services);
    let policies = cx.policies(&items.policies, &workloads, &services);
    cx.check_scopes(&workloads);

    let errors_after = cx.diagnostics.iter().filter(|it| it.is_error()).count();
    (errors_after == errors_before).then_some(CheckedMesh { services, route_blocks, workloads, policies, telemetry })
}

/// The spec's items, by kind, each with its file's path.
struct Items<'f> {
    services: Vec<&'f ast::Service>,
    routes: Vec<&'f ast::Routes>,
    policies: Vec<&'f ast::Authorization>,
    workloads: Vec<&'f ast::Workload>,
    telemetry: Vec<&'f ast::Telemetry>,
}

impl<'f> Items<'f> {
    fn collect(files: &'f [ast::File]) -> Items<'f> {
        let mut items =
            Items { services: Vec::new(), routes: Vec::new(), policies: Vec::new(), workloads: Vec::new(), telemetry: Vec::new() };
        for file in files {
            for item in &file.items {
                match item {
                    ast::Item::Service(it) => items.services.push(it),
                    ast::Item::Routes(it) => items.routes.push(it),
                    ast::Item::Authorization(it) => items.policies.push(it),
                    ast::Item::Workload(it) => items.workloads.push(it),
                    ast::Item::Telemetry(it) => items.telemetry.push(it),
                }
            }
        }
        items
    }
}

pub(crate) struct Checker<'a, 'd> {
    manifest: &'a Manifest,
    sources: &'a SourceMap,
    catalog: &'a Catalog,
    resolver: Resolver<'a>,
    diagnostics: &'d mut Vec<Diagnostic>,
    /// Where each (service, subset) is used by a route or mirror, for IST0173's severity.
    subset_uses: BTreeMap<(SvcKey, String), Span>,
    /// The same, per service port: a subset may select instances of one port only.
    subset_port_uses: BTreeMap<(SvcKey, String, u16), Span>,
    /// Every resolved destination and mirror: (route target, destination service, where named).
    dest_spans: Vec<(RouteTarget, SvcKey, Span)>,
}

impl Checker<'_, '_> {
    fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    fn path(&self, span: Span) -> String {
        self.sources.path(span.file).to_owned()
    }

    /// Resolves a service reference, reporting an unknown one with suggestions.
    fn service_ref(&mut self, name: &ast::Name, namespace: &str) -> Option<SvcKey> {
        if let Some(key) = self.resolver.service(&name.text, namespace) {
            return Some(key);
        }
        let mut diagnostic = Diagnostic::error(Code::UnknownService, format!("unknown service `{}`", name.text))
            .primary(name.span, "no registry lists this service")
            .note(format!("short names resolve in namespace `{namespace}`"));
        if let Some(best) = self.resolver.suggest(&name.text, namespace) {
            diagnostic = diagnostic.help(format!("a service with a similar name exists: `{best}`"));
        }
        self.push(diagnostic);
        None
    }

    /// Reports a duplicate declaration.
    fn duplicate(&mut self, what: &str, name: &str, again: Span, first: Span) {
        self.push(
            Diagnostic::error(Code::DuplicateName, format!("{what} `{name}` is declared twice"))
                .primary(again, "declared again here")
                .secondary(first, "first declared here"),
        );
    }
}

/// Resolves service references and RPC interfaces.
#[derive(Debug)]
pub(crate) struct Resolver<'a> {
    catalog: &'a Catalog,
    by_host: BTreeMap<String, SvcKey>,
    interfaces: BTreeMap<&'a str, Vec<SvcKey>>,
    cluster_domain: String,
}

impl<'a> Resolver<'a> {
    fn new(manifest: &Manifest, catalog: &'a Catalog) -> Resolver<'a> {
        let mut by_host = BTreeMap::new();
        let mut interfaces: BTreeMap<&str, Vec<SvcKey>> = BTreeMap::new();
        for (key, service) in &catalog.services {
            by_host.insert(host_of(service, &manifest.cluster_domain), key.clone());
            if let Some(rpc) = &service.rpc {
                interfaces.entry(rpc.interface.as_str()).or_default().push(key.clone());
            }
        }
        Resolver { catalog, by_host, interfaces, cluster_domain: manifest.cluster_domain.clone() }
    }

    /// `reviews`, `reviews.ns`, `reviews.ns.svc`, the FQDN, or an RPC key.
    pub(crate) fn service(&self, text: &str, namespace: &str) -> Option<SvcKey> {
        if let Some(key) = self.by_host.get(text) {
            return Some(key.clone());
        }
        let parts: Vec<&str> = text.split('.').collect();
        let first_domain_label = self.cluster_domain.split('.').next().unwrap_or("");
        let key = match parts.as_slice() {
            [name] => (namespace.to_owned(), (*name).to_owned()),
            [name, ns] => ((*ns).to_owned(), (*name).to_owned()),
            [name, ns, label] if *label == first_domain_label => ((*ns).to_owned(), (*name).to_owned()),
            _ => return None,
        };
        let service = self.catalog.services.get(&key)?;
        // RPC keys are only ever named whole.
        service.rpc.is_none().then_some(key)
    }

    /// The services implementing an RPC interface.
    pub(crate) fn interface(&self, text: &str) -> Option<&[SvcKey]> {
        self.interfaces.get(text).map(Vec::as_slice)
    }

    /// The closest known name, for "did you mean".
    fn suggest(&self, text: &str, namespace: &str) -> Option<String> {
        let candidates = self
            .catalog
            .services
            .values()
            .map(|it| if it.rpc.is_none() && it.namespace == namespace { it.name.clone() } else { host_of(it, &self.cluster_domain) })
            .chain(self.interfaces.keys().map(|it| (*it).to_owned()));
        let mut best: Option<(usize, String)> = None;
        for candidate in candidates {
            let distance = levenshtein(text, &candidate);
            let limit = (text.chars().count() / 3).max(2);
            if distance <= limit && best.as_ref().is_none_or(|it| (distance, &candidate) < (it.0, &it.1)) {
                best = Some((distance, candidate));
            }
        }
        best.map(|it| it.1)
    }
}

/// The host of a service: its FQDN, or its key for an RPC service.
pub fn host_of(service: &CatalogService, cluster_domain: &str) -> String {
    if service.rpc.is_some() { service.name.clone() } else { format!("{}.{}.{}", service.name, service.namespace, cluster_domain) }
}

/// Edit distance, for suggestions.
pub(crate) fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

/// Compiles an RE2 pattern as the sidecar will: translated into Rust's dialect, anchored at
/// both ends (see `meshc_codegen::re2`), and size-bounded.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    let translated = meshc_codegen::re2::to_rust(pattern)?;
    regex::RegexBuilder::new(&translated).size_limit(1 << 20).dfa_size_limit(1 << 20).nest_limit(64).build().map_err(|err| match err {
        regex::Error::CompiledTooBig(limit) => format!("the compiled expression exceeds {limit} bytes"),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("reviews", "reveiws"), 2);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("ratings", "ratings"), 0);
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let re = compile_regex("/v[0-9]+").unwrap();
        assert!(re.is_match("/v12"));
        assert!(!re.is_match("/v12/x"));
        assert!(compile_regex("(unclosed").is_err());
    }
}
