//! Dubbo 2 through a meshc-built sidecar, with two independent real callers, dubbo2.js and
//! dubbo-ssl-python, calling providers on sofa-rpc-node with the dubbo-remoting codec (none of
//! them built on our codec), through the outbound-dubbo listener of examples/dubbo-demo's
//! `greeting-consumer`. Its routes send the `gray` group to the gray build, 20% of
//! `greetAsync` to gray and the rest to stable, and everything else to stable.

use std::io::Read;
use std::time::{Duration, Instant};

use meshc_e2e::{NodeServer, Sidecar, dubbo_python, free_port, node_json, root, sidecar_binary};

const GREETING: &str = "org.apache.dubbo.samples.api.GreetingService";

struct Demo {
    stable: NodeServer,
    gray: NodeServer,
    sidecar: Sidecar,
}

fn demo() -> Demo {
    demo_with(&[])
}

/// [`demo`], with more flags for the sidecar.
fn demo_with(flags: &[&str]) -> Demo {
    let binary = sidecar_binary(&root().join("examples/dubbo-demo"), "greeting-consumer");
    let service = format!("{GREETING}:1.0.0");
    let stable = NodeServer::start("dubbo_peer.js", &["stable", &free_port().to_string(), &service]);
    let gray = NodeServer::start("dubbo_peer.js", &["gray", &free_port().to_string(), &service]);
    let endpoints = format!(
        "[[endpoint]]\nservice = \"stable/{GREETING}:1.0.0\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[endpoint]]\nservice = \"gray/{GREETING}:1.0.0\"\naddress = \"127.0.0.1:{}\"\n",
        stable.port, gray.port
    );
    // One worker, as a sidecar pinned to one CPU runs: the current-thread scheduler.
    let flags = [&["--concurrency", "1"], flags].concat();
    let sidecar = Sidecar::start_with(&binary, &["outbound-dubbo"], &endpoints, &flags);
    Demo { stable, gray, sidecar }
}

fn call(interface: &str, group: Option<&str>, method: &str, arg: &str) -> serde_json::Value {
    serde_json::json!({"interface": interface, "version": "1.0.0", "group": group, "method": method, "args": [arg]})
}

/// The calls made by dubbo2.js and by dubbo-ssl-python, each printing a JSON array of results.
fn both_clients(demo: &Demo, calls: &serde_json::Value) -> [Vec<serde_json::Value>; 2] {
    let address = demo.sidecar.listener("outbound-dubbo").to_string();
    let node = node_json("dubbo_peer.js", &["client", &address, &calls.to_string()]);
    let python = dubbo_python(&address, calls);
    [node, python].map(|it| it.as_array().cloned().unwrap_or_else(|| panic!("{it}")))
}

#[test]
fn dubbo_calls_are_routed_by_group_and_method_for_both_clients() {
    let demo = demo();
    let calls = serde_json::json!([
        call(GREETING, Some("gray"), "greet", "ann"),
        call(GREETING, Some("stable"), "greet", "bo"),
        call(GREETING, None, "greet", "cy"),
        call("org.apache.dubbo.samples.api.Unknown", None, "greet", "dee"),
    ]);
    for (client, results) in ["dubbo2.js", "dubbo-ssl-python"].into_iter().zip(both_clients(&demo, &calls)) {
        let answers: Vec<Option<&str>> = results.iter().map(|it| it["result"].as_str()).collect();
        assert_eq!(answers[..3], [Some("gray greet(ann)"), Some("stable greet(bo)"), Some("stable greet(cy)")], "{client}: {results:?}");
        // No route: Dubbo's SERVICE_NOT_FOUND with the reason as its message.
        assert_eq!(results[3]["ok"], false, "{client}: {results:?}");
        assert!(results[3]["error"].as_str().is_some_and(|it| it.contains("no route")), "{client}: {results:?}");
    }
    // greetAsync: a fifth to gray, the rest to stable (weights drawn per call).
    let async_calls = serde_json::Value::Array((0..60).map(|index| call(GREETING, None, "greetAsync", &index.to_string())).collect());
    let [results, _] = both_clients(&demo, &async_calls);
    let to_gray = results.iter().filter(|it| it["result"].as_str().is_some_and(|it| it.starts_with("gray "))).count();
    let to_stable = results.iter().filter(|it| it["result"].as_str().is_some_and(|it| it.starts_with("stable "))).count();
    assert_eq!(to_gray + to_stable, 60, "{results:?}");
    assert!((2..=30).contains(&to_gray), "{to_gray} of 60 to gray");
    drop(demo.gray);
    drop(demo.stable);
}

#[test]
fn a_provider_killed_mid_call_fails_only_its_calls() {
    let mut demo = demo();
    let address = demo.sidecar.listener("outbound-dubbo").to_string();
    let calls = serde_json::json!([{"interface": GREETING, "version": "1.0.0", "group": "stable", "method": "sleep", "args": ["10000"], "timeout": 20}]);
    let in_flight = std::thread::spawn(move || node_json("dubbo_peer.js", &["client", &address, &calls.to_string()]));
    // Long enough for node to start and the call to reach the provider, even on a busy machine.
    std::thread::sleep(Duration::from_millis(2500));
    let killed = Instant::now();
    demo.stable.kill();
    let failed = in_flight.join().expect("the call's thread");
    assert!(killed.elapsed() < Duration::from_secs(3), "the call waited {:?} after the kill", killed.elapsed());
    assert_eq!(failed[0]["ok"], false, "{failed}");
    assert!(failed[0]["error"].as_str().is_some_and(|it| it.contains("connection closed")), "{failed}");
    // The gray build answers on its own connection.
    let calls = serde_json::json!([call(GREETING, Some("gray"), "greet", "eve")]);
    let [node, python] = both_clients(&demo, &calls);
    assert_eq!((node[0]["result"].as_str(), python[0]["result"].as_str()), (Some("gray greet(eve)"), Some("gray greet(eve)")));
}

#[test]
fn sigterm_closes_idle_dubbo_connections_and_lets_calls_in_flight_finish() {
    let mut demo = demo_with(&["--drain-time-s", "30"]);
    let address = demo.sidecar.listener("outbound-dubbo");
    // A connection a client's pool holds open, with nothing in flight.
    let mut idle = std::net::TcpStream::connect(address).expect("connect to the sidecar");
    idle.set_read_timeout(Some(Duration::from_secs(5))).expect("a read timeout");
    let calls = serde_json::json!([{"interface": GREETING, "version": "1.0.0", "group": "stable", "method": "sleep", "args": ["2200"], "timeout": 20}]);
    let target = address.to_string();
    let in_flight = std::thread::spawn(move || node_json("dubbo_peer.js", &["client", &target, &calls.to_string()]));
    // Well within the route's 3 s timeout, even on a busy machine; should node start late, its call still goes through,
    // since the outbound listener takes the application's late connections.
    std::thread::sleep(Duration::from_millis(1500));
    let terminated = Instant::now();
    demo.sidecar.terminate();
    // The idle connection closes at once: its client reconnects elsewhere.
    let mut byte = [0u8; 1];
    assert_eq!(idle.read(&mut byte).ok(), Some(0), "the idle connection is still open {:?} into the drain", terminated.elapsed());
    assert!(terminated.elapsed() < Duration::from_secs(2), "the idle connection closed after {:?}", terminated.elapsed());
    // The call in flight is answered.
    let answered = in_flight.join().expect("the call's thread");
    assert_eq!(answered[0]["result"].as_str(), Some("stable slept 2200"), "{answered}");
    // With its last connection closed, the sidecar exits long before the 30 s drain time.
    let status = demo.sidecar.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|it| it.success()), "the sidecar has not exited {:?} after SIGTERM", terminated.elapsed());
}
