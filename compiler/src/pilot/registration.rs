//! The registration API: applications publish their own instances to Pilot over HTTP/JSON,
//! with MOSN's local registry API's paths and bodies (what SOFARPC's mesh registry and
//! egg-mosn send), plus a list, a watch and a renewal.
//!
//! - `POST /configs/application` `{"appName": "order"}`: names the caller's application;
//! - `POST /services/publish` `{"serviceName", "port", "protocolType", "providerMetaInfo":
//!   {"appName", "properties": {"weight", ...}}}`, and as meshc's additions `"host"` (the
//!   caller's address when absent) and `"servicePort"`: the other properties become labels;
//! - `POST /services/unpublish` `{"serviceName"}`;
//! - `POST /services/subscribe` `{"serviceName"}`: `{"success": true, "datas":
//!   ["10.1.0.5:12200?weight=100&..."]}`, the service's instances as Pilot serves them;
//!   `POST /services/unsubscribe` answers success;
//! - `POST /services/renew` `{"appName"}`: keeps the caller's instances alive;
//! - `GET /services`: every registered instance; `GET /services/watch?since=N`: the same,
//!   once the registrations' generation passes N (or after 30 s).
//!
//! An instance belongs to its owner, the caller's address and application. Every request of
//! the owner renews all of its instances; those of an owner silent for the TTL
//! (`--registration-ttl-s`) go away, as those it unpublishes do. Registered instances reach
//! the mesh as one more registry, `meshc-registration`, of the native kind, ranked above the
//! snapshots (priority 1000): an instance describes itself best.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshc_codegen::ir;
use serde::Deserialize;

use super::Pilot;

/// The registry registered instances form, in the manifest Pilot compiles.
pub const REGISTRY: &str = "meshc-registration";
/// Its file, which exists only in the overlay Pilot compiles from.
pub const REGISTRY_FILE: &str = ".meshc-registration.toml";

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// How long a watch waits for a change.
const WATCH: Duration = Duration::from_secs(30);

/// Every registered instance, by owner.
#[derive(Debug)]
pub struct Registrations {
    state: Mutex<State>,
    /// Woken on every change (publish, unpublish, expiry).
    pub changed: tokio::sync::Notify,
    generation: tokio::sync::watch::Sender<u64>,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// The application each caller named.
    apps: BTreeMap<IpAddr, String>,
    owners: BTreeMap<(IpAddr, String), Owner>,
}

#[derive(Debug)]
struct Owner {
    seen: Instant,
    /// By service name.
    services: BTreeMap<String, Published>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
struct Published {
    host: String,
    port: u16,
    service_port: Option<u16>,
    protocol: String,
    weight: u32,
    labels: BTreeMap<String, String>,
}

impl Registrations {
    /// No registrations; owners expire after `ttl` of silence.
    pub fn new(ttl: Duration) -> Registrations {
        Registrations {
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
            generation: tokio::sync::watch::Sender::new(0),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|it| *it += 1);
        self.changed.notify_one();
    }

    /// Drops the instances of owners silent for longer than the TTL.
    pub fn expire(&self) {
        let now = Instant::now();
        let expired = {
            let mut state = self.lock();
            let before = state.owners.len();
            state.owners.retain(|_, owner| now.duration_since(owner.seen) <= self.ttl);
            state.owners.len() != before
        };
        if expired {
            self.bump();
        }
    }

    /// The registered instances as a native registry file, or `None` when there are none.
    /// Each service's port is the one the request named (`servicePort`), else the port of
    /// the service `mesh` already knows when it has one, else the instance's.
    pub fn native_registry(&self, mesh: &ir::Mesh) -> Option<String> {
        let state = self.lock();
        let mut services: BTreeMap<&str, Vec<&Published>> = BTreeMap::new();
        for owner in state.owners.values() {
            for (name, published) in &owner.services {
                services.entry(name.as_str()).or_default().push(published);
            }
        }
        if services.is_empty() {
            return None;
        }
        let quote = |text: &str| serde_json::to_string(text).unwrap_or_default();
        let mut text = String::from("# Instances registered with meshc pilot's registration API.\n");
        for (name, instances) in services {
            let known = mesh.services.iter().find(|it| it.name == name || it.host == name);
            let first = instances[0];
            let port =
                first.service_port.or_else(|| known.filter(|it| it.ports.len() == 1).map(|it| it.ports[0].number)).unwrap_or(first.port);
            let protocol = known.map_or(first.protocol.as_str(), |it| it.protocol.as_str());
            text.push_str(&format!("\n[[service]]\nname = {}\nprotocol = {}\nport = {port}\n", quote(name), quote(protocol)));
            for instance in instances {
                let labels: Vec<String> = instance.labels.iter().map(|(key, value)| format!("{} = {}", quote(key), quote(value))).collect();
                text.push_str(&format!(
                    "\n[[service.instance]]\naddress = {}\nport = {}\nservice_port = {port}\nweight = {}\nlabels = {{ {} }}\n",
                    quote(&instance.host),
                    instance.port,
                    instance.weight,
                    labels.join(", ")
                ));
            }
        }
        Some(text)
    }

    fn list(&self) -> serde_json::Value {
        let state = self.lock();
        let now = Instant::now();
        let mut services = Vec::new();
        for ((caller, app), owner) in &state.owners {
            let expires = self.ttl.saturating_sub(now.duration_since(owner.seen)).as_secs();
            for (name, published) in &owner.services {
                services.push(serde_json::json!({
                    "serviceName": name, "appName": app, "caller": caller.to_string(), "instance": published, "expiresInSeconds": expires,
                }));
            }
        }
        serde_json::json!({ "generation": *self.generation.borrow(), "services": services })
    }
}

/// Serves the registration API on `listener` for ever.
pub async fn serve(pilot: Arc<Pilot>, listener: tokio::net::TcpListener) {
    let sweeper = pilot.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            sweeper.registrations.expire();
        }
    });
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let pilot = pilot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let pilot = pilot.clone();
                async move { Ok::<_, Infallible>(handle(&pilot, peer.ip(), request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Body {
    app_name: Option<String>,
    service_name: Option<String>,
    /// MOSN sends the port as a string; numbers are accepted too.
    port: Option<serde_json::Value>,
    service_port: Option<u16>,
    protocol_type: Option<String>,
    host: Option<String>,
    provider_meta_info: Option<ProviderMetaInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ProviderMetaInfo {
    app_name: Option<String>,
    protocol: Option<String>,
    properties: BTreeMap<String, serde_json::Value>,
}

async fn handle(pilot: &Pilot, caller: IpAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    if request.method() == Method::GET {
        return match path.as_str() {
            "/services" => json(StatusCode::OK, &pilot.registrations.list()),
            "/services/watch" => {
                let since: u64 = query.split('&').find_map(|it| it.strip_prefix("since=")).and_then(|it| it.parse().ok()).unwrap_or(0);
                let mut generation = pilot.registrations.generation.subscribe();
                let _ = tokio::time::timeout(WATCH, generation.wait_for(|it| *it > since)).await;
                json(StatusCode::OK, &pilot.registrations.list())
            }
            _ => failure(StatusCode::NOT_FOUND, "no such endpoint: try POST /services/publish, GET /services or GET /services/watch"),
        };
    }
    if request.method() != Method::POST {
        return failure(StatusCode::METHOD_NOT_ALLOWED, "the registration API takes POST (and GET for /services)");
    }
    let bytes = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(it) => it.to_bytes(),
        Err(_) => return failure(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than {MAX_BODY} bytes, or broke off")),
    };
    let body: Body = match serde_json::from_slice(&bytes) {
        Ok(it) => it,
        Err(err) => return failure(StatusCode::BAD_REQUEST, &format!("the body is not the JSON this endpoint takes: {err}")),
    };
    let registrations = &pilot.registrations;
    match path.as_str() {
        "/configs/application" => {
            let Some(app) = body.app_name.filter(|it| !it.is_empty()) else {
                return failure(StatusCode::BAD_REQUEST, "appName is missing");
            };
            registrations.lock().apps.insert(caller, app);
            success(serde_json::json!({}))
        }
        "/services/publish" => match publish(registrations, caller, body) {
            Ok(()) => success(serde_json::json!({})),
            Err(message) => failure(StatusCode::BAD_REQUEST, &message),
        },
        "/services/unpublish" => {
            let Some(name) = body.service_name else { return failure(StatusCode::BAD_REQUEST, "serviceName is missing") };
            let removed = {
                let mut state = registrations.lock();
                let app = owner_app(&state, caller, body.app_name.as_deref());
                let owner = state.owners.get_mut(&(caller, app));
                owner.map(|it| {
                    it.seen = Instant::now();
                    it.services.remove(&name).is_some()
                })
            };
            if removed == Some(true) {
                registrations.bump();
            }
            success(serde_json::json!({}))
        }
        "/services/renew" => {
            let renewed = {
                let mut state = registrations.lock();
                let app = owner_app(&state, caller, body.app_name.as_deref());
                state.owners.get_mut(&(caller, app)).map(|it| it.seen = Instant::now()).is_some()
            };
            if renewed { success(serde_json::json!({})) } else { failure(StatusCode::NOT_FOUND, "this caller has published nothing") }
        }
        "/services/subscribe" => {
            let Some(name) = body.service_name else { return failure(StatusCode::BAD_REQUEST, "serviceName is missing") };
            touch(registrations, caller);
            success(serde_json::json!({ "datas": instances_of(&pilot.config().mesh, &name) }))
        }
        "/services/unsubscribe" => {
            touch(registrations, caller);
            success(serde_json::json!({}))
        }
        _ => failure(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// The application that owns a caller's instances: the one named in the request, else the
/// one it named with /configs/application, else `default`.
fn owner_app(state: &State, caller: IpAddr, named: Option<&str>) -> String {
    named.map(str::to_owned).or_else(|| state.apps.get(&caller).cloned()).unwrap_or_else(|| "default".to_owned())
}

/// Renews every owner at `caller`.
fn touch(registrations: &Registrations, caller: IpAddr) {
    let now = Instant::now();
    for ((ip, _), owner) in registrations.lock().owners.iter_mut() {
        if *ip == caller {
            owner.seen = now;
        }
    }
}

fn publish(registrations: &Registrations, caller: IpAddr, body: Body) -> Result<(), String> {
    let name = body.service_name.filter(|it| !it.is_empty()).ok_or("serviceName is missing")?;
    let port = match &body.port {
        Some(serde_json::Value::String(text)) => text.parse::<u16>().ok(),
        Some(serde_json::Value::Number(number)) => number.as_u64().and_then(|it| u16::try_from(it).ok()),
        _ => None,
    }
    .filter(|it| *it > 0)
    .ok_or_else(|| format!("port is missing or not a port number: {:?}", body.port))?;
    let meta = body.provider_meta_info.unwrap_or_default();
    let protocol = body.protocol_type.or(meta.protocol).unwrap_or_else(|| "http".to_owned()).to_ascii_lowercase();
    if !ir::Protocol::ALL.iter().any(|it| it.as_str() == protocol) {
        return Err(format!("protocolType `{protocol}` is none of http, http2, grpc, bolt, dubbo, tcp"));
    }
    let host = body.host.unwrap_or_else(|| caller.to_string());
    if host.parse::<IpAddr>().is_err() {
        return Err(format!("host `{host}` is not an IP address"));
    }
    let mut weight = 100;
    let mut labels = BTreeMap::new();
    for (key, value) in meta.properties {
        let text = match value {
            serde_json::Value::String(it) => it,
            other => other.to_string(),
        };
        if key == "weight" {
            weight = text.parse().map_err(|_| format!("weight `{text}` is not a number"))?;
        } else {
            labels.insert(key, text);
        }
    }
    // SOFARPC's `interface:version@DEFAULT`: the part before `@` is the RPC key.
    let name = match protocol.as_str() {
        "bolt" | "dubbo" => name.split('@').next().unwrap_or(&name).to_owned(),
        _ => name,
    };
    let published = Published { host, port, service_port: body.service_port, protocol, weight, labels };
    let changed = {
        let mut state = registrations.lock();
        let app = owner_app(&state, caller, body.app_name.as_deref().or(meta.app_name.as_deref()));
        let owner = state.owners.entry((caller, app)).or_insert_with(|| Owner { seen: Instant::now(), services: BTreeMap::new() });
        owner.seen = Instant::now();
        owner.services.insert(name, published.clone()) != Some(published)
    };
    if changed {
        registrations.bump();
    }
    Ok(())
}

/// A service's routable instances as MOSN's subscribe lists them: `ip:port?key=value&...`.
fn instances_of(mesh: &ir::Mesh, name: &str) -> Vec<String> {
    let key = name.split('@').next().unwrap_or(name);
    let Some(service) = mesh.services.iter().find(|it| it.name == key || it.host == key) else { return Vec::new() };
    service
        .instances
        .iter()
        .map(|id| &mesh.instances[id.index()])
        .filter(|it| it.health.routable())
        .map(|it| {
            let mut params = vec![format!("weight={}", it.weight)];
            params.extend(it.labels.iter().map(|(key, value)| format!("{key}={value}")));
            format!("{}:{}?{}", it.address, it.port, params.join("&"))
        })
        .collect()
}

fn success(mut value: serde_json::Value) -> Response<Full<Bytes>> {
    if let Some(map) = value.as_object_mut() {
        map.insert("success".to_owned(), serde_json::Value::Bool(true));
    }
    json(StatusCode::OK, &value)
}

fn failure(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "success": false, "errorMessage": message }))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string(value).unwrap_or_default();
    text.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The mesh directory with the registered instances as one more registry.
#[derive(Debug)]
pub struct Overlay {
    /// The directory.
    pub disk: crate::source::DiskFs,
    /// The registered instances, as a native registry file.
    pub registry: Option<String>,
}

impl crate::source::Vfs for Overlay {
    fn read(&self, path: &str) -> std::io::Result<Vec<u8>> {
        match (&self.registry, path) {
            (Some(_), "mesh.toml") => {
                let mut manifest = self.disk.read(path)?;
                manifest.extend_from_slice(
                    format!("\n[[registry]]\nname = \"{REGISTRY}\"\nkind = \"native\"\npath = \"{REGISTRY_FILE}\"\npriority = 1000\n")
                        .as_bytes(),
                );
                Ok(manifest)
            }
            (Some(registry), REGISTRY_FILE) => Ok(registry.clone().into_bytes()),
            _ => self.disk.read(path),
        }
    }

    fn mesh_files(&self) -> std::io::Result<Vec<String>> {
        self.disk.mesh_files()
    }

    fn describe(&self) -> String {
        self.disk.describe()
    }
}
