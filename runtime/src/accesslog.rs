//! Access logs: one line per request on stdout when its response ends, as JSON (Istio's
//! standard fields) or in an Envoy-style text format (`%REQ(:PATH)% %RESPONSE_CODE%`).
//!
//! Lines go through a bounded queue to one writer thread, so a slow or blocked stdout never
//! holds up a request: when the queue is full the line is dropped and counted, as Envoy's
//! access-log buffer does.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most.
const QUEUE: usize = 8192;

static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the writer fell behind.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn writer() -> Option<&'static SyncSender<String>> {
    WRITER
        .get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
            std::thread::Builder::new().name("access-log".to_owned()).spawn(move || drain_to_stdout(&receiver)).ok()?;
            Some(sender)
        })
        .as_ref()
}

/// Writes lines as they come, flushing whenever the queue runs empty.
fn drain_to_stdout(receiver: &Receiver<String>) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    while let Ok(line) = receiver.recv() {
        let _ = writeln!(out, "{line}");
        while let Ok(line) = receiver.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// How a workload logs its requests.
#[derive(Debug)]
pub enum AccessLog {
    /// Not at all.
    Off,
    /// One JSON object per line.
    Json,
    /// Envoy's command operators in a text line.
    Text(&'static str),
}

/// What a log line says about a request.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// When the request started.
    pub start: Option<SystemTime>,
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The authority.
    pub authority: String,
    /// `x-request-id`.
    pub request_id: String,
    /// `user-agent`.
    pub user_agent: String,
    /// `traceparent`.
    pub traceparent: String,
    /// The peer.
    pub peer: Option<IpAddr>,
    /// The route taken.
    pub route: &'static str,
    /// The upstream cluster.
    pub cluster: &'static str,
    /// The endpoint that answered.
    pub upstream_host: String,
}

/// Writes the line for a finished request.
pub fn write(format: &AccessLog, entry: &Entry, code: u16, flags: &str, duration: Duration) {
    let line = match format {
        AccessLog::Off => return,
        AccessLog::Json => json(entry, code, flags, duration),
        AccessLog::Text(format) => text(format, entry, code, flags, duration),
    };
    let sent = match writer() {
        Some(sender) => match sender.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        },
        None => false,
    };
    if !sent {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}

fn json(entry: &Entry, code: u16, flags: &str, duration: Duration) -> String {
    let text = |value: &str| if value.is_empty() { serde_json::Value::Null } else { serde_json::Value::from(value) };
    serde_json::json!({
        "start_time": text(&entry.start.map(rfc3339).unwrap_or_default()),
        "method": text(&entry.method),
        "path": text(&entry.path),
        "protocol": text(entry.protocol),
        "response_code": code,
        "response_flags": flags,
        "duration": duration.as_millis() as u64,
        "authority": text(&entry.authority),
        "request_id": text(&entry.request_id),
        "user_agent": text(&entry.user_agent),
        "traceparent": text(&entry.traceparent),
        "downstream_remote_address": text(&entry.peer.map(|it| it.to_string()).unwrap_or_default()),
        "route_name": text(entry.route),
        "upstream_cluster": text(entry.cluster),
        "upstream_host": text(&entry.upstream_host),
    })
    .to_string()
}

fn text(format: &str, entry: &Entry, code: u16, flags: &str, duration: Duration) -> String {
    let mut out = String::new();
    let mut rest = format;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let command = &after[..end];
        let value = match command {
            "START_TIME" => entry.start.map(rfc3339).unwrap_or_default(),
            "PROTOCOL" => entry.protocol.to_owned(),
            "RESPONSE_CODE" => code.to_string(),
            "RESPONSE_FLAGS" => flags.to_owned(),
            "DURATION" => duration.as_millis().to_string(),
            "UPSTREAM_CLUSTER" => entry.cluster.to_owned(),
            "UPSTREAM_HOST" => entry.upstream_host.clone(),
            "ROUTE_NAME" => entry.route.to_owned(),
            "DOWNSTREAM_REMOTE_ADDRESS" => entry.peer.map(|it| it.to_string()).unwrap_or_default(),
            _ => match command.strip_prefix("REQ(").and_then(|it| it.strip_suffix(')')).map(str::to_ascii_lowercase).as_deref() {
                Some(":method") => entry.method.clone(),
                Some(":path") => entry.path.clone(),
                Some(":authority" | "host") => entry.authority.clone(),
                Some("x-request-id") => entry.request_id.clone(),
                Some("user-agent") => entry.user_agent.clone(),
                Some("traceparent") => entry.traceparent.clone(),
                _ => String::new(),
            },
        };
        out.push_str(or_dash(&value));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `2026-11-23T20:31:05.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", of_day / 3600, of_day % 3600 / 60, of_day % 60, since.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_795_638_665_123)),
            method: "GET".to_owned(),
            path: "/reviews/0?x=\"1\"".to_owned(),
            protocol: "HTTP/1.1",
            authority: "reviews:9080".to_owned(),
            route: "jason",
            ..Entry::default()
        }
    }

    #[test]
    fn json_lines_carry_the_standard_fields_escaped() {
        let line = json(&entry(), 200, "-", Duration::from_millis(12));
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["path"], "/reviews/0?x=\"1\"");
        assert_eq!(value["response_code"], 200);
        assert_eq!(value["duration"], 12);
        assert_eq!(value["route_name"], "jason");
        assert_eq!(value["start_time"], "2026-11-25T20:31:05.123Z");
        assert!(value["upstream_host"].is_null());
    }

    #[test]
    fn text_formats_take_envoys_command_operators() {
        let line = text(
            "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %BOGUS% 100%",
            &entry(),
            503,
            "UF",
            Duration::ZERO,
        );
        assert_eq!(line, "GET /reviews/0?x=\"1\" 503 UF - - 100%");
    }
}
