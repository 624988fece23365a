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

#[derive(Clone, Debug, Deserialize)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    number: u16,
    name: Option<String>,
    protocol: Option<String>,
    target_port: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
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
    match whole(ctx) {
        Some(document) => build(ctx, document),
        None => Snapshot::default(),
    }
}

/// Reads a native snapshot as [`load`] does, parsing again only the chunks of it (see
/// [`Cache`]) that differ from the last text `cache` saw; a snapshot that is not in the shape
/// chunks need, or that has any error, is read whole.
pub fn load_cached(ctx: &mut Ctx<'_>, cache: &mut Cache) -> Snapshot {
    let document = match chunked(ctx.text, cache) {
        Some(document) => document,
        None => {
            cache.chunks.clear();
            cache.parsed = None;
            match whole(ctx) {
                Some(document) => document,
                None => return Snapshot::default(),
            }
        }
    };
    build(ctx, document)
}

/// A snapshot's entries as TOML gave them, before their meaning is checked.
struct Document {
    version: Option<String>,
    entries: Vec<Entry>,
}

enum Entry {
    /// A `[[service]]` table, at its header.
    Service(std::ops::Range<usize>, RawService),
    /// A `[[service]]` table that does not deserialize: where, what and why.
    Bad(std::ops::Range<usize>, &'static str, String),
}

/// Parses the whole text, reporting what is not TOML and keys that are not a native
/// registry's; `None` when the text is not TOML at all.
fn whole(ctx: &mut Ctx<'_>) -> Option<Document> {
    let root = match toml::de::DeTable::parse(ctx.text) {
        Ok(root) => root,
        Err(err) => {
            let at = err.span().unwrap_or(0..0);
            ctx.bad_file(at, format!("invalid TOML: {}", err.message().trim_end_matches('.')));
            return None;
        }
    };
    // The document is taken apart, not copied: a snapshot of 10,000 instances is parsed on
    // every change Pilot sees, and copying its tables took a third of the compile.
    let mut version = None;
    let mut values = Vec::new();
    for (key, value) in root.into_inner() {
        let (name, value) = (key.get_ref().as_ref(), value.into_inner());
        if name == "version"
            && let Some(text) = version_text(&value)
        {
            version = Some(text);
            continue;
        }
        match (name, value) {
            ("service", toml::de::DeValue::Array(array)) => values.extend(array),
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
    let entries = values
        .into_iter()
        .map(|value| {
            let span = value.span();
            match table(value) {
                Some((span, table)) => match from_table::<RawService>(span.clone(), table) {
                    Ok(service) => Entry::Service(span, service),
                    Err(err) => Entry::Bad(err.span().unwrap_or(span), "[[service]]", err.message().trim_end_matches('.').to_owned()),
                },
                None => Entry::Bad(span, "service", "`service` must be an array of tables: `[[service]]`".to_owned()),
            }
        })
        .collect();
    Some(Document { version, entries })
}

/// Checks the entries' meaning and makes the snapshot.
fn build(ctx: &mut Ctx<'_>, document: Document) -> Snapshot {
    let mut snapshot = Snapshot { version: document.version, ..Snapshot::default() };
    let count = document.entries.iter().map(|it| if let Entry::Service(_, service) = it { service.instance.len() } else { 0 }).sum();
    snapshot.instances.reserve_exact(count);
    for entry in document.entries {
        let (span, service) = match entry {
            Entry::Service(span, service) => (ctx.span(span), service),
            Entry::Bad(at, what, message) => {
                let at = ctx.span(at);
                ctx.bad_entry(at, what, message);
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

/// What earlier reads of one native snapshot parsed, by the text of each chunk, so that Pilot
/// parses again only what an edit touched: a snapshot of 10,000 instances took 25 ms to parse
/// whole, and a registry change usually rewrites a few of them.
///
/// A chunk is the text before the first table header (`version`), one `[[service]]` table,
/// or a run of its `[[service.instance]]` tables. A run ends where an instance table's text
/// hashes to a multiple of [`RUN_SPREAD`] (or after [`RUN_MAX`] tables), so its ends depend
/// on its own text and not on where it sits: an instance added or removed changes one chunk,
/// not every one after it. Each chunk is parsed as a TOML document of its own and its spans
/// moved to where it sits. That reading equals the whole document's only for snapshots made
/// of those two table headers, so any other header, a key other than `version` before the
/// first table, or any error sends the whole text through [`load`]'s path instead. Why
/// the pieces add up to the whole: TOML's parser carries nothing across a line start but the
/// document's tables and an open multi-line string (an array or inline table cannot hold a
/// header); a header starts a line after spaces or tabs only, which `trim_start` strips
/// among others; a header line inside a multi-line string cannot pass for one, because the
/// chunk that opens the string ends before it closes and does not parse; a `[[...]]`
/// table's span is its header's, which does not depend on what follows it; and a byte
/// order mark is skipped only at the start of the text, which is the first chunk's.
#[derive(Debug, Default)]
pub struct Cache {
    chunks: BTreeMap<String, Chunk>,
    /// How many chunks the last read parsed (the others came from the cache); `None` when
    /// it read the text whole.
    parsed: Option<usize>,
}

/// An instance table ends a run of them when its text's hash is a multiple of this.
const RUN_SPREAD: u64 = 64;
/// Most instance tables in one run.
const RUN_MAX: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Root,
    Service,
    Instances,
}

/// A chunk parsed, its spans relative to its start.
#[derive(Clone, Debug)]
enum Chunk {
    Root { version: Option<String> },
    Service { header: std::ops::Range<usize>, service: RawService, has_instance_key: bool },
    Instances(Vec<(std::ops::Range<usize>, RawInstance)>),
}

/// The snapshot read chunk by chunk, reusing what `cache` holds; `None` where it must be read
/// whole. Afterwards `cache` holds exactly this text's chunks.
fn chunked(text: &str, cache: &mut Cache) -> Option<Document> {
    let pieces = split(text)?;
    let mut fresh: BTreeMap<String, Chunk> = BTreeMap::new();
    let mut parsed = 0;
    let mut document = Document { version: None, entries: Vec::new() };
    // Whether the last `[[service]]` table has an `instance` key of its own.
    let mut instance_key = false;
    for (kind, range) in pieces {
        let piece = &text[range.clone()];
        let chunk = match cache.chunks.remove(piece).or_else(|| fresh.get(piece).cloned()) {
            Some(chunk) => chunk,
            None => {
                parsed += 1;
                parse_chunk(kind, piece)?
            }
        };
        let at = |span: &std::ops::Range<usize>| span.start + range.start..span.end + range.start;
        match &chunk {
            Chunk::Root { version } => document.version.clone_from(version),
            Chunk::Service { header, service, has_instance_key } => {
                instance_key = *has_instance_key;
                let mut service = service.clone();
                // Instances given inline have their spans in the chunk too.
                service.instance = service.instance.into_iter().map(|it| Spanned::new(at(&it.span()), it.into_inner())).collect();
                document.entries.push(Entry::Service(at(header), service));
            }
            Chunk::Instances(instances) => {
                // Instance tables belong to the `[[service]]` before them, which must not also
                // have an `instance` key of its own.
                let Some(Entry::Service(_, service)) = document.entries.last_mut() else { return None };
                if instance_key {
                    return None;
                }
                service.instance.extend(instances.iter().map(|(span, instance)| Spanned::new(at(span), instance.clone())));
            }
        }
        fresh.insert(piece.to_owned(), chunk);
    }
    cache.chunks = fresh;
    cache.parsed = Some(parsed);
    Some(document)
}

/// The text cut into chunks, or `None` for a table header other than `[[service]]` and
/// `[[service.instance]]`.
fn split(text: &str) -> Option<Vec<(Kind, std::ops::Range<usize>)>> {
    let mut pieces = Vec::new();
    let (mut piece_start, mut kind) = (0, Kind::Root);
    let (mut section_start, mut sections) = (0, 0);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        if !trimmed.starts_with('[') {
            continue;
        }
        let header = header_kind(trimmed)?;
        let cut = match (header, kind) {
            (Kind::Instances, Kind::Instances) => sections >= RUN_MAX || hash(&text[section_start..line_start]).is_multiple_of(RUN_SPREAD),
            _ => true,
        };
        if cut {
            pieces.push((kind, piece_start..line_start));
            (piece_start, kind, sections) = (line_start, header, 0);
        }
        section_start = line_start;
        sections += 1;
    }
    pieces.push((kind, piece_start..text.len()));
    Some(pieces)
}

/// The kind of chunk a line starting with `[` begins, if it is one of the two headers.
fn header_kind(line: &str) -> Option<Kind> {
    let (kind, rest) = match line.strip_prefix("[[service]]") {
        Some(rest) => (Kind::Service, rest),
        None => (Kind::Instances, line.strip_prefix("[[service.instance]]")?),
    };
    let rest = rest.trim();
    (rest.is_empty() || rest.starts_with('#')).then_some(kind)
}

/// A value that must be a table, with its span.
fn table<'t>(value: Spanned<toml::de::DeValue<'t>>) -> Option<(std::ops::Range<usize>, toml::de::DeTable<'t>)> {
    let span = value.span();
    match value.into_inner() {
        toml::de::DeValue::Table(table) => Some((span, table)),
        _ => None,
    }
}

/// A `version` as the snapshot records it: a string, or an integer as written.
fn version_text(value: &toml::de::DeValue<'_>) -> Option<String> {
    match value {
        toml::de::DeValue::String(text) => Some(text.to_string()),
        toml::de::DeValue::Integer(n) => Some(n.as_str().to_owned()),
        _ => None,
    }
}

/// Deserializes a table found at `span`, so that errors point into the document.
fn from_table<T: serde::de::DeserializeOwned>(span: std::ops::Range<usize>, table: toml::de::DeTable<'_>) -> Result<T, toml::de::Error> {
    T::deserialize(toml::de::Deserializer::from(Spanned::new(span, table)))
}

/// FNV-1a: a chunk boundary depends only on the text before it.
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Parses one chunk as a document of its own; `None` for anything [`whole`] would report.
fn parse_chunk(kind: Kind, text: &str) -> Option<Chunk> {
    use toml::de::DeValue;
    let mut root = toml::de::DeTable::parse(text).ok()?.into_inner().into_iter();
    if kind == Kind::Root {
        let mut version = None;
        for (key, value) in root {
            if key.get_ref() != "version" {
                return None;
            }
            version = Some(version_text(value.get_ref())?);
        }
        return Some(Chunk::Root { version });
    }
    // Only `service`, as an array of one table or as a table holding `instance`.
    let (key, value) = root.next()?;
    if key.get_ref() != "service" || root.next().is_some() {
        return None;
    }
    match (kind, value.into_inner()) {
        (Kind::Service, DeValue::Array(array)) if array.len() == 1 => {
            let (header, service) = table(array.into_iter().next()?)?;
            let has_instance_key = service.contains_key("instance");
            let service = from_table(header.clone(), service).ok()?;
            Some(Chunk::Service { header, service, has_instance_key })
        }
        (Kind::Instances, DeValue::Table(service)) => {
            let mut keys = service.into_iter();
            let (key, value) = keys.next()?;
            let (true, None, DeValue::Array(array)) = (key.get_ref() == "instance", keys.next(), value.into_inner()) else { return None };
            let instances = array
                .into_iter()
                .map(|value| {
                    let (span, instance) = table(value)?;
                    let instance = from_table(span.clone(), instance).ok()?;
                    Some((span, instance))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Chunk::Instances(instances))
        }
        _ => None,
    }
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    Protocol::ALL
        .iter()
        .copied()
        .find(|it| it.as_str() == name)
        .ok_or_else(|| format!("unknown protocol `{name}`: use http, http2, grpc, bolt, dubbo, tcp or auto"))
}

#[cfg(test)]
mod tests {
    use meshc_codegen::ir::RegistryKind;

    use super::*;
    use crate::registry::testing;
    use crate::source::FileId;

    /// What a read gives: the snapshot and the diagnostics, spans and all.
    fn read(text: &str, cache: Option<&mut Cache>) -> String {
        let entry = testing::entry("local", RegistryKind::Native, "registry.toml");
        let (snapshot, diagnostics) = match cache {
            Some(cache) => testing::run(&entry, FileId(1), text, "default", |ctx| load_cached(ctx, cache)),
            None => testing::run(&entry, FileId(1), text, "default", load),
        };
        format!("{snapshot:#?}\n{diagnostics:#?}")
    }

    /// Fails with the first lines where two reads differ, not with both whole.
    #[track_caller]
    fn same(chunked: &str, whole: &str, what: &str) {
        if chunked == whole {
            return;
        }
        let (a, b): (Vec<_>, Vec<_>) = (chunked.lines().collect(), whole.lines().collect());
        let at = a.iter().zip(&b).position(|(a, b)| a != b).unwrap_or(a.len().min(b.len()));
        let from = at.saturating_sub(12);
        panic!(
            "{what}: chunked read differs at line {at}:\n{}\n--- whole:\n{}",
            a[from..(at + 4).min(a.len())].join("\n"),
            b[from..(at + 4).min(b.len())].join("\n")
        );
    }

    /// A snapshot of three services, one of them with `count` instances in varied shapes.
    fn snapshot(count: usize) -> String {
        let mut text = String::from(
            "# made for the test\nversion = \"7\"\n\n[[service]]\nname = \"big\"\nports = [{ number = 80, name = \"http\", protocol = \"http\" }]\n",
        );
        for index in 0..count {
            text.push_str(&format!("\n[[service.instance]]\naddress = \"10.0.{}.{}\"\nport = 8080\n", index / 250, index % 250));
            match index % 4 {
                0 => text.push_str("weight = 100\n"),
                1 => text.push_str("labels = { version = \"v2\" }\nlocality = \"us-east/us-east-1a\"\n"),
                2 => text.push_str("health = \"draining\"\n  # a comment\n"),
                _ => {}
            }
        }
        text.push_str("\n[[service]] # the second\nname = \"small\"\nport = 9000\n\n  [[service.instance]]\naddress = \"127.0.0.1\"\n");
        text.push_str(
            "\n[[service]]\nname = \"inline\"\nport = 7000\ninstance = [{ address = \"10.9.0.1\" }, { address = \"10.9.0.2\" }]\n",
        );
        text
    }

    /// A small deterministic generator (xorshift).
    struct Draw(u64);

    impl Draw {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    /// Where the `n`-th instance header (of any service) starts.
    fn nth_instance(text: &str, n: usize) -> Option<usize> {
        text.match_indices("[[service.instance]]").nth(n).map(|(at, _)| at)
    }

    /// One edit of the kinds registries and people make, valid or not.
    fn edit(text: &str, draw: &mut Draw) -> String {
        let headers = text.matches("[[service.instance]]").count().max(1);
        let Some(at) = nth_instance(text, draw.below(headers)) else {
            return format!("{text}\n[[service.instance]]\naddress = \"10.8.0.1\"\n");
        };
        let end = text[at + 1..].find("\n[").map_or(text.len(), |it| at + 1 + it + 1);
        let (before, section, after) = (&text[..at], &text[at..end], &text[end..]);
        match draw.below(12) {
            // A weight changed, added or taken away: what Pilot sees most.
            0 | 1 => match section.find("weight = ") {
                Some(weight) => format!("{before}{}weight = {}{}{after}", &section[..weight], draw.below(500) + 1, &section[weight + 12..]),
                None => format!("{before}{section}weight = {}\n{after}", draw.below(500) + 1),
            },
            2 => format!("{before}{after}"),
            3 => format!("{before}{section}{section}{after}"),
            4 => format!("{before}[[service.instance]]\naddress = \"10.7.{}.1\"\nport = 81\n\n{section}{after}", draw.below(200)),
            5 => format!("{before}{section}adress = \"typo\"\n{after}"),
            6 => format!("{before}{section}locality = \"\"\"\n[[service.instance]]\naddress = \"10.6.0.1\"\n\"\"\"\n{after}"),
            7 => format!("{before}[service.extra]\nx = 1\n{section}{after}"),
            8 => format!("{before}{section}address = \"twice\"\n{after}"),
            9 => format!("{before}[[service]]\nname = \"split{}\"\n\n{section}{after}", draw.below(100)),
            10 => format!("{before}{section}port = \"not a number\n{after}"),
            _ => text.replacen("[[service]]\nname = \"big\"", "[[service]]\nname = \"big\"\ninstance = []", 1),
        }
    }

    #[test]
    fn reading_by_chunks_gives_what_reading_whole_gives() {
        let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
        // How many warm reads went by chunks, and how many had to read whole.
        let (mut by_chunks, mut read_whole) = (0, 0);
        for trial in 0..40 {
            let mut text = snapshot(100 + trial * 7);
            let mut cache = Cache::default();
            same(&read(&text, Some(&mut cache)), &read(&text, None), &format!("trial {trial}, first read"));
            for step in 0..6 {
                let edited = edit(&text, &mut draw);
                // A cache warmed by the text before the edit, and a cold one.
                same(&read(&edited, Some(&mut cache)), &read(&edited, None), &format!("trial {trial}, edit {step}"));
                same(&read(&edited, Some(&mut Cache::default())), &read(&edited, None), &format!("trial {trial}, edit {step}, cold"));
                // A text read whole stays only sometimes, so that most edits start from one
                // that reads by chunks.
                if cache.parsed.is_some() {
                    by_chunks += 1;
                    text = edited;
                } else {
                    read_whole += 1;
                    if draw.below(4) == 0 {
                        text = edited;
                    }
                }
                same(&read(&text, Some(&mut cache)), &read(&text, None), &format!("trial {trial}, edit {step}, kept"));
            }
        }
        // Both paths were taken often enough for the comparison to mean something.
        assert!(by_chunks > 40 && read_whole > 40, "{by_chunks} reads by chunks, {read_whole} whole");
    }

    #[test]
    fn a_changed_weight_parses_one_chunk_again() {
        let text = snapshot(2000);
        let mut cache = Cache::default();
        read(&text, Some(&mut cache));
        let chunks = cache.parsed.expect("read by chunks");
        assert!(chunks > 20, "{chunks} chunks for 2,000 instances");
        let at = nth_instance(&text, 1234).unwrap();
        let weight = at + text[at..].find("weight = 100").unwrap();
        let edited = format!("{}weight = 7{}", &text[..weight], &text[weight + 12..]);
        same(&read(&edited, Some(&mut cache)), &read(&edited, None), "weight changed");
        assert_eq!(cache.parsed, Some(1));
        // An instance added moves no boundary but its own chunk's.
        let added = format!("{}[[service.instance]]\naddress = \"10.5.0.1\"\nport = 80\n\n{}", &edited[..at], &edited[at..]);
        same(&read(&added, Some(&mut cache)), &read(&added, None), "instance added");
        assert!(cache.parsed.is_some_and(|it| it <= 2), "{:?} chunks parsed again", cache.parsed);
        // Unchanged, nothing is parsed at all.
        read(&added, Some(&mut cache));
        assert_eq!(cache.parsed, Some(0));
    }

    #[test]
    fn odd_but_valid_shapes_read_the_same_either_way() {
        let cases = [
            "version = 1\r\n[[service]]\r\nname = \"a\"\r\nport = 80\r\n[[service.instance]]\r\naddress = \"10.0.0.1\"\r\n",
            "\u{feff}version = \"2\"\n[[service]]\nname = \"a\"\nport = 80\n\t[[service.instance]]\naddress = \"10.0.0.1\"\n",
            "\u{feff}[[service]]\nname = \"a\"\nport = 80\n",
            "[[service]]#x\nname = \"a\"\nport = 80\n[[service.instance]]# y\naddress = \"10.0.0.1\"\n",
            "[[service]]\nname = \"a\"\nport = 80\n\"instance\" = []\n[[service.instance]]\naddress = \"10.0.0.1\"\n",
            "[[service]]\nname = \"a\"\nport = 80\ninstance.address = \"x\"\n[[service.instance]]\naddress = \"10.0.0.1\"\n",
            "[[service.instance]]\naddress = \"10.0.0.1\"\n[[service]]\nname = \"a\"\nport = 80\n",
            "version = 1\nversion = 2\n[[service]]\nname = \"a\"\nport = 80\n",
            "[[service]]\nname = \"a\"\nport = 80\nmethods = [\n  \"x\",\n]\n[[service.instance]]\naddress = '''\n[[service]]\n'''\n",
            "",
        ];
        for text in cases {
            let mut cache = Cache::default();
            same(&read(text, Some(&mut cache)), &read(text, None), &format!("{text:?}"));
            // Read again from the warm cache.
            same(&read(text, Some(&mut cache)), &read(text, None), &format!("{text:?}, warm"));
        }
    }

    #[test]
    fn other_table_headers_are_read_whole() {
        let text = "[[service]]\nname = \"a\"\nport = 80\n[service.labels]\nx = \"y\"\n";
        let mut cache = Cache::default();
        same(&read(text, Some(&mut cache)), &read(text, None), "other headers");
        assert_eq!(cache.parsed, None);
    }
}
