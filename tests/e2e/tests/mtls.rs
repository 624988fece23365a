//! Mutual TLS between two meshc-built sidecars (tests/e2e/meshes/mtls), with certificates
//! carrying SPIFFE identities: the caller's identity reaches the callee's authorization; a
//! strict port closes plaintext connections while a permissive one serves them; curl and
//! openssl s_client, as TLS clients we did not write, present certificates of their own; and
//! replaced certificate files take effect without a restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshc_e2e::{Sidecar, Upstream, metric_reaching, require, root, run_to_exit, sidecar_binary};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// A certificate authority for the test.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        Authority { issuer }
    }

    /// Writes `<name>.pem` and `<name>.key` for identity `spiffe://cluster.local/ns/default/sa/<account>`,
    /// and the authority's own certificate as `<name>-ca.pem`.
    fn issue(&self, dir: &Path, name: &str, account: &str) -> Files {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        let uri = format!("spiffe://cluster.local/ns/default/sa/{account}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("an IA5 URI"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let files =
            Files { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")), ca: dir.join(format!("{name}-ca.pem")) };
        std::fs::write(&files.cert, cert.pem()).expect("write a certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write a key");
        std::fs::write(&files.ca, self.issuer.as_ref().pem()).expect("write the CA");
        files
    }
}

#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn flags(&self) -> Vec<String> {
        let path = |it: &PathBuf| it.display().to_string();
        vec!["--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key), "--tls-ca".into(), path(&self.ca)]
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshc-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// curl's status code and exit code.
fn curl(args: &[&str], url: &str) -> (u16, Option<i32>) {
    require("curl", "apt-get install curl");
    let output = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    (String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0), output.status.code())
}

/// The server and client sidecars of the mtls mesh, and the application behind the server.
struct Pair {
    app: Upstream,
    /// The application behind `probed`, which only health probes reach.
    probed: Upstream,
    server: Sidecar,
    client: Sidecar,
}

impl Pair {
    fn start(server_files: &Files, client_files: &Files) -> Pair {
        let mesh = root().join("tests/e2e/meshes/mtls");
        let (server_binary, client_binary) = (sidecar_binary(&mesh, "server"), sidecar_binary(&mesh, "client"));
        let (app, probed) = (Upstream::start("app"), Upstream::start("probed"));
        let (to_80, to_81, to_82) = (format!("80={}", app.address), format!("81={}", app.address), format!("82={}", probed.address));
        let to_83 = format!("83={}", app.address);
        let mut flags = vec!["--app", &to_80, "--app", &to_81, "--app", &to_82, "--app", &to_83];
        let server_tls = server_files.flags();
        flags.extend(server_tls.iter().map(String::as_str));
        let server = Sidecar::start_with(&server_binary, &["inbound-80", "inbound-81", "inbound-82", "inbound-83"], "", &flags);
        let endpoints = format!(
            "[[endpoint]]\nservice = \"secure\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"open\"\naddress = \"{}\"\n\n\
             [[endpoint]]\nservice = \"probed\"\naddress = \"{}\"\n\n[[endpoint]]\nservice = \"plain\"\naddress = \"{}\"\n",
            server.listener("inbound-80"),
            server.listener("inbound-81"),
            server.listener("inbound-82"),
            server.listener("inbound-83")
        );
        let client_tls = client_files.flags();
        let client_flags: Vec<&str> = client_tls.iter().map(String::as_str).collect();
        let client = Sidecar::start_with(&client_binary, &["outbound"], &endpoints, &client_flags);
        Pair { app, probed, server, client }
    }

    fn through_client(&self, host: &str, path: &str) -> u16 {
        curl(&["-H", &format!("host: {host}")], &format!("http://{}{path}", self.client.listener("outbound"))).0
    }
}

#[test]
fn the_callers_identity_crosses_mutual_tls_into_the_callees_authorization() {
    let dir = temp_dir("mtls-identity");
    let mesh_ca = Authority::new("mesh root");
    let server = mesh_ca.issue(&dir, "server", "server");
    let client = mesh_ca.issue(&dir, "client", "client");
    let intruder = mesh_ca.issue(&dir, "intruder", "intruder");
    let rogue = Authority::new("another root").issue(&dir, "rogue", "client");
    let pair = Pair::start(&server, &client);

    // Through both sidecars: `/private` is allowed only to `client`'s identity, which the
    // server's sidecar can only have learnt from the TLS handshake.
    assert_eq!(pair.through_client("secure", "/private"), 200);
    assert_eq!(pair.through_client("open", "/private"), 200);
    assert_eq!(pair.app.hits(), 2);
    // The caller's sidecar logs in its text format: the headers it names, `-` for one the
    // request lacks, a value cut to its length.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pair.client.access_log().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let lines = pair.client.access_log();
    let fields: Vec<&str> = lines.first().map(|it| it.split(' ').collect()).unwrap_or_default();
    assert_eq!(
        fields.iter().map(|it| it.to_string()).collect::<Vec<_>>(),
        [
            "GET",
            "/private",
            "secure",
            "-",
            "application/json",
            "200",
            fields.get(6).copied().unwrap_or("?"),
            "outbound|80||secure.default.svc.cluster.local",
            "100%"
        ],
        "{lines:?}"
    );
    assert!(fields[6].parse::<u64>().is_ok_and(|it| it > 0), "{lines:?}");

    // A plaintext caller: the strict port closes the connection unanswered (curl: empty
    // reply or reset), the permissive one serves it with no identity.
    let strict = format!("http://{}", pair.server.listener("inbound-80"));
    let permissive = format!("http://{}", pair.server.listener("inbound-81"));
    let (status, exit) = curl(&[], &format!("{strict}/public/x"));
    assert_eq!(status, 0);
    assert!(matches!(exit, Some(52 | 56)), "curl exit {exit:?}");
    assert_eq!(curl(&[], &format!("{permissive}/public/x")).0, 200);
    assert_eq!(curl(&[], &format!("{permissive}/private")).0, 403, "plaintext proves no identity");
    assert_eq!(pair.app.hits(), 3);

    // curl as a TLS client with certificates of its own (-k: the server's certificate names
    // no host; the server is what is under test).
    let tls = |files: &Files, url: &str| {
        let (cert, key) = (files.cert.display().to_string(), files.key.display().to_string());
        curl(&["--insecure", "--cert", &cert, "--key", &key], url)
    };
    let secure = format!("https://{}", pair.server.listener("inbound-80"));
    assert_eq!(tls(&client, &format!("{secure}/private")).0, 200);
    assert_eq!(tls(&intruder, &format!("{secure}/private")).0, 403, "a mesh identity that no rule admits");
    assert_eq!(tls(&intruder, &format!("{secure}/public/x")).0, 200);
    let (status, exit) = tls(&rogue, &format!("{secure}/private"));
    assert_eq!(status, 0, "a certificate from another root fails the handshake (curl exit {exit:?})");
    // No client certificate at all: mutual TLS requires one.
    let (status, _) = curl(&["--insecure"], &format!("{secure}/public/x"));
    assert_eq!(status, 0);
    assert_eq!(pair.app.hits(), 5);

    // The server's sidecar counts each request under the identity mutual TLS proved (Istio's
    // `source_principal`) and `connection_security_policy`: through the client's sidecar and
    // curl with the client's certificate to `secure`, the client's sidecar to `open`, the
    // intruder twice to `secure`, and plaintext twice to the permissive port of `open`.
    let (client_id, intruder_id) = ("spiffe://cluster.local/ns/default/sa/client", "spiffe://cluster.local/ns/default/sa/intruder");
    let count = |service: &'static str, principal: &'static str, policy: &'static str, want: f64| {
        let labels = [
            ("reporter", "destination"),
            ("destination_service_name", service),
            ("source_principal", principal),
            ("connection_security_policy", policy),
        ];
        metric_reaching(pair.server.admin, "istio_requests_total", &labels, want)
    };
    let seen = [
        count("secure", client_id, "mutual_tls", 2.0),
        count("open", client_id, "mutual_tls", 1.0),
        count("secure", intruder_id, "mutual_tls", 2.0),
        count("open", "unknown", "none", 2.0),
    ];
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", pair.server.admin));
    assert_eq!(seen, [2.0, 1.0, 2.0, 2.0], "{text}");
    let server_id = [("reporter", "destination"), ("destination_principal", "spiffe://cluster.local/ns/default/sa/server")];
    assert!(meshc_e2e::metric(&text, "istio_requests_total", &server_id) >= 5.0, "{text}");

    // The client's health probes of `probed` cross the server's strict port over mutual TLS
    // (a plaintext probe would be closed there and mark the endpoint failed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while pair.probed.hits() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pair.probed.hits() >= 3, "the probes did not reach the application");
    assert_eq!(pair.probed.last().expect("a probe")["path"], "/healthz");
    let (_, clusters) = meshc_e2e::curl(&[], &format!("http://{}/clusters", pair.client.admin));
    let line = format!("outbound|82||probed.default.svc.cluster.local::{}::health_flags::healthy", pair.server.listener("inbound-82"));
    assert!(clusters.contains(&line), "{clusters}");
}

#[test]
fn a_port_with_mutual_tls_disabled_serves_plaintext_only() {
    let dir = temp_dir("mtls-disable");
    let mesh_ca = Authority::new("mesh root");
    let (server, client) = (mesh_ca.issue(&dir, "server", "server"), mesh_ca.issue(&dir, "client", "client"));
    let pair = Pair::start(&server, &client);
    // `mtls port 83 disable` on a strict workload: the client's sidecar calls `plain` without
    // TLS (its cluster has none), and is served.
    assert_eq!(pair.through_client("plain", "/public/x"), 200);
    // curl in plaintext is served too, with no identity: `/private` needs the client's.
    let port = pair.server.listener("inbound-83");
    assert_eq!(curl(&[], &format!("http://{port}/public/x")).0, 200);
    assert_eq!(curl(&[], &format!("http://{port}/private")).0, 403);
    // A TLS client, even with the mesh's certificate, gets no handshake on this port.
    let (cert, key) = (client.cert.display().to_string(), client.key.display().to_string());
    let (status, exit) = curl(&["--insecure", "--cert", &cert, "--key", &key], &format!("https://{port}/public/x"));
    assert_eq!(status, 0, "curl exit {exit:?}");
    assert_eq!(pair.app.hits(), 2);
    // Counted as plaintext, as Istio counts a port with mutual TLS disabled.
    let plain = |code| {
        [
            ("reporter", "destination"),
            ("destination_service_name", "plain"),
            ("response_code", code),
            ("connection_security_policy", "none"),
        ]
    };
    let ok = metric_reaching(pair.server.admin, "istio_requests_total", &plain("200"), 2.0);
    let (_, text) = meshc_e2e::curl(&[], &format!("http://{}/stats/prometheus", pair.server.admin));
    let denied = meshc_e2e::metric(&text, "istio_requests_total", &plain("403"));
    assert_eq!((ok, denied), (2.0, 1.0), "{text}");
}

#[test]
fn replaced_certificate_files_take_effect_without_a_restart() {
    require("openssl", "apt-get install openssl");
    let dir = temp_dir("mtls-reload");
    let mesh_ca = Authority::new("mesh root");
    let server = mesh_ca.issue(&dir, "server", "server");
    let client = mesh_ca.issue(&dir, "client", "client");
    let pair = Pair::start(&server, &client);
    let address = pair.server.listener("inbound-80").to_string();
    let served_name = || {
        let output: Output = Command::new("openssl")
            .args(["s_client", "-connect", &address, "-cert"])
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().find_map(|it| it.trim().strip_prefix("subject=").map(str::to_owned)).unwrap_or_default()
    };
    assert!(served_name().contains("CN = server"), "{}", served_name());

    // A rotated certificate (same identity, new name and key) replaces the files in place.
    let rotated = mesh_ca.issue(&dir, "server-rotated", "server");
    std::fs::copy(&rotated.key, &server.key).expect("replace the key");
    std::fs::copy(&rotated.cert, &server.cert).expect("replace the certificate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_name().contains("server-rotated") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served_name().contains("CN = server-rotated"), "{}", served_name());
    // Calls through both sidecars still work on the new certificate.
    assert_eq!(pair.through_client("secure", "/private"), 200);

    // New roots: the server now trusts only another authority, so the client's certificate
    // from the old one is refused on new connections.
    let other = Authority::new("new root").issue(&dir, "other", "client");
    std::fs::copy(&other.ca, &server.ca).expect("replace the roots");
    let (cert, key) = (client.cert.display().to_string(), client.key.display().to_string());
    let url = format!("https://{address}/private");
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&["--insecure", "--cert", &cert, "--key", &key], &url).0 != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(curl(&["--insecure", "--cert", &cert, "--key", &key], &url).0, 0);
    let (cert, key) = (other.cert.display().to_string(), other.key.display().to_string());
    assert_eq!(curl(&["--insecure", "--cert", &cert, "--key", &key], &url).0, 200);

    // A broken file is reported and the last good material stays.
    std::fs::write(&server.cert, "not a certificate").expect("break the certificate");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(curl(&["--insecure", "--cert", &cert, "--key", &key], &url).0, 200);
}

#[test]
fn a_strict_port_without_certificates_is_a_startup_error() {
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/mtls"), "server");
    let output = run_to_exit(Command::new(&binary).args(["--admin", "127.0.0.1:0"]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("accepts mutual TLS only") && stderr.contains("--tls-cert"), "{stderr}");
    // The caller's sidecar needs them too, for its `istio_mutual` clusters.
    let binary = sidecar_binary(&root().join("tests/e2e/meshes/mtls"), "client");
    let output = run_to_exit(Command::new(&binary).args(["--admin", "127.0.0.1:0"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("uses TLS"), "{}", String::from_utf8_lossy(&output.stderr));
}
