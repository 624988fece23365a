//! A cluster's settings that xDS may change at run time (Envoy's CDS): the load balancer
//! (among round robin, random and least request; a consistent hash keeps its compiled key),
//! the circuit-breaker thresholds and retry budget, and passive outlier detection.
//!
//! Each is an atomic the request path loads with one relaxed read, starting at the compiled
//! value, so a sidecar without `--xds` pays nothing for it. What a Cluster resource says that
//! the sidecar cannot change while running (connect timeout, TLS and its SNI and peer
//! identities, health checks) must match what was compiled, or the resource is refused with
//! the reason.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use envoy_types::pb::envoy::config::cluster::v3 as cds;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use crate::health::HealthCheckSpec;
use crate::outlier::OutlierSpec;
use crate::spec::{Balancer, ClusterSpec, Limits, UpstreamTls};
use crate::xds::millis;

const COMPILED: u8 = 0;
const ROUND_ROBIN: u8 = 1;
const RANDOM: u8 = 2;
const LEAST_REQUEST: u8 = 3;

/// A retry budget's share when none is set.
const NO_BUDGET: u32 = u32::MAX;

/// Envoy's thresholds when a Cluster sets no circuit breaker.
const ENVOY_DEFAULT_LIMIT: u32 = 1024;
const ENVOY_DEFAULT_RETRIES: u32 = 3;

/// A cluster's run-time settings.
#[derive(Debug)]
pub struct Tuning {
    /// Whether xDS set them (for `/config_dump`).
    overridden: AtomicBool,
    balancer: AtomicU8,
    max_requests: AtomicU32,
    max_retries: AtomicU32,
    max_connections: AtomicU32,
    max_pending_requests: AtomicU32,
    budget_per_million: AtomicU32,
    budget_min_concurrency: AtomicU32,
    outlier: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_errors: AtomicU32,
    base_ejection_time_ms: AtomicU64,
    max_ejection_percent: AtomicU32,
    min_health_percent: AtomicU32,
}

/// Envoy's `healthy_panic_threshold` when a Cluster sets none, in percent.
const ENVOY_PANIC_THRESHOLD: u32 = 50;

/// Settings taken from a Cluster resource, not yet in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuned {
    balancer: u8,
    limits: [u32; 4],
    budget: Option<(u32, u32)>,
    outlier: Option<OutlierSpec>,
}

impl Tuning {
    /// The compiled settings of `spec`.
    pub fn new(spec: &ClusterSpec) -> Tuning {
        let limits = &spec.limits;
        let budget = limits.retry_budget.as_ref().map(|it| (it.per_million, it.min_concurrency));
        let outlier = spec.outlier.as_ref();
        Tuning {
            overridden: AtomicBool::new(false),
            balancer: AtomicU8::new(COMPILED),
            max_requests: AtomicU32::new(limits.max_requests),
            max_retries: AtomicU32::new(limits.max_retries),
            max_connections: AtomicU32::new(limits.max_connections),
            max_pending_requests: AtomicU32::new(limits.max_pending_requests),
            budget_per_million: AtomicU32::new(budget.map_or(NO_BUDGET, |it| it.0)),
            budget_min_concurrency: AtomicU32::new(budget.map_or(0, |it| it.1)),
            outlier: AtomicBool::new(outlier.is_some()),
            consecutive_5xx: AtomicU32::new(outlier.map_or(u32::MAX, |it| it.consecutive_5xx)),
            consecutive_gateway_errors: AtomicU32::new(outlier.map_or(u32::MAX, |it| it.consecutive_gateway_errors)),
            base_ejection_time_ms: AtomicU64::new(outlier.map_or(0, |it| it.base_ejection_time_ms)),
            max_ejection_percent: AtomicU32::new(outlier.map_or(0, |it| it.max_ejection_percent)),
            min_health_percent: AtomicU32::new(outlier.map_or(0, |it| it.min_health_percent)),
        }
    }

    /// The load balancer in force.
    pub fn balancer<'a>(&self, spec: &'a ClusterSpec) -> &'a Balancer {
        match self.balancer.load(Ordering::Relaxed) {
            ROUND_ROBIN => &Balancer::RoundRobin,
            RANDOM => &Balancer::Random,
            LEAST_REQUEST => &Balancer::LeastRequest,
            _ => &spec.load_balancer,
        }
    }

    /// Requests in flight at once.
    pub fn max_requests(&self) -> u32 {
        self.max_requests.load(Ordering::Relaxed)
    }

    /// Retries in flight at once, without a retry budget.
    pub fn max_retries(&self) -> u32 {
        self.max_retries.load(Ordering::Relaxed)
    }

    /// HTTP/1.1 requests (or TCP connections) holding an upstream connection at once.
    pub fn max_connections(&self) -> u32 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection at once.
    pub fn max_pending_requests(&self) -> u32 {
        self.max_pending_requests.load(Ordering::Relaxed)
    }

    /// Retries in flight at once while `requests` requests are.
    pub fn retries_allowed(&self, requests: u32) -> u32 {
        let limits = Limits {
            max_retries: self.max_retries.load(Ordering::Relaxed),
            retry_budget: match self.budget_per_million.load(Ordering::Relaxed) {
                NO_BUDGET => None,
                per_million => {
                    Some(crate::spec::RetryBudget { per_million, min_concurrency: self.budget_min_concurrency.load(Ordering::Relaxed) })
                }
            },
            ..Limits::NONE
        };
        limits.retries_allowed(requests)
    }

    /// Whether outlier detection is on.
    pub fn outlier_detection(&self) -> bool {
        self.outlier.load(Ordering::Relaxed)
    }

    /// The detector's settings in force, when it is on.
    pub fn outlier(&self) -> Option<OutlierSpec> {
        self.outlier_detection().then(|| OutlierSpec {
            consecutive_5xx: self.consecutive_5xx.load(Ordering::Relaxed),
            consecutive_gateway_errors: self.consecutive_gateway_errors.load(Ordering::Relaxed),
            base_ejection_time_ms: self.base_ejection_time_ms.load(Ordering::Relaxed),
            max_ejection_percent: self.max_ejection_percent.load(Ordering::Relaxed),
            min_health_percent: self.min_health_percent.load(Ordering::Relaxed),
        })
    }

    /// Envoy's panic threshold in percent: the outlier detector's `min_health_percent` (Istio
    /// writes it there), or Envoy's default of 50 for a cluster without one, whose endpoints
    /// only health checks can fail.
    pub fn panic_threshold(&self) -> u32 {
        if self.outlier_detection() { self.min_health_percent.load(Ordering::Relaxed) } else { ENVOY_PANIC_THRESHOLD }
    }

    /// Puts `tuned` in force; the new connection limit when it changed (the cluster then
    /// replaces its connection slots).
    pub fn set(&self, tuned: &Tuned) -> Option<u32> {
        self.balancer.store(tuned.balancer, Ordering::Relaxed);
        let [requests, retries, connection_limit, pending] = tuned.limits;
        self.max_requests.store(requests, Ordering::Relaxed);
        self.max_retries.store(retries, Ordering::Relaxed);
        self.max_pending_requests.store(pending, Ordering::Relaxed);
        let changed = (self.max_connections.swap(connection_limit, Ordering::Relaxed) != connection_limit).then_some(connection_limit);
        let (per_million, min_concurrency) = tuned.budget.unwrap_or((NO_BUDGET, 0));
        self.budget_per_million.store(per_million, Ordering::Relaxed);
        self.budget_min_concurrency.store(min_concurrency, Ordering::Relaxed);
        if let Some(outlier) = &tuned.outlier {
            self.consecutive_5xx.store(outlier.consecutive_5xx, Ordering::Relaxed);
            self.consecutive_gateway_errors.store(outlier.consecutive_gateway_errors, Ordering::Relaxed);
            self.base_ejection_time_ms.store(outlier.base_ejection_time_ms, Ordering::Relaxed);
            self.max_ejection_percent.store(outlier.max_ejection_percent, Ordering::Relaxed);
            self.min_health_percent.store(outlier.min_health_percent, Ordering::Relaxed);
        }
        self.outlier.store(tuned.outlier.is_some(), Ordering::Relaxed);
        self.overridden.store(true, Ordering::Relaxed);
        changed
    }

    /// The settings in force, for `/config_dump`.
    pub fn dump(&self, spec: &ClusterSpec) -> serde_json::Value {
        let unlimited = |it: u32| if it == u32::MAX { serde_json::Value::Null } else { it.into() };
        let balancer = match self.balancer(spec) {
            Balancer::RoundRobin => "round_robin",
            Balancer::Random => "random",
            Balancer::LeastRequest => "least_request",
            Balancer::Hash(..) => "hash",
        };
        serde_json::json!({
            "source": if self.overridden.load(Ordering::Relaxed) { "xds" } else { "compiled" },
            "load_balancer": balancer,
            "max_requests": unlimited(self.max_requests()),
            "max_retries": unlimited(self.max_retries()),
            "max_connections": unlimited(self.max_connections()),
            "max_pending_requests": unlimited(self.max_pending_requests()),
            "outlier_detection": self.outlier().map(|it| serde_json::json!({
                "consecutive_5xx": unlimited(it.consecutive_5xx),
                "consecutive_gateway_errors": unlimited(it.consecutive_gateway_errors),
                "base_ejection_time_ms": it.base_ejection_time_ms,
                "max_ejection_percent": it.max_ejection_percent,
                "min_health_percent": it.min_health_percent,
            })),
        })
    }
}

/// The settings a Cluster resource gives the compiled cluster `spec`, or why they cannot be
/// applied.
pub fn from_cds(cluster: &cds::Cluster, spec: &ClusterSpec, trust_domain: &str) -> Result<Tuned, String> {
    use cds::cluster::LbPolicy;
    let balancer = match (LbPolicy::try_from(cluster.lb_policy), &spec.load_balancer) {
        (Ok(LbPolicy::RoundRobin), _) => ROUND_ROBIN,
        (Ok(LbPolicy::Random), _) => RANDOM,
        (Ok(LbPolicy::LeastRequest), _) => LEAST_REQUEST,
        (Ok(LbPolicy::RingHash | LbPolicy::Maglev), Balancer::Hash(..)) => COMPILED,
        (Ok(LbPolicy::RingHash | LbPolicy::Maglev), _) => {
            return Err("a consistent hash needs its key compiled in (the routes' hash policy): rebuild the sidecar".to_owned());
        }
        _ => return Err(format!("load balancing policy {} cannot be applied here", cluster.lb_policy)),
    };
    let connect_timeout_ms = cluster.connect_timeout.as_ref().map_or(Ok(5_000), millis)?;
    if connect_timeout_ms != spec.connect_timeout_ms {
        return Err(format!(
            "the connect timeout changed ({} ms compiled, {connect_timeout_ms} ms served): rebuild the sidecar",
            spec.connect_timeout_ms
        ));
    }
    if cluster.health_checks.is_empty() == spec.health_check.is_some() {
        return Err("health checking was turned on or off: rebuild the sidecar".to_owned());
    }
    if let Some(compiled) = &spec.health_check
        && cluster.health_checks != [health_check(compiled)]
    {
        return Err("the health check changed (its probe, path, interval, timeout or thresholds): rebuild the sidecar".to_owned());
    }
    if cluster.transport_socket.is_some() == matches!(spec.tls, UpstreamTls::Disable) {
        return Err("TLS towards the endpoints was turned on or off: rebuild the sidecar".to_owned());
    }
    if let Some(socket) = &cluster.transport_socket {
        same_tls(socket, &spec.tls, trust_domain)?;
    }
    let thresholds = cluster.circuit_breakers.as_ref().and_then(|it| {
        it.thresholds.iter().find(|it| it.priority == envoy_types::pb::envoy::config::core::v3::RoutingPriority::Default as i32)
    });
    let limit = |value: Option<&envoy_types::pb::google::protobuf::UInt32Value>, default: u32| value.map_or(default, |it| it.value);
    let limits = match thresholds {
        None => [ENVOY_DEFAULT_LIMIT, ENVOY_DEFAULT_RETRIES, ENVOY_DEFAULT_LIMIT, ENVOY_DEFAULT_LIMIT],
        Some(it) => [
            limit(it.max_requests.as_ref(), ENVOY_DEFAULT_LIMIT),
            limit(it.max_retries.as_ref(), ENVOY_DEFAULT_RETRIES),
            limit(it.max_connections.as_ref(), ENVOY_DEFAULT_LIMIT),
            limit(it.max_pending_requests.as_ref(), ENVOY_DEFAULT_LIMIT),
        ],
    };
    let budget = thresholds.and_then(|it| it.retry_budget.as_ref()).map(|budget| {
        // Envoy's defaults: 20 %, and 3 retries whatever the load.
        let percent = budget.budget_percent.as_ref().map_or(20.0, |it| it.value);
        ((percent.clamp(0.0, 100.0) * 10_000.0).round() as u32, budget.min_retry_concurrency.as_ref().map_or(3, |it| it.value))
    });
    let outlier = match &cluster.outlier_detection {
        None => None,
        Some(it) => {
            let value = |it: Option<&envoy_types::pb::google::protobuf::UInt32Value>, default: u32| it.map_or(default, |it| it.value);
            // Envoy's defaults: the 5xx detector enforced, the gateway one counted only.
            let consecutive_5xx =
                if value(it.enforcing_consecutive_5xx.as_ref(), 100) > 0 { value(it.consecutive_5xx.as_ref(), 5) } else { u32::MAX };
            let consecutive_gateway_errors = if value(it.enforcing_consecutive_gateway_failure.as_ref(), 0) > 0 {
                value(it.consecutive_gateway_failure.as_ref(), 5)
            } else {
                u32::MAX
            };
            Some(OutlierSpec {
                consecutive_5xx,
                consecutive_gateway_errors,
                base_ejection_time_ms: it.base_ejection_time.as_ref().map_or(Ok(30_000), millis)?,
                max_ejection_percent: value(it.max_ejection_percent.as_ref(), 10).min(100),
                // Envoy's own default when the Cluster sets none.
                min_health_percent: cluster
                    .common_lb_config
                    .as_ref()
                    .and_then(|it| it.healthy_panic_threshold.as_ref())
                    .map_or(ENVOY_PANIC_THRESHOLD, |it| it.value.clamp(0.0, 100.0) as u32),
            })
        }
    };
    Ok(Tuned { balancer, limits, budget, outlier })
}

/// The health check meshc serves for a compiled one. A served check is taken only if it is
/// exactly this: the probes run as compiled.
fn health_check(compiled: &HealthCheckSpec) -> core::HealthCheck {
    use core::health_check::{HealthChecker, HttpHealthCheck, TcpHealthCheck};
    let duration = |ms: u64| Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 };
    let checker = match compiled.http_path {
        Some(path) => HealthChecker::HttpHealthCheck(HttpHealthCheck { path: path.to_owned(), ..Default::default() }),
        None => HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
    };
    core::HealthCheck {
        timeout: Some(duration(compiled.timeout_ms)),
        interval: Some(duration(compiled.interval_ms)),
        healthy_threshold: Some(UInt32Value { value: compiled.healthy_threshold }),
        unhealthy_threshold: Some(UInt32Value { value: compiled.unhealthy_threshold }),
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// Whether a served transport socket asks for the TLS the cluster was compiled with: the name
/// sent (SNI), whether the sidecar presents its certificate, and which peer identities it
/// accepts. Certificates and roots come from the sidecar's own files, whatever SDS names the
/// resource gives them.
fn same_tls(socket: &core::TransportSocket, compiled: &UpstreamTls, trust_domain: &str) -> Result<(), String> {
    use core::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use prost::Message;
    use tls::common_tls_context::ValidationContextType;
    let refused = |what: &str| Err(format!("TLS towards the endpoints changed ({what}): rebuild the sidecar"));
    let Some(ConfigType::TypedConfig(config)) = &socket.config_type else { return refused("no TLS configuration") };
    if !config.type_url.ends_with("/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext") {
        return refused(&format!("a {} transport socket", config.type_url));
    }
    let served = tls::UpstreamTlsContext::decode(&config.value[..]).map_err(|err| format!("an undecodable UpstreamTlsContext: {err}"))?;
    let context = served.common_tls_context.unwrap_or_default();
    let presents = !context.tls_certificates.is_empty()
        || !context.tls_certificate_sds_secret_configs.is_empty()
        || context.tls_certificate_provider_instance.is_some();
    let validation = match &context.validation_context_type {
        Some(ValidationContextType::ValidationContext(it)) => Some(it),
        Some(ValidationContextType::CombinedValidationContext(it)) => it.default_validation_context.as_ref(),
        _ => None,
    };
    let sans = validation.map_or(&[][..], |it| &it.match_typed_subject_alt_names[..]);
    let (sni, mutual, principals) = match compiled {
        UpstreamTls::Disable => return refused("TLS was compiled off"),
        UpstreamTls::Simple { sni } => (sni, false, None),
        UpstreamTls::Mutual { sni } => (sni, true, None),
        UpstreamTls::IstioMutual { sni, principals } => (sni, true, Some(principals)),
    };
    if served.sni != sni.unwrap_or_default() {
        return refused(&format!("SNI `{}` served, `{}` compiled", served.sni, sni.unwrap_or_default()));
    }
    if presents != mutual {
        return refused("whether the sidecar presents its certificate");
    }
    // Istio's mutual TLS accepts the compiled SPIFFE identities (or any of the trust
    // domain's); the other modes check the server's name, with no identity matchers.
    let accepted: Vec<(bool, String)> = match principals {
        None => Vec::new(),
        Some([]) => vec![(true, format!("spiffe://{trust_domain}/"))],
        Some(principals) => principals.iter().map(|it| (false, format!("spiffe://{it}"))).collect(),
    };
    let served_sans: Option<Vec<(bool, String)>> = sans
        .iter()
        .map(|it| {
            use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
            let uri = it.san_type == tls::subject_alt_name_matcher::SanType::Uri as i32;
            match it.matcher.as_ref().filter(|it| !it.ignore_case).and_then(|it| it.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(it)) if uri => Some((false, it.clone())),
                Some(MatchPattern::Prefix(it)) if uri => Some((true, it.clone())),
                _ => None,
            }
        })
        .collect();
    if served_sans.is_none_or(|it| it != accepted) {
        return refused("the peer identities accepted");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
