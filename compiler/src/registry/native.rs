//! meshc's own registry format: TOML services with their instances (documented in mesh-specs/README.md).
//!
//! ```toml
//! [[service]]
//! name = "reviews"
//! protocol = "http"
//! ports = [{ number = 9080, name = "http" }]
//!
//! [[service.instance]]
//! address = "10.0.0.7"
//! port = 9080
//! labels = { version = "v1" }
//! locality = "us-east/us-east-1a"
//! ```

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir::{Health, Protocol};
use serde::Deserialize;
use toml::Spanned;

use super::{Ctx, Instance, Port, Service, Snapshot};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    namespace: Option<String>,
    protocol: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    ports: Vec<RawPort>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    instance: Vec<Spanned<RawInstance>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    number: u16,
    name: Option<String>,
    protocol: Option<String>,
    target_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    address: String,
    port: Option<u16>,
    service_port: Option<u16>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    weight: Option<u32>,
    locality: Option<String>,
    health: Option<String>,
}

/// Reads a native snapshot. Each `[[service]]` table is deserialized on its own from the
/// spanned document, so one bad entry is reported with its position and the others still load.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let root = match toml::de::DeTable::parse(ctx.text) {
        Ok(root) => root,
        Err(err) => {
            let at = err.span().unwrap_or(0..0);
            ctx.bad_file(at, format!("invalid TOML: {}", err.message().trim_end_matches('.')));
            return snapshot;
        }
    };
    // The document is taken apart, not copied: a snapshot of 10,000 instances is parsed on
    // every change Pilot sees, and copying its tables took a third of the compile.
    let mut entries = Vec::new();
    for (key, value) in root.into_inner() {
        match (key.get_ref().as_ref(), value.into_inner()) {
            ("version", toml::de::DeValue::String(text)) => snapshot.version = Some(text.to_string()),
            ("version", toml::de::DeValue::Integer(n)) => snapshot.version = Some(n.as_str().to_owned()),
            ("service", toml::de::DeValue::Array(array)) => entries.extend(array),
            (other, _) => {
                let span = ctx.span(key.span());
                ctx.bad_entry(
                    span,
                    &format!("top-level `{other}`"),
                    "unknown key: a native registry holds `version` and `[[service]]` tables",
                );
            }
        }
    }
    for entry in entries {
        let entry_span = entry.span();
        let span = ctx.span(entry_span.clone());
        let service: RawService = match entry.into_inner() {
            toml::de::DeValue::Table(table) => {
                let deserializer = toml::de::Deserializer::from(Spanned::new(entry_span, table));
                match RawService::deserialize(deserializer) {
                    Ok(service) => service,
                    Err(err) => {
                        let at = err.span().map_or(span, |it| ctx.span(it));
                        ctx.bad_entry(at, "[[service]]", err.message().trim_end_matches('.'));
                        continue;
                    }
                }
            }
            _ => {
                ctx.bad_entry(span, "service", "`service` must be an array of tables: `[[service]]`");
                continue;
            }
        };
        let entry_name = format!("[[service]] `{}`", service.name);
        let protocol = match service.protocol.as_deref().map(parse_protocol) {
            Some(Err(message)) => {
                ctx.bad_entry(span, &entry_name, message);
                continue;
            }
            Some(Ok(protocol)) => Some(protocol),
            None => None,
        };
        let mut ports = Vec::new();
        let mut bad = false;
        for port in &service.ports {
            let port_protocol = match port.protocol.as_deref().map(parse_protocol) {
                Some(Err(message)) => {
                    ctx.bad_entry(span, &entry_name, message);
                    bad = true;
                    break;
                }
                Some(Ok(protocol)) => Some(protocol),
                None => None,
            };
            ports.push(Port { number: port.number, name: port.name.clone(), protocol: port_protocol, target_port: port.target_port });
        }
        if let Some(number) = service.port {
            if ports.iter().any(|it| it.number == number) {
                ctx.bad_entry(span, &entry_name, format!("port {number} is given both as `port` and in `ports`"));
                bad = true;
            }
            ports.push(Port { number, name: None, protocol: None, target_port: None });
        }
        if bad {
            continue;
        }
        if ports.iter().any(|it| it.number == 0) {
            ctx.bad_entry(span, &entry_name, "port 0 is not a port");
            continue;
        }

        let rpc_protocol = protocol.filter(|it| it.is_rpc()).or_else(|| {
            let all: BTreeSet<_> = ports.iter().filter_map(|it| it.protocol).collect();
            (all.len() == 1).then(|| *all.iter().next().expect("one element")).filter(|it| it.is_rpc())
        });
        let (name, rpc, namespace) = match rpc_protocol {
            Some(rpc_protocol) => match super::parse_rpc_key(rpc_protocol, &service.name) {
                Some((name, key)) => (name, Some(key), ctx.mesh_namespace.to_owned()),
                None => {
                    ctx.bad_entry(span, &entry_name, format!("`{}` is not a {} service key", service.name, rpc_protocol.as_str()));
                    continue;
                }
            },
            None => {
                if !crate::manifest::is_dns_label(&service.name) {
                    ctx.bad_entry(span, &entry_name, format!("`{}` is not a service name (a DNS label)", service.name));
                    continue;
                }
                let namespace = service.namespace.clone().unwrap_or_else(|| ctx.namespace.to_owned());
                (service.name.clone(), None, namespace)
            }
        };
        let single_port = (ports.len() == 1).then(|| ports[0].number);

        for instance in service.instance {
            let instance_span = ctx.span(instance.span());
            let raw = instance.into_inner();
            let what = format!("instance {} of {entry_name}", raw.address);
            if !super::is_address(&raw.address) {
                ctx.bad_entry(instance_span, &what, format!("`{}` is not an IP address or host name", raw.address));
                continue;
            }
            let Some(port) = raw.port.or(raw.service_port).or(single_port) else {
                ctx.bad_entry(instance_span, &what, "missing port: give `port` (the service has no single port to default to)");
                continue;
            };
            if port == 0 {
                ctx.bad_entry(instance_span, &what, "port 0 is not a port");
                continue;
            }
            let health = match raw.health.as_deref() {
                None | Some("healthy") => Health::Healthy,
                Some("unknown") => Health::Unknown,
                Some("draining") => Health::Draining,
                Some("unhealthy") => Health::Unhealthy,
                Some(other) => {
                    ctx.bad_entry(instance_span, &what, format!("unknown health `{other}`: use healthy, unhealthy, draining or unknown"));
                    continue;
                }
            };
            snapshot.instances.push(Instance {
                namespace: namespace.clone(),
                service: name.clone(),
                address: raw.address,
                port,
                service_port: raw.service_port.or(single_port),
                weight: raw.weight.unwrap_or(super::DEFAULT_WEIGHT),
                labels: raw.labels,
                locality: raw.locality.as_deref().map(super::parse_locality).unwrap_or_default(),
                health,
                span: instance_span,
            });
        }
        snapshot.services.push(Service {
            namespace,
            name,
            rpc,
            protocol,
            ports,
            methods: service.methods.map(|it| it.into_iter().collect()),
            span,
            entry: entry_name,
        });
    }
    snapshot
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    Protocol::ALL
        .iter()
        .copied()
        .find(|it| it.as_str() == name)
        .ok_or_else(|| format!("unknown protocol `{name}`: use http, http2, grpc, bolt, dubbo, tcp or auto"))
}
