//! Tests of the kubernetes adapter: realistic snapshots in, exact services, instances and diagnostics out.

use meshc_codegen::ir::RegistryKind;

use super::*;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

fn read_with(text: &str, namespace: &str) -> (Snapshot, Vec<Diagnostic>) {
    let registry = crate::registry::testing::entry("k8s", RegistryKind::Kubernetes, "registry/k8s.yaml");
    crate::registry::testing::run(&registry, FileId(1), text, namespace, load)
}

fn read(text: &str) -> (Snapshot, Vec<Diagnostic>) {
    read_with(text, "default")
}

/// Reads a snapshot that must have no diagnostics.
fn read_clean(text: &str) -> Snapshot {
    let (snapshot, diagnostics) = read(text);
    assert!(diagnostics.is_empty(), "{:#?}", diagnostics.iter().map(|it| describe(text, it)).collect::<Vec<_>>());
    snapshot
}

/// One line per instance: service, address:port, service port, health, locality, version label.
fn instances(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .instances
        .iter()
        .map(|it| {
            let port = it.service_port.map_or("-".to_owned(), |it| it.to_string());
            let locality = [&it.locality.region, &it.locality.zone, &it.locality.subzone].map(|it| it.as_deref().unwrap_or("-")).join("/");
            let version = it.labels.get("version").map_or("-", String::as_str);
            format!("{}/{} {}:{} svc={port} {:?} {locality} version={version}", it.namespace, it.service, it.address, it.port, it.health)
        })
        .collect()
}

fn services(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .services
        .iter()
        .map(|it| {
            let ports: Vec<String> = it
                .ports
                .iter()
                .map(|port| {
                    let protocol = port.protocol.map_or("-", Protocol::as_str);
                    let target = port.target_port.map_or("-".to_owned(), |it| it.to_string());
                    format!("{}:{}:{protocol}:{target}", port.name.as_deref().unwrap_or("-"), port.number)
                })
                .collect();
            let protocol = it.protocol.map_or("-", Protocol::as_str);
            format!("{}/{} [{}] {protocol} ({})", it.namespace, it.name, ports.join(" "), it.entry)
        })
        .collect()
}

/// A diagnostic as `code: message | entry | first line of the primary span's text`.
fn describe(text: &str, diagnostic: &Diagnostic) -> String {
    let span = diagnostic.labels[0].span;
    let shown = text[span.start as usize..span.end as usize].lines().next().unwrap_or("");
    let entry = diagnostic.notes.first().map_or("-", String::as_str);
    format!("{}: {} | {entry} | `{shown}`", diagnostic.code.as_str(), diagnostic.message)
}

fn line_of(text: &str, offset: u32) -> usize {
    text[..offset as usize].matches('\n').count() + 1
}

fn spanned(text: &str, span: Span) -> &str {
    &text[span.start as usize..span.end as usize]
}

/// Objects as `kubectl get -o yaml` prints them one by one.
fn stream(objects: &[&str]) -> String {
    objects.iter().map(|it| format!("---\n{it}\n")).collect()
}

/// The same objects in one `List`, as `kubectl get endpointslices,pods,services -o yaml` prints them.
fn list(objects: &[&str]) -> String {
    let mut text = String::from("apiVersion: v1\nitems:\n");
    for object in objects {
        for (index, line) in object.lines().enumerate() {
            text.push_str(if index == 0 { "- " } else { "  " });
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    text
}

const DETAILS_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"labels":{"app":"details","service":"details"},"name":"details","namespace":"default"},"spec":{"ports":[{"name":"http","port":9080}],"selector":{"app":"details"}}}
  creationTimestamp: "2026-11-20T09:13:51Z"
  labels:
    app: details
    service: details
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:annotations:
          .: {}
          f:kubectl.kubernetes.io/last-applied-configuration: {}
        f:labels:
          .: {}
          f:app: {}
          f:service: {}
      f:spec:
        f:internalTrafficPolicy: {}
        f:ports:
          .: {}
          k:{"port":9080,"protocol":"TCP"}:
            .: {}
            f:name: {}
            f:port: {}
            f:protocol: {}
            f:targetPort: {}
        f:selector: {}
        f:type: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-11-20T09:13:51Z"
  name: details
  namespace: default
  resourceVersion: "100190"
  uid: 0c8d1f2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f
spec:
  clusterIP: 10.96.112.40
  clusterIPs:
  - 10.96.112.40
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 9080
    protocol: TCP
    targetPort: 9080
  selector:
    app: details
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}"#;

fn bookinfo_service(name: &str, cluster_ip: &str, version: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  labels:\n    app: {name}\n    service: {name}\n  name: {name}\n  namespace: default\n  \
             resourceVersion: \"{version}\"\nspec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: http\n    port: 9080\n    protocol: TCP\n    \
             targetPort: 9080\n  selector:\n    app: {name}\n  type: ClusterIP\nstatus:\n  loadBalancer: {{}}"
    )
}

fn bookinfo_pod(name: &str, app: &str, version: &str, ip: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: {app}-{version}-7c6f8d5b9-\n  labels:\n    app: {app}\n    \
             pod-template-hash: 7c6f8d5b9\n    security.istio.io/tlsMode: istio\n    version: {version}\n  name: {name}\n  namespace: default\n  \
             ownerReferences:\n  - apiVersion: apps/v1\n    blockOwnerDeletion: true\n    controller: true\n    kind: ReplicaSet\n    \
             name: {app}-{version}-7c6f8d5b9\n    uid: 5b8e0c1a-2d3e-4f50-8a6b-7c8d9e0f1a2b\n  resourceVersion: \"100201\"\nspec:\n  containers:\n  \
             - image: docker.io/istio/examples-bookinfo-{app}-{version}:1.20.2\n    name: {app}\n    ports:\n    - containerPort: 9080\n      \
             protocol: TCP\n  nodeName: {node}\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}"
    )
}

fn bookinfo_slice(service: &str, name: &str, endpoints: &[(&str, &str, &str, &str)], version: u32) -> String {
    let mut text = String::from("addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints:\n");
    for (address, node, zone, pod) in endpoints {
        text.push_str(&format!(
                "- addresses:\n  - {address}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n  nodeName: {node}\n  \
                 targetRef:\n    kind: Pod\n    name: {pod}\n    namespace: default\n    uid: 3f0c2666-7a1b-4c2d-9e3f-0a1b2c3d4e5f\n  zone: {zone}\n"
            ));
    }
    text.push_str(&format!(
            "kind: EndpointSlice\nmetadata:\n  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"2026-11-20T09:14:07Z\"\n  \
             generateName: {service}-\n  labels:\n    app: {service}\n    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n    \
             kubernetes.io/service-name: {service}\n  name: {name}\n  namespace: default\n  ownerReferences:\n  - apiVersion: v1\n    kind: Service\n    \
             name: {service}\n  resourceVersion: \"{version}\"\nports:\n- name: http\n  port: 9080\n  protocol: TCP"
        ));
    text
}

const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  labels:\n    kubernetes.io/hostname: node-a\n    \
                         topology.kubernetes.io/region: us-east-1\n    topology.kubernetes.io/zone: us-east-1a\n  name: node-a\n  \
                         resourceVersion: \"99\"\nstatus: {}\n---\napiVersion: v1\nkind: Node\nmetadata:\n  labels:\n    \
                         topology.kubernetes.io/region: us-east-1\n    topology.kubernetes.io/zone: us-east-1b\n    \
                         topology.istio.io/subzone: rack-7\n  name: node-b";

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: reviews-v2\n  namespace: default\n  \
                              resourceVersion: \"200000\"\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: reviews\n      version: v2";

/// Istio's bookinfo as `kubectl get endpointslices,pods,services,nodes,deployments -o yaml` prints it.
fn bookinfo() -> Vec<String> {
    let mut objects = vec![
        bookinfo_slice("details", "details-q8l5f", &[("10.244.0.9", "node-a", "us-east-1a", "details-v1-79dfbd6fff-8vqx7")], 100217),
        bookinfo_slice(
            "productpage",
            "productpage-m2v9c",
            &[("10.244.0.12", "node-a", "us-east-1a", "productpage-v1-675fc69cf-xp5kz")],
            100218,
        ),
        bookinfo_slice("ratings", "ratings-7xk2d", &[("10.244.0.10", "node-a", "us-east-1a", "ratings-v1-6484c4d9bb-5x8qz")], 100219),
        bookinfo_slice(
            "reviews",
            "reviews-5hb8w",
            &[
                ("10.244.0.11", "node-a", "us-east-1a", "reviews-v1-5b5d6494f4-kq7tw"),
                ("10.244.1.7", "node-b", "us-east-1b", "reviews-v2-5b667bcbf8-m4xjz"),
                ("10.244.1.8", "node-b", "us-east-1b", "reviews-v3-5b9bd44f4-9hvlp"),
            ],
            100220,
        ),
        bookinfo_pod("details-v1-79dfbd6fff-8vqx7", "details", "v1", "10.244.0.9", "node-a"),
        bookinfo_pod("productpage-v1-675fc69cf-xp5kz", "productpage", "v1", "10.244.0.12", "node-a"),
        bookinfo_pod("ratings-v1-6484c4d9bb-5x8qz", "ratings", "v1", "10.244.0.10", "node-a"),
        bookinfo_pod("reviews-v1-5b5d6494f4-kq7tw", "reviews", "v1", "10.244.0.11", "node-a"),
        bookinfo_pod("reviews-v2-5b667bcbf8-m4xjz", "reviews", "v2", "10.244.1.7", "node-b"),
        bookinfo_pod("reviews-v3-5b9bd44f4-9hvlp", "reviews", "v3", "10.244.1.8", "node-b"),
        DETAILS_SERVICE.to_owned(),
        bookinfo_service("productpage", "10.96.45.12", 100191),
        bookinfo_service("ratings", "10.96.201.7", 100192),
        bookinfo_service("reviews", "10.96.8.150", 100193),
        DEPLOYMENT.to_owned(),
    ];
    objects.extend(NODES.split("---\n").map(str::to_owned));
    objects
}

const BOOKINFO_SERVICES: [&str; 4] = [
    "default/details [http:9080:http:-] - (Service default/details)",
    "default/productpage [http:9080:http:-] - (Service default/productpage)",
    "default/ratings [http:9080:http:-] - (Service default/ratings)",
    "default/reviews [http:9080:http:-] - (Service default/reviews)",
];

const BOOKINFO_INSTANCES: [&str; 6] = [
    "default/details 10.244.0.9:9080 svc=9080 Healthy us-east-1/us-east-1a/- version=v1",
    "default/productpage 10.244.0.12:9080 svc=9080 Healthy us-east-1/us-east-1a/- version=v1",
    "default/ratings 10.244.0.10:9080 svc=9080 Healthy us-east-1/us-east-1a/- version=v1",
    "default/reviews 10.244.0.11:9080 svc=9080 Healthy us-east-1/us-east-1a/- version=v1",
    "default/reviews 10.244.1.7:9080 svc=9080 Healthy us-east-1/us-east-1b/rack-7 version=v2",
    "default/reviews 10.244.1.8:9080 svc=9080 Healthy us-east-1/us-east-1b/rack-7 version=v3",
];

#[test]
fn bookinfo_list_gives_services_instances_and_pod_labels() {
    let objects = bookinfo();
    let text = list(&objects.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot = read_clean(&text);
    assert_eq!(services(&snapshot), BOOKINFO_SERVICES);
    assert_eq!(instances(&snapshot), BOOKINFO_INSTANCES);
    let v2 = &snapshot.instances[4];
    let labels: Vec<(&str, &str)> = v2.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("app", "reviews"), ("pod-template-hash", "7c6f8d5b9"), ("security.istio.io/tlsMode", "istio"), ("version", "v2")]);
    assert_eq!(v2.weight, super::super::DEFAULT_WEIGHT);
    // The List's resourceVersion is empty, so the version is the highest of the objects
    // read (compared as numbers; the Deployment's is ignored with the Deployment).
    assert_eq!(snapshot.version.as_deref(), Some("100220"));
    // Spans cover whole objects and endpoints.
    let details = &snapshot.services[0];
    assert!(spanned(&text, details.span).starts_with("apiVersion: v1\n  kind: Service"));
    assert!(spanned(&text, details.span).ends_with("loadBalancer: {}"));
    assert_eq!(spanned(&text, v2.span).lines().next(), Some("addresses:"));
    assert!(spanned(&text, v2.span).ends_with("zone: us-east-1b"));
}

#[test]
fn a_document_stream_reads_like_a_list() {
    let objects = bookinfo();
    let text = stream(&objects.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot = read_clean(&text);
    assert_eq!(services(&snapshot), BOOKINFO_SERVICES);
    assert_eq!(instances(&snapshot), BOOKINFO_INSTANCES);
    assert!(spanned(&text, snapshot.services[3].span).starts_with("apiVersion: v1\nkind: Service"));

    // Lists and single objects mix, and a typed List names its kind.
    let slices = objects[..4].iter().map(|it| it.replace('\n', "\n  ")).collect::<Vec<_>>().join("\n- ");
    let mixed = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- {slices}\nmetadata:\n  resourceVersion: \"100300\"\n{}",
        stream(&objects[4..].iter().map(String::as_str).collect::<Vec<_>>())
    );
    let snapshot = read_clean(&mixed);
    assert_eq!(instances(&snapshot), BOOKINFO_INSTANCES);
    assert_eq!(snapshot.version.as_deref(), Some("100300"));
}

/// `kubectl get endpointslices,pods,services -o json`, trimmed.
const REVIEWS_JSON: &str = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "annotations": {
                    "description": "reviews \u0026 ratings \u003cv1\u003e"
                },
                "name": "reviews",
                "namespace": "default",
                "resourceVersion": "100193"
            },
            "spec": {
                "ports": [
                    {
                        "name": "http",
                        "port": 9080,
                        "protocol": "TCP",
                        "targetPort": 9080
                    }
                ]
            }
        },
        {
            "addressType": "IPv4",
            "apiVersion": "discovery.k8s.io/v1",
            "endpoints": [
                {
                    "addresses": [
                        "10.244.0.11"
                    ],
                    "conditions": {
                        "ready": true,
                        "serving": true,
                        "terminating": false
                    },
                    "nodeName": "node-a",
                    "targetRef": {
                        "kind": "Pod",
                        "name": "reviews-v1-5b5d6494f4-kq7tw",
                        "namespace": "default"
                    },
                    "zone": "us-east-1a"
                },
                {
                    "addresses": [
                        "10.244.1.7"
                    ],
                    "conditions": {
                        "ready": false,
                        "serving": true,
                        "terminating": true
                    },
                    "zone": "us-east-1b"
                }
            ],
            "kind": "EndpointSlice",
            "metadata": {
                "labels": {
                    "kubernetes.io/service-name": "reviews"
                },
                "name": "reviews-5hb8w",
                "namespace": "default",
                "resourceVersion": "100220"
            },
            "ports": [
                {
                    "name": "http",
                    "port": 9080,
                    "protocol": "TCP"
                }
            ]
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "labels": {
                    "app": "reviews",
                    "team": "books \u0026 reviews",
                    "version": "v1"
                },
                "name": "reviews-v1-5b5d6494f4-kq7tw",
                "namespace": "default"
            },
            "status": {
                "podIP": "10.244.0.11"
            }
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "labels": {
                    "app": "reviews",
                    "version": "v2"
                },
                "name": "reviews-v2-5b667bcbf8-m4xjz",
                "namespace": "default"
            },
            "status": {
                "podIPs": [
                    {
                        "ip": "10.244.1.7"
                    }
                ]
            }
        }
    ],
    "kind": "List",
    "metadata": {
        "resourceVersion": ""
    }
}
"#;

fn check_reviews_json(text: &str) {
    let snapshot = read_clean(text);
    assert_eq!(services(&snapshot), ["default/reviews [http:9080:http:-] - (Service default/reviews)"]);
    // The second endpoint has no targetRef: its pod is found by IP.
    assert_eq!(
        instances(&snapshot),
        [
            "default/reviews 10.244.0.11:9080 svc=9080 Healthy -/us-east-1a/- version=v1",
            "default/reviews 10.244.1.7:9080 svc=9080 Draining -/us-east-1b/- version=v2"
        ]
    );
    assert_eq!(snapshot.instances[0].labels["team"], "books & reviews");
    assert_eq!(snapshot.version.as_deref(), Some("100220"));
    let service = spanned(text, snapshot.services[0].span);
    assert!(service.starts_with("{\n            \"apiVersion\": \"v1\",\n            \"kind\": \"Service\""));
    assert!(service.ends_with("]\n            }\n        }"));
    let endpoint = spanned(text, snapshot.instances[1].span);
    assert!(endpoint.starts_with("{\n                    \"addresses\": [\n                        \"10.244.1.7\""));
    assert!(endpoint.ends_with("\"zone\": \"us-east-1b\"\n                }"));
}

#[test]
fn kubectl_json_reads_like_yaml() {
    check_reviews_json(REVIEWS_JSON);
    // With tabs for indentation, as `jq --tab` writes it.
    let tabs = REVIEWS_JSON.replace("    ", "\t");
    let snapshot = read_clean(&tabs);
    assert_eq!(snapshot.instances.len(), 2);
    assert!(spanned(&tabs, snapshot.instances[1].span).starts_with("{\n\t\t\t\t\t\"addresses\""));
}

#[test]
fn json_that_saphyr_rejects_is_read_by_serde_json() {
    // saphyr rejects surrogate-pair escapes (as Python's `json.dumps` writes emoji) and
    // duplicate keys; serde_json reads them, and the spans still point into the text.
    let text = format!("\u{feff}{}", REVIEWS_JSON.replace("reviews \\u0026 ratings", "reviews \\ud83d\\udcda \u{e9}"));
    assert!(MarkedYaml::load_from_str(&text).is_err());
    check_reviews_json(&text);
    let duplicated = REVIEWS_JSON.replace("\"name\": \"reviews\",", "\"name\": \"reviews\", \"name\": \"reviews\",");
    assert!(MarkedYaml::load_from_str(&duplicated).is_err());
    check_reviews_json(&duplicated);
    // Concatenated values, as `kubectl get -o json` run twice writes them.
    let twice = format!("{REVIEWS_JSON}{REVIEWS_JSON}");
    let (snapshot, diagnostics) = read(&twice);
    assert_eq!((snapshot.services.len(), snapshot.instances.len(), diagnostics.len()), (2, 4, 0));
    assert_eq!(snapshot.instances[2].span.start as usize, REVIEWS_JSON.len() + snapshot.instances[0].span.start as usize);
}

#[test]
fn invalid_json_is_reported_by_serde_json() {
    // A lone surrogate passes serde_json's syntax check of raw values but not its decoding.
    let text = REVIEWS_JSON.replace("reviews \\u0026 ratings", "reviews \\ud83d ratings");
    let (_, diagnostics) = read(&text);
    assert_eq!(diagnostics.len(), 1);
    let at = diagnostics[0].labels[0].span.start;
    assert_eq!(line_of(&text, at), 9, "{}", diagnostics[0].message);
    assert!(diagnostics[0].message.ends_with("invalid JSON: unexpected end of hex escape"), "{}", diagnostics[0].message);

    let text = REVIEWS_JSON.replace(
        "\"protocol\": \"TCP\",\n                        \"targetPort\"",
        "\"protocol\": \"TCP\"\n                        \"targetPort\"",
    );
    let (snapshot, diagnostics) = read(&text);
    assert!(snapshot.services.is_empty() && snapshot.instances.is_empty());
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    let line = text.lines().position(|it| it.contains("\"targetPort\": 9080")).unwrap() + 1;
    assert_eq!(line, 21);
    assert_eq!(
        diagnostics[0].message,
        "cannot read kubernetes snapshot of registry `k8s`: invalid JSON: expected `,` or `}` at line 21 column 25"
    );
    let at = diagnostics[0].labels[0].span.start;
    assert_eq!((line_of(&text, at), &text[at as usize..at as usize + 13]), (21, "\"targetPort\":"));
}

const SHOP: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: shop
spec:
  ports:
  - name: http
    port: 9080
    targetPort: 8080
  - name: grpc-api
    port: 9090
    protocol: TCP
    targetPort: 9091
  - name: web
    appProtocol: kubernetes.io/h2c
    port: 80
    targetPort: web
  - name: dns
    port: 53
    protocol: UDP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-x7k2p
  namespace: shop
  labels:
    kubernetes.io/service-name: orders
addressType: IPv4
ports:
- name: grpc-api
  port: 9091
  protocol: TCP
- name: http
  port: 8080
- name: web
  port: 8443
- name: dns
  port: 5353
  protocol: UDP
endpoints:
- addresses: [10.1.0.4, 10.1.0.5]
  conditions: {ready: true}
- addresses: [10.1.0.6]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.1.0.7]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.1.0.8]
  conditions: {ready: false}
- addresses: [10.1.0.9]
  conditions: {}
- addresses: [10.1.0.10]
"#;

#[test]
fn ports_resolve_by_name_and_conditions_give_health() {
    let snapshot = read_clean(SHOP);
    assert_eq!(services(&snapshot), ["shop/orders [http:9080:http:8080 grpc-api:9090:grpc:9091 web:80:http2:-] - (Service shop/orders)"]);
    assert_eq!(
        snapshot.services[0].ports[0],
        Port { number: 9080, name: Some("http".to_owned()), protocol: Some(Protocol::Http), target_port: Some(8080) }
    );
    let lines = instances(&snapshot);
    assert_eq!(lines.len(), 21);
    assert_eq!(
        lines[..6],
        [
            "shop/orders 10.1.0.4:9091 svc=9090 Healthy -/-/- version=-",
            "shop/orders 10.1.0.4:8080 svc=9080 Healthy -/-/- version=-",
            "shop/orders 10.1.0.4:8443 svc=80 Healthy -/-/- version=-",
            "shop/orders 10.1.0.5:9091 svc=9090 Healthy -/-/- version=-",
            "shop/orders 10.1.0.5:8080 svc=9080 Healthy -/-/- version=-",
            "shop/orders 10.1.0.5:8443 svc=80 Healthy -/-/- version=-",
        ]
    );
    let health: Vec<(&str, Health)> = snapshot.instances.iter().step_by(3).map(|it| (it.address.as_str(), it.health)).collect();
    assert_eq!(
        health,
        [
            ("10.1.0.4", Health::Healthy),
            ("10.1.0.5", Health::Healthy),
            ("10.1.0.6", Health::Draining),
            ("10.1.0.7", Health::Unhealthy),
            ("10.1.0.8", Health::Unhealthy),
            ("10.1.0.9", Health::Unknown),
            ("10.1.0.10", Health::Unknown),
        ]
    );
    // The namespace of an object without one is the registry's.
    let (snapshot, _) = read_with(&SHOP.replace("  namespace: shop\n", ""), "team-a");
    assert_eq!((snapshot.services[0].namespace.as_str(), snapshot.instances[0].namespace.as_str()), ("team-a", "team-a"));
}

#[test]
fn slices_without_a_service_give_the_union_of_their_ports() {
    let text = r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-fqdn
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: FQDN
ports: [{name: tcp-postgres, port: 5432}]
endpoints:
- addresses: [db-0.db.shop.svc.cluster.local, db-1.db.shop.svc.cluster.local]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cache-1, namespace: shop, labels: {kubernetes.io/service-name: cache}}
addressType: IPv6
ports: [{name: redis, port: 6379}, {name: admin, port: 8080, appProtocol: http}]
endpoints:
- addresses: ["fd00::12"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-extra, namespace: shop, labels: {kubernetes.io/service-name: db}}
ports: [{name: tcp-postgres, port: 5433}, {name: metrics, port: 9187}]
endpoints:
- addresses: [10.1.2.3]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-more, namespace: shop, labels: {kubernetes.io/service-name: db}}
ports: [{name: tcp-postgres, port: 5433}]
endpoints:
- addresses: [10.1.2.5]
---
apiVersion: v1
kind: Service
metadata: {name: mail, namespace: shop}
spec: {type: ExternalName, externalName: smtp.example.com}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: mail-1, namespace: shop, labels: {kubernetes.io/service-name: mail}}
ports: [{port: 25}]
endpoints:
- addresses: [10.1.2.4]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: syslog-1, namespace: shop, labels: {kubernetes.io/service-name: syslog}}
ports: [{name: syslog, port: 514, protocol: UDP}]
endpoints:
- addresses: [10.1.2.6]
"#;
    let (snapshot, diagnostics) = read(text);
    // One service per slice-only service, from its first slice, with the union of its slices'
    // ports; the ExternalName service and the UDP-only service give nothing.
    assert_eq!(
        services(&snapshot),
        [
            "shop/db [tcp-postgres:5432:tcp:- metrics:9187:-:-] - (EndpointSlice shop/db-fqdn)",
            "shop/cache [redis:6379:tcp:- admin:8080:http:-] - (EndpointSlice shop/cache-1)",
        ]
    );
    // The endpoints of `db-extra` and `db-more` serve `tcp-postgres`, whose number is taken
    // from the first slice, on their own port.
    assert_eq!(
        instances(&snapshot),
        [
            "shop/db db-0.db.shop.svc.cluster.local:5432 svc=5432 Healthy -/-/- version=-",
            "shop/db db-1.db.shop.svc.cluster.local:5432 svc=5432 Healthy -/-/- version=-",
            "shop/cache fd00::12:6379 svc=6379 Unknown -/-/- version=-",
            "shop/cache fd00::12:8080 svc=8080 Unknown -/-/- version=-",
            "shop/db 10.1.2.3:5433 svc=5432 Unknown -/-/- version=-",
            "shop/db 10.1.2.3:9187 svc=9187 Unknown -/-/- version=-",
            "shop/db 10.1.2.5:5433 svc=5432 Unknown -/-/- version=-",
        ]
    );
    assert!(
        spanned(text, snapshot.services[0].span)
            .starts_with("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-fqdn")
    );
    // The two numbers of `tcp-postgres` are reported once, although two slices have 5433.
    let found: Vec<String> = diagnostics.iter().map(|it| describe(text, it)).collect();
    assert_eq!(
        found,
        ["E0303: registry `k8s` gives port `tcp-postgres` of service `shop/db` two numbers, 5432 and 5433 \
              | entry: EndpointSlice shop/db-extra | `apiVersion: discovery.k8s.io/v1`"]
    );
    let warning = &diagnostics[0];
    assert_eq!(warning.severity, crate::diag::Severity::Warning);
    assert!(spanned(text, warning.labels[0].span).contains("name: db-extra"));
    assert_eq!((warning.labels[0].message.as_str(), warning.labels[1].message.as_str()), ("5433 here", "5432 here"));
    assert!(spanned(text, warning.labels[1].span).contains("name: db-fqdn"));
    assert_eq!(
        warning.notes[1],
        "the snapshot has no Service `shop/db`, so 5432 is taken as the service port; the endpoints on 5433 keep their own port"
    );
}

#[test]
fn a_slice_without_endpoints_still_gives_its_service() {
    // `kubectl get endpointslices -A -o json` of a Deployment scaled to zero: the v1
    // `endpoints` field has no `omitempty`, so it is null.
    let text = r#"{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [
  {"addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "endpoints": null, "kind": "EndpointSlice",
   "metadata": {"labels": {"kubernetes.io/service-name": "payments"}, "name": "payments-8hs2w", "namespace": "shop"},
   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "grpc", "port": 9090, "appProtocol": "grpc"}]},
  {"addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1", "endpoints": [], "kind": "EndpointSlice",
   "metadata": {"labels": {"kubernetes.io/service-name": "ledger"}, "name": "ledger-x2", "namespace": "shop"},
   "ports": [{"name": "", "port": 7000, "protocol": "TCP"}]}
]}"#;
    let snapshot = read_clean(text);
    assert_eq!(
        services(&snapshot),
        [
            "shop/payments [http:8080:http:- grpc:9090:grpc:-] - (EndpointSlice shop/payments-8hs2w)",
            "shop/ledger [-:7000:-:-] - (EndpointSlice shop/ledger-x2)",
        ]
    );
    assert!(snapshot.instances.is_empty());
}

#[test]
fn items_of_typed_lists_take_their_kind_and_version_from_the_list() {
    // `kubectl get --raw /apis/discovery.k8s.io/v1beta1/namespaces/media/endpointslices`,
    // then `/api/v1/namespaces/media/pods` and `/api/v1/namespaces/media/services`: the API
    // server writes neither `kind` nor `apiVersion` on list items.
    let text = concat!(
        r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1beta1","metadata":{"resourceVersion":"331102"},"items":["#,
        r#"{"metadata":{"name":"streamer-2kd8s","namespace":"media","labels":{"kubernetes.io/service-name":"streamer"}},"#,
        r#""addressType":"IPv4","endpoints":[{"addresses":["10.1.4.22"],"conditions":{"ready":true},"#,
        r#""targetRef":{"kind":"Pod","namespace":"media","name":"streamer-4hx2k"},"topology":{"topology.kubernetes.io/zone":"eu-central-1a"}}],"#,
        r#""ports":[{"name":"http","protocol":"TCP","port":8080}]}]}"#,
        "\n",
        r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"331100"},"items":["#,
        r#"{"metadata":{"name":"streamer-4hx2k","namespace":"media","labels":{"app":"streamer","version":"v7"}},"status":{"podIP":"10.1.4.22"}}]}"#,
        "\n",
        r#"{"kind":"ServiceList","apiVersion":"v1","metadata":{"resourceVersion":"331101"},"items":["#,
        r#"{"metadata":{"name":"streamer","namespace":"media"},"spec":{"ports":[{"name":"http","port":80,"targetPort":8080}]}}]}"#,
        "\n",
        // Knative Services are not Kubernetes Services, listed with or without `apiVersion`.
        r#"{"kind":"ServiceList","apiVersion":"serving.knative.dev/v1","items":["#,
        r#"{"metadata":{"name":"thumbs","namespace":"media"},"spec":{"ports":[{"port":80}]}},"#,
        r#"{"kind":"Service","metadata":{"name":"resizer","namespace":"media"},"spec":{"ports":[{"port":80}]}}]}"#,
    );
    let snapshot = read_clean(text);
    assert_eq!(services(&snapshot), ["media/streamer [http:80:http:8080] - (Service media/streamer)"]);
    assert_eq!(instances(&snapshot), ["media/streamer 10.1.4.22:8080 svc=80 Healthy -/eu-central-1a/- version=v7"]);
    assert_eq!(snapshot.version.as_deref(), Some("331102"));
}

#[test]
fn items_of_a_plain_list_must_say_their_kind() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  metadata: {name: orders, namespace: shop}\n  \
                    spec: {ports: [{port: 80}]}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: cart, namespace: shop}\n  \
                    spec: {ports: [{port: 80}]}\n";
    let (snapshot, diagnostics) = read(text);
    assert_eq!(services(&snapshot), ["shop/cart [-:80:-:-] - (Service shop/cart)"]);
    let found: Vec<String> = diagnostics.iter().map(|it| describe(text, it)).collect();
    assert_eq!(
        found,
        ["E0302: malformed entry in registry `k8s`: the object has no `kind` | entry: document 1, item 1 | `apiVersion: v1`"]
    );
}

const LEGACY: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: legacy, namespace: shop}
  spec:
    ports: [{name: http-api, port: 80, targetPort: 8080}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: legacy, namespace: shop, resourceVersion: "77"}
  subsets:
  - addresses:
    - ip: 10.2.0.1
      nodeName: node-b
      targetRef: {kind: Pod, name: legacy-abc, namespace: shop}
    - ip: 10.2.0.2
    notReadyAddresses:
    - ip: 10.2.0.3
    ports: [{name: http-api, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: orders, namespace: shop}
  subsets:
  - addresses: [{ip: 10.9.9.9}]
    ports: [{name: http, port: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: orders-1, namespace: shop, labels: {kubernetes.io/service-name: orders}}
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: [10.1.0.4], conditions: {ready: true}}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: batch, namespace: shop}
  subsets:
  - addresses: [{ip: 10.3.0.1}]
    ports: [{port: 7000}]
- apiVersion: v1
  kind: Pod
  metadata: {name: legacy-abc, namespace: shop, labels: {app: legacy, version: v9}}
- apiVersion: v1
  kind: Pod
  metadata: {name: legacy-def, namespace: shop, labels: {app: legacy, version: v10}}
  status: {podIP: 10.2.0.2}
- apiVersion: v1
  kind: Node
  metadata: {name: node-b, labels: {topology.kubernetes.io/zone: eu-1b}}
metadata: {}
"#;

#[test]
fn endpoints_fill_in_for_services_without_slices() {
    let snapshot = read_clean(LEGACY);
    assert_eq!(
        services(&snapshot),
        [
            "shop/legacy [http-api:80:http:8080] - (Service shop/legacy)",
            "shop/orders [http:8080:http:-] - (EndpointSlice shop/orders-1)",
            "shop/batch [-:7000:-:-] - (Endpoints shop/batch)",
        ]
    );
    // `orders` has a slice, so its Endpoints are not read.
    assert_eq!(
        instances(&snapshot),
        [
            "shop/legacy 10.2.0.1:8080 svc=80 Healthy -/eu-1b/- version=v9",
            "shop/legacy 10.2.0.2:8080 svc=80 Healthy -/-/- version=v10",
            "shop/legacy 10.2.0.3:8080 svc=80 Unhealthy -/-/- version=-",
            "shop/orders 10.1.0.4:8080 svc=8080 Healthy -/-/- version=-",
            "shop/batch 10.3.0.1:7000 svc=7000 Healthy -/-/- version=-",
        ]
    );
    assert_eq!(snapshot.version.as_deref(), Some("77"));
    assert_eq!(spanned(LEGACY, snapshot.instances[1].span), "ip: 10.2.0.2");
}

#[test]
fn beta_slices_nodes_and_pod_ips_give_locality_and_labels() {
    let text = r#"apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: ratings-b1, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- addresses: [10.4.0.1]
  conditions: {ready: true}
  topology: {kubernetes.io/hostname: node-c, topology.kubernetes.io/zone: ap-2a}
- addresses: [10.4.0.2]
  conditions: {ready: true}
  topology: {kubernetes.io/hostname: node-c}
- addresses: [10.4.0.3]
  conditions: {ready: true}
---
apiVersion: v1
kind: Node
metadata:
  name: node-c
  labels: {failure-domain.beta.kubernetes.io/region: ap, failure-domain.beta.kubernetes.io/zone: ap-2c}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-1, labels: {app: ratings, version: 1.10}}
status: {podIP: 10.4.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-1, labels: {version: host-a}}
status: {podIP: 10.4.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-2, labels: {version: host-b}}
status: {podIP: 10.4.0.3}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: ratings}
spec: {template: {spec: {containers: [{image: ratings}]}}}
"#;
    let snapshot = read_clean(text);
    // A Knative Service is not a Kubernetes Service.
    assert_eq!(services(&snapshot), ["default/ratings [http:9080:http:-] - (EndpointSlice default/ratings-b1)"]);
    // Two host-network pods share 10.4.0.3, so neither lends it labels; `1.10` stays `1.10`.
    assert_eq!(
        instances(&snapshot),
        [
            "default/ratings 10.4.0.1:9080 svc=9080 Healthy ap/ap-2a/- version=1.10",
            "default/ratings 10.4.0.2:9080 svc=9080 Healthy ap/ap-2c/- version=-",
            "default/ratings 10.4.0.3:9080 svc=9080 Healthy -/-/- version=-",
        ]
    );
}

#[test]
fn versions_prefer_the_list_and_compare_as_numbers() {
    let object = |rv: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{rv}, resourceVersion: \"{rv}\"}}");
    let (snapshot, _) = read(&stream(&[&object("99"), &object("100217"), &object("not-a-number")]));
    assert_eq!(snapshot.version.as_deref(), Some("100217"));
    let (snapshot, _) = read(&list(&[&object("99")]).replace("resourceVersion: \"\"", "resourceVersion: \"12345\""));
    assert_eq!(snapshot.version.as_deref(), Some("12345"));
    let (snapshot, _) = read(&stream(&[&object("abc")]));
    assert_eq!(snapshot.version, None);
    assert_eq!(read("").0.version, None);
}

const MALFORMED: &str = r#"# Hand-edited snapshot — café ☕, so offsets are not characters.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: orphan-1, namespace: shop}
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: orders-x7k2p
  namespace: shop
  labels: {kubernetes.io/service-name: orders}
addressType: IPv4
ports:
- name: http
  port: 70000
- name: grpc
  port: 9091
- name: admin
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.300, 10.0.0.2]
- addresses: [db.example.com]
- addresses: []
- conditions: {ready: yes}
  addresses: [10.0.0.3]
---
just a string
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports:
  - name: grpc
    targetPort: 9091
  - name: http
    port: 8080
---
- 1
---
apiVersion: v1
kind: Service
metadata: {name: Orders_2}
spec: {ports: [{port: 80}]}
---
kind: Pod
metadata: {name: p, labels: {app: [a]}}
---
apiVersion: v1
metadata: {name: what}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-1, labels: {kubernetes.io/service-name: other}}
addressType: FQDN
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.300, 1.2.3.4]}]
"#;

#[test]
fn malformed_entries_are_reported_and_skipped_one_by_one() {
    let (snapshot, diagnostics) = read(MALFORMED);
    let found: Vec<String> = diagnostics.iter().map(|it| describe(MALFORMED, it)).collect();
    let prefix = "E0302: malformed entry in registry `k8s`:";
    assert_eq!(
        found,
        [
            format!(
                "{prefix} the slice has no `kubernetes.io/service-name` label, so its service is unknown | entry: EndpointSlice shop/orphan-1 | `apiVersion: discovery.k8s.io/v1`"
            ),
            format!("{prefix} `ports[0].port` is 70000, not a port number (1 to 65535) | entry: EndpointSlice shop/orders-x7k2p | `70000`"),
            format!("{prefix} `ports[2]` has no `port` | entry: EndpointSlice shop/orders-x7k2p | `name: admin`"),
            format!("{prefix} `10.0.0.300` is not an IPv4 address | entry: EndpointSlice shop/orders-x7k2p endpoint 2 | `10.0.0.300`"),
            format!(
                "{prefix} `db.example.com` is not an IPv4 address | entry: EndpointSlice shop/orders-x7k2p endpoint 3 | `db.example.com`"
            ),
            format!("{prefix} the endpoint has no `addresses` | entry: EndpointSlice shop/orders-x7k2p endpoint 4 | `addresses: []`"),
            format!("{prefix} `conditions.ready` is a string, not a boolean | entry: EndpointSlice shop/orders-x7k2p endpoint 5 | `yes`"),
            format!("{prefix} expected a Kubernetes object (a mapping), found a string | entry: document 3 | `just a string`"),
            format!("{prefix} `spec.ports[0]` has no `port` | entry: Service shop/orders | `name: grpc`"),
            format!("{prefix} expected a Kubernetes object (a mapping), found a sequence | entry: document 5 | `- 1`"),
            format!("{prefix} `Orders_2` is not a valid service name (a DNS label) | entry: Service default/Orders_2 | `apiVersion: v1`"),
            format!("{prefix} `metadata.labels.app` is a sequence, not a string | entry: Pod default/p | `[a]`"),
            format!("{prefix} the object has no `kind` | entry: document 8 | `apiVersion: v1`"),
            format!(
                "{prefix} `10.0.0.300` is not an IP address or a host name | entry: EndpointSlice default/other-1 endpoint 1 | `10.0.0.300`"
            ),
        ]
    );
    assert!(diagnostics.iter().all(|it| it.code == Code::RegistryEntry && it.labels[0].message == "this entry was skipped"));
    // The spans are byte ranges even after the non-ASCII comment.
    let bad_address = diagnostics[3].labels[0].span;
    assert_eq!((line_of(MALFORMED, bad_address.start), spanned(MALFORMED, bad_address)), (23, "10.0.0.300"));
    // What is left: the good ports, endpoints and addresses.
    assert_eq!(
        services(&snapshot),
        ["shop/orders [http:8080:http:-] - (Service shop/orders)", "default/other [-:80:-:-] - (EndpointSlice default/other-1)"]
    );
    assert_eq!(
        instances(&snapshot),
        [
            "shop/orders 10.0.0.1:9091 svc=- Unknown -/-/- version=-",
            "shop/orders 10.0.0.2:9091 svc=- Unknown -/-/- version=-",
            "default/other 1.2.3.4:80 svc=80 Unknown -/-/- version=-",
        ]
    );
}

#[test]
fn invalid_yaml_is_reported_at_its_line() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n  metadata: {name: \"orders}\n";
    let (snapshot, diagnostics) = read(text);
    assert!(snapshot.services.is_empty());
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    assert!(
        diagnostics[0].message.starts_with("cannot read kubernetes snapshot of registry `k8s`: invalid YAML: "),
        "{}",
        diagnostics[0].message
    );
    assert_eq!(diagnostics[0].labels[1].message, "snapshot named here");

    // After non-ASCII text, the position is still a byte offset: saphyr blames the scalar
    // that a tab follows, at character 57 and byte 64.
    let text = "# Übersicht — 東京 cluster\nkind: Service\nmetadata:\n  name: é\n\tspec: {}\n";
    let (_, diagnostics) = read(text);
    assert_eq!(diagnostics.len(), 1);
    assert!(diagnostics[0].message.ends_with("invalid YAML: while scanning a plain scalar, found a tab"), "{}", diagnostics[0].message);
    let at = diagnostics[0].labels[0].span.start;
    assert_eq!((at, line_of(text, at), &text[at as usize..]), (64, 4, "é\n\tspec: {}\n"));
}

#[test]
fn deep_nesting_and_alias_bombs_are_bounded() {
    // Block nesting past the limit is refused before saphyr recurses into it.
    let deep = format!("items:\n{}x\n", "- ".repeat(300));
    let (_, diagnostics) = read(&deep);
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::RegistryFormat);
    assert!(
        diagnostics[0]
            .message
            .ends_with("this line nests 600 columns deep; meshc reads YAML whose collections start at column 511 or before")
    );
    assert_eq!(line_of(&deep, diagnostics[0].labels[0].span.start), 2);
    // Up to the limit it parses (and is not an object).
    let (_, diagnostics) = read(&format!("{}x\n", "- ".repeat(255)));
    assert_eq!(diagnostics.iter().map(|it| it.code).collect::<Vec<_>>(), [Code::RegistryEntry]);
    // Flow nesting stops at saphyr's limit, or at serde_json's for JSON.
    let (_, diagnostics) = read(&format!("a: {}{}", "[".repeat(300), "]".repeat(300)));
    assert!(diagnostics[0].message.ends_with("invalid YAML: recursion limit exceeded"));
    assert_eq!(diagnostics[0].labels[0].span.start, 3 + 255);
    let (_, diagnostics) = read(&format!("{}{}", "[".repeat(300), "]".repeat(300)));
    assert!(diagnostics[0].message.ends_with("invalid JSON: nested more than 128 levels deep"), "{}", diagnostics[0].message);
    assert_eq!(diagnostics[0].labels[0].span.start, 129);

    // A billion laughs stops at saphyr's alias budget.
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        bomb.push_str(&format!("a{level}: &a{level} [{}]\n", [previous.as_str(); 10].join(", ")));
    }
    let (_, diagnostics) = read(&bomb);
    assert!(diagnostics[0].message.contains("alias expansion exceeded the maximum node budget"), "{}", diagnostics[0].message);
    // a1 to a3 clone 12,330 nodes, a4 would clone 111,110: it stops there, on line 5.
    assert_eq!(line_of(&bomb, diagnostics[0].labels[0].span.start), 5);

    // A chain of deep anchors clones a tree about 12,000 levels deep: the reading thread's
    // stack holds it.
    let mut chain = format!("a0: &a0\n  {}{}x{}\n", "- ".repeat(200), "[".repeat(250), "]".repeat(250));
    for level in 1..40 {
        chain.push_str(&format!("a{level}: &a{level}\n  {}{}*a{}{}\n", "- ".repeat(200), "[".repeat(250), level - 1, "]".repeat(250)));
    }
    let (snapshot, diagnostics) = read(&chain);
    assert!(snapshot.services.is_empty());
    assert_eq!(diagnostics.len(), 1);
    assert!(diagnostics[0].message.contains("alias expansion exceeded the maximum node budget"), "{}", diagnostics[0].message);
}

#[test]
fn truncated_snapshots_never_panic() {
    let objects = bookinfo();
    let text = list(&objects.iter().map(String::as_str).collect::<Vec<_>>()) + REVIEWS_JSON + MALFORMED;
    let mut cut = 0;
    while cut < text.len() {
        if text.is_char_boundary(cut) {
            let _ = read(&text[..cut]);
            let _ = read(&text[cut..]);
        }
        cut += 97;
    }
}
