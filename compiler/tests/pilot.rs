//! `meshc pilot` as users run it, driven by an ADS client on envoy-types' generated stubs:
//! subscriptions, ACK and NACK, pushes when the mesh directory changes, a change that does
//! not compile, delta streams. (Envoy, grpcio and grpc-js talk to it in tests/e2e.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port()
}

/// A copy of examples/bookinfo that a test may edit.
fn bookinfo_copy(name: &str) -> PathBuf {
    let dir = root().join("target").join("pilot-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&root().join("examples/bookinfo"), &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("a name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

/// A running `meshc pilot`, killed when dropped.
struct PilotProcess {
    child: Child,
    ads: u16,
    admin: u16,
}

impl PilotProcess {
    fn start(dir: &Path) -> PilotProcess {
        let (ads, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_meshc"))
            .arg("pilot")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{ads}"), "--admin", &format!("127.0.0.1:{admin}"), "--debounce-ms", "50"])
            .args(["--registration", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meshc pilot");
        let pilot = PilotProcess { child, ads, admin };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", ads)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
                return pilot;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("meshc pilot did not start listening");
    }

    async fn admin(&self, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        let text = tokio::task::spawn_blocking(move || {
            let output = Command::new("curl").args(["-s", "--max-time", "5", &url]).output().expect("run curl");
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .await
        .expect("curl");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} answered {text:?}"))
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{}", self.ads)).await.expect("connect to ADS")
    }
}

impl Drop for PilotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy_node(id: &str) -> Node {
    Node { id: id.to_owned(), user_agent_name: "envoy".to_owned(), ..Default::default() }
}

/// A state-of-the-world stream.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(pilot: &PilotProcess, node: Node, type_url: &str, names: &[&str]) -> Sotw {
        let (tx, requests) = mpsc::channel(16);
        let first = DiscoveryRequest {
            node: Some(node),
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|it| (*it).to_owned()).collect(),
            ..Default::default()
        };
        tx.send(first).await.expect("send");
        let rx = pilot.client().await.stream_aggregated_resources(ReceiverStream::new(requests)).await.expect("a stream").into_inner();
        Sotw { tx, rx }
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("a response")
    }

    /// Whether nothing arrives for a while.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(600), self.rx.message()).await.is_err()
    }

    async fn send(&self, type_url: &str, names: &[&str], answered: &DiscoveryResponse, error: Option<&str>) {
        let request = DiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names: names.iter().map(|it| (*it).to_owned()).collect(),
            version_info: if error.is_some() { String::new() } else { answered.version_info.clone() },
            response_nonce: answered.nonce.clone(),
            error_detail: error.map(|it| Status { code: 3, message: it.to_owned(), details: Vec::new() }),
            ..Default::default()
        };
        self.tx.send(request).await.expect("send");
    }
}

fn names_of(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            CLUSTER => envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&any.value[..]).expect("a cluster").name,
            ENDPOINTS => {
                envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&any.value[..]).expect("endpoints").cluster_name
            }
            LISTENER => envoy_types::pb::envoy::config::listener::v3::Listener::decode(&any.value[..]).expect("a listener").name,
            ROUTES => RouteConfiguration::decode(&any.value[..]).expect("routes").name,
            other => panic!("unexpected {other}"),
        })
        .collect()
}

/// The weights of the reviews route `everyone-else`, by cluster.
fn reviews_weights(response: &DiscoveryResponse) -> Vec<(String, u32)> {
    let config = RouteConfiguration::decode(&response.resources[0].value[..]).expect("routes");
    let host = config.virtual_hosts.iter().find(|it| it.name.starts_with("reviews.")).expect("reviews");
    let route = host.routes.iter().find(|it| it.name == "everyone-else").expect("everyone-else");
    let Some(Action::Route(action)) = &route.action else { panic!("a forward") };
    match &action.cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            weighted.clusters.iter().map(|it| (it.name.clone(), it.weight.map_or(0, |it| it.value))).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn subscriptions_acks_and_nacks() {
    let dir = bookinfo_copy("acks");
    let pilot = PilotProcess::start(&dir);
    let mut stream = Sotw::open(&pilot, envoy_node("productpage"), CLUSTER, &[]).await;
    let clusters = stream.next().await;
    let names = names_of(&clusters);
    assert!(names.contains(&"outbound|9080||details.default.svc.cluster.local".to_owned()), "{names:?}");
    assert_eq!(names.len(), 4, "details and the three reviews subsets: {names:?}");
    stream.send(CLUSTER, &[], &clusters, None).await;
    assert!(stream.quiet().await, "an ACK gets no answer");

    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    stream.send(ENDPOINTS, &wanted, &DiscoveryResponse::default(), None).await;
    let endpoints = stream.next().await;
    assert_eq!(names_of(&endpoints), names);
    // A NACK is recorded, and the rejected version is not sent again.
    stream.send(ENDPOINTS, &wanted, &endpoints, Some("cannot use these endpoints")).await;
    assert!(stream.quiet().await, "a NACKed version is not resent");
    let clients = pilot.admin("/clients").await;
    let client = &clients[0];
    assert_eq!(client["workload"], "productpage");
    assert_eq!(client["types"][CLUSTER]["state"], "SYNCED");
    assert_eq!(client["types"][ENDPOINTS]["state"], "NACKED");
    assert_eq!(client["types"][ENDPOINTS]["nacks"], 1);
    assert_eq!(client["types"][ENDPOINTS]["last_nack"], "cannot use these endpoints");

    // A stale nonce is ignored.
    stream.send(CLUSTER, &[], &DiscoveryResponse { nonce: "999".to_owned(), ..Default::default() }, None).await;
    assert!(stream.quiet().await);

    // Listeners, then the route configuration they name.
    stream.send(LISTENER, &[], &DiscoveryResponse::default(), None).await;
    let listeners = stream.next().await;
    assert_eq!(names_of(&listeners), ["outbound"]);
    stream.send(ROUTES, &["outbound"], &DiscoveryResponse::default(), None).await;
    let routes = stream.next().await;
    assert_eq!(
        reviews_weights(&routes),
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local".to_owned(), 90),
            ("outbound|9080|v3|reviews.default.svc.cluster.local".to_owned(), 10)
        ]
    );
}

#[tokio::test]
async fn a_changed_spec_is_pushed_and_a_broken_one_is_not() {
    let dir = bookinfo_copy("changes");
    let pilot = PilotProcess::start(&dir);
    let mut stream = Sotw::open(&pilot, envoy_node("productpage"), ROUTES, &["outbound"]).await;
    let routes = stream.next().await;
    stream.send(ROUTES, &["outbound"], &routes, None).await;
    assert_eq!(reviews_weights(&routes)[0].1, 90);

    let spec = dir.join("bookinfo.mesh");
    let text = std::fs::read_to_string(&spec).expect("read");
    replace_file(&spec, &text.replace("weight 90", "weight 60").replace("weight 10", "weight 40"));
    let pushed = stream.next().await;
    assert_eq!(reviews_weights(&pushed).iter().map(|it| it.1).collect::<Vec<_>>(), [60, 40]);
    assert_ne!(pushed.version_info, routes.version_info);
    stream.send(ROUTES, &["outbound"], &pushed, None).await;
    assert_eq!(pilot.admin("/status").await["compile"]["generation"], 2);

    // A route to a subset that does not exist: the last good mesh stays, the error is on
    // /status.
    replace_file(&spec, &text.replace("subset v3 weight 10", "subset v9 weight 10"));
    assert!(stream.quiet().await, "a mesh that does not compile is not pushed");
    let status = pilot.admin("/status").await;
    assert_eq!(status["compile"]["ok"], false);
    assert_eq!(status["compile"]["generation"], 2);
    assert!(status["compile"]["error"].as_str().is_some_and(|it| it.contains("bookinfo.mesh")), "{status}");

    // Fixed: served again.
    replace_file(&spec, &text);
    let pushed = stream.next().await;
    assert_eq!(reviews_weights(&pushed).iter().map(|it| it.1).collect::<Vec<_>>(), [90, 10]);
    assert_eq!(pilot.admin("/status").await["compile"]["ok"], true);
}

#[tokio::test]
async fn nodes_are_workloads_by_name_or_istio_id() {
    let dir = bookinfo_copy("nodes");
    let pilot = PilotProcess::start(&dir);
    let mut istio =
        Sotw::open(&pilot, envoy_node("sidecar~10.0.0.5~reviews-v2-5d8f7c-abcde.default~default.svc.cluster.local"), CLUSTER, &[]).await;
    let names = names_of(&istio.next().await);
    assert_eq!(names, ["outbound|9080||ratings.default.svc.cluster.local"]);
    let (tx, requests) = mpsc::channel(1);
    tx.send(DiscoveryRequest { node: Some(envoy_node("nobody")), type_url: CLUSTER.to_owned(), ..Default::default() }).await.expect("send");
    let mut stream = pilot.client().await.stream_aggregated_resources(ReceiverStream::new(requests)).await.expect("a stream").into_inner();
    let status = stream.message().await.expect_err("an unknown node is refused");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("productpage"), "{}", status.message());
}

#[tokio::test]
async fn delta_streams_carry_only_what_changed() {
    let dir = bookinfo_copy("delta");
    let pilot = PilotProcess::start(&dir);
    let (tx, requests) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest { node: Some(envoy_node("productpage")), type_url: CLUSTER.to_owned(), ..Default::default() })
        .await
        .expect("send");
    let mut stream = pilot.client().await.delta_aggregated_resources(ReceiverStream::new(requests)).await.expect("a stream").into_inner();
    let first = next_delta(&mut stream).await;
    assert_eq!(first.resources.len(), 4);
    tx.send(DeltaDiscoveryRequest { type_url: CLUSTER.to_owned(), response_nonce: first.nonce.clone(), ..Default::default() })
        .await
        .expect("ack");

    // A timeout on details' service changes one cluster only.
    let spec = dir.join("bookinfo.mesh");
    let text = std::fs::read_to_string(&spec).expect("read");
    replace_file(&spec, &text.replace("service reviews {", "service details {\n  connect_timeout 2s\n}\n\nservice reviews {"));
    let pushed = next_delta(&mut stream).await;
    let names: Vec<&str> = pushed.resources.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(names, ["outbound|9080||details.default.svc.cluster.local"]);
    assert!(pushed.removed_resources.is_empty());
}

/// Replaces the file at `path` with `text` as a whole (written under a hidden name, which the
/// watch ignores, and renamed), so that Pilot never compiles the empty file that an in-place
/// write leaves between its truncation and its write: on a busy machine that gap can outlast
/// the debounce, and the mesh compiled from it has no workloads.
fn replace_file(path: &Path, text: &str) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let scratch = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&scratch, text).expect("write the scratch file");
    std::fs::rename(&scratch, path).expect("replace the file");
}

async fn next_delta(stream: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("in time").expect("no error").expect("a response")
}

/// `meshc diff DIR --pilot ADDR`, with its exit code and output.
fn diff_against(dir: &Path, pilot: &PilotProcess, format: &str) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_meshc"))
        .arg("diff")
        .arg(dir)
        .args(["--pilot", &format!("127.0.0.1:{}", pilot.ads), "--format", format])
        .output()
        .expect("run meshc diff");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
}

#[test]
fn diff_shows_what_a_directory_would_change_in_what_pilot_serves() {
    let served = bookinfo_copy("diff-served");
    let pilot = PilotProcess::start(&served);
    // The same mesh: nothing to show.
    let (code, text) = diff_against(&served, &pilot, "human");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no routing difference"), "{text}");

    // A copy with new weights and a new route: the route configuration differs, field by field.
    let edited = bookinfo_copy("diff-edited");
    let spec = edited.join("bookinfo.mesh");
    let text = std::fs::read_to_string(&spec).expect("read");
    std::fs::write(&spec, text.replace("weight 90", "weight 80").replace("weight 10\n", "weight 20\n")).expect("write");
    let (code, text) = diff_against(&edited, &pilot, "json");
    assert_eq!(code, 1, "{text}");
    let changes: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON");
    let weights: Vec<(&str, &str)> = changes
        .iter()
        .filter(|it| it["subject"] == "xds routes" && it["field"].as_str().is_some_and(|it| it.ends_with(".weight")))
        .map(|it| (it["before"].as_str().unwrap_or_default(), it["after"].as_str().unwrap_or_default()))
        .collect();
    // Every workload that calls reviews sees 90 -> 80 and 10 -> 20.
    assert!(weights.contains(&("90", "80")) && weights.contains(&("10", "20")), "{changes:#?}");
    assert!(
        changes.iter().all(|it| it["kind"] == "changed" && it["path"].as_str().is_some_and(|it| it.ends_with("/ outbound"))),
        "{changes:#?}"
    );

    // A workload Pilot does not serve, and an address where no Pilot listens.
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec).expect("read") + "\nworkload extra {\n  service_account \"extra\"\n  calls details\n}\n",
    )
    .expect("write");
    let (code, text) = diff_against(&edited, &pilot, "human");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("+ workload extra") && text.contains("Pilot serves no such workload"), "{text}");
    let output = Command::new(env!("CARGO_BIN_EXE_meshc"))
        .arg("diff")
        .arg(&served)
        .args(["--pilot", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("run meshc diff");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect to Pilot"), "{}", String::from_utf8_lossy(&output.stderr));
}
