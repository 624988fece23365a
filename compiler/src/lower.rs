//! The lower stage: a `CheckedMesh` becomes `ir::Mesh`, with dense ids, sorted lists,
//! default routes for everything the spec does not route, and Istio's defaults filled in.
//!
//! Lowering cannot fail: anything it could reject is a missing check.

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir;
use meshc_codegen::ir::{Protocol, ServiceId, StringMatch, StringMatchKind};

use crate::check::{CheckedAction, CheckedMesh, CheckedRoute, CheckedService, Dest, RouteTarget, SvcKey, host_of};
use crate::manifest::{Manifest, RegistryEntry};
use crate::source::{FileKind, SourceMap};

/// A registry snapshot as lowering needs it.
#[derive(Debug)]
pub struct LoadedRegistry<'a> {
    /// The manifest entry.
    pub entry: &'a RegistryEntry,
    /// SHA-256 of the snapshot.
    pub sha256: String,
    /// The registry's own version.
    pub version: Option<String>,
}

/// Lowers a checked mesh.
pub fn lower(manifest: &Manifest, sources: &SourceMap, registries: &[LoadedRegistry<'_>], checked: &CheckedMesh<'_>) -> ir::Mesh {
    let mut lowering = Lowering { manifest, checked, service_ids: BTreeMap::new(), cluster_ids: BTreeMap::new() };
    let (services, instances) = lowering.services();
    let clusters = lowering.clusters(&services, &instances);
    let route_tables = lowering.route_tables(&services);
    let policy_names: Vec<&String> = checked.policies.keys().collect();
    let cluster_services: Vec<ServiceId> = clusters.iter().map(|it| it.service).collect();
    let workloads = lowering.workloads(&services, &route_tables, &cluster_services, &policy_names);
    let authz_policies = lowering.policies(&workloads);

    let mut specs: Vec<ir::SpecFile> = sources
        .files()
        .filter(|(_, file)| file.kind == FileKind::Spec)
        .map(|(_, file)| ir::SpecFile { path: file.path.clone(), sha256: file.sha256.clone() })
        .collect();
    specs.sort_by(|a, b| a.path.cmp(&b.path));
    let mut registries: Vec<ir::Registry> = registries
        .iter()
        .map(|it| ir::Registry {
            name: it.entry.name.clone(),
            kind: it.entry.kind,
            path: it.entry.path.clone(),
            priority: it.entry.priority,
            sha256: it.sha256.clone(),
            version: it.version.clone(),
        })
        .collect();
    registries.sort_by(|a, b| a.name.cmp(&b.name));

    ir::Mesh {
        ir_version: ir::IR_VERSION,
        name: manifest.name.clone(),
        namespace: manifest.namespace.clone(),
        cluster_domain: manifest.cluster_domain.clone(),
        trust_domain: manifest.trust_domain.clone(),
        specs,
        registries,
        services,
        instances,
        clusters,
        route_tables,
        workloads,
        authz_policies,
        telemetry: checked.telemetry.clone(),
    }
}

struct Lowering<'a, 'c> {
    manifest: &'a Manifest,
    checked: &'a CheckedMesh<'c>,
    service_ids: BTreeMap<SvcKey, ServiceId>,
    cluster_ids: BTreeMap<(SvcKey, u16, Option<String>), ir::ClusterId>,
}

impl Lowering<'_, '_> {
    fn host(&self, service: &CheckedService<'_>) -> String {
        host_of(service.catalog, &self.manifest.cluster_domain)
    }

    fn services(&mut self) -> (Vec<ir::Service>, Vec<ir::Instance>) {
        let mut order: Vec<(String, &SvcKey)> = self.checked.services.iter().map(|(key, service)| (self.host(service), key)).collect();
        order.sort();
        for (index, (_, key)) in order.iter().enumerate() {
            self.service_ids.insert((*key).clone(), ServiceId(index as u32));
        }
        let mut services = Vec::with_capacity(order.len());
        let mut instances = Vec::with_capacity(order.iter().map(|(_, key)| self.checked.services[*key].catalog.instances.len()).sum());
        for (index, (host, key)) in order.into_iter().enumerate() {
            let id = ServiceId(index as u32);
            let checked = &self.checked.services[key];
            let first = instances.len();
            for instance in &checked.catalog.instances {
                instances.push(ir::Instance {
                    id: ir::InstanceId(instances.len() as u32),
                    service: id,
                    address: instance.address.clone(),
                    port: instance.port,
                    service_port: instance.service_port,
                    weight: instance.weight,
                    labels: instance.labels.clone(),
                    locality: instance.locality.clone(),
                    health: instance.health,
                    origin: instance.origin.clone(),
                    also_in: instance.also_in.clone(),
                });
            }
            let own = &instances[first..];
            let subsets = checked
                .subsets
                .iter()
                .map(|subset| ir::Subset {
                    name: subset.name.clone(),
                    labels: subset.labels.clone(),
                    instances: own.iter().filter(|it| selects(&subset.labels, &it.labels)).map(|it| it.id).collect(),
                    policy: subset.policy.clone(),
                })
                .collect();
            services.push(ir::Service {
                id,
                name: checked.catalog.name.clone(),
                namespace: checked.catalog.namespace.clone(),
                host,
                protocol: checked.protocol,
                ports: checked.ports.clone(),
                rpc: checked.catalog.rpc.clone(),
                methods: checked.catalog.methods.as_ref().map(|it| it.iter().cloned().collect()),
                registries: checked.catalog.registries.clone(),
                declared_in: checked.declared_in.clone(),
                instances: own.iter().map(|it| it.id).collect(),
                subsets,
                policy: checked.policy.clone(),
            });
        }
        (services, instances)
    }

    /// One cluster per service port, and one per port and subset, as Istio builds them.
    fn clusters(&mut self, services: &[ir::Service], instances: &[ir::Instance]) -> Vec<ir::Cluster> {
        let mut clusters = Vec::new();
        for service in services {
            let key = (service.namespace.clone(), service.name.clone());
            for port in &service.ports {
                let endpoints = |labels: &BTreeMap<String, String>| -> Vec<ir::InstanceId> {
                    service
                        .instances
                        .iter()
                        .map(|it| &instances[it.index()])
                        .filter(|it| it.service_port == port.number && selects(labels, &it.labels))
                        .map(|it| it.id)
                        .collect()
                };
                clusters.push((
                    format!("outbound|{}||{}", port.number, service.host),
                    (key.clone(), port.number, None),
                    service.id,
                    port,
                    endpoints(&BTreeMap::new()),
                    service.policy.clone(),
                ));
                for subset in &service.subsets {
                    clusters.push((
                        format!("outbound|{}|{}|{}", port.number, subset.name, service.host),
                        (key.clone(), port.number, Some(subset.name.clone())),
                        service.id,
                        port,
                        endpoints(&subset.labels),
                        subset.policy.clone(),
                    ));
                }
            }
        }
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        clusters
            .into_iter()
            .enumerate()
            .map(|(index, (name, slot, service, port, endpoints, policy))| {
                let id = ir::ClusterId(index as u32);
                let subset = slot.2.clone();
                // The identities an `istio_mutual` upstream may prove: its workloads'.
                let mut peer_principals: Vec<String> = match policy.tls.mode {
                    ir::TlsMode::IstioMutual => self
                        .checked
                        .workloads
                        .values()
                        .filter(|it| it.serves.iter().any(|served| (&served.0, &served.1) == (&slot.0.0, &slot.0.1)))
                        .map(|it| format!("{}/ns/{}/sa/{}", self.manifest.trust_domain, it.namespace, it.service_account))
                        .collect(),
                    _ => Vec::new(),
                };
                peer_principals.sort();
                peer_principals.dedup();
                self.cluster_ids.insert(slot, id);
                ir::Cluster { id, name, service, port: port.number, subset, protocol: port.protocol, endpoints, policy, peer_principals }
            })
            .collect()
    }

    fn cluster(&self, dest: &Dest) -> ir::ClusterId {
        self.cluster_ids[&(dest.service.clone(), dest.port, dest.subset.clone())]
    }

    fn route_tables(&self, services: &[ir::Service]) -> Vec<ir::RouteTable> {
        let blocks: BTreeMap<&RouteTarget, (&str, &[CheckedRoute])> =
            self.checked.route_blocks.iter().map(|it| (&it.target, (it.file.as_str(), it.routes.as_slice()))).collect();
        let mut tables = Vec::new();
        let mut interfaces: BTreeMap<(Protocol, &str), Vec<&ir::Service>> = BTreeMap::new();
        for service in services {
            let key = (service.namespace.clone(), service.name.clone());
            if let (Some(rpc), true) = (&service.rpc, service.ports.iter().all(|it| it.protocol.is_rpc())) {
                interfaces.entry((service.ports[0].protocol, rpc.interface.as_str())).or_default().push(service);
                continue;
            }
            let block = blocks.get(&RouteTarget::Service(key.clone()));
            let has_http = service.ports.iter().any(|it| it.protocol.is_http());
            let http_ports: Vec<u16> = service.ports.iter().filter(|it| it.protocol.is_http()).map(|it| it.number).collect();
            // Host names without a port select the only HTTP port, or port 80 among several.
            let bare_port = match http_ports.as_slice() {
                [only] => Some(*only),
                ports => ports.iter().copied().find(|it| *it == 80),
            };
            for port in &service.ports {
                let http = port.protocol.is_http();
                let spec = block.filter(|_| http == has_http);
                let kind = if http {
                    let (domains, local_domains) = self.domains(service, port.number, bare_port == Some(port.number));
                    ir::RouteTableKind::Http { service: service.id, port: port.number, domains, local_domains }
                } else {
                    ir::RouteTableKind::Tcp { service: service.id, port: port.number }
                };
                let routes = match spec {
                    Some((_, routes)) => routes.iter().filter_map(|it| self.route_on_port(it, http, port.number)).collect(),
                    None => {
                        let dest = Dest { service: key.clone(), port: port.number, subset: None };
                        vec![self.default_route("default".to_owned(), Vec::new(), &dest, http)]
                    }
                };
                tables.push(ir::RouteTable {
                    id: ir::RouteTableId(0),
                    name: format!("{}:{}", service.host, port.number),
                    kind,
                    routes,
                    declared_in: spec.map(|it| it.0.to_owned()),
                });
            }
        }
        for ((protocol, interface), members) in interfaces {
            let spec = blocks.get(&RouteTarget::Interface(interface.to_owned()));
            let routes = match spec {
                Some((_, routes)) => routes.iter().map(|it| self.route(it, false)).collect(),
                None => members
                    .iter()
                    .map(|service| {
                        let dest = Dest {
                            service: (service.namespace.clone(), service.name.clone()),
                            port: service.ports[0].number,
                            subset: None,
                        };
                        self.default_route(service.name.clone(), vec![rpc_key_match(service)], &dest, false)
                    })
                    .collect(),
            };
            tables.push(ir::RouteTable {
                id: ir::RouteTableId(0),
                name: format!("{}:{interface}", protocol.as_str()),
                kind: ir::RouteTableKind::Rpc {
                    protocol,
                    interface: interface.to_owned(),
                    services: members.iter().map(|it| it.id).collect(),
                },
                routes,
                declared_in: spec.map(|it| it.0.to_owned()),
            });
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        for (index, table) in tables.iter_mut().enumerate() {
            table.id = ir::RouteTableId(index as u32);
        }
        tables
    }

    /// The Host header values that select a service port: the FQDN and `name.namespace`
    /// forms from anywhere, the bare name only from the service's own namespace.
    fn domains(&self, service: &ir::Service, port: u16, bare: bool) -> (Vec<String>, Vec<String>) {
        let mut names = vec![service.host.clone(), format!("{}.{}", service.name, service.namespace)];
        if let Some(label) = self.manifest.cluster_domain.split('.').next().filter(|_| self.manifest.cluster_domain.contains('.')) {
            names.push(format!("{}.{}.{label}", service.name, service.namespace));
        }
        let mut domains = Vec::new();
        for name in &names {
            domains.push(format!("{name}:{port}"));
            if bare {
                domains.push(name.clone());
            }
        }
        let mut local = vec![format!("{}:{port}", service.name)];
        if bare {
            local.push(service.name.clone());
        }
        domains.sort();
        domains.dedup();
        local.sort();
        (domains, local)
    }

    fn default_route(&self, name: String, matches: Vec<ir::Match>, dest: &Dest, http: bool) -> ir::Route {
        ir::Route {
            name,
            matches,
            action: ir::Action::Forward {
                destinations: vec![ir::WeightedCluster { cluster: self.cluster(dest), weight: 100 }],
                rewrite: None,
            },
            timeout_ms: None,
            retries: if http { crate::check::istio_retries(2, None) } else { ir::RetryPolicy::none() },
            fault: None,
            mirror: None,
            request_headers: ir::HeaderOps::default(),
            response_headers: ir::HeaderOps::default(),
            rate_limit: None,
        }
    }

    /// A route as it applies to one service port: the alternatives for other ports are left
    /// out, and a route left with none does not apply there.
    fn route_on_port(&self, route: &CheckedRoute, http: bool, port: u16) -> Option<ir::Route> {
        let mut lowered = self.route(route, http);
        if lowered.matches.is_empty() {
            return Some(lowered);
        }
        lowered.matches.retain(|it| it.port.is_none_or(|it| it == port));
        (!lowered.matches.is_empty()).then_some(lowered)
    }

    fn route(&self, route: &CheckedRoute, http: bool) -> ir::Route {
        let action = match &route.action {
            CheckedAction::Forward { destinations, rewrite } => ir::Action::Forward {
                destinations: destinations
                    .iter()
                    .map(|(dest, weight)| ir::WeightedCluster { cluster: self.cluster(dest), weight: *weight })
                    .collect(),
                rewrite: rewrite.clone(),
            },
            CheckedAction::Answer(action) => action.clone(),
        };
        let retries = match &route.retries {
            Some(retries) => retries.clone(),
            None if http => crate::check::istio_retries(2, None),
            None => ir::RetryPolicy::none(),
        };
        ir::Route {
            name: route.name.clone(),
            matches: route.matches.clone(),
            action,
            timeout_ms: route.timeout_ms,
            retries,
            fault: route.fault.clone(),
            mirror: route.mirror.as_ref().map(|(dest, per_million)| ir::Mirror { cluster: self.cluster(dest), per_million: *per_million }),
            request_headers: route.request_headers.clone(),
            response_headers: route.response_headers.clone(),
            rate_limit: route.rate_limit.clone(),
        }
    }

    fn workloads(
        &self,
        services: &[ir::Service],
        tables: &[ir::RouteTable],
        cluster_services: &[ServiceId],
        policy_names: &[&String],
    ) -> Vec<ir::Workload> {
        let declared: Vec<crate::check::CheckedWorkload> = if self.checked.workloads.is_empty() {
            vec![crate::check::CheckedWorkload {
                name: "default".to_owned(),
                namespace: self.manifest.namespace.clone(),
                service_account: "default".to_owned(),
                serves: Vec::new(),
                calls: None,
                rate_limit: None,
                telemetry: self.checked.telemetry.clone(),
                mtls: ir::PeerMtls::Permissive,
                port_mtls: BTreeMap::new(),
                rpc_listener: ir::RpcListener::PerProtocol,
                declared_in: None,
            }]
        } else {
            self.checked.workloads.values().cloned().collect()
        };
        declared
            .iter()
            .enumerate()
            .map(|(index, workload)| {
                let id = ir::WorkloadId(index as u32);
                let mut inbound: BTreeMap<u16, ir::InboundPort> = BTreeMap::new();
                for key in &workload.serves {
                    let service = &services[self.service_ids[key].index()];
                    for port in &service.ports {
                        let entry = inbound.entry(port.target_port).or_insert_with(|| ir::InboundPort {
                            port: port.target_port,
                            protocol: port.protocol,
                            services: Vec::new(),
                            service_ports: Vec::new(),
                            mtls: workload.port_mtls.get(&port.target_port).copied().unwrap_or(workload.mtls),
                        });
                        entry.services.push(service.id);
                        entry.service_ports.push(port.number);
                    }
                }
                let inbound: Vec<ir::InboundPort> = inbound
                    .into_values()
                    .map(|mut it| {
                        it.services.sort();
                        it.services.dedup();
                        it.service_ports.sort_unstable();
                        it.service_ports.dedup();
                        it
                    })
                    .collect();
                // The services this workload may call, by id.
                let visible: Vec<bool> = match &workload.calls {
                    None => vec![true; services.len()],
                    Some(calls) => {
                        let mut visible = vec![false; services.len()];
                        for key in calls {
                            visible[self.service_ids[key].index()] = true;
                        }
                        visible
                    }
                };
                let visible = |service: ServiceId| visible[service.index()];
                let outbound: Vec<ir::RouteTableId> = tables
                    .iter()
                    .filter(|table| match &table.kind {
                        ir::RouteTableKind::Http { service, .. } | ir::RouteTableKind::Tcp { service, .. } => visible(*service),
                        ir::RouteTableKind::Rpc { services, .. } => services.iter().any(|it| visible(*it)),
                    })
                    .map(|it| it.id)
                    .collect();
                // The clusters its routes reach, for the services it may call: a route to any
                // other service answers 503, as a sidecar whose egress hides the host does.
                let mut clusters: BTreeSet<ir::ClusterId> = BTreeSet::new();
                for table in outbound.iter().map(|it| &tables[it.index()]) {
                    for route in &table.routes {
                        if let ir::Action::Forward { destinations, .. } = &route.action {
                            clusters.extend(destinations.iter().map(|it| it.cluster));
                        }
                        clusters.extend(route.mirror.iter().map(|it| it.cluster));
                    }
                }
                clusters.retain(|it| visible(cluster_services[it.index()]));
                let authz = policy_names
                    .iter()
                    .enumerate()
                    .filter(|(_, name)| self.checked.policies[**name].workloads.as_ref().is_none_or(|list| list.contains(&workload.name)))
                    .map(|(index, _)| ir::AuthzPolicyId(index as u32))
                    .collect();
                ir::Workload {
                    id,
                    name: workload.name.clone(),
                    namespace: workload.namespace.clone(),
                    service_account: workload.service_account.clone(),
                    principal: format!("{}/ns/{}/sa/{}", self.manifest.trust_domain, workload.namespace, workload.service_account),
                    inbound,
                    outbound,
                    clusters: clusters.into_iter().collect(),
                    authz,
                    rate_limit: workload.rate_limit.clone(),
                    telemetry: workload.telemetry.clone(),
                    rpc_listener: workload.rpc_listener,
                    declared_in: workload.declared_in.clone(),
                }
            })
            .collect()
    }

    fn policies(&self, workloads: &[ir::Workload]) -> Vec<ir::AuthzPolicy> {
        self.checked
            .policies
            .iter()
            .enumerate()
            .map(|(index, (name, policy))| ir::AuthzPolicy {
                id: ir::AuthzPolicyId(index as u32),
                name: name.clone(),
                action: policy.action,
                workloads: workloads
                    .iter()
                    .filter(|it| policy.workloads.as_ref().is_none_or(|list| list.contains(&it.name)))
                    .map(|it| it.id)
                    .collect(),
                rules: policy.rules.clone(),
                declared_in: policy.declared_in.clone(),
            })
            .collect()
    }
}

/// Whether an instance's labels include every label of a selector.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The default route condition for an RPC service: its key. A Bolt request names the whole
/// key in its `service` header; a Dubbo request carries version and group separately, and a
/// missing one reads as the empty string.
fn rpc_key_match(service: &ir::Service) -> ir::Match {
    let exact = |value: &str| Some(StringMatch { kind: StringMatchKind::Exact, value: value.to_owned() });
    let rpc = service.rpc.as_ref().expect("an RPC service has a key");
    match service.ports[0].protocol {
        Protocol::Bolt => ir::Match { service: exact(&service.name), ..ir::Match::default() },
        _ => ir::Match {
            version: exact(rpc.version.as_deref().unwrap_or("")),
            group: exact(rpc.group.as_deref().unwrap_or("")),
            ..ir::Match::default()
        },
    }
}
