//! Request metrics with Istio's standard names and labels, served by the admin endpoint's
//! `/stats/prometheus` in Prometheus' text format.
//!
//! Every request, answered by an upstream or by the sidecar itself, counts once in
//! `istio_requests_total` and once in each of the `istio_request_duration_milliseconds`,
//! `istio_request_bytes` and `istio_response_bytes` histograms (the time to the response's
//! end, the request's and the response's body sizes), under the labels Istio's telemetry
//! gives it: who reported it (`source` for outbound, `destination` for inbound), the
//! workloads, their SPIFFE identities and the service, the protocol, the response code, the
//! gRPC status, Envoy's response flags and whether the connection was mutual TLS.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Istio's default histogram buckets (Envoy's), for request durations in milliseconds and
/// body sizes in bytes alike.
const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0,
    3600000.0,
];

/// Which side of the call the sidecar stands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The server's sidecar (inbound).
    Destination,
}

/// The labels of one request series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Who reports.
    pub reporter: Reporter,
    /// The service's names (short, `name.ns`, host), when known.
    pub service: Option<&'static [&'static str]>,
    /// `http` or `grpc`.
    pub grpc: bool,
    /// The HTTP status.
    pub code: u16,
    /// The gRPC status, for gRPC requests that carried one in the response headers.
    pub grpc_status: Option<u32>,
    /// Envoy's response flags (`-` for none).
    pub flags: &'static str,
    /// The values of the workload's own metric labels ([`MetricLabel`]), in their order;
    /// `None` when the request was not labelled (each then reads `unknown`).
    pub extra: Option<Extra>,
    /// What mutual TLS tells of the two sides.
    pub security: Security,
}

/// What mutual TLS tells of a request's or connection's two sides, for Istio's
/// `source_principal`, `destination_principal` and `connection_security_policy` labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    /// Not mutual TLS: plaintext inbound, or outbound to a cluster without Istio's mutual TLS.
    #[default]
    Plain,
    /// Mutual TLS with SPIFFE identities; inbound, with the identity the caller's certificate
    /// proved (`cluster.local/ns/default/sa/web`, without the scheme).
    Mutual(Option<Arc<str>>),
}

/// Ordered as the derived order would be, but names and sets the code shares (the same
/// `&'static` service names and flags, the same set of values) compare equal without being
/// read: a request's labels are compared with its own series' several times per request.
impl Ord for Labels {
    fn cmp(&self, other: &Labels) -> std::cmp::Ordering {
        fn shared<T: ?Sized + Ord>(a: &T, b: &T) -> std::cmp::Ordering {
            if std::ptr::eq(a, b) { std::cmp::Ordering::Equal } else { a.cmp(b) }
        }
        self.reporter
            .cmp(&other.reporter)
            .then_with(|| match (self.service, other.service) {
                (Some(a), Some(b)) => shared(a, b),
                (a, b) => a.cmp(&b),
            })
            .then(self.grpc.cmp(&other.grpc))
            .then(self.code.cmp(&other.code))
            .then(self.grpc_status.cmp(&other.grpc_status))
            .then_with(|| shared(self.flags, other.flags))
            .then_with(|| match (&self.extra, &other.extra) {
                (Some(a), Some(b)) => shared(&**a, &**b),
                (a, b) => a.cmp(b),
            })
            .then_with(|| self.security.cmp(&other.security))
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Labels) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The values of a request's own metric labels, shared by every request with the same ones.
pub type Extra = Arc<[Box<str>]>;

/// A label the workload's spec adds to its request metrics (`metric_label`), as Istio's
/// Telemetry API adds a dimension to the standard metrics.
#[derive(Clone, Copy, Debug)]
pub struct MetricLabel {
    /// The label's name.
    pub name: &'static str,
    /// What it takes its value from.
    pub attribute: MetricAttribute,
}

/// The request attributes a metric label may take, by Envoy's attribute names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricAttribute {
    /// `request.headers[name]`.
    RequestHeader(&'static str),
    /// `request.path`: the path with its query.
    RequestPath,
    /// `request.method`.
    RequestMethod,
    /// `request.host`: the authority.
    RequestHost,
    /// `request.protocol`: `HTTP/1.1` or `HTTP/2`.
    RequestProtocol,
    /// `response.code`.
    ResponseCode,
    /// `source.principal`: the caller's SPIFFE identity (the workload's own, outbound).
    SourcePrincipal,
    /// `source.namespace`: the caller's namespace, from its identity.
    SourceNamespace,
    /// `source.workload`: the calling workload, when known (the workload itself, outbound).
    SourceWorkload,
    /// `destination.service`: the service's host name.
    DestinationService,
    /// `destination.port`: the service port.
    DestinationPort,
    /// `rpc.service`: a gRPC request's service (`package.Service`).
    RpcService,
    /// `rpc.method`: a gRPC request's method.
    RpcMethod,
}

/// Distinct sets of metric label values kept at most: labels taken from headers or paths can
/// take any value, and past this many sets new ones count as `other`, so that memory stays
/// bounded.
pub const MAX_EXTRA_SETS: usize = 2000;

/// The longest metric label value kept, in bytes: a value from a header or a path is cut
/// there (at a character's boundary), so that 2,000 sets of values stay small, as does every
/// scrape that writes each of them on some twenty lines.
pub const MAX_LABEL_VALUE: usize = 256;

/// One histogram's counts.
#[derive(Clone, Debug, Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

impl Series {
    /// Counts one request that took `value` (milliseconds, or bytes).
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        if let Some(bucket) = bucket_of(value) {
            self.buckets[bucket] += 1;
        }
    }
}

/// The three histograms of one request series: duration, request and response body sizes.
#[derive(Clone, Debug, Default)]
struct RequestSeries {
    duration: Series,
    request_bytes: Series,
    response_bytes: Series,
}

impl RequestSeries {
    fn add(&mut self, sample: &Sample) {
        self.duration.add(sample.ms());
        self.request_bytes.add(sample.request_bytes as f64);
        self.response_bytes.add(sample.response_bytes as f64);
    }
}

/// What one request measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// From its start to its response's end.
    pub duration: Duration,
    /// Its body's bytes.
    pub request_bytes: u64,
    /// Its response body's bytes.
    pub response_bytes: u64,
}

impl Sample {
    fn ms(&self) -> f64 {
        self.duration.as_secs_f64() * 1000.0
    }
}

/// The bucket `value` counts in: the first whose bound it does not pass.
fn bucket_of(value: f64) -> Option<usize> {
    BUCKETS.iter().position(|it| value <= *it)
}

/// The labels of one TCP connection series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The service's names (short, `name.ns`, host).
    pub service: &'static [&'static str],
    /// Envoy's response flags (`-` for none, `UF` for a failed upstream connection, `UO`
    /// past the circuit breaker).
    pub flags: &'static str,
    /// What mutual TLS tells of the two sides.
    pub security: Security,
}

#[derive(Debug, Default)]
struct TcpSeries {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// The labels of one RPC request series (Bolt, Dubbo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcLabels<'a> {
    /// Who reports.
    pub reporter: Reporter,
    /// `bolt` or `dubbo`.
    pub protocol: &'static str,
    /// The interface the request named.
    pub service: &'a str,
    /// The method.
    pub method: &'a str,
    /// The protocol's response status (Bolt 0 is success, Dubbo 20).
    pub status: u16,
    /// Envoy's response flags (`-` for none).
    pub flags: &'static str,
}

/// The RPC series, nested by their labels in the order they render in (reporter and protocol,
/// service, method, status and flags), so that counting a request finds its series by the
/// names the request borrows from its frame, and allocates only for a new series.
#[derive(Debug, Default)]
struct RpcSeries {
    series: BTreeMap<(Reporter, &'static str), BTreeMap<Box<str>, ByMethod>>,
    len: usize,
}

/// One service's series: by method, then by status and flags.
type ByMethod = BTreeMap<Box<str>, BTreeMap<(u16, &'static str), Series>>;

impl RpcSeries {
    fn get(&mut self, labels: &RpcLabels<'_>) -> Option<&mut Series> {
        self.series
            .get_mut(&(labels.reporter, labels.protocol))?
            .get_mut(labels.service)?
            .get_mut(labels.method)?
            .get_mut(&(labels.status, labels.flags))
    }

    fn insert(&mut self, labels: &RpcLabels<'_>) -> &mut Series {
        self.len += 1;
        self.series
            .entry((labels.reporter, labels.protocol))
            .or_default()
            .entry(labels.service.into())
            .or_default()
            .entry(labels.method.into())
            .or_default()
            .entry((labels.status, labels.flags))
            .or_default()
    }

    fn iter(&self) -> impl Iterator<Item = (RpcLabels<'_>, &Series)> {
        self.series.iter().flat_map(|(&(reporter, protocol), services)| {
            services.iter().flat_map(move |(service, methods)| {
                methods.iter().flat_map(move |(method, statuses)| {
                    statuses
                        .iter()
                        .map(move |(&(status, flags), series)| (RpcLabels { reporter, protocol, service, method, status, flags }, series))
                })
            })
        })
    }
}

/// Distinct RPC series kept at most: callers name services and methods, so past this many the
/// new ones count under service and method `other` rather than growing memory without bound.
pub const MAX_RPC_SERIES: usize = 2000;

/// A sidecar's request metrics.
///
/// Each thread counts HTTP requests in series of its own ([`Cells`], found through a
/// thread-local map), which only it writes: a plain load and store per figure, where a shared
/// lock took two atomic instructions per request, each a full barrier. Rendering sums every
/// thread's series; a thread's counts stay after it ends.
#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's series apart in the threads' maps.
    id: u64,
    /// Every thread's request series, in the order they were made.
    requests: Mutex<Vec<(Labels, Arc<Cells>)>>,
    /// Requests counted where a thread's map is gone (a thread's own destructors).
    late_requests: Mutex<BTreeMap<Labels, RequestSeries>>,
    tcp: Mutex<BTreeMap<TcpLabels, TcpSeries>>,
    rpc: Mutex<RpcSeries>,
    /// Every set of metric label values seen, up to [`MAX_EXTRA_SETS`].
    extras: Mutex<std::collections::BTreeSet<Extra>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            requests: Mutex::default(),
            late_requests: Mutex::default(),
            tcp: Mutex::default(),
            rpc: Mutex::default(),
            extras: Mutex::default(),
        }
    }
}

thread_local! {
    /// This thread's request series, by [`Metrics`] instance and labels.
    static OWN_SERIES: RefCell<BTreeMap<(u64, Labels), Arc<Cells>>> = const { RefCell::new(BTreeMap::new()) };
}

/// One thread's counts of one histogram. Only that thread writes them, so an update is a
/// load and a store; rendering reads them from another thread, with acquire loads that pair
/// with the release stores (plain moves both, on x86).
#[derive(Debug, Default)]
struct HistogramCells {
    count: AtomicU64,
    /// The sum's `f64` bits.
    sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

impl HistogramCells {
    /// Counts one `value`; only the owning thread calls it.
    fn add(&self, value: f64) {
        let bump = |cell: &AtomicU64| cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Release);
        bump(&self.count);
        self.sum.store((f64::from_bits(self.sum.load(Ordering::Relaxed)) + value).to_bits(), Ordering::Release);
        if let Some(bucket) = bucket_of(value) {
            bump(&self.buckets[bucket]);
        }
    }

    /// Adds these counts to `series`.
    fn add_to(&self, series: &mut Series) {
        series.count += self.count.load(Ordering::Acquire);
        series.sum += f64::from_bits(self.sum.load(Ordering::Acquire));
        for (total, cell) in series.buckets.iter_mut().zip(&self.buckets) {
            *total += cell.load(Ordering::Acquire);
        }
    }
}

/// One thread's counts of one request series.
#[derive(Debug, Default)]
struct Cells {
    duration: HistogramCells,
    request_bytes: HistogramCells,
    response_bytes: HistogramCells,
}

impl Cells {
    /// Counts one request; only the owning thread calls it.
    fn add(&self, sample: &Sample) {
        self.duration.add(sample.ms());
        self.request_bytes.add(sample.request_bytes as f64);
        self.response_bytes.add(sample.response_bytes as f64);
    }

    /// Adds these counts to `series`.
    fn add_to(&self, series: &mut RequestSeries) {
        self.duration.add_to(&mut series.duration);
        self.request_bytes.add_to(&mut series.request_bytes);
        self.response_bytes.add_to(&mut series.response_bytes);
    }
}

impl Metrics {
    /// The shared set of metric label `values`: the one already counted under, a new one,
    /// or, past [`MAX_EXTRA_SETS`], every value `other`.
    pub fn extra(&self, mut values: Vec<Box<str>>) -> Extra {
        for value in values.iter_mut().filter(|it| it.len() > MAX_LABEL_VALUE) {
            let end = (0..=MAX_LABEL_VALUE).rev().find(|it| value.is_char_boundary(*it)).unwrap_or(0);
            *value = value[..end].into();
        }
        let mut extras = self.extras.lock().unwrap_or_else(|it| it.into_inner());
        if let Some(found) = extras.get(values.as_slice()) {
            return found.clone();
        }
        let values: Extra = if extras.len() < MAX_EXTRA_SETS { values.into() } else { values.iter().map(|_| "other".into()).collect() };
        extras.insert(values.clone());
        values
    }

    /// Counts one request.
    pub fn record(&self, labels: Labels, sample: Sample) {
        // Taken by the thread's own map, or left for the shared one once the thread ends.
        let mut labels = Some(labels);
        let _ = OWN_SERIES.try_with(|own| {
            let Some(taken) = labels.take() else { return };
            let mut own = own.borrow_mut();
            let key = (self.id, taken);
            match own.get(&key) {
                Some(cells) => cells.add(&sample),
                None => {
                    let cells = Arc::new(Cells::default());
                    cells.add(&sample);
                    self.requests.lock().unwrap_or_else(|it| it.into_inner()).push((key.1.clone(), cells.clone()));
                    own.insert(key, cells);
                }
            }
        });
        if let Some(labels) = labels {
            self.late_requests.lock().unwrap_or_else(|it| it.into_inner()).entry(labels).or_default().add(&sample);
        }
    }

    /// Every request series, summed over the threads that counted it. The series of threads
    /// that have ended (whose map no longer holds them) are folded into `late_requests` on the
    /// way, so that threads coming and going do not grow the list.
    fn request_series(&self) -> BTreeMap<Labels, RequestSeries> {
        let mut late = self.late_requests.lock().unwrap_or_else(|it| it.into_inner());
        let mut requests = self.requests.lock().unwrap_or_else(|it| it.into_inner());
        requests.retain(|(labels, cells)| {
            let ended = Arc::strong_count(cells) == 1;
            if ended {
                cells.add_to(late.entry(labels.clone()).or_default());
            }
            !ended
        });
        let mut series = late.clone();
        for (labels, cells) in requests.iter() {
            cells.add_to(series.entry(labels.clone()).or_default());
        }
        series
    }

    /// Counts one RPC request, answered by an upstream or by the sidecar.
    pub fn record_rpc(&self, labels: RpcLabels<'_>, duration: Duration) {
        let ms = duration.as_secs_f64() * 1000.0;
        let mut rpc = self.rpc.lock().unwrap_or_else(|it| it.into_inner());
        if let Some(series) = rpc.get(&labels) {
            series.add(ms);
        } else if rpc.len < MAX_RPC_SERIES {
            rpc.insert(&labels).add(ms);
        } else {
            let other = RpcLabels { service: "other", method: "other", ..labels };
            match rpc.get(&other) {
                Some(series) => series.add(ms),
                None => rpc.insert(&other).add(ms),
            }
        }
    }

    /// Counts a TCP connection opened.
    pub fn tcp_opened(&self, labels: TcpLabels) {
        self.tcp.lock().unwrap_or_else(|it| it.into_inner()).entry(labels).or_default().opened += 1;
    }

    /// Counts a TCP connection closed, with the bytes it `sent` to the caller and `received`
    /// from it (Istio's `istio_tcp_sent_bytes_total` and `istio_tcp_received_bytes_total`).
    pub fn tcp_closed(&self, labels: TcpLabels, sent: u64, received: u64) {
        let mut tcp = self.tcp.lock().unwrap_or_else(|it| it.into_inner());
        let series = tcp.entry(labels).or_default();
        series.closed += 1;
        series.sent += sent;
        series.received += received;
    }

    /// The Prometheus text exposition, for the workload `workload` in `namespace`, whose
    /// request metrics carry its own `extra` labels after Istio's.
    pub fn render(&self, own: &Own<'_>, extra: &[MetricLabel]) -> String {
        let requests = self.request_series();
        let mut out = String::new();
        let labelled = |labels: &Labels| {
            let mut text = label_text(labels, own, protocol(labels));
            for (index, label) in extra.iter().enumerate() {
                let value = labels.extra.as_ref().and_then(|it| it.get(index)).map_or("unknown", |it| it);
                text.push(',');
                text.push_str(&join_labels(&[(label.name, value)]));
            }
            text
        };
        out.push_str("# TYPE istio_requests_total counter\n");
        for (labels, series) in requests.iter() {
            let _ = writeln!(out, "istio_requests_total{{{}}} {}", labelled(labels), series.duration.count);
        }
        for (index, name) in ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"].iter().enumerate() {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, series) in requests.iter() {
                let one = [&series.duration, &series.request_bytes, &series.response_bytes][index];
                histogram(&mut out, name, &labelled(labels), one);
            }
        }
        let tcp = self.tcp.lock().unwrap_or_else(|it| it.into_inner());
        let names = [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ];
        for (index, name) in names.iter().enumerate() {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, series) in tcp.iter() {
                let as_request = Labels {
                    reporter: labels.reporter,
                    service: Some(labels.service),
                    grpc: false,
                    code: 0,
                    grpc_status: None,
                    flags: labels.flags,
                    extra: None,
                    security: labels.security.clone(),
                };
                let text = label_text(&as_request, own, "tcp");
                let value = [series.opened, series.closed, series.sent, series.received][index];
                let _ = writeln!(out, "{name}{{{text}}} {value}");
            }
        }
        let rpc = self.rpc.lock().unwrap_or_else(|it| it.into_inner());
        out.push_str("# HELP meshc_rpc_requests_total Bolt and Dubbo requests, by service, method and the protocol's status.\n");
        out.push_str("# TYPE meshc_rpc_requests_total counter\n");
        for (labels, series) in rpc.iter() {
            let _ = writeln!(out, "meshc_rpc_requests_total{{{}}} {}", rpc_label_text(&labels, own), series.count);
        }
        out.push_str("# TYPE meshc_rpc_request_duration_milliseconds histogram\n");
        for (labels, series) in rpc.iter() {
            histogram(&mut out, "meshc_rpc_request_duration_milliseconds", &rpc_label_text(&labels, own), series);
        }
        out.push_str("# TYPE meshc_access_log_dropped_total counter\n");
        let _ = writeln!(out, "meshc_access_log_dropped_total {}", crate::accesslog::dropped());
        out
    }
}

/// One series of a duration histogram: its cumulative buckets, sum and count.
fn histogram(out: &mut String, name: &str, labels: &str, series: &Series) {
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(series.buckets) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", series.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", series.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", series.count);
}

/// The workload whose metrics are written: its name, namespace and identity
/// (`<trust-domain>/ns/<ns>/sa/<sa>`).
#[derive(Clone, Copy, Debug)]
pub struct Own<'a> {
    /// The workload's name.
    pub workload: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its SPIFFE identity, without the scheme.
    pub principal: &'a str,
}

/// The labels as Prometheus text, in a fixed order.
fn label_text(labels: &Labels, own: &Own<'_>, protocol: &str) -> String {
    let Own { workload, namespace, principal } = *own;
    let (service, service_name, service_namespace) = match labels.service {
        Some(names) => {
            let host = names.last().copied().unwrap_or("unknown");
            let name = names.first().copied().unwrap_or("unknown");
            let namespace = names.get(1).and_then(|it| it.split_once('.')).map_or("unknown", |it| it.1);
            (host, name, namespace)
        }
        None => ("unknown", "unknown", "unknown"),
    };
    // The other side's workload is unknown (Istio learns it by an exchange of metadata); an
    // identity is known where mutual TLS proved it, and with it the caller's namespace.
    let spiffe = |identity: &str| format!("spiffe://{identity}");
    let own_identity = spiffe(principal);
    let (reporter, source, source_ns, destination, destination_ns) = match labels.reporter {
        Reporter::Source => ("source", workload, namespace, "unknown", "unknown"),
        Reporter::Destination => ("destination", "unknown", "unknown", workload, namespace),
    };
    let (source_principal, destination_principal, policy, source_ns) = match (labels.reporter, &labels.security) {
        (Reporter::Source, Security::Plain) => ("unknown".to_owned(), "unknown".to_owned(), "unknown", source_ns),
        // Istio's caller side does not say; its destination principal comes from the
        // server's certificate, which the pool does not keep.
        (Reporter::Source, Security::Mutual(_)) => (own_identity, "unknown".to_owned(), "unknown", source_ns),
        (Reporter::Destination, Security::Plain) => ("unknown".to_owned(), "unknown".to_owned(), "none", source_ns),
        (Reporter::Destination, Security::Mutual(peer)) => {
            let peer_ns = peer.as_deref().and_then(|it| it.split("/ns/").nth(1)).and_then(|it| it.split('/').next());
            (peer.as_deref().map_or_else(|| "unknown".to_owned(), spiffe), own_identity, "mutual_tls", peer_ns.unwrap_or(source_ns))
        }
    };
    let grpc_status = labels.grpc_status.map_or_else(String::new, |it| it.to_string());
    let pairs = [
        ("reporter", reporter),
        ("source_workload", source),
        ("source_workload_namespace", source_ns),
        ("source_principal", &source_principal),
        ("destination_workload", destination),
        ("destination_workload_namespace", destination_ns),
        ("destination_principal", &destination_principal),
        ("destination_service", service),
        ("destination_service_name", service_name),
        ("destination_service_namespace", service_namespace),
        ("request_protocol", protocol),
        ("response_code", &labels.code.to_string()),
        ("grpc_response_status", &grpc_status),
        ("response_flags", labels.flags),
        ("connection_security_policy", policy),
    ];
    if protocol == "tcp" {
        // Istio's TCP metrics have no response code and no gRPC status.
        let pairs: Vec<(&str, &str)> =
            pairs.into_iter().filter(|(name, _)| !matches!(*name, "response_code" | "grpc_response_status")).collect();
        return join_labels(&pairs);
    }
    join_labels(&pairs)
}

/// An RPC series' labels as Prometheus text: Istio's reporter and workload labels, then the
/// protocol, service, method, status and flags.
fn rpc_label_text(labels: &RpcLabels<'_>, own: &Own<'_>) -> String {
    let Own { workload, namespace, .. } = *own;
    let (reporter, source, source_ns, destination, destination_ns) = match labels.reporter {
        Reporter::Source => ("source", workload, namespace, "unknown", "unknown"),
        Reporter::Destination => ("destination", "unknown", "unknown", workload, namespace),
    };
    let pairs = [
        ("reporter", reporter),
        ("source_workload", source),
        ("source_workload_namespace", source_ns),
        ("destination_workload", destination),
        ("destination_workload_namespace", destination_ns),
        ("request_protocol", labels.protocol),
        ("rpc_service", labels.service),
        ("rpc_method", labels.method),
        ("rpc_status", &labels.status.to_string()),
        ("response_flags", labels.flags),
    ];
    join_labels(&pairs)
}

/// `name="value"` pairs, escaped, comma-separated.
fn join_labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    out
}

fn protocol(labels: &Labels) -> &'static str {
    if labels.grpc { "grpc" } else { "http" }
}

/// Prometheus label-value escaping.
pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    static REVIEWS: [&str; 3] = ["reviews", "reviews.default", "reviews.default.svc.cluster.local"];
    const PRODUCTPAGE: Own<'static> =
        Own { workload: "productpage", namespace: "default", principal: "cluster.local/ns/default/sa/productpage" };

    /// A request that took `duration`, without bodies.
    fn took(duration: Duration) -> Sample {
        Sample { duration, ..Sample::default() }
    }

    /// An outbound 200 from `reviews`, with no labels of the workload's own.
    fn ok() -> Labels {
        Labels {
            reporter: Reporter::Source,
            service: Some(&REVIEWS),
            grpc: false,
            code: 200,
            grpc_status: None,
            flags: "-",
            extra: None,
            security: Security::Plain,
        }
    }

    #[test]
    fn requests_count_per_label_set_with_cumulative_buckets() {
        let metrics = Metrics::default();
        let ok = ok();
        metrics.record(ok.clone(), took(Duration::from_millis(3)));
        metrics.record(ok.clone(), took(Duration::from_millis(40)));
        metrics.record(Labels { code: 404, service: None, flags: "NR", ..ok }, took(Duration::from_micros(100)));
        let text = metrics.render(&PRODUCTPAGE, &[]);
        let ok_labels = "reporter=\"source\",source_workload=\"productpage\",source_workload_namespace=\"default\",\
            source_principal=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
            destination_principal=\"unknown\",destination_service=\"reviews.default.svc.cluster.local\",\
            destination_service_name=\"reviews\",destination_service_namespace=\"default\",request_protocol=\"http\",\
            response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"";
        assert!(text.contains(&format!("istio_requests_total{{{ok_labels}}} 2\n")), "{text}");
        assert!(text.contains(&format!("istio_request_duration_milliseconds_bucket{{{ok_labels},le=\"5\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("istio_request_duration_milliseconds_bucket{{{ok_labels},le=\"50\"}} 2\n")), "{text}");
        assert!(
            text.contains(
                "response_code=\"404\",grpc_response_status=\"\",response_flags=\"NR\",connection_security_policy=\"unknown\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn body_sizes_are_histograms_in_istios_buckets() {
        let metrics = Metrics::default();
        let sample = |request_bytes, response_bytes| Sample { duration: Duration::from_millis(1), request_bytes, response_bytes };
        metrics.record(ok(), sample(0, 64));
        metrics.record(ok(), sample(5000, 1_000_000));
        let text = metrics.render(&PRODUCTPAGE, &[]);
        let bucket = |name: &str, le: &str| {
            let line = text.lines().find(|it| it.starts_with(&format!("{name}_bucket{{")) && it.contains(&format!("le=\"{le}\"")));
            line.and_then(|it| it.rsplit_once(' ')).map(|it| it.1.to_owned())
        };
        assert_eq!(bucket("istio_request_bytes", "0.5").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("istio_request_bytes", "2500").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("istio_request_bytes", "5000").as_deref(), Some("2"), "{text}");
        assert_eq!(bucket("istio_response_bytes", "100").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("istio_response_bytes", "600000").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("istio_response_bytes", "1800000").as_deref(), Some("2"), "{text}");
        assert!(text.contains("# TYPE istio_request_bytes histogram\n") && text.contains("# TYPE istio_response_bytes histogram\n"));
        assert!(text.lines().any(|it| it.starts_with("istio_request_bytes_sum{") && it.ends_with("} 5000")), "{text}");
        assert!(text.lines().any(|it| it.starts_with("istio_response_bytes_sum{") && it.ends_with("} 1000064")), "{text}");
    }

    #[test]
    fn labels_equal_by_content_are_one_series_whether_or_not_they_share_their_names() {
        static COPY: [&str; 3] = ["reviews", "reviews.default", "reviews.default.svc.cluster.local"];
        static OTHER: [&str; 3] = ["ratings", "ratings.default", "ratings.default.svc.cluster.local"];
        let flags = String::from("UF");
        let (ok, copy) = (ok(), Labels { service: Some(&COPY), flags: "-", ..ok() });
        assert_eq!(ok.cmp(&copy), std::cmp::Ordering::Equal);
        assert_eq!(ok.cmp(&Labels { service: Some(&OTHER), ..ok.clone() }), std::cmp::Ordering::Greater);
        // Equal flags in another place, and an equal set of values in another allocation.
        let leaked: &'static str = Box::leak(flags.into_boxed_str());
        assert_eq!(Labels { flags: "UF", ..ok.clone() }.cmp(&Labels { flags: leaked, ..ok.clone() }), std::cmp::Ordering::Equal);
        let (a, b): (Extra, Extra) = (Arc::from(vec!["x".into()]), Arc::from(vec!["x".into()]));
        assert_eq!(Labels { extra: Some(a), ..ok.clone() }.cmp(&Labels { extra: Some(b), ..ok.clone() }), std::cmp::Ordering::Equal);
        let metrics = Metrics::default();
        metrics.record(ok, took(Duration::from_millis(1)));
        metrics.record(copy, took(Duration::from_millis(1)));
        assert!(metrics.render(&PRODUCTPAGE, &[]).contains("connection_security_policy=\"unknown\"} 2\n"));
    }

    #[test]
    fn mutual_tls_gives_the_principals_and_the_security_policy() {
        let metrics = Metrics::default();
        let inbound = Labels { reporter: Reporter::Destination, ..ok() };
        let caller: Arc<str> = Arc::from("cluster.local/ns/shop/sa/web");
        metrics.record(Labels { security: Security::Mutual(Some(caller)), ..inbound.clone() }, took(Duration::from_millis(1)));
        metrics.record(inbound.clone(), took(Duration::from_millis(1)));
        metrics.record(Labels { security: Security::Mutual(None), ..ok() }, took(Duration::from_millis(1)));
        // A verified certificate that names no SPIFFE identity: mutual TLS, no principal.
        metrics.record(Labels { security: Security::Mutual(None), code: 204, ..inbound }, took(Duration::from_millis(1)));
        let text = metrics.render(&PRODUCTPAGE, &[]);
        // Inbound over mutual TLS: the caller's identity, and its namespace from it.
        let mutual = "reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"shop\",\
            source_principal=\"spiffe://cluster.local/ns/shop/sa/web\",destination_workload=\"productpage\",\
            destination_workload_namespace=\"default\",destination_principal=\"spiffe://cluster.local/ns/default/sa/productpage\",";
        assert!(text.contains(&format!("istio_requests_total{{{mutual}")), "{text}");
        assert!(text.contains("connection_security_policy=\"mutual_tls\"} 1\n"), "{text}");
        // Inbound in plaintext: no identities, policy `none`.
        let plain = "reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"unknown\",\
            source_principal=\"unknown\",destination_workload=\"productpage\",destination_workload_namespace=\"default\",\
            destination_principal=\"unknown\",";
        assert!(text.contains(&format!("istio_requests_total{{{plain}")), "{text}");
        assert!(text.contains("connection_security_policy=\"none\"} 1\n"), "{text}");
        // Outbound over mutual TLS: the workload's own identity; the policy is the server's to say.
        let outbound = "reporter=\"source\",source_workload=\"productpage\",source_workload_namespace=\"default\",\
            source_principal=\"spiffe://cluster.local/ns/default/sa/productpage\",destination_workload=\"unknown\",";
        assert!(text.contains(&format!("istio_requests_total{{{outbound}")), "{text}");
        let anonymous = "reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"unknown\",\
            source_principal=\"unknown\",destination_workload=\"productpage\",destination_workload_namespace=\"default\",\
            destination_principal=\"spiffe://cluster.local/ns/default/sa/productpage\",";
        assert!(text.contains(&format!("istio_requests_total{{{anonymous}")), "{text}");
        assert!(
            text.contains(
                "response_code=\"204\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_workloads_own_labels_follow_istios_and_their_value_sets_are_bounded() {
        let metrics = Metrics::default();
        let names = [
            MetricLabel { name: "user", attribute: MetricAttribute::RequestHeader("x-user") },
            MetricLabel { name: "method", attribute: MetricAttribute::RequestMethod },
        ];
        let ok = ok();
        let alice = metrics.extra(vec!["al\"ice".into(), "GET".into()]);
        assert!(Arc::ptr_eq(&alice, &metrics.extra(vec!["al\"ice".into(), "GET".into()])), "one set, shared");
        metrics.record(Labels { extra: Some(alice.clone()), ..ok.clone() }, took(Duration::from_millis(1)));
        metrics.record(Labels { extra: Some(alice), ..ok.clone() }, took(Duration::from_millis(1)));
        metrics.record(ok, took(Duration::from_millis(1)));
        let text = metrics.render(&PRODUCTPAGE, &names);
        assert!(text.contains("connection_security_policy=\"unknown\",user=\"al\\\"ice\",method=\"GET\"} 2\n"), "{text}");
        assert!(text.contains("connection_security_policy=\"unknown\",user=\"unknown\",method=\"unknown\"} 1\n"), "{text}");
        // A long value is cut.
        let long = metrics.extra(vec!["é".repeat(200).into(), "GET".into()]);
        assert_eq!((long[0].len(), long[0].chars().all(|it| it == 'é')), (256, true));
        // Past the bound, new sets of values count as `other`.
        for index in 1..MAX_EXTRA_SETS {
            metrics.extra(vec![index.to_string().into(), "GET".into()]);
        }
        assert_eq!(&*metrics.extra(vec!["new".into(), "GET".into()]), ["other".into(), "other".into()] as [Box<str>; 2]);
        assert_eq!(metrics.extras.lock().expect("lock").len(), MAX_EXTRA_SETS + 1);
    }

    #[test]
    fn tcp_series_carry_istios_tcp_labels_without_a_response_code() {
        let metrics = Metrics::default();
        let labels = TcpLabels { reporter: Reporter::Source, service: &REVIEWS, flags: "-", security: Security::Plain };
        metrics.tcp_opened(labels.clone());
        metrics.tcp_closed(labels, 10, 20);
        let text = metrics.render(&PRODUCTPAGE, &[]);
        let expected = "reporter=\"source\",source_workload=\"productpage\",source_workload_namespace=\"default\",\
            source_principal=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",\
            destination_principal=\"unknown\",destination_service=\"reviews.default.svc.cluster.local\",\
            destination_service_name=\"reviews\",destination_service_namespace=\"default\",request_protocol=\"tcp\",\
            response_flags=\"-\",connection_security_policy=\"unknown\"";
        assert!(text.contains(&format!("istio_tcp_sent_bytes_total{{{expected}}} 10\n")), "{text}");
        assert!(text.contains(&format!("istio_tcp_received_bytes_total{{{expected}}} 20\n")), "{text}");
        assert!(text.contains(&format!("istio_tcp_connections_opened_total{{{expected}}} 1\n")), "{text}");
    }

    #[test]
    fn every_threads_counts_sum_into_one_series_and_stay_after_the_thread_ends() {
        let (metrics, other) = (Arc::new(Metrics::default()), Metrics::default());
        let ok = ok();
        // Joined, not scoped: a joined thread has run its thread-locals' destructors, which a
        // scope does not wait for.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (metrics, ok) = (metrics.clone(), ok.clone());
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        metrics.record(ok.clone(), took(Duration::from_millis(3)));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("join");
        }
        metrics.record(ok.clone(), took(Duration::from_millis(40)));
        // Another instance on the same threads keeps its own counts.
        other.record(ok.clone(), took(Duration::from_millis(3)));
        let text = metrics.render(&PRODUCTPAGE, &[]);
        // The four threads' series were folded together when they were read: only this
        // thread's is left in the list.
        assert_eq!(metrics.requests.lock().expect("lock").len(), 1);
        assert_eq!(text, metrics.render(&PRODUCTPAGE, &[]));
        assert!(text.contains("response_flags=\"-\",connection_security_policy=\"unknown\"} 1001\n"), "{text}");
        assert!(text.contains("connection_security_policy=\"unknown\",le=\"5\"} 1000\n"), "{text}");
        assert!(text.contains("connection_security_policy=\"unknown\",le=\"50\"} 1001\n"), "{text}");
        assert!(text.contains("_sum{") && text.contains("} 3040\n"), "{text}");
        assert!(other.render(&PRODUCTPAGE, &[]).contains("connection_security_policy=\"unknown\"} 1\n"));
    }

    #[test]
    fn rpc_series_are_counted_by_method_and_bounded_in_number() {
        let metrics = Metrics::default();
        fn labels(method: &str) -> RpcLabels<'_> {
            RpcLabels { reporter: Reporter::Source, protocol: "dubbo", service: "org.x.Greeter", method, status: 20, flags: "-" }
        }
        for index in 0..MAX_RPC_SERIES + 5 {
            metrics.record_rpc(labels(&format!("m{index}")), Duration::from_millis(3));
        }
        metrics.record_rpc(labels("m0"), Duration::from_millis(3));
        let text = metrics.render(&Own { workload: "greeter", namespace: "demo", principal: "cluster.local/ns/demo/sa/greeter" }, &[]);
        assert!(text.contains("rpc_service=\"org.x.Greeter\",rpc_method=\"m0\",rpc_status=\"20\",response_flags=\"-\"} 2\n"), "{text}");
        assert!(text.contains("rpc_service=\"other\",rpc_method=\"other\",rpc_status=\"20\",response_flags=\"-\"} 5\n"));
        assert_eq!(text.matches("meshc_rpc_requests_total{").count(), MAX_RPC_SERIES + 1);
    }
}
