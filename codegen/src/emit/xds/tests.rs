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
