//! SOFA Bolt through a meshc-built sidecar, between peers we did not write: sofa-rpc-node
//! clients (on sofa-bolt-node) calling sofa-rpc-node servers through the outbound-bolt
//! listener of examples/sofa-shop's `shop-web`, over Bolt v1 and over Bolt v2 with the CRC32
//! trailer. The example's routes send 1.0 callers' `get*` methods to the 2.0 instances (800 ms
//! timeout, two retries of 250 ms each), other 1.0 calls to 1.0, and 2.0 calls to 2.0.

use std::time::Duration;

use meshc_e2e::{NodeServer, Sidecar, curl, free_port, metric, node_json, root, sidecar_binary};

const ORDER_1: &str = "com.alipay.shop.OrderFacade:1.0";
const ORDER_2: &str = "com.alipay.shop.OrderFacade:2.0";
const INVENTORY: &str = "com.alipay.shop.InventoryFacade:1.0";

/// The 1.0 instance serves the 1.0 services; the canary instance serves both versions of
/// the order service, as a 2.0 rollout that keeps old callers working would.
struct Shop {
    v1: NodeServer,
    canary: NodeServer,
    sidecar: Sidecar,
}

fn shop() -> Shop {
    let binary = sidecar_binary(&root().join("examples/sofa-shop"), "shop-web");
    let (v1_port, canary_port) = (free_port().to_string(), free_port().to_string());
    let v1 = NodeServer::start("sofa_peer.js", &["order-v1", &v1_port, ORDER_1, INVENTORY]);
    let canary = NodeServer::start("sofa_peer.js", &["order-canary", &canary_port, ORDER_1, ORDER_2]);
    let endpoints = format!(
        "[[endpoint]]\nservice = \"{ORDER_1}\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[endpoint]]\nservice = \"{ORDER_2}\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[endpoint]]\nservice = \"{INVENTORY}\"\naddress = \"127.0.0.1:{}\"\n",
        v1.port, canary.port, v1.port
    );
    // One worker, as a sidecar pinned to one CPU runs: the current-thread scheduler.
    let sidecar = Sidecar::start_with(&binary, &["outbound-bolt"], &endpoints, &["--concurrency", "1"]);
    Shop { v1, canary, sidecar }
}

fn calls(shop: &Shop, flavour: &str, calls: serde_json::Value) -> Vec<serde_json::Value> {
    let address = shop.sidecar.listener("outbound-bolt").to_string();
    let out = node_json("sofa_peer.js", &["client", &address, flavour, &calls.to_string()]);
    out.as_array().cloned().unwrap_or_else(|| panic!("{out}"))
}

fn raw(shop: &Shop, flavour: &str, service: &str, method: &str, args: &str, timeout_ms: u32) -> serde_json::Value {
    let address = shop.sidecar.listener("outbound-bolt").to_string();
    node_json("sofa_peer.js", &["raw", &address, flavour, service, method, args, &timeout_ms.to_string()])
}

#[test]
fn bolt_calls_are_routed_by_service_version_and_method_over_v1_and_v2_with_crc() {
    let shop = shop();
    for flavour in ["v1", "v2crc"] {
        let results = calls(
            &shop,
            flavour,
            serde_json::json!([
                {"service": ORDER_1, "method": "getOrder", "args": ["o-1"]},
                {"service": ORDER_1, "method": "createOrder", "args": ["o-2"]},
                {"service": ORDER_2, "method": "createOrder", "args": ["o-3"]},
                {"service": INVENTORY, "method": "checkStock", "args": ["sku"]},
            ]),
        );
        let answers: Vec<&str> = results.iter().map(|it| it["result"].as_str().unwrap_or_else(|| panic!("{it}"))).collect();
        assert_eq!(
            answers,
            [
                // reads-on-v2: a 1.0 caller's get* goes to the canary.
                format!("order-canary {ORDER_1} getOrder(o-1)"),
                format!("order-v1 {ORDER_1} createOrder(o-2)"),
                format!("order-canary {ORDER_2} createOrder(o-3)"),
                format!("order-v1 {INVENTORY} checkStock(sku)"),
            ],
            "{flavour}"
        );
        // A service shop-web does not call has no route: Bolt's "no processor", framed as the
        // request was (with its CRC32 trailer over v2).
        let unrouted = raw(&shop, flavour, "com.alipay.shop.PaymentFacade:1.0", "pay", "[\"x\"]", 3000);
        assert_eq!((unrouted["status"].as_u64(), unrouted["id"].as_u64()), (Some(6), Some(77)), "{unrouted}");
        assert_eq!(unrouted["crc"].as_bool(), (flavour == "v2crc").then_some(true), "{unrouted}");
        // Heartbeats are answered by the sidecar, in sofa-bolt-node's own terms.
        let address = shop.sidecar.listener("outbound-bolt").to_string();
        let ack = node_json("sofa_peer.js", &["heartbeat", &address, flavour]);
        assert_eq!((ack["type"].as_str(), ack["id"].as_u64()), (Some("heartbeat_ack"), Some(4242)), "{ack}");
    }
    // Each request counted once per flavour under its interface, method and Bolt status, and
    // logged with its route and the endpoint that answered.
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", shop.sidecar.admin));
    let count = |service: &str, method: &str, status: &str, flags: &str| {
        let labels = [
            ("reporter", "source"),
            ("request_protocol", "bolt"),
            ("rpc_service", service),
            ("rpc_method", method),
            ("rpc_status", status),
            ("response_flags", flags),
        ];
        metric(&text, "meshc_rpc_requests_total", &labels)
    };
    assert_eq!(count("com.alipay.shop.OrderFacade", "getOrder", "0", "-"), 2.0, "{text}");
    assert_eq!(count("com.alipay.shop.OrderFacade", "createOrder", "0", "-"), 4.0, "{text}");
    assert_eq!(count("com.alipay.shop.PaymentFacade", "pay", "6", "NR"), 2.0, "{text}");
    let log = shop.sidecar.access_log();
    let line = log
        .iter()
        .filter_map(|it| serde_json::from_str::<serde_json::Value>(it).ok())
        .find(|it| it["method"] == "getOrder")
        .unwrap_or_else(|| panic!("no log line for getOrder: {log:?}"));
    assert_eq!(
        (line["protocol"].as_str(), line["route_name"].as_str(), line["response_code"].as_u64()),
        (Some("bolt"), Some("reads-on-v2"), Some(0)),
        "{line}"
    );
    assert_eq!(line["upstream_host"].as_str(), Some(format!("127.0.0.1:{}", shop.canary.port).as_str()), "{line}");
    assert_eq!(line["authority"].as_str(), Some(ORDER_1), "{line}");
    drop(shop.canary);
    drop(shop.v1);
}

#[test]
fn a_slow_bolt_call_times_out_and_a_killed_server_fails_only_the_calls_it_had() {
    let mut shop = shop();
    // reads-on-v2: three tries of 250 ms within the route's 800 ms, then Bolt's TIMEOUT,
    // long before the caller's 3 s or the server's 2 s.
    let slow = raw(&shop, "v2crc", ORDER_1, "getSlowly", "[2000]", 3000);
    assert_eq!(slow["status"].as_u64(), Some(7), "{slow}");
    assert!(slow["ms"].as_u64().is_some_and(|ms| (700..1500).contains(&ms)), "{slow}");

    // A call in flight on the 1.0 instance when it dies fails at once with CONNECTION_CLOSED.
    let address = shop.sidecar.listener("outbound-bolt").to_string();
    let in_flight =
        std::thread::spawn(move || meshc_e2e::node_json("sofa_peer.js", &["raw", &address, "v1", ORDER_1, "sleep", "[10000]", "20000"]));
    // Long enough for node to start and the call to reach the server, even on a busy machine.
    std::thread::sleep(Duration::from_millis(2500));
    shop.v1.kill();
    let failed = in_flight.join().expect("the call's thread");
    assert_eq!(failed["status"].as_u64(), Some(0x10), "{failed}");
    // Answered at the kill, long before the server's 10 s or the caller's 20 s.
    assert!(failed["ms"].as_u64().is_some_and(|ms| ms < 6000), "{failed}");

    // The canary's calls go on over their own connection.
    let after = calls(&shop, "v1", serde_json::json!([{"service": ORDER_2, "method": "createOrder", "args": ["o-4"]}]));
    assert_eq!(after[0]["result"].as_str(), Some(format!("order-canary {ORDER_2} createOrder(o-4)").as_str()), "{after:?}");

    // The canary's answers to the three timed-out tries came after their callers gave up:
    // dropped and counted.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", shop.sidecar.admin));
    assert_eq!(metric(&text, "meshc_rpc_unknown_responses_total", &[]), 3.0, "{text}");
}

/// A Bolt v1 heartbeat request with id `id`.
fn heartbeat(id: u32) -> Vec<u8> {
    let mut frame = vec![0x01, 0x01, 0x00, 0x00, 0x01];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.push(0x01);
    frame.extend_from_slice(&(-1i32).to_be_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame
}

/// Reads until the peer closes the connection (true) or 3 s pass (false).
fn closed_by_peer(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(3))).expect("a read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn malformed_bolt_bytes_close_only_their_own_connection() {
    use std::io::{Read, Write};
    let shop = shop();
    let address = shop.sidecar.listener("outbound-bolt");
    let mut good = std::net::TcpStream::connect(address).expect("connect");
    let mut ack = [0u8; 20];
    good.write_all(&heartbeat(1)).expect("write");
    good.read_exact(&mut ack).expect("the first ack");
    assert_eq!((ack[0], ack[1], &ack[5..9]), (0x01, 0x00, &1u32.to_be_bytes()[..]));

    let mut absurd = heartbeat(2);
    absurd[18..22].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut long_map = heartbeat(3);
    long_map[16..18].copy_from_slice(&8u16.to_be_bytes());
    long_map.extend_from_slice(&[0, 0, 0, 200, b'k', b'e', b'y', b'!']);
    let cases: [(&str, Vec<u8>); 4] = [
        ("a wrong first byte", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a frame of 4 GiB", absurd),
        ("a header map longer than itself", long_map),
        ("a bad command type", vec![0x01, 0x07, 0x00, 0x01, 0x01, 0, 0, 0, 4]),
    ];
    for (case, bytes) in cases {
        let mut bad = std::net::TcpStream::connect(address).expect("connect");
        bad.write_all(&bytes).expect("write");
        assert!(closed_by_peer(&mut bad), "{case}: the sidecar kept the connection open");
    }
    // The log says where and why, once for the four (one line in ten seconds at most).
    let refusals: Vec<String> =
        shop.sidecar.log().into_iter().filter(|it| it.contains("bolt: closed a connection from the application: ")).collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    // A frame cut short by the caller's close: the sidecar closes too, without an answer.
    let mut cut = std::net::TcpStream::connect(address).expect("connect");
    cut.write_all(&heartbeat(4)[..10]).expect("write");
    cut.shutdown(std::net::Shutdown::Write).expect("half-close");
    assert!(closed_by_peer(&mut cut), "a truncated frame");

    // The first connection never noticed.
    good.write_all(&heartbeat(5)).expect("write");
    good.read_exact(&mut ack).expect("the second ack");
    assert_eq!(&ack[5..9], &5u32.to_be_bytes()[..]);
}

#[test]
fn bolt_calls_reach_the_application_through_its_own_sidecar_under_its_policies() {
    // inventory's sidecar in front of its application; shop-web's calls go to that sidecar.
    let app = NodeServer::start("sofa_peer.js", &["inventory-app", &free_port().to_string(), INVENTORY]);
    let inventory = Sidecar::start_with(
        &sidecar_binary(&root().join("examples/sofa-shop"), "inventory"),
        &["inbound-12200"],
        "",
        &["--app", &format!("12200=127.0.0.1:{}", app.port)],
    );
    let endpoints = format!("[[endpoint]]\nservice = \"{INVENTORY}\"\naddress = \"{}\"\n", inventory.listener("inbound-12200"));
    let web = Sidecar::start(&sidecar_binary(&root().join("examples/sofa-shop"), "shop-web"), &["outbound-bolt"], &endpoints);
    let address = web.listener("outbound-bolt").to_string();
    let calls = serde_json::json!([{"service": INVENTORY, "method": "checkStock", "args": ["sku"]}]);
    for flavour in ["v1", "v2crc"] {
        let out = node_json("sofa_peer.js", &["client", &address, flavour, &calls.to_string()]);
        assert_eq!(out[0]["result"].as_str(), Some(format!("inventory-app {INVENTORY} checkStock(sku)").as_str()), "{out}");
        // inventory's DENY policy: reserve* only from order, and shop-web proves no identity.
        let denied = node_json("sofa_peer.js", &["raw", &address, flavour, INVENTORY, "reserve", "[\"sku\"]", "3000"]);
        assert_eq!(denied["status"].as_u64(), Some(2), "{denied}");
    }
    // Each side counts what it saw: shop-web as the source, inventory as the destination.
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", inventory.admin));
    let seen = |method: &str, status: &str| {
        let labels = [
            ("reporter", "destination"),
            ("rpc_service", "com.alipay.shop.InventoryFacade"),
            ("rpc_method", method),
            ("rpc_status", status),
        ];
        metric(&text, "meshc_rpc_requests_total", &labels)
    };
    assert_eq!((seen("checkStock", "0"), seen("reserve", "2")), (2.0, 2.0), "{text}");
}

#[test]
fn the_frame_size_limit_is_configurable_and_enforced() {
    let v1 = NodeServer::start("sofa_peer.js", &["order-v1", &free_port().to_string(), ORDER_1]);
    let endpoints = format!("[[endpoint]]\nservice = \"{ORDER_1}\"\naddress = \"127.0.0.1:{}\"\n", v1.port);
    let binary = sidecar_binary(&root().join("examples/sofa-shop"), "shop-web");
    let small = Sidecar::start_with(&binary, &["outbound-bolt"], &endpoints, &["--max-rpc-frame-bytes", "256"]);
    let address = small.listener("outbound-bolt").to_string();
    // A heartbeat (22 bytes) fits; sofa-rpc-node's request (over 300 bytes) does not, and its
    // connection is closed rather than answered.
    let ack = node_json("sofa_peer.js", &["heartbeat", &address, "v1"]);
    assert_eq!(ack["type"].as_str(), Some("heartbeat_ack"), "{ack}");
    let refused = node_json("sofa_peer.js", &["raw", &address, "v1", ORDER_1, "createOrder", "[\"o-1\"]", "3000"]);
    assert_eq!(refused["closed"].as_bool(), Some(true), "{refused}");
    // The same request fits under the default limit.
    let roomy = Sidecar::start(&binary, &["outbound-bolt"], &endpoints);
    let address = roomy.listener("outbound-bolt").to_string();
    let answered = node_json("sofa_peer.js", &["raw", &address, "v1", ORDER_1, "createOrder", "[\"o-1\"]", "3000"]);
    assert_eq!(answered["status"].as_u64(), Some(0), "{answered}");
}

#[test]
fn an_auto_port_tells_bolt_from_http_by_the_first_byte() {
    // tests/e2e/meshes/auto: workload `edge` serves port 8080 as `auto` and uses Bolt. Its
    // application here speaks Bolt.
    const HELLO: &str = "com.alipay.test.HelloService:1.0";
    let app = NodeServer::start("sofa_peer.js", &["edge-app", &free_port().to_string(), HELLO]);
    let edge = Sidecar::start_with(
        &sidecar_binary(&root().join("tests/e2e/meshes/auto"), "edge"),
        &["inbound-8080"],
        "",
        &["--app", &format!("8080=127.0.0.1:{}", app.port)],
    );
    let address = edge.listener("inbound-8080").to_string();
    for flavour in ["v1", "v2crc"] {
        let calls = serde_json::json!([{"service": HELLO, "method": "getOrder", "args": ["x"]}]);
        let out = node_json("sofa_peer.js", &["client", &address, flavour, &calls.to_string()]);
        assert_eq!(out[0]["result"].as_str(), Some(format!("edge-app {HELLO} getOrder(x)").as_str()), "{out}");
    }
    // HTTP on the same port is served as HTTP: an HTTP answer (the Bolt application cannot
    // answer it), not a closed connection.
    let (status, body) = curl(&[], &format!("http://{address}/"));
    assert!((500..600).contains(&status), "{status} {body}");
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", edge.admin));
    let labels = [("reporter", "destination"), ("request_protocol", "bolt"), ("rpc_method", "getOrder"), ("rpc_status", "0")];
    assert_eq!(metric(&text, "meshc_rpc_requests_total", &labels), 2.0, "{text}");
}

#[test]
fn callers_that_never_read_hold_no_circuit_breaker_slot() {
    // tests/e2e/meshes/bolt-limits: at most 32 calls in flight to the order service. Two
    // callers each send 1,500 calls whose answers are 40 KB and never read one, so the
    // breaker is full and the answers fill the sockets and then the sidecar's queues. The
    // calls already sent upstream must still finish and give their slots back, although
    // their answers have nowhere to go, so that a third caller gets through. (Before 620791c
    // a connection stopped polling its calls while an answer waited for room, and the calls
    // in flight kept their slots for good: this test failed there.)
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/bolt-limits"), "caller");
    let port = free_port().to_string();
    let server = NodeServer::start("sofa_peer.js", &["order-v1", &port, ORDER_1]);
    let endpoints = format!("[[endpoint]]\nservice = \"{ORDER_1}\"\naddress = \"127.0.0.1:{}\"\n", server.port);
    let sidecar = Sidecar::start_with(&binary, &["outbound-bolt"], &endpoints, &["--concurrency", "1"]);
    let address = sidecar.listener("outbound-bolt").to_string();
    let big = serde_json::json!(["x".repeat(40_000)]).to_string();
    let _floods: Vec<Flood> = (0..2).map(|_| Flood::start(&address, "createOrder", &big, 1_500)).collect();
    std::thread::sleep(Duration::from_secs(3));
    // The floods did fill the breaker: some of their calls were refused (Bolt status 4).
    let (_, text) = curl(&[], &format!("http://{}/stats/prometheus", sidecar.admin));
    let labels = [("rpc_method", "createOrder"), ("rpc_status", "4"), ("response_flags", "UO")];
    assert!(metric(&text, "meshc_rpc_requests_total", &labels) > 0.0, "{text}");
    // While the floods' calls already read are still being served, the breaker is rightly
    // full; once they are done, whatever their callers read, a call gets through.
    let call = serde_json::json!([{"service": ORDER_1, "method": "createOrder", "args": ["o-9"], "timeout": 2000}]);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = node_json("sofa_peer.js", &["client", &address, "v1", &call.to_string()]);
        if out[0]["result"].as_str() == Some(format!("order-v1 {ORDER_1} createOrder(o-9)").as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < until, "no slot was given back in 30 s: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `node sofa_peer.js flood ...`: a caller that sends requests and never reads an answer.
struct Flood(std::process::Child);

impl Flood {
    fn start(address: &str, method: &str, args: &str, count: usize) -> Flood {
        use std::io::BufRead;
        let dir = meshc_e2e::node_peers();
        let mut child = std::process::Command::new("node")
            .arg(dir.join("sofa_peer.js"))
            .args(["flood", address, "v1", ORDER_1, method, args, &count.to_string()])
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a flooding caller");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read its first line");
        assert_eq!(line.trim(), "sent", "the flooding caller said {line:?}");
        Flood(child)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn callers_that_never_read_do_not_stop_others_being_served() {
    // Two callers each send 30,000 requests and never read an answer, so their answers fill
    // the sockets' buffers and then the sidecar's: it stops reading a connection with 1,024
    // answers unwritten, and its one worker (`--concurrency 1`) goes on serving everyone else.
    let shop = shop();
    let address = shop.sidecar.listener("outbound-bolt").to_string();
    let _floods: Vec<Flood> = (0..2).map(|_| Flood::start(&address, "createOrder", "[\"o-flood\"]", 30_000)).collect();
    std::thread::sleep(Duration::from_secs(3));
    let after = calls(&shop, "v1", serde_json::json!([{"service": ORDER_1, "method": "createOrder", "args": ["o-9"], "timeout": 2000}]));
    assert_eq!(after[0]["result"].as_str(), Some(format!("order-v1 {ORDER_1} createOrder(o-9)").as_str()), "{after:?}");
}
