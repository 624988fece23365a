//! ClusterLoadAssignments into endpoint lists, and what is refused.

use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, Locality, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint};
use envoy_types::pb::google::protobuf::UInt32Value;

use prost::Message;

use super::{Assignment, Read, endpoints_of, jittered};
use crate::endpoints::EndpointSet;

/// The endpoints of `assignment` as the client reads them from the wire, after `previous`.
fn read(assignment: &ClusterLoadAssignment, previous: &EndpointSet) -> Result<Vec<crate::endpoints::Endpoint>, String> {
    read_after(assignment, previous, &[]).map(|it| it.endpoints)
}

/// [`read`], knowing the bytes `previous`'s endpoints were read from.
fn read_after(assignment: &ClusterLoadAssignment, previous: &EndpointSet, encoded: &[bytes::Bytes]) -> Result<Read, String> {
    let view = Assignment::decode(&assignment.encode_to_vec()[..]).map_err(|err| err.to_string())?;
    endpoints_of(&view, previous, encoded)
}

/// What a request sees of each endpoint.
fn seen(endpoints: &[crate::endpoints::Endpoint]) -> Vec<(String, u32, bool, String)> {
    endpoints.iter().map(|it| (it.authority().to_owned(), it.weight, it.routable, it.locality.to_string())).collect()
}

fn none() -> EndpointSet {
    EndpointSet::new(Vec::new())
}

fn lb_endpoint(ip: &str, port: u32, weight: Option<u32>, health: HealthStatus) -> LbEndpoint {
    LbEndpoint {
        health_status: health as i32,
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn assignment(endpoints: Vec<LbEndpoint>, zone: &str) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "outbound|80||web.default.svc.cluster.local".to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality { region: "eu".to_owned(), zone: zone.to_owned(), sub_zone: String::new() }),
            lb_endpoints: endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn endpoints_keep_address_weight_health_and_locality() {
    let endpoints = read(
        &assignment(
            vec![
                lb_endpoint("10.0.0.1", 8080, Some(3), HealthStatus::Healthy),
                lb_endpoint("10.0.0.2", 8081, None, HealthStatus::Unknown),
                lb_endpoint("10.0.0.3", 8082, Some(5), HealthStatus::Draining),
                lb_endpoint("::1", 8083, Some(1), HealthStatus::Unhealthy),
            ],
            "eu-1a",
        ),
        &none(),
    )
    .expect("valid");
    let seen: Vec<(&str, u32, bool, &str)> = endpoints.iter().map(|it| (it.authority(), it.weight, it.routable, &*it.locality)).collect();
    assert_eq!(
        seen,
        [
            ("10.0.0.1:8080", 3, true, "eu/eu-1a"),
            ("10.0.0.2:8081", 1, true, "eu/eu-1a"),
            ("10.0.0.3:8082", 5, false, "eu/eu-1a"),
            ("[::1]:8083", 1, false, "eu/eu-1a"),
        ]
    );
}

#[test]
fn unusable_endpoints_are_refused_with_the_reason() {
    let refused = |endpoint: LbEndpoint| read(&assignment(vec![endpoint], ""), &none()).expect_err("refused");
    assert!(refused(lb_endpoint("10.0.0.1", 0, None, HealthStatus::Healthy)).contains("out of range"));
    assert!(refused(lb_endpoint("10.0.0.1", 70_000, None, HealthStatus::Healthy)).contains("out of range"));
    assert!(refused(lb_endpoint("10.0.0.1", 80, Some(0), HealthStatus::Healthy)).contains("weight 0"));
    assert!(refused(lb_endpoint("", 80, None, HealthStatus::Healthy)).contains("empty address"));
    let nameless = LbEndpoint { host_identifier: Some(lb_endpoint::HostIdentifier::EndpointName("x".to_owned())), ..Default::default() };
    assert!(refused(nameless).contains("without an address"));
}

#[test]
fn endpoints_kept_in_place_share_their_address_and_take_their_new_weight() {
    let first = read(
        &assignment(
            vec![lb_endpoint("10.0.0.1", 80, Some(1), HealthStatus::Healthy), lb_endpoint("10.0.0.2", 80, Some(1), HealthStatus::Healthy)],
            "a",
        ),
        &none(),
    )
    .expect("valid");
    let previous = EndpointSet::new(first.clone());
    let second = read(
        &assignment(
            vec![
                lb_endpoint("10.0.0.1", 80, Some(7), HealthStatus::Draining),
                lb_endpoint("10.0.0.2", 81, Some(1), HealthStatus::Healthy),
                lb_endpoint("10.0.0.3", 80, Some(1), HealthStatus::Healthy),
            ],
            "b",
        ),
        &previous,
    )
    .expect("valid");
    let seen: Vec<(&str, u32, bool, &str)> = second.iter().map(|it| (it.authority(), it.weight, it.routable, &*it.locality)).collect();
    assert_eq!(seen, [("10.0.0.1:80", 7, false, "eu/b"), ("10.0.0.2:81", 1, true, "eu/b"), ("10.0.0.3:80", 1, true, "eu/b")]);
    assert!(std::sync::Arc::ptr_eq(&first[0].address, &second[0].address), "kept in place: shared");
    assert!(!std::sync::Arc::ptr_eq(&first[1].address, &second[1].address), "another port: made anew");
}

#[test]
fn an_assignment_read_after_the_last_one_gives_what_reading_it_alone_gives() {
    let healthy = |ip: &str, port: u32, weight: u32| lb_endpoint(ip, port, Some(weight), HealthStatus::Healthy);
    let first = assignment(vec![healthy("10.0.0.1", 80, 1), healthy("10.0.0.2", 80, 1), healthy("10.0.0.3", 80, 1)], "a");
    let Read { endpoints, encoded } = read_after(&first, &none(), &[]).expect("valid");
    let mut previous = (EndpointSet::new(endpoints), encoded);
    // One weight changed and one endpoint moved to another port; then one left out and the
    // others in another zone; then the same assignment again.
    let second = assignment(vec![healthy("10.0.0.1", 80, 1), healthy("10.0.0.2", 80, 9), healthy("10.0.0.3", 81, 1)], "a");
    let third = assignment(vec![healthy("10.0.0.1", 80, 1), healthy("10.0.0.2", 80, 9)], "b");
    for next in [second, third.clone(), third] {
        let alone = read(&next, &none()).expect("valid");
        let after = read_after(&next, &previous.0, &previous.1).expect("valid");
        assert_eq!(seen(&after.endpoints), seen(&alone));
        assert_eq!(after.encoded.len(), alone.len());
        previous = (EndpointSet::new(after.endpoints), after.encoded);
    }
    assert_eq!(seen(previous.0.all()), [("10.0.0.1:80".into(), 1, true, "eu/b".into()), ("10.0.0.2:80".into(), 9, true, "eu/b".into())]);
}

static CLUSTERS: [crate::spec::ClusterSpec; 1] = [crate::spec::ClusterSpec::plain("outbound|80||web.default.svc.cluster.local", &["web"])];

static SPEC: crate::spec::SidecarSpec = crate::spec::SidecarSpec {
    workload: "client",
    namespace: "default",
    trust_domain: "cluster.local",
    principal: "cluster.local/ns/default/sa/client",
    listeners: &[],
    clusters: &CLUSTERS,
    route_outbound: |_| crate::spec::Decision::NoRoute,
    route_rpc: |_| crate::spec::Decision::NoRoute,
    rpc_attachments: false,
    authz: &crate::authz::Policies::NONE,
    inbound_rate_limit: None,
    access_log: crate::accesslog::AccessLog::Off,
    request_id: false,
    metric_labels: &[],
    tracing: false,
    config_dump: "{}",
    routes: &[],
    virtual_hosts: &[],
};

/// A sidecar of one cluster, `web`, with no endpoints yet.
pub(crate) fn sidecar() -> crate::proxy::Proxy {
    crate::proxy::Proxy::new(&SPEC, vec![crate::endpoints::ClusterEndpoints::new(Vec::new(), "")], None).expect("a proxy")
}

fn as_any(assignment: &ClusterLoadAssignment) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any { type_url: super::CLUSTER_LOAD_ASSIGNMENT.to_owned(), value: assignment.encode_to_vec() }
}

#[test]
fn assignments_applied_one_after_another_keep_what_is_unchanged_and_take_what_changed() {
    let proxy = sidecar();
    let healthy = |ip: &str, weight: u32| lb_endpoint(ip, 80, Some(weight), HealthStatus::Healthy);
    let endpoints = || proxy.clusters[0].endpoints.current();
    super::apply_endpoints(&proxy, &[as_any(&assignment(vec![healthy("10.0.0.1", 1), healthy("10.0.0.2", 1)], "a"))]).expect("applied");
    let first = endpoints();
    super::apply_endpoints(&proxy, &[as_any(&assignment(vec![healthy("10.0.0.1", 1), healthy("10.0.0.2", 5)], "a"))]).expect("applied");
    let second = endpoints();
    assert_eq!(seen(second.all()), [("10.0.0.1:80".into(), 1, true, "eu/a".into()), ("10.0.0.2:80".into(), 5, true, "eu/a".into())]);
    // The unchanged endpoint is the one applied before, locality and all; the other was read again.
    assert!(std::sync::Arc::ptr_eq(&first.all()[0].locality, &second.all()[0].locality));
    assert!(!std::sync::Arc::ptr_eq(&first.all()[1].locality, &second.all()[1].locality));
    // A set the client did not make (here, one put in place by hand) is read whole.
    let _ = proxy.clusters[0].endpoints.replace(vec![crate::endpoints::Endpoint::new("10.0.0.1", 80, 3, true, "eu/a")]);
    super::apply_endpoints(&proxy, &[as_any(&assignment(vec![healthy("10.0.0.1", 1), healthy("10.0.0.2", 7)], "a"))]).expect("applied");
    assert_eq!(seen(endpoints().all()), [("10.0.0.1:80".into(), 1, true, "eu/a".into()), ("10.0.0.2:80".into(), 7, true, "eu/a".into())]);
}

#[test]
fn a_cluster_named_twice_in_one_response_refuses_it() {
    let proxy = sidecar();
    let one = as_any(&assignment(vec![lb_endpoint("10.0.0.1", 80, None, HealthStatus::Healthy)], "a"));
    let other = as_any(&assignment(vec![lb_endpoint("10.0.0.2", 80, None, HealthStatus::Healthy)], "a"));
    let error = super::apply_endpoints(&proxy, &[one.clone(), other.clone()]).expect_err("refused");
    assert!(error.contains("twice in one response"), "{error}");
    assert!(proxy.clusters[0].endpoints.current().all().is_empty(), "nothing applied");
    // Also when one of the two is the assignment applied last (skipped as unchanged).
    super::apply_endpoints(&proxy, std::slice::from_ref(&one)).expect("applied");
    assert!(super::apply_endpoints(&proxy, &[other, one]).expect_err("refused").contains("twice in one response"));
    assert_eq!(seen(proxy.clusters[0].endpoints.current().all())[0].0, "10.0.0.1:80");
}

#[test]
fn fields_the_sidecar_does_not_read_are_checked_as_the_whole_message_would_be() {
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
    let mut full = assignment(vec![lb_endpoint("10.0.0.1", 80, None, HealthStatus::Healthy)], "a");
    full.policy = Some(Policy { overprovisioning_factor: Some(UInt32Value { value: 140 }), ..Default::default() });
    full.endpoints[0].priority = 1;
    full.endpoints[0].load_balancing_weight = Some(UInt32Value { value: 3 });
    let endpoints = read(&full, &none()).expect("valid");
    assert_eq!(endpoints.iter().map(|it| it.authority()).collect::<Vec<_>>(), ["10.0.0.1:80"]);
    // What ClusterLoadAssignment's own decoder refuses is refused: `policy` (field 4) sent
    // as a number, a locality's `priority` (field 5) sent as bytes.
    let mut bytes = assignment(vec![lb_endpoint("10.0.0.1", 80, None, HealthStatus::Healthy)], "a").encode_to_vec();
    bytes.extend_from_slice(&[0x20, 0x01]);
    assert!(ClusterLoadAssignment::decode(&bytes[..]).is_err());
    assert!(Assignment::decode(&bytes[..]).is_err());
    let mut locality = LocalityLbEndpoints::default().encode_to_vec();
    locality.extend_from_slice(&[0x2a, 0x00]);
    let view = Assignment { cluster_name: "c".to_owned(), endpoints: vec![locality.into()], ..Default::default() };
    assert!(endpoints_of(&view, &none(), &[]).expect_err("refused").contains("locality 0 is undecodable"));
    // Cut short inside the endpoint list (the last field here): refused, never half applied.
    let bytes = assignment(vec![lb_endpoint("10.0.0.1", 80, None, HealthStatus::Healthy)], "a").encode_to_vec();
    assert!(Assignment::decode(&bytes[..bytes.len() - 3]).is_err());
    // An endpoint whose bytes are not an LbEndpoint.
    let broken = Assignment {
        cluster_name: "c".to_owned(),
        endpoints: vec![bytes::Bytes::from_static(&[0x12, 0x02, 0xff, 0xff])],
        ..Default::default()
    };
    assert!(endpoints_of(&broken, &none(), &[]).expect_err("refused").contains("endpoint 0 is undecodable"));
}

#[test]
fn backoff_is_jittered_around_the_wait() {
    let wait = std::time::Duration::from_millis(1000);
    for _ in 0..100 {
        let it = jittered(wait);
        assert!(it >= wait * 3 / 4 && it <= wait * 5 / 4, "{it:?}");
    }
}

#[test]
fn an_assignment_of_more_endpoints_than_the_bound_is_refused_before_it_is_decoded() {
    // An empty `LbEndpoint` is written in two bytes: field 2, length 0.
    let locality = |endpoints: usize| bytes::Bytes::from([0x12u8, 0x00].repeat(endpoints));
    assert_eq!(super::count_entries(&locality(7), 2), Ok(7));
    assert_eq!(super::count_entries(&[0x0a, 0x01, b'x', 0x12, 0x00], 2), Ok(1), "other fields are skipped");
    assert!(super::count_entries(&[0x12, 0x05, 0x00], 2).is_err(), "a field longer than the message");
    let assignment = |endpoints: usize| Assignment {
        cluster_name: "web".to_owned(),
        endpoints: vec![locality(endpoints)],
        named_endpoints: Default::default(),
        policy: None,
    };
    let error = endpoints_of(&assignment(super::MAX_ASSIGNMENT_ENTRIES), &none(), &[]).expect_err("past the bound");
    assert!(error.contains("more than 100000 endpoints and localities"), "{error}");
    // Within the bound the endpoints are read (and these, without addresses, refused for that).
    let error = endpoints_of(&assignment(3), &none(), &[]).expect_err("no address");
    assert!(!error.contains("more than"), "{error}");
}
