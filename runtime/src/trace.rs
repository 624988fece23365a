//! Trace context propagation: W3C `traceparent` and Zipkin's B3 headers (`x-b3-*`, or the
//! single `b3`) pass through with a new span id for the hop the sidecar adds (the caller's span
//! becomes the parent), the same span id in every format the request carries; a request with
//! none starts a trace in both W3C's and B3's headers, so that an application that passes on
//! either keeps it. `add_request_id` makes the `x-request-id` a request without one gets, as
//! Envoy does. The proxy calls each unless the workload's `telemetry { request_id off  tracing
//! off }` turned it off (`SidecarSpec::request_id` and `tracing`).

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::proxy::random_u64;

/// Updates the trace headers of a request about to be forwarded.
pub fn propagate(headers: &mut HeaderMap) {
    let span = span_id();
    let b3 = headers.contains_key(B3_TRACE_ID);
    let w3c = headers.get(TRACEPARENT).and_then(|it| it.to_str().ok()).and_then(parse_traceparent).map(|(trace_id, flags)| {
        let mut value = Hex::default();
        value.push_str("00-").push_str(trace_id).push_str("-").push_u64(span, 16).push_str("-").push_str(flags);
        value
    });
    // The single-header form counts only where the multi-header one is absent (B3's rule).
    let single = if b3 { None } else { headers.get(B3).and_then(|it| it.to_str().ok()).and_then(|it| next_b3_single(it, span)) };
    if w3c.is_none() && !b3 && single.is_none() {
        // A sampling decision that came without a trace (`b3: 0`, `x-b3-sampled: 0`) holds
        // for the trace started here; with none, the trace is sampled.
        let sampled = !headers.get(B3).or_else(|| headers.get(B3_SAMPLED)).is_some_and(|it| matches!(it.as_bytes(), b"0" | b"false"));
        let (high, low) = (random_u64(), random_u64());
        let mut value = Hex::default();
        value.push_str("00-").push_u64(high, 16).push_u64(low, 16).push_str("-").push_u64(span, 16);
        value.push_str(if sampled { "-01" } else { "-00" });
        value.set(headers, TRACEPARENT);
        let mut trace_id = Hex::default();
        trace_id.push_u64(high, 16).push_u64(low, 16);
        trace_id.set(headers, B3_TRACE_ID);
        let mut span_id = Hex::default();
        span_id.push_u64(span, 16);
        span_id.set(headers, B3_SPAN_ID);
        headers.insert(B3_SAMPLED, HeaderValue::from_static(if sampled { "1" } else { "0" }));
        return;
    }
    if let Some(value) = w3c {
        value.set(headers, TRACEPARENT);
    }
    if b3 {
        if let Some(parent) = headers.get(B3_SPAN_ID).cloned() {
            headers.insert(B3_PARENT_SPAN_ID, parent);
        }
        let mut value = Hex::default();
        value.push_u64(span, 16);
        value.set(headers, B3_SPAN_ID);
    }
    if let Some(value) = single {
        value.set(headers, B3);
    }
}

/// The single `b3` header after this hop: `{trace id}-{span}-{sampling}-{the caller's span}`,
/// the caller's sampling kept; `None` for a value that is no trace context (a bare sampling
/// decision, `0` or `1`, or a malformed one).
fn next_b3_single(value: &str, span: u64) -> Option<Hex> {
    let mut parts = value.trim().split('-');
    let (trace_id, parent) = (parts.next()?, parts.next()?);
    let sampling = parts.next();
    let hex = |text: &str| text.bytes().all(|it| it.is_ascii_digit() || (b'a'..=b'f').contains(&it));
    let valid = matches!(trace_id.len(), 16 | 32)
        && hex(trace_id)
        && parent.len() == 16
        && hex(parent)
        && sampling.is_none_or(|it| matches!(it, "0" | "1" | "d"))
        && parts.next().is_none_or(|it| it.len() == 16 && hex(it))
        && parts.next().is_none();
    if !valid {
        return None;
    }
    let mut next = Hex::default();
    next.push_str(trace_id).push_str("-").push_u64(span, 16);
    // The parent's place comes after the sampling decision's: without a decision to keep,
    // the caller's span cannot be written as the parent.
    if let Some(sampling) = sampling {
        next.push_str("-").push_str(sampling).push_str("-").push_str(parent);
    }
    Some(next)
}

// Header names as constants: looking a header up by `&str` parses the name every time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3: HeaderName = HeaderName::from_static("b3");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds a random (version 4) UUID as `x-request-id`.
pub fn add_request_id(headers: &mut HeaderMap) {
    let (high, low) = (random_u64(), random_u64());
    let mut id = Hex::default();
    id.push_u64(high >> 32, 8).push_str("-").push_u64((high >> 16) & 0xffff, 4).push_str("-4").push_u64(high & 0xfff, 3);
    id.push_str("-").push_u64((low >> 48) & 0x3fff | 0x8000, 4).push_str("-").push_u64(low & 0xffff_ffff_ffff, 12);
    id.set(headers, REQUEST_ID);
}

/// A header value of at most 80 ASCII bytes (a single `b3` takes 68) built on the stack: trace ids written as hex
/// without the formatting machinery, which showed up in profiles of the request path.
struct Hex {
    bytes: [u8; 80],
    len: usize,
}

impl Default for Hex {
    fn default() -> Hex {
        Hex { bytes: [0; 80], len: 0 }
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
    fn a_hop_has_one_span_id_in_every_format_the_request_carries() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        headers.insert("x-b3-traceid", HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"));
        headers.insert("x-b3-spanid", HeaderValue::from_static("00f067aa0ba902b7"));
        propagate(&mut headers);
        let traceparent = headers["traceparent"].to_str().expect("text").to_owned();
        let span = headers["x-b3-spanid"].to_str().expect("text");
        assert_eq!(traceparent, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span}-01"));
        assert_eq!(headers["x-b3-parentspanid"], "00f067aa0ba902b7");
    }

    #[test]
    fn a_single_b3_header_chains_its_span_and_keeps_its_sampling() {
        let mut headers = HeaderMap::new();
        headers.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"));
        propagate(&mut headers);
        let value = headers["b3"].to_str().expect("text").to_owned();
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{value}");
        assert_eq!((parts[0], parts[2], parts[3]), ("80f198ee56343ba864fe8b2a57d3eff7", "1", "e457b5a2e4d86bd1"), "{value}");
        assert!(parts[1].len() == 16 && parts[1] != "e457b5a2e4d86bd1", "{value}");
        assert!(!headers.contains_key("traceparent") && !headers.contains_key("x-b3-traceid"), "a B3 caller keeps B3");
        // A decision alone is no trace context: a trace starts, under that decision.
        let mut decision = HeaderMap::new();
        decision.insert("b3", HeaderValue::from_static("0"));
        propagate(&mut decision);
        assert_eq!(decision["b3"], "0");
        assert!(decision["traceparent"].to_str().is_ok_and(|it| it.ends_with("-00")), "{decision:?}");
        assert_eq!(decision["x-b3-sampled"], "0");
        // Without a sampling decision the parent has no place.
        let mut bare = HeaderMap::new();
        bare.insert("b3", HeaderValue::from_static("463ac35c9f6413ad-a2fb4a1d1a96d312"));
        propagate(&mut bare);
        let value = bare["b3"].to_str().expect("text");
        assert!(value.starts_with("463ac35c9f6413ad-") && value.len() == 33 && !value.ends_with("a2fb4a1d1a96d312"), "{value}");
    }

    #[test]
    fn a_new_trace_starts_in_w3c_and_b3_headers_alike() {
        let mut headers = HeaderMap::new();
        propagate(&mut headers);
        let traceparent = headers["traceparent"].to_str().expect("text").to_owned();
        let (trace_id, flags) = parse_traceparent(&traceparent).expect("a traceparent");
        assert_eq!(flags, "01");
        assert_eq!(headers["x-b3-traceid"], trace_id);
        assert_eq!(traceparent.split('-').nth(2), headers["x-b3-spanid"].to_str().ok());
        assert_eq!(headers["x-b3-sampled"], "1");
        assert!(!headers.contains_key("x-b3-parentspanid"));
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
