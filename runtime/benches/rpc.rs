//! Bolt and Dubbo frames on the request path: cutting a frame off the stream, and reading its
//! routing keys, against decoding the whole Dubbo body as an RPC framework would.
//!
//! The frames are those of the codec tests, written by reference encoders
//! (src/rpc/fixtures/fixtures.json): a sofa-rpc-node request over Bolt v2 with its CRC32
//! trailer, and a dubbo-remoting request with an object, a 2,000-character string, a map and
//! a boolean as arguments, and a `group` among its attachments.
//!
//! After criterion's figures, an interleaved pass times key extraction and full decoding of
//! the Dubbo request in turn, round after round, and prints the median of the per-round
//! ratios (a shared machine's speed drifts between one benchmark and the next).
//!
//! `cargo bench -p meshc-runtime --bench rpc`

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{Criterion, Throughput};
use meshc_runtime::rpc::head::RpcHead;
use meshc_runtime::rpc::hessian::Reader;
use meshc_runtime::rpc::{DEFAULT_MAX_FRAME, bolt, dubbo};

const ROUNDS: usize = 301;
const BATCH_NANOS: f64 = 500_000.0;

fn fixture(kind: &str, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<u8> {
    let all: serde_json::Value = serde_json::from_str(include_str!("../src/rpc/fixtures/fixtures.json")).expect("fixtures");
    let entry = all[kind].as_array().expect("entries").iter().find(|it| pick(it)).expect("the fixture");
    let text = entry["hex"].as_str().expect("hex");
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex")).collect()
}

fn bolt_frame(bytes: &[u8]) -> bolt::Frame {
    bolt::decode(&mut BytesMut::from(bytes), DEFAULT_MAX_FRAME).expect("valid").expect("whole")
}

fn dubbo_frame(bytes: &[u8]) -> dubbo::Frame {
    dubbo::decode(&mut BytesMut::from(bytes), DEFAULT_MAX_FRAME).expect("valid").expect("whole")
}

/// What a proxy needs to route the Dubbo request: its interface, version and method.
fn dubbo_keys(frame: &dubbo::Frame) {
    black_box(RpcHead::dubbo(frame, false).expect("readable"));
}

/// The same, and the attachments (for `group`), with the arguments skipped undecoded.
fn dubbo_keys_and_attachments(frame: &dubbo::Frame) {
    black_box(RpcHead::dubbo(frame, true).expect("readable"));
}

/// Every value of the body decoded: the strings, the arguments, the attachments.
fn dubbo_full_decode(frame: &dubbo::Frame) {
    let body = frame.body();
    let mut reader = Reader::new(body);
    while reader.position() < body.len() {
        black_box(reader.read_value().expect("decodes"));
    }
}

fn bench(c: &mut Criterion, bolt_bytes: &[u8], dubbo_bytes: &[u8]) {
    let mut group = c.benchmark_group("rpc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bolt_v2_crc_cut_frame", |b| b.iter(|| black_box(bolt_frame(black_box(bolt_bytes)))));
    let frame = bolt_frame(bolt_bytes);
    group.bench_function("bolt_keys", |b| b.iter(|| black_box(RpcHead::bolt(black_box(&frame)).expect("readable"))));
    group.bench_function("dubbo_cut_frame", |b| b.iter(|| black_box(dubbo_frame(black_box(dubbo_bytes)))));
    let frame = dubbo_frame(dubbo_bytes);
    group.bench_function("dubbo_keys", |b| b.iter(|| dubbo_keys(black_box(&frame))));
    group.bench_function("dubbo_keys_and_attachments", |b| b.iter(|| dubbo_keys_and_attachments(black_box(&frame))));
    group.bench_function("dubbo_full_decode", |b| b.iter(|| dubbo_full_decode(black_box(&frame))));
    group.finish();
}

fn batch(count: usize, work: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..count {
        work();
    }
    start.elapsed().as_nanos() as f64 / count as f64
}

fn batch_size(work: impl Fn()) -> usize {
    let each = batch(1000, work).max(1.0);
    ((BATCH_NANOS / each) as usize).clamp(16, 1 << 20)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn interleaved(dubbo_bytes: &[u8]) {
    let frame = dubbo_frame(dubbo_bytes);
    let sides: [(&str, &dyn Fn()); 3] = [
        ("keys", &|| dubbo_keys(&frame)),
        ("keys and attachments", &|| dubbo_keys_and_attachments(&frame)),
        ("full decode", &|| dubbo_full_decode(&frame)),
    ];
    let sizes: Vec<usize> = sides.iter().map(|(_, work)| batch_size(work)).collect();
    let mut times = vec![Vec::new(); sides.len()];
    for _ in 0..ROUNDS {
        for (which, (_, work)) in sides.iter().enumerate() {
            times[which].push(batch(sizes[which], work));
        }
    }
    println!("\ninterleaved pass over the Dubbo request ({} bytes): {ROUNDS} rounds; medians of per-round figures", dubbo_bytes.len());
    println!("side                     ns   full decode / side");
    for (which, (name, _)) in sides.iter().enumerate() {
        let ratio = median(times[2].iter().zip(&times[which]).map(|(full, side)| full / side).collect());
        println!("{name:<22} {:>6.0}   {ratio:>17.1}x", median(times[which].clone()));
    }
}

fn main() {
    let bolt_bytes = fixture("bolt", |it| it["flavour"] == "v2 crc" && it["kind"] == "request");
    let dubbo_bytes = fixture("dubbo", |it| it["kind"] == "request with objects");
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &bolt_bytes, &dubbo_bytes);
    criterion.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each benchmark once.
    if std::env::args().any(|it| it == "--bench") {
        interleaved(&dubbo_bytes);
    }
}
