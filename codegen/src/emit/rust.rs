//! One workload's sidecar crate: `Cargo.toml`, `src/main.rs` (the spec and listeners),
//! `src/routes.rs` (host dispatch and one function per route table), `src/clusters.rs`
//! (clusters and their seed endpoints), `src/policy.rs` (the inbound authorization policies)
//! and `src/dump.rs` (the tables as JSON for the admin endpoint).
//!
//! Routing is code: a request's host picks a table through a static hash table laid out here,
//! and a table is a sequence of `if` statements over the request head, in route order. A table
//! of more than [`CHUNK`] alternatives becomes indexed static data instead (exact paths, path
//! prefixes, the rest), so lookups try only the routes that can match and the generated crate
//! compiles in bounded time whatever the spec's size.

use std::collections::BTreeMap;

use proc_macro2::{Ident, Literal, TokenStream};
use quote::{ToTokens, format_ident, quote};

use super::{EmitOptions, GeneratedFile, rust_header, toml_header};
use crate::ir::{
    AbortStatus, AccessLogFormat, Action, AuthzAction, AuthzPolicy, AuthzRule, Cluster, ClusterId, ConditionKey, Fault, HashOn, HeaderOps,
    HealthProbe, IpBlock, LoadBalancer, Match, Mesh, Pattern, PeerMtls, PresenceMatch, Protocol, RateLimit, RetryPolicy, Route, RouteTable,
    RouteTableKind, RpcListener, StringMatch, StringMatchKind, TlsMode, Workload,
};

/// Tables with more match alternatives than this are emitted as indexed static data.
const CHUNK: usize = 64;

/// First port of the default inbound listener addresses (Istio's inbound capture port).
const FIRST_INBOUND_PORT: u16 = 15006;

pub(super) fn workload_crate(mesh: &Mesh, workload: &Workload, options: &EmitOptions) -> Vec<GeneratedFile> {
    let clusters = LocalClusters::new(mesh, workload);
    let mut routes = RoutesEmitter { mesh, clusters: &clusters, regexes: BTreeMap::new(), statics: Vec::new(), route_stats: Vec::new() };
    let routes_file = routes.file(workload);
    vec![
        GeneratedFile { path: "Cargo.toml".to_owned(), text: cargo_toml(mesh, workload, options) },
        GeneratedFile { path: "src/main.rs".to_owned(), text: render(mesh, options, main_file(mesh, workload, &clusters)) },
        GeneratedFile { path: "src/routes.rs".to_owned(), text: render(mesh, options, routes_file) },
        GeneratedFile { path: "src/clusters.rs".to_owned(), text: render(mesh, options, clusters_file(mesh, &clusters)) },
        GeneratedFile { path: "src/dump.rs".to_owned(), text: render(mesh, options, dump_file(mesh, workload, &clusters)) },
        GeneratedFile { path: "src/policy.rs".to_owned(), text: render(mesh, options, policy_file(mesh, workload)) },
    ]
}

fn cargo_toml(mesh: &Mesh, workload: &Workload, options: &EmitOptions) -> String {
    format!(
        "{}[package]\nname = \"meshc-sidecar-{binary}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\ndescription = \"The meshc sidecar of workload `{name}` of mesh `{mesh}`\"\n\n[[bin]]\nname = \"{binary}\"\npath = \"src/main.rs\"\n\n[dependencies]\nmeshc-runtime = {{ path = \"{runtime}\" }}\n",
        toml_header(mesh, options),
        binary = super::binary_name(mesh, workload),
        name = workload.name,
        mesh = mesh.name,
        runtime = options.runtime_path,
    )
}

/// Formats a token stream as a source file with the generated header.
fn render(mesh: &Mesh, options: &EmitOptions, tokens: TokenStream) -> String {
    // The tokens come from this module, so they always parse; if they ever did not, the
    // unformatted text still compiles or fails with rustc's own message.
    let body = match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    };
    format!("{}{body}", rust_header(mesh, options))
}

/// The workload's clusters, renumbered densely in the order of `workload.clusters`.
struct LocalClusters<'m> {
    mesh: &'m Mesh,
    ids: Vec<ClusterId>,
}

impl<'m> LocalClusters<'m> {
    fn new(mesh: &'m Mesh, workload: &Workload) -> LocalClusters<'m> {
        LocalClusters { mesh, ids: workload.clusters.clone() }
    }

    fn local(&self, id: ClusterId) -> Option<u32> {
        self.ids.binary_search(&id).ok().map(|it| it as u32)
    }

    fn iter(&self) -> impl Iterator<Item = &'m Cluster> + '_ {
        self.ids.iter().map(|id| &self.mesh.clusters[id.index()])
    }
}

fn str_lit(text: &str) -> Literal {
    Literal::string(text)
}

/// A raw string literal, so that multi-line text stays readable in the generated file.
fn raw_str_lit(text: &str) -> Literal {
    let mut hashes = String::from("#");
    while text.contains(&format!("\"{hashes}")) {
        hashes.push('#');
    }
    format!("r{hashes}\"{text}\"{hashes}").parse().unwrap_or_else(|_| Literal::string(text))
}

fn int(value: impl Into<u64>) -> Literal {
    Literal::u64_unsuffixed(value.into())
}

/// A token bucket's construction.
fn rate_limit(limit: &RateLimit) -> TokenStream {
    let (max, per_fill, interval) = (int(limit.max_tokens), int(limit.tokens_per_fill), int(limit.fill_interval_ms));
    let per_source = limit.per_source;
    quote!(rt::RateLimit::new(#max, #per_fill, #interval, #per_source))
}

/// A route's injected faults, or `rt::Fault::NONE`.
fn fault(fault: Option<&Fault>) -> TokenStream {
    let Some(fault) = fault else { return quote!(rt::Fault::NONE) };
    let delay = match &fault.delay {
        Some(delay) => {
            let (ms, share) = (int(delay.delay_ms), int(delay.per_million));
            quote!(Some((#ms, #share)))
        }
        None => quote!(None),
    };
    let abort = match &fault.abort {
        Some(abort) => {
            let share = int(abort.per_million);
            let answer = match abort.status {
                AbortStatus::Http(code) => {
                    let code = int(code);
                    quote!(rt::Abort::Http(#code))
                }
                AbortStatus::Grpc(code) => {
                    let code = int(code);
                    quote!(rt::Abort::Grpc(#code))
                }
            };
            quote!(Some((#answer, #share)))
        }
        None => quote!(None),
    };
    quote!(rt::Fault { delay: #delay, abort: #abort })
}

/// A route's retry policy: its conditions as `rt::RetryOn` bits, or `rt::Retries::NONE`.
fn retries(policy: &RetryPolicy) -> TokenStream {
    if policy.attempts == 0 {
        return quote!(rt::Retries::NONE);
    }
    // Conditions the sidecar cannot observe (rate limiting by Envoy, HTTP/3, retriable
    // headers with no header list) are left out.
    let bits: Vec<TokenStream> = policy
        .retry_on
        .iter()
        .filter_map(|it| {
            let name = match it.as_str() {
                "5xx" => "FIVE_XX",
                "gateway-error" => "GATEWAY_ERROR",
                "reset" => "RESET",
                "reset-before-request" => "RESET_BEFORE_REQUEST",
                "connect-failure" => "CONNECT_FAILURE",
                "refused-stream" => "REFUSED_STREAM",
                "retriable-4xx" => "RETRIABLE_4XX",
                "retriable-status-codes" => "RETRIABLE_STATUS_CODES",
                "cancelled" => "CANCELLED",
                "deadline-exceeded" => "DEADLINE_EXCEEDED",
                "internal" => "INTERNAL",
                "resource-exhausted" => "RESOURCE_EXHAUSTED",
                "unavailable" => "UNAVAILABLE",
                _ => return None,
            };
            let name = format_ident!("{}", name);
            Some(quote!(rt::RetryOn::#name))
        })
        .collect();
    let on = if bits.is_empty() { quote!(0) } else { quote!(#(#bits)|*) };
    let attempts = int(policy.attempts);
    let per_try = match policy.per_try_timeout_ms {
        Some(ms) => {
            let ms = int(ms);
            quote!(Some(#ms))
        }
        None => quote!(None),
    };
    let statuses = policy.retriable_status_codes.iter().map(|it| int(*it));
    let avoid = policy.avoid_previous_hosts;
    let any_method = policy.any_method;
    quote! {
        rt::Retries {
            attempts: #attempts,
            per_try_timeout_ms: #per_try,
            on: #on,
            statuses: &[#(#statuses),*],
            avoid_previous_hosts: #avoid,
            any_method: #any_method,
        }
    }
}

fn protocol_tokens(protocol: Protocol) -> TokenStream {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => quote!(rt::Protocol::Http2),
        Protocol::Http => quote!(rt::Protocol::Http1),
        Protocol::Tcp => quote!(rt::Protocol::Tcp),
        Protocol::Bolt => quote!(rt::Protocol::Bolt),
        Protocol::Dubbo => quote!(rt::Protocol::Dubbo),
        Protocol::Auto => quote!(rt::Protocol::Downstream),
    }
}

fn main_file(mesh: &Mesh, workload: &Workload, clusters: &LocalClusters<'_>) -> TokenStream {
    let name = str_lit(&workload.name);
    let namespace = str_lit(&workload.namespace);
    let trust_domain = str_lit(&mesh.trust_domain);
    let principal = str_lit(&workload.principal);
    let mut listeners = vec![quote! {
        rt::ListenerSpec { name: "outbound", default_address: "127.0.0.1:15001", kind: rt::ListenerKind::Outbound }
    }];
    // One listener per TCP service port the workload calls: with no host to route on, the
    // listener names the destination (Istio tells them apart by the service's address).
    for table in workload.outbound.iter().map(|id| &mesh.route_tables[id.index()]) {
        let RouteTableKind::Tcp { service, port } = &table.kind else { continue };
        // The first route without conditions decides (TCP routes match nothing else here).
        let Some(Action::Forward { destinations, .. }) =
            table.routes.iter().find(|it| it.matches.is_empty()).or(table.routes.first()).map(|it| &it.action)
        else {
            continue;
        };
        let service = &mesh.services[service.index()];
        let listener = str_lit(&format!("outbound-tcp-{}-{port}", service.name));
        let address = str_lit(&format!("127.0.0.1:{port}"));
        let names = [service.name.clone(), format!("{}.{}", service.name, service.namespace), service.host.clone()];
        let names = names.iter().map(|it| str_lit(it));
        let destinations = destinations.iter().filter_map(|it| {
            let cluster = int(clusters.local(it.cluster)?);
            let weight = int(it.weight);
            Some(quote!(rt::WeightedCluster { cluster: #cluster, weight: #weight }))
        });
        listeners.push(quote! {
            rt::ListenerSpec {
                name: #listener,
                default_address: #address,
                kind: rt::ListenerKind::OutboundTcp { service_names: &[#(#names),*], destinations: &[#(#destinations),*] },
            }
        });
    }
    // One outbound listener per RPC protocol the workload calls (a contract: `outbound-bolt`
    // and `outbound-dubbo`, at SOFAMesh's and Dubbo's usual egress ports).
    let rpc_tables = || {
        workload.outbound.iter().map(|id| &mesh.route_tables[id.index()]).filter_map(|it| match &it.kind {
            RouteTableKind::Rpc { protocol, .. } => Some((*protocol, it)),
            _ => None,
        })
    };
    // With `rpc_listener auto`, one listener (`outbound-rpc`, at the Bolt port) for both,
    // told apart by each connection's first byte.
    let (calls_bolt, calls_dubbo) = (rpc_tables().any(|(it, _)| it == Protocol::Bolt), rpc_tables().any(|(it, _)| it == Protocol::Dubbo));
    if workload.rpc_listener == RpcListener::Auto && (calls_bolt || calls_dubbo) {
        listeners.push(quote! {
            rt::ListenerSpec {
                name: "outbound-rpc",
                default_address: "127.0.0.1:12220",
                kind: rt::ListenerKind::OutboundRpcSniffed { bolt: #calls_bolt, dubbo: #calls_dubbo },
            }
        });
    } else {
        for (calls, name, address, kind) in [
            (calls_bolt, "outbound-bolt", "127.0.0.1:12220", quote!(Bolt)),
            (calls_dubbo, "outbound-dubbo", "127.0.0.1:20881", quote!(Dubbo)),
        ] {
            if calls {
                listeners.push(quote! {
                    rt::ListenerSpec { name: #name, default_address: #address, kind: rt::ListenerKind::OutboundRpc { protocol: rt::RpcProtocol::#kind } }
                });
            }
        }
    }
    // Dubbo attachments are read only when a route looks at the group or at an attachment.
    let rpc_attachments = rpc_tables()
        .filter(|(protocol, _)| *protocol == Protocol::Dubbo)
        .flat_map(|(_, table)| table.routes.iter().flat_map(|route| &route.matches))
        .any(|m| m.group.is_some() || !m.headers.is_empty());
    // An `auto` port tells Bolt and Dubbo from HTTP by a connection's first byte, for the RPC
    // protocols the workload uses (serves or calls) and only those.
    let uses = |protocol: Protocol| workload.inbound.iter().any(|it| it.protocol == protocol) || rpc_tables().any(|(it, _)| it == protocol);
    let (sniff_bolt, sniff_dubbo) = (uses(Protocol::Bolt), uses(Protocol::Dubbo));
    let inbound: Vec<_> = workload.inbound.iter().collect();
    for (index, port) in inbound.iter().enumerate() {
        let listener = str_lit(&format!("inbound-{}", port.port));
        let address = str_lit(&format!("0.0.0.0:{}", FIRST_INBOUND_PORT + index as u16));
        let app_port = int(port.port);
        let protocol = match port.protocol {
            Protocol::Auto if sniff_bolt || sniff_dubbo => quote!(rt::Protocol::Sniffed { bolt: #sniff_bolt, dubbo: #sniff_dubbo }),
            other => protocol_tokens(other),
        };
        // Telemetry names the first service served on the port.
        let names: Vec<String> = port
            .services
            .first()
            .map(|it| &mesh.services[it.index()])
            .map(|it| vec![it.name.clone(), format!("{}.{}", it.name, it.namespace), it.host.clone()])
            .unwrap_or_default();
        let names = names.iter().map(|it| str_lit(it));
        let mtls = match port.mtls {
            PeerMtls::Disable => quote!(rt::PeerMtls::Disable),
            PeerMtls::Permissive => quote!(rt::PeerMtls::Permissive),
            PeerMtls::Strict => quote!(rt::PeerMtls::Strict),
        };
        listeners.push(quote! {
            rt::ListenerSpec {
                name: #listener,
                default_address: #address,
                kind: rt::ListenerKind::Inbound {
                    app_port: #app_port,
                    protocol: #protocol,
                    service_names: &[#(#names),*],
                    mtls: #mtls,
                },
            }
        });
    }
    let listener_count = int(listeners.len() as u64);
    let (request_id, tracing) = (workload.telemetry.request_id, workload.telemetry.tracing);
    let access_log = match (&workload.telemetry.access_log, &workload.telemetry.access_log_format) {
        (false, _) => quote!(rt::AccessLog::Off),
        (true, AccessLogFormat::Json) => quote!(rt::AccessLog::Json),
        (true, AccessLogFormat::Text(format)) => {
            let format = str_lit(format);
            quote!(rt::AccessLog::Text(#format))
        }
    };
    let metric_labels = workload.telemetry.metric_labels.iter().map(|label| {
        let name = str_lit(&label.name);
        let attribute = match crate::ir::METRIC_ATTRIBUTES.iter().find(|it| it.0 == label.value) {
            Some((_, variant)) => {
                let variant = format_ident!("{variant}");
                quote!(#variant)
            }
            // The checker let only `request.headers[<name>]` through besides these.
            None => {
                let header = label.value.strip_prefix("request.headers[").and_then(|it| it.strip_suffix(']')).unwrap_or(&label.value);
                let header = str_lit(&header.to_ascii_lowercase());
                quote!(RequestHeader(#header))
            }
        };
        quote!(rt::MetricLabel { name: #name, attribute: rt::MetricAttribute::#attribute })
    });
    let (inbound_rate_limit, limit_static) = match &workload.rate_limit {
        Some(limit) => {
            let limit = rate_limit(limit);
            (
                quote!(Some(&INBOUND_RATE_LIMIT)),
                quote! {
                    /// The local rate limit of every inbound request.
                    static INBOUND_RATE_LIMIT: rt::RateLimit = #limit;
                },
            )
        }
        None => (quote!(None), quote!()),
    };
    let doc = format!(" The sidecar of workload `{}` of mesh `{}`.", workload.name, mesh.name);
    quote! {
        #![doc = #doc]
        #![allow(clippy::all, unused_variables)]

        pub mod clusters;
        pub mod dump;
        pub mod policy;
        pub mod routes;

        use meshc_runtime::__codegen as rt;

        /// Listeners: `outbound`, `outbound-bolt` and `outbound-dubbo` when the workload calls RPC services (or one `outbound-rpc` for both with `rpc_listener auto`), one `outbound-tcp-<service>-<port>` per TCP service port called, and one `inbound-<port>` per application port.
        static LISTENERS: [rt::ListenerSpec; #listener_count] = [#(#listeners),*];

        #limit_static

        /// Everything the runtime needs.
        static SIDECAR: rt::SidecarSpec = rt::SidecarSpec {
            workload: #name,
            namespace: #namespace,
            trust_domain: #trust_domain,
            principal: #principal,
            listeners: &LISTENERS,
            clusters: &clusters::CLUSTERS,
            route_outbound: routes::route_outbound,
            route_rpc: routes::route_rpc,
            rpc_attachments: #rpc_attachments,
            authz: &policy::AUTHZ,
            inbound_rate_limit: #inbound_rate_limit,
            access_log: #access_log,
            metric_labels: &[#(#metric_labels),*],
            request_id: #request_id,
            tracing: #tracing,
            config_dump: dump::CONFIG_DUMP,
            routes: &routes::ROUTE_STATS,
            virtual_hosts: &routes::VIRTUAL_HOSTS,
        };

        fn main() -> std::process::ExitCode {
            rt::run(&SIDECAR)
        }
    }
}

/// The workload's authorization policies as `rt::Policies`: DENY and ALLOW policies in the
/// IR's order (AUDIT ones change no verdict), with patterns and address blocks ready to test.
fn policy_file(mesh: &Mesh, workload: &Workload) -> TokenStream {
    let policies: Vec<&AuthzPolicy> = workload.authz.iter().map(|it| &mesh.authz_policies[it.index()]).collect();
    let emit = |action: AuthzAction| {
        let items = policies.iter().filter(|it| it.action == action).map(|policy| {
            let name = str_lit(&policy.name);
            let rules = policy.rules.iter().map(authz_rule);
            quote!(rt::Policy { name: #name, rules: &[#(#rules),*] })
        });
        quote!(&[#(#items),*])
    };
    let (deny, allow) = (emit(AuthzAction::Deny), emit(AuthzAction::Allow));
    let names: Vec<&str> = policies.iter().map(|it| it.name.as_str()).collect();
    let doc = if names.is_empty() {
        " No authorization policy applies to this workload: every request is allowed.".to_owned()
    } else {
        format!(" The authorization policies of this workload's inbound requests: {}.", names.join(", "))
    };
    quote! {
        //! Authorization, evaluated by the runtime with Istio's semantics.

        use meshc_runtime::__codegen as rt;

        #[doc = #doc]
        pub static AUTHZ: rt::Policies = rt::Policies { deny: #deny, allow: #allow };
    }
}

fn authz_rule(rule: &AuthzRule) -> TokenStream {
    let patterns = |list: &[Pattern], lower: bool| {
        let items = list.iter().map(|pattern| {
            let text = |it: &str| str_lit(&if lower { it.to_ascii_lowercase() } else { it.to_owned() });
            match pattern {
                Pattern::Exact(it) => {
                    let it = text(it);
                    quote!(rt::Pat::Exact(#it))
                }
                Pattern::Prefix(it) => {
                    let it = text(it);
                    quote!(rt::Pat::Prefix(#it))
                }
                Pattern::Suffix(it) => {
                    let it = text(it);
                    quote!(rt::Pat::Suffix(#it))
                }
                Pattern::Any => quote!(rt::Pat::Any),
                Pattern::Template(segments) => {
                    let segments = segments.iter().map(|it| str_lit(it));
                    quote!(rt::Pat::Template(&[#(#segments),*]))
                }
            }
        });
        quote!(&[#(#items),*])
    };
    let blocks = |list: &[IpBlock]| {
        let items = list.iter().map(cidr);
        quote!(&[#(#items),*])
    };
    let ports = |list: &[u16]| {
        let items = list.iter().map(|it| int(*it));
        quote!(&[#(#items),*])
    };
    let from = rule.from.iter().map(|source| {
        let (principals, not_principals) = (patterns(&source.principals, false), patterns(&source.not_principals, false));
        let (namespaces, not_namespaces) = (patterns(&source.namespaces, false), patterns(&source.not_namespaces, false));
        let (ip_blocks, not_ip_blocks) = (blocks(&source.ip_blocks), blocks(&source.not_ip_blocks));
        let (remote, not_remote) = (blocks(&source.remote_ip_blocks), blocks(&source.not_remote_ip_blocks));
        quote! {
            rt::Source {
                principals: #principals, not_principals: #not_principals,
                namespaces: #namespaces, not_namespaces: #not_namespaces,
                ip_blocks: #ip_blocks, not_ip_blocks: #not_ip_blocks,
                remote_ip_blocks: #remote, not_remote_ip_blocks: #not_remote,
            }
        }
    });
    let to = rule.to.iter().map(|op| {
        let (hosts, not_hosts) = (patterns(&op.hosts, true), patterns(&op.not_hosts, true));
        let (methods, not_methods) = (patterns(&op.methods, false), patterns(&op.not_methods, false));
        let (paths, not_paths) = (patterns(&op.paths, false), patterns(&op.not_paths, false));
        let (op_ports, not_ports) = (ports(&op.ports), ports(&op.not_ports));
        quote! {
            rt::Operation {
                hosts: #hosts, not_hosts: #not_hosts,
                methods: #methods, not_methods: #not_methods,
                paths: #paths, not_paths: #not_paths,
                ports: #op_ports, not_ports: #not_ports,
            }
        }
    });
    let when = rule.when.iter().map(|condition| {
        let addresses = matches!(condition.key, ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp);
        let key = match &condition.key {
            ConditionKey::RequestHeader(name) => {
                let name = str_lit(&name.to_ascii_lowercase());
                quote!(rt::AuthzKey::RequestHeader(#name))
            }
            ConditionKey::SourceIp => quote!(rt::AuthzKey::SourceIp),
            ConditionKey::RemoteIp => quote!(rt::AuthzKey::RemoteIp),
            ConditionKey::SourceNamespace => quote!(rt::AuthzKey::SourceNamespace),
            ConditionKey::SourcePrincipal => quote!(rt::AuthzKey::SourcePrincipal),
            ConditionKey::DestinationPort => quote!(rt::AuthzKey::DestinationPort),
            ConditionKey::DestinationIp => quote!(rt::AuthzKey::DestinationIp),
            ConditionKey::ConnectionSni => quote!(rt::AuthzKey::ConnectionSni),
        };
        // Address keys take their values as blocks (the checker made sure they parse).
        let as_blocks = |list: &[Pattern]| -> Vec<IpBlock> {
            list.iter()
                .filter_map(|it| match it {
                    Pattern::Exact(text) => IpBlock::parse(text).ok(),
                    _ => None,
                })
                .collect()
        };
        let (values, not_values, value_blocks, not_blocks) = if addresses {
            (quote!(&[]), quote!(&[]), blocks(&as_blocks(&condition.values)), blocks(&as_blocks(&condition.not_values)))
        } else {
            (patterns(&condition.values, false), patterns(&condition.not_values, false), quote!(&[]), quote!(&[]))
        };
        quote! {
            rt::Condition { key: #key, values: #values, not_values: #not_values, blocks: #value_blocks, not_blocks: #not_blocks }
        }
    });
    quote!(rt::Rule { from: &[#(#from),*], to: &[#(#to),*], when: &[#(#when),*] })
}

fn cidr(block: &IpBlock) -> TokenStream {
    let v6 = block.address.is_ipv6();
    let network = match block.address {
        std::net::IpAddr::V4(it) => u128::from(u32::from(it)),
        std::net::IpAddr::V6(it) => u128::from(it),
    };
    let (network, mask) = (Literal::u128_unsuffixed(network), Literal::u128_unsuffixed(block.mask()));
    quote!(rt::Cidr { v6: #v6, network: #network, mask: #mask })
}

fn clusters_file(mesh: &Mesh, clusters: &LocalClusters<'_>) -> TokenStream {
    let mut items = Vec::new();
    for cluster in clusters.iter() {
        let service = &mesh.services[cluster.service.index()];
        let name = str_lit(&cluster.name);
        let mut names: Vec<String> = vec![service.name.clone(), format!("{}.{}", service.name, service.namespace), service.host.clone()];
        names.dedup();
        let names = names.iter().map(|it| str_lit(it));
        let port = int(cluster.port);
        let subset = cluster.subset.as_ref().and_then(|name| service.subsets.iter().find(|it| it.name == *name));
        let labels = subset.into_iter().flat_map(|it| it.labels.iter()).map(|(k, v)| {
            let (k, v) = (str_lit(k), str_lit(v));
            quote!((#k, #v))
        });
        let protocol = protocol_tokens(cluster.protocol);
        let connect = int(cluster.policy.connect_timeout_ms);
        let outlier = match &cluster.policy.outlier_detection {
            Some(detector) => {
                let threshold = |it: Option<u32>| int(it.unwrap_or(u32::MAX));
                let (five, gateway) = (threshold(detector.consecutive_5xx), threshold(detector.consecutive_gateway_errors));
                let (base, max) = (int(detector.base_ejection_time_ms), int(detector.max_ejection_percent));
                let min_health = int(detector.min_health_percent);
                quote!(Some(rt::OutlierSpec {
                    consecutive_5xx: #five,
                    consecutive_gateway_errors: #gateway,
                    base_ejection_time_ms: #base,
                    max_ejection_percent: #max,
                    min_health_percent: #min_health,
                }))
            }
            None => quote!(None),
        };
        let health_check = match &cluster.policy.health_check {
            Some(check) => {
                let path = match &check.probe {
                    HealthProbe::Http { path } => {
                        let path = str_lit(path);
                        quote!(Some(#path))
                    }
                    HealthProbe::Tcp => quote!(None),
                };
                let (interval, timeout) = (int(check.interval_ms), int(check.timeout_ms));
                let (healthy, unhealthy) = (int(check.healthy_threshold), int(check.unhealthy_threshold));
                quote!(Some(rt::HealthCheckSpec {
                    http_path: #path,
                    interval_ms: #interval,
                    timeout_ms: #timeout,
                    healthy_threshold: #healthy,
                    unhealthy_threshold: #unhealthy,
                }))
            }
            None => quote!(None),
        };
        let hash_on = |hash: &HashOn| match hash {
            HashOn::Header { name } => {
                let name = str_lit(&name.to_ascii_lowercase());
                quote!(rt::HashOn::Header(#name))
            }
            HashOn::Cookie { name, path, ttl_ms } => {
                let name = str_lit(name);
                let path = match path {
                    Some(path) => {
                        let path = str_lit(path);
                        quote!(Some(#path))
                    }
                    None => quote!(None),
                };
                // Max-Age counts whole seconds; a TTL under one second still makes a cookie.
                let ttl = match ttl_ms {
                    Some(ms) => {
                        let seconds = int(ms.div_ceil(1000));
                        quote!(Some(#seconds))
                    }
                    None => quote!(None),
                };
                quote!(rt::HashOn::Cookie { name: #name, path: #path, ttl_s: #ttl })
            }
            HashOn::QueryParameter { name } => {
                let name = str_lit(name);
                quote!(rt::HashOn::Query(#name))
            }
            HashOn::SourceIp => quote!(rt::HashOn::SourceIp),
        };
        let balancer = match &cluster.policy.load_balancer {
            LoadBalancer::RoundRobin => quote!(rt::Balancer::RoundRobin),
            LoadBalancer::Random => quote!(rt::Balancer::Random),
            LoadBalancer::LeastRequest => quote!(rt::Balancer::LeastRequest),
            LoadBalancer::RingHash { hash, min_ring_size } => {
                let (hash, size) = (hash_on(hash), int(u64::from(u32::try_from(*min_ring_size).unwrap_or(u32::MAX))));
                quote!(rt::Balancer::Hash(#hash, rt::HashTable::Ring { min_size: #size }))
            }
            LoadBalancer::Maglev { hash, table_size } => {
                let (hash, size) = (hash_on(hash), int(u64::from(u32::try_from(*table_size).unwrap_or(u32::MAX))));
                quote!(rt::Balancer::Hash(#hash, rt::HashTable::Maglev { size: #size }))
            }
        };
        let limits = &cluster.policy.limits;
        let limits = if limits.max_requests.is_none()
            && limits.max_retries.is_none()
            && limits.max_connections.is_none()
            && limits.max_pending_requests.is_none()
            && limits.retry_budget.is_none()
        {
            quote!(rt::Limits::NONE)
        } else {
            let unlimited = |it: Option<u32>| int(it.unwrap_or(u32::MAX));
            let (requests, retries) = (unlimited(limits.max_requests), unlimited(limits.max_retries));
            let (connections, pending) = (unlimited(limits.max_connections), unlimited(limits.max_pending_requests));
            let budget = match limits.retry_budget {
                Some(per_million) => {
                    let per_million = int(per_million);
                    // Envoy's default floor is 3 retries.
                    let min = int(limits.min_retry_concurrency.unwrap_or(3));
                    quote!(Some(rt::RetryBudget { per_million: #per_million, min_concurrency: #min }))
                }
                None => quote!(None),
            };
            quote!(rt::Limits {
                max_requests: #requests,
                max_retries: #retries,
                max_connections: #connections,
                max_pending_requests: #pending,
                retry_budget: #budget,
            })
        };
        let warmup = match cluster.policy.warmup_ms {
            Some(ms) => {
                let ms = int(ms);
                quote!(Some(#ms))
            }
            None => quote!(None),
        };
        let request = match cluster.policy.request_timeout_ms {
            Some(ms) => {
                let ms = int(ms);
                quote!(Some(#ms))
            }
            None => quote!(None),
        };
        let sni = |sni: &Option<String>| match sni {
            Some(name) => {
                let name = str_lit(name);
                quote!(Some(#name))
            }
            None => quote!(None),
        };
        let tls = match cluster.policy.tls.mode {
            TlsMode::Disable => quote!(rt::UpstreamTls::Disable),
            TlsMode::Simple => {
                let sni = sni(&cluster.policy.tls.sni);
                quote!(rt::UpstreamTls::Simple { sni: #sni })
            }
            TlsMode::Mutual => {
                let sni = sni(&cluster.policy.tls.sni);
                quote!(rt::UpstreamTls::Mutual { sni: #sni })
            }
            TlsMode::IstioMutual => {
                let sni = sni(&cluster.policy.tls.sni);
                let principals = cluster.peer_principals.iter().map(|it| str_lit(it));
                quote!(rt::UpstreamTls::IstioMutual { sni: #sni, principals: &[#(#principals),*] })
            }
        };
        let endpoints = cluster.endpoints.iter().map(|id| {
            let instance = &mesh.instances[id.index()];
            let address = str_lit(&instance.address);
            let port = int(instance.port);
            let weight = int(instance.weight);
            let routable = instance.health.routable();
            let locality = str_lit(&instance.locality.path());
            quote!(rt::EndpointSeed { address: #address, port: #port, weight: #weight, routable: #routable, locality: #locality })
        });
        items.push(quote! {
            rt::ClusterSpec {
                name: #name,
                service_names: &[#(#names),*],
                port: #port,
                subset_labels: &[#(#labels),*],
                protocol: #protocol,
                connect_timeout_ms: #connect,
                request_timeout_ms: #request,
                load_balancer: #balancer,
                warmup_ms: #warmup,
                limits: #limits,
                outlier: #outlier,
                health_check: #health_check,
                tls: #tls,
                endpoints: &[#(#endpoints),*],
            }
        });
    }
    let count = int(items.len() as u64);
    quote! {
        //! The upstream clusters this workload's routes reach, with the endpoints the registry
        //! snapshot listed; the runtime may replace the endpoints at run time.

        use meshc_runtime::__codegen as rt;

        /// The clusters, indexed by the routes' destinations.
        pub static CLUSTERS: [rt::ClusterSpec; #count] = [#(#items),*];
    }
}

fn dump_file(mesh: &Mesh, workload: &Workload, clusters: &LocalClusters<'_>) -> TokenStream {
    let tables: Vec<&RouteTable> = workload.outbound.iter().map(|id| &mesh.route_tables[id.index()]).collect();
    let dump = serde_json::json!({
        "mesh": mesh.name,
        "workload": workload,
        "route_tables": tables,
        "clusters": clusters.iter().map(|it| it.name.as_str()).collect::<Vec<_>>(),
    });
    let text = raw_str_lit(&serde_json::to_string_pretty(&dump).unwrap_or_default());
    quote! {
        //! The compiled tables as JSON, served by the admin endpoint's `/config_dump`.

        /// The workload, its route tables and its clusters, as the IR describes them.
        pub const CONFIG_DUMP: &str = #text;
    }
}

/// Builds `routes.rs`.
struct RoutesEmitter<'a, 'm> {
    mesh: &'m Mesh,
    clusters: &'a LocalClusters<'m>,
    /// Regex pattern (already translated) → its static's index.
    regexes: BTreeMap<String, usize>,
    /// `static` items for forwards and answers.
    statics: Vec<TokenStream>,
    /// The names of the forwarding routes' `RouteStats` statics, in table and route order.
    route_stats: Vec<Ident>,
}

impl RoutesEmitter<'_, '_> {
    fn file(&mut self, workload: &Workload) -> TokenStream {
        // Host table: every domain of every HTTP table the workload may use.
        let mut hosts: Vec<(String, usize)> = Vec::new();
        let mut functions = Vec::new();
        let mut table_fns = Vec::new();
        let http_tables = workload
            .outbound
            .iter()
            .map(|id| &self.mesh.route_tables[id.index()])
            .filter(|it| matches!(it.kind, RouteTableKind::Http { .. }));
        for (index, table) in http_tables.enumerate() {
            let RouteTableKind::Http { service, domains, local_domains, .. } = &table.kind else { continue };
            let same_namespace = self.mesh.services[service.index()].namespace == workload.namespace;
            for domain in domains.iter().chain(local_domains.iter().filter(|_| same_namespace)) {
                hosts.push((domain.clone(), index));
            }
            let name = format_ident!("table_{}", index);
            table_fns.push(quote!(#name));
            functions.push(self.table(table, index));
        }
        hosts.sort();
        hosts.dedup_by(|a, b| a.0 == b.0);
        let hosts = str_index(hosts.iter().map(|(domain, index)| (domain.as_str(), int(*index as u64).into_token_stream())).collect());
        let table_count = int(table_fns.len() as u64);
        // RPC tables, numbered after the HTTP ones, and looked up by interface per protocol.
        let mut bolt: Vec<(String, usize)> = Vec::new();
        let mut dubbo: Vec<(String, usize)> = Vec::new();
        let mut rpc_fns = Vec::new();
        let rpc_tables = workload
            .outbound
            .iter()
            .map(|id| &self.mesh.route_tables[id.index()])
            .filter(|it| matches!(it.kind, RouteTableKind::Rpc { .. }));
        for (offset, table) in rpc_tables.enumerate() {
            let RouteTableKind::Rpc { protocol, interface, .. } = &table.kind else { continue };
            let index = table_fns.len() + offset;
            match protocol {
                Protocol::Bolt => bolt.push((interface.clone(), rpc_fns.len())),
                _ => dubbo.push((interface.clone(), rpc_fns.len())),
            }
            let name = format_ident!("rpc_table_{}", index);
            rpc_fns.push(quote!(#name));
            functions.push(self.rpc_table(table, index));
        }
        let rpc_index = |rows: &mut Vec<(String, usize)>| {
            rows.sort();
            rows.dedup_by(|a, b| a.0 == b.0);
            str_index(rows.iter().map(|(interface, index)| (interface.as_str(), int(*index as u64).into_token_stream())).collect())
        };
        let (bolt, dubbo) = (rpc_index(&mut bolt), rpc_index(&mut dubbo));
        let rpc_count = int(rpc_fns.len() as u64);
        let regexes: Vec<TokenStream> = self
            .regexes
            .iter()
            .map(|(pattern, index)| {
                let name = format_ident!("RE_{}", index);
                let pattern = str_lit(pattern);
                quote!(static #name: rt::Regex = rt::Regex::new(#pattern);)
            })
            .collect();
        let statics = &self.statics;
        let route_stats = &self.route_stats;
        let route_count = int(route_stats.len() as u64);
        let digests = super::xds::virtual_host_digests(self.mesh, workload);
        let digest_count = int(digests.len() as u64);
        let digests = digests.iter().map(|(name, digest, domains)| {
            let (name, digest) = (str_lit(name), str_lit(digest));
            let domains = domains.iter().map(|it| str_lit(it));
            quote!(rt::VirtualHostSpec { name: #name, digest: #digest, domains: &[#(#domains),*] })
        });
        quote! {
            //! Outbound routing: the request's host picks a route table, and the table's routes are
            //! tried in order; the first that matches decides.

            use meshc_runtime::__codegen as rt;

            /// Host (and host:port) names with the route table each selects.
            static HOSTS: rt::StrIndex<u32> = #hosts;

            /// The route tables, by index.
            static TABLES: [fn(&rt::RequestHead<'_>) -> rt::Decision<'static>; #table_count] = [#(#table_fns),*];

            /// The counts of every forwarding route, for the admin endpoint.
            pub static ROUTE_STATS: [&rt::RouteStats; #route_count] = [#(&#route_stats),*];

            /// Each virtual host compiled here with the digest of its xDS form: an xDS route
            /// configuration that serves one unchanged leaves it to the code above.
            pub static VIRTUAL_HOSTS: [rt::VirtualHostSpec; #digest_count] = [#(#digests),*];

            /// Routes a request the application sent.
            pub fn route_outbound(head: &rt::RequestHead<'_>) -> rt::Decision<'static> {
                match HOSTS.get(head.authority().as_bytes()) {
                    Some(table) => TABLES[*table as usize](head),
                    None => rt::Decision::NoRoute,
                }
            }

            /// Bolt interfaces with the RPC route table each selects.
            static BOLT_INTERFACES: rt::StrIndex<u32> = #bolt;

            /// Dubbo interfaces with the RPC route table each selects.
            static DUBBO_INTERFACES: rt::StrIndex<u32> = #dubbo;

            /// The RPC route tables, by index.
            static RPC_TABLES: [fn(&rt::RpcHead<'_>) -> rt::Decision<'static>; #rpc_count] = [#(#rpc_fns),*];

            /// Routes an RPC request the application sent, by its protocol and interface.
            pub fn route_rpc(head: &rt::RpcHead<'_>) -> rt::Decision<'static> {
                let interfaces = match head.protocol() {
                    rt::RpcProtocol::Bolt => &BOLT_INTERFACES,
                    rt::RpcProtocol::Dubbo => &DUBBO_INTERFACES,
                };
                match interfaces.get(head.interface().as_bytes()) {
                    Some(table) => RPC_TABLES[*table as usize](head),
                    None => rt::Decision::NoRoute,
                }
            }

            #(#functions)*

            #(#regexes)*

            #(#statics)*
        }
    }

    /// One table: straight-line `if`s in route order when it is small, else an indexed static
    /// table (see the runtime's `table.rs`), so lookups stay fast and compile times bounded.
    fn table(&mut self, table: &RouteTable, index: usize) -> TokenStream {
        // (alternative, decision) in order; a catch-all route ends the table.
        let mut alternatives: Vec<(&Match, TokenStream)> = Vec::new();
        let mut otherwise = quote!(rt::Decision::NoRoute);
        for (route_index, route) in table.routes.iter().enumerate() {
            let decisions = self.decisions(table, index, route_index, route);
            if route.matches.is_empty() {
                // Nothing after a catch-all is reachable.
                otherwise = decisions[0].clone();
                break;
            }
            for (alternative, m) in route.matches.iter().enumerate() {
                alternatives.push((m, decisions[alternative.min(decisions.len() - 1)].clone()));
            }
        }
        let name = format_ident!("table_{}", index);
        let doc = match &table.declared_in {
            Some(file) => format!(" Route table `{}`, declared in {file}.", table.name),
            None => format!(" Route table `{}`: the default route.", table.name),
        };
        if alternatives.len() <= CHUNK {
            let steps: Vec<TokenStream> = alternatives
                .iter()
                .map(|(m, decision)| {
                    let condition = self.condition(m);
                    quote!(if #condition { return #decision; })
                })
                .collect();
            return quote! {
                #[doc = #doc]
                fn #name(head: &rt::RequestHead<'_>) -> rt::Decision<'static> {
                    #(#steps)*
                    #otherwise
                }
            };
        }
        let static_name = format_ident!("TABLE_{}", index);
        let mut exact: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut prefixes: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut always = Vec::new();
        let mut items = Vec::new();
        for (position, (m, decision)) in alternatives.iter().enumerate() {
            let position = position as u32;
            match &m.path {
                Some(StringMatch { kind: StringMatchKind::Exact, value }) => exact.entry(value.as_str()).or_default().push(position),
                Some(StringMatch { kind: StringMatchKind::Prefix, value }) => prefixes.entry(value.as_str()).or_default().push(position),
                _ => always.push(position),
            }
            // The index already checked an exact or prefix path; only the other conditions remain.
            let indexed = matches!(&m.path, Some(StringMatch { kind: StringMatchKind::Exact | StringMatchKind::Prefix, .. }));
            let conditions = self.conditions_data(m, !indexed);
            items.push(quote!(rt::Alternative { conditions: &[#(#conditions),*], decision: #decision }));
        }
        let lengths: std::collections::BTreeSet<u64> = prefixes.keys().map(|it| it.len() as u64).collect();
        // Each entry links to the longest prefix in the table that it starts with (for a prefix,
        // a shorter one), so that a lookup finds all of a path's prefixes from one entry.
        let prefix_keys: Vec<&str> = prefixes.keys().copied().collect();
        let parent = |key: &str, or_equal: bool| -> u32 {
            (0..=key.len())
                .rev()
                .filter(|length| or_equal || *length < key.len())
                .find_map(|length| key.get(..length).and_then(|prefix| prefix_keys.binary_search(&prefix).ok()))
                .map_or(u32::MAX, |it| it as u32)
        };
        let index_rows = |map: &BTreeMap<&str, Vec<u32>>, or_equal: bool| {
            str_index(
                map.iter()
                    .map(|(key, positions)| {
                        let first = int(positions.first().copied().unwrap_or(u32::MAX));
                        let positions = positions.iter().map(|it| int(*it));
                        let parent = match parent(key, or_equal) {
                            u32::MAX => quote!(rt::PathEntry::NONE),
                            it => int(it).into_token_stream(),
                        };
                        (*key, quote!(rt::PathEntry { first: #first, alternatives: &[#(#positions),*], parent: #parent }))
                    })
                    .collect(),
            )
        };
        let exact_lengths = int(exact.keys().fold(0u64, |bits, it| bits | 1 << it.len().min(63)));
        let exact_rows = index_rows(&exact, true);
        let prefix_rows = index_rows(&prefixes, false);
        let lengths = lengths.into_iter().map(int);
        let always = always.into_iter().map(int);
        quote! {
            #[doc = #doc]
            fn #name(head: &rt::RequestHead<'_>) -> rt::Decision<'static> {
                #static_name.lookup(head)
            }

            #[doc = #doc]
            static #static_name: rt::IndexedTable = rt::IndexedTable {
                alternatives: &[#(#items),*],
                exact_paths: #exact_rows,
                exact_lengths: #exact_lengths,
                prefixes: #prefix_rows,
                prefix_lengths: &[#(#lengths),*],
                always: &[#(#always),*],
                otherwise: #otherwise,
            };
        }
    }

    /// One RPC table: straight-line `if`s in route order over the request's RPC keys.
    fn rpc_table(&mut self, table: &RouteTable, index: usize) -> TokenStream {
        let mut steps = Vec::new();
        let mut otherwise = quote!(rt::Decision::NoRoute);
        for (route_index, route) in table.routes.iter().enumerate() {
            let decisions = self.decisions(table, index, route_index, route);
            if route.matches.is_empty() {
                otherwise = decisions[0].clone();
                break;
            }
            for (alternative, m) in route.matches.iter().enumerate() {
                let decision = &decisions[alternative.min(decisions.len() - 1)];
                let condition = self.condition(m);
                steps.push(quote!(if #condition { return #decision; }));
            }
        }
        let name = format_ident!("rpc_table_{}", index);
        let doc = match &table.declared_in {
            Some(file) => format!(" RPC route table `{}`, declared in {file}.", table.name),
            None => format!(" RPC route table `{}`: the default routes.", table.name),
        };
        quote! {
            #[doc = #doc]
            fn #name(head: &rt::RpcHead<'_>) -> rt::Decision<'static> {
                #(#steps)*
                #otherwise
            }
        }
    }

    /// An alternative's conditions as static data for an indexed table; the path's only when
    /// the index does not check it.
    fn conditions_data(&mut self, m: &Match, with_path: bool) -> Vec<TokenStream> {
        let mut out = Vec::new();
        if let Some(condition) = &m.authority {
            let value = self.str_data(condition);
            out.push(quote!(rt::Cond::Authority(#value)));
        }
        if let Some(condition) = m.path.as_ref().filter(|_| with_path) {
            let value = self.str_data(condition);
            out.push(quote!(rt::Cond::Path(#value)));
        }
        if let Some(condition) = &m.method {
            let value = self.str_data(condition);
            out.push(quote!(rt::Cond::Method(#value)));
        }
        for (variant, name, kind) in m
            .headers
            .iter()
            .map(|it| (quote!(Header), &it.name, &it.kind))
            .chain(m.query.iter().map(|it| (quote!(Query), &it.name, &it.kind)))
        {
            let name = str_lit(name);
            let presence = match kind {
                PresenceMatch::Present => quote!(rt::Presence::Present),
                PresenceMatch::Absent => quote!(rt::Presence::Absent),
                PresenceMatch::Value(condition) => {
                    let value = self.str_data(condition);
                    quote!(rt::Presence::Value(#value))
                }
            };
            out.push(quote!(rt::Cond::#variant(#name, #presence)));
        }
        out
    }

    fn str_data(&mut self, condition: &StringMatch) -> TokenStream {
        let text = str_lit(&condition.value);
        match condition.kind {
            StringMatchKind::Exact => quote!(rt::Str::Exact(#text)),
            StringMatchKind::Prefix => quote!(rt::Str::Prefix(#text)),
            StringMatchKind::Regex => {
                let regex = self.regex(&condition.value);
                quote!(rt::Str::Regex(&#regex))
            }
        }
    }

    /// The decision of each alternative of a route (one shared decision unless a path rewrite
    /// depends on the alternative's path match).
    fn decisions(&mut self, table: &RouteTable, table_index: usize, route_index: usize, route: &Route) -> Vec<TokenStream> {
        let per_alternative = matches!(&route.action, Action::Forward { rewrite: Some(rewrite), .. } if rewrite.prefix.is_some());
        let count = if per_alternative { route.matches.len().max(1) } else { 1 };
        // One bucket per route, shared by its alternatives.
        let limit = match (&route.rate_limit, &route.action) {
            (Some(limit), Action::Forward { .. }) => {
                let name = format_ident!("RATE_LIMIT_{}_{}", table_index, route_index);
                let doc = format!(" The local rate limit of route `{}` of `{}`.", route.name, table.name);
                let limit = rate_limit(limit);
                self.statics.push(quote!(#[doc = #doc] static #name: rt::RateLimit = #limit;));
                quote!(Some(&#name))
            }
            _ => quote!(None),
        };
        // One count per forwarding route, shared by its alternatives.
        let stats = match &route.action {
            Action::Forward { .. } => {
                let name = format_ident!("ROUTE_STATS_{}_{}", table_index, route_index);
                let doc = format!(" The counts of route `{}` of `{}`.", route.name, table.name);
                let (table_name, route_name) = (str_lit(&table.name), str_lit(&route.name));
                self.statics.push(quote!(#[doc = #doc] static #name: rt::RouteStats = rt::RouteStats::new(#table_name, #route_name);));
                self.route_stats.push(name.clone());
                quote!(&#name)
            }
            _ => quote!(None),
        };
        (0..count)
            .map(|alternative| {
                let name = format_ident!("ROUTE_{}_{}_{}", table_index, route_index, alternative);
                let doc = format!(" Route `{}` of `{}`.", route.name, table.name);
                let item = self.action(route, route.matches.get(alternative), &limit, &stats);
                match item {
                    Ok(forward) => {
                        self.statics.push(quote!(#[doc = #doc] static #name: rt::Forward<'static> = #forward;));
                        quote!(rt::Decision::Forward(&#name))
                    }
                    Err(answer) => {
                        self.statics.push(quote!(#[doc = #doc] static #name: rt::Answer<'static> = #answer;));
                        quote!(rt::Decision::Answer(&#name))
                    }
                }
            })
            .collect()
    }

    /// `Ok(forward)` or `Err(answer)`, as tokens.
    fn action(
        &mut self,
        route: &Route,
        matched: Option<&Match>,
        rate_limit: &TokenStream,
        stats: &TokenStream,
    ) -> Result<TokenStream, TokenStream> {
        match &route.action {
            Action::Forward { destinations, rewrite } => {
                let destinations = destinations.iter().map(|it| {
                    // A destination the workload may not call has no cluster in this sidecar;
                    // the runtime answers 503 for it, as a sidecar whose egress hides the host does.
                    let cluster = int(self.clusters.local(it.cluster).unwrap_or(u32::MAX));
                    let weight = int(it.weight);
                    quote!(rt::WeightedCluster { cluster: #cluster, weight: #weight })
                });
                let timeout = match route.timeout_ms {
                    Some(ms) => {
                        let ms = int(ms);
                        quote!(Some(#ms))
                    }
                    None => quote!(None),
                };
                let path_rewrite = match rewrite.as_ref().and_then(|it| it.prefix.as_deref()) {
                    None => quote!(rt::PathRewrite::None),
                    Some(with) => {
                        let with = str_lit(with);
                        match matched.and_then(|it| it.path.as_ref()) {
                            Some(StringMatch { kind: StringMatchKind::Prefix, value }) => {
                                let matched = str_lit(value);
                                quote!(rt::PathRewrite::Prefix { matched: #matched, with: #with })
                            }
                            Some(_) => quote!(rt::PathRewrite::Whole(#with)),
                            None => quote!(rt::PathRewrite::Prefix { matched: "/", with: #with }),
                        }
                    }
                };
                let authority = match rewrite.as_ref().and_then(|it| it.authority.as_deref()) {
                    Some(authority) => {
                        let authority = str_lit(authority);
                        quote!(Some(#authority))
                    }
                    None => quote!(None),
                };
                let request_headers = header_ops(&route.request_headers);
                let response_headers = header_ops(&route.response_headers);
                let retries = retries(&route.retries);
                let fault = fault(route.fault.as_ref());
                // A mirror the workload may not call has no cluster here, and is left out.
                let mirror = match route.mirror.as_ref().and_then(|it| Some((self.clusters.local(it.cluster)?, it.per_million))) {
                    Some((cluster, share)) => {
                        let (cluster, share) = (int(cluster), int(share));
                        quote!(Some(rt::Mirror { cluster: #cluster, per_million: #share }))
                    }
                    None => quote!(None),
                };
                let name = str_lit(&route.name);
                Ok(quote! {
                    rt::Forward {
                        route: #name,
                        stats: #stats,
                        destinations: &[#(#destinations),*],
                        timeout_ms: #timeout,
                        path_rewrite: #path_rewrite,
                        authority_rewrite: #authority,
                        request_headers: #request_headers,
                        response_headers: #response_headers,
                        retries: #retries,
                        fault: #fault,
                        rate_limit: #rate_limit,
                        mirror: #mirror,
                    }
                })
            }
            Action::Redirect { scheme, authority, port, path, status } => {
                let option = |it: &Option<String>| match it {
                    Some(text) => {
                        let text = str_lit(text);
                        quote!(Some(#text))
                    }
                    None => quote!(None),
                };
                let (scheme, authority, path) = (option(scheme), option(authority), option(path));
                let port = match port {
                    Some(port) => {
                        let port = int(*port);
                        quote!(Some(#port))
                    }
                    None => quote!(None),
                };
                let status = int(*status);
                Err(quote!(rt::Answer::Redirect { scheme: #scheme, authority: #authority, port: #port, path: #path, status: #status }))
            }
            Action::DirectResponse { status, body } => {
                let body = str_lit(body.as_deref().unwrap_or(""));
                let status = int(*status);
                Err(quote!(rt::Answer::Direct { status: #status, body: #body }))
            }
        }
    }

    /// The condition of one alternative, as a boolean expression over `head`.
    fn condition(&mut self, m: &Match) -> TokenStream {
        let mut parts = Vec::new();
        if let Some(condition) = &m.authority {
            parts.push(self.str_test(quote!(head.authority()), condition));
        }
        if let Some(condition) = &m.path {
            parts.push(self.str_test(quote!(head.path()), condition));
        }
        if let Some(condition) = &m.method {
            parts.push(self.str_test(quote!(head.method()), condition));
        }
        for header in &m.headers {
            let name = str_lit(&header.name);
            parts.push(match &header.kind {
                PresenceMatch::Present => quote!(head.has_header(#name)),
                PresenceMatch::Absent => quote!(!head.has_header(#name)),
                PresenceMatch::Value(condition) => self.optional_test(quote!(head.header(#name).as_deref()), condition),
            });
        }
        if let Some(condition) = &m.service {
            parts.push(self.str_test(quote!(head.service()), condition));
        }
        if let Some(condition) = &m.version {
            // A request without a version reads as the empty one, as `meshc explain` reads it.
            parts.push(self.str_test(quote!(head.version().unwrap_or("")), condition));
        }
        if let Some(condition) = &m.group {
            parts.push(self.str_test(quote!(head.group()), condition));
        }
        for query in &m.query {
            let name = str_lit(&query.name);
            parts.push(match &query.kind {
                PresenceMatch::Present => quote!(head.query_param(#name).is_some()),
                PresenceMatch::Absent => quote!(head.query_param(#name).is_none()),
                PresenceMatch::Value(condition) => self.optional_test(quote!(head.query_param(#name)), condition),
            });
        }
        if parts.is_empty() {
            return quote!(true);
        }
        quote!(#(#parts)&&*)
    }

    /// A test of a `&str` expression.
    fn str_test(&mut self, value: TokenStream, condition: &StringMatch) -> TokenStream {
        let text = str_lit(&condition.value);
        match condition.kind {
            StringMatchKind::Exact => quote!(#value == #text),
            StringMatchKind::Prefix => quote!(#value.starts_with(#text)),
            StringMatchKind::Regex => {
                let regex = self.regex(&condition.value);
                quote!(#regex.is_match(#value))
            }
        }
    }

    /// A test of an `Option<&str>` expression: absent never matches.
    fn optional_test(&mut self, value: TokenStream, condition: &StringMatch) -> TokenStream {
        let text = str_lit(&condition.value);
        match condition.kind {
            StringMatchKind::Exact => quote!(#value == Some(#text)),
            StringMatchKind::Prefix => quote!(#value.is_some_and(|value| value.starts_with(#text))),
            StringMatchKind::Regex => {
                let regex = self.regex(&condition.value);
                quote!(#value.is_some_and(|value| #regex.is_match(value)))
            }
        }
    }

    /// The static holding a regex, shared by every condition with the same pattern.
    fn regex(&mut self, pattern: &str) -> TokenStream {
        // The compiler validated the pattern; if translation ever failed, a pattern that matches
        // nothing keeps the emitter infallible.
        let translated = crate::re2::to_rust(pattern).unwrap_or_else(|_| "[^\\s\\S]".to_owned());
        let next = self.regexes.len();
        let index = *self.regexes.entry(translated).or_insert(next);
        let name = format_ident!("RE_{}", index);
        quote!(#name)
    }
}

/// A `rt::StrIndex` over rows sorted by key, keys distinct.
fn str_index(rows: Vec<(&str, TokenStream)>) -> TokenStream {
    let keys: Vec<&str> = rows.iter().map(|it| it.0).collect();
    let slots = super::hash::slots(&keys).into_iter().map(|(tag, index)| {
        let (tag, index) = (int(tag), int(index));
        quote!((#tag, #index))
    });
    let entries = rows.iter().map(|(key, value)| {
        let key = str_lit(key);
        quote!((#key, #value))
    });
    quote!(rt::StrIndex { slots: &[#(#slots),*], entries: &[#(#entries),*] })
}

fn header_ops(ops: &HeaderOps) -> TokenStream {
    if ops.is_empty() {
        return quote!(rt::HeaderOps::NONE);
    }
    let pair = |(name, value): &(String, String)| {
        let (name, value) = (str_lit(name), str_lit(value));
        quote!((#name, #value))
    };
    let set = ops.set.iter().map(pair);
    let add = ops.add.iter().map(pair);
    let remove = ops.remove.iter().map(|it| str_lit(it));
    quote!(rt::HeaderOps { set: &[#(#set),*], add: &[#(#add),*], remove: &[#(#remove),*] })
}
