//! HTTP features of a meshc-built sidecar, between curl or a real WebSocket client and real
//! servers: prefix and authority rewrites, request and response header operations,
//! redirects and direct responses, round robin over two instances on one kept-alive
//! connection, chunked request bodies, WebSocket upgrades passed through, the connect
//! timeout, retries, injected faults, inbound authorization, local rate limits, a graceful
//! drain on SIGTERM, the request metrics, access logs and trace headers.

use std::process::Command;

use meshc_e2e::{PeerServer, Sidecar, Upstream, free_port, metric, metric_reaching, python, require, root, sidecar_binary};

struct Http {
    sidecar: Sidecar,
    a: Upstream,
    b: Upstream,
    _echo: PeerServer,
}

impl Http {
    /// The `app` sidecar of tests/e2e/meshes/http, with `web` on two local upstreams and
    /// `echo` on a WebSocket echo server.
    fn start() -> Http {
        Http::start_with_web(None)
    }

    /// [`Http::start`], with `web` at `web_address` instead of the two upstreams when given.
    fn start_with_web(web_address: Option<std::net::SocketAddr>) -> Http {
        let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let echo = PeerServer::start("ws_peer.py");
        let endpoints = format!(
            "[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n\n\
             [[endpoint]]\nservice = \"echo\"\naddress = \"127.0.0.1:{}\"\n",
            web_address.unwrap_or(a.address),
            web_address.unwrap_or(b.address),
            echo.port
        );
        let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
        Http { sidecar, a, b, _echo: echo }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.listener("outbound"))
    }

    fn hits(&self) -> usize {
        self.a.hits() + self.b.hits()
    }
}

/// A response as curl saw it.
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|it| it.0.eq_ignore_ascii_case(name)).map(|it| it.1.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// Runs curl with `--include` and splits what it printed.
fn curl(args: &[&str], url: &str) -> Seen {
    require("curl", "apt-get install curl");
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--include"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("curl printed {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|it| it.split_whitespace().nth(1)).and_then(|it| it.parse().ok()).unwrap_or(0);
    let headers =
        lines.filter_map(|it| it.split_once(':')).map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned())).collect();
    Seen { status, headers, body: body.to_owned() }
}

#[test]
fn rewrites_and_header_operations_apply_to_the_matched_route() {
    let http = Http::start();
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let seen = curl(&[version, "-H", "host: web", "-H", "x-secret: hunter2", "-H", "x-added: caller"], &http.url("/api/items?page=2"));
        assert_eq!(seen.status, 200, "{version}: {}", seen.body);
        let json = seen.json();
        // The matched prefix `/api/` becomes `/v2/`, the query stays, the authority is rewritten.
        assert_eq!((json["path"].as_str(), json["query"].as_str()), (Some("/v2/items"), Some("page=2")), "{version}: {json}");
        assert_eq!(json["host"].as_str(), Some("web.internal"), "{version}: {json}");
        let headers = &json["headers"];
        assert_eq!(headers["x-mesh"].as_str(), Some("1"), "{version}: {json}");
        // `add` appends to what the caller sent; `remove` drops the header.
        assert_eq!(headers["x-added"].as_str(), Some("caller,yes"), "{version}: {json}");
        assert!(headers.get("x-secret").is_none(), "{version}: {json}");
        assert_eq!(seen.header("x-served-by"), Some("meshc"), "{version}");
        assert_eq!(seen.header("x-upstream-private"), None, "{version}");
    }
    // Other routes leave requests and responses as they are.
    let seen = curl(&["-H", "host: web", "-H", "x-secret: hunter2"], &http.url("/api-docs"));
    let json = seen.json();
    assert_eq!((json["path"].as_str(), json["host"].as_str()), (Some("/api-docs"), Some("web")), "{json}");
    assert_eq!(json["headers"]["x-secret"].as_str(), Some("hunter2"));
    assert_eq!(seen.header("x-upstream-private"), Some("1"));
}

#[test]
fn a_redirect_and_a_direct_response_touch_no_upstream() {
    let http = Http::start();
    let seen = curl(&["-H", "host: web"], &http.url("/old/page?x=1"));
    assert_eq!(seen.status, 308, "{}", seen.body);
    assert_eq!(seen.header("location"), Some("http://web/new/?x=1"));
    let seen = curl(&["--http2-prior-knowledge", "-H", "host: web", "-H", "x-maintenance: 1"], &http.url("/anything"));
    assert_eq!((seen.status, seen.body.as_str()), (503, "down for maintenance"));
    assert_eq!(http.hits(), 0);
}

#[test]
fn two_instances_take_turns_over_one_kept_alive_connection() {
    require("curl", "apt-get install curl");
    let http = Http::start();
    // One curl, ten URLs: curl reuses its connection when the sidecar keeps it alive.
    let url = http.url("/turns");
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--http1.1", "-H", "host: web"])
        .args(["--write-out", "%{http_code} %{num_connects}\n"])
        .args((0..10).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
        .output()
        .expect("run curl");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines.iter().all(|it| it.starts_with("200 ")), "{lines:?}");
    let connects: u32 = lines.iter().filter_map(|it| it.split(' ').nth(1)?.parse::<u32>().ok()).sum();
    assert_eq!(connects, 1, "one connection for ten requests: {lines:?}");
    // Equal weights: round robin gives each instance every other request.
    assert_eq!((http.a.hits(), http.b.hits()), (5, 5));
}

#[test]
fn chunked_request_bodies_arrive_whole() {
    let http = Http::start();
    let file = std::env::temp_dir().join(format!("meshc-e2e-body-{}", std::process::id()));
    let body: Vec<u8> = (0..1_000_000u32).map(|it| (it % 251) as u8).collect();
    std::fs::write(&file, &body).expect("write the body");
    let data = format!("@{}", file.display());
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let mut args = vec![version, "-H", "host: web", "--data-binary", &data];
        if version == "--http1.1" {
            args.extend(["-H", "transfer-encoding: chunked"]);
        }
        let seen = curl(&args, &http.url("/upload"));
        assert_eq!(seen.status, 200, "{version}: {}", seen.body);
        assert_eq!(seen.json()["body_bytes"].as_u64(), Some(1_000_000), "{version}: {}", seen.body);
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn websocket_upgrades_pass_through() {
    let http = Http::start();
    let output = Command::new(python())
        .arg(root().join("tests/e2e/ws_peer.py"))
        .args(["client", &http.sidecar.listener("outbound").to_string(), "echo"])
        .output()
        .expect("run the WebSocket client");
    let text = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("client output {text:?}, stderr {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(json, serde_json::json!({"text": "ping", "binary_bytes": 102_400, "binary_intact": true}));
}

#[test]
fn a_drain_waits_for_an_open_websocket() {
    use std::io::{BufRead, Write};
    let mut http = Http::start();
    let mut client = Command::new(python())
        .arg(root().join("tests/e2e/ws_peer.py"))
        .args(["hold", &http.sidecar.listener("outbound").to_string(), "echo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the WebSocket client");
    let mut lines = std::io::BufReader::new(client.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "open ping");
    // SIGTERM: the sidecar drains, and the open WebSocket keeps it from exiting.
    http.sidecar.terminate();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(http.sidecar.is_running(), "the sidecar exited with a WebSocket open");
    let mut stdin = client.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("tell the client to go on");
    let last = lines.next().expect("a line").expect("read");
    let json: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|_| panic!("client said {last:?}"));
    assert_eq!(json, serde_json::json!({"first": "ping", "later": "still there"}));
    assert!(client.wait().expect("the client").success());
    // Closed: the drain is over well before its 5 s.
    let status = http.sidecar.wait_exit(std::time::Duration::from_secs(3)).expect("the sidecar exits once the WebSocket closed");
    assert!(status.success(), "{status}");
}

#[test]
fn an_upstream_that_never_accepts_gets_503_after_the_connect_timeout() {
    // A listener whose accept queue is full: Linux drops further SYNs, so connecting hangs.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let address = listener.local_addr().expect("address");
    let mut queued = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }
    let http = Http::start_with_web(Some(address));
    let started = std::time::Instant::now();
    let seen = curl(&["-H", "host: web"], &http.url("/anything"));
    let elapsed = started.elapsed();
    assert_eq!(seen.status, 503, "{}", seen.body);
    assert!(seen.body.contains("upstream connect error"), "{}", seen.body);
    // The service's 300 ms connect timeout, not curl's 10 s, ended the attempt.
    assert!(elapsed < std::time::Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn retries_hide_a_failing_instance_but_never_resend_a_post_body() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (good, bad) = (Upstream::start("good"), Upstream::answering("bad", 500));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n",
        good.address, bad.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}/flaky/item", sidecar.listener("outbound"));
    // `retries 2 on 5xx`: every GET succeeds although round robin sends half the first
    // tries to the instance that answers 500.
    for _ in 0..20 {
        let seen = curl(&["-H", "host: web"], &url);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["upstream"], "good");
    }
    assert!(bad.hits() >= 5, "the failing instance took {} first tries", bad.hits());
    // PUT is idempotent: its body is replayed whole on the retry.
    let file = std::env::temp_dir().join(format!("meshc-e2e-put-{}", std::process::id()));
    std::fs::write(&file, vec![b'x'; 200_000]).expect("write the body");
    let data = format!("@{}", file.display());
    for _ in 0..6 {
        let seen = curl(&["-X", "PUT", "-H", "host: web", "--data-binary", &data], &url);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["body_bytes"].as_u64(), Some(200_000), "{}", seen.body);
    }
    let _ = std::fs::remove_file(&file);
    // POST is not: once its body went to the failing instance, the 500 comes back.
    let before = bad.hits();
    let failed = (0..10).filter(|_| curl(&["-H", "host: web", "--data-binary", "order=1"], &url).status == 500).count();
    assert!(failed > 0, "no POST reached the failing instance");
    assert_eq!(failed, bad.hits() - before, "each POST the failing instance saw failed, and none was resent");
    // Unless the route says `any_method`: then the POST is sent again, body and all.
    let orders = format!("http://{}/orders/new", sidecar.listener("outbound"));
    let before = bad.hits();
    for _ in 0..10 {
        let seen = curl(&["-H", "host: web", "--data-binary", "order=1"], &orders);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["body_bytes"].as_u64(), Some(7), "{}", seen.body);
    }
    assert!(bad.hits() > before, "no POST to /orders/ reached the failing instance first");
}

#[test]
fn a_try_past_its_per_try_timeout_is_given_up_and_tried_on_another_instance() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (quick, late) = (Upstream::start("quick"), Upstream::start("late"));
    late.set_delay(std::time::Duration::from_secs(4));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n",
        quick.address, late.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}/per-try/item", sidecar.listener("outbound"));
    // `retries 1 per_try_timeout 500ms on gateway-error` under a 6 s timeout: round robin
    // sends every other first try to the instance 4 s late, whose try ends at 500 ms.
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let seen = curl(&["-H", "host: web"], &url);
        assert_eq!(seen.status, 200, "{}", seen.body);
        assert_eq!(seen.json()["upstream"], "quick");
        // Not the late answer at 4 s, nor the route's timeout at 6 s.
        assert!(started.elapsed() < std::time::Duration::from_millis(3500), "took {:?}", started.elapsed());
    }
    let first_tries = late.hits();
    assert!(first_tries >= 3, "the late instance took {first_tries} first tries");
    // With both late, each try times out and the retries run out: 504 well before 4 s.
    quick.set_delay(std::time::Duration::from_secs(4));
    let started = std::time::Instant::now();
    let seen = curl(&["-H", "host: web"], &url);
    assert_eq!(seen.status, 504, "{}", seen.body);
    assert!(started.elapsed() < std::time::Duration::from_millis(3500), "took {:?}", started.elapsed());
    // Envoy's retry counters: every try the late instance took timed out and was retried,
    // and the last request's two tries timed out with no retry left.
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    let counter = |name: &str| meshc_e2e::metric(&text, name, &[("cluster_name", "outbound|80||web.default.svc.cluster.local")]);
    assert_eq!(
        (
            counter("envoy_cluster_upstream_rq_per_try_timeout"),
            counter("envoy_cluster_upstream_rq_retry"),
            counter("envoy_cluster_upstream_rq_retry_limit_exceeded"),
        ),
        (first_tries as f64 + 2.0, first_tries as f64 + 1.0, 1.0),
        "{text}"
    );
}

/// Polls the admin `/clusters` until `line` is there.
fn wait_for_clusters_line(admin: std::net::SocketAddr, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, clusters) = meshc_e2e::curl(&[], &format!("http://{admin}/clusters"));
        if clusters.contains(line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no `{line}` in /clusters:\n{clusters}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_connection_limit_queues_one_request_and_overflows_the_next() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let upstream = Upstream::start("pooled");
    let endpoints = format!("[[endpoint]]\nservice = \"pooled\"\naddress = \"{}\"\n", upstream.address);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let slow_url = format!("http://{}/slow", sidecar.listener("outbound"));
    // `max_connections 1  max_pending_requests 1`: the first slow request holds the only
    // connection, the second waits for it, the third overflows at once.
    let first = {
        let url = slow_url.clone();
        std::thread::spawn(move || curl(&["-H", "host: pooled"], &url).status)
    };
    std::thread::sleep(std::time::Duration::from_millis(400));
    let second = {
        let url = slow_url.clone();
        std::thread::spawn(move || curl(&["-H", "host: pooled"], &url).status)
    };
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(upstream.hits(), 1, "the waiting request reached the upstream before a connection was free");
    let (_, stats) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    let cluster = [("cluster_name", "outbound|80||pooled.default.svc.cluster.local")];
    assert_eq!(metric(&stats, "envoy_cluster_upstream_rq_active", &cluster), 2.0, "{stats}");
    assert_eq!(metric(&stats, "envoy_cluster_upstream_rq_pending_active", &cluster), 1.0, "{stats}");
    let third = curl(&["-H", "host: pooled"], &format!("http://{}/now", sidecar.listener("outbound")));
    assert_eq!(third.status, 503, "{}", third.body);
    assert!(third.body.contains("overflow"), "{}", third.body);
    assert_eq!(first.join().expect("the first request"), 200);
    assert_eq!(second.join().expect("the second request"), 200);
    assert_eq!(upstream.hits(), 2);
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    assert_eq!(metric(&text, "istio_requests_total", &[("destination_service_name", "pooled"), ("response_flags", "UO")]), 1.0, "{text}");
}

#[test]
fn nearby_endpoints_take_the_traffic_until_they_fail_then_it_fails_over() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (near, zone, far) = (Upstream::start("near"), Upstream::start("zone"), Upstream::start("far"));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"zoned\"\naddress = \"{}\"\nlocality = \"eu/eu-1a\"\n\n\
         [[endpoint]]\nservice = \"zoned\"\naddress = \"{}\"\nlocality = \"us/us-1b\"\n\n\
         [[endpoint]]\nservice = \"zoned\"\naddress = \"{}\"\nlocality = \"us/us-1a\"\n",
        far.address, zone.address, near.address
    );
    let sidecar = Sidecar::start_with(&binary, &["outbound"], &endpoints, &["--locality", "us/us-1a"]);
    let url = format!("http://{}/x", sidecar.listener("outbound"));
    let served_by = || {
        let seen = curl(&["-H", "host: zoned"], &url);
        assert_eq!(seen.status, 200, "{}", seen.body);
        seen.json()["upstream"].as_str().unwrap_or_default().to_owned()
    };
    let cluster = "outbound|80||zoned.default.svc.cluster.local";
    // Round robin over three endpoints, but the sidecar's own zone takes everything.
    assert!((0..12).all(|_| served_by() == "near"));
    // The near endpoint fails its checks: the same region's other zone takes over, not the far one.
    near.set_status(500);
    wait_for_clusters_line(sidecar.admin, &format!("{cluster}::{}::health_flags::/failed_active_hc", near.address));
    assert!((0..12).all(|_| served_by() == "zone"));
    zone.set_status(500);
    wait_for_clusters_line(sidecar.admin, &format!("{cluster}::{}::health_flags::/failed_active_hc", zone.address));
    assert!((0..12).all(|_| served_by() == "far"));
    // Healthy again: back home.
    near.set_status(200);
    wait_for_clusters_line(sidecar.admin, &format!("{cluster}::{}::health_flags::healthy", near.address));
    assert!((0..12).all(|_| served_by() == "near"));
}

#[test]
fn an_endpoint_back_from_failed_checks_is_eased_in() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (steady, back) = (Upstream::start("steady"), Upstream::start("back"));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"warming\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"warming\"\naddress = \"{}\"\n",
        steady.address, back.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let cluster = "outbound|80||warming.default.svc.cluster.local";
    back.set_status(500);
    wait_for_clusters_line(sidecar.admin, &format!("{cluster}::{}::health_flags::/failed_active_hc", back.address));
    back.set_status(200);
    wait_for_clusters_line(sidecar.admin, &format!("{cluster}::{}::health_flags::healthy", back.address));
    // `warmup 20s`: in its first seconds back, the endpoint weighs 10% (rising by 5% a second),
    // so it takes about a tenth of the requests where round robin would give it half.
    // (Counted from the answers: the upstreams' own counts include the probes.)
    let url = format!("http://{}/x", sidecar.listener("outbound"));
    let taken = (0..100)
        .filter(|_| {
            let seen = curl(&["-H", "host: warming"], &url);
            assert_eq!(seen.status, 200, "{}", seen.body);
            seen.json()["upstream"] == "back"
        })
        .count();
    assert!((1..30).contains(&taken), "the endpoint back from failed checks took {taken} of 100 requests");
}

#[test]
fn injected_faults_abort_and_delay_their_share_of_requests() {
    let http = Http::start();
    let seen = curl(&["-H", "host: web", "-H", "x-chaos: abort"], &http.url("/x"));
    assert_eq!((seen.status, seen.body.as_str()), (503, "fault filter abort"));
    assert_eq!(http.hits(), 0, "an aborted request reaches no upstream");

    let started = std::time::Instant::now();
    let seen = curl(&["-H", "host: web", "-H", "x-chaos: delay"], &http.url("/x"));
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400), "the 400 ms delay took {:?}", started.elapsed());
    assert_eq!(http.hits(), 1);

    // 50%: over 200 requests, Binomial(200, 0.5) has sd 7; 60..=140 is beyond 5 sd.
    let before = http.hits();
    let aborted = (0..200).filter(|_| curl(&["-H", "host: web", "-H", "x-chaos: half"], &http.url("/x")).status == 429).count();
    assert!((60..=140).contains(&aborted), "{aborted} of 200 aborted");
    assert_eq!(http.hits() - before, 200 - aborted);
}

#[test]
fn an_http2_upstream_gets_the_services_authority_not_the_endpoints_address() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let upstream = Upstream::start("h2");
    let endpoints = format!("[[endpoint]]\nservice = \"h2web\"\naddress = \"{}\"\n", upstream.address);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let seen = curl(&[version, "-H", "host: h2web"], &format!("http://{}/a", sidecar.listener("outbound")));
        let json = seen.json();
        // The port is declared http2: HTTP/2 upstream whatever the caller spoke.
        assert_eq!((json["version"].as_str(), json["host"].as_str()), (Some("HTTP/2.0"), Some("h2web")), "{version}: {json}");
        let seen = curl(&[version, "-H", "host: h2web"], &format!("http://{}/renamed/b", sidecar.listener("outbound")));
        let json = seen.json();
        assert_eq!((json["host"].as_str(), json["path"].as_str()), (Some("inner.example"), Some("/b")), "{version}: {json}");
    }
    assert_eq!(upstream.hits(), 4);
}

#[test]
fn inbound_authorization_denies_first_then_needs_an_allow() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let app = Upstream::start("app");
    let flag = format!("80={}", app.address);
    let sidecar = Sidecar::start_with(&binary, &["inbound-80"], "", &["--app", &flag]);
    let url = |path: &str| format!("http://{}{path}", sidecar.listener("inbound-80"));
    // `local-readers` allows GET and HEAD from loopback.
    let seen = curl(&["-H", "host: web"], &url("/books"));
    assert_eq!(seen.status, 200, "{}", seen.body);
    // `no-admin` denies before any ALLOW is considered.
    let seen = curl(&["-H", "host: web"], &url("/admin/users"));
    assert_eq!((seen.status, seen.body.as_str()), (403, "RBAC: access denied"));
    // Policies see the normalised path: no way around `/admin/*` by spelling it otherwise.
    for path in ["//admin/users", "/./admin/users", "/books/../admin/users"] {
        let seen = curl(&["--path-as-is", "-H", "host: web"], &url(path));
        assert_eq!(seen.status, 403, "{path}: {}", seen.body);
    }
    // Once an ALLOW policy applies, what no rule allows is denied.
    let seen = curl(&["-X", "DELETE", "-H", "host: web"], &url("/books/1"));
    assert_eq!(seen.status, 403, "{}", seen.body);
    assert_eq!(app.hits(), 1, "denied requests never reach the application");
}

#[test]
fn local_rate_limits_answer_429_past_their_burst() {
    let http = Http::start();
    // `limited`: a bucket of 3 that refills one token a minute.
    let statuses: Vec<u16> = (0..5).map(|_| curl(&["-H", "host: web"], &http.url("/limited/x")).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let seen = curl(&["-H", "host: web"], &http.url("/limited/x"));
    assert_eq!(seen.body, "local_rate_limited");
    assert_eq!(http.hits(), 3, "refused requests reach no upstream");
    // Other routes have no limit.
    assert_eq!(curl(&["-H", "host: web"], &http.url("/free")).status, 200);
}

#[test]
fn a_per_source_rate_limit_gives_each_source_address_its_own_bucket() {
    let http = Http::start();
    // `limited-each`: a bucket of 2 per source address, refilling one token a minute. curl
    // sends from two loopback addresses (all of 127/8 is local on Linux).
    let from = |source: &str| curl(&["--interface", source, "-H", "host: web"], &http.url("/limited-each/x")).status;
    let statuses: Vec<u16> =
        ["127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.1"].iter().map(|it| from(it)).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429, 429]);
    assert_eq!(http.hits(), 4, "refused requests reach no upstream");
}

#[test]
fn a_workloads_inbound_rate_limit_covers_all_its_inbound_requests() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let app = Upstream::start("app");
    let flag = format!("80={}", app.address);
    let sidecar = Sidecar::start_with(&binary, &["inbound-80"], "", &["--app", &flag]);
    let url = format!("http://{}/books", sidecar.listener("inbound-80"));
    let statuses: Vec<u16> = (0..6).map(|_| curl(&["-H", "host: web"], &url).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    assert_eq!(app.hits(), 4);
}

#[test]
fn sigterm_drains_without_failing_a_request_in_flight() {
    let mut http = Http::start();
    let url = http.url("/slow");
    // A request the upstream answers after 3 s, under the default 5 s drain time.
    let in_flight = std::thread::spawn(move || curl(&["-H", "host: web"], &url).status);
    std::thread::sleep(std::time::Duration::from_millis(500));
    http.sidecar.terminate();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Draining: inbound listeners refuse new connections (curl reports no status) ...
    let refused = Command::new("curl")
        .args(["--silent", "--max-time", "2", "--output", "/dev/null", "--write-out", "%{http_code}", "-H", "host: web"])
        .arg(format!("http://{}/new", http.sidecar.listener("inbound-80")))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "000");
    // ... while the outbound one still serves the application, which may be finishing its
    // own requests, one request per connection.
    let late = curl(&["-H", "host: web"], &http.url("/late"));
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(late.header("connection"), Some("close"), "{:?}", late.headers);
    assert_eq!(in_flight.join().expect("the in-flight request"), 200);
    let status = http.sidecar.wait_exit(std::time::Duration::from_secs(5)).expect("the sidecar exits once drained");
    assert!(status.success(), "{status}");
    assert_eq!(http.hits(), 2);
}

#[test]
fn the_metrics_count_exactly_the_requests_sent() {
    let http = Http::start();
    for user in ["alice", "", ""] {
        let header = format!("x-user: {user}");
        let args: &[&str] = if user.is_empty() { &["-H", "host: web"] } else { &["-H", "host: web", "-H", &header] };
        assert_eq!(curl(args, &http.url("/m")).status, 200);
    }
    assert_eq!(curl(&["-H", "host: web", "-H", "x-chaos: abort"], &http.url("/m")).status, 503);
    assert_eq!(curl(&["-H", "host: nowhere"], &http.url("/m")).status, 404);
    let seen = curl(&[], &format!("http://{}/stats/prometheus", http.sidecar.admin));
    assert_eq!(seen.status, 200);
    let text = &seen.body;
    let ok = [
        ("reporter", "source"),
        ("source_workload", "app"),
        ("destination_service", "web.default.svc.cluster.local"),
        ("destination_service_name", "web"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(metric(text, "istio_requests_total", &ok), 3.0, "{text}");
    assert_eq!(metric(text, "istio_request_duration_milliseconds_count", &ok), 3.0, "{text}");
    assert_eq!(metric(text, "istio_request_duration_milliseconds_bucket", &[ok[5], ("le", "+Inf")]), 3.0, "{text}");
    assert_eq!(metric(text, "istio_requests_total", &[("response_code", "503"), ("response_flags", "FI")]), 1.0, "{text}");
    assert_eq!(metric(text, "istio_requests_total", &[("response_code", "404"), ("response_flags", "NR")]), 1.0, "{text}");
    assert_eq!(metric(text, "istio_requests_total", &[]), 5.0, "{text}");
    // The workload's own labels, after Istio's: a header's value, or `unknown` without it,
    // and the service port, which a request no route took has none of.
    let alice = [ok[5], ("user", "alice"), ("dest_port", "80")];
    assert_eq!(metric(text, "istio_requests_total", &alice), 1.0, "{text}");
    assert_eq!(metric(text, "istio_requests_total", &[ok[5], ("user", "unknown"), ("dest_port", "80")]), 2.0, "{text}");
    assert_eq!(metric(text, "istio_request_duration_milliseconds_count", &alice), 1.0, "{text}");
    assert_eq!(metric(text, "istio_requests_total", &[("response_code", "404"), ("dest_port", "unknown")]), 1.0, "{text}");
    // Each route counts what it took; every answer has ended, so none is active.
    let web = ("virtual_host", "web.default.svc.cluster.local:80");
    assert_eq!(metric(text, "meshc_route_requests_total", &[web, ("route_name", "rest")]), 3.0, "{text}");
    assert_eq!(metric(text, "meshc_route_requests_total", &[web, ("route_name", "chaos-abort")]), 1.0, "{text}");
    assert_eq!(metric(text, "meshc_route_requests_total", &[]), 4.0, "{text}");
    assert_eq!(metric(text, "meshc_route_requests_active", &[]), 0.0, "{text}");

    // A client that gives up before the answer is counted too, as Envoy counts it: code 0, `DC`.
    // (Over HTTP/2, where the stream's end is explicit; an HTTP/1.1 client that closes is seen
    // only when its answer is written, since a half-closed connection may still want it.)
    let abandoned = Command::new("curl")
        .args(["--silent", "--http2-prior-knowledge", "--max-time", "1", "-H", "host: web"])
        .arg(http.url("/slow"))
        .status()
        .expect("run curl");
    assert_eq!(abandoned.code(), Some(28), "curl's timeout");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let dc = [("response_code", "0"), ("response_flags", "DC")];
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = curl(&[], &format!("http://{}/stats/prometheus", http.sidecar.admin)).body;
        if metric(&text, "istio_requests_total", &dc) == 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(metric(&text, "istio_requests_total", &dc), 1.0, "{text}");
    assert_eq!(metric(&text, "istio_requests_total", &[]), 6.0, "{text}");
    // The abandoned request left its route too.
    assert_eq!(metric(&text, "meshc_route_requests_active", &[]), 0.0, "{text}");
}

#[test]
fn request_and_response_body_sizes_are_counted_in_istios_histograms() {
    let http = Http::start();
    let file = std::env::temp_dir().join(format!("meshc-e2e-sizes-{}", std::process::id()));
    std::fs::write(&file, vec![b'x'; 5000]).expect("write the body");
    // A POST of 5,000 bytes and a GET, labelled by the app workload's `user` label.
    let sized = |extra: &[&str]| {
        let output = Command::new("curl")
            .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code} %{size_download}"])
            .args(["-H", "host: web", "-H", "x-user: sizes"])
            .args(extra)
            .arg(http.url("/m"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        match text.split_whitespace().map(|it| it.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>()[..] {
            [status, downloaded] => (status, downloaded),
            _ => panic!("curl printed {text:?}"),
        }
    };
    let (post, posted_answer) = sized(&["--data-binary", &format!("@{}", file.display())]);
    let (get, got_answer) = sized(&[]);
    let _ = std::fs::remove_file(&file);
    assert_eq!((post, get), (200, 200));
    let user = ("user", "sizes");
    assert_eq!(metric_reaching(http.sidecar.admin, "istio_requests_total", &[user], 2.0), 2.0);
    let text = curl(&[], &format!("http://{}/stats/prometheus", http.sidecar.admin)).body;
    let value = |name: &str, le: Option<&str>| match le {
        Some(le) => metric(&text, name, &[user, ("le", le)]),
        None => metric(&text, name, &[user]),
    };
    // The request bodies: 5,000 bytes and none, in Istio's (Envoy's default) buckets.
    assert_eq!(value("istio_request_bytes_sum", None), 5000.0, "{text}");
    assert_eq!(value("istio_request_bytes_count", None), 2.0, "{text}");
    assert_eq!(value("istio_request_bytes_bucket", Some("0.5")), 1.0, "{text}");
    assert_eq!(value("istio_request_bytes_bucket", Some("2500")), 1.0, "{text}");
    assert_eq!(value("istio_request_bytes_bucket", Some("5000")), 2.0, "{text}");
    // The response bodies: what curl downloaded.
    assert!(posted_answer > 0 && got_answer > 0);
    assert_eq!(value("istio_response_bytes_sum", None), (posted_answer + got_answer) as f64, "{text}");
    assert_eq!(value("istio_response_bytes_count", None), 2.0, "{text}");
}

#[test]
fn a_mirrored_request_reaches_the_mirror_with_a_shadow_host() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (web, mirror) = (Upstream::start("web"), Upstream::start("mirror"));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"h2web\"\naddress = \"{}\"\n",
        web.address, mirror.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let seen = curl(&["-H", "host: web"], &format!("http://{}/mirrored/x", sidecar.listener("outbound")));
    // The caller gets the real answer.
    assert_eq!((seen.status, seen.json()["upstream"].as_str()), (200, Some("web")), "{}", seen.body);
    // The copy is sent and forgotten: wait for it a little. (An upstream counts a request
    // when it starts and records it once its body is read: wait for the record.)
    let mirrored = |path: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let last = mirror.last();
            if last.as_ref().is_some_and(|it| it["path"] == path) || std::time::Instant::now() > deadline {
                return last;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let seen = mirrored("/mirrored/x").expect("the mirrored request");
    assert_eq!((web.hits(), mirror.hits()), (1, 1));
    assert_eq!((seen["host"].as_str(), seen["path"].as_str()), (Some("web-shadow"), Some("/mirrored/x")), "{seen}");

    // The copy is the request the route sends on: its rewrites and header operations made,
    // then the rewritten authority's shadow host (as Envoy shadows its router's request).
    let seen = curl(&["-H", "host: web"], &format!("http://{}/mirrored-rewritten/y", sidecar.listener("outbound")));
    assert_eq!((seen.status, seen.json()["path"].as_str()), (200, Some("/inner/y")), "{}", seen.body);
    let seen = mirrored("/inner/y").expect("the mirrored request");
    assert_eq!((seen["host"].as_str(), seen["headers"]["x-mesh"].as_str()), (Some("web.internal-shadow"), Some("1")), "{seen}");
    assert_eq!((web.hits(), mirror.hits()), (2, 2));

    // A body streams on to the upstream and a whole copy follows it to the mirror.
    let body = "m".repeat(100_000);
    let seen = curl(&["-H", "host: web", "--data-binary", &body], &format!("http://{}/mirrored/post", sidecar.listener("outbound")));
    assert_eq!((seen.status, seen.json()["body_bytes"].as_u64()), (200, Some(100_000)), "{}", seen.body);
    let seen = mirrored("/mirrored/post").expect("the mirrored POST");
    assert_eq!((seen["path"].as_str(), seen["body_bytes"].as_u64()), (Some("/mirrored/post"), Some(100_000)), "{seen}");
}

#[test]
fn a_circuit_breaker_trips_with_503_and_recovers() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let upstream = Upstream::start("capped");
    let endpoints = format!("[[endpoint]]\nservice = \"capped\"\naddress = \"{}\"\n", upstream.address);
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}", sidecar.listener("outbound"));
    // `max_requests 1`: while one slow request is in flight, the next overflows.
    let slow_url = format!("{url}/slow");
    let slow = std::thread::spawn(move || curl(&["-H", "host: capped"], &slow_url).status);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let seen = curl(&["-H", "host: capped"], &format!("{url}/now"));
    assert_eq!(seen.status, 503, "{}", seen.body);
    assert!(seen.body.contains("overflow"), "{}", seen.body);
    assert_eq!(slow.join().expect("the slow request"), 200);
    // Once it is done, requests flow again.
    assert_eq!(curl(&["-H", "host: capped"], &format!("{url}/now")).status, 200);
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    assert_eq!(metric(&text, "istio_requests_total", &[("destination_service_name", "capped"), ("response_flags", "UO")]), 1.0, "{text}");
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn an_ejected_instance_stops_receiving_traffic_and_comes_back() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (good, bad) = (Upstream::start("good"), Upstream::answering("bad", 500));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"flaky\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"flaky\"\naddress = \"{}\"\n",
        good.address, bad.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}/x", sidecar.listener("outbound"));
    let get = || curl(&["-H", "host: flaky"], &url).status;
    // Round robin alternates until the failing instance's second consecutive 500 ejects it.
    let first: Vec<u16> = (0..4).map(|_| get()).collect();
    assert_eq!(first.iter().filter(|it| **it == 500).count(), 2, "{first:?}");
    assert_eq!(bad.hits(), 2);
    // Ejected for the 2 s base ejection time: everything goes to the healthy instance.
    assert!((0..10).all(|_| get() == 200));
    assert_eq!(bad.hits(), 2, "an ejected instance receives no traffic");
    let (_, clusters) = meshc_e2e::curl(&[], &format!("http://{}/clusters", sidecar.admin));
    let cluster = "outbound|80||flaky.default.svc.cluster.local";
    assert!(clusters.contains(&format!("{cluster}::{}::health_flags::/failed_outlier_check", bad.address)), "{clusters}");
    assert!(clusters.contains(&format!("{cluster}::{}::health_flags::healthy", good.address)), "{clusters}");
    // Back after the ejection time.
    std::thread::sleep(std::time::Duration::from_millis(2300));
    let after: Vec<u16> = (0..4).map(|_| get()).collect();
    assert!(bad.hits() > 2, "the instance came back: {after:?}");
}

#[test]
fn a_failing_health_check_takes_an_instance_out_until_it_passes() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let (good, sick) = (Upstream::start("good"), Upstream::answering("sick", 500));
    let endpoints = format!(
        "[[endpoint]]\nservice = \"checked\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"checked\"\naddress = \"{}\"\n",
        good.address, sick.address
    );
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    // Probes every 100 ms; one failed probe marks an instance unhealthy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sick.last().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(sick.last().expect("a probe")["path"], "/healthz");
    let url = format!("http://{}/x", sidecar.listener("outbound"));
    let (_, clusters) = meshc_e2e::curl(&[], &format!("http://{}/clusters", sidecar.admin));
    let cluster = "outbound|80||checked.default.svc.cluster.local";
    assert!(clusters.contains(&format!("{cluster}::{}::health_flags::/failed_active_hc", sick.address)), "{clusters}");
    let (_, stats) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    assert_eq!(metric(&stats, "envoy_cluster_membership_healthy", &[("cluster_name", cluster)]), 1.0, "{stats}");
    assert_eq!(metric(&stats, "envoy_cluster_membership_total", &[("cluster_name", cluster)]), 2.0, "{stats}");
    // Round robin would send every other request to the sick instance, which answers 500.
    for _ in 0..10 {
        let seen = curl(&["-H", "host: checked"], &url);
        assert_eq!((seen.status, seen.json()["upstream"].as_str()), (200, Some("good")), "{}", seen.body);
    }
}

#[test]
fn a_tcp_health_check_takes_out_an_instance_that_refuses_connections() {
    let (store, dead) = (Upstream::start("store"), meshc_e2e::free_port());
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "db");
    let endpoints = format!(
        "[[endpoint]]\nservice = \"store\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"store\"\naddress = \"127.0.0.1:{dead}\"\n",
        store.address
    );
    let db = Sidecar::start(&binary, &["outbound-tcp-store-5432"], &endpoints);
    // Probes connect every 100 ms; the port nothing listens on fails its first.
    let cluster = "outbound|5432||store.default.svc.cluster.local";
    wait_for_clusters_line(db.admin, &format!("{cluster}::127.0.0.1:{dead}::health_flags::/failed_active_hc"));
    wait_for_clusters_line(db.admin, &format!("{cluster}::{}::health_flags::healthy", store.address));
    // Round robin would give every other connection to the dead port.
    for _ in 0..6 {
        let (status, _, _) = curl_bytes(&format!("http://{}/tcp", db.listener("outbound-tcp-store-5432")));
        assert_eq!(status, 200);
    }
    assert_eq!(store.hits(), 6);
    // The probes only connect: the instance served no request of theirs.
    let labels = [("reporter", "source"), ("destination_service_name", "store"), ("response_flags", "-")];
    assert_eq!(metric_reaching(db.admin, "istio_tcp_connections_closed_total", &labels, 6.0), 6.0);
}

#[test]
fn a_workload_with_request_ids_and_tracing_off_passes_requests_untouched() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "quiet");
    let web = Upstream::start("a");
    let sidecar = Sidecar::start(&binary, &["outbound"], &format!("[[endpoint]]\nservice = \"web\"\naddress = \"{}\"\n", web.address));
    let url = format!("http://{}/api/items", sidecar.listener("outbound"));
    let seen = curl(&["-H", "host: web"], &url);
    assert_eq!(seen.status, 200, "{}", seen.body);
    let headers = &seen.json()["headers"];
    for name in ["x-request-id", "traceparent", "x-b3-spanid"] {
        assert!(headers.get(name).is_none(), "{name} was added: {headers}");
    }
    // What the caller sent goes on as sent.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen = curl(&["-H", "host: web", "-H", &format!("traceparent: {traceparent}"), "-H", "x-request-id: mine"], &url);
    let headers = &seen.json()["headers"];
    assert_eq!((headers["traceparent"].as_str(), headers["x-request-id"].as_str()), (Some(traceparent), Some("mine")), "{headers}");
}

#[test]
fn requests_are_logged_as_json_and_carry_trace_context_onward() {
    let http = Http::start();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen = curl(&["-H", "host: web", "-H", &format!("traceparent: {traceparent}")], &http.url("/api/items?page=2"));
    assert_eq!(seen.status, 200, "{}", seen.body);
    let headers = &seen.json()["headers"];
    // The same trace, with the sidecar's span as the parent.
    let forwarded = headers["traceparent"].as_str().expect("a traceparent");
    assert!(forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && forwarded.ends_with("-01"), "{forwarded}");
    assert_ne!(forwarded, traceparent);
    let request_id = headers["x-request-id"].as_str().expect("an x-request-id").to_owned();
    let sent = seen.body.len() as u64;
    // B3 callers get a new span whose parent is theirs.
    let seen = curl(&["-H", "host: web", "-H", "x-b3-traceid: 463ac35c9f6413ad", "-H", "x-b3-spanid: a2fb4a1d1a96d312"], &http.url("/b3"));
    let headers = &seen.json()["headers"];
    assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    assert_ne!(headers["x-b3-spanid"], "a2fb4a1d1a96d312");
    // One JSON line per request, written when the response ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while http.sidecar.access_log().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines = http.sidecar.access_log();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(line["path"], "/api/items?page=2");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["route_name"], "api");
    assert_eq!(line["upstream_cluster"], "outbound|80||web.default.svc.cluster.local");
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["traceparent"], traceparent);
    assert_eq!(line["bytes_sent"].as_u64(), Some(sent), "{line}");
    let upstream = line["upstream_host"].as_str().expect("an upstream host");
    assert!(upstream == http.a.address.to_string() || upstream == http.b.address.to_string(), "{upstream}");
}

#[test]
fn a_failed_connection_is_logged_with_the_endpoint_it_tried() {
    // Envoy's `%UPSTREAM_HOST%` names the endpoint a failed try went to, so that a 503 with
    // `UF` says which instance refused.
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let dead = format!("127.0.0.1:{}", free_port());
    let sidecar = Sidecar::start(&binary, &["outbound"], &format!("[[endpoint]]\nservice = \"sticky\"\naddress = \"{dead}\"\n"));
    let seen = curl(&["-H", "host: sticky"], &format!("http://{}/x", sidecar.listener("outbound")));
    assert_eq!(seen.status, 503, "{}", seen.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sidecar.access_log().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines = sidecar.access_log();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    // Istio's implicit retries tried the dead endpoint three times: Envoy flags the answer
    // with the last try's failure and the spent retries.
    assert_eq!((line["response_code"].as_u64(), line["response_flags"].as_str()), (Some(503), Some("UF,URX")), "{line}");
    assert_eq!(line["upstream_host"].as_str(), Some(dead.as_str()), "{line}");
}

#[test]
fn consistent_hashing_keeps_a_key_on_one_instance() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let upstreams: Vec<Upstream> = (0..3).map(|it| Upstream::start(&format!("u{it}"))).collect();
    let endpoints: String =
        upstreams.iter().map(|it| format!("[[endpoint]]\nservice = \"sticky\"\naddress = \"{}\"\n\n", it.address)).collect();
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}/x", sidecar.listener("outbound"));
    let upstream_of = |user: &str| {
        let seen = curl(&["-H", "host: sticky", "-H", &format!("x-user: {user}")], &url);
        seen.json()["upstream"].as_str().expect("an upstream").to_owned()
    };
    let mut chosen = std::collections::BTreeSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let first = upstream_of(user);
        for _ in 0..4 {
            assert_eq!(upstream_of(user), first, "{user} moved");
        }
        chosen.insert(first);
    }
    assert!(chosen.len() >= 2, "eight users all hashed to {chosen:?}");
}

#[test]
fn a_session_cookie_is_made_up_for_a_new_client_and_keeps_it_on_one_instance() {
    // Istio's `consistentHash.httpCookie` with a `ttl`: Envoy sets the cookie on the first
    // answer, and the client's next requests, carrying it, go where the first went.
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let upstreams: Vec<Upstream> = (0..3).map(|it| Upstream::start(&format!("u{it}"))).collect();
    let endpoints: String =
        upstreams.iter().map(|it| format!("[[endpoint]]\nservice = \"sessions\"\naddress = \"{}\"\n\n", it.address)).collect();
    let sidecar = Sidecar::start(&binary, &["outbound"], &endpoints);
    let url = format!("http://{}/cart", sidecar.listener("outbound"));
    let mut chosen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let first = curl(&["-H", "host: sessions"], &url);
        assert_eq!(first.status, 200, "{}", first.body);
        let set = first.header("set-cookie").expect("a session cookie").to_owned();
        let (pair, attributes) = set.split_once("; ").expect("attributes");
        assert_eq!(attributes, "Max-Age=3600; Path=/; HttpOnly", "{set}");
        let upstream = first.json()["upstream"].as_str().expect("an upstream").to_owned();
        for _ in 0..4 {
            let next = curl(&["-H", "host: sessions", "-H", &format!("cookie: {pair}")], &url);
            assert_eq!(next.json()["upstream"].as_str(), Some(upstream.as_str()), "{pair} moved");
            assert_eq!(next.header("set-cookie"), None, "a client with the cookie keeps it");
        }
        chosen.insert(upstream);
    }
    assert!(chosen.len() >= 2, "eight sessions all went to {chosen:?}");
}

/// curl through a TCP listener: the status, and the bytes it sent and received.
fn curl_bytes(url: &str) -> (u16, u64, u64) {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "10",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{size_request} %{size_header} %{size_download}",
        ])
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let numbers: Vec<u64> = text.split_whitespace().map(|it| it.parse().unwrap_or(0)).collect();
    match numbers[..] {
        [status, request, header, download] => (status as u16, request, header + download),
        _ => panic!("curl printed {text:?}"),
    }
}

#[test]
fn tcp_services_are_relayed_and_counted_in_istio_tcp_metrics() {
    let upstream = Upstream::start("store");
    // Outbound: the application connects to the store's TCP listener; the bytes reach the
    // store's instance untouched (here an HTTP server, which curl can talk to).
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "db");
    let endpoints = format!("[[endpoint]]\nservice = \"store\"\naddress = \"{}\"\n", upstream.address);
    let vault = Upstream::start("vault");
    let app_flag = format!("7000={}", vault.address);
    let db = Sidecar::start_with(&binary, &["outbound-tcp-store-5432", "inbound-7000"], &endpoints, &["--app", &app_flag]);
    let (mut sent, mut received) = (0, 0);
    for _ in 0..2 {
        let (status, request, answer) = curl_bytes(&format!("http://{}/tcp", db.listener("outbound-tcp-store-5432")));
        assert_eq!(status, 200);
        (sent, received) = (sent + answer, received + request);
    }
    assert_eq!(upstream.last().expect("a request")["path"], "/tcp");
    let labels = [("reporter", "source"), ("destination_service_name", "store"), ("request_protocol", "tcp"), ("response_flags", "-")];
    assert_eq!(metric_reaching(db.admin, "istio_tcp_connections_closed_total", &labels, 2.0), 2.0);
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", db.admin));
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &labels), 2.0, "{text}");
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &labels), sent as f64, "{text}");
    assert_eq!(metric(&text, "istio_tcp_received_bytes_total", &labels), received as f64, "{text}");
    // Inbound: a TCP port of the workload goes to the application's port.
    let (status, request, answer) = curl_bytes(&format!("http://{}/inbound", db.listener("inbound-7000")));
    assert_eq!(status, 200);
    assert_eq!(vault.last().expect("a request")["path"], "/inbound");
    let labels = [("reporter", "destination"), ("destination_service_name", "vault"), ("response_flags", "-")];
    assert_eq!(metric_reaching(db.admin, "istio_tcp_connections_closed_total", &labels, 1.0), 1.0);
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", db.admin));
    assert_eq!(metric(&text, "istio_tcp_sent_bytes_total", &labels), answer as f64, "{text}");
    assert_eq!(metric(&text, "istio_tcp_received_bytes_total", &labels), request as f64, "{text}");

    // Workload `app` has a DENY policy on paths: on TCP its HTTP-only fields are ignored, so
    // it refuses every connection (Istio's rule), and the ALLOW policy's rule on methods
    // matches none. The connection closes unanswered.
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/http"), "app");
    let app = Sidecar::start_with(&binary, &["inbound-7000"], "", &["--app", &app_flag]);
    let before = vault.hits();
    let (status, _, _) = curl_bytes(&format!("http://{}/inbound", app.listener("inbound-7000")));
    assert_eq!(status, 0, "a denied TCP connection got an answer");
    assert_eq!(vault.hits(), before);
    let labels = [("reporter", "destination"), ("destination_service_name", "vault"), ("response_flags", "RBAC")];
    assert_eq!(metric_reaching(app.admin, "istio_tcp_connections_closed_total", &labels, 1.0), 1.0);
}
