//! Kubernetes snapshots: what `kubectl get endpointslices,pods,services -o yaml` (or `-o json`)
//! prints, read with saphyr so that every object keeps its span.
//!
//! The input is YAML or JSON: one `List` (or `EndpointSliceList`, `PodList`, …), a stream of
//! documents, or a mix. Objects of kinds other than those below are ignored. The items of a
//! typed list may leave out `kind` and `apiVersion`, as the API server does (`kubectl get --raw`):
//! they are the list's kind without `List`, and the list's `apiVersion`.
//! - `Service` (v1) gives a service and its TCP ports. `ExternalName` services, services without
//!   TCP ports, and UDP or SCTP ports are left out without a message: the mesh routes none of them.
//! - `EndpointSlice` (`discovery.k8s.io/v1`, and v1beta1's `topology` map) gives one instance per
//!   address per slice port; its service is the `kubernetes.io/service-name` label.
//! - `Endpoints` (v1) gives instances only for services that no EndpointSlice of the snapshot covers.
//! - `Pod` lends its labels to the endpoints whose `targetRef` names it (or, without a `targetRef`,
//!   whose address is its only pod IP in the namespace); `Node` lends its region, zone and Istio
//!   sub-zone labels to the endpoints on it. Neither is an instance by itself.
//!
//! A slice or `Endpoints` whose Service is not in the snapshot still yields a service, also
//! when it has no endpoints: its ports are the union of its slices' TCP ports (name, number,
//! `appProtocol`), as the Service's port numbers are unknown. Slices that give one port name
//! two numbers are a warning; the first number stands.
//! Instance health follows the EndpointSlice conditions: ready → healthy; not ready but serving
//! and terminating → draining; not ready otherwise → unhealthy; no `ready` → unknown.
//! Entries are named `Service shop/orders`, `EndpointSlice shop/orders-x7k2p endpoint 2` (counting
//! from 1); field paths in messages count from 0, as JSONPath does.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use meshc_codegen::ir::{Health, Locality, Protocol};
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::value::RawValue;

use super::{Ctx, Instance, Port, Service, Snapshot};
use crate::diag::{Code, Diagnostic};

/// The label that names an EndpointSlice's service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The last column at which a line may start a block collection (see [`deep_line`]).
const MAX_BLOCK_COLUMN: usize = 511;

/// Stack for the reading thread. saphyr builds, clones (for aliases), hashes and drops its tree
/// recursively, so a deep enough document overflows any fixed stack. Block nesting is bounded by
/// [`MAX_BLOCK_COLUMN`] (at most 1,024 levels), flow nesting by saphyr (255 levels), and alias
/// expansion by saphyr's budget of 100,000 nodes, which bounds a chain of aliases to about 17,000
/// levels. A debug build needs under 2 KiB per level (the 9,400 levels of the test below fit in
/// 16 MiB), so 128 MiB leaves a wide margin; the memory is reserved, not committed.
const READER_STACK: usize = 128 << 20;

/// How deep `List`s may nest in `List`s.
const MAX_LIST_DEPTH: usize = 4;

/// Reads a Kubernetes snapshot.
pub fn load(ctx: &mut Ctx<'_>) -> Snapshot {
    if let Some((at, column)) = deep_line(ctx.text) {
        ctx.bad_file(
            at..at + column,
            format!(
                "this line nests {column} columns deep; meshc reads YAML whose collections start at column {MAX_BLOCK_COLUMN} or before"
            ),
        );
        return Snapshot::default();
    }
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("meshc-kubernetes".to_owned())
            .stack_size(READER_STACK)
            .spawn_scoped(scope, || read(ctx))
            .map(|handle| handle.join())
    });
    match outcome {
        Ok(Ok(snapshot)) => snapshot,
        // A panic is a bug in meshc or saphyr: let it surface as one.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(err) => {
            ctx.bad_file(0..0, format!("cannot start a thread to read it: {err}"));
            Snapshot::default()
        }
    }
}

/// Finds a line that could start a block collection past [`MAX_BLOCK_COLUMN`], returning the
/// line's byte offset and that column.
///
/// This bounds the recursion of saphyr's parser, which has no depth limit of its own: along a
/// chain of nested block collections the starting columns never decrease and grow at least every
/// second level, and a block collection starts either at a line's first token or after the
/// compact indicators (`- `, `? `, `: `), node properties (`&a`, `!t`) and document markers that
/// begin its line. So the depth is at most twice the widest such prefix. Wrong guesses (a `- `
/// inside a quoted string) only make the bound larger.
fn deep_line(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start <= bytes.len() {
        // YAML breaks lines at `\n` and at `\r`, as saphyr does.
        let end = bytes[start..].iter().position(|it| matches!(it, b'\n' | b'\r')).map_or(bytes.len(), |it| start + it);
        let column = structure_width(&bytes[start..end]);
        if column > MAX_BLOCK_COLUMN {
            return Some((start, column));
        }
        start = end + 1;
    }
    None
}

/// The width of a line's indentation, compact indicators, node properties and document markers.
fn structure_width(line: &[u8]) -> usize {
    let separated = |at: usize| line.get(at).is_none_or(|it| matches!(it, b' ' | b'\t'));
    let mut at = 0;
    loop {
        let rest = &line[at..];
        match rest.first() {
            Some(b' ' | b'\t') => at += 1,
            Some(b'-' | b'?' | b':') if separated(at + 1) => at += 1,
            Some(b'-' | b'.') if (rest.starts_with(b"---") || rest.starts_with(b"...")) && separated(at + 3) => at += 3,
            Some(b'&' | b'!') => {
                while line.get(at).is_some_and(|it| !matches!(it, b' ' | b'\t')) {
                    at += 1;
                }
            }
            // A byte-order mark, which saphyr skips.
            Some(0xEF) if rest.starts_with("\u{feff}".as_bytes()) => at += 3,
            _ => return at,
        }
    }
}

/// Parses the snapshot and reads its objects; runs on the reading thread.
fn read(ctx: &mut Ctx<'_>) -> Snapshot {
    let source = Source::new(ctx.text);
    let Some(documents) = parse(ctx, &source) else { return Snapshot::default() };
    let nodes: Vec<Node<'_>> = match &documents {
        Documents::Yaml(documents) => documents.iter().map(Node::Yaml).collect(),
        Documents::Json(documents) => documents.iter().map(Node::Json).collect(),
    };
    let mut reader = Reader::new(ctx, &source);
    for (index, node) in nodes.into_iter().enumerate() {
        // An empty document (a stray `---`) holds nothing.
        if !node.is_null() {
            reader.object(node, &format!("document {}", index + 1), 0, None);
        }
    }
    reader.finish()
}

/// The parsed documents.
enum Documents<'t> {
    Yaml(Vec<MarkedYaml<'t>>),
    Json(Vec<Json>),
}

/// Parses with saphyr; JSON that saphyr rejects (surrogate-pair escapes, duplicate keys,
/// concatenated values) is parsed again with serde_json, whose error is reported if it fails too.
fn parse<'t>(ctx: &mut Ctx<'_>, source: &Source<'t>) -> Option<Documents<'t>> {
    let error = match MarkedYaml::load_from_str(source.text) {
        Ok(documents) => return Some(Documents::Yaml(documents)),
        Err(error) => error,
    };
    let body = source.text.strip_prefix('\u{feff}').unwrap_or(source.text);
    if body.trim_start().starts_with(['{', '[']) {
        match json_documents(source.text, body) {
            Ok(documents) => return Some(Documents::Json(documents)),
            Err((at, message)) => {
                ctx.bad_file(at..at, message);
                return None;
            }
        }
    }
    let at = source.byte(error.marker().index());
    ctx.bad_file(at..at, format!("invalid YAML: {}", error.info()));
    None
}

/// The snapshot's text, and the byte offsets of saphyr's character offsets.
struct Source<'t> {
    text: &'t str,
    /// The byte offset of every [`Source::STEP`]th character; empty when the text is ASCII.
    checkpoints: Vec<usize>,
}

impl<'t> Source<'t> {
    const STEP: usize = 64;

    fn new(text: &'t str) -> Source<'t> {
        let checkpoints = if text.is_ascii() { Vec::new() } else { text.char_indices().step_by(Self::STEP).map(|(at, _)| at).collect() };
        Source { text, checkpoints }
    }

    /// The byte offset of a character offset.
    fn byte(&self, char_index: usize) -> usize {
        if self.checkpoints.is_empty() {
            return char_index.min(self.text.len());
        }
        let Some(&base) = self.checkpoints.get(char_index / Self::STEP) else { return self.text.len() };
        self.text[base..].char_indices().nth(char_index % Self::STEP).map_or(self.text.len(), |(at, _)| base + at)
    }

    /// A YAML node's byte range: a flow collection's closing bracket included, the blank space
    /// after a block collection left out.
    fn yaml_span(&self, node: &MarkedYaml<'_>) -> Range<usize> {
        let start = self.byte(node.span.start.index());
        let mut end = self.byte(node.span.end.index()).max(start);
        let bytes = self.text.as_bytes();
        if matches!(bytes.get(start), Some(b'[' | b'{')) && matches!(bytes.get(end), Some(b']' | b'}')) {
            end += 1;
        }
        start..start + self.text[start..end].trim_end().len()
    }
}

/// A JSON value and its byte range, for JSON that saphyr cannot read.
#[derive(Debug)]
struct Json {
    span: Range<usize>,
    value: JsonValue,
}

#[derive(Debug)]
enum JsonValue {
    Null,
    Bool(bool),
    Int(i64),
    /// Any other number; its text is in the span.
    Number,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Parses a stream of JSON values; `body` is `text` without its byte-order mark. An error is
/// its byte offset in `text` and its message.
fn json_documents(text: &str, body: &str) -> Result<Vec<Json>, (usize, String)> {
    let mut documents = Vec::new();
    for raw in serde_json::Deserializer::from_str(body).into_iter::<&RawValue>() {
        let raw = raw.map_err(|err| (super::json_error_offset(body, &err) + (text.len() - body.len()), format!("invalid JSON: {err}")))?;
        documents.push(json_node(text, raw, 0)?);
    }
    Ok(documents)
}

/// How deep JSON may nest: serde_json's own limit, which it does not apply to raw values.
const MAX_JSON_DEPTH: usize = 128;

/// Builds a value from its raw text, one level at a time.
fn json_node(text: &str, raw: &RawValue, depth: usize) -> Result<Json, (usize, String)> {
    let json = raw.get();
    let start = json.as_ptr() as usize - text.as_ptr() as usize;
    if depth > MAX_JSON_DEPTH {
        return Err((start, format!("invalid JSON: nested more than {MAX_JSON_DEPTH} levels deep")));
    }
    // Raw values are checked for syntax only: what is left to fail (a lone surrogate escape) is
    // reported where it is, without serde_json's position, which counts from `json`.
    let fail = |err: serde_json::Error| {
        let message = err.to_string();
        let message = message.rfind(" at line ").map_or(message.as_str(), |at| &message[..at]);
        (start + super::json_error_offset(json, &err), format!("invalid JSON: {message}"))
    };
    let value = match json.as_bytes().first() {
        Some(b'{') => JsonValue::Object(
            serde_json::from_str::<BTreeMap<String, &RawValue>>(json)
                .map_err(fail)?
                .into_iter()
                .map(|(key, value)| Ok((key, json_node(text, value, depth + 1)?)))
                .collect::<Result<_, _>>()?,
        ),
        Some(b'[') => JsonValue::Array(
            serde_json::from_str::<Vec<&RawValue>>(json)
                .map_err(fail)?
                .into_iter()
                .map(|it| json_node(text, it, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        _ => match serde_json::from_str::<serde_json::Value>(json).map_err(fail)? {
            serde_json::Value::Bool(it) => JsonValue::Bool(it),
            serde_json::Value::Number(it) => it.as_i64().map_or(JsonValue::Number, JsonValue::Int),
            serde_json::Value::String(it) => JsonValue::Str(it),
            _ => JsonValue::Null,
        },
    };
    Ok(Json { span: start..start + json.len(), value })
}

/// A node of either parse tree.
#[derive(Clone, Copy, Debug)]
enum Node<'a> {
    Yaml(&'a MarkedYaml<'a>),
    Json(&'a Json),
}

/// A YAML node's data, under its tags.
fn untagged<'a>(mut node: &'a MarkedYaml<'a>) -> &'a YamlData<'a, MarkedYaml<'a>> {
    while let YamlData::Tagged(_, inner) = &node.data {
        node = inner;
    }
    &node.data
}

impl<'a> Node<'a> {
    fn span(self, source: &Source<'_>) -> Range<usize> {
        match self {
            Node::Yaml(node) => source.yaml_span(node),
            Node::Json(node) => node.span.clone(),
        }
    }

    fn is_null(self) -> bool {
        match self {
            Node::Yaml(node) => matches!(untagged(node), YamlData::Value(Scalar::Null) | YamlData::BadValue),
            Node::Json(node) => matches!(node.value, JsonValue::Null),
        }
    }

    fn is_map(self) -> bool {
        match self {
            Node::Yaml(node) => matches!(untagged(node), YamlData::Mapping(_)),
            Node::Json(node) => matches!(node.value, JsonValue::Object(_)),
        }
    }

    /// What the node is, for messages.
    fn what(self) -> &'static str {
        match self {
            Node::Yaml(node) => match untagged(node) {
                YamlData::Value(Scalar::Null) => "null",
                YamlData::Value(Scalar::Boolean(_)) => "a boolean",
                YamlData::Value(Scalar::Integer(_)) => "an integer",
                YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
                YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
                YamlData::Sequence(_) => "a sequence",
                YamlData::Mapping(_) => "a mapping",
                YamlData::Alias(_) => "an alias",
                YamlData::BadValue | YamlData::Tagged(..) => "an invalid value",
            },
            Node::Json(node) => match node.value {
                JsonValue::Null => "null",
                JsonValue::Bool(_) => "a boolean",
                JsonValue::Int(_) => "an integer",
                JsonValue::Number => "a number",
                JsonValue::Str(_) => "a string",
                JsonValue::Array(_) => "a sequence",
                JsonValue::Object(_) => "a mapping",
            },
        }
    }

    /// A mapping's value for `key`; `None` when absent, null, or not a mapping.
    fn get(self, key: &str) -> Option<Node<'a>> {
        let value = match self {
            Node::Yaml(node) => Node::Yaml(untagged(node).as_mapping_get(key)?),
            Node::Json(node) => match &node.value {
                JsonValue::Object(entries) => Node::Json(&entries.iter().find(|(it, _)| it == key)?.1),
                _ => return None,
            },
        };
        (!value.is_null()).then_some(value)
    }

    fn items(self) -> Option<Vec<Node<'a>>> {
        match self {
            Node::Yaml(node) => Some(untagged(node).as_vec()?.iter().map(Node::Yaml).collect()),
            Node::Json(node) => match &node.value {
                JsonValue::Array(items) => Some(items.iter().map(Node::Json).collect()),
                _ => None,
            },
        }
    }

    /// A mapping's entries, keys as text.
    fn entries(self, source: &Source<'a>) -> Option<Vec<(Cow<'a, str>, Node<'a>)>> {
        match self {
            Node::Yaml(node) => {
                let entries = untagged(node).as_mapping()?.iter();
                Some(entries.map(|(key, value)| (Node::Yaml(key).scalar_text(source).unwrap_or_default(), Node::Yaml(value))).collect())
            }
            Node::Json(node) => match &node.value {
                JsonValue::Object(entries) => {
                    Some(entries.iter().map(|(key, value)| (Cow::Borrowed(key.as_str()), Node::Json(value))).collect())
                }
                _ => None,
            },
        }
    }

    fn str(self) -> Option<&'a str> {
        match self {
            Node::Yaml(node) => untagged(node).as_str(),
            Node::Json(node) => match &node.value {
                JsonValue::Str(it) => Some(it),
                _ => None,
            },
        }
    }

    fn int(self) -> Option<i64> {
        match self {
            Node::Yaml(node) => untagged(node).as_integer(),
            Node::Json(node) => match node.value {
                JsonValue::Int(it) => Some(it),
                _ => None,
            },
        }
    }

    fn bool(self) -> Option<bool> {
        match self {
            Node::Yaml(node) => untagged(node).as_bool(),
            Node::Json(node) => match node.value {
                JsonValue::Bool(it) => Some(it),
                _ => None,
            },
        }
    }

    /// A scalar as text: a string's value, or another scalar as written (`1.10` stays `1.10`).
    fn scalar_text(self, source: &Source<'a>) -> Option<Cow<'a, str>> {
        if let Some(text) = self.str() {
            return Some(Cow::Borrowed(text));
        }
        let scalar = match self {
            Node::Yaml(node) => matches!(untagged(node), YamlData::Value(_)),
            Node::Json(node) => matches!(node.value, JsonValue::Bool(_) | JsonValue::Int(_) | JsonValue::Number),
        };
        scalar.then(|| Cow::Borrowed(&source.text[self.span(source)]))
    }
}

/// A malformed field: where, and what is wrong.
#[derive(Debug)]
struct Problem {
    at: Range<usize>,
    message: String,
}

type Found<T> = Result<T, Problem>;

fn problem(source: &Source<'_>, node: Node<'_>, message: String) -> Problem {
    Problem { at: node.span(source), message }
}

fn wrong_type(source: &Source<'_>, node: Node<'_>, path: &str, expected: &str) -> Problem {
    problem(source, node, format!("`{path}` is {}, not {expected}", node.what()))
}

fn field_str<'a>(source: &Source<'a>, parent: Node<'a>, key: &str, path: &str) -> Found<Option<&'a str>> {
    match parent.get(key) {
        None => Ok(None),
        Some(node) => node.str().map(Some).ok_or_else(|| wrong_type(source, node, path, "a string")),
    }
}

fn field_map<'a>(source: &Source<'a>, parent: Node<'a>, key: &str, path: &str) -> Found<Option<Node<'a>>> {
    match parent.get(key) {
        Some(node) if !node.is_map() => Err(wrong_type(source, node, path, "a mapping")),
        other => Ok(other),
    }
}

/// A sequence field; absent or null is empty.
fn field_seq<'a>(source: &Source<'a>, parent: Node<'a>, key: &str, path: &str) -> Found<Vec<Node<'a>>> {
    match parent.get(key) {
        None => Ok(Vec::new()),
        Some(node) => node.items().ok_or_else(|| wrong_type(source, node, path, "a sequence")),
    }
}

fn field_bool<'a>(source: &Source<'a>, parent: Node<'a>, key: &str, path: &str) -> Found<Option<bool>> {
    match parent.get(key) {
        None => Ok(None),
        Some(node) => node.bool().map(Some).ok_or_else(|| wrong_type(source, node, path, "a boolean")),
    }
}

fn port_number(source: &Source<'_>, node: Node<'_>, path: &str) -> Found<u16> {
    match node.int() {
        Some(number) => u16::try_from(number)
            .ok()
            .filter(|it| *it != 0)
            .ok_or_else(|| problem(source, node, format!("`{path}` is {number}, not a port number (1 to 65535)"))),
        None => Err(wrong_type(source, node, path, "a port number")),
    }
}

/// A map of strings (labels); other scalars are kept as written, null as the empty string.
fn string_map<'a>(source: &Source<'a>, node: Option<Node<'a>>, path: &str) -> Found<BTreeMap<String, String>> {
    let Some(node) = node else { return Ok(BTreeMap::new()) };
    let entries = node.entries(source).ok_or_else(|| wrong_type(source, node, path, "a mapping"))?;
    entries
        .into_iter()
        .map(|(key, value)| {
            let text = if value.is_null() {
                Cow::Borrowed("")
            } else {
                value.scalar_text(source).ok_or_else(|| wrong_type(source, value, &format!("{path}.{key}"), "a string"))?
            };
            Ok((key.into_owned(), text.into_owned()))
        })
        .collect()
}

/// The protocol of a port: `appProtocol`, else Istio's port-name convention (`http-web` is HTTP).
fn port_protocol(app_protocol: Option<&str>, name: Option<&str>) -> Option<Protocol> {
    app_protocol
        .and_then(super::protocol_from_name)
        .or_else(|| name.and_then(|it| super::protocol_from_name(it.split('-').next().unwrap_or(it))))
}

/// Whether a port's `protocol` is TCP (the default); UDP and SCTP ports are not routed.
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|it| it.eq_ignore_ascii_case("TCP"))
}

/// What an address must be: an EndpointSlice's `addressType`, or an `Endpoints` IP.
#[derive(Clone, Copy, Debug)]
enum AddressKind {
    V4,
    V6,
    Ip,
    Any,
}

impl AddressKind {
    fn of_slice(address_type: Option<&str>) -> AddressKind {
        match address_type {
            Some("IPv4") => AddressKind::V4,
            Some("IPv6") => AddressKind::V6,
            _ => AddressKind::Any,
        }
    }

    /// Checks an address. A host name's last label may not be all digits (RFC 1123), so that
    /// `10.0.0.300` is a bad IP address rather than a name.
    fn check(self, address: &str) -> Result<(), &'static str> {
        let (ok, expected) = match self {
            AddressKind::V4 => (address.parse::<Ipv4Addr>().is_ok(), "an IPv4 address"),
            AddressKind::V6 => (address.parse::<Ipv6Addr>().is_ok(), "an IPv6 address"),
            AddressKind::Ip => (address.parse::<IpAddr>().is_ok(), "an IP address"),
            AddressKind::Any => (
                address.parse::<IpAddr>().is_ok()
                    || (super::is_address(address) && !address.rsplit('.').next().is_some_and(|it| it.bytes().all(|b| b.is_ascii_digit()))),
                "an IP address or a host name",
            ),
        };
        if ok { Ok(()) } else { Err(expected) }
    }
}

/// The kind and version of the items of a typed list: `EndpointSlice` and
/// `discovery.k8s.io/v1` for an `EndpointSliceList` of that version.
#[derive(Clone, Copy, Debug)]
struct ItemType<'a> {
    kind: &'a str,
    api_version: Option<&'a str>,
}

/// An object's metadata.
struct Meta<'a> {
    name: &'a str,
    namespace: String,
    labels: Option<Node<'a>>,
    resource_version: Option<String>,
}

/// A set of endpoints for one service: an EndpointSlice or a subset of an `Endpoints`.
#[derive(Debug)]
struct Group {
    from_slice: bool,
    namespace: String,
    service: String,
    ports: Vec<GroupPort>,
    endpoints: Vec<Endpoint>,
    span: super::Span,
    entry: String,
}

/// The ports of a service that only slices or `Endpoints` name, each with the group that first
/// gives it.
type OrphanPorts<'g> = Vec<(Port, &'g Group)>;

#[derive(Debug)]
struct GroupPort {
    name: Option<String>,
    number: u16,
    protocol: Option<Protocol>,
}

#[derive(Debug)]
struct Endpoint {
    addresses: Vec<String>,
    health: Health,
    zone: Option<String>,
    region: Option<String>,
    node: Option<String>,
    /// The Pod of the `targetRef`: (namespace, name).
    pod: Option<(String, String)>,
    span: super::Span,
}

/// Collects the objects of a snapshot, then joins them.
struct Reader<'r, 'c, 'a> {
    ctx: &'r mut Ctx<'c>,
    source: &'r Source<'a>,
    services: Vec<Service>,
    /// Every Service object read, including those left out (ExternalName, no TCP port).
    declared: BTreeSet<(String, String)>,
    groups: Vec<Group>,
    pods: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// (namespace, IP) → the pod with that IP, `None` when several pods share it (host network).
    pod_ips: BTreeMap<(String, String), Option<(String, String)>>,
    nodes: BTreeMap<String, Locality>,
    list_versions: Vec<String>,
    object_versions: Vec<String>,
}

impl<'r, 'c, 'a> Reader<'r, 'c, 'a> {
    fn new(ctx: &'r mut Ctx<'c>, source: &'r Source<'a>) -> Self {
        Reader {
            ctx,
            source,
            services: Vec::new(),
            declared: BTreeSet::new(),
            groups: Vec::new(),
            pods: BTreeMap::new(),
            pod_ips: BTreeMap::new(),
            nodes: BTreeMap::new(),
            list_versions: Vec::new(),
            object_versions: Vec::new(),
        }
    }

    fn report(&mut self, problem: Problem, entry: &str) {
        let span = self.ctx.span(problem.at);
        self.ctx.bad_entry(span, entry, problem.message);
    }

    fn skip(&mut self, node: Node<'a>, entry: &str, message: impl std::fmt::Display) {
        let span = self.ctx.span(node.span(self.source));
        self.ctx.bad_entry(span, entry, message);
    }

    /// Reads one object, or the items of a `List`. `typed` is what the items of a typed list
    /// (`EndpointSliceList`, `PodList`) are, for items that do not say it themselves.
    fn object(&mut self, node: Node<'a>, what: &str, depth: usize, typed: Option<ItemType<'a>>) {
        let source = self.source;
        if !node.is_map() {
            self.skip(node, what, format!("expected a Kubernetes object (a mapping), found {}", node.what()));
            return;
        }
        let kind_and_version =
            field_str(source, node, "kind", "kind").and_then(|kind| Ok((kind, field_str(source, node, "apiVersion", "apiVersion")?)));
        let (kind, api_version) = match (kind_and_version, typed) {
            // The API server leaves `kind` and `apiVersion` out of the items of a typed list
            // (`kubectl get --raw`, client-go's `List` calls): the list's kind and version say them.
            (Ok((None, api_version)), Some(typed)) => (typed.kind, api_version.or(typed.api_version)),
            (Ok((Some(kind), api_version)), typed) => {
                (kind, api_version.or_else(|| typed.filter(|it| it.kind == kind).and_then(|it| it.api_version)))
            }
            (Ok((None, _)), None) => return self.skip(node, what, "the object has no `kind`"),
            (Err(problem), _) => return self.report(problem, what),
        };
        // Kinds of other API groups share names with these (Knative's `Service`): check the group.
        let core = api_version.is_none_or(|it| it == "v1");
        match kind {
            "List" => self.list(node, what, depth, None),
            _ if kind.ends_with("List") && node.get("items").is_some() => {
                let item = kind.strip_suffix("List").filter(|it| !it.is_empty()).map(|kind| ItemType { kind, api_version });
                self.list(node, what, depth, item);
            }
            "Service" if core => self.service(node, what),
            "EndpointSlice" if api_version.is_none_or(|it| it.starts_with("discovery.k8s.io/")) => self.slice(node, what),
            "Endpoints" if core => self.endpoints(node, what),
            "Pod" if core => self.pod(node, what),
            "Node" if core => self.node(node, what),
            _ => {}
        }
    }

    fn list(&mut self, node: Node<'a>, what: &str, depth: usize, typed: Option<ItemType<'a>>) {
        let source = self.source;
        if depth >= MAX_LIST_DEPTH {
            return self.skip(node, what, format!("Lists nest more than {MAX_LIST_DEPTH} deep"));
        }
        let version = field_map(source, node, "metadata", "metadata").map(|it| it.and_then(|it| it.get("resourceVersion")));
        if let Ok(Some(version)) = version
            && let Some(version) = version.scalar_text(source).filter(|it| !it.is_empty())
        {
            self.list_versions.push(version.into_owned());
        }
        match field_seq(source, node, "items", "items") {
            Ok(items) => {
                for (index, item) in items.into_iter().enumerate() {
                    self.object(item, &format!("{what}, item {}", index + 1), depth + 1, typed);
                }
            }
            Err(problem) => self.report(problem, what),
        }
    }

    /// Reads `metadata`, reporting a malformed one as `{kind} in {what}`.
    fn meta(&mut self, node: Node<'a>, kind: &str, what: &str) -> Option<Meta<'a>> {
        let source = self.source;
        let meta = (|| {
            let Some(metadata) = field_map(source, node, "metadata", "metadata")? else {
                return Err(problem(source, node, "the object has no `metadata`".to_owned()));
            };
            let name = field_str(source, metadata, "name", "metadata.name")?
                .ok_or_else(|| problem(source, metadata, "the object has no `metadata.name`".to_owned()))?;
            let namespace = field_str(source, metadata, "namespace", "metadata.namespace")?.unwrap_or(self.ctx.namespace).to_owned();
            let resource_version =
                metadata.get("resourceVersion").and_then(|it| it.scalar_text(source)).filter(|it| !it.is_empty()).map(Cow::into_owned);
            Ok(Meta { name, namespace, labels: metadata.get("labels"), resource_version })
        })();
        match meta {
            Ok(meta) => {
                self.object_versions.extend(meta.resource_version.clone());
                Some(meta)
            }
            Err(problem) => {
                self.report(problem, &format!("{kind} in {what}"));
                None
            }
        }
    }

    /// Checks that a namespace and a service name are DNS labels, as Kubernetes requires.
    fn check_names(&mut self, node: Node<'a>, entry: &str, namespace: &str, name: &str) -> bool {
        for (what, value) in [("namespace", namespace), ("service name", name)] {
            if !crate::manifest::is_dns_label(value) {
                self.skip(node, entry, format!("`{value}` is not a valid {what} (a DNS label)"));
                return false;
            }
        }
        true
    }

    fn service(&mut self, node: Node<'a>, what: &str) {
        let source = self.source;
        let Some(meta) = self.meta(node, "Service", what) else { return };
        let entry = format!("Service {}/{}", meta.namespace, meta.name);
        if !self.check_names(node, &entry, &meta.namespace, meta.name) {
            return;
        }
        self.declared.insert((meta.namespace.clone(), meta.name.to_owned()));
        let ports = (|| {
            let Some(spec) = field_map(source, node, "spec", "spec")? else { return Ok(Vec::new()) };
            if field_str(source, spec, "type", "spec.type")? == Some("ExternalName") {
                return Ok(Vec::new());
            }
            field_seq(source, spec, "ports", "spec.ports")
        })();
        let ports = match ports {
            Ok(ports) => ports,
            Err(problem) => return self.report(problem, &entry),
        };
        let mut declared = Vec::new();
        for (index, port) in ports.into_iter().enumerate() {
            match service_port(source, port, index) {
                Ok(Some(port)) => declared.push(port),
                Ok(None) => {}
                Err(problem) => self.report(problem, &entry),
            }
        }
        if declared.is_empty() {
            return;
        }
        let span = self.ctx.span(node.span(source));
        self.services.push(Service {
            namespace: meta.namespace,
            name: meta.name.to_owned(),
            rpc: None,
            protocol: None,
            ports: declared,
            methods: None,
            span,
            entry,
        });
    }

    fn slice(&mut self, node: Node<'a>, what: &str) {
        let source = self.source;
        let Some(meta) = self.meta(node, "EndpointSlice", what) else { return };
        let entry = format!("EndpointSlice {}/{}", meta.namespace, meta.name);
        let header = (|| {
            let labels = string_map(source, meta.labels, "metadata.labels")?;
            let address_type = field_str(source, node, "addressType", "addressType")?;
            Ok((labels, address_type))
        })();
        let (labels, address_type) = match header {
            Ok(header) => header,
            Err(problem) => return self.report(problem, &entry),
        };
        let Some(service) = labels.get(SERVICE_NAME_LABEL) else {
            return self.skip(node, &entry, format!("the slice has no `{SERVICE_NAME_LABEL}` label, so its service is unknown"));
        };
        if !self.check_names(node, &entry, &meta.namespace, service) {
            return;
        }
        let Some(ports) = self.group_ports(node, "ports", &entry) else { return };
        let endpoints = match field_seq(source, node, "endpoints", "endpoints") {
            Ok(endpoints) => endpoints,
            Err(problem) => return self.report(problem, &entry),
        };
        let kind = AddressKind::of_slice(address_type);
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .filter_map(|(index, endpoint)| self.endpoint(endpoint, &format!("{entry} endpoint {}", index + 1), &meta.namespace, kind))
            .collect();
        let span = self.ctx.span(node.span(source));
        self.groups.push(Group { from_slice: true, namespace: meta.namespace, service: service.clone(), ports, endpoints, span, entry });
    }

    /// Reads the ports of a slice (`ports`) or of an `Endpoints` subset, skipping UDP and SCTP
    /// ones; `None` when the field itself is malformed.
    fn group_ports(&mut self, node: Node<'a>, path: &str, entry: &str) -> Option<Vec<GroupPort>> {
        let source = self.source;
        let ports = match field_seq(source, node, "ports", path) {
            Ok(ports) => ports,
            Err(problem) => {
                self.report(problem, entry);
                return None;
            }
        };
        let mut read = Vec::new();
        for (index, port) in ports.into_iter().enumerate() {
            let path = format!("{path}[{index}]");
            let port = (|| {
                if !port.is_map() {
                    return Err(wrong_type(source, port, &path, "a mapping"));
                }
                if !is_tcp(field_str(source, port, "protocol", &format!("{path}.protocol"))?) {
                    return Ok(None);
                }
                let name = field_str(source, port, "name", &format!("{path}.name"))?;
                let app_protocol = field_str(source, port, "appProtocol", &format!("{path}.appProtocol"))?;
                let number = match port.get("port") {
                    Some(number) => port_number(source, number, &format!("{path}.port"))?,
                    None => return Err(problem(source, port, format!("`{path}` has no `port`"))),
                };
                Ok(Some(GroupPort { name: name.map(str::to_owned), number, protocol: port_protocol(app_protocol, name) }))
            })();
            match port {
                Ok(Some(port)) => read.push(port),
                Ok(None) => {}
                Err(problem) => self.report(problem, entry),
            }
        }
        Some(read)
    }

    /// Reads one endpoint of a slice; bad addresses are reported and left out one by one.
    fn endpoint(&mut self, node: Node<'a>, entry: &str, namespace: &str, kind: AddressKind) -> Option<Endpoint> {
        let source = self.source;
        let fields = (|| {
            if !node.is_map() {
                return Err(problem(source, node, format!("expected an endpoint (a mapping), found {}", node.what())));
            }
            let addresses = field_seq(source, node, "addresses", "addresses")?;
            if addresses.is_empty() {
                return Err(problem(source, node, "the endpoint has no `addresses`".to_owned()));
            }
            let (ready, serving, terminating) = match field_map(source, node, "conditions", "conditions")? {
                Some(conditions) => (
                    field_bool(source, conditions, "ready", "conditions.ready")?,
                    field_bool(source, conditions, "serving", "conditions.serving")?,
                    field_bool(source, conditions, "terminating", "conditions.terminating")?,
                ),
                None => (None, None, None),
            };
            let health = match (ready, serving, terminating) {
                (Some(true), _, _) => Health::Healthy,
                (Some(false), Some(true), Some(true)) => Health::Draining,
                (Some(false), _, _) => Health::Unhealthy,
                // The API reads a missing `ready` as "unknown, probably ready".
                (None, _, _) => Health::Unknown,
            };
            // v1beta1 puts the zone, node and region in a `topology` map.
            let topology = string_map(source, node.get("topology"), "topology")?;
            let topology = |keys: &[&str]| keys.iter().find_map(|it| topology.get(*it).cloned());
            let zone = field_str(source, node, "zone", "zone")?
                .map(str::to_owned)
                .or_else(|| topology(&["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"]));
            let region = topology(&["topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"]);
            let node_name =
                field_str(source, node, "nodeName", "nodeName")?.map(str::to_owned).or_else(|| topology(&["kubernetes.io/hostname"]));
            let pod = target_pod(source, node, namespace)?;
            Ok((addresses, health, zone, region, node_name, pod))
        })();
        let (address_nodes, health, zone, region, node_name, pod) = match fields {
            Ok(fields) => fields,
            Err(problem) => {
                self.report(problem, entry);
                return None;
            }
        };
        let mut addresses = Vec::new();
        for (index, address) in address_nodes.into_iter().enumerate() {
            match address.str() {
                None => self.report(wrong_type(source, address, &format!("addresses[{index}]"), "a string"), entry),
                Some(text) => match kind.check(text) {
                    Ok(()) => addresses.push(text.to_owned()),
                    Err(expected) => self.skip(address, entry, format!("`{text}` is not {expected}")),
                },
            }
        }
        let span = self.ctx.span(node.span(source));
        Some(Endpoint { addresses, health, zone, region, node: node_name, pod, span })
    }

    fn endpoints(&mut self, node: Node<'a>, what: &str) {
        let source = self.source;
        let Some(meta) = self.meta(node, "Endpoints", what) else { return };
        let entry = format!("Endpoints {}/{}", meta.namespace, meta.name);
        if !self.check_names(node, &entry, &meta.namespace, meta.name) {
            return;
        }
        let subsets = match field_seq(source, node, "subsets", "subsets") {
            Ok(subsets) => subsets,
            Err(problem) => return self.report(problem, &entry),
        };
        for (index, subset) in subsets.into_iter().enumerate() {
            let path = format!("subsets[{index}]");
            if !subset.is_map() {
                self.report(wrong_type(source, subset, &path, "a mapping"), &entry);
                continue;
            }
            let Some(ports) = self.group_ports(subset, &format!("{path}.ports"), &entry) else { continue };
            let mut endpoints = Vec::new();
            for (key, health, label) in
                [("addresses", Health::Healthy, "address"), ("notReadyAddresses", Health::Unhealthy, "not-ready address")]
            {
                let addresses = match field_seq(source, subset, key, &format!("{path}.{key}")) {
                    Ok(addresses) => addresses,
                    Err(problem) => {
                        self.report(problem, &entry);
                        continue;
                    }
                };
                for (number, address) in addresses.into_iter().enumerate() {
                    let address_entry = format!("{entry} subset {} {label} {}", index + 1, number + 1);
                    endpoints.extend(self.legacy_address(address, &address_entry, &meta.namespace, health));
                }
            }
            let span = self.ctx.span(subset.span(source));
            self.groups.push(Group {
                from_slice: false,
                namespace: meta.namespace.clone(),
                service: meta.name.to_owned(),
                ports,
                endpoints,
                span,
                entry: entry.clone(),
            });
        }
    }

    /// Reads one address of an `Endpoints` subset.
    fn legacy_address(&mut self, node: Node<'a>, entry: &str, namespace: &str, health: Health) -> Option<Endpoint> {
        let source = self.source;
        let fields = (|| {
            if !node.is_map() {
                return Err(problem(source, node, format!("expected an address (a mapping), found {}", node.what())));
            }
            let ip = field_str(source, node, "ip", "ip")?.ok_or_else(|| problem(source, node, "the address has no `ip`".to_owned()))?;
            if let Err(expected) = AddressKind::Ip.check(ip) {
                return Err(problem(source, node.get("ip").unwrap_or(node), format!("`{ip}` is not {expected}")));
            }
            let node_name = field_str(source, node, "nodeName", "nodeName")?;
            Ok((ip, node_name, target_pod(source, node, namespace)?))
        })();
        match fields {
            Ok((ip, node_name, pod)) => Some(Endpoint {
                addresses: vec![ip.to_owned()],
                health,
                zone: None,
                region: None,
                node: node_name.map(str::to_owned),
                pod,
                span: self.ctx.span(node.span(source)),
            }),
            Err(problem) => {
                self.report(problem, entry);
                None
            }
        }
    }

    fn pod(&mut self, node: Node<'a>, what: &str) {
        let source = self.source;
        let Some(meta) = self.meta(node, "Pod", what) else { return };
        let entry = format!("Pod {}/{}", meta.namespace, meta.name);
        let fields = (|| {
            let labels = string_map(source, meta.labels, "metadata.labels")?;
            let mut ips = Vec::new();
            if let Some(status) = field_map(source, node, "status", "status")? {
                ips.extend(field_str(source, status, "podIP", "status.podIP")?);
                for (index, item) in field_seq(source, status, "podIPs", "status.podIPs")?.into_iter().enumerate() {
                    if item.is_map() {
                        ips.extend(field_str(source, item, "ip", &format!("status.podIPs[{index}].ip"))?);
                    }
                }
            }
            Ok((labels, ips))
        })();
        let (labels, ips) = match fields {
            Ok(fields) => fields,
            Err(problem) => return self.report(problem, &entry),
        };
        let key = (meta.namespace.clone(), meta.name.to_owned());
        for ip in ips {
            self.pod_ips
                .entry((meta.namespace.clone(), ip.to_owned()))
                .and_modify(|it| {
                    if it.as_ref() != Some(&key) {
                        *it = None;
                    }
                })
                .or_insert_with(|| Some(key.clone()));
        }
        self.pods.entry(key).or_insert(labels);
    }

    fn node(&mut self, node: Node<'a>, what: &str) {
        let Some(meta) = self.meta(node, "Node", what) else { return };
        let labels = match string_map(self.source, meta.labels, "metadata.labels") {
            Ok(labels) => labels,
            Err(problem) => return self.report(problem, &format!("Node {}", meta.name)),
        };
        let label = |keys: &[&str]| keys.iter().find_map(|it| labels.get(*it).cloned());
        let locality = Locality {
            region: label(&["topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"]),
            zone: label(&["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"]),
            subzone: label(&["topology.istio.io/subzone"]),
        };
        self.nodes.entry(meta.name.to_owned()).or_insert(locality);
    }

    /// Joins what was read into a snapshot.
    fn finish(self) -> Snapshot {
        let version = pick_version(&self.list_versions).or_else(|| max_version(&self.object_versions));
        let mut services = self.services;
        let routed: BTreeSet<(String, String)> = services.iter().map(|it| (it.namespace.clone(), it.name.clone())).collect();
        let sliced: BTreeSet<(&str, &str)> =
            self.groups.iter().filter(|it| it.from_slice).map(|it| (it.namespace.as_str(), it.service.as_str())).collect();
        let groups: Vec<&Group> =
            self.groups.iter().filter(|it| it.from_slice || !sliced.contains(&(it.namespace.as_str(), it.service.as_str()))).collect();

        // Services that only slices or `Endpoints` name: without the Service, the groups' own
        // ports are all there is to go on, so the service's ports are their union, known by
        // name as a Service's ports are. So a slice with no endpoints (`"endpoints": null` when
        // scaled to zero) still gives a service, which clients can resolve and call.
        let mut orphans: BTreeMap<(String, String), (&Group, OrphanPorts<'_>)> = BTreeMap::new();
        let mut conflicts: Vec<Diagnostic> = Vec::new();
        let mut reported: BTreeSet<(String, String, Option<String>, u16)> = BTreeSet::new();
        for group in &groups {
            let key = (group.namespace.clone(), group.service.clone());
            if self.declared.contains(&key) {
                continue;
            }
            let (_, ports) = orphans.entry(key.clone()).or_insert_with(|| (group, Vec::new()));
            for port in &group.ports {
                let name = port.name.as_deref().filter(|it| !it.is_empty());
                if let Some((existing, first)) = ports.iter_mut().find(|(it, _)| it.name.as_deref() == name) {
                    existing.protocol = existing.protocol.or(port.protocol);
                    // A named `targetPort` can resolve to other numbers in other pods, and the
                    // slice controller then puts those pods in slices of their own. The
                    // service port's number is a guess either way: take the first.
                    if existing.number != port.number && reported.insert((key.0.clone(), key.1.clone(), existing.name.clone(), port.number))
                    {
                        conflicts.push(port_number_conflict(
                            &self.ctx.registry.name,
                            &key,
                            name,
                            (existing.number, first),
                            (port.number, group),
                        ));
                    }
                    continue;
                }
                // Two port names with one number are two Service ports with one target: one
                // service port serves both, and instances find it by their port.
                if ports.iter().all(|(it, _)| it.number != port.number) {
                    let port = Port { number: port.number, name: name.map(str::to_owned), protocol: port.protocol, target_port: None };
                    ports.push((port, group));
                }
            }
        }
        self.ctx.diagnostics.extend(conflicts);
        for ((namespace, name), (group, ports)) in orphans {
            // Only UDP or SCTP ports, or none: the mesh routes nothing of it, as for a Service.
            if ports.is_empty() {
                continue;
            }
            services.push(Service {
                namespace,
                name,
                rpc: None,
                protocol: None,
                ports: ports.into_iter().map(|(port, _)| port).collect(),
                methods: None,
                span: group.span,
                entry: group.entry.clone(),
            });
        }
        // Services in file order (a stable sort keeps a Service before an orphan at the same place).
        services.sort_by_key(|it| it.span.start);
        let mut declared_ports: BTreeMap<(&str, &str), &[Port]> = BTreeMap::new();
        for service in services.iter().filter(|it| !it.ports.is_empty()) {
            declared_ports.entry((&service.namespace, &service.name)).or_insert(&service.ports);
        }

        let mut instances = Vec::new();
        for group in groups {
            let key = (group.namespace.clone(), group.service.clone());
            // A Service the mesh does not route (ExternalName, no TCP port) gets no instances.
            if self.declared.contains(&key) && !routed.contains(&key) {
                continue;
            }
            let declared_ports = declared_ports.get(&(group.namespace.as_str(), group.service.as_str())).copied();
            for endpoint in &group.endpoints {
                let node = endpoint.node.as_ref().and_then(|it| self.nodes.get(it));
                let locality = Locality {
                    region: endpoint.region.clone().or_else(|| node.and_then(|it| it.region.clone())),
                    zone: endpoint.zone.clone().or_else(|| node.and_then(|it| it.zone.clone())),
                    subzone: node.and_then(|it| it.subzone.clone()),
                };
                for address in &endpoint.addresses {
                    let pod =
                        endpoint.pod.clone().or_else(|| self.pod_ips.get(&(group.namespace.clone(), address.clone())).cloned().flatten());
                    let labels = pod.and_then(|it| self.pods.get(&it)).cloned().unwrap_or_default();
                    for port in &group.ports {
                        // A slice port carries the name of the service port it serves.
                        let service_port = declared_ports
                            .and_then(|ports| {
                                ports.iter().find(|it| it.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                            })
                            .map(|it| it.number);
                        instances.push(Instance {
                            namespace: group.namespace.clone(),
                            service: group.service.clone(),
                            address: address.clone(),
                            port: port.number,
                            service_port,
                            weight: super::DEFAULT_WEIGHT,
                            labels: labels.clone(),
                            locality: locality.clone(),
                            health: endpoint.health,
                            span: endpoint.span,
                        });
                    }
                }
            }
        }
        Snapshot { services, instances, version }
    }
}

/// Warns that the groups of a service without a Service object give one port name two
/// numbers; `first` is the number that stands.
fn port_number_conflict(
    registry: &str,
    key: &(String, String),
    name: Option<&str>,
    first: (u16, &Group),
    other: (u16, &Group),
) -> Diagnostic {
    let port = name.map_or_else(|| "the unnamed port".to_owned(), |it| format!("port `{it}`"));
    Diagnostic::warning(
        Code::RegistryConflict,
        format!("registry `{registry}` gives {port} of service `{}/{}` two numbers, {} and {}", key.0, key.1, first.0, other.0),
    )
    .primary(other.1.span, format!("{} here", other.0))
    .secondary(first.1.span, format!("{} here", first.0))
    .note(format!("entry: {}", other.1.entry))
    .note(format!(
        "the snapshot has no Service `{}/{}`, so {} is taken as the service port; the endpoints on {} keep their own port",
        key.0, key.1, first.0, other.0
    ))
    .help("add the Service to the snapshot (`kubectl get services,endpointslices`), which says the service port")
}

/// A Service port; `None` for a UDP or SCTP port.
fn service_port(source: &Source<'_>, node: Node<'_>, index: usize) -> Found<Option<Port>> {
    let path = format!("spec.ports[{index}]");
    if !node.is_map() {
        return Err(wrong_type(source, node, &path, "a mapping"));
    }
    if !is_tcp(field_str(source, node, "protocol", &format!("{path}.protocol"))?) {
        return Ok(None);
    }
    let number = match node.get("port") {
        Some(number) => port_number(source, number, &format!("{path}.port"))?,
        None => return Err(problem(source, node, format!("`{path}` has no `port`"))),
    };
    let name = field_str(source, node, "name", &format!("{path}.name"))?;
    let app_protocol = field_str(source, node, "appProtocol", &format!("{path}.appProtocol"))?;
    // `targetPort` is a number or the name of a container port, which resolves per endpoint
    // (the slice's port numbers); `None` means "same as `port`" and "named" alike.
    let target_port = match node.get("targetPort") {
        None => None,
        Some(target) => match target.str() {
            Some(text) if !text.is_empty() && text.bytes().all(|it| it.is_ascii_digit()) => Some(
                text.parse::<u16>()
                    .ok()
                    .filter(|it| *it != 0)
                    .ok_or_else(|| problem(source, target, format!("`{path}.targetPort` is {text}, not a port number (1 to 65535)")))?,
            ),
            Some(_) => None,
            None => Some(port_number(source, target, &format!("{path}.targetPort"))?),
        },
    };
    Ok(Some(Port {
        number,
        name: name.map(str::to_owned),
        protocol: port_protocol(app_protocol, name),
        target_port: target_port.filter(|it| *it != number),
    }))
}

/// The Pod an endpoint's `targetRef` names, if it names one.
fn target_pod<'a>(source: &Source<'a>, endpoint: Node<'a>, namespace: &str) -> Found<Option<(String, String)>> {
    let Some(target) = field_map(source, endpoint, "targetRef", "targetRef")? else { return Ok(None) };
    if field_str(source, target, "kind", "targetRef.kind")? != Some("Pod") {
        return Ok(None);
    }
    let name = field_str(source, target, "name", "targetRef.name")?;
    let namespace = field_str(source, target, "namespace", "targetRef.namespace")?.unwrap_or(namespace);
    Ok(name.map(|it| (namespace.to_owned(), it.to_owned())))
}

/// The version of the Lists: the highest when they are numbers, else the first.
fn pick_version(versions: &[String]) -> Option<String> {
    max_version(versions).or_else(|| versions.first().cloned())
}

/// The highest numeric resourceVersion (etcd's revisions), as a string.
fn max_version(versions: &[String]) -> Option<String> {
    versions.iter().filter_map(|it| it.parse::<u64>().ok()).max().map(|it| it.to_string())
}

#[cfg(test)]
mod tests;
