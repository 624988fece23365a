//! Nacos naming snapshots: `/nacos/v1/ns/instance/list` responses (JSON), one object or an array
//! of them, also in the envelopes of Nacos 2's open API and Nacos 3's client API.
//!
//! ```json
//! [{"name": "DEFAULT_GROUP@@orders", "groupName": "DEFAULT_GROUP", "lastRefTime": 1700000000000,
//!   "hosts": [{"ip": "10.0.1.15", "port": 8080, "weight": 1.0, "healthy": true, "enabled": true,
//!              "clusterName": "hz-a", "metadata": {"version": "v2", "protocol": "http"}}]}]
//! ```
//!
//! How a response maps onto the model:
//! - The service is `name` (`GROUP@@service`), Nacos 1.x's `dom`, or else the hosts' `serviceName`.
//!   When that name carries no group, `groupName` gives it (`DEFAULT_GROUP` when absent).
//!   Nacos v2's envelope `{"code": 0, "data": {…}}` is unwrapped, so v2 open-API dumps load too.
//!   Nacos v3's client API (`/nacos/v3/client/ns/instance/list`) puts the instances themselves in
//!   `data`, `{"code": 0, "data": [{…, "serviceName": "DEFAULT_GROUP@@orders"}]}`: they are
//!   grouped by `serviceName` (qualified by their `groupName` when it carries no group).
//! - Dubbo's interface-level names `providers:<interface>:<version>:<group>` (version and group
//!   may be empty) are Dubbo services in the mesh namespace, named by [`super::dubbo_key`], with
//!   the union of the hosts' `methods` metadata (a comma list) as their methods.
//!   `consumers:`, `configurators:` and `routers:` names describe no provider and are skipped
//!   without a message.
//! - Any other name is a service in the registry's namespace.
//!   The Nacos group is not part of the service name: teams put one application in several
//!   groups (a canary, a gray release) and mean one service.
//!   A group other than `DEFAULT_GROUP` becomes the label `nacos.io/group` on its instances, so a
//!   subset can select it.
//! - A service name must be a DNS label.
//!   Nacos allows `Order_Service`, `nacos.test.1` and the like, so such a name is normalised by
//!   [`dns_label`] (lower-cased, every run of other characters made one `-`, cut to 63 bytes) and
//!   its instances carry the original as the label `nacos.io/service`.
//!   Two names that normalise alike become one service, told apart by that label.
//! - A host is an instance: `ip` and `port` (a number or a string); `weight` × 100, so Nacos's
//!   default 1.0 is meshc's 100; `healthy` (Nacos 1.x `valid`) and `enabled` give the health,
//!   `enabled: false` being draining; a `clusterName` other than `DEFAULT` is the zone; every
//!   `metadata` entry is a label, and `metadata.protocol` is the protocol.
//!   `ephemeral` is dropped: it says how Nacos tracks liveness, which `healthy` already reflects,
//!   and a label on it would only split subsets by registration style.
//! - A response with `reachProtectionThreshold: true` lists unhealthy hosts too (Nacos's
//!   protection threshold); they keep `healthy: false` and so stay unhealthy.
//! - The snapshot's version is the largest `lastRefTime`.
//!
//! A malformed response is skipped as a whole; a malformed host only skips that host.
//! Messages count responses and hosts from 1, in the list that holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use meshc_codegen::ir::{Locality, Protocol, RpcKey};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Ctx, Instance, Service, Snapshot, loose};
use crate::source::Span;

/// The group Nacos assigns when a registration names none.
const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// The cluster Nacos assigns when a registration names none; it says nothing about locality.
const DEFAULT_CLUSTER: &str = "DEFAULT";

/// Dubbo categories that Dubbo registers as Nacos services but that list no providers.
const NOT_PROVIDERS: [&str; 3] = ["consumers:", "configurators:", "routers:"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", expecting = "a Nacos instance list (a JSON object)")]
struct RawResponse<'a> {
    name: Option<String>,
    dom: Option<String>,
    group_name: Option<String>,
    #[serde(default, deserialize_with = "loose::string")]
    last_ref_time: Option<String>,
    #[serde(default, borrow)]
    hosts: Option<Vec<&'a RawValue>>,
    /// Nacos v2's and v3's envelope: `code`, `message` and the response in `data`.
    #[serde(default, deserialize_with = "loose::number")]
    code: Option<f64>,
    #[serde(default, deserialize_with = "loose::string")]
    message: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// What a Nacos 3 instance says about its service, read before the rest of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInstanceService {
    #[serde(default, deserialize_with = "loose::string")]
    service_name: Option<String>,
    #[serde(default, deserialize_with = "loose::string")]
    group_name: Option<String>,
}

/// One service's instance list, however the response wraps it.
struct Listing<'a> {
    /// `name`, then Nacos 1.x's `dom`.
    names: Vec<String>,
    group_name: Option<String>,
    last_ref_time: Option<String>,
    /// The hosts, with their numbers (from 1) in the list that holds them.
    hosts: Vec<(usize, &'a RawValue)>,
    /// Whether the hosts came without a service object around them (Nacos 3's `data` array),
    /// so that hosts without a `serviceName` are reported one by one.
    bare: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", expecting = "a Nacos host (a JSON object)")]
struct RawHost {
    instance_id: Option<String>,
    ip: Option<String>,
    #[serde(default, deserialize_with = "loose::number")]
    port: Option<f64>,
    #[serde(default, deserialize_with = "loose::number")]
    weight: Option<f64>,
    #[serde(default, deserialize_with = "loose::boolean")]
    healthy: Option<bool>,
    /// Nacos 1.x's name for `healthy`.
    #[serde(default, deserialize_with = "loose::boolean")]
    valid: Option<bool>,
    #[serde(default, deserialize_with = "loose::boolean")]
    enabled: Option<bool>,
    cluster_name: Option<String>,
    service_name: Option<String>,
    #[serde(default, deserialize_with = "loose::string_map")]
    metadata: BTreeMap<String, String>,
}

/// What a Nacos service name stands for.
enum Identity {
    /// A Dubbo interface-level provider service.
    Dubbo { name: String, key: RpcKey },
    /// An ordinary service; `original` is set when the name had to be normalised.
    Plain { name: String, original: Option<String> },
}

/// Reads a Nacos snapshot.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    let Some(elements) = super::json_elements(ctx) else {
        return Snapshot::default();
    };
    let mut found = Read::default();
    for (index, (range, raw)) in elements.into_iter().enumerate() {
        let what = format!("Nacos response {}", index + 1);
        let listings = match serde_json::from_str::<RawResponse<'_>>(raw.get())
            .map_err(|err| (range.clone(), json_message(&err)))
            .and_then(|response| unwrap_envelope(ctx.text, &range, response))
        {
            Ok(listings) => listings,
            Err((at, message)) => {
                let at = ctx.span(at);
                ctx.bad_entry(at, &what, message);
                continue;
            }
        };
        for listing in listings {
            read_listing(ctx, listing, &what, &range, &mut found);
        }
    }
    Snapshot { services: found.services.finish(), instances: found.instances, version: found.latest.map(|it| it.to_string()) }
}

/// What the responses read so far hold.
#[derive(Default)]
struct Read {
    services: Collector,
    instances: Vec<Instance>,
    /// The largest `lastRefTime`.
    latest: Option<u64>,
}

/// Reads one service's instance list; `range` is the response's.
fn read_listing(ctx: &mut Ctx<'_>, listing: Listing<'_>, what: &str, range: &Range<usize>, found: &mut Read) {
    // Nacos 3 instances come without a service object: the first of them describes the service.
    let described = match listing.hosts.first() {
        Some((_, host)) if listing.bare => range_in(ctx.text, host.get()).unwrap_or_else(|| range.clone()),
        _ => range.clone(),
    };
    let span = ctx.span(described);
    // Parse the hosts first: the oldest responses name the service only in the hosts.
    let hosts: Vec<(usize, Span, Result<RawHost, String>)> = listing
        .hosts
        .into_iter()
        .map(|(number, host)| {
            let at = range_in(ctx.text, host.get()).unwrap_or_else(|| range.clone());
            (number, ctx.span(at), serde_json::from_str::<RawHost>(host.get()).map_err(|err| json_message(&err)))
        })
        .collect();
    let full_name = listing
        .names
        .into_iter()
        .chain(hosts.iter().filter_map(|(_, _, host)| host.as_ref().ok()?.service_name.clone()))
        .find(|it| !it.trim().is_empty());
    let Some(full_name) = full_name else {
        if listing.bare {
            // Nacos 3 instances that do not say their service: each is reported on its own.
            for (number, host_span, host) in hosts {
                let message = host.err().unwrap_or_else(|| "the instance has no `serviceName`, so its service is unknown".to_owned());
                ctx.bad_entry(host_span, &format!("{what}, host {number}"), message);
            }
        } else {
            ctx.bad_entry(span, what, "no service name: give `name` (or Nacos 1.x's `dom`, or the hosts' `serviceName`)");
        }
        return;
    };
    let (group, service_name) = match full_name.split_once("@@") {
        Some((group, name)) => (group.to_owned(), name),
        None => (listing.group_name.filter(|it| !it.is_empty()).unwrap_or_else(|| DEFAULT_GROUP.to_owned()), full_name.as_str()),
    };
    let entry = format!("Nacos service `{full_name}`");
    let target = match identify(service_name) {
        Ok(Some(Identity::Dubbo { name, key })) => {
            Target { namespace: ctx.mesh_namespace.to_owned(), name, rpc: Some(key), group, original: None }
        }
        Ok(Some(Identity::Plain { name, original })) => Target { namespace: ctx.namespace.to_owned(), name, rpc: None, group, original },
        Ok(None) => return,
        Err(message) => {
            ctx.bad_entry(span, &entry, message);
            return;
        }
    };
    let fallback = target.rpc.as_ref().map(|_| Protocol::Dubbo);
    let service = Service {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        rpc: target.rpc.clone(),
        protocol: None,
        ports: Vec::new(),
        methods: None,
        span,
        entry: entry.clone(),
    };
    let slot = found.services.slot(service, fallback);
    if let Some(time) = listing.last_ref_time.and_then(|it| it.trim().parse::<u64>().ok()) {
        found.latest = found.latest.max(Some(time));
    }

    for (number, host_span, host) in hosts {
        let mut host_what = format!("{entry}, host {number}");
        if let Some(id) = host.as_ref().ok().and_then(|it| it.instance_id.as_deref()).filter(|it| !it.is_empty()) {
            host_what.push_str(&format!(" (instanceId `{id}`)"));
        }
        match host.and_then(|host| instance(host, &target, host_span)) {
            Ok(host) => {
                found.services.declare(slot, host.protocol, host.methods);
                found.instances.push(host.instance);
            }
            Err(message) => ctx.bad_entry(host_span, &host_what, message),
        }
    }
}

/// The service a response's hosts are instances of.
struct Target {
    namespace: String,
    name: String,
    rpc: Option<RpcKey>,
    /// The Nacos group.
    group: String,
    /// The name as Nacos wrote it, when it had to be normalised.
    original: Option<String>,
}

/// An instance made of a host, with what the host declares about its service.
struct Found {
    instance: Instance,
    protocol: Option<Protocol>,
    methods: Option<BTreeSet<String>>,
}

/// Makes an instance of a host.
fn instance(host: RawHost, target: &Target, span: Span) -> Result<Found, String> {
    let address = match host.ip.as_deref().map(str::trim) {
        None | Some("") => return Err("missing `ip`".to_owned()),
        Some(ip) if !super::is_address(ip) => {
            return Err(format!("`{ip}` is not an IP address or host name"));
        }
        Some(ip) => ip.to_owned(),
    };
    let port = host.port.ok_or("missing `port`")?;
    let port = super::port_number(port).ok_or_else(|| format!("port {port} is not a port: expected 1 to 65535"))?;
    let weight = host.weight.unwrap_or(1.0);
    if weight < 0.0 {
        return Err(format!("weight {weight} is negative"));
    }

    let protocol = host.metadata.get("protocol").and_then(|it| super::protocol_from_name(it));
    let methods = match target.rpc {
        Some(_) => host.metadata.get("methods").map(|it| method_list(it)).filter(|it| !it.is_empty()),
        None => None,
    };
    let mut labels = host.metadata;
    if target.group != DEFAULT_GROUP {
        labels.insert("nacos.io/group".to_owned(), target.group.clone());
    }
    if let Some(original) = &target.original {
        labels.insert("nacos.io/service".to_owned(), original.clone());
    }
    let zone = host.cluster_name.filter(|it| !it.is_empty() && it != DEFAULT_CLUSTER);
    let instance = Instance {
        namespace: target.namespace.clone(),
        service: target.name.clone(),
        address,
        port,
        service_port: None,
        // Saturating: Nacos caps weights at 10000, far below u32::MAX / 100.
        weight: (weight * 100.0).round() as u32,
        labels,
        locality: Locality { region: None, zone, subzone: None },
        health: super::health_from_flags(host.healthy.or(host.valid), host.enabled),
        span,
    };
    Ok(Found { instance, protocol, methods })
}

/// The service lists of a response: the response itself, or what Nacos v2's and v3's
/// `{"code", "message", "data"}` envelope holds. v2 (`/nacos/v2/ns/instance/list`) puts one
/// service's list in `data`; v3's client API (`/nacos/v3/client/ns/instance/list`) puts the
/// instances themselves there, each naming its service, so they are grouped by service.
/// An error is where it is and what is wrong.
fn unwrap_envelope<'a>(text: &str, range: &Range<usize>, response: RawResponse<'a>) -> Result<Vec<Listing<'a>>, (Range<usize>, String)> {
    let enveloped = response.hosts.is_none() && (response.data.is_some() || response.code.is_some());
    if !enveloped {
        return Ok(vec![listing(response)]);
    }
    // v2 answers 0 on success; some gateways rewrite it to the HTTP status.
    if let Some(code) = response.code.filter(|it| *it != 0.0 && *it != 200.0) {
        let message = response.message.unwrap_or_default();
        return Err((range.clone(), format!("the response is Nacos error {code}: {message}").trim_end_matches([' ', ':']).to_owned()));
    }
    let Some(data) = response.data else { return Err((range.clone(), "the response has no `data`".to_owned())) };
    let at = range_in(text, data.get()).unwrap_or_else(|| range.clone());
    match data.get().as_bytes().first() {
        Some(b'{') => {
            let inner =
                serde_json::from_str::<RawResponse<'a>>(data.get()).map_err(|err| (at, format!("`data`: {}", json_message(&err))))?;
            Ok(vec![listing(inner)])
        }
        Some(b'[') => {
            let items =
                serde_json::from_str::<Vec<&'a RawValue>>(data.get()).map_err(|err| (at, format!("`data`: {}", json_message(&err))))?;
            Ok(group_instances(items))
        }
        _ => {
            let found = match data.get().as_bytes().first() {
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                _ => "a number",
            };
            Err((at, format!("`data` is {found}, not an instance list (a JSON object) or, as Nacos 3 answers, an array of instances")))
        }
    }
}

/// The service list a v1 response, or the `data` of a v2 envelope, is.
fn listing(response: RawResponse<'_>) -> Listing<'_> {
    Listing {
        names: [response.name, response.dom].into_iter().flatten().collect(),
        group_name: response.group_name,
        last_ref_time: response.last_ref_time,
        hosts: response.hosts.unwrap_or_default().into_iter().enumerate().map(|(index, host)| (index + 1, host)).collect(),
        bare: false,
    }
}

/// Groups Nacos 3 instances by their service (`serviceName`, qualified by `groupName` when it
/// has no group of its own), in the order the services first appear. Instances that do not
/// name a service form one list without a name.
fn group_instances(items: Vec<&RawValue>) -> Vec<Listing<'_>> {
    let mut listings: Vec<Listing<'_>> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let names = serde_json::from_str::<RawInstanceService>(item.get()).ok();
        let name = names.and_then(|it| {
            let service = it.service_name.filter(|it| !it.trim().is_empty())?;
            let group = it.group_name.filter(|it| !it.is_empty());
            Some(match group {
                Some(group) if !service.contains("@@") => format!("{group}@@{service}"),
                _ => service,
            })
        });
        let names: Vec<String> = name.into_iter().collect();
        match listings.iter_mut().find(|it| it.names == names) {
            Some(listing) => listing.hosts.push((index + 1, item)),
            None => listings.push(Listing { names, group_name: None, last_ref_time: None, hosts: vec![(index + 1, item)], bare: true }),
        }
    }
    listings
}

/// Classifies a service name (without its group); `None` for names that are not services.
fn identify(name: &str) -> Result<Option<Identity>, String> {
    if let Some(rest) = name.strip_prefix("providers:") {
        // `providers:<interface>:<version>:<group>`; Dubbo before 2.7 left out empty trailing parts.
        let mut parts = rest.splitn(3, ':');
        let interface = parts.next().unwrap_or_default();
        let version = parts.next();
        let group = parts.next();
        if !super::is_interface(interface) {
            return Err(format!("`{name}` is not a Dubbo provider name: `{interface}` is not an interface name"));
        }
        let (name, key) = super::dubbo_key(interface, version, group);
        return Ok(Some(Identity::Dubbo { name, key }));
    }
    if NOT_PROVIDERS.iter().any(|prefix| name.starts_with(prefix)) {
        return Ok(None);
    }
    if crate::manifest::is_dns_label(name) {
        return Ok(Some(Identity::Plain { name: name.to_owned(), original: None }));
    }
    match dns_label(name) {
        Some(label) => Ok(Some(Identity::Plain { name: label, original: Some(name.to_owned()) })),
        None => Err(format!("`{name}` cannot be made a service name: it has no ASCII letters or digits")),
    }
}

/// Makes a DNS label of a registry's service name: ASCII letters lower-cased, every run of
/// other characters (`_`, `.`, `:`, non-ASCII) made one `-`, no `-` at either end, and at most
/// 63 bytes. `None` when nothing is left.
pub(super) fn dns_label(name: &str) -> Option<String> {
    let mut label = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(63);
    let label = label.trim_end_matches('-');
    (!label.is_empty()).then(|| label.to_owned())
}

/// Dubbo's `methods` metadata: a comma-separated list.
fn method_list(text: &str) -> BTreeSet<String> {
    text.split(',').map(str::trim).filter(|it| !it.is_empty()).map(str::to_owned).collect()
}

/// The byte range of `part` in `text`, when `part` is a slice of `text` (as the `RawValue`s
/// parsed out of a snapshot are), so that nested JSON values get their own spans.
pub(super) fn range_in(text: &str, part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= text.len()).then_some(start..end)
}

/// A serde_json error without its position: the position is relative to the entry, which the
/// diagnostic's span already locates in the file.
pub(super) fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) if err.line() > 0 => text[..at].to_owned(),
        _ => text,
    }
}

/// The services of one snapshot: each key once, in the order the file first names them.
#[derive(Debug, Default)]
pub(super) struct Collector {
    pending: Vec<Pending>,
    index: BTreeMap<(String, String), usize>,
}

#[derive(Debug)]
struct Pending {
    service: Service,
    /// The protocols the instances declare.
    declared: BTreeSet<Protocol>,
    /// The protocol when the instances declare none, or disagree.
    fallback: Option<Protocol>,
}

impl Collector {
    /// The slot of `service`'s key, added on first sight; a later description of the same key
    /// (another cluster, another group, another response) only adds instances.
    pub(super) fn slot(&mut self, service: Service, fallback: Option<Protocol>) -> usize {
        let key = (service.namespace.clone(), service.name.clone());
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        self.pending.push(Pending { service, declared: BTreeSet::new(), fallback });
        self.index.insert(key, self.pending.len() - 1);
        self.pending.len() - 1
    }

    /// Records what one instance of the service declares.
    pub(super) fn declare(&mut self, slot: usize, protocol: Option<Protocol>, methods: Option<BTreeSet<String>>) {
        let Some(pending) = self.pending.get_mut(slot) else {
            return;
        };
        pending.declared.extend(protocol);
        if let Some(methods) = methods {
            pending.service.methods.get_or_insert_with(BTreeSet::new).extend(methods);
        }
    }

    /// The services. The protocol is the one every declaring instance agrees on; instances that
    /// disagree (Dubbo exporting one interface over `dubbo` and `tri`) leave the fallback.
    pub(super) fn finish(self) -> Vec<Service> {
        self.pending
            .into_iter()
            .map(|mut pending| {
                let agreed = (pending.declared.len() == 1).then(|| pending.declared.first().copied()).flatten();
                pending.service.protocol = agreed.or(pending.fallback);
                pending.service
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
