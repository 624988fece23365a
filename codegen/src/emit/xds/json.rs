//! Envoy's JSON for the xDS messages the emitter builds: the proto3 JSON mapping with proto
//! field names (what Envoy's `config_dump` prints and its file-based subscriptions read),
//! default values left out, `Any` unpacked under `@type`, durations as `"1.5s"` and 64-bit
//! integers as strings.
//!
//! prost messages carry no field names at run time and envoy-types ships no descriptors, so
//! each message type the emitter uses lists its fields here once. A field the emitter sets
//! but this list leaves out would be lost silently; in debug builds (every test) rendering
//! such a message fails an assertion instead.

use serde_json::{Map, Value};

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common_ratelimit;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3 as previous_hosts;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, Struct, UInt32Value, UInt64Value};
use prost::{Message, Name};

/// A message (or `Any`) as Envoy's JSON.
pub fn to_json<T: Json>(message: &T) -> Value {
    message.value()
}

/// A value's JSON.
pub trait Json {
    /// The JSON, or `None` for proto3's default value, which the mapping leaves out.
    fn json(&self) -> Option<Value>;

    /// The JSON even of a default value (a oneof member or a list element is always shown).
    fn value(&self) -> Value;
}

impl Json for String {
    fn json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| self.value())
    }
    fn value(&self) -> Value {
        Value::String(self.clone())
    }
}

impl Json for bool {
    fn json(&self) -> Option<Value> {
        self.then(|| self.value())
    }
    fn value(&self) -> Value {
        Value::Bool(*self)
    }
}

macro_rules! numbers {
    ($($ty:ty: $value:expr),*) => {$(
        impl Json for $ty {
            fn json(&self) -> Option<Value> {
                (*self != 0).then(|| self.value())
            }
            fn value(&self) -> Value {
                $value(*self)
            }
        }
    )*};
}

// proto3 JSON writes 64-bit integers as strings (JavaScript's numbers lose them).
numbers!(u32: Value::from, i32: Value::from, u64: |it: u64| Value::String(it.to_string()), i64: |it: i64| Value::String(it.to_string()));

impl Json for f64 {
    fn json(&self) -> Option<Value> {
        (*self != 0.0).then(|| self.value())
    }
    fn value(&self) -> Value {
        serde_json::Number::from_f64(*self).map_or(Value::Null, Value::Number)
    }
}

impl<T: Json> Json for Option<T> {
    fn json(&self) -> Option<Value> {
        self.as_ref().map(Json::value)
    }
    fn value(&self) -> Value {
        self.json().unwrap_or(Value::Null)
    }
}

impl<T: Json> Json for Vec<T> {
    fn json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| self.value())
    }
    fn value(&self) -> Value {
        Value::Array(self.iter().map(Json::value).collect())
    }
}

// prost's maps are std's; their keys are sorted here, so the output is deterministic.
#[allow(clippy::disallowed_types)]
impl<T: Json> Json for std::collections::HashMap<String, T> {
    fn json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| self.value())
    }
    fn value(&self) -> Value {
        let sorted: std::collections::BTreeMap<&String, &T> = self.iter().collect();
        Value::Object(sorted.into_iter().map(|(key, value)| (key.clone(), value.value())).collect())
    }
}

/// proto3's JSON for `google.protobuf.Struct`: a plain object of plain values.
impl Json for Struct {
    fn json(&self) -> Option<Value> {
        Some(self.value())
    }
    fn value(&self) -> Value {
        self.fields.value()
    }
}

impl Json for envoy_types::pb::google::protobuf::Value {
    fn json(&self) -> Option<Value> {
        Some(self.value())
    }
    fn value(&self) -> Value {
        use envoy_types::pb::google::protobuf::value::Kind;
        match &self.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(it)) => serde_json::Number::from_f64(*it).map_or(Value::Null, Value::Number),
            Some(Kind::StringValue(it)) => Value::String(it.clone()),
            Some(Kind::BoolValue(it)) => Value::Bool(*it),
            Some(Kind::StructValue(it)) => it.value(),
            Some(Kind::ListValue(it)) => Value::Array(it.values.iter().map(Json::value).collect()),
        }
    }
}

impl Json for Duration {
    fn json(&self) -> Option<Value> {
        Some(self.value())
    }
    fn value(&self) -> Value {
        let text = match self.nanos {
            0 => format!("{}s", self.seconds),
            nanos if nanos % 1_000_000 == 0 => format!("{}.{:03}s", self.seconds, nanos / 1_000_000),
            nanos if nanos % 1_000 == 0 => format!("{}.{:06}s", self.seconds, nanos / 1_000),
            nanos => format!("{}.{:09}s", self.seconds, nanos),
        };
        Value::String(text)
    }
}

macro_rules! wrappers {
    ($($ty:ty),*) => {$(
        impl Json for $ty {
            fn json(&self) -> Option<Value> {
                Some(self.value())
            }
            fn value(&self) -> Value {
                self.value.value()
            }
        }
    )*};
}

wrappers!(UInt32Value, UInt64Value, BoolValue);

/// Puts a field's JSON into an object unless it is the default.
fn put(map: &mut Map<String, Value>, name: &str, value: &impl Json) {
    if let Some(value) = value.json() {
        map.insert(name.trim_start_matches("r#").to_owned(), value);
    }
}

/// A oneof's member: one key of its message's object.
trait Oneof {
    fn put(&self, map: &mut Map<String, Value>);
}

impl<T: Oneof> Oneof for Option<T> {
    fn put(&self, map: &mut Map<String, Value>) {
        if let Some(it) = self {
            it.put(map);
        }
    }
}

/// The name of a proto enum's value, as prost generated it (`ROUND_ROBIN`).
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> Value {
    match E::try_from(value) {
        Ok(it) => Value::String(name(it).to_owned()),
        Err(_) => Value::from(value),
    }
}

macro_rules! enum_field {
    ($map:ident, $self:ident, $field:ident, $enum:ty) => {
        if $self.$field != 0 {
            $map.insert(stringify!($field).to_owned(), enum_name::<$enum>($self.$field, |it| it.as_str_name()));
        }
    };
}

/// `messages! { Type { field, field: enum Enum; oneof_field } }`: the JSON of each message
/// type, its scalar and message fields by name, its enum fields by value name, then its oneofs.
macro_rules! messages {
    ($($ty:ty { $($field:ident $(: enum $enum:ty)?),* $(; $($oneof:ident),+)? })*) => {$(
        impl Json for $ty {
            fn json(&self) -> Option<Value> {
                Some(self.value())
            }
            fn value(&self) -> Value {
                #[allow(unused_mut)]
                let mut map = Map::new();
                $( messages!(@field map, self, $field $(, $enum)?); )*
                $($( Oneof::put(&self.$oneof, &mut map); )+)?
                debug_assert!(
                    {
                        #[allow(unused_mut)]
                        let mut rest = self.clone();
                        $( rest.$field = Default::default(); )*
                        $($( rest.$oneof = Default::default(); )+)?
                        rest == <$ty>::default()
                    },
                    "{} has a field the JSON renderer does not list: {self:?}",
                    stringify!($ty),
                );
                Value::Object(map)
            }
        }
    )*};
    (@field $map:ident, $self:ident, $field:ident) => { put(&mut $map, stringify!($field), &$self.$field) };
    (@field $map:ident, $self:ident, $field:ident, $enum:ty) => { enum_field!($map, $self, $field, $enum) };
}

/// `oneofs! { Type { Variant => "json_name", Variant(enum Enum) => "json_name" } }`.
macro_rules! oneofs {
    ($($ty:ty { $($variant:ident $(( enum $enum:ty ))? => $name:literal),* $(,)? })*) => {$(
        impl Oneof for $ty {
            fn put(&self, map: &mut Map<String, Value>) {
                #[allow(unreachable_patterns)]
                match self {
                    $( Self::$variant(it) => { map.insert($name.to_owned(), oneofs!(@value it $(, $enum)?)); } )*
                    _ => debug_assert!(false, "{} member not listed for JSON: {self:?}", stringify!($ty)),
                }
            }
        }
    )*};
    (@value $it:ident) => { Json::value($it) };
    (@value $it:ident, $enum:ty) => { enum_name::<$enum>(*$it, |it| it.as_str_name()) };
}

impl Json for Any {
    fn json(&self) -> Option<Value> {
        Some(self.value())
    }
    fn value(&self) -> Value {
        fn unpack<T: Message + Name + Default + Json>(any: &Any) -> Option<Value> {
            (any.type_url == T::type_url()).then(|| T::decode(&any.value[..]).ok().map(|it| it.value())).flatten()
        }
        let value = unpack::<cluster::Cluster>(self)
            .or_else(|| unpack::<endpoint::ClusterLoadAssignment>(self))
            .or_else(|| unpack::<listener::Listener>(self))
            .or_else(|| unpack::<route::RouteConfiguration>(self))
            .or_else(|| unpack::<hcm::HttpConnectionManager>(self))
            .or_else(|| unpack::<router::Router>(self))
            .or_else(|| unpack::<fault::HttpFault>(self))
            .or_else(|| unpack::<local_ratelimit::LocalRateLimit>(self))
            .or_else(|| unpack::<upstream_http::HttpProtocolOptions>(self))
            .or_else(|| unpack::<tls::UpstreamTlsContext>(self))
            .or_else(|| unpack::<previous_hosts::PreviousHostsPredicate>(self));
        debug_assert!(value.is_some(), "no JSON for an Any of {}", self.type_url);
        let mut map = match value {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        map.insert("@type".to_owned(), Value::String(self.type_url.clone()));
        Value::Object(map)
    }
}

messages! {
    // CDS
    cluster::Cluster {
        name, eds_cluster_config, connect_timeout, lb_policy: enum cluster::cluster::LbPolicy, circuit_breakers,
        outlier_detection, common_lb_config, health_checks, typed_extension_protocol_options, transport_socket;
        cluster_discovery_type, lb_config
    }
    cluster::cluster::EdsClusterConfig { eds_config, service_name }
    cluster::cluster::RingHashLbConfig { minimum_ring_size }
    cluster::cluster::MaglevLbConfig { table_size }
    cluster::cluster::RoundRobinLbConfig { slow_start_config }
    cluster::cluster::LeastRequestLbConfig { slow_start_config }
    cluster::cluster::SlowStartConfig { slow_start_window }
    cluster::cluster::CommonLbConfig { healthy_panic_threshold }
    cluster::CircuitBreakers { thresholds }
    cluster::circuit_breakers::Thresholds { max_connections, max_pending_requests, max_requests, max_retries, retry_budget }
    cluster::circuit_breakers::thresholds::RetryBudget { budget_percent, min_retry_concurrency }
    cluster::OutlierDetection {
        consecutive_5xx, enforcing_consecutive_5xx, consecutive_gateway_failure, enforcing_consecutive_gateway_failure,
        interval, base_ejection_time, max_ejection_percent
    }
    core::HealthCheck { timeout, interval, healthy_threshold, unhealthy_threshold; health_checker }
    core::health_check::HttpHealthCheck { path }
    core::health_check::TcpHealthCheck {}
    upstream_http::HttpProtocolOptions { common_http_protocol_options; upstream_protocol_options }
    upstream_http::http_protocol_options::ExplicitHttpConfig { ; protocol_config }
    core::HttpProtocolOptions { max_requests_per_connection }
    core::Http1ProtocolOptions {}
    core::Http2ProtocolOptions {}
    core::TransportSocket { name; config_type }
    tls::UpstreamTlsContext { common_tls_context, sni }
    tls::CommonTlsContext { tls_certificate_sds_secret_configs, tls_certificate_provider_instance; validation_context_type }
    tls::SdsSecretConfig { name, sds_config }
    tls::common_tls_context::CombinedCertificateValidationContext { default_validation_context, validation_context_sds_secret_config }
    tls::CertificateValidationContext { match_typed_subject_alt_names, ca_certificate_provider_instance }
    tls::CertificateProviderPluginInstance { instance_name, certificate_name }
    tls::SubjectAltNameMatcher { san_type: enum tls::subject_alt_name_matcher::SanType, matcher, oid }
    core::ConfigSource { resource_api_version: enum core::ApiVersion; config_source_specifier }
    core::AggregatedConfigSource {}
    types::Percent { value }
    types::FractionalPercent { numerator, denominator: enum types::fractional_percent::DenominatorType }
    // EDS
    endpoint::ClusterLoadAssignment { cluster_name, endpoints }
    endpoint::LocalityLbEndpoints { locality, lb_endpoints, load_balancing_weight, priority }
    core::Locality { region, zone, sub_zone }
    endpoint::LbEndpoint { health_status: enum core::HealthStatus, load_balancing_weight; host_identifier }
    endpoint::Endpoint { address }
    core::Address { ; address }
    core::SocketAddress { address; port_specifier }
    // LDS
    listener::Listener { name, address, filter_chains, api_listener }
    listener::FilterChain { filters }
    listener::Filter { name; config_type }
    listener::ApiListener { api_listener }
    hcm::HttpConnectionManager { stat_prefix, http_filters, generate_request_id; route_specifier }
    hcm::Rds { config_source, route_config_name }
    hcm::HttpFilter { name, is_optional; config_type }
    router::Router {}
    fault::HttpFault { delay, abort }
    common_fault::FaultDelay { percentage; fault_delay_secifier }
    fault::FaultAbort { percentage; error_type }
    local_ratelimit::LocalRateLimit {
        stat_prefix, token_bucket, filter_enabled, filter_enforced, descriptors, rate_limits, always_consume_default_token_bucket,
        max_dynamic_descriptors, rate_limited_as_resource_exhausted
    }
    common_ratelimit::LocalRateLimitDescriptor { entries, token_bucket }
    common_ratelimit::rate_limit_descriptor::Entry { key, value }
    route::RateLimit { actions }
    route::rate_limit::Action { ; action_specifier }
    route::rate_limit::action::RemoteAddress {}
    types::TokenBucket { max_tokens, tokens_per_fill, fill_interval }
    core::RuntimeFractionalPercent { default_value, runtime_key }
    // RDS
    route::RouteConfiguration { name, virtual_hosts, validate_clusters }
    route::VirtualHost { name, domains, routes }
    route::Route {
        name, r#match, request_headers_to_add, request_headers_to_remove, response_headers_to_add,
        response_headers_to_remove, typed_per_filter_config, metadata; action
    }
    core::Metadata { filter_metadata }
    route::RouteMatch { headers, query_parameters; path_specifier }
    route::HeaderMatcher { name, invert_match; header_match_specifier }
    route::QueryParameterMatcher { name; query_parameter_match_specifier }
    matcher::StringMatcher { ignore_case; match_pattern }
    matcher::RegexMatcher { regex }
    route::RouteAction {
        prefix_rewrite, timeout, retry_policy, request_mirror_policies, hash_policy, max_stream_duration;
        cluster_specifier, host_rewrite_specifier
    }
    route::WeightedCluster { clusters }
    route::weighted_cluster::ClusterWeight { name, weight }
    route::RetryPolicy {
        retry_on, num_retries, per_try_timeout, retriable_status_codes, retry_host_predicate, host_selection_retry_max_attempts
    }
    route::retry_policy::RetryHostPredicate { name; config_type }
    previous_hosts::PreviousHostsPredicate {}
    route::route_action::RequestMirrorPolicy { cluster, runtime_fraction }
    route::route_action::HashPolicy { terminal; policy_specifier }
    route::route_action::hash_policy::Header { header_name }
    route::route_action::hash_policy::Cookie { name, path, ttl }
    route::route_action::hash_policy::ConnectionProperties { source_ip }
    route::route_action::hash_policy::QueryParameter { name }
    route::route_action::MaxStreamDuration { max_stream_duration }
    route::RedirectAction { host_redirect, port_redirect, response_code: enum route::redirect_action::RedirectResponseCode; scheme_rewrite_specifier, path_rewrite_specifier }
    route::DirectResponseAction { status, body }
    core::DataSource { ; specifier }
    core::HeaderValueOption { header, append_action: enum core::header_value_option::HeaderAppendAction }
    core::HeaderValue { key, value }
}

oneofs! {
    cluster::cluster::ClusterDiscoveryType { Type(enum cluster::cluster::DiscoveryType) => "type" }
    cluster::cluster::LbConfig {
        RingHashLbConfig => "ring_hash_lb_config",
        MaglevLbConfig => "maglev_lb_config",
        RoundRobinLbConfig => "round_robin_lb_config",
        LeastRequestLbConfig => "least_request_lb_config",
    }
    core::health_check::HealthChecker { HttpHealthCheck => "http_health_check", TcpHealthCheck => "tcp_health_check" }
    upstream_http::http_protocol_options::UpstreamProtocolOptions { ExplicitHttpConfig => "explicit_http_config" }
    upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig {
        HttpProtocolOptions => "http_protocol_options",
        Http2ProtocolOptions => "http2_protocol_options",
    }
    core::transport_socket::ConfigType { TypedConfig => "typed_config" }
    tls::common_tls_context::ValidationContextType {
        ValidationContext => "validation_context",
        CombinedValidationContext => "combined_validation_context",
    }
    core::config_source::ConfigSourceSpecifier { Ads => "ads" }
    endpoint::lb_endpoint::HostIdentifier { Endpoint => "endpoint" }
    core::address::Address { SocketAddress => "socket_address" }
    core::socket_address::PortSpecifier { PortValue => "port_value" }
    listener::filter::ConfigType { TypedConfig => "typed_config" }
    hcm::http_connection_manager::RouteSpecifier { Rds => "rds" }
    hcm::http_filter::ConfigType { TypedConfig => "typed_config" }
    common_fault::fault_delay::FaultDelaySecifier { FixedDelay => "fixed_delay" }
    fault::fault_abort::ErrorType { HttpStatus => "http_status", GrpcStatus => "grpc_status" }
    route::route::Action { Route => "route", Redirect => "redirect", DirectResponse => "direct_response" }
    route::rate_limit::action::ActionSpecifier { RemoteAddress => "remote_address" }
    route::route_match::PathSpecifier { Prefix => "prefix", Path => "path", SafeRegex => "safe_regex" }
    route::header_matcher::HeaderMatchSpecifier { StringMatch => "string_match", PresentMatch => "present_match" }
    route::query_parameter_matcher::QueryParameterMatchSpecifier { StringMatch => "string_match", PresentMatch => "present_match" }
    matcher::string_matcher::MatchPattern { Exact => "exact", Prefix => "prefix", SafeRegex => "safe_regex" }
    route::route_action::ClusterSpecifier { Cluster => "cluster", WeightedClusters => "weighted_clusters" }
    route::route_action::HostRewriteSpecifier { HostRewriteLiteral => "host_rewrite_literal" }
    route::retry_policy::retry_host_predicate::ConfigType { TypedConfig => "typed_config" }
    route::route_action::hash_policy::PolicySpecifier {
        Header => "header",
        Cookie => "cookie",
        ConnectionProperties => "connection_properties",
        QueryParameter => "query_parameter",
    }
    route::redirect_action::SchemeRewriteSpecifier { SchemeRedirect => "scheme_redirect" }
    route::redirect_action::PathRewriteSpecifier { PathRedirect => "path_redirect" }
    core::data_source::Specifier { InlineString => "inline_string" }
}
