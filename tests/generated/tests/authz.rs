//! Agreement on authorization: for random inbound requests, every generated sidecar whose
//! workload has policies (bookinfo's ratings, sofa-shop's, and the random meshes' workload
//! `w`) reaches the same verdict, by the same policy and rule, as `meshc explain`'s
//! interpreter of the IR.
//!
//! The caller's identity is the calling workload's principal, as mutual TLS will prove it;
//! requests are drawn from the policies' own vocabulary and near-misses of it.

use std::net::IpAddr;

use meshc::explain::{Caller, Request, RequestProtocol, authorize};
use meshc_codegen::ir;
use meshc_generated::{SIDECARS, mesh};
use meshc_runtime::__codegen as rt;
use meshc_runtime::authz;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A random inbound request.
#[derive(Clone, Debug)]
struct Inbound {
    caller: usize,
    ip: IpAddr,
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
    port: u16,
}

fn inbound(mesh: &ir::Mesh, server: &ir::Workload) -> impl Strategy<Value = Inbound> {
    let callers = mesh.workloads.len();
    let ports: Vec<u16> = server.inbound.iter().map(|it| it.port).collect::<Vec<_>>();
    let ports = if ports.is_empty() { vec![80] } else { ports };
    let hosts: Vec<String> = mesh.services.iter().flat_map(|it| [it.name.clone(), format!("{}:80", it.name), it.host.clone()]).collect();
    let ips = ["10.0.0.5", "10.1.2.3", "192.168.7.7", "127.0.0.1", "172.16.0.1", "::1"];
    let paths = ["/", "/p1", "/p2", "/p2/x", "/p3/a/b", "/p3", "/admin", "/admin/x", "/a/x", "/x", "/ratings/1", "/health", "/reviews/0"];
    let methods = ["GET", "HEAD", "POST", "DELETE", "PUT"];
    let header_names = ["x-a", "x-b", "x-token", "end-user"];
    let header_values = ["0", "1", "2", "a", "b", "jason"];
    (
        0..callers.max(1),
        proptest::sample::select(ips.to_vec()),
        proptest::sample::select(methods.to_vec()),
        proptest::sample::select(paths.to_vec()),
        proptest::sample::select(hosts),
        proptest::collection::vec(
            (proptest::sample::select(header_names.to_vec()), proptest::sample::select(header_values.to_vec())),
            0..3,
        ),
        proptest::sample::select(ports),
    )
        .prop_map(|(caller, ip, method, path, authority, headers, port)| Inbound {
            caller,
            ip: ip.parse().expect("an address"),
            method: method.to_owned(),
            path: path.to_owned(),
            authority,
            headers: headers.into_iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect(),
            port,
        })
}

#[test]
fn compiled_policies_reach_the_verdicts_explain_reaches() {
    let mut checked = 0;
    let mut denied = 0;
    for sidecar in SIDECARS {
        let mesh = mesh(sidecar.origin);
        let Some(server) = mesh.workloads.iter().find(|it| it.name == sidecar.workload) else { continue };
        if server.authz.is_empty() || mesh.workloads.is_empty() {
            continue;
        }
        let mut runner = TestRunner::new(Config { cases: 256, ..Config::default() });
        let result = runner.run(&inbound(mesh, server), |request| {
            let caller = &mesh.workloads[request.caller];
            let explain_request = Request {
                protocol: RequestProtocol::Http,
                authority: Some(request.authority.clone()),
                path: Some(request.path.clone()),
                method: request.method.clone(),
                query: Vec::new(),
                headers: request.headers.clone(),
                service: None,
                interface: None,
                version: None,
                group: None,
            };
            let expected = authorize(mesh, server, &Caller { workload: caller, ip: Some(request.ip) }, &explain_request, request.port);
            let mut headers = http::HeaderMap::new();
            for (name, value) in &request.headers {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(value).expect("value"),
                );
            }
            let head = rt::RequestHead::from_parts(&request.method, &request.authority, &request.path, None, &headers);
            let compiled = sidecar.authz.authorize(&authz::Request {
                head: Some(&head),
                peer: Some(request.ip),
                principal: Some(caller.principal.as_str()),
                port: request.port,
                // `explain` knows no connection: both see these attributes as absent.
                local: None,
                sni: None,
                rpc_method: None,
            });
            prop_assert_eq!(
                (compiled.allowed, compiled.policy, compiled.rule),
                (expected.allowed, expected.policy.as_deref(), expected.rule),
                "{:?} at {} ({:?}): explain says {}",
                request,
                server.name,
                sidecar.origin,
                expected.reason
            );
            Ok(())
        });
        if let Err(err) = result {
            panic!("{err}");
        }
        checked += 1;
        denied += usize::from(mesh.authz_policies.iter().any(|it| it.action == ir::AuthzAction::Deny));
    }
    assert!(checked >= 5, "only {checked} sidecars have policies");
    assert!(denied > 0, "no DENY policy was exercised");
}
