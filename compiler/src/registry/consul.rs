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
mod tests;
