//! Access logs: one line per request on stdout when its response ends, as JSON (Istio's
//! standard fields) or in an Envoy-style text format (`%REQ(:PATH)% %RESPONSE_CODE%`).
//!
//! Lines go through a bounded queue to one writer thread, so a slow or blocked stdout never
//! holds up a request: when the queue is full the line is dropped and counted, as Envoy's
//! access-log buffer does.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

// Envoy's text formats, parsed as the checker parsed them: one source file, two crates.
#[path = "../../codegen/src/access_format.rs"]
mod access_format;

use access_format::{Operator, Piece};

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
    /// The request headers a text format names (`REQ(name)`), in [`TextFormat::request`]'s
    /// order; `None` where the request had none.
    pub request_headers: Vec<Option<String>>,
    /// The response headers a text format names (`RESP(name)`), likewise.
    pub response_headers: Vec<Option<String>>,
    /// Bytes of response body sent.
    pub bytes_sent: u64,
}

/// A text format, parsed once: its pieces, and the headers its `REQ` and `RESP` operators
/// name (the pseudo-headers aside), which a request's entry keeps.
#[derive(Debug)]
pub struct TextFormat {
    source: &'static str,
    pieces: Vec<Piece<'static>>,
    request: Vec<&'static str>,
    response: Vec<&'static str>,
}

impl TextFormat {
    /// The parsed `format`. The sidecar has one format, parsed on first use; the checker has
    /// refused any format the sidecar cannot write, so a failure here (a spec written by
    /// hand) writes the format as it is.
    pub fn of(format: &'static str) -> &'static TextFormat {
        // The sidecar's one format, found without a lock or a comparison of its text.
        static FIRST: OnceLock<&'static TextFormat> = OnceLock::new();
        if let Some(first) = FIRST.get().filter(|it| std::ptr::eq(it.source, format)) {
            return first;
        }
        static PARSED: Mutex<Vec<&'static TextFormat>> = Mutex::new(Vec::new());
        let mut parsed = PARSED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = parsed.iter().find(|it| it.source == format) {
            return found;
        }
        let pieces = access_format::parse(format).unwrap_or_else(|_| vec![Piece::Text(format.into())]);
        let (mut request, mut response) = (Vec::new(), Vec::new());
        for piece in &pieces {
            let (names, (first, alternative)) = match piece {
                Piece::Operator(Operator::Request(first, alternative), _) => (&mut request, (*first, *alternative)),
                Piece::Operator(Operator::Response(first, alternative), _) => (&mut response, (*first, *alternative)),
                _ => continue,
            };
            for name in [Some(first), alternative].into_iter().flatten() {
                if !name.starts_with(':') && !names.iter().any(|it: &&str| it.eq_ignore_ascii_case(name)) {
                    names.push(name);
                }
            }
        }
        // One per distinct format for the process's life: a sidecar has one.
        let format: &'static TextFormat = Box::leak(Box::new(TextFormat { source: format, pieces, request, response }));
        parsed.push(format);
        let _ = FIRST.set(format);
        format
    }

    /// The values of the request headers the format names, for a request's entry.
    pub fn request_headers(&self, headers: &HeaderMap) -> Vec<Option<String>> {
        captured(&self.request, headers)
    }

    /// The values of the response headers the format names.
    pub fn response_headers(&self, headers: &HeaderMap) -> Vec<Option<String>> {
        captured(&self.response, headers)
    }
}

fn captured(names: &[&str], headers: &HeaderMap) -> Vec<Option<String>> {
    names.iter().map(|name| headers.get(*name).map(|it| String::from_utf8_lossy(it.as_bytes()).into_owned())).collect()
}

/// Writes the line for a finished request.
pub fn write(format: &AccessLog, entry: &Entry, code: u16, flags: &str, duration: Duration) {
    let line = match format {
        AccessLog::Off => return,
        AccessLog::Json => json(entry, code, flags, duration),
        AccessLog::Text(format) => text(TextFormat::of(format), entry, code, flags, duration),
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
        "bytes_sent": entry.bytes_sent,
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

fn text(format: &TextFormat, entry: &Entry, code: u16, flags: &str, duration: Duration) -> String {
    let mut out = String::new();
    for piece in &format.pieces {
        let (operator, length) = match piece {
            Piece::Text(text) => {
                out.push_str(text);
                continue;
            }
            Piece::Operator(operator, length) => (operator, *length),
        };
        let value: std::borrow::Cow<'_, str> = match *operator {
            Operator::StartTime => entry.start.map(rfc3339).unwrap_or_default().into(),
            Operator::Protocol => entry.protocol.into(),
            Operator::ResponseCode => code.to_string().into(),
            Operator::ResponseFlags => flags.into(),
            Operator::Duration => duration.as_millis().to_string().into(),
            Operator::BytesSent => entry.bytes_sent.to_string().into(),
            Operator::UpstreamCluster => entry.cluster.into(),
            Operator::UpstreamHost => entry.upstream_host.as_str().into(),
            Operator::RouteName => entry.route.into(),
            Operator::DownstreamRemoteAddress => entry.peer.map(|it| it.to_string()).unwrap_or_default().into(),
            Operator::Request(first, alternative) => {
                let value = request_header(format, entry, first).or_else(|| alternative.and_then(|it| request_header(format, entry, it)));
                value.unwrap_or_default().into()
            }
            Operator::Response(first, alternative) => {
                let value = header_at(&format.response, &entry.response_headers, first)
                    .or_else(|| alternative.and_then(|it| header_at(&format.response, &entry.response_headers, it)));
                value.unwrap_or_default().into()
            }
        };
        let value = or_dash(&value);
        // Truncated to `length` bytes, at a character's boundary.
        match length.filter(|it| *it < value.len()) {
            Some(length) => out.push_str(&value[..(0..=length).rev().find(|it| value.is_char_boundary(*it)).unwrap_or(0)]),
            None => out.push_str(value),
        }
    }
    out
}

/// A request header's value as the entry keeps it: the pseudo-headers and `Host` from the
/// entry's own fields, the rest from what the format made it capture.
fn request_header<'a>(format: &TextFormat, entry: &'a Entry, name: &str) -> Option<&'a str> {
    let value = match name.to_ascii_lowercase().as_str() {
        ":method" => entry.method.as_str(),
        ":path" => entry.path.as_str(),
        ":authority" | "host" => entry.authority.as_str(),
        ":scheme" => "http",
        _ => return header_at(&format.request, &entry.request_headers, name),
    };
    Some(value).filter(|it| !it.is_empty())
}

fn header_at<'a>(names: &[&str], values: &'a [Option<String>], name: &str) -> Option<&'a str> {
    let at = names.iter().position(|it| it.eq_ignore_ascii_case(name))?;
    values.get(at)?.as_deref()
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
        let format = TextFormat::of(
            "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(X-Forwarded-For)% %REQ(x-absent)% %RESPONSE_CODE% \
             %RESPONSE_FLAGS% %UPSTREAM_HOST% %BYTES_SENT% %RESP(grpc-status?x-none)% %REQ(user-agent):5% 100%%",
        );
        let mut request = HeaderMap::new();
        request.insert("x-forwarded-for", "10.0.0.1".parse().expect("a value"));
        request.insert("user-agent", "curl/8.0.1".parse().expect("a value"));
        let mut response = HeaderMap::new();
        response.insert("grpc-status", "14".parse().expect("a value"));
        let entry = Entry {
            request_headers: format.request_headers(&request),
            response_headers: format.response_headers(&response),
            bytes_sent: 1234,
            ..entry()
        };
        let line = text(format, &entry, 503, "UF", Duration::ZERO);
        assert_eq!(line, "GET /reviews/0?x=\"1\" 10.0.0.1 - 503 UF - 1234 14 curl/ 100%");
        // The same text is the same parse.
        assert!(std::ptr::eq(format, TextFormat::of(format.source)));
    }
}
