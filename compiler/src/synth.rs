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
}
