//! Consul snapshots: `/v1/health/service/<name>` entries (JSON), several services in one array.
//!
//! ```json
//! [{"Node": {"Node": "node-a", "Address": "10.0.3.4", "Datacenter": "dc1", "Meta": {}},
//!   "Service": {"ID": "orders-1", "Service": "orders", "Tags": ["v2"], "Address": "", "Port": 8080,
//!               "Meta": {"protocol": "http"}, "Weights": {"Passing": 10, "Warning": 1}, "ModifyIndex": 20},
//!   "Checks": [{"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}]}]
//! ```
//!
//! The file may also be one entry, or an array of responses (an array of arrays); entries are
//! numbered from 1 in file order across all of them.
//! A malformed entry is reported with the path of the offending field (`Service.Port`), at its
//! value, and named by whatever of its service name, ID and node can still be read.
//!
//! How an entry maps onto the model:
//! - The service is `Service.Service`, in the registry's namespace.
//!   A name that is not a DNS label is normalised as Nacos names are
//!   ([`super::nacos::dns_label`]) and its instances carry the original as the label
//!   `consul.io/service`.
//!   Consul Enterprise's `Namespace` and `Partition` are not part of the name; when they are not
//!   `default` they become the labels `consul.io/namespace` and `consul.io/partition`.
//! - Entries whose `Service.Kind` is set (`connect-proxy`, `mesh-gateway`, `terminating-gateway`,
//!   `ingress-gateway`, `api-gateway`) are sidecars and gateways, not instances of a service, and
//!   are skipped without a message; Connect-native services (`Connect.Native`) are instances.
//! - The address is `Service.Address`, or `Node.Address` when that is empty (as Consul's DNS
//!   answers); `TaggedAddresses` are not used. The port is `Service.Port`.
//! - Health is the worst status among the entry's checks (the node's and the service's own):
//!   `passing` and `warning` are healthy, `critical` is unhealthy, and maintenance mode is
//!   draining. Consul records maintenance as a critical check named `_node_maintenance` or
//!   `_service_maintenance:<service ID>`; a real failing check is worse than maintenance.
//!   An entry without checks has unknown health.
//! - The weight is `Weights.Passing`, or `Weights.Warning` when the worst status is `warning`,
//!   × 100, so Consul's default 1 is meshc's 100. Missing `Weights`, or a `Passing` of 0 (which
//!   Consul refuses at registration, so it means an unset struct), are Consul's defaults.
//! - Labels are the tags, then `Service.Meta` (which wins over a tag with the same key): a tag
//!   `k=v` is the label `k` = `v`, any other tag `t` is the label `t` with an empty value (the
//!   first of repeated tag keys wins).
//!   `Service.Meta.protocol` is the protocol.
//! - The region is `Node.Datacenter` (or `Service.Locality.Region`); the zone is
//!   `Service.Locality.Zone` (Consul 1.17+), else `Service.Meta.zone`, else `Node.Meta.zone`.
//! - The snapshot's version is the largest `Service.ModifyIndex`.

use std::collections::BTreeMap;
use std::ops::Range;

use meshc_codegen::ir::{Health, Locality, Protocol};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::nacos::{Collector, dns_label, json_message, range_in};
use super::{Ctx, Instance, Service, Snapshot, loose};
use crate::source::Span;

/// What the entry itself must be.
const ENTRY: &str = "a Consul health entry (a JSON object with `Node`, `Service` and `Checks`)";

/// A check status, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Passing,
    Warning,
    Maintenance,
    Critical,
}

/// A malformed entry: the byte range to blame, and what is wrong.
#[derive(Debug)]
struct Problem {
    at: Range<usize>,
    message: String,
}

type Found<T> = Result<T, Problem>;

/// A JSON object whose members are read one by one, so that a bad member is reported by its
/// path (`Service.Port`) at its own value rather than as an entry serde could not read. A
/// member given twice counts once, the last time, as Go's `encoding/json` (Consul's own client)
/// reads it.
struct Object<'t> {
    text: &'t str,
    /// The path of the object in the entry: empty for the entry, `Service`, `Checks[1]`.
    path: String,
    at: Range<usize>,
    members: BTreeMap<String, &'t RawValue>,
}

impl<'t> Object<'t> {
    /// Reads `raw` as an object; an error names `what` it must be.
    fn new(text: &'t str, raw: &'t RawValue, path: String, what: &str) -> Found<Object<'t>> {
        let at = range_in(text, raw.get()).unwrap_or(0..0);
        match serde_json::from_str::<BTreeMap<String, &'t RawValue>>(raw.get()) {
            Ok(members) => Ok(Object { text, path, at, members }),
            Err(_) => {
                let found = json_kind(raw);
                let message =
                    if path.is_empty() { format!("expected {what}, found {found}") } else { format!("`{path}` is {found}, not {what}") };
                Err(Problem { at, message })
            }
        }
    }

    /// The path of a member.
    fn path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// A member's raw value; `None` when absent or null.
    fn raw(&self, key: &str) -> Option<&'t RawValue> {
        self.members.get(key).copied().filter(|it| it.get() != "null")
    }

    /// Where a member's value is, or the object when the member is absent.
    fn at(&self, key: &str) -> Range<usize> {
        self.raw(key).and_then(|it| range_in(self.text, it.get())).unwrap_or_else(|| self.at.clone())
    }

    /// A problem with a member, shown at its value.
    fn blame(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem { at: self.at(key), message: message.into() }
    }

    /// A member read with `read` (a serde `deserialize_with` function); `None` when absent or null.
    fn read<T>(&self, key: &str, read: impl FnOnce(&'t RawValue) -> Result<T, serde_json::Error>) -> Found<Option<T>> {
        match self.raw(key) {
            None => Ok(None),
            Some(raw) => read(raw).map(Some).map_err(|err| self.blame(key, format!("`{}`: {}", self.path(key), json_message(&err)))),
        }
    }

    /// A member of a plain type.
    fn get<T: Deserialize<'t>>(&self, key: &str) -> Found<Option<T>> {
        self.read(key, T::deserialize)
    }

    /// A member as text when it is a string, ignoring what is not: for naming the entry.
    fn text_of(&self, key: &str) -> Option<String> {
        self.get::<String>(key).ok().flatten().map(|it| it.trim().to_owned()).filter(|it| !it.is_empty())
    }

    /// A member that is an object itself.
    fn object(&self, key: &str, what: &str) -> Found<Option<Object<'t>>> {
        self.raw(key).map(|raw| Object::new(self.text, raw, self.path(key), what)).transpose()
    }
}

/// What a JSON value is, for messages.
fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Reads a Consul snapshot.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    let Some(elements) = super::json_elements(ctx) else {
        return Snapshot::default();
    };
    // Flatten an array of responses into one list of entries, each with its own span.
    let mut entries: Vec<(Range<usize>, &RawValue)> = Vec::new();
    for (range, raw) in elements {
        if !raw.get().starts_with('[') {
            entries.push((range, raw));
            continue;
        }
        match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
            Ok(inner) => entries.extend(inner.into_iter().map(|it| (range_in(ctx.text, it.get()).unwrap_or_else(|| range.clone()), it))),
            // Unreachable in practice: `json_elements` has already parsed the array.
            Err(err) => {
                let span = ctx.span(range);
                ctx.bad_entry(span, "Consul response", json_message(&err));
            }
        }
    }

    let mut services = Collector::default();
    let mut instances = Vec::new();
    let mut latest: Option<u64> = None;
    for (index, (range, raw)) in entries.into_iter().enumerate() {
        let span = ctx.span(range);
        let entry = Object::new(ctx.text, raw, String::new(), ENTRY);
        let what = describe(index + 1, entry.as_ref().ok());
        let found = match entry.and_then(|entry| instance(&entry, ctx.namespace, span)) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(problem) => {
                let at = ctx.span(problem.at);
                ctx.bad_entry(at, &what, problem.message);
                continue;
            }
        };
        let service = Service {
            namespace: ctx.namespace.to_owned(),
            name: found.instance.service.clone(),
            rpc: None,
            protocol: None,
            ports: Vec::new(),
            methods: None,
            span,
            entry: format!("Consul service `{}`", found.original),
        };
        let slot = services.slot(service, None);
        services.declare(slot, found.protocol, None);
        latest = latest.max(found.modify_index);
        instances.push(found.instance);
    }
    Snapshot { services: services.finish(), instances, version: latest.map(|it| it.to_string()) }
}

/// An instance read from an entry, with what its service needs.
struct Entry {
    instance: Instance,
    /// The service name as Consul wrote it.
    original: String,
    /// The protocol the instance declares.
    protocol: Option<Protocol>,
    modify_index: Option<u64>,
}

/// Makes an instance of an entry; `None` for proxies and gateways.
fn instance(entry: &Object<'_>, namespace: &str, span: Span) -> Found<Option<Entry>> {
    let service =
        entry.object("Service", "a Consul service (a JSON object)")?.ok_or_else(|| entry.blame("Service", "missing `Service`"))?;
    let kind: Option<String> = service.get("Kind")?;
    if kind.as_deref().is_some_and(|it| !it.is_empty() && it != "typical") {
        return Ok(None);
    }
    let node = entry.object("Node", "a Consul node (a JSON object)")?;
    let original = service
        .get::<String>("Service")?
        .map(|it| it.trim().to_owned())
        .filter(|it| !it.is_empty())
        .ok_or_else(|| service.blame("Service", "missing `Service.Service`"))?;
    let name = if crate::manifest::is_dns_label(&original) {
        original.clone()
    } else {
        dns_label(&original).ok_or_else(|| {
            service.blame("Service", format!("`{original}` cannot be made a service name: it has no ASCII letters or digits"))
        })?
    };

    let non_empty = |it: Option<String>| it.map(|it| it.trim().to_owned()).filter(|it| !it.is_empty());
    let service_address = non_empty(service.get("Address")?);
    let node_address = match &node {
        Some(node) => non_empty(node.get("Address")?),
        None => None,
    };
    let (address, blamed) = match (service_address, node_address) {
        (Some(address), _) => (address, &service),
        (None, Some(address)) => (address, node.as_ref().unwrap_or(&service)),
        (None, None) => return Err(service.blame("Address", "no address: `Service.Address` and `Node.Address` are both empty")),
    };
    if !super::is_address(&address) {
        return Err(blamed.blame("Address", format!("`{address}` is not an IP address or host name")));
    }
    let port = service.read("Port", loose::number)?.flatten().ok_or_else(|| service.blame("Port", "missing `Service.Port`"))?;
    let port = super::port_number(port).ok_or_else(|| service.blame("Port", format!("port {port} is not a port: expected 1 to 65535")))?;
    let id: Option<String> = service.get("ID")?;
    let worst = worst_status(entry, id.as_deref())?;
    let weight = weight(service.object("Weights", "Consul weights (a JSON object)")?, worst)?;
    let health = match worst {
        None => Health::Unknown,
        Some(Status::Passing | Status::Warning) => Health::Healthy,
        Some(Status::Maintenance) => Health::Draining,
        Some(Status::Critical) => Health::Unhealthy,
    };

    let tags: Vec<String> = service.get("Tags")?.unwrap_or_default();
    let meta = service.read("Meta", loose::string_map)?.unwrap_or_default();
    let mut labels = BTreeMap::new();
    for tag in tags.iter().filter(|it| !it.is_empty()) {
        let (key, value) = match tag.split_once('=') {
            Some((key, value)) if !key.is_empty() => (key, value),
            _ => (tag.as_str(), ""),
        };
        labels.entry(key.to_owned()).or_insert_with(|| value.to_owned());
    }
    labels.extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
    if name != original {
        labels.insert("consul.io/service".to_owned(), original.clone());
    }
    for (label, key) in [("consul.io/namespace", "Namespace"), ("consul.io/partition", "Partition")] {
        if let Some(value) = service.get::<String>(key)?.filter(|it| !it.is_empty() && it != "default") {
            labels.insert(label.to_owned(), value);
        }
    }

    let locality = service.object("Locality", "a Consul locality (a JSON object)")?;
    let (locality_region, locality_zone) = match &locality {
        Some(locality) => (non_empty(locality.get("Region")?), non_empty(locality.get("Zone")?)),
        None => (None, None),
    };
    let (datacenter, node_meta) = match &node {
        Some(node) => (non_empty(node.get("Datacenter")?), node.read("Meta", loose::string_map)?.unwrap_or_default()),
        None => (None, BTreeMap::new()),
    };
    let region = datacenter.or(locality_region);
    let zone = locality_zone.or_else(|| non_empty(meta.get("zone").cloned())).or_else(|| non_empty(node_meta.get("zone").cloned()));
    let modify_index = service.read("ModifyIndex", loose::string)?.flatten();

    Ok(Some(Entry {
        protocol: meta.get("protocol").and_then(|it| super::protocol_from_name(it)),
        modify_index: modify_index.and_then(|it| it.trim().parse().ok()),
        instance: Instance {
            namespace: namespace.to_owned(),
            service: name,
            address,
            port,
            service_port: None,
            weight,
            labels,
            locality: Locality { region, zone, subzone: None },
            health,
            span,
        },
        original,
    }))
}

/// How messages name an entry: `Consul entry 3: service orders (ID orders-1) on node node-a`,
/// counting from 1 and with what of the service's name, ID and node can be read, so that an
/// entry is found even when the field that is wrong is one of those.
fn describe(number: usize, entry: Option<&Object<'_>>) -> String {
    let mut what = format!("Consul entry {number}");
    let Some(entry) = entry else { return what };
    let service = entry.object("Service", "").ok().flatten();
    let name = service.as_ref().and_then(|it| it.text_of("Service"));
    let id = service.as_ref().and_then(|it| it.text_of("ID"));
    let node = entry.object("Node", "").ok().flatten().and_then(|it| it.text_of("Node"));
    let mut parts = Vec::new();
    match (name, id) {
        (Some(name), Some(id)) => parts.push(format!("service {name} (ID {id})")),
        (Some(name), None) => parts.push(format!("service {name}")),
        (None, Some(id)) => parts.push(format!("service ID {id}")),
        (None, None) => {}
    }
    if let Some(node) = node {
        parts.push(if parts.is_empty() { format!("node {node}") } else { format!("on node {node}") });
    }
    if !parts.is_empty() {
        what.push_str(": ");
        what.push_str(&parts.join(" "));
    }
    what
}

/// The worst status of the checks that concern the service: the node's (no `ServiceID`) and its
/// own. `None` when there are none.
fn worst_status(entry: &Object<'_>, service_id: Option<&str>) -> Found<Option<Status>> {
    let checks: Vec<&RawValue> = entry.get("Checks")?.unwrap_or_default();
    let mut worst = None;
    for (index, raw) in checks.into_iter().enumerate() {
        let check = Object::new(entry.text, raw, format!("Checks[{index}]"), "a Consul check (a JSON object)")?;
        let check_service: Option<String> = check.get("ServiceID")?;
        let concerns = match (check_service.as_deref().filter(|it| !it.is_empty()), service_id) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        };
        if !concerns {
            continue;
        }
        let id: String = check.get("CheckID")?.unwrap_or_default();
        let maintenance = id == "_node_maintenance" || id.starts_with("_service_maintenance:");
        let status: Option<String> = check.get("Status")?;
        let status = match status.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("passing") => Status::Passing,
            Some("warning") => Status::Warning,
            Some("critical") if maintenance => Status::Maintenance,
            Some("critical") => Status::Critical,
            Some("maintenance") => Status::Maintenance,
            Some(other) => {
                return Err(
                    check.blame("Status", format!("check `{id}` has status `{other}`: expected passing, warning, critical or maintenance"))
                );
            }
            None => return Err(check.blame("Status", format!("check `{id}` has no `Status`"))),
        };
        worst = worst.max(Some(status));
    }
    Ok(worst)
}

/// The weight for the worst status, × 100.
fn weight(weights: Option<Object<'_>>, worst: Option<Status>) -> Found<u32> {
    let (mut passing, mut warning) = (1.0, 1.0);
    if let Some(weights) = &weights {
        let given = (weights.read("Passing", loose::number)?.flatten(), weights.read("Warning", loose::number)?.flatten());
        for (field, value) in [("Passing", given.0), ("Warning", given.1)] {
            if let Some(value) = value.filter(|it| *it < 0.0) {
                return Err(weights.blame(field, format!("`Weights.{field}` is {value}: weights cannot be negative")));
            }
        }
        // Consul's defaults stand when `Passing` is 0: Consul refuses that at registration, so
        // it is a zero-valued struct from a client that never set weights.
        if let Some(given_passing) = given.0.filter(|it| *it != 0.0) {
            (passing, warning) = (given_passing, given.1.unwrap_or(1.0));
        }
    }
    let chosen = if worst == Some(Status::Warning) { warning } else { passing };
    // Saturating: no real weight comes near u32::MAX / 100.
    Ok((chosen * 100.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use meshc_codegen::ir::RegistryKind;

    use super::*;
    use crate::diag::{Code, Diagnostic};
    use crate::manifest::RegistryEntry;
    use crate::source::{FileId, Span};

    const FILE: FileId = FileId(3);

    fn load_text(text: &str) -> (Snapshot, Vec<Diagnostic>) {
        let dummy = Span::new(FileId(0), 0..0);
        let registry = RegistryEntry {
            name: "consul-dc1".to_owned(),
            name_span: dummy,
            kind: RegistryKind::Consul,
            path: "registries/consul.json".to_owned(),
            path_span: dummy,
            priority: 0,
            namespace: None,
            span: dummy,
        };
        let mut ctx = Ctx { file: FILE, text, registry: &registry, namespace: "shop", mesh_namespace: "mesh", diagnostics: Vec::new() };
        let snapshot = load(&mut ctx);
        (snapshot, ctx.diagnostics)
    }

    fn clean(text: &str) -> Snapshot {
        let (snapshot, diagnostics) = load_text(text);
        assert_eq!(diagnostics, Vec::new(), "unexpected diagnostics");
        snapshot
    }

    fn spanned(text: &str, span: Span) -> &str {
        assert_eq!(span.file, FILE);
        &text[span.start as usize..span.end as usize]
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn entry_errors(diagnostics: &[Diagnostic]) -> Vec<(String, String)> {
        diagnostics
            .iter()
            .map(|it| {
                assert_eq!(it.code, Code::RegistryEntry);
                assert_eq!(it.labels.len(), 1);
                (it.message.clone(), it.notes.join("\n"))
            })
            .collect()
    }

    /// An entry of `service` on `node` (10.0.3.4 in dc1) with port 8080, no tags and an empty
    /// `Service.Address` unless `extra` (more `Service` fields) gives them.
    fn entry(service: &str, id: &str, node: &str, extra: &str, checks: &str) -> String {
        // A field given twice counts once, so leave out the defaults that `extra` overrides.
        let mut fields = String::new();
        for (key, default) in [("Tags", "[]"), ("Address", r#""""#), ("Port", "8080")] {
            if !extra.contains(&format!(r#""{key}""#)) {
                fields.push_str(&format!(r#","{key}":{default}"#));
            }
        }
        format!(
            r#"{{"Node":{{"ID":"b1","Node":"{node}","Address":"10.0.3.4","Datacenter":"dc1","TaggedAddresses":{{"lan":"10.0.3.4"}},"Meta":{{}}}},
              "Service":{{"ID":"{id}","Service":"{service}"{fields}{extra}}},"Checks":{checks}}}"#
        )
    }

    const REFERENCE: &str = r#"[{"Node":{"ID":"b1","Node":"node-a","Address":"10.0.3.4","Datacenter":"dc1","TaggedAddresses":{"lan":"10.0.3.4","wan":"10.0.3.4"},"Meta":{},"CreateIndex":13,"ModifyIndex":14},
  "Service":{"ID":"orders-1","Service":"orders","Tags":["v2"],"Address":"","Port":8080,"Meta":{"version":"v2","protocol":"http"},
             "Weights":{"Passing":10,"Warning":1},"EnableTagOverride":false,"TaggedAddresses":{},"Proxy":{},"Connect":{},"CreateIndex":20,"ModifyIndex":20},
  "Checks":[{"Node":"node-a","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","ServiceID":"","ServiceName":""},
            {"Node":"node-a","CheckID":"service:orders-1","Name":"http check","Status":"passing","ServiceID":"orders-1","ServiceName":"orders","Type":"http"}]}]"#;

    #[test]
    fn the_reference_entry_loads() {
        let snapshot = clean(REFERENCE);
        assert_eq!(snapshot.version.as_deref(), Some("20"));
        assert_eq!(snapshot.services.len(), 1);
        let service = &snapshot.services[0];
        assert_eq!((service.namespace.as_str(), service.name.as_str(), service.protocol), ("shop", "orders", Some(Protocol::Http)));
        assert_eq!((service.rpc.as_ref(), service.methods.as_ref(), service.ports.len()), (None, None, 0));
        assert_eq!(service.entry, "Consul service `orders`");
        let instance = &snapshot.instances[0];
        assert_eq!((instance.namespace.as_str(), instance.service.as_str()), ("shop", "orders"));
        assert_eq!((instance.address.as_str(), instance.port, instance.service_port), ("10.0.3.4", 8080, None));
        assert_eq!((instance.weight, instance.health), (1000, Health::Healthy));
        assert_eq!(instance.labels, labels(&[("protocol", "http"), ("v2", ""), ("version", "v2")]));
        assert_eq!(instance.locality, Locality { region: Some("dc1".to_owned()), zone: None, subzone: None });
        assert_eq!(spanned(REFERENCE, instance.span), &REFERENCE[1..REFERENCE.len() - 1]);
    }

    #[test]
    fn the_documented_sample_loads() {
        // The sample response of Consul's health API documentation: service-level tagged
        // addresses are objects, and the Enterprise `Namespace` is `default`.
        let text = r#"[{"Node":{"ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Node":"foobar","Address":"10.1.10.12","Datacenter":"dc1",
            "TaggedAddresses":{"lan":"10.1.10.12","wan":"10.1.10.12"},"Meta":{"instance_type":"t2.medium"}},
          "Service":{"ID":"redis","Service":"redis","Tags":["primary"],"Address":"10.1.10.12",
            "TaggedAddresses":{"lan":{"address":"10.1.10.12","port":8000},"wan":{"address":"198.18.1.2","port":80}},
            "Meta":{"redis_version":"4.0"},"Port":8000,"Weights":{"Passing":10,"Warning":1},"Namespace":"default"},
          "Checks":[{"Node":"foobar","CheckID":"service:redis","Name":"Service 'redis' check","Status":"passing","Notes":"","Output":"",
            "ServiceID":"redis","ServiceName":"redis","ServiceTags":["primary"],"Namespace":"default"},
            {"Node":"foobar","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"","ServiceID":"",
            "ServiceName":"","ServiceTags":[],"Namespace":"default"}]}]"#;
        let snapshot = clean(text);
        let instance = &snapshot.instances[0];
        assert_eq!(
            (instance.service.as_str(), instance.address.as_str(), instance.port, instance.weight),
            ("redis", "10.1.10.12", 8000, 1000)
        );
        assert_eq!(instance.labels, labels(&[("primary", ""), ("redis_version", "4.0")]));
        assert_eq!(snapshot.services[0].protocol, None);
        assert_eq!(snapshot.version, None);
    }

    #[test]
    fn health_is_the_worst_check_and_picks_the_weight() {
        let weights = r#","Weights":{"Passing":5,"Warning":2}"#;
        let passing = r#"{"CheckID":"serfHealth","Status":"passing","ServiceID":""}"#;
        let text = format!(
            "[{}]",
            [
                entry("orders", "o-1", "n1", weights, &format!("[{passing}]")),
                entry("orders", "o-2", "n2", weights, &format!(r#"[{passing},{{"CheckID":"service:o-2","Status":"warning","ServiceID":"o-2"}}]"#)),
                entry("orders", "o-3", "n3", weights, &format!(r#"[{passing},{{"CheckID":"service:o-3","Status":"critical","ServiceID":"o-3"}}]"#)),
                entry("orders", "o-4", "n4", weights, r#"[{"CheckID":"_service_maintenance:o-4","Status":"critical","ServiceID":"o-4"},{"CheckID":"x","Status":"warning","ServiceID":"o-4"}]"#),
                entry("orders", "o-5", "n5", weights, r#"[{"CheckID":"_node_maintenance","Status":"critical","ServiceID":""}]"#),
                entry("orders", "o-6", "n6", weights, r#"[{"CheckID":"_node_maintenance","Status":"critical"},{"CheckID":"service:o-6","Status":"critical","ServiceID":"o-6"}]"#),
                entry("orders", "o-7", "n7", weights, "[]"),
                entry("orders", "o-8", "n8", r#","Weights":null,"Meta":null"#, "null"),
                // A check of another service on the same node does not count.
                entry("orders", "o-9", "n9", weights, &format!(r#"[{passing},{{"CheckID":"service:other","Status":"critical","ServiceID":"other"}}]"#)),
                entry("orders", "o-10", "n10", r#","Weights":{"Passing":0,"Warning":0}"#, r#"[{"CheckID":"c","Status":"Warning","ServiceID":"o-10"}]"#),
                entry("orders", "o-11", "n11", r#","Weights":{"Passing":3,"Warning":0}"#, r#"[{"CheckID":"c","Status":"warning","ServiceID":"o-11"}]"#),
            ]
            .join(",")
        );
        let snapshot = clean(&text);
        let got: Vec<_> = snapshot.instances.iter().map(|it| (it.health, it.weight)).collect();
        assert_eq!(
            got,
            [
                (Health::Healthy, 500),
                (Health::Healthy, 200),
                (Health::Unhealthy, 500),
                (Health::Draining, 500),
                (Health::Draining, 500),
                (Health::Unhealthy, 500),
                (Health::Unknown, 500),
                (Health::Unknown, 100),
                (Health::Healthy, 500),
                (Health::Healthy, 100),
                (Health::Healthy, 0),
            ]
        );
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.instances[7].labels, BTreeMap::new());
    }

    #[test]
    fn arrays_of_responses_and_single_entries_load() {
        let a = entry("orders", "o-1", "n1", "", "[]");
        let b = entry("billing", "b-1", "n1", "", "[]");
        let c = entry("orders", "o-2", "n2", "", "[]");
        let nested = format!("[[{a},{b}],[],[{c}]]");
        let snapshot = clean(&nested);
        let services: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(services, ["orders", "billing"]);
        let instances: Vec<_> = snapshot.instances.iter().map(|it| it.service.as_str()).collect();
        assert_eq!(instances, ["orders", "billing", "orders"]);
        assert_eq!(spanned(&nested, snapshot.instances[2].span), c);
        assert_eq!(spanned(&nested, snapshot.services[0].span), a);

        let single = clean(&b);
        assert_eq!((single.services.len(), single.instances.len()), (1, 1));
        assert_eq!(clean("[]").services.len(), 0);

        // Entry numbers run across the responses.
        let bad = format!("[[{a}],[{}]]", entry("orders", "o-3", "n3", "", r#"[{"CheckID":"c","Status":"pending"}]"#));
        let (_, diagnostics) = load_text(&bad);
        assert_eq!(
            entry_errors(&diagnostics),
            [(
                "malformed entry in registry `consul-dc1`: check `c` has status `pending`: expected passing, warning, critical or maintenance".to_owned(),
                "entry: Consul entry 2: service orders (ID o-3) on node n3".to_owned()
            )]
        );
    }

    #[test]
    fn proxies_and_gateways_are_not_instances() {
        let text = format!(
            "[{}]",
            [
                entry("orders-sidecar-proxy", "p-1", "n1", r#","Kind":"connect-proxy","Proxy":{"DestinationServiceName":"orders"}"#, "[]"),
                entry("gateway", "g-1", "n1", r#","Kind":"mesh-gateway""#, "[]"),
                entry("ingress", "g-2", "n1", r#","Kind":"ingress-gateway""#, "[]"),
                entry("terminating", "g-3", "n1", r#","Kind":"terminating-gateway""#, "[]"),
                entry("api", "g-4", "n1", r#","Kind":"api-gateway""#, "[]"),
                entry("orders", "o-1", "n1", r#","Kind":"","Connect":{"Native":true},"ModifyIndex":7"#, "[]"),
            ]
            .join(",")
        );
        let snapshot = clean(&text);
        let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, ["orders"]);
        assert_eq!(snapshot.instances.len(), 1);
        assert_eq!(snapshot.version.as_deref(), Some("7"));
    }

    #[test]
    fn tags_meta_and_locality_become_labels_and_zones() {
        let text = format!(
            "[{}]",
            [
                entry(
                    "orders",
                    "o-1",
                    "n1",
                    r#","Tags":["v2","canary=true","team=a","team=b","=x",""],"Meta":{"team":"c","zone":"us-east-1a","build":42}"#,
                    "[]"
                ),
                r#"{"Node":{"Node":"n2","Address":"10.0.3.5","Datacenter":"dc2","Meta":{"zone":"us-east-1b"}},
                    "Service":{"ID":"o-2","Service":"orders","Address":"10.0.9.9","Port":8080}}"#
                    .to_owned(),
                r#"{"Node":{"Node":"n3","Address":"10.0.3.6","Meta":{"zone":"node-zone"}},
                    "Service":{"ID":"o-3","Service":"orders","Port":8080,"Locality":{"Region":"us-east","Zone":"us-east-1c"},"Meta":{"zone":"meta-zone"}}}"#
                    .to_owned(),
            ]
            .join(",")
        );
        let snapshot = clean(&text);
        assert_eq!(
            snapshot.instances[0].labels,
            labels(&[("=x", ""), ("build", "42"), ("canary", "true"), ("team", "c"), ("v2", ""), ("zone", "us-east-1a")])
        );
        let localities: Vec<_> =
            snapshot.instances.iter().map(|it| (it.address.as_str(), it.locality.region.as_deref(), it.locality.zone.as_deref())).collect();
        assert_eq!(
            localities,
            [
                ("10.0.3.4", Some("dc1"), Some("us-east-1a")),
                ("10.0.9.9", Some("dc2"), Some("us-east-1b")),
                ("10.0.3.6", Some("us-east"), Some("us-east-1c"))
            ]
        );
        assert_eq!(snapshot.instances[1].health, Health::Unknown);
    }

    #[test]
    fn names_are_normalised_and_enterprise_fields_are_labels() {
        let text = format!(
            "[{}]",
            [
                entry("Billing_API", "b-1", "n1", r#","Namespace":"team-a","Partition":"default""#, "[]"),
                entry("billing-api", "b-2", "n2", r#","Namespace":"default","Partition":"eu""#, "[]"),
                entry("__", "x-1", "n3", "", "[]"),
            ]
            .join(",")
        );
        let (snapshot, diagnostics) = load_text(&text);
        let names: Vec<_> = snapshot.services.iter().map(|it| (it.name.as_str(), it.entry.as_str())).collect();
        assert_eq!(names, [("billing-api", "Consul service `Billing_API`")]);
        assert_eq!(snapshot.instances[0].labels, labels(&[("consul.io/namespace", "team-a"), ("consul.io/service", "Billing_API")]));
        assert_eq!(snapshot.instances[1].labels, labels(&[("consul.io/partition", "eu")]));
        assert_eq!(
            entry_errors(&diagnostics),
            [(
                "malformed entry in registry `consul-dc1`: `__` cannot be made a service name: it has no ASCII letters or digits"
                    .to_owned(),
                "entry: Consul entry 3: service __ (ID x-1) on node n3".to_owned()
            )]
        );
    }

    #[test]
    fn addresses_may_be_ipv6_or_host_names_and_numbers_strings() {
        let text = r#"[
          {"Node":{"Node":"n1","Address":"fd00::4","Datacenter":"dc1"},"Service":{"ID":"a","Service":"search","Address":"","Port":"9200",
           "Weights":{"Passing":"3","Warning":"1"},"ModifyIndex":"42"},"Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.3.4"},"Service":{"ID":"b","Service":"search","Address":"search-1.node.dc1.consul","Port":9200,
           "ModifyIndex":41},"Checks":[]}
        ]"#;
        let snapshot = clean(text);
        let got: Vec<_> = snapshot.instances.iter().map(|it| (it.address.as_str(), it.port, it.weight)).collect();
        assert_eq!(got, [("fd00::4", 9200, 300), ("search-1.node.dc1.consul", 9200, 100)]);
        assert_eq!(snapshot.version.as_deref(), Some("42"));
    }

    #[test]
    fn malformed_entries_are_reported_and_skipped() {
        let good = entry("orders", "o-1", "n1", "", "[]");
        let text = format!(
            "[{}]",
            [
                good.clone(),
                entry("orders", "o-2", "n2", r#","Port":70000"#, "[]"),
                r#"{"Node":{"Node":"n3","Address":"10.0.3.4"},"Service":{"ID":"o-3","Service":"orders"}}"#.to_owned(),
                entry("orders", "o-4", "n4", r#","Address":"10.0.3 .4""#, "[]"),
                r#"{"Node":{"Node":"n5","Address":"10.0.3.4"}}"#.to_owned(),
                entry("orders", "o-6", "n6", r#","Port":"http""#, "[]"),
                r#"{"Node":{"Node":"n7"},"Service":{"ID":"o-7","Service":"orders","Port":80}}"#.to_owned(),
                r#"{"Node":{"Node":"n8","Address":"10.0.3.4"},"Service":{"ID":"o-8","Port":80}}"#.to_owned(),
                entry("orders", "o-9", "n9", r#","Weights":{"Passing":2,"Warning":-1}"#, "[]"),
                entry("orders", "o-10", "n10", r#","Tags":"v1""#, "[]"),
                entry("orders", "o-11", "n11", "", r#"[{"CheckID":"serfHealth"}]"#),
                "\"orders\"".to_owned(),
                entry("orders", "o-12", "n12", r#","Port":0"#, "[]"),
            ]
            .join(",")
        );
        let (snapshot, diagnostics) = load_text(&text);
        assert_eq!(snapshot.instances.len(), 1);
        assert_eq!(spanned(&text, snapshot.instances[0].span), good);
        let prefix = "malformed entry in registry `consul-dc1`: ";
        let expected: Vec<(String, String)> = [
            ("port 70000 is not a port: expected 1 to 65535", "2: service orders (ID o-2) on node n2"),
            ("missing `Service.Port`", "3: service orders (ID o-3) on node n3"),
            ("`10.0.3 .4` is not an IP address or host name", "4: service orders (ID o-4) on node n4"),
            ("missing `Service`", "5: node n5"),
            ("`Service.Port`: expected a number, found `http`", "6: service orders (ID o-6) on node n6"),
            ("no address: `Service.Address` and `Node.Address` are both empty", "7: service orders (ID o-7) on node n7"),
            ("missing `Service.Service`", "8: service ID o-8 on node n8"),
            ("`Weights.Warning` is -1: weights cannot be negative", "9: service orders (ID o-9) on node n9"),
            ("`Service.Tags`: invalid type: string \"v1\", expected a sequence", "10: service orders (ID o-10) on node n10"),
            ("check `serfHealth` has no `Status`", "11: service orders (ID o-11) on node n11"),
            ("expected a Consul health entry (a JSON object with `Node`, `Service` and `Checks`), found a string", "12"),
            ("port 0 is not a port: expected 1 to 65535", "13: service orders (ID o-12) on node n12"),
        ]
        .iter()
        .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: Consul entry {entry}")))
        .collect();
        assert_eq!(entry_errors(&diagnostics), expected);
        // Each diagnostic points at the offending value, or at the object that lacks it.
        let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(&text, it.labels[0].span)).collect();
        assert_eq!(
            spans,
            [
                "70000",
                r#"{"ID":"o-3","Service":"orders"}"#,
                r#""10.0.3 .4""#,
                r#"{"Node":{"Node":"n5","Address":"10.0.3.4"}}"#,
                r#""http""#,
                r#"{"ID":"o-7","Service":"orders","Port":80}"#,
                r#"{"ID":"o-8","Port":80}"#,
                "-1",
                r#""v1""#,
                r#"{"CheckID":"serfHealth"}"#,
                r#""orders""#,
                "0",
            ]
        );
    }

    #[test]
    fn a_malformed_field_is_named_by_its_path_with_the_entry_it_is_in() {
        // The shape of `consul/malformed/wrong-type-port.json`: a word where Consul writes a
        // number, in the second entry; the entry is named by what can still be read of it.
        let text = format!(
            "[{},\n{}]",
            entry("orders", "orders-a", "node-a", "", "[]"),
            entry("orders", "orders-b", "node-b", r#","Port":"http","Meta":{"version":"v2"}"#, "[]"),
        );
        let (snapshot, diagnostics) = load_text(&text);
        assert_eq!(snapshot.instances.len(), 1);
        assert_eq!(
            entry_errors(&diagnostics),
            [(
                "malformed entry in registry `consul-dc1`: `Service.Port`: expected a number, found `http`".to_owned(),
                "entry: Consul entry 2: service orders (ID orders-b) on node node-b".to_owned()
            )]
        );
        assert_eq!(spanned(&text, diagnostics[0].labels[0].span), r#""http""#);

        // Nested paths, and names that cannot be read (a number for `Service.Service`) left out.
        let text = r#"[
          {"Node":{"Node":"n1","Address":"10.0.3.4","Datacenter":1},"Service":{"ID":"w-1","Service":"web","Port":80},"Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.3.5"},"Service":{"ID":"w-2","Service":7,"Port":80},"Checks":[]},
          {"Node":"n3","Service":{"ID":"w-3","Service":"web","Port":80},"Checks":[]},
          {"Node":{"Node":"n4","Address":"10.0.3.7"},"Service":{"Service":"web","Port":80,"Weights":{"Passing":"heavy"}},"Checks":[]},
          {"Node":{"Node":"n5","Address":"10.0.3.8"},"Service":{"ID":"w-5","Service":"web","Port":80},
           "Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"service:w-5","Status":3,"ServiceID":"w-5"}]},
          {"Node":{"Node":"n6","Address":"10.0.3.9"},"Service":{"ID":"w-6","Service":"web","Port":80},"Checks":["serfHealth"]}
        ]"#;
        let (snapshot, diagnostics) = load_text(text);
        assert!(snapshot.instances.is_empty());
        let prefix = "malformed entry in registry `consul-dc1`: ";
        let expected: Vec<(String, String)> = [
            ("`Node.Datacenter`: invalid type: integer `1`, expected a string", "1: service web (ID w-1) on node n1"),
            ("`Service.Service`: invalid type: integer `7`, expected a string", "2: service ID w-2 on node n2"),
            ("`Node` is a string, not a Consul node (a JSON object)", "3: service web (ID w-3)"),
            ("`Service.Weights.Passing`: expected a number, found `heavy`", "4: service web on node n4"),
            ("`Checks[1].Status`: invalid type: integer `3`, expected a string", "5: service web (ID w-5) on node n5"),
            ("`Checks[0]` is a string, not a Consul check (a JSON object)", "6: service web (ID w-6) on node n6"),
        ]
        .iter()
        .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: Consul entry {entry}")))
        .collect();
        assert_eq!(entry_errors(&diagnostics), expected);
        let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(text, it.labels[0].span)).collect();
        assert_eq!(spans, ["1", "7", r#""n3""#, r#""heavy""#, "3", r#""serfHealth""#]);
    }

    #[test]
    fn truncated_json_is_a_file_error() {
        let (snapshot, diagnostics) = load_text(&REFERENCE[..200]);
        assert!(snapshot.services.is_empty() && snapshot.instances.is_empty());
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].code, Code::RegistryFormat);
        assert!(
            diagnostics[0].message.starts_with("cannot read consul snapshot of registry `consul-dc1`: invalid JSON: EOF while parsing"),
            "{}",
            diagnostics[0].message
        );
    }

    #[test]
    fn no_input_panics() {
        let text = format!("[{},[{}]]", &REFERENCE[1..REFERENCE.len() - 1], entry("Orders.Svc", "x", "n", r#","Weights":null"#, "null"));
        for end in (0..=text.len()).filter(|it| text.is_char_boundary(*it)) {
            load_text(&text[..end]);
        }
        for at in 0..text.len() {
            for replacement in ["\"", "[", "{", "0", "null"] {
                let mut mutated = text.clone().into_bytes();
                mutated.splice(at..at + 1, replacement.bytes());
                if let Ok(mutated) = String::from_utf8(mutated) {
                    load_text(&mutated);
                }
            }
        }
    }
}
