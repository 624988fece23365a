//! Route configurations into overrides: which hosts are overridden, how their routes match,
//! and what is refused.

use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};

use super::*;

static COMPILED_ROUTE: RouteStats = RouteStats::new("reviews:9080", "default");
static COMPILED_ROUTES: [&RouteStats; 1] = [&COMPILED_ROUTE];
const CLUSTERS: [&str; 2] = ["outbound|9080|v1|reviews.default.svc.cluster.local", "outbound|9080|v2|reviews.default.svc.cluster.local"];

fn compiled(virtual_hosts: &[crate::spec::VirtualHostSpec]) -> Compiled<'_> {
    Compiled { clusters: &CLUSTERS, virtual_hosts, routes: &COMPILED_ROUTES }
}

/// reviews as compiled, with `digest`.
fn compiled_reviews(digest: &'static str) -> [crate::spec::VirtualHostSpec; 1] {
    [crate::spec::VirtualHostSpec { name: "reviews:9080", digest, domains: &["reviews", "reviews:9080"] }]
}

fn prefix(path: &str) -> route::RouteMatch {
    route::RouteMatch { path_specifier: Some(route::route_match::PathSpecifier::Prefix(path.to_owned())), ..Default::default() }
}

fn exact_header(name: &str, value: &str, invert: bool) -> route::HeaderMatcher {
    route::HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(value.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn to(destinations: &[(&str, u32)]) -> Option<route::route::Action> {
    use route::route_action::ClusterSpecifier;
    let specifier = ClusterSpecifier::WeightedClusters(route::WeightedCluster {
        clusters: destinations
            .iter()
            .map(|(name, weight)| route::weighted_cluster::ClusterWeight {
                name: (*name).to_owned(),
                weight: Some(UInt32Value { value: *weight }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    Some(route::route::Action::Route(route::RouteAction { cluster_specifier: Some(specifier), ..Default::default() }))
}

/// reviews: `jason` to v2, everyone else 10/90.
fn reviews() -> route::VirtualHost {
    route::VirtualHost {
        name: "reviews:9080".to_owned(),
        domains: vec!["reviews".to_owned(), "reviews:9080".to_owned()],
        routes: vec![
            route::Route {
                name: "jason".to_owned(),
                r#match: Some(route::RouteMatch { headers: vec![exact_header("end-user", "jason", false)], ..prefix("/") }),
                action: to(&[(CLUSTERS[1], 100)]),
                ..Default::default()
            },
            route::Route {
                name: "default".to_owned(),
                r#match: Some(prefix("/")),
                action: to(&[(CLUSTERS[0], 10), (CLUSTERS[1], 90)]),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn config(hosts: Vec<route::VirtualHost>) -> route::RouteConfiguration {
    route::RouteConfiguration { name: OUTBOUND.to_owned(), virtual_hosts: hosts, ..Default::default() }
}

fn selected<'t>(table: &'t OverrideTable, authority: &str, headers: &[(&'static str, &'static str)], path: &str) -> Option<&'t str> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, http::HeaderValue::from_static(value));
    }
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let head = RequestHead::from_parts("GET", authority, path, query, &map);
    table.host(head.authority()).flatten().and_then(|it| it.select(&head)).map(|it| it.stats.route)
}

#[test]
fn a_changed_host_is_overridden_and_routes_in_order() {
    let table = build(&config(vec![reviews()]), "v1", compiled(&compiled_reviews("an older digest"))).expect("applies");
    assert_eq!(table.len(), 1);
    assert_eq!(selected(&table, "reviews:9080", &[("end-user", "jason")], "/"), Some("jason"));
    assert_eq!(selected(&table, "REVIEWS", &[], "/x"), Some("default"));
    // Other hosts stay with the compiled tables.
    assert_eq!(selected(&table, "ratings:9080", &[], "/"), None);
    let Some(default) = table.host("reviews").flatten().and_then(|it| it.routes.get(1)) else { panic!("a second route") };
    let Action::Forward(forward) = &default.action else { panic!("a forwarding route") };
    let weights: Vec<(u32, u32)> = forward.destinations.iter().map(|it| (it.cluster, it.weight)).collect();
    assert_eq!(weights, [(0, 10), (1, 90)]);
    // A route the compiled sidecar has keeps counting where the compiled one counts.
    assert!(std::ptr::eq(default.stats, &COMPILED_ROUTE));
    // Envoy's default timeout when the route sets none.
    assert_eq!(forward.timeout_ms, Some(ENVOY_DEFAULT_TIMEOUT_MS));
}

#[test]
fn a_host_served_as_compiled_stays_compiled() {
    let digest: &'static str = Box::leak(virtual_host_digest(&reviews()).into_boxed_str());
    let table = build(&config(vec![reviews()]), "v1", compiled(&compiled_reviews(digest))).expect("applies");
    assert!(table.is_empty());
    assert!(table.host("reviews:9080").is_none());
}

#[test]
fn a_compiled_host_no_longer_served_answers_404_and_timeouts_read_as_envoy_reads_them() {
    // Pilot serves ratings only: reviews, compiled, is gone.
    let mut ratings = reviews();
    ratings.name = "ratings:9080".to_owned();
    ratings.domains = vec!["ratings".to_owned()];
    if let Some(route::route::Action::Route(action)) = ratings.routes[1].action.as_mut() {
        action.timeout = Some(Duration { seconds: 0, nanos: 0 });
    }
    let table = build(&config(vec![ratings]), "v1", compiled(&compiled_reviews("x"))).expect("applies");
    assert!(matches!(table.host("reviews:9080"), Some(None)));
    assert!(matches!(table.host("reviews"), Some(None)));
    let Some(Some(host)) = table.host("ratings") else { panic!("ratings is overridden") };
    let Action::Forward(forward) = &host.routes[1].action else { panic!("a forwarding route") };
    // 0 s: no timeout at all, not the cluster's.
    assert_eq!(forward.timeout_ms, Some(0));
}

#[test]
fn what_cannot_be_applied_is_refused_with_where() {
    let refused = |host: route::VirtualHost| build(&config(vec![host]), "v1", compiled(&[])).expect_err("refused");
    let mut unknown = reviews();
    unknown.routes[1].action = to(&[("outbound|9080|v3|reviews.default.svc.cluster.local", 100)]);
    let err = refused(unknown);
    assert!(err.contains("virtual host `reviews:9080`") && err.contains("route `default`") && err.contains("v3"), "{err}");
    assert!(err.contains("not compiled into this sidecar"), "{err}");
    for pattern in ["/v[0-9", "a**", "[[:alpha:]&&a]"] {
        let mut bad = reviews();
        bad.routes[0].r#match = Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::SafeRegex(matcher::RegexMatcher {
                regex: pattern.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        });
        let err = refused(bad);
        assert!(err.contains("route `jason`") && err.contains("is invalid"), "{pattern}: {err}");
    }
    let mut wildcard = reviews();
    wildcard.domains.push("*.example.com".to_owned());
    assert!(refused(wildcard).contains("wildcard"));
    let mut zero = reviews();
    zero.routes[1].action = to(&[(CLUSTERS[0], 0)]);
    assert!(refused(zero).contains("sum to 0"));
    let mut scheme = reviews();
    scheme.routes[0].r#match = Some(route::RouteMatch { headers: vec![exact_header(":scheme", "https", false)], ..prefix("/") });
    assert!(refused(scheme).contains(":scheme"));
    let twice = build(&config(vec![reviews(), reviews()]), "v1", compiled(&[])).expect_err("refused");
    assert!(twice.contains("listed twice"), "{twice}");
}

#[test]
fn inverted_matchers_read_as_envoy_reads_them() {
    let mut host = reviews();
    // Not jason: present and different; a missing header does not match.
    host.routes[0].r#match = Some(route::RouteMatch { headers: vec![exact_header("end-user", "jason", true)], ..prefix("/") });
    // No `debug` query parameter: meshc's inverted `:path` regex.
    host.routes[1].r#match = Some(route::RouteMatch {
        headers: vec![route::HeaderMatcher {
            name: ":path".to_owned(),
            invert_match: true,
            header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(matcher::RegexMatcher {
                    regex: r"[^?]*\?(.*&)?debug(=[^&]*)?(&.*)?".to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..prefix("/")
    });
    let table = build(&config(vec![host]), "v1", compiled(&[])).expect("applies");
    assert_eq!(selected(&table, "reviews", &[("end-user", "alice")], "/"), Some("jason"));
    assert_eq!(selected(&table, "reviews", &[("end-user", "jason")], "/"), Some("default"));
    assert_eq!(selected(&table, "reviews", &[], "/a?x=1"), Some("default"));
    assert_eq!(selected(&table, "reviews", &[], "/a?x=1&debug=1"), None);
}

#[test]
fn faults_and_rate_limits_come_from_per_route_filter_configuration() {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
    let half = FractionalPercent { numerator: 50, denominator: DenominatorType::Hundred as i32 };
    let abort = fault::HttpFault {
        abort: Some(fault::FaultAbort {
            percentage: Some(half),
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
        delay: Some(common::FaultDelay {
            percentage: Some(FractionalPercent { numerator: 1, denominator: DenominatorType::Million as i32 }),
            fault_delay_secifier: Some(common::fault_delay::FaultDelaySecifier::FixedDelay(Duration { seconds: 2, nanos: 0 })),
        }),
        ..Default::default()
    };
    let mut host = reviews();
    host.routes[1].typed_per_filter_config.insert(
        "envoy.filters.http.fault".to_owned(),
        Any { type_url: "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".to_owned(), value: abort.encode_to_vec() },
    );
    let table = build(&config(vec![host.clone()]), "v1", compiled(&[])).expect("applies");
    let Some(Action::Forward(forward)) = table.host("reviews").flatten().map(|it| &it.routes[1].action) else {
        panic!("a forwarding route")
    };
    assert!(matches!(forward.fault.abort, Some((Abort::Http(503), 500_000))));
    assert_eq!(forward.fault.delay, Some((2000, 1)));
    host.routes[1].typed_per_filter_config.insert("envoy.filters.http.lua".to_owned(), Any::default());
    let err = build(&config(vec![host]), "v1", compiled(&[])).expect_err("refused");
    assert!(err.contains("envoy.filters.http.lua"), "{err}");
}

/// A per-source limit as meshc writes it for Envoy: a wildcard `remote_address` descriptor.
fn per_source_limit(max_tokens: u32) -> local_ratelimit::LocalRateLimit {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent::DenominatorType};
    use envoy_types::pb::google::protobuf::BoolValue;
    let all = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent { numerator: 100, denominator: DenominatorType::Hundred as i32 }),
        runtime_key: String::new(),
    };
    let bucket = TokenBucket {
        max_tokens,
        tokens_per_fill: Some(UInt32Value { value: 1 }),
        fill_interval: Some(Duration { seconds: 60, nanos: 0 }),
    };
    let source = route::rate_limit::Action {
        action_specifier: Some(route::rate_limit::action::ActionSpecifier::RemoteAddress(route::rate_limit::action::RemoteAddress {})),
    };
    local_ratelimit::LocalRateLimit {
        token_bucket: Some(bucket),
        filter_enabled: Some(all()),
        filter_enforced: Some(all()),
        descriptors: vec![common::LocalRateLimitDescriptor {
            entries: vec![common::rate_limit_descriptor::Entry { key: "remote_address".to_owned(), value: String::new() }],
            token_bucket: Some(bucket),
            ..Default::default()
        }],
        rate_limits: vec![route::RateLimit { actions: vec![source], ..Default::default() }],
        always_consume_default_token_bucket: Some(BoolValue { value: false }),
        max_dynamic_descriptors: Some(UInt32Value { value: 10_000 }),
        ..Default::default()
    }
}

fn with_rate_limit(limit: &local_ratelimit::LocalRateLimit) -> Result<OverrideTable, String> {
    let mut host = reviews();
    host.routes[1].typed_per_filter_config.insert(
        "envoy.filters.http.local_ratelimit".to_owned(),
        Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit".to_owned(),
            value: limit.encode_to_vec(),
        },
    );
    build(&config(vec![host]), "v1", compiled(&[]))
}

#[test]
fn a_wildcard_remote_address_descriptor_is_a_bucket_per_source() {
    let table = with_rate_limit(&per_source_limit(2)).expect("applies");
    let Some(Action::Forward(forward)) = table.host("reviews").flatten().map(|it| &it.routes[1].action) else {
        panic!("a forwarding route")
    };
    let limit = forward.rate_limit.as_ref().expect("a rate limit");
    assert_eq!(limit.settings(), (2, 1, std::time::Duration::from_secs(60), true));
    let (one, two): (std::net::IpAddr, std::net::IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
    assert_eq!([one, one, one, two, two, two].map(|it| limit.admit(it)), [true, true, false, true, true, false]);

    // Descriptors the sidecar cannot carry out are refused, not read as something else.
    let mut keyed = per_source_limit(2);
    keyed.descriptors[0].entries[0].value = "10.0.0.1".to_owned();
    let mut other_key = per_source_limit(2);
    other_key.descriptors[0].entries[0].key = "destination_cluster".to_owned();
    let mut both_buckets = per_source_limit(2);
    both_buckets.always_consume_default_token_bucket = None;
    let mut no_action = per_source_limit(2);
    no_action.rate_limits.clear();
    let mut staged = per_source_limit(2);
    staged.rate_limits[0].stage = Some(UInt32Value { value: 1 });
    let mut own_status = per_source_limit(2);
    own_status.status = Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 503 });
    for (what, limit) in [
        ("a descriptor with a value", keyed),
        ("a descriptor on another key", other_key),
        ("the route's bucket consumed too", both_buckets),
        ("no action", no_action),
        ("a staged action", staged),
        ("a status of its own", own_status),
    ] {
        let err = with_rate_limit(&limit).err().unwrap_or_else(|| panic!("{what}: applied"));
        assert!(err.contains("local rate limit"), "{what}: {err}");
    }
}

/// The digest meshc writes into a sidecar and the one the sidecar computes must agree;
/// `codegen/src/emit/xds/tests.rs` checks the same vector.
#[test]
fn the_virtual_host_digest_is_canonical_and_pinned() {
    let mut host = reviews();
    for name in ["envoy.filters.http.fault", "envoy.filters.http.local_ratelimit", "b", "a"] {
        host.routes[1].typed_per_filter_config.insert(name.to_owned(), Any { type_url: name.to_owned(), value: name.as_bytes().to_vec() });
    }
    let digest = virtual_host_digest(&host);
    // Maps in another order give the same digest.
    let mut again = host.clone();
    again.routes[1].typed_per_filter_config = {
        let mut entries: Vec<(String, Any)> = host.routes[1].typed_per_filter_config.clone().into_iter().collect();
        entries.reverse();
        entries.into_iter().collect()
    };
    assert_eq!(virtual_host_digest(&again), digest);
    assert_eq!(digest, DIGEST_VECTOR);
    host.routes[1].name = "other".to_owned();
    assert_ne!(virtual_host_digest(&host), digest);
}

const DIGEST_VECTOR: &str = "9f8e7b0cf1040775741555b54e52a76c22bea20b2fac23637e455c5f70f49ebf";

#[test]
fn ignore_case_folds_ascii_letters_only_as_envoys_does() {
    use matcher::string_matcher::MatchPattern;
    let folded = |pattern: MatchPattern| {
        let mut host = reviews();
        host.routes[0].r#match = Some(route::RouteMatch {
            headers: vec![route::HeaderMatcher {
                name: "x-fruit".to_owned(),
                header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case: true,
                })),
                ..Default::default()
            }],
            ..prefix("/")
        });
        build(&config(vec![host]), "v1", compiled(&[])).expect("applies")
    };
    let route = |table: &OverrideTable, value: &str| -> &'static str {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-fruit", http::HeaderValue::from_bytes(value.as_bytes()).expect("a header value"));
        let head = RequestHead::from_parts("GET", "reviews", "/", None, &headers);
        table.host(head.authority()).flatten().and_then(|it| it.select(&head)).map_or("none", |it| it.stats.route)
    };
    let exact = folded(MatchPattern::Exact("kiwi.(1)".to_owned()));
    assert_eq!(route(&exact, "KiWi.(1)"), "jason");
    assert_eq!(route(&exact, "kiwix(1)"), "default", "the literal's dot is a dot");
    // U+212A KELVIN SIGN folds to `k` in Unicode, not in ASCII.
    assert_eq!(route(&exact, "\u{212a}iwi.(1)"), "default");
    let prefix_match = folded(MatchPattern::Prefix("Straße".to_owned()));
    assert_eq!(route(&prefix_match, "STRAßE-7"), "jason");
    assert_eq!(route(&prefix_match, "STRASSE-7"), "default");
    let suffix = folded(MatchPattern::Suffix("-SKY".to_owned()));
    assert_eq!(route(&suffix, "blue-sky"), "jason");
    assert_eq!(route(&suffix, "blue-s\u{212a}y"), "default");
    let contains = folded(MatchPattern::Contains("Mid".to_owned()));
    assert_eq!(route(&contains, "a-mID-b"), "jason");
}

#[test]
fn a_configurations_regexes_are_held_to_a_memory_budget() {
    let with_regexes = |count: usize, pattern: &str| {
        let mut host = reviews();
        host.routes[0].r#match = Some(route::RouteMatch {
            headers: (0..count)
                .map(|index| route::HeaderMatcher {
                    name: format!("x-h{index}"),
                    header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(matcher::RegexMatcher {
                            regex: pattern.to_owned(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..prefix("/")
        });
        build(&config(vec![host]), "v1", compiled(&[]))
    };
    // Each of these takes a few hundred KiB compiled, under the limit for one regex, and a
    // few hundred of them pass the budget for a whole configuration.
    let large = "[a-z]{1000}[0-9]{1000}";
    if let Err(err) = with_regexes(10, large) {
        panic!("ten fit: {err}");
    }
    let err = with_regexes(2_000, large).expect_err("refused");
    assert!(err.contains("regexes would take more than 256 MiB"), "{err}");
    // Small regexes, as real routes have, fit by the thousand.
    assert!(with_regexes(2_000, "[0-9]+").is_ok());
}

#[test]
fn route_metadata_is_digested_whatever_its_maps_order() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    // Maps built in opposite orders (each HashMap also hashes with its own seed).
    let metadata = |reverse: bool, flag: bool| {
        let mut names: Vec<usize> = (0..16).collect();
        if reverse {
            names.reverse();
        }
        let fields = |flag: bool| Struct {
            fields: names.iter().map(|it| (format!("field{it}"), Value { kind: Some(Kind::BoolValue(flag && *it == 3)) })).collect(),
        };
        Metadata { filter_metadata: names.iter().map(|it| (format!("filter{it}"), fields(flag))).collect(), ..Default::default() }
    };
    let with = |metadata: Metadata| {
        let mut host = reviews();
        host.routes[1].metadata = Some(metadata);
        virtual_host_digest(&host)
    };
    let digest = with(metadata(false, true));
    assert_eq!(with(metadata(true, true)), digest);
    assert_ne!(with(metadata(false, false)), digest, "a value changed");
    assert_ne!(virtual_host_digest(&reviews()), digest, "no metadata");
    let mut elsewhere = reviews();
    elsewhere.routes[0].metadata = Some(metadata(false, true));
    assert_ne!(virtual_host_digest(&elsewhere), digest, "the same metadata on another route");
}
