//! SOFARegistry push snapshots: the `ReceivedData` objects a subscriber receives, one per service.
//!
//! ```json
//! {"dataInfoId":"com.ex.OrderFacade:1.0@DEFAULT#@#DEFAULT_INSTANCE_ID#@#SOFA",
//!  "dataId":"com.ex.OrderFacade:1.0@DEFAULT","group":"SOFA","version":1700000000123,
//!  "data":{"RZ01A":["10.1.0.5:12200?weight=100&appName=order&startTime=1700000000000"]}}
//! ```
//!
//! A file holds one push object or an array of them. How they map to the model:
//! - The service key is the `dataId` (from `dataInfoId` when `dataId` is absent),
//!   `interface:version[:uniqueId]@<protocol>`. `@DEFAULT` (or no `@`) is Bolt, and a Bolt
//!   service is named by its plain SOFA key (`com.ex.OrderFacade:1.0`), so that it merges with
//!   the same service in SOFARPC's ZooKeeper. Any other protocol keeps its suffix in the name
//!   (`com.ex.OrderFacade:1.0@rest`): SOFARPC publishes one interface over several protocols
//!   under separate dataIds, and one name with two protocols would send Bolt requests to REST
//!   ports. A provider's own scheme (`tr://…`) or legacy `p=13` moves it to that protocol's name.
//! - Every service lives in the mesh namespace; the `RpcKey` is filled for Bolt and Dubbo only,
//!   the protocols routed by interface.
//! - The zone keys of `data` give `Locality.zone`; a push's `segment` (its data center), or the
//!   segment of a multi-data-center push, gives `Locality.region`. Each zone maps to a list
//!   of providers (strings or `DataBox` objects); a zone mapped to anything else is reported
//!   as a malformed entry and skipped, while the push's other zones still load.
//! - Pushes list live providers, so instances are healthy, unless a provider says `enabled=false`.
//! - Parameters become labels except those that change at every restart (`startTime`, `pid`,
//!   `timestamp`) and method-level ones (`.m.timeout`, `[m]=[…]`); the legacy aliases SOFARPC
//!   writes beside the modern names (`_WEIGHT`, `_TIMEOUT`, `_SERIALIZETYPE`, `app_name`, …) are
//!   folded into the modern names, and `appName` is also given as `app`.
//! - `version` becomes the snapshot version: the largest numeric one across pushes, or the last
//!   one when none is numeric.
//! - Pushes of group `SOFA.CONFIG` carry configuration, not providers, and are left out.
//! - The multi-data-center form (`multiData`) is read from each segment's `unzipData`; a segment
//!   that holds only compressed `zipData` cannot be read and is reported.
//!
//! The provider helpers at the end are shared with the ZooKeeper adapter.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use meshc_codegen::ir::{Health, Locality, Protocol, RpcKey};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::url::{ProviderUrl, parse_provider};
use super::{Ctx, DEFAULT_WEIGHT, Instance, Service, Snapshot, loose};
use crate::source::Span;

/// The group SOFARPC subscribes configuration under, beside the `SOFA` group of provider lists.
const CONFIG_GROUP: &str = "SOFA.CONFIG";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPush {
    #[serde(default, deserialize_with = "loose::string")]
    data_info_id: Option<String>,
    #[serde(default, deserialize_with = "loose::string")]
    data_id: Option<String>,
    #[serde(default, deserialize_with = "loose::string")]
    group: Option<String>,
    #[serde(default, deserialize_with = "loose::string")]
    segment: Option<String>,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    data: Option<Ordered<Value>>,
    #[serde(default)]
    multi_data: Option<Ordered<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSegment {
    #[serde(default)]
    zip_data: Option<Value>,
    #[serde(default)]
    unzip_data: Option<Ordered<Value>>,
    #[serde(default, deserialize_with = "loose::string")]
    encoding: Option<String>,
    #[serde(default)]
    version: Option<Value>,
}

/// A JSON object's entries in file order, so that instances keep the order of the snapshot.
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        de.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// One push object, as far as its providers need it.
struct Push {
    span: Span,
    data_id: String,
    base: (String, RpcKey),
    /// The protocol the dataId names (`bolt` for `@DEFAULT`), lower-case.
    protocol: String,
}

/// Reads a SOFARegistry snapshot.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let Some(elements) = super::json_elements(ctx) else {
        return snapshot;
    };
    let mut services = ServiceIndex::default();
    let mut version = VersionPick::default();
    for (index, (range, raw)) in elements.into_iter().enumerate() {
        let what = format!("push object {}", index + 1);
        let Some(raw_push) = super::json_entry::<RawPush>(ctx, range.clone(), raw, &what) else {
            continue;
        };
        let span = ctx.span(range);
        version.note(raw_push.version.as_ref());
        let Some(data_id) = data_id_of(&raw_push) else {
            ctx.bad_entry(span, &what, "missing `dataId` and `dataInfoId`: the push names no service");
            continue;
        };
        if raw_push.group.as_deref().map(str::trim) == Some(CONFIG_GROUP) {
            continue;
        }
        let (base, protocol) = match parse_data_id(&data_id) {
            Ok(parsed) => parsed,
            Err(message) => {
                ctx.bad_entry(span, &format!("{what} ({data_id})"), message);
                continue;
            }
        };
        let push = Push { span, data_id, base, protocol };
        // The dataId's own service exists even when no provider is live.
        let identity = identity(&push.base, Protocol::Bolt, &push.protocol);
        services.get_or_insert(&mut snapshot.services, &identity, ctx.mesh_namespace, span, || format!("push of {}", push.data_id));

        if let Some(zones) = raw_push.data {
            let region = raw_push.segment.as_deref().filter(|it| !it.trim().is_empty());
            read_zones(ctx, &mut snapshot, &mut services, &push, region, zones.0);
        }
        for (segment_name, value) in raw_push.multi_data.map(|it| it.0).unwrap_or_default() {
            let entry = format!("{} segment `{segment_name}`", push.data_id);
            let segment = match RawSegment::deserialize(value) {
                Ok(segment) => segment,
                Err(err) => {
                    ctx.bad_entry(span, &entry, err);
                    continue;
                }
            };
            version.note(segment.version.as_ref());
            let zones = segment.unzip_data.map(|it| it.0).unwrap_or_default();
            if zones.is_empty() && segment.zip_data.as_ref().is_some_and(holds_data) {
                let encoding = segment.encoding.as_deref().unwrap_or("unknown");
                ctx.bad_entry(
                    span,
                    &entry,
                    format!("its providers are compressed `zipData` (encoding `{encoding}`), which meshc cannot read: snapshot the push with `unzipData`"),
                );
                continue;
            }
            let region = Some(segment_name.as_str()).filter(|it| !it.trim().is_empty());
            read_zones(ctx, &mut snapshot, &mut services, &push, region, zones);
        }
    }
    snapshot.version = version.finish();
    snapshot
}

/// The dataId, or the first part of `dataInfoId` (`dataId#@#instanceId#@#group`).
fn data_id_of(push: &RawPush) -> Option<String> {
    let from_info = || push.data_info_id.as_deref().and_then(|it| it.split("#@#").next());
    push.data_id
        .as_deref()
        .map(str::trim)
        .filter(|it| !it.is_empty())
        .or_else(|| from_info().map(str::trim).filter(|it| !it.is_empty()))
        .map(str::to_owned)
}

/// Splits `interface:version[:uniqueId]@<protocol>` into the SOFA key and the protocol name.
fn parse_data_id(data_id: &str) -> Result<((String, RpcKey), String), String> {
    let (key, protocol) = match data_id.rsplit_once('@') {
        Some((key, protocol)) => (key, protocol.trim()),
        None => (data_id, "DEFAULT"),
    };
    let protocol = if protocol.eq_ignore_ascii_case("DEFAULT") { "bolt".to_owned() } else { protocol.to_ascii_lowercase() };
    if protocol.is_empty() || !protocol.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
        return Err(format!(
            "dataId `{data_id}` names no protocol after `@`: expected `interface:version[:uniqueId]@DEFAULT` or `@<protocol>`"
        ));
    }
    let base = super::parse_rpc_key(Protocol::Bolt, key.trim())
        .ok_or_else(|| format!("dataId `{data_id}` is not a SOFA service key: expected `interface:version[:uniqueId]@<protocol>`"))?;
    Ok((base, protocol))
}

fn holds_data(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => true,
    }
}

/// Adds the providers of a zone map (`data` or a segment's `unzipData`).
fn read_zones(
    ctx: &mut Ctx<'_>,
    snapshot: &mut Snapshot,
    services: &mut ServiceIndex,
    push: &Push,
    region: Option<&str>,
    zones: Vec<(String, Value)>,
) {
    for (zone, list) in zones {
        let items = match list {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            // SOFARegistry's `ReceivedData` maps every zone to a list, even of one provider, so a
            // bare string or DataBox means the push was mangled on its way into the snapshot; taking
            // it as a one-provider list would hide that the rest of the zone may be missing.
            other => {
                let found = match &other {
                    Value::String(_) => "a single string".to_owned(),
                    Value::Object(_) => "a single object".to_owned(),
                    other => format!("`{other}`"),
                };
                ctx.bad_entry(
                    push.span,
                    &format!("{} zone {zone}", push.data_id),
                    format!(
                        "zone `{zone}` of `{}` holds {found}, not a list of providers: SOFARegistry pushes every zone as a list",
                        push.data_id
                    ),
                );
                continue;
            }
        };
        for item in items {
            let text = match &item {
                Value::String(text) => text.as_str(),
                // A DataBox, as SOFARegistry's Java model serialises it.
                Value::Object(fields) => match fields.get("data") {
                    Some(Value::String(text)) => text.as_str(),
                    _ => {
                        ctx.bad_entry(
                            push.span,
                            &format!("{} provider {item} in zone {zone}", push.data_id),
                            "a DataBox needs a `data` string",
                        );
                        continue;
                    }
                },
                other => {
                    ctx.bad_entry(
                        push.span,
                        &format!("{} provider {other} in zone {zone}", push.data_id),
                        "expected a provider string such as `10.1.0.5:12200?weight=100`",
                    );
                    continue;
                }
            };
            let entry = format!("{} provider `{text}` in zone {zone}", push.data_id);
            let url = match parse_provider(&escape_fragment(text)) {
                Ok(url) => url,
                Err(message) => {
                    ctx.bad_entry(push.span, &entry, message);
                    continue;
                }
            };
            if let Err(message) = check_address(&url.host) {
                ctx.bad_entry(push.span, &entry, message);
                continue;
            }
            let weight = match sofa_weight(&url.params) {
                Ok(weight) => weight,
                Err(message) => {
                    ctx.bad_entry(push.span, &entry, message);
                    continue;
                }
            };
            let protocol = provider_protocol(&url, &push.protocol);
            let identity = identity(&push.base, Protocol::Bolt, &protocol);
            let index = services
                .get_or_insert(&mut snapshot.services, &identity, ctx.mesh_namespace, push.span, || format!("push of {}", push.data_id));
            let service = &snapshot.services[index];
            let zone_name = Some(zone.trim()).filter(|it| !it.is_empty()).map(str::to_owned);
            snapshot.instances.push(Instance {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                address: url.host.clone(),
                port: url.port,
                service_port: None,
                weight,
                labels: sofa_labels(&url.params),
                locality: Locality { region: region.map(|it| it.trim().to_owned()), zone: zone_name, subzone: None },
                health: provider_health(&url.params),
                span: push.span,
            });
        }
    }
}

/// The protocol a SOFA provider speaks: its scheme, else its legacy `p` code on a `@DEFAULT`
/// dataId (which Bolt and TR share), else the dataId's.
fn provider_protocol(url: &ProviderUrl, data_id_protocol: &str) -> String {
    if let Some(scheme) = &url.scheme {
        return scheme.to_ascii_lowercase();
    }
    match url.params.get("p").map(|it| it.trim()) {
        Some("13") if data_id_protocol == "bolt" => "tr".to_owned(),
        _ => data_id_protocol.to_owned(),
    }
}

/// The snapshot version: the largest numeric version, or the last one when none is numeric.
#[derive(Default)]
struct VersionPick {
    numeric: Option<u64>,
    text: Option<String>,
}

impl VersionPick {
    fn note(&mut self, value: Option<&Value>) {
        let text = match value {
            None | Some(Value::Null) => return,
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(Value::Number(n)) => n.as_u64().map_or_else(|| n.to_string(), |it| it.to_string()),
            Some(other) => other.to_string(),
        };
        match text.parse::<u64>() {
            Ok(n) => self.numeric = Some(self.numeric.map_or(n, |it| it.max(n))),
            Err(_) if !text.is_empty() => self.text = Some(text),
            Err(_) => {}
        }
    }

    fn finish(self) -> Option<String> {
        self.numeric.map(|it| it.to_string()).or(self.text)
    }
}

// Provider helpers shared with the ZooKeeper adapter.

/// A service's name, RPC identity and protocol.
pub(super) struct Identity {
    pub(super) name: String,
    pub(super) rpc: Option<RpcKey>,
    pub(super) protocol: Option<Protocol>,
}

/// The identity of a service published over `protocol` (a name as registries write it): the
/// plain key for the ecosystem's own protocol (`native`), the key and `@protocol` otherwise, so
/// that one interface exported over two protocols makes two services.
pub(super) fn identity(base: &(String, RpcKey), native: Protocol, protocol: &str) -> Identity {
    let parsed = super::protocol_from_name(protocol);
    let rpc = parsed.filter(|it| it.is_rpc()).map(|_| base.1.clone());
    let name = if parsed == Some(native) { base.0.clone() } else { format!("{}@{protocol}", base.0) };
    Identity { name, rpc, protocol: parsed }
}

/// Each service of a snapshot once, in order of first appearance.
#[derive(Default)]
pub(super) struct ServiceIndex {
    by_name: BTreeMap<String, usize>,
}

impl ServiceIndex {
    /// The index of the service in `services`, added (with `span` and `entry`) if it is new.
    pub(super) fn get_or_insert(
        &mut self,
        services: &mut Vec<Service>,
        identity: &Identity,
        namespace: &str,
        span: Span,
        entry: impl FnOnce() -> String,
    ) -> usize {
        if let Some(&index) = self.by_name.get(&identity.name) {
            return index;
        }
        services.push(Service {
            namespace: namespace.to_owned(),
            name: identity.name.clone(),
            rpc: identity.rpc.clone(),
            protocol: identity.protocol,
            ports: Vec::new(),
            methods: None,
            span,
            entry: entry(),
        });
        self.by_name.insert(identity.name.clone(), services.len() - 1);
        services.len() - 1
    }
}

/// Escapes `#`, which SOFA and Dubbo use inside parameters (`[m]=[_TIMEOUT#3000]`) but a URL
/// parser would take for the start of a fragment, dropping every parameter after it.
pub(super) fn escape_fragment(text: &str) -> Cow<'_, str> {
    if text.contains('#') { Cow::Owned(text.replace('#', "%23")) } else { Cow::Borrowed(text) }
}

/// Checks that a provider's host can be an instance address.
pub(super) fn check_address(host: &str) -> Result<(), String> {
    if !super::is_address(host) {
        return Err(format!("`{host}` is not an IP address or host name"));
    }
    // A provider that registers its wildcard bind address cannot be reached there.
    if host.parse::<std::net::IpAddr>().is_ok_and(|it| it.is_unspecified()) {
        return Err(format!("`{host}` is a wildcard address, not the address of an instance"));
    }
    Ok(())
}

/// Parses a weight parameter: a whole number, possibly written as `100.0`.
pub(super) fn parse_weight(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    if let Ok(weight) = trimmed.parse::<u32>() {
        return Ok(weight);
    }
    match trimmed.parse::<f64>() {
        Ok(value) if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) => Ok(value as u32),
        _ => Err(format!("weight `{text}` is not a whole number from 0 to {}", u32::MAX)),
    }
}

/// A SOFA provider's weight: `weight`, else the legacy `_WEIGHT`, else the default.
pub(super) fn sofa_weight(params: &BTreeMap<String, String>) -> Result<u32, String> {
    match ["weight", "_WEIGHT"].iter().find_map(|key| params.get(*key).filter(|it| !it.trim().is_empty())) {
        Some(text) => parse_weight(text),
        None => Ok(DEFAULT_WEIGHT),
    }
}

/// Health from a provider's parameters: a provider switched off with `enabled=false` stays
/// registered but takes no new requests.
pub(super) fn provider_health(params: &BTreeMap<String, String>) -> Health {
    if params.get("enabled").is_some_and(|it| it.trim().eq_ignore_ascii_case("false")) { Health::Draining } else { Health::Healthy }
}

/// Parameters that change at every restart: as labels they would churn the output and select nothing useful.
pub(super) const NOISY_PARAMS: [&str; 3] = ["startTime", "pid", "timestamp"];

/// SOFARPC's legacy parameter names and the modern names they stand for, in the order SOFARPC
/// reads them (SofaRegistryHelper.parseProviderInfo).
const LEGACY_PARAMS: [(&str, &str); 8] = [
    ("_WEIGHT", "weight"),
    ("_TIMEOUT", "timeout"),
    ("_SERIALIZETYPE", "serialization"),
    ("app_name", "appName"),
    ("self_app_name", "appName"),
    ("_CONNECTIONNUM", "connections"),
    ("_WARMUPTIME", "warmupTime"),
    ("_WARMUPWEIGHT", "warmupWeight"),
];

/// The labels of a SOFA provider (see the module documentation).
pub(super) fn sofa_labels(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (key, value) in params {
        let method_level = key.starts_with('.') || key.starts_with('[');
        if method_level || NOISY_PARAMS.contains(&key.as_str()) || LEGACY_PARAMS.iter().any(|(old, _)| old == key) {
            continue;
        }
        labels.insert(key.clone(), value.clone());
    }
    // The modern name wins when both are written, as in SOFARPC.
    for (old, new) in LEGACY_PARAMS {
        if let Some(value) = params.get(old) {
            labels.entry(new.to_owned()).or_insert_with(|| value.clone());
        }
    }
    if let Some(serialization) = labels.get_mut("serialization") {
        // Old clients write the serializer's numeric code.
        let name = match serialization.trim() {
            "1" => Some("hessian"),
            "2" => Some("java"),
            "4" => Some("hessian2"),
            "11" => Some("protobuf"),
            _ => None,
        };
        if let Some(name) = name {
            *serialization = name.to_owned();
        }
    }
    if let Some(app) = labels.get("appName").cloned() {
        labels.entry("app".to_owned()).or_insert(app);
    }
    labels
}

#[cfg(test)]
mod tests;
