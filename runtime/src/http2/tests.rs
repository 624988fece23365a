//! The HTTP/2 server against the h2 crate's client on an in-memory pipe: heads as HTTP/2 wants
//! them, request bodies and trailers, flow control both ways, concurrent streams, resets in
//! both directions and the drain.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{HeaderValue, StatusCode};
use tokio::sync::{oneshot, watch};

use http_body_util::BodyExt;

use super::*;
use crate::proxy::full;

type Answer = Box<dyn FnMut(Request<Body>) -> BoxFuture<'static, Response<Body>> + Send>;

/// A client connected to a server answering with `answer`; the drain's switch and the
/// server's task.
async fn connect(answer: Answer) -> (h2::client::SendRequest<Bytes>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (drain, watch) = watch::channel(false);
    let served = tokio::spawn(serve(server, watch, answer));
    let (client, connection) = h2::client::handshake(client).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, drain, served)
}

fn get(path: &str) -> Request<()> {
    Request::builder().uri(format!("http://test{path}")).body(()).expect("request")
}

async fn body_of(response: Response<h2::RecvStream>) -> Result<(Bytes, Option<HeaderMap>), h2::Error> {
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let trailers = body.trailers().await?;
    Ok((Bytes::from(bytes), trailers))
}

#[tokio::test]
async fn a_response_has_a_date_and_its_length_and_no_connection_fields() {
    let answer: Answer = Box::new(|_| {
        Box::pin(async {
            let mut response = Response::new(full(Bytes::from_static(b"hello")));
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
            response.headers_mut().insert("keep-alive", HeaderValue::from_static("timeout=5"));
            response
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (response, _) = client.send_request(get("/"), true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert!(headers.contains_key(header::DATE), "{headers:?}");
    assert_eq!(headers.get(header::CONTENT_LENGTH).map(|it| it.as_bytes()), Some(&b"5"[..]));
    assert!(!headers.contains_key(header::CONNECTION) && !headers.contains_key("keep-alive"), "{headers:?}");
    assert_eq!(body_of(response).await.expect("body").0, "hello");
}

#[tokio::test]
async fn a_request_body_and_its_trailers_reach_the_answer() {
    let answer: Answer = Box::new(|request: Request<Body>| {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let hint = body.size_hint().exact();
            let collected = body.collect().await.expect("body");
            let trailer = collected.trailers().and_then(|it| it.get("x-checksum")).cloned();
            let text = format!("{} {} {hint:?} {trailer:?}", parts.method, String::from_utf8_lossy(&collected.to_bytes()));
            Response::new(full(Bytes::from(text)))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let request = Request::builder().method("POST").uri("http://test/upload").header("content-length", "11").body(()).expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(Bytes::from_static(b"hello "), false).expect("data");
    send.send_data(Bytes::from_static(b"world"), false).expect("data");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("42"));
    send.send_trailers(trailers).expect("trailers");
    let (body, _) = body_of(response.await.expect("response")).await.expect("body");
    assert_eq!(body, "POST hello world Some(11) Some(\"42\")");
}

#[tokio::test]
async fn a_body_larger_than_every_window_arrives_whole_both_ways() {
    // 3 MiB: three times the server's windows and far over the client's 64 KiB.
    let size = 3 * 1024 * 1024;
    let answer: Answer = Box::new(|request: Request<Body>| {
        Box::pin(async move {
            let received = request.into_body().collect().await.expect("body").to_bytes();
            Response::new(full(received))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let request = Request::builder().method("PUT").uri("http://test/big").body(()).expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send");
    let payload = Bytes::from((0..size).map(|it| (it % 251) as u8).collect::<Vec<u8>>());
    let sending = payload.clone();
    tokio::spawn(async move {
        let mut rest = sending;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len().min(64 * 1024));
            let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                _ => return,
            };
            let chunk = rest.split_to(granted.min(rest.len()));
            let end = rest.is_empty();
            if send.send_data(chunk, end).is_err() {
                return;
            }
        }
    });
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("in time").expect("response");
    let (body, _) = tokio::time::timeout(Duration::from_secs(10), body_of(response)).await.expect("in time").expect("body");
    assert_eq!(body.len(), size);
    assert!(body == payload, "the body came back changed");
}

#[tokio::test]
async fn streams_are_answered_as_their_answers_come() {
    // The first stream's answer waits for the second's: only streams served side by side
    // finish at all.
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let mut gates = vec![Some(first_rx)];
    let mut release = Some(first_tx);
    let answer: Answer = Box::new(move |request: Request<Body>| {
        if request.uri().path() == "/first" {
            let gate = gates.pop().flatten();
            Box::pin(async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Response::new(full(Bytes::from_static(b"first")))
            })
        } else {
            let release = release.take();
            Box::pin(async move {
                if let Some(release) = release {
                    let _ = release.send(());
                }
                Response::new(full(Bytes::from_static(b"second")))
            })
        }
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (first, _) = client.send_request(get("/first"), true).expect("send");
    let (second, _) = client.send_request(get("/second"), true).expect("send");
    let both = async { Ok::<_, h2::Error>((body_of(first.await?).await?, body_of(second.await?).await?)) };
    let (first, second) = tokio::time::timeout(Duration::from_secs(5), both).await.expect("both answered").expect("responses");
    assert_eq!((first.0, second.0), (Bytes::from_static(b"first"), Bytes::from_static(b"second")));
}

#[tokio::test]
async fn a_stream_the_client_resets_drops_its_answer() {
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let mut guard = Some(dropped_tx);
    let answer: Answer = Box::new(move |_| {
        // Held by the first answer, which never ends by itself: the receiver sees it dropped.
        let guard = guard.take();
        Box::pin(async move {
            if let Some(_guard) = guard {
                std::future::pending::<()>().await;
            }
            Response::new(crate::proxy::empty())
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (_response, mut send) = client.send_request(get("/slow"), false).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    send.send_reset(h2::Reason::CANCEL);
    let dropped = tokio::time::timeout(Duration::from_secs(5), dropped_rx).await.expect("the answer was dropped");
    assert!(dropped.is_err(), "the answer ran to its end");
    // The connection and its other streams go on.
    let (response, _) = client.send_request(get("/next"), true).expect("send");
    let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("in time").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_answer_that_panics_resets_its_stream_alone() {
    let answer: Answer = Box::new(|request| {
        Box::pin(async move {
            if request.uri().path() == "/panics" {
                // Once the other stream is open, so that both are under way on the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("an answer that fails as a bug would");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Response::new(full(Bytes::from_static(b"fine")))
        })
    });
    let (mut client, _drain, served) = connect(answer).await;
    let (panicked, _) = client.send_request(get("/panics"), true).expect("send");
    let (other, _) = client.send_request(get("/other"), true).expect("send");
    let panicked = tokio::time::timeout(Duration::from_secs(5), panicked).await.expect("in time");
    assert_eq!(panicked.expect_err("the stream is reset").reason(), Some(h2::Reason::CANCEL));
    let other = tokio::time::timeout(Duration::from_secs(5), other).await.expect("in time").expect("response");
    assert_eq!(body_of(other).await.expect("body").0, "fine");
    // The connection still takes streams.
    let (next, _) = client.send_request(get("/next"), true).expect("send");
    let next = tokio::time::timeout(Duration::from_secs(5), next).await.expect("in time").expect("response");
    assert_eq!(next.status(), StatusCode::OK);
    assert!(!served.is_finished(), "the connection ended");
}

#[tokio::test]
async fn a_response_body_that_fails_resets_its_stream() {
    let answer: Answer = Box::new(|_| {
        Box::pin(async {
            // A first part, then (once that has gone out: h2 drops what a reset stream still
            // had queued) a failure.
            let frames = futures_util::stream::unfold(0, |step| async move {
                let frame: Result<Frame<Bytes>, BoxError> = match step {
                    0 => Ok(Frame::data(Bytes::from_static(b"partial"))),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err("the upstream went away".into())
                    }
                    _ => return None,
                };
                Some((frame, step + 1))
            });
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (response, _) = client.send_request(get("/"), true).expect("send");
    let response = response.await.expect("response");
    let failed = body_of(response).await.expect_err("a cut-off body ends in a reset");
    assert_eq!(failed.reason(), Some(h2::Reason::INTERNAL_ERROR));
}

#[tokio::test]
async fn a_drain_finishes_the_streams_under_way_then_closes() {
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let mut gate = Some(gate_rx);
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = answered.clone();
    let answer: Answer = Box::new(move |_| {
        let gate = gate.take();
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Response::new(full(Bytes::from_static(b"done")))
        })
    });
    let (mut client, drain, served) = connect(answer).await;
    let (under_way, _) = client.send_request(get("/under-way"), true).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    drain.send_replace(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // After the GOAWAY the client opens no stream the server would take.
    let late = match client.send_request(get("/late"), true) {
        Ok((response, _)) => response.await.is_err(),
        Err(_) => true,
    };
    assert!(late, "a stream opened after the GOAWAY was answered");
    let _ = gate_tx.send(());
    let (body, _) = body_of(under_way.await.expect("the stream under way is answered")).await.expect("body");
    assert_eq!(body, "done");
    tokio::time::timeout(Duration::from_secs(5), served).await.expect("the connection closes").expect("served");
    assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connect_is_answered_without_a_length_and_one_with_a_body_is_reset() {
    let answer: Answer = Box::new(|request: Request<Body>| {
        Box::pin(async move {
            let ended = request.body().is_end_stream();
            Response::new(full(Bytes::from(format!("body ended: {ended}"))))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let request = Request::builder().method("CONNECT").uri("example.com:443").body(()).expect("request");
    let (response, _send) = client.send_request(request, false).expect("send");
    let response = response.await.expect("response");
    assert!(!response.headers().contains_key(header::CONTENT_LENGTH), "{:?}", response.headers());
    // The stream's bytes are not the request's body.
    let mut body = response.into_body();
    let first = body.data().await.expect("data").expect("data");
    assert_eq!(first, "body ended: true");
    let request = Request::builder().method("CONNECT").uri("example.com:443").header("content-length", "5").body(()).expect("request");
    let (response, _send) = client.send_request(request, false).expect("send");
    let refused = response.await.expect_err("reset");
    assert_eq!(refused.reason(), Some(h2::Reason::INTERNAL_ERROR));
}

#[tokio::test]
async fn a_date_given_is_kept_and_an_empty_body_has_no_length() {
    let answer: Answer = Box::new(|_| {
        Box::pin(async {
            let mut response = Response::new(crate::proxy::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response.headers_mut().insert(header::DATE, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
            response
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (response, _) = client.send_request(get("/"), true).expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers().get(header::DATE).map(|it| it.as_bytes()), Some(&b"Sun, 06 Nov 1994 08:49:37 GMT"[..]));
    assert!(!response.headers().contains_key(header::CONTENT_LENGTH), "{:?}", response.headers());
    assert!(response.body().is_end_stream(), "the head ended the stream");
}

#[tokio::test]
async fn trailers_go_out_when_the_clients_window_is_used_up() {
    // Exactly the client's connection window (65,535 bytes, which this client never gives
    // back), then trailers: they need no window, and must not wait for any.
    let window = 65_535;
    let answer: Answer = Box::new(move |_| {
        Box::pin(async move {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(Bytes::from(vec![b'x'; window]))), Ok(Frame::trailers(trailers))];
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (response, _) = client.send_request(get("/stream"), true).expect("send");
    let mut body = response.await.expect("response").into_body();
    let read = async {
        let mut received = 0;
        while let Some(data) = body.data().await {
            received += data?.len();
        }
        Ok::<_, h2::Error>((received, body.trailers().await?))
    };
    let (received, trailers) = tokio::time::timeout(Duration::from_secs(5), read).await.expect("the trailers came").expect("body");
    assert_eq!(received, window);
    assert_eq!(trailers.and_then(|it| it.get("grpc-status").cloned()), Some(HeaderValue::from_static("0")));
}

/// An error caused by an h2 error, as hyper's are.
#[derive(Debug)]
struct Upstream(h2::Error);

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream's stream failed")
    }
}

impl std::error::Error for Upstream {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn a_body_failing_with_an_http2_code_resets_with_that_code() {
    let answer: Answer = Box::new(|_| {
        Box::pin(async {
            // What an upstream's reset looks like by the time it reaches the server: an h2
            // error behind another error.
            let upstream = Upstream(h2::Error::from(h2::Reason::CANCEL));
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![Err(upstream.into())];
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))))
        })
    });
    let (mut client, _drain, _) = connect(answer).await;
    let (response, _) = client.send_request(get("/"), true).expect("send");
    let failed = match response.await {
        Ok(response) => body_of(response).await.expect_err("reset"),
        Err(failed) => failed,
    };
    assert_eq!(failed.reason(), Some(h2::Reason::CANCEL));
}

#[tokio::test]
async fn a_connection_accepted_during_a_drain_is_served() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (_drain, watch) = watch::channel(true);
    let answer: Answer = Box::new(|_| Box::pin(async { Response::new(full(Bytes::from_static(b"late"))) }));
    tokio::spawn(serve(server, watch, answer));
    let (mut client, connection) = h2::client::handshake(client).await.expect("handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    for _ in 0..2 {
        let (response, _) = client.send_request(get("/"), true).expect("no GOAWAY");
        assert_eq!(body_of(response.await.expect("response")).await.expect("body").0, "late");
    }
}
