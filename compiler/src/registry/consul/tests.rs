//! Tests of the consul adapter: realistic snapshots in, exact services, instances and diagnostics out.

use meshc_codegen::ir::RegistryKind;

use super::*;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

const FILE: FileId = FileId(3);

fn load_text(text: &str) -> (Snapshot, Vec<Diagnostic>) {
    let registry = crate::registry::testing::entry("consul-dc1", RegistryKind::Consul, "registries/consul.json");
    crate::registry::testing::run(&registry, FILE, text, "shop", load)
}

fn clean(text: &str) -> Snapshot {
    let (snapshot, diagnostics) = load_text(text);
    assert_eq!(diagnostics, Vec::new(), "unexpected diagnostics");
    snapshot
}

fn spanned(text: &str, span: Span) -> &str {
    assert_eq!(span.file, FILE);
    &text[span.start as usize..span.end as usize]
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn entry_errors(diagnostics: &[Diagnostic]) -> Vec<(String, String)> {
    diagnostics
        .iter()
        .map(|it| {
            assert_eq!(it.code, Code::RegistryEntry);
            assert_eq!(it.labels.len(), 1);
            (it.message.clone(), it.notes.join("\n"))
        })
        .collect()
}

/// An entry of `service` on `node` (10.0.3.4 in dc1) with port 8080, no tags and an empty
/// `Service.Address` unless `extra` (more `Service` fields) gives them.
fn entry(service: &str, id: &str, node: &str, extra: &str, checks: &str) -> String {
    // A field given twice counts once, so leave out the defaults that `extra` overrides.
    let mut fields = String::new();
    for (key, default) in [("Tags", "[]"), ("Address", r#""""#), ("Port", "8080")] {
        if !extra.contains(&format!(r#""{key}""#)) {
            fields.push_str(&format!(r#","{key}":{default}"#));
        }
    }
    format!(
        r#"{{"Node":{{"ID":"b1","Node":"{node}","Address":"10.0.3.4","Datacenter":"dc1","TaggedAddresses":{{"lan":"10.0.3.4"}},"Meta":{{}}}},
              "Service":{{"ID":"{id}","Service":"{service}"{fields}{extra}}},"Checks":{checks}}}"#
    )
}

const REFERENCE: &str = r#"[{"Node":{"ID":"b1","Node":"node-a","Address":"10.0.3.4","Datacenter":"dc1","TaggedAddresses":{"lan":"10.0.3.4","wan":"10.0.3.4"},"Meta":{},"CreateIndex":13,"ModifyIndex":14},
  "Service":{"ID":"orders-1","Service":"orders","Tags":["v2"],"Address":"","Port":8080,"Meta":{"version":"v2","protocol":"http"},
             "Weights":{"Passing":10,"Warning":1},"EnableTagOverride":false,"TaggedAddresses":{},"Proxy":{},"Connect":{},"CreateIndex":20,"ModifyIndex":20},
  "Checks":[{"Node":"node-a","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","ServiceID":"","ServiceName":""},
            {"Node":"node-a","CheckID":"service:orders-1","Name":"http check","Status":"passing","ServiceID":"orders-1","ServiceName":"orders","Type":"http"}]}]"#;

#[test]
fn the_reference_entry_loads() {
    let snapshot = clean(REFERENCE);
    assert_eq!(snapshot.version.as_deref(), Some("20"));
    assert_eq!(snapshot.services.len(), 1);
    let service = &snapshot.services[0];
    assert_eq!((service.namespace.as_str(), service.name.as_str(), service.protocol), ("shop", "orders", Some(Protocol::Http)));
    assert_eq!((service.rpc.as_ref(), service.methods.as_ref(), service.ports.len()), (None, None, 0));
    assert_eq!(service.entry, "Consul service `orders`");
    let instance = &snapshot.instances[0];
    assert_eq!((instance.namespace.as_str(), instance.service.as_str()), ("shop", "orders"));
    assert_eq!((instance.address.as_str(), instance.port, instance.service_port), ("10.0.3.4", 8080, None));
    assert_eq!((instance.weight, instance.health), (1000, Health::Healthy));
    assert_eq!(instance.labels, labels(&[("protocol", "http"), ("v2", ""), ("version", "v2")]));
    assert_eq!(instance.locality, Locality { region: Some("dc1".to_owned()), zone: None, subzone: None });
    assert_eq!(spanned(REFERENCE, instance.span), &REFERENCE[1..REFERENCE.len() - 1]);
}

#[test]
fn the_documented_sample_loads() {
    // The sample response of Consul's health API documentation: service-level tagged
    // addresses are objects, and the Enterprise `Namespace` is `default`.
    let text = r#"[{"Node":{"ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Node":"foobar","Address":"10.1.10.12","Datacenter":"dc1",
            "TaggedAddresses":{"lan":"10.1.10.12","wan":"10.1.10.12"},"Meta":{"instance_type":"t2.medium"}},
          "Service":{"ID":"redis","Service":"redis","Tags":["primary"],"Address":"10.1.10.12",
            "TaggedAddresses":{"lan":{"address":"10.1.10.12","port":8000},"wan":{"address":"198.18.1.2","port":80}},
            "Meta":{"redis_version":"4.0"},"Port":8000,"Weights":{"Passing":10,"Warning":1},"Namespace":"default"},
          "Checks":[{"Node":"foobar","CheckID":"service:redis","Name":"Service 'redis' check","Status":"passing","Notes":"","Output":"",
            "ServiceID":"redis","ServiceName":"redis","ServiceTags":["primary"],"Namespace":"default"},
            {"Node":"foobar","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"","ServiceID":"",
            "ServiceName":"","ServiceTags":[],"Namespace":"default"}]}]"#;
    let snapshot = clean(text);
    let instance = &snapshot.instances[0];
    assert_eq!((instance.service.as_str(), instance.address.as_str(), instance.port, instance.weight), ("redis", "10.1.10.12", 8000, 1000));
    assert_eq!(instance.labels, labels(&[("primary", ""), ("redis_version", "4.0")]));
    assert_eq!(snapshot.services[0].protocol, None);
    assert_eq!(snapshot.version, None);
}

#[test]
fn health_is_the_worst_check_and_picks_the_weight() {
    let weights = r#","Weights":{"Passing":5,"Warning":2}"#;
    let passing = r#"{"CheckID":"serfHealth","Status":"passing","ServiceID":""}"#;
    let text = format!(
            "[{}]",
            [
                entry("orders", "o-1", "n1", weights, &format!("[{passing}]")),
                entry("orders", "o-2", "n2", weights, &format!(r#"[{passing},{{"CheckID":"service:o-2","Status":"warning","ServiceID":"o-2"}}]"#)),
                entry("orders", "o-3", "n3", weights, &format!(r#"[{passing},{{"CheckID":"service:o-3","Status":"critical","ServiceID":"o-3"}}]"#)),
                entry("orders", "o-4", "n4", weights, r#"[{"CheckID":"_service_maintenance:o-4","Status":"critical","ServiceID":"o-4"},{"CheckID":"x","Status":"warning","ServiceID":"o-4"}]"#),
                entry("orders", "o-5", "n5", weights, r#"[{"CheckID":"_node_maintenance","Status":"critical","ServiceID":""}]"#),
                entry("orders", "o-6", "n6", weights, r#"[{"CheckID":"_node_maintenance","Status":"critical"},{"CheckID":"service:o-6","Status":"critical","ServiceID":"o-6"}]"#),
                entry("orders", "o-7", "n7", weights, "[]"),
                entry("orders", "o-8", "n8", r#","Weights":null,"Meta":null"#, "null"),
                // A check of another service on the same node does not count.
                entry("orders", "o-9", "n9", weights, &format!(r#"[{passing},{{"CheckID":"service:other","Status":"critical","ServiceID":"other"}}]"#)),
                entry("orders", "o-10", "n10", r#","Weights":{"Passing":0,"Warning":0}"#, r#"[{"CheckID":"c","Status":"Warning","ServiceID":"o-10"}]"#),
                entry("orders", "o-11", "n11", r#","Weights":{"Passing":3,"Warning":0}"#, r#"[{"CheckID":"c","Status":"warning","ServiceID":"o-11"}]"#),
            ]
            .join(",")
        );
    let snapshot = clean(&text);
    let got: Vec<_> = snapshot.instances.iter().map(|it| (it.health, it.weight)).collect();
    assert_eq!(
        got,
        [
            (Health::Healthy, 500),
            (Health::Healthy, 200),
            (Health::Unhealthy, 500),
            (Health::Draining, 500),
            (Health::Draining, 500),
            (Health::Unhealthy, 500),
            (Health::Unknown, 500),
            (Health::Unknown, 100),
            (Health::Healthy, 500),
            (Health::Healthy, 100),
            (Health::Healthy, 0),
        ]
    );
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(snapshot.instances[7].labels, BTreeMap::new());
}

#[test]
fn arrays_of_responses_and_single_entries_load() {
    let a = entry("orders", "o-1", "n1", "", "[]");
    let b = entry("billing", "b-1", "n1", "", "[]");
    let c = entry("orders", "o-2", "n2", "", "[]");
    let nested = format!("[[{a},{b}],[],[{c}]]");
    let snapshot = clean(&nested);
    let services: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(services, ["orders", "billing"]);
    let instances: Vec<_> = snapshot.instances.iter().map(|it| it.service.as_str()).collect();
    assert_eq!(instances, ["orders", "billing", "orders"]);
    assert_eq!(spanned(&nested, snapshot.instances[2].span), c);
    assert_eq!(spanned(&nested, snapshot.services[0].span), a);

    let single = clean(&b);
    assert_eq!((single.services.len(), single.instances.len()), (1, 1));
    assert_eq!(clean("[]").services.len(), 0);

    // Entry numbers run across the responses.
    let bad = format!("[[{a}],[{}]]", entry("orders", "o-3", "n3", "", r#"[{"CheckID":"c","Status":"pending"}]"#));
    let (_, diagnostics) = load_text(&bad);
    assert_eq!(
        entry_errors(&diagnostics),
        [(
            "malformed entry in registry `consul-dc1`: check `c` has status `pending`: expected passing, warning, critical or maintenance"
                .to_owned(),
            "entry: Consul entry 2: service orders (ID o-3) on node n3".to_owned()
        )]
    );
}

#[test]
fn proxies_and_gateways_are_not_instances() {
    let text = format!(
        "[{}]",
        [
            entry("orders-sidecar-proxy", "p-1", "n1", r#","Kind":"connect-proxy","Proxy":{"DestinationServiceName":"orders"}"#, "[]"),
            entry("gateway", "g-1", "n1", r#","Kind":"mesh-gateway""#, "[]"),
            entry("ingress", "g-2", "n1", r#","Kind":"ingress-gateway""#, "[]"),
            entry("terminating", "g-3", "n1", r#","Kind":"terminating-gateway""#, "[]"),
            entry("api", "g-4", "n1", r#","Kind":"api-gateway""#, "[]"),
            entry("orders", "o-1", "n1", r#","Kind":"","Connect":{"Native":true},"ModifyIndex":7"#, "[]"),
        ]
        .join(",")
    );
    let snapshot = clean(&text);
    let names: Vec<_> = snapshot.services.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(names, ["orders"]);
    assert_eq!(snapshot.instances.len(), 1);
    assert_eq!(snapshot.version.as_deref(), Some("7"));
}

#[test]
fn tags_meta_and_locality_become_labels_and_zones() {
    let text = format!(
            "[{}]",
            [
                entry(
                    "orders",
                    "o-1",
                    "n1",
                    r#","Tags":["v2","canary=true","team=a","team=b","=x",""],"Meta":{"team":"c","zone":"us-east-1a","build":42}"#,
                    "[]"
                ),
                r#"{"Node":{"Node":"n2","Address":"10.0.3.5","Datacenter":"dc2","Meta":{"zone":"us-east-1b"}},
                    "Service":{"ID":"o-2","Service":"orders","Address":"10.0.9.9","Port":8080}}"#
                    .to_owned(),
                r#"{"Node":{"Node":"n3","Address":"10.0.3.6","Meta":{"zone":"node-zone"}},
                    "Service":{"ID":"o-3","Service":"orders","Port":8080,"Locality":{"Region":"us-east","Zone":"us-east-1c"},"Meta":{"zone":"meta-zone"}}}"#
                    .to_owned(),
            ]
            .join(",")
        );
    let snapshot = clean(&text);
    assert_eq!(
        snapshot.instances[0].labels,
        labels(&[("=x", ""), ("build", "42"), ("canary", "true"), ("team", "c"), ("v2", ""), ("zone", "us-east-1a")])
    );
    let localities: Vec<_> =
        snapshot.instances.iter().map(|it| (it.address.as_str(), it.locality.region.as_deref(), it.locality.zone.as_deref())).collect();
    assert_eq!(
        localities,
        [
            ("10.0.3.4", Some("dc1"), Some("us-east-1a")),
            ("10.0.9.9", Some("dc2"), Some("us-east-1b")),
            ("10.0.3.6", Some("us-east"), Some("us-east-1c"))
        ]
    );
    assert_eq!(snapshot.instances[1].health, Health::Unknown);
}

#[test]
fn names_are_normalised_and_enterprise_fields_are_labels() {
    let text = format!(
        "[{}]",
        [
            entry("Billing_API", "b-1", "n1", r#","Namespace":"team-a","Partition":"default""#, "[]"),
            entry("billing-api", "b-2", "n2", r#","Namespace":"default","Partition":"eu""#, "[]"),
            entry("__", "x-1", "n3", "", "[]"),
        ]
        .join(",")
    );
    let (snapshot, diagnostics) = load_text(&text);
    let names: Vec<_> = snapshot.services.iter().map(|it| (it.name.as_str(), it.entry.as_str())).collect();
    assert_eq!(names, [("billing-api", "Consul service `Billing_API`")]);
    assert_eq!(snapshot.instances[0].labels, labels(&[("consul.io/namespace", "team-a"), ("consul.io/service", "Billing_API")]));
    assert_eq!(snapshot.instances[1].labels, labels(&[("consul.io/partition", "eu")]));
    assert_eq!(
        entry_errors(&diagnostics),
        [(
            "malformed entry in registry `consul-dc1`: `__` cannot be made a service name: it has no ASCII letters or digits".to_owned(),
            "entry: Consul entry 3: service __ (ID x-1) on node n3".to_owned()
        )]
    );
}

#[test]
fn addresses_may_be_ipv6_or_host_names_and_numbers_strings() {
    let text = r#"[
          {"Node":{"Node":"n1","Address":"fd00::4","Datacenter":"dc1"},"Service":{"ID":"a","Service":"search","Address":"","Port":"9200",
           "Weights":{"Passing":"3","Warning":"1"},"ModifyIndex":"42"},"Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.3.4"},"Service":{"ID":"b","Service":"search","Address":"search-1.node.dc1.consul","Port":9200,
           "ModifyIndex":41},"Checks":[]}
        ]"#;
    let snapshot = clean(text);
    let got: Vec<_> = snapshot.instances.iter().map(|it| (it.address.as_str(), it.port, it.weight)).collect();
    assert_eq!(got, [("fd00::4", 9200, 300), ("search-1.node.dc1.consul", 9200, 100)]);
    assert_eq!(snapshot.version.as_deref(), Some("42"));
}

#[test]
fn malformed_entries_are_reported_and_skipped() {
    let good = entry("orders", "o-1", "n1", "", "[]");
    let text = format!(
        "[{}]",
        [
            good.clone(),
            entry("orders", "o-2", "n2", r#","Port":70000"#, "[]"),
            r#"{"Node":{"Node":"n3","Address":"10.0.3.4"},"Service":{"ID":"o-3","Service":"orders"}}"#.to_owned(),
            entry("orders", "o-4", "n4", r#","Address":"10.0.3 .4""#, "[]"),
            r#"{"Node":{"Node":"n5","Address":"10.0.3.4"}}"#.to_owned(),
            entry("orders", "o-6", "n6", r#","Port":"http""#, "[]"),
            r#"{"Node":{"Node":"n7"},"Service":{"ID":"o-7","Service":"orders","Port":80}}"#.to_owned(),
            r#"{"Node":{"Node":"n8","Address":"10.0.3.4"},"Service":{"ID":"o-8","Port":80}}"#.to_owned(),
            entry("orders", "o-9", "n9", r#","Weights":{"Passing":2,"Warning":-1}"#, "[]"),
            entry("orders", "o-10", "n10", r#","Tags":"v1""#, "[]"),
            entry("orders", "o-11", "n11", "", r#"[{"CheckID":"serfHealth"}]"#),
            "\"orders\"".to_owned(),
            entry("orders", "o-12", "n12", r#","Port":0"#, "[]"),
        ]
        .join(",")
    );
    let (snapshot, diagnostics) = load_text(&text);
    assert_eq!(snapshot.instances.len(), 1);
    assert_eq!(spanned(&text, snapshot.instances[0].span), good);
    let prefix = "malformed entry in registry `consul-dc1`: ";
    let expected: Vec<(String, String)> = [
        ("port 70000 is not a port: expected 1 to 65535", "2: service orders (ID o-2) on node n2"),
        ("missing `Service.Port`", "3: service orders (ID o-3) on node n3"),
        ("`10.0.3 .4` is not an IP address or host name", "4: service orders (ID o-4) on node n4"),
        ("missing `Service`", "5: node n5"),
        ("`Service.Port`: expected a number, found `http`", "6: service orders (ID o-6) on node n6"),
        ("no address: `Service.Address` and `Node.Address` are both empty", "7: service orders (ID o-7) on node n7"),
        ("missing `Service.Service`", "8: service ID o-8 on node n8"),
        ("`Weights.Warning` is -1: weights cannot be negative", "9: service orders (ID o-9) on node n9"),
        ("`Service.Tags`: invalid type: string \"v1\", expected a sequence", "10: service orders (ID o-10) on node n10"),
        ("check `serfHealth` has no `Status`", "11: service orders (ID o-11) on node n11"),
        ("expected a Consul health entry (a JSON object with `Node`, `Service` and `Checks`), found a string", "12"),
        ("port 0 is not a port: expected 1 to 65535", "13: service orders (ID o-12) on node n12"),
    ]
    .iter()
    .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: Consul entry {entry}")))
    .collect();
    assert_eq!(entry_errors(&diagnostics), expected);
    // Each diagnostic points at the offending value, or at the object that lacks it.
    let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(&text, it.labels[0].span)).collect();
    assert_eq!(
        spans,
        [
            "70000",
            r#"{"ID":"o-3","Service":"orders"}"#,
            r#""10.0.3 .4""#,
            r#"{"Node":{"Node":"n5","Address":"10.0.3.4"}}"#,
            r#""http""#,
            r#"{"ID":"o-7","Service":"orders","Port":80}"#,
            r#"{"ID":"o-8","Port":80}"#,
            "-1",
            r#""v1""#,
            r#"{"CheckID":"serfHealth"}"#,
            r#""orders""#,
            "0",
        ]
    );
}

#[test]
fn a_malformed_field_is_named_by_its_path_with_the_entry_it_is_in() {
    // The shape of `consul/malformed/wrong-type-port.json`: a word where Consul writes a
    // number, in the second entry; the entry is named by what can still be read of it.
    let text = format!(
        "[{},\n{}]",
        entry("orders", "orders-a", "node-a", "", "[]"),
        entry("orders", "orders-b", "node-b", r#","Port":"http","Meta":{"version":"v2"}"#, "[]"),
    );
    let (snapshot, diagnostics) = load_text(&text);
    assert_eq!(snapshot.instances.len(), 1);
    assert_eq!(
        entry_errors(&diagnostics),
        [(
            "malformed entry in registry `consul-dc1`: `Service.Port`: expected a number, found `http`".to_owned(),
            "entry: Consul entry 2: service orders (ID orders-b) on node node-b".to_owned()
        )]
    );
    assert_eq!(spanned(&text, diagnostics[0].labels[0].span), r#""http""#);

    // Nested paths, and names that cannot be read (a number for `Service.Service`) left out.
    let text = r#"[
          {"Node":{"Node":"n1","Address":"10.0.3.4","Datacenter":1},"Service":{"ID":"w-1","Service":"web","Port":80},"Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.3.5"},"Service":{"ID":"w-2","Service":7,"Port":80},"Checks":[]},
          {"Node":"n3","Service":{"ID":"w-3","Service":"web","Port":80},"Checks":[]},
          {"Node":{"Node":"n4","Address":"10.0.3.7"},"Service":{"Service":"web","Port":80,"Weights":{"Passing":"heavy"}},"Checks":[]},
          {"Node":{"Node":"n5","Address":"10.0.3.8"},"Service":{"ID":"w-5","Service":"web","Port":80},
           "Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"service:w-5","Status":3,"ServiceID":"w-5"}]},
          {"Node":{"Node":"n6","Address":"10.0.3.9"},"Service":{"ID":"w-6","Service":"web","Port":80},"Checks":["serfHealth"]}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert!(snapshot.instances.is_empty());
    let prefix = "malformed entry in registry `consul-dc1`: ";
    let expected: Vec<(String, String)> = [
        ("`Node.Datacenter`: invalid type: integer `1`, expected a string", "1: service web (ID w-1) on node n1"),
        ("`Service.Service`: invalid type: integer `7`, expected a string", "2: service ID w-2 on node n2"),
        ("`Node` is a string, not a Consul node (a JSON object)", "3: service web (ID w-3)"),
        ("`Service.Weights.Passing`: expected a number, found `heavy`", "4: service web on node n4"),
        ("`Checks[1].Status`: invalid type: integer `3`, expected a string", "5: service web (ID w-5) on node n5"),
        ("`Checks[0]` is a string, not a Consul check (a JSON object)", "6: service web (ID w-6) on node n6"),
    ]
    .iter()
    .map(|(message, entry)| (format!("{prefix}{message}"), format!("entry: Consul entry {entry}")))
    .collect();
    assert_eq!(entry_errors(&diagnostics), expected);
    let spans: Vec<&str> = diagnostics.iter().map(|it| spanned(text, it.labels[0].span)).collect();
    assert_eq!(spans, ["1", "7", r#""n3""#, r#""heavy""#, "3", r#""serfHealth""#]);
}

#[test]
fn truncated_json_is_a_file_error() {
    let (snapshot, diagnostics) = load_text(&REFERENCE[..200]);
    assert!(snapshot.services.is_empty() && snapshot.instances.is_empty());
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    assert!(
        diagnostics[0].message.starts_with("cannot read consul snapshot of registry `consul-dc1`: invalid JSON: EOF while parsing"),
        "{}",
        diagnostics[0].message
    );
}

#[test]
fn no_input_panics() {
    let text = format!("[{},[{}]]", &REFERENCE[1..REFERENCE.len() - 1], entry("Orders.Svc", "x", "n", r#","Weights":null"#, "null"));
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
