//! One outbound port for Bolt and Dubbo: tests/e2e/meshes/rpc-auto's workload `caller` says
//! `rpc_listener auto`, so its sidecar has one `outbound-rpc` listener instead of
//! `outbound-bolt` and `outbound-dubbo`, and tells the protocols apart by each connection's
//! first byte. Real callers on both protocols share it: sofa-rpc-node over Bolt v1 and v2 with
//! the CRC32 trailer, dubbo2.js and dubbo-ssl-python over Dubbo; the servers are
//! sofa-rpc-node's, with the dubbo-remoting codec for Dubbo.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use meshc_e2e::{NodeServer, Sidecar, dubbo_python, free_port, node_json, root, sidecar_binary};

const ORDER: &str = "com.example.OrderService:1.0";
const GREETING: &str = "org.apache.dubbo.samples.api.GreetingService";

#[test]
fn bolt_and_dubbo_callers_share_one_sniffed_outbound_port() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/rpc-auto"), "caller");
    let orders = NodeServer::start("sofa_peer.js", &["orders", &free_port().to_string(), ORDER]);
    let greeting = format!("{GREETING}:1.0.0");
    let greeter = NodeServer::start("dubbo_peer.js", &["greeter", &free_port().to_string(), &greeting]);
    let endpoints = format!(
        "[[endpoint]]\nservice = \"{ORDER}\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[endpoint]]\nservice = \"{GREETING}:1.0.0\"\naddress = \"127.0.0.1:{}\"\n",
        orders.port, greeter.port
    );
    let sidecar = Sidecar::start_with(&binary, &["outbound-rpc"], &endpoints, &["--concurrency", "1"]);
    let address = sidecar.listener("outbound-rpc").to_string();
    // Neither per-protocol listener exists.
    let help = Command::new(&binary).arg("--help").output().expect("run the sidecar's --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("outbound-rpc") && !help.contains("outbound-bolt") && !help.contains("outbound-dubbo"), "{help}");

    for flavour in ["v1", "v2crc"] {
        let calls = serde_json::json!([{"service": ORDER, "method": "getOrder", "args": ["o-1"]}]);
        let results = node_json("sofa_peer.js", &["client", &address, flavour, &calls.to_string()]);
        assert_eq!(results[0]["result"].as_str(), Some(format!("orders {ORDER} getOrder(o-1)").as_str()), "{flavour}: {results}");
    }
    let calls = serde_json::json!([{"interface": GREETING, "version": "1.0.0", "group": null, "method": "greet", "args": ["ann"]}]);
    let node = node_json("dubbo_peer.js", &["client", &address, &calls.to_string()]);
    assert_eq!(node[0]["result"].as_str(), Some("greeter greet(ann)"), "dubbo2.js: {node}");
    let python = dubbo_python(&address, &calls);
    assert_eq!(python[0]["result"].as_str(), Some("greeter greet(ann)"), "dubbo-ssl-python: {python}");

    // Bytes that start neither protocol close the connection, and the port goes on serving.
    let mut stranger = std::net::TcpStream::connect(&address).expect("connect");
    stranger.set_read_timeout(Some(Duration::from_secs(5))).expect("a read timeout");
    stranger.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").expect("send");
    let mut byte = [0u8; 1];
    // Closed (a reset when the rest of the request was left unread), not left waiting.
    match stranger.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("HTTP on the RPC port got {other:?} instead of a closed connection"),
    }
    let node = node_json("dubbo_peer.js", &["client", &address, &calls.to_string()]);
    assert_eq!(node[0]["result"].as_str(), Some("greeter greet(ann)"), "dubbo2.js after the stranger: {node}");
}
