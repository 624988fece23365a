//! Property tests of the codecs on hostile bytes: every fixture of fixtures/fixtures.json
//! (frames and values as sofa-bolt-node, dubbo-remoting and hessian.js wrote them), edited at
//! random: bytes overwritten, cut out, put in, lengths set to extremes, the frame cut short.
//! Whatever the bytes, decoding and every accessor the proxy calls on what was decoded end in
//! a frame, a wait for more bytes, or an error, never a panic, and no more frames or
//! attachments come out than there were bytes.
//!
//! 1,024 cases per property (well under a second), or `PROPTEST_CASES`; 200,000 found nothing
//! either when this was written.

use std::sync::LazyLock;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;

use super::hessian::Reader;
use super::{bolt, dubbo};

/// The fixtures' bytes by kind: `bolt`, `dubbo`, and hessian `values`, `strings` and
/// `draft_values` (the 2.0 draft sofa-bolt-node writes).
struct Fixtures {
    bolt: Vec<Vec<u8>>,
    dubbo: Vec<Vec<u8>>,
    hessian: Vec<Vec<u8>>,
}

static FIXTURES: LazyLock<Fixtures> = LazyLock::new(|| {
    let all: serde_json::Value = serde_json::from_str(include_str!("fixtures/fixtures.json")).expect("fixtures.json is JSON");
    let of = |kind: &str| -> Vec<Vec<u8>> {
        all[kind]
            .as_array()
            .expect("an array")
            .iter()
            .map(|entry| {
                let text = entry["hex"].as_str().expect("hex");
                (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex digits")).collect()
            })
            .collect()
    };
    let mut hessian = of("values");
    hessian.extend(of("strings"));
    hessian.extend(of("draft_values"));
    Fixtures { bolt: of("bolt"), dubbo: of("dubbo"), hessian }
});

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|it| it.parse().ok()).unwrap_or(1024)
}

/// One edit of a byte string, its places as fractions of the length so that they apply to any
/// fixture.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite a byte.
    Set(Index, u8),
    /// Overwrite four bytes with a length: 0, small, the largest, or just past a 16- or
    /// 32-bit bound.
    Length(Index, u32),
    /// Put bytes in.
    Insert(Index, Vec<u8>),
    /// Cut a run out.
    Remove(Index, usize),
    /// Keep only a prefix.
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let lengths = prop::sample::select(vec![0, 1, 0x7f, 0xff, 0x7fff, 0xffff, 0x1_0000, 0x7fff_ffff, u32::MAX]);
    prop_oneof![
        4 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        2 => (any::<Index>(), lengths).prop_map(|(at, length)| Edit::Length(at, length)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        1 => (any::<Index>(), 1..16usize).prop_map(|(at, len)| Edit::Remove(at, len)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn edited(original: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for edit in edits {
        // Places are taken over the length plus one, so that the end is a place too.
        let place = |at: &Index, len: usize| at.index(len + 1);
        match edit {
            Edit::Set(at, byte) if !bytes.is_empty() => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            Edit::Length(at, length) if bytes.len() >= 4 => {
                let at = at.index(bytes.len() - 3);
                bytes[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
            Edit::Insert(at, more) => {
                let at = place(at, bytes.len());
                bytes.splice(at..at, more.iter().copied());
            }
            Edit::Remove(at, len) => {
                let at = place(at, bytes.len());
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Truncate(at) => bytes.truncate(place(at, bytes.len())),
            Edit::Set(..) | Edit::Length(..) => {}
        }
    }
    bytes
}

/// The largest frame the properties let the decoders take (the proxy's default is larger; a
/// smaller one also has the limit's refusal tried).
const MAX_FRAME: usize = 64 * 1024;

/// Decodes Bolt frames from `bytes` as a connection would, calling on each what the proxy
/// calls; the number of frames is bounded by the bytes.
fn bolt_decodes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    while let Ok(Some(mut frame)) = bolt::decode(&mut buf, MAX_FRAME) {
        frames += 1;
        prop_assert!(frames <= bytes.len(), "more frames than bytes");
        let head = *frame.head();
        let _ = (head.is_heartbeat(), head.timeout(), frame.class(), frame.content());
        let _ = frame.headers().count();
        let _ = (frame.service().map(str::len), frame.method().map(|it| it.map(|method| method.len())));
        frame.set_request_id(7);
        prop_assert_eq!(frame.head().request_id, 7);
        let _ = bolt::reply(&head, 0);
    }
    Ok(())
}

/// Decodes Dubbo frames from `bytes`, reading each request's invocation and attachments as
/// the proxy reads them.
fn dubbo_decodes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    while let Ok(Some(mut frame)) = dubbo::decode(&mut buf, MAX_FRAME) {
        frames += 1;
        prop_assert!(frames <= bytes.len(), "more frames than bytes");
        if let Ok(Some(invocation)) = frame.invocation() {
            let _ = frame.dubbo_version(&invocation);
            let _ = frame.parameter_types(&invocation);
            if let Ok(pairs) = frame.attachments(&invocation) {
                prop_assert!(pairs.len() <= bytes.len(), "more attachments than bytes");
            }
        }
        let head = *frame.head();
        let _ = (head.is_two_way(), head.is_event(), head.serialization(), frame.body().len());
        let _ = dubbo::heartbeat_reply(&head);
        let _ = dubbo::error_reply(&head, 80, "refused");
        frame.set_request_id(7);
    }
    Ok(())
}

/// Reads `bytes` as one hessian value in every way the codecs read one.
fn hessian_reads(bytes: &[u8]) {
    let _ = Reader::new(bytes).skip();
    let _ = Reader::new(bytes).skip_draft_value();
    let _ = Reader::new(bytes).read_value();
    let _ = Reader::new(bytes).read_string();
    let _ = Reader::new(bytes).skip_string();
    let _ = Reader::new(bytes).read_int();
    let _ = Reader::new(bytes).read_string_map();
    let _ = Reader::new(bytes).read_object_field("methodName");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn edited_bolt_frames_decode_or_are_refused(which in any::<Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let fixtures = &FIXTURES.bolt;
        bolt_decodes(&edited(&fixtures[which.index(fixtures.len())], &edits))?;
    }

    #[test]
    fn edited_dubbo_frames_decode_or_are_refused(which in any::<Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let fixtures = &FIXTURES.dubbo;
        dubbo_decodes(&edited(&fixtures[which.index(fixtures.len())], &edits))?;
    }

    #[test]
    fn edited_hessian_values_read_or_are_refused(which in any::<Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let fixtures = &FIXTURES.hessian;
        hessian_reads(&edited(&fixtures[which.index(fixtures.len())], &edits));
    }

    #[test]
    fn random_bytes_are_refused_or_waited_on(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        bolt_decodes(&bytes)?;
        dubbo_decodes(&bytes)?;
        hessian_reads(&bytes);
    }
}
