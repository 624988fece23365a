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
mod tests;
