//! Consistent hashing: building a ring or a Maglev table over an endpoint set (done on the
//! first hashed pick after the endpoints change, on the request path), and a pick once built.
//!
//! `cargo bench -p meshc-runtime --bench hashing`

use std::hint::black_box;

use criterion::{BatchSize, Criterion};
use meshc_runtime::endpoints::{Endpoint, EndpointSet};
use meshc_runtime::spec::HashTable;

/// `count` endpoints of weight 1, one of them of weight 100 (a canary's opposite).
fn endpoints(count: usize) -> Vec<Endpoint> {
    (0..count)
        .map(|it| {
            Endpoint::new(&format!("10.{}.{}.{}", it >> 16, (it >> 8) & 0xff, it & 0xff), 8080, if it == 0 { 100 } else { 1 }, true, "")
        })
        .collect()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let tables = [("ring_1024", HashTable::Ring { min_size: 1024 }), ("maglev_65537", HashTable::Maglev { size: 65_537 })];
    for count in [10, 1000] {
        let list = endpoints(count);
        let mut group = criterion.benchmark_group(format!("hashing/{count}_endpoints"));
        for (name, table) in tables {
            // The set is made outside the timing; the first pick builds the table.
            group.bench_function(format!("{name}_build"), |b| {
                b.iter_batched(
                    || EndpointSet::new(list.clone()),
                    |set| black_box(set.pick_hashed(7, table).is_some()),
                    BatchSize::LargeInput,
                )
            });
            let set = EndpointSet::new(list.clone());
            let mut key = 0u64;
            group.bench_function(format!("{name}_pick"), |b| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(set.pick_hashed(black_box(key), table).map(|it| it.port))
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
