//! Tests of the zookeeper adapter: realistic snapshots in, exact services, instances and diagnostics out.

use meshc_codegen::ir::RegistryKind;

use super::*;
use crate::diag::Severity;
use crate::manifest::RegistryEntry;
use crate::source::FileId;

fn load_text(flavor: Flavor, text: &str) -> (Snapshot, Vec<Diagnostic>) {
    let kind = match flavor {
        Flavor::SofaRpc => RegistryKind::SofaRpcZookeeper,
        Flavor::Dubbo => RegistryKind::DubboZookeeper,
    };
    let registry = crate::registry::testing::entry("zk", kind, "registry/zk.txt");
    crate::registry::testing::run(&registry, FileId(1), text, "default", |ctx| load(ctx, flavor))
}

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.services.iter().map(|it| it.name.as_str()).collect()
}

fn endpoints(snapshot: &Snapshot) -> Vec<(&str, &str, u16, u32)> {
    snapshot.instances.iter().map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight)).collect()
}

fn entries(diagnostics: &[Diagnostic]) -> Vec<(Severity, Code, String)> {
    diagnostics.iter().map(|it| (it.severity, it.code, it.notes[0].trim_start_matches("entry: ").to_owned())).collect()
}

fn error(entry: &str) -> (Severity, Code, String) {
    (Severity::Error, Code::RegistryEntry, entry.to_owned())
}

/// Percent-encodes a URL as a znode name, the way Dubbo and SOFARPC do.
fn encode(url: &str) -> String {
    percent_encoding::utf8_percent_encode(url, percent_encoding::NON_ALPHANUMERIC).to_string()
}

const DUBBO_URL: &str = "dubbo://10.0.1.15:20880/com.ex.DemoService?anyhost=true&application=demo-provider&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&group=gray&interface=com.ex.DemoService&methods=sayHello,sayHelloAsync&pid=4242&release=2.7.15&revision=1.0.0&side=provider&timeout=3000&timestamp=1700000000000&version=1.0.0&weight=100";

fn dubbo_dump() -> String {
    format!(
        "/dubbo\n/dubbo/com.ex.DemoService\n/dubbo/com.ex.DemoService/providers\n/dubbo/com.ex.DemoService/providers/{}\n/dubbo/com.ex.DemoService/consumers\n/dubbo/com.ex.DemoService/consumers/{}\n/dubbo/com.ex.DemoService/routers\n/dubbo/com.ex.DemoService/configurators\n",
        encode(DUBBO_URL),
        encode(
            "consumer://10.0.2.7/com.ex.DemoService?application=demo-consumer&category=consumers&check=false&side=consumer&version=1.0.0"
        ),
    )
}

#[test]
fn the_dubbo_reference_example_loads() {
    let text = dubbo_dump();
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["gray/com.ex.DemoService:1.0.0"]);
    let service = &snapshot.services[0];
    assert_eq!((service.namespace.as_str(), service.protocol, service.ports.len()), ("mesh", Some(Protocol::Dubbo), 0));
    let rpc = service.rpc.as_ref().unwrap();
    assert_eq!((rpc.interface.as_str(), rpc.version.as_deref(), rpc.group.as_deref()), ("com.ex.DemoService", Some("1.0.0"), Some("gray")));
    let methods: Vec<&str> = service.methods.as_ref().unwrap().iter().map(String::as_str).collect();
    assert_eq!(methods, ["sayHello", "sayHelloAsync"]);
    assert_eq!(service.entry, "provider line 4 of gray/com.ex.DemoService:1.0.0");
    assert_eq!(endpoints(&snapshot), [("gray/com.ex.DemoService:1.0.0", "10.0.1.15", 20880, 100)]);
    let instance = &snapshot.instances[0];
    let line_start = text.find("/dubbo/com.ex.DemoService/providers/dubbo").unwrap();
    let line_end = line_start + text[line_start..].find('\n').unwrap();
    assert_eq!((instance.span, service.span), (Span::new(FileId(1), line_start..line_end), Span::new(FileId(1), line_start..line_end)));
    assert_eq!((instance.health, instance.service_port, instance.locality.clone()), (Health::Healthy, None, Locality::default()));
    let labels: Vec<&str> = instance.labels.keys().map(String::as_str).collect();
    assert_eq!(
        labels,
        [
            "anyhost",
            "app",
            "application",
            "deprecated",
            "dubbo",
            "dynamic",
            "generic",
            "group",
            "interface",
            "release",
            "revision",
            "side",
            "timeout",
            "version",
            "weight"
        ]
    );
    assert_eq!(instance.labels["app"], "demo-provider");
    assert!(snapshot.version.is_none());
}

#[test]
fn dubbo_group_and_version_permutations_make_distinct_keys() {
    let urls = [
        "dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo",
        "dubbo://10.0.0.2:20880/com.ex.Demo?interface=com.ex.Demo&version=2.0",
        "dubbo://10.0.0.3:20880/com.ex.Demo?interface=com.ex.Demo&group=blue",
        "dubbo://10.0.0.4:20880/com.ex.Demo?interface=com.ex.Demo&group=blue&version=2.0",
        // Dubbo 2.6 writes the defaults with a `default.` prefix.
        "dubbo://10.0.0.5:20880/com.ex.Demo?interface=com.ex.Demo&default.group=blue&default.version=2.0&default.weight=30&default.timeout=500",
        "dubbo://10.0.0.6:20880/com.ex.Demo?interface=com.ex.Demo&group=&default.group=blue&version=2.0",
        // Neither the interface parameter nor a path: the znode names the interface.
        "dubbo://10.0.0.7:20880?version=2.0",
    ];
    let text: String = urls.iter().map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url))).collect();
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.Demo", "com.ex.Demo:2.0", "blue/com.ex.Demo", "blue/com.ex.Demo:2.0"]);
    assert_eq!(
        endpoints(&snapshot),
        [
            ("com.ex.Demo", "10.0.0.1", 20880, 100),
            ("com.ex.Demo:2.0", "10.0.0.2", 20880, 100),
            ("blue/com.ex.Demo", "10.0.0.3", 20880, 100),
            ("blue/com.ex.Demo:2.0", "10.0.0.4", 20880, 100),
            ("blue/com.ex.Demo:2.0", "10.0.0.5", 20880, 30),
            ("blue/com.ex.Demo:2.0", "10.0.0.6", 20880, 100),
            ("com.ex.Demo:2.0", "10.0.0.7", 20880, 100),
        ]
    );
    let labels = &snapshot.instances[4].labels;
    assert_eq!((labels["timeout"].as_str(), labels["group"].as_str(), labels.contains_key("default.timeout")), ("500", "blue", false));
    // A service's span is its first provider's line.
    assert_eq!(snapshot.services[1].span, snapshot.instances[1].span);
    assert_eq!(snapshot.services[1].entry, "provider line 2 of com.ex.Demo:2.0");
}

#[test]
fn methods_are_the_union_of_the_providers() {
    let text = [
        "dubbo://10.0.0.1:20880/com.ex.Demo?methods=a,b&a.timeout=100&a.retries=0",
        "dubbo://10.0.0.2:20880/com.ex.Demo?methods=b,c",
        "dubbo://10.0.0.3:20880/com.ex.Demo",
    ]
    .map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url)))
    .concat();
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(snapshot.services.len(), 1);
    let methods: Vec<&str> = snapshot.services[0].methods.as_ref().unwrap().iter().map(String::as_str).collect();
    assert_eq!(methods, ["a", "b", "c"]);
    assert!(!snapshot.instances[0].labels.keys().any(|it| it.starts_with("a.") || it == "methods"));
    // A generic provider answers any method.
    let text = format!("{text}/dubbo/com.ex.Demo/providers/{}\n", encode("dubbo://10.0.0.4:20880/com.ex.Demo?generic=true&methods=*"));
    let (snapshot, _) = load_text(Flavor::Dubbo, &text);
    assert_eq!((snapshot.services.len(), snapshot.services[0].methods.is_none(), snapshot.instances.len()), (1, true, 4));
}

#[test]
fn other_protocols_get_their_own_service() {
    let text = [
        "dubbo://10.0.0.1:20880/com.ex.Demo?version=1.0",
        "tri://10.0.0.1:50051/com.ex.Demo?version=1.0",
        "rest://10.0.0.1:8080/com.ex.Demo?version=1.0",
        "hessian://10.0.0.1:8081/com.ex.Demo?version=1.0",
    ]
    .map(|url| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(url)))
    .concat();
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.Demo:1.0", "com.ex.Demo:1.0@tri", "com.ex.Demo:1.0@rest", "com.ex.Demo:1.0@hessian"]);
    let protocols: Vec<_> = snapshot.services.iter().map(|it| it.protocol).collect();
    assert_eq!(protocols, [Some(Protocol::Dubbo), Some(Protocol::Grpc), Some(Protocol::Http), None]);
    let rpc: Vec<bool> = snapshot.services.iter().map(|it| it.rpc.is_some()).collect();
    assert_eq!(rpc, [true, false, false, false]);
}

#[test]
fn any_root_is_a_dubbo_group_and_governance_nodes_are_not_instances() {
    let url = encode("dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo");
    let text = format!(
        "/zookeeper\n/zookeeper/quota\n/prod/com.ex.Demo/providers/{url}\n\
             /dubbo/config/dubbo/com.ex.Demo.configurators\n/dubbo/metadata/com.ex.Demo/provider/demo\n\
             /dubbo/mapping/com.ex.Demo = \"demo-provider\"\n/services/demo-provider/10.0.0.1:20880\n\
             /dubbo/com.ex.Demo/configurators/{}\n/dubbo/com.ex.Demo/routers/{}\n/dubbo/com.ex.Demo/providers/\n\
             /sofa-rpc/com.ex.Order/providers/{}\n",
        encode("override://0.0.0.0/com.ex.Demo?disabled=true"),
        encode("route://0.0.0.0/com.ex.Demo?rule=x"),
        encode("bolt://10.1.2.3:12200"),
    );
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    // The SOFARPC provider on the last line is skipped, but not silently.
    assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 11".to_owned())]);
    assert_eq!(names(&snapshot), ["com.ex.Demo"]);
    assert_eq!(endpoints(&snapshot), [("com.ex.Demo", "10.0.0.1", 20880, 100)]);
}

#[test]
fn crlf_whitespace_comments_decoded_nodes_and_ipv6_are_accepted() {
    let text = format!(
        "\u{feff}# dump of zk-a\r\n\r\n   /dubbo/com.ex.Demo/providers/{}  \r\n\t/dubbo/com.ex.Demo/providers/dubbo://10.0.0.2:20880/com.ex.Demo?weight=20&zone=az1&region=r1\r\n/dubbo/com.ex.Demo/providers/{} = 10.0.0.3\r\n",
        encode("dubbo://[fd00::1]:20880/com.ex.Demo?weight=10"),
        encode("dubbo://10.0.0.3:20880/com.ex.Demo?enabled=false"),
    );
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(
        endpoints(&snapshot),
        [("com.ex.Demo", "fd00::1", 20880, 10), ("com.ex.Demo", "10.0.0.2", 20880, 20), ("com.ex.Demo", "10.0.0.3", 20880, 100)]
    );
    // The span is the line without its indentation, trailing spaces and CRLF.
    let span = snapshot.instances[0].span;
    let line = &text[span.start as usize..span.end as usize];
    assert!(line.starts_with("/dubbo/") && line.ends_with("10"), "{line:?}");
    let second = &snapshot.instances[1];
    assert_eq!((second.locality.region.as_deref(), second.locality.zone.as_deref()), (Some("r1"), Some("az1")));
    assert_eq!(snapshot.instances[2].health, Health::Draining);
}

#[test]
fn zkcli_chatter_is_skipped() {
    let text = format!(
        "Connecting to localhost:2181\n2024-01-01 10:00:00,000 [myid:] - INFO  [main:Environment@98] - Client environment:zookeeper.version=3.4.14\n\
             WATCHER::\n\nWatchedEvent state:SyncConnected type:None path:null\n[zk: localhost:2181(CONNECTED) 0] ls -R /dubbo\n/dubbo/com.ex.Demo/providers/{}\n",
        encode("dubbo://10.0.0.1:20880/com.ex.Demo")
    );
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(snapshot.instances.len(), 1);
}

#[test]
fn the_sofa_reference_example_loads() {
    let text = "/sofa-rpc\n/sofa-rpc/com.ex.OrderFacade\n/sofa-rpc/com.ex.OrderFacade/providers\n\
            /sofa-rpc/com.ex.OrderFacade/providers/bolt%3A%2F%2F10.1.2.3%3A12200%3FappName%3Dorder%26language%3Djava%26rpcVer%3D50806%26dynamic%3Dtrue%26version%3D1.0%26weight%3D100%26timeout%3D3000%26pid%3D4242%26startTime%3D1700000000000\n\
            /sofa-rpc/com.ex.OrderFacade/consumers\n/sofa-rpc/com.ex.OrderFacade/configs\n/sofa-rpc/com.ex.OrderFacade/overrides\n/dubbo/com.ex.Demo/providers/dubbo%3A%2F%2F10.0.0.1%3A20880\n";
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, text);
    // The Dubbo provider on the last line is skipped, but not silently.
    assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 8".to_owned())]);
    assert_eq!(names(&snapshot), ["com.ex.OrderFacade:1.0"]);
    let service = &snapshot.services[0];
    assert_eq!(
        (service.protocol, service.rpc.as_ref().unwrap().version.as_deref(), service.methods.is_none()),
        (Some(Protocol::Bolt), Some("1.0"), true)
    );
    assert_eq!(endpoints(&snapshot), [("com.ex.OrderFacade:1.0", "10.1.2.3", 12200, 100)]);
    let labels: Vec<(&str, &str)> = snapshot.instances[0].labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("app", "order"),
            ("appName", "order"),
            ("dynamic", "true"),
            ("language", "java"),
            ("rpcVer", "50806"),
            ("timeout", "3000"),
            ("version", "1.0"),
            ("weight", "100")
        ]
    );
}

#[test]
fn sofa_unique_ids_versions_and_protocols() {
    let text = [
        "bolt://10.1.2.3:12200?uniqueId=blue&_WEIGHT=40",
        "bolt://10.1.2.4:12200?version=2.0&uniqueId=blue",
        "rest://10.1.2.3:8341?version=2.0&uniqueId=blue",
        "h2c://10.1.2.3:12300",
    ]
    .map(|url| format!("/sofa-rpc/com.ex.OrderFacade/providers/{}\n", encode(url)))
    .concat();
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(
        names(&snapshot),
        ["com.ex.OrderFacade:1.0:blue", "com.ex.OrderFacade:2.0:blue", "com.ex.OrderFacade:2.0:blue@rest", "com.ex.OrderFacade:1.0@h2c"]
    );
    assert_eq!(snapshot.instances[0].weight, 40);
    assert_eq!(snapshot.services[0].rpc.as_ref().unwrap().unique_id.as_deref(), Some("blue"));
    assert_eq!((snapshot.services[3].protocol, snapshot.services[3].rpc.is_none()), (Some(Protocol::Http2), true));
}

#[test]
fn layout_finds_the_provider_node_under_any_root() {
    use Layout::{Foreign, Malformed, NotProvider, Provider};
    let provider = |segment, node| Provider { segment, node };
    let cases = [
        (Flavor::SofaRpc, "sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", provider("com.ex.A", "bolt%3A%2F%2Fx")),
        (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", provider("com.ex.A", "bolt%3A%2F%2Fx")),
        (Flavor::SofaRpc, "a/b/sofa-rpc/com.ex.A/providers/bolt://10.0.0.1:12200?v=1", provider("com.ex.A", "bolt://10.0.0.1:12200?v=1")),
        (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers", NotProvider),
        (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/providers/", NotProvider),
        (Flavor::SofaRpc, "payments/sofa-rpc/com.ex.A/consumers/bolt%3A%2F%2Fx", NotProvider),
        (Flavor::SofaRpc, "dubbo/com.ex.A/providers/dubbo%3A%2F%2Fx", Foreign),
        (Flavor::SofaRpc, "com.ex.A/providers/bolt%3A%2F%2Fx", Foreign),
        (Flavor::Dubbo, "dubbo/com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
        (Flavor::Dubbo, "chroot/prod/com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
        // Dubbo's group `/` puts the interface at the top.
        (Flavor::Dubbo, "com.ex.A/providers/dubbo%3A%2F%2Fx", provider("com.ex.A", "dubbo%3A%2F%2Fx")),
        (Flavor::Dubbo, "payments/sofa-rpc/com.ex.A/providers/bolt%3A%2F%2Fx", Foreign),
        (Flavor::Dubbo, "dubbo/com.ex.A/configurators/override://0.0.0.0/x/providers/y", NotProvider),
        (Flavor::Dubbo, "services/demo-provider/10.0.0.1:20880", NotProvider),
    ];
    for (flavor, path, want) in cases {
        assert_eq!(layout(flavor, path), want, "{flavor:?} {path}");
    }
    assert_eq!(
        layout(Flavor::Dubbo, "providers/dubbo%3A%2F%2Fx"),
        Malformed("no interface segment above `providers`: expected `/<group>/<interface>/providers/<URL>`".to_owned())
    );
    assert_eq!(
        layout(Flavor::SofaRpc, "payments/sofa-rpc/providers/bolt%3A%2F%2Fx"),
        Malformed(
            "no interface segment between `sofa-rpc` and `providers`: expected `[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`"
                .to_owned()
        )
    );
}

#[test]
fn sofa_rpc_under_a_chroot_loads() {
    // SOFARPC with registry address `zookeeper://zk:2181/payments`, listed at the prompt.
    let text = format!(
        "[zk: zk1:2181(CONNECTED) 3] ls -R /payments\n/payments\n/payments/sofa-rpc\n/payments/sofa-rpc/com.ex.PayFacade\n\
             /payments/sofa-rpc/com.ex.PayFacade/providers\n/payments/sofa-rpc/com.ex.PayFacade/providers/{}\n\
             /payments/sofa-rpc/com.ex.PayFacade/providers/{}\n/payments/sofa-rpc/com.ex.PayFacade/consumers/{}\n\
             /zk/cluster-b/sofa-rpc/com.ex.RefundFacade/providers/{}\n[zk: zk1:2181(CONNECTED) 4]\n",
        encode("bolt://10.2.0.8:12200?version=1.0&uniqueId=&appName=payment-core&weight=100"),
        encode("rest://10.2.0.8:8341?version=1.0&appName=payment-core"),
        encode("bolt://10.2.0.30:12200?version=1.0"),
        encode("bolt://10.2.0.9:12200?version=2.0&weight=40"),
    );
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.PayFacade:1.0", "com.ex.PayFacade:1.0@rest", "com.ex.RefundFacade:2.0"]);
    assert_eq!(
        endpoints(&snapshot),
        [
            ("com.ex.PayFacade:1.0", "10.2.0.8", 12200, 100),
            ("com.ex.PayFacade:1.0@rest", "10.2.0.8", 8341, 100),
            ("com.ex.RefundFacade:2.0", "10.2.0.9", 12200, 40)
        ]
    );
    assert_eq!(snapshot.instances[0].labels["appName"], "payment-core");
}

#[test]
fn dubbo_under_a_chroot_or_group_slash_loads() {
    let text = format!(
        "/apps/prod/com.ex.Demo/providers/{}\n/com.ex.Demo/providers/{}\n/apps/prod/com.ex.Demo/consumers/{}\n",
        encode("dubbo://10.0.0.1:20880/com.ex.Demo?interface=com.ex.Demo&group=prod&version=1.0"),
        encode("dubbo://10.0.0.2:20880/com.ex.Demo?interface=com.ex.Demo"),
        encode("consumer://10.0.0.3/com.ex.Demo?side=consumer"),
    );
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(endpoints(&snapshot), [("prod/com.ex.Demo:1.0", "10.0.0.1", 20880, 100), ("com.ex.Demo", "10.0.0.2", 20880, 100)]);
}

#[test]
fn provider_nodes_of_the_other_ecosystem_get_one_warning() {
    // `ls -R /` of a ZooKeeper that Dubbo and SOFARPC share, read as SOFARPC's.
    let dubbo = |host: &str| encode(&format!("dubbo://{host}:20880/com.ex.Demo"));
    let text = format!(
        "/dubbo/com.ex.Demo/providers/{}\n/sofa-rpc/com.ex.Order/providers/{}\n/dubbo/com.ex.Demo/providers/{}\n\
             [zk: zk:2181(CONNECTED) 1] ls /dubbo/com.ex.Demo/providers\n[{}, {}]\n",
        dubbo("10.0.0.1"),
        encode("bolt://10.1.0.1:12200"),
        dubbo("10.0.0.2"),
        dubbo("10.0.0.3"),
        dubbo("10.0.0.4"),
    );
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
    assert_eq!(endpoints(&snapshot), [("com.ex.Order:1.0", "10.1.0.1", 12200, 100)]);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let warning = &diagnostics[0];
    assert_eq!((warning.severity, warning.code), (Severity::Warning, Code::RegistryEntry));
    assert_eq!(warning.message, "4 provider nodes outside a `sofa-rpc` node in registry `zk`");
    // One bracketed list names its line once.
    assert_eq!(warning.notes[0], "entries: lines 1, 3, 5");
    assert_eq!(warning.labels.len(), 1);
    let first = warning.labels[0].span;
    assert_eq!(&text[first.start as usize..first.end as usize], text.lines().next().unwrap());
    assert_eq!(
        warning.help.as_deref(),
        Some("read Dubbo's `/<group>/<interface>/providers/<URL>` nodes with a registry of kind `dubbo-zookeeper`")
    );

    // The same dump read as Dubbo's: the one SOFARPC node is the stranger.
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert_eq!(snapshot.instances.len(), 4);
    assert_eq!(entries(&diagnostics), [(Severity::Warning, Code::RegistryEntry, "line 2".to_owned())]);
    assert_eq!(diagnostics[0].message, "1 provider node under `sofa-rpc` in Dubbo registry `zk`");
    assert_eq!(diagnostics[0].help.as_deref(), Some("read these nodes with a registry of kind `sofa-rpc-zookeeper`"));
}

#[test]
fn many_foreign_lines_are_counted_not_listed() {
    let text: String =
        (1..=12).map(|n| format!("/dubbo/com.ex.Demo/providers/{}\n", encode(&format!("dubbo://10.0.0.{n}:20880")))).collect();
    let (_, diagnostics) = load_text(Flavor::SofaRpc, &text);
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].message, "12 provider nodes outside a `sofa-rpc` node in registry `zk`");
    assert_eq!(diagnostics[0].notes[0], "entries: lines 1, 2, 3, 4, 5, 6, 7, 8 and 4 more");
}

#[test]
fn nodes_under_providers_that_fit_no_layout_are_errors() {
    let bolt = encode("bolt://10.1.0.1:12200");
    let text = format!(
        "/providers/{bolt}\n/payments/sofa-rpc/providers/{bolt}\n/payments/sofa-rpc/com.ex.A/providers/{bolt}/extra\n\
             /payments/sofa-rpc/com.ex.A/providers/{bolt}\n"
    );
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
    assert_eq!(entries(&diagnostics), [error("line 1"), error("line 2"), error("line 3")]);
    let messages: Vec<&str> = diagnostics.iter().map(|it| it.message.trim_start_matches("malformed entry in registry `zk`: ")).collect();
    assert!(messages[0].starts_with("no interface segment above `providers`"), "{}", messages[0]);
    assert!(messages[1].starts_with("no interface segment between `sofa-rpc` and `providers`"), "{}", messages[1]);
    assert_eq!(messages[2], "the path goes on below a provider node: expected `[/<rootPath>]/sofa-rpc/<interface>/providers/<URL>`");
    assert_eq!(endpoints(&snapshot), [("com.ex.A:1.0", "10.1.0.1", 12200, 100)]);
}

/// An interactive ZooKeeper 3.4 session pasted from a Windows console: no `ls -R`, so each
/// `ls` prints the child names in brackets on the next line.
fn zkcli_34_session() -> String {
    let demo = |host: &str, pid: u32| {
        encode(&format!(
            "dubbo://{host}:20880/com.ex.DemoService?anyhost=true&application=demo-provider&dubbo=2.6.2&interface=com.ex.DemoService&methods=sayHello&pid={pid}&side=provider&version=1.0.0"
        ))
    };
    [
        "Connecting to 192.168.1.100:2181".to_owned(),
        "Welcome to ZooKeeper!".to_owned(),
        "JLine support is disabled".to_owned(),
        String::new(),
        "WATCHER::".to_owned(),
        String::new(),
        "WatchedEvent state:SyncConnected type:None path:null".to_owned(),
        "[zk: 192.168.1.100:2181(CONNECTED) 0] ls /dubbo".to_owned(),
        "[com.ex.DemoService]".to_owned(),
        "[zk: 192.168.1.100:2181(CONNECTED) 1] ls /dubbo/com.ex.DemoService".to_owned(),
        "[configurators, routers, providers, consumers]".to_owned(),
        "[zk: 192.168.1.100:2181(CONNECTED) 2] ls /dubbo/com.ex.DemoService/providers".to_owned(),
        format!("[{}, {}]", demo("192.168.1.5", 8352), demo("192.168.1.6", 5120)),
        "[zk: 192.168.1.100:2181(CONNECTED) 3] ls2 /dubbo/com.ex.DemoService/consumers".to_owned(),
        "[]".to_owned(),
        "cZxid = 0x1a".to_owned(),
        "ctime = Mon Mar 11 14:01:05 CST 2019".to_owned(),
        "numChildren = 0".to_owned(),
        "[zk: 192.168.1.100:2181(CONNECTED) 4] quit".to_owned(),
        "Quitting...".to_owned(),
        // The same listing run as a script, one bare command per line.
        "ls /dubbo/com.ex.DemoService/providers".to_owned(),
        format!("[{}]", demo("192.168.1.7", 4242)),
    ]
    .iter()
    .map(|line| format!("{line}\r\n"))
    .collect()
}

#[test]
fn zkcli_3_4_child_lists_are_the_children_of_the_listed_path() {
    let text = zkcli_34_session();
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.DemoService:1.0.0"]);
    assert_eq!(
        endpoints(&snapshot),
        [
            ("com.ex.DemoService:1.0.0", "192.168.1.5", 20880, 100),
            ("com.ex.DemoService:1.0.0", "192.168.1.6", 20880, 100),
            ("com.ex.DemoService:1.0.0", "192.168.1.7", 20880, 100)
        ]
    );
    // Each instance's span is its own child node, not the whole list.
    let spanned: Vec<&str> = snapshot.instances.iter().map(|it| &text[it.span.start as usize..it.span.end as usize]).collect();
    assert!(spanned[0].starts_with(&encode("dubbo://192.168.1.5:20880/")) && spanned[0].ends_with("1%2E0%2E0"), "{}", spanned[0]);
    assert!(spanned[1].starts_with(&encode("dubbo://192.168.1.6:20880/")) && spanned[1].ends_with("1%2E0%2E0"), "{}", spanned[1]);
    assert!(spanned.iter().all(|it| !it.contains(", ") && !it.contains(['[', ']'])), "{spanned:?}");
    assert_eq!(snapshot.services[0].entry, "provider line 13 of com.ex.DemoService:1.0.0");
}

#[test]
fn a_child_list_needs_the_ls_before_it() {
    let url = encode("bolt://10.1.0.1:12200");
    let text = format!(
        "[{url}]\n\
             [zk: localhost:2181(CONNECTED) 0] ls -R /sofa-rpc\n[{url}]\n\
             [zk: localhost:2181(CONNECTED) 1] get /sofa-rpc/com.ex.A/providers\n[{url}]\n\
             [zk: localhost:2181(CONNECTED) 2] ls /sofa-rpc/com.ex.A/providers\n[{url}]\n[{url}]\n"
    );
    let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
    // The second list after one `ls` has no command of its own either.
    assert_eq!(entries(&diagnostics), [error("line 1"), error("line 3"), error("line 5"), error("line 8")]);
    assert!(
            diagnostics.iter().all(|it| it.message
                == "malformed entry in registry `zk`: a bracketed child list with no `ls <path>` command before it: the parent of these nodes is unknown"),
            "{diagnostics:#?}"
        );
    assert_eq!(endpoints(&snapshot), [("com.ex.A:1.0", "10.1.0.1", 12200, 100)]);
}

#[test]
fn zkcli_prompts_and_ls_commands_are_read() {
    assert_eq!(zkcli_command("[zk: localhost:2181(CONNECTED) 3] ls /dubbo"), Some("ls /dubbo"));
    assert_eq!(zkcli_command("[zk: [::1]:2181(CONNECTED) 0] ls /dubbo"), Some("ls /dubbo"));
    assert_eq!(zkcli_command("[zk: localhost:2181(CONNECTED) 4]"), Some(""));
    assert_eq!(zkcli_command("ls2 /dubbo"), Some("ls2 /dubbo"));
    assert_eq!(zkcli_command("/dubbo/ls"), None);
    assert_eq!(zkcli_command("[a, b]"), None);
    assert_eq!(listed_path("ls /dubbo/com.ex.A/providers"), Some("/dubbo/com.ex.A/providers"));
    assert_eq!(listed_path("ls -s -w /dubbo"), Some("/dubbo"));
    assert_eq!(listed_path("ls /dubbo watch"), Some("/dubbo"));
    assert_eq!(listed_path("ls -R /dubbo"), None);
    assert_eq!(listed_path("ls"), None);
    assert_eq!(listed_path("get /dubbo"), None);
    let children: Vec<(usize, &str)> = children("a, bc, d").collect();
    assert_eq!(children, [(0, "a"), (3, "bc"), (7, "d")]);
    assert_eq!(super::children("").count(), 0);
}

#[test]
fn malformed_lines_are_reported_and_skipped() {
    let lines = [
        "garbage line".to_owned(),
        "/dubbo/com.ex.Demo/providers/dubbo%3A%2F%2F10.0.0.1%ZZ20880".to_owned(),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.2/com.ex.Demo")),
        "/dubbo/com.ex.Demo/providers/dubbo://bad host:20880/com.ex.Demo".to_owned(),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.3:20880/com.ex.Other?interface=com.ex.Other")),
        format!("/dubbo/not-an-interface/providers/{}", encode("dubbo://10.0.0.4:20880")),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.5:20880/com.ex.Demo?weight=-3")),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://0.0.0.0:20880/com.ex.Demo")),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("consumer://10.0.0.6:20880/com.ex.Demo?side=consumer")),
        "/dubbo/com.ex.%ZZ/providers/x".to_owned(),
        format!("/dubbo/com.ex.Demo/providers/{}", encode("dubbo://10.0.0.9:20880/com.ex.Demo")),
    ];
    let text = lines.join("\r\n");
    let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
    assert_eq!(
        entries(&diagnostics),
        [
            error("line 1"),
            error("provider line 2 of com.ex.Demo"),
            error("provider line 3 of com.ex.Demo"),
            error("provider line 4 of com.ex.Demo"),
            error("provider line 5 of com.ex.Demo"),
            error("provider line 6 of not-an-interface"),
            error("provider line 7 of com.ex.Demo"),
            error("provider line 8 of com.ex.Demo"),
            (Severity::Warning, Code::RegistryEntry, "provider line 9 of com.ex.Demo".to_owned()),
            error("provider line 10 of com.ex.%ZZ"),
        ]
    );
    let messages: Vec<&str> = diagnostics.iter().map(|it| it.message.trim_start_matches("malformed entry in registry `zk`: ")).collect();
    assert!(messages[1].starts_with("bad URL encoding `%ZZ`"), "{}", messages[1]);
    assert!(messages[2].ends_with("has no port"), "{}", messages[2]);
    assert_eq!(messages[4], "the URL names interface `com.ex.Other` but the znode is under `com.ex.Demo`");
    assert_eq!(messages[5], "`not-an-interface` is not an interface name");
    assert!(messages[6].starts_with("weight `-3` is not a whole number"), "{}", messages[6]);
    assert_eq!(messages[7], "`0.0.0.0` is a wildcard address, not the address of an instance");
    assert_eq!(messages[8], "consumer URL under `providers` in registry `zk`");
    assert!(messages[9].starts_with("in the interface segment: bad URL encoding"), "{}", messages[9]);
    for diagnostic in &diagnostics {
        assert!(!diagnostic.message.ends_with('.'), "{}", diagnostic.message);
        let span = diagnostic.labels[0].span;
        let line = &text[span.start as usize..span.end as usize];
        assert!(!line.contains('\n') && !line.ends_with('\r') && lines.contains(&line.to_owned()), "{line:?}");
    }
    assert_eq!(endpoints(&snapshot), [("com.ex.Demo", "10.0.0.9", 20880, 100)]);
    // The skipped providers leave no empty services behind.
    assert_eq!(names(&snapshot), ["com.ex.Demo"]);
}

#[test]
fn empty_input_is_an_empty_snapshot() {
    for flavor in [Flavor::Dubbo, Flavor::SofaRpc] {
        let (snapshot, diagnostics) = load_text(flavor, "");
        assert!(snapshot.services.is_empty() && snapshot.instances.is_empty() && diagnostics.is_empty());
    }
}

#[test]
fn sofa_services_merge_across_zookeeper_and_sofa_registry() {
    let nowhere = Span::new(FileId(0), 0..0);
    let entry = |name: &str, kind| RegistryEntry {
        name: name.to_owned(),
        name_span: nowhere,
        kind,
        path: format!("registry/{name}"),
        path_span: nowhere,
        priority: 0,
        namespace: None,
        span: nowhere,
    };
    let zk_registry = entry("zk", RegistryKind::SofaRpcZookeeper);
    let sofa_registry = entry("sofa", RegistryKind::SofaRegistry);
    let zk_text = format!("/sofa-rpc/com.ex.OrderFacade/providers/{}\n", encode("bolt://10.1.2.3:12200?version=1.0"));
    let sofa_text = r#"{"dataId":"com.ex.OrderFacade:1.0@DEFAULT","data":{"RZ01A":["10.1.2.3:12200","10.1.2.4:12200"]}}"#;
    let mut zk_ctx = Ctx {
        file: FileId(1),
        text: &zk_text,
        registry: &zk_registry,
        namespace: "default",
        mesh_namespace: "mesh",
        diagnostics: Vec::new(),
    };
    let zk = load(&mut zk_ctx, Flavor::SofaRpc);
    let mut sofa_ctx = Ctx {
        file: FileId(2),
        text: sofa_text,
        registry: &sofa_registry,
        namespace: "default",
        mesh_namespace: "mesh",
        diagnostics: Vec::new(),
    };
    let sofa = super::super::sofa_registry::load(&mut sofa_ctx);
    let mut diagnostics = Vec::new();
    let catalog = super::super::merge::merge(&[(&zk_registry, &zk), (&sofa_registry, &sofa)], &mut diagnostics);
    assert!(diagnostics.is_empty() && zk_ctx.diagnostics.is_empty() && sofa_ctx.diagnostics.is_empty(), "{diagnostics:#?}");
    let keys: Vec<&(String, String)> = catalog.services.keys().collect();
    assert_eq!(keys, [&("mesh".to_owned(), "com.ex.OrderFacade:1.0".to_owned())]);
    let service = catalog.services.values().next().unwrap();
    assert_eq!((service.ports.len(), service.ports[0].number, service.ports[0].protocol), (1, 12200, Some(Protocol::Bolt)));
    assert_eq!(service.registries, ["sofa", "zk"]);
    let instances: Vec<(&str, &str, &[String])> =
        service.instances.iter().map(|it| (it.address.as_str(), it.origin.as_str(), it.also_in.as_slice())).collect();
    assert_eq!(instances, [("10.1.2.3", "sofa", &["zk".to_owned()][..]), ("10.1.2.4", "sofa", &[][..])]);
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = load_text(Flavor::Dubbo, &text);
        let _ = load_text(Flavor::SofaRpc, &text);
    }

    #[test]
    fn arbitrary_provider_nodes_give_an_instance_or_one_diagnostic(node in "[0-9a-zA-Z.:/\\[\\]?&=#%*,_ -]{1,60}") {
        let text = format!("/dubbo/com.ex.Demo/providers/{node}");
        let (snapshot, diagnostics) = load_text(Flavor::Dubbo, &text);
        proptest::prop_assert!(snapshot.instances.len() + diagnostics.len() <= 1);
        let text = format!("/sofa-rpc/com.ex.Demo/providers/{node}");
        let (snapshot, diagnostics) = load_text(Flavor::SofaRpc, &text);
        proptest::prop_assert!(snapshot.instances.len() + diagnostics.len() <= 1);
    }
}
