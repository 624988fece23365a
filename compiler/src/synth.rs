//! Synthetic meshes of any size, for benchmarks and scale tests (`meshc synth`).
//!
//! The mesh mixes every registry format in realistic proportions, declares subsets and
//! ordered routes with header and path matches, workloads with outbound scopes, and
//! authorization policies, so that every stage of the compiler does real work.
//! The output depends only on the parameters.

use std::fmt::Write as _;

use crate::source::MemFs;

/// The size of a synthetic mesh.
#[derive(Clone, Copy, Debug)]
pub struct Synthetic {
    /// Services, across all registries.
    pub services: usize,
    /// Instances, spread evenly over the services.
    pub instances: usize,
    /// Routes, in blocks of ten per routed host.
    pub routes: usize,
}

impl Default for Synthetic {
    /// The benchmark size: 10k services, 100k instances, 10k routes.
    fn default() -> Self {
        Synthetic { services: 10_000, instances: 100_000, routes: 10_000 }
    }
}

const ROUTES_PER_HOST: usize = 10;
const SPEC_FILES: usize = 10;

/// Builds the mesh in memory.
pub fn synthetic(size: Synthetic) -> MemFs {
    let services = size.services.max(10);
    let per_service = (size.instances / services).max(1);
    // Shares of the services per registry: Nacos 60%, Kubernetes, Consul, Dubbo and SOFA 10% each.
    let share = |tenths: usize| services * tenths / 10;
    let (nacos, k8s, consul, dubbo) = (share(6), share(1), share(1), share(1));
    let sofa = services - nacos - k8s - consul - dubbo;

    let mut fs = MemFs::new();
    let mut manifest = String::from("[mesh]\nname = \"synthetic\"\nnamespace = \"default\"\n");
    for (name, kind, path) in [
        ("nacos", "nacos", "registry/nacos.json"),
        ("k8s", "kubernetes", "registry/k8s.json"),
        ("consul", "consul", "registry/consul.json"),
        ("zk", "dubbo-zookeeper", "registry/zookeeper.txt"),
        ("sofa", "sofa-registry", "registry/sofa.json"),
    ] {
        let _ = write!(manifest, "\n[[registry]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{path}\"\n");
    }
    fs.insert("mesh.toml", manifest);
    fs.insert("registry/nacos.json", nacos_snapshot(0, nacos, per_service));
    fs.insert("registry/k8s.json", k8s_snapshot(nacos, k8s, per_service));
    fs.insert("registry/consul.json", consul_snapshot(nacos + k8s, consul, per_service));
    fs.insert("registry/zookeeper.txt", dubbo_snapshot(dubbo, per_service));
    fs.insert("registry/sofa.json", sofa_snapshot(sofa, per_service));

    // Routes go to Nacos services (HTTP), ten per host.
    let routed = (size.routes / ROUTES_PER_HOST).min(nacos);
    let mut specs = vec![String::new(); SPEC_FILES];
    for index in 0..routed {
        let spec = &mut specs[index % SPEC_FILES];
        let name = http_name(index);
        let _ = write!(
            spec,
            "service {name} {{\n  subset v1 {{ version = \"v1\" }}\n  subset v2 {{ version = \"v2\" }}\n  load_balancer round_robin\n}}\n\nroutes {name} {{\n"
        );
        for route in 0..ROUTES_PER_HOST - 1 {
            let _ = write!(
                spec,
                "  route r{route} {{\n    match {{ path prefix \"/api/v{route}/\"  header \"x-tenant\" exact \"t{route}\" }}\n    match {{ path regex \"/legacy/{route}/[a-z]+\" }}\n    to {name} subset v2 weight 20\n    to {name} subset v1 weight 80\n    timeout 2s\n  }}\n"
            );
        }
        let _ = write!(spec, "  route rest {{\n    to {name} subset v1\n  }}\n}}\n\n");
    }
    // Workloads: each serves ten services and calls fifty.
    let workloads = (nacos / 10).max(1);
    for index in 0..workloads {
        let spec = &mut specs[index % SPEC_FILES];
        let serves: Vec<String> = (0..10).map(|it| http_name((index * 10 + it) % nacos)).collect();
        // Fifty services spread over the mesh, and those of the previous workload, which
        // the previous workload's policy lets this one call.
        let previous = (index + workloads - 1) % workloads;
        let mut calls: Vec<String> = (0..50).map(|it| http_name((index * 7 + it * 13) % nacos)).collect();
        calls.extend((0..10).map(|it| http_name((previous * 10 + it) % nacos)));
        calls.sort();
        calls.dedup();
        let _ = write!(
            spec,
            "workload w{index} {{\n  service_account \"sa-{index}\"\n  serves {}\n  calls {}\n}}\n\n",
            serves.join(", "),
            calls.join(", ")
        );
        if index % 10 == 0 {
            let _ = write!(
                spec,
                "authorization p{index} {{\n  workloads w{index}\n  rule {{\n    from {{ workloads w{} }}\n    to {{ methods GET, POST  paths \"/api/*\" }}\n  }}\n}}\n\n",
                (index + 1) % workloads
            );
        }
    }
    for (index, spec) in specs.into_iter().enumerate() {
        fs.insert(format!("spec-{index:02}.mesh"), spec);
    }
    fs
}

fn http_name(index: usize) -> String {
    format!("svc-{index}")
}

fn ip(service: usize, instance: usize) -> String {
    let n = service * 64 + instance;
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn nacos_snapshot(first: usize, count: usize, per_service: usize) -> String {
    let mut out = String::from("[\n");
    for index in first..first + count {
        let name = http_name(index);
        let _ = write!(
            out,
            "{{\"name\":\"DEFAULT_GROUP@@{name}\",\"groupName\":\"DEFAULT_GROUP\",\"clusters\":\"\",\"cacheMillis\":10000,\"lastRefTime\":1763630100456,\"valid\":true,\"hosts\":["
        );
        for instance in 0..per_service {
            let version = if instance % 2 == 0 { "v1" } else { "v2" };
            let address = ip(index, instance);
            let _ = write!(
                out,
                "{}{{\"instanceId\":\"{address}#8080#DEFAULT#DEFAULT_GROUP@@{name}\",\"ip\":\"{address}\",\"port\":8080,\"weight\":1.0,\"healthy\":true,\"enabled\":true,\"ephemeral\":true,\"clusterName\":\"DEFAULT\",\"serviceName\":\"DEFAULT_GROUP@@{name}\",\"metadata\":{{\"version\":\"{version}\",\"protocol\":\"http\"}}}}",
                if instance == 0 { "" } else { "," }
            );
        }
        out.push_str(if index + 1 == first + count { "]}\n" } else { "]},\n" });
    }
    out.push(']');
    out
}

fn k8s_snapshot(first: usize, count: usize, per_service: usize) -> String {
    let mut items = Vec::new();
    for index in first..first + count {
        let name = http_name(index);
        items.push(format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"default\",\"resourceVersion\":\"{index}\"}},\"spec\":{{\"ports\":[{{\"name\":\"http\",\"port\":8080,\"targetPort\":8080,\"protocol\":\"TCP\"}}],\"selector\":{{\"app\":\"{name}\"}}}}}}"
        ));
        let mut endpoints = Vec::new();
        for instance in 0..per_service {
            let pod = format!("{name}-{instance}");
            let address = ip(index, instance);
            let version = if instance % 2 == 0 { "v1" } else { "v2" };
            endpoints.push(format!(
                "{{\"addresses\":[\"{address}\"],\"conditions\":{{\"ready\":true,\"serving\":true,\"terminating\":false}},\"zone\":\"zone-{}\",\"targetRef\":{{\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"{pod}\"}}}}",
                instance % 3
            ));
            items.push(format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{pod}\",\"namespace\":\"default\",\"labels\":{{\"app\":\"{name}\",\"version\":\"{version}\"}}}},\"status\":{{\"podIP\":\"{address}\"}}}}"
            ));
        }
        items.push(format!(
            "{{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{{\"name\":\"{name}-abcde\",\"namespace\":\"default\",\"labels\":{{\"kubernetes.io/service-name\":\"{name}\"}}}},\"addressType\":\"IPv4\",\"ports\":[{{\"name\":\"http\",\"port\":8080,\"protocol\":\"TCP\"}}],\"endpoints\":[{}]}}",
            endpoints.join(",")
        ));
    }
    format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{{\"resourceVersion\":\"\"}},\"items\":[\n{}\n]}}", items.join(",\n"))
}

fn consul_snapshot(first: usize, count: usize, per_service: usize) -> String {
    let mut entries = Vec::new();
    for index in first..first + count {
        let name = http_name(index);
        for instance in 0..per_service {
            let address = ip(index, instance);
            entries.push(format!(
                "{{\"Node\":{{\"Node\":\"node-{instance}\",\"Address\":\"{address}\",\"Datacenter\":\"dc1\"}},\"Service\":{{\"ID\":\"{name}-{instance}\",\"Service\":\"{name}\",\"Tags\":[\"v1\"],\"Address\":\"\",\"Port\":8080,\"Meta\":{{\"version\":\"v1\",\"protocol\":\"http\"}},\"Weights\":{{\"Passing\":1,\"Warning\":1}},\"ModifyIndex\":{index}}},\"Checks\":[{{\"CheckID\":\"service:{name}-{instance}\",\"Status\":\"passing\",\"ServiceID\":\"{name}-{instance}\"}}]}}"
            ));
        }
    }
    format!("[\n{}\n]", entries.join(",\n"))
}

fn dubbo_snapshot(count: usize, per_service: usize) -> String {
    let mut out = String::from("# synthetic zkCli.sh ls -R /dubbo\n");
    for index in 0..count {
        let interface = format!("com.synthetic.dubbo.Service{index}");
        let _ = writeln!(out, "/dubbo/{interface}\n/dubbo/{interface}/providers");
        for instance in 0..per_service {
            let url = format!(
                "dubbo://{}:20880/{interface}?anyhost=true&application=app-{index}&dubbo=2.0.2&group=g{}&interface={interface}&methods=get,put,list&side=provider&version=1.0.0&weight=100",
                ip(10_000 + index, instance),
                index % 2
            );
            let _ = writeln!(
                out,
                "/dubbo/{interface}/providers/{}",
                percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC)
            );
        }
    }
    out
}

fn sofa_snapshot(count: usize, per_service: usize) -> String {
    let mut pushes = Vec::new();
    for index in 0..count {
        let data_id = format!("com.synthetic.sofa.Facade{index}:1.0@DEFAULT");
        let providers: Vec<String> =
            (0..per_service).map(|it| format!("\"{}:12200?weight=100&appName=app-{index}&v=4.0\"", ip(20_000 + index, it))).collect();
        pushes.push(format!(
            "{{\"dataId\":\"{data_id}\",\"group\":\"SOFA\",\"instanceId\":\"DEFAULT_INSTANCE_ID\",\"version\":{index},\"data\":{{\"RZ01A\":[{}]}}}}",
            providers.join(",")
        ));
    }
    format!("[\n{}\n]", pushes.join(",\n"))
}

/// One service whose single route table holds `routes` routes, as an API gateway's: exact
/// paths, path prefixes, prefixes with a header, and methods with a query alternative, then a
/// catch-all. The mesh declares no workload, so the `default` workload holds the whole table.
pub fn route_table(routes: usize) -> MemFs {
    let mut fs = MemFs::new();
    fs.insert(
        "mesh.toml",
        "[mesh]\nname = \"route-table\"\n\n[[registry]]\nname = \"native\"\nkind = \"native\"\npath = \"registry.toml\"\n",
    );
    fs.insert(
        "registry.toml",
        "[[service]]\nname = \"api\"\nports = [{ number = 80, name = \"http\", protocol = \"http\" }]\n\n\
         [[service.instance]]\naddress = \"10.0.0.1\"\nport = 80\nlabels = { version = \"v1\" }\n\n\
         [[service.instance]]\naddress = \"10.0.0.2\"\nport = 80\nlabels = { version = \"v2\" }\n",
    );
    let mut spec = String::from("service api {\n  subset v1 { version = \"v1\" }\n  subset v2 { version = \"v2\" }\n}\n\nroutes api {\n");
    for index in 0..routes.saturating_sub(1) {
        let matches = match index % 4 {
            0 => format!("    match {{ path exact \"/api/r{index}\" }}\n"),
            1 => format!("    match {{ path prefix \"/api/p{index}/\" }}\n"),
            2 => format!("    match {{ path prefix \"/api/h{index}/\"  header \"x-tenant\" exact \"t{index}\" }}\n"),
            _ => format!(
                "    match {{ path exact \"/api/m{index}\"  method POST }}\n    match {{ path prefix \"/api/q{index}/\"  query \"v\" present }}\n"
            ),
        };
        let to = if index % 2 == 0 {
            "    to api subset v1\n".to_owned()
        } else {
            "    to api subset v1 weight 90\n    to api subset v2 weight 10\n".to_owned()
        };
        let _ = write!(spec, "  route r{index} {{\n{matches}{to}  }}\n");
    }
    spec.push_str("  route rest {\n    to api subset v1\n  }\n}\n");
    fs.insert("api.mesh", spec);
    fs
}

/// The path, headers and query string of a request that `route_table`'s route `index` takes
/// (the last route for an index past the table).
pub fn route_table_request(index: usize) -> (String, Vec<(&'static str, String)>, Option<&'static str>) {
    match index % 4 {
        0 => (format!("/api/r{index}"), Vec::new(), None),
        1 => (format!("/api/p{index}/item"), Vec::new(), None),
        2 => (format!("/api/h{index}/item"), vec![("x-tenant", format!("t{index}"))], None),
        _ => (format!("/api/q{index}/item"), Vec::new(), Some("v=1")),
    }
}

/// A small random mesh that compiles cleanly: a few services of a native registry, with route
/// tables of random matches drawn from a small vocabulary (so that routes overlap and order
/// matters), weights, direct responses and redirects, and now and then a table large enough
/// to be emitted as an indexed table. Routes the checker finds unreachable are dropped.
/// The output depends only on `seed`.
pub fn random(seed: u64) -> MemFs {
    let mut rng = SplitMix(seed);
    let services = 1 + rng.below(3) as usize;
    let mut fs = MemFs::new();
    fs.insert(
        "mesh.toml",
        format!("[mesh]\nname = \"random-{seed}\"\n\n[[registry]]\nname = \"native\"\nkind = \"native\"\npath = \"registry.toml\"\n"),
    );
    let mut registry = String::new();
    let mut spec = String::new();
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for service in 0..services {
        let _ =
            write!(registry, "[[service]]\nname = \"s{service}\"\nports = [{{ number = 80, name = \"http\", protocol = \"http\" }}]\n\n");
        for (instance, version) in ["v1", "v2"].iter().enumerate() {
            let _ = write!(
                registry,
                "[[service.instance]]\naddress = \"10.0.{service}.{instance}\"\nport = 80\nlabels = {{ version = \"{version}\" }}\n\n"
            );
        }
        // Now and then TLS towards the service and a health check, which Pilot serves and a
        // sidecar must take as compiled.
        let tls = ["", "  tls istio_mutual\n", "  tls simple sni \"s.example.com\"\n", "  tls mutual\n"][rng.below(4) as usize];
        let check = ["", "  health_check { http \"/healthz\"  interval 5s  timeout 1s  healthy_threshold 2  unhealthy_threshold 3 }\n"]
            [rng.below(2) as usize];
        let _ = write!(
            spec,
            "service s{service} {{\n  subset v1 {{ version = \"v1\" }}\n  subset v2 {{ version = \"v2\" }}\n{tls}{check}}}\n\n"
        );
        if rng.below(4) == 0 {
            continue; // the default route only
        }
        let count = if rng.below(4) == 0 { 65 + rng.below(60) as usize } else { 1 + rng.below(12) as usize };
        // Larger tables draw from a larger vocabulary, so that fewer of their routes are shadowed.
        let width = if count > 12 { 40 } else { 4 };
        let routes = (0..count).map(|index| random_route(&mut rng, service, index, index + 1 == count, services, width)).collect();
        tables.push((format!("s{service}"), routes));
    }
    fs.insert("registry.toml", registry);
    // One workload serves and calls every service, under up to three random policies.
    let names: Vec<String> = (0..services).map(|it| format!("s{it}")).collect();
    let _ = write!(spec, "workload w {{\n  serves {0}\n  calls {0}\n}}\n\n", names.join(", "));
    for index in 0..rng.below(4) {
        spec.push_str(&random_policy(&mut rng, index));
    }
    // Compile, drop the routes reported unreachable, and again, until the mesh is clean.
    loop {
        let mut text = spec.clone();
        for (host, routes) in &tables {
            let _ = write!(text, "routes {host} {{\n{}}}\n\n", routes.concat());
        }
        fs.insert("random.mesh", text);
        let compilation = crate::compile(&fs);
        let unreachable: Vec<String> = compilation
            .diagnostics
            .iter()
            .filter(|it| matches!(it.code, crate::diag::Code::ShadowedRoute | crate::diag::Code::ContainedRoute))
            .filter_map(|it| it.message.split('`').nth(1).map(str::to_owned))
            .collect();
        if unreachable.is_empty() {
            return fs;
        }
        for (_, routes) in &mut tables {
            routes.retain(|route| !unreachable.iter().any(|name| route.starts_with(&format!("  route {name} {{"))));
        }
        tables.retain(|(_, routes)| !routes.is_empty());
    }
}

fn random_route(rng: &mut SplitMix, service: usize, index: usize, last: bool, services: usize, width: u64) -> String {
    let mut out = format!("  route t{service}r{index} {{\n");
    // The last route matches everything half the time; the others have one to three alternatives.
    let alternatives = if last && rng.below(2) == 0 { 0 } else { 1 + rng.below(3) };
    for _ in 0..alternatives {
        out.push_str("    match {");
        let mut any = false;
        if rng.below(4) != 0 {
            let path = format!("/p{}", rng.below(width));
            let condition = match rng.below(6) {
                0 | 1 => format!(" path exact \"{path}\""),
                2 | 3 => format!(" path prefix \"{path}\""),
                4 => format!(" path prefix \"{path}/\""),
                _ => format!(" path regex \"{path}/[0-9]+\""),
            };
            out.push_str(&condition);
            any = true;
        }
        if rng.below(3) == 0 {
            let name = ["x-a", "x-b", "end-user"][rng.below(3) as usize];
            let condition = match rng.below(6) {
                0 | 1 => format!(" header \"{name}\" exact \"{}\"", rng.below(3)),
                2 => format!(" header \"{name}\" prefix \"j\""),
                3 => format!(" header \"{name}\" present"),
                4 => format!(" header \"{name}\" absent"),
                _ => format!(" header \"{name}\" regex \"[0-9]+\""),
            };
            out.push_str(&condition);
            any = true;
        }
        if rng.below(5) == 0 {
            out.push_str([" method GET", " method POST", " method regex \"GET|HEAD\""][rng.below(3) as usize]);
            any = true;
        }
        if rng.below(6) == 0 {
            out.push_str([" query \"q\" exact \"1\"", " query \"q\" present", " query \"q\" absent"][rng.below(3) as usize]);
            any = true;
        }
        if rng.below(12) == 0 {
            out.push_str([" authority prefix \"s\"", " authority regex \".*:80\""][rng.below(2) as usize]);
            any = true;
        }
        if !any {
            let _ = write!(out, " path prefix \"/p{}\"", rng.below(width));
        }
        out.push_str(" }\n");
    }
    match rng.below(10) {
        0 => out.push_str("    respond 503 \"unavailable\"\n"),
        1 => out.push_str("    redirect path \"/moved\" code 301\n"),
        2 | 3 => {
            let weight = 1 + rng.below(99);
            let _ = write!(
                out,
                "    to s{} subset v1 weight {weight}\n    to s{} subset v2 weight {}\n",
                rng.below(services as u64),
                rng.below(services as u64),
                100 - weight
            );
        }
        _ => {
            let subset = ["", " subset v1", " subset v2"][rng.below(3) as usize];
            let _ = writeln!(out, "    to s{}{subset}", rng.below(services as u64));
            // Now and then a rate limit, shared or per source, and retries.
            match rng.below(8) {
                0 => out.push_str("    rate_limit 10/s burst 20\n"),
                1 => out.push_str("    rate_limit 5/m per_source\n"),
                _ => {}
            }
            match rng.below(6) {
                0 => out.push_str("    retries 2 on 5xx\n"),
                1 => out.push_str("    retries 1 on reset any_method\n"),
                _ => {}
            }
        }
    }
    out.push_str("  }\n");
    out
}

/// An authorization policy on workload `w` from a small vocabulary of sources, operations
/// and conditions, so that random requests match some rules and miss others.
fn random_policy(rng: &mut SplitMix, index: u64) -> String {
    let action = ["allow", "deny"][rng.below(2) as usize];
    let mut out = format!("authorization p{index} {{\n  workloads w\n  action {action}\n");
    for _ in 0..rng.below(3) {
        out.push_str("  rule {\n");
        if rng.below(2) == 0 {
            let from = [
                "from { ip_blocks \"10.0.0.0/8\" }",
                "from { not ip_blocks \"10.1.0.0/16\" }",
                "from { workloads w }",
                "from { namespaces \"default\" }",
                "from { remote_ip_blocks \"192.168.0.0/16\", \"127.0.0.1\" }",
            ][rng.below(5) as usize];
            let _ = writeln!(out, "    {from}");
        }
        if rng.below(2) == 0 {
            let to = [
                "to { methods GET, HEAD }",
                "to { methods POST }",
                "to { paths \"/p1\", \"/p2*\" }",
                "to { not paths \"/admin*\" }",
                "to { paths \"/{*}/x\" }",
                "to { paths \"*/x\" }",
                "to { hosts \"s0*\" }",
                "to { ports 80 }",
                "to { methods GET  paths \"/p3/{**}\" }",
            ][rng.below(9) as usize];
            let _ = writeln!(out, "    {to}");
        }
        if rng.below(3) == 0 {
            let when = [
                "when header \"x-a\" in \"1\", \"2\"",
                "when header \"x-b\" not_in \"0\"",
                "when source.ip in \"10.0.0.0/8\"",
                "when source.namespace in \"default\"",
                "when destination.port in \"80\"",
            ][rng.below(5) as usize];
            let _ = writeln!(out, "    {when}");
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n\n");
    out
}

/// SplitMix64: a small deterministic generator, so that synthetic meshes depend on the seed only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..bound` for test data.
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_synthetic_mesh_compiles_cleanly_to_its_size() {
        let fs = synthetic(Synthetic { services: 50, instances: 500, routes: 50 });
        let compilation = crate::compile(&fs);
        assert!(compilation.diagnostics.is_empty(), "{}", compilation.render_plain());
        let ir = compilation.ir.expect("an IR");
        assert_eq!(ir.services.len(), 50);
        assert_eq!(ir.instances.len(), 500);
        let spec_routes: usize = ir.route_tables.iter().filter(|it| it.declared_in.is_some()).map(|it| it.routes.len()).sum();
        assert_eq!(spec_routes, 50);
        assert_eq!(ir.workloads.len(), 3);
    }

    #[test]
    fn a_route_table_mesh_holds_its_routes_in_one_table() {
        let compilation = crate::compile(&route_table(300));
        assert!(compilation.diagnostics.is_empty(), "{}", compilation.render_plain());
        let ir = compilation.ir.expect("an IR");
        let tables: Vec<_> = ir.route_tables.iter().filter(|it| it.declared_in.is_some()).collect();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].routes.len(), 300);
    }

    #[test]
    fn random_meshes_compile_cleanly_and_depend_only_on_the_seed() {
        let mut big = 0;
        for seed in 0..40 {
            let fs = random(seed);
            let compilation = crate::compile(&fs);
            assert!(!compilation.has_errors(), "seed {seed}: {}", compilation.render_plain());
            assert_eq!(fs.files, random(seed).files, "seed {seed}");
            let ir = compilation.ir.expect("an IR");
            big += ir.route_tables.iter().filter(|it| it.routes.iter().map(|r| r.matches.len().max(1)).sum::<usize>() > 64).count();
        }
        assert!(big > 0, "no random mesh has a table large enough to be indexed");
    }
}
