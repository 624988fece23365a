//! What a running Pilot serves a workload, fetched over ADS as a client would fetch it: for
//! `meshc diff DIR --pilot ADDR`.
//!
//! One state-of-the-world stream per workload, identified by the workload's name with the
//! user agent `meshc` (so Pilot serves the Envoy form, as to a compiled sidecar): clusters
//! first, then the assignments of the clusters served, the listeners and the `outbound`
//! route configuration. The clusters are ACKed with the names of the assignments asked for
//! next; the stream is closed once all four types have arrived. A push that lands during a fetch
//! could mix two versions of the mesh, so the fetch is repeated until two in a row agree.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshc_codegen::emit::xds::{self as emit, CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, OUTBOUND, ROUTE_CONFIGURATION, to_json};
use prost::Message;
use tokio::sync::mpsc;

/// How long Pilot has to answer each request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A workload's resources as JSON, by type URL and name.
pub type Served = BTreeMap<(&'static str, String), serde_json::Value>;

/// The Envoy-form resources `workload` would be served from a compiled mesh, in the same shape.
pub fn compiled(resources: &emit::Resources) -> Served {
    let mut out = Served::new();
    for it in &resources.clusters {
        out.insert((CLUSTER, it.name.clone()), to_json(it));
    }
    for it in &resources.endpoints {
        out.insert((CLUSTER_LOAD_ASSIGNMENT, it.cluster_name.clone()), to_json(it));
    }
    for it in &resources.listeners {
        out.insert((LISTENER, it.name.clone()), to_json(it));
    }
    for it in &resources.routes {
        out.insert((ROUTE_CONFIGURATION, it.name.clone()), to_json(it));
    }
    out
}

/// How many fetches may disagree with the one before before `fetch` gives up.
const FETCHES: usize = 5;

/// What Pilot at `address` serves `workload`: the same in two fetches in a row, so that no
/// push landed between or during them (a fetch that mixed two versions would differ from
/// the next one, made after the push).
pub async fn fetch(address: &str, workload: &str) -> Result<Served, String> {
    let mut last = fetch_once(address, workload).await?;
    for _ in 1..FETCHES {
        let again = fetch_once(address, workload).await?;
        if again == last {
            return Ok(again);
        }
        last = again;
    }
    Err(format!("what Pilot serves `{workload}` changed during each of {FETCHES} fetches: it is being pushed to; try again"))
}

/// One fetch of what Pilot at `address` serves `workload`.
async fn fetch_once(address: &str, workload: &str) -> Result<Served, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|err| format!("`{address}` is not HOST:PORT: {err}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|err| format!("cannot connect to Pilot at {address}: {err}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    let node = Node { id: workload.to_owned(), user_agent_name: "meshc".to_owned(), ..Default::default() };
    let request = |type_url: &str, names: Vec<String>| DiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names: names,
        ..Default::default()
    };
    tx.send(DiscoveryRequest { node: Some(node), ..request(CLUSTER, Vec::new()) }).await.map_err(|_| "the stream closed")?;
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|err| format!("Pilot refused workload `{workload}`: {}", err.message()))?
        .into_inner();
    let mut next = async || -> Result<DiscoveryResponse, String> {
        match tokio::time::timeout(ANSWER_WITHIN, responses.message()).await {
            Err(_) => Err(format!("Pilot sent nothing for `{workload}` within {} s", ANSWER_WITHIN.as_secs())),
            Ok(Err(err)) => Err(format!("Pilot failed the stream for `{workload}`: {}", err.message())),
            Ok(Ok(None)) => Err(format!("Pilot closed the stream for `{workload}`")),
            Ok(Ok(Some(it))) => Ok(it),
        }
    };
    let ack = |response: &DiscoveryResponse, names: Vec<String>| DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..request(&response.type_url, names)
    };
    let mut served = Served::new();
    let clusters = next().await?;
    let names = decode_into(&clusters, &mut served)?;
    tx.send(ack(&clusters, Vec::new())).await.map_err(|_| "the stream closed")?;
    // The other three, asked for at once; they may come in any order.
    for (type_url, names) in [(CLUSTER_LOAD_ASSIGNMENT, names), (LISTENER, Vec::new()), (ROUTE_CONFIGURATION, vec![OUTBOUND.to_owned()])] {
        tx.send(request(type_url, names)).await.map_err(|_| "the stream closed")?;
    }
    let mut waiting = vec![CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION];
    while !waiting.is_empty() {
        let response = next().await?;
        decode_into(&response, &mut served)?;
        waiting.retain(|it| *it != response.type_url);
    }
    Ok(served)
}

/// Adds a response's resources; the names it served.
fn decode_into(response: &DiscoveryResponse, served: &mut Served) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for resource in &response.resources {
        let undecodable = |err: prost::DecodeError| format!("Pilot sent an undecodable {}: {err}", resource.type_url);
        let (type_url, name, json) = match resource.type_url.as_str() {
            CLUSTER => {
                let it = Cluster::decode(&resource.value[..]).map_err(undecodable)?;
                (CLUSTER, it.name.clone(), to_json(&it))
            }
            CLUSTER_LOAD_ASSIGNMENT => {
                let it = ClusterLoadAssignment::decode(&resource.value[..]).map_err(undecodable)?;
                (CLUSTER_LOAD_ASSIGNMENT, it.cluster_name.clone(), to_json(&it))
            }
            LISTENER => {
                let it = Listener::decode(&resource.value[..]).map_err(undecodable)?;
                (LISTENER, it.name.clone(), to_json(&it))
            }
            ROUTE_CONFIGURATION => {
                let it = RouteConfiguration::decode(&resource.value[..]).map_err(undecodable)?;
                (ROUTE_CONFIGURATION, it.name.clone(), to_json(&it))
            }
            other => return Err(format!("Pilot sent a {other}, which no client asked for")),
        };
        names.push(name.clone());
        served.insert((type_url, name), json);
    }
    Ok(names)
}

/// Where two JSON values differ: `(path, left, right)` per differing leaf, at most `limit`.
pub fn json_differences(left: &serde_json::Value, right: &serde_json::Value, limit: usize) -> Vec<(String, String, String)> {
    fn walk(
        path: &str,
        left: Option<&serde_json::Value>,
        right: Option<&serde_json::Value>,
        out: &mut Vec<(String, String, String)>,
        limit: usize,
    ) {
        use serde_json::Value;
        if out.len() >= limit || left == right {
            return;
        }
        let text = |it: Option<&Value>| it.map_or_else(|| "(absent)".to_owned(), Value::to_string);
        match (left, right) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    walk(&format!("{path}.{key}"), a.get(key), b.get(key), out, limit);
                }
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) => match (by_name(a), by_name(b)) {
                // Named elements (virtual hosts, routes, clusters) are compared by name.
                (Some(a), Some(b)) => {
                    let names: std::collections::BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
                    for name in names {
                        walk(&format!("{path}[{name}]"), a.get(name).copied(), b.get(name).copied(), out, limit);
                    }
                }
                _ if a.len() == b.len() => {
                    for (index, (a, b)) in a.iter().zip(b).enumerate() {
                        walk(&format!("{path}[{index}]"), Some(a), Some(b), out, limit);
                    }
                }
                _ => out.push((path.trim_start_matches('.').to_owned(), text(left), text(right))),
            },
            _ => out.push((path.trim_start_matches('.').to_owned(), text(left), text(right))),
        }
    }
    /// The elements by their `name`, when every one has a distinct name.
    fn by_name(items: &[serde_json::Value]) -> Option<BTreeMap<&str, &serde_json::Value>> {
        let named: BTreeMap<&str, &serde_json::Value> =
            items.iter().map(|it| Some((it.get("name")?.as_str()?, it))).collect::<Option<_>>()?;
        (named.len() == items.len() && !items.is_empty()).then_some(named)
    }
    let mut out = Vec::new();
    walk("", Some(left), Some(right), &mut out, limit);
    out
}
