//! Tests of the sofa registry adapter: realistic snapshots in, exact services, instances and diagnostics out.

use meshc_codegen::ir::RegistryKind;

use super::*;
use crate::diag::{Code, Diagnostic, Severity};
use crate::manifest::RegistryEntry;
use crate::source::FileId;

fn registry() -> RegistryEntry {
    crate::registry::testing::entry("sofa", RegistryKind::SofaRegistry, "registry/sofa.json")
}

fn load_text(text: &str) -> (Snapshot, Vec<Diagnostic>) {
    crate::registry::testing::run(&registry(), FileId(1), text, "default", load)
}

fn names(snapshot: &Snapshot) -> Vec<&str> {
    snapshot.services.iter().map(|it| it.name.as_str()).collect()
}

fn endpoints(snapshot: &Snapshot) -> Vec<(&str, &str, u16, u32)> {
    snapshot.instances.iter().map(|it| (it.service.as_str(), it.address.as_str(), it.port, it.weight)).collect()
}

/// Every diagnostic is an entry error whose note names `entry`.
fn assert_entry_errors(diagnostics: &[Diagnostic], entries: &[&str]) {
    let notes: Vec<String> = diagnostics.iter().map(|it| it.notes.join("; ")).collect();
    assert_eq!(diagnostics.len(), entries.len(), "{diagnostics:#?}");
    for (diagnostic, entry) in diagnostics.iter().zip(entries) {
        assert_eq!((diagnostic.code, diagnostic.severity), (Code::RegistryEntry, Severity::Error), "{diagnostic:#?}");
        assert_eq!(diagnostic.notes, vec![format!("entry: {entry}")], "{notes:?}");
        assert!(diagnostic.message.starts_with("malformed entry in registry `sofa`: "), "{}", diagnostic.message);
    }
}

const EXAMPLE: &str = r#"{"dataInfoId":"com.ex.OrderFacade:1.0@DEFAULT#@#DEFAULT_INSTANCE_ID#@#SOFA",
 "dataId":"com.ex.OrderFacade:1.0@DEFAULT","instanceId":"DEFAULT_INSTANCE_ID","group":"SOFA",
 "scope":"dataCenter","localZone":"RZ01A","version":1700000000123,
 "data":{"RZ01A":["10.1.0.5:12200?rpcVer=50806&serialization=hessian2&weight=100&timeout=3000&appName=order&p=1&v=4.0&startTime=1700000000000"],
         "RZ01B":["10.1.8.9:12200?rpcVer=50806&serialization=hessian2&weight=50&appName=order&p=1&v=4.0"]}}"#;

#[test]
fn the_reference_example_loads() {
    let (snapshot, diagnostics) = load_text(EXAMPLE);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.OrderFacade:1.0"]);
    let service = &snapshot.services[0];
    assert_eq!(
        (service.namespace.as_str(), service.protocol, service.ports.len(), service.methods.is_none()),
        ("mesh", Some(Protocol::Bolt), 0, true)
    );
    let rpc = service.rpc.as_ref().unwrap();
    assert_eq!(
        (rpc.interface.as_str(), rpc.version.as_deref(), rpc.unique_id.as_deref(), rpc.group.as_deref()),
        ("com.ex.OrderFacade", Some("1.0"), None, None)
    );
    assert_eq!(service.span, Span::new(FileId(1), 0..EXAMPLE.len()));
    assert_eq!(service.entry, "push of com.ex.OrderFacade:1.0@DEFAULT");
    assert_eq!(
        endpoints(&snapshot),
        [("com.ex.OrderFacade:1.0", "10.1.0.5", 12200, 100), ("com.ex.OrderFacade:1.0", "10.1.8.9", 12200, 50)]
    );
    let first = &snapshot.instances[0];
    assert_eq!((first.locality.zone.as_deref(), first.locality.region.as_deref()), (Some("RZ01A"), None));
    assert_eq!(snapshot.instances[1].locality.zone.as_deref(), Some("RZ01B"));
    assert_eq!((first.health, first.service_port, first.namespace.as_str()), (Health::Healthy, None, "mesh"));
    let labels: Vec<(&str, &str)> = first.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("app", "order"),
            ("appName", "order"),
            ("p", "1"),
            ("rpcVer", "50806"),
            ("serialization", "hessian2"),
            ("timeout", "3000"),
            ("v", "4.0"),
            ("weight", "100")
        ]
    );
    assert_eq!(snapshot.version.as_deref(), Some("1700000000123"));
}

#[test]
fn several_pushes_unique_ids_and_protocols_make_separate_services() {
    let text = r#"[
          {"dataId":"com.ex.OrderFacade:1.0@DEFAULT","version":"17","data":{"RZ01A":["10.1.0.5:12200"]}},
          {"dataId":"com.ex.OrderFacade:2.0:blue@DEFAULT","version":42,"data":{"RZ01A":[{"data":"10.1.0.6:12200?weight=7"}]}},
          {"dataId":"com.ex.OrderFacade:1.0@rest","version":3,"data":{"RZ01B":["10.1.0.7:8341?appName=order"]}},
          {"dataInfoId":"com.ex.PayFacade:1.0@tr#@#DEFAULT_INSTANCE_ID#@#SOFA","data":{"":["[fd00::5]:12200"]}}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(
        names(&snapshot),
        ["com.ex.OrderFacade:1.0", "com.ex.OrderFacade:2.0:blue", "com.ex.OrderFacade:1.0@rest", "com.ex.PayFacade:1.0@tr"]
    );
    let protocols: Vec<_> = snapshot.services.iter().map(|it| it.protocol).collect();
    assert_eq!(protocols, [Some(Protocol::Bolt), Some(Protocol::Bolt), Some(Protocol::Http), Some(Protocol::Tcp)]);
    assert_eq!(snapshot.services[1].rpc.as_ref().unwrap().unique_id.as_deref(), Some("blue"));
    // REST and TR are not routed by interface, so they carry no RPC key.
    assert!(snapshot.services[2].rpc.is_none() && snapshot.services[3].rpc.is_none());
    assert_eq!(
        endpoints(&snapshot),
        [
            ("com.ex.OrderFacade:1.0", "10.1.0.5", 12200, 100),
            ("com.ex.OrderFacade:2.0:blue", "10.1.0.6", 12200, 7),
            ("com.ex.OrderFacade:1.0@rest", "10.1.0.7", 8341, 100),
            ("com.ex.PayFacade:1.0@tr", "fd00::5", 12200, 100),
        ]
    );
    assert_eq!(snapshot.instances[3].locality.zone, None);
    // Each push object is its own span.
    assert!(snapshot.instances[0].span.end < snapshot.instances[1].span.start);
    assert_eq!(snapshot.version.as_deref(), Some("42"));
}

#[test]
fn a_provider_can_move_to_its_own_protocol() {
    let text = r#"{"dataId":"com.ex.OrderFacade:1.0","data":{"Z":["10.0.0.1:12200?p=1","10.0.0.2:12201?p=13","bolt://10.0.0.3:12200","h2c://10.0.0.4:12300"]}}"#;
    let (snapshot, diagnostics) = load_text(text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    assert_eq!(names(&snapshot), ["com.ex.OrderFacade:1.0", "com.ex.OrderFacade:1.0@tr", "com.ex.OrderFacade:1.0@h2c"]);
    let services: Vec<&str> = snapshot.instances.iter().map(|it| it.service.as_str()).collect();
    assert_eq!(services, ["com.ex.OrderFacade:1.0", "com.ex.OrderFacade:1.0@tr", "com.ex.OrderFacade:1.0", "com.ex.OrderFacade:1.0@h2c"]);
    assert_eq!(snapshot.services[2].protocol, Some(Protocol::Http2));
}

#[test]
fn legacy_aliases_fold_into_modern_names() {
    let text = r#"{"dataId":"com.ex.A:1.0@DEFAULT","data":{"Z":["10.0.0.1:12200?_WEIGHT=30&_SERIALIZETYPE=4&app_name=legacy&_TIMEOUT=500&pid=77&.pay.timeout=100&[pay]=[_TIMEOUT#100]&zone=ignored&custom=x"]}}"#;
    let (snapshot, diagnostics) = load_text(text);
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    let instance = &snapshot.instances[0];
    assert_eq!(instance.weight, 30);
    let labels: Vec<(&str, &str)> = instance.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The `#` inside the method-level pair does not cut off the parameters after it.
    assert_eq!(
        labels,
        [
            ("app", "legacy"),
            ("appName", "legacy"),
            ("custom", "x"),
            ("serialization", "hessian2"),
            ("timeout", "500"),
            ("weight", "30"),
            ("zone", "ignored")
        ]
    );
    // The modern name wins over the legacy one.
    let text = r#"{"dataId":"com.ex.A:1.0@DEFAULT","data":{"Z":["10.0.0.1:12200?_WEIGHT=30&weight=60&enabled=false"]}}"#;
    let (snapshot, _) = load_text(text);
    assert_eq!((snapshot.instances[0].weight, snapshot.instances[0].labels["weight"].as_str()), (60, "60"));
    assert_eq!(snapshot.instances[0].health, Health::Draining);
}

#[test]
fn multi_data_center_pushes_read_unzip_data() {
    let text = r#"{"dataId":"com.ex.A:1.0@DEFAULT","localSegment":"DC1","localZone":"RZ01A",
          "multiData":{
            "DC1":{"segment":"DC1","unzipData":{"RZ01A":[{"data":"10.0.0.1:12200"}]},"version":5},
            "DC2":{"segment":"DC2","unzipData":{"RZ02A":["10.0.1.1:12200"],"RZ02B":null},"version":9},
            "DC3":{"segment":"DC3","zipData":"H4sIAAAAAAAAAA==","encoding":"gzip","unzipData":{},"version":11}}}"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_entry_errors(&diagnostics, &["com.ex.A:1.0@DEFAULT segment `DC3`"]);
    assert!(diagnostics[0].message.contains("compressed `zipData` (encoding `gzip`)"), "{}", diagnostics[0].message);
    assert_eq!(diagnostics[0].labels[0].span, Span::new(FileId(1), 0..text.len()));
    let localities: Vec<(Option<&str>, Option<&str>)> =
        snapshot.instances.iter().map(|it| (it.locality.region.as_deref(), it.locality.zone.as_deref())).collect();
    assert_eq!(localities, [(Some("DC1"), Some("RZ01A")), (Some("DC2"), Some("RZ02A"))]);
    assert_eq!(snapshot.version.as_deref(), Some("11"));
}

#[test]
fn the_segment_of_a_plain_push_is_its_region() {
    let (snapshot, _) = load_text(r#"{"dataId":"com.ex.A:1.0","segment":"DC1","data":{"RZ01A":["10.0.0.1:12200"]}}"#);
    assert_eq!(snapshot.instances[0].locality.region.as_deref(), Some("DC1"));
}

#[test]
fn string_versions_fall_back_to_the_last() {
    let (snapshot, _) =
        load_text(r#"[{"dataId":"com.ex.A:1.0","version":"v7"},{"dataId":"com.ex.B:1.0","version":"v8"},{"dataId":"com.ex.C:1.0"}]"#);
    assert_eq!(snapshot.version.as_deref(), Some("v8"));
    assert_eq!(names(&snapshot), ["com.ex.A:1.0", "com.ex.B:1.0", "com.ex.C:1.0"]);
    assert!(snapshot.instances.is_empty());
    let (snapshot, _) = load_text(r#"[{"dataId":"com.ex.A:1.0","version":"v7"},{"dataId":"com.ex.B:1.0","version":"12"}]"#);
    assert_eq!(snapshot.version.as_deref(), Some("12"));
}

#[test]
fn config_pushes_are_left_out() {
    let (snapshot, diagnostics) = load_text(r#"{"dataId":"com.ex.A:1.0@DEFAULT","group":"SOFA.CONFIG","data":{"Z":["override://x"]}}"#);
    assert!(diagnostics.is_empty() && snapshot.services.is_empty() && snapshot.instances.is_empty());
}

#[test]
fn bad_providers_are_skipped_one_by_one() {
    let text = r#"{"dataId":"com.ex.A:1.0@DEFAULT","data":{
            "RZ01A":["10.0.0.1:12200","10.0.0.2?weight=1","bad host:12200","10.0.0.3:99999","0.0.0.0:12200"],
            "RZ01B":["10.0.0.4:12200?weight=heavy",7,{"data":null},"10.0.0.5:12200"],
            "RZ01C":42}}"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_entry_errors(
        &diagnostics,
        &[
            "com.ex.A:1.0@DEFAULT provider `10.0.0.2?weight=1` in zone RZ01A",
            "com.ex.A:1.0@DEFAULT provider `bad host:12200` in zone RZ01A",
            "com.ex.A:1.0@DEFAULT provider `10.0.0.3:99999` in zone RZ01A",
            "com.ex.A:1.0@DEFAULT provider `0.0.0.0:12200` in zone RZ01A",
            "com.ex.A:1.0@DEFAULT provider `10.0.0.4:12200?weight=heavy` in zone RZ01B",
            "com.ex.A:1.0@DEFAULT provider 7 in zone RZ01B",
            "com.ex.A:1.0@DEFAULT provider {\"data\":null} in zone RZ01B",
            "com.ex.A:1.0@DEFAULT zone RZ01C",
        ],
    );
    assert!(diagnostics[0].message.ends_with("`10.0.0.2?weight=1` has no port"), "{}", diagnostics[0].message);
    assert!(diagnostics[4].message.contains("weight `heavy` is not a whole number"), "{}", diagnostics[4].message);
    for diagnostic in &diagnostics {
        assert_eq!(diagnostic.labels[0].span, Span::new(FileId(1), 0..text.len()));
        assert!(!diagnostic.message.ends_with('.'));
    }
    assert_eq!(endpoints(&snapshot), [("com.ex.A:1.0", "10.0.0.1", 12200, 100), ("com.ex.A:1.0", "10.0.0.5", 12200, 100)]);
}

#[test]
fn a_zone_that_is_not_a_list_is_an_entry_error() {
    // The shape of a hand-edited snapshot: the list brackets of a one-provider zone lost.
    let text = r#"[
          {"dataId":"com.ex.OrderFacade:1.0@DEFAULT","data":{"RZ00A":[{"data":"11.166.22.3:12200?weight=100"}]}},
          {"dataId":"com.ex.UserFacade:1.0@DEFAULT","data":{
            "RZ00A":"11.166.22.7:12200?weight=100&appName=user",
            "RZ00B":{"data":"11.166.22.8:12200"},
            "RZ00C":["11.166.22.9:12200"]}}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_entry_errors(&diagnostics, &["com.ex.UserFacade:1.0@DEFAULT zone RZ00A", "com.ex.UserFacade:1.0@DEFAULT zone RZ00B"]);
    assert_eq!(
        diagnostics[0].message,
        "malformed entry in registry `sofa`: zone `RZ00A` of `com.ex.UserFacade:1.0@DEFAULT` holds a single string, \
             not a list of providers: SOFARegistry pushes every zone as a list"
    );
    assert!(diagnostics[1].message.contains("holds a single object, not a list"), "{}", diagnostics[1].message);
    // Both point at the UserFacade push, not at the OrderFacade one.
    let user_start = text.find(r#"{"dataId":"com.ex.UserFacade"#).unwrap();
    assert!(diagnostics.iter().all(|it| it.labels[0].span.start as usize == user_start));
    // The malformed zones are skipped; the push's list zone and the other push still load.
    assert_eq!(names(&snapshot), ["com.ex.OrderFacade:1.0", "com.ex.UserFacade:1.0"]);
    assert_eq!(
        endpoints(&snapshot),
        [("com.ex.OrderFacade:1.0", "11.166.22.3", 12200, 100), ("com.ex.UserFacade:1.0", "11.166.22.9", 12200, 100)]
    );
}

#[test]
fn bad_push_objects_are_skipped_and_the_rest_loads() {
    let text = r#"[
          {"instanceId":"DEFAULT_INSTANCE_ID","data":{"Z":["10.0.0.9:12200"]}},
          {"dataId":"not an interface:1.0@DEFAULT"},
          {"dataId":"com.ex.A:1.0@"},
          {"dataId":"com.ex.A:1.0","data":["10.0.0.8:12200"]},
          "just a string",
          {"dataId":"com.ex.B:1.0","data":{"Z":["10.0.0.1:12200"]}}
        ]"#;
    let (snapshot, diagnostics) = load_text(text);
    assert_entry_errors(
        &diagnostics,
        &[
            "push object 1",
            "push object 2 (not an interface:1.0@DEFAULT)",
            "push object 3 (com.ex.A:1.0@)",
            "push object 4",
            "push object 5",
        ],
    );
    assert!(diagnostics[0].message.contains("missing `dataId` and `dataInfoId`"));
    // Each diagnostic points at its own push object.
    let starts: Vec<usize> = diagnostics.iter().map(|it| it.labels[0].span.start as usize).collect();
    assert_eq!(&text[starts[1]..starts[1] + 10], "{\"dataId\":");
    assert!(starts.windows(2).all(|it| it[0] < it[1]));
    assert_eq!(names(&snapshot), ["com.ex.B:1.0"]);
    assert_eq!(snapshot.instances.len(), 1);
}

#[test]
fn invalid_json_is_a_file_error() {
    let (snapshot, diagnostics) = load_text(&EXAMPLE[..EXAMPLE.len() / 2]);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    assert!(
        diagnostics[0].message.starts_with("cannot read sofa-registry snapshot of registry `sofa`: invalid JSON"),
        "{}",
        diagnostics[0].message
    );
    assert!(snapshot.services.is_empty() && snapshot.instances.is_empty() && snapshot.version.is_none());
}

#[test]
fn weights_accept_whole_numbers_only() {
    assert_eq!(parse_weight(" 100 "), Ok(100));
    assert_eq!(parse_weight("50.0"), Ok(50));
    assert_eq!(parse_weight("0"), Ok(0));
    assert!(parse_weight("1.5").is_err());
    assert!(parse_weight("-1").is_err());
    assert!(parse_weight("NaN").is_err());
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = load_text(&text);
    }

    #[test]
    fn arbitrary_providers_never_panic(provider in "[0-9a-z.:\\[\\]?&=#%@/ _-]{0,60}", zone in "\\PC{0,8}") {
        let push = serde_json::json!({"dataId": "com.ex.A:1.0@DEFAULT", "data": {zone: [provider]}});
        let (snapshot, diagnostics) = load_text(&push.to_string());
        proptest::prop_assert_eq!(snapshot.instances.len() + diagnostics.len(), 1);
    }
}
