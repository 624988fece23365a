//! The xDS emitter on compiled meshes: what a workload's Envoy and gRPC clients are served.
//! (Envoy itself reads the same resources in tests/e2e/tests/xds_envoy.rs.)

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use meshc::source::MemFs;
use meshc_codegen::emit::xds::{self, Client, Resources};
use meshc_codegen::ir;
use prost::Message;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn compile_dir(dir: &str) -> ir::Mesh {
    let fs = MemFs::from_dir(&root().join(dir)).expect("read the mesh");
    compile(fs)
}

fn compile(fs: MemFs) -> ir::Mesh {
    let compilation = meshc::compile(&fs);
    assert!(!compilation.has_errors(), "{}", compilation.render_plain());
    compilation.ir.expect("an IR")
}

fn resources(mesh: &ir::Mesh, workload: &str, client: Client) -> Resources {
    let workload = mesh.workloads.iter().find(|it| it.name == workload).expect("the workload");
    xds::workload_resources(mesh, workload, client)
}

fn manager(listener: &Listener) -> hcm::HttpConnectionManager {
    let any = match (&listener.api_listener, listener.filter_chains.first()) {
        (Some(api), _) => api.api_listener.clone().expect("an HCM"),
        (None, Some(chain)) => match &chain.filters[0].config_type {
            Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) => any.clone(),
            _ => panic!("no typed config"),
        },
        (None, None) => panic!("a listener without a connection manager"),
    };
    hcm::HttpConnectionManager::decode(&any.value[..]).expect("an HCM")
}

#[test]
fn every_http_table_is_a_virtual_host_and_every_alternative_a_route() {
    let mesh = compile_dir("tests/e2e/meshes/http");
    let app = mesh.workloads.iter().find(|it| it.name == "app").expect("app");
    let served = resources(&mesh, "app", Client::Envoy);
    let [config] = &served.routes[..] else { panic!("one route configuration") };
    assert_eq!(config.name, "outbound");
    let tables: Vec<&ir::RouteTable> = app
        .outbound
        .iter()
        .map(|id| &mesh.route_tables[id.index()])
        .filter(|it| matches!(it.kind, ir::RouteTableKind::Http { .. }))
        .collect();
    assert_eq!(config.virtual_hosts.len(), tables.len());
    for (host, table) in config.virtual_hosts.iter().zip(&tables) {
        assert_eq!(host.name, table.name);
        let expected: Vec<&str> = table.routes.iter().flat_map(|it| vec![it.name.as_str(); it.matches.len().max(1)]).collect();
        let names: Vec<&str> = host.routes.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, expected, "{}", table.name);
    }
    // Every cluster has its endpoints, and nothing else does.
    let clusters: Vec<&str> = served.clusters.iter().map(|it| it.name.as_str()).collect();
    let assignments: Vec<&str> = served.endpoints.iter().map(|it| it.cluster_name.as_str()).collect();
    assert_eq!(clusters, assignments);
    assert_eq!(clusters.len(), app.clusters.len());
    // Envoy gets one listener at the compiled sidecar's outbound address, on RDS `outbound`.
    let [listener] = &served.listeners[..] else { panic!("one listener") };
    assert_eq!(listener.name, "outbound");
    let manager = manager(listener);
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = manager.route_specifier else { panic!("RDS") };
    assert_eq!(rds.route_config_name, "outbound");
    let filters: Vec<&str> = manager.http_filters.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(filters, ["envoy.filters.http.fault", "envoy.filters.http.local_ratelimit", "envoy.filters.http.router"]);
}

#[test]
fn grpc_clients_get_a_listener_per_target_and_balancers_they_implement() {
    let mesh = compile_dir("examples/bookinfo");
    let served = resources(&mesh, "productpage", Client::Grpc);
    let names: Vec<&str> = served.listeners.iter().map(|it| it.name.as_str()).collect();
    // Single-port services: `<host>:<port>` and `<host>`, so `xds:///<host>` resolves.
    for host in ["details.default.svc.cluster.local", "reviews.default.svc.cluster.local"] {
        assert!(names.contains(&host), "{names:?}");
        assert!(names.contains(&format!("{host}:9080").as_str()), "{names:?}");
    }
    for listener in &served.listeners {
        assert!(listener.address.is_none() && listener.filter_chains.is_empty(), "{} is an API listener", listener.name);
        let manager = manager(listener);
        let filters: Vec<&str> = manager.http_filters.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(filters.last(), Some(&"envoy.filters.http.router"));
        assert!(!filters.contains(&"envoy.filters.http.local_ratelimit"), "gRPC refuses filters it lacks");
    }
    // Every target's name is one of its virtual host's domains.
    let domains: Vec<&str> = served.routes[0].virtual_hosts.iter().flat_map(|it| &it.domains).map(String::as_str).collect();
    for name in &names {
        assert!(domains.contains(name), "{name} is no domain: {domains:?}");
    }

    // Random and Maglev, which gRPC lacks, become round robin and ring hash.
    let mut mesh = mesh;
    let called = mesh.workloads.iter().find(|it| it.name == "productpage").expect("productpage").clusters.clone();
    let [first, second, ..] = called[..] else { panic!("productpage calls two clusters or more") };
    mesh.clusters[first.index()].policy.load_balancer = ir::LoadBalancer::Random;
    mesh.clusters[second.index()].policy.load_balancer = ir::LoadBalancer::Maglev { hash: ir::HashOn::SourceIp, table_size: 65537 };
    let policy = |client: Client, id: ir::ClusterId| {
        let name = &mesh.clusters[id.index()].name;
        let served = resources(&mesh, "productpage", client);
        served.clusters.iter().find(|it| &it.name == name).map(|it| it.lb_policy())
    };
    assert_eq!(policy(Client::Envoy, first), Some(LbPolicy::Random));
    assert_eq!(policy(Client::Grpc, first), Some(LbPolicy::RoundRobin));
    assert_eq!(policy(Client::Envoy, second), Some(LbPolicy::Maglev));
    assert_eq!(policy(Client::Grpc, second), Some(LbPolicy::RingHash));
}

#[test]
fn weights_and_timeouts_are_the_specs() {
    let mesh = compile_dir("examples/bookinfo");
    for table in mesh.route_tables.iter().filter(|it| matches!(it.kind, ir::RouteTableKind::Http { .. })) {
        for workload in mesh.workloads.iter().filter(|it| it.outbound.contains(&table.id)) {
            let served = resources(&mesh, &workload.name, Client::Envoy);
            let host = served.routes[0].virtual_hosts.iter().find(|it| it.name == table.name).expect("the table's host");
            let mut routes = host.routes.iter();
            for ir_route in &table.routes {
                for _ in 0..ir_route.matches.len().max(1) {
                    let envoy = routes.next().expect("a route per alternative");
                    let Some(route::route::Action::Route(action)) = &envoy.action else { continue };
                    let ir::Action::Forward { destinations, .. } = &ir_route.action else { panic!("a forward") };
                    let got: Vec<(String, u32)> = match action.cluster_specifier.as_ref().expect("a cluster") {
                        route::route_action::ClusterSpecifier::Cluster(name) => vec![(name.clone(), 100)],
                        route::route_action::ClusterSpecifier::WeightedClusters(weighted) => {
                            weighted.clusters.iter().map(|it| (it.name.clone(), it.weight.map_or(0, |it| it.value))).collect()
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    let expected: Vec<(String, u32)> =
                        destinations.iter().map(|it| (mesh.clusters[it.cluster.index()].name.clone(), it.weight)).collect();
                    assert_eq!(got, expected, "{} / {}", table.name, ir_route.name);
                    let timeout = action.timeout.expect("Envoy always gets a timeout");
                    let millis = u64::try_from(timeout.seconds).expect("positive") * 1000
                        + u64::try_from(timeout.nanos).expect("positive") / 1_000_000;
                    assert_eq!(
                        Some(millis).filter(|it| *it > 0),
                        ir_route.timeout_ms.or(mesh.clusters[destinations[0].cluster.index()].policy.request_timeout_ms)
                    );
                }
            }
        }
    }
}

#[test]
fn an_absent_query_parameter_is_an_inverted_path_regex() {
    let mut fs = MemFs::from_dir(&root().join("golden/ok/multi-port/spec")).expect("read");
    fs.insert(
        "web.mesh",
        "service web {}\nroutes web {\n  route plain {\n    match { port 8080  query \"debug\" absent }\n    to web port 8080\n  }\n  route rest {\n    to web port 8080\n  }\n}\n",
    );
    let mesh = compile(fs);
    let served = resources(&mesh, "default", Client::Envoy);
    let host = served.routes[0].virtual_hosts.iter().find(|it| it.name.ends_with(":8080")).expect("the 8080 host");
    let plain = &host.routes[0];
    let matcher = &plain.r#match.as_ref().expect("a match").headers[0];
    assert_eq!((matcher.name.as_str(), matcher.invert_match), (":path", true));
    let Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(string)) = &matcher.header_match_specifier else {
        panic!("a string match")
    };
    let Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::SafeRegex(regex)) = &string.match_pattern else {
        panic!("a regex")
    };
    // Envoy matches the whole value; the pattern must say "has the parameter".
    let has = regex::Regex::new(&format!("^(?:{})$", regex.regex)).expect("a valid regex");
    for path in ["/x?debug", "/x?debug=1", "/x?a=1&debug=2&b", "/?debug="] {
        assert!(has.is_match(path), "{path} has debug");
    }
    for path in ["/x", "/x?debugger=1", "/x?a=debug", "/debug", "/x?nodebug=1"] {
        assert!(!has.is_match(path), "{path} has no debug");
    }
}

#[test]
fn resources_pack_as_their_type_urls() {
    let mesh = compile_dir("examples/bookinfo");
    let served = resources(&mesh, "productpage", Client::Envoy);
    let by_type = served.by_type();
    let urls: Vec<&str> = by_type.iter().map(|(url, _)| *url).collect();
    assert_eq!(urls, xds::TYPE_URLS);
    for (url, items) in &by_type {
        for (name, any) in items {
            assert_eq!(&any.type_url, url, "{name}");
        }
    }
    let json = xds::to_json(&by_type[0].1[0].1);
    assert_eq!(json["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    assert_eq!(json["name"], by_type[0].1[0].0.as_str());
    assert_eq!(json["connect_timeout"], "10s");
    assert_eq!(json["circuit_breakers"]["thresholds"][0]["max_requests"], 4_294_967_295u32);
}
