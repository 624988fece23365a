//! Trace context propagation: W3C `traceparent` and Zipkin's B3 headers pass through with a
//! new span id for the hop the sidecar adds (the caller's span becomes the parent); a request
//! with neither starts a W3C trace. `x-request-id` is added when absent, as Envoy does.

use http::HeaderMap;
use http::header::HeaderValue;

/// Updates the trace headers of a request about to be forwarded.
pub fn propagate(headers: &mut HeaderMap) {
    let b3 = headers.contains_key("x-b3-traceid");
    let w3c = headers.get("traceparent").and_then(|it| it.to_str().ok()).and_then(parse_traceparent);
    if let Some((trace_id, flags)) = w3c {
        set(headers, "traceparent", &format!("00-{trace_id}-{:016x}-{flags}", span_id()));
    } else if !b3 {
        let trace_id = format!("{:016x}{:016x}", random_u64(), random_u64());
        set(headers, "traceparent", &format!("00-{trace_id}-{:016x}-01", span_id()));
    }
    if b3 {
        if let Some(parent) = headers.get("x-b3-spanid").cloned() {
            headers.insert("x-b3-parentspanid", parent);
        }
        set(headers, "x-b3-spanid", &format!("{:016x}", span_id()));
    }
    if !headers.contains_key("x-request-id") {
        add_request_id(headers);
    }
}

/// Adds a random (version 4) UUID as `x-request-id`.
pub fn add_request_id(headers: &mut HeaderMap) {
    let (high, low) = (random_u64(), random_u64());
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        (low >> 48) & 0x3fff | 0x8000,
        low & 0xffff_ffff_ffff
    );
    set(headers, "x-request-id", &id);
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`: the trace id and flags, when valid.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|it| it.is_ascii_digit() || (b'a'..=b'f').contains(&it));
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|it| it != b'0')
        && parent.bytes().any(|it| it != b'0');
    valid.then_some((trace_id, flags))
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// A non-zero span id.
fn span_id() -> u64 {
    random_u64().max(1)
}

fn random_u64() -> u64 {
    (u64::from(crate::proxy::random_below(u32::MAX)) << 32) | u64::from(crate::proxy::random_below(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_keeps_its_trace_and_gets_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        propagate(&mut headers);
        let value = headers["traceparent"].to_str().expect("text").to_owned();
        assert!(value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && value.ends_with("-01"), "{value}");
        assert!(!value.contains("00f067aa0ba902b7"), "{value}");
        assert!(headers.contains_key("x-request-id"));
    }

    #[test]
    fn b3_spans_chain_and_a_bare_request_starts_a_trace() {
        let mut headers = HeaderMap::new();
        headers.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        headers.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        propagate(&mut headers);
        assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_ne!(headers["x-b3-spanid"], "a2fb4a1d1a96d312");
        assert!(!headers.contains_key("traceparent"), "B3 callers keep B3");
        let mut bare = HeaderMap::new();
        propagate(&mut bare);
        let value = bare["traceparent"].to_str().expect("text");
        assert!(parse_traceparent(value).is_some(), "{value}");
        assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }
}
