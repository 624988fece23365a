//! Workloads, authorization policies and telemetry: resolves names, parses Istio's value
//! patterns (principals, CIDR blocks, path templates), and finds policies that can never apply.

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir;
use meshc_codegen::ir::{AuthzAction, Pattern, Protocol};

use super::{CheckedPolicy, CheckedService, CheckedWorkload, Checker, SvcKey};
use crate::diag::{Code, Diagnostic};
use crate::source::Span;
use crate::syntax::ast;

/// The labels Istio's request metrics carry already (and `le`, a histogram's own).
const STANDARD_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "le",
];

const SOURCE_KEYS: &[&str] = &["principals", "namespaces", "ip_blocks", "remote_ip_blocks", "workloads"];
const OPERATION_KEYS: &[&str] = &["hosts", "methods", "paths", "ports"];
const WHEN_KEYS: &[&str] = &[
    "request.headers[<name>]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

impl Checker<'_, '_> {
    pub(super) fn mesh_telemetry(&mut self, blocks: &[&ast::Telemetry]) -> ir::Telemetry {
        let base = ir::Telemetry::default();
        if let [first, rest @ ..] = blocks {
            for again in rest {
                self.push(
                    Diagnostic::error(Code::DuplicateName, "the mesh-wide `telemetry` block is declared twice")
                        .primary(again.span, "declared again here")
                        .secondary(first.span, "first declared here"),
                );
            }
            return self.telemetry(&base, first);
        }
        base
    }

    fn telemetry(&mut self, base: &ir::Telemetry, block: &ast::Telemetry) -> ir::Telemetry {
        let mut out = base.clone();
        if let Some(on) = &block.access_log {
            out.access_log = on.value;
        }
        if let Some(on) = &block.request_id {
            out.request_id = on.value;
        }
        if let Some(on) = &block.tracing {
            out.tracing = on.value;
        }
        if let Some(format) = &block.access_log_format {
            match &format.value {
                None => out.access_log_format = ir::AccessLogFormat::Json,
                Some(text) => match meshc_codegen::access_format::parse(text) {
                    Ok(_) => out.access_log_format = ir::AccessLogFormat::Text(text.clone()),
                    // Envoy refuses a format it cannot write; a sidecar that wrote `-` for it
                    // would lose what the format asked for without a word.
                    Err(err) => {
                        let diagnostic = Diagnostic::error(Code::InvalidValue, format!("access log format: {}", err.message))
                            .primary(format.span, format!("at byte {} of the format", err.at));
                        self.push(match err.help {
                            Some(help) => diagnostic.help(help),
                            None => diagnostic,
                        });
                    }
                },
            }
        }
        for (name, value) in &block.metric_labels {
            let valid_name =
                name.text.bytes().enumerate().all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()));
            if !valid_name {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("`{}` is not a Prometheus label name", name.text))
                        .primary(name.span, "use letters, digits and `_`, not starting with a digit"),
                );
                continue;
            }
            if STANDARD_LABELS.contains(&name.text.as_str()) {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("`{}` is a label the request metrics carry already", name.text))
                        .primary(name.span, "a standard label")
                        .help("give the label a name of its own: a series cannot carry one name twice"),
                );
                continue;
            }
            let header = value.text.strip_prefix("request.headers[").and_then(|it| it.strip_suffix(']')).is_some_and(|it| !it.is_empty());
            if !header && !ir::METRIC_ATTRIBUTES.iter().any(|it| it.0 == value.text) {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("unknown request attribute `{}`", value.text))
                        .primary(value.span, "not an attribute")
                        .help(format!("use `request.headers[<name>]` or one of: {}", ir::METRIC_ATTRIBUTES.map(|it| it.0).join(", "))),
                );
                continue;
            }
            out.metric_labels.retain(|it| it.name != name.text);
            out.metric_labels.push(ir::MetricLabel { name: name.text.clone(), value: value.text.clone() });
        }
        out.metric_labels.sort();
        out
    }

    pub(super) fn workloads(
        &mut self,
        decls: &[&ast::Workload],
        telemetry: &ir::Telemetry,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) -> BTreeMap<String, CheckedWorkload> {
        let mut out: BTreeMap<String, CheckedWorkload> = BTreeMap::new();
        let mut spans: BTreeMap<String, Span> = BTreeMap::new();
        for decl in decls {
            if let Some(first) = spans.get(&decl.name.text) {
                self.duplicate("workload", &decl.name.text, decl.name.span, *first);
                continue;
            }
            spans.insert(decl.name.text.clone(), decl.name.span);
            if !crate::manifest::is_dns_label(&decl.name.text) {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("invalid workload name `{}`", decl.name.text))
                        .primary(decl.name.span, "expected a DNS label: lower-case letters, digits and `-`"),
                );
                continue;
            }
            let namespace = decl.namespace.as_ref().map_or_else(|| self.manifest.namespace.clone(), |it| it.text.clone());
            if let Some(ns) = &decl.namespace
                && !crate::manifest::is_dns_label(&ns.text)
            {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("invalid namespace `{}`", ns.text))
                        .primary(ns.span, "expected a DNS label"),
                );
            }
            let service_account = decl.service_account.as_ref().map_or_else(|| decl.name.text.clone(), |it| it.text.clone());
            let serves: Vec<SvcKey> = decl.serves.iter().filter_map(|name| self.service_or_interface(name, &namespace)).flatten().collect();
            self.check_inbound(decl, &serves, services);
            let calls = match &decl.calls {
                None | Some(ast::Spanned { value: ast::Calls::All, .. }) => None,
                Some(ast::Spanned { value: ast::Calls::Only(names), .. }) => {
                    Some(names.iter().filter_map(|name| self.service_or_interface(name, &namespace)).flatten().collect::<BTreeSet<_>>())
                }
            };
            let telemetry = match &decl.telemetry {
                Some(block) => self.telemetry(telemetry, block),
                None => telemetry.clone(),
            };
            out.insert(
                decl.name.text.clone(),
                CheckedWorkload {
                    name: decl.name.text.clone(),
                    namespace,
                    service_account,
                    serves,
                    calls,
                    rate_limit: decl.rate_limit.as_ref().map(|it| super::routes::rate_limit(&it.value)),
                    telemetry,
                    mtls: decl.mtls.as_ref().map_or(ir::PeerMtls::Permissive, |it| peer_mtls(it.value)),
                    port_mtls: decl.port_mtls.iter().map(|(port, mode)| (port.value, peer_mtls(*mode))).collect(),
                    rpc_listener: match decl.rpc_listener.as_ref().map(|it| it.value) {
                        Some(ast::RpcListener::Auto) => ir::RpcListener::Auto,
                        Some(ast::RpcListener::PerProtocol) | None => ir::RpcListener::PerProtocol,
                    },
                    declared_in: Some(self.path(decl.span)),
                },
            );
        }
        out
    }

    /// A service, or every service of an RPC interface.
    fn service_or_interface(&mut self, name: &ast::Name, namespace: &str) -> Option<Vec<SvcKey>> {
        if let Some(key) = self.resolver.service(&name.text, namespace) {
            return Some(vec![key]);
        }
        if let Some(keys) = self.resolver.interface(&name.text) {
            return Some(keys.to_vec());
        }
        self.service_ref(name, namespace).map(|it| vec![it])
    }

    /// IST0137-like: one application port cannot speak two protocols. Inbound traffic is keyed
    /// by the port the application listens on (the target port), as Istio's inbound listeners are.
    fn check_inbound(&mut self, decl: &ast::Workload, serves: &[SvcKey], services: &BTreeMap<SvcKey, CheckedService<'_>>) {
        let mut ports: BTreeMap<u16, (Protocol, &str, u16)> = BTreeMap::new();
        for key in serves {
            for port in &services[key].ports {
                match ports.get(&port.target_port) {
                    Some((protocol, other, other_port)) if *protocol != port.protocol => {
                        let span = decl.serves.iter().find(|it| it.text == key.1).map_or(decl.name.span, |it| it.span);
                        self.push(
                            Diagnostic::error(
                                Code::InboundConflict,
                                format!(
                                    "workload `{}` gets {} on port {} through `{other}` port {other_port}, and {} through `{}` port {}",
                                    decl.name.text,
                                    protocol.as_str(),
                                    port.target_port,
                                    port.protocol.as_str(),
                                    key.1,
                                    port.number
                                ),
                            )
                            .primary(span, "conflicting port")
                            .note("one application port speaks one protocol"),
                        );
                    }
                    Some(_) => {}
                    None => {
                        ports.insert(port.target_port, (port.protocol, key.1.as_str(), port.number));
                    }
                }
            }
        }
        for (port, _) in &decl.port_mtls {
            if !ports.contains_key(&port.value) {
                let served: Vec<String> = ports.keys().map(u16::to_string).collect();
                let served = if served.is_empty() { "none".to_owned() } else { served.join(", ") };
                self.push(
                    Diagnostic::warning(
                        Code::UnservedMtlsPort,
                        format!("workload `{}` serves no port {}; the mode set for it applies to nothing", decl.name.text, port.value),
                    )
                    .primary(port.span, "not an application port of this workload")
                    .note(format!("the ports it serves (the services' target ports) are {served}")),
                );
            }
        }
    }

    pub(super) fn policies(
        &mut self,
        decls: &[&ast::Authorization],
        workloads: &BTreeMap<String, CheckedWorkload>,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) -> BTreeMap<String, CheckedPolicy> {
        let mut out = BTreeMap::new();
        let mut spans: BTreeMap<String, Span> = BTreeMap::new();
        for decl in decls {
            if let Some(first) = spans.get(&decl.name.text) {
                self.duplicate("authorization policy", &decl.name.text, decl.name.span, *first);
                continue;
            }
            spans.insert(decl.name.text.clone(), decl.name.span);
            let action = decl.action.as_ref().map_or(AuthzAction::Allow, |it| it.value);
            let targets = decl.workloads.as_ref().map(|list| {
                list.value
                    .iter()
                    .filter(|name| {
                        let known = workloads.contains_key(&name.text);
                        if !known {
                            self.unknown_workload(name, workloads);
                        }
                        known
                    })
                    .map(|it| it.text.clone())
                    .collect::<Vec<_>>()
            });
            let rules: Vec<ir::AuthzRule> = decl.rules.iter().filter_map(|rule| self.rule(rule, workloads)).collect();
            let targeted: Vec<&CheckedWorkload> = match &targets {
                Some(names) => names.iter().filter_map(|it| workloads.get(it)).collect(),
                None => workloads.values().collect(),
            };
            // With an unknown target, whether the policy applies is unknowable: that error suffices.
            let all_known = decl.workloads.as_ref().is_none_or(|list| list.value.iter().all(|it| workloads.contains_key(&it.text)));
            if all_known {
                self.ineffective(decl, action, &targeted, workloads, services);
            }
            out.insert(decl.name.text.clone(), CheckedPolicy { action, workloads: targets, rules, declared_in: self.path(decl.span) });
        }
        out
    }

    fn unknown_workload(&mut self, name: &ast::Name, workloads: &BTreeMap<String, CheckedWorkload>) {
        let mut diagnostic =
            Diagnostic::error(Code::UnknownWorkload, format!("unknown workload `{}`", name.text)).primary(name.span, "not declared");
        let best = workloads.keys().map(|it| (super::levenshtein(&name.text, it), it)).filter(|it| it.0 <= 2).min();
        if let Some((_, best)) = best {
            diagnostic = diagnostic.help(format!("a workload with a similar name exists: `{best}`"));
        } else if workloads.is_empty() {
            diagnostic = diagnostic.note("the mesh declares no workloads: declare one with `workload NAME { serves ... }`");
        }
        self.push(diagnostic);
    }

    fn rule(&mut self, rule: &ast::AuthzRule, workloads: &BTreeMap<String, CheckedWorkload>) -> Option<ir::AuthzRule> {
        let mut ok = true;
        let mut out = ir::AuthzRule::default();
        for block in &rule.from {
            let mut source = ir::AuthzSource::default();
            let mut workload_principals = Vec::new();
            for field in &block.fields {
                ok &= self.source_field(field, &mut source, &mut workload_principals, workloads);
            }
            // `workloads` is shorthand for their principals, and every field of a block must hold:
            // with `principals` too, a peer must be one of the workloads and match a principal.
            if !workload_principals.is_empty() {
                if source.principals.is_empty() {
                    source.principals = workload_principals;
                } else {
                    let both: Vec<Pattern> = workload_principals
                        .into_iter()
                        .filter(|it| matches!(it, Pattern::Exact(p) if source.principals.iter().any(|pattern| crate::explain::pattern_matches(pattern, p))))
                        .collect();
                    if both.is_empty() {
                        self.push(
                            Diagnostic::warning(
                                Code::IneffectivePolicy,
                                "no workload of this `from` block has one of its principals, so the block never matches",
                            )
                            .primary(block.span, "`workloads` and `principals` must both hold"),
                        );
                        // Keep a principal no peer has, so the block matches nothing, as written.
                        source.principals = vec![Pattern::Exact(String::new())];
                    } else {
                        source.principals = both;
                    }
                }
            }
            out.from.push(source);
        }
        for block in &rule.to {
            let mut operation = ir::AuthzOperation::default();
            for field in &block.fields {
                ok &= self.operation_field(field, &mut operation);
            }
            out.to.push(operation);
        }
        for when in &rule.when {
            match self.condition(when) {
                Some(condition) => out.when.push(condition),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn source_field(
        &mut self,
        field: &ast::AuthzField,
        source: &mut ir::AuthzSource,
        workload_principals: &mut Vec<Pattern>,
        workloads: &BTreeMap<String, CheckedWorkload>,
    ) -> bool {
        match field.key.text.as_str() {
            "principals" => self
                .patterns(field, false)
                .map(|it| extend(&mut source.principals, &mut source.not_principals, field.negated, it))
                .is_some(),
            "namespaces" => self
                .patterns(field, false)
                .map(|it| extend(&mut source.namespaces, &mut source.not_namespaces, field.negated, it))
                .is_some(),
            "ip_blocks" | "remote_ip_blocks" => {
                let mut blocks = Vec::new();
                for value in &field.values {
                    match parse_cidr(&value.text) {
                        Ok(block) => blocks.push(block),
                        Err(err) => {
                            self.push(
                                Diagnostic::error(Code::InvalidPattern, format!("invalid IP block `{}`: {err}", value.text))
                                    .primary(value.span, "not an address or CIDR block"),
                            );
                            return false;
                        }
                    }
                }
                if field.key.text == "remote_ip_blocks" {
                    extend(&mut source.remote_ip_blocks, &mut source.not_remote_ip_blocks, field.negated, blocks);
                } else {
                    extend(&mut source.ip_blocks, &mut source.not_ip_blocks, field.negated, blocks);
                }
                true
            }
            "workloads" => {
                let mut principals = Vec::new();
                for value in &field.values {
                    match workloads.get(&value.text) {
                        Some(workload) => principals.push(Pattern::Exact(self.principal(workload))),
                        None => {
                            self.unknown_workload(value, workloads);
                            return false;
                        }
                    }
                }
                if field.negated {
                    source.not_principals.extend(principals);
                } else {
                    workload_principals.extend(principals);
                }
                true
            }
            _ => self.unknown_key(field, "from", SOURCE_KEYS),
        }
    }

    fn operation_field(&mut self, field: &ast::AuthzField, operation: &mut ir::AuthzOperation) -> bool {
        match field.key.text.as_str() {
            "hosts" => {
                self.patterns(field, false).map(|it| extend(&mut operation.hosts, &mut operation.not_hosts, field.negated, it)).is_some()
            }
            "methods" => self
                .patterns(field, false)
                .map(|it| extend(&mut operation.methods, &mut operation.not_methods, field.negated, it))
                .is_some(),
            "paths" => {
                self.patterns(field, true).map(|it| extend(&mut operation.paths, &mut operation.not_paths, field.negated, it)).is_some()
            }
            "ports" => {
                let mut ports = Vec::new();
                for value in &field.values {
                    match value.text.parse::<u16>() {
                        Ok(port) if port > 0 => ports.push(port),
                        _ => {
                            self.push(
                                Diagnostic::error(Code::InvalidValue, format!("`{}` is not a port", value.text))
                                    .primary(value.span, "expected 1 to 65535"),
                            );
                            return false;
                        }
                    }
                }
                extend(&mut operation.ports, &mut operation.not_ports, field.negated, ports);
                true
            }
            _ => self.unknown_key(field, "to", OPERATION_KEYS),
        }
    }

    fn unknown_key(&mut self, field: &ast::AuthzField, block: &str, keys: &[&str]) -> bool {
        self.push(
            Diagnostic::error(Code::InvalidPattern, format!("unknown field `{}` in `{block}`", field.key.text))
                .primary(field.key.span, "not a field of this block")
                .help(format!("use one of: {}", keys.join(", "))),
        );
        false
    }

    /// Istio's string patterns: exact, `prefix*`, `*suffix`, `*`; paths may be templates.
    fn patterns(&mut self, field: &ast::AuthzField, paths: bool) -> Option<Vec<Pattern>> {
        let mut out = Vec::new();
        for value in &field.values {
            match parse_pattern(&value.text, paths) {
                Ok(pattern) => out.push(pattern),
                Err(err) => {
                    self.push(
                        Diagnostic::error(Code::InvalidPattern, format!("invalid pattern `{}`: {err}", value.text)).primary(value.span, ""),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn condition(&mut self, when: &ast::When) -> Option<ir::AuthzCondition> {
        let key = match when.key.text.as_str() {
            "source.ip" => ir::ConditionKey::SourceIp,
            "remote.ip" => ir::ConditionKey::RemoteIp,
            "source.namespace" => ir::ConditionKey::SourceNamespace,
            "source.principal" => ir::ConditionKey::SourcePrincipal,
            "destination.ip" => ir::ConditionKey::DestinationIp,
            "destination.port" => ir::ConditionKey::DestinationPort,
            "connection.sni" => ir::ConditionKey::ConnectionSni,
            other => match other.strip_prefix("request.headers[").and_then(|it| it.strip_suffix(']')) {
                Some(name) if !name.is_empty() => ir::ConditionKey::RequestHeader(name.to_ascii_lowercase()),
                _ => {
                    self.push(
                        Diagnostic::error(Code::InvalidPattern, format!("unknown condition key `{other}`"))
                            .primary(when.key.span, "not a condition key")
                            .help(format!("use `header \"name\"` or one of: {}", WHEN_KEYS.join(", "))),
                    );
                    return None;
                }
            },
        };
        let mut values = Vec::new();
        for value in &when.values {
            let pattern = match key {
                ir::ConditionKey::SourceIp | ir::ConditionKey::RemoteIp | ir::ConditionKey::DestinationIp => {
                    parse_cidr(&value.text).map(|_| Pattern::Exact(value.text.clone()))
                }
                ir::ConditionKey::DestinationPort => value
                    .text
                    .parse::<u16>()
                    .ok()
                    .filter(|it| *it > 0)
                    .map(|_| Pattern::Exact(value.text.clone()))
                    .ok_or_else(|| "not a port".to_owned()),
                _ => parse_pattern(&value.text, false),
            };
            match pattern {
                Ok(pattern) => values.push(pattern),
                Err(err) => {
                    self.push(
                        Diagnostic::error(Code::InvalidPattern, format!("invalid value `{}` for `{}`: {err}", value.text, when.key.text))
                            .primary(value.span, ""),
                    );
                    return None;
                }
            }
        }
        let (values, not_values) = if when.negated { (Vec::new(), values) } else { (values, Vec::new()) };
        Some(ir::AuthzCondition { key, values, not_values })
    }

    pub(super) fn principal(&self, workload: &CheckedWorkload) -> String {
        format!("{}/ns/{}/sa/{}", self.manifest.trust_domain, workload.namespace, workload.service_account)
    }

    /// IST0167-like: a policy, or a rule of it, that can never change a verdict.
    fn ineffective(
        &mut self,
        decl: &ast::Authorization,
        action: AuthzAction,
        targeted: &[&CheckedWorkload],
        workloads: &BTreeMap<String, CheckedWorkload>,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) {
        let inbound: BTreeMap<u16, Protocol> = targeted
            .iter()
            .flat_map(|it| it.serves.iter())
            .flat_map(|key| services[key].ports.iter())
            .map(|it| (it.target_port, it.protocol))
            .collect();
        if inbound.is_empty() {
            let whom =
                if decl.workloads.is_some() { "no workload it targets serves a port" } else { "no workload of the mesh serves a port" };
            let mut diagnostic =
                Diagnostic::warning(Code::IneffectivePolicy, format!("authorization policy `{}` never applies", decl.name.text))
                    .primary(decl.name.span, whom)
                    .note("authorization applies to inbound requests, and the targeted workloads serve none");
            if let Some(list) = &decl.workloads {
                diagnostic = diagnostic.secondary(list.span, "targets");
            }
            self.push(diagnostic);
            return;
        }
        let any_http = inbound.values().any(|it| it.is_http());
        let served: BTreeSet<&SvcKey> = targeted.iter().flat_map(|it| it.serves.iter()).collect();
        for rule in &decl.rules {
            if !any_http {
                let http_fields: Vec<Span> = rule
                    .to
                    .iter()
                    .flat_map(|it| it.fields.iter())
                    .filter(|it| matches!(it.key.text.as_str(), "paths" | "hosts"))
                    .map(|it| it.key.span)
                    .chain(rule.when.iter().filter(|it| it.key.text.starts_with("request.headers[")).map(|it| it.key.span))
                    .collect();
                if let Some(first) = http_fields.first() {
                    let protocols: BTreeSet<&str> = inbound.values().map(|it| it.as_str()).collect();
                    let effect = match action {
                        AuthzAction::Allow | AuthzAction::Audit => "this rule never matches",
                        AuthzAction::Deny => "Istio drops these fields from a DENY rule, so it denies more than it says",
                    };
                    self.push(
                        Diagnostic::warning(
                            Code::IneffectivePolicy,
                            format!("a rule of `{}` matches HTTP requests, but its workloads serve none", decl.name.text),
                        )
                        .primary(*first, "HTTP-only field")
                        .note(format!("the targeted ports speak {}: {effect}", protocols.into_iter().collect::<Vec<_>>().join(", "))),
                    );
                }
            }
            for field in rule.to.iter().flat_map(|it| it.fields.iter()).filter(|it| it.key.text == "ports" && !it.negated) {
                let ports: Vec<u16> = field.values.iter().filter_map(|it| it.text.parse().ok()).collect();
                if !ports.is_empty() && !ports.iter().any(|it| inbound.contains_key(it)) {
                    let served_ports: Vec<String> = inbound.keys().map(u16::to_string).collect();
                    self.push(
                        Diagnostic::warning(
                            Code::IneffectivePolicy,
                            format!("a rule of `{}` names ports its workloads do not serve", decl.name.text),
                        )
                        .primary(field.span, "never matches")
                        .note(format!("the targeted workloads serve port(s) {}", served_ports.join(", "))),
                    );
                }
            }
            for field in rule.from.iter().flat_map(|it| it.fields.iter()).filter(|it| it.key.text == "workloads" && !it.negated) {
                for value in &field.values {
                    let Some(caller) = workloads.get(&value.text) else { continue };
                    let reaches = match &caller.calls {
                        None => true,
                        Some(calls) => served.iter().any(|it| calls.contains(*it)),
                    };
                    if !reaches {
                        self.push(
                            Diagnostic::warning(
                                Code::IneffectivePolicy,
                                format!("`{}` may not call any service of the workloads `{}` protects", value.text, decl.name.text),
                            )
                            .primary(value.span, "never sends requests here")
                            .note(format!("`{}` calls only what its `calls` lists", value.text)),
                        );
                    }
                }
            }
        }
    }
}

fn extend<T>(positive: &mut Vec<T>, negative: &mut Vec<T>, negated: bool, values: Vec<T>) {
    if negated { negative.extend(values) } else { positive.extend(values) }
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a /32 or /128 block).
pub fn parse_cidr(text: &str) -> Result<ir::IpBlock, String> {
    ir::IpBlock::parse(text)
}

/// Parses one of Istio's string patterns.
pub fn parse_pattern(text: &str, path: bool) -> Result<Pattern, String> {
    if text == "*" {
        return Ok(Pattern::Any);
    }
    if path && text.contains('{') {
        if !text.starts_with('/') {
            return Err("a path template starts with `/`".to_owned());
        }
        let segments: Vec<String> = text[1..].split('/').map(str::to_owned).collect();
        for (index, segment) in segments.iter().enumerate() {
            let is_operator = segment == "{*}" || segment == "{**}";
            if segment.contains(['{', '}', '*']) && !is_operator {
                return Err("in a template, `{*}` and `{**}` must be whole segments".to_owned());
            }
            if segment == "{**}" && index + 1 != segments.len() {
                return Err("`{**}` must be the last segment".to_owned());
            }
        }
        return Ok(Pattern::Template(segments));
    }
    let stars = text.matches('*').count();
    match (stars, text.strip_suffix('*'), text.strip_prefix('*')) {
        (0, _, _) => Ok(Pattern::Exact(text.to_owned())),
        (1, Some(prefix), _) => Ok(Pattern::Prefix(prefix.to_owned())),
        (1, _, Some(suffix)) => Ok(Pattern::Suffix(suffix.to_owned())),
        _ => Err("`*` may appear once, at the start or the end".to_owned()),
    }
}

fn peer_mtls(mode: ast::MtlsMode) -> ir::PeerMtls {
    match mode {
        ast::MtlsMode::Strict => ir::PeerMtls::Strict,
        ast::MtlsMode::Permissive => ir::PeerMtls::Permissive,
        ast::MtlsMode::Disable => ir::PeerMtls::Disable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_canonical() {
        let block = parse_cidr("10.1.2.3/16").unwrap();
        assert_eq!((block.address.to_string(), block.prefix_len), ("10.1.0.0".to_owned(), 16));
        assert_eq!(parse_cidr("fd00::1").unwrap().prefix_len, 128);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten").is_err());
    }

    #[test]
    fn patterns_follow_istio() {
        assert_eq!(parse_pattern("/api/*", true).unwrap(), Pattern::Prefix("/api/".into()));
        assert_eq!(parse_pattern("*.example.com", false).unwrap(), Pattern::Suffix(".example.com".into()));
        assert_eq!(
            parse_pattern("/a/{*}/b/{**}", true).unwrap(),
            Pattern::Template(vec!["a".into(), "{*}".into(), "b".into(), "{**}".into()])
        );
        assert!(parse_pattern("/a*b*", false).is_err());
        assert!(parse_pattern("/{**}/x", true).is_err());
        assert!(parse_pattern("/a{*}", true).is_err());
    }
}
