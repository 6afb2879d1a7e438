//! What one client, or many, can make the server hold: a stalled event stream reader, half-sent
//! and idle connections, the connection cap, and `Last-Event-ID` past the end of the log.

use std::time::Duration;

use conclave_core::StoreConfig;
use conclave_server::{AppSettings, LiveQueueLimits, ServerLimits};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{ADMIN, TestServer};

fn settings(limits: ServerLimits) -> AppSettings {
    AppSettings {
        limits,
        ..AppSettings::default()
    }
}

/// The server's address (`127.0.0.1:PORT`).
fn address(server: &TestServer) -> std::net::SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address")
}

/// A connection with a small receive buffer, so that a reader that does not read stalls the
/// server's writes quickly instead of filling megabytes of kernel buffers.
async fn small_buffered_connection(server: &TestServer) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    socket.connect(address(server)).await.expect("connect")
}

/// Reads until the server closes the connection (or `within` passes), returning what was read.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return None,
        }
    }
}

/// Reads until the end of what was read (its last 16 KiB, the stream being long) satisfies
/// `done`, panicking after `within`; returns that end.
async fn read_until(
    stream: &mut TcpStream,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    const TAIL: usize = 16 * 1024;
    let mut tail = String::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done(&tail) {
            return tail;
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("the expected answer arrives in time")
            .expect("read");
        assert!(n > 0, "the connection closed early: {tail}");
        tail.push_str(&String::from_utf8_lossy(&buffer[..n]));
        if tail.len() > 2 * TAIL {
            let mut cut = tail.len() - TAIL;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stalled_stream_reader_pins_a_bounded_number_of_bytes_and_is_told_it_lagged() {
    const BUDGET: usize = 1024 * 1024;
    let limits = ServerLimits {
        live_queue: LiveQueueLimits {
            max_bytes: BUDGET,
            max_events: 4096,
        },
        ..ServerLimits::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings(limits)).await;
    let mut stalled = small_buffered_connection(&server).await;
    stalled
        .write_all(
            format!(
                "GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    // The stream is open once its reader is subscribed.
    for _ in 0..100 {
        if server.app.live_stats().subscribers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.app.live_stats().subscribers, 1);

    // 200 of the largest events an agent can cause: a `done` naming 1,000 long file paths (a
    // body just under the API's limit), while the reader reads nothing.
    let alice = server.agent("alice", None).await;
    let files: Vec<String> = (0..1000)
        .map(|n| format!("src/{}/{n}.rs", "d".repeat(200)))
        .collect();
    let rss_before = vm_rss_kib();
    for n in 0..200 {
        let id = server.task(&format!("big {n}")).await;
        let (status, answer) = server
            .with_token(&alice)
            .post("/api/tasks/claim", json!({ "id": id }))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = server
            .with_token(&alice)
            .post(
                &format!("/api/tasks/{id}/done"),
                json!({ "summary": "done", "files": files }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let stats = server.app.live_stats();
    eprintln!(
        "stalled reader: peak queued {} bytes in {} events (budget {BUDGET}), {} reader(s) dropped; test process RSS {} KiB before, {} KiB after",
        stats.peak_queued_bytes,
        stats.peak_queued_events,
        stats.lagged_readers,
        rss_before,
        vm_rss_kib()
    );
    assert!(
        stats.peak_queued_bytes <= BUDGET,
        "{} bytes queued for one reader",
        stats.peak_queued_bytes
    );
    assert_eq!(stats.lagged_readers, 1, "the stalled reader was dropped");

    // When it reads at last, it finds the events it had, then the lagged notice, then the end
    // of the response (the last chunk of a chunked body).
    let received = read_until(&mut stalled, Duration::from_secs(20), |text| {
        text.find("event: lagged")
            .is_some_and(|at| text[at..].contains("\r\n0\r\n\r\n"))
    })
    .await;
    let lagged = received.find("event: lagged").expect("a lagged event");
    assert!(
        received[lagged..].contains("reconnect with Last-Event-ID"),
        "{}",
        &received[lagged..]
    );
}

#[tokio::test]
async fn last_event_id_past_the_end_of_the_log_is_answered_from_the_end() {
    let server = TestServer::start().await;
    server.task("one").await;
    let (_, newest) = server.as_admin().get("/api/events?desc=true&limit=1").await;
    let newest = newest["events"][0]["seq"].as_i64().expect("seq");
    let mut stream = server
        .as_admin()
        .request(Method::GET, "/api/events/stream")
        .header("Last-Event-ID", "1000000")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    server.task("two").await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("\"two\"") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("events arrive in time")
            .expect("chunk")
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let reset = text.find("event: reset").expect("a reset event");
    let two = text.find("\"two\"").expect("the new task");
    assert!(reset < two, "{text}");
    assert!(text.contains(&format!("id: {newest}\n")), "{text}");
    assert!(text.contains(&format!("id: {}\n", newest + 1)), "{text}");
}

#[tokio::test]
async fn half_sent_and_idle_connections_are_closed_and_do_not_stop_other_requests() {
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings(limits)).await;
    let mut half_open = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
        stream
            .write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .expect("half a request");
        half_open.push(stream);
    }
    let mut idle = TcpStream::connect(address(&server)).await.expect("connect");
    idle.write_all(
        format!(
            "GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("a request");
    let mut answer = vec![0u8; 16 * 1024];
    let n = idle.read(&mut answer).await.expect("an answer");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    // A live stream outlives the timeout many times over.
    let mut live = server
        .as_admin()
        .request(Method::GET, "/api/events/stream?kind=task.created")
        .send()
        .await
        .expect("stream");

    let (status, _) = server.as_admin().get("/api/status").await;
    assert_eq!(status, StatusCode::OK);

    for mut stream in half_open {
        let closed = read_to_close(&mut stream, Duration::from_secs(10)).await;
        let answer = closed.expect("a half-sent request's connection is closed");
        assert!(!answer.contains("200 OK"), "{answer}");
    }
    read_to_close(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.task("after the timeouts").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while !text.contains("after the timeouts") {
        let chunk = tokio::time::timeout_at(deadline, live.chunk())
            .await
            .expect("the event arrives")
            .expect("chunk")
            .expect("the stream is still open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let limits = ServerLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(60),
        ..ServerLimits::default()
    };
    let server = TestServer::with(StoreConfig::default(), settings(limits)).await;
    let first = TcpStream::connect(address(&server)).await.expect("connect");
    let _second = TcpStream::connect(address(&server)).await.expect("connect");
    let waiting = server
        .as_admin()
        .request(Method::GET, "/api/status")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        waiting.is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    let (status, _) = server.as_admin().get("/api/status").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_large_message_is_kept_whole_once_and_its_event_carries_an_excerpt() {
    let server = TestServer::start().await;
    let bob = server.agent("bob", None).await;
    let body = "m".repeat(32 * 1024);
    let (status, sent) = server
        .as_admin()
        .post("/api/messages", json!({ "to": "bob", "body": body }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");

    let (_, inbox) = server.with_token(&bob).get("/api/messages").await;
    let whole = inbox["messages"][0]["body"].as_str().expect("a body");
    assert_eq!(whole.len(), body.len(), "the message itself is whole");

    let (_, events) = server.as_admin().get("/api/events?kind=message.sent").await;
    let event = &events["events"][0];
    let excerpt = event["data"]["body"].as_str().expect("an excerpt");
    assert_eq!(event["data"]["id"], sent["id"]);
    assert!(
        excerpt.len() <= 4 * 1024, // the core's bound on a message.sent event's body
        "{}",
        excerpt.len()
    );
    assert!(excerpt.ends_with("read the message by id)"), "{excerpt}");
    eprintln!(
        "a {}-byte message: its message.sent event is {} bytes as JSON",
        body.len(),
        event.to_string().len()
    );
}

#[tokio::test]
async fn mcp_takes_no_bigger_body_than_the_api() {
    let server = TestServer::start().await;
    let token = server.agent("alice", None).await;
    let padding = "p".repeat(conclave_server::MAX_BODY_BYTES);
    let call = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": { "name": "send", "arguments": { "to": "all", "body": padding } },
    });
    let response = server
        .with_token(&token)
        .request(Method::POST, "/mcp")
        .header("Accept", "application/json, text/event-stream")
        .json(&call)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
