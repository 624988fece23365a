//! Agreement: for random requests, every generated sidecar (the golden crates, the route-table
//! meshes and random meshes) chooses the same route and the same destinations four ways: by
//! its compiled lookup, by the runtime's interpreted matcher built from the same IR, by the
//! route overrides the sidecar's xDS client builds from the route configuration Pilot would
//! serve it, and by `meshc explain`, the reference interpreter of the IR.
//!
//! Requests are drawn from each mesh's own vocabulary (its hosts, paths, methods, header and
//! query names and values, near-misses of each), so that most of them exercise real routes.

use std::collections::BTreeMap;

use meshc_codegen::ir::{self, Match, Mesh, PresenceMatch, RouteTableKind, StringMatchKind};
use meshc_generated::{Outcome, SIDECARS, Sidecar, interpreted_router, mesh};
use meshc_runtime::__codegen as rt;
use meshc_runtime::overrides;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Calls `f` with the request's head.
fn with_head<R>(request: &Req, f: impl FnOnce(&rt::RequestHead<'_>) -> R) -> R {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.append(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), http::HeaderValue::from_str(value).expect("value"));
    }
    let query = (!request.query.is_empty()).then(|| request.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
    f(&rt::RequestHead::from_parts(&request.method, &request.authority, &request.path, query.as_deref(), &headers))
}

/// The compiled and the runtime-interpreted lookups' outcomes.
fn generated(sidecar: &Sidecar, router: &meshc_runtime::interp::Router, request: &Req) -> (Outcome, Outcome) {
    with_head(request, |head| (sidecar.compiled(head), sidecar.interpreted(router, head)))
}

/// The overrides the sidecar's xDS client makes of the route configuration Pilot serves its
/// workload, every virtual host taken as changed (the digests say none is, checked here too).
fn override_table(sidecar: &Sidecar, mesh: &Mesh, workload: &ir::Workload) -> overrides::OverrideTable {
    let resources = meshc_codegen::emit::xds::workload_resources(mesh, workload, meshc_codegen::emit::xds::Client::Envoy);
    let config = resources.routes.first().expect("the outbound route configuration");
    let clusters: Vec<&str> = sidecar.clusters.iter().map(|it| it.name).collect();
    let build = |virtual_hosts| {
        overrides::build(config, "test", overrides::Compiled { clusters: &clusters, virtual_hosts, routes: sidecar.routes })
            .unwrap_or_else(|err| panic!("{:?}/{}: the sidecar refuses Pilot's routes: {err}", sidecar.origin, sidecar.workload))
    };
    assert!(build(sidecar.virtual_hosts).is_empty(), "{:?}/{}: a host served as compiled looks changed", sidecar.origin, sidecar.workload);
    build(&[])
}

/// `meshc explain`'s outcome.
fn explained(mesh: &Mesh, workload: &ir::Workload, request: &Req) -> Outcome {
    let explain_request = meshc::explain::Request {
        protocol: meshc::explain::RequestProtocol::Http,
        authority: Some(request.authority.clone()),
        path: Some(request.path.clone()),
        method: request.method.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        service: None,
        interface: None,
        version: None,
        group: None,
    };
    let explanation = meshc::explain::explain(mesh, workload, explain_request, None);
    match explanation.action.as_str() {
        "forward" => Outcome::Forward(
            explanation.route.clone().unwrap_or_default(),
            explanation.destinations.iter().map(|it| (it.in_scope.then(|| it.cluster.clone()), it.weight)).collect(),
        ),
        "redirect" | "direct_response" => Outcome::Answer(explanation.status.unwrap_or(0)),
        _ => Outcome::NoRoute,
    }
}

/// A generated request.
#[derive(Clone, Debug)]
struct Req {
    authority: String,
    path: String,
    method: String,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

/// Values a condition accepts, and near-misses.
fn values_of(condition: &ir::StringMatch, out: &mut Vec<String>) {
    match condition.kind {
        StringMatchKind::Exact => {
            out.push(condition.value.clone());
            out.push(format!("{}x", condition.value));
        }
        StringMatchKind::Prefix => {
            out.push(condition.value.clone());
            out.push(format!("{}/sub", condition.value));
            out.push(condition.value.chars().take(condition.value.chars().count().saturating_sub(1)).collect());
        }
        StringMatchKind::Regex => {}
    }
}

/// The vocabulary of a workload's routes.
fn requests(mesh: &Mesh, workload: &ir::Workload) -> impl Strategy<Value = Req> {
    let mut authorities = vec!["unknown.example.com".to_owned(), "unknown.example.com:80".to_owned()];
    let mut paths = vec!["/".to_owned(), "/a".to_owned(), "/api/v1/users".to_owned(), "/v2/health".to_owned(), "/legacy/1/abc".to_owned()];
    let mut methods = vec!["GET".to_owned(), "POST".to_owned()];
    let mut header_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut query_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Every HTTP table of the mesh, so that tables the workload may not call are asked too.
    for table in &mesh.route_tables {
        let RouteTableKind::Http { domains, local_domains, .. } = &table.kind else { continue };
        authorities.extend(domains.iter().cloned());
        authorities.extend(local_domains.iter().cloned());
        for m in table.routes.iter().flat_map(|it| it.matches.iter()) {
            collect(m, &mut paths, &mut methods, &mut header_values, &mut query_values);
        }
    }
    let _ = workload;
    let headers: Vec<(String, Vec<String>)> = header_values
        .into_iter()
        .map(|(k, mut v)| {
            v.push("other".to_owned());
            (k, v)
        })
        .collect();
    let query: Vec<(String, Vec<String>)> = query_values
        .into_iter()
        .map(|(k, mut v)| {
            v.push("other".to_owned());
            (k, v)
        })
        .collect();
    let header_strategy = pairs(headers);
    let query_strategy = pairs(query);
    (prop::sample::select(authorities), prop::sample::select(paths), prop::sample::select(methods), header_strategy, query_strategy)
        .prop_map(|(authority, path, method, headers, query)| Req { authority, path, method, headers, query })
}

/// Some of the names, each with one of its values.
fn pairs(vocabulary: Vec<(String, Vec<String>)>) -> BoxedStrategy<Vec<(String, String)>> {
    if vocabulary.is_empty() {
        return Just(Vec::new()).boxed();
    }
    let entries: Vec<BoxedStrategy<Option<(String, String)>>> = vocabulary
        .into_iter()
        .map(|(name, values)| prop::option::of(prop::sample::select(values).prop_map(move |value| (name.clone(), value))).boxed())
        .collect();
    entries.prop_map(|it| it.into_iter().flatten().collect()).boxed()
}

fn collect(
    m: &Match,
    paths: &mut Vec<String>,
    methods: &mut Vec<String>,
    headers: &mut BTreeMap<String, Vec<String>>,
    query: &mut BTreeMap<String, Vec<String>>,
) {
    if let Some(condition) = &m.path {
        values_of(condition, paths);
    }
    if let Some(condition) = &m.method {
        values_of(condition, methods);
    }
    for header in &m.headers {
        let values = headers.entry(header.name.clone()).or_default();
        if let PresenceMatch::Value(condition) = &header.kind {
            values_of(condition, values);
        }
        values.push("present".to_owned());
    }
    for parameter in &m.query {
        let values = query.entry(parameter.name.clone()).or_default();
        if let PresenceMatch::Value(condition) = &parameter.kind {
            values_of(condition, values);
        }
        values.push(String::new());
    }
}

#[test]
fn compiled_interpreted_and_explained_routing_agree_on_every_generated_sidecar() {
    assert!(SIDECARS.iter().any(|it| matches!(it.origin, meshc_generated::Origin::Golden(_))), "no golden sidecars were compiled");
    assert!(SIDECARS.iter().any(|it| matches!(it.origin, meshc_generated::Origin::Random(_))), "no random meshes were compiled");
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|it| it.parse().ok()).unwrap_or(256);
    for sidecar in SIDECARS {
        let mesh = mesh(sidecar.origin);
        let workload = mesh.workloads.iter().find(|it| it.name == sidecar.workload).expect("the workload is in the mesh");
        let router = interpreted_router(mesh, workload);
        let overrides = override_table(sidecar, mesh, workload);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&requests(mesh, workload), |request| {
            let (compiled, interpreted) = generated(sidecar, &router, &request);
            let explained = explained(mesh, workload, &request);
            prop_assert_eq!(&compiled, &explained, "compiled vs explain: {:?}", request);
            prop_assert_eq!(&interpreted, &explained, "interpreted vs explain: {:?}", request);
            let overridden = with_head(&request, |head| sidecar.overridden(&overrides, head)).unwrap_or(Outcome::NoRoute);
            prop_assert_eq!(&overridden, &explained, "xDS override vs explain: {:?}", request);
            let (compiled, overridden) =
                with_head(&request, |head| (sidecar.compiled_policy(head), sidecar.overridden_policy(&overrides, head)));
            prop_assert_eq!(&overridden, &compiled, "xDS override vs compiled, what the route does: {:?}", request);
            Ok(())
        });
        if let Err(err) = result {
            panic!("{:?}/{}: {err}", sidecar.origin, sidecar.workload);
        }
    }
}

#[test]
fn every_route_of_the_largest_table_is_reached_by_its_own_request() {
    // Not random: one request per route of the 10k-route table, each of which only that route
    // (or, for routes past the table, the catch-all) can take.
    let sidecar = SIDECARS.iter().find(|it| it.origin == meshc_generated::Origin::Table(10_000)).expect("the 10k-route table");
    let mesh = mesh(sidecar.origin);
    let workload = &mesh.workloads[0];
    let router = interpreted_router(mesh, workload);
    let authority = mesh
        .route_tables
        .iter()
        .find_map(|it| match &it.kind {
            RouteTableKind::Http { domains, .. } if it.declared_in.is_some() => domains.first().cloned(),
            _ => None,
        })
        .expect("the table's host");
    for index in 0..10_000 {
        let (path, headers, query) = meshc::synth::route_table_request(index);
        let request = Req {
            authority: authority.clone(),
            path,
            method: "GET".to_owned(),
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            query: query
                .map(|it| it.split_once('=').map(|(k, v)| vec![(k.to_owned(), v.to_owned())]).unwrap_or_default())
                .unwrap_or_default(),
        };
        let expected = if index < 9_999 { format!("r{index}") } else { "rest".to_owned() };
        let (compiled, interpreted) = generated(sidecar, &router, &request);
        assert!(matches!(&compiled, Outcome::Forward(route, _) if *route == expected), "{index}: compiled {compiled:?}");
        assert_eq!(compiled, interpreted, "{index}");
    }
}

/// A generated RPC request: the version and group empty when absent.
#[derive(Clone, Debug)]
struct RpcReq {
    protocol: ir::Protocol,
    interface: String,
    version: String,
    /// Bolt's `uniqueId`, the third part of its service name.
    unique_id: Option<String>,
    group: String,
    method: String,
    headers: Vec<(String, String)>,
}

impl RpcReq {
    /// The service name as the request carries it: Bolt's `interface[:version[:uniqueId]]`,
    /// Dubbo's interface.
    fn service(&self) -> String {
        match (self.protocol, self.version.as_str(), &self.unique_id) {
            (ir::Protocol::Bolt, "", _) => self.interface.clone(),
            (ir::Protocol::Bolt, version, None) => format!("{}:{version}", self.interface),
            (ir::Protocol::Bolt, version, Some(unique)) => format!("{}:{version}:{unique}", self.interface),
            _ => self.interface.clone(),
        }
    }
}

/// The vocabulary of every RPC table of a mesh, with near-misses.
fn rpc_requests(mesh: &Mesh) -> Option<impl Strategy<Value = RpcReq>> {
    let mut targets: Vec<(ir::Protocol, String)> = Vec::new();
    let (mut versions, mut unique_ids, mut groups, mut methods) =
        (vec![String::new()], vec![None], vec![String::new()], vec!["other".to_owned()]);
    let mut header_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for table in &mesh.route_tables {
        let RouteTableKind::Rpc { protocol, interface, .. } = &table.kind else { continue };
        targets.push((*protocol, interface.clone()));
        targets.push((*protocol, format!("{interface}.Other")));
        for m in table.routes.iter().flat_map(|it| it.matches.iter()) {
            if let Some(service) = &m.service {
                let mut parts = service.value.splitn(3, ':');
                let _ = parts.next();
                if let Some(version) = parts.next() {
                    versions.push(version.to_owned());
                }
                if let Some(unique) = parts.next() {
                    unique_ids.push(Some(unique.to_owned()));
                }
            }
            for (condition, out) in [(&m.version, &mut versions), (&m.group, &mut groups), (&m.method, &mut methods)] {
                if let Some(condition) = condition {
                    values_of(condition, out);
                }
            }
            let mut unused = (Vec::new(), Vec::new(), BTreeMap::new());
            collect(m, &mut unused.0, &mut unused.1, &mut header_values, &mut unused.2);
        }
    }
    if targets.is_empty() {
        return None;
    }
    let headers: Vec<(String, Vec<String>)> = header_values
        .into_iter()
        .map(|(k, mut v)| {
            v.push("other".to_owned());
            (k, v)
        })
        .collect();
    Some(
        (
            prop::sample::select(targets),
            prop::sample::select(versions),
            prop::sample::select(unique_ids),
            prop::sample::select(groups),
            prop::sample::select(methods),
            pairs(headers),
        )
            .prop_map(|((protocol, interface), version, unique_id, group, method, headers)| RpcReq {
                protocol,
                interface,
                version,
                unique_id,
                group,
                method,
                headers,
            }),
    )
}

#[test]
fn compiled_and_explained_rpc_routing_agree_on_every_generated_sidecar() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|it| it.parse().ok()).unwrap_or(256);
    let mut checked = 0;
    for sidecar in SIDECARS {
        let mesh = mesh(sidecar.origin);
        let Some(strategy) = rpc_requests(mesh) else { continue };
        checked += 1;
        let workload = mesh.workloads.iter().find(|it| it.name == sidecar.workload).expect("the workload is in the mesh");
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&strategy, |request| {
            let protocol = if request.protocol == ir::Protocol::Bolt { rt::RpcProtocol::Bolt } else { rt::RpcProtocol::Dubbo };
            let version = (!request.version.is_empty()).then_some(request.version.as_str());
            let service = request.service();
            let headers = request.headers.iter().map(|(key, value)| (key.as_str().into(), value.as_str().into())).collect();
            let head = rt::RpcHead::from_parts(protocol, &request.interface, version, &request.group, &request.method)
                .with_service(&service)
                .with_headers(headers);
            let compiled = sidecar.compiled_rpc(&head);
            let explain_request = meshc::explain::Request {
                protocol: if request.protocol == ir::Protocol::Bolt {
                    meshc::explain::RequestProtocol::Bolt
                } else {
                    meshc::explain::RequestProtocol::Dubbo
                },
                authority: None,
                path: None,
                method: request.method.clone(),
                query: Vec::new(),
                headers: request.headers.clone(),
                service: Some(request.service()),
                interface: Some(request.interface.clone()),
                version: Some(request.version.clone()),
                group: Some(request.group.clone()),
            };
            let explanation = meshc::explain::explain(mesh, workload, explain_request, None);
            let explained = match explanation.action.as_str() {
                "forward" => Outcome::Forward(
                    explanation.route.clone().unwrap_or_default(),
                    explanation.destinations.iter().map(|it| (it.in_scope.then(|| it.cluster.clone()), it.weight)).collect(),
                ),
                _ => Outcome::NoRoute,
            };
            prop_assert_eq!(&compiled, &explained, "compiled vs explain: {:?}", request);
            Ok(())
        });
        if let Err(err) = result {
            panic!("{:?}/{}: {err}", sidecar.origin, sidecar.workload);
        }
    }
    assert!(checked > 0, "no generated sidecar has RPC routes");
}

/// Every Cluster Pilot serves a sidecar is taken by the sidecar's CDS reader as compiled: what
/// it cannot change while running (connect timeout, TLS and its name and identities, health
/// checks) matches, and what it can (balancer, limits, outlier detection) applies.
#[test]
fn every_cluster_pilot_serves_is_taken_by_its_sidecar() {
    let mut checked = (0, 0, 0);
    for sidecar in SIDECARS {
        let mesh = mesh(sidecar.origin);
        let workload = mesh.workloads.iter().find(|it| it.name == sidecar.workload).expect("the workload is in the mesh");
        let resources = meshc_codegen::emit::xds::workload_resources(mesh, workload, meshc_codegen::emit::xds::Client::Envoy);
        for cluster in &resources.clusters {
            let spec = sidecar.clusters.iter().find(|it| it.name == cluster.name).unwrap_or_else(|| {
                panic!("{:?}/{}: Pilot serves cluster `{}`, which the sidecar lacks", sidecar.origin, sidecar.workload, cluster.name)
            });
            if let Err(err) = meshc_runtime::tuning::from_cds(cluster, spec, &mesh.trust_domain) {
                panic!("{:?}/{}: cluster `{}` refused: {err}", sidecar.origin, sidecar.workload, cluster.name);
            }
            checked.0 += 1;
            checked.1 += usize::from(cluster.transport_socket.is_some());
            checked.2 += usize::from(!cluster.health_checks.is_empty());
        }
    }
    assert!(checked.1 > 0 && checked.2 > 0, "clusters, with TLS, with health checks: {checked:?}");
}
