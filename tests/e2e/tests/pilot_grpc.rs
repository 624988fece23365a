//! Proxyless gRPC clients on `meshc pilot`: grpcio (Python, its own xDS support) and
//! @grpc/grpc-js-xds call `xds:///` targets of a mesh and reach the backends its routes
//! choose: a header route, a weighted split, and a weight changed in the spec file while
//! the client keeps its channel. grpcio-csds shows every resource ACKED.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use meshc_e2e::{Pilot, node_peers, python, root};
use serde_json::Value;

/// A grpcio server (tests/e2e/grpc_peer.py) that names itself in its answers.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(name: &str) -> Server {
        let mut child = Command::new(python())
            .arg(root().join("tests/e2e/grpc_peer.py"))
            .args(["server", name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a gRPC server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the port");
        let port =
            line.trim().strip_prefix("serving ").and_then(|it| it.parse().ok()).unwrap_or_else(|| panic!("the server said {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SPEC: &str = "service greeter {\n  load_balancer round_robin\n  subset v1 { version = \"v1\" }\n  subset v2 { version = \"v2\" }\n}\n\n\
routes greeter {\n  route canary {\n    match { header \"x-canary\" exact \"1\" }\n    to greeter subset v2\n  }\n  route split {\n    to greeter subset v1 weight 80\n    to greeter subset v2 weight 20\n  }\n}\n\n\
workload client {\n  calls greeter\n}\n";

/// A mesh of one gRPC service, `greeter`, with v1 and v2 on local grpcio servers.
fn mesh(name: &str, v1: &Server, v2: &Server) -> PathBuf {
    let dir = root().join("target/e2e/pilot").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the mesh directory");
    std::fs::write(
        dir.join("mesh.toml"),
        "[mesh]\nname = \"greeting\"\nnamespace = \"default\"\n\n[[registry]]\nname = \"local\"\nkind = \"native\"\npath = \"registry.toml\"\n",
    )
    .expect("write mesh.toml");
    let instance = |server: &Server, version: &str| {
        format!("[[service.instance]]\naddress = \"127.0.0.1\"\nport = {}\nlabels = {{ version = \"{version}\" }}\n\n", server.port)
    };
    std::fs::write(
        dir.join("registry.toml"),
        format!(
            "[[service]]\nname = \"greeter\"\nports = [{{ number = 50051, name = \"grpc\", protocol = \"grpc\" }}]\n\n{}{}",
            instance(v1, "v1"),
            instance(v2, "v2")
        ),
    )
    .expect("write the registry");
    std::fs::write(dir.join("greeter.mesh"), SPEC).expect("write the spec");
    dir
}

/// A client process driven line by line over stdin (see tests/e2e/xds_grpc.py).
struct XdsClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl XdsClient {
    fn grpcio(pilot: &Pilot, target: &str) -> XdsClient {
        let command = Command::new(python());
        XdsClient::spawn(command, root().join("tests/e2e/xds_grpc.py"), pilot, target)
    }

    fn grpc_js(pilot: &Pilot, target: &str) -> XdsClient {
        let mut command = Command::new("node");
        command.current_dir(node_peers());
        XdsClient::spawn(command, node_peers().join("xds_client.js"), pilot, target)
    }

    fn spawn(mut command: Command, script: PathBuf, pilot: &Pilot, target: &str) -> XdsClient {
        let mut child = command
            .arg(script)
            .args([&pilot.ads.to_string(), "client", target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the xDS client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        XdsClient { child, stdin, stdout }
    }

    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("write a command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read an answer");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("the client answered {line:?} to {command}"))
    }

    fn count(answer: &Value, server: &str) -> u64 {
        answer["servers"][server].as_u64().unwrap_or(0)
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routes and weights as the spec says, through one client; then 80/20 becomes 0/100 in
/// the spec file, and the same channel follows.
fn routes_weights_and_a_change(name: &str, start: impl Fn(&Pilot, &str) -> XdsClient) {
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let dir = mesh(name, &v1, &v2);
    let pilot = Pilot::start(&dir);
    for target in ["greeter.default.svc.cluster.local:50051", "greeter.default.svc.cluster.local"] {
        let mut client = start(&pilot, target);
        let canary = client.ask("calls 20 x-canary=1");
        assert_eq!(XdsClient::count(&canary, "v2"), 20, "{target}: {canary}");
        let split = client.ask("calls 200");
        let (a, b) = (XdsClient::count(&split, "v1"), XdsClient::count(&split, "v2"));
        assert_eq!(a + b, 200, "{target}: {split}");
        // v2 ~ Binomial(200, 0.2): mean 40, sd 5.7.
        assert!((15..=65).contains(&b), "{target}: {split}");
    }
    let mut client = start(&pilot, "greeter.default.svc.cluster.local:50051");
    assert_eq!(client.ask("calls 5")["errors"], serde_json::json!({}));
    let spec = dir.join("greeter.mesh");
    // Written whole and renamed, so Pilot never compiles the empty file between an in-place
    // write's truncation and its write.
    let scratch = dir.join(".greeter.mesh.new");
    std::fs::write(&scratch, SPEC.replace("v1 weight 80\n    to greeter subset v2 weight 20", "v2 weight 100")).expect("write the spec");
    std::fs::rename(&scratch, &spec).expect("replace the spec");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let split = client.ask("calls 50");
        if XdsClient::count(&split, "v2") == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "the client still splits {split} 15 s after the change");
        std::thread::sleep(Duration::from_millis(100));
    }
    let clients = pilot.admin_json("/clients");
    for client in clients.as_array().expect("clients") {
        assert_eq!(client["client"], "grpc", "{client}");
        for (type_url, status) in client["types"].as_object().expect("types") {
            assert_eq!(status["nacks"], 0, "{type_url}: {status}");
        }
    }
}

#[test]
fn grpcio_reaches_the_backends_the_routes_choose() {
    routes_weights_and_a_change("grpcio", XdsClient::grpcio);
}

#[test]
fn grpcio_csds_shows_every_resource_acked() {
    let (v1, v2) = (Server::start("v1"), Server::start("v2"));
    let pilot = Pilot::start(&mesh("grpcio-csds", &v1, &v2));
    let mut client = XdsClient::grpcio(&pilot, "greeter.default.svc.cluster.local:50051");
    assert_eq!(client.ask("calls 10")["errors"], serde_json::json!({}));
    let resources = client.ask("csds")["resources"].as_array().cloned().expect("resources");
    let types: std::collections::BTreeSet<&str> =
        resources.iter().filter_map(|it| it["type_url"].as_str()).map(|it| it.rsplit('.').next().unwrap_or(it)).collect();
    assert_eq!(types, ["Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"].into_iter().collect(), "{resources:?}");
    for resource in &resources {
        assert_eq!(resource["status"], "ACKED", "{resource}");
    }
}

#[test]
fn grpc_js_reaches_the_backends_the_routes_choose() {
    routes_weights_and_a_change("grpc-js", XdsClient::grpc_js);
}
