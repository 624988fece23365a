//! The syntax tree of `*.mesh` files: what the user wrote, with a span on every construct.
//!
//! Values are already typed (durations in milliseconds, percentages in millionths), because
//! the parser checks units and ranges; names are not resolved yet.

use meshc_codegen::ir::{
    AbortStatus, AuthzAction, ConnectionLimits, HealthCheck, LoadBalancer, OutlierDetection, PerMillion, Protocol, StringMatchKind, TlsMode,
};

use crate::source::{FileId, Span};

/// A value and where it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it is written.
    pub span: Span,
}

/// A name or string as written, unescaped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    /// The text.
    pub text: String,
    /// Where it is written.
    pub span: Span,
}

/// One spec file.
#[derive(Clone, Debug)]
pub struct File {
    /// The file.
    pub file: FileId,
    /// Its items, in order.
    pub items: Vec<Item>,
}

/// A top-level declaration.
#[derive(Clone, Debug)]
pub enum Item {
    /// `service`.
    Service(Service),
    /// `routes`.
    Routes(Routes),
    /// `authorization`.
    Authorization(Authorization),
    /// `workload`.
    Workload(Workload),
    /// `telemetry` at the top level: mesh-wide settings.
    Telemetry(Telemetry),
}

/// `service NAME { ... }`: protocol, ports, subsets and traffic policy of a registry service.
#[derive(Clone, Debug)]
pub struct Service {
    /// The whole block.
    pub span: Span,
    /// The service reference.
    pub name: Name,
    /// `protocol`.
    pub protocol: Option<Spanned<Protocol>>,
    /// `port` statements.
    pub ports: Vec<PortDecl>,
    /// `subset` blocks.
    pub subsets: Vec<Subset>,
    /// Traffic-policy statements.
    pub policy: Policy,
}

/// `port 9080 http name "main" target_port 8080`.
#[derive(Clone, Debug)]
pub struct PortDecl {
    /// The whole statement.
    pub span: Span,
    /// The number.
    pub number: Spanned<u16>,
    /// The protocol.
    pub protocol: Option<Spanned<Protocol>>,
    /// The name.
    pub name: Option<Name>,
    /// The application's port.
    pub target_port: Option<Spanned<u16>>,
}

/// `subset NAME { label = "value" ... policy }`.
#[derive(Clone, Debug)]
pub struct Subset {
    /// The whole block.
    pub span: Span,
    /// The subset's name.
    pub name: Name,
    /// Label selectors, in order.
    pub labels: Vec<(Name, Name)>,
    /// Policy statements that override the service's.
    pub policy: Policy,
}

/// Traffic-policy statements; each is set at most once per block.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `load_balancer`.
    pub load_balancer: Option<Spanned<LoadBalancer>>,
    /// `connect_timeout`, ms.
    pub connect_timeout: Option<Spanned<u64>>,
    /// `request_timeout`, ms.
    pub request_timeout: Option<Spanned<u64>>,
    /// `warmup`, ms.
    pub warmup: Option<Spanned<u64>>,
    /// `limits { }`.
    pub limits: Option<Spanned<ConnectionLimits>>,
    /// `outlier_detection { }`, with defaults filled in.
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    /// `health_check { }`, with defaults filled in.
    pub health_check: Option<Spanned<HealthCheck>>,
    /// `tls`.
    pub tls: Option<Spanned<(TlsMode, Option<String>)>>,
}

/// `routes TARGET { route ... }`: the ordered routes of a host or an RPC interface.
#[derive(Clone, Debug)]
pub struct Routes {
    /// The whole block.
    pub span: Span,
    /// The host (a service reference) or the RPC interface.
    pub target: Name,
    /// The routes, in order.
    pub routes: Vec<Route>,
}

/// `route NAME { ... }`.
#[derive(Clone, Debug)]
pub struct Route {
    /// The whole block.
    pub span: Span,
    /// The route's name.
    pub name: Name,
    /// `match { }` blocks, ORed; none means every request.
    pub matches: Vec<MatchBlock>,
    /// `to` statements.
    pub destinations: Vec<Destination>,
    /// `rewrite`.
    pub rewrite: Option<Spanned<Rewrite>>,
    /// `redirect`.
    pub redirect: Option<Spanned<Redirect>>,
    /// `respond`.
    pub respond: Option<Spanned<(u16, Option<String>)>>,
    /// `timeout`, ms.
    pub timeout: Option<Spanned<u64>>,
    /// `retries`.
    pub retries: Option<Spanned<Retries>>,
    /// `fault delay`.
    pub fault_delay: Option<Spanned<(u64, PerMillion)>>,
    /// `fault abort`.
    pub fault_abort: Option<Spanned<(AbortStatus, PerMillion)>>,
    /// `mirror`.
    pub mirror: Option<Mirror>,
    /// `request_header` operations, in order.
    pub request_headers: Vec<HeaderOp>,
    /// `response_header` operations, in order.
    pub response_headers: Vec<HeaderOp>,
    /// `rate_limit`.
    pub rate_limit: Option<Spanned<RateLimit>>,
}

/// `match { ... }`: conditions, ANDed.
#[derive(Clone, Debug)]
pub struct MatchBlock {
    /// The whole block.
    pub span: Span,
    /// The conditions.
    pub conditions: Vec<Condition>,
}

/// One condition.
#[derive(Clone, Debug)]
pub struct Condition {
    /// The whole condition.
    pub span: Span,
    /// What it tests.
    pub field: Field,
    /// How.
    pub test: Test,
}

/// What a condition tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// `authority`.
    Authority,
    /// `path`.
    Path,
    /// `method`.
    Method,
    /// `header "name"` (lower-cased).
    Header(String),
    /// `query "name"`.
    Query(String),
    /// `service` (RPC).
    Service,
    /// `version` (RPC).
    Version,
    /// `group` (RPC).
    Group,
    /// `port` (HTTP, TCP): the service port the request was sent to.
    Port,
}

impl Field {
    /// The keyword, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            Field::Authority => "authority",
            Field::Path => "path",
            Field::Method => "method",
            Field::Header(_) => "header",
            Field::Query(_) => "query",
            Field::Service => "service",
            Field::Version => "version",
            Field::Group => "group",
            Field::Port => "port",
        }
    }
}

/// How a condition tests its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// Compare the value.
    Match {
        /// Exact, prefix or regex.
        kind: StringMatchKind,
        /// The value.
        value: String,
        /// Where the value is written.
        value_span: Span,
    },
    /// The field is present.
    Present,
    /// The field is absent.
    Absent,
}

/// `to SERVICE subset S port P weight W`.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The whole statement.
    pub span: Span,
    /// The service reference.
    pub service: Name,
    /// The subset.
    pub subset: Option<Name>,
    /// The port.
    pub port: Option<Spanned<u16>>,
    /// The weight.
    pub weight: Option<Spanned<u32>>,
}

/// `mirror SERVICE subset S port P 10%`.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// The whole statement.
    pub span: Span,
    /// The service reference.
    pub service: Name,
    /// The subset.
    pub subset: Option<Name>,
    /// The port.
    pub port: Option<Spanned<u16>>,
    /// The share mirrored (100% when absent).
    pub per_million: PerMillion,
}

/// `rewrite prefix "/x" authority "h"`.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    /// New path prefix.
    pub prefix: Option<String>,
    /// New authority.
    pub authority: Option<String>,
}

/// `redirect ...`.
#[derive(Clone, Debug, Default)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New authority.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<String>,
    /// Status code (301 when absent).
    pub code: Option<Spanned<u16>>,
}

/// `retries N per_try_timeout D on ...`.
#[derive(Clone, Debug)]
pub struct Retries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Per-try timeout, ms.
    pub per_try_timeout: Option<Spanned<u64>>,
    /// Retry-on conditions.
    pub retry_on: Vec<Name>,
    /// `any_method`: requests of any method are retried after their body was sent.
    pub any_method: bool,
}

/// A header operation.
#[derive(Clone, Debug)]
pub enum HeaderOp {
    /// `set "name" "value"`.
    Set(Name, String),
    /// `add "name" "value"`.
    Add(Name, String),
    /// `remove "name"`.
    Remove(Name),
}

/// `rate_limit 100/s burst 200 per_source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per interval.
    pub requests: u32,
    /// The interval, ms.
    pub interval_ms: u64,
    /// Bucket size (the rate's request count when absent).
    pub burst: Option<u32>,
    /// One bucket per source address.
    pub per_source: bool,
}

/// `authorization NAME { workloads ...  action ...  rule { } }`.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// The whole block.
    pub span: Span,
    /// The policy's name.
    pub name: Name,
    /// `workloads` (absent: every workload).
    pub workloads: Option<Spanned<Vec<Name>>>,
    /// `action` (absent: allow, as in Istio).
    pub action: Option<Spanned<AuthzAction>>,
    /// The rules.
    pub rules: Vec<AuthzRule>,
}

/// `rule { from { } to { } when ... }`.
#[derive(Clone, Debug)]
pub struct AuthzRule {
    /// The whole block.
    pub span: Span,
    /// `from` blocks, ORed.
    pub from: Vec<FieldBlock>,
    /// `to` blocks, ORed.
    pub to: Vec<FieldBlock>,
    /// `when` conditions, ANDed.
    pub when: Vec<When>,
}

/// A `from { }` or `to { }` block.
#[derive(Clone, Debug)]
pub struct FieldBlock {
    /// The whole block.
    pub span: Span,
    /// Its fields, ANDed.
    pub fields: Vec<AuthzField>,
}

/// `[not] key value, value`.
#[derive(Clone, Debug)]
pub struct AuthzField {
    /// The whole field.
    pub span: Span,
    /// Whether `not` precedes it.
    pub negated: bool,
    /// The key (`principals`, `paths`...), checked by the checker.
    pub key: Name,
    /// The values, ORed.
    pub values: Vec<Name>,
}

/// `when KEY in|not_in values`.
#[derive(Clone, Debug)]
pub struct When {
    /// The whole statement.
    pub span: Span,
    /// The attribute: `header "x"` becomes `request.headers[x]`.
    pub key: Name,
    /// `not_in`.
    pub negated: bool,
    /// The values.
    pub values: Vec<Name>,
}

/// `workload NAME { ... }`.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The whole block.
    pub span: Span,
    /// The workload's name.
    pub name: Name,
    /// `namespace`.
    pub namespace: Option<Name>,
    /// `service_account`.
    pub service_account: Option<Name>,
    /// `serves` lists, concatenated.
    pub serves: Vec<Name>,
    /// `calls`: `None` when absent (every service).
    pub calls: Option<Spanned<Calls>>,
    /// `rate_limit` on inbound requests.
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// `telemetry` overrides.
    pub telemetry: Option<Telemetry>,
    /// `mtls MODE`: the mode of every port that sets none.
    pub mtls: Option<Spanned<MtlsMode>>,
    /// `mtls port N MODE`, in order.
    pub port_mtls: Vec<(Spanned<u16>, MtlsMode)>,
    /// `rpc_listener MODE`: `None` when absent (one listener per protocol).
    pub rpc_listener: Option<Spanned<RpcListener>>,
}

/// Where a workload's application sends its Bolt and Dubbo requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcListener {
    /// `outbound-bolt` and `outbound-dubbo`, one listener per protocol called.
    PerProtocol,
    /// `outbound-rpc`, one port that tells the protocols apart by a connection's first byte.
    Auto,
}

/// What a workload's ports accept (Istio's PeerAuthentication modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Plaintext only.
    Disable,
}

/// The outbound scope of a workload.
#[derive(Clone, Debug)]
pub enum Calls {
    /// `calls *`.
    All,
    /// `calls a, b`.
    Only(Vec<Name>),
}

/// `telemetry { ... }`.
#[derive(Clone, Debug)]
pub struct Telemetry {
    /// The whole block.
    pub span: Span,
    /// `access_log on|off`.
    pub access_log: Option<Spanned<bool>>,
    /// `access_log format json|text "..."`: `None` inside is JSON.
    pub access_log_format: Option<Spanned<Option<String>>>,
    /// `metric_label name = "attribute"`.
    pub metric_labels: Vec<(Name, Name)>,
    /// `request_id on|off`.
    pub request_id: Option<Spanned<bool>>,
    /// `tracing on|off`.
    pub tracing: Option<Spanned<bool>>,
}
