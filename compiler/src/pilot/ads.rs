//! The aggregated discovery service: state-of-the-world and delta streams.
//!
//! Each stream learns its node from its first request, answers each subscription with the
//! resources that exist, and pushes again when a recompiled mesh changes what the stream
//! subscribed to, type by type in CDS, EDS, LDS, RDS order (make before break). A request
//! whose nonce is not the last one sent for its type is stale and ignored; a NACK is counted,
//! logged and recorded, and the rejected version is not sent again: the next push carries
//! the next change.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use meshc_codegen::emit::xds::{self, Client};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ClientStatus, Config, Identity, Pilot, Served, TypeStatus, digest};

/// Serves ADS on `listener` until it fails.
pub async fn serve(pilot: Arc<Pilot>, listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    // No Nagle: a push split over segments otherwise waited 40 ms for the client's delayed
    // ACK (tonic sets it only on listeners it binds itself).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|it| {
            let _ = it.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(AggregatedDiscoveryServiceServer::new(Ads { pilot }).max_decoding_message_size(16 * 1024 * 1024))
        .serve_with_incoming(incoming)
        .await
}

struct Ads {
    pilot: Arc<Pilot>,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(state_of_the_world(self.pilot.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(delta(self.pilot.clone(), request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Whether an empty first subscription means "everything" (Listener and Cluster only).
fn wildcard_by_default(type_url: &str) -> bool {
    type_url == xds::LISTENER || type_url == xds::CLUSTER
}

/// A connected stream's entry in the admin's client table, removed when the stream ends.
struct Registration {
    pilot: Arc<Pilot>,
    id: u64,
}

impl Registration {
    fn new(pilot: &Arc<Pilot>, identity: &Identity, transport: &'static str) -> Registration {
        let id = pilot.stream_id();
        let status = ClientStatus {
            node: identity.node_id.clone(),
            workload: identity.workload.clone(),
            client: if identity.client == Client::Grpc { "grpc" } else { "envoy" },
            transport,
            types: BTreeMap::new(),
        };
        pilot.lock_clients().insert(id, status);
        Registration { pilot: pilot.clone(), id }
    }

    fn update(&self, type_url: &str, change: impl FnOnce(&mut TypeStatus)) {
        if let Some(client) = self.pilot.lock_clients().get_mut(&self.id) {
            let status = client.types.entry(type_url.to_owned()).or_default();
            change(status);
            status.state = match (&status.sent, &status.acked, &status.last_nack) {
                (Some(sent), Some(acked), _) if sent == acked => "SYNCED",
                (Some(_), _, Some(_)) => "NACKED",
                _ => "STALE",
            };
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pilot.lock_clients().remove(&self.id);
    }
}

/// A stream's first request, its node's identity and its entry in the client table; `None`
/// when the stream ended first or its node names no workload (the stream then ends with
/// INVALID_ARGUMENT or NOT_FOUND).
async fn open<Q, R>(
    pilot: &Arc<Pilot>,
    inbound: &mut Streaming<Q>,
    node: impl Fn(&Q) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    tx: &mpsc::Sender<Result<R, Status>>,
    transport: &'static str,
) -> Option<(Q, Identity, Registration)> {
    let Ok(Some(first)) = inbound.message().await else { return None };
    let identity = match node(&first) {
        None => Err(Status::invalid_argument("the first request on a stream must carry the node")),
        Some(node) => super::identify(&pilot.config().mesh, node).map_err(Status::not_found),
    };
    match identity {
        Ok(identity) => {
            let registration = Registration::new(pilot, &identity, transport);
            Some((first, identity, registration))
        }
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            None
        }
    }
}

/// Records an answer to the last response of a type: an ACK, or a NACK with its error.
fn answer(pilot: &Pilot, registration: &Registration, identity: &Identity, type_url: &str, version: &str, error: Option<&str>) {
    match error {
        Some(message) => {
            pilot.nacks.fetch_add(1, Ordering::Relaxed);
            eprintln!("meshc pilot: {} ({}) NACKed {type_url}: {message}", identity.node_id, identity.workload);
            registration.update(type_url, |it| {
                it.nacks += 1;
                it.last_nack = Some(message.to_owned());
            });
        }
        None => registration.update(type_url, |it| {
            it.acked = Some(version.to_owned());
            it.last_nack = None;
        }),
    }
}

/// What a stream waits for.
enum Event<Q> {
    /// The client's next request.
    Request(Q),
    /// A new config, and what the stream's client is served from it.
    Changed(Arc<Served>),
}

/// A stream's next event; `None` when the stream ends: the client left, Pilot stops, or the
/// client's workload is gone from the mesh (the client is told so first).
async fn next_event<Q, R>(
    inbound: &mut Streaming<Q>,
    configs: &mut tokio::sync::watch::Receiver<Arc<Config>>,
    config: &mut Arc<Config>,
    identity: &Identity,
    tx: &mpsc::Sender<Result<R, Status>>,
) -> Option<Event<Q>> {
    tokio::select! {
        message = inbound.message() => message.ok().flatten().map(Event::Request),
        changed = configs.changed() => {
            changed.ok()?;
            *config = configs.borrow_and_update().clone();
            match config.served(identity) {
                Some(served) => Some(Event::Changed(served)),
                None => {
                    let _ = tx.send(Err(Status::not_found(format!("workload `{}` is gone from the mesh", identity.workload)))).await;
                    None
                }
            }
        }
    }
}

// State of the world -----------------------------------------------------------------------

/// One type's subscription on a state-of-the-world stream.
#[derive(Default)]
struct Subscription {
    /// `None`: every resource of the type.
    names: Option<BTreeSet<String>>,
    /// What was last sent: the version and the names asked for then.
    sent: Option<(String, Option<BTreeSet<String>>)>,
    /// The nonce of the last response.
    nonce: String,
}

async fn state_of_the_world(
    pilot: Arc<Pilot>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let Some((first, identity, registration)) = open(&pilot, &mut inbound, |it| it.node.as_ref(), &tx, "sotw").await else { return };
    let mut configs = pilot.subscribe();
    let mut config = configs.borrow_and_update().clone();
    let mut subscriptions: BTreeMap<String, Subscription> = BTreeMap::new();
    let mut nonce = 0u64;
    let mut pending = Some(first);
    loop {
        let request = match pending.take() {
            Some(it) => it,
            None => match next_event(&mut inbound, &mut configs, &mut config, &identity, &tx).await {
                None => return,
                Some(Event::Request(it)) => it,
                Some(Event::Changed(served)) => {
                    for type_url in xds::TYPE_URLS {
                        if let Some(subscription) = subscriptions.get_mut(type_url)
                            && !respond(&pilot, &registration, &served, type_url, subscription, &mut nonce, &tx).await
                        {
                            return;
                        }
                    }
                    continue;
                }
            },
        };
        let type_url = request.type_url.clone();
        if !xds::TYPE_URLS.contains(&type_url.as_str()) {
            // Secrets and other types this Pilot does not serve: the client waits for them.
            registration.update(&type_url, |it| it.subscribed = request.resource_names.clone());
            continue;
        }
        let first_for_type = !subscriptions.contains_key(&type_url);
        let subscription = subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if request.response_nonce != subscription.nonce {
                continue;
            }
            let error = request.error_detail.as_ref().map(|it| it.message.as_str());
            answer(&pilot, &registration, &identity, &type_url, &request.version_info, error);
        }
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        let everything =
            names.contains("*") || (names.is_empty() && wildcard_by_default(&type_url) && (first_for_type || subscription.names.is_none()));
        subscription.names = if everything { None } else { Some(names) };
        let subscribed = subscription.names.as_ref().map_or_else(|| vec!["*".to_owned()], |it| it.iter().cloned().collect());
        registration.update(&type_url, |it| it.subscribed = subscribed);
        let Some(served) = config.served(&identity) else { return };
        if !respond(&pilot, &registration, &served, &type_url, subscription, &mut nonce, &tx).await {
            return;
        }
    }
}

/// Sends `type_url`'s resources unless the stream already has this version for these names;
/// false when the stream is gone.
#[allow(clippy::too_many_arguments)]
async fn respond(
    pilot: &Pilot,
    registration: &Registration,
    served: &Served,
    type_url: &str,
    subscription: &mut Subscription,
    nonce: &mut u64,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> bool {
    let all = served.of(type_url);
    let chosen: Vec<(&String, &super::Versioned)> = match (&subscription.names, all) {
        (_, None) => Vec::new(),
        (None, Some(all)) => all.iter().collect(),
        (Some(names), Some(all)) => names.iter().filter_map(|name| all.get_key_value(name)).collect(),
    };
    let parts: Vec<&[u8]> = chosen.iter().flat_map(|(name, it)| [name.as_bytes(), it.version.as_bytes()]).collect();
    let version = digest(&parts);
    if subscription.sent.as_ref().is_some_and(|(sent, names)| *sent == version && *names == subscription.names) {
        return true;
    }
    *nonce += 1;
    let response = DiscoveryResponse {
        version_info: version.clone(),
        resources: chosen.iter().map(|(_, it)| it.resource.clone()).collect(),
        type_url: type_url.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    };
    subscription.sent = Some((version.clone(), subscription.names.clone()));
    subscription.nonce = nonce.to_string();
    registration.update(type_url, |it| it.sent = Some(version));
    pilot.pushes.fetch_add(1, Ordering::Relaxed);
    tx.send(Ok(response)).await.is_ok()
}

// Delta ------------------------------------------------------------------------------------

/// One type's subscription on a delta stream.
#[derive(Default)]
struct DeltaSubscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version (as it said on connecting, or as sent since).
    known: BTreeMap<String, String>,
    /// Subscribed names already reported as absent.
    absent: BTreeSet<String>,
    nonce: String,
    /// Whether this type was ever answered.
    answered: bool,
}

async fn delta(pilot: Arc<Pilot>, mut inbound: Streaming<DeltaDiscoveryRequest>, tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>) {
    let Some((first, identity, registration)) = open(&pilot, &mut inbound, |it| it.node.as_ref(), &tx, "delta").await else { return };
    let mut configs = pilot.subscribe();
    let mut config = configs.borrow_and_update().clone();
    let mut subscriptions: BTreeMap<String, DeltaSubscription> = BTreeMap::new();
    let mut nonce = 0u64;
    let mut pending = Some(first);
    loop {
        let request = match pending.take() {
            Some(it) => it,
            None => match next_event(&mut inbound, &mut configs, &mut config, &identity, &tx).await {
                None => return,
                Some(Event::Request(it)) => it,
                Some(Event::Changed(served)) => {
                    for type_url in xds::TYPE_URLS {
                        if let Some(subscription) = subscriptions.get_mut(type_url)
                            && !respond_delta(&pilot, &registration, &served, type_url, subscription, &mut nonce, &tx).await
                        {
                            return;
                        }
                    }
                    continue;
                }
            },
        };
        let type_url = request.type_url.clone();
        if !xds::TYPE_URLS.contains(&type_url.as_str()) {
            registration.update(&type_url, |it| it.subscribed = request.resource_names_subscribe.clone());
            continue;
        }
        let first_for_type = !subscriptions.contains_key(&type_url);
        let subscription = subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() {
            if request.response_nonce != subscription.nonce {
                continue;
            }
            let error = request.error_detail.as_ref().map(|it| it.message.as_str());
            answer(&pilot, &registration, &identity, &type_url, &subscription.nonce, error);
            if error.is_none() && request.resource_names_subscribe.is_empty() && request.resource_names_unsubscribe.is_empty() {
                continue;
            }
        }
        if first_for_type {
            subscription.known = request.initial_resource_versions.clone().into_iter().collect();
            subscription.wildcard = request.resource_names_subscribe.is_empty() && wildcard_by_default(&type_url);
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                subscription.wildcard = true;
            } else {
                subscription.names.insert(name.clone());
                subscription.absent.remove(name);
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(name);
                subscription.known.remove(name);
                subscription.absent.remove(name);
            }
        }
        let mut subscribed: Vec<String> = subscription.names.iter().cloned().collect();
        if subscription.wildcard {
            subscribed.insert(0, "*".to_owned());
        }
        registration.update(&type_url, |it| it.subscribed = subscribed);
        let Some(served) = config.served(&identity) else { return };
        if !respond_delta(&pilot, &registration, &served, &type_url, subscription, &mut nonce, &tx).await {
            return;
        }
    }
}

/// Sends what changed for `type_url` since what the client holds: new and changed resources,
/// and the names that went away (or that it asked for and do not exist); false when the
/// stream is gone.
async fn respond_delta(
    pilot: &Pilot,
    registration: &Registration,
    served: &Served,
    type_url: &str,
    subscription: &mut DeltaSubscription,
    nonce: &mut u64,
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) -> bool {
    let empty = BTreeMap::new();
    let all = served.of(type_url).unwrap_or(&empty);
    let in_scope = |name: &String| subscription.wildcard || subscription.names.contains(name);
    let mut resources = Vec::new();
    for (name, it) in all.iter().filter(|(name, _)| in_scope(name)) {
        if subscription.known.get(name) != Some(&it.version) {
            resources.push(Resource {
                name: name.clone(),
                version: it.version.clone(),
                resource: Some(it.resource.clone()),
                ..Default::default()
            });
        }
    }
    let mut removed: Vec<String> = subscription.known.keys().filter(|name| !all.contains_key(*name) || !in_scope(name)).cloned().collect();
    let newly_absent: Vec<String> = subscription
        .names
        .iter()
        .filter(|name| !all.contains_key(*name) && !subscription.known.contains_key(*name) && !subscription.absent.contains(*name))
        .cloned()
        .collect();
    removed.extend(newly_absent.iter().cloned());
    removed.sort();
    removed.dedup();
    if resources.is_empty() && removed.is_empty() && subscription.answered {
        return true;
    }
    for name in &removed {
        subscription.known.remove(name);
    }
    subscription.absent.extend(newly_absent);
    for resource in &resources {
        subscription.known.insert(resource.name.clone(), resource.version.clone());
    }
    *nonce += 1;
    subscription.nonce = nonce.to_string();
    subscription.answered = true;
    let parts: Vec<&[u8]> = subscription.known.iter().flat_map(|(name, version)| [name.as_bytes(), version.as_bytes()]).collect();
    let version = digest(&parts);
    registration.update(type_url, |it| it.sent = Some(subscription.nonce.clone()));
    pilot.pushes.fetch_add(1, Ordering::Relaxed);
    let response = DeltaDiscoveryResponse {
        system_version_info: version,
        resources,
        type_url: type_url.to_owned(),
        removed_resources: removed,
        nonce: subscription.nonce.clone(),
        ..Default::default()
    };
    tx.send(Ok(response)).await.is_ok()
}
