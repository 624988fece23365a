//! The sidecar's xDS client (`--xds ADDR`): one ADS stream to Pilot, on which the compiled
//! sidecar takes what changes at run time without a rebuild.
//!
//! It subscribes to the Cluster of every compiled cluster, whose load balancer, circuit
//! breakers and outlier detection take effect at once (`tuning.rs`), to their
//! ClusterLoadAssignments, and each response
//! replaces those clusters' endpoint sets whole, as `--endpoints` does at start (requests
//! already on their way keep the endpoint they picked). It subscribes to the `outbound`
//! RouteConfiguration too: a virtual host served differently from what was compiled is
//! routed by the interpreted matcher from then on (`overrides.rs`). A response it cannot
//! apply (a cluster it does not have, an endpoint without an address, a route it cannot
//! carry out, an invalid regex) is NACKed with the reason in `error_detail`, and nothing of
//! it is applied: the last good state stays. When Pilot is away the sidecar keeps serving what it has and
//! reconnects with a growing, jittered backoff; state of the world resyncs on reconnection.
//! `/config_dump` shows, per cluster, whether its endpoints are compiled or from xDS.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Node, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{LbEndpoint, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;

use crate::endpoints::{Endpoint, EndpointSet};
use crate::proxy::Proxy;
use crate::server::say;
use crate::sys::{drop_in_turns, give_way, give_way_every};

/// `type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type.googleapis.com/envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The first wait before reconnecting, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the client did, for `/config_dump` and `/stats/prometheus`.
#[derive(Debug, Default)]
pub struct XdsStatus {
    /// Pilot's address, when the sidecar was started with `--xds`.
    pub server: Mutex<Option<String>>,
    /// Whether a stream is up.
    pub connected: AtomicBool,
    /// Updates applied.
    pub applied: AtomicU64,
    /// Updates refused (NACKed).
    pub rejected: AtomicU64,
    /// Per type URL: the version last applied and the error of the last refusal.
    types: Mutex<BTreeMap<String, TypeStatus>>,
    /// The clusters whose endpoints came from xDS, with how many they have.
    overridden: Mutex<BTreeMap<String, usize>>,
    /// Digests of the assignments applied last.
    digests: Mutex<Digests>,
}

/// Each cluster's last applied assignment, and the cluster of each of their digests.
#[derive(Debug, Default)]
struct Digests {
    by_cluster: BTreeMap<String, Applied>,
    applied: BTreeMap<u64, String>,
}

/// A cluster's last applied assignment: its digest, the endpoint set it became, and the
/// bytes each of that set's endpoints was read from. The next assignment takes an endpoint
/// sent again with the same bytes, at the same position and in the same locality, as it was,
/// without decoding it: a push that changes one weight of 10,000 decodes one endpoint.
#[derive(Debug)]
struct Applied {
    digest: u64,
    set: Arc<EndpointSet>,
    encoded: Vec<bytes::Bytes>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct TypeStatus {
    version: Option<String>,
    last_error: Option<String>,
}

impl XdsStatus {
    /// The client's state as JSON.
    pub fn dump(&self) -> serde_json::Value {
        let types = self.types.lock().map(|it| it.clone()).unwrap_or_default();
        let overridden = self.overridden.lock().map(|it| it.clone()).unwrap_or_default();
        serde_json::json!({
            "server": self.server.lock().ok().and_then(|it| it.clone()),
            "connected": self.connected.load(Ordering::Relaxed),
            "applied": self.applied.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "types": types,
            "overridden_endpoints": overridden,
        })
    }

    /// The client's counters in Prometheus' text format (nothing without `--xds`).
    pub fn metrics(&self) -> String {
        if self.server.lock().map_or(true, |it| it.is_none()) {
            return String::new();
        }
        format!(
            "# TYPE meshc_xds_connected gauge\nmeshc_xds_connected {}\n\
             # TYPE meshc_xds_updates_applied_total counter\nmeshc_xds_updates_applied_total {}\n\
             # TYPE meshc_xds_updates_rejected_total counter\nmeshc_xds_updates_rejected_total {}\n",
            u8::from(self.connected.load(Ordering::Relaxed)),
            self.applied.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
        )
    }

    /// Whether xDS gave `cluster` its endpoints.
    pub fn overrides(&self, cluster: &str) -> bool {
        self.overridden.lock().is_ok_and(|it| it.contains_key(cluster))
    }

    fn record(&self, type_url: &str, change: impl FnOnce(&mut TypeStatus)) {
        if let Ok(mut types) = self.types.lock() {
            change(types.entry(type_url.to_owned()).or_default());
        }
    }
}

/// The xDS thread's nice value: below the threads that serve requests.
const XDS_NICE: i32 = 10;

/// How many endpoints the client decodes between two [`give_way`]s: about 20 µs of work
/// (taking an unchanged endpoint as it was counts an eighth of one).
const ENDPOINTS_PER_TURN: usize = 64;

/// The most endpoints one ClusterLoadAssignment may list (localities count as well): each is
/// kept in some fifty times the two bytes an empty one is written in, so a response within the
/// message limit could otherwise take gigabytes. Far above any one service's instances.
const MAX_ASSIGNMENT_ENTRIES: usize = 100_000;

/// How many endpoints (or their bytes) the client drops between two [`give_way`]s.
const DROPS_PER_TURN: usize = 2048;

/// How many clusters or virtual hosts the client reads between two [`give_way`]s.
pub(crate) const RESOURCES_PER_TURN: usize = 64;

/// Starts the client on a thread of its own, as Envoy keeps xDS on its main thread and off
/// its workers: decoding a 10,000-endpoint assignment, building its endpoint set or
/// compiling an override's regexes never holds up a request, whatever `--concurrency` is.
/// The thread runs at a lower priority ([`XDS_NICE`]), so that where it shares a CPU with
/// the request path, requests go first and an update waits. It runs for the life of the
/// process.
pub fn start(proxy: Arc<Proxy>, server: String) {
    let spawned = std::thread::Builder::new().name("xds".to_owned()).spawn(move || {
        if let Err(err) = crate::sys::lower_thread_priority(XDS_NICE) {
            say(&format!("{}: xds: cannot lower the client thread's priority: {err}", proxy.spec.workload));
        }
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(run(proxy, server)),
            Err(err) => say(&format!("{}: xds: cannot start the client: {err}", proxy.spec.workload)),
        }
    });
    if let Err(err) = spawned {
        say(&format!("xds: cannot start the client's thread: {err}"));
    }
}

/// Runs the client for ever: connects to `server`, applies what arrives, and reconnects
/// after a failure; the proxy serves its last good state throughout.
async fn run(proxy: Arc<Proxy>, server: String) {
    if let Ok(mut it) = proxy.xds.server.lock() {
        *it = Some(server.clone());
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&proxy, &server).await {
            // A stream that delivered something was healthy: the next wait starts short.
            Ok(true) => backoff = FIRST_BACKOFF,
            Ok(false) => {}
            Err(err) => say(&format!("{}: xds: {err}; retrying in {} ms", proxy.spec.workload, backoff.as_millis())),
        }
        proxy.xds.connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `wait` give or take a quarter, so that sidecars Pilot dropped together do not return
/// together.
fn jittered(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |it| it.subsec_nanos());
    let spread = wait / 2;
    wait - wait / 4 + spread.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// One ADS stream, until it ends; `Ok(true)` when it delivered at least one response.
async fn session(proxy: &Arc<Proxy>, server: &str) -> Result<bool, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .map_err(|err| format!("`{server}` is not HOST:PORT: {err}"))?
        .connect_timeout(Duration::from_secs(5))
        // Windows large enough for a 10,000-endpoint assignment in one go: HTTP/2's default
        // 64 KiB made Pilot wait for window updates from a busy sidecar.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|err| format!("cannot connect to {server}: {err}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(16);
    let endpoint_names: Vec<String> = proxy.clusters.iter().map(|it| it.spec.name.to_owned()).collect();
    let names = |type_url: &str| match type_url {
        ROUTE_CONFIGURATION => vec![crate::overrides::OUTBOUND.to_owned()],
        CLUSTER | CLUSTER_LOAD_ASSIGNMENT => endpoint_names.clone(),
        // A type the sidecar never asked for: its NACK must not subscribe to it.
        _ => Vec::new(),
    };
    let node = Node { id: proxy.spec.workload.to_owned(), user_agent_name: "meshc".to_owned(), ..Default::default() };
    // The settings and endpoints of every compiled cluster, and the route configuration of
    // the outbound listener (overrides of its virtual hosts), on one stream.
    for (index, type_url) in [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION].into_iter().enumerate() {
        let request = DiscoveryRequest {
            node: (index == 0).then(|| node.clone()),
            type_url: type_url.to_owned(),
            resource_names: names(type_url),
            ..Default::default()
        };
        tx.send(request).await.map_err(|_| "the stream closed".to_owned())?;
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|err| format!("Pilot refused the stream: {}", err.message()))?
        .into_inner();
    proxy.xds.connected.store(true, Ordering::Relaxed);
    say(&format!("{}: xds: connected to {server}", proxy.spec.workload));
    let mut delivered = false;
    // The version last accepted, per type.
    let mut accepted: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let response = match responses.message().await {
            Ok(Some(it)) => it,
            Ok(None) => return Ok(delivered),
            Err(err) => return Err(format!("the stream from {server} failed: {}", err.message())),
        };
        delivered = true;
        // The client's thread is its own (see `start`), so the work is done in place. A bug
        // that panics while applying costs that update (NACKed), not the client.
        let type_url = response.type_url.clone();
        let apply = || match type_url.as_str() {
            CLUSTER => apply_clusters(proxy, &response.resources),
            CLUSTER_LOAD_ASSIGNMENT => apply_endpoints(proxy, &response.resources),
            ROUTE_CONFIGURATION => apply_routes(proxy, &response.resources, &response.version_info),
            other => Err(format!("this sidecar takes no {other}")),
        };
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(apply))
            .unwrap_or_else(|_| Err(format!("applying the {} failed (a bug in the sidecar)", short_type(&type_url))));
        let mut request = DiscoveryRequest {
            type_url: type_url.clone(),
            resource_names: names(&type_url),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        match answer {
            Ok(()) => {
                say(&format!("{}: xds: applied {} version {}", proxy.spec.workload, short_type(&type_url), response.version_info));
                accepted.insert(type_url.clone(), response.version_info.clone());
                proxy.xds.applied.fetch_add(1, Ordering::Relaxed);
                proxy.xds.record(&type_url, |it| it.version = Some(response.version_info.clone()));
                request.version_info = response.version_info.clone();
            }
            Err(error) => {
                say(&format!("{}: xds: refused {type_url} version {}: {error}", proxy.spec.workload, response.version_info));
                proxy.xds.rejected.fetch_add(1, Ordering::Relaxed);
                proxy.xds.record(&type_url, |it| it.last_error = Some(error.clone()));
                request.version_info = accepted.get(&type_url).cloned().unwrap_or_default();
                // google.rpc.Code INVALID_ARGUMENT, as Envoy sends.
                request.error_detail = Some(RpcStatus { code: 3, message: error, details: Vec::new() });
            }
        }
        if tx.send(request).await.is_err() {
            return Ok(delivered);
        }
    }
}

/// Checks every Cluster of a response, then puts the settings of each in force (load
/// balancer, circuit breakers, outlier detection); one that cannot be applied refuses the
/// whole response.
fn apply_clusters(proxy: &Proxy, resources: &[envoy_types::pb::google::protobuf::Any]) -> Result<(), String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    let mut updates = Vec::with_capacity(resources.len());
    for (index, resource) in resources.iter().enumerate() {
        give_way_every(RESOURCES_PER_TURN, index);
        if resource.type_url != CLUSTER {
            return Err(format!("a {} among Clusters", resource.type_url));
        }
        let cluster = Cluster::decode(&resource.value[..]).map_err(|err| format!("an undecodable Cluster: {err}"))?;
        let compiled = proxy.cluster_named(&cluster.name)?;
        let tuned = crate::tuning::from_cds(&cluster, compiled.spec, proxy.spec.trust_domain)
            .map_err(|err| format!("cluster `{}`: {err}", cluster.name))?;
        updates.push((compiled, tuned));
    }
    for (cluster, tuned) in updates {
        cluster.retune(&tuned);
    }
    Ok(())
}

/// Takes the `outbound` route configuration of a response: its virtual hosts that differ
/// from the compiled ones become the overrides in force, all together or not at all.
fn apply_routes(proxy: &Proxy, resources: &[envoy_types::pb::google::protobuf::Any], version: &str) -> Result<(), String> {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    let mut tables = Vec::with_capacity(1);
    for resource in resources {
        if resource.type_url != ROUTE_CONFIGURATION {
            return Err(format!("a {} among RouteConfigurations", resource.type_url));
        }
        let config = RouteConfiguration::decode(&resource.value[..]).map_err(|err| format!("an undecodable RouteConfiguration: {err}"))?;
        if config.name != crate::overrides::OUTBOUND {
            return Err(format!("route configuration `{}` was not asked for", config.name));
        }
        if !tables.is_empty() {
            return Err(format!("route configuration `{}` twice in one response", config.name));
        }
        let clusters: Vec<&str> = proxy.clusters.iter().map(|it| it.spec.name).collect();
        let compiled =
            crate::overrides::Compiled { clusters: &clusters, virtual_hosts: proxy.spec.virtual_hosts, routes: proxy.spec.routes };
        tables.push(crate::overrides::build(&config, version, compiled)?);
    }
    // Only once all of it is known to apply.
    for table in tables {
        if !table.is_empty() || proxy.route_overrides.current().is_some() {
            say(&format!("{}: xds: {} virtual host(s) overridden by routes version {version}", proxy.spec.workload, table.len()));
        }
        proxy.route_overrides.replace(table);
    }
    Ok(())
}

/// Checks every ClusterLoadAssignment of a response, then replaces the endpoints of each
/// cluster it names whose assignment changed (state of the world resends them all); one that
/// cannot be applied, or a cluster named twice, refuses the whole response.
fn apply_endpoints(proxy: &Proxy, resources: &[envoy_types::pb::google::protobuf::Any]) -> Result<(), String> {
    let mut updates = Vec::new();
    {
        let digests = proxy.xds.digests.lock().map_err(|_| "the client's state is poisoned".to_owned())?;
        let mut named = std::collections::BTreeSet::new();
        let mut name_once = |name: &str| match named.insert(name.to_owned()) {
            true => Ok(()),
            false => Err(format!("cluster `{name}` twice in one response")),
        };
        for resource in resources {
            if resource.type_url != CLUSTER_LOAD_ASSIGNMENT {
                return Err(format!("a {} among ClusterLoadAssignments", resource.type_url));
            }
            let digest = digest(&resource.value);
            // The same bytes as the assignment applied last to a cluster: that cluster, unchanged.
            if let Some(name) = digests.applied.get(&digest) {
                name_once(name)?;
                continue;
            }
            give_way();
            // Counted before anything is decoded: decoding is where the memory goes.
            // `endpoints`, and `named_endpoints` (decoded whole).
            let count = |tag| count_entries(&resource.value, tag).map_err(|err| format!("an undecodable ClusterLoadAssignment: {err}"));
            let localities = count(2)? + count(5)?;
            if localities > MAX_ASSIGNMENT_ENTRIES {
                return Err(format!("a ClusterLoadAssignment of {localities} localities (at most {MAX_ASSIGNMENT_ENTRIES})"));
            }
            let assignment =
                Assignment::decode(&resource.value[..]).map_err(|err| format!("an undecodable ClusterLoadAssignment: {err}"))?;
            let cluster = proxy.cluster_named(&assignment.cluster_name)?;
            name_once(cluster.spec.name)?;
            let current = cluster.endpoints.current();
            // The bytes of the current set's endpoints, if this client made that set.
            let encoded = match digests.by_cluster.get(cluster.spec.name) {
                Some(applied) if Arc::ptr_eq(&applied.set, &current) => &applied.encoded[..],
                _ => &[],
            };
            let read = endpoints_of(&assignment, &current, encoded)?;
            updates.push((cluster, digest, read));
        }
    }
    for (cluster, digest, Read { endpoints, encoded }) in updates {
        let first = match proxy.xds.overridden.lock() {
            Ok(mut overridden) => overridden.insert(cluster.spec.name.to_owned(), endpoints.len()).is_none(),
            Err(_) => false,
        };
        if first {
            // Said once per cluster (outside the lock): from here on, what the sidecar started
            // with (compiled, or `--endpoints`) no longer counts for it.
            say(&format!(
                "{}: xds: cluster {} takes its endpoints from Pilot ({} now), in place of those it started with",
                proxy.spec.workload,
                cluster.spec.name,
                endpoints.len()
            ));
        }
        give_way();
        let (old, set) = cluster.endpoints.replace(endpoints);
        give_way();
        let mut replaced = None;
        if let Ok(mut digests) = proxy.xds.digests.lock() {
            let applied = Applied { digest, set, encoded };
            replaced = digests.by_cluster.insert(cluster.spec.name.to_owned(), applied);
            if let Some(old) = &replaced {
                digests.applied.remove(&old.digest);
            }
            digests.applied.insert(digest, cluster.spec.name.to_owned());
        }
        // The old set and its bytes are dropped here, in turns, unless something still holds
        // the set and drops it when done (requests pick under the set's lock and hold none; the
        // health checks hold it while they start a round's probes).
        if let Some(Applied { set, encoded, .. }) = replaced {
            drop(set);
            drop_in_turns(encoded, DROPS_PER_TURN);
        }
        if let Ok(set) = Arc::try_unwrap(old) {
            for list in set.into_lists() {
                drop_in_turns(list, DROPS_PER_TURN);
            }
        }
    }
    Ok(())
}

/// A ClusterLoadAssignment as the sidecar reads it: each locality's endpoints are kept as
/// their encoded bytes and decoded one at a time, rather than as one vector of 10,000
/// decoded `LbEndpoint`s, grown by copying, that is built only to be dropped. Every other
/// field is declared with its own type, so that what the whole message would refuse (a
/// wrong wire type, a broken nested message, text that is not UTF-8) is refused here too,
/// although the sidecar uses only the cluster's name and the endpoints.
#[derive(Clone, PartialEq, prost::Message)]
struct Assignment {
    #[prost(string, tag = "1")]
    cluster_name: String,
    /// `LocalityLbEndpoints`, encoded.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    endpoints: Vec<bytes::Bytes>,
    #[prost(map = "string, message", tag = "5")]
    named_endpoints: std::collections::HashMap<String, envoy_types::pb::envoy::config::endpoint::v3::Endpoint>,
    #[prost(message, optional, tag = "4")]
    policy: Option<envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy>,
}

/// A `LocalityLbEndpoints` as the sidecar reads it (see [`Assignment`]).
#[derive(Clone, PartialEq, prost::Message)]
struct LocalityEndpoints {
    #[prost(message, optional, tag = "1")]
    locality: Option<envoy_types::pb::envoy::config::core::v3::Locality>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
    /// `LbEndpoint`s, encoded.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    lb_endpoints: Vec<bytes::Bytes>,
    #[prost(message, optional, tag = "3")]
    load_balancing_weight: Option<envoy_types::pb::google::protobuf::UInt32Value>,
    #[prost(uint32, tag = "5")]
    priority: u32,
    #[prost(message, optional, tag = "6")]
    proximity: Option<envoy_types::pb::google::protobuf::UInt32Value>,
    #[prost(oneof = "envoy_types::pb::envoy::config::endpoint::v3::locality_lb_endpoints::LbConfig", tags = "7, 8")]
    lb_config: Option<envoy_types::pb::envoy::config::endpoint::v3::locality_lb_endpoints::LbConfig>,
}

/// How many times field `tag` occurs in the protobuf message `bytes`, read without decoding
/// anything (a repeated field's entries).
fn count_entries(bytes: &[u8], tag: u32) -> Result<usize, prost::DecodeError> {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut buf = bytes;
    let mut count = 0;
    while !buf.is_empty() {
        let (field, wire_type) = decode_key(&mut buf)?;
        count += usize::from(field == tag);
        skip_field(wire_type, field, &mut buf, DecodeContext::default())?;
    }
    Ok(count)
}

/// A type URL's message name, for the log: `ClusterLoadAssignment`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// A protobuf duration in whole milliseconds; a negative one is refused.
pub(crate) fn millis(duration: &envoy_types::pb::google::protobuf::Duration) -> Result<u64, String> {
    let seconds = u64::try_from(duration.seconds).map_err(|_| "a negative duration")?;
    let nanos = u64::try_from(duration.nanos).map_err(|_| "a negative duration")?;
    Ok(seconds.saturating_mul(1000).saturating_add(nanos / 1_000_000))
}

/// A digest of a resource's bytes, to tell an assignment resent unchanged.
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// An assignment's endpoints, with the bytes each was read from.
#[derive(Debug)]
struct Read {
    endpoints: Vec<Endpoint>,
    encoded: Vec<bytes::Bytes>,
}

/// A ClusterLoadAssignment's endpoints: each with its address, port, weight (1 when unset,
/// as Envoy takes it), health (HEALTHY and UNKNOWN take traffic) and locality. Pilot lists
/// a cluster's endpoints in the same order each time, so each is compared with the one at
/// its position in `previous`, whose bytes are at the same position of `encoded` (empty
/// when they are not known): the same bytes in the same locality are the same endpoint,
/// taken as it is; one at the same address and port shares its address and authority
/// instead of making them again.
fn endpoints_of(assignment: &Assignment, previous: &EndpointSet, encoded: &[bytes::Bytes]) -> Result<Read, String> {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    let cluster = &assignment.cluster_name;
    let mut localities = Vec::with_capacity(assignment.endpoints.len());
    let mut entries = assignment.endpoints.len();
    for (index, encoded) in assignment.endpoints.iter().enumerate() {
        entries += count_entries(encoded, 2).map_err(|err| format!("cluster `{cluster}`: locality {index} is undecodable: {err}"))?;
        if entries > MAX_ASSIGNMENT_ENTRIES {
            return Err(format!("cluster `{cluster}`: more than {MAX_ASSIGNMENT_ENTRIES} endpoints and localities"));
        }
    }
    for (index, encoded) in assignment.endpoints.iter().enumerate() {
        let locality = LocalityEndpoints::decode(encoded.clone())
            .map_err(|err| format!("cluster `{cluster}`: locality {index} is undecodable: {err}"))?;
        localities.push(locality);
    }
    let count = localities.iter().map(|it| it.lb_endpoints.len()).sum();
    let mut endpoints = Vec::with_capacity(count);
    let mut read = Vec::with_capacity(count);
    let previous = previous.all();
    // Decoding an endpoint costs about eight times taking one as it was.
    let mut work = 0;
    give_way();
    for locality_endpoints in localities {
        let locality: Arc<str> = locality_endpoints
            .locality
            .as_ref()
            .map(|it| {
                let parts = [it.region.as_str(), it.zone.as_str(), it.sub_zone.as_str()];
                let used = parts.iter().rposition(|it| !it.is_empty()).map_or(0, |it| it + 1);
                parts[..used].join("/")
            })
            .unwrap_or_default()
            .into();
        for bytes in locality_endpoints.lb_endpoints {
            let position = endpoints.len();
            work += 1;
            if work >= 8 * ENDPOINTS_PER_TURN {
                work = 0;
                give_way();
            }
            if let (Some(before), Some(sent)) = (previous.get(position), encoded.get(position))
                && *sent == bytes
                && before.locality == locality
            {
                endpoints.push(before.clone());
                read.push(bytes);
                continue;
            }
            work += 7;
            let lb_endpoint =
                LbEndpoint::decode(&bytes[..]).map_err(|err| format!("cluster `{cluster}`: endpoint {position} is undecodable: {err}"))?;
            read.push(bytes);
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
                return Err(format!("cluster `{cluster}`: an endpoint without an address"));
            };
            let Some(address::Address::SocketAddress(socket)) = endpoint.address.as_ref().and_then(|it| it.address.as_ref()) else {
                return Err(format!("cluster `{cluster}`: an endpoint whose address is not a socket address"));
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
                return Err(format!("cluster `{cluster}`: endpoint {} has no port number", socket.address));
            };
            let port = u16::try_from(port)
                .ok()
                .filter(|it| *it > 0)
                .ok_or_else(|| format!("cluster `{cluster}`: port {port} of {} is out of range", socket.address))?;
            if socket.address.is_empty() {
                return Err(format!("cluster `{cluster}`: an endpoint with an empty address"));
            }
            let weight = lb_endpoint.load_balancing_weight.as_ref().map_or(1, |it| it.value);
            if weight == 0 {
                return Err(format!("cluster `{cluster}`: endpoint {}:{port} has weight 0 (xDS weights start at 1)", socket.address));
            }
            let routable = matches!(HealthStatus::try_from(lb_endpoint.health_status), Ok(HealthStatus::Healthy | HealthStatus::Unknown));
            let endpoint = match previous.get(position) {
                Some(it) if it.port == port && *it.address == *socket.address => it.reweighted(weight, routable, locality.clone()),
                _ => Endpoint::in_locality(&socket.address, port, weight, routable, locality.clone()),
            };
            endpoints.push(endpoint);
        }
    }
    Ok(Read { endpoints, encoded: read })
}

#[cfg(test)]
pub(crate) mod tests;
