//! Pilot's share of a registry push (issue 6): bench/xds's mesh, a native snapshot of 10,000
//! instances of one service, has one instance's weight changed, and Pilot recompiles it
//! (reusing the chunks of the snapshot that did not change, as its watch does) and builds what
//! the sidecar of workload `client` is served (resources encoded and given versions).
//!
//! Run with `cargo bench -p meshc --bench push`. bench/xds measures the whole way from the
//! file to the sidecar; this is the part that runs in Pilot, without the machine's noise.

use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshc::pilot::{Identity, Pilot};
use meshc::registry::Reparse;
use meshc::source::MemFs;
use meshc_codegen::emit::xds::Client;

const ENDPOINTS: usize = 10_000;

/// bench/xds's registry, version `version` (the first instance weighs 100 + version).
fn registry(version: u32) -> String {
    let mut text = String::from("[[service]]\nname = \"big\"\nports = [{ number = 80, name = \"http\", protocol = \"http\" }]\n");
    for index in 0..ENDPOINTS {
        let weight = if index == 0 { 100 + version } else { 100 };
        let address = format!("10.{}.{}.{}", index / 65536 % 256, index / 256 % 256, index % 256);
        text.push_str(&format!("\n[[service.instance]]\naddress = \"{address}\"\nport = 8080\nweight = {weight}\n"));
    }
    text.push_str("\n[[service]]\nname = \"small\"\nports = [{ number = 80, name = \"http\", protocol = \"http\" }]\n");
    text.push_str("\n[[service.instance]]\naddress = \"127.0.0.1\"\nport = 8081\n");
    text
}

fn mesh(version: u32) -> MemFs {
    let mut fs = MemFs::new();
    fs.insert(
        "mesh.toml",
        "[mesh]\nname = \"xdsbench\"\nnamespace = \"default\"\n\n[[registry]]\nname = \"local\"\nkind = \"native\"\npath = \"registry.toml\"\n",
    );
    fs.insert(
        "bench.mesh",
        "service big {\n  load_balancer round_robin\n}\n\nworkload client {\n  calls big, small\n  telemetry { access_log off }\n}\n",
    );
    fs.insert("registry.toml", registry(version));
    fs
}

fn push(c: &mut Criterion) {
    let versions = [mesh(0), mesh(1)];
    let mut reparse = Reparse::default();
    let first = meshc::driver::compile_reusing(&versions[0], &mut reparse).ir.expect("the bench mesh compiles");
    let pilot = Pilot::new(first, Duration::from_secs(30));
    let client = Identity { node_id: "client".to_owned(), workload: "client".to_owned(), client: Client::Envoy, outbound: None };
    let mut group = c.benchmark_group("push-10k-endpoints");
    group.sample_size(20);
    let mut version = 0;
    // Each iteration compiles the other version, so every one has a change to find.
    group.bench_function("recompile", |b| {
        b.iter(|| {
            version ^= 1;
            meshc::driver::compile_reusing(&versions[version], &mut reparse)
        })
    });
    let meshes = [0, 1].map(|it| meshc::driver::compile(&versions[it]).ir.expect("the bench mesh compiles"));
    group.bench_function("resources", |b| {
        b.iter_batched(
            || {
                version ^= 1;
                meshes[version].clone()
            },
            |mesh| {
                pilot.accept(mesh);
                pilot.config().served(&client).expect("workload client is served")
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, push);
criterion_main!(benches);
