//! Merging registries (SOFAMesh's "data sync between registries"): one service listed by
//! several registries becomes one service whose instances keep their origin.
//!
//! Precedence, documented in mesh-specs/README.md and independent of the manifest's order:
//! - registries are ranked by `priority` (higher first), then by name;
//! - an instance (address, port, service port) listed by several registries is kept once,
//!   with the fields of the highest-ranked registry, and the others listed in `also_in`;
//! - the service's port names come from the highest-ranked registry that declares ports;
//! - methods are the union of what every registry lists;
//! - registries that disagree on the set of ports or on a port's protocol are an error
//!   (Istio's IST0170), and so is a registry that disagrees with itself.

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir::{Health, Locality, Protocol, RpcKey};

use super::{Instance, Service, Snapshot};
use crate::diag::{Code, Diagnostic};
use crate::manifest::RegistryEntry;
use crate::source::Span;

/// Every service of every registry, merged.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), CatalogService>,
}

/// A merged service.
#[derive(Clone, Debug)]
pub struct CatalogService {
    /// Namespace.
    pub namespace: String,
    /// Name (Kubernetes-style or an RPC key).
    pub name: String,
    /// RPC identity.
    pub rpc: Option<RpcKey>,
    /// Ports, sorted by number; a protocol of `None` is not known yet.
    pub ports: Vec<CatalogPort>,
    /// Union of the methods registries list; `None` when none lists any.
    pub methods: Option<BTreeSet<String>>,
    /// Registries that list the service, sorted.
    pub registries: Vec<String>,
    /// Instances, sorted by (service port, address, port).
    pub instances: Vec<CatalogInstance>,
    /// The first registry entry that describes it (in precedence order), for messages.
    pub span: Span,
    /// How that entry is named.
    pub entry: String,
    /// The registry of that entry.
    pub registry: String,
}

/// A merged port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogPort {
    /// Number.
    pub number: u16,
    /// Name, empty when no registry names it.
    pub name: String,
    /// Protocol, when some registry knows it.
    pub protocol: Option<Protocol>,
    /// The application's port.
    pub target_port: u16,
}

/// A merged instance.
#[derive(Clone, Debug)]
pub struct CatalogInstance {
    /// Address.
    pub address: String,
    /// Port it listens on.
    pub port: u16,
    /// Service port it serves.
    pub service_port: u16,
    /// Weight.
    pub weight: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Locality.
    pub locality: Locality,
    /// Health.
    pub health: Health,
    /// The registry whose description won.
    pub origin: String,
    /// Other registries that list it.
    pub also_in: Vec<String>,
    /// Where the winning description is.
    pub span: Span,
}

/// One registry's view of one service, with its ports resolved.
struct View<'a> {
    registry: &'a RegistryEntry,
    service: &'a Service,
    ports: Vec<CatalogPort>,
    /// Whether `ports` were derived from instance ports rather than declared.
    derived: bool,
    instances: Vec<(&'a Instance, u16)>,
    methods: Option<BTreeSet<String>>,
}

/// Merges snapshots into a catalog, reporting conflicts.
pub fn merge(snapshots: &[(&RegistryEntry, &Snapshot)], diagnostics: &mut Vec<Diagnostic>) -> Catalog {
    // Rank registries: priority descending, then name ascending.
    let mut ranked: Vec<&(&RegistryEntry, &Snapshot)> = snapshots.iter().collect();
    ranked.sort_by(|a, b| b.0.priority.cmp(&a.0.priority).then_with(|| a.0.name.cmp(&b.0.name)));

    // Views per service key, in rank order.
    let mut views: BTreeMap<(String, String), Vec<View<'_>>> = BTreeMap::new();
    for (registry, snapshot) in ranked.iter().map(|it| (it.0, it.1)) {
        let mut instances_by_key: BTreeMap<(&str, &str), Vec<&Instance>> = BTreeMap::new();
        for instance in &snapshot.instances {
            instances_by_key.entry((&instance.namespace, &instance.service)).or_default().push(instance);
        }
        let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for service in &snapshot.services {
            let key = (service.namespace.as_str(), service.name.as_str());
            let list = views.entry((service.namespace.clone(), service.name.clone())).or_default();
            if let Some(&index) = seen.get(&key) {
                // The registry describes the service twice (Consul lists it once per instance,
                // Nacos once per cluster): fold the second description into the first.
                let view = &mut list[index];
                fold_ports(view, service, registry, diagnostics);
                if let Some(methods) = &service.methods {
                    view.methods.get_or_insert_with(BTreeSet::new).extend(methods.iter().cloned());
                }
                continue;
            }
            seen.insert(key, list.len());
            let mut view =
                View { registry, service, ports: Vec::new(), derived: false, instances: Vec::new(), methods: service.methods.clone() };
            fold_ports(&mut view, service, registry, diagnostics);
            list.push(view);
        }
        for (key, instances) in instances_by_key {
            let Some(list) = views.get_mut(&(key.0.to_owned(), key.1.to_owned())) else { continue };
            let Some(view) = list.iter_mut().find(|it| std::ptr::eq(it.registry, registry)) else { continue };
            view.instances = instances.into_iter().map(|it| (it, 0)).collect();
        }
    }

    let mut catalog = Catalog::default();
    for (key, mut list) in views {
        for view in &mut list {
            resolve_ports(view);
        }
        if let Some(service) = merge_service(&key, &list, diagnostics) {
            catalog.services.insert(key, service);
        }
    }
    catalog
}

/// Adds a description's declared ports to a view, reporting a registry that contradicts itself.
fn fold_ports(view: &mut View<'_>, service: &Service, registry: &RegistryEntry, diagnostics: &mut Vec<Diagnostic>) {
    for port in &service.ports {
        let protocol = port.protocol.or(service.protocol).filter(|it| *it != Protocol::Auto);
        match view.ports.iter_mut().find(|it| it.number == port.number) {
            Some(existing) => match (existing.protocol, protocol) {
                (Some(a), Some(b)) if a != b => diagnostics.push(
                    Diagnostic::error(
                        Code::RegistryConflict,
                        format!(
                            "registry `{}` gives port {} of service `{}` two protocols, {} and {}",
                            registry.name,
                            port.number,
                            service.name,
                            a.as_str(),
                            b.as_str()
                        ),
                    )
                    .primary(service.span, format!("{} here", b.as_str()))
                    .secondary(view.service.span, format!("{} here", a.as_str())),
                ),
                (None, Some(b)) => existing.protocol = Some(b),
                _ => {}
            },
            None => view.ports.push(CatalogPort {
                number: port.number,
                name: port.name.clone().unwrap_or_default(),
                protocol,
                target_port: port.target_port.unwrap_or(port.number),
            }),
        }
    }
}

/// Gives every instance of a view its service port, deriving the port from the instances
/// when the registry declares none: the most common instance port (the lowest on a tie),
/// because registries such as Consul, Nacos and ZooKeeper list only instance ports.
fn resolve_ports(view: &mut View<'_>) {
    let service_protocol = view.service.protocol.filter(|it| *it != Protocol::Auto);
    if view.ports.is_empty() {
        view.derived = true;
        let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
        for (instance, _) in &view.instances {
            *counts.entry(instance.service_port.unwrap_or(instance.port)).or_default() += 1;
        }
        let chosen = counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(port, _)| *port);
        if let Some(number) = chosen {
            view.ports.push(CatalogPort { number, name: String::new(), protocol: service_protocol, target_port: number });
        }
        for (instance, service_port) in &mut view.instances {
            *service_port = instance.service_port.filter(|it| Some(*it) == chosen).or(chosen).unwrap_or(instance.port);
        }
    } else {
        let single = (view.ports.len() == 1).then(|| view.ports[0].number);
        for (instance, service_port) in &mut view.instances {
            *service_port = instance
                .service_port
                .or(single)
                .or_else(|| view.ports.iter().find(|it| it.target_port == instance.port).map(|it| it.number))
                .unwrap_or(instance.port);
        }
        // An instance may name a service port the registry does not declare; such an
        // instance belongs to no cluster, so keep only those that fit.
        let numbers: BTreeSet<u16> = view.ports.iter().map(|it| it.number).collect();
        view.instances.retain(|(_, port)| numbers.contains(port));
    }
    view.ports.sort_by_key(|it| it.number);
}

/// One of a view's ports as an index into the merged ports, with its protocol and name.
type PortUse<'a> = (usize, Option<Protocol>, &'a str);

fn merge_service(key: &(String, String), views: &[View<'_>], diagnostics: &mut Vec<Diagnostic>) -> Option<CatalogService> {
    let first = views.first()?;
    // Ports: the highest-ranked registry that declares service ports sets them (else the first
    // that has any); the others must agree. A registry that lists only instance ports agrees
    // when each instance port is the target of a declared port (Kubernetes `port: 80`,
    // `targetPort: 8080`, and a Consul instance on 8080).
    let base = views.iter().find(|it| !it.derived && !it.ports.is_empty()).or_else(|| views.iter().find(|it| !it.ports.is_empty()));
    let Some(base) = base else {
        diagnostics.push(no_ports(key, first, &views[1..]));
        return None;
    };
    let mut ports = base.ports.clone();
    // Which view each port's protocol came from, to blame the right one in a conflict.
    let mut protocol_from: Vec<&View<'_>> = vec![base; ports.len()];
    let mut instances_of: Vec<Vec<(&Instance, u16)>> = Vec::with_capacity(views.len());
    for view in views {
        if std::ptr::eq(view, base) || view.ports.is_empty() {
            instances_of.push(view.instances.clone());
            continue;
        }
        // Each of this view's ports, as a port of `ports`, with its instances.
        let (pairs, instances): (Vec<PortUse<'_>>, Vec<(&Instance, u16)>) = if view.derived && !base.derived {
            let mut instances = Vec::new();
            let mut unmatched = BTreeSet::new();
            let mut used = BTreeSet::new();
            for (instance, _) in &view.instances {
                let target = ports
                    .iter()
                    .position(|it| it.target_port == instance.port)
                    .or_else(|| ports.iter().position(|it| it.number == instance.port));
                match target {
                    Some(index) => {
                        used.insert(index);
                        instances.push((*instance, ports[index].number));
                    }
                    None => {
                        unmatched.insert(instance.port);
                    }
                }
            }
            if !unmatched.is_empty() {
                let theirs: Vec<u16> = unmatched.into_iter().collect();
                let ours: Vec<String> = ports.iter().map(|it| format!("{} (to {})", it.number, it.target_port)).collect();
                diagnostics.push(conflict(
                    key,
                    base,
                    view,
                    format!("instance ports {} are the target of none of ports {}", list(&theirs), ours.join(", ")),
                ));
                instances_of.push(Vec::new());
                continue;
            }
            let protocol = view.ports.first().and_then(|it| it.protocol);
            (used.into_iter().map(|index| (index, protocol, "")).collect(), instances)
        } else {
            let theirs: Vec<u16> = view.ports.iter().map(|it| it.number).collect();
            let ours: Vec<u16> = ports.iter().map(|it| it.number).collect();
            if theirs != ours {
                diagnostics.push(conflict(key, base, view, format!("ports {} and {}", list(&ours), list(&theirs))));
                instances_of.push(Vec::new());
                continue;
            }
            (view.ports.iter().enumerate().map(|(index, it)| (index, it.protocol, it.name.as_str())).collect(), view.instances.clone())
        };
        for (index, protocol, name) in pairs {
            let port = &mut ports[index];
            match (port.protocol, protocol) {
                (Some(a), Some(b)) if a != b => {
                    let number = port.number;
                    diagnostics.push(conflict(
                        key,
                        protocol_from[index],
                        view,
                        format!("protocols {} and {} on port {number}", a.as_str(), b.as_str()),
                    ));
                }
                (None, Some(b)) => {
                    port.protocol = Some(b);
                    protocol_from[index] = view;
                }
                _ => {}
            }
            if port.name.is_empty() {
                name.clone_into(&mut port.name);
            }
        }
        instances_of.push(instances);
    }

    // Instances: keep the highest-ranked description of each (address, port, service port).
    // Keyed by the snapshots' own addresses, borrowed: one copy fewer of each.
    let mut instances: BTreeMap<(u16, &str, u16), CatalogInstance> = BTreeMap::new();
    for (view, view_instances) in views.iter().zip(&instances_of) {
        for (instance, service_port) in view_instances {
            let slot = (*service_port, instance.address.as_str(), instance.port);
            match instances.get_mut(&slot) {
                Some(existing) if existing.origin != view.registry.name => {
                    if !existing.also_in.contains(&view.registry.name) {
                        existing.also_in.push(view.registry.name.clone());
                    }
                }
                // The same registry listing an instance twice: the first description stands.
                Some(_) => {}
                None => {
                    instances.insert(
                        slot,
                        CatalogInstance {
                            address: instance.address.clone(),
                            port: instance.port,
                            service_port: *service_port,
                            weight: instance.weight,
                            labels: instance.labels.clone(),
                            locality: instance.locality.clone(),
                            health: instance.health,
                            origin: view.registry.name.clone(),
                            also_in: Vec::new(),
                            span: instance.span,
                        },
                    );
                }
            }
        }
    }
    // Sized up front: the filter hides the count, and growing a vector of 10,000 instances
    // by doubling copied it into fresh pages every time Pilot recompiled.
    let mut kept = Vec::with_capacity(instances.len());
    kept.extend(
        instances
            .into_values()
            .map(|mut it| {
                it.also_in.sort();
                it
            })
            .filter(|it| ports.iter().any(|port| port.number == it.service_port)),
    );
    let instances = kept;

    let mut methods: Option<BTreeSet<String>> = None;
    for view in views {
        if let Some(list) = &view.methods {
            methods.get_or_insert_with(BTreeSet::new).extend(list.iter().cloned());
        }
    }
    let mut registries: Vec<String> = views.iter().map(|it| it.registry.name.clone()).collect();
    registries.sort();
    registries.dedup();

    Some(CatalogService {
        namespace: key.0.clone(),
        name: key.1.clone(),
        rpc: views.iter().find_map(|it| it.service.rpc.clone()),
        ports,
        methods,
        registries,
        instances,
        span: first.service.span,
        entry: first.service.entry.clone(),
        registry: first.registry.name.clone(),
    })
}

/// Warns of a service that no registry gives a port, nor an instance to derive one from (a
/// Nacos service whose instances are all gone, say). With no port there is no cluster to route
/// to, so it is left out; without the warning a spec that names it would only hear that the
/// service is unknown, with nothing pointing at the registry entry that lists it.
fn no_ports(key: &(String, String), first: &View<'_>, others: &[View<'_>]) -> Diagnostic {
    let mut diagnostic = Diagnostic::warning(
        Code::RegistryEntry,
        format!("service `{}` of registry `{}` has no ports and no instances, so it is left out", key.1, first.registry.name),
    )
    .primary(first.service.span, "this entry was skipped");
    for view in others {
        diagnostic =
            diagnostic.secondary(view.service.span, format!("registry `{}` lists it here, also without ports", view.registry.name));
    }
    diagnostic
        .note(format!("entry: {}", first.service.entry))
        .note(format!("`{}` in namespace `{}` has nothing to route to, so a spec that names it finds no such service", key.1, key.0))
}

fn conflict(key: &(String, String), base: &View<'_>, other: &View<'_>, what: String) -> Diagnostic {
    Diagnostic::error(
        Code::RegistryConflict,
        format!("registries `{}` and `{}` disagree on service `{}`: {what}", base.registry.name, other.registry.name, key.1),
    )
    .primary(other.service.span, format!("registry `{}` describes it here", other.registry.name))
    .secondary(base.service.span, format!("registry `{}` describes it here", base.registry.name))
    .note(format!("`{}` in namespace `{}` must have the same ports and protocols in every registry", key.1, key.0))
    .help("fix the registration, or give the services different names")
}

fn list(ports: &[u16]) -> String {
    let parts: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use meshc_codegen::ir::RegistryKind;

    use super::*;
    use crate::diag::Severity;
    use crate::source::FileId;

    fn registry(name: &str, kind: RegistryKind, priority: i64) -> RegistryEntry {
        let dummy = Span::new(FileId(0), 0..0);
        RegistryEntry {
            name: name.to_owned(),
            name_span: dummy,
            kind,
            path: format!("registries/{name}.json"),
            path_span: dummy,
            priority,
            namespace: None,
            span: dummy,
        }
    }

    fn service(file: u32, at: usize, name: &str, entry: &str) -> Service {
        Service {
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            rpc: None,
            protocol: None,
            ports: Vec::new(),
            methods: None,
            span: Span::new(FileId(file), at..at + 10),
            entry: entry.to_owned(),
        }
    }

    fn instance(file: u32, name: &str, address: &str) -> Instance {
        Instance {
            namespace: "shop".to_owned(),
            service: name.to_owned(),
            address: address.to_owned(),
            port: 8080,
            service_port: None,
            weight: 100,
            labels: BTreeMap::new(),
            locality: Locality::default(),
            health: Health::Healthy,
            span: Span::new(FileId(file), 0..1),
        }
    }

    #[test]
    fn a_service_without_ports_or_instances_is_left_out_with_a_warning() {
        // Nacos lists `cart` with no hosts left (every instance deregistered) and Consul lists
        // `cart` without instances too; `billing` has no hosts in Nacos but an instance in Consul.
        let nacos = registry("nacos-hz", RegistryKind::Nacos, 10);
        let consul = registry("consul-dc1", RegistryKind::Consul, 0);
        let nacos_snapshot = Snapshot {
            services: vec![
                service(1, 0, "cart", "Nacos service `DEFAULT_GROUP@@cart`"),
                service(1, 100, "billing", "Nacos service `DEFAULT_GROUP@@billing`"),
                service(1, 200, "orders", "Nacos service `DEFAULT_GROUP@@orders`"),
            ],
            instances: vec![instance(1, "orders", "10.0.0.1")],
            version: None,
        };
        let consul_snapshot = Snapshot {
            services: vec![service(2, 0, "billing", "Consul service `billing`"), service(2, 50, "cart", "Consul service `cart`")],
            instances: vec![instance(2, "billing", "10.0.0.2")],
            version: None,
        };
        let mut diagnostics = Vec::new();
        let catalog = merge(&[(&consul, &consul_snapshot), (&nacos, &nacos_snapshot)], &mut diagnostics);
        let names: Vec<&str> = catalog.services.keys().map(|(_, name)| name.as_str()).collect();
        assert_eq!(names, ["billing", "orders"]);
        assert_eq!(catalog.services[&("shop".to_owned(), "billing".to_owned())].instances.len(), 1);

        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        let warning = &diagnostics[0];
        assert_eq!((warning.severity, warning.code), (Severity::Warning, Code::RegistryEntry));
        assert_eq!(warning.message, "service `cart` of registry `nacos-hz` has no ports and no instances, so it is left out");
        let labels: Vec<(Span, bool, &str)> = warning.labels.iter().map(|it| (it.span, it.primary, it.message.as_str())).collect();
        assert_eq!(
            labels,
            [
                (Span::new(FileId(1), 0..10), true, "this entry was skipped"),
                (Span::new(FileId(2), 50..60), false, "registry `consul-dc1` lists it here, also without ports"),
            ]
        );
        assert_eq!(
            warning.notes,
            [
                "entry: Nacos service `DEFAULT_GROUP@@cart`",
                "`cart` in namespace `shop` has nothing to route to, so a spec that names it finds no such service",
            ]
        );
    }

    #[test]
    fn instance_ports_merge_with_the_target_of_a_declared_port() {
        // Kubernetes declares `port: 80, targetPort: 8080`; Consul and Nacos list instances on 8080.
        let k8s = registry("k8s", RegistryKind::Kubernetes, 20);
        let consul = registry("consul", RegistryKind::Consul, 10);
        let nacos = registry("nacos", RegistryKind::Nacos, 0);
        let mut declared = service(1, 0, "orders", "Service shop/orders");
        declared.ports =
            vec![super::super::Port { number: 80, name: Some("http".to_owned()), protocol: Some(Protocol::Http), target_port: Some(8080) }];
        let mut pod = instance(1, "orders", "10.244.0.5");
        pod.service_port = Some(80);
        let k8s_snapshot = Snapshot { services: vec![declared], instances: vec![pod], version: None };
        let consul_snapshot = Snapshot {
            services: vec![service(2, 0, "orders", "Consul entry 1")],
            instances: vec![instance(2, "orders", "10.0.3.4")],
            version: None,
        };
        let mut grpc = service(3, 0, "orders", "Nacos service `orders`");
        grpc.protocol = Some(Protocol::Grpc);
        let nacos_snapshot = Snapshot { services: vec![grpc], instances: vec![instance(3, "orders", "10.0.5.11")], version: None };

        let mut diagnostics = Vec::new();
        let catalog = merge(&[(&nacos, &nacos_snapshot), (&k8s, &k8s_snapshot), (&consul, &consul_snapshot)], &mut diagnostics);
        let orders = &catalog.services[&("shop".to_owned(), "orders".to_owned())];
        assert_eq!(orders.ports.iter().map(|it| (it.number, it.target_port)).collect::<Vec<_>>(), [(80, 8080)]);
        // Consul's instance joins port 80 with its own port 8080; Nacos says grpc where Kubernetes says http.
        let consul_instance = orders.instances.iter().find(|it| it.origin == "consul").expect("merged");
        assert_eq!((consul_instance.port, consul_instance.service_port), (8080, 80));
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert_eq!(diagnostics[0].message, "registries `k8s` and `nacos` disagree on service `orders`: protocols http and grpc on port 80");
    }

    #[test]
    fn instance_ports_that_no_declared_port_targets_conflict() {
        let k8s = registry("k8s", RegistryKind::Kubernetes, 20);
        let consul = registry("consul", RegistryKind::Consul, 10);
        let mut declared = service(1, 0, "orders", "Service shop/orders");
        declared.ports = vec![super::super::Port { number: 80, name: None, protocol: None, target_port: Some(9090) }];
        let k8s_snapshot = Snapshot { services: vec![declared], instances: Vec::new(), version: None };
        let consul_snapshot = Snapshot {
            services: vec![service(2, 0, "orders", "Consul entry 1")],
            instances: vec![instance(2, "orders", "10.0.3.4")],
            version: None,
        };
        let mut diagnostics = Vec::new();
        merge(&[(&k8s, &k8s_snapshot), (&consul, &consul_snapshot)], &mut diagnostics);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        assert_eq!(diagnostics[0].code, Code::RegistryConflict);
        assert!(
            diagnostics[0].message.contains("instance ports [8080] are the target of none of ports 80 (to 9090)"),
            "{}",
            diagnostics[0].message
        );
    }
}
