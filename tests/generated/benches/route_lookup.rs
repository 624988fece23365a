//! Route lookup, compiled against interpreted, on one host's table of 10, 100, 1k and 10k
//! routes (`meshc synth --shape table`).
//!
//! Each lookup routes one request of a fixed set of 64 spread evenly over the table (so the
//! average interpreted lookup walks half of it), building its head as the proxy does. The
//! compiled side is the generated crate's `route_outbound`; the interpreted side is the
//! runtime's `interp::Router` built from the same IR.
//!
//! Criterion measures each pair; then, because a shared machine's speed drifts between one
//! benchmark and the next, an interleaved pass measures every side and size in turn, round
//! after round, and prints the median of the per-round ratios: interpreted/compiled at each
//! size, and compiled at each size over compiled at 10 routes.
//!
//! `cargo bench -p meshc-generated --bench route_lookup`

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use meshc_codegen::ir::RouteTableKind;
use meshc_generated::{Origin, SIDECARS, Sidecar, interpreted_router, mesh};
use meshc_runtime::__codegen as rt;
use meshc_runtime::interp::Router;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const REQUESTS: usize = 64;
/// Rounds of the interleaved pass, and the time each measurement in a round lasts.
const ROUNDS: usize = 301;
const BATCH_NANOS: f64 = 500_000.0;

/// A request as the benchmark holds it: (authority, path, query, headers).
type Request = (String, String, Option<&'static str>, http::HeaderMap);

/// One table size: its compiled sidecar, its interpreted router and its requests.
struct Case {
    size: usize,
    sidecar: &'static Sidecar,
    router: Router,
    requests: Vec<Request>,
}

fn case(size: usize) -> Case {
    let sidecar = SIDECARS.iter().find(|it| it.origin == Origin::Table(size)).expect("a generated table of this size");
    let mesh = mesh(sidecar.origin);
    let router = interpreted_router(mesh, &mesh.workloads[0]);
    let authority = mesh
        .route_tables
        .iter()
        .find_map(|it| match &it.kind {
            RouteTableKind::Http { domains, .. } if it.declared_in.is_some() => domains.first().cloned(),
            _ => None,
        })
        .expect("the table's host");
    let requests: Vec<Request> = (0..REQUESTS)
        .map(|it| {
            let (path, headers, query) = meshc::synth::route_table_request(it * size / REQUESTS);
            let mut map = http::HeaderMap::new();
            for (name, value) in headers {
                map.insert(name, http::HeaderValue::from_str(&value).expect("a header value"));
            }
            (authority.clone(), path, query, map)
        })
        .collect();
    // Both sides must route every request to the same route, or the comparison means nothing.
    for (authority, path, query, headers) in &requests {
        let head = rt::RequestHead::from_parts("GET", authority, path, *query, headers);
        let compiled = match (sidecar.route_outbound)(&head) {
            rt::Decision::Forward(forward) => forward.route,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(router.select(&head).map(|it| it.1.name.as_str()), Some(compiled), "{path}");
    }
    Case { size, sidecar, router, requests }
}

impl Case {
    fn compiled(&self, index: usize) {
        let (authority, path, query, headers) = &self.requests[index % REQUESTS];
        let head = rt::RequestHead::from_parts("GET", authority, path, *query, headers);
        black_box((self.sidecar.route_outbound)(black_box(&head)));
    }

    fn interpreted(&self, index: usize) {
        let (authority, path, query, headers) = &self.requests[index % REQUESTS];
        let head = rt::RequestHead::from_parts("GET", authority, path, *query, headers);
        black_box(self.router.select(black_box(&head)).map(|it| it.0));
    }
}

fn bench(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(1));
    for case in cases {
        group.bench_function(BenchmarkId::new("compiled", case.size), |b| {
            let mut next = 0;
            b.iter(|| {
                case.compiled(next);
                next += 1;
            })
        });
        group.bench_function(BenchmarkId::new("interpreted", case.size), |b| {
            let mut next = 0;
            b.iter(|| {
                case.interpreted(next);
                next += 1;
            })
        });
    }
    group.finish();
}

/// Nanoseconds per lookup over a batch of `count`.
fn batch(count: usize, lookup: impl Fn(usize)) -> f64 {
    let start = Instant::now();
    for index in 0..count {
        lookup(index);
    }
    start.elapsed().as_nanos() as f64 / count as f64
}

/// How many lookups take about [`BATCH_NANOS`].
fn batch_size(lookup: impl Fn(usize)) -> usize {
    let each = batch(REQUESTS * 16, lookup).max(1.0);
    ((BATCH_NANOS / each) as usize).clamp(REQUESTS, 1 << 20)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The interleaved pass: every round measures every case's two sides, back to back.
fn interleaved(cases: &[Case]) {
    let sizes: Vec<(usize, usize)> =
        cases.iter().map(|case| (batch_size(|it| case.compiled(it)), batch_size(|it| case.interpreted(it)))).collect();
    let mut compiled = vec![Vec::new(); cases.len()];
    let mut interpreted = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (which, case) in cases.iter().enumerate() {
            compiled[which].push(batch(sizes[which].0, |it| case.compiled(it)));
            interpreted[which].push(batch(sizes[which].1, |it| case.interpreted(it)));
        }
    }
    println!(
        "\ninterleaved pass: {ROUNDS} rounds, each timing about {}µs of lookups per side and size; medians of per-round figures",
        BATCH_NANOS / 1000.0
    );
    println!("routes   compiled ns   interpreted ns   interpreted/compiled   compiled / compiled at 10");
    for (which, case) in cases.iter().enumerate() {
        let speedup = median(interpreted[which].iter().zip(&compiled[which]).map(|(i, c)| i / c).collect());
        let scaling = median(compiled[which].iter().zip(&compiled[0]).map(|(c, base)| c / base).collect());
        println!(
            "{:>6}   {:>11.1}   {:>14.1}   {:>19.1}x   {:>24.2}x",
            case.size,
            median(compiled[which].clone()),
            median(interpreted[which].clone()),
            speedup,
            scaling
        );
    }
}

fn main() {
    let cases: Vec<Case> = SIZES.into_iter().map(case).collect();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &cases);
    criterion.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each benchmark once and
    // needs no figures.
    if std::env::args().any(|it| it == "--bench") {
        interleaved(&cases);
    }
}
