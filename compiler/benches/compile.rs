//! The compiler on a synthetic mesh of 10k services, 100k instances and 10k routes
//! (`meshc::synth`): `check + lower` (merge, check, lower, from parsed inputs) and the whole
//! `compile` (reading and parsing every file as well).
//!
//! Run with `cargo bench -p meshc --bench compile`; the goal is check + lower
//! under 2 s on a 2-core machine.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshc::synth::{Synthetic, synthetic};

fn compile(c: &mut Criterion) {
    let mesh = synthetic(Synthetic::default());
    let loaded = meshc::driver::load(&mesh);
    assert!(loaded.diagnostics.is_empty(), "the synthetic mesh must load cleanly");

    let mut group = c.benchmark_group("synthetic-10k-services-100k-instances-10k-routes");
    group.sample_size(10);
    group.bench_function("check+lower", |b| {
        b.iter_batched(
            || loaded.clone(),
            |mut loaded| {
                let ir = meshc::driver::analyze(&mut loaded);
                assert!(ir.is_some(), "the synthetic mesh must compile");
                ir
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("compile", |b| b.iter(|| meshc::compile(&mesh)));
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
