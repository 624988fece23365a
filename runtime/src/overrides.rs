//! Route overrides: virtual hosts that Pilot serves differently from what was compiled,
//! routed by the interpreted matcher while the compiled tables keep every other host.
//!
//! The xDS client subscribes to the `outbound` route configuration. Each virtual host in it
//! is compared with the one compiled under the same name by a digest of its canonical bytes
//! (`SidecarSpec::virtual_hosts`, written by meshc from the same emitter Pilot serves from):
//! a host served as compiled stays with the compiled code; a changed or new one becomes an
//! override; a compiled domain no served host has any more answers 404, as in Envoy. A configuration is taken whole or refused whole (and NACKed): a route to a
//! cluster this sidecar was not built with, a regex RE2 would refuse, a wildcard domain, or
//! any feature the interpreted matcher does not carry is refused, and the overrides in force
//! stay as they were.
//!
//! A forwarding override owns its data; the request path borrows a [`Forward`] view of it
//! for the request's lifetime, so replacing the table never disturbs a request on its way.
//! Route names and counts are interned (at most [`MAX_INTERNED_ROUTES`] of them) so that a
//! route's counts survive updates, and an override of a compiled route counts where the
//! compiled route does.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::head::RequestHead;
use crate::interp::{Condition, PresenceMatch, StrMatch};
use crate::ratelimit::RateLimit;
use crate::spec::{Abort, Answer, Fault, Forward, HeaderOps, Mirror, PathRewrite, Retries, RetryOn, RouteStats, WeightedCluster};
use crate::xds::millis;

// RE2 in Rust's dialect: the translation meshc applies to compiled regexes, so that an
// override matches what the same route compiled would. One source file, two crates.
#[path = "../../codegen/src/re2.rs"]
mod re2;

// A virtual host's canonical bytes, as meshc digests them: one source file, two crates.
#[path = "../../codegen/src/emit/xds/canonical.rs"]
mod canonical;

/// The name of the route configuration the sidecar subscribes to.
pub const OUTBOUND: &str = "outbound";

/// The most route names interned for counting; routes past it share one count.
pub const MAX_INTERNED_ROUTES: usize = 4096;

/// The most memory one compiled regex may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The most room each of a regex's two lazy DFAs (forward and reverse) may take in its cache
/// (regex's default is 2 MiB): past it the cache starts again, or a slower engine takes over,
/// with the same answers.
const REGEX_CACHE_CAPACITY: usize = 32 << 10;

/// The most memory the regexes of one route configuration may take together, each charged
/// for what it takes compiled, its one cache's lazy DFAs at capacity, and as much again for
/// the cache's other engines (whose scratch grows with the compiled size): about 3,000
/// typical header or path regexes (5 to 10 KiB each compiled). A configuration past it is
/// refused, so that a bad one cannot take the sidecar's memory.
const REGEX_BUDGET: usize = 256 << 20;

/// Envoy's default route timeout, for a route that sets none.
const ENVOY_DEFAULT_TIMEOUT_MS: u64 = 15_000;

/// The overrides in force, swapped whole.
#[derive(Debug, Default)]
pub struct RouteOverrides {
    /// Whether any host is overridden: the request path looks no further when not.
    active: AtomicBool,
    table: RwLock<Arc<OverrideTable>>,
}

impl RouteOverrides {
    /// The table in force, when it overrides some host.
    pub fn current(&self) -> Option<Arc<OverrideTable>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.table.read().ok().map(|it| it.clone())
    }

    /// Puts `table` in force.
    pub fn replace(&self, table: OverrideTable) {
        let active = !table.is_empty();
        if let Ok(mut current) = self.table.write() {
            *current = Arc::new(table);
        }
        self.active.store(active, Ordering::Release);
    }

    /// Compiled and overridden virtual hosts side by side, for `/config_dump`.
    pub fn dump(&self, compiled: &[crate::spec::VirtualHostSpec]) -> serde_json::Value {
        let table = self.table.read().map(|it| it.clone()).unwrap_or_default();
        let overridden: BTreeMap<&str, &HostOverride> = table.hosts.iter().map(|it| (it.name.as_str(), it)).collect();
        let mut hosts: Vec<serde_json::Value> = compiled
            .iter()
            .map(|it| match overridden.get(it.name) {
                Some(host) => host.dump(Some(it.digest)),
                // Not served any more: its domains answer 404.
                None if it.domains.iter().all(|domain| table.by_domain.get(*domain).is_some_and(Option::is_none)) => {
                    serde_json::json!({"name": it.name, "source": "removed", "digest": it.digest})
                }
                None => serde_json::json!({"name": it.name, "source": "compiled", "digest": it.digest}),
            })
            .collect();
        hosts.extend(table.hosts.iter().filter(|it| !compiled.iter().any(|c| c.name == it.name)).map(|it| it.dump(None)));
        serde_json::json!({"version": table.version, "virtual_hosts": hosts})
    }
}

/// Virtual hosts routed by the interpreted matcher, by domain.
#[derive(Debug, Default)]
pub struct OverrideTable {
    /// The xDS version it came in.
    version: String,
    /// `None`: a compiled domain no longer served (404).
    by_domain: HashMap<String, Option<usize>>,
    hosts: Vec<HostOverride>,
}

impl OverrideTable {
    /// What the table says of a request's authority (lower-case): nothing (`None`, the
    /// compiled tables decide), a host no longer served (`Some(None)`), or its override.
    pub fn host(&self, authority: &str) -> Option<Option<&HostOverride>> {
        self.by_domain.get(authority).map(|it| it.and_then(|index| self.hosts.get(index)))
    }

    /// How many hosts are overridden.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the compiled tables decide for every host.
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// One overridden virtual host.
#[derive(Debug)]
pub struct HostOverride {
    name: String,
    domains: Vec<String>,
    digest: String,
    routes: Vec<OverrideRoute>,
}

impl HostOverride {
    /// The first route whose conditions all hold.
    pub fn select(&self, head: &RequestHead<'_>) -> Option<&OverrideRoute> {
        self.routes.iter().find(|route| route.conditions.iter().all(|it| it.test(head)))
    }

    fn dump(&self, compiled: Option<&str>) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|it| match &it.action {
                Action::Forward(forward) => serde_json::json!({
                    "name": it.stats.route,
                    "destinations": forward.destinations.iter().map(|d| serde_json::json!({"cluster": d.cluster, "weight": d.weight})).collect::<Vec<_>>(),
                }),
                Action::Answer(answer) => serde_json::json!({"name": it.stats.route, "answer": answer.status()}),
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "source": "xds",
            "digest": self.digest,
            "compiled_digest": compiled,
            "domains": self.domains,
            "routes": routes,
        })
    }
}

/// One route of an overridden host: conditions (ANDed, as in an Envoy route) and an action.
#[derive(Debug)]
pub struct OverrideRoute {
    /// Its counts, which carry its (virtual host and route) name.
    pub stats: &'static RouteStats,
    conditions: Vec<Condition>,
    /// What it does.
    pub action: Action,
}

/// What an override route does.
#[derive(Debug)]
pub enum Action {
    /// Forward upstream.
    Forward(Box<OwnedForward>),
    /// Answer locally.
    Answer(OwnedAnswer),
}

/// A forwarding route's data, owned; [`OwnedForward::view`] lends it as a [`Forward`].
#[derive(Debug)]
pub struct OwnedForward {
    destinations: Vec<WeightedCluster>,
    timeout_ms: Option<u64>,
    /// `(matched prefix, replacement)`, or the whole path's replacement when the prefix is `None`.
    path_rewrite: Option<(Option<String>, String)>,
    authority_rewrite: Option<String>,
    request_headers: OwnedHeaderOps,
    response_headers: OwnedHeaderOps,
    retries: OwnedRetries,
    fault: Fault,
    rate_limit: Option<RateLimit>,
    mirror: Option<Mirror>,
}

#[derive(Debug, Default)]
struct OwnedHeaderOps {
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
}

#[derive(Debug, Default)]
struct OwnedRetries {
    attempts: u32,
    per_try_timeout_ms: Option<u64>,
    on: u32,
    statuses: Vec<u16>,
    avoid_previous_hosts: bool,
    any_method: bool,
}

/// The borrowed header lists a [`Forward`] view points at, made per request.
#[derive(Debug)]
pub struct HeaderViews<'a> {
    request: [Vec<(&'a str, &'a str)>; 2],
    request_remove: Vec<&'a str>,
    response: [Vec<(&'a str, &'a str)>; 2],
    response_remove: Vec<&'a str>,
}

fn pairs(list: &[(String, String)]) -> Vec<(&str, &str)> {
    list.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect()
}

impl OwnedForward {
    /// The header lists to borrow from; empty lists cost no allocation.
    pub fn header_views(&self) -> HeaderViews<'_> {
        HeaderViews {
            request: [pairs(&self.request_headers.set), pairs(&self.request_headers.add)],
            request_remove: self.request_headers.remove.iter().map(String::as_str).collect(),
            response: [pairs(&self.response_headers.set), pairs(&self.response_headers.add)],
            response_remove: self.response_headers.remove.iter().map(String::as_str).collect(),
        }
    }

    /// The route as the request path takes it, counted in `stats` (its [`OverrideRoute`]'s).
    pub fn view<'a>(&'a self, stats: &'static RouteStats, views: &'a HeaderViews<'a>) -> Forward<'a> {
        Forward {
            route: stats.route,
            stats,
            destinations: &self.destinations,
            timeout_ms: self.timeout_ms,
            path_rewrite: match &self.path_rewrite {
                None => PathRewrite::None,
                Some((Some(matched), with)) => PathRewrite::Prefix { matched, with },
                Some((None, with)) => PathRewrite::Whole(with),
            },
            authority_rewrite: self.authority_rewrite.as_deref(),
            request_headers: HeaderOps { set: &views.request[0], add: &views.request[1], remove: &views.request_remove },
            response_headers: HeaderOps { set: &views.response[0], add: &views.response[1], remove: &views.response_remove },
            retries: Retries {
                attempts: self.retries.attempts,
                per_try_timeout_ms: self.retries.per_try_timeout_ms,
                on: self.retries.on,
                statuses: &self.retries.statuses,
                avoid_previous_hosts: self.retries.avoid_previous_hosts,
                any_method: self.retries.any_method,
            },
            fault: self.fault,
            rate_limit: self.rate_limit.as_ref(),
            mirror: self.mirror,
        }
    }
}

/// A local answer, owned.
#[derive(Debug)]
pub enum OwnedAnswer {
    /// A redirect.
    Redirect { scheme: Option<String>, authority: Option<String>, port: Option<u16>, path: Option<String>, status: u16 },
    /// A direct response.
    Direct { status: u16, body: String },
}

impl OwnedAnswer {
    /// The answer as the request path takes it.
    pub fn view(&self) -> Answer<'_> {
        match self {
            OwnedAnswer::Redirect { scheme, authority, port, path, status } => Answer::Redirect {
                scheme: scheme.as_deref(),
                authority: authority.as_deref(),
                port: *port,
                path: path.as_deref(),
                status: *status,
            },
            OwnedAnswer::Direct { status, body } => Answer::Direct { status: *status, body },
        }
    }

    fn status(&self) -> u16 {
        match self {
            OwnedAnswer::Redirect { status, .. } | OwnedAnswer::Direct { status, .. } => *status,
        }
    }
}

/// SHA-256, in hex, of a virtual host's canonical bytes: the function meshc digests each
/// compiled host with, over the same bytes (codegen's `canonical.rs`, included below); the
/// test vectors in both crates pin the hashes together.
pub fn virtual_host_digest(host: &route::VirtualHost) -> String {
    let bytes = canonical::canonical_bytes(host);
    ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().iter().map(|it| format!("{it:02x}")).collect()
}

/// What an override table is built against: the sidecar's clusters (by name, in index
/// order), its compiled virtual hosts and their digests, and its compiled route counts.
#[derive(Clone, Copy, Debug)]
pub struct Compiled<'a> {
    /// Cluster names, by index.
    pub clusters: &'a [&'a str],
    /// The compiled virtual hosts.
    pub virtual_hosts: &'a [crate::spec::VirtualHostSpec],
    /// The compiled routes' counts.
    pub routes: &'static [&'static RouteStats],
}

/// The overrides a route configuration asks for, or why it cannot be applied. A compiled
/// domain that no served virtual host has any more answers 404, as Envoy would.
pub fn build(config: &route::RouteConfiguration, version: &str, compiled: Compiled<'_>) -> Result<OverrideTable, String> {
    let unsupported = [
        (
            !config.request_headers_to_add.is_empty()
                || !config.request_headers_to_remove.is_empty()
                || !config.response_headers_to_add.is_empty()
                || !config.response_headers_to_remove.is_empty(),
            "configuration-level header operations",
        ),
        (!config.internal_only_headers.is_empty(), "internal-only headers"),
        (config.vhds.is_some(), "on-demand virtual hosts (VHDS)"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|it| it.0) {
        return Err(format!("route configuration `{}`: {what} cannot be applied here", config.name));
    }
    let clusters: ClusterIndex<'_> = compiled.clusters.iter().enumerate().map(|(index, name)| (*name, index as u32)).collect();
    let mut table = OverrideTable { version: version.to_owned(), ..OverrideTable::default() };
    // Each overridden host's route names, in route order, named for good once all applies.
    let mut names: Vec<Vec<String>> = Vec::new();
    let mut seen_domains = BTreeMap::new();
    let mut seen_names = std::collections::BTreeSet::new();
    let mut regexes = Regexes::new();
    for (index, host) in config.virtual_hosts.iter().enumerate() {
        // Each host's digest is a SHA-256 of its bytes: thousands of them are a long run.
        crate::sys::give_way_every(crate::xds::RESOURCES_PER_TURN, index);
        if !seen_names.insert(host.name.as_str()) {
            return Err(format!("virtual host `{}` is listed twice", host.name));
        }
        let digest = virtual_host_digest(host);
        for domain in &host.domains {
            if domain.contains('*') {
                return Err(format!("virtual host `{}`: wildcard domain `{domain}` (this sidecar matches domains exactly)", host.name));
            }
            if let Some(other) = seen_domains.insert(domain.to_ascii_lowercase(), host.name.clone()) {
                return Err(format!("domain `{domain}` is in virtual hosts `{other}` and `{}`", host.name));
            }
        }
        if compiled.virtual_hosts.iter().any(|it| it.name == host.name && it.digest == digest) {
            continue;
        }
        let index = table.hosts.len();
        let (overridden, route_names) =
            virtual_host(host, digest, &clusters, &mut regexes).map_err(|err| format!("virtual host `{}`: {err}", host.name))?;
        for domain in &overridden.domains {
            table.by_domain.insert(domain.clone(), Some(index));
        }
        table.hosts.push(overridden);
        names.push(route_names);
    }
    for domain in compiled.virtual_hosts.iter().flat_map(|it| it.domains) {
        if !seen_domains.contains_key(*domain) {
            table.by_domain.insert((*domain).to_owned(), None);
        }
    }
    // Only a configuration that applies names routes for good.
    let compiled_routes: BTreeMap<(&str, &str), &'static RouteStats> =
        compiled.routes.iter().map(|it| ((it.table, it.route), *it)).collect();
    for (host, route_names) in table.hosts.iter_mut().zip(names) {
        for (route, name) in host.routes.iter_mut().zip(route_names) {
            route.stats = match compiled_routes.get(&(host.name.as_str(), name.as_str())) {
                Some(stats) => stats,
                None => intern(&host.name, &name),
            };
        }
    }
    Ok(table)
}

/// Cluster indexes by name.
type ClusterIndex<'a> = BTreeMap<&'a str, u32>;

/// An overridden host, and its routes' names (counted under [`PENDING`] until then).
fn virtual_host(
    host: &route::VirtualHost,
    digest: String,
    clusters: &ClusterIndex<'_>,
    regexes: &mut Regexes,
) -> Result<(HostOverride, Vec<String>), String> {
    let unsupported = [
        (host.matcher.is_some(), "a matcher tree"),
        (!host.request_headers_to_add.is_empty() || !host.request_headers_to_remove.is_empty(), "host-level header operations"),
        (!host.response_headers_to_add.is_empty() || !host.response_headers_to_remove.is_empty(), "host-level header operations"),
        (host.retry_policy.is_some() || host.retry_policy_typed_config.is_some(), "a host-level retry policy"),
        (!host.typed_per_filter_config.is_empty(), "host-level filter configuration"),
        (!host.rate_limits.is_empty(), "global rate limits"),
        (!host.request_mirror_policies.is_empty(), "host-level mirroring"),
        (host.require_tls != 0, "require_tls"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|it| it.0) {
        return Err(format!("{what} cannot be applied here"));
    }
    let mut routes = Vec::with_capacity(host.routes.len());
    let mut names = Vec::with_capacity(host.routes.len());
    for (index, it) in host.routes.iter().enumerate() {
        let name = if it.name.is_empty() { format!("route-{index}") } else { it.name.clone() };
        routes.push(envoy_route(it, clusters, regexes).map_err(|err| format!("route `{name}`: {err}"))?);
        names.push(name);
    }
    let domains = host.domains.iter().map(|it| it.to_ascii_lowercase()).collect();
    Ok((HostOverride { name: host.name.clone(), domains, digest, routes }, names))
}

/// A route's count until the configuration it is in applies.
static PENDING: RouteStats = RouteStats::new("(pending)", "(pending)");

fn envoy_route(it: &route::Route, clusters: &ClusterIndex<'_>, regexes: &mut Regexes) -> Result<OverrideRoute, String> {
    use route::route::Action as EnvoyAction;
    let route_match = it.r#match.as_ref().ok_or("no match")?;
    let (conditions, matched_prefix) = conditions(route_match, regexes)?;
    let action = match it.action.as_ref().ok_or("no action")? {
        EnvoyAction::Route(action) => Action::Forward(Box::new(forward(it, action, matched_prefix, clusters)?)),
        EnvoyAction::Redirect(redirect) => Action::Answer(redirect_answer(redirect)?),
        EnvoyAction::DirectResponse(direct) => {
            let body = match direct.body.as_ref().and_then(|it| it.specifier.as_ref()) {
                None => String::new(),
                Some(core::data_source::Specifier::InlineString(it)) => it.clone(),
                Some(core::data_source::Specifier::InlineBytes(it)) => {
                    String::from_utf8(it.clone()).map_err(|_| "a direct response body that is not UTF-8")?
                }
                Some(_) => return Err("a direct response body from a file or the environment".to_owned()),
            };
            let status =
                u16::try_from(direct.status).ok().filter(|it| (200..600).contains(it)).ok_or("a direct response status out of range")?;
            Action::Answer(OwnedAnswer::Direct { status, body })
        }
        _ => return Err("an action other than route, redirect or direct response".to_owned()),
    };
    if !it.typed_per_filter_config.is_empty() && !matches!(action, Action::Forward(_)) {
        return Err("filter configuration on a route that does not forward".to_owned());
    }
    Ok(OverrideRoute { stats: &PENDING, conditions, action })
}

/// A route match's conditions, and the prefix it matches when it is a prefix match (for a
/// prefix rewrite).
fn conditions(m: &route::RouteMatch, regexes: &mut Regexes) -> Result<(Vec<Condition>, Option<String>), String> {
    use route::route_match::PathSpecifier;
    let unsupported = [
        (m.case_sensitive.as_ref().is_some_and(|it| !it.value), "case-insensitive path matching"),
        (m.runtime_fraction.is_some(), "runtime fractions"),
        (!m.cookies.is_empty(), "cookie matchers"),
        (m.grpc.is_some(), "gRPC-only matching"),
        (m.tls_context.is_some(), "TLS context matching"),
        (!m.dynamic_metadata.is_empty() || !m.filter_state.is_empty(), "metadata or filter state matching"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|it| it.0) {
        return Err(format!("{what} cannot be applied here"));
    }
    let mut out = Vec::new();
    let mut prefix = None;
    match m.path_specifier.as_ref().ok_or("a match without a path specifier")? {
        // Every path: no condition, as a compiled route without a path match.
        PathSpecifier::Prefix(it) if it == "/" => prefix = Some(it.clone()),
        PathSpecifier::Prefix(it) => {
            out.push(Condition::Path(StrMatch::Prefix(it.clone())));
            prefix = Some(it.clone());
        }
        PathSpecifier::Path(it) => out.push(Condition::Path(StrMatch::Exact(it.clone()))),
        PathSpecifier::SafeRegex(it) => out.push(Condition::Path(regexes.re2(&it.regex)?)),
        _ => return Err("a path specifier other than prefix, path or safe_regex".to_owned()),
    }
    for header in &m.headers {
        out.extend(header_conditions(header, regexes)?);
    }
    for query in &m.query_parameters {
        use route::query_parameter_matcher::QueryParameterMatchSpecifier as Specifier;
        let kind = match &query.query_parameter_match_specifier {
            Some(Specifier::StringMatch(it)) => PresenceMatch::Value(string_match(it, regexes)?),
            Some(Specifier::PresentMatch(true)) | None => PresenceMatch::Present,
            Some(Specifier::PresentMatch(false)) => PresenceMatch::Absent,
        };
        out.push(Condition::Query(query.name.clone(), kind));
    }
    Ok((out, prefix))
}

/// A header matcher as conditions, with Envoy's reading of `invert_match`: a missing header
/// matches an inverted presence test and nothing else. The deprecated matchers are read
/// too: older control planes still send them.
#[allow(deprecated)]
fn header_conditions(header: &route::HeaderMatcher, regexes: &mut Regexes) -> Result<Vec<Condition>, String> {
    use route::header_matcher::HeaderMatchSpecifier as Specifier;
    if header.treat_missing_header_as_empty {
        return Err(format!("header `{}`: treat_missing_header_as_empty cannot be applied here", header.name));
    }
    let name = header.name.to_ascii_lowercase();
    let pseudo = pseudo(&name);
    if name.starts_with(':') && pseudo.is_none() {
        return Err(format!("header `{}`: only :authority, :method and :path can be matched here", header.name));
    }
    // Envoy reads a matcher without a specifier as a presence test.
    let value = match header.header_match_specifier.as_ref().unwrap_or(&Specifier::PresentMatch(true)) {
        Specifier::PresentMatch(present) => {
            let present = *present != header.invert_match;
            return Ok(match pseudo {
                // Pseudo-headers are always there: a test of their absence never holds.
                Some(_) if present => Vec::new(),
                Some(_) => vec![Condition::Not(Box::new(Condition::Path(StrMatch::Prefix(String::new()))))],
                None => vec![Condition::Header(name, if present { PresenceMatch::Present } else { PresenceMatch::Absent })],
            });
        }
        Specifier::StringMatch(it) => string_match(it, regexes)?,
        Specifier::ExactMatch(it) => StrMatch::Exact(it.clone()),
        Specifier::PrefixMatch(it) => StrMatch::Prefix(it.clone()),
        Specifier::SuffixMatch(it) => regexes.anchored(&format!("(?s:.*){}", regex_syntax::escape(it)))?,
        Specifier::ContainsMatch(it) => regexes.anchored(&format!("(?s:.*){}(?s:.*)", regex_syntax::escape(it)))?,
        Specifier::SafeRegexMatch(it) => regexes.re2(&it.regex)?,
        Specifier::RangeMatch(_) => return Err(format!("header `{}`: a range matcher cannot be applied here", header.name)),
    };
    let condition = match pseudo {
        Some(Pseudo::Authority) => Condition::Authority(value),
        Some(Pseudo::Method) => Condition::Method(value),
        Some(Pseudo::Path) => Condition::PathAndQuery(value),
        None => Condition::Header(name.clone(), PresenceMatch::Value(value)),
    };
    Ok(match (header.invert_match, pseudo) {
        (false, _) => vec![condition],
        (true, Some(_)) => vec![Condition::Not(Box::new(condition))],
        (true, None) => vec![Condition::Header(name, PresenceMatch::Present), Condition::Not(Box::new(condition))],
    })
}

enum Pseudo {
    Authority,
    Method,
    Path,
}

fn pseudo(name: &str) -> Option<Pseudo> {
    match name {
        ":authority" | "host" => Some(Pseudo::Authority),
        ":method" => Some(Pseudo::Method),
        ":path" => Some(Pseudo::Path),
        _ => None,
    }
}

fn string_match(it: &matcher::StringMatcher, regexes: &mut Regexes) -> Result<StrMatch, String> {
    use matcher::string_matcher::MatchPattern;
    // Envoy's `ignore_case` folds ASCII letters only (a regex's `(?i)` would fold Unicode too:
    // the Kelvin sign would match `k`).
    let literal = |it: &str, ignore_case: bool| -> String {
        if !ignore_case {
            return regex_syntax::escape(it);
        }
        it.chars()
            .map(|ch| match ch.is_ascii_alphabetic() {
                true => format!("[{}{}]", ch.to_ascii_lowercase(), ch.to_ascii_uppercase()),
                false => regex_syntax::escape(ch.encode_utf8(&mut [0; 4])),
            })
            .collect()
    };
    match (it.match_pattern.as_ref().ok_or("a string matcher without a pattern")?, it.ignore_case) {
        (MatchPattern::Exact(it), false) => Ok(StrMatch::Exact(it.clone())),
        (MatchPattern::Prefix(it), false) => Ok(StrMatch::Prefix(it.clone())),
        (MatchPattern::Exact(it), true) => regexes.anchored(&literal(it, true)),
        (MatchPattern::Prefix(it), ignore_case) => regexes.anchored(&format!("{}(?s:.*)", literal(it, ignore_case))),
        (MatchPattern::Suffix(it), ignore_case) => regexes.anchored(&format!("(?s:.*){}", literal(it, ignore_case))),
        (MatchPattern::Contains(it), ignore_case) => regexes.anchored(&format!("(?s:.*){}(?s:.*)", literal(it, ignore_case))),
        (MatchPattern::SafeRegex(it), false) => regexes.re2(&it.regex),
        (MatchPattern::SafeRegex(_), true) => Err("ignore_case on a regex (Envoy refuses it)".to_owned()),
        (MatchPattern::Custom(_), _) => Err("a custom string matcher cannot be applied here".to_owned()),
    }
}

/// The regexes of one route configuration, held to [`REGEX_BUDGET`] together (each is charged
/// as that constant says; its one cache is shared by every worker, `interp::Regex`).
struct Regexes {
    room: usize,
}

impl Regexes {
    fn new() -> Regexes {
        Regexes { room: REGEX_BUDGET }
    }

    /// An anchored regex built from escaped literals.
    fn anchored(&mut self, pattern: &str) -> Result<StrMatch, String> {
        let regex = build_regex(&format!("^(?:{pattern})$"))?;
        self.charge(regex)
    }

    /// An RE2 regex, matched against the whole value as Envoy does; one RE2 refuses is refused.
    fn re2(&mut self, pattern: &str) -> Result<StrMatch, String> {
        let invalid = |err: String| format!("regex `{pattern}` is invalid: {err}");
        let regex = build_regex(&re2::to_rust(pattern).map_err(invalid)?).map_err(invalid)?;
        self.charge(regex).map_err(|err| format!("regex `{pattern}`: {err}"))
    }

    fn charge(&mut self, regex: regex_automata::meta::Regex) -> Result<StrMatch, String> {
        let cost = 2 * regex.memory_usage() + 2 * REGEX_CACHE_CAPACITY;
        self.room = self
            .room
            .checked_sub(cost)
            .ok_or_else(|| format!("the route configuration's regexes would take more than {} MiB", REGEX_BUDGET >> 20))?;
        Ok(StrMatch::Regex(crate::interp::Regex::new(regex)))
    }
}

/// A regex of at most [`REGEX_SIZE_LIMIT`] compiled, with small lazy DFA caches and without
/// the bounded backtracker (whose scratch would be up to 256 KiB per cache).
fn build_regex(pattern: &str) -> Result<regex_automata::meta::Regex, String> {
    use regex_automata::meta;
    let config = meta::Config::new().nfa_size_limit(Some(REGEX_SIZE_LIMIT)).hybrid_cache_capacity(REGEX_CACHE_CAPACITY).backtrack(false);
    meta::Regex::builder().configure(config).build(pattern).map_err(|err| err.to_string())
}

fn forward(
    it: &route::Route,
    action: &route::RouteAction,
    matched_prefix: Option<String>,
    clusters: &ClusterIndex<'_>,
) -> Result<OwnedForward, String> {
    use route::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let cluster = |name: &str| -> Result<u32, String> {
        clusters.get(name).copied().ok_or_else(|| format!("cluster `{name}` is not compiled into this sidecar"))
    };
    let destinations = match action.cluster_specifier.as_ref().ok_or("no cluster")? {
        ClusterSpecifier::Cluster(name) => vec![WeightedCluster { cluster: cluster(name)?, weight: 100 }],
        ClusterSpecifier::WeightedClusters(weighted) => {
            let mut out = Vec::new();
            for it in &weighted.clusters {
                let weight = it.weight.as_ref().map_or(0, |it| it.value);
                if !it.cluster_header.is_empty() {
                    return Err("a weighted cluster named by a header".to_owned());
                }
                let extras = !it.request_headers_to_add.is_empty()
                    || !it.request_headers_to_remove.is_empty()
                    || !it.response_headers_to_add.is_empty()
                    || !it.response_headers_to_remove.is_empty()
                    || !it.typed_per_filter_config.is_empty()
                    || it.host_rewrite_specifier.is_some()
                    || it.metadata_match.is_some();
                if extras {
                    return Err(format!("weighted cluster `{}`: per-destination settings cannot be applied here", it.name));
                }
                out.push(WeightedCluster { cluster: cluster(&it.name)?, weight });
            }
            let total: u64 = out.iter().map(|it| u64::from(it.weight)).sum();
            if total == 0 || total > u64::from(u32::MAX) {
                return Err(format!("weighted clusters whose weights sum to {total}"));
            }
            out
        }
        _ => return Err("a cluster named by a header or a plugin".to_owned()),
    };
    let unsupported = [
        (
            action.regex_rewrite.is_some() || action.path_rewrite_policy.is_some() || !action.path_rewrite.is_empty(),
            "a regex or template path rewrite",
        ),
        (!action.rate_limits.is_empty(), "global rate limits"),
        (action.hedge_policy.is_some(), "hedging"),
        (action.retry_policy_typed_config.is_some(), "a typed retry policy"),
        (action.request_mirror_policies.len() > 1, "more than one mirror"),
        (!action.upgrade_configs.is_empty(), "per-route upgrade configuration"),
        (action.metadata_match.is_some(), "subset load balancing by metadata"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|it| it.0) {
        return Err(format!("{what} cannot be applied here"));
    }
    // Envoy: a max_stream_duration replaces the route timeout; else the timeout, 15 s when
    // unset; 0 means none (which `request_timeout` reads from `Some(0)`).
    let timeout_ms = match (action.max_stream_duration.as_ref().and_then(|it| it.max_stream_duration.as_ref()), &action.timeout) {
        (Some(duration), _) => Some(millis(duration)?),
        (None, Some(timeout)) => Some(millis(timeout)?),
        (None, None) => Some(ENVOY_DEFAULT_TIMEOUT_MS),
    };
    let path_rewrite = Some(&action.prefix_rewrite).filter(|it| !it.is_empty()).map(|with| (matched_prefix, with.clone()));
    let authority_rewrite = match &action.host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(it)) => Some(it.clone()),
        Some(_) => return Err("a host rewrite other than a literal".to_owned()),
    };
    let mirror = match action.request_mirror_policies.first() {
        None => None,
        Some(policy) => Some(Mirror {
            cluster: cluster(&policy.cluster)?,
            per_million: policy.runtime_fraction.as_ref().map_or(Ok(1_000_000), |it| per_million(it.default_value.as_ref()))?,
        }),
    };
    let (mut fault, mut rate_limit) = (Fault::NONE, None);
    for (name, config) in &it.typed_per_filter_config {
        match name.as_str() {
            "envoy.filters.http.fault" if config.type_url.ends_with("/envoy.extensions.filters.http.fault.v3.HTTPFault") => {
                fault = http_fault(config)?;
            }
            "envoy.filters.http.local_ratelimit"
                if config.type_url.ends_with("/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit") =>
            {
                rate_limit = local_rate_limit(config)?;
            }
            other => return Err(format!("configuration for filter `{other}` ({}) cannot be applied here", config.type_url)),
        }
    }
    Ok(OwnedForward {
        destinations,
        timeout_ms,
        path_rewrite,
        authority_rewrite,
        request_headers: header_ops(&it.request_headers_to_add, &it.request_headers_to_remove)?,
        response_headers: header_ops(&it.response_headers_to_add, &it.response_headers_to_remove)?,
        retries: retries(action.retry_policy.as_ref(), any_method(it.metadata.as_ref()))?,
        fault,
        rate_limit,
        mirror,
    })
}

fn per_million(percent: Option<&types::FractionalPercent>) -> Result<u32, String> {
    use types::fractional_percent::DenominatorType;
    let Some(percent) = percent else { return Ok(0) };
    let scale = match DenominatorType::try_from(percent.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(format!("an unknown percentage denominator {}", percent.denominator)),
    };
    Ok(percent.numerator.saturating_mul(scale).min(1_000_000))
}

#[allow(deprecated)] // `append`, which older control planes still send.
fn header_ops(add: &[core::HeaderValueOption], remove: &[String]) -> Result<OwnedHeaderOps, String> {
    use core::header_value_option::HeaderAppendAction;
    let mut ops = OwnedHeaderOps { remove: remove.iter().map(|it| it.to_ascii_lowercase()).collect(), ..OwnedHeaderOps::default() };
    for option in add {
        let header = option.header.as_ref().ok_or("a header option without a header")?;
        let value = if header.raw_value.is_empty() {
            header.value.clone()
        } else {
            String::from_utf8(header.raw_value.clone()).map_err(|_| format!("header `{}`: a value that is not UTF-8", header.key))?
        };
        if http::HeaderName::from_bytes(header.key.as_bytes()).is_err() || http::HeaderValue::from_str(&value).is_err() {
            return Err(format!("header `{}`: not a valid header name and value", header.key));
        }
        let append = match option.append.as_ref() {
            Some(it) => it.value,
            None => match HeaderAppendAction::try_from(option.append_action) {
                Ok(HeaderAppendAction::AppendIfExistsOrAdd) => true,
                Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
                _ => return Err(format!("header `{}`: an append action other than append or overwrite", header.key)),
            },
        };
        let list = if append { &mut ops.add } else { &mut ops.set };
        list.push((header.key.to_ascii_lowercase(), value));
    }
    Ok(ops)
}

fn retries(policy: Option<&route::RetryPolicy>, any_method: bool) -> Result<OwnedRetries, String> {
    let Some(policy) = policy else { return Ok(OwnedRetries::default()) };
    let mut on = 0;
    for name in policy.retry_on.split(',').map(str::trim).filter(|it| !it.is_empty()) {
        // Conditions the sidecar cannot observe are left out, as meshc leaves them out of
        // compiled routes.
        on |= RetryOn::from_name(name).unwrap_or(0);
    }
    let statuses = policy
        .retriable_status_codes
        .iter()
        .map(|it| {
            u16::try_from(*it)
                .ok()
                .filter(|it| (100..600).contains(it))
                .ok_or_else(|| format!("retriable status {it} is not an HTTP status"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    let avoid_previous_hosts = policy.retry_host_predicate.iter().any(|it| it.name == "envoy.retry_host_predicates.previous_hosts");
    Ok(OwnedRetries {
        // Envoy's default when the policy names no count.
        attempts: policy.num_retries.as_ref().map_or(1, |it| it.value),
        per_try_timeout_ms: policy.per_try_timeout.as_ref().map(millis).transpose()?.filter(|it| *it > 0),
        on,
        statuses,
        avoid_previous_hosts,
        any_method,
    })
}

/// Whether the route's metadata says `meshc: {any_method: true}` (`METADATA_NAMESPACE` in
/// codegen/src/emit/xds/mod.rs): meshc's `any_method` on retries, which Envoy's retry policy
/// has no field for. Other metadata is left alone, as Envoy leaves it.
fn any_method(metadata: Option<&core::Metadata>) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    let flag = metadata.and_then(|it| it.filter_metadata.get("meshc")).and_then(|it| it.fields.get("any_method"));
    matches!(flag.and_then(|it| it.kind.as_ref()), Some(Kind::BoolValue(true)))
}

fn http_fault(config: &Any) -> Result<Fault, String> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use fault::fault_abort::ErrorType;
    let config = fault::HttpFault::decode(&config.value[..]).map_err(|err| format!("an undecodable fault configuration: {err}"))?;
    if config.max_active_faults.is_some()
        || !config.headers.is_empty()
        || !config.downstream_nodes.is_empty()
        || config.response_rate_limit.is_some()
    {
        return Err("fault limits, header or node conditions and response rate limits cannot be applied here".to_owned());
    }
    let delay = match &config.delay {
        None => None,
        Some(delay) => match &delay.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(duration)) => Some((millis(duration)?, per_million(delay.percentage.as_ref())?)),
            _ => return Err("a fault delay other than a fixed one".to_owned()),
        },
    };
    let abort = match &config.abort {
        None => None,
        Some(abort) => {
            let answer = match &abort.error_type {
                Some(ErrorType::HttpStatus(status)) => {
                    Abort::Http(u16::try_from(*status).ok().filter(|it| (200..600).contains(it)).ok_or("a fault status out of range")?)
                }
                Some(ErrorType::GrpcStatus(status)) => Abort::Grpc(*status),
                _ => return Err("a fault abort other than an HTTP or gRPC status".to_owned()),
            };
            Some((answer, per_million(abort.percentage.as_ref())?))
        }
    };
    Ok(Fault { delay, abort })
}

fn local_rate_limit(config: &Any) -> Result<Option<RateLimit>, String> {
    let config =
        local_ratelimit::LocalRateLimit::decode(&config.value[..]).map_err(|err| format!("an undecodable local rate limit: {err}"))?;
    let share = |it: &Option<core::RuntimeFractionalPercent>| per_million(it.as_ref().and_then(|it| it.default_value.as_ref()));
    let (enabled, enforced) = (share(&config.filter_enabled)?, share(&config.filter_enforced)?);
    if enabled == 0 || enforced == 0 {
        return Ok(None);
    }
    if enabled < 1_000_000 || enforced < 1_000_000 {
        return Err("a local rate limit on part of the requests cannot be applied here".to_owned());
    }
    if config.status.is_some()
        || config.local_rate_limit_per_downstream_connection
        || config.local_cluster_rate_limit.is_some()
        || !config.response_headers_to_add.is_empty()
        || config.enable_x_ratelimit_headers != 0
    {
        return Err(
            "a local rate limit's own status, per-connection or cluster-wide buckets and rate limit headers cannot be applied here"
                .to_owned(),
        );
    }
    let per_source = !config.descriptors.is_empty() || !config.rate_limits.is_empty();
    let bucket = if per_source {
        // The one form of descriptors the sidecar carries out: a bucket per source address
        // (see `per_source_bucket`).
        per_source_bucket(&config)?
    } else {
        config.token_bucket.as_ref().ok_or("a local rate limit without a token bucket")?
    };
    let interval = millis(bucket.fill_interval.as_ref().ok_or("a token bucket without a fill interval")?)?;
    if interval == 0 || bucket.max_tokens == 0 {
        return Err("a token bucket with no tokens or no fill interval".to_owned());
    }
    Ok(Some(RateLimit::new(bucket.max_tokens, bucket.tokens_per_fill.as_ref().map_or(1, |it| it.value), interval, per_source)))
}

/// The bucket of a per-source local rate limit as meshc writes one (and Envoy reads it): one
/// `remote_address` action, one descriptor on that key with no value (a wildcard: a bucket of
/// its own for each source address), and the route's own bucket not consumed besides. Any
/// other use of descriptors is refused. How many sources Envoy keeps (`max_dynamic_descriptors`)
/// is not taken up: the sidecar keeps its own bound of 10,000.
fn per_source_bucket(config: &local_ratelimit::LocalRateLimit) -> Result<&types::TokenBucket, String> {
    use route::rate_limit::action::ActionSpecifier;
    let refused = || "local rate limit descriptors other than one bucket per remote address cannot be applied here".to_owned();
    let [descriptor] = &config.descriptors[..] else { return Err(refused()) };
    let [action] = &config.rate_limits[..] else { return Err(refused()) };
    let source_only = matches!(&descriptor.entries[..], [entry] if entry.key == "remote_address" && entry.value.is_empty());
    let action_only = matches!(&action.actions[..], [it] if matches!(it.action_specifier, Some(ActionSpecifier::RemoteAddress(_))))
        && *action == route::RateLimit { actions: action.actions.clone(), ..Default::default() };
    let default_kept = config.always_consume_default_token_bucket.as_ref().is_none_or(|it| it.value);
    if !source_only || !action_only || descriptor.shadow_mode || default_kept {
        return Err(refused());
    }
    descriptor.token_bucket.as_ref().ok_or_else(|| "a local rate limit descriptor without a token bucket".to_owned())
}

fn redirect_answer(redirect: &route::RedirectAction) -> Result<OwnedAnswer, String> {
    use route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    if redirect.strip_query {
        return Err("strip_query cannot be applied here".to_owned());
    }
    let status = match RedirectResponseCode::try_from(redirect.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => return Err(format!("an unknown redirect code {}", redirect.response_code)),
    };
    let scheme = match &redirect.scheme_rewrite_specifier {
        None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(it)) => Some(it.clone()),
    };
    let path = match &redirect.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(it)) => Some(it.clone()),
        Some(_) => return Err("a redirect that rewrites a prefix or by regex".to_owned()),
    };
    let port = match redirect.port_redirect {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| format!("redirect port {port} is out of range"))?),
    };
    let authority = Some(redirect.host_redirect.clone()).filter(|it| !it.is_empty());
    Ok(OwnedAnswer::Redirect { scheme, authority, port, path, status })
}

/// The count of route `route` of virtual host `table`, which no compiled route has: interned
/// for good (a count must not restart with an update); past [`MAX_INTERNED_ROUTES`], routes
/// share one.
fn intern(table: &str, route: &str) -> &'static RouteStats {
    static OVERFLOW: RouteStats = RouteStats::new("(overrides)", "(more routes)");
    let mut interned = INTERNED.lock().unwrap_or_else(|it| it.into_inner());
    if let Some(stats) = interned.get(&(table.to_owned(), route.to_owned())) {
        return stats;
    }
    if interned.len() >= MAX_INTERNED_ROUTES {
        return &OVERFLOW;
    }
    let names = (Box::leak(table.to_owned().into_boxed_str()), Box::leak(route.to_owned().into_boxed_str()));
    let stats: &'static RouteStats = Box::leak(Box::new(RouteStats::new(names.0, names.1)));
    interned.insert((table.to_owned(), route.to_owned()), stats);
    stats
}

static INTERNED: Mutex<BTreeMap<(String, String), &'static RouteStats>> = Mutex::new(BTreeMap::new());

/// The counts of routes only overrides have taken, for the route metrics.
pub fn interned_routes() -> Vec<&'static RouteStats> {
    INTERNED.lock().map(|it| it.values().copied().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
