//! ZooKeeper dumps of SOFARPC and Dubbo 2 registrations: one znode path per line, as
//! `zkCli.sh ls -R /` prints them, or child lists as ZooKeeper 3.4's interactive `ls` prints them.
//!
//! ```text
//! /dubbo/com.ex.DemoService/providers/dubbo%3A%2F%2F10.0.1.15%3A20880%2Fcom.ex.DemoService%3Fversion%3D1.0.0
//! /sofa-rpc/com.ex.OrderFacade/providers/bolt%3A%2F%2F10.1.2.3%3A12200%3Fversion%3D1.0
//! [zk: localhost:2181(CONNECTED) 2] ls /payments/sofa-rpc/com.ex.OrderFacade/providers
//! [bolt%3A%2F%2F10.1.2.4%3A12200%3Fversion%3D1.0, bolt%3A%2F%2F10.1.2.5%3A12200%3Fversion%3D1.0]
//! ```
//!
//! How a dump maps to the model:
//! - Only the children of a `/<root>/<interface>/providers` node are instances. For SOFARPC the
//!   root is `sofa-rpc`, under the registry address's chroot (`rootPath`) if it has one. For
//!   Dubbo it is the registry's group (`dubbo` unless configured, empty for group `/`), perhaps
//!   under a chroot, so any root is read except SOFARPC's `sofa-rpc`. Intermediate nodes,
//!   `consumers`, `routers`, `configurators`, `configs`, `overrides`, Dubbo 3's `/services`,
//!   Dubbo's `/dubbo/{config,metadata,mapping}/…` and ZooKeeper's `/zookeeper` are not
//!   instances and are passed over.
//! - Provider nodes in the other ecosystem's layout (Dubbo's in a SOFARPC dump, `sofa-rpc`'s in a
//!   Dubbo dump) are skipped with one warning for the file; a node under `providers` that fits
//!   neither layout is an error.
//! - A provider node is decoded once; a node that already reads `scheme://…` is taken as it is.
//!   A line may carry the node's data after ` = `, which is ignored. Blank lines, `#` comments
//!   and the chatter `zkCli.sh` prints around its output (the prompt, banners, `WATCHER::`,
//!   log lines, the statistics of `ls -s`) are skipped; any other line that is not a path is an
//!   error.
//! - A bracketed list `[a, b]` names the children of the path of the `ls <path>` command before
//!   it, typed at the prompt or on a line of its own; a list with no such command is an error.
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
    let mut reader = Reader::new(flavor);
    // The path of the last plain `ls <path>` command: ZooKeeper 3.4's `ls` prints only the child
    // names, as `[a, b]` on the next line, so the command is what says whose children they are.
    let mut listed: Option<String> = None;
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
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(command) = zkcli_command(line) {
            // Any other command's output is not a child list of the earlier `ls`.
            listed = listed_path(command).map(str::to_owned);
            continue;
        }
        if is_zkcli_chatter(line) {
            continue;
        }
        let span = ctx.span(start..start + line.len());
        if let Some(list) = line.strip_prefix('[').and_then(|it| it.strip_suffix(']')) {
            let Some(parent) = listed.take() else {
                ctx.bad_entry(
                    span,
                    &format!("line {line_number}"),
                    "a bracketed child list with no `ls <path>` command before it: the parent of these nodes is unknown",
                );
                continue;
            };
            // The list starts one byte into the line, after `[`.
            for (child_offset, child) in children(list) {
                let child_start = start + 1 + child_offset;
                let child_span = ctx.span(child_start..child_start + child.len());
                let path = format!("{}/{child}", parent.trim_end_matches('/'));
                reader.read_path(ctx, line_number, child_span, &path[1..]);
            }
            continue;
        }
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
        reader.read_path(ctx, line_number, span, path);
    }
    reader.finish(ctx)
}

/// What a dump has given so far.
struct Reader {
    flavor: Flavor,
    snapshot: Snapshot,
    services: ServiceIndex,
    /// Services with a generic provider.
    generic: BTreeSet<usize>,
    /// The line numbers and spans of provider nodes in the other ecosystem's layout.
    foreign: Vec<(usize, Span)>,
}

impl Reader {
    fn new(flavor: Flavor) -> Reader {
        Reader { flavor, snapshot: Snapshot::default(), services: ServiceIndex::default(), generic: BTreeSet::new(), foreign: Vec::new() }
    }

    /// Reads one znode path (without its leading `/`), adding the instance it registers.
    fn read_path(&mut self, ctx: &mut Ctx<'_>, line_number: usize, span: Span, path: &str) {
        let (segment, node) = match layout(self.flavor, path) {
            Layout::NotProvider => return,
            Layout::Provider { segment, node } => (segment, node),
            Layout::Foreign => {
                self.foreign.push((line_number, span));
                return;
            }
            Layout::Malformed(message) => {
                ctx.bad_entry(span, &format!("line {line_number}"), message);
                return;
            }
        };
        let Some(provider) = read_provider(ctx, self.flavor, line_number, span, segment, node) else {
            return;
        };
        let snapshot = &mut self.snapshot;
        let index = self.services.get_or_insert(&mut snapshot.services, &provider.identity, ctx.mesh_namespace, span, || {
            format!("provider line {line_number} of {}", provider.identity.name)
        });
        match provider.methods {
            Methods::Unlisted => {}
            Methods::Any => {
                self.generic.insert(index);
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

    fn finish(mut self, ctx: &mut Ctx<'_>) -> Snapshot {
        // A generic provider answers any method, so a list from its siblings would reject calls it serves.
        for index in self.generic {
            self.snapshot.services[index].methods = None;
        }
        if let Some(diagnostic) = foreign_warning(self.flavor, &ctx.registry.name, &self.foreign) {
            ctx.diagnostics.push(diagnostic);
        }
        self.snapshot
    }
}

/// One warning for all the provider nodes of the other ecosystem: a dump of a shared ZooKeeper
/// (`ls -R /`) can hold thousands of them, and one line each would bury the real errors.
fn foreign_warning(flavor: Flavor, registry: &str, foreign: &[(usize, Span)]) -> Option<Diagnostic> {
    let &(_, first) = foreign.first()?;
    let mut lines: Vec<usize> = foreign.iter().map(|(line, _)| *line).collect();
    // The children of one bracketed list share a line.
    lines.dedup();
    const SHOWN: usize = 8;
    let mut listed = lines.iter().take(SHOWN).map(usize::to_string).collect::<Vec<_>>().join(", ");
    if lines.len() > SHOWN {
        listed.push_str(&format!(" and {} more", lines.len() - SHOWN));
    }
    let entry = if lines.len() == 1 { format!("entry: line {listed}") } else { format!("entries: lines {listed}") };
    let count = if foreign.len() == 1 { "1 provider node".to_owned() } else { format!("{} provider nodes", foreign.len()) };
    let diagnostic = match flavor {
        Flavor::SofaRpc => Diagnostic::warning(Code::RegistryEntry, format!("{count} outside a `sofa-rpc` node in registry `{registry}`"))
            .primary(first, "not a SOFARPC registration, skipped")
            .note(entry)
            .note("SOFARPC registers its providers as `[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`")
            .help("read Dubbo's `/<group>/<interface>/providers/<URL>` nodes with a registry of kind `dubbo-zookeeper`"),
        Flavor::Dubbo => Diagnostic::warning(Code::RegistryEntry, format!("{count} under `sofa-rpc` in Dubbo registry `{registry}`"))
            .primary(first, "a SOFARPC registration, skipped")
            .note(entry)
            .note("`sofa-rpc/<interface>/providers` is the layout of SOFARPC's ZooKeeper registry, not Dubbo's")
            .help("read these nodes with a registry of kind `sofa-rpc-zookeeper`"),
    };
    Some(diagnostic)
}

/// The command typed at a zkCli prompt (`[zk: localhost:2181(CONNECTED) 3] ls /dubbo`, empty
/// when nothing was typed), or a bare `ls` command line, as a pasted session or script shows it.
fn zkcli_command(line: &str) -> Option<&str> {
    if let Some(prompt) = line.strip_prefix("[zk:") {
        // The connect string can hold `]` (`[::1]:2181`), so the prompt ends at the `]` after the
        // state and the command number: `(CONNECTED) 3]`.
        let after_state = prompt.split_once(") ").map_or("", |(_, rest)| rest);
        return Some(after_state.split_once(']').map_or("", |(_, command)| command.trim()));
    }
    matches!(line.split_whitespace().next(), Some("ls" | "ls2")).then_some(line)
}

/// The path whose child names a command prints as one bracketed list: `ls [-s] [-w] <path>`,
/// ZooKeeper 3.4's `ls <path> [watch]` and `ls2 <path>`. `ls -R` prints full paths instead.
fn listed_path(command: &str) -> Option<&str> {
    let mut words = command.split_whitespace();
    if !matches!(words.next(), Some("ls" | "ls2")) {
        return None;
    }
    let mut path = None;
    for word in words {
        if word.starts_with('-') && word.contains('R') {
            return None;
        }
        if path.is_none() && word.starts_with('/') {
            path = Some(word);
        }
    }
    path
}

/// The children of a bracketed list (`a, b` without the brackets), with their byte offsets in it.
/// Java's `List.toString` joins them with `, `; a URL-encoded node has neither `,` nor a space.
fn children(list: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    list.split(", ")
        .map(move |child| {
            let at = offset;
            offset += child.len() + 2;
            (at, child)
        })
        .filter(|(_, child)| !child.trim().is_empty())
}

/// The lines `zkCli.sh` prints around the paths: its banners, watcher events, log lines, and the
/// node statistics `ls -s` and `ls2` print after a child list.
fn is_zkcli_chatter(line: &str) -> bool {
    const PREFIXES: [&str; 8] =
        ["Welcome to ZooKeeper!", "Quitting...", "WATCHER::", "WatchedEvent ", "Connecting to ", "JLine support", "log4j:", "SLF4J:"];
    const STAT_FIELDS: [&str; 11] = [
        "cZxid",
        "ctime",
        "mZxid",
        "mtime",
        "pZxid",
        "cversion",
        "dataVersion",
        "aclVersion",
        "ephemeralOwner",
        "dataLength",
        "numChildren",
    ];
    let log_line = line.starts_with(|c: char| c.is_ascii_digit())
        && [" INFO ", " WARN ", " ERROR ", " DEBUG ", " TRACE ", "[myid:"].iter().any(|level| line.contains(level));
    let stat_line = line.split_once(" = ").is_some_and(|(field, _)| STAT_FIELDS.contains(&field));
    PREFIXES.iter().any(|prefix| line.starts_with(prefix)) || log_line || stat_line
}

/// Where a znode path sits in the registry's layout.
#[derive(Debug, PartialEq, Eq)]
enum Layout<'a> {
    /// Any node that is not a provider: roots, interfaces, `providers` itself, other categories,
    /// governance and metadata trees.
    NotProvider,
    /// A provider node: the interface segment and the node under `providers`.
    Provider { segment: &'a str, node: &'a str },
    /// A provider node in the other ecosystem's layout.
    Foreign,
    /// A node under `providers` that fits no layout.
    Malformed(String),
}

/// Reads a znode path (without its leading `/`). A provider node is whatever follows the first
/// `providers` segment: one URL-encoded segment, or a decoded URL with `/`s of its own. The
/// segment above `providers` is the interface, and what is above the interface is the root:
/// `[<rootPath>/]sofa-rpc` for SOFARPC (its registry address may carry a chroot); for Dubbo the
/// registry group, which may hold `/`s or be empty (group `/`) and may sit under a chroot, so
/// any root is Dubbo's except SOFARPC's `sofa-rpc`.
fn layout(flavor: Flavor, path: &str) -> Layout<'_> {
    let mut ancestors: Vec<&str> = Vec::new();
    let mut rest = path;
    let node = loop {
        let Some((segment, after)) = rest.split_once('/') else {
            return Layout::NotProvider;
        };
        // A decoded URL (`scheme://…`) under another category: its own `/`s are not the tree's.
        if segment.ends_with(':') && after.starts_with('/') {
            return Layout::NotProvider;
        }
        if segment == "providers" {
            break after;
        }
        ancestors.push(segment);
        rest = after;
    };
    // `…/providers/` names the category node itself.
    if node.is_empty() {
        return Layout::NotProvider;
    }
    let example = match flavor {
        Flavor::SofaRpc => "`[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`",
        Flavor::Dubbo => "`/<group>/<interface>/providers/<URL>`",
    };
    let Some((&segment, root)) = ancestors.split_last() else {
        return Layout::Malformed(format!("no interface segment above `providers`: expected {example}"));
    };
    let under_sofa = root.last() == Some(&"sofa-rpc");
    let ours = match flavor {
        Flavor::SofaRpc if segment == "sofa-rpc" => {
            return Layout::Malformed(format!("no interface segment between `sofa-rpc` and `providers`: expected {example}"));
        }
        Flavor::SofaRpc => under_sofa,
        Flavor::Dubbo => !under_sofa,
    };
    if !ours {
        return Layout::Foreign;
    }
    // Providers are ephemeral nodes, which ZooKeeper gives no children: below an encoded node
    // (one without `://`), a further segment is something else than a provider.
    if node.contains('/') && !node.contains("://") {
        return Layout::Malformed(format!("the path goes on below a provider node: expected {example}"));
    }
    Layout::Provider { segment, node }
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
        // The SOFARPC provider on the last line is skipped, but not silently.
        assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 11".to_owned())]);
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
        // The Dubbo provider on the last line is skipped, but not silently.
        assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 8".to_owned())]);
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
    fn layout_finds_the_provider_node_under_any_root() {
        use Layout::{Foreign, Malformed, NotProvider, Provider};
        let provider = |segment, node| Provider { segment, node };
        let cases = [
            (Flavor::SofaRpc, "sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", provider("com.ex.A", "bolt%3A%2F%2Fx")),
            (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", provider("com.ex.A", "bolt%3A%2F%2Fx")),
            (
                Flavor::SofaRpc,
                "a/b/sofa-rpc/com.ex.A/providers/bolt://10.0.0.1:12200?v=1",
                provider("com.ex.A", "bolt://10.0.0.1:12200?v=1"),
            ),
            (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers", NotProvider),
            (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers/", NotProvider),
            (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/consumers/bolt%3A%2F%2Fx", NotProvider),
            (Flavor::SofaRpc, "dubbo/com.ex.A/providers/dubbo%3A%2F%2Fx", Foreign),
            (Flavor::SofaRpc, "com.ex.A/providers/bolt%3A%2F%2Fx", Foreign),
            (Flavor::Dubbo, "dubbo/com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
            (Flavor::Dubbo, "chroot/prod/com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
            // Dubbo's group `/` puts the interface at the top.
            (Flavor::Dubbo, "com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
            (Flavor::Dubbo, "payments/sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", Foreign),
            (Flavor::Dubbo, "dubbo/com.ex.A/configurators/override://0.0.0.0/x/providers/y", NotProvider),
            (Flavor::Dubbo, "services/demo-provider/10.0.0.1:20880", NotProvider),
        ];
        for (flavor, path, want) in cases {
            assert_eq!(layout(flavor, path), want, "{flavor:?} {path}");
        }
        assert_eq!(
            layout(Flavor::Dubbo, "providers/dubbo%3A%2F%2Fx"),
            Malformed("no interface segment above `providers`: expected `/<group>/<interface>/providers/<URL>`".to_owned())
        );
        assert_eq!(
            layout(Flavor::SofaRpc, "payments/sofa-rpc/providers/bolt%3A%2F%2Fx"),
            Malformed(
                "no interface segment between `sofa-rpc` and `providers`: expected `[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`"
                    .to_owned()
            )
        );
    }

    #[test]
    fn sofa_rpc_under_a_chroot_loads() {
        // SOFARPC with registry address `zookeeper://zk:2181/payments`, listed at the prompt.
        let text = format!(
            "[zk: zk1:2181(CONNECTED) 3] ls -R /payments\n/payments\n/payments/sofa-rpc\n/payments/sofa-rpc/com.ex.PayFacade\n\
             /payments/sofa-rpc/com.ex.PayFacade/providers\n/payments/sofa-rpc/com.ex.PayFacade/providers/{}\n\
             /payments/sofa-rpc/com.ex.PayFacade/providers/{}\n/payments/sofa-rpc/com.ex.PayFacade/consumers/{}\n\
             /zk/cluster-b/sofa-rpc/com.ex.RefundFacade/providers/{}\n[zk: zk1:2181(CONNECTED) 4]\n",
            encode("bolt://10.2.0.8:12200?version=1.0&uniqueId=&appName=payment-core&weight=100"),
            encode("rest://10.2.0.8:8341?version=1.0&appName=payment-core"),
            encode("bolt://10.2.0.30:12200?version=1.0"),
            encode("bolt://10.2.0.9:12200?version=2.0&weight=40"),
        );
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.PayFacade:1.0", "com.ex.PayFacade:1.0@rest", "com.ex.RefundFacade:2.0"]);
        assert_eq!(
            endpoints(&snapshot),
            [
                ("com.ex.PayFacade:1.0", "10.2.0.8", 12200, 100),
                ("com.ex.PayFacade:1.0@rest", "10.2.0.8", 8341, 100),
                ("com.ex.RefundFacade:2.0", "10.2.0.9", 12200, 40)
            ]
        );
        assert_eq!(snapshot.instances[0].labels["appName"], "payment-core");
    }

    #[test]
    fn dubbo_under_a_chroot_or_group_slash_loads() {
        let text = format!(
            "/apps/prod/com.ex.Demo/providers/{}\n/com.ex.Demo/providers/{}\n/apps/prod/com.ex.Demo/consumers/{}\n",
            encode("dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo&group=prod&version=1.0"),
            encode("dubbo://10.0.0.2:20880/com.ex.Demo?interface=com.ex.Demo"),
            encode("consumer://10.0.0.3/com.ex.Demo?side=consumer"),
        );
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(endpoints(&snapshot), [("prod/com.ex.Demo:1.0", "10.0.0.1", 20880, 100), ("com.ex.Demo", "10.0.0.2", 20880, 100)]);
    }

    #[test]
    fn provider_nodes_of_the_other_ecosystem_get_one_warning() {
        // `ls -R /` of a ZooKeeper that Dubbo and SOFARPC share, read as SOFARPC's.
        let dubbo = |host: &str| encode(&format!("dubbo://{host}:20880/com.ex.Demo"));
        let text = format!(
            "/dubbo/com.ex.Demo/providers/{}\n/sofa-rpc/com.ex.Order/providers/{}\n/dubbo/com.ex.Demo/providers/{}\n\
             [zk: zk:2181(CONNECTED) 1] ls /dubbo/com.ex.Demo/providers\n[{}, {}]\n",
            dubbo("10.0.0.1"),
            encode("bolt://10.1.0.1:12200"),
            dubbo("10.0.0.2"),
            dubbo("10.0.0.3"),
            dubbo("10.0.0.4"),
        );
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        assert_eq!(endpoints(&snapshot), [("com.ex.Order:1.0", "10.1.0.1", 12200, 100)]);
        assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
        let warning = &diagnostics[0];
        assert_eq!((warning.severity, warning.code), (Severity::Warning, Code::RegistryEntry));
        assert_eq!(warning.message, "4 provider nodes outside a `sofa-rpc` node in registry `zk`");
        // One bracketed list names its line once.
        assert_eq!(warning.notes[0], "entries: lines 1, 3, 5");
        assert_eq!(warning.labels.len(), 1);
        let first = warning.labels[0].span;
        assert_eq!(&text[first.start as usize..first.end as usize], text.lines().next().unwrap());
        assert_eq!(
            warning.help.as_deref(),
            Some("read Dubbo's `/<group>/<interface>/providers/<URL>` nodes with a registry of kind `dubbo-zookeeper`")
        );

        // The same dump read as Dubbo's: the one SOFARPC node is the stranger.
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert_eq!(snapshot.instances.len(), 4);
        assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 2".to_owned())]);
        assert_eq!(diagnostics[0].message, "1 provider node under `sofa-rpc` in Dubbo registry `zk`");
        assert_eq!(diagnostics[0].help.as_deref(), Some("read these nodes with a registry of kind `sofa-rpc-zookeeper`"));
    }

    #[test]
    fn many_foreign_lines_are_counted_not_listed() {
        let text: String =
            (1..=12).map(|n| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(&format!("dubbo://10.0.0.{n}:20880")))).collect();
        let (_, diagnostics) = load_text(Flavor::SofaRpc, &text);
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].message, "12 provider nodes outside a `sofa-rpc` node in registry `zk`");
        assert_eq!(diagnostics[0].notes[0], "entries: lines 1, 2, 3, 4, 5, 6, 7, 8 and 4 more");
    }

    #[test]
    fn nodes_under_providers_that_fit_no_layout_are_errors() {
        let bolt = encode("bolt://10.1.0.1:12200");
        let text = format!(
            "/providers/{bolt}\n/payments/sofa-rpc/providers/{bolt}\n/payments/sofa-rpc/com.ex.A/providers/{bolt}/extra\n\
             /payments/sofa-rpc/com.ex.A/providers/{bolt}\n"
        );
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        assert_eq!(entries(&diagnostics), [error("line 1"), error("line 2"), error("line 3")]);
        let messages: Vec<&str> =
            diagnostics.iter().map(|it| it.message.trim_start_matches("malformed entry in registry `zk`: ")).collect();
        assert!(messages[0].starts_with("no interface segment above `providers`"), "{}", messages[0]);
        assert!(messages[1].starts_with("no interface segment between `sofa-rpc` and `providers`"), "{}", messages[1]);
        assert_eq!(messages[2], "the path goes on below a provider node: expected `[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`");
        assert_eq!(endpoints(&snapshot), [("com.ex.A:1.0", "10.1.0.1", 12200, 100)]);
    }

    /// An interactive ZooKeeper 3.4 session pasted from a Windows console: no `ls -R`, so each
    /// `ls` prints the child names in brackets on the next line.
    fn zkcli_34_session() -> String {
        let demo = |host: &str, pid: u32| {
            encode(&format!(
                "dubbo://{host}:20880/com.ex.DemoService?anyhost=true&application=demo-provider&dubbo=2.6.2&interface=com.ex.DemoService&methods=sayHello&pid={pid}&side=provider&version=1.0.0"
            ))
        };
        [
            "Connecting to 192.168.1.100:2181".to_owned(),
            "Welcome to ZooKeeper!".to_owned(),
            "JLine support is disabled".to_owned(),
            String::new(),
            "WATCHER::".to_owned(),
            String::new(),
            "WatchedEvent state:SyncConnected type:None path:null".to_owned(),
            "[zk: 192.168.1.100:2181(CONNECTED) 0] ls /dubbo".to_owned(),
            "[com.ex.DemoService]".to_owned(),
            "[zk: 192.168.1.100:2181(CONNECTED) 1] ls /dubbo/com.ex.DemoService".to_owned(),
            "[configurators, routers, providers, consumers]".to_owned(),
            "[zk: 192.168.1.100:2181(CONNECTED) 2] ls /dubbo/com.ex.DemoService/providers".to_owned(),
            format!("[{}, {}]", demo("192.168.1.5", 8352), demo("192.168.1.6", 5120)),
            "[zk: 192.168.1.100:2181(CONNECTED) 3] ls2 /dubbo/com.ex.DemoService/consumers".to_owned(),
            "[]".to_owned(),
            "cZxid = 0x1a".to_owned(),
            "ctime = Mon Mar 11 14:01:05 CST 2019".to_owned(),
            "numChildren = 0".to_owned(),
            "[zk: 192.168.1.100:2181(CONNECTED) 4] quit".to_owned(),
            "Quitting...".to_owned(),
            // The same listing run as a script, one bare command per line.
            "ls /dubbo/com.ex.DemoService/providers".to_owned(),
            format!("[{}]", demo("192.168.1.7", 4242)),
        ]
        .iter()
        .map(|line| format!("{line}\r\n"))
        .collect()
    }

    #[test]
    fn zkcli_3_4_child_lists_are_the_children_of_the_listed_path() {
        let text = zkcli_34_session();
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        assert!(diagnostics.is_empty(), "{diagnostics:#?}");
        assert_eq!(names(&snapshot), ["com.ex.DemoService:1.0.0"]);
        assert_eq!(
            endpoints(&snapshot),
            [
                ("com.ex.DemoService:1.0.0", "192.168.1.5", 20880, 100),
                ("com.ex.DemoService:1.0.0", "192.168.1.6", 20880, 100),
                ("com.ex.DemoService:1.0.0", "192.168.1.7", 20880, 100)
            ]
        );
        // Each instance's span is its own child node, not the whole list.
        let spanned: Vec<&str> = snapshot.instances.iter().map(|it| &text[it.span.start as usize..it.span.end as usize]).collect();
        assert!(spanned[0].starts_with(&encode("dubbo://192.168.1.5:20880/")) && spanned[0].ends_with("1%2E0%2E0"), "{}", spanned[0]);
        assert!(spanned[1].starts_with(&encode("dubbo://192.168.1.6:20880/")) && spanned[1].ends_with("1%2E0%2E0"), "{}", spanned[1]);
        assert!(spanned.iter().all(|it| !it.contains(", ") && !it.contains(['[', ']'])), "{spanned:?}");
        assert_eq!(snapshot.services[0].entry, "provider line 13 of com.ex.DemoService:1.0.0");
    }

    #[test]
    fn a_child_list_needs_the_ls_before_it() {
        let url = encode("bolt://10.1.0.1:12200");
        let text = format!(
            "[{url}]\n\
             [zk: localhost:2181(CONNECTED) 0] ls -R /sofa-rpc\n[{url}]\n\
             [zk: localhost:2181(CONNECTED) 1] get /sofa-rpc/com.ex.A/providers\n[{url}]\n\
             [zk: localhost:2181(CONNECTED) 2] ls /sofa-rpc/com.ex.A/providers\n[{url}]\n[{url}]\n"
        );
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        // The second list after one `ls` has no command of its own either.
        assert_eq!(entries(&diagnostics), [error("line 1"), error("line 3"), error("line 5"), error("line 8")]);
        assert!(
            diagnostics.iter().all(|it| it.message
                == "malformed entry in registry `zk`: a bracketed child list with no `ls <path>` command before it: the parent of these nodes is unknown"),
            "{diagnostics:#?}"
        );
        assert_eq!(endpoints(&snapshot), [("com.ex.A:1.0", "10.1.0.1", 12200, 100)]);
    }

    #[test]
    fn zkcli_prompts_and_ls_commands_are_read() {
        assert_eq!(zkcli_command("[zk: localhost:2181(CONNECTED) 3] ls /dubbo"), Some("ls /dubbo"));
        assert_eq!(zkcli_command("[zk: [::1]:2181(CONNECTED) 0] ls /dubbo"), Some("ls /dubbo"));
        assert_eq!(zkcli_command("[zk: localhost:2181(CONNECTED) 4]"), Some(""));
        assert_eq!(zkcli_command("ls2 /dubbo"), Some("ls2 /dubbo"));
        assert_eq!(zkcli_command("/dubbo/ls"), None);
        assert_eq!(zkcli_command("[a, b]"), None);
        assert_eq!(listed_path("ls /dubbo/com.ex.A/providers"), Some("/dubbo/com.ex.A/providers"));
        assert_eq!(listed_path("ls -s -w /dubbo"), Some("/dubbo"));
        assert_eq!(listed_path("ls /dubbo watch"), Some("/dubbo"));
        assert_eq!(listed_path("ls -R /dubbo"), None);
        assert_eq!(listed_path("ls"), None);
        assert_eq!(listed_path("get /dubbo"), None);
        let children: Vec<(usize, &str)> = children("a, bc, d").collect();
        assert_eq!(children, [(0, "a"), (3, "bc"), (7, "d")]);
        assert_eq!(super::children("").count(), 0);
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
