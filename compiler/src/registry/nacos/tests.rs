//! Tests of the nacos adapter: realistic snapshots in, exact services, instances and diagnostics out.

use meshc_codegen::ir::{Health, RegistryKind};

use super::*;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

const FILE: FileId = FileId(7);

fn load_text(text: &str) -> (Snapshot, Vec<Diagnostic>) {
    let registry = crate::registry::testing::entry("nacos-hz", RegistryKind::Nacos, "registries/nacos.json");
    crate::registry::testing::run(&registry, FILE, text, "shop", load)
}

fn clean(text: &str) -> Snapshot {
    let (snapshot, diagnostics) = load_text(text);
    assert_eq!(diagnostics, Vec::new(), "unexpected diagnostics");
    snapshot
}

/// The text a span covers.
fn spanned(text: &str, span: Span) -> &str {
    assert_eq!(span.file, FILE);
    &text[span.start as usize..span.end as usize]
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// (message, note) of each diagnostic, all of which must be `RegistryEntry` errors.
fn entry_errors(diagnostics: &[Diagnostic]) -> Vec<(String, String)> {
    diagnostics
        .iter()
        .map(|it| {
            assert_eq!(it.code, Code::RegistryEntry);
            assert_eq!(it.labels.len(), 1);
            assert_eq!(it.labels[0].message, "this entry was skipped");
            (it.message.clone(), it.notes.join("\n"))
        })
        .collect()
}

const DUBBO: &str = r#"{"name":"DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray","groupName":"DEFAULT_GROUP","clusters":"",
 "cacheMillis":10000,"lastRefTime":1700000000000,"checksum":"c0ffee","allIPs":false,"reachProtectionThreshold":false,"valid":true,
 "hosts":[{"instanceId":"10.0.1.15#20880#DEFAULT#DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray",
   "ip":"10.0.1.15","port":20880,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,
   "clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray",
   "metadata":{"side":"provider","application":"demo-provider","methods":"sayHello","version":"1.0.0","group":"gray","protocol":"dubbo"},
   "instanceHeartBeatInterval":5000,"instanceHeartBeatTimeOut":15000,"ipDeleteTimeout":30000,"instanceIdGenerator":"simple"}]}"#;

#[test]
fn dubbo_providers_become_rpc_services_in_the_mesh_namespace() {
    let snapshot = clean(DUBBO);
    assert_eq!(snapshot.version.as_deref(), Some("1700000000000"));
    assert_eq!(snapshot.services.len(), 1);
    let service = &snapshot.services[0];
    assert_eq!((service.namespace.as_str(), service.name.as_str()), ("mesh", "gray/com.ex.DemoService:1.0.0"));
    let key = service.rpc.as_ref().unwrap();
    assert_eq!((key.interface.as_str(), key.version.as_deref(), key.group.as_deref()), ("com.ex.DemoService", Some("1.0.0"), Some("gray")));
    assert_eq!(service.protocol, Some(Protocol::Dubbo));
    assert_eq!(service.methods, Some(BTreeSet::from(["sayHello".to_owned()])));
    assert!(service.ports.is_empty());
    assert_eq!(service.entry, "Nacos service `DEFAULT_GROUP@@providers:com.ex.DemoService:1.0.0:gray`");
    assert_eq!(spanned(DUBBO, service.span), DUBBO);

    assert_eq!(snapshot.instances.len(), 1);
    let instance = &snapshot.instances[0];
    assert_eq!((instance.namespace.as_str(), instance.service.as_str()), ("mesh", "gray/com.ex.DemoService:1.0.0"));
    assert_eq!((instance.address.as_str(), instance.port, instance.service_port), ("10.0.1.15", 20880, None));
    assert_eq!((instance.weight, instance.health), (super::super::DEFAULT_WEIGHT, Health::Healthy));
    assert_eq!(instance.locality, Locality::default());
    assert_eq!(
        instance.labels,
        labels(&[
            ("application", "demo-provider"),
            ("group", "gray"),
            ("methods", "sayHello"),
            ("protocol", "dubbo"),
            ("side", "provider"),
            ("version", "1.0.0")
        ])
    );
    assert!(spanned(DUBBO, instance.span).starts_with(r#"{"instanceId":"10.0.1.15#20880"#));
    assert!(spanned(DUBBO, instance.span).ends_with(r#""instanceIdGenerator":"simple"}"#));
}

#[test]
fn dubbo_names_with_empty_parts_and_other_protocols() {
    let text = r#"[
          {"name":"DEFAULT_GROUP@@providers:com.ex.Echo::","hosts":[
            {"ip":"10.0.1.20","port":50051,"metadata":{"protocol":"tri","methods":"echo, ping ,"}},
            {"ip":"10.0.1.21","port":50051,"metadata":{"protocol":"tri","methods":"echo,shout"}}]},
          {"name":"DEFAULT_GROUP@@providers:com.ex.Mixed:2.0","hosts":[
            {"ip":"10.0.1.22","port":20880,"metadata":{"protocol":"dubbo"}},
            {"ip":"10.0.1.22","port":50052,"metadata":{"protocol":"tri"}}]},
          {"name":"DEFAULT_GROUP@@consumers:com.ex.Echo::","hosts":[{"ip":"10.0.9.9","port":0}]},
          {"name":"DEFAULT_GROUP@@configurators:com.ex.Echo::","hosts":[]}
        ]"#;
    let snapshot = clean(text);
    let names: Vec<_> = snapshot.services.iter().map(|it| (it.namespace.as_str(), it.name.as_str(), it.protocol)).collect();
    assert_eq!(names, [("mesh", "com.ex.Echo", Some(Protocol::Grpc)), ("mesh", "com.ex.Mixed:2.0", Some(Protocol::Dubbo))]);
    let key = snapshot.services[0].rpc.as_ref().unwrap();
    assert_eq!((key.version.as_deref(), key.group.as_deref()), (None, None));
    let methods: Vec<_> = snapshot.services[0].methods.iter().flatten().map(String::as_str).collect();
    assert_eq!(methods, ["echo", "ping", "shout"]);
    assert_eq!(snapshot.services[1].methods, None);
    assert_eq!(snapshot.instances.len(), 4);
    assert_eq!(snapshot.version, None);
}

#[test]
fn groups_are_labels_and_clusters_are_zones() {
    let text = r#"[
          {"name":"DEFAULT_GROUP@@orders","groupName":"DEFAULT_GROUP","lastRefTime":1700000000500,"hosts":[
            {"ip":"10.0.2.1","port":8080,"weight":0.5,"healthy":true,"enabled":true,"clusterName":"hz-a",
             "metadata":{"version":"v1","protocol":"http"}},
            {"ip":"10.0.2.2","port":"8080","weight":"2","healthy":"true","clusterName":"DEFAULT","metadata":{"protocol":"HTTP"}}]},
          {"name":"canary@@orders","groupName":"canary","lastRefTime":"1700000000900","hosts":[
            {"ip":"10.0.2.3","port":8080,"weight":1,"healthy":true,"clusterName":"hz-b","metadata":{"version":"v2","protocol":"http"}}]},
          {"name":"payments","groupName":"gray","lastRefTime":1700000000100,"hosts":[{"ip":"10.0.3.1","port":9090}]}
        ]"#;
    let snapshot = clean(text);
    assert_eq!(snapshot.version.as_deref(), Some("1700000000900"));
    let services: Vec<_> =
        snapshot.services.iter().map(|it| (it.namespace.as_str(), it.name.as_str(), it.protocol, it.rpc.is_some())).collect();
    assert_eq!(services, [("shop", "orders", Some(Protocol::Http), false), ("shop", "payments", None, false)]);
    assert_eq!(snapshot.services[0].entry, "Nacos service `DEFAULT_GROUP@@orders`");

    let instances: Vec<_> = snapshot
        .instances
        .iter()
        .map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight, it.locality.zone.as_deref()))
        .collect();
    assert_eq!(
        instances,
        [
            ("orders", "10.0.2.1", 8080, 50, Some("hz-a")),
            ("orders", "10.0.2.2", 8080, 200, None),
            ("orders", "10.0.2.3", 8080, 100, Some("hz-b")),
            ("payments", "10.0.3.1", 9090, 100, None),
        ]
    );
    assert_eq!(snapshot.instances[0].labels, labels(&[("protocol", "http"), ("version", "v1")]));
    assert_eq!(snapshot.instances[2].labels, labels(&[("nacos.io/group", "canary"), ("protocol", "http"), ("version", "v2")]));
    assert_eq!(snapshot.instances[3].labels, labels(&[("nacos.io/group", "gray")]));
    assert_eq!(snapshot.instances[3].health, Health::Unknown);
}

#[test]
fn nacos_1_responses_load() {
    // Nacos 1.x: `dom` beside (or instead of) `name`, `valid` for `healthy`, null metadata,
    // and hosts without `serviceName`.
    let text = r#"[
          {"metadata":{},"dom":"nacos.test.1","cacheMillis":3000,"useSpecifiedURL":false,"checksum":"x","lastRefTime":1600000000000,
           "env":"","clusters":"","hosts":[{"valid":true,"marked":false,"instanceId":"10.10.10.10-8888-DEFAULT-nacos.test.1",
           "port":8888,"ip":"10.10.10.10","weight":1.0,"metadata":null,"clusterName":"DEFAULT"},
           {"valid":false,"marked":false,"port":8889,"ip":"10.10.10.11","weight":1.0}]},
          {"hosts":[{"ip":"10.10.10.12","port":8888,"serviceName":"DEFAULT_GROUP@@inventory"}]}
        ]"#;
    let snapshot = clean(text);
    let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(names, ["nacos-test-1", "inventory"]);
    let instances: Vec<_> = snapshot.instances.iter().map(|it| (it.service.as_str(), it.address.as_str(), it.health)).collect();
    assert_eq!(
        instances,
        [
            ("nacos-test-1", "10.10.10.10", Health::Healthy),
            ("nacos-test-1", "10.10.10.11", Health::Unhealthy),
            ("inventory", "10.10.10.12", Health::Unknown)
        ]
    );
    assert_eq!(snapshot.instances[0].labels, labels(&[("nacos.io/service", "nacos.test.1")]));
    assert_eq!(snapshot.instances[2].labels, BTreeMap::new());
    assert_eq!(snapshot.version.as_deref(), Some("1600000000000"));
}

#[test]
fn names_that_are_not_dns_labels_are_normalised() {
    assert_eq!(dns_label("Order_Service").as_deref(), Some("order-service"));
    assert_eq!(dns_label("__Billing..API__v2").as_deref(), Some("billing-api-v2"));
    assert_eq!(dns_label("café-menu").as_deref(), Some("caf-menu"));
    assert_eq!(dns_label(&"a".repeat(70)).map(|it| it.len()), Some(63));
    assert_eq!(dns_label(&format!("{}_b", "a".repeat(62))).as_deref(), Some("a".repeat(62).as_str()));
    assert_eq!(dns_label("_-_"), None);

    let text = r#"[{"name":"DEFAULT_GROUP@@Order_Service","hosts":[{"ip":"10.0.4.1","port":80}]},
                      {"name":"DEFAULT_GROUP@@order-service","hosts":[{"ip":"10.0.4.2","port":80}]},
                      {"name":"DEFAULT_GROUP@@___","hosts":[{"ip":"10.0.4.3","port":80}]}]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(snapshot.services[0].name, "order-service");
    assert_eq!(snapshot.services[0].entry, "Nacos service `DEFAULT_GROUP@@Order_Service`");
    assert_eq!(snapshot.instances[0].labels, labels(&[("nacos.io/service", "Order_Service")]));
    assert_eq!(snapshot.instances[1].labels, BTreeMap::new());
    assert_eq!(
        entry_errors(&diagnostics),
        [(
            "malformed entry in registry `nacos-hz`: `___` cannot be made a service name: it has no ASCII letters or digits".to_owned(),
            "entry: Nacos service `DEFAULT_GROUP@@___`".to_owned()
        )]
    );
    assert!(spanned(text, diagnostics[0].labels[0].span).starts_with(r#"{"name":"DEFAULT_GROUP@@___""#));
}

#[test]
fn protection_threshold_keeps_unhealthy_hosts_unhealthy() {
    let text = r#"{"name":"DEFAULT_GROUP@@cart","reachProtectionThreshold":true,"allIPs":false,"hosts":[
            {"ip":"10.0.5.1","port":8080,"healthy":true,"enabled":true},
            {"ip":"10.0.5.2","port":8080,"healthy":false,"enabled":true},
            {"ip":"10.0.5.3","port":8080,"healthy":false,"enabled":true,"weight":3.0},
            {"ip":"10.0.5.4","port":8080,"healthy":true,"enabled":false},
            {"ip":"10.0.5.5","port":8080,"healthy":true,"enabled":true,"weight":0.0}]}"#;
    let snapshot = clean(text);
    let health: Vec<_> = snapshot.instances.iter().map(|it| (it.address.as_str(), it.health, it.weight)).collect();
    assert_eq!(
        health,
        [
            ("10.0.5.1", Health::Healthy, 100),
            ("10.0.5.2", Health::Unhealthy, 100),
            ("10.0.5.3", Health::Unhealthy, 300),
            ("10.0.5.4", Health::Draining, 100),
            ("10.0.5.5", Health::Healthy, 0),
        ]
    );
}

#[test]
fn addresses_may_be_ipv6_or_host_names() {
    let text = r#"{"name":"DEFAULT_GROUP@@search","hosts":[
            {"ip":"fd00:10::7","port":8080},{"ip":"search-0.search.shop.svc.cluster.local","port":8080},{"ip":" 10.0.6.1 ","port":8080}]}"#;
    let snapshot = clean(text);
    let addresses: Vec<_> = snapshot.instances.iter().map(|it| it.address.as_str()).collect();
    assert_eq!(addresses, ["fd00:10::7", "search-0.search.shop.svc.cluster.local", "10.0.6.1"]);
}

#[test]
fn malformed_hosts_are_reported_and_skipped_one_by_one() {
    let text = r#"{"name":"DEFAULT_GROUP@@orders","hosts":[
            {"instanceId":"a","ip":"10.0.7.1","port":8080},
            {"instanceId":"b","ip":"10.0.7.2"},
            {"instanceId":"c","ip":"10.0.7.3","port":70000},
            {"instanceId":"d","ip":"10.0 .7.4","port":8080},
            {"instanceId":"e","ip":1234,"port":8080},
            {"port":8080},
            {"ip":"10.0.7.7","port":"http"},
            {"ip":"10.0.7.8","port":8080,"weight":-1},
            {"ip":"10.0.7.9","port":8080.5},
            {"ip":"10.0.7.10","port":8080,"healthy":"maybe"},
            "10.0.7.11:8080",
            {"instanceId":"z","ip":"10.0.7.12","port":8080}]}"#;
    let (snapshot, diagnostics) = load_text(text);
    let loaded: Vec<_> = snapshot.instances.iter().map(|it| it.address.as_str()).collect();
    assert_eq!(loaded, ["10.0.7.1", "10.0.7.12"]);
    assert_eq!(snapshot.services.len(), 1);
    let prefix = "malformed entry in registry `nacos-hz`: ";
    let expected: Vec<(String, String)> = [
        ("missing `port`", "host 2 (instanceId `b`)"),
        ("port 70000 is not a port: expected 1 to 65535", "host 3 (instanceId `c`)"),
        ("`10.0 .7.4` is not an IP address or host name", "host 4 (instanceId `d`)"),
        ("invalid type: integer `1234`, expected a string", "host 5"),
        ("missing `ip`", "host 6"),
        ("expected a number, found `http`", "host 7"),
        ("weight -1 is negative", "host 8"),
        ("port 8080.5 is not a port: expected 1 to 65535", "host 9"),
        ("expected a boolean, found \"maybe\"", "host 10"),
        ("invalid type: string \"10.0.7.11:8080\", expected a Nacos host (a JSON object)", "host 11"),
    ]
    .iter()
    .map(|(message, host)| (format!("{prefix}{message}"), format!("entry: Nacos service `DEFAULT_GROUP@@orders`, {host}")))
    .collect();
    assert_eq!(entry_errors(&diagnostics), expected);
    // Each diagnostic points at its own host.
    assert_eq!(spanned(text, diagnostics[0].labels[0].span), r#"{"instanceId":"b","ip":"10.0.7.2"}"#);
    assert_eq!(spanned(text, diagnostics[9].labels[0].span), r#""10.0.7.11:8080""#);
}

#[test]
fn malformed_responses_are_skipped_and_the_rest_loads() {
    let text = r#"[
          42,
          {"name":"DEFAULT_GROUP@@a","hosts":"10.0.8.1:80"},
          {"name":["DEFAULT_GROUP@@b"],"hosts":[]},
          {"hosts":[]},
          {"name":"DEFAULT_GROUP@@providers:not an interface:1.0:","hosts":[{"ip":"10.0.8.2","port":20880}]},
          {"name":"DEFAULT_GROUP@@ok","hosts":[{"ip":"10.0.8.3","port":80}]}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(names, ["ok"]);
    assert_eq!(snapshot.instances.len(), 1);
    let prefix = "malformed entry in registry `nacos-hz`: ";
    let expected: Vec<(String, String)> = [
        ("invalid type: integer `42`, expected a Nacos instance list (a JSON object)", "Nacos response 1"),
        ("invalid type: string \"10.0.8.1:80\", expected a sequence", "Nacos response 2"),
        ("invalid type: sequence, expected a string", "Nacos response 3"),
        ("no service name: give `name` (or Nacos 1.x's `dom`, or the hosts' `serviceName`)", "Nacos response 4"),
        (
            "`providers:not an interface:1.0:` is not a Dubbo provider name: `not an interface` is not an interface name",
            "Nacos service `DEFAULT_GROUP@@providers:not an interface:1.0:`",
        ),
    ]
    .iter()
    .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: {entry}")))
    .collect();
    assert_eq!(entry_errors(&diagnostics), expected);
    assert_eq!(spanned(text, diagnostics[0].labels[0].span), "42");
}

#[test]
fn nacos_2_envelopes_are_unwrapped() {
    let text = r#"[
          {"code":0,"message":"success","data":{"name":"DEFAULT_GROUP@@nacos.test.1","groupName":"DEFAULT_GROUP","clusters":"",
           "cacheMillis":10000,"hosts":[{"instanceId":"10.10.10.10#8888#DEFAULT#DEFAULT_GROUP@@nacos.test.1","ip":"10.10.10.10",
           "port":8888,"weight":1,"healthy":false,"enabled":true,"ephemeral":false,"clusterName":"DEFAULT",
           "serviceName":"DEFAULT_GROUP@@nacos.test.1","metadata":{}}],"lastRefTime":1700000001000,"checksum":"","allIPs":false,
           "reachProtectionThreshold":false,"valid":true}},
          {"code":20004,"message":"service not found: public@@DEFAULT_GROUP@@gone","data":null}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(snapshot.services[0].name, "nacos-test-1");
    assert_eq!((snapshot.instances[0].address.as_str(), snapshot.instances[0].health), ("10.10.10.10", Health::Unhealthy));
    assert_eq!(snapshot.version.as_deref(), Some("1700000001000"));
    assert_eq!(
        entry_errors(&diagnostics),
        [(
            "malformed entry in registry `nacos-hz`: the response is Nacos error 20004: service not found: public@@DEFAULT_GROUP@@gone"
                .to_owned(),
            "entry: Nacos response 2".to_owned()
        )]
    );
}

#[test]
fn nacos_3_instance_arrays_are_grouped_by_service() {
    // `/nacos/v3/client/ns/instance/list`: `data` is the instances themselves. Nacos 3 may
    // write the group in `groupName` rather than in `serviceName`.
    let text = r#"{"code":0,"message":"success","data":[
          {"ip":"10.1.7.21","port":7070,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT",
           "serviceName":"DEFAULT_GROUP@@inventory","metadata":{"version":"1.4.0"},"ipDeleteTimeout":30000,
           "instanceIdGenerator":"simple","instanceHeartBeatInterval":5000,"instanceHeartBeatTimeOut":15000},
          {"ip":"10.1.8.3","port":9090,"serviceName":"pricing","groupName":"canary","healthy":false},
          {"ip":"10.1.9.4","port":7070,"weight":2.0,"healthy":true,"enabled":true,"clusterName":"hz-b",
           "serviceName":"DEFAULT_GROUP@@inventory","metadata":{"version":"1.4.1"}},
          {"ip":"10.1.9.5","port":7070,"healthy":true},
          "10.1.9.6:7070",
          {"ip":"10.1.8.4","port":"http","serviceName":"pricing","groupName":"canary"}
        ]}"#;
    let (snapshot, diagnostics) = load_text(text);
    let services: Vec<_> = snapshot.services.iter().map(|it| (it.name.as_str(), it.entry.as_str())).collect();
    assert_eq!(services, [("inventory", "Nacos service `DEFAULT_GROUP@@inventory`"), ("pricing", "Nacos service `canary@@pricing`")]);
    // A service without its own object is described where its first instance is.
    assert!(spanned(text, snapshot.services[0].span).starts_with(r#"{"ip":"10.1.7.21""#));
    assert!(spanned(text, snapshot.services[1].span).starts_with(r#"{"ip":"10.1.8.3""#));
    let instances: Vec<_> = snapshot
        .instances
        .iter()
        .map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight, it.health, it.locality.zone.as_deref()))
        .collect();
    assert_eq!(
        instances,
        [
            ("inventory", "10.1.7.21", 7070, 100, Health::Healthy, None),
            ("inventory", "10.1.9.4", 7070, 200, Health::Healthy, Some("hz-b")),
            ("pricing", "10.1.8.3", 9090, 100, Health::Unhealthy, None),
        ]
    );
    assert_eq!(snapshot.instances[1].labels, labels(&[("version", "1.4.1")]));
    assert_eq!(snapshot.instances[2].labels, labels(&[("nacos.io/group", "canary")]));
    // Hosts are counted in `data`, from 1.
    let prefix = "malformed entry in registry `nacos-hz`: ";
    assert_eq!(
        entry_errors(&diagnostics),
        [
            (format!("{prefix}expected a number, found `http`"), "entry: Nacos service `canary@@pricing`, host 6".to_owned()),
            (format!("{prefix}the instance has no `serviceName`, so its service is unknown"), "entry: Nacos response 1, host 4".to_owned()),
            (
                format!("{prefix}invalid type: string \"10.1.9.6:7070\", expected a Nacos host (a JSON object)"),
                "entry: Nacos response 1, host 5".to_owned()
            ),
        ]
    );
    assert_eq!(spanned(text, diagnostics[1].labels[0].span), r#"{"ip":"10.1.9.5","port":7070,"healthy":true}"#);
    assert_eq!(spanned(text, diagnostics[2].labels[0].span), r#""10.1.9.6:7070""#);
}

#[test]
fn envelope_data_of_another_shape_is_reported_at_data() {
    let text = r#"[
          {"code":0,"message":"success","data":"DEFAULT_GROUP@@orders"},
          {"code":200,"message":"ok","data":3},
          {"code":0,"message":"success","data":{"name":"DEFAULT_GROUP@@cart","hosts":{"ip":"10.0.9.1","port":80}}},
          {"code":0,"message":"success","data":[]}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert!(snapshot.services.is_empty());
    let expected = |found: &str| {
        format!(
            "malformed entry in registry `nacos-hz`: `data` is {found}, not an instance list (a JSON object) or, as Nacos 3 \
                 answers, an array of instances"
        )
    };
    assert_eq!(
        entry_errors(&diagnostics),
        [
            (expected("a string"), "entry: Nacos response 1".to_owned()),
            (expected("a number"), "entry: Nacos response 2".to_owned()),
            (
                "malformed entry in registry `nacos-hz`: `data`: invalid type: map, expected a sequence".to_owned(),
                "entry: Nacos response 3".to_owned()
            ),
        ]
    );
    let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(text, it.labels[0].span)).collect();
    assert_eq!(spans[..2], [r#""DEFAULT_GROUP@@orders""#, "3"]);
    assert!(spans[2].starts_with(r#"{"name":"DEFAULT_GROUP@@cart""#));
}

#[test]
fn truncated_json_is_a_file_error() {
    let text = &DUBBO[..DUBBO.len() - 40];
    let (snapshot, diagnostics) = load_text(text);
    assert!(snapshot.services.is_empty() && snapshot.instances.is_empty());
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    assert!(
        diagnostics[0].message.starts_with("cannot read nacos snapshot of registry `nacos-hz`: invalid JSON: EOF while parsing"),
        "{}",
        diagnostics[0].message
    );
}

#[test]
fn no_input_panics() {
    // Every prefix, and every byte replaced by characters that change the JSON's shape.
    let text = format!("[{DUBBO}, {{\"dom\":\"x\",\"hosts\":[{{\"ip\":\"::1\",\"port\":\"1\",\"metadata\":null}}]}}]");
    for end in (0..=text.len()).filter(|it| text.is_char_boundary(*it)) {
        load_text(&text[..end]);
    }
    for at in 0..text.len() {
        for replacement in ["\"", "[", "{", "0", "null"] {
            let mut mutated = text.clone().into_bytes();
            mutated.splice(at..at + 1, replacement.bytes());
            if let Ok(mutated) = String::from_utf8(mutated) {
                load_text(&mutated);
            }
        }
    }
}
