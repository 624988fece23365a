//! Agreement: for random requests, every golden sidecar's compiled route lookup chooses the
//! same route and the same destinations as `meshc explain`, the reference interpreter of the IR.
//!
//! Requests are drawn from each mesh's own vocabulary (its hosts, paths, methods, header and
//! query names and values, near-misses of each), so that most of them exercise real routes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meshc_codegen::ir::{self, Match, Mesh, PresenceMatch, RouteTableKind, StringMatchKind};
use meshc_golden_compile::{SIDECARS, Sidecar};
use meshc_runtime::__codegen as rt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The IR of a golden case, compiled once.
fn mesh(case: &str) -> &'static Mesh {
    static MESHES: OnceLock<BTreeMap<String, Mesh>> = OnceLock::new();
    let meshes = MESHES.get_or_init(|| {
        let mut meshes = BTreeMap::new();
        for sidecar in SIDECARS {
            if meshes.contains_key(sidecar.case) {
                continue;
            }
            let example = root().join("examples").join(sidecar.case);
            let dir = if example.is_dir() { example } else { root().join("golden/ok").join(sidecar.case).join("spec") };
            let compilation = meshc::compile(&meshc::source::DiskFs::new(&dir));
            let ir = compilation.ir.unwrap_or_else(|| panic!("{} does not compile", dir.display()));
            meshes.insert(sidecar.case.to_owned(), ir);
        }
        meshes
    });
    &meshes[case]
}

/// What a route lookup decided, in terms both sides can express.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// 404: no table or no route.
    NoRoute,
    /// Forwarded by a route to clusters with weights (`None` for a cluster the workload lacks).
    Forward(String, Vec<(Option<String>, u32)>),
    /// Answered locally with a status.
    Answer(u16),
}

fn compiled(sidecar: &Sidecar, request: &Req) -> Outcome {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.append(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), http::HeaderValue::from_str(value).expect("value"));
    }
    let query = (!request.query.is_empty()).then(|| request.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
    let head = rt::RequestHead::from_parts(&request.method, &request.authority, &request.path, query.as_deref(), &headers);
    match (sidecar.route_outbound)(&head) {
        rt::Decision::NoRoute => Outcome::NoRoute,
        rt::Decision::Forward(forward) => Outcome::Forward(
            forward.route.to_owned(),
            forward
                .destinations
                .iter()
                .map(|it| (sidecar.clusters.get(it.cluster as usize).map(|c| c.name.to_owned()), it.weight))
                .collect(),
        ),
        rt::Decision::Answer(rt::Answer::Direct { status, .. } | rt::Answer::Redirect { status, .. }) => Outcome::Answer(*status),
    }
}

fn interpreted(mesh: &Mesh, workload: &ir::Workload, request: &Req) -> Outcome {
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
fn compiled_routing_agrees_with_explain_on_every_golden_sidecar() {
    assert!(!SIDECARS.is_empty(), "no golden sidecars were compiled");
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|it| it.parse().ok()).unwrap_or(256);
    for sidecar in SIDECARS {
        let mesh = mesh(sidecar.case);
        let workload = mesh.workloads.iter().find(|it| it.name == sidecar.workload).expect("the golden workload is in the mesh");
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&requests(mesh, workload), |request| {
            let generated = compiled(sidecar, &request);
            let reference = interpreted(mesh, workload, &request);
            prop_assert_eq!(&generated, &reference, "{}/{}: {:?}", sidecar.case, sidecar.workload, request);
            Ok(())
        });
        if let Err(err) = result {
            panic!("{}/{}: {err}", sidecar.case, sidecar.workload);
        }
    }
}
