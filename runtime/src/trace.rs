//! Trace context propagation: W3C `traceparent` and Zipkin's B3 headers pass through with a
//! new span id for the hop the sidecar adds (the caller's span becomes the parent); a request
//! with neither starts a W3C trace; `add_request_id` makes the `x-request-id` a request without
//! one gets, as Envoy does. The proxy calls each unless the workload's `telemetry
//! { request_id off  tracing off }` turned it off (`SidecarSpec::request_id` and `tracing`).

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Updates the trace headers of a request about to be forwarded.
pub fn propagate(headers: &mut HeaderMap) {
    let b3 = headers.contains_key(B3_TRACE_ID);
    let w3c = headers.get(TRACEPARENT).and_then(|it| it.to_str().ok()).and_then(parse_traceparent);
    if let Some((trace_id, flags)) = w3c {
        let mut value = Hex::default();
        value.push_str("00-").push_str(trace_id).push_str("-").push_u64(span_id(), 16).push_str("-").push_str(flags);
        value.set(headers, TRACEPARENT);
    } else if !b3 {
        let mut value = Hex::default();
        value.push_str("00-").push_u64(random_u64(), 16).push_u64(random_u64(), 16);
        value.push_str("-").push_u64(span_id(), 16).push_str("-01");
        value.set(headers, TRACEPARENT);
    }
    if b3 {
        if let Some(parent) = headers.get(B3_SPAN_ID).cloned() {
            headers.insert(B3_PARENT_SPAN_ID, parent);
        }
        let mut value = Hex::default();
        value.push_u64(span_id(), 16);
        value.set(headers, B3_SPAN_ID);
    }
}

// Header names as constants: looking a header up by `&str` parses the name every time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds a random (version 4) UUID as `x-request-id`.
pub fn add_request_id(headers: &mut HeaderMap) {
    let (high, low) = (random_u64(), random_u64());
    let mut id = Hex::default();
    id.push_u64(high >> 32, 8).push_str("-").push_u64((high >> 16) & 0xffff, 4).push_str("-4").push_u64(high & 0xfff, 3);
    id.push_str("-").push_u64((low >> 48) & 0x3fff | 0x8000, 4).push_str("-").push_u64(low & 0xffff_ffff_ffff, 12);
    id.set(headers, REQUEST_ID);
}

/// A header value of at most 64 ASCII bytes built on the stack: trace ids written as hex
/// without the formatting machinery, which showed up in profiles of the request path.
struct Hex {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Hex {
    fn default() -> Hex {
        Hex { bytes: [0; 64], len: 0 }
    }
}

impl Hex {
    fn push_str(&mut self, text: &str) -> &mut Hex {
        let end = (self.len + text.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&text.as_bytes()[..end - self.len]);
        self.len = end;
        self
    }

    /// The low `digits` hex digits of `value`, zero-padded.
    fn push_u64(&mut self, value: u64, digits: usize) -> &mut Hex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for index in (0..digits).rev() {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = DIGITS[((value >> (index * 4)) & 0xf) as usize];
                self.len += 1;
            }
        }
        self
    }

    fn set(&self, headers: &mut HeaderMap, name: HeaderName) {
        if let Ok(value) = HeaderValue::from_bytes(&self.bytes[..self.len]) {
            headers.insert(name, value);
        }
    }
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
    fn request_ids_are_version_4_uuids_and_new_traces_are_well_formed() {
        for _ in 0..100 {
            let mut headers = HeaderMap::new();
            propagate(&mut headers);
            add_request_id(&mut headers);
            let id = headers["x-request-id"].to_str().expect("text").to_owned();
            let bytes = id.as_bytes();
            assert_eq!(id.len(), 36, "{id}");
            assert!([8, 13, 18, 23].iter().all(|it| bytes[*it] == b'-'), "{id}");
            assert_eq!(bytes[14], b'4', "{id}");
            assert!(b"89ab".contains(&bytes[19]), "{id}");
            assert!(id.bytes().all(|it| it == b'-' || it.is_ascii_hexdigit() && !it.is_ascii_uppercase()), "{id}");
            let traceparent = headers["traceparent"].to_str().expect("text").to_owned();
            assert!(parse_traceparent(&traceparent).is_some_and(|(_, flags)| flags == "01"), "{traceparent}");
        }
    }

    #[test]
    fn a_traceparent_keeps_its_trace_and_gets_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        propagate(&mut headers);
        let value = headers["traceparent"].to_str().expect("text").to_owned();
        assert!(value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && value.ends_with("-01"), "{value}");
        assert!(!value.contains("00f067aa0ba902b7"), "{value}");
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
