//! `meshc pilot`: serves a mesh directory's IR over Envoy's aggregated discovery service (ADS,
//! state of the world and delta), recompiling when the directory changes.
//!
//! - [`ads`]: the two gRPC streams, with per-type versions and nonces, ACK and NACK;
//! - [`watch`]: the directory's files polled, changes debounced, the mesh compiled again
//!   (a mesh that fails its checks leaves the last good one in place);
//! - [`admin`]: what every client was sent, ACKed and NACKed, and the last compile's result;
//! - [`registration`]: applications publish and unpublish their instances (MOSN's local
//!   registry API), which join the mesh as one more registry.
//!
//! Pilot is the one part of the compiler package that runs async code; the front-end it calls
//! stays synchronous and pure.

mod admin;
mod ads;
pub mod registration;
pub mod served;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use meshc_codegen::emit::xds::{self, Client};
use meshc_codegen::ir;
use sha2::{Digest, Sha256};
use tokio::sync::watch as channel;

/// Arguments of `meshc pilot`.
#[derive(Debug, clap::Args)]
pub struct PilotArgs {
    /// The mesh directory (holding mesh.toml), watched for changes.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where ADS (gRPC) listens.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// Where the admin endpoint (HTTP) listens: /status, /clients, /stats/prometheus.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    /// Quiet period after a change before recompiling, in milliseconds (Istio's
    /// PILOT_DEBOUNCE_AFTER).
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Longest a stream of changes may delay a recompile, in milliseconds (Istio's
    /// PILOT_DEBOUNCE_MAX).
    #[arg(long, default_value_t = 10_000)]
    pub debounce_max_ms: u64,
    /// Where the registration API (HTTP/JSON, MOSN's paths) listens.
    #[arg(long, default_value = "127.0.0.1:13330")]
    pub registration: SocketAddr,
    /// How long a registered instance lives after its owner's last request.
    #[arg(long, default_value_t = 30)]
    pub registration_ttl_s: u64,
}

/// Runs `meshc pilot` until interrupted.
pub fn run(args: &PilotArgs) -> ExitCode {
    let debounce = watch::Debounce { quiet: Duration::from_millis(args.debounce_ms), max: Duration::from_millis(args.debounce_max_ms) };
    let (before, reparse, mut compilation) = watch::compile_first(&args.dir, debounce);
    compilation.sources.show_under(&args.dir);
    crate::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let Some(mesh) = compilation.ir else {
        eprintln!("error: the mesh in {} does not compile; pilot needs a good first version", args.dir.display());
        return ExitCode::from(if compilation.io_error { 2 } else { 1 });
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(it) => it,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let pilot = Pilot::new(mesh, Duration::from_secs(args.registration_ttl_s));
        let ads = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(it) => it,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.listen);
                return ExitCode::from(2);
            }
        };
        let admin = match tokio::net::TcpListener::bind(args.admin).await {
            Ok(it) => it,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.admin);
                return ExitCode::from(2);
            }
        };
        let registration = match tokio::net::TcpListener::bind(args.registration).await {
            Ok(it) => it,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.registration);
                return ExitCode::from(2);
            }
        };
        eprintln!(
            "meshc pilot: serving {} ({} workloads) over ADS on {}, admin on {}, registration API on {}",
            args.dir.display(),
            pilot.config().mesh.workloads.len(),
            args.listen,
            args.admin,
            args.registration
        );
        tokio::spawn(registration::serve(pilot.clone(), registration));
        tokio::spawn(watch::watch(pilot.clone(), args.dir.clone(), debounce, before, reparse));
        tokio::spawn(admin::serve(pilot.clone(), admin));
        tokio::select! {
            result = ads::serve(pilot, ads) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: ADS stopped: {err}");
                    ExitCode::from(2)
                }
            },
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

/// One compiled version of the mesh, and what each kind of client of each workload is
/// served from it, built when first asked for.
#[derive(Debug)]
pub struct Config {
    /// 1 for the mesh Pilot started with, one more for each accepted change.
    pub generation: u64,
    /// The IR.
    pub mesh: ir::Mesh,
    served: Mutex<BTreeMap<(String, ClientKey), Arc<Served>>>,
}

/// What selects a workload's resources besides the workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClientKey {
    grpc: bool,
    outbound: Option<(String, u16)>,
}

/// A workload's resources by type URL, then by name, each with its version (a digest of its
/// bytes, so the same resource has the same version across recompiles and restarts).
#[derive(Debug, Default)]
pub struct Served {
    by_type: BTreeMap<&'static str, BTreeMap<String, Versioned>>,
}

/// A resource and its version.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The resource.
    pub resource: Any,
    /// A digest of its bytes.
    pub version: String,
}

impl Served {
    /// The resources of `type_url`.
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Versioned>> {
        self.by_type.get(type_url)
    }
}

impl Config {
    fn new(generation: u64, mesh: ir::Mesh) -> Config {
        Config { generation, mesh, served: Mutex::new(BTreeMap::new()) }
    }

    /// What `client` is served, computed once per config.
    pub fn served(&self, client: &Identity) -> Option<Arc<Served>> {
        let key = (client.workload.clone(), ClientKey { grpc: client.client == Client::Grpc, outbound: client.outbound.clone() });
        let mut cache = self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(it) = cache.get(&key) {
            return Some(it.clone());
        }
        let workload = self.mesh.workloads.iter().find(|it| it.name == client.workload)?;
        let mut resources = xds::workload_resources(&self.mesh, workload, client.client);
        if let Some((ip, port)) = &client.outbound {
            resources.set_outbound_address(ip, *port);
        }
        let mut served = Served::default();
        for (type_url, items) in resources.by_type() {
            let entries = items
                .into_iter()
                .map(|(name, resource)| {
                    let version = digest(&[&resource.value]);
                    (name, Versioned { resource, version })
                })
                .collect();
            served.by_type.insert(type_url, entries);
        }
        let served = Arc::new(served);
        cache.insert(key, served.clone());
        Some(served)
    }
}

/// The first 16 hex digits of the SHA-256 of the parts.
fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().iter().take(8).map(|it| format!("{it:02x}")).collect()
}

/// Who a stream's node is: its workload and what kind of client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node id as sent.
    pub node_id: String,
    /// The workload it names.
    pub workload: String,
    /// Envoy or a proxyless gRPC client.
    pub client: Client,
    /// Where an Envoy wants its `outbound` listener (node metadata `meshc.outbound`).
    pub outbound: Option<(String, u16)>,
}

/// Names the workload of a node: its id is the workload's name, or Istio's
/// `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`, whose pod is the workload's name
/// or starts with it and a dash (a Deployment's pods). Envoy (user agent `envoy`) and meshc's
/// own sidecar get Envoy's resources, anything else gRPC's; Istio's node metadata
/// `GENERATOR: grpc` says gRPC too.
pub fn identify(mesh: &ir::Mesh, node: &Node) -> Result<Identity, String> {
    let id = node.id.as_str();
    let workload = if let Some(it) = mesh.workloads.iter().find(|it| it.name == id) {
        it
    } else {
        let parts: Vec<&str> = id.split('~').collect();
        let found = match parts[..] {
            [_, _, pod_namespace, _] => {
                let (pod, namespace) = pod_namespace.split_once('.').unwrap_or((pod_namespace, ""));
                mesh.workloads
                    .iter()
                    .filter(|it| namespace.is_empty() || it.namespace == namespace)
                    .filter(|it| pod == it.name || pod.strip_prefix(it.name.as_str()).is_some_and(|rest| rest.starts_with('-')))
                    .max_by_key(|it| it.name.len())
            }
            _ => None,
        };
        let Some(found) = found else {
            let known: Vec<&str> = mesh.workloads.iter().map(|it| it.name.as_str()).collect();
            return Err(format!("node `{id}` names no workload of mesh `{}` (it has {})", mesh.name, known.join(", ")));
        };
        found
    };
    let metadata = |key: &str| {
        node.metadata.as_ref().and_then(|it| it.fields.get(key)).and_then(|it| match &it.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(text)) => Some(text.clone()),
            _ => None,
        })
    };
    let grpc = metadata("GENERATOR").is_some_and(|it| it == "grpc") || !matches!(node.user_agent_name.as_str(), "envoy" | "meshc");
    let outbound = match metadata("meshc.outbound") {
        None => None,
        Some(text) => {
            let address: SocketAddr = text.parse().map_err(|_| format!("node metadata `meshc.outbound` is `{text}`, not IP:PORT"))?;
            Some((address.ip().to_string(), address.port()))
        }
    };
    Ok(Identity {
        node_id: id.to_owned(),
        workload: workload.name.clone(),
        client: if grpc { Client::Grpc } else { Client::Envoy },
        outbound,
    })
}

/// Pilot's shared state.
#[derive(Debug)]
pub struct Pilot {
    config: channel::Sender<Arc<Config>>,
    status: Mutex<CompileStatus>,
    clients: Mutex<BTreeMap<u64, ClientStatus>>,
    next_stream: AtomicU64,
    /// NACKs received, in total.
    nacks: AtomicU64,
    /// Responses sent, in total.
    pushes: AtomicU64,
    /// Instances registered through the registration API.
    pub registrations: registration::Registrations,
}

/// The last compile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CompileStatus {
    /// The generation being served.
    pub generation: u64,
    /// Whether the last attempt succeeded; when not, `error` says why and the last good
    /// generation is still served.
    pub ok: bool,
    /// The diagnostics of a failed attempt, rendered.
    pub error: Option<String>,
    /// When the last attempt ended, in seconds since the Unix epoch.
    pub at: u64,
}

/// What a connected client was sent and answered, per type URL.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientStatus {
    /// The node id.
    pub node: String,
    /// The workload.
    pub workload: String,
    /// `envoy` or `grpc`.
    pub client: &'static str,
    /// `sotw` or `delta`.
    pub transport: &'static str,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One type's exchange with a client.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TypeStatus {
    /// The names subscribed to (`*` for all).
    pub subscribed: Vec<String>,
    /// The version last sent.
    pub sent: Option<String>,
    /// The version last ACKed.
    pub acked: Option<String>,
    /// NACKs received.
    pub nacks: u64,
    /// The error of the last NACK.
    pub last_nack: Option<String>,
    /// SYNCED (the last version sent was ACKed), NACKED, or STALE (an answer is awaited).
    pub state: &'static str,
}

impl Pilot {
    /// A Pilot serving `mesh` as generation 1, whose registered instances live `ttl` after
    /// their owner's last request.
    pub fn new(mesh: ir::Mesh, ttl: Duration) -> Arc<Pilot> {
        let (config, _) = channel::channel(Arc::new(Config::new(1, mesh)));
        Arc::new(Pilot {
            config,
            status: Mutex::new(CompileStatus { generation: 1, ok: true, error: None, at: now() }),
            clients: Mutex::new(BTreeMap::new()),
            next_stream: AtomicU64::new(1),
            nacks: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            registrations: registration::Registrations::new(ttl),
        })
    }

    /// The config being served.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Serves `mesh` from now on.
    pub fn accept(&self, mesh: ir::Mesh) {
        let generation = self.config().generation + 1;
        self.config.send_replace(Arc::new(Config::new(generation, mesh)));
        *self.lock_status() = CompileStatus { generation, ok: true, error: None, at: now() };
    }

    /// Records a recompile that changed nothing served (a comment, a file touched, or a
    /// mistake undone); true when the compile before it had failed, so that the mesh compiles
    /// again.
    pub fn accept_unchanged(&self) -> bool {
        let mut status = self.lock_status();
        let failed_before = !status.ok;
        status.ok = true;
        status.error = None;
        status.at = now();
        failed_before
    }

    /// Records a change that did not compile; the last good config stays.
    pub fn reject(&self, error: String) {
        let mut status = self.lock_status();
        status.ok = false;
        status.error = Some(error);
        status.at = now();
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, CompileStatus> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientStatus>> {
        self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscribe(&self) -> channel::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    fn stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |it| it.as_secs())
}
