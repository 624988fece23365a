//! Parser tests: a snippet in, the AST (or the diagnostics) out, compared with `expect!`.
//! Update the expectations with `UPDATE_EXPECT=1 cargo test -p meshc syntax`.

use expect_test::{Expect, expect};

use super::ast::*;
use crate::source::FileId;

/// Parses `text` and prints what matters of it, one line per construct.
fn check(text: &str, expected: Expect) {
    let mut diagnostics = Vec::new();
    let file = super::parse(FileId(0), text, &mut diagnostics);
    let mut out = String::new();
    for diagnostic in &diagnostics {
        let at = diagnostic.labels.first().map(|it| format!("{}..{}", it.span.start, it.span.end)).unwrap_or_default();
        out.push_str(&format!("{} {at}: {}\n", diagnostic.code, diagnostic.message));
    }
    for item in file.map(|it| it.items).unwrap_or_default() {
        match item {
            Item::Service(service) => {
                out.push_str(&format!("service {} protocol={:?}\n", service.name.text, service.protocol.map(|it| it.value)));
                for port in &service.ports {
                    out.push_str(&format!(
                        "  port {} {:?} name={:?}\n",
                        port.number.value,
                        port.protocol.as_ref().map(|it| it.value),
                        port.name.as_ref().map(|it| &it.text)
                    ));
                }
                for subset in &service.subsets {
                    let labels: Vec<String> = subset.labels.iter().map(|(k, v)| format!("{}={}", k.text, v.text)).collect();
                    out.push_str(&format!("  subset {} {}\n", subset.name.text, labels.join(",")));
                }
                let policy = &service.policy;
                out.push_str(&format!(
                    "  lb={:?} connect={:?} outlier={:?}\n",
                    policy.load_balancer.as_ref().map(|it| &it.value),
                    policy.connect_timeout.as_ref().map(|it| it.value),
                    policy.outlier_detection.as_ref().map(|it| (
                        it.value.consecutive_5xx,
                        it.value.interval_ms,
                        it.value.max_ejection_percent
                    ))
                ));
            }
            Item::Routes(routes) => {
                out.push_str(&format!("routes {}\n", routes.target.text));
                for route in &routes.routes {
                    out.push_str(&format!("  route {}\n", route.name.text));
                    for block in &route.matches {
                        let conditions: Vec<String> = block.conditions.iter().map(|it| format!("{:?} {:?}", it.field, it.test)).collect();
                        for condition in conditions {
                            out.push_str(&format!("    match {}\n", condition.replace("value_span: ", "at: ")));
                        }
                    }
                    for to in &route.destinations {
                        out.push_str(&format!(
                            "    to {} subset={:?} port={:?} weight={:?}\n",
                            to.service.text,
                            to.subset.as_ref().map(|it| &it.text),
                            to.port.as_ref().map(|it| it.value),
                            to.weight.as_ref().map(|it| it.value)
                        ));
                    }
                    if let Some(retries) = &route.retries {
                        let on: Vec<&str> = retries.value.retry_on.iter().map(|it| it.text.as_str()).collect();
                        out.push_str(&format!(
                            "    retries {} per_try={:?} on={on:?}\n",
                            retries.value.attempts,
                            retries.value.per_try_timeout.as_ref().map(|it| it.value)
                        ));
                    }
                    if let Some(fault) = &route.fault_abort {
                        out.push_str(&format!("    abort {:?}\n", fault.value));
                    }
                    if let Some(mirror) = &route.mirror {
                        out.push_str(&format!("    mirror {} {}\n", mirror.service.text, mirror.per_million));
                    }
                    if let Some(limit) = &route.rate_limit {
                        out.push_str(&format!("    rate_limit {:?}\n", limit.value));
                    }
                }
            }
            Item::Authorization(policy) => {
                out.push_str(&format!("authorization {} action={:?}\n", policy.name.text, policy.action.map(|it| it.value)));
                for rule in &policy.rules {
                    for when in &rule.when {
                        let values: Vec<&str> = when.values.iter().map(|it| it.text.as_str()).collect();
                        out.push_str(&format!("  when {} negated={} {values:?}\n", when.key.text, when.negated));
                    }
                }
            }
            Item::Workload(workload) => {
                let serves: Vec<&str> = workload.serves.iter().map(|it| it.text.as_str()).collect();
                out.push_str(&format!("workload {} serves={serves:?}\n", workload.name.text));
            }
            Item::Telemetry(telemetry) => out.push_str(&format!(
                "telemetry access_log={:?} request_id={:?} tracing={:?}\n",
                telemetry.access_log.map(|it| it.value),
                telemetry.request_id.map(|it| it.value),
                telemetry.tracing.map(|it| it.value)
            )),
        }
    }
    expected.assert_eq(&out);
}

#[test]
fn values_are_converted_to_units() {
    check(
        r#"service "com.ex.Order:1.0" {
  port 12200 bolt name "main"
  connect_timeout 1.5s
  outlier_detection { interval 250ms  max_ejection_percent 50% }
  load_balancer maglev cookie "session" ttl 1h
}"#,
        expect![[r#"
            service com.ex.Order:1.0 protocol=None
              port 12200 Some(Bolt) name=Some("main")
              lb=Some(Maglev { hash: Cookie { name: "session", path: None, ttl_ms: Some(3600000) }, table_size: 65537 }) connect=Some(1500) outlier=Some((Some(5), 250, 50))
        "#]],
    );
}

#[test]
fn strings_unescape_and_labels_take_dotted_keys() {
    check(
        r#"service reviews { subset v3 { app.kubernetes.io/version = "v\u{33}" } }"#,
        expect![[r#"
            service reviews protocol=None
              subset v3 app.kubernetes.io/version=v3
              lb=None connect=None outlier=None
        "#]],
    );
}

#[test]
fn conditions_default_to_exact_and_options_come_in_any_order() {
    check(
        r#"routes reviews {
  route r {
    match { method GET  header "End-User" prefix "ja"  query "q" absent }
    to reviews weight 10 port 9080 subset v1
    retries 3 on "5xx,reset", gateway-error
    fault abort grpc 14 0.5%
    mirror ratings 12.5%
    rate_limit 60/m burst 5 per_source
  }
}"#,
        expect![[r#"
            routes reviews
              route r
                match Method Match { kind: Exact, value: "GET", at: Span { file: FileId(0), start: 48, end: 51 } }
                match Header("end-user") Match { kind: Prefix, value: "ja", at: Span { file: FileId(0), start: 78, end: 82 } }
                match Query("q") Absent
                to reviews subset=Some("v1") port=Some(9080) weight=Some(10)
                retries 3 per_try=None on=["5xx", "reset", "gateway-error"]
                abort (Grpc(14), 5000)
                mirror ratings 125000
                rate_limit RateLimit { requests: 60, interval_ms: 60000, burst: Some(5), per_source: true }
        "#]],
    );
}

#[test]
fn when_keys_accept_header_shorthand_and_attributes() {
    check(
        r#"authorization p { action deny  rule { when header "X-Token" in "a", "b"  when source.ip not_in "10.0.0.0/8" } }"#,
        expect![[r#"
            authorization p action=Some(Deny)
              when request.headers[x-token] negated=false ["a", "b"]
              when source.ip negated=true ["10.0.0.0/8"]
        "#]],
    );
}

#[test]
fn settings_given_twice_and_bad_values_are_reported_together() {
    check(
        r#"service reviews {
  protocol http
  protocol grpc
  connect_timeout 0.1ms
  limits { max_connections 0  max_conections 5 }
}"#,
        expect![[r#"
            E0005 36..49: `protocol` is set twice in one block
            E0004 68..73: `0.1ms` is not a whole number of milliseconds
            E0004 101..102: `max_connections` must be between 1 and 4294967295
            E0004 104..120: unknown setting `max_conections` in `limits`
            service reviews protocol=Some(Http)
              lb=None connect=None outlier=None
        "#]],
    );
}

#[test]
fn a_syntax_error_names_what_was_expected() {
    check(
        "routes reviews {\n  route r { to }\n}\n",
        expect![[r#"
            E0002 32..33: expected a name, found `}`
        "#]],
    );
}

#[test]
fn a_block_left_open_is_pointed_at() {
    let diagnostic = |text: &str| {
        let mut diagnostics = Vec::new();
        let _ = super::parse(FileId(0), text, &mut diagnostics);
        let diagnostic = diagnostics.into_iter().next().expect("a syntax error");
        let labels: Vec<_> = diagnostic.labels.iter().map(|it| (it.span.start, it.message.clone())).collect();
        (labels, diagnostic.help)
    };
    // The file ends inside `routes`, whose route is closed; a `}` in a string or a comment
    // closes nothing.
    let text = "routes reviews { # }\n  route a { to reviews  request_header set \"x\" \"}\" }\n";
    let (labels, help) = diagnostic(text);
    assert_eq!(labels, [(text.len() as u32, String::new()), (15, "this `{` is not closed".to_owned())]);
    assert_eq!(help.as_deref(), Some("close the block with `}` before end of file"));
    // A workload starts inside it.
    let (labels, help) = diagnostic("routes reviews {\n  route a { to reviews }\nworkload web { serves reviews }\n");
    assert_eq!(labels[1], (15, "this `{` is not closed".to_owned()));
    assert_eq!(help.as_deref(), Some("close the block with `}` before `workload`"));
    // Another mistake inside a block is not taken for one left open, nor is an item's
    // keyword in the wrong block of a file whose braces balance, nor a value missing where
    // the file ends.
    let (labels, help) = diagnostic("routes reviews {\n  route a { to }\n}\n");
    assert_eq!(labels.len(), 1);
    assert_eq!(help, None);
    let (labels, help) = diagnostic("authorization callers {\n  workload reviews\n  action allow\n}\n");
    assert_eq!(labels.len(), 1);
    assert_eq!(help.as_deref(), Some("did you mean `workloads`?"));
    let (labels, help) = diagnostic("workload web {\n  service reviews\n}\n");
    assert_eq!((labels.len(), help), (1, None));
    let (labels, help) = diagnostic("routes r {\n  route a {\n    to r weight");
    assert_eq!((labels.len(), help), (1, None));
}

#[test]
fn a_misspelt_keyword_gets_the_one_meant() {
    let help = |text: &str| {
        let mut diagnostics = Vec::new();
        let _ = super::parse(FileId(0), text, &mut diagnostics);
        diagnostics.into_iter().next().expect("a syntax error").help
    };
    assert_eq!(help("routes r {\n  route a { to r wieght 100 }\n}\n").as_deref(), Some("did you mean `weight`?"));
    assert_eq!(help("routes r {\n  rout a { to r }\n}\n").as_deref(), Some("did you mean `route`?"));
    assert_eq!(help("srevice r { protocol http }\n").as_deref(), Some("did you mean `service`?"));
    // Nothing near, too short to say, or a keyword in the wrong place.
    assert_eq!(help("routes r {\n  route a { to r frobnicate 100 }\n}\n"), None);
    assert_eq!(help("routes r {\n  route a { foo r }\n}\n"), None);
    assert_eq!(help("routes r {\n  route a { tls simple }\n}\n"), None);
    assert_eq!(help("routes r {\n  route a { to r x }\n}\n"), None);
    assert_eq!(help("routes r {\n  route a { to }\n}\n"), None);
}

#[test]
fn a_string_left_open_is_named() {
    check(
        "service r {\n  subset v1 { version = \"v1 }\n}\n",
        expect![[r#"
            E0002 36..41: this string is not closed before the end of its line
        "#]],
    );
    // An escape the language does not have, and one it has.
    check(
        "service r {\n  subset v1 { version = \"v\\q1\" }\n}\n",
        expect![[r#"
            E0002 38..40: `\q` is not an escape a string may hold
        "#]],
    );
    check(
        "service r {\n  subset v1 { version = \"v\\u{e9}\\u{110000x}\" }\n}\n",
        expect![[r#"
            E0002 44..46: `\u` is not an escape a string may hold
        "#]],
    );
    // A string left open on a line that ends in CRLF: the span stops before the CR.
    check(
        "service r {\r\n  subset v1 { version = \"v1 }\r\n}\r\n",
        expect![[r#"
            E0002 37..42: this string is not closed before the end of its line
        "#]],
    );
    // A closed string with an escaped quote is not taken for one left open.
    check(
        "service r {\n  subset v1 { version = \"v\\\"1\" x }\n}\n",
        expect![[r#"
            E0002 43..44: expected `connect_timeout`, `health_check`, `limits`, `load_balancer`, `outlier_detection`, `request_timeout`, `tls`, `warmup` or a label `key = "value"`, found `x`
        "#]],
    );
}

#[test]
fn workloads_collect_every_serves_list() {
    check(
        "workload web { serves a, b  serves c  calls *  telemetry { access_log off } }\ntelemetry { access_log on  request_id off  tracing on }",
        expect![[r#"
            workload web serves=["a", "b", "c"]
            telemetry access_log=Some(true) request_id=Some(false) tracing=Some(true)
        "#]],
    );
}

#[test]
fn rpc_listener_is_set_once() {
    check(
        "workload web { rpc_listener auto  rpc_listener per_protocol }",
        expect![[r#"
        E0005 34..59: `rpc_listener` is set twice in one block
        workload web serves=[]
    "#]],
    );
}

#[test]
fn rpc_listener_names_its_modes() {
    check(
        "workload api { rpc_listener shared }",
        expect![[r#"
        E0002 28..34: expected `auto` or `per_protocol`, found `shared`
    "#]],
    );
}
