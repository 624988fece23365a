//! Cluster resources into run-time settings, and what is refused.

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::*;
use crate::spec::{HashOn, HashTable, UpstreamTls};

const fn spec(load_balancer: Balancer) -> ClusterSpec {
    ClusterSpec { load_balancer, ..ClusterSpec::plain("outbound|9080|v1|reviews.default.svc.cluster.local", &["reviews"]) }
}

static ROUND_ROBIN_SPEC: ClusterSpec = spec(Balancer::RoundRobin);
static HASH_SPEC: ClusterSpec = spec(Balancer::Hash(HashOn::SourceIp, HashTable::Ring { min_size: 1024 }));

fn value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// What meshc serves for the cluster, with least request, limits and outlier detection.
fn served() -> cds::Cluster {
    cds::Cluster {
        name: ROUND_ROBIN_SPEC.name.to_owned(),
        connect_timeout: Some(Duration { seconds: 1, nanos: 0 }),
        lb_policy: cds::cluster::LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(cds::CircuitBreakers {
            thresholds: vec![cds::circuit_breakers::Thresholds {
                max_requests: value(10),
                max_retries: value(2),
                max_connections: value(4),
                max_pending_requests: value(1),
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: Some(cds::OutlierDetection {
            consecutive_5xx: value(3),
            enforcing_consecutive_gateway_failure: value(100),
            base_ejection_time: Some(Duration { seconds: 10, nanos: 0 }),
            max_ejection_percent: value(50),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_served_cluster_sets_the_balancer_limits_and_outlier_detection() {
    let tuning = Tuning::new(&ROUND_ROBIN_SPEC);
    assert!(matches!(tuning.balancer(&ROUND_ROBIN_SPEC), Balancer::RoundRobin));
    assert_eq!((tuning.max_requests(), tuning.outlier()), (u32::MAX, None));
    assert_eq!(tuning.set(&from_cds(&served(), &ROUND_ROBIN_SPEC, "cluster.local").expect("applies")), Some(4));
    assert!(matches!(tuning.balancer(&ROUND_ROBIN_SPEC), Balancer::LeastRequest));
    assert_eq!((tuning.max_requests(), tuning.max_retries(), tuning.max_connections(), tuning.max_pending_requests()), (10, 2, 4, 1));
    let outlier = tuning.outlier().expect("on");
    // Envoy's defaults fill what the resource leaves out: 5xx counted and enforced, the
    // gateway detector enforced here at its default threshold.
    assert_eq!(
        (outlier.consecutive_5xx, outlier.consecutive_gateway_errors, outlier.base_ejection_time_ms, outlier.max_ejection_percent),
        (3, 5, 10_000, 50)
    );
    assert_eq!(tuning.dump(&ROUND_ROBIN_SPEC)["source"], "xds");

    // Without circuit breakers or outlier detection: Envoy's default thresholds, no detector.
    let bare = cds::Cluster { circuit_breakers: None, outlier_detection: None, ..served() };
    assert_eq!(tuning.set(&from_cds(&bare, &ROUND_ROBIN_SPEC, "cluster.local").expect("applies")), Some(1024));
    assert_eq!((tuning.max_requests(), tuning.max_retries(), tuning.max_connections()), (1024, 3, 1024));
    // The same again: the connection limit stands.
    assert_eq!(tuning.set(&from_cds(&bare, &ROUND_ROBIN_SPEC, "cluster.local").expect("applies")), None);
    assert_eq!(tuning.outlier(), None);
}

#[test]
fn what_a_running_sidecar_cannot_change_is_refused() {
    let refused = |cluster: cds::Cluster, spec: &ClusterSpec| from_cds(&cluster, spec, "cluster.local").expect_err("refused");
    let ring = cds::Cluster { lb_policy: cds::cluster::LbPolicy::RingHash as i32, ..served() };
    assert!(refused(ring.clone(), &ROUND_ROBIN_SPEC).contains("consistent hash"));
    // A compiled hash keeps its key; a served ring hash leaves it so.
    assert_eq!(from_cds(&ring, &HASH_SPEC, "cluster.local").expect("applies").balancer, COMPILED);
    let slower = cds::Cluster { connect_timeout: Some(Duration { seconds: 3, nanos: 0 }), ..served() };
    assert!(refused(slower, &ROUND_ROBIN_SPEC).contains("connect timeout"));
    let checked = cds::Cluster { health_checks: vec![Default::default()], ..served() };
    assert!(refused(checked, &ROUND_ROBIN_SPEC).contains("health checking"));
    let tls = cds::Cluster { transport_socket: Some(Default::default()), ..served() };
    assert!(refused(tls, &ROUND_ROBIN_SPEC).contains("TLS"));
    let original = cds::Cluster { lb_policy: cds::cluster::LbPolicy::ClusterProvided as i32, ..served() };
    assert!(refused(original, &ROUND_ROBIN_SPEC).contains("cannot be applied"));
}

const CHECKED_SPEC: ClusterSpec = ClusterSpec {
    health_check: Some(crate::health::HealthCheckSpec {
        http_path: Some("/healthz"),
        interval_ms: 5_000,
        timeout_ms: 1_500,
        healthy_threshold: 2,
        unhealthy_threshold: 3,
    }),
    ..spec(Balancer::RoundRobin)
};

#[test]
fn a_changed_health_check_is_refused() {
    let check = |path: &str, interval: i64| envoy_types::pb::envoy::config::core::v3::HealthCheck {
        timeout: Some(Duration { seconds: 1, nanos: 500_000_000 }),
        interval: Some(Duration { seconds: interval, nanos: 0 }),
        healthy_threshold: value(2),
        unhealthy_threshold: value(3),
        health_checker: Some(envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker::HttpHealthCheck(
            envoy_types::pb::envoy::config::core::v3::health_check::HttpHealthCheck { path: path.to_owned(), ..Default::default() },
        )),
        ..Default::default()
    };
    let with = |checks| cds::Cluster { health_checks: checks, ..served() };
    assert!(from_cds(&with(vec![check("/healthz", 5)]), &CHECKED_SPEC, "cluster.local").is_ok(), "as compiled");
    for (what, checks) in [
        ("another path", vec![check("/ready", 5)]),
        ("another interval", vec![check("/healthz", 10)]),
        ("two checks", vec![check("/healthz", 5), check("/healthz", 5)]),
    ] {
        let err = from_cds(&with(checks), &CHECKED_SPEC, "cluster.local").expect_err(what);
        assert!(err.contains("health check changed"), "{what}: {err}");
    }
}

/// A TLS transport socket as meshc serves it to Envoy: SNI, a certificate presented or not,
/// and URI identity matchers (exact, or a prefix when `prefix`).
fn tls_socket(sni: &str, presents: bool, sans: &[(bool, &str)]) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
    use prost::Message;
    let sds = |name: &str| tls::SdsSecretConfig { name: name.to_owned(), ..Default::default() };
    let matchers = sans
        .iter()
        .map(|(prefix, name)| tls::SubjectAltNameMatcher {
            san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(if *prefix {
                    MatchPattern::Prefix((*name).to_owned())
                } else {
                    MatchPattern::Exact((*name).to_owned())
                }),
                ..Default::default()
            }),
            oid: String::new(),
        })
        .collect();
    let context = tls::CommonTlsContext {
        tls_certificate_sds_secret_configs: if presents { vec![sds("default")] } else { Vec::new() },
        validation_context_type: Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(
            tls::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(tls::CertificateValidationContext {
                    match_typed_subject_alt_names: matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let upstream = tls::UpstreamTlsContext { common_tls_context: Some(context), sni: sni.to_owned(), ..Default::default() };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".to_owned(),
            value: upstream.encode_to_vec(),
        })),
    }
}

const ISTIO_SPEC: ClusterSpec = ClusterSpec {
    tls: UpstreamTls::IstioMutual { sni: None, principals: &["cluster.local/ns/default/sa/reviews"] },
    ..spec(Balancer::RoundRobin)
};
const ANY_PEER_SPEC: ClusterSpec =
    ClusterSpec { tls: UpstreamTls::IstioMutual { sni: None, principals: &[] }, ..spec(Balancer::RoundRobin) };
const SIMPLE_SPEC: ClusterSpec =
    ClusterSpec { tls: UpstreamTls::Simple { sni: Some("reviews.example.com") }, ..spec(Balancer::RoundRobin) };

#[test]
fn tls_with_another_name_mode_or_identity_is_refused() {
    let with = |socket| cds::Cluster { transport_socket: Some(socket), ..served() };
    let applies = |socket, spec: &ClusterSpec| from_cds(&with(socket), spec, "cluster.local");
    let reviews = "spiffe://cluster.local/ns/default/sa/reviews";
    assert!(applies(tls_socket("", true, &[(false, reviews)]), &ISTIO_SPEC).is_ok(), "Istio's mutual TLS as compiled");
    assert!(applies(tls_socket("", true, &[(true, "spiffe://cluster.local/")]), &ANY_PEER_SPEC).is_ok(), "any peer of the trust domain");
    assert!(applies(tls_socket("reviews.example.com", false, &[]), &SIMPLE_SPEC).is_ok(), "simple TLS as compiled");
    for (what, socket, spec) in [
        ("another identity", tls_socket("", true, &[(false, "spiffe://cluster.local/ns/default/sa/ratings")]), &ISTIO_SPEC),
        ("another trust domain", tls_socket("", true, &[(true, "spiffe://example.org/")]), &ANY_PEER_SPEC),
        ("any peer instead of one", tls_socket("", true, &[(true, "spiffe://cluster.local/")]), &ISTIO_SPEC),
        ("no certificate presented", tls_socket("", false, &[(false, reviews)]), &ISTIO_SPEC),
        ("another SNI", tls_socket("other.example.com", false, &[]), &SIMPLE_SPEC),
        ("a certificate presented", tls_socket("reviews.example.com", true, &[]), &SIMPLE_SPEC),
        ("an identity checked", tls_socket("reviews.example.com", false, &[(false, reviews)]), &SIMPLE_SPEC),
    ] {
        let err = applies(socket, spec).expect_err(what);
        assert!(err.contains("TLS towards the endpoints changed"), "{what}: {err}");
    }
}
