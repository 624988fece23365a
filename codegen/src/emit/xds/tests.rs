//! The JSON renderer's rules (durations, defaults, `Any`) and its guard against unlisted fields.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::google::protobuf::{Duration, UInt64Value};
use serde_json::json;

use super::{any, duration, to_json};

#[test]
fn durations_are_seconds_with_as_many_fraction_digits_as_needed() {
    let text = |it: Duration| to_json(&it);
    assert_eq!(text(duration(10_000)), json!("10s"));
    assert_eq!(text(duration(300)), json!("0.300s"));
    assert_eq!(text(duration(1_500)), json!("1.500s"));
    assert_eq!(text(Duration { seconds: 0, nanos: 1_000 }), json!("0.000001s"));
    assert_eq!(text(Duration { seconds: 2, nanos: 5 }), json!("2.000000005s"));
}

#[test]
fn defaults_are_left_out_and_64_bit_numbers_are_strings() {
    assert_eq!(to_json(&route::Route::default()), json!({}));
    let ring = cluster::cluster::RingHashLbConfig { minimum_ring_size: Some(UInt64Value { value: 1024 }), ..Default::default() };
    assert_eq!(to_json(&ring), json!({"minimum_ring_size": "1024"}));
    // A oneof member is shown even when it holds its type's default.
    let prefix = route::RouteMatch { path_specifier: Some(route::route_match::PathSpecifier::Prefix(String::new())), ..Default::default() };
    assert_eq!(to_json(&prefix), json!({"prefix": ""}));
}

#[test]
fn an_any_is_unpacked_under_its_type() {
    let config = route::RouteConfiguration { name: "outbound".to_owned(), ..Default::default() };
    assert_eq!(
        to_json(&any(&config)),
        json!({"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "outbound"})
    );
}

#[test]
#[should_panic(expected = "does not list")]
fn a_field_the_renderer_does_not_list_is_caught() {
    let cluster = cluster::Cluster { alt_stat_name: "lost".to_owned(), ..Default::default() };
    let _ = to_json(&cluster);
}

/// The digest the runtime's xDS client computes for the same virtual host
/// (`runtime/src/overrides/tests.rs` pins the same vector): the two copies of the function
/// must agree, or every compiled host would look overridden.
#[test]
fn virtual_host_digests_match_the_runtime_vector() {
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};
    use route::route_action::ClusterSpecifier;
    let v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let v2 = "outbound|9080|v2|reviews.default.svc.cluster.local";
    let prefix =
        || route::RouteMatch { path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".to_owned())), ..Default::default() };
    let to = |destinations: &[(&str, u32)]| {
        let clusters = destinations
            .iter()
            .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                name: (*name).to_owned(),
                weight: Some(UInt32Value { value: *weight }),
                ..Default::default()
            })
            .collect();
        let specifier = ClusterSpecifier::WeightedClusters(route::WeightedCluster { clusters, ..Default::default() });
        Some(route::route::Action::Route(route::RouteAction { cluster_specifier: Some(specifier), ..Default::default() }))
    };
    let jason = route::HeaderMatcher {
        name: "end-user".to_owned(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("jason".to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut host = route::VirtualHost {
        name: "reviews:9080".to_owned(),
        domains: vec!["reviews".to_owned(), "reviews:9080".to_owned()],
        routes: vec![
            route::Route {
                name: "jason".to_owned(),
                r#match: Some(route::RouteMatch { headers: vec![jason], ..prefix() }),
                action: to(&[(v2, 100)]),
                ..Default::default()
            },
            route::Route { name: "default".to_owned(), r#match: Some(prefix()), action: to(&[(v1, 10), (v2, 90)]), ..Default::default() },
        ],
        ..Default::default()
    };
    for name in ["envoy.filters.http.fault", "envoy.filters.http.local_ratelimit", "b", "a"] {
        host.routes[1].typed_per_filter_config.insert(name.to_owned(), Any { type_url: name.to_owned(), value: name.as_bytes().to_vec() });
    }
    assert_eq!(super::virtual_host_digest(&host), "9f8e7b0cf1040775741555b54e52a76c22bea20b2fac23637e455c5f70f49ebf");
}
