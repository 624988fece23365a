//! Services: reconciles the spec's `service` blocks with the registries (ports, protocols),
//! resolves subsets and fills in traffic-policy defaults.

use std::collections::BTreeMap;

use meshc_codegen::ir;
use meshc_codegen::ir::Protocol;

use super::{CheckedService, CheckedSubset, Checker, SvcKey};
use crate::diag::{Code, Diagnostic};
use crate::source::Span;
use crate::syntax::ast;

/// Istio's defaults: least-request balancing, a 10 s connect timeout, no limits, plaintext.
pub fn default_policy() -> ir::TrafficPolicy {
    ir::TrafficPolicy {
        load_balancer: ir::LoadBalancer::LeastRequest,
        connect_timeout_ms: 10_000,
        request_timeout_ms: None,
        warmup_ms: None,
        limits: ir::ConnectionLimits::default(),
        outlier_detection: None,
        health_check: None,
        tls: ir::Tls { mode: ir::TlsMode::Disable, sni: None },
    }
}

/// `base` with every statement `over` sets replacing the base's.
fn apply_policy(base: &ir::TrafficPolicy, over: &ast::Policy) -> ir::TrafficPolicy {
    let mut policy = base.clone();
    if let Some(it) = &over.load_balancer {
        policy.load_balancer = it.value.clone();
    }
    if let Some(it) = &over.connect_timeout {
        policy.connect_timeout_ms = it.value;
    }
    if let Some(it) = &over.request_timeout {
        policy.request_timeout_ms = Some(it.value);
    }
    if let Some(it) = &over.warmup {
        policy.warmup_ms = Some(it.value);
    }
    if let Some(it) = &over.limits {
        policy.limits = it.value.clone();
    }
    if let Some(it) = &over.outlier_detection {
        policy.outlier_detection = Some(it.value.clone());
    }
    if let Some(it) = &over.health_check {
        policy.health_check = Some(it.value.clone());
    }
    if let Some(it) = &over.tls {
        policy.tls = ir::Tls { mode: it.value.0, sni: it.value.1.clone() };
    }
    policy
}

/// Whether the spec may say `spec` about a port the registry says is `registry`:
/// it may fill in an unknown protocol, or refine HTTP into HTTP/2 or gRPC.
fn refines(registry: Protocol, spec: Protocol) -> bool {
    registry == spec
        || registry == Protocol::Auto
        || (matches!(registry, Protocol::Http | Protocol::Http2) && matches!(spec, Protocol::Http | Protocol::Http2 | Protocol::Grpc))
}

impl<'a> Checker<'a, '_> {
    pub(super) fn services(&mut self, decls: &[&ast::Service]) -> BTreeMap<SvcKey, CheckedService<'a>> {
        // Resolve declarations first, so a service declared twice is reported once.
        let mut declared: BTreeMap<SvcKey, &ast::Service> = BTreeMap::new();
        for subset in decls.iter().flat_map(|it| it.subsets.iter()) {
            if !crate::manifest::is_dns_label(&subset.name.text) {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("invalid subset name `{}`", subset.name.text))
                        .primary(subset.name.span, "expected a DNS label: lower-case letters, digits and `-`")
                        .note("subset names become part of cluster names such as `outbound|9080|v1|reviews.default.svc.cluster.local`"),
                );
            }
        }
        for decl in decls {
            let namespace = self.manifest.namespace.clone();
            let Some(key) = self.service_ref(&decl.name, &namespace) else { continue };
            if let Some(first) = declared.get(&key) {
                let first = first.name.span;
                self.duplicate("service", &decl.name.text, decl.name.span, first);
                continue;
            }
            declared.insert(key, decl);
        }

        let mut services = BTreeMap::new();
        for (key, catalog) in &self.catalog.services {
            let decl = declared.get(key).copied();
            let base = default_policy();
            let policy = decl.map_or_else(|| base.clone(), |it| apply_policy(&base, &it.policy));
            if let Some(decl) = decl {
                self.check_warmup(&policy, &decl.policy);
            }
            let ports = self.ports(catalog, decl);
            let protocol = match ports.first() {
                Some(first) if ports.iter().all(|it| it.protocol == first.protocol) => first.protocol,
                _ => Protocol::Auto,
            };
            let subsets = decl.map_or_else(Vec::new, |decl| {
                let mut subsets: Vec<CheckedSubset> = decl
                    .subsets
                    .iter()
                    .map(|subset| {
                        let subset_policy = apply_policy(&policy, &subset.policy);
                        self.check_warmup(&subset_policy, &subset.policy);
                        CheckedSubset {
                            name: subset.name.text.clone(),
                            labels: subset.labels.iter().map(|(k, v)| (k.text.clone(), v.text.clone())).collect(),
                            policy: subset_policy,
                        }
                    })
                    .collect();
                subsets.sort_by(|a, b| a.name.cmp(&b.name));
                subsets
            });
            let declared_in = decl.map(|it| self.path(it.span));
            services.insert(key.clone(), CheckedService { catalog, ports, protocol, subsets, policy, declared_in });
        }
        services
    }

    /// Slow start weighs endpoints by their age, which only round robin and least request
    /// consult (as in Envoy and Istio); reported where `over` set one of the two.
    fn check_warmup(&mut self, policy: &ir::TrafficPolicy, over: &ast::Policy) {
        if policy.warmup_ms.is_none() || matches!(policy.load_balancer, ir::LoadBalancer::RoundRobin | ir::LoadBalancer::LeastRequest) {
            return;
        }
        let Some(span) = over.warmup.as_ref().map(|it| it.span).or(over.load_balancer.as_ref().map(|it| it.span)) else { return };
        self.push(
            Diagnostic::error(Code::InvalidValue, "`warmup` needs the `round_robin` or `least_request` load balancer")
                .primary(span, "slow start with a random or hashing load balancer")
                .help("hashing keeps each key on its endpoint, so a new endpoint cannot be eased in"),
        );
    }

    /// The service's ports: the registry's, with the spec's protocols, names and target ports.
    fn ports(&mut self, catalog: &crate::registry::merge::CatalogService, decl: Option<&ast::Service>) -> Vec<ir::ServicePort> {
        let mut ports: Vec<ir::ServicePort> = catalog
            .ports
            .iter()
            .map(|it| ir::ServicePort {
                number: it.number,
                name: it.name.clone(),
                protocol: it.protocol.unwrap_or(Protocol::Auto),
                target_port: it.target_port,
            })
            .collect();
        let Some(decl) = decl else { return ports };
        for port_decl in &decl.ports {
            if !ports.iter().any(|it| it.number == port_decl.number.value) {
                let known: Vec<String> = ports.iter().map(|it| it.number.to_string()).collect();
                self.push(
                    Diagnostic::error(Code::UnknownPort, format!("service `{}` has no port {}", decl.name.text, port_decl.number.value))
                        .primary(port_decl.number.span, "not a port of the service")
                        .note(format!("registry `{}` lists port(s) {}", catalog.registry, known.join(", ")))
                        .secondary(catalog.span, "the registry's description"),
                );
            }
        }
        for port in &mut ports {
            let port_decl = decl.ports.iter().find(|it| it.number.value == port.number);
            let spec = port_decl.and_then(|it| it.protocol.as_ref()).or(decl.protocol.as_ref());
            if let Some(spec) = spec {
                if refines(port.protocol, spec.value) {
                    port.protocol = spec.value;
                } else {
                    self.push(
                        Diagnostic::error(
                            Code::SpecConflict,
                            format!(
                                "port {} of `{}` is {} in registry `{}`, not {}",
                                port.number,
                                decl.name.text,
                                port.protocol.as_str(),
                                catalog.registry,
                                spec.value.as_str()
                            ),
                        )
                        .primary(spec.span, format!("declared {} here", spec.value.as_str()))
                        .secondary(catalog.span, format!("the registry says {}", port.protocol.as_str()))
                        .help("the spec may name an unknown protocol or refine http into http2 or grpc, but not change a protocol the registry declares"),
                    );
                }
            }
            if let Some(port_decl) = port_decl {
                if let Some(name) = &port_decl.name {
                    port.name.clone_from(&name.text);
                }
                if let Some(target) = &port_decl.target_port {
                    port.target_port = target.value;
                }
            }
        }
        ports
    }

    /// IST0173: a subset whose labels select no instance. An error when a route sends
    /// traffic there (Envoy would answer 503 UH), a warning otherwise.
    pub(super) fn report_empty_subsets(&mut self, decls: &[&ast::Service], services: &BTreeMap<SvcKey, CheckedService<'_>>) {
        for decl in decls {
            let namespace = self.manifest.namespace.clone();
            let Some(key) = self.resolver.service(&decl.name.text, &namespace) else { continue };
            let Some(service) = services.get(&key) else { continue };
            for subset in &decl.subsets {
                let labels: BTreeMap<&str, &str> = subset.labels.iter().map(|(k, v)| (k.text.as_str(), v.text.as_str())).collect();
                let selected = service
                    .catalog
                    .instances
                    .iter()
                    .any(|it| labels.iter().all(|(k, v)| it.labels.get(*k).map(String::as_str) == Some(*v)));
                if selected {
                    // It selects instances, but maybe not on every port traffic is sent to.
                    let uses: Vec<(u16, Span)> = self
                        .subset_port_uses
                        .range((key.clone(), subset.name.text.clone(), 0)..=(key.clone(), subset.name.text.clone(), u16::MAX))
                        .map(|(it, span)| (it.2, *span))
                        .collect();
                    for (port, at) in uses {
                        let on_port = service.catalog.instances.iter().any(|it| {
                            it.service_port == port && labels.iter().all(|(k, v)| it.labels.get(*k).map(String::as_str) == Some(*v))
                        });
                        if !on_port {
                            self.push(
                                Diagnostic::error(
                                    Code::EmptySubset,
                                    format!("subset `{}` of `{}` has no instance on port {port}", subset.name.text, decl.name.text),
                                )
                                .primary(at, format!("traffic to port {port} is routed here, and would fail with 503"))
                                .secondary(subset.name.span, "its instances serve other ports"),
                            );
                        }
                    }
                    continue;
                }
                let used = self.subset_uses.get(&(key.clone(), subset.name.text.clone())).copied();
                let message = format!("subset `{}` of `{}` selects no instance", subset.name.text, decl.name.text);
                let mut diagnostic = match used {
                    Some(_) => Diagnostic::error(Code::EmptySubset, message),
                    None => Diagnostic::warning(Code::EmptySubset, message),
                };
                diagnostic = diagnostic.primary(subset.name.span, "no instance carries these labels");
                if let Some(at) = used {
                    diagnostic = diagnostic.secondary(at, "traffic is routed here, and would fail with 503");
                }
                let mut values: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for instance in &service.catalog.instances {
                    for key in labels.keys() {
                        if let Some(value) = instance.labels.get(*key) {
                            values.entry(key).or_default().push(value);
                        }
                    }
                }
                for (key, mut list) in values {
                    list.sort_unstable();
                    list.dedup();
                    diagnostic = diagnostic.note(format!("instances of `{}` carry {key} = {}", decl.name.text, list.join(", ")));
                }
                if service.catalog.instances.is_empty() {
                    diagnostic = diagnostic.note(format!("`{}` has no instances at all", decl.name.text));
                }
                self.push(diagnostic);
            }
        }
    }
}
