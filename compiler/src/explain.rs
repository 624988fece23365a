//! `meshc explain`: the reference interpreter of the IR.
//!
//! Given a workload and a request, it finds the route table the sidecar would use, tries the
//! routes in order (saying why each earlier one does not match), resolves the destination to
//! its instances, and evaluates the destination workloads' authorization policies with
//! Istio's semantics. The generated sidecar must agree with it; it is written for clarity,
//! not speed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use meshc_codegen::ir;
use meshc_codegen::ir::{Action, AuthzAction, Mesh, Pattern, PresenceMatch, Protocol, RouteTableKind, StringMatch, StringMatchKind};
use serde::Serialize;

/// Arguments of `meshc explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// `[DIR] METHOD URL` for HTTP, or `[DIR]` with `--bolt` or `--dubbo`.
    #[arg(num_args = 0..=3, value_name = "[DIR] METHOD URL")]
    positional: Vec<String>,
    /// The calling workload.
    #[arg(long, value_name = "WORKLOAD")]
    from: Option<String>,
    /// A request header (HTTP), Bolt header key or Dubbo attachment: `-H 'name: value'`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Explain a Bolt request: `--bolt SERVICE METHOD`, SERVICE as `interface:version[:uniqueId]`.
    #[arg(long, num_args = 2, value_names = ["SERVICE", "METHOD"], conflicts_with = "dubbo")]
    bolt: Option<Vec<String>>,
    /// Explain a Dubbo request: `--dubbo INTERFACE[:VERSION] METHOD`.
    #[arg(long, num_args = 2, value_names = ["INTERFACE[:VERSION]", "METHOD"])]
    dubbo: Option<Vec<String>>,
    /// The Dubbo group of a `--dubbo` request.
    #[arg(long, requires = "dubbo")]
    group: Option<String>,
    /// The caller's IP address, for `ip_blocks` and `source.ip` conditions.
    #[arg(long, value_name = "IP")]
    source_ip: Option<IpAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Human)]
    format: ExplainFormat,
}

/// Output format of `meshc explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    /// Readable text.
    Human,
    /// JSON.
    Json,
}

/// A request as the sidecar sees it.
#[derive(Clone, Debug, Serialize)]
pub struct Request {
    /// The protocol of the request.
    pub protocol: RequestProtocol,
    /// HTTP: the Host / `:authority`.
    pub authority: Option<String>,
    /// HTTP: the path, without the query.
    pub path: Option<String>,
    /// HTTP method or RPC method.
    pub method: String,
    /// HTTP query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Headers (lower-case names), Bolt header keys or Dubbo attachments, in order.
    pub headers: Vec<(String, String)>,
    /// RPC: the Bolt service name or the Dubbo interface.
    pub service: Option<String>,
    /// RPC: the interface.
    pub interface: Option<String>,
    /// RPC: the version ("" when absent).
    pub version: Option<String>,
    /// RPC: the Dubbo group ("" when absent).
    pub group: Option<String>,
}

/// What kind of request `explain` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestProtocol {
    /// HTTP/1.1, HTTP/2 or gRPC, routed by host.
    Http,
    /// SOFA Bolt, routed by interface.
    Bolt,
    /// Dubbo 2, routed by interface.
    Dubbo,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.headers.iter().filter(|it| it.0.eq_ignore_ascii_case(name)).map(|it| it.1.as_str()).collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|it| it.0 == name).map(|it| it.1.as_str())
    }
}

/// Why a route did or did not match.
#[derive(Clone, Debug, Serialize)]
pub struct RouteTrace {
    /// The route's name.
    pub name: String,
    /// Whether it matched.
    pub matched: bool,
    /// The reason, in words.
    pub reason: String,
}

/// The route a request takes in a table.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// Index of the matching route, if any.
    pub route: Option<usize>,
    /// One entry per route tried, in order.
    pub trace: Vec<RouteTrace>,
}

/// Tries the routes of a table in order; the first match wins.
pub fn select_route(table: &ir::RouteTable, request: &Request) -> Selection {
    let mut trace = Vec::new();
    for (index, route) in table.routes.iter().enumerate() {
        if route.matches.is_empty() {
            trace.push(RouteTrace {
                name: route.name.clone(),
                matched: true,
                reason: "it has no conditions: it matches every request".to_owned(),
            });
            return Selection { route: Some(index), trace };
        }
        let mut reasons = Vec::new();
        for (alternative, m) in route.matches.iter().enumerate() {
            match match_failure(m, request) {
                None => {
                    let which = if route.matches.len() > 1 {
                        format!("match block {} holds", alternative + 1)
                    } else {
                        "every condition holds".to_owned()
                    };
                    trace.push(RouteTrace { name: route.name.clone(), matched: true, reason: which });
                    return Selection { route: Some(index), trace };
                }
                Some(reason) => reasons.push(reason),
            }
        }
        trace.push(RouteTrace { name: route.name.clone(), matched: false, reason: reasons.join("; and ") });
    }
    Selection { route: None, trace }
}

/// `None` when every condition holds, else the first that does not.
fn match_failure(m: &ir::Match, request: &Request) -> Option<String> {
    let fields: [(&str, &Option<StringMatch>, Option<&str>); 6] = [
        ("authority", &m.authority, request.authority.as_deref()),
        ("path", &m.path, request.path.as_deref()),
        ("method", &m.method, Some(request.method.as_str())),
        ("service", &m.service, request.service.as_deref()),
        ("version", &m.version, request.version.as_deref()),
        ("group", &m.group, request.group.as_deref()),
    ];
    for (what, condition, value) in fields {
        let Some(condition) = condition else { continue };
        let value = value.unwrap_or("");
        if !string_matches(condition, value) {
            return Some(format!("{what} `{value}` is not {}", describe(condition)));
        }
    }
    for header in &m.headers {
        if let Some(reason) = presence_failure("header", &header.name, &header.kind, request.header(&header.name).as_deref()) {
            return Some(reason);
        }
    }
    for query in &m.query {
        if let Some(reason) = presence_failure("query parameter", &query.name, &query.kind, request.query_param(&query.name)) {
            return Some(reason);
        }
    }
    None
}

fn presence_failure(what: &str, name: &str, kind: &PresenceMatch, value: Option<&str>) -> Option<String> {
    match (kind, value) {
        (PresenceMatch::Present, None) => Some(format!("{what} `{name}` is absent")),
        (PresenceMatch::Absent, Some(_)) => Some(format!("{what} `{name}` is present")),
        (PresenceMatch::Value(condition), None) => Some(format!("{what} `{name}` is absent (needs {})", describe(condition))),
        (PresenceMatch::Value(condition), Some(value)) if !string_matches(condition, value) => {
            Some(format!("{what} `{name}` is `{value}`, not {}", describe(condition)))
        }
        _ => None,
    }
}

/// Whether `value` satisfies a string condition (regexes match the whole value).
pub fn string_matches(condition: &StringMatch, value: &str) -> bool {
    match condition.kind {
        StringMatchKind::Exact => value == condition.value,
        StringMatchKind::Prefix => value.starts_with(condition.value.as_str()),
        StringMatchKind::Regex => crate::check::compile_regex(&condition.value).is_ok_and(|re| re.is_match(value)),
    }
}

fn describe(condition: &StringMatch) -> String {
    match condition.kind {
        StringMatchKind::Exact => format!("`{}`", condition.value),
        StringMatchKind::Prefix => format!("prefixed by `{}`", condition.value),
        StringMatchKind::Regex => format!("matched by regex `{}`", condition.value),
    }
}

/// Why no route table applies.
#[derive(Clone, Debug, Serialize)]
pub struct NoTable {
    /// The status the sidecar answers with.
    pub status: u16,
    /// Why, in words.
    pub reason: String,
}

/// Finds the HTTP route table for an authority among a workload's outbound tables.
pub fn find_http_table<'m>(mesh: &'m Mesh, workload: &ir::Workload, authority: &str) -> Result<&'m ir::RouteTable, NoTable> {
    let authority = authority.to_ascii_lowercase();
    let selects = |table: &ir::RouteTable| match &table.kind {
        RouteTableKind::Http { service, domains, local_domains, .. } => {
            domains.contains(&authority)
                || (mesh.services[service.index()].namespace == workload.namespace && local_domains.contains(&authority))
        }
        _ => false,
    };
    if let Some(table) = workload.outbound.iter().map(|it| &mesh.route_tables[it.index()]).find(|it| selects(it)) {
        return Ok(table);
    }
    match mesh.route_tables.iter().find(|it| selects(it)) {
        Some(table) => Err(NoTable {
            status: 404,
            reason: format!(
                "`{authority}` is {}, but workload `{}` may not call it (it is not in the workload's `calls`)",
                table.name, workload.name
            ),
        }),
        None => Err(NoTable { status: 404, reason: format!("no service of the mesh is reached as `{authority}`") }),
    }
}

/// Finds the RPC route table for an interface among a workload's outbound tables.
pub fn find_rpc_table<'m>(
    mesh: &'m Mesh,
    workload: &ir::Workload,
    protocol: Protocol,
    interface: &str,
) -> Result<&'m ir::RouteTable, NoTable> {
    let selects = |table: &ir::RouteTable| matches!(&table.kind, RouteTableKind::Rpc { protocol: p, interface: i, .. } if *p == protocol && i == interface);
    let status = if protocol == Protocol::Bolt { 6 } else { 60 };
    if let Some(table) = workload.outbound.iter().map(|it| &mesh.route_tables[it.index()]).find(|it| selects(it)) {
        return Ok(table);
    }
    match mesh.route_tables.iter().find(|it| selects(it)) {
        Some(_) => Err(NoTable { status, reason: format!("workload `{}` may not call any service of `{interface}`", workload.name) }),
        None => Err(NoTable { status, reason: format!("no {} service of the mesh implements `{interface}`", protocol.as_str()) }),
    }
}

/// One authorization decision at a serving workload.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The workload that decides.
    pub workload: String,
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The deciding policy, if one decided.
    pub policy: Option<String>,
    /// The deciding rule's number (1-based), if a rule decided.
    pub rule: Option<usize>,
    /// Why, in words.
    pub reason: String,
}

/// The caller, as authorization sees it.
#[derive(Clone, Debug)]
pub struct Caller<'a> {
    /// The calling workload.
    pub workload: &'a ir::Workload,
    /// Its IP address, when known.
    pub ip: Option<IpAddr>,
}

/// Evaluates the policies of a serving workload with Istio's order: DENY, then ALLOW.
pub fn authorize(mesh: &Mesh, server: &ir::Workload, caller: &Caller<'_>, request: &Request, port: u16) -> Verdict {
    let policies: Vec<&ir::AuthzPolicy> = server.authz.iter().map(|it| &mesh.authz_policies[it.index()]).collect();
    let verdict = |allowed, policy: Option<&ir::AuthzPolicy>, rule: Option<usize>, reason: String| Verdict {
        workload: server.name.clone(),
        allowed,
        policy: policy.map(|it| it.name.clone()),
        rule,
        reason,
    };
    // On a request that is not HTTP, Istio drops HTTP-only fields from DENY rules (denying
    // more), and an ALLOW rule that has them never matches.
    let http = request.protocol == RequestProtocol::Http;
    let deny_rule = |rule: &ir::AuthzRule| if http { rule.clone() } else { without_http_fields(rule) };
    let allow_applies = |rule: &ir::AuthzRule| http || !has_http_fields(rule);
    for policy in policies.iter().filter(|it| it.action == AuthzAction::Deny) {
        if let Some(rule) = policy.rules.iter().position(|rule| rule_matches(&deny_rule(rule), caller, request, port)) {
            return verdict(false, Some(policy), Some(rule + 1), format!("DENY policy `{}` rule {} matches", policy.name, rule + 1));
        }
    }
    let allows: Vec<&&ir::AuthzPolicy> = policies.iter().filter(|it| it.action == AuthzAction::Allow).collect();
    if allows.is_empty() {
        return verdict(true, None, None, "no ALLOW policy applies, so requests are allowed".to_owned());
    }
    for policy in &allows {
        if let Some(rule) = policy.rules.iter().position(|rule| allow_applies(rule) && rule_matches(rule, caller, request, port)) {
            return verdict(true, Some(policy), Some(rule + 1), format!("ALLOW policy `{}` rule {} matches", policy.name, rule + 1));
        }
    }
    let names: Vec<String> = allows.iter().map(|it| format!("`{}`", it.name)).collect();
    verdict(false, None, None, format!("ALLOW policies apply ({}) and none matches", names.join(", ")))
}

/// Whether a rule names hosts, paths or request headers, which only HTTP requests have.
fn has_http_fields(rule: &ir::AuthzRule) -> bool {
    rule.to.iter().any(|op| !op.hosts.is_empty() || !op.not_hosts.is_empty() || !op.paths.is_empty() || !op.not_paths.is_empty())
        || rule.when.iter().any(|it| matches!(it.key, ir::ConditionKey::RequestHeader(_)))
}

/// A rule without its HTTP-only fields.
fn without_http_fields(rule: &ir::AuthzRule) -> ir::AuthzRule {
    let mut rule = rule.clone();
    for op in &mut rule.to {
        op.hosts.clear();
        op.not_hosts.clear();
        op.paths.clear();
        op.not_paths.clear();
    }
    rule.when.retain(|it| !matches!(it.key, ir::ConditionKey::RequestHeader(_)));
    rule
}

fn rule_matches(rule: &ir::AuthzRule, caller: &Caller<'_>, request: &Request, port: u16) -> bool {
    let principal = caller.workload.principal.as_str();
    let namespace = caller.workload.namespace.as_str();
    let from = rule.from.is_empty()
        || rule.from.iter().any(|source| {
            field(&source.principals, &source.not_principals, Some(principal), pattern_matches)
                && field(&source.namespaces, &source.not_namespaces, Some(namespace), pattern_matches)
                && field(&source.ip_blocks, &source.not_ip_blocks, caller.ip, |block, ip| block.contains(ip))
                // With no proxy in front, the original client is the peer.
                && field(&source.remote_ip_blocks, &source.not_remote_ip_blocks, caller.ip, |block, ip| block.contains(ip))
        });
    let host = request.authority.as_deref().map(|it| it.to_ascii_lowercase());
    let to = rule.to.is_empty()
        || rule.to.iter().any(|op| {
            field(&op.hosts, &op.not_hosts, host.as_deref(), |pattern, host| {
                // Istio matches hosts with or without the port.
                pattern_matches(pattern, host) || pattern_matches(pattern, host.rsplit_once(':').map_or(host, |it| it.0))
            }) && field(&op.methods, &op.not_methods, Some(request.method.as_str()), pattern_matches)
                && field(&op.paths, &op.not_paths, request.path.as_deref(), path_matches)
                && field(&op.ports, &op.not_ports, Some(port), |a, b| *a == b)
        });
    let when = rule.when.iter().all(|condition| {
        let value: Option<String> = match &condition.key {
            ir::ConditionKey::RequestHeader(name) => request.header(name),
            ir::ConditionKey::SourceIp | ir::ConditionKey::RemoteIp => caller.ip.map(|it| it.to_string()),
            ir::ConditionKey::SourceNamespace => Some(namespace.to_owned()),
            ir::ConditionKey::SourcePrincipal => Some(principal.to_owned()),
            ir::ConditionKey::DestinationPort => Some(port.to_string()),
            ir::ConditionKey::DestinationIp | ir::ConditionKey::ConnectionSni => None,
        };
        let test = |pattern: &Pattern, value: &str| match &condition.key {
            ir::ConditionKey::SourceIp | ir::ConditionKey::RemoteIp | ir::ConditionKey::DestinationIp => match pattern {
                Pattern::Exact(cidr) => {
                    crate::check::parse_cidr(cidr).is_ok_and(|block| value.parse::<IpAddr>().is_ok_and(|ip| block.contains(ip)))
                }
                _ => false,
            },
            _ => pattern_matches(pattern, value),
        };
        field(&condition.values, &condition.not_values, value.as_deref(), test)
    });
    from && to && when
}

/// Istio's field semantics: when values are given, the attribute must be known and match one;
/// when exclusions are given, a known attribute must match none.
fn field<P, V: Copy>(values: &[P], not_values: &[P], attribute: Option<V>, test: impl Fn(&P, V) -> bool) -> bool {
    let included = values.is_empty() || attribute.is_some_and(|a| values.iter().any(|p| test(p, a)));
    let excluded = attribute.is_some_and(|a| not_values.iter().any(|p| test(p, a)));
    included && !excluded
}

/// Istio's exact / `prefix*` / `*suffix` / `*` matching.
pub fn pattern_matches(pattern: &Pattern, value: &str) -> bool {
    match pattern {
        Pattern::Exact(it) => value == it,
        Pattern::Prefix(it) => value.starts_with(it.as_str()),
        Pattern::Suffix(it) => value.ends_with(it.as_str()),
        Pattern::Any => true,
        Pattern::Template(_) => path_matches(pattern, value),
    }
}

/// Paths also take templates: `{*}` is one segment, `{**}` the rest.
pub fn path_matches(pattern: &Pattern, path: &str) -> bool {
    let Pattern::Template(segments) = pattern else { return pattern_matches(pattern, path) };
    let Some(rest) = path.strip_prefix('/') else { return false };
    let parts: Vec<&str> = rest.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        match segment.as_str() {
            "{**}" => return parts.len() > index,
            "{*}" => {
                if parts.get(index).is_none_or(|it| it.is_empty()) {
                    return false;
                }
            }
            literal => {
                if parts.get(index) != Some(&literal) {
                    return false;
                }
            }
        }
    }
    parts.len() == segments.len()
}

/// Where a forwarded request goes.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationView {
    /// Cluster name.
    pub cluster: String,
    /// Service host.
    pub service: String,
    /// Subset.
    pub subset: Option<String>,
    /// Port.
    pub port: u16,
    /// Share, in percent.
    pub weight: u32,
    /// Whether the calling workload may call the service; when not, its sidecar has no such
    /// cluster and answers 503.
    pub in_scope: bool,
    /// Instances.
    pub instances: Vec<InstanceView>,
    /// Authorization at each workload serving the service.
    pub authz: Vec<Verdict>,
}

/// An instance, for display.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceView {
    /// `address:port`.
    pub endpoint: String,
    /// Health.
    pub health: ir::Health,
    /// Registry.
    pub origin: String,
    /// Zone.
    pub zone: Option<String>,
    /// Weight.
    pub weight: u32,
}

/// The whole explanation.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The calling workload.
    pub from: String,
    /// The request.
    pub request: Request,
    /// The route table used.
    pub table: Option<String>,
    /// Its spec file (none for a default table).
    pub declared_in: Option<String>,
    /// Why there is no table.
    pub no_table: Option<NoTable>,
    /// Routes tried.
    pub routes: Vec<RouteTrace>,
    /// The matching route.
    pub route: Option<String>,
    /// What the route does: `forward`, `redirect`, `direct_response` or `no_route`.
    pub action: String,
    /// The status the sidecar answers with when it answers itself.
    pub status: Option<u16>,
    /// Destinations of a forwarding route.
    pub destinations: Vec<DestinationView>,
}

/// Explains a request from a workload.
pub fn explain(mesh: &Mesh, workload: &ir::Workload, request: Request, caller_ip: Option<IpAddr>) -> Explanation {
    let mut out = Explanation {
        from: workload.name.clone(),
        request,
        table: None,
        declared_in: None,
        no_table: None,
        routes: Vec::new(),
        route: None,
        action: "no_route".to_owned(),
        status: None,
        destinations: Vec::new(),
    };
    let table = match out.request.protocol {
        RequestProtocol::Http => find_http_table(mesh, workload, out.request.authority.as_deref().unwrap_or("")),
        RequestProtocol::Bolt => find_rpc_table(mesh, workload, Protocol::Bolt, out.request.interface.as_deref().unwrap_or("")),
        RequestProtocol::Dubbo => find_rpc_table(mesh, workload, Protocol::Dubbo, out.request.interface.as_deref().unwrap_or("")),
    };
    let table = match table {
        Ok(table) => table,
        Err(no_table) => {
            out.status = Some(no_table.status);
            out.no_table = Some(no_table);
            return out;
        }
    };
    out.table = Some(table.name.clone());
    out.declared_in.clone_from(&table.declared_in);
    let selection = select_route(table, &out.request);
    out.routes = selection.trace;
    let Some(index) = selection.route else {
        out.status = Some(match out.request.protocol {
            RequestProtocol::Http => 404,
            RequestProtocol::Bolt => 6,
            RequestProtocol::Dubbo => 60,
        });
        return out;
    };
    let route = &table.routes[index];
    out.route = Some(route.name.clone());
    match &route.action {
        Action::Forward { destinations, .. } => {
            out.action = "forward".to_owned();
            let caller = Caller { workload, ip: caller_ip };
            for weighted in destinations {
                let cluster = &mesh.clusters[weighted.cluster.index()];
                let service = &mesh.services[cluster.service.index()];
                let instances = cluster
                    .endpoints
                    .iter()
                    .map(|id| {
                        let it = &mesh.instances[id.index()];
                        let endpoint = if it.address.contains(':') {
                            format!("[{}]:{}", it.address, it.port)
                        } else {
                            format!("{}:{}", it.address, it.port)
                        };
                        InstanceView {
                            endpoint,
                            health: it.health,
                            origin: it.origin.clone(),
                            zone: it.locality.zone.clone(),
                            weight: it.weight,
                        }
                    })
                    .collect();
                let authz = mesh
                    .workloads
                    .iter()
                    .filter(|server| server.inbound.iter().any(|port| port.services.contains(&service.id)))
                    // Authorization sees the port the serving application listens on.
                    .map(|server| {
                        let target = service.ports.iter().find(|it| it.number == cluster.port).map_or(cluster.port, |it| it.target_port);
                        authorize(mesh, server, &caller, &out.request, target)
                    })
                    .collect();
                out.destinations.push(DestinationView {
                    cluster: cluster.name.clone(),
                    service: service.host.clone(),
                    subset: cluster.subset.clone(),
                    port: cluster.port,
                    weight: weighted.weight,
                    in_scope: workload.clusters.contains(&cluster.id),
                    instances,
                    authz,
                });
            }
        }
        Action::Redirect { status, .. } => {
            out.action = "redirect".to_owned();
            out.status = Some(*status);
        }
        Action::DirectResponse { status, .. } => {
            out.action = "direct_response".to_owned();
            out.status = Some(*status);
        }
    }
    out
}

/// Renders an explanation for people.
pub fn render(explanation: &Explanation) -> String {
    let mut out = String::new();
    let request = &explanation.request;
    let what = match request.protocol {
        RequestProtocol::Http => {
            format!("{} http://{}{}", request.method, request.authority.as_deref().unwrap_or(""), request.path.as_deref().unwrap_or(""))
        }
        RequestProtocol::Bolt => format!("bolt service `{}` method `{}`", request.service.as_deref().unwrap_or(""), request.method),
        RequestProtocol::Dubbo => format!(
            "dubbo interface `{}` version `{}` group `{}` method `{}`",
            request.interface.as_deref().unwrap_or(""),
            request.version.as_deref().unwrap_or(""),
            request.group.as_deref().unwrap_or(""),
            request.method
        ),
    };
    out.push_str(&format!("request: {what}\nfrom workload: {}\n", explanation.from));
    if let Some(no_table) = &explanation.no_table {
        out.push_str(&format!("no route table: {}\nanswer: {}\n", no_table.reason, answer(request.protocol, no_table.status)));
        return out;
    }
    let source =
        explanation.declared_in.as_deref().map_or_else(|| "default routes: no `routes` block".to_owned(), |it| format!("declared in {it}"));
    out.push_str(&format!("route table: {} ({source})\n", explanation.table.as_deref().unwrap_or("")));
    for (index, trace) in explanation.routes.iter().enumerate() {
        let verdict = if trace.matched { "MATCH" } else { "no match" };
        out.push_str(&format!("  {}. route `{}`: {verdict}: {}\n", index + 1, trace.name, trace.reason));
    }
    match explanation.action.as_str() {
        "no_route" => out.push_str(&format!("no route matches: answer {}\n", answer(request.protocol, explanation.status.unwrap_or(404)))),
        "forward" => {
            for dest in &explanation.destinations {
                let subset = dest.subset.as_deref().map(|it| format!(" subset {it}")).unwrap_or_default();
                out.push_str(&format!(
                    "destination: {}{subset} port {} ({}%) via cluster {}\n",
                    dest.service, dest.port, dest.weight, dest.cluster
                ));
                if !dest.in_scope {
                    out.push_str(&format!(
                        "  not in the `calls` of `{}`: its sidecar has no such cluster and answers 503\n",
                        explanation.from
                    ));
                }
                if dest.instances.is_empty() {
                    out.push_str("  instances: none: the sidecar would answer 503\n");
                }
                for instance in &dest.instances {
                    let zone = instance.zone.as_deref().map(|it| format!(", zone {it}")).unwrap_or_default();
                    let health =
                        serde_json::to_value(instance.health).ok().and_then(|it| it.as_str().map(str::to_owned)).unwrap_or_default();
                    out.push_str(&format!(
                        "  instance {} ({health}, weight {}, from {}{zone})\n",
                        instance.endpoint, instance.weight, instance.origin
                    ));
                }
                if dest.authz.is_empty() {
                    out.push_str("  authorization: no workload of the mesh serves it, so no policy applies\n");
                }
                for verdict in &dest.authz {
                    let word = if verdict.allowed { "ALLOW" } else { "DENY" };
                    out.push_str(&format!("  authorization at `{}`: {word}: {}\n", verdict.workload, verdict.reason));
                }
            }
        }
        action => out.push_str(&format!("action: {action}, answer {}\n", answer(request.protocol, explanation.status.unwrap_or(0)))),
    }
    out
}

/// A status in the protocol's own terms.
fn answer(protocol: RequestProtocol, status: u16) -> String {
    match (protocol, status) {
        (RequestProtocol::Bolt, 6) => "Bolt status 6 (no processor)".to_owned(),
        (RequestProtocol::Dubbo, 60) => "Dubbo status 60 (service not found)".to_owned(),
        (RequestProtocol::Bolt, status) => format!("Bolt status {status}"),
        (RequestProtocol::Dubbo, status) => format!("Dubbo status {status}"),
        (_, status) => format!("HTTP {status}"),
    }
}

/// Runs `meshc explain`.
pub fn run(args: &ExplainArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &ExplainArgs) -> Result<ExitCode, String> {
    let (dir, _) = parse_request(args)?;
    let compilation = crate::compile_dir(&dir);
    if compilation.has_errors() || compilation.io_error {
        crate::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, false);
        return Ok(ExitCode::from(if compilation.io_error { 2 } else { 1 }));
    }
    let Some(mesh) = &compilation.ir else { return Ok(ExitCode::from(1)) };
    let explanation = explain_args(mesh, args)?;
    match args.format {
        ExplainFormat::Human => print!("{}", render(&explanation)),
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&explanation).map_err(|it| it.to_string())?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Explains a request given as `meshc explain` arguments (after `explain`), against a compiled mesh.
pub fn explain_words(mesh: &Mesh, words: &[String]) -> Result<Explanation, String> {
    #[derive(clap::Parser)]
    #[command(no_binary_name = true)]
    struct Words {
        #[command(flatten)]
        args: ExplainArgs,
    }
    let words = <Words as clap::Parser>::try_parse_from(words).map_err(|err| err.to_string().trim().to_owned())?;
    explain_args(mesh, &words.args)
}

fn explain_args(mesh: &Mesh, args: &ExplainArgs) -> Result<Explanation, String> {
    let (_, request) = parse_request(args)?;
    let workload = match &args.from {
        Some(name) => mesh.workloads.iter().find(|it| it.name == *name),
        None if mesh.workloads.len() == 1 => mesh.workloads.first(),
        None => None,
    };
    let Some(workload) = workload else {
        let names: Vec<&str> = mesh.workloads.iter().map(|it| it.name.as_str()).collect();
        return Err(match &args.from {
            Some(name) => format!("unknown workload `{name}`; the mesh has: {}", names.join(", ")),
            None => format!("give the calling workload with --from; the mesh has: {}", names.join(", ")),
        });
    };
    Ok(explain(mesh, workload, request, args.source_ip))
}

/// The mesh directory and the request the arguments describe.
fn parse_request(args: &ExplainArgs) -> Result<(PathBuf, Request), String> {
    let rpc = args.bolt.is_some() || args.dubbo.is_some();
    let (dir, http) = match (rpc, args.positional.as_slice()) {
        (true, []) => (PathBuf::from("."), None),
        (true, [dir]) => (PathBuf::from(dir), None),
        // A mesh directory where the method belongs: the method was left out.
        (false, [dir, url]) if Path::new(dir).is_dir() => {
            return Err(format!("the method is missing: give `[DIR] METHOD URL`, for example `{dir} GET {url}`"));
        }
        (false, [method, url]) => (PathBuf::from("."), Some((method, url))),
        (false, [dir, method, url]) => (PathBuf::from(dir), Some((method, url))),
        (true, _) => return Err("with --bolt or --dubbo, give at most the mesh directory as an argument".to_owned()),
        (false, _) => return Err("give `[DIR] METHOD URL`, or `[DIR]` with --bolt SERVICE METHOD or --dubbo INTERFACE METHOD".to_owned()),
    };
    let mut headers = Vec::new();
    for header in &args.headers {
        let (name, value) = header.split_once(':').ok_or_else(|| format!("header `{header}` is not `name: value`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let request = if let Some((method, url)) = http {
        http_request(method, url, headers)?
    } else if let Some(bolt) = &args.bolt {
        let service = bolt[0].clone();
        let mut parts = service.splitn(3, ':');
        let interface = parts.next().unwrap_or("").to_owned();
        let version = parts.next().unwrap_or("").to_owned();
        Request {
            protocol: RequestProtocol::Bolt,
            authority: None,
            path: None,
            method: bolt[1].clone(),
            query: Vec::new(),
            headers,
            service: Some(service),
            interface: Some(interface),
            version: Some(version),
            group: Some(String::new()),
        }
    } else {
        let dubbo = args.dubbo.as_ref().ok_or("give --bolt or --dubbo")?;
        let (interface, version) =
            dubbo[0].split_once(':').map_or((dubbo[0].clone(), String::new()), |(i, v)| (i.to_owned(), v.to_owned()));
        Request {
            protocol: RequestProtocol::Dubbo,
            authority: None,
            path: None,
            method: dubbo[1].clone(),
            query: Vec::new(),
            headers,
            service: Some(interface.clone()),
            interface: Some(interface),
            version: Some(version),
            group: Some(args.group.clone().unwrap_or_default()),
        }
    };
    Ok((dir, request))
}

/// Builds an HTTP request from a method and URL; a `host` header overrides the URL's authority.
pub fn http_request(method: &str, url: &str, headers: Vec<(String, String)>) -> Result<Request, String> {
    let parsed = url::Url::parse(url)
        .map_err(|err| format!("`{url}` is not a URL such as http://reviews:9080/path ({err}); give `[DIR] METHOD URL`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` is not an http:// URL"));
    }
    let host = parsed.host_str().ok_or_else(|| format!("`{url}` has no host"))?;
    let mut authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    if let Some((_, value)) = headers.iter().find(|it| it.0 == "host") {
        authority.clone_from(value);
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("`{method}` is not an HTTP method; give `[DIR] METHOD URL`"));
    }
    Ok(Request {
        protocol: RequestProtocol::Http,
        authority: Some(authority),
        path: Some(parsed.path().to_owned()),
        method: method.to_owned(),
        // Raw, not percent-decoded: Envoy compares query parameters as sent.
        query: parsed
            .query()
            .map(|query| {
                query
                    .split('&')
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        (key.to_owned(), value.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        headers,
        service: None,
        interface: None,
        version: None,
        group: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_match_segments() {
        let pattern = crate::check::parse_pattern("/books/{*}/reviews/{**}", true).unwrap();
        assert!(path_matches(&pattern, "/books/7/reviews/a/b"));
        assert!(!path_matches(&pattern, "/books/7/reviews"));
        assert!(!path_matches(&pattern, "/books//reviews/a"));
        let one = crate::check::parse_pattern("/a/{*}", true).unwrap();
        assert!(path_matches(&one, "/a/b"));
        assert!(!path_matches(&one, "/a/b/c"));
    }

    #[test]
    fn istio_fields_need_a_known_attribute() {
        let values = [Pattern::Exact("x".to_owned())];
        assert!(field(&values, &[], Some("x"), pattern_matches));
        assert!(!field(&values, &[], None::<&str>, pattern_matches));
        assert!(field(&[], &values, None::<&str>, pattern_matches));
        assert!(!field(&[], &values, Some("x"), pattern_matches));
    }
}
