//! Registry snapshots: one adapter per format, all mapping into one normalised model.
//!
//! An adapter reads one snapshot file and returns a [`Snapshot`]: services and instances in
//! the registry's own terms, normalised (keys, protocols, weights, health), but not yet
//! merged with other registries. `merge` then builds the [`merge::Catalog`].
//!
//! Adapters never stop at a bad entry: they report it (naming the file and the entry),
//! skip it, and go on, so one run shows every problem.

pub mod consul;
pub mod kubernetes;
pub mod merge;
pub mod nacos;
pub mod native;
pub mod sofa_registry;
pub mod url;
pub mod zookeeper;

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir::{Health, Locality, Protocol, RegistryKind, RpcKey};

use crate::diag::{Code, Diagnostic};
use crate::manifest::RegistryEntry;
use crate::source::{FileId, Span};

/// Weight of an instance whose registry does not give one.
pub const DEFAULT_WEIGHT: u32 = 100;

/// What one snapshot file holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The services, in file order.
    pub services: Vec<Service>,
    /// The instances, in file order.
    pub instances: Vec<Instance>,
    /// The registry's own version of this state, when the format records one.
    pub version: Option<String>,
}

/// A service as one registry describes it.
#[derive(Clone, Debug)]
pub struct Service {
    /// Namespace (Kubernetes namespace; the registry's or mesh's namespace otherwise).
    pub namespace: String,
    /// The name: a Kubernetes-style name or an RPC key.
    pub name: String,
    /// The RPC identity, for Bolt and Dubbo services.
    pub rpc: Option<RpcKey>,
    /// The protocol of every port that does not declare one.
    pub protocol: Option<Protocol>,
    /// Declared ports; when empty, the ports are derived from the instances.
    pub ports: Vec<Port>,
    /// Methods the registry lists (Dubbo `methods=`).
    pub methods: Option<BTreeSet<String>>,
    /// Where the service is described in the snapshot.
    pub span: Span,
    /// How to name the entry in messages (`Service shop/orders`).
    pub entry: String,
}

/// A declared service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The port clients address.
    pub number: u16,
    /// Its name, if any.
    pub name: Option<String>,
    /// Its protocol, if known.
    pub protocol: Option<Protocol>,
    /// The application's port, if it differs.
    pub target_port: Option<u16>,
}

/// An instance as one registry describes it.
#[derive(Clone, Debug)]
pub struct Instance {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub service: String,
    /// IP address or host name.
    pub address: String,
    /// The port the instance listens on.
    pub port: u16,
    /// The service port it serves, when the registry says; otherwise derived.
    pub service_port: Option<u16>,
    /// Load-balancing weight, 100 being the default.
    pub weight: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Locality.
    pub locality: Locality,
    /// Health.
    pub health: Health,
    /// Where the instance is described in the snapshot.
    pub span: Span,
}

/// What an adapter needs to know about the snapshot it reads.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The snapshot file.
    pub file: FileId,
    /// Its text.
    pub text: &'a str,
    /// The manifest entry.
    pub registry: &'a RegistryEntry,
    /// The namespace for services whose format carries none.
    pub namespace: &'a str,
    /// The mesh namespace, which RPC services always live in.
    pub mesh_namespace: &'a str,
    /// Findings.
    pub diagnostics: Vec<Diagnostic>,
}

impl Ctx<'_> {
    /// A span over a byte range of the snapshot.
    pub fn span(&self, range: std::ops::Range<usize>) -> Span {
        Span::new(self.file, range)
    }

    /// Reports a snapshot that cannot be parsed at all.
    pub fn bad_file(&mut self, at: std::ops::Range<usize>, message: impl std::fmt::Display) {
        let diagnostic = Diagnostic::error(
            Code::RegistryFormat,
            format!("cannot read {} snapshot of registry `{}`: {message}", self.registry.kind.as_str(), self.registry.name),
        )
        .primary(self.span(at), "here")
        .secondary(self.registry.path_span, "snapshot named here");
        self.diagnostics.push(diagnostic);
    }

    /// Reports a malformed entry, which is skipped.
    pub fn bad_entry(&mut self, at: Span, entry: &str, message: impl std::fmt::Display) {
        let diagnostic = Diagnostic::error(Code::RegistryEntry, format!("malformed entry in registry `{}`: {message}", self.registry.name))
            .primary(at, "this entry was skipped")
            .note(format!("entry: {entry}"));
        self.diagnostics.push(diagnostic);
    }
}

/// Reads one snapshot with the adapter for its kind.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    match ctx.registry.kind {
        RegistryKind::Native => native::load(ctx),
        RegistryKind::SofaRegistry => sofa_registry::load(ctx),
        RegistryKind::SofaRpcZookeeper => zookeeper::load(ctx, zookeeper::Flavor::SofaRpc),
        RegistryKind::DubboZookeeper => zookeeper::load(ctx, zookeeper::Flavor::Dubbo),
        RegistryKind::Nacos => nacos::load(ctx),
        RegistryKind::Consul => consul::load(ctx),
        RegistryKind::Kubernetes => kubernetes::load(ctx),
    }
}

/// What reading earlier versions of a mesh's snapshots left for the next read to reuse:
/// per native snapshot (by path), its parsed chunks (see [`native::Cache`]). Pilot keeps one
/// across recompiles; the other formats are read whole every time.
#[derive(Debug, Default)]
pub struct Reparse {
    native: BTreeMap<String, native::Cache>,
}

impl Reparse {
    /// Reads a snapshot as [`load`] does, reusing and then keeping what `self` holds for it.
    /// `kept` collects what this compile's snapshots leave, so a snapshot the manifest no
    /// longer names is forgotten.
    pub fn load(&mut self, ctx: &mut Ctx<'_>, kept: &mut Reparse) -> Snapshot {
        if ctx.registry.kind != RegistryKind::Native {
            return load(ctx);
        }
        let mut cache = self.native.remove(&ctx.registry.path).unwrap_or_default();
        let snapshot = native::load_cached(ctx, &mut cache);
        kept.native.insert(ctx.registry.path.clone(), cache);
        snapshot
    }
}

/// Parses a protocol name as registries write it (`http`, `HTTP`, `h2c`, `grpc-web`, `dubbo`).
pub fn protocol_from_name(name: &str) -> Option<Protocol> {
    let lower = name.trim().to_ascii_lowercase();
    let protocol = match lower.as_str() {
        "http" | "http1" | "http/1.1" | "rest" | "kubernetes.io/ws" | "ws" | "websocket" => Protocol::Http,
        "http2" | "h2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
        "grpc" | "grpc-web" | "tri" | "triple" => Protocol::Grpc,
        "bolt" | "sofa" | "sofarpc" => Protocol::Bolt,
        "dubbo" => Protocol::Dubbo,
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "tr" => Protocol::Tcp,
        _ => return None,
    };
    Some(protocol)
}

/// The Dubbo service key: `group/interface:version`, leaving out what is empty.
pub fn dubbo_key(interface: &str, version: Option<&str>, group: Option<&str>) -> (String, RpcKey) {
    let version = version.filter(|it| !it.is_empty()).map(str::to_owned);
    let group = group.filter(|it| !it.is_empty()).map(str::to_owned);
    let mut name = String::new();
    if let Some(group) = &group {
        name.push_str(group);
        name.push('/');
    }
    name.push_str(interface);
    if let Some(version) = &version {
        name.push(':');
        name.push_str(version);
    }
    (name, RpcKey { interface: interface.to_owned(), version, group, unique_id: None })
}

/// The SOFA service key: `interface:version[:uniqueId]`, version `1.0` when absent (SOFARPC's default).
pub fn sofa_key(interface: &str, version: Option<&str>, unique_id: Option<&str>) -> (String, RpcKey) {
    let version = version.filter(|it| !it.is_empty()).unwrap_or("1.0").to_owned();
    let unique_id = unique_id.filter(|it| !it.is_empty()).map(str::to_owned);
    let mut name = format!("{interface}:{version}");
    if let Some(unique_id) = &unique_id {
        name.push(':');
        name.push_str(unique_id);
    }
    (name, RpcKey { interface: interface.to_owned(), version: Some(version), group: None, unique_id })
}

/// Parses a key written in the protocol's own form: Dubbo `[group/]interface[:version]`,
/// SOFA `interface[:version[:uniqueId]]`.
pub fn parse_rpc_key(protocol: Protocol, key: &str) -> Option<(String, RpcKey)> {
    match protocol {
        Protocol::Dubbo => {
            let (group, rest) = match key.split_once('/') {
                Some((group, rest)) => (Some(group), rest),
                None => (None, key),
            };
            let (interface, version) = match rest.split_once(':') {
                Some((interface, version)) => (interface, Some(version)),
                None => (rest, None),
            };
            is_interface(interface).then(|| dubbo_key(interface, version, group))
        }
        Protocol::Bolt => {
            let mut parts = key.splitn(3, ':');
            let interface = parts.next()?;
            let version = parts.next();
            let unique_id = parts.next();
            is_interface(interface).then(|| sofa_key(interface, version, unique_id))
        }
        _ => None,
    }
}

/// A Java-style interface name: dot-separated identifiers.
pub fn is_interface(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
}

/// Health from a list of worst-first statuses, for formats with a `healthy` flag.
pub fn health_from_flags(healthy: Option<bool>, enabled: Option<bool>) -> Health {
    match (enabled, healthy) {
        (Some(false), _) => Health::Draining,
        (_, Some(true)) => Health::Healthy,
        (_, Some(false)) => Health::Unhealthy,
        (_, None) => Health::Unknown,
    }
}

/// Parses `region/zone/subzone` (any part may be empty).
pub fn parse_locality(text: &str) -> Locality {
    let mut parts = text.splitn(3, '/').map(|it| Some(it.trim()).filter(|it| !it.is_empty()).map(str::to_owned));
    Locality { region: parts.next().flatten(), zone: parts.next().flatten(), subzone: parts.next().flatten() }
}

/// Whether `text` can be an instance address: an IP address or a DNS name.
pub fn is_address(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok()
        || (!text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|label| {
                !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }))
}

/// Finds the byte range of each element of a top-level JSON array (or the whole value if it is
/// not an array), so that entries can be parsed one by one and reported with a span.
pub fn json_elements<'t>(ctx: &mut Ctx<'t>) -> Option<Vec<(std::ops::Range<usize>, &'t serde_json::value::RawValue)>> {
    let text = ctx.text;
    let trimmed = text.trim_start();
    let parsed: Result<Vec<&serde_json::value::RawValue>, _> = if trimmed.starts_with('[') {
        serde_json::from_str(text)
    } else {
        serde_json::from_str::<&serde_json::value::RawValue>(text).map(|it| vec![it])
    };
    match parsed {
        Ok(elements) => Some(
            elements
                .into_iter()
                .map(|raw| {
                    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
                    (start..start + raw.get().len(), raw)
                })
                .collect(),
        ),
        Err(err) => {
            let at = json_error_offset(text, &err);
            ctx.bad_file(at..at, format!("invalid JSON: {err}"));
            None
        }
    }
}

/// The byte offset of a serde_json error (it reports line and column).
pub fn json_error_offset(text: &str, err: &serde_json::Error) -> usize {
    let line_start: usize = text.split_inclusive('\n').take(err.line().saturating_sub(1)).map(str::len).sum();
    (line_start + err.column().saturating_sub(1)).min(text.len())
}

/// Parses one JSON entry into `T`, reporting a malformed one against its span.
pub fn json_entry<T: serde::de::DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    range: std::ops::Range<usize>,
    raw: &serde_json::value::RawValue,
    what: &str,
) -> Option<T> {
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => Some(value),
        Err(err) => {
            let span = ctx.span(range);
            ctx.bad_entry(span, what, err.to_string());
            None
        }
    }
}

/// Serde helpers for the loosely typed JSON real registries emit.
pub mod loose {
    use serde::{Deserialize, Deserializer};

    /// A JSON scalar of any type as a string (`"1"`, `1`, `true`), `None` for null.
    pub fn string<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(de)?;
        Ok(value.and_then(|it| scalar_to_string(&it)))
    }

    /// A map whose values are any JSON scalars, as strings; nested values are kept as JSON text.
    pub fn string_map<'de, D: Deserializer<'de>>(de: D) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
        let value = Option::<std::collections::BTreeMap<String, serde_json::Value>>::deserialize(de)?;
        Ok(value
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, value)| {
                let text = scalar_to_string(&value).or_else(|| (!value.is_null()).then(|| value.to_string()))?;
                Some((key, text))
            })
            .collect())
    }

    /// A number that may be written as a string.
    pub fn number<'de, D: Deserializer<'de>>(de: D) -> Result<Option<f64>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(de)?;
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
            Some(serde_json::Value::String(s)) => {
                s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("expected a number, found `{s}`")))
            }
            Some(other) => Err(serde::de::Error::custom(format!("expected a number, found {other}"))),
        }
    }

    /// A boolean that may be written as a string.
    pub fn boolean<'de, D: Deserializer<'de>>(de: D) -> Result<Option<bool>, D::Error> {
        let value = Option::<serde_json::Value>::deserialize(de)?;
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Bool(b)) => Ok(Some(b)),
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(other) => Err(serde::de::Error::custom(format!("expected a boolean, found {other}"))),
        }
    }

    fn scalar_to_string(value: &serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A port number from a loosely typed value: 1..=65535.
pub fn port_number(value: f64) -> Option<u16> {
    (value.fract() == 0.0 && (1.0..=65535.0).contains(&value)).then_some(value as u16)
}

/// Helpers for the adapters' tests: a manifest entry, and one run of an adapter.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Ctx, Snapshot};
    use crate::diag::Diagnostic;
    use crate::manifest::RegistryEntry;
    use crate::source::{FileId, Span};
    use meshc_codegen::ir::RegistryKind;

    /// A `[[registry]]` entry with no position in any manifest.
    pub fn entry(name: &str, kind: RegistryKind, path: &str) -> RegistryEntry {
        let nowhere = Span::new(FileId(0), 0..0);
        RegistryEntry {
            name: name.to_owned(),
            name_span: nowhere,
            kind,
            path: path.to_owned(),
            path_span: nowhere,
            priority: 0,
            namespace: None,
            span: nowhere,
        }
    }

    /// Runs an adapter on `text`, read as `file`, with services in `namespace` and RPC services in `mesh`.
    pub fn run(
        entry: &RegistryEntry,
        file: FileId,
        text: &str,
        namespace: &str,
        load: impl FnOnce(&mut Ctx<'_>) -> Snapshot,
    ) -> (Snapshot, Vec<Diagnostic>) {
        let mut ctx = Ctx { file, text, registry: entry, namespace, mesh_namespace: "mesh", diagnostics: Vec::new() };
        let snapshot = load(&mut ctx);
        (snapshot, ctx.diagnostics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_each_ecosystem() {
        assert_eq!(dubbo_key("com.ex.Demo", Some("1.0.0"), Some("gray")).0, "gray/com.ex.Demo:1.0.0");
        assert_eq!(dubbo_key("com.ex.Demo", None, Some("")).0, "com.ex.Demo");
        assert_eq!(sofa_key("com.ex.Order", None, None).0, "com.ex.Order:1.0");
        assert_eq!(sofa_key("com.ex.Order", Some("2.0"), Some("blue")).0, "com.ex.Order:2.0:blue");
    }

    #[test]
    fn rpc_keys_parse_back() {
        let (name, key) = parse_rpc_key(Protocol::Dubbo, "gray/com.ex.Demo:1.0.0").unwrap();
        assert_eq!((name.as_str(), key.group.as_deref(), key.version.as_deref()), ("gray/com.ex.Demo:1.0.0", Some("gray"), Some("1.0.0")));
        let (name, key) = parse_rpc_key(Protocol::Bolt, "com.ex.Order:2.0:blue").unwrap();
        assert_eq!((name.as_str(), key.unique_id.as_deref()), ("com.ex.Order:2.0:blue", Some("blue")));
        assert!(parse_rpc_key(Protocol::Bolt, "not an interface").is_none());
    }

    #[test]
    fn protocol_names_cover_registry_spellings() {
        assert_eq!(protocol_from_name("HTTP"), Some(Protocol::Http));
        assert_eq!(protocol_from_name("kubernetes.io/h2c"), Some(Protocol::Http2));
        assert_eq!(protocol_from_name("tri"), Some(Protocol::Grpc));
        assert_eq!(protocol_from_name("carrier-pigeon"), None);
    }

    #[test]
    fn addresses_are_ips_or_dns_names() {
        assert!(is_address("10.0.0.1"));
        assert!(is_address("fd00::1"));
        assert!(is_address("node-a.dc1.consul"));
        assert!(!is_address(""));
        assert!(!is_address("10.0.0.1:80"));
        assert!(!is_address("a b"));
    }
}
