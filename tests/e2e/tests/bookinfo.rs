//! Istio's bookinfo through a meshc-built productpage sidecar: real curl and h2load clients,
//! real HTTP upstreams on 127.0.0.1 standing in for reviews v1, v2, v3 and details.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use meshc_e2e::{Sidecar, Upstream, curl, require, root, run_to_exit, sidecar_binary};

struct Bookinfo {
    sidecar: Sidecar,
    v1: Upstream,
    v2: Upstream,
    v3: Upstream,
    details: Upstream,
}

impl Bookinfo {
    /// The productpage sidecar with reviews v1/v2/v3 and details on local servers, or details
    /// on `details_address` when given.
    fn start(details_address: Option<&str>) -> Bookinfo {
        let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
        let (v1, v2, v3, details) = (Upstream::start("v1"), Upstream::start("v2"), Upstream::start("v3"), Upstream::start("details"));
        let details_at = details_address.map_or_else(|| details.address.to_string(), str::to_owned);
        let endpoints = format!(
            "[[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v1\" }}\n\n\
             [[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v2\" }}\n\n\
             [[endpoint]]\nservice = \"reviews\"\naddress = \"{}\"\nlabels = {{ version = \"v3\" }}\n\n\
             [[endpoint]]\nservice = \"details\"\naddress = \"{details_at}\"\n",
            v1.address, v2.address, v3.address
        );
        let sidecar = Sidecar::start(&binary, &["outbound", "inbound-9080"], &endpoints);
        Bookinfo { sidecar, v1, v2, v3, details }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.listener("outbound"))
    }

    fn hits(&self) -> usize {
        self.v1.hits() + self.v2.hits() + self.v3.hits() + self.details.hits()
    }
}

fn upstream_of(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    json["upstream"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn jason_reaches_reviews_v2_over_http1_and_h2c() {
    let bookinfo = Bookinfo::start(None);
    let url = bookinfo.url("/reviews/0");
    let (status, body) = curl(&["--http1.1", "-H", "host: reviews:9080", "-H", "end-user: jason"], &url);
    assert_eq!((status, upstream_of(&body)), (200, "v2".to_owned()), "{body}");
    let (status, body) = curl(&["--http2-prior-knowledge", "-H", "host: reviews:9080", "-H", "end-user: jason"], &url);
    assert_eq!((status, upstream_of(&body)), (200, "v2".to_owned()), "{body}");
    // The Host the application sent reaches the upstream unchanged.
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["path"], "/reviews/0");
}

#[test]
fn everyone_else_splits_between_v1_and_v3_as_90_to_10() {
    require("h2load", "apt-get install nghttp2-client");
    let bookinfo = Bookinfo::start(None);
    let output = Command::new("h2load")
        .args(["-n", "1000", "-c", "4", "-m", "8", "-H", ":authority: reviews:9080", "-H", "end-user: maria"])
        .arg(bookinfo.url("/reviews/0"))
        .output()
        .expect("run h2load");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("1000 succeeded") && report.contains("1000 2xx"), "h2load: {report}");
    let (v1, v2, v3) = (bookinfo.v1.hits(), bookinfo.v2.hits(), bookinfo.v3.hits());
    assert_eq!((v1 + v3, v2), (1000, 0), "v1 {v1}, v2 {v2}, v3 {v3}");
    // v3 ~ Binomial(1000, 0.1): mean 100, sd 9.5; 60..=140 is beyond 4 sd either way.
    assert!((60..=140).contains(&v3), "v3 got {v3} of 1000, expected about 100");
}

#[test]
fn a_request_slower_than_the_route_timeout_gets_504() {
    let bookinfo = Bookinfo::start(None);
    let started = Instant::now();
    let (status, body) = curl(&["-H", "host: details:9080"], &bookinfo.url("/slow"));
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2900), "the 1 s timeout took {elapsed:?}");
    let (status, _) = curl(&["-H", "host: details:9080"], &bookinfo.url("/details/0"));
    assert_eq!(status, 200);
}

#[test]
fn an_unknown_host_gets_404_and_no_upstream_is_touched() {
    let bookinfo = Bookinfo::start(None);
    let (status, body) = curl(&["-H", "host: nowhere.example.com"], &bookinfo.url("/"));
    assert_eq!(status, 404, "{body}");
    // Ratings is in the mesh, but productpage may not call it.
    let (status, _) = curl(&["-H", "host: ratings:9080"], &bookinfo.url("/ratings/0"));
    assert_eq!(status, 404);
    assert_eq!(bookinfo.hits(), 0);
}

#[test]
fn a_dead_upstream_gets_503_and_the_sidecar_keeps_serving() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").to_string();
    let mut bookinfo = Bookinfo::start(Some(&dead));
    for _ in 0..3 {
        let (status, body) = curl(&["-H", "host: details:9080"], &bookinfo.url("/details/0"));
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("upstream connect error"), "{body}");
    }
    let (status, body) = curl(&["-H", "host: reviews:9080"], &bookinfo.url("/reviews/0"));
    assert_eq!(status, 200, "{body}");
    assert!(bookinfo.sidecar.is_running());
}

/// Sends raw bytes and returns everything the sidecar answers until it closes.
fn raw_response(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(request).expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends raw bytes and returns the first response's status line.
fn raw_status(address: std::net::SocketAddr, request: &[u8]) -> String {
    raw_response(address, request).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn malformed_requests_get_400_and_never_reach_an_upstream() {
    let bookinfo = Bookinfo::start(None);
    let outbound = bookinfo.sidecar.listener("outbound");
    let smuggled = b"POST /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_status(outbound, smuggled), "HTTP/1.1 400 Bad Request");
    let mut oversized = b"GET /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nX-Big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 70_000));
    oversized.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw_status(outbound, &oversized), "HTTP/1.1 400 Bad Request");
    let invalid = b"GET /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nBad Header: x\r\n\r\n";
    assert_eq!(raw_status(outbound, invalid), "HTTP/1.1 400 Bad Request");
    let no_host = b"GET /reviews/0 HTTP/1.1\r\n\r\n";
    assert_eq!(raw_status(outbound, no_host), "HTTP/1.1 400 Bad Request");
    // An upgrade the upstream declines ends the connection after its answer; nothing sent
    // after it is read unchecked.
    let after_upgrade = b"GET /reviews/0 HTTP/1.1\r\nHost: nowhere\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n\
        POST /reviews/0 HTTP/1.1\r\nHost: reviews:9080\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let answers = raw_response(outbound, after_upgrade);
    assert!(answers.starts_with("HTTP/1.1 404") && answers.matches("HTTP/1.1").count() == 1, "{answers}");
    assert_eq!(bookinfo.hits(), 0);
    // A good request pipelined before a bad one still gets its answer, then the 400.
    let pipelined =
        b"GET /details/0 HTTP/1.1\r\nHost: details:9080\r\n\r\nGET /details/0 HTTP/1.1\r\nHost: details:9080\r\nBad Header: x\r\n\r\n";
    let answers = raw_response(outbound, pipelined);
    assert!(answers.starts_with("HTTP/1.1 200 OK") && answers.contains("HTTP/1.1 400 Bad Request"), "{answers}");
    assert_eq!(bookinfo.details.hits(), 1);
}

#[test]
fn the_admin_endpoint_reports_readiness_and_the_compiled_tables() {
    let bookinfo = Bookinfo::start(None);
    let admin = bookinfo.sidecar.admin;
    let (status, body) = curl(&[], &format!("http://{admin}/ready"));
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, body) = curl(&[], &format!("http://{admin}/config_dump"));
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(dump["workload"], "productpage");
    let tables: Vec<&str> =
        dump["compiled"]["route_tables"].as_array().expect("tables").iter().filter_map(|it| it["name"].as_str()).collect();
    assert!(tables.contains(&"reviews.default.svc.cluster.local:9080"), "{tables:?}");
    let v2 = dump["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|it| it["name"] == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .expect("v2");
    assert_eq!(v2["endpoints"][0]["address"], bookinfo.v2.address.to_string());
}

#[test]
fn a_bad_flag_or_endpoints_file_exits_2_with_a_message() {
    let binary: PathBuf = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
    let output = run_to_exit(Command::new(&binary).arg("--listen").arg("nowhere=127.0.0.1:0"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("there is no listener `nowhere`"));
    let file = std::env::temp_dir().join(format!("meshc-e2e-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "[[endpoint]]\nservice = \"ratings\"\naddress = \"127.0.0.1:1\"\n").expect("write");
    let output = run_to_exit(Command::new(&binary).arg("--endpoints").arg(&file));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("calls no service by that name"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (flag, message) in [
        ("9080", "is not PORT=ADDR"),
        ("9080=localhost", "is not PORT=ADDR"),
        ("9999=127.0.0.1:1", "serves no port 9999; the ports it serves are 9080"),
    ] {
        let output = run_to_exit(Command::new(&binary).arg("--app").arg(flag));
        assert_eq!(output.status.code(), Some(2), "--app {flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "--app {flag}: {stderr}");
    }
    let help = Command::new(&binary).arg("--help").output().expect("run");
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--endpoints") && help.contains("--app"), "{help}");
}

#[test]
fn the_inbound_listener_hands_requests_to_the_application() {
    let binary = sidecar_binary(&root().join("examples/bookinfo"), "productpage");
    let app = Upstream::start("productpage");
    let flag = format!("9080={}", app.address);
    let sidecar = Sidecar::start_with(&binary, &["outbound", "inbound-9080"], "", &["--app", &flag]);
    let url = format!("http://{}/productpage?u=normal", sidecar.listener("inbound-9080"));
    for client in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, body) = curl(&[client, "-H", "host: productpage:9080"], &url);
        assert_eq!(status, 200, "{client}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        // Port 9080 is declared `http`, so the application gets HTTP/1.1 whatever the caller
        // spoke (as from Istio's inbound clusters), with the path and host the caller sent.
        assert_eq!((json["upstream"].as_str(), json["path"].as_str()), (Some("productpage"), Some("/productpage")), "{body}");
        assert_eq!((json["host"].as_str(), json["version"].as_str()), (Some("productpage:9080"), Some("HTTP/1.1")), "{body}");
    }
    assert_eq!(app.hits(), 2);
}
