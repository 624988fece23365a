//! Cluster resources into run-time settings, and what is refused.

use envoy_types::pb::envoy::config::cluster::v3 as cds;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::*;
use crate::spec::{HashOn, Protocol, UpstreamTls};

const fn spec(load_balancer: Balancer) -> ClusterSpec {
    ClusterSpec {
        name: "outbound|9080|v1|reviews.default.svc.cluster.local",
        service_names: &["reviews"],
        port: 9080,
        subset_labels: &[],
        protocol: Protocol::Http1,
        connect_timeout_ms: 1000,
        request_timeout_ms: None,
        load_balancer,
        warmup_ms: None,
        limits: Limits::NONE,
        outlier: None,
        health_check: None,
        tls: UpstreamTls::Disable,
        endpoints: &[],
    }
}

static ROUND_ROBIN_SPEC: ClusterSpec = spec(Balancer::RoundRobin);
static HASH_SPEC: ClusterSpec = spec(Balancer::Hash(HashOn::SourceIp));

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
    assert_eq!(tuning.set(&from_cds(&served(), &ROUND_ROBIN_SPEC).expect("applies")), Some(4));
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
    assert_eq!(tuning.set(&from_cds(&bare, &ROUND_ROBIN_SPEC).expect("applies")), Some(1024));
    assert_eq!((tuning.max_requests(), tuning.max_retries(), tuning.max_connections()), (1024, 3, 1024));
    // The same again: the connection limit stands.
    assert_eq!(tuning.set(&from_cds(&bare, &ROUND_ROBIN_SPEC).expect("applies")), None);
    assert_eq!(tuning.outlier(), None);
}

#[test]
fn what_a_running_sidecar_cannot_change_is_refused() {
    let refused = |cluster: cds::Cluster, spec: &ClusterSpec| from_cds(&cluster, spec).expect_err("refused");
    let ring = cds::Cluster { lb_policy: cds::cluster::LbPolicy::RingHash as i32, ..served() };
    assert!(refused(ring.clone(), &ROUND_ROBIN_SPEC).contains("consistent hash"));
    // A compiled hash keeps its key; a served ring hash leaves it so.
    assert_eq!(from_cds(&ring, &HASH_SPEC).expect("applies").balancer, COMPILED);
    let slower = cds::Cluster { connect_timeout: Some(Duration { seconds: 3, nanos: 0 }), ..served() };
    assert!(refused(slower, &ROUND_ROBIN_SPEC).contains("connect timeout"));
    let checked = cds::Cluster { health_checks: vec![Default::default()], ..served() };
    assert!(refused(checked, &ROUND_ROBIN_SPEC).contains("health checking"));
    let tls = cds::Cluster { transport_socket: Some(Default::default()), ..served() };
    assert!(refused(tls, &ROUND_ROBIN_SPEC).contains("TLS"));
    let original = cds::Cluster { lb_policy: cds::cluster::LbPolicy::ClusterProvided as i32, ..served() };
    assert!(refused(original, &ROUND_ROBIN_SPEC).contains("cannot be applied"));
}
