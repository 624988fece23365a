//! The codecs against bytes from reference encoders we did not write (hessian.js,
//! sofa-bolt-node, dubbo-remoting): fixtures/fixtures.json, written by fixtures/generate.js.

use std::borrow::Cow;

use bytes::BytesMut;
use serde_json::Value;

use super::hessian::{Reader, descriptor_arity};
use super::{FrameError, bolt, dubbo};

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/fixtures.json")).expect("fixtures.json is JSON")
}

fn bytes_of(entry: &Value) -> Vec<u8> {
    let text = entry["hex"].as_str().expect("hex");
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex digits")).collect()
}

fn entries<'a>(all: &'a Value, kind: &str) -> &'a Vec<Value> {
    all[kind].as_array().expect("an array")
}

#[test]
fn hessian_strings_of_every_encoding_read_as_the_reference_wrote_them() {
    let all = fixtures();
    for entry in entries(&all, "strings") {
        let expected = match (&entry["text"], &entry["repeat"]) {
            (Value::String(text), _) => Some(text.clone()),
            (_, Value::String(repeat)) => Some(repeat.repeat(entry["count"].as_u64().expect("count") as usize)),
            _ => None,
        };
        let bytes = bytes_of(entry);
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.read_string().expect("a string").map(Cow::into_owned), expected, "{entry}");
        assert_eq!(reader.position(), bytes.len(), "the whole string is read: {entry}");
        let mut skipper = Reader::new(&bytes);
        skipper.skip().expect("skips");
        assert_eq!(skipper.position(), bytes.len());
        // Our own encoder (for error replies) writes what the reference writes.
        if let Some(text) = expected {
            assert_eq!(dubbo::hessian_string_for_tests(&text), bytes, "{text:.40}");
        }
    }
}

#[test]
fn hessian_values_of_every_kind_are_skipped_exactly() {
    let all = fixtures();
    for entry in entries(&all, "values") {
        let mut bytes = bytes_of(entry);
        // A sentinel after the value: the skipper must stop right before it.
        bytes.push(0x91);
        let mut reader = Reader::new(&bytes);
        reader.skip().unwrap_or_else(|err| panic!("{}: {err}", entry["name"]));
        assert_eq!(reader.position(), bytes.len() - 1, "{}", entry["name"]);
        assert_eq!(reader.read_int(), Ok(1));
    }
}

#[test]
fn hessian_values_decode_fully_to_what_the_reference_encoded() {
    use super::hessian::Value;
    let all = fixtures();
    for entry in entries(&all, "values") {
        let bytes = bytes_of(entry);
        let mut reader = Reader::new(&bytes);
        reader.read_value().unwrap_or_else(|err| panic!("{}: {err}", entry["name"]));
        assert_eq!(reader.position(), bytes.len(), "{}", entry["name"]);
    }
    let value = |name: &str| {
        let entry = entries(&all, "values").iter().find(|it| it["name"] == name).expect("fixture");
        Reader::new(&bytes_of(entry)).read_value().expect("decodes")
    };
    let string = |text: &str| Value::String(text.to_owned());
    assert_eq!(value("int three bytes"), Value::Int(200_000));
    assert_eq!(value("long negative"), Value::Long(-300_000));
    assert_eq!(value("double float"), Value::Double(12.25));
    assert_eq!(value("date"), Value::Date(1_767_323_045_000));
    assert_eq!(value("binary chunked"), Value::Binary(vec![9; 9000]));
    assert_eq!(
        value("map"),
        Value::Map(
            None,
            vec![
                (string("a"), Value::Int(1)),
                (string("b"), string("two")),
                (string("c"), Value::Map(None, vec![(string("nested"), Value::List(None, vec![Value::Int(1), Value::Int(2)]))])),
            ]
        )
    );
    assert_eq!(
        value("object"),
        Value::Object(
            "com.example.User".to_owned(),
            vec![
                ("name".to_owned(), string("Ann")),
                ("age".to_owned(), Value::Int(42)),
                ("tags".to_owned(), Value::List(None, vec![string("a"), string("b")])),
            ]
        )
    );
    assert_eq!(value("list typed"), Value::List(Some("[int".to_owned()), vec![Value::Int(1), Value::Int(2), Value::Int(3)]));
    // A whole Dubbo request body: five strings, four arguments of several kinds, attachments.
    let request = entries(&all, "dubbo").iter().find(|it| it["kind"] == "request with objects").expect("fixture");
    let frame = cut_dubbo(&bytes_of(request));
    let mut reader = Reader::new(frame.body());
    let values: Vec<Value> =
        std::iter::from_fn(|| (reader.position() < frame.body().len()).then(|| reader.read_value().expect("decodes"))).collect();
    assert_eq!(values.len(), 5 + 4 + 1);
    assert!(matches!(&values[5], Value::Object(class, _) if class == "org.apache.dubbo.demo.Query"), "{:?}", values[5]);
}

#[test]
fn hessian_draft_values_as_sofa_bolt_node_writes_them_are_skipped_exactly() {
    let all = fixtures();
    for entry in entries(&all, "draft_values") {
        let mut bytes = bytes_of(entry);
        bytes.push(0x91);
        let mut reader = Reader::new(&bytes);
        reader.skip_draft_value().unwrap_or_else(|err| panic!("{}: {err}", entry["name"]));
        assert_eq!(reader.position(), bytes.len() - 1, "{}", entry["name"]);
        for cut in 0..bytes.len().min(600) - 1 {
            assert!(Reader::new(&bytes[..cut]).skip_draft_value().is_err(), "{} cut at {cut}", entry["name"]);
        }
    }
}

#[test]
fn hessian_input_cut_anywhere_is_an_error_not_a_panic() {
    let all = fixtures();
    for entry in entries(&all, "values").iter().chain(entries(&all, "strings")) {
        let bytes = bytes_of(entry);
        for cut in 0..bytes.len().min(600) {
            let mut reader = Reader::new(&bytes[..cut]);
            assert!(reader.skip().is_err(), "{entry} cut at {cut}");
        }
    }
}

#[test]
fn hessian_refuses_hostile_nesting_and_lengths() {
    // 10,000 nested untyped lists: refused by depth, without exhausting the stack.
    let nested = vec![b'W'; 10_000];
    let err = Reader::new(&nested).skip().expect_err("too deep");
    assert_eq!(err.what, "values nest too deeply");
    // A fixed list that claims 2^31-1 values in a 6-byte body.
    let long = [b'X', b'I', 0x7f, 0xff, 0xff, 0xff];
    assert!(Reader::new(&long).skip().is_err());
    // An object of a class never defined.
    assert!(Reader::new(&[0x60]).skip().is_err());
    // A string whose length runs past the end, and one with a broken character.
    assert!(Reader::new(&[0x05, b'a']).read_string().is_err());
    assert!(Reader::new(&[0x01, 0xc3, 0x28]).read_string().is_err());
}

#[test]
fn hostile_class_definitions_are_refused_without_exhausting_stack_or_memory() {
    // A draft object whose first field is preceded by a run of 100,000 class definitions:
    // without a bound this recursed once per definition and overflowed the stack.
    let mut draft = vec![b'O', 0x90, 0x91, 0x01, b'a', b'o', 0x90];
    for _ in 0..100_000 {
        draft.extend_from_slice(&[b'O', 0x90, 0x90]);
    }
    assert!(Reader::new(&draft).read_object_field("methodName").is_err());
    // 100,000 three-byte final definitions before a value: refused past the cap.
    let mut many = Vec::new();
    for _ in 0..100_000 {
        many.extend_from_slice(&[b'C', 0x00, 0x90]);
    }
    many.push(b'N');
    let err = Reader::new(&many).skip().expect_err("too many definitions");
    assert_eq!(err.what, "too many class definitions");
    assert!(Reader::new(&many).read_value().is_err());
}

#[test]
fn a_remembered_class_definition_reads_as_a_fresh_one() {
    // Fields of every request fixture and of edited copies of them (a byte flipped in the
    // class definition's name, field count or field names, or in the instance; the input cut
    // short), read one after another on a thread of their own (so the definition
    // remembered is the last input's), in several orders, must be what a reading on a fresh
    // thread finds; and the unedited requests must have been read through the remembered
    // definition.
    let all = fixtures();
    let mut contents: Vec<Vec<u8>> = Vec::new();
    for entry in entries(&all, "bolt") {
        if matches!(entry["kind"].as_str(), Some("request" | "oneway")) {
            contents.push(cut_bolt(&bytes_of(entry)).content().to_vec());
        }
    }
    assert!(!contents.is_empty());
    let mut inputs = contents.clone();
    for content in &contents {
        for at in [1, 2, 3, 10, 40, 50, content.len() / 2] {
            let mut edited = content.clone();
            if let Some(byte) = edited.get_mut(at) {
                *byte ^= 0x01;
                inputs.push(edited);
            }
        }
        inputs.push(content[..content.len() / 3].to_vec());
    }
    let fresh = |input: &Vec<u8>, field: &'static str| {
        let input = input.clone();
        std::thread::spawn(move || format!("{:?}", Reader::new(&input).read_object_field(field))).join().expect("no panic")
    };
    for field in ["methodName", "targetAppName"] {
        let expected: Vec<String> = inputs.iter().map(|it| fresh(it, field)).collect();
        let inputs = inputs.clone();
        let (read, hits) = std::thread::spawn(move || {
            let mut read = Vec::new();
            // Forwards, backwards, and each input twice in a row.
            for round in 0..3 {
                for index in 0..inputs.len() {
                    let at = if round == 1 { inputs.len() - 1 - index } else { index };
                    for _ in 0..if round == 2 { 2 } else { 1 } {
                        read.push((at, format!("{:?}", Reader::new(&inputs[at]).read_object_field(field))));
                    }
                }
            }
            (read, super::hessian::remembered_hits())
        })
        .join()
        .expect("no panic");
        for (at, value) in &read {
            assert_eq!(value, &expected[*at], "{field} of input {at}");
        }
        let named = read.iter().filter(|(_, value)| value.starts_with("Ok(Some(")).count();
        assert!(named >= 4 * contents.len(), "{field}: the unedited requests have it ({named})");
        assert!(hits >= 4 * contents.len(), "{field}: the definition was remembered ({hits} times)");
    }
}

#[test]
fn descriptors_count_their_parameters() {
    assert_eq!(descriptor_arity(""), Some(0));
    assert_eq!(descriptor_arity("I"), Some(1));
    assert_eq!(descriptor_arity("Ljava/lang/String;I[J[[Lcom/x/Y;Z"), Some(5));
    assert_eq!(descriptor_arity("Ljava/lang/String"), None);
    assert_eq!(descriptor_arity("Q"), None);
}

fn cut_bolt(bytes: &[u8]) -> bolt::Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = bolt::decode(&mut buf, super::DEFAULT_MAX_FRAME).expect("a valid frame").expect("a whole frame");
    assert!(buf.is_empty(), "the frame is all of the bytes");
    frame
}

#[test]
fn bolt_frames_from_sofa_bolt_node_decode_in_every_flavour() {
    let all = fixtures();
    for entry in entries(&all, "bolt") {
        let (flavour, kind) = (entry["flavour"].as_str().expect("flavour"), entry["kind"].as_str().expect("kind"));
        let bytes = bytes_of(entry);
        let frame = cut_bolt(&bytes);
        let head = *frame.head();
        assert_eq!(u64::from(head.request_id), entry["id"].as_u64().expect("id"), "{flavour} {kind}");
        assert_eq!(head.protocol, if flavour == "v1" { bolt::V1 } else { bolt::V2 });
        match kind {
            "request" | "oneway" => {
                assert_eq!(head.kind, if kind == "oneway" { bolt::Kind::Oneway } else { bolt::Kind::Request });
                assert_eq!(head.cmd, bolt::cmd::REQUEST);
                assert_eq!(frame.class(), b"com.alipay.sofa.rpc.core.request.SofaRequest");
                assert_eq!(frame.service(), entry["service"].as_str(), "{flavour} {kind}");
                // sofa-rpc-node sends no method header: the method comes from the content.
                assert_eq!(frame.header(bolt::METHOD), None);
                assert_eq!(frame.method().expect("readable content").as_deref(), entry["method"].as_str());
                // Fields after others of several kinds (a typed list, a long string) are reached too.
                let mut content = Reader::new(frame.content());
                assert_eq!(content.read_object_field("targetAppName"), Ok(Some(Cow::Borrowed("shop"))));
                assert_eq!(Reader::new(frame.content()).read_object_field("requestProps"), Ok(None));
                assert_eq!(head.timeout(), Some(std::time::Duration::from_millis(3000)));
            }
            "response" | "heartbeat ack" => {
                assert_eq!(head.kind, bolt::Kind::Response);
                assert_eq!(u64::from(head.status), entry["status"].as_u64().expect("status"));
            }
            "heartbeat" => {
                assert!(head.is_heartbeat());
                assert_eq!(head.kind, bolt::Kind::Request);
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn bolt_replies_are_byte_for_byte_what_sofa_bolt_node_sends() {
    let all = fixtures();
    let find = |flavour: &str, kind: &str| {
        let entry = entries(&all, "bolt").iter().find(|it| it["flavour"] == flavour && it["kind"] == kind).expect("fixture");
        bytes_of(entry)
    };
    for flavour in ["v1", "v2", "v2 crc"] {
        let heartbeat = cut_bolt(&find(flavour, "heartbeat"));
        assert_eq!(bolt::reply(heartbeat.head(), bolt::status::SUCCESS), find(flavour, "heartbeat ack"), "{flavour}");
        // A failure reply keeps the request's flavour, and a peer's decoder reads it back.
        let request = cut_bolt(&find(flavour, "request"));
        let reply = cut_bolt(&bolt::reply(request.head(), bolt::status::NO_PROCESSOR));
        assert_eq!(reply.head().kind, bolt::Kind::Response);
        assert_eq!(reply.head().cmd, bolt::cmd::RESPONSE);
        assert_eq!(reply.head().status, bolt::status::NO_PROCESSOR);
        assert_eq!(reply.head().request_id, 7);
        assert_eq!(reply.head().switch, request.head().switch);
    }
}

#[test]
fn bolt_request_ids_are_patched_in_place_and_the_crc_follows() {
    let all = fixtures();
    for entry in entries(&all, "bolt") {
        let bytes = bytes_of(entry);
        let mut frame = cut_bolt(&bytes);
        frame.set_request_id(0xdead_beef);
        let patched = frame.into_bytes();
        let again = cut_bolt(&patched);
        assert_eq!(again.head().request_id, 0xdead_beef, "a CRC frame still checks out: {}", entry["flavour"]);
        let differing: Vec<usize> = (0..bytes.len()).filter(|at| bytes[*at] != patched[*at]).collect();
        let id_at = if entry["flavour"] == "v1" { 5 } else { 6 };
        let trailer = if entry["flavour"] == "v2 crc" { bytes.len() - 4 } else { bytes.len() };
        assert!(differing.iter().all(|at| (id_at..id_at + 4).contains(at) || *at >= trailer), "{differing:?}");
    }
}

#[test]
fn bolt_frames_arriving_in_pieces_are_cut_when_whole() {
    let all = fixtures();
    let stream: Vec<u8> = entries(&all, "bolt").iter().flat_map(bytes_of).collect();
    let ids: Vec<u64> = entries(&all, "bolt").iter().map(|it| it["id"].as_u64().expect("id")).collect();
    for piece in [1, 3, 7, 64, 1000] {
        let mut buf = BytesMut::new();
        let mut found = Vec::new();
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = bolt::decode(&mut buf, 4096).expect("valid") {
                found.push(u64::from(frame.head().request_id));
            }
        }
        assert_eq!(found, ids, "pieces of {piece}");
        assert!(buf.is_empty());
    }
}

#[test]
fn malformed_bolt_frames_are_refused_with_a_reason() {
    let all = fixtures();
    let request =
        bytes_of(&entries(&all, "bolt").iter().find(|it| it["flavour"] == "v2 crc" && it["kind"] == "request").expect("fixture").clone());
    // A wrong first byte.
    let err = bolt::decode(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]), 1024).expect_err("not bolt");
    assert!(matches!(err, FrameError::Magic(_)), "{err}");
    // A bad command type.
    let mut bad = request.clone();
    bad[2] = 9;
    assert!(matches!(bolt::decode(&mut BytesMut::from(&bad[..]), 1 << 20), Err(FrameError::Malformed(_))));
    // A flipped bit in the content: the CRC no longer matches.
    let mut flipped = request.clone();
    flipped[300] ^= 1;
    let err = bolt::decode(&mut BytesMut::from(&flipped[..]), 1 << 20).expect_err("bad crc");
    assert!(err.to_string().contains("CRC32"), "{err}");
    // An absurd content length is refused from the head alone, before the bytes arrive.
    let mut absurd = request[..24].to_vec();
    absurd[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = bolt::decode(&mut BytesMut::from(&absurd[..]), 1 << 20).expect_err("too large");
    assert!(matches!(err, FrameError::TooLarge { limit: 1_048_576, .. }), "{err}");
    // A header map whose pair is longer than the map (v1, no CRC to catch it first).
    let v1 = bytes_of(&entries(&all, "bolt").iter().find(|it| it["flavour"] == "v1" && it["kind"] == "request").expect("fixture").clone());
    let mut long_key = v1.clone();
    let header_at = 22 + 44;
    long_key[header_at..header_at + 4].copy_from_slice(&1000u32.to_be_bytes());
    let err = bolt::decode(&mut BytesMut::from(&long_key[..]), 1 << 20).expect_err("bad map");
    assert!(err.to_string().contains("header key"), "{err}");
    // Truncated frames are never an error and never a frame: they wait for more.
    for cut in 0..v1.len() {
        assert!(bolt::decode(&mut BytesMut::from(&v1[..cut]), 1 << 20).expect("waits").is_none());
    }
}

fn cut_dubbo(bytes: &[u8]) -> dubbo::Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = dubbo::decode(&mut buf, super::DEFAULT_MAX_FRAME).expect("a valid frame").expect("a whole frame");
    assert!(buf.is_empty());
    frame
}

#[test]
fn dubbo_requests_from_dubbo_remoting_give_their_keys_and_attachments() {
    let all = fixtures();
    for entry in entries(&all, "dubbo").iter().filter(|it| it["kind"].as_str().is_some_and(|kind| kind.starts_with("request"))) {
        let frame = cut_dubbo(&bytes_of(entry));
        let head = *frame.head();
        assert!(head.is_request() && head.is_two_way() && !head.is_event());
        assert_eq!(head.serialization(), dubbo::HESSIAN2);
        assert_eq!(head.request_id, entry["id"].as_u64().expect("id"));
        let invocation = frame.invocation().expect("readable").expect("an invocation");
        assert_eq!(invocation.path, entry["path"].as_str().expect("path"));
        assert_eq!(invocation.version.as_deref(), entry["version"].as_str());
        assert_eq!(invocation.method, entry["method"].as_str().expect("method"));
        assert_eq!(frame.dubbo_version(&invocation).expect("readable").as_deref(), entry["dubbo"].as_str());
        assert_eq!(frame.parameter_types(&invocation).expect("readable"), entry["parameter_types"].as_str().expect("types"));
        let mut attachments: Vec<(String, String)> = frame
            .attachments(&invocation)
            .expect("attachments")
            .into_iter()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        attachments.sort();
        let mut expected: Vec<(String, String)> = entry["attachments"]
            .as_object()
            .expect("map")
            .iter()
            .map(|(key, value)| (key.clone(), value.as_str().expect("string").to_owned()))
            .collect();
        expected.sort();
        assert_eq!(attachments, expected, "{}", entry["kind"]);
    }
}

#[test]
fn dubbo_heartbeats_and_responses_decode_and_are_answered_in_kind() {
    let all = fixtures();
    let find = |kind: &str| bytes_of(entries(&all, "dubbo").iter().find(|it| it["kind"] == kind).expect("fixture"));
    let heartbeat = cut_dubbo(&find("heartbeat"));
    assert!(heartbeat.head().is_event() && heartbeat.head().is_request());
    assert_eq!(heartbeat.invocation(), Ok(None));
    let reply = cut_dubbo(&dubbo::heartbeat_reply(heartbeat.head()));
    assert!(reply.head().is_event() && !reply.head().is_request());
    assert_eq!((reply.head().status, reply.head().request_id, reply.body()), (dubbo::status::OK, 13, &b"N"[..]));

    let response = cut_dubbo(&find("response"));
    assert!(!response.head().is_request());
    assert_eq!((response.head().status, response.head().request_id), (dubbo::status::OK, 11));

    let request = cut_dubbo(&find("request"));
    let error = cut_dubbo(&dubbo::error_reply(request.head(), dubbo::status::SERVICE_NOT_FOUND, "no route for org.x.Y"));
    assert_eq!((error.head().status, error.head().request_id, error.head().serialization()), (60, 11, dubbo::HESSIAN2));
    assert_eq!(Reader::new(error.body()).read_string(), Ok(Some(Cow::Borrowed("no route for org.x.Y"))));
}

#[test]
fn dubbo_ids_are_patched_and_bad_frames_refused() {
    let all = fixtures();
    let bytes = bytes_of(entries(&all, "dubbo").iter().find(|it| it["kind"] == "request").expect("fixture"));
    let mut frame = cut_dubbo(&bytes);
    frame.set_request_id(u64::MAX - 1);
    let patched = frame.into_bytes();
    assert_eq!(cut_dubbo(&patched).head().request_id, u64::MAX - 1);
    assert_eq!(patched[12..], bytes[12..]);

    assert!(matches!(dubbo::decode(&mut BytesMut::from(&[0xda, 0xbc][..]), 1024), Err(FrameError::Magic(_))));
    let mut absurd = bytes[..16].to_vec();
    absurd[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(dubbo::decode(&mut BytesMut::from(&absurd[..]), 1 << 20), Err(FrameError::TooLarge { .. })));
    for cut in 0..bytes.len() {
        assert!(dubbo::decode(&mut BytesMut::from(&bytes[..cut]), 1 << 20).expect("waits").is_none());
    }
    // A body cut inside the method name: the frame is whole, its invocation is not.
    let mut short = bytes[..16 + 45].to_vec();
    short[12..16].copy_from_slice(&45u32.to_be_bytes());
    assert!(matches!(cut_dubbo(&short).invocation(), Err(FrameError::Malformed(_))));
}

#[test]
fn a_map_of_strings_holds_at_most_its_bound_of_pairs() {
    // Each empty pair is written in two bytes and would be kept in some fifty.
    let map = |pairs: usize| {
        let mut bytes = vec![b'H'];
        bytes.extend(std::iter::repeat_n([0x00, 0x00], pairs).flatten());
        bytes.push(b'Z');
        bytes
    };
    let most = map(super::hessian::MAX_STRING_PAIRS);
    assert_eq!(Reader::new(&most).read_string_map().expect("within the bound").map(|it| it.len()), Some(super::hessian::MAX_STRING_PAIRS));
    let error = Reader::new(&map(super::hessian::MAX_STRING_PAIRS + 1)).read_string_map().expect_err("past the bound");
    assert!(error.to_string().contains("more than 1024 string pairs"), "{error}");
    // Pairs that are not both strings are skipped, and do not count.
    let mut mixed = vec![b'H'];
    mixed.extend(std::iter::repeat_n([0x90, 0x90], 5000).flatten());
    mixed.push(b'Z');
    assert_eq!(Reader::new(&mixed).read_string_map().expect("skipped").map(|it| it.len()), Some(0));
}
