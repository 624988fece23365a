//! The HTTP/1.1 server against a client on an in-memory pipe: keep-alive and pipelining,
//! request bodies, response framing, 400s, what goes to hyper, the drain and the head timeout.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt as _, DuplexStream};

use super::*;
use crate::proxy::full;

/// Answers with the request's method, target and body, and the header `x-seen` with how many
/// requests this connection answered before.
fn echo<'a>(
    seen: &'a AtomicUsize,
) -> impl FnMut(Request<Body>) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> + 'a {
    move |request: Request<Body>| {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
                Err(err) => format!("body failed: {err}"),
            };
            let mut response = Response::new(full(Bytes::from(format!("{} {} {body}", parts.method, parts.uri))));
            let count = seen.fetch_add(1, Ordering::SeqCst);
            response.headers_mut().insert("x-seen", HeaderValue::from(count));
            response
        })
    }
}

/// Serves what the client sends (then ends its side) with `answer`; what the client
/// received, and how serving ended.
async fn exchange_with<A, F>(input: &[u8], answer: A) -> (String, Ended<DuplexStream>)
where
    A: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let (mut client, server) = tokio::io::duplex(1 << 20);
    client.write_all(input).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let (_drain, watch) = tokio::sync::watch::channel(false);
    let ended = serve(server, watch, Duration::from_secs(5), answer).await;
    let mut received = Vec::new();
    if matches!(ended, Ended::Closed) {
        client.read_to_end(&mut received).await.expect("read");
    }
    (String::from_utf8_lossy(&received).into_owned(), ended)
}

async fn exchange(input: &[u8]) -> (String, Ended<DuplexStream>) {
    let seen = AtomicUsize::new(0);
    exchange_with(input, echo(&seen)).await
}

/// The responses in `received`, each as its head and body (framed by Content-Length).
fn responses(mut received: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = received.find("\r\n\r\n") {
        let head = &received[..end];
        let len = head.lines().find_map(|it| it.strip_prefix("content-length: ")).map_or(0, |it| it.parse::<usize>().expect("length"));
        let body = &received[end + 4..end + 4 + len];
        out.push((head.to_owned(), body.to_owned()));
        received = &received[end + 4 + len..];
    }
    out
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (received, ended) = exchange(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\r\nGET /b?c=d HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(matches!(ended, Ended::Closed));
    let answers = responses(&received);
    assert_eq!(answers.len(), 2, "{received}");
    assert!(answers[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert_eq!(answers[0].1, "GET /a ");
    assert_eq!(answers[1].1, "GET /b?c=d ");
    assert!(answers[1].0.contains("x-seen: 1"), "the same connection served both: {received}");
    assert!(answers[0].0.contains("\r\ndate: "), "a Date is added: {received}");
    assert!(!answers[0].0.contains("connection: close"), "{received}");
}

#[tokio::test]
async fn request_bodies_are_read_from_the_connection_by_length_and_by_chunks() {
    let input = b"POST /l HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n\
        GET /after HTTP/1.1\r\nhost: x\r\n\r\n";
    let (received, _) = exchange(input).await;
    let bodies: Vec<String> = responses(&received).into_iter().map(|it| it.1).collect();
    assert_eq!(bodies, ["POST /l hello", "POST /c abcde", "GET /after "], "{received}");
}

#[tokio::test]
async fn a_request_body_cut_short_fails_and_the_connection_closes() {
    let (received, _) = exchange(b"POST /l HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello").await;
    let answers = responses(&received);
    assert_eq!(answers.len(), 1, "{received}");
    assert!(answers[0].1.starts_with("POST /l body failed"), "{received}");
    let (received, _) = exchange(b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(responses(&received)[0].1.starts_with("POST /c body failed: an invalid chunk size"), "{received}");
}

#[tokio::test]
async fn an_answer_before_the_request_body_ends_closes_the_connection() {
    // The answer never reads the body, whose end has not come: what is left of it cannot be
    // told from a next request.
    let answer = |_: Request<Body>| async { Response::new(full(Bytes::from_static(b"early"))) };
    let (received, ended) =
        exchange_with(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", answer).await;
    assert!(matches!(ended, Ended::Closed));
    let answers = responses(&received);
    assert_eq!(answers.len(), 1, "{received}");
    assert!(answers[0].0.contains("connection: close"), "{received}");
}

#[tokio::test]
async fn response_bodies_are_framed_by_length_by_chunks_or_not_at_all() {
    // A body of unknown size goes out chunked, with its trailers.
    let streamed = |_: Request<Body>| async {
        let frames = [Ok(Frame::data(Bytes::from_static(b"ab"))), Ok(Frame::data(Bytes::from_static(b"cde"))), {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            Ok::<_, BoxError>(Frame::trailers(trailers))
        }];
        Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed())
    };
    let (received, _) = exchange_with(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", streamed).await;
    let (head, body) = received.split_once("\r\n\r\n").expect("head");
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{received}");
    assert_eq!(body, "2\r\nab\r\n3\r\ncde\r\n0\r\ngrpc-status: 0\r\n\r\n", "framing fields are not trailers");

    // HEAD, 204 and 304 have no body, whatever the answer holds; HEAD keeps the length the
    // answer gives, and none is made up from its empty body.
    let head = |_: Request<Body>| async {
        let mut response = Response::new(crate::proxy::empty());
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        response
    };
    let (received, _) = exchange_with(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n", head).await;
    assert!(received.contains("content-length: 12\r\n") && received.ends_with("\r\n\r\n"), "{received}");
    let (received, _) = exchange(b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(!received.contains("content-length") && !received.contains("HEAD /h"), "{received}");
    let no_content = |_: Request<Body>| async {
        let mut response = Response::new(full(Bytes::from_static(b"dropped")));
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
    };
    let (received, _) = exchange_with(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", no_content).await;
    assert!(received.starts_with("HTTP/1.1 204 No Content\r\n") && received.ends_with("\r\n\r\n"), "{received}");
    assert!(!received.contains("dropped") && !received.contains("content-length"), "{received}");
}

#[tokio::test]
async fn transfer_codings_other_than_one_chunked_get_501() {
    for coding in ["gzip", "gzip, chunked", "identity, chunked", "chunked, chunked", "chunked\r\ntransfer-encoding: chunked"] {
        let input = format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: {coding}\r\n\r\n4\r\n\x1f\x08\x00\x01\r\n0\r\n\r\n");
        let (received, ended) = exchange(input.as_bytes()).await;
        assert!(matches!(ended, Ended::Closed), "{coding}");
        assert!(received.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{coding}: {received}");
    }
    let (received, _) = exchange(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n").await;
    assert!(received.contains("200 OK") || received.contains("HTTP/1.1 2"), "one chunked, in any case, is served: {received}");
}

#[tokio::test]
async fn malformed_heads_get_400_and_the_connection_closes() {
    let cases: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\nbad header: x\r\n\r\nGET /never HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for input in cases {
        let (received, ended) = exchange(input).await;
        assert!(matches!(ended, Ended::Closed));
        assert!(received.contains("HTTP/1.1 400 Bad Request\r\n"), "{received}");
        assert!(!received.contains("/never"), "nothing after a malformed head is read: {received}");
    }
    let mut oversized = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 1));
    let (received, _) = exchange(&oversized).await;
    assert!(received.starts_with("HTTP/1.1 400 Bad Request\r\n") && received.contains("too large"), "{received}");
}

#[tokio::test]
async fn what_hyper_serves_is_handed_over_with_every_byte_read() {
    let cases: [&[u8]; 5] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET / HTTP/1.0\r\nhost: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n",
        b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
    ];
    for input in cases {
        let (_, ended) = exchange(input).await;
        let Ended::HandOff(read, _) = ended else { panic!("not handed over: {}", String::from_utf8_lossy(input)) };
        assert_eq!(&read[..], input);
    }
    // After requests served here, only the request hyper takes and what follows it.
    let (_, ended) = exchange(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.0\r\n\r\nrest").await;
    let Ended::HandOff(read, _) = ended else { panic!("not handed over") };
    assert_eq!(&read[..], b"GET /b HTTP/1.0\r\n\r\nrest");
}

#[tokio::test]
async fn a_drain_closes_idle_connections_and_ends_keep_alive() {
    let seen = AtomicUsize::new(0);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (drain, watch) = tokio::sync::watch::channel(false);
    let serving = serve(server, watch, Duration::from_secs(60), echo(&seen));
    let client_side = async {
        client.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let mut first = vec![0; 4096];
        let n = client.read(&mut first).await.expect("read");
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200 OK"));
        // Idle between requests: the drain closes the connection.
        drain.send_replace(true);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty());
    };
    let (ended, ()) = tokio::join!(serving, client_side);
    assert!(matches!(ended, Ended::Closed));

    // A connection accepted during a drain gets one answer, which says it closes.
    let (_drain, watch) = tokio::sync::watch::channel(true);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let seen = AtomicUsize::new(0);
    let ended = serve(server, watch, Duration::from_secs(60), echo(&seen)).await;
    assert!(matches!(ended, Ended::Closed));
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.expect("read");
    let received = String::from_utf8_lossy(&received);
    let answers = responses(&received);
    assert_eq!(answers.len(), 1, "{received}");
    assert!(answers[0].0.contains("connection: close"), "{received}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
    let seen = AtomicUsize::new(0);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_drain, watch) = tokio::sync::watch::channel(false);
    client.write_all(b"GET / HTTP/1.1\r\nhost:").await.expect("write");
    let started = tokio::time::Instant::now();
    let ended = serve(server, watch, Duration::from_secs(30), echo(&seen)).await;
    assert!(matches!(ended, Ended::Closed));
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_head_timeout_counts_from_when_the_connection_waits_for_the_next_head() {
    let seen = AtomicUsize::new(0);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_drain, watch) = tokio::sync::watch::channel(false);
    let started = tokio::time::Instant::now();
    let client_side = async {
        // The first request 20 s in; the second's head never ends, and its wait starts
        // once the first is answered: 30 s from then.
        tokio::time::sleep(Duration::from_secs(20)).await;
        client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost:").await.expect("write");
        client
    };
    let (ended, _client) = tokio::join!(serve(server, watch, Duration::from_secs(30), echo(&seen)), client_side);
    assert!(matches!(ended, Ended::Closed));
    assert_eq!(started.elapsed(), Duration::from_secs(50));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bare_lf_never_ends_a_chunked_body_and_a_length_is_digits_only() {
    // `0\r\n\n` ends the body for a server that takes a bare LF as a line end: the bytes after
    // it would be a request the front proxy never saw.
    let input = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let (received, _) = exchange(input).await;
    assert!(received.contains("body failed: a bare LF in the trailers"), "{received}");
    assert!(!received.contains("/smuggled"), "{received}");
    for length in ["+5", "5\u{a0}", "5, 5", "0x5", ""] {
        let input = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\nhello");
        let (received, _) = exchange(input.as_bytes()).await;
        assert!(received.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{length:?}: {received}");
    }
}

#[tokio::test]
async fn a_refused_request_whose_body_is_already_read_keeps_the_connection() {
    // Refused without reading the body (as an authorization denial is): its bytes are in the
    // buffer already, so the next request can be told from them.
    let refuse = |request: Request<Body>| async move {
        let mut response = Response::new(full(Bytes::from(request.uri().path().to_owned())));
        *response.status_mut() = StatusCode::FORBIDDEN;
        response
    };
    let input = b"POST /denied HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    let (received, _) = exchange_with(input, refuse).await;
    let answers = responses(&received);
    assert_eq!(answers.iter().map(|it| it.1.as_str()).collect::<Vec<_>>(), ["/denied", "/next"], "{received}");
    assert!(!answers[0].0.contains("connection: close"), "{received}");
}

#[tokio::test]
async fn answers_without_a_body_are_not_waited_for_and_interim_answers_are_not_final() {
    // A response to HEAD whose body never ends: the head goes out, and the next request is read.
    let pending = |request: Request<Body>| async move {
        if request.method() == Method::HEAD {
            let never = http_body_util::StreamBody::new(futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>());
            return Response::new(never.boxed());
        }
        Response::new(full(Bytes::from_static(b"second")))
    };
    let (received, _) = exchange_with(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n", pending).await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n") && received.ends_with("second"), "{received}");

    let interim = |_: Request<Body>| async {
        let mut response = Response::new(crate::proxy::empty());
        *response.status_mut() = StatusCode::CONTINUE;
        response
    };
    let (received, _) = exchange_with(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", interim).await;
    assert!(received.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{received}");

    let no_content = |_: Request<Body>| async {
        let mut response = Response::new(crate::proxy::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        response
    };
    let (received, _) = exchange_with(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", no_content).await;
    assert!(!received.contains("content-length"), "a 204 has no length: {received}");
}

#[tokio::test]
async fn a_closing_connection_says_close_whatever_the_answer_says() {
    let keep = |_: Request<Body>| async {
        let mut response = Response::new(full(Bytes::from_static(b"ok")));
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        response
    };
    let (received, _) = exchange_with(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", keep).await;
    assert!(received.contains("connection: close\r\n") && !received.contains("keep-alive"), "{received}");
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_parsed_a_few_times_not_once_per_byte() {
    let mut head = b"GET /slow HTTP/1.1\r\nhost: x\r\n".to_vec();
    // 90 fields (the most is 100) of some 200 bytes each: an 18 KB head.
    for index in 0..90 {
        head.extend_from_slice(format!("x-h{index}: {}\r\n", "v".repeat(200)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let (mut buf, mut fields, mut scanned) = (BytesMut::new(), Vec::new(), 0);
    super::PARSES.set(0);
    let mut parsed = None;
    for byte in &head {
        buf.extend_from_slice(&[*byte]);
        match super::parse(&mut buf, &mut fields, true, &mut scanned) {
            super::Parsed::More => {}
            super::Parsed::Head(it) => parsed = Some(it),
            _ => panic!("refused"),
        }
    }
    let parsed = parsed.expect("the whole head");
    assert_eq!((parsed.parts.uri.path(), parsed.parts.headers.len()), ("/slow", 91));
    // About one parse a kilobyte, and the last at the blank line, where each byte cost one.
    let parses = super::PARSES.get();
    assert!(parses <= head.len() / 1024 + 3, "{parses} parses of a {}-byte head", head.len());
}
