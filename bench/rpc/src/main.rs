//! The RPC benchmark's load generator and upstream (see ../README.md).
//!
//! Frames come from reference encoders: the requests and responses in the runtime's codec
//! fixtures, written by sofa-bolt-node and dubbo-remoting (runtime/src/rpc/fixtures), with only
//! their request ids changed. The runtime's codecs cut frames off the stream. Request ids count
//! up over all of `run`'s connections, as a JVM's SOFA and Dubbo clients number them
//! (sofa-bolt's `IDGenerator` and Dubbo's `Request` each keep one counter per process).
//!
//!     rpc-load serve --protocol bolt --listen 127.0.0.1:12200
//!     rpc-load run --protocol bolt --target 127.0.0.1:12220 --connections 8 --in-flight 8 --seconds 10
//!     rpc-load run --protocol dubbo --target 127.0.0.1:20881 --rate 5000 --seconds 10
//!
//! `run` prints one JSON line: requests per second, p50/p99/p999 latency in microseconds, and
//! counts of errors (responses whose status is not success, lost connections).

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use meshc_runtime::rpc::{DEFAULT_MAX_FRAME, bolt, dubbo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The last request id given, over every connection of the process.
static LAST_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Parser, Debug)]
#[command(name = "rpc-load", about = "Bolt and Dubbo load for the RPC benchmark")]
enum Command {
    /// Answers every request with a canned response, at once.
    Serve {
        #[arg(long, value_parser = ["bolt", "dubbo"])]
        protocol: String,
        #[arg(long)]
        listen: String,
    },
    /// Sends requests and measures their answers.
    Run {
        #[arg(long, value_parser = ["bolt", "dubbo"])]
        protocol: String,
        #[arg(long)]
        target: String,
        /// Connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Closed loop: requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        /// Open loop: requests per second in all, sent on schedule whatever the answers do
        /// (latency counts from the scheduled time); closed loop when absent.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

fn fixture(kind: &str, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<u8> {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("../../../runtime/src/rpc/fixtures/fixtures.json")).expect("the fixtures are JSON");
    let entry = all[kind].as_array().expect("entries").iter().find(|it| pick(it)).expect("the fixture");
    let text = entry["hex"].as_str().expect("hex");
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex digits")).collect()
}

/// A protocol's request and response frames, and how to read and set their ids.
#[derive(Clone)]
struct Protocol {
    bolt: bool,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Protocol {
    fn new(name: &str) -> Protocol {
        if name == "bolt" {
            Protocol {
                bolt: true,
                request: fixture("bolt", |it| it["flavour"] == "v2 crc" && it["kind"] == "request"),
                response: fixture("bolt", |it| it["flavour"] == "v2 crc" && it["kind"] == "response"),
            }
        } else {
            Protocol {
                bolt: false,
                request: fixture("dubbo", |it| it["kind"] == "request"),
                response: fixture("dubbo", |it| it["kind"] == "response"),
            }
        }
    }

    /// Cuts the next frame: (request id, is a request, ok status).
    fn next(&self, buf: &mut BytesMut) -> Result<Option<(u64, bool, bool)>, String> {
        if self.bolt {
            let frame = bolt::decode(buf, DEFAULT_MAX_FRAME).map_err(|it| it.to_string())?;
            Ok(frame.map(|it| {
                let head = it.head();
                (u64::from(head.request_id), head.kind != bolt::Kind::Response, head.status == bolt::status::SUCCESS)
            }))
        } else {
            let frame = dubbo::decode(buf, DEFAULT_MAX_FRAME).map_err(|it| it.to_string())?;
            Ok(frame.map(|it| {
                let head = it.head();
                (head.request_id, head.is_request(), head.status == dubbo::status::OK)
            }))
        }
    }

    fn with_id(&self, frame: &[u8], id: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(frame);
        if self.bolt {
            bolt::patch_request_id(&mut out[start..], id as u32);
        } else {
            dubbo::patch_request_id(&mut out[start..], id);
        }
    }
}

async fn serve(protocol: Protocol, listen: String) {
    let listener = TcpListener::bind(&listen).await.unwrap_or_else(|err| panic!("cannot listen on {listen}: {err}"));
    println!("serving {}", listener.local_addr().map(|it| it.port()).unwrap_or(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let protocol = protocol.clone();
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut out = Vec::with_capacity(64 * 1024);
            loop {
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // Answer everything that arrived in one write.
                loop {
                    match protocol.next(&mut buf) {
                        Ok(Some((id, true, _))) => protocol.with_id(&protocol.response, id, &mut out),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                if !out.is_empty() {
                    if writer.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
            }
        });
    }
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn connection(
    protocol: Protocol,
    target: String,
    in_flight: usize,
    interval: Option<Duration>,
    stop: Instant,
    started: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let Ok(stream) = TcpStream::connect(&target).await else {
        tally.errors += 1;
        return tally;
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    // Send times by id; ids count up from 1 over all connections.
    let sent: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Instant>>> = Arc::default();
    let outstanding = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let done = Arc::new(AtomicBool::new(false));
    let writing = {
        let (protocol, sent, outstanding, done) = (protocol.clone(), sent.clone(), outstanding.clone(), done.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut next_at = Instant::now();
            while Instant::now() < stop && !done.load(Ordering::Relaxed) {
                let scheduled = match interval {
                    Some(interval) => {
                        tokio::time::sleep_until(next_at.into()).await;
                        let at = next_at;
                        next_at += interval;
                        at
                    }
                    None => {
                        let Ok(permit) = outstanding.acquire().await else { return };
                        permit.forget();
                        Instant::now()
                    }
                };
                let id = LAST_ID.fetch_add(1, Ordering::Relaxed) + 1;
                sent.lock().unwrap_or_else(|it| it.into_inner()).insert(id, scheduled);
                out.clear();
                protocol.with_id(&protocol.request, id, &mut out);
                if writer.write_all(&out).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let counting = |started: &AtomicBool| started.load(Ordering::Relaxed);
    'read: loop {
        let read = tokio::time::timeout_at((stop + Duration::from_secs(2)).into(), reader.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {
                if Instant::now() < stop {
                    tally.errors += 1;
                }
                break;
            }
            Err(_) => break,
            Ok(Ok(_)) => {}
        }
        loop {
            match protocol.next(&mut buf) {
                Ok(Some((id, false, ok))) => {
                    let at = sent.lock().unwrap_or_else(|it| it.into_inner()).remove(&id);
                    if let Some(at) = at
                        && counting(&started)
                    {
                        if ok {
                            tally.latencies_us.push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        } else {
                            tally.errors += 1;
                        }
                    }
                    outstanding.add_permits(1);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tally.errors += 1;
                    break 'read;
                }
            }
        }
        if Instant::now() >= stop && sent.lock().unwrap_or_else(|it| it.into_inner()).is_empty() {
            break;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
    }
    done.store(true, Ordering::Relaxed);
    outstanding.close();
    writing.abort();
    tally
}

async fn run(protocol: Protocol, target: String, connections: usize, in_flight: usize, rate: Option<u64>, seconds: f64) {
    // A warm-up second, not counted, then the measured run.
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs_f64(seconds);
    let begin = Instant::now();
    let stop = begin + warmup + measured;
    let started = Arc::new(AtomicBool::new(false));
    let interval = rate.map(|rate| Duration::from_secs_f64(connections as f64 / rate.max(1) as f64));
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(protocol.clone(), target.clone(), in_flight, interval, stop, started.clone())))
        .collect();
    tokio::time::sleep(warmup).await;
    started.store(true, Ordering::Relaxed);
    let counted_from = Instant::now();
    let mut latencies = Vec::new();
    let errors = AtomicU64::new(0);
    for task in tasks {
        if let Ok(tally) = task.await {
            latencies.extend(tally.latencies_us);
            errors.fetch_add(tally.errors, Ordering::Relaxed);
        }
    }
    let elapsed = (stop.min(Instant::now()) - counted_from).as_secs_f64().max(measured.as_secs_f64());
    latencies.sort_unstable();
    let percentile = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    let report = serde_json::json!({
        "responses": latencies.len(),
        "rps": latencies.len() as f64 / elapsed,
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
        "p999_us": percentile(0.999),
        "errors": errors.load(Ordering::Relaxed),
        "mode": if rate.is_some() { "rate" } else { "max" },
    });
    println!("{report}");
}

fn main() {
    let command = Command::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match command {
        Command::Serve { protocol, listen } => runtime.block_on(serve(Protocol::new(&protocol), listen)),
        Command::Run { protocol, target, connections, in_flight, rate, seconds } => {
            runtime.block_on(run(Protocol::new(&protocol), target, connections, in_flight, rate, seconds));
        }
    }
}
