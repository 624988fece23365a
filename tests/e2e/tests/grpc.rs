//! gRPC through meshc-built sidecars, between a real grpcio client and a real grpcio server:
//! unary and server-streaming calls, a status from the server passed through, and the
//! route's timeout answered as DEADLINE_EXCEEDED; through the caller's sidecar alone, and
//! through the caller's outbound listener and then the server's inbound one. Retries on a
//! gRPC status and a rate limit answered as RESOURCE_EXHAUSTED.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use meshc_e2e::{Sidecar, curl, metric, metric_reaching, python, root, sidecar_binary};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> Server {
    start_named_server(None)
}

/// A server that names itself in Hello's answer; one named "bad" answers Flaky UNAVAILABLE.
fn start_named_server(name: Option<&str>) -> Server {
    let script = root().join("tests/e2e/grpc_peer.py");
    let mut child =
        Command::new(python()).arg(&script).arg("server").args(name).stdout(Stdio::piped()).spawn().expect("start the gRPC server");
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

#[test]
fn grpc_calls_cross_the_callers_and_the_servers_sidecars() {
    let server = start_server();
    let server_side = Sidecar::start_with(
        &sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "server"),
        &["inbound-50051"],
        "",
        &["--app", &format!("50051=127.0.0.1:{}", server.1)],
    );
    let endpoints = format!("[[endpoint]]\nservice = \"greeter\"\naddress = \"{}\"\n", server_side.listener("inbound-50051"));
    let client_side = Sidecar::start(&sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "client"), &["outbound"], &endpoints);

    let hello = call(&client_side, "hello");
    assert_eq!((hello["code"].as_str(), hello["reply"].as_str()), (Some("OK"), Some("hello mesh")), "{hello}");
    let count = call(&client_side, "count");
    assert_eq!(count["replies"], serde_json::json!(["0", "1", "2", "3", "4"]), "{count}");
    let fail = call(&client_side, "fail");
    assert_eq!((fail["code"].as_str(), fail["details"].as_str()), (Some("NOT_FOUND"), Some("no such greeting")), "{fail}");
    let slow = call(&client_side, "slow");
    assert_eq!(slow["code"].as_str(), Some("DEADLINE_EXCEEDED"), "{slow}");
    // The server's DENY policy answers in gRPC's terms.
    let blocked = call(&client_side, "blocked");
    assert_eq!(
        (blocked["code"].as_str(), blocked["details"].as_str()),
        (Some("PERMISSION_DENIED"), Some("RBAC: access denied")),
        "{blocked}"
    );

    // The server's sidecar counted each call with its gRPC status, from the trailers.
    let (status, text) = curl(&[], &format!("http://{}/stats/prometheus", server_side.admin));
    assert_eq!(status, 200);
    let inbound = |grpc_status: &'static str| {
        metric(
            &text,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", "server"),
                ("destination_service_name", "greeter"),
                ("request_protocol", "grpc"),
                ("grpc_response_status", grpc_status),
            ],
        )
    };
    // hello and count answered OK, fail NOT_FOUND (5), and the sidecar itself denied blocked
    // with PERMISSION_DENIED (7); slow, cut off upstream of it, counts under no status.
    assert_eq!((inbound("0"), inbound("5"), inbound("7")), (2.0, 1.0, 1.0), "{text}");
}

#[test]
fn a_grpc_timeout_shorter_than_the_routes_ends_the_call_first() {
    let server = start_server();
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "client");
    let endpoints = format!("[[endpoint]]\nservice = \"greeter\"\naddress = \"127.0.0.1:{}\"\n", server.1);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    // curl keeps no deadline of its own, so only the sidecar can end this call early: one
    // empty gRPC message to the 3 s method, whose route allows 500 ms, asking for 100 ms.
    let frame = std::env::temp_dir().join(format!("meshc-e2e-grpc-frame-{}", std::process::id()));
    std::fs::write(&frame, [0u8; 5]).expect("write the frame");
    let started = std::time::Instant::now();
    let (status, text) = curl(
        &[
            "--http2-prior-knowledge",
            "--include",
            "-H",
            "host: greeter:50051",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "grpc-timeout: 100m",
            "--data-binary",
            &format!("@{}", frame.display()),
        ],
        &format!("http://{}/e2e.Greeter/Slow", sidecar.listener("outbound")),
    );
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&frame);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("grpc-status: 4"), "DEADLINE_EXCEEDED expected: {text}");
    // Between the header's 100 ms and the route's 500 ms: the header's deadline ended it.
    assert!(elapsed < std::time::Duration::from_millis(450), "took {elapsed:?}: {text}");
}

/// Codes (and replies) of a client case that makes several calls.
fn outcomes(calls: &serde_json::Value) -> Vec<(String, String)> {
    let calls = calls["calls"].as_array().unwrap_or_else(|| panic!("no calls in {calls}"));
    let text = |it: &serde_json::Value| it.as_str().unwrap_or_default().to_owned();
    calls.iter().map(|it| (text(&it["code"]), text(if it["code"] == "OK" { &it["reply"] } else { &it["details"] }))).collect()
}

#[test]
fn a_grpc_status_named_in_retry_on_is_retried_on_another_server() {
    let (good, bad) = (start_named_server(Some("good")), start_named_server(Some("bad")));
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "client");
    let endpoints = format!(
        "[[endpoint]]\nservice = \"greeter\"\naddress = \"127.0.0.1:{}\"\n\n[[endpoint]]\nservice = \"greeter\"\naddress = \"127.0.0.1:{}\"\n",
        good.1, bad.1
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    // Round robin sends every other first try to the server that answers UNAVAILABLE (a
    // status in the trailers of a 200 response); `retries 2 on unavailable any_method`
    // sends it on to the other one.
    let flaky = call(&sidecar, "flaky");
    let good_reply = ("OK".to_owned(), "hello mesh from good".to_owned());
    assert_eq!(outcomes(&flaky), vec![good_reply.clone(); 6], "{flaky}");
    // Hello has no retries: the bad server's answers come back as they are.
    let hellos: Vec<_> = (0..4).map(|_| call(&sidecar, "hello")["reply"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(hellos.iter().any(|it| it == "hello mesh from bad"), "{hellos:?}");
    // The metrics count each call once, with the status its caller got: the UNAVAILABLE
    // answers that were retried are no calls of their own.
    let outbound = |grpc_status| [("reporter", "source"), ("request_protocol", "grpc"), ("grpc_response_status", grpc_status)];
    assert_eq!(metric_reaching(sidecar.admin, "istio_requests_total", &outbound("0"), 10.0), 10.0);
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    assert_eq!(metric(&text, "istio_requests_total", &outbound("14")), 0.0, "{text}");
    // Round robin gave the bad server between three and all six first tries of Flaky, and
    // each was retried once, on the good one.
    let retried = metric(&text, "envoy_cluster_upstream_rq_retry", &[]);
    assert!((3.0..=6.0).contains(&retried), "{retried} retries: {text}");
    assert_eq!(metric(&text, "envoy_cluster_upstream_rq_retry_limit_exceeded", &[]), 0.0, "{text}");
}

#[test]
fn a_grpc_rate_limit_answers_resource_exhausted() {
    let server = start_server();
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/grpc"), "client");
    let endpoints = format!("[[endpoint]]\nservice = \"greeter\"\naddress = \"127.0.0.1:{}\"\n", server.1);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    // `rate_limit 1/m burst 2`: two calls pass, the other four are refused in gRPC's terms.
    let limited = call(&sidecar, "limited");
    let codes: Vec<String> = outcomes(&limited).into_iter().map(|(code, _)| code).collect();
    assert_eq!(codes, ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"], "{limited}");
    // Calls on other routes are not counted against it.
    let hello = call(&sidecar, "hello");
    assert_eq!(hello["code"].as_str(), Some("OK"), "{hello}");
}
