//! ZooKeeper dumps of SOFARPC and Dubbo 2 registrations: one znode path per line, as
//! `zkCli.sh ls -R /` prints them.
//!
//! ```text
//! /dubbo/com.ex.DemoService/providers/dubbo%3A%2F%2F10.0.1.15%3A20880%2Fcom.ex.DemoService%3Fversion%3D1.0.0
//! /sofa-rpc/com.ex.OrderFacade/providers/bolt%3A%2F%2F10.1.2.3%3A12200%3Fversion%3D1.0
//! ```
//!
//! How a dump maps to the model:
//! - Only `/<root>/<interface>/providers/<URL-encoded URL>` lines are instances. The root is
//!   `sofa-rpc` for SOFARPC; for Dubbo it is the registry's group (`dubbo` unless configured), so
//!   any root is read except ZooKeeper's own (`/zookeeper`), Dubbo 3's application-level
//!   `/services`, and SOFARPC's `/sofa-rpc`. Intermediate nodes, `consumers`, `routers`,
//!   `configurators`, `configs`, `overrides`, and Dubbo's `/dubbo/{config,metadata,mapping}/…`
//!   are not instances and are passed over.
//! - A provider node is decoded once; a node that already reads `scheme://…` is taken as it is.
//!   A line may carry the node's data after ` = `, which is ignored. Blank lines, `#` comments
//!   and the chatter `zkCli.sh` prints around its output (the prompt, `WATCHER::`, log lines)
//!   are skipped; any other line that is not a path is an error.
//! - Dubbo services are keyed `group/interface:version` (Dubbo 2.6's `default.` parameters
//!   stand in for missing ones, as Dubbo's `URL.getParameter` does), SOFARPC services
//!   `interface:version[:uniqueId]`. A provider over another protocol than the ecosystem's own
//!   (`rest://`, `tri://`) gets the key plus `@<scheme>`, so that one interface exported twice
//!   makes two services instead of one service whose ports speak two protocols.
//! - Each service is emitted once, with the span of its first provider line; the methods are the
//!   union of what its providers list, or unknown when one of them is generic (`methods=*`).
//! - A consumer URL found under `providers` is skipped with a warning.
//! - Instances are healthy (ZooKeeper keeps only live ephemeral nodes) unless `enabled=false`;
//!   `region` and `zone` parameters give the locality. Parameters become labels except those
//!   that change at every restart (`timestamp`, `pid`, `startTime`), Dubbo's `methods` and
//!   method-level settings (`sayHello.timeout`); `application`/`appName` is also given as `app`.
//! - A dump carries no version (ZooKeeper's `mzxid` is not printed by `ls`).

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir::{Health, Locality, Protocol};

use super::sofa_registry::{self as sofa, Identity, ServiceIndex};
use super::url::{ProviderUrl, parse_provider, percent_decode};
use super::{Ctx, DEFAULT_WEIGHT, Instance, Snapshot};
use crate::diag::{Code, Diagnostic};
use crate::source::Span;

/// Which ZooKeeper layout a dump follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `/sofa-rpc/<interface>/providers/<bolt://…>`.
    SofaRpc,
    /// `/dubbo/<interface>/providers/<dubbo://…>`.
    Dubbo,
}

/// What one provider line says, once read.
struct Provider {
    identity: Identity,
    address: String,
    port: u16,
    weight: u32,
    labels: BTreeMap<String, String>,
    locality: Locality,
    health: Health,
    methods: Methods,
}

/// The methods a Dubbo provider lists.
enum Methods {
    /// No `methods` parameter.
    Unlisted,
    /// A generic service (`methods=*`), which answers any method.
    Any,
    /// The listed methods.
    Listed(BTreeSet<String>),
}

/// Reads a ZooKeeper dump.
pub fn load(ctx: &mut Ctx<'_>, flavor: Flavor) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut services = ServiceIndex::default();
    let mut generic = BTreeSet::new();
    let text = ctx.text;
    let mut offset = 0;
    for (index, raw_line) in text.split_inclusive('\n').enumerate() {
        let line_number = index + 1;
        let line_start = offset;
        offset += raw_line.len();
        let is_blank = |c: char| c.is_whitespace() || c == '\u{feff}';
        let start_trimmed = raw_line.trim_start_matches(is_blank);
        let start = line_start + (raw_line.len() - start_trimmed.len());
        let line = start_trimmed.trim_end_matches(is_blank);
        if line.is_empty() || line.starts_with('#') || is_zkcli_chatter(line) {
            continue;
        }
        let span = ctx.span(start..start + line.len());
        // `path = data`, as a dump of node contents writes it; a path has no spaces.
        let path = line.split_once(" = ").map_or(line, |(path, _)| path.trim_end());
        let Some(path) = path.strip_prefix('/') else {
            ctx.bad_entry(
                span,
                &format!("line {line_number}"),
                "expected a znode path such as `/dubbo/<interface>/providers/<URL>`, one per line",
            );
            continue;
        };
        let Some((segment, node)) = provider_node(flavor, path) else {
            continue;
        };
        let Some(provider) = read_provider(ctx, flavor, line_number, span, segment, node) else {
            continue;
        };
        let index = services.get_or_insert(&mut snapshot.services, &provider.identity, ctx.mesh_namespace, span, || {
            format!("provider line {line_number} of {}", provider.identity.name)
        });
        match provider.methods {
            Methods::Unlisted => {}
            Methods::Any => {
                generic.insert(index);
            }
            Methods::Listed(methods) => snapshot.services[index].methods.get_or_insert_with(BTreeSet::new).extend(methods),
        }
        snapshot.instances.push(Instance {
            namespace: snapshot.services[index].namespace.clone(),
            service: provider.identity.name,
            address: provider.address,
            port: provider.port,
            service_port: None,
            weight: provider.weight,
            labels: provider.labels,
            locality: provider.locality,
            health: provider.health,
            span,
        });
    }
    // A generic provider answers any method, so a list from its siblings would reject calls it serves.
    for index in generic {
        snapshot.services[index].methods = None;
    }
    snapshot
}

/// The lines `zkCli.sh` prints around the paths: its prompt, watcher events and log lines.
fn is_zkcli_chatter(line: &str) -> bool {
    const PREFIXES: [&str; 7] = ["[zk:", "WATCHER::", "WatchedEvent ", "Connecting to ", "JLine support", "log4j:", "SLF4J:"];
    let log_line = line.starts_with(|c: char| c.is_ascii_digit())
        && [" INFO ", " WARN ", " ERROR ", " DEBUG ", " TRACE ", "[myid:"].iter().any(|level| line.contains(level));
    PREFIXES.iter().any(|prefix| line.starts_with(prefix)) || log_line
}

/// The interface segment and provider node of a `/<root>/<interface>/providers/<node>` path
/// (without its leading `/`), or `None` for every other node.
fn provider_node(flavor: Flavor, path: &str) -> Option<(&str, &str)> {
    // An already decoded node keeps its own `/`s, so it is everything after `providers/`.
    let mut parts = path.splitn(4, '/');
    let (root, segment, category, node) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let root_matches = match flavor {
        Flavor::SofaRpc => root == "sofa-rpc",
        Flavor::Dubbo => {
            !matches!(root, "" | "zookeeper" | "services" | "sofa-rpc") && !matches!(segment, "config" | "metadata" | "mapping")
        }
    };
    (root_matches && category == "providers" && !node.is_empty()).then_some((segment, node))
}

/// Reads one provider node, reporting what is wrong with it.
fn read_provider(ctx: &mut Ctx<'_>, flavor: Flavor, line_number: usize, span: Span, segment: &str, node: &str) -> Option<Provider> {
    let mut entry = format!("provider line {line_number} of {segment}");
    match parse_node(flavor, segment, node) {
        Ok(Some(provider)) => Some(provider),
        Ok(None) => {
            let diagnostic =
                Diagnostic::warning(Code::RegistryEntry, format!("consumer URL under `providers` in registry `{}`", ctx.registry.name))
                    .primary(span, "this entry was skipped")
                    .note(format!("entry: {entry}"))
                    .note("a consumer does not serve requests, so it is not an instance");
            ctx.diagnostics.push(diagnostic);
            None
        }
        Err((name, message)) => {
            // Once the service is known, name it rather than the znode.
            if let Some(name) = name {
                entry = format!("provider line {line_number} of {name}");
            }
            ctx.bad_entry(span, &entry, message);
            None
        }
    }
}

/// Decodes and reads a provider node: `None` for a consumer URL; on error, the service's name
/// if it was known by then.
fn parse_node(flavor: Flavor, segment: &str, node: &str) -> Result<Option<Provider>, (Option<String>, String)> {
    let segment = percent_decode(segment).map_err(|message| (None, format!("in the interface segment: {message}")))?;
    let decoded = if node.contains("://") { node.to_owned() } else { percent_decode(node).map_err(|message| (None, message))? };
    let url = parse_provider(&sofa::escape_fragment(&decoded)).map_err(|message| (None, message))?;
    let side = url.params.get("side").map(|it| it.trim());
    if url.scheme.as_deref() == Some("consumer") || side == Some("consumer") {
        return Ok(None);
    }
    let host = url.host.clone();
    let provider = match flavor {
        Flavor::Dubbo => dubbo_provider(&segment, url),
        Flavor::SofaRpc => sofa_provider(&segment, url),
    }
    .map_err(|message| (None, message))?;
    sofa::check_address(&host).map_err(|message| (Some(provider.identity.name.clone()), message))?;
    Ok(Some(provider))
}

/// A Dubbo provider: `dubbo://10.0.1.15:20880/com.ex.DemoService?group=gray&version=1.0.0&…`.
fn dubbo_provider(segment: &str, url: ProviderUrl) -> Result<Provider, String> {
    let params = dubbo_params(&url.params);
    let nonempty = |key: &str| params.get(key).map(|it| it.trim()).filter(|it| !it.is_empty());
    let interface = nonempty("interface").or(Some(url.path.as_str()).filter(|it| !it.is_empty())).unwrap_or(segment);
    if interface != segment {
        return Err(format!("the URL names interface `{interface}` but the znode is under `{segment}`"));
    }
    if !super::is_interface(interface) {
        return Err(format!("`{interface}` is not an interface name"));
    }
    let base = super::dubbo_key(interface, nonempty("version"), nonempty("group"));
    let scheme = url.scheme.as_deref().map_or_else(|| "dubbo".to_owned(), str::to_ascii_lowercase);
    let identity = sofa::identity(&base, Protocol::Dubbo, &scheme);
    let weight = nonempty("weight").map_or(Ok(DEFAULT_WEIGHT), sofa::parse_weight)?;
    let methods = match nonempty("methods") {
        None => Methods::Unlisted,
        // Dubbo writes `*` for a generic service, and for an interface without methods.
        Some(list) if list.split(',').any(|it| it.trim() == "*") => Methods::Any,
        Some(list) => Methods::Listed(list.split(',').map(str::trim).filter(|it| !it.is_empty()).map(str::to_owned).collect()),
    };
    let mut labels = BTreeMap::new();
    for (key, value) in &params {
        // `sayHello.timeout`: a method-level setting, not something to select instances by.
        let method_level =
            key.split_once('.').is_some_and(|(method, _)| matches!(&methods, Methods::Listed(list) if list.contains(method)));
        if key == "methods" || method_level || sofa::NOISY_PARAMS.contains(&key.as_str()) {
            continue;
        }
        labels.insert(key.clone(), value.clone());
    }
    if let Some(application) = params.get("application") {
        labels.entry("app".to_owned()).or_insert_with(|| application.clone());
    }
    Ok(Provider {
        identity,
        address: url.host,
        port: url.port,
        weight,
        locality: locality(&params),
        health: sofa::provider_health(&params),
        labels,
        methods,
    })
}

/// Dubbo's parameters with `default.<key>` standing in for a missing or empty `<key>`, as
/// Dubbo 2's `URL.getParameter` reads them.
fn dubbo_params(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut folded: BTreeMap<String, String> =
        params.iter().filter(|(key, _)| !key.starts_with("default.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, value) in params {
        if let Some(base) = key.strip_prefix("default.").filter(|it| !it.is_empty()) {
            let slot = folded.entry(base.to_owned()).or_default();
            if slot.is_empty() {
                slot.clone_from(value);
            }
        }
    }
    folded
}

/// A SOFARPC provider: `bolt://10.1.2.3:12200?version=1.0&uniqueId=blue&…`.
fn sofa_provider(segment: &str, url: ProviderUrl) -> Result<Provider, String> {
    let nonempty = |key: &str| url.params.get(key).map(|it| it.trim()).filter(|it| !it.is_empty());
    if let Some(interface) = nonempty("interface").filter(|it| *it != segment) {
        return Err(format!("the URL names interface `{interface}` but the znode is under `{segment}`"));
    }
    if !super::is_interface(segment) {
        return Err(format!("`{segment}` is not an interface name"));
    }
    let base = super::sofa_key(segment, nonempty("version"), nonempty("uniqueId"));
    let scheme = url.scheme.as_deref().map_or_else(|| "bolt".to_owned(), str::to_ascii_lowercase);
    let identity = sofa::identity(&base, Protocol::Bolt, &scheme);
    let weight = sofa::sofa_weight(&url.params)?;
    Ok(Provider {
        identity,
        address: url.host,
        port: url.port,
        weight,
        labels: sofa::sofa_labels(&url.params),
        locality: locality(&url.params),
        health: sofa::provider_health(&url.params),
        methods: Methods::Unlisted,
    })
}

fn locality(params: &BTreeMap<String, String>) -> Locality {
    let get = |key: &str| params.get(key).map(|it| it.trim()).filter(|it| !it.is_empty()).map(str::to_owned);
    Locality { region: get("region"), zone: get("zone"), subzone: None }
}

#[cfg(test)]
mod tests {
    use meshc_codegen::ir::RegistryKind;

    use super::*;
    use crate::diag::Severity;
    use crate::manifest::RegistryEntry;
    use crate::source::FileId;

    fn load_text(flavor: Flavor, text: &str) -> (Snapshot, Vec<Diagnostic>) {
        let nowhere = Span::new(FileId(0), 0..0);
        let kind = match flavor {
            Flavor::SofaRpc => RegistryKind::SofaRpcZookeeper,
            Flavor::Dubbo => RegistryKind::DubboZookeeper,
        };
        let registry = RegistryEntry {
            name: "zk".to_owned(),
            name_span: nowhere,
            kind,
            path: "registry/zk.txt".to_owned(),
            path_span: nowhere,
            priority: 0,
            namespace: None,
            span: nowhere,
        };
        let mut ctx =
            Ctx { file: FileId(1), text, registry: &registry, namespace: "default", mesh_namespace: "mesh", diagnostics: Vec::new() };
        let snapshot = load(&mut ctx, flavor);
        (snapshot, ctx.diagnostics)
    }

    fn names(snapshot: &Snapshot) -> Vec<&str> {
        snapshot.services.iter().map(|it| it.name.as_str()).collect()
    }

    fn endpoints(snapshot: &Snapshot) -> Vec<(&str, &str, u16, u32)> {
        snapshot.instances.iter().map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight)).collect()
    }

    fn entries(diagnostics: &[Diagnostic]) -> Vec<(Severity, Code, String)> {
        diagnostics.iter().map(|it| (it.severity, it.code, it.notes[0].trim_start_matches("entry: ").to_owned())).collect()
    }

    fn error(entry: &str) -> (Severity, Code, String) {
        (Severity::Error, Code::RegistryEntry, entry.to_owned())
    }

    /// Percent-encodes a URL as a znode name, the way Dubbo and SOFARPC do.
    fn encode(url: &str) -> String {
        percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    const DUBBO_URL: &str = "dubbo://10.0.1.15:20880/com.ex.DemoService?anyhost=true&application=demo-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&group=gray&interface=com.ex.DemoService&methods=sayHello,sayHelloAsync&pid=4242&release=2.7.15&revision=1.0.0&side=provider&timeout=3000&timestamp=1700000000000&version=1.0.0&weight=100";

    fn dubbo_dump() -> String {
        format!(
            "/dubbo\n/dubbo/com.ex.DemoService\n/dubbo/com.ex.DemoService/providers\n/dubbo/com.ex.DemoService/providers/{}\n/dubbo/com.ex.DemoService/consumers\n/dubbo/com.ex.DemoService/consumers/{}\n/dubbo/com.ex.DemoService/routers\n/dubbo/com.ex.DemoService/configurators\n",
            encode(DUBBO_URL),
            encode(
                "consumer://10.0.2.7/com.ex.DemoService?application=demo-consumer&category=consumers&check=false&side=consumer&version=1.0.0"
            ),
        )
    }

    #[test]
    fn the_dubbo_reference_example_loads() {
        let text = dubbo_dump();
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["gray/com.ex.DemoService:1.0.0"]);
        let service = &snapshot.services[0];
        assert_eq!((service.namespace.as_str(), service.protocol, service.ports.len()), ("mesh", Some(Protocol::Dubbo), 0));
        let rpc = service.rpc.as_ref().unwrap();
        assert_eq!(
            (rpc.interface.as_str(), rpc.version.as_deref(), rpc.group.as_deref()),
            ("com.ex.DemoService", Some("1.0.0"), Some("gray"))
        );
        let methods: Vec<&str> = service.methods.as_ref().unwrap().iter().map(String::as_str).collect();
        assert_eq!(methods, ["sayHello", "sayHelloAsync"]);
        assert_eq!(service.entry, "provider line 4 of gray/com.ex.DemoService:1.0.0");
        assert_eq!(endpoints(&snapshot), [("gray/com.ex.DemoService:1.0.0", "10.0.1.15", 20880, 100)]);
        let instance = &snapshot.instances[0];
        let line_start = text.find("/dubbo/com.ex.DemoService/providers/dubbo").unwrap();
        let line_end = line_start + text[line_start..].find('\n').unwrap();
        assert_eq!((instance.span, service.span), (Span::new(FileId(1), line_start..line_end), Span::new(FileId(1), line_start..line_end)));
        assert_eq!((instance.health, instance.service_port, instance.locality.clone()), (Health::Healthy, None, Locality::default()));
        let labels: Vec<&str> = instance.labels.keys().map(String::as_str).collect();
        assert_eq!(
            labels,
            [
                "anyhost",
                "app",
                "application",
                "deprecated",
                "dubbo",
                "dynamic",
                "generic",
                "group",
                "interface",
                "release",
                "revision",
                "side",
                "timeout",
                "version",
                "weight"
            ]
        );
        assert_eq!(instance.labels["app"], "demo-provider");
        assert!(snapshot.version.is_none());
    }

    #[test]
    fn dubbo_group_and_version_permutations_make_distinct_keys() {
        let urls = [
            "dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo",
            "dubbo://10.0.0.2:20880/com.ex.Demo?interface=com.ex.Demo&version=2.0",
            "dubbo://10.0.0.3:20880/com.ex.Demo?interface=com.ex.Demo&group=blue",
            "dubbo://10.0.0.4:20880/com.ex.Demo?interface=com.ex.Demo&group=blue&version=2.0",
            // Dubbo 2.6 writes the defaults with a `default.` prefix.
            "dubbo://10.0.0.5:20880/com.ex.Demo?interface=com.ex.Demo&default.group=blue&default.version=2.0&default.weight=30&default.timeout=500",
            "dubbo://10.0.0.6:20880/com.ex.Demo?interface=com.ex.Demo&group=&default.group=blue&version=2.0",
            // Neither the interface parameter nor a path: the znode names the interface.
            "dubbo://10.0.0.7:20880?version=2.0",
        ];
        let text: String = urls.iter().map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url))).collect();
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.Demo", "com.ex.Demo:2.0", "blue/com.ex.Demo", "blue/com.ex.Demo:2.0"]);
        assert_eq!(
            endpoints(&snapshot),
            [
                ("com.ex.Demo", "10.0.0.1", 20880, 100),
                ("com.ex.Demo:2.0", "10.0.0.2", 20880, 100),
                ("blue/com.ex.Demo", "10.0.0.3", 20880, 100),
                ("blue/com.ex.Demo:2.0", "10.0.0.4", 20880, 100),
                ("blue/com.ex.Demo:2.0", "10.0.0.5", 20880, 30),
                ("blue/com.ex.Demo:2.0", "10.0.0.6", 20880, 100),
                ("com.ex.Demo:2.0", "10.0.0.7", 20880, 100),
            ]
        );
        let labels = &snapshot.instances[4].labels;
        assert_eq!((labels["timeout"].as_str(), labels["group"].as_str(), labels.contains_key("default.timeout")), ("500", "blue", false));
        // A service's span is its first provider's line.
        assert_eq!(snapshot.services[1].span, snapshot.instances[1].span);
        assert_eq!(snapshot.services[1].entry, "provider line 2 of com.ex.Demo:2.0");
    }

    #[test]
    fn methods_are_the_union_of_the_providers() {
        let text = [
            "dubbo://10.0.0.1:20880/com.ex.Demo?methods=a,b&a.timeout=100&a.retries=0",
            "dubbo://10.0.0.2:20880/com.ex.Demo?methods=b,c",
            "dubbo://10.0.0.3:20880/com.ex.Demo",
        ]
        .map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url)))
        .concat();
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(snapshot.services.len(), 1);
        let methods: Vec<&str> = snapshot.services[0].methods.as_ref().unwrap().iter().map(String::as_str).collect();
        assert_eq!(methods, ["a", "b", "c"]);
        assert!(!snapshot.instances[0].labels.keys().any(|it| it.starts_with("a.") || it == "methods"));
        // A generic provider answers any method.
        let text = format!("{text}/dubbo/com.ex.Demo/providers/{}\n", encode("dubbo://10.0.0.4:20880/com.ex.Demo?generic=true&methods=*"));
        let (snapshot, _) = load_text(Flavor::Dubbo, &text);
        assert_eq!((snapshot.services.len(), snapshot.services[0].methods.is_none(), snapshot.instances.len()), (1, true, 4));
    }

    #[test]
    fn other_protocols_get_their_own_service() {
        let text = [
            "dubbo://10.0.0.1:20880/com.ex.Demo?version=1.0",
            "tri://10.0.0.1:50051/com.ex.Demo?version=1.0",
            "rest://10.0.0.1:8080/com.ex.Demo?version=1.0",
            "hessian://10.0.0.1:8081/com.ex.Demo?version=1.0",
        ]
        .map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url)))
        .concat();
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.Demo:1.0", "com.ex.Demo:1.0@tri", "com.ex.Demo:1.0@rest", "com.ex.Demo:1.0@hessian"]);
        let protocols: Vec<_> = snapshot.services.iter().map(|it| it.protocol).collect();
        assert_eq!(protocols, [Some(Protocol::Dubbo), Some(Protocol::Grpc), Some(Protocol::Http), None]);
        let rpc: Vec<bool> = snapshot.services.iter().map(|it| it.rpc.is_some()).collect();
        assert_eq!(rpc, [true, false, false, false]);
    }

    #[test]
    fn any_root_is_a_dubbo_group_and_governance_nodes_are_not_instances() {
        let url = encode("dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo");
        let text = format!(
            "/zookeeper\n/zookeeper/quota\n/prod/com.ex.Demo/providers/{url}\n\
             /dubbo/config/dubbo/com.ex.Demo.configurators\n/dubbo/metadata/com.ex.Demo/provider/demo\n\
             /dubbo/mapping/com.ex.Demo = \"demo-provider\"\n/services/demo-provider/10.0.0.1:20880\n\
             /dubbo/com.ex.Demo/configurators/{}\n/dubbo/com.ex.Demo/routers/{}\n/dubbo/com.ex.Demo/providers/\n\
             /sofa-rpc/com.ex.Order/providers/{}\n",
            encode("override://0.0.0.0/com.ex.Demo?disabled=true"),
            encode("route://0.0.0.0/com.ex.Demo?rule=x"),
            encode("bolt://10.1.2.3:12200"),
        );
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.Demo"]);
        assert_eq!(endpoints(&snapshot), [("com.ex.Demo", "10.0.0.1", 20880, 100)]);
    }

    #[test]
    fn crlf_whitespace_comments_decoded_nodes_and_ipv6_are_accepted() {
        let text = format!(
            "\u{feff}# dump of zk-a\r\n\r\n   /dubbo/com.ex.Demo/providers/{}  \r\n\t/dubbo/com.ex.Demo/providers/dubbo://10.0.0.2:20880/com.ex.Demo?weight=20&zone=az1&region=r1\r\n/dubbo/com.ex.Demo/providers/{} = 10.0.0.3\r\n",
            encode("dubbo://[fd00::1]:20880/com.ex.Demo?weight=10"),
            encode("dubbo://10.0.0.3:20880/com.ex.Demo?enabled=false"),
        );
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(
            endpoints(&snapshot),
            [("com.ex.Demo", "fd00::1", 20880, 10), ("com.ex.Demo", "10.0.0.2", 20880, 20), ("com.ex.Demo", "10.0.0.3", 20880, 100)]
        );
        // The span is the line without its indentation, trailing spaces and CRLF.
        let span = snapshot.instances[0].span;
        let line = &text[span.start as usize..span.end as usize];
        assert!(line.starts_with("/dubbo/") && line.ends_with("10"), "{line:?}");
        let second = &snapshot.instances[1];
        assert_eq!((second.locality.region.as_deref(), second.locality.zone.as_deref()), (Some("r1"), Some("az1")));
        assert_eq!(snapshot.instances[2].health, Health::Draining);
    }

    #[test]
    fn zkcli_chatter_is_skipped() {
        let text = format!(
            "Connecting to localhost:2181\n2024-01-01 10:00:00,000 [myid:] - INFO  [main:Environment@98] - Client environment:zookeeper.version=3.4.14\n\
             WATCHER::\n\nWatchedEvent state:SyncConnected type:None path:null\n[zk: localhost:2181(CONNECTED) 0] ls -R /dubbo\n/dubbo/com.ex.Demo/providers/{}\n",
            encode("dubbo://10.0.0.1:20880/com.ex.Demo")
        );
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(snapshot.instances.len(), 1);
    }

    #[test]
    fn the_sofa_reference_example_loads() {
        let text = "/sofa-rpc\n/sofa-rpc/com.ex.OrderFacade\n/sofa-rpc/com.ex.OrderFacade/providers\n\
            /sofa-rpc/com.ex.OrderFacade/providers/bolt%3A%2F%2F10.1.2.3%3A12200%3FappName%3Dorder%26language%3Djava%26rpcVer%3D50806%26dynamic%3Dtrue%26version%3D1.0%26weight%3D100%26timeout%3D3000%26pid%3D4242%26startTime%3D1700000000000\n\
            /sofa-rpc/com.ex.OrderFacade/consumers\n/sofa-rpc/com.ex.OrderFacade/configs\n/sofa-rpc/com.ex.OrderFacade/overrides\n/dubbo/com.ex.Demo/providers/dubbo%3A%2F%2F10.0.0.1%3A20880\n";
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.OrderFacade:1.0"]);
        let service = &snapshot.services[0];
        assert_eq!(
            (service.protocol, service.rpc.as_ref().unwrap().version.as_deref(), service.methods.is_none()),
            (Some(Protocol::Bolt), Some("1.0"), true)
        );
        assert_eq!(endpoints(&snapshot), [("com.ex.OrderFacade:1.0", "10.1.2.3", 12200, 100)]);
        let labels: Vec<(&str, &str)> = snapshot.instances[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [
                ("app", "order"),
                ("appName", "order"),
                ("dynamic", "true"),
                ("language", "java"),
                ("rpcVer", "50806"),
                ("timeout", "3000"),
                ("version", "1.0"),
                ("weight", "100")
            ]
        );
    }

    #[test]
    fn sofa_unique_ids_versions_and_protocols() {
        let text = [
            "bolt://10.1.2.3:12200?uniqueId=blue&_WEIGHT=40",
            "bolt://10.1.2.4:12200?version=2.0&uniqueId=blue",
            "rest://10.1.2.3:8341?version=2.0&uniqueId=blue",
            "h2c://10.1.2.3:12300",
        ]
        .map(|url| format!("/sofa-rpc/com.ex.OrderFacade/providers/{}\n", encode(url)))
        .concat();
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(
            names(&snapshot),
            [
                "com.ex.OrderFacade:1.0:blue",
                "com.ex.OrderFacade:2.0:blue",
                "com.ex.OrderFacade:2.0:blue@rest",
                "com.ex.OrderFacade:1.0@h2c"
            ]
        );
        assert_eq!(snapshot.instances[0].weight, 40);
        assert_eq!(snapshot.services[0].rpc.as_ref().unwrap().unique_id.as_deref(), Some("blue"));
        assert_eq!((snapshot.services[3].protocol, snapshot.services[3].rpc.is_none()), (Some(Protocol::Http2), true));
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let lines = [
            "garbage line".to_owned(),
            "/dubbo/com.ex.Demo/providers/dubbo%3A%2F%2F10.0.0.1%ZZ20880".to_owned(),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.2/com.ex.Demo")),
            "/dubbo/com.ex.Demo/providers/dubbo://bad host:20880/com.ex.Demo".to_owned(),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.3:20880/com.ex.Other?interface=com.ex.Other")),
            format!("/dubbo/not-an-interface/providers/{}", encode("dubbo://10.0.0.4:20880")),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.5:20880/com.ex.Demo?weight=-3")),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://0.0.0.0:20880/com.ex.Demo")),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("consumer://10.0.0.6:20880/com.ex.Demo?side=consumer")),
            "/dubbo/com.ex.%ZZ/providers/x".to_owned(),
            format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.9:20880/com.ex.Demo")),
        ];
        let text = lines.join("\r\n");
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert_eq!(
            entries(&diagnostics),
            [
                error("line 1"),
                error("provider line 2 of com.ex.Demo"),
                error("provider line 3 of com.ex.Demo"),
                error("provider line 4 of com.ex.Demo"),
                error("provider line 5 of com.ex.Demo"),
                error("provider line 6 of not-an-interface"),
                error("provider line 7 of com.ex.Demo"),
                error("provider line 8 of com.ex.Demo"),
                (Severity::Warning, Code::RegistryEntry, "provider line 9 of com.ex.Demo".to_owned()),
                error("provider line 10 of com.ex.%ZZ"),
            ]
        );
        let messages: Vec<&str> =
            diagnostics.iter().map(|it| it.message.trim_start_matches("malformed entry in registry `zk`: ")).collect();
        assert!(messages[1].starts_with("bad URL encoding `%ZZ`"), "{}", messages[1]);
        assert!(messages[2].ends_with("has no port"), "{}", messages[2]);
        assert_eq!(messages[4], "the URL names interface `com.ex.Other` but the znode is under `com.ex.Demo`");
        assert_eq!(messages[5], "`not-an-interface` is not an interface name");
        assert!(messages[6].starts_with("weight `-3` is not a whole number"), "{}", messages[6]);
        assert_eq!(messages[7], "`0.0.0.0` is a wildcard address, not the address of an instance");
        assert_eq!(messages[8], "consumer URL under `providers` in registry `zk`");
        assert!(messages[9].starts_with("in the interface segment: bad URL encoding"), "{}", messages[9]);
        for diagnostic in &diagnostics {
            assert!(!diagnostic.message.ends_with('.'), "{}", diagnostic.message);
            let span = diagnostic.labels[0].span;
            let line = &text[span.start as usize..span.end as usize];
            assert!(!line.contains('\n') && !line.ends_with('\r') && lines.contains(&line.to_owned()), "{line:?}");
        }
        assert_eq!(endpoints(&snapshot), [("com.ex.Demo", "10.0.0.9", 20880, 100)]);
        // The skipped providers leave no empty services behind.
        assert_eq!(names(&snapshot), ["com.ex.Demo"]);
    }

    #[test]
    fn empty_input_is_an_empty_snapshot() {
        for flavor in [Flavor::Dubbo, Flavor::SofaRpc] {
            let (snapshot, diagnostics) = load_text(flavor, "");
            assert!(snapshot.services.is_empty() && snapshot.instances.is_empty() && diagnostics.is_empty());
        }
    }

    #[test]
    fn sofa_services_merge_across_zookeeper_and_sofa_registry() {
        let nowhere = Span::new(FileId(0), 0..0);
        let entry = |name: &str, kind| RegistryEntry {
            name: name.to_owned(),
            name_span: nowhere,
            kind,
            path: format!("registry/{name}"),
            path_span: nowhere,
            priority: 0,
            namespace: None,
            span: nowhere,
        };
        let zk_registry = entry("zk", RegistryKind::SofaRpcZookeeper);
        let sofa_registry = entry("sofa", RegistryKind::SofaRegistry);
        let zk_text = format!("/sofa-rpc/com.ex.OrderFacade/providers/{}\n", encode("bolt://10.1.2.3:12200?version=1.0"));
        let sofa_text = r#"{"dataId":"com.ex.OrderFacade:1.0@DEFAULT","data":{"RZ01A":["10.1.2.3:12200","10.1.2.4:12200"]}}"#;
        let mut zk_ctx = Ctx {
            file: FileId(1),
            text: &zk_text,
            registry: &zk_registry,
            namespace: "default",
            mesh_namespace: "mesh",
            diagnostics: Vec::new(),
        };
        let zk = load(&mut zk_ctx, Flavor::SofaRpc);
        let mut sofa_ctx = Ctx {
            file: FileId(2),
            text: sofa_text,
            registry: &sofa_registry,
            namespace: "default",
            mesh_namespace: "mesh",
            diagnostics: Vec::new(),
        };
        let sofa = super::super::sofa_registry::load(&mut sofa_ctx);
        let mut diagnostics = Vec::new();
        let catalog = super::super::merge::merge(&[(&zk_registry, &zk), (&sofa_registry, &sofa)], &mut diagnostics);
        assert!(diagnostics.is_empty() && zk_ctx.diagnostics.is_empty() && sofa_ctx.diagnostics.is_empty(), "{diagnostics:#?}");
        let keys: Vec<&(String, String)> = catalog.services.keys().collect();
        assert_eq!(keys, [&("mesh".to_owned(), "com.ex.OrderFacade:1.0".to_owned())]);
        let service = catalog.services.values().next().unwrap();
        assert_eq!((service.ports.len(), service.ports[0].number, service.ports[0].protocol), (1, 12200, Some(Protocol::Bolt)));
        assert_eq!(service.registries, ["sofa", "zk"]);
        let instances: Vec<(&str, &str, &[String])> =
            service.instances.iter().map(|it| (it.address.as_str(), it.origin.as_str(), it.also_in.as_slice())).collect();
        assert_eq!(instances, [("10.1.2.3", "sofa", &["zk".to_owned()][..]), ("10.1.2.4", "sofa", &[][..])]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = load_text(Flavor::Dubbo, &text);
            let _ = load_text(Flavor::SofaRpc, &text);
        }

        #[test]
        fn arbitrary_provider_nodes_give_an_instance_or_one_diagnostic(node in "[0-9a-zA-Z.:/\\[\\]?&=#%*,_ -]{1,60}") {
            let text = format!("/dubbo/com.ex.Demo/providers/{node}");
            let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
            proptest::prop_assert!(snapshot.instances.len() + diagnostics.len() <= 1);
            let text = format!("/sofa-rpc/com.ex.Demo/providers/{node}");
            let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
            proptest::prop_assert!(snapshot.instances.len() + diagnostics.len() <= 1);
        }
    }
}
