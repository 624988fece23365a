//! gRPC through a meshc-built sidecar, between a real grpcio client and a real grpcio server:
//! unary and server-streaming calls, a status from the server passed through, and the
//! route's timeout answered as DEADLINE_EXCEEDED.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use meshc_e2e::{Sidecar, python, root, sidecar_binary};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> Server {
    let script = root().join("tests/e2e/grpc_peer.py");
    let mut child = Command::new(python()).arg(&script).arg("server").stdout(Stdio::piped()).spawn().expect("start the gRPC server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the port");
    let port =
        line.trim().strip_prefix("serving ").and_then(|it| it.parse().ok()).unwrap_or_else(|| panic!("the gRPC server said {line:?}"));
    Server(child, port)
}

fn call(sidecar: &Sidecar, case: &str) -> serde_json::Value {
    let script = root().join("tests/e2e/grpc_peer.py");
    let output = Command::new(python())
        .arg(&script)
        .args(["client", &sidecar.listener("outbound").to_string(), "greeter:50051", case])
        .output()
        .expect("run the gRPC client");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("client output {text:?}, stderr {}", String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn grpc_calls_pass_through_the_sidecar() {
    let server = start_server();
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "client");
    let endpoints = format!("[[endpoint]]\nservice = \"greeter\"\naddress = \"127.0.0.1:{}\"\n", server.1);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);

    let hello = call(&sidecar, "hello");
    assert_eq!((hello["code"].as_str(), hello["reply"].as_str()), (Some("OK"), Some("hello mesh")), "{hello}");

    let count = call(&sidecar, "count");
    assert_eq!(count["replies"], serde_json::json!(["0", "1", "2", "3", "4"]), "{count}");

    // A status the server sends arrives as sent, in the trailers.
    let fail = call(&sidecar, "fail");
    assert_eq!((fail["code"].as_str(), fail["details"].as_str()), (Some("NOT_FOUND"), Some("no such greeting")), "{fail}");

    // The route's 500 ms timeout ends the 3 s call.
    let slow = call(&sidecar, "slow");
    assert_eq!(slow["code"].as_str(), Some("DEADLINE_EXCEEDED"), "{slow}");
}
