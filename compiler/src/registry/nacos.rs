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
mod tests {
    use meshc_codegen::ir::{Health, RegistryKind};

    use super::*;
    use crate::diag::{Code, Diagnostic};
    use crate::manifest::RegistryEntry;
    use crate::source::{FileId, Span};

    const FILE: FileId = FileId(7);

    fn load_text(text: &str) -> (Snapshot, Vec<Diagnostic>) {
        let dummy = Span::new(FileId(0), 0..0);
        let registry = RegistryEntry {
            name: "nacos-hz".to_owned(),
            name_span: dummy,
            kind: RegistryKind::Nacos,
            path: "registries/nacos.json".to_owned(),
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

    /// The text a span covers.
    fn spanned(text: &str, span: Span) -> &str {
        assert_eq!(span.file, FILE);
        &text[span.start as usize..span.end as usize]
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// (message, note) of each diagnostic, all of which must be `RegistryEntry` errors.
    fn entry_errors(diagnostics: &[Diagnostic]) -> Vec<(String, String)> {
        diagnostics
            .iter()
            .map(|it| {
                assert_eq!(it.code, Code::RegistryEntry);
                assert_eq!(it.labels.len(), 1);
                assert_eq!(it.labels[0].message, "this entry was skipped");
                (it.message.clone(), it.notes.join("\n"))
            })
            .collect()
    }

    const DUBBO: &str = r#"{"name":"DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray","groupName":"DEFAULT_GROUP","clusters":"",
 "cacheMillis":10000,"lastRefTime":1700000000000,"checksum":"c0ffee","allIPs":false,"reachProtectionThreshold":false,"valid":true,
 "hosts":[{"instanceId":"10.0.1.15#20880#DEFAULT#DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray",
   "ip":"10.0.1.15","port":20880,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,
   "clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray",
   "metadata":{"side":"provider","application":"demo-provider","methods":"sayHello","version":"1.0.0","group":"gray","protocol":"dubbo"},
   "instanceHeartBeatInterval":5000,"instanceHeartBeatTimeOut":15000,"ipDeleteTimeout":30000,"instanceIdGenerator":"simple"}]}"#;

    #[test]
    fn dubbo_providers_become_rpc_services_in_the_mesh_namespace() {
        let snapshot = clean(DUBBO);
        assert_eq!(snapshot.version.as_deref(), Some("1700000000000"));
        assert_eq!(snapshot.services.len(), 1);
        let service = &snapshot.services[0];
        assert_eq!((service.namespace.as_str(), service.name.as_str()), ("mesh", "gray/com.ex.DemoService:1.0.0"));
        let key = service.rpc.as_ref().unwrap();
        assert_eq!(
            (key.interface.as_str(), key.version.as_deref(), key.group.as_deref()),
            ("com.ex.DemoService", Some("1.0.0"), Some("gray"))
        );
        assert_eq!(service.protocol, Some(Protocol::Dubbo));
        assert_eq!(service.methods, Some(BTreeSet::from(["sayHello".to_owned()])));
        assert!(service.ports.is_empty());
        assert_eq!(service.entry, "Nacos service `DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray`");
        assert_eq!(spanned(DUBBO, service.span), DUBBO);

        assert_eq!(snapshot.instances.len(), 1);
        let instance = &snapshot.instances[0];
        assert_eq!((instance.namespace.as_str(), instance.service.as_str()), ("mesh", "gray/com.ex.DemoService:1.0.0"));
        assert_eq!((instance.address.as_str(), instance.port, instance.service_port), ("10.0.1.15", 20880, None));
        assert_eq!((instance.weight, instance.health), (super::super::DEFAULT_WEIGHT, Health::Healthy));
        assert_eq!(instance.locality, Locality::default());
        assert_eq!(
            instance.labels,
            labels(&[
                ("application", "demo-provider"),
                ("group", "gray"),
                ("methods", "sayHello"),
                ("protocol", "dubbo"),
                ("side", "provider"),
                ("version", "1.0.0")
            ])
        );
        assert!(spanned(DUBBO, instance.span).starts_with(r#"{"instanceId":"10.0.1.15#20880"#));
        assert!(spanned(DUBBO, instance.span).ends_with(r#""instanceIdGenerator":"simple"}"#));
    }

    #[test]
    fn dubbo_names_with_empty_parts_and_other_protocols() {
        let text = r#"[
          {"name":"DEFAULT_GROUP@@providers:com.ex.Echo::","hosts":[
            {"ip":"10.0.1.20","port":50051,"metadata":{"protocol":"tri","methods":"echo, ping ,"}},
            {"ip":"10.0.1.21","port":50051,"metadata":{"protocol":"tri","methods":"echo,shout"}}]},
          {"name":"DEFAULT_GROUP@@providers:com.ex.Mixed:2.0","hosts":[
            {"ip":"10.0.1.22","port":20880,"metadata":{"protocol":"dubbo"}},
            {"ip":"10.0.1.22","port":50052,"metadata":{"protocol":"tri"}}]},
          {"name":"DEFAULT_GROUP@@consumers:com.ex.Echo::","hosts":[{"ip":"10.0.9.9","port":0}]},
          {"name":"DEFAULT_GROUP@@configurators:com.ex.Echo::","hosts":[]}
        ]"#;
        let snapshot = clean(text);
        let names: Vec<_> = snapshot.services.iter().map(|it| (it.namespace.as_str(), it.name.as_str(), it.protocol)).collect();
        assert_eq!(names, [("mesh", "com.ex.Echo", Some(Protocol::Grpc)), ("mesh", "com.ex.Mixed:2.0", Some(Protocol::Dubbo))]);
        let key = snapshot.services[0].rpc.as_ref().unwrap();
        assert_eq!((key.version.as_deref(), key.group.as_deref()), (None, None));
        let methods: Vec<_> = snapshot.services[0].methods.iter().flatten().map(String::as_str).collect();
        assert_eq!(methods, ["echo", "ping", "shout"]);
        assert_eq!(snapshot.services[1].methods, None);
        assert_eq!(snapshot.instances.len(), 4);
        assert_eq!(snapshot.version, None);
    }

    #[test]
    fn groups_are_labels_and_clusters_are_zones() {
        let text = r#"[
          {"name":"DEFAULT_GROUP@@orders","groupName":"DEFAULT_GROUP","lastRefTime":1700000000500,"hosts":[
            {"ip":"10.0.2.1","port":8080,"weight":0.5,"healthy":true,"enabled":true,"clusterName":"hz-a",
             "metadata":{"version":"v1","protocol":"http"}},
            {"ip":"10.0.2.2","port":"8080","weight":"2","healthy":"true","clusterName":"DEFAULT","metadata":{"protocol":"HTTP"}}]},
          {"name":"canary@@orders","groupName":"canary","lastRefTime":"1700000000900","hosts":[
            {"ip":"10.0.2.3","port":8080,"weight":1,"healthy":true,"clusterName":"hz-b","metadata":{"version":"v2","protocol":"http"}}]},
          {"name":"payments","groupName":"gray","lastRefTime":1700000000100,"hosts":[{"ip":"10.0.3.1","port":9090}]}
        ]"#;
        let snapshot = clean(text);
        assert_eq!(snapshot.version.as_deref(), Some("1700000000900"));
        let services: Vec<_> =
            snapshot.services.iter().map(|it| (it.namespace.as_str(), it.name.as_str(), it.protocol, it.rpc.is_some())).collect();
        assert_eq!(services, [("shop", "orders", Some(Protocol::Http), false), ("shop", "payments", None, false)]);
        assert_eq!(snapshot.services[0].entry, "Nacos service `DEFAULT_GROUP@@orders`");

        let instances: Vec<_> = snapshot
            .instances
            .iter()
            .map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight, it.locality.zone.as_deref()))
            .collect();
        assert_eq!(
            instances,
            [
                ("orders", "10.0.2.1", 8080, 50, Some("hz-a")),
                ("orders", "10.0.2.2", 8080, 200, None),
                ("orders", "10.0.2.3", 8080, 100, Some("hz-b")),
                ("payments", "10.0.3.1", 9090, 100, None),
            ]
        );
        assert_eq!(snapshot.instances[0].labels, labels(&[("protocol", "http"), ("version", "v1")]));
        assert_eq!(snapshot.instances[2].labels, labels(&[("nacos.io/group", "canary"), ("protocol", "http"), ("version", "v2")]));
        assert_eq!(snapshot.instances[3].labels, labels(&[("nacos.io/group", "gray")]));
        assert_eq!(snapshot.instances[3].health, Health::Unknown);
    }

    #[test]
    fn nacos_1_responses_load() {
        // Nacos 1.x: `dom` beside (or instead of) `name`, `valid` for `healthy`, null metadata,
        // and hosts without `serviceName`.
        let text = r#"[
          {"metadata":{},"dom":"nacos.test.1","cacheMillis":3000,"useSpecifiedURL":false,"checksum":"x","lastRefTime":1600000000000,
           "env":"","clusters":"","hosts":[{"valid":true,"marked":false,"instanceId":"10.10.10.10-8888-DEFAULT-nacos.test.1",
           "port":8888,"ip":"10.10.10.10","weight":1.0,"metadata":null,"clusterName":"DEFAULT"},
           {"valid":false,"marked":false,"port":8889,"ip":"10.10.10.11","weight":1.0}]},
          {"hosts":[{"ip":"10.10.10.12","port":8888,"serviceName":"DEFAULT_GROUP@@inventory"}]}
        ]"#;
        let snapshot = clean(text);
        let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, ["nacos-test-1", "inventory"]);
        let instances: Vec<_> = snapshot.instances.iter().map(|it| (it.service.as_str(), it.address.as_str(), it.health)).collect();
        assert_eq!(
            instances,
            [
                ("nacos-test-1", "10.10.10.10", Health::Healthy),
                ("nacos-test-1", "10.10.10.11", Health::Unhealthy),
                ("inventory", "10.10.10.12", Health::Unknown)
            ]
        );
        assert_eq!(snapshot.instances[0].labels, labels(&[("nacos.io/service", "nacos.test.1")]));
        assert_eq!(snapshot.instances[2].labels, BTreeMap::new());
        assert_eq!(snapshot.version.as_deref(), Some("1600000000000"));
    }

    #[test]
    fn names_that_are_not_dns_labels_are_normalised() {
        assert_eq!(dns_label("Order_Service").as_deref(), Some("order-service"));
        assert_eq!(dns_label("__Billing..API__v2").as_deref(), Some("billing-api-v2"));
        assert_eq!(dns_label("café-menu").as_deref(), Some("caf-menu"));
        assert_eq!(dns_label(&"a".repeat(70)).map(|it| it.len()), Some(63));
        assert_eq!(dns_label(&format!("{}_b", "a".repeat(62))).as_deref(), Some("a".repeat(62).as_str()));
        assert_eq!(dns_label("_-_"), None);

        let text = r#"[{"name":"DEFAULT_GROUP@@Order_Service","hosts":[{"ip":"10.0.4.1","port":80}]},
                      {"name":"DEFAULT_GROUP@@order-service","hosts":[{"ip":"10.0.4.2","port":80}]},
                      {"name":"DEFAULT_GROUP@@___","hosts":[{"ip":"10.0.4.3","port":80}]}]"#;
        let (snapshot, diagnostics) = load_text(text);
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.services[0].name, "order-service");
        assert_eq!(snapshot.services[0].entry, "Nacos service `DEFAULT_GROUP@@Order_Service`");
        assert_eq!(snapshot.instances[0].labels, labels(&[("nacos.io/service", "Order_Service")]));
        assert_eq!(snapshot.instances[1].labels, BTreeMap::new());
        assert_eq!(
            entry_errors(&diagnostics),
            [(
                "malformed entry in registry `nacos-hz`: `___` cannot be made a service name: it has no ASCII letters or digits".to_owned(),
                "entry: Nacos service `DEFAULT_GROUP@@___`".to_owned()
            )]
        );
        assert!(spanned(text, diagnostics[0].labels[0].span).starts_with(r#"{"name":"DEFAULT_GROUP@@___""#));
    }

    #[test]
    fn protection_threshold_keeps_unhealthy_hosts_unhealthy() {
        let text = r#"{"name":"DEFAULT_GROUP@@cart","reachProtectionThreshold":true,"allIPs":false,"hosts":[
            {"ip":"10.0.5.1","port":8080,"healthy":true,"enabled":true},
            {"ip":"10.0.5.2","port":8080,"healthy":false,"enabled":true},
            {"ip":"10.0.5.3","port":8080,"healthy":false,"enabled":true,"weight":3.0},
            {"ip":"10.0.5.4","port":8080,"healthy":true,"enabled":false},
            {"ip":"10.0.5.5","port":8080,"healthy":true,"enabled":true,"weight":0.0}]}"#;
        let snapshot = clean(text);
        let health: Vec<_> = snapshot.instances.iter().map(|it| (it.address.as_str(), it.health, it.weight)).collect();
        assert_eq!(
            health,
            [
                ("10.0.5.1", Health::Healthy, 100),
                ("10.0.5.2", Health::Unhealthy, 100),
                ("10.0.5.3", Health::Unhealthy, 300),
                ("10.0.5.4", Health::Draining, 100),
                ("10.0.5.5", Health::Healthy, 0),
            ]
        );
    }

    #[test]
    fn addresses_may_be_ipv6_or_host_names() {
        let text = r#"{"name":"DEFAULT_GROUP@@search","hosts":[
            {"ip":"fd00:10::7","port":8080},{"ip":"search-0.search.shop.svc.cluster.local","port":8080},{"ip":" 10.0.6.1 ","port":8080}]}"#;
        let snapshot = clean(text);
        let addresses: Vec<_> = snapshot.instances.iter().map(|it| it.address.as_str()).collect();
        assert_eq!(addresses, ["fd00:10::7", "search-0.search.shop.svc.cluster.local", "10.0.6.1"]);
    }

    #[test]
    fn malformed_hosts_are_reported_and_skipped_one_by_one() {
        let text = r#"{"name":"DEFAULT_GROUP@@orders","hosts":[
            {"instanceId":"a","ip":"10.0.7.1","port":8080},
            {"instanceId":"b","ip":"10.0.7.2"},
            {"instanceId":"c","ip":"10.0.7.3","port":70000},
            {"instanceId":"d","ip":"10.0 .7.4","port":8080},
            {"instanceId":"e","ip":1234,"port":8080},
            {"port":8080},
            {"ip":"10.0.7.7","port":"http"},
            {"ip":"10.0.7.8","port":8080,"weight":-1},
            {"ip":"10.0.7.9","port":8080.5},
            {"ip":"10.0.7.10","port":8080,"healthy":"maybe"},
            "10.0.7.11:8080",
            {"instanceId":"z","ip":"10.0.7.12","port":8080}]}"#;
        let (snapshot, diagnostics) = load_text(text);
        let loaded: Vec<_> = snapshot.instances.iter().map(|it| it.address.as_str()).collect();
        assert_eq!(loaded, ["10.0.7.1", "10.0.7.12"]);
        assert_eq!(snapshot.services.len(), 1);
        let prefix = "malformed entry in registry `nacos-hz`: ";
        let expected: Vec<(String, String)> = [
            ("missing `port`", "host 2 (instanceId `b`)"),
            ("port 70000 is not a port: expected 1 to 65535", "host 3 (instanceId `c`)"),
            ("`10.0 .7.4` is not an IP address or host name", "host 4 (instanceId `d`)"),
            ("invalid type: integer `1234`, expected a string", "host 5"),
            ("missing `ip`", "host 6"),
            ("expected a number, found `http`", "host 7"),
            ("weight -1 is negative", "host 8"),
            ("port 8080.5 is not a port: expected 1 to 65535", "host 9"),
            ("expected a boolean, found \"maybe\"", "host 10"),
            ("invalid type: string \"10.0.7.11:8080\", expected a Nacos host (a JSON object)", "host 11"),
        ]
        .iter()
        .map(|(message, host)| (format!("{prefix}{message}"), format!("entry: Nacos service `DEFAULT_GROUP@@orders`, {host}")))
        .collect();
        assert_eq!(entry_errors(&diagnostics), expected);
        // Each diagnostic points at its own host.
        assert_eq!(spanned(text, diagnostics[0].labels[0].span), r#"{"instanceId":"b","ip":"10.0.7.2"}"#);
        assert_eq!(spanned(text, diagnostics[9].labels[0].span), r#""10.0.7.11:8080""#);
    }

    #[test]
    fn malformed_responses_are_skipped_and_the_rest_loads() {
        let text = r#"[
          42,
          {"name":"DEFAULT_GROUP@@a","hosts":"10.0.8.1:80"},
          {"name":["DEFAULT_GROUP@@b"],"hosts":[]},
          {"hosts":[]},
          {"name":"DEFAULT_GROUP@@providers:not an interface:1.0:","hosts":[{"ip":"10.0.8.2","port":20880}]},
          {"name":"DEFAULT_GROUP@@ok","hosts":[{"ip":"10.0.8.3","port":80}]}
        ]"#;
        let (snapshot, diagnostics) = load_text(text);
        let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(snapshot.instances.len(), 1);
        let prefix = "malformed entry in registry `nacos-hz`: ";
        let expected: Vec<(String, String)> = [
            ("invalid type: integer `42`, expected a Nacos instance list (a JSON object)", "Nacos response 1"),
            ("invalid type: string \"10.0.8.1:80\", expected a sequence", "Nacos response 2"),
            ("invalid type: sequence, expected a string", "Nacos response 3"),
            ("no service name: give `name` (or Nacos 1.x's `dom`, or the hosts' `serviceName`)", "Nacos response 4"),
            (
                "`providers:not an interface:1.0:` is not a Dubbo provider name: `not an interface` is not an interface name",
                "Nacos service `DEFAULT_GROUP@@providers:not an interface:1.0:`",
            ),
        ]
        .iter()
        .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: {entry}")))
        .collect();
        assert_eq!(entry_errors(&diagnostics), expected);
        assert_eq!(spanned(text, diagnostics[0].labels[0].span), "42");
    }

    #[test]
    fn nacos_2_envelopes_are_unwrapped() {
        let text = r#"[
          {"code":0,"message":"success","data":{"name":"DEFAULT_GROUP@@nacos.test.1","groupName":"DEFAULT_GROUP","clusters":"",
           "cacheMillis":10000,"hosts":[{"instanceId":"10.10.10.10#8888#DEFAULT#DEFAULT_GROUP@@nacos.test.1","ip":"10.10.10.10",
           "port":8888,"weight":1,"healthy":false,"enabled":true,"ephemeral":false,"clusterName":"DEFAULT",
           "serviceName":"DEFAULT_GROUP@@nacos.test.1","metadata":{}}],"lastRefTime":1700000001000,"checksum":"","allIPs":false,
           "reachProtectionThreshold":false,"valid":true}},
          {"code":20004,"message":"service not found: public@@DEFAULT_GROUP@@gone","data":null}
        ]"#;
        let (snapshot, diagnostics) = load_text(text);
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.services[0].name, "nacos-test-1");
        assert_eq!((snapshot.instances[0].address.as_str(), snapshot.instances[0].health), ("10.10.10.10", Health::Unhealthy));
        assert_eq!(snapshot.version.as_deref(), Some("1700000001000"));
        assert_eq!(
            entry_errors(&diagnostics),
            [(
                "malformed entry in registry `nacos-hz`: the response is Nacos error 20004: service not found: public@@DEFAULT_GROUP@@gone"
                    .to_owned(),
                "entry: Nacos response 2".to_owned()
            )]
        );
    }

    #[test]
    fn nacos_3_instance_arrays_are_grouped_by_service() {
        // `/nacos/v3/client/ns/instance/list`: `data` is the instances themselves. Nacos 3 may
        // write the group in `groupName` rather than in `serviceName`.
        let text = r#"{"code":0,"message":"success","data":[
          {"ip":"10.1.7.21","port":7070,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT",
           "serviceName":"DEFAULT_GROUP@@inventory","metadata":{"version":"1.4.0"},"ipDeleteTimeout":30000,
           "instanceIdGenerator":"simple","instanceHeartBeatInterval":5000,"instanceHeartBeatTimeOut":15000},
          {"ip":"10.1.8.3","port":9090,"serviceName":"pricing","groupName":"canary","healthy":false},
          {"ip":"10.1.9.4","port":7070,"weight":2.0,"healthy":true,"enabled":true,"clusterName":"hz-b",
           "serviceName":"DEFAULT_GROUP@@inventory","metadata":{"version":"1.4.1"}},
          {"ip":"10.1.9.5","port":7070,"healthy":true},
          "10.1.9.6:7070",
          {"ip":"10.1.8.4","port":"http","serviceName":"pricing","groupName":"canary"}
        ]}"#;
        let (snapshot, diagnostics) = load_text(text);
        let services: Vec<_> = snapshot.services.iter().map(|it| (it.name.as_str(), it.entry.as_str())).collect();
        assert_eq!(services, [("inventory", "Nacos service `DEFAULT_GROUP@@inventory`"), ("pricing", "Nacos service `canary@@pricing`")]);
        // A service without its own object is described where its first instance is.
        assert!(spanned(text, snapshot.services[0].span).starts_with(r#"{"ip":"10.1.7.21""#));
        assert!(spanned(text, snapshot.services[1].span).starts_with(r#"{"ip":"10.1.8.3""#));
        let instances: Vec<_> = snapshot
            .instances
            .iter()
            .map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight, it.health, it.locality.zone.as_deref()))
            .collect();
        assert_eq!(
            instances,
            [
                ("inventory", "10.1.7.21", 7070, 100, Health::Healthy, None),
                ("inventory", "10.1.9.4", 7070, 200, Health::Healthy, Some("hz-b")),
                ("pricing", "10.1.8.3", 9090, 100, Health::Unhealthy, None),
            ]
        );
        assert_eq!(snapshot.instances[1].labels, labels(&[("version", "1.4.1")]));
        assert_eq!(snapshot.instances[2].labels, labels(&[("nacos.io/group", "canary")]));
        // Hosts are counted in `data`, from 1.
        let prefix = "malformed entry in registry `nacos-hz`: ";
        assert_eq!(
            entry_errors(&diagnostics),
            [
                (format!("{prefix}expected a number, found `http`"), "entry: Nacos service `canary@@pricing`, host 6".to_owned()),
                (
                    format!("{prefix}the instance has no `serviceName`, so its service is unknown"),
                    "entry: Nacos response 1, host 4".to_owned()
                ),
                (
                    format!("{prefix}invalid type: string \"10.1.9.6:7070\", expected a Nacos host (a JSON object)"),
                    "entry: Nacos response 1, host 5".to_owned()
                ),
            ]
        );
        assert_eq!(spanned(text, diagnostics[1].labels[0].span), r#"{"ip":"10.1.9.5","port":7070,"healthy":true}"#);
        assert_eq!(spanned(text, diagnostics[2].labels[0].span), r#""10.1.9.6:7070""#);
    }

    #[test]
    fn envelope_data_of_another_shape_is_reported_at_data() {
        let text = r#"[
          {"code":0,"message":"success","data":"DEFAULT_GROUP@@orders"},
          {"code":200,"message":"ok","data":3},
          {"code":0,"message":"success","data":{"name":"DEFAULT_GROUP@@cart","hosts":{"ip":"10.0.9.1","port":80}}},
          {"code":0,"message":"success","data":[]}
        ]"#;
        let (snapshot, diagnostics) = load_text(text);
        assert!(snapshot.services.is_empty());
        let expected = |found: &str| {
            format!(
                "malformed entry in registry `nacos-hz`: `data` is {found}, not an instance list (a JSON object) or, as Nacos 3 \
                 answers, an array of instances"
            )
        };
        assert_eq!(
            entry_errors(&diagnostics),
            [
                (expected("a string"), "entry: Nacos response 1".to_owned()),
                (expected("a number"), "entry: Nacos response 2".to_owned()),
                (
                    "malformed entry in registry `nacos-hz`: `data`: invalid type: map, expected a sequence".to_owned(),
                    "entry: Nacos response 3".to_owned()
                ),
            ]
        );
        let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(text, it.labels[0].span)).collect();
        assert_eq!(spans[..2], [r#""DEFAULT_GROUP@@orders""#, "3"]);
        assert!(spans[2].starts_with(r#"{"name":"DEFAULT_GROUP@@cart""#));
    }

    #[test]
    fn truncated_json_is_a_file_error() {
        let text = &DUBBO[..DUBBO.len() - 40];
        let (snapshot, diagnostics) = load_text(text);
        assert!(snapshot.services.is_empty() && snapshot.instances.is_empty());
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].code, Code::RegistryFormat);
        assert!(
            diagnostics[0].message.starts_with("cannot read nacos snapshot of registry `nacos-hz`: invalid JSON: EOF while parsing"),
            "{}",
            diagnostics[0].message
        );
    }

    #[test]
    fn no_input_panics() {
        // Every prefix, and every byte replaced by characters that change the JSON's shape.
        let text = format!("[{DUBBO}, {{\"dom\":\"x\",\"hosts\":[{{\"ip\":\"::1\",\"port\":\"1\",\"metadata\":null}}]}}]");
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
