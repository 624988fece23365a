//! The xDS emitter: a workload's view of the IR as Envoy's v3 resources (Cluster,
//! ClusterLoadAssignment, Listener, RouteConfiguration), the messages `meshc pilot` serves
//! and `meshc build --emit xds` writes as JSON.
//!
//! What a workload sees is what its compiled sidecar holds: the clusters it calls, their
//! endpoints, and the HTTP route tables of the services it calls, under the hosts that select
//! them. Names are Istio's, so tools that know Istio read them: clusters are
//! `outbound|<port>|<subset>|<host>`, virtual hosts `<host>:<port>`, and the one route
//! configuration of the `outbound` listener is named `outbound`.
//!
//! Two kinds of client read them ([`Client`]). Envoy gets a listener at the compiled
//! sidecar's `outbound` address. A proxyless gRPC client gets an API listener per service
//! port, named `<host>:<port>` (and `<host>` alone for a single-port service, or for port 80
//! of several, as Host headers go) so that `xds:///<host>` resolves, holding only what gRPC's xDS support accepts: no filter it would
//! refuse, load balancers it implements, certificates from its certificate providers.
//!
//! What the IR says that xDS does not carry is left out rather than approximated, and listed
//! in mesh-specs/README.md: RPC (Bolt, Dubbo) route tables, TCP listeners, inbound listeners
//! and authorization. Retries' `any_method`, which Envoy has no field for, is route metadata
//! that only the compiled sidecar reads.

mod canonical;
mod json;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::{Message, Name};

pub use json::to_json;

use crate::ir::{self, Mesh, Workload};

/// Which kind of xDS client the resources are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// Envoy, as a sidecar in place of the compiled one.
    Envoy,
    /// A proxyless gRPC client (grpc-go, grpc-java, grpcio, grpc-js).
    Grpc,
}

/// The type URLs of the four resource types, in the order ADS sends them (CDS, EDS, LDS, RDS).
pub const TYPE_URLS: [&str; 4] = [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION];

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment`.
pub const CLUSTER_LOAD_ASSIGNMENT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `type.googleapis.com/envoy.config.listener.v3.Listener`.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `type.googleapis.com/envoy.config.route.v3.RouteConfiguration`.
pub const ROUTE_CONFIGURATION: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The name of the Envoy listener's route configuration and of the listener itself.
pub const OUTBOUND: &str = "outbound";

/// The compiled sidecar's `outbound` listener address, which the Envoy listener takes too.
const OUTBOUND_ADDRESS: (&str, u32) = ("127.0.0.1", 15001);

/// Istio's SDS names for a workload's certificate and the mesh's roots.
const SDS_CERTIFICATE: &str = "default";
const SDS_ROOTS: &str = "ROOTCA";

/// A workload's resources, each list sorted by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// CDS.
    pub clusters: Vec<cluster::Cluster>,
    /// EDS, one per cluster.
    pub endpoints: Vec<endpoint::ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<listener::Listener>,
    /// RDS.
    pub routes: Vec<route::RouteConfiguration>,
}

impl Resources {
    /// Moves Envoy's `outbound` listener to another address (a second Envoy on one machine,
    /// or a test's free port); a gRPC client's listeners have none.
    pub fn set_outbound_address(&mut self, ip: &str, port: u16) {
        for listener in self.listeners.iter_mut().filter(|it| it.name == OUTBOUND) {
            listener.address = Some(socket_address(ip, u32::from(port)));
        }
    }

    /// Each resource packed as the `Any` a discovery response carries, by type URL and
    /// name, in [`TYPE_URLS`] order.
    pub fn by_type(&self) -> Vec<(&'static str, Vec<(String, Any)>)> {
        fn pack<T: Message + Name>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<(String, Any)> {
            items.iter().map(|it| (name(it).to_owned(), any(it))).collect()
        }
        vec![
            (CLUSTER, pack(&self.clusters, |it| &it.name)),
            (CLUSTER_LOAD_ASSIGNMENT, pack(&self.endpoints, |it| &it.cluster_name)),
            (LISTENER, pack(&self.listeners, |it| &it.name)),
            (ROUTE_CONFIGURATION, pack(&self.routes, |it| &it.name)),
        ]
    }
}

/// What `workload`'s clients of kind `client` are served.
pub fn workload_resources(mesh: &Mesh, workload: &Workload, client: Client) -> Resources {
    let emitter = Emitter { mesh, workload, client };
    let mut resources = Resources::default();
    for id in &workload.clusters {
        let cluster = &mesh.clusters[id.index()];
        resources.clusters.push(emitter.cluster(cluster));
        resources.endpoints.push(emitter.load_assignment(cluster));
    }
    let tables: Vec<&ir::RouteTable> = workload
        .outbound
        .iter()
        .map(|id| &mesh.route_tables[id.index()])
        .filter(|it| matches!(it.kind, ir::RouteTableKind::Http { .. }))
        .collect();
    resources.routes.push(emitter.route_configuration(&tables));
    match client {
        Client::Envoy => resources.listeners.push(emitter.outbound_listener(&tables)),
        Client::Grpc => {
            for table in &tables {
                let ir::RouteTableKind::Http { service, domains, .. } = &table.kind else { continue };
                let host = &mesh.services[service.index()].host;
                resources.listeners.push(emitter.api_listener(table.name.clone(), &tables));
                // The bare host too where it selects this table, as for a Host header: a
                // single-port service, or the port-80 one of several.
                if domains.contains(host) {
                    resources.listeners.push(emitter.api_listener(host.clone(), &tables));
                }
            }
        }
    }
    resources.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    resources.endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    resources.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    resources.routes.sort_by(|a, b| a.name.cmp(&b.name));
    resources
}

/// Each virtual host of `workload`'s Envoy route configuration, by name, with its digest and
/// domains: what a compiled sidecar holds, which its xDS client compares with what Pilot
/// serves to tell a changed host (served by the interpreted matcher) from one still as
/// compiled, and a host no longer served (404, as Envoy would).
pub fn virtual_host_digests(mesh: &Mesh, workload: &Workload) -> Vec<(String, String, Vec<String>)> {
    let emitter = Emitter { mesh, workload, client: Client::Envoy };
    let tables: Vec<&ir::RouteTable> = workload.outbound.iter().map(|id| &mesh.route_tables[id.index()]).collect();
    let mut digests: Vec<(String, String, Vec<String>)> = emitter
        .route_configuration(&tables)
        .virtual_hosts
        .iter()
        .map(|it| (it.name.clone(), virtual_host_digest(it), it.domains.clone()))
        .collect();
    digests.sort();
    digests
}

/// SHA-256, in hex, of a virtual host's canonical bytes ([`canonical::canonical_bytes`]),
/// which the runtime's xDS client computes the same way (`runtime/src/overrides.rs`); shared
/// test vectors pin the two hashes together.
pub fn virtual_host_digest(host: &route::VirtualHost) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(canonical::canonical_bytes(host)).iter().map(|it| format!("{it:02x}")).collect()
}

/// The JSON files `meshc build --emit xds` writes for each workload, under
/// `<workload>/` (of `OUT/xds/`): `cds.json`, `eds.json`, `lds.json` and `rds.json` for Envoy, and
/// `grpc-lds.json` for proxyless gRPC clients (their other resources are the same but for
/// load balancers and certificates, and `grpc-cds.json` holds their clusters). Each is a
/// discovery response in Envoy's JSON (proto field names), as Envoy's file-based
/// subscriptions read them.
pub fn json_files(mesh: &Mesh, workloads: &[&Workload]) -> Vec<super::GeneratedFile> {
    let mut files = Vec::new();
    for workload in workloads {
        let envoy = workload_resources(mesh, workload, Client::Envoy);
        let grpc = workload_resources(mesh, workload, Client::Grpc);
        let mut write = |name: &str, type_url: &str, resources: Vec<Any>| {
            let response = serde_json::json!({
                "version_info": "0",
                "type_url": type_url,
                "resources": resources.iter().map(to_json).collect::<Vec<_>>(),
            });
            let mut text = serde_json::to_string_pretty(&response).unwrap_or_default();
            text.push('\n');
            files.push(super::GeneratedFile { path: format!("{}/{name}", workload.name), text });
        };
        write("cds.json", CLUSTER, envoy.clusters.iter().map(any).collect());
        write("eds.json", CLUSTER_LOAD_ASSIGNMENT, envoy.endpoints.iter().map(any).collect());
        write("lds.json", LISTENER, envoy.listeners.iter().map(any).collect());
        write("rds.json", ROUTE_CONFIGURATION, envoy.routes.iter().map(any).collect());
        write("grpc-cds.json", CLUSTER, grpc.clusters.iter().map(any).collect());
        write("grpc-lds.json", LISTENER, grpc.listeners.iter().map(any).collect());
    }
    files
}

/// A message packed into an `Any`.
pub fn any<T: Message + Name>(message: &T) -> Any {
    Any { type_url: T::type_url(), value: message.encode_to_vec() }
}

struct Emitter<'a> {
    mesh: &'a Mesh,
    workload: &'a Workload,
    client: Client,
}

impl Emitter<'_> {
    fn cluster(&self, cluster: &ir::Cluster) -> cluster::Cluster {
        let policy = &cluster.policy;
        let mut out = cluster::Cluster {
            name: cluster.name.clone(),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(cluster::cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
            connect_timeout: Some(duration(policy.connect_timeout_ms)),
            circuit_breakers: Some(circuit_breakers(&policy.limits)),
            ..Default::default()
        };
        self.load_balancer(&policy.load_balancer, policy.warmup_ms, &mut out);
        if let Some(detection) = &policy.outlier_detection {
            out.outlier_detection = Some(outlier_detection(detection));
            // Istio: below min_health_percent healthy, Envoy's panic mode ignores ejections.
            out.common_lb_config = Some(cluster::cluster::CommonLbConfig {
                healthy_panic_threshold: Some(types::Percent { value: f64::from(detection.min_health_percent) }),
                ..Default::default()
            });
        }
        if let Some(check) = &policy.health_check {
            out.health_checks.push(health_check(check));
        }
        let http2 = matches!(cluster.protocol, ir::Protocol::Http2 | ir::Protocol::Grpc);
        if http2 || policy.limits.max_requests_per_connection.is_some() {
            let options = upstream_http::HttpProtocolOptions {
                common_http_protocol_options: policy.limits.max_requests_per_connection.map(|it| core::HttpProtocolOptions {
                    max_requests_per_connection: Some(UInt32Value { value: it }),
                    ..Default::default()
                }),
                upstream_protocol_options: Some(upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    upstream_http::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(if http2 {
                            upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Default::default(),
                            )
                        } else {
                            upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                Default::default(),
                            )
                        }),
                    },
                )),
                ..Default::default()
            };
            out.typed_extension_protocol_options = [(upstream_http::HttpProtocolOptions::full_name(), any(&options))].into_iter().collect();
        }
        if policy.tls.mode != ir::TlsMode::Disable {
            let sni = policy.tls.sni.clone().unwrap_or_default();
            out.transport_socket = Some(self.upstream_tls(policy.tls.mode, sni, &cluster.peer_principals));
        }
        out
    }

    /// The load balancer and its settings. A gRPC client gets one it implements: Maglev
    /// becomes a ring hash, random becomes round robin.
    fn load_balancer(&self, balancer: &ir::LoadBalancer, warmup_ms: Option<u64>, out: &mut cluster::Cluster) {
        use cluster::cluster::{LbConfig, LbPolicy};
        let slow_start =
            warmup_ms.map(|it| cluster::cluster::SlowStartConfig { slow_start_window: Some(duration(it)), ..Default::default() });
        let grpc = self.client == Client::Grpc;
        let (policy, config) = match balancer {
            ir::LoadBalancer::RoundRobin => (LbPolicy::RoundRobin, None),
            ir::LoadBalancer::Random if grpc => (LbPolicy::RoundRobin, None),
            ir::LoadBalancer::Random => (LbPolicy::Random, None),
            ir::LoadBalancer::LeastRequest => (LbPolicy::LeastRequest, None),
            ir::LoadBalancer::RingHash { min_ring_size, .. } => (
                LbPolicy::RingHash,
                Some(LbConfig::RingHashLbConfig(cluster::cluster::RingHashLbConfig {
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: *min_ring_size }),
                    ..Default::default()
                })),
            ),
            ir::LoadBalancer::Maglev { .. } if grpc => (LbPolicy::RingHash, None),
            ir::LoadBalancer::Maglev { table_size, .. } => (
                LbPolicy::Maglev,
                Some(LbConfig::MaglevLbConfig(cluster::cluster::MaglevLbConfig {
                    table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: *table_size }),
                })),
            ),
        };
        out.lb_policy = policy as i32;
        out.lb_config = config;
        if slow_start.is_some() && !grpc {
            out.lb_config = match policy {
                LbPolicy::RoundRobin => {
                    Some(LbConfig::RoundRobinLbConfig(cluster::cluster::RoundRobinLbConfig { slow_start_config: slow_start }))
                }
                LbPolicy::LeastRequest => Some(LbConfig::LeastRequestLbConfig(cluster::cluster::LeastRequestLbConfig {
                    slow_start_config: slow_start,
                    ..Default::default()
                })),
                _ => out.lb_config.take(),
            };
        }
    }

    /// TLS towards a cluster's endpoints: Envoy takes its certificate and roots over SDS
    /// under Istio's names (so a Pilot without SDS leaves the cluster warming rather than
    /// sending plaintext); a gRPC client takes them from its certificate provider `default`.
    fn upstream_tls(&self, mode: ir::TlsMode, sni: String, principals: &[String]) -> core::TransportSocket {
        use tls::common_tls_context::ValidationContextType;
        let mutual = matches!(mode, ir::TlsMode::Mutual | ir::TlsMode::IstioMutual);
        let sans: Vec<tls::SubjectAltNameMatcher> = if mode == ir::TlsMode::IstioMutual {
            let mut names: Vec<String> = principals.iter().map(|it| format!("spiffe://{it}")).collect();
            if names.is_empty() {
                names.push(format!("spiffe://{}/", self.mesh.trust_domain));
            }
            names
                .into_iter()
                .map(|name| {
                    let pattern = if principals.is_empty() {
                        matcher::string_matcher::MatchPattern::Prefix(name)
                    } else {
                        matcher::string_matcher::MatchPattern::Exact(name)
                    };
                    tls::SubjectAltNameMatcher {
                        san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                        matcher: Some(matcher::StringMatcher { match_pattern: Some(pattern), ..Default::default() }),
                        oid: String::new(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut context = tls::CommonTlsContext::default();
        match self.client {
            Client::Envoy => {
                if mutual {
                    context.tls_certificate_sds_secret_configs.push(sds(SDS_CERTIFICATE));
                }
                context.validation_context_type =
                    Some(ValidationContextType::CombinedValidationContext(tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_typed_subject_alt_names: sans,
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(SDS_ROOTS)),
                        ..Default::default()
                    }));
            }
            Client::Grpc => {
                let provider =
                    || tls::CertificateProviderPluginInstance { instance_name: "default".to_owned(), certificate_name: String::new() };
                if mutual {
                    context.tls_certificate_provider_instance = Some(provider());
                }
                context.validation_context_type = Some(ValidationContextType::ValidationContext(tls::CertificateValidationContext {
                    ca_certificate_provider_instance: Some(provider()),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }));
            }
        }
        let upstream = tls::UpstreamTlsContext { common_tls_context: Some(context), sni, ..Default::default() };
        core::TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&upstream))),
        }
    }

    /// A cluster's endpoints by locality. Every endpoint of the cluster is listed with its
    /// registry health, so Envoy's view of it matches the compiled sidecar's; an endpoint of
    /// weight 0 takes no traffic and is left out (xDS weights start at 1). A locality's weight
    /// is the sum of its endpoints', as gRPC requires one.
    fn load_assignment(&self, cluster: &ir::Cluster) -> endpoint::ClusterLoadAssignment {
        // Keyed by the parts that are known and not empty (an empty part is an unknown one),
        // borrowed: no strings made per endpoint, and none compared where a part is unknown.
        // (Comparing two empty `String`s is not free: their pointers are dangling, and
        // glibc's AVX-512 memcmp took 80 ns for each such comparison on an AMD EPYC, a third
        // of Pilot's work for a 10,000-endpoint assignment.)
        type Key<'a> = [Option<&'a str>; 3];
        let mut localities: BTreeMap<Key<'_>, Vec<endpoint::LbEndpoint>> = BTreeMap::new();
        for id in &cluster.endpoints {
            let instance = &self.mesh.instances[id.index()];
            if instance.weight == 0 {
                continue;
            }
            let locality = &instance.locality;
            let key = [&locality.region, &locality.zone, &locality.subzone].map(|it| it.as_deref().filter(|it| !it.is_empty()));
            let health = match instance.health {
                ir::Health::Healthy => core::HealthStatus::Healthy,
                ir::Health::Unknown => core::HealthStatus::Unknown,
                ir::Health::Draining => core::HealthStatus::Draining,
                ir::Health::Unhealthy => core::HealthStatus::Unhealthy,
            };
            localities.entry(key).or_default().push(endpoint::LbEndpoint {
                health_status: health as i32,
                load_balancing_weight: Some(UInt32Value { value: instance.weight }),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
                    address: Some(socket_address(&instance.address, u32::from(instance.port))),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        let endpoints = localities
            .into_iter()
            .map(|([region, zone, sub_zone], lb_endpoints)| {
                let [region, zone, sub_zone] = [region, zone, sub_zone].map(|it| it.unwrap_or_default().to_owned());
                let weight = lb_endpoints
                    .iter()
                    .filter_map(|it| it.load_balancing_weight.as_ref())
                    .map(|it| it.value)
                    .fold(0u32, u32::saturating_add);
                endpoint::LocalityLbEndpoints {
                    locality: Some(core::Locality { region, zone, sub_zone }),
                    lb_endpoints,
                    load_balancing_weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                }
            })
            .collect();
        endpoint::ClusterLoadAssignment { cluster_name: cluster.name.clone(), endpoints, ..Default::default() }
    }

    /// Envoy's listener at the compiled sidecar's `outbound` address.
    fn outbound_listener(&self, tables: &[&ir::RouteTable]) -> listener::Listener {
        let manager = self.connection_manager(tables);
        listener::Listener {
            name: OUTBOUND.to_owned(),
            address: Some(socket_address(OUTBOUND_ADDRESS.0, OUTBOUND_ADDRESS.1)),
            filter_chains: vec![listener::FilterChain {
                filters: vec![listener::Filter {
                    name: "envoy.filters.network.http_connection_manager".to_owned(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(any(&manager))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A proxyless gRPC client's listener for one target name.
    fn api_listener(&self, name: String, tables: &[&ir::RouteTable]) -> listener::Listener {
        let manager = self.connection_manager(tables);
        listener::Listener { name, api_listener: Some(listener::ApiListener { api_listener: Some(any(&manager)) }), ..Default::default() }
    }

    /// An HTTP connection manager taking the `outbound` route configuration over ADS, with
    /// the HTTP filters the routes use and the router last.
    fn connection_manager(&self, tables: &[&ir::RouteTable]) -> hcm::HttpConnectionManager {
        let routes = || tables.iter().flat_map(|it| &it.routes);
        let mut filters = Vec::new();
        if routes().any(|it| it.fault.is_some()) {
            filters.push(http_filter("envoy.filters.http.fault", any(&fault::HttpFault::default())));
        }
        if self.client == Client::Envoy && routes().any(|it| it.rate_limit.is_some()) {
            let config = local_ratelimit::LocalRateLimit { stat_prefix: "http_local_rate_limiter".to_owned(), ..Default::default() };
            filters.push(http_filter("envoy.filters.http.local_ratelimit", any(&config)));
        }
        filters.push(http_filter("envoy.filters.http.router", any(&router::Router::default())));
        hcm::HttpConnectionManager {
            stat_prefix: OUTBOUND.to_owned(),
            http_filters: filters,
            // `telemetry { request_id off }`: Envoy's default is to add one.
            generate_request_id: (!self.workload.telemetry.request_id)
                .then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(ads()),
                route_config_name: OUTBOUND.to_owned(),
            })),
            ..Default::default()
        }
    }

    /// The `outbound` route configuration: one virtual host per HTTP route table, under the
    /// hosts that select it from this workload's namespace.
    fn route_configuration(&self, tables: &[&ir::RouteTable]) -> route::RouteConfiguration {
        let mut hosts = Vec::new();
        for table in tables {
            let ir::RouteTableKind::Http { service, domains, local_domains, .. } = &table.kind else { continue };
            let same_namespace = self.mesh.services[service.index()].namespace == self.workload.namespace;
            let mut names: Vec<String> = domains.iter().chain(local_domains.iter().filter(|_| same_namespace)).cloned().collect();
            names.sort();
            hosts.push(route::VirtualHost {
                name: table.name.clone(),
                domains: names,
                routes: table.routes.iter().flat_map(|it| self.routes(it)).collect(),
                ..Default::default()
            });
        }
        route::RouteConfiguration {
            name: OUTBOUND.to_owned(),
            virtual_hosts: hosts,
            // The compiled sidecar answers 404 for an unknown host rather than checking
            // clusters; Envoy need not either.
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        }
    }

    /// One Envoy route per alternative of an IR route (Envoy's match is a conjunction).
    fn routes(&self, ir_route: &ir::Route) -> Vec<route::Route> {
        let everything = [ir::Match::default()];
        let alternatives = if ir_route.matches.is_empty() { &everything[..] } else { &ir_route.matches[..] };
        let action = self.action(ir_route);
        let mut typed_per_filter_config = Vec::new();
        // Faults and rate limits apply to what a route forwards (the checker drops them from
        // routes that answer locally, E0212); a sidecar refuses them on any other route.
        let forwards = matches!(ir_route.action, ir::Action::Forward { .. });
        if forwards && let Some(fault) = &ir_route.fault {
            typed_per_filter_config.push(("envoy.filters.http.fault".to_owned(), any(&http_fault(fault))));
        }
        if self.client == Client::Envoy
            && forwards
            && let Some(limit) = &ir_route.rate_limit
        {
            typed_per_filter_config.push(("envoy.filters.http.local_ratelimit".to_owned(), any(&rate_limit(limit))));
        }
        alternatives
            .iter()
            .map(|alternative| route::Route {
                name: ir_route.name.clone(),
                r#match: Some(route_match(alternative)),
                action: Some(action.clone()),
                request_headers_to_add: header_options(&ir_route.request_headers),
                request_headers_to_remove: ir_route.request_headers.remove.clone(),
                response_headers_to_add: header_options(&ir_route.response_headers),
                response_headers_to_remove: ir_route.response_headers.remove.clone(),
                typed_per_filter_config: typed_per_filter_config.iter().cloned().collect(),
                metadata: any_method_metadata(&ir_route.retries),
                ..Default::default()
            })
            .collect()
    }

    fn action(&self, ir_route: &ir::Route) -> route::route::Action {
        match &ir_route.action {
            ir::Action::Forward { destinations, rewrite } => {
                route::route::Action::Route(self.route_action(ir_route, destinations, rewrite.as_ref()))
            }
            ir::Action::Redirect { scheme, authority, port, path, status } => {
                use route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
                let code = match status {
                    302 => RedirectResponseCode::Found,
                    303 => RedirectResponseCode::SeeOther,
                    307 => RedirectResponseCode::TemporaryRedirect,
                    308 => RedirectResponseCode::PermanentRedirect,
                    _ => RedirectResponseCode::MovedPermanently,
                };
                route::route::Action::Redirect(route::RedirectAction {
                    host_redirect: authority.clone().unwrap_or_default(),
                    port_redirect: port.map_or(0, u32::from),
                    response_code: code as i32,
                    scheme_rewrite_specifier: scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
                    path_rewrite_specifier: path.clone().map(PathRewriteSpecifier::PathRedirect),
                    ..Default::default()
                })
            }
            ir::Action::DirectResponse { status, body } => route::route::Action::DirectResponse(route::DirectResponseAction {
                status: u32::from(*status),
                body: body
                    .clone()
                    .map(|it| core::DataSource { specifier: Some(core::data_source::Specifier::InlineString(it)), ..Default::default() }),
                ..Default::default()
            }),
        }
    }

    fn route_action(
        &self,
        ir_route: &ir::Route,
        destinations: &[ir::WeightedCluster],
        rewrite: Option<&ir::Rewrite>,
    ) -> route::RouteAction {
        use route::route_action::{ClusterSpecifier, HostRewriteSpecifier};
        let cluster_name = |id: ir::ClusterId| self.mesh.clusters[id.index()].name.clone();
        let specifier = match destinations {
            [only] => ClusterSpecifier::Cluster(cluster_name(only.cluster)),
            _ => ClusterSpecifier::WeightedClusters(route::WeightedCluster {
                clusters: destinations
                    .iter()
                    .map(|it| route::weighted_cluster::ClusterWeight {
                        name: cluster_name(it.cluster),
                        weight: Some(UInt32Value { value: it.weight }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        };
        let first = destinations.first().map(|it| &self.mesh.clusters[it.cluster.index()]);
        // The route's timeout, else its cluster's, else none (Istio's default: Envoy's 15 s
        // would cut streams the compiled sidecar lets run).
        let timeout_ms = ir_route.timeout_ms.or(first.and_then(|it| it.policy.request_timeout_ms)).unwrap_or(0);
        let mut action = route::RouteAction {
            cluster_specifier: Some(specifier),
            prefix_rewrite: rewrite.and_then(|it| it.prefix.clone()).unwrap_or_default(),
            host_rewrite_specifier: rewrite.and_then(|it| it.authority.clone()).map(HostRewriteSpecifier::HostRewriteLiteral),
            retry_policy: retry_policy(&ir_route.retries),
            request_mirror_policies: ir_route
                .mirror
                .iter()
                .map(|it| route::route_action::RequestMirrorPolicy {
                    cluster: cluster_name(it.cluster),
                    runtime_fraction: Some(core::RuntimeFractionalPercent {
                        default_value: Some(per_million(it.per_million)),
                        runtime_key: String::new(),
                    }),
                    ..Default::default()
                })
                .collect(),
            hash_policy: first.map(|it| hash_policy(&it.policy.load_balancer)).unwrap_or_default(),
            ..Default::default()
        };
        match self.client {
            Client::Envoy => action.timeout = Some(duration(timeout_ms)),
            // gRPC reads a route's deadline from max_stream_duration only.
            Client::Grpc if timeout_ms > 0 => {
                action.max_stream_duration =
                    Some(route::route_action::MaxStreamDuration { max_stream_duration: Some(duration(timeout_ms)), ..Default::default() });
            }
            Client::Grpc => {}
        }
        action
    }
}

fn http_filter(name: &str, config: Any) -> hcm::HttpFilter {
    hcm::HttpFilter { name: name.to_owned(), config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)), ..Default::default() }
}

/// A config source that says "over the ADS stream this came on", API v3.
fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig { name: name.to_owned(), sds_config: Some(ads()) }
}

fn duration(ms: u64) -> Duration {
    Duration { seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX), nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn socket_address(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn per_million(value: ir::PerMillion) -> types::FractionalPercent {
    types::FractionalPercent { numerator: value, denominator: types::fractional_percent::DenominatorType::Million as i32 }
}

/// Istio's circuit breakers: a limit the spec leaves unset is unlimited, not Envoy's 1,024.
fn circuit_breakers(limits: &ir::ConnectionLimits) -> cluster::CircuitBreakers {
    let limit = |it: Option<u32>| Some(UInt32Value { value: it.unwrap_or(u32::MAX) });
    cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: limit(limits.max_connections),
            max_pending_requests: limit(limits.max_pending_requests),
            max_requests: limit(limits.max_requests),
            max_retries: limit(limits.max_retries),
            retry_budget: limits.retry_budget.map(|budget| cluster::circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(types::Percent { value: f64::from(budget) / 10_000.0 }),
                min_retry_concurrency: limits.min_retry_concurrency.map(|value| UInt32Value { value }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Istio's mapping: the 5xx detector is enforced only when the spec sets it; gateway
/// errors likewise.
fn outlier_detection(detection: &ir::OutlierDetection) -> cluster::OutlierDetection {
    let enforcing = |on: bool| Some(UInt32Value { value: if on { 100 } else { 0 } });
    cluster::OutlierDetection {
        consecutive_5xx: detection.consecutive_5xx.map(|value| UInt32Value { value }),
        enforcing_consecutive_5xx: enforcing(detection.consecutive_5xx.is_some()),
        consecutive_gateway_failure: detection.consecutive_gateway_errors.map(|value| UInt32Value { value }),
        enforcing_consecutive_gateway_failure: enforcing(detection.consecutive_gateway_errors.is_some()),
        interval: Some(duration(detection.interval_ms)),
        base_ejection_time: Some(duration(detection.base_ejection_time_ms)),
        max_ejection_percent: Some(UInt32Value { value: detection.max_ejection_percent }),
        ..Default::default()
    }
}

fn health_check(check: &ir::HealthCheck) -> core::HealthCheck {
    use core::health_check::HealthChecker;
    let checker = match &check.probe {
        ir::HealthProbe::Http { path } => {
            HealthChecker::HttpHealthCheck(core::health_check::HttpHealthCheck { path: path.clone(), ..Default::default() })
        }
        ir::HealthProbe::Tcp => HealthChecker::TcpHealthCheck(core::health_check::TcpHealthCheck::default()),
    };
    core::HealthCheck {
        timeout: Some(duration(check.timeout_ms)),
        interval: Some(duration(check.interval_ms)),
        healthy_threshold: Some(UInt32Value { value: check.healthy_threshold }),
        unhealthy_threshold: Some(UInt32Value { value: check.unhealthy_threshold }),
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// What a consistent-hash load balancer hashes, on the routes that lead to its cluster.
fn hash_policy(balancer: &ir::LoadBalancer) -> Vec<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter};
    let (ir::LoadBalancer::RingHash { hash, .. } | ir::LoadBalancer::Maglev { hash, .. }) = balancer else { return Vec::new() };
    let specifier = match hash {
        ir::HashOn::Header { name } => PolicySpecifier::Header(Header { header_name: name.clone(), regex_rewrite: None }),
        ir::HashOn::Cookie { name, path, ttl_ms } => PolicySpecifier::Cookie(Cookie {
            name: name.clone(),
            path: path.clone().unwrap_or_default(),
            ttl: ttl_ms.map(duration),
            ..Default::default()
        }),
        ir::HashOn::SourceIp => PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
        ir::HashOn::QueryParameter { name } => PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() }),
    };
    vec![route::route_action::HashPolicy { policy_specifier: Some(specifier), terminal: false }]
}

fn retry_policy(retries: &ir::RetryPolicy) -> Option<route::RetryPolicy> {
    if retries.attempts == 0 {
        return None;
    }
    let mut retry_on = retries.retry_on.clone();
    if !retries.retriable_status_codes.is_empty() && !retry_on.iter().any(|it| it == "retriable-status-codes") {
        retry_on.push("retriable-status-codes".to_owned());
    }
    Some(route::RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: Some(UInt32Value { value: retries.attempts }),
        per_try_timeout: retries.per_try_timeout_ms.map(duration),
        retriable_status_codes: retries.retriable_status_codes.iter().map(|it| u32::from(*it)).collect(),
        retry_host_predicate: if retries.avoid_previous_hosts {
            vec![route::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                config_type: Some(route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                    &previous_hosts::PreviousHostsPredicate {},
                ))),
            }]
        } else {
            Vec::new()
        },
        // Istio's value: how often a retry may pick again to avoid a host already tried.
        host_selection_retry_max_attempts: if retries.avoid_previous_hosts { 5 } else { 0 },
        ..Default::default()
    })
}

/// The metadata namespace of what meshc tells its own sidecars on a route, which Envoy keeps
/// and ignores.
const METADATA_NAMESPACE: &str = "meshc";

/// `any_method` on a route's retries, which Envoy's retry policy has no field for, as route
/// metadata `meshc: {any_method: true}`, so that a sidecar taking the route as an override
/// resends what the compiled route would. Envoy retries any method on its own.
fn any_method_metadata(retries: &ir::RetryPolicy) -> Option<core::Metadata> {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    (retries.attempts > 0 && retries.any_method).then(|| {
        let flag = Struct { fields: [("any_method".to_owned(), Value { kind: Some(Kind::BoolValue(true)) })].into_iter().collect() };
        core::Metadata { filter_metadata: [(METADATA_NAMESPACE.to_owned(), flag)].into_iter().collect(), ..Default::default() }
    })
}

fn http_fault(ir_fault: &ir::Fault) -> fault::HttpFault {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
    fault::HttpFault {
        delay: ir_fault.delay.as_ref().map(|it| common::FaultDelay {
            percentage: Some(per_million(it.per_million)),
            fault_delay_secifier: Some(common::fault_delay::FaultDelaySecifier::FixedDelay(duration(it.delay_ms))),
        }),
        abort: ir_fault.abort.as_ref().map(|it| fault::FaultAbort {
            percentage: Some(per_million(it.per_million)),
            error_type: Some(match it.status {
                ir::AbortStatus::Http(code) => fault::fault_abort::ErrorType::HttpStatus(u32::from(code)),
                ir::AbortStatus::Grpc(code) => fault::fault_abort::ErrorType::GrpcStatus(code),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How many sources a per-source rate limit keeps buckets for: the compiled sidecar's bound
/// (`MAX_SOURCES` in runtime/src/ratelimit.rs), given to Envoy as its `max_dynamic_descriptors`.
const RATE_LIMIT_SOURCES: u32 = 10_000;

/// A route's local rate limit. A per-source one is Envoy's wildcard descriptor: the
/// `remote_address` action names each request's source, the descriptor with that key and no
/// value gives every source a bucket of its own (at most [`RATE_LIMIT_SOURCES`] of them), and
/// the route's own bucket, the same size, is not consumed by requests the descriptor takes.
/// A refused gRPC call gets RESOURCE_EXHAUSTED, as from the compiled sidecar.
fn rate_limit(limit: &ir::RateLimit) -> local_ratelimit::LocalRateLimit {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
    let always = || core::RuntimeFractionalPercent { default_value: Some(per_million(1_000_000)), runtime_key: String::new() };
    let bucket = types::TokenBucket {
        max_tokens: limit.max_tokens,
        tokens_per_fill: Some(UInt32Value { value: limit.tokens_per_fill }),
        fill_interval: Some(duration(limit.fill_interval_ms)),
    };
    let mut config = local_ratelimit::LocalRateLimit {
        stat_prefix: "http_local_rate_limiter".to_owned(),
        token_bucket: Some(bucket),
        filter_enabled: Some(always()),
        filter_enforced: Some(always()),
        rate_limited_as_resource_exhausted: true,
        ..Default::default()
    };
    if limit.per_source {
        let source = common::rate_limit_descriptor::Entry { key: "remote_address".to_owned(), value: String::new() };
        config.descriptors =
            vec![common::LocalRateLimitDescriptor { entries: vec![source], token_bucket: Some(bucket), ..Default::default() }];
        let action = route::rate_limit::action::ActionSpecifier::RemoteAddress(route::rate_limit::action::RemoteAddress {});
        config.rate_limits =
            vec![route::RateLimit { actions: vec![route::rate_limit::Action { action_specifier: Some(action) }], ..Default::default() }];
        config.always_consume_default_token_bucket = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        config.max_dynamic_descriptors = Some(UInt32Value { value: RATE_LIMIT_SOURCES });
    }
    config
}

fn header_options(ops: &ir::HeaderOps) -> Vec<core::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction;
    let option = |(name, value): &(String, String), action: HeaderAppendAction| core::HeaderValueOption {
        header: Some(core::HeaderValue { key: name.clone(), value: value.clone(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    ops.set
        .iter()
        .map(|it| option(it, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(ops.add.iter().map(|it| option(it, HeaderAppendAction::AppendIfExistsOrAdd)))
        .collect()
}

/// One alternative as an Envoy route match. Authority and method are pseudo-header matches,
/// as Istio writes them; an absent query parameter is a `:path` regex, inverted, since
/// Envoy's query matchers cannot say "absent".
fn route_match(alternative: &ir::Match) -> route::RouteMatch {
    use route::route_match::PathSpecifier;
    let path = match &alternative.path {
        None => PathSpecifier::Prefix("/".to_owned()),
        Some(it) => match it.kind {
            ir::StringMatchKind::Exact => PathSpecifier::Path(it.value.clone()),
            ir::StringMatchKind::Prefix => PathSpecifier::Prefix(it.value.clone()),
            ir::StringMatchKind::Regex => PathSpecifier::SafeRegex(regex(&it.value)),
        },
    };
    let mut headers = Vec::new();
    if let Some(authority) = &alternative.authority {
        headers.push(header_matcher(":authority", &ir::PresenceMatch::Value(authority.clone())));
    }
    if let Some(method) = &alternative.method {
        headers.push(header_matcher(":method", &ir::PresenceMatch::Value(method.clone())));
    }
    headers.extend(alternative.headers.iter().map(|it| header_matcher(&it.name, &it.kind)));
    let mut query_parameters = Vec::new();
    for query in &alternative.query {
        use route::query_parameter_matcher::QueryParameterMatchSpecifier;
        let specifier = match &query.kind {
            ir::PresenceMatch::Value(value) => QueryParameterMatchSpecifier::StringMatch(string_matcher(value)),
            ir::PresenceMatch::Present => QueryParameterMatchSpecifier::PresentMatch(true),
            ir::PresenceMatch::Absent => {
                let name = regex_syntax::escape(&query.name);
                let pattern = format!(r"[^?]*\?(.*&)?{name}(=[^&]*)?(&.*)?");
                headers.push(route::HeaderMatcher {
                    name: ":path".to_owned(),
                    invert_match: true,
                    header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(regex(&pattern))),
                        ..Default::default()
                    })),
                    ..Default::default()
                });
                continue;
            }
        };
        query_parameters.push(route::QueryParameterMatcher { name: query.name.clone(), query_parameter_match_specifier: Some(specifier) });
    }
    route::RouteMatch { path_specifier: Some(path), headers, query_parameters, ..Default::default() }
}

fn header_matcher(name: &str, kind: &ir::PresenceMatch) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier;
    let (specifier, invert_match) = match kind {
        ir::PresenceMatch::Value(value) => (HeaderMatchSpecifier::StringMatch(string_matcher(value)), false),
        ir::PresenceMatch::Present => (HeaderMatchSpecifier::PresentMatch(true), false),
        ir::PresenceMatch::Absent => (HeaderMatchSpecifier::PresentMatch(true), true),
    };
    route::HeaderMatcher { name: name.to_owned(), invert_match, header_match_specifier: Some(specifier), ..Default::default() }
}

fn string_matcher(value: &ir::StringMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    let pattern = match value.kind {
        ir::StringMatchKind::Exact => MatchPattern::Exact(value.value.clone()),
        ir::StringMatchKind::Prefix => MatchPattern::Prefix(value.value.clone()),
        ir::StringMatchKind::Regex => MatchPattern::SafeRegex(regex(&value.value)),
    };
    matcher::StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

/// An RE2 regex, which is what the IR holds and what Envoy and gRPC run.
fn regex(pattern: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher { regex: pattern.to_owned(), ..Default::default() }
}

#[cfg(test)]
mod tests;
